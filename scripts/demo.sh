#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds and runs fulgur's demo (examples/demo.cpp): the README's demo command.
#   1. installs what is missing (Debian packages cmake and g++; as root, like scripts/test.sh),
#   2. configures build-demo/ (Release, host compiler only: no tests, benchmarks or nvcc targets),
#   3. builds fulgur_demo and runs it.
# Exits with the demo's status: 0 when every check it prints passed.
# The demo runs fulgur's fp64 CPU references today, so it needs the CUDA toolkit's headers (found
# by CMake as for every fulgur build) but neither nvcc nor a GPU.
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

echo "=== configure and build (build-demo/)"
cmake -S . -B build-demo -DCMAKE_BUILD_TYPE=Release -DFULGUR_BUILD_TESTS=OFF -DFULGUR_BUILD_BENCH=OFF \
  -DFULGUR_ENABLE_CUDA=OFF -DFULGUR_BUILD_EXAMPLES=ON >/dev/null
cmake --build build-demo --target fulgur_demo -j "$jobs"

echo "=== run (build-demo/examples/fulgur_demo)"
status=0
./build-demo/examples/fulgur_demo || status=$?
exit "$status"
