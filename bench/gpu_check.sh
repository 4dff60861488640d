#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The one-call GPU check (run on a machine with an NVIDIA GPU, nvcc and CMake; no network):
#   bash bench/gpu_check.sh OUT_DIR                      full check, results in OUT_DIR
#   bash bench/gpu_check.sh --dry-run                    configure + build (sm_90a) + the checks below
#   bash bench/gpu_check.sh --dry-run --prebuilt BUILD   the dry run on BUILD's binaries (CTest
#                                                        bench_dry_run, label bench, in CI)
#   bash bench/gpu_check.sh --prebuild ARCHIVE [--arch A]  on any machine with nvcc (no GPU needed):
#                                                        build step 2's binaries for sm_A (default
#                                                        90a) and pack them with their CTest files
#                                                        into ARCHIVE (.tar.gz), for a lease to carry
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
#   5b. profile (Nsight Compute, when `ncu` runs there): the kernels of the benchmarks that miss
#      their goals, one ncu run each (FULGUR_PROFILE: a ;-separated list of
#      binary:benchmark-regex:kernel-regex:launches, default below), within FULGUR_PROFILE_BUDGET
#      seconds (default 150), --clock-control none, text report into profile.txt;
# FULGUR_GPU_CHECK_SKIP=a,b,... leaves out steps: tests, bench, sanitizers, profile, peers, torch.
# FULGUR_GPU_CHECK_PREBUILT=DIR skips the build, using DIR's binaries (the build of an earlier call
# on the same machine); FULGUR_GPU_CHECK_PREBUILT=ARCHIVE.tar.gz unpacks an archive made by
# --prebuild (carried in .deps/), rewrites its CTest paths for this checkout, and uses it when it
# was built from the same sources (a hash of include/, tests/, bench/, cmake/) and its binaries
# load; otherwise it builds as usual (FULGUR_GPU_CHECK_PREBUILT_ANY=1: use it anyway). A lease too
# short for everything in one call runs two on the same warm machine (docs/gpu_checks.md, "Two calls"):
#   FULGUR_GPU_CHECK_SKIP=peers,torch,profile bash bench/gpu_check.sh OUT1   (build, tests, bench, sanitizers)
#   FULGUR_GPU_CHECK_PREBUILT=build-gpu FULGUR_GPU_CHECK_SKIP=tests,sanitizers,bench \
#     bash bench/gpu_check.sh OUT2                                          (profile, peers, torch)
# OUT_DIR gets at most 8 files (what the GPU tool returns): summary.md (device, steps, full table),
# build.log (the torch extension's build appended), tests.log (the torch extension's tests
# appended), run.log (benchmark and peer console output), bench.json, peers.json, sanitizer.log,
# profile.txt.
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

