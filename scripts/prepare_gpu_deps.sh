#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Fills the ignored folder .deps/ with what the GPU machine lacks and cannot download (it has no
# network), from this machine's Debian packages (scripts/test.sh installs them):
#   .deps/include/catch2/catch.hpp        Catch2 v2's single header (catch2)
#   .deps/include/benchmark/*.h           Google Benchmark's headers (libbenchmark-dev)
#   .deps/lib/libbenchmark.so.1debian     its shared library under its SONAME, a plain file (no
#                                         symbolic links: they do not travel)
# Debian 12's libbenchmark 1.7.1 needs GLIBC_2.32 / GLIBCXX_3.4.30 at most, so it loads on the GPU
# image's newer glibc and libstdc++; if it does not, bench/CMakeLists.txt's probe falls back to the
# built-in harness (bench/gbench_lite.hpp). The GPU call must carry ".deps".
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$root/.deps/include/catch2" "$root/.deps/include/benchmark" "$root/.deps/lib"
cp /usr/include/catch2/catch.hpp "$root/.deps/include/catch2/"
if [ -f /usr/include/benchmark/benchmark.h ]; then
  cp /usr/include/benchmark/*.h "$root/.deps/include/benchmark/"
  lib=$(readlink -f /usr/lib/x86_64-linux-gnu/libbenchmark.so)
  cp "$lib" "$root/.deps/lib/libbenchmark.so.1debian"
  echo "prepared Google Benchmark from $lib"
else
  echo "libbenchmark-dev not installed: the GPU check will use bench/gbench_lite.hpp"
fi
echo "prepared $root/.deps ($(du -sh "$root/.deps" | cut -f1))"
