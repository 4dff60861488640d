#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The one-call GPU check (run on a machine with an NVIDIA GPU, nvcc and CMake; no network):
#   bash bench/gpu_check.sh OUT_DIR                      full check, results in OUT_DIR
#   bash bench/gpu_check.sh --dry-run                    configure + build (sm_90a) + the checks below
#   bash bench/gpu_check.sh --dry-run --prebuilt BUILD   the dry run on BUILD's binaries (CTest
#                                                        bench_dry_run, label bench, in CI)
# Steps of the full check, each bounded so the whole script ends within FULGUR_GPU_CHECK_BUDGET
# seconds (default 470, under the issue's 8 minutes, the build included), progress printed as it goes:
#   1. record the device; install the peer wheels carried in .whl/ (if any) into a temporary
#      folder on PYTHONPATH (scripts/fetch_peer_wheels.sh fills .whl/ on a machine with PyPI);
#   2. build fulgur's GPU test binaries (*_gpu) and the benchmark binaries (bench_<family>) for the
#      card's architecture only (Ninja when present);
#   3. run the GPU tests (ctest -L gpu: the same test sources that run under emulation in CI, plus
#      the arch layer's hardware-versus-emulation checks);
#   4. the benchmarks (bench/common.cuh: CUDA events, L2 flush, rotated inputs, floor counters),
#      JSON merged into bench.json;
#   5. compute-sanitizer memcheck then racecheck over a subset of the GPU test binaries (one or two
#      per family: FULGUR_SANITIZER_TESTS, a regex), within FULGUR_SANITIZER_BUDGET seconds (default
#      90) shared equally, at most FULGUR_SANITIZER_TIMEOUT (60) per run; raise both (and
#      FULGUR_GPU_CHECK_BUDGET) for a sanitizer-focused call;
#      --report-api-errors no: the API contract tests provoke failing calls on purpose and check
#      the returned codes themselves;
#   6. the peers (bench/peers/run_peers.py: PyTorch compositions, fla, OpenNLPLab lightning_attn
#      when importable), each checked against an fp64 reference, within the time left;
#   7. the PyTorch extension (examples/torch), when torch imports (FULGUR_GPU_CHECK_TORCH=0: never):
#      setup.py builds it in the background while step 2 builds (both only compile; it must end
#      before the benchmarks start, or it is stopped), then examples/torch/run_tests.py runs its
#      pytest against plain-PyTorch references within FULGUR_TORCH_BUDGET seconds (default 90,
#      reserved out of the peers' share when enough is left), skipped when under 30 s remain;
#   8. the comparison (bench/compare.py): the full table into summary.md, the short one printed last.
# FULGUR_GPU_CHECK_SKIP=a,b,... leaves out steps: tests, bench, sanitizers, peers, torch (and
# FULGUR_GPU_CHECK_PREBUILT=DIR skips the build, using DIR's binaries). A lease too short for
# everything in one call runs two on the same warm machine (docs/gpu_checks.md, "Two calls"):
#   bash bench/gpu_check.sh OUT1                                   (build, tests, benchmarks, ...)
#   FULGUR_GPU_CHECK_PREBUILT=build-gpu FULGUR_GPU_CHECK_SKIP=tests,sanitizers \
#     bash bench/gpu_check.sh OUT2                                 (benchmarks again, peers, torch)
# OUT_DIR gets at most 7 files (the GPU tool returns 8): summary.md (device, steps, full table),
# build.log (the torch extension's build appended), tests.log (the torch extension's tests
# appended), run.log (benchmark and peer console output), bench.json, peers.json, sanitizer.log.
# Catch2 and Google Benchmark are taken from .deps/ when the machine lacks them
# (scripts/prepare_gpu_deps.sh fills that folder; bench/CMakeLists.txt falls back to a built-in
# harness if the carried library does not load).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$PATH:/usr/local/cuda/bin"
export PYTHONUNBUFFERED=1
t0=$(date +%s)
budget=${FULGUR_GPU_CHECK_BUDGET:-470}
elapsed() { echo $(($(date +%s) - t0)); }
left() { echo $((budget - $(date +%s) + t0)); }
say() { echo "[$(elapsed) s] $*"; }
skipped() { case ",${FULGUR_GPU_CHECK_SKIP:-}," in *",$1,"*) return 0 ;; esac; return 1; }