# ---- the GPU build, shared by every mode -----------------------------------------------------------
# configure_gpu BUILD_DIR ARCH LOG: the one configuration of step 2 (Ninja when present).
configure_gpu() {
  local gen=()
  [ -f "$1/CMakeCache.txt" ] || { command -v ninja >/dev/null && gen=(-G Ninja); }
  cmake -S "$root" -B "$1" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DFULGUR_ENABLE_CUDA=ON -DFULGUR_BUILD_GPU_TESTS=ON \
    -DFULGUR_CUDA_ARCHITECTURES="$2" -DCMAKE_CUDA_ARCHITECTURES="$2" -DFULGUR_BENCH_ARCHITECTURES="$2" \
    -DFULGUR_BUILD_EXAMPLES=OFF -DFULGUR_BUILD_BENCH=ON >>"$3" 2>&1
}
# gpu_target_list BUILD_DIR: the GPU test binaries and the benchmarks a configured build offers.
gpu_target_list() {
  cmake --build "$1" --target help 2>/dev/null | grep -oE '\b(test_[a-z0-9_]*_gpu|bench_(lightning|moe|token_drop))\b' |
    sort -u | tr '\n' ' '
}
# sources_hash: what the binaries are built from (the same files on every machine the tree travels to).
sources_hash() {
  (cd "$root" && find include tests bench cmake CMakeLists.txt -type f \( -name '*.cu' -o -name '*.cuh' -o -name '*.hpp' \
    -o -name '*.h' -o -name '*.cpp' -o -name '*.inl' -o -name CMakeLists.txt -o -name '*.cmake' -o -name '*.in' \) \
    -not -path '*/__pycache__/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
}
# pack_prebuilt BUILD_DIR ARCHIVE ARCH TARGETS...: the named binaries, every CTestTestfile.cmake and
# a manifest (fulgur-prebuilt.env: where and from what it was built), paths relative to BUILD_DIR.
pack_prebuilt() {
  local b a arch t f list
  b=$(cd "$1" && pwd); a=$2; arch=$3; shift 3
  list=$(mktemp)
  for t in "$@"; do
    f=$(cd "$b" && find . -type f -name "$t" -perm -u+x -not -path '*/CMakeFiles/*' | head -1)
    [ -n "$f" ] && echo "$f" >>"$list"
  done
  {
    printf "FULGUR_PREBUILT_ROOT='%s'\n" "$root"
    printf "FULGUR_PREBUILT_BDIR='%s'\n" "$b"
    printf "FULGUR_PREBUILT_ARCH='%s'\n" "$arch"
    printf "FULGUR_PREBUILT_COMMIT='%s'\n" "$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    printf "FULGUR_PREBUILT_DATE='%s'\n" "$(date -u +%Y-%m-%dT%H:%MZ)"
    printf "FULGUR_PREBUILT_SOURCES='%s'\n" "$(sources_hash)"
    printf "FULGUR_PREBUILT_TARGETS='%s'\n" "$(cd "$b" && xargs -r -n1 basename <"$list" | tr '\n' ' ')"
  } >"$b/fulgur-prebuilt.env"
  (cd "$b" && find . -name CTestTestfile.cmake -not -path '*/CMakeFiles/*' >>"$list" && echo ./fulgur-prebuilt.env >>"$list")
  mkdir -p "$(dirname "$a")"
  tar -czf "$a" -C "$b" -T "$list"
  local r=$?
  rm -f "$list"
  return $r
}
# unpack_prebuilt ARCHIVE DEST: DEST emptied, the archive unpacked there, and the CTest files'
# absolute paths (the packing machine's build folder and checkout) rewritten to DEST and this checkout.
unpack_prebuilt() {
  rm -rf "$2" && mkdir -p "$2" && tar -xzf "$1" -C "$2" || return 1
  local d
  d=$(cd "$2" && pwd)
  # shellcheck disable=SC1091
  . "$d/fulgur-prebuilt.env" || return 1
  find "$d" -name CTestTestfile.cmake -print0 | xargs -0 -r sed -i \
    -e "s#${FULGUR_PREBUILT_BDIR}\([/\"]\)#${d}\1#g" -e "s#${FULGUR_PREBUILT_ROOT}\([/\"]\)#${root}\1#g"
}

dry=0
prebuilt=""
prebuild=""
pack_arch=90a
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --prebuilt) prebuilt=${2:?--prebuilt needs a build folder}; shift ;;
    --prebuild) prebuild=${2:?--prebuild needs an archive path}; shift ;;
    --arch) pack_arch=${2:?--arch needs an architecture, e.g. 90a}; shift ;;
    -h|--help) sed -n '3,/^set -uo pipefail/p' "$0" | sed '$d'; exit 0 ;;
    *) out=$1 ;;
  esac
  shift
done

