#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds fulgur and runs every test: the README's test command and what CI runs (.ci/run).
#   1. installs what is missing (Debian packages; cuobjdump/nvdisasm wheels from PyPI when the
#      CUDA toolkit lacks them),
#   2. builds everything (Release) and runs all tests (ctest, every label),
#   3. reruns the emulated tests under a second resume order (reverse),
#   4. ThreadSanitizer and AddressSanitizer builds of the emulated tests.
# Exits non-zero on the first failure. FULGUR_TEST_QUICK=1 skips steps 3 and 4.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
jobs=$(nproc 2>/dev/null || echo 2)
export PATH="$PATH:/usr/local/cuda/bin"
t_start=$(date +%s)
phase() { echo; echo "=== [$(($(date +%s) - t_start)) s] $*"; }

phase "dependencies"
need=()
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
command -v python3 >/dev/null || need+=(python3 python3-pip)
[ -f /usr/include/catch2/catch.hpp ] || need+=(catch2)
[ -f /usr/include/benchmark/benchmark.h ] || need+=(libbenchmark-dev)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing packages: ${need[*]} (run as root, or install them)" >&2
    exit 1
  fi
fi
cuda_flag=-DFULGUR_ENABLE_CUDA=OFF
if command -v nvcc >/dev/null; then
  cuda_flag=-DFULGUR_ENABLE_CUDA=ON
  tools=$(bash scripts/fetch_cuda_tools.sh || true)
  [ -n "$tools" ] && export PATH="$PATH:$tools"
else
  echo "nvcc not found: building without the nvcc targets (self-tests under nvcc, SASS checks, GPU tests)"
fi

phase "configure and build (build/)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "$cuda_flag" >/dev/null
cmake --build build -j "$jobs"

phase "all tests"
(cd build && ctest -j "$jobs" --output-on-failure)

if [ "${FULGUR_TEST_QUICK:-0}" != 1 ]; then
  phase "emulated tests, second resume order (FULGUR_EMU_ORDER=reverse)"
  (cd build && FULGUR_EMU_ORDER=reverse ctest -j "$jobs" -L emu -LE sanitizer --output-on-failure)

  for san in thread address; do
    phase "sanitizer build: $san (build-$san/)"
    cmake -S . -B "build-$san" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFULGUR_SANITIZE="$san" \
      -DFULGUR_ENABLE_CUDA=OFF -DFULGUR_BUILD_EXAMPLES=OFF -DFULGUR_BUILD_BENCH=OFF >/dev/null
    cmake --build "build-$san" -j "$jobs"
    (cd "build-$san" && ctest -j "$jobs" -L emu --output-on-failure)
  done
fi

phase "all test stages passed"