dry=0
prebuilt=""
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --prebuilt) prebuilt=${2:?--prebuilt needs a build folder}; shift ;;
    -h|--help) sed -n '3,/^set -uo pipefail/p' "$0" | sed '$d'; exit 0 ;;
    *) out=$1 ;;
  esac
  shift
done
if [ $dry = 1 ]; then
  out=${out:-$(mktemp -d)}
elif [ -z "$out" ]; then
  echo "usage: gpu_check.sh OUT_DIR | --dry-run [--prebuilt BUILD_DIR]" >&2
  exit 2
fi
mkdir -p "$out"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
jobs=$(nproc)
summary="$out/summary.md"
: >"$summary"
row() { printf '| %s | %s | %s |\n' "$1" "$2" "$3" | tee -a "$summary"; }
count() { local n; n=$(grep -c -- "$1" "$2" 2>/dev/null); echo "${n:-0}"; }

# ---- dry run: the parts that need no GPU ---------------------------------------------------------
if [ $dry = 1 ]; then
  fails=0
  pass=0
  ok() { pass=$((pass + 1)); say "ok: $*"; }
  bad() { fails=$((fails + 1)); say "FAILED: $*"; }
  if [ -n "$prebuilt" ]; then
    bdir=$(cd "$prebuilt" && pwd)
  else
    bdir="$root/build-gpu"
    gen=()
    [ -f "$bdir/CMakeCache.txt" ] || { command -v ninja >/dev/null && gen=(-G Ninja); }
    say "configure $bdir (sm_90a)"
    if ! cmake -S . -B "$bdir" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DFULGUR_ENABLE_CUDA=ON -DFULGUR_BUILD_GPU_TESTS=ON \
      -DFULGUR_CUDA_ARCHITECTURES=90a -DCMAKE_CUDA_ARCHITECTURES=90a -DFULGUR_BENCH_ARCHITECTURES=90a \
      -DFULGUR_BUILD_EXAMPLES=OFF -DFULGUR_BUILD_BENCH=ON >"$out/build.log" 2>&1; then
      tail -30 "$out/build.log"; bad "configure"; echo "0 passed, 1 failed"; exit 1
    fi
    targets=$(cmake --build "$bdir" --target help 2>/dev/null | grep -oE '\b(test_[a-z0-9_]*_gpu|bench_(lightning|moe|token_drop))\b' | sort -u | tr '\n' ' ')
    say "build: $targets"
    if cmake --build "$bdir" -j "$jobs" --target $targets >>"$out/build.log" 2>&1; then ok "build"; else
      tail -40 "$out/build.log"; bad "build"; echo "$pass passed, $fails failed"; exit 1
    fi
  fi
  benches=$(ls "$bdir"/bench/bench_lightning "$bdir"/bench/bench_moe "$bdir"/bench/bench_token_drop 2>/dev/null)
  [ -n "$benches" ] || bad "no benchmark binary in $bdir/bench"
  for b in $benches; do
    n=$("$b" --benchmark_list_tests 2>"$scratch/err" | grep -c .)
    c=$("$b" --fulgur_costs 2>>"$scratch/err" | tail -n +2 | grep -c .)
    if [ "$n" -gt 0 ] && [ "$n" = "$c" ]; then ok "$(basename "$b"): $n benchmarks listed, costs for each"; else
      cat "$scratch/err"; bad "$(basename "$b"): listed $n, costs $c"; fi
    if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
      if msg=$("$b" 2>&1) && echo "$msg" | grep -q "no CUDA device"; then ok "$(basename "$b") skips without a GPU (exit 0)";
      else echo "$msg" | tail -5; bad "$(basename "$b") without a GPU"; fi
    fi
  done
  if python3 -m py_compile bench/compare.py bench/peers/*.py 2>"$scratch/err"; then ok "python peers compile"; else
    cat "$scratch/err"; bad "py_compile"; fi
  # The torch example: its Python compiles, and its tests run (or skip: no torch, no GPU, or no built
  # extension here) through run_tests.py, the runner step 7 uses.
  if python3 -m py_compile examples/torch/setup.py examples/torch/run_tests.py examples/torch/test_fulgur_torch.py \
    examples/torch/fulgur_torch/__init__.py 2>"$scratch/err" && python3 examples/torch/run_tests.py >"$scratch/torch" 2>&1; then
    ok "torch example: python compiles, run_tests.py: $(tail -1 "$scratch/torch")"; else
    cat "$scratch/err" "$scratch/torch" 2>/dev/null | tail -20; bad "torch example (examples/torch)"; fi
  if python3 bench/peers/run_peers.py --bench-dir "$bdir/bench" --dry-run --out "$scratch/peers.json"; then
    ok "peers dry run"; else bad "peers dry run"; fi
  if python3 bench/compare.py --self-test >"$scratch/cmp" 2>&1; then ok "compare self-test"; else
    cat "$scratch/cmp"; bad "compare self-test"; fi
  if bash -n "$0" && bash -n scripts/prepare_gpu_deps.sh && bash -n scripts/fetch_peer_wheels.sh; then ok "scripts parse"; else
    bad "bash -n"; fi
  echo "$pass passed, $fails failed"
  [ $fails = 0 ]
  exit
fi

# ---- full check ------------------------------------------------------------------------------------
arch=90a
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv >"$scratch/device.txt" 2>&1
nvcc --version 2>&1 | tail -2 >>"$scratch/device.txt"
cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
case "$cc" in
  90|"") arch=90a ;;
  *) arch=$cc ;;
esac
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
commit=${FULGUR_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
header="fulgur GPU check: ${gpu_name:-no GPU}, sm_$arch, commit $commit, $(date -u +%Y-%m-%d)"
{
  echo "# $header"
  echo
  echo '```'
  cat "$scratch/device.txt"
  echo '```'
  echo
  echo "| step | result | seconds |"
  echo "|---|---|---|"
} >>"$summary"
say "$header"

# 1. peer wheels
if ls .whl/*.whl >/dev/null 2>&1; then
  s=$(date +%s)
  site=$scratch/site
  if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl \
    >"$scratch/pip.log" 2>&1; then
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    row "peer wheels" "installed: $(cd .whl && ls *.whl | tr '\n' ' ')" $(($(date +%s) - s))
  else
    row "peer wheels" "pip FAILED: $(tail -1 "$scratch/pip.log")" $(($(date +%s) - s))
  fi
fi

# 7a. the torch extension builds in the background, beside step 2 (out of the source tree, so a stale
# library can never be tested); collected before the benchmarks.
torch_on=0
torch_pid=""
torch_built=0
torch_dir=$scratch/torch
if [ "${FULGUR_GPU_CHECK_TORCH:-1}" != 0 ] && ! skipped torch && python3 -c "import torch" >/dev/null 2>&1; then
  torch_on=1
  mkdir -p "$torch_dir"
  torch_arch=$arch
  (cd examples/torch && exec nice -n 5 env MAX_JOBS=$((jobs > 8 ? jobs / 2 : 4)) FULGUR_TORCH_ARCH="$torch_arch" \
    FULGUR_TORCH_ALLOW_CUDA_MISMATCH=1 \
    timeout $((budget / 2 > 120 ? budget / 2 : 120)) python3 setup.py build_ext --build-lib "$torch_dir/lib" \
    --build-temp "$torch_dir/tmp") >"$torch_dir/build.log" 2>&1 &
  torch_pid=$!
  torch_start=$(date +%s)
  say "torch extension: building in the background (sm_$torch_arch)"
fi

# 2. build (FULGUR_GPU_CHECK_PREBUILT=DIR: use DIR's binaries as they are, to test this script)
s=$(date +%s)
bdir=${FULGUR_GPU_CHECK_PREBUILT:-build-gpu}
gpu_targets=""
bench_targets=""
if [ -z "${FULGUR_GPU_CHECK_PREBUILT:-}" ]; then
  gen=()
  [ -f build-gpu/CMakeCache.txt ] || { command -v ninja >/dev/null && gen=(-G Ninja); }
  say "configure and build (sm_$arch, $jobs jobs)"
  cmake -S . -B build-gpu "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DFULGUR_ENABLE_CUDA=ON -DFULGUR_BUILD_GPU_TESTS=ON -DFULGUR_CUDA_ARCHITECTURES="$arch" \
    -DCMAKE_CUDA_ARCHITECTURES="$arch" -DFULGUR_BENCH_ARCHITECTURES="$arch" -DFULGUR_BUILD_EXAMPLES=OFF \
    -DFULGUR_BUILD_BENCH=ON >"$out/build.log" 2>&1
fi
harness=$(grep -oE 'benchmarks use [^:]*' "$out/build.log" 2>/dev/null | head -1)
gpu_targets=$(cmake --build "$bdir" --target help 2>/dev/null | grep -oE '\b(test|bench)_[a-z0-9_]*_gpu\b' | sort -u | tr '\n' ' ')
bench_targets=$(cmake --build "$bdir" --target help 2>/dev/null | grep -oE '\bbench_(lightning|moe|token_drop)\b' | sort -u | tr '\n' ' ')
if [ -n "${FULGUR_GPU_CHECK_PREBUILT:-}" ]; then
  row build "prebuilt $bdir" 0
elif timeout $(($(left) > 120 ? $(left) - 60 : 60)) cmake --build build-gpu -j "$jobs" --target $gpu_targets $bench_targets \
  >>"$out/build.log" 2>&1; then
  row build "ok ($gpu_targets$bench_targets; $harness)" $(($(date +%s) - s))
else
  row build "FAILED (build.log)" $(($(date +%s) - s))
  tail -40 "$out/build.log"
  # keep going with whatever was built: a broken family must not cost the others' results
fi

# 3. tests
s=$(date +%s)
: >"$out/tests.log"
if skipped tests; then
  row "GPU tests (ctest -L gpu)" "skipped (FULGUR_GPU_CHECK_SKIP)" 0
else
  say "GPU tests"
  (cd "$bdir" && timeout $(($(left) > 200 ? 150 : 60)) ctest -L gpu --output-on-failure -j 4) >"$out/tests.log" 2>&1
  rc=$?
  row "GPU tests (ctest -L gpu)" "$( [ $rc = 0 ] && echo pass || echo "FAIL rc=$rc") ($(grep -E 'tests passed' "$out/tests.log" | tail -1))" $(($(date +%s) - s))
fi

# 7b. the torch extension's build must not overlap the benchmarks: wait for it (bounded), else stop it.
if [ -n "$torch_pid" ]; then
  s=$(date +%s)
  wait_end=$((s + (${FULGUR_TORCH_BUDGET:-90} < $(left) / 3 ? ${FULGUR_TORCH_BUDGET:-90} : $(left) / 3)))
  while kill -0 "$torch_pid" 2>/dev/null && [ "$(date +%s)" -lt "$wait_end" ]; do sleep 1; done
  if kill -0 "$torch_pid" 2>/dev/null; then
    kill -TERM "$torch_pid" 2>/dev/null  # timeout passes it on to setup.py and its compilers
    wait "$torch_pid" 2>/dev/null
    torch_res="stopped before the benchmarks"
  else
    wait "$torch_pid"
    r=$?
    so=$(find "$torch_dir/lib" -name '_C*.so' 2>/dev/null | head -1)
    if [ "$r" = 0 ] && [ -n "$so" ]; then torch_built=1; torch_res=ok; else torch_res="FAILED rc=$r (build.log)"; fi
  fi
  { echo; echo "==== torch extension (examples/torch/setup.py build_ext)"; cat "$torch_dir/build.log"; } >>"$out/build.log"
  [ "$torch_built" = 1 ] || tail -30 "$torch_dir/build.log"
  row "torch extension build (examples/torch)" "$torch_res" $(($(date +%s) - torch_start))
fi

# 4. benchmarks
: >"$out/run.log"
bench_json=()
for fam in lightning moe token_drop; do
  skipped bench && { row "bench_$fam" "skipped (FULGUR_GPU_CHECK_SKIP)" 0; continue; }
  b=$bdir/bench/bench_$fam
  [ -x "$b" ] || { row "bench_$fam" "not built" 0; continue; }
  s=$(date +%s)
  lim=$(($(left) / 4 > 150 ? 150 : ($(left) / 4 < 30 ? 30 : $(left) / 4)))
  say "bench_$fam (limit $lim s)"
  timeout "$lim" "$b" --benchmark_out="$scratch/bench_$fam.json" --benchmark_out_format=json \
    --benchmark_counters_tabular=true 2>&1 | tee -a "$out/run.log" | grep -E "^(lightning|moe|token_drop)\." | cut -c1-150
  r=${PIPESTATUS[0]}
  n=$(count '"real_time"' "$scratch/bench_$fam.json")
  row "bench_$fam" "$( [ "$r" = 0 ] && echo ok || echo "rc=$r") ($n results)" $(($(date +%s) - s))
  [ -s "$scratch/bench_$fam.json" ] && bench_json+=("$fam=$scratch/bench_$fam.json")
done
python3 - "$out/bench.json" "${bench_json[@]}" <<'EOF'
import json, sys
runs = {}
for arg in sys.argv[2:]:
    fam, path = arg.split("=", 1)
    try:
        runs[fam] = json.load(open(path))
    except Exception as e:  # a run killed by its time limit leaves a partial file
        runs[fam] = {"error": f"{type(e).__name__}: {e}"}
json.dump({"runs": runs}, open(sys.argv[1], "w"), indent=1)
EOF

# 5. sanitizers: memcheck over the subset, then racecheck, each run given an equal share of what is
# left of the budget (at most FULGUR_SANITIZER_TIMEOUT); a run cut by its limit is reported as such.
: >"$out/sanitizer.log"
if skipped sanitizers; then
  row "compute-sanitizer" "skipped (FULGUR_GPU_CHECK_SKIP)" 0
elif command -v compute-sanitizer >/dev/null; then
  sb=${FULGUR_SANITIZER_BUDGET:-90}
  [ "$sb" -gt $(($(left) * 2 / 5)) ] && sb=$(($(left) * 2 / 5))  # leave the peers their share
  san_end=$(($(date +%s) + sb))
  pattern=${FULGUR_SANITIZER_TESTS:-'^test_(primitives|lightning_prefill|lightning_decode|moe_route|moe_permute|moe_dispatch|token_drop_fused)_gpu$'}
  bins=()
  for t in $gpu_targets; do
    echo "$t" | grep -qE "$pattern" || continue
    bin=$(find "$bdir/tests" -type f -name "$t" 2>/dev/null | head -1)
    [ -n "$bin" ] && bins+=("$bin")
  done
  runs=()
  for tool in memcheck racecheck; do
    for bin in "${bins[@]}"; do runs+=("$tool:$bin"); done
  done
  i=0
  for run in "${runs[@]}"; do
    tool=${run%%:*}
    bin=${run#*:}
    t=$(basename "$bin")
    i=$((i + 1))
    remaining=$((san_end - $(date +%s)))
    share=$((remaining / (${#runs[@]} - i + 1)))
    lim=$((share < ${FULGUR_SANITIZER_TIMEOUT:-60} ? share : ${FULGUR_SANITIZER_TIMEOUT:-60}))
    if [ "$lim" -lt 5 ] || [ "$(left)" -lt 60 ]; then
      row "compute-sanitizer $tool $t" "skipped (time budget)" 0
      continue
    fi
    s=$(date +%s)
    echo "==== compute-sanitizer --tool $tool $t (limit $lim s)" >>"$out/sanitizer.log"
    timeout "$lim" compute-sanitizer --tool "$tool" --report-api-errors no --error-exitcode 3 "$bin" \
      >>"$out/sanitizer.log" 2>&1
    r=$?
    res=$( [ $r = 0 ] && echo clean || { [ $r = 124 ] && echo "stopped at its $lim s limit, no finding before it" || echo "FAIL rc=$r"; })
    row "compute-sanitizer $tool $t" "$res" $(($(date +%s) - s))
  done
fi

# 6. peers
s=$(date +%s)
torch_reserve=0
if [ "$torch_built" = 1 ] && [ $(($(left) - 45 - ${FULGUR_TORCH_BUDGET:-90})) -ge 60 ]; then
  torch_reserve=${FULGUR_TORCH_BUDGET:-90}  # the torch tests' share, taken only when the peers keep 60 s
fi
pb=$(($(left) - 45 - torch_reserve))
if skipped peers; then
  row "peers" "skipped (FULGUR_GPU_CHECK_SKIP)" 0
elif [ "$pb" -ge 20 ]; then
  say "peers (budget $pb s)"
  timeout $((pb + 40)) python3 bench/peers/run_peers.py --bench-dir "$bdir/bench" --out "$out/peers.json" \
    --budget "$pb" 2>&1 | tee -a "$out/run.log" | cut -c1-200
  r=${PIPESTATUS[0]}
  row "peers" "$( [ "$r" = 0 ] && echo ok || echo "rc=$r") ($(count '"peer"' "$out/peers.json") results, $(count '"WRONG"' "$out/peers.json") WRONG)" $(($(date +%s) - s))
else
  row "peers" "skipped (time budget)" 0
fi

# 7. the torch extension's tests
if [ "$torch_on" = 1 ]; then
  s=$(date +%s)
  lim=$(($(left) - 20))
  [ "$lim" -gt "${FULGUR_TORCH_BUDGET:-90}" ] && lim=${FULGUR_TORCH_BUDGET:-90}
  if [ "$torch_built" != 1 ]; then
    row "torch extension tests" "not run: no extension was built" 0
  elif [ "$lim" -lt 30 ]; then
    row "torch extension tests" "skipped (time budget)" 0
  else
    say "torch extension tests (limit $lim s)"
    echo "==== torch extension tests (examples/torch/run_tests.py, limit $lim s)" >>"$out/tests.log"
    # The library links the toolkit's libcudart.so (torch's wheel carries its own, maybe of another major).
    LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" FULGUR_TORCH_LIBRARY=$so \
      FULGUR_TORCH_REQUIRE=1 timeout "$lim" python3 examples/torch/run_tests.py \
      >"$torch_dir/tests.log" 2>&1
    r=$?
    cat "$torch_dir/tests.log" >>"$out/tests.log"
    line=$(grep -E '(passed|failed|skipped|error)' "$torch_dir/tests.log" | tail -1 | tr -d '=' | sed 's/^ *//')
    res=$( [ $r = 0 ] && echo pass || { [ $r = 124 ] && echo "stopped at its $lim s limit" || echo "FAIL rc=$r"; })
    mismatch=$(grep -o 'CUDA major mismatch allowed ([^)]*)' "$torch_dir/build.log" | head -1)
    row "torch extension tests (examples/torch)" "$res ($line${mismatch:+; $mismatch})" $(($(date +%s) - s))
  fi
else
  row "torch extension" "skipped ($( { [ "${FULGUR_GPU_CHECK_TORCH:-1}" = 0 ] || skipped torch; } && echo 'FULGUR_GPU_CHECK_TORCH=0 or SKIP' || echo 'torch not importable'))" 0
fi

# 8. comparison
echo >>"$summary"
python3 bench/compare.py --bench "$out/bench.json" --peers "$out/peers.json" --full "$summary" \
  --header "## fulgur vs peers (times in us, mean over iterations; % floor = floor / time)" >"$scratch/short.md" 2>&1
echo
echo "total $(elapsed) s; full results in $out"
echo
cat "$scratch/short.md"