# ---- --prebuild: step 2 on this machine, packed for a lease to carry -------------------------------
if [ -n "$prebuild" ]; then
  case "$prebuild" in /*) ;; *) prebuild="$PWD/$prebuild" ;; esac
  pb_dir=${FULGUR_PREBUILD_DIR:-$root/build-gpu}
  pb_log=$pb_dir/prebuild.log
  mkdir -p "$pb_dir" && : >"$pb_log"
  say "configure $pb_dir (sm_$pack_arch; log $pb_log)"
  configure_gpu "$pb_dir" "$pack_arch" "$pb_log" || { tail -30 "$pb_log"; exit 1; }
  targets=${FULGUR_PREBUILD_TARGETS:-$(gpu_target_list "$pb_dir")}
  say "build ($(nproc) jobs): $targets"
  cmake --build "$pb_dir" -j "$(nproc)" --target $targets >>"$pb_log" 2>&1 || { tail -40 "$pb_log"; exit 1; }
  pack_prebuilt "$pb_dir" "$prebuild" "$pack_arch" $targets || exit 1
  say "packed $(tar -tzf "$prebuild" | grep -vc CTestTestfile) files, $(du -h "$prebuild" | cut -f1): $prebuild"
  say "carry its folder (e.g. .deps) and run FULGUR_GPU_CHECK_PREBUILT=${prebuild#"$root"/} bash bench/gpu_check.sh OUT"
  exit 0
fi

if [ $dry = 1 ]; then
  out=${out:-$(mktemp -d)}
elif [ -z "$out" ]; then
  echo "usage: gpu_check.sh OUT_DIR | --dry-run [--prebuilt BUILD_DIR] | --prebuild ARCHIVE [--arch A]" >&2
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

# Step 5b's default FULGUR_PROFILE (binary:benchmark-regex:kernel-regex:launches): the benchmarks
# that miss their goals. A benchmark's full name ends in /iterations:N/manual_time, so a regex
# anchored with $ after the shape matches nothing: each ends in /iterations instead (the dry run
# checks that every entry names exactly one benchmark).
default_profile="bench_lightning:^lightning\.prefill/H=8/d=128/N=32768/seqs=1/iterations:prefill:4"
default_profile+=";bench_lightning:^lightning\.decode/H=8/d=128/B=64/iterations:decode_kernel:1"
default_profile+=";bench_moe:^moe\.route/model=deepseek_v3/E=256/k=8/T=8192/iterations:route_kernel:1"
default_profile+=";bench_moe:^moe\.permute/model=deepseek_v3/E=256/k=8/T=8192/iterations:permute:4"
default_profile+=";bench_moe:^moe\.gather_by_token/model=qwen3/E=128/k=8/H=4096/T=32768/iterations:gather_by_token_kernel:1"
default_profile+=";bench_token_drop:^token_drop\.fused/model=llava_next/H=32/Hkv=32/D=4096/N=2880/L=2944/B=1/iterations:fused|gather_rows:2"
default_profile+=";bench_token_drop:^token_drop\.score/model=llava_next/H=32/Hkv=32/D=4096/N=2880/L=2944/B=1/iterations:score:2"
default_profile+=";bench_moe:^moe\.route/model=deepseek_v3/E=256/k=8/T=1/iterations:route_kernel:1"  # 12.4 us for one token
default_profile+=";bench_token_drop:^token_drop\.select/model=llava_next/H=32/Hkv=32/D=4096/N=2880/L=2944/B=1/iterations:select:1"

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
    say "configure $bdir (sm_90a)"
    : >"$out/build.log"
    if ! configure_gpu "$bdir" 90a "$out/build.log"; then
      tail -30 "$out/build.log"; bad "configure"; echo "0 passed, 1 failed"; exit 1
    fi
    targets=$(gpu_target_list "$bdir")
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
  # Every profile entry names exactly one benchmark of its binary (one that matches none would
  # leave profile.txt without that kernel on the card, and cost a device minute to find out).
  prof_bad=""
  IFS=';' read -r -a pentries <<<"${FULGUR_PROFILE:-$default_profile}"
  for e in "${pentries[@]}"; do
    pbin=${e%%:*}
    rest=${e#*:}
    pbench=${rest%%:*}
    n=0
    if [ -x "$bdir/bench/$pbin" ]; then
      n=$({ "$bdir/bench/$pbin" --benchmark_list_tests --benchmark_filter="$pbench" 2>/dev/null || true; } | grep -c . || true)
    fi
    [ "$n" = 1 ] || prof_bad+=" $pbin:$pbench ($n)"
  done
  if [ -z "$prof_bad" ]; then ok "profile entries: ${#pentries[@]}, one benchmark each"; else
    bad "profile entries not naming exactly one benchmark:$prof_bad"; fi
  # The prebuilt archive's round trip on this build's benchmarks: pack, unpack elsewhere, every CTest
  # path rewritten (none of the packing build's left), the binaries run from their new place.
  names=$(for b in $benches; do basename "$b"; done | tr '\n' ' ')
  if [ -n "$names" ] && pack_prebuilt "$bdir" "$scratch/prebuilt.tar.gz" 90a $names 2>"$scratch/err" &&
    unpack_prebuilt "$scratch/prebuilt.tar.gz" "$scratch/unpacked" 2>>"$scratch/err"; then
    left_paths=$(grep -rl -- "$bdir/" "$scratch/unpacked" --include=CTestTestfile.cmake 2>/dev/null | wc -l)
    listed=0
    for n in $names; do
      f=$(find "$scratch/unpacked" -type f -name "$n" | head -1)
      # the whole listing read (grep -c): with pipefail, grep -q could close the pipe early and
      # the binary's SIGPIPE would fail the check at random
      [ -n "$f" ] && [ "$("$f" --benchmark_list_tests 2>/dev/null | grep -c .)" -gt 0 ] && listed=$((listed + 1))
    done
    ctest_ok=$( (cd "$scratch/unpacked" && ctest --show-only=json-v1 >"$scratch/tests.json" 2>>"$scratch/err") && echo 1 || echo 0)
    moved=$(grep -c -- "$scratch/unpacked/" "$scratch/tests.json" 2>/dev/null)
    if [ "$left_paths" = 0 ] && [ "$listed" = "$(echo $names | wc -w)" ] && [ "$ctest_ok" = 1 ] && [ "${moved:-0}" -gt 0 ]; then
      ok "prebuilt archive: $(du -h "$scratch/prebuilt.tar.gz" | cut -f1), unpacked elsewhere, CTest paths rewritten, $listed binaries run there"
    else
      cat "$scratch/err"; bad "prebuilt archive: old paths in $left_paths CTest files, $listed binaries run, ctest json $ctest_ok, ${moved:-0} moved paths"
    fi
  else
    cat "$scratch/err"; bad "prebuilt archive: pack/unpack failed"
  fi
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

# 2. build. FULGUR_GPU_CHECK_PREBUILT=DIR: DIR's binaries as they are (an earlier call's build);
# =ARCHIVE: a --prebuild archive, used when built from these sources and its binaries load.
s=$(date +%s)
pre=${FULGUR_GPU_CHECK_PREBUILT:-}
bdir=build-gpu
use_prebuilt=0
pre_note=""
if [ -n "$pre" ] && [ -f "$pre" ]; then
  say "unpack the prebuilt archive $pre"
  if unpack_prebuilt "$pre" "$root/build-gpu-prebuilt" 2>"$scratch/unpack.err"; then
    here=$(sources_hash)
    first=""
    for t in $FULGUR_PREBUILT_TARGETS; do
      case "$t" in test_*) first=$(find "$root/build-gpu-prebuilt" -type f -name "$t" | head -1); break ;; esac
    done
    pre_note="commit $FULGUR_PREBUILT_COMMIT, sm_$FULGUR_PREBUILT_ARCH, built $FULGUR_PREBUILT_DATE"
    if [ "$FULGUR_PREBUILT_SOURCES" != "$here" ] && [ "${FULGUR_GPU_CHECK_PREBUILT_ANY:-0}" != 1 ]; then
      pre_note="not used: built from other sources ($FULGUR_PREBUILT_SOURCES, here $here; $pre_note)"
    elif [ "$FULGUR_PREBUILT_ARCH" != "$arch" ]; then
      pre_note="not used: built for sm_$FULGUR_PREBUILT_ARCH, this card is sm_$arch"
    elif [ -n "$first" ] && { "$first" --list-tests >/dev/null 2>"$scratch/load.err"; r=$?; [ $r != 0 ] && [ $r != 77 ]; }; then
      # 77: the test binaries' skip code without a usable GPU; the loader's failures are 126/127
      pre_note="not used: $(basename "$first") does not start here (rc=$r: $(head -c 200 "$scratch/load.err"))"
    else
      use_prebuilt=1
      bdir=$root/build-gpu-prebuilt
      [ "$FULGUR_PREBUILT_SOURCES" = "$here" ] || pre_note="$pre_note; SOURCES DIFFER (FULGUR_GPU_CHECK_PREBUILT_ANY=1)"
    fi
  else
    pre_note="not used: unpacking failed ($(head -c 200 "$scratch/unpack.err"))"
  fi
  say "prebuilt archive: $pre_note"
elif [ -n "$pre" ]; then
  use_prebuilt=1
  bdir=$pre
  pre_note="prebuilt $bdir"
fi
if [ $use_prebuilt = 1 ]; then
  if [ -f "$bdir/fulgur-prebuilt.env" ]; then
    # shellcheck disable=SC1091
    . "$bdir/fulgur-prebuilt.env"
    all_targets=$FULGUR_PREBUILT_TARGETS
  else
    all_targets=$(gpu_target_list "$bdir")
  fi
  row build "prebuilt: $pre_note ($(echo $all_targets | wc -w) binaries)" $(($(date +%s) - s))
else
  say "configure and build (sm_$arch, $jobs jobs)"
  configure_gpu build-gpu "$arch" "$out/build.log"
  all_targets=$(gpu_target_list build-gpu)
  if timeout $(($(left) > 120 ? $(left) - 60 : 60)) cmake --build build-gpu -j "$jobs" --target $all_targets \
    >>"$out/build.log" 2>&1; then
    row build "ok ($all_targets; $(grep -oE 'benchmarks use [^:]*' "$out/build.log" 2>/dev/null | head -1))${pre_note:+; archive $pre_note}" $(($(date +%s) - s))
  else
    row build "FAILED (build.log)${pre_note:+; archive $pre_note}" $(($(date +%s) - s))
    tail -40 "$out/build.log"
    # keep going with whatever was built: a broken family must not cost the others' results
  fi
fi
gpu_targets=$(echo "$all_targets" | tr ' ' '\n' | grep -E '^test_[a-z0-9_]*_gpu$' | tr '\n' ' ')

# 3. tests
s=$(date +%s)
: >"$out/tests.log"
if skipped tests; then
  row "GPU tests (ctest -L gpu)" "skipped (FULGUR_GPU_CHECK_SKIP)" 0
else
  say "GPU tests"
  only=()  # a prebuilt archive holds the binaries it lists: run those (a partial one is no failure)
  [ $use_prebuilt = 1 ] && [ -n "$gpu_targets" ] && only=(-R "^($(echo $gpu_targets | tr ' ' '|'))\$")
  (cd "$bdir" && timeout $(($(left) > 200 ? 150 : 60)) ctest -L gpu "${only[@]}" --output-on-failure -j 4) >"$out/tests.log" 2>&1
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

prof_sections=()
for x in SpeedOfLight Occupancy LaunchStats WarpStateStats SchedulerStats MemoryWorkloadAnalysis \
  ComputeWorkloadAnalysis InstructionStats SourceCounters; do prof_sections+=(--section "$x"); done
if skipped profile; then
  row "profile (ncu)" "skipped (FULGUR_GPU_CHECK_SKIP)" 0
elif ! command -v ncu >/dev/null; then
  row "profile (ncu)" "skipped (no ncu on PATH)" 0
else
  : >"$out/profile.txt"
  pbud=${FULGUR_PROFILE_BUDGET:-150}
  [ "$pbud" -gt $(($(left) / 2)) ] && pbud=$(($(left) / 2))  # leave the peers their share
  prof_end=$(($(date +%s) + pbud))
  IFS=';' read -r -a entries <<<"${FULGUR_PROFILE:-$default_profile}"
  i=0
  for entry in "${entries[@]}"; do
    IFS=':' read -r pbin pbench pkern pcount <<<"$entry"
    i=$((i + 1))
    # what is left minus 10 s for each later entry, at most 60: the first (most wanted) entries get
    # the time they need, a quick one leaves its share to the rest
    share=$((prof_end - $(date +%s) - 10 * (${#entries[@]} - i)))
    [ "$share" -gt 60 ] && share=60
    b=$bdir/bench/$pbin
    if [ ! -x "$b" ]; then row "profile $pbench" "not run: $pbin not built" 0; continue; fi
    if [ "$share" -lt 10 ]; then row "profile $pbench" "skipped (time budget)" 0; continue; fi
    s=$(date +%s)
    say "ncu: $pbench (kernels /$pkern/, $pcount launches, limit $share s)"
    echo "==== ncu: $pbin $pbench (kernels /$pkern/, first ${pcount:-1} launches)" >>"$out/profile.txt"
    timeout "$share" ncu --clock-control none --kernel-name "regex:$pkern" --launch-count "${pcount:-1}" "${prof_sections[@]}" \
      --print-summary none "$b" --benchmark_filter="$pbench" --fulgur_target_time=0.002 >>"$out/profile.txt" 2>&1
    r=$?
    n=$(count 'Section: GPU Speed Of Light' "$out/profile.txt")
    row "profile $pbench" "$( [ $r = 0 ] && echo ok || { [ $r = 124 ] && echo "stopped at its $share s limit" || echo "rc=$r"; }) ($n kernel reports in profile.txt so far)" $(($(date +%s) - s))
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
