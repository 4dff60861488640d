#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds and runs fulgur's demo (examples/demo.cpp): the README's demo command. The demo runs one
# MiniMax-01-style step through fulgur's kernels (lightning prefill, MoE dispatch, a PyramidDrop
# event, lightning decode) on generated data and checks every stage against the fp64 references.
#   1. installs what is missing (Debian packages cmake, g++ and make; as root, like scripts/test.sh),
#   2. picks where the kernels run:
#        a GPU when `nvidia-smi -L` lists one and nvcc is present: the demo is compiled by nvcc as
#          CUDA (target fulgur_demo_gpu) for the local card (CMAKE_CUDA_ARCHITECTURES=native, or
#          FULGUR_CUDA_ARCHITECTURES=<list> from the environment);
#        otherwise the CPU: the same source compiled by g++ against fulgur's emulation of the CUDA
#          execution model (target fulgur_demo); FULGUR_DEMO_EMULATE=1 forces this on a GPU machine,
#   3. configures build-demo/ (Release; no tests or benchmarks), builds that one target, runs it.
# Exits with the demo's status: 0 when every check it prints passed.
# Needs the CUDA toolkit's headers in both cases (found by CMake as for every fulgur build).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
jobs=$(nproc 2>/dev/null || echo 2)
export PATH="$PATH:/usr/local/cuda/bin"

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing: ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing packages: ${need[*]} (run as root, or install them)" >&2
    exit 1
  fi
fi

gpu=0
smi=""
if [ "${FULGUR_DEMO_EMULATE:-0}" != 1 ] && command -v nvcc >/dev/null && command -v nvidia-smi >/dev/null; then
  smi=$(nvidia-smi -L 2>/dev/null || true)
  case "$smi" in *GPU*) gpu=1 ;; esac
fi

if [ "$gpu" = 1 ]; then
  arch=${FULGUR_CUDA_ARCHITECTURES:-native}
  echo "=== GPU found (${smi%%$'\n'*}): CUDA build for architectures '$arch' (build-demo/)"
  cmake -S . -B build-demo -DCMAKE_BUILD_TYPE=Release -DFULGUR_BUILD_TESTS=OFF -DFULGUR_BUILD_BENCH=OFF \
    -DFULGUR_BUILD_EXAMPLES=ON -DFULGUR_ENABLE_CUDA=ON "-DCMAKE_CUDA_ARCHITECTURES=$arch" >/dev/null
  target=fulgur_demo_gpu
else
  echo "=== no GPU (or FULGUR_DEMO_EMULATE=1): host build, the kernels run under fulgur's CPU emulation (build-demo/)"
  cmake -S . -B build-demo -DCMAKE_BUILD_TYPE=Release -DFULGUR_BUILD_TESTS=OFF -DFULGUR_BUILD_BENCH=OFF \
    -DFULGUR_BUILD_EXAMPLES=ON -DFULGUR_ENABLE_CUDA=OFF >/dev/null
  target=fulgur_demo
fi
cmake --build build-demo --target "$target" -j "$jobs"

echo "=== run (build-demo/examples/$target)"
status=0
"./build-demo/examples/$target" || status=$?
exit "$status"
