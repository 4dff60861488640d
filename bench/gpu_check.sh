#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The one-call GPU check (run on a machine with an NVIDIA GPU, nvcc and CMake; no network):
#   bash bench/gpu_check.sh OUT_DIR        full check
#   bash bench/gpu_check.sh --dry-run      configure + build only (any machine with nvcc)
# Steps: record the device; build fulgur's GPU test binaries for the card's architecture; run them
# (the same test sources that run under emulation on every CI run, plus the arch layer's
# hardware-versus-emulation checks); compute-sanitizer memcheck and racecheck over a subset.
# Results go to OUT_DIR (device.txt, build.log, tests.log, sanitizer logs, summary.md); the
# summary table is printed last. compute-sanitizer runs with --report-api-errors no: the API
# contract tests provoke failing calls on purpose and check the returned codes themselves. Catch2 is taken from .deps/include when the machine lacks it
# (scripts/prepare_gpu_deps.sh fills that folder).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dry=0
if [ "${1:-}" = "--dry-run" ]; then dry=1; out=$(mktemp -d); else out=${1:?usage: gpu_check.sh OUT_DIR | --dry-run}; fi
mkdir -p "$out"
export PATH="$PATH:/usr/local/cuda/bin"
jobs=$(nproc)
summary="$out/summary.md"
: >"$summary"
row() { printf '| %s | %s | %s |\n' "$1" "$2" "$3" | tee -a "$summary"; }
t0=$(date +%s)

arch=90a
if [ $dry = 0 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv >"$out/device.txt" 2>&1
  nvcc --version >>"$out/device.txt" 2>&1
  cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
  case "$cc" in
    90) arch=90a ;;
    "") arch=90a ;;
    *) arch=$cc ;;
  esac
fi
gpu_name=$( [ $dry = 0 ] && nvidia-smi --query-gpu=name --format=csv,noheader | head -1 || echo "dry run")
commit=${FULGUR_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
echo "fulgur GPU check: $gpu_name, sm_$arch, commit $commit, $(date -u +%Y-%m-%d)" | tee "$out/header.txt"

echo "| step | result | seconds |" | tee -a "$summary"
echo "|---|---|---|" | tee -a "$summary"

s=$(date +%s)
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DFULGUR_ENABLE_CUDA=ON -DFULGUR_CUDA_ARCHITECTURES="$arch" \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" -DFULGUR_BUILD_EXAMPLES=OFF -DFULGUR_BUILD_BENCH=OFF >"$out/build.log" 2>&1
gpu_targets=$(cmake --build build-gpu --target help 2>/dev/null | grep -oE '\b(test|bench)_[a-z0-9_]*_gpu\b' | sort -u | tr '\n' ' ')
if cmake --build build-gpu -j "$jobs" --target $gpu_targets >>"$out/build.log" 2>&1; then
  row build "ok ($gpu_targets)" $(($(date +%s) - s))
else
  row build "FAILED (build.log)" $(($(date +%s) - s))
  tail -40 "$out/build.log"
  exit 1
fi
if [ $dry = 1 ]; then
  echo "dry run: GPU test binaries built: $gpu_targets"
  exit 0
fi

s=$(date +%s)
(cd build-gpu && ctest -L gpu --output-on-failure -j 4) >"$out/tests.log" 2>&1
rc=$?
row "GPU tests (ctest -L gpu)" "$( [ $rc = 0 ] && echo pass || echo FAIL) ($(grep -E 'tests passed' "$out/tests.log" | tail -1))" $(($(date +%s) - s))

if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    for t in $gpu_targets; do
      bin=$(find build-gpu/tests -type f -name "$t" | head -1)
      [ -n "$bin" ] || continue
      s=$(date +%s)
      timeout "${FULGUR_SANITIZER_TIMEOUT:-240}" compute-sanitizer --tool "$tool" --report-api-errors no --error-exitcode 3 "$bin" >"$out/sanitizer_${tool}_${t}.log" 2>&1
      r=$?
      row "compute-sanitizer $tool $t" "$( [ $r = 0 ] && echo clean || echo "FAIL rc=$r")" $(($(date +%s) - s))
    done
  done
fi
echo
echo "total $(($(date +%s) - t0)) s; full logs in $out"
cat "$out/header.txt" "$summary" >"$out/summary_full.md"
