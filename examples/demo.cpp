// SPDX-License-Identifier: Apache-2.0
// fulgur demo: one MiniMax-01-style step and one PyramidDrop event, on generated data, every
// stage checked and timed:
//   1. lightning prefill of a varlen batch (slot pool, a stateless sequence, checkpoints):
//      the block form against the per-token recurrence,
//   2. MoE with the MiniMax-Text-01 routing (route, permute, gather, small dense experts,
//      combine) against a direct per-token computation,
//   3. PyramidDrop on a LLaVA-style batch (score, select, compact) and its stage schedule,
//   4. lightning decode from the states stage 1 saved, against one longer prefill.
//
// Today every stage runs fulgur's fp64 CPU references (include/fulgur/reference/), called with
// the same Params structs the GPU kernels will take; as the kernels land, each stage swaps its
// reference call for the kernel launch and keeps its check. Run it with `bash scripts/demo.sh`.
// Exit status 0 when every check passes, 1 otherwise. FULGUR_DEMO_SEED=<n> changes the data.
#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "fulgur/lightning/params.hpp"
#include "fulgur/lightning/slopes.hpp"
#include "fulgur/moe/params.hpp"
#include "fulgur/reference/lightning.hpp"
#include "fulgur/reference/moe.hpp"
#include "fulgur/reference/token_drop.hpp"
#include "fulgur/token_drop/params.hpp"
#include "fulgur/token_drop/schedule.hpp"

namespace {

namespace fl = fulgur::lightning;
namespace fm = fulgur::moe;
namespace td = fulgur::token_drop;
namespace ref = fulgur::reference;
using fulgur::DType;
using fulgur::from_double;
using fulgur::Status;
using fulgur::to_double;
using bf16 = __nv_bfloat16;
using f16 = __half;

constexpr double kU32 = 0x1p-24;  // fp32 unit roundoff
constexpr double kFp64Tol = 1e-10;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---- reporting ---------------------------------------------------------------------------------

int g_passed = 0;
int g_failed = 0;

bool record(bool ok) {
  ++(ok ? g_passed : g_failed);
  return ok;
}

// Every check prints what it measures, its number against its bound, and where the bound comes
// from. A NaN value fails (comparisons with NaN are false), so an unwritten, NaN-poisoned output
// can never pass.
bool check_le(const char* what, double value, double bound, const char* why) {
  const bool ok = value <= bound;
  std::printf("  [%s] %s: %.6g <= %.7g\n", ok ? "pass" : "FAIL", what, value, bound);
  std::printf("         bound: %s\n", why);
  return record(ok);
}
bool check_ge(const char* what, double value, double bound, const char* why) {
  const bool ok = value >= bound;
  std::printf("  [%s] %s: %.6g >= %.6g\n", ok ? "pass" : "FAIL", what, value, bound);
  std::printf("         bound: %s\n", why);
  return record(ok);
}
bool check_eq(const char* what, int64_t value, int64_t want, const char* why) {
  const bool ok = value == want;
  std::printf("  [%s] %s: %" PRId64 " == %" PRId64 "\n", ok ? "pass" : "FAIL", what, value, want);
  std::printf("         why: %s\n", why);
  return record(ok);
}
// A reference call that rejects its Params is a failed check; the stage stops there.
bool call_ok(const Status& s, const char* call) {
  if (s) return true;
  std::printf("  [FAIL] %s rejected its arguments: %s\n", call, s.reason());
  record(false);
  return false;
}

struct Timer {
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); }
};

// NaN-propagating max: std::max(a, NaN) would silently return a.
void worsen(double& worst, double x) {
  if (std::isnan(x) || x > worst) worst = x;
}

std::mt19937_64 g_rng;
double randn() { return std::normal_distribution<double>(0.0, 1.0)(g_rng); }
template <typename T>
void fill_normal(std::vector<T>& v, double sigma) {
  for (T& x : v) x = from_double<T>(sigma * randn());
}

// Relative RMSE of got against want over n elements spaced by `stride`: sqrt(sum d^2 / sum w^2).
double rel_rmse(const double* got, const double* want, int64_t n, int64_t stride) {
  double num = 0.0, den = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double d = got[i * stride] - want[i * stride];
    num += d * d;
    den += want[i * stride] * want[i * stride];
  }
  return std::sqrt(num / den);
}

double silu(double x) { return x / (1.0 + std::exp(-x)); }

// ---- stage 1 and 4: lightning attention --------------------------------------------------------

// MiniMax-Text-01's lightning layers as one tensor-parallel rank sees them: 64 heads of dim 128
// over TP8 is H = 8 heads per rank. Layer 40 of 80, rank 7 (global heads 56..63): the slowest
// decays, so the state carried between 256-token blocks matters (lambda^256 = 0.41 .. 0.62).
constexpr int kH = 8;
constexpr int kD = 128;
constexpr int kGlobalHeads = 64;
constexpr int kLayer = 40, kNumLayers = 80, kTpRank = 7, kTpSize = 8;
constexpr int kBlock = 256;   // the block form's block, and the checkpoint interval
constexpr int kNumSlots = 4;  // state pool slots; the batch owns slots 2 and 0
constexpr int kDecodeSteps = 4;
constexpr int64_t kHeadElems = int64_t{kD} * kD;
constexpr int64_t kSlotElems = kH * kHeadElems;
// q, k, v of one token and head sit side by side in MiniMax's fused projection output
// [T, H, 3, d]; the Params read it in place through strides.
constexpr int64_t kQkvTokenStride = 3 * kH * kD;
constexpr int64_t kQkvHeadStride = 3 * kD;

struct Prefill {  // what stage 1 leaves for stage 4
  std::vector<int32_t> lens;
  std::vector<int32_t> cu;
  std::vector<int32_t> slot_ids;
  std::vector<bf16> qkv;      // [T, H, 3, d]
  std::vector<float> slopes;  // [H]
  std::vector<float> pool;    // [slots, H, d, d] after the block-form prefill
  std::vector<float> stale;   // the pool before it
  bool done = false;
};

fl::PrefillParams prefill_params(const std::vector<int32_t>& cu, const std::vector<bf16>& qkv,
                                 const std::vector<float>& slopes, double* o, float* pool, int64_t num_slots,
                                 const int32_t* slot_ids, const uint8_t* has_initial_state, float* ckpt,
                                 int64_t ckpt_rows) {
  fl::PrefillParams p;
  p.batch_size = static_cast<int32_t>(cu.size()) - 1;
  p.num_tokens = cu.back();
  p.cu_seqlens = cu.data();
  p.num_heads = kH;
  p.dk = kD;
  p.dv = kD;
  p.qkv_dtype = DType::kBF16;
  p.q = qkv.data();
  p.k = qkv.data() + kD;
  p.v = qkv.data() + 2 * kD;
  p.q_stride_token = p.k_stride_token = p.v_stride_token = kQkvTokenStride;
  p.q_stride_head = p.k_stride_head = p.v_stride_head = kQkvHeadStride;
  p.silu_qkv = true;  // MiniMax applies SiLU to the projection output
  p.o_dtype = DType::kF64;
  p.o = o;
  p.o_stride_token = kH * kD;
  p.o_stride_head = kD;
  p.slopes = slopes.data();
  p.scale = 1.0f;  // MiniMax: no 1/sqrt(d)
  p.state = pool;
  p.num_slots = num_slots;
  p.slot_ids = slot_ids;
  p.has_initial_state = has_initial_state;
  p.checkpoints = ckpt;
  p.checkpoint_interval = ckpt ? kBlock : 0;
  p.num_checkpoint_rows = ckpt_rows;
  return p;
}

void print_list(const char* prefix, const std::vector<int32_t>& v, const char* suffix) {
  std::printf("%s{", prefix);
  for (size_t i = 0; i < v.size(); ++i) std::printf(i ? ", %d" : "%d", v[i]);
  std::printf("}%s", suffix);
}

bool stage_prefill(Prefill& st) {
  std::printf("\n[1/4] lightning prefill: a varlen batch through MiniMax-Text-01 lightning attention\n");
  Timer timer;
  st.lens = {300, 1, 517};
  st.cu = {0};
  for (int32_t n : st.lens) st.cu.push_back(st.cu.back() + n);
  const int32_t B = static_cast<int32_t>(st.lens.size());
  const int64_t T = st.cu.back();
  // Sequence 1 is stateless (slot -1: o is written, no state or checkpoint); the others are new
  // requests whose slots still hold a finished request's state, hence has_initial_state = 0.
  st.slot_ids = {2, -1, 0};
  const std::vector<uint8_t> has_initial_state(B, 0);

  st.qkv.resize(static_cast<size_t>(T * kQkvTokenStride));
  fill_normal(st.qkv, 1.0);
  st.slopes.resize(kH);
  if (!call_ok(fl::fill_minimax_slopes(st.slopes.data(), kGlobalHeads, kLayer, kNumLayers, fl::SlopeConvention::kVllm,
                                       kTpRank, kTpSize),
               "fill_minimax_slopes"))
    return false;
  st.stale.resize(static_cast<size_t>(kNumSlots * kSlotElems));
  fill_normal(st.stale, 10.0);

  int64_t ckpt_rows = 0;
  for (int32_t b = 0; b < B; ++b) ckpt_rows += st.slot_ids[b] >= 0 ? fl::checkpoint_count(st.lens[b], kBlock) : 0;

  std::printf("  batch    %d sequences of ", B);
  for (int32_t b = 0; b < B; ++b) std::printf(b ? ", %d" : "%d", st.lens[b]);
  std::printf(" tokens packed into T = %" PRId64 " rows", T);
  print_list(", cu_seqlens = ", st.cu, "\n");
  std::printf("  q, k, v  one fused projection [T, H=%d, 3, d=%d] bf16 read in place (strides 3Hd, 3d), SiLU on load\n",
              kH, kD);
  std::printf(
      "  slopes   layer %d of %d, TP rank %d of %d (global heads %d..%d of %d): s = %.5f .. %.5f, "
      "lambda^%d = %.3f .. %.3f\n",
      kLayer, kNumLayers, kTpRank, kTpSize, kTpRank * kH, kTpRank * kH + kH - 1, kGlobalHeads, st.slopes[0],
      st.slopes[kH - 1], kBlock, std::exp(-double(st.slopes[0]) * kBlock),
      std::exp(-double(st.slopes[kH - 1]) * kBlock));
  print_list("  state    fp32 pool [4 slots, H, d, d] holding stale data; slot_ids = ", st.slot_ids,
             " (sequence 1 stateless), has_initial_state = 0\n");
  std::printf("  ckpt     every %d tokens: %" PRId64
              " rows [rows, H, d, d] fp32 (sequence 0 at 256; sequence 2 at 256, 512)\n",
              kBlock, ckpt_rows);
  std::printf("  o        [T, H, d] fp64 (a reference output: the check below sees the math, not a final rounding)\n");

  // The two forms run on identical copies of the pool, with NaN-poisoned o and checkpoints.
  std::vector<double> o_rec(static_cast<size_t>(T * kH * kD), kNaN), o_blk = o_rec;
  std::vector<float> pool_rec = st.stale, pool_blk = st.stale;
  std::vector<float> ck_rec(static_cast<size_t>(ckpt_rows * kSlotElems), NAN), ck_blk = ck_rec;
  Timer t_rec;
  if (!call_ok(ref::lightning_prefill(prefill_params(st.cu, st.qkv, st.slopes, o_rec.data(), pool_rec.data(), kNumSlots,
                                                     st.slot_ids.data(), has_initial_state.data(), ck_rec.data(),
                                                     ckpt_rows)),
               "reference::lightning_prefill"))
    return false;
  const double s_rec = t_rec.seconds();
  Timer t_blk;
  if (!call_ok(ref::lightning_prefill_blocked(
                   prefill_params(st.cu, st.qkv, st.slopes, o_blk.data(), pool_blk.data(), kNumSlots,
                                  st.slot_ids.data(), has_initial_state.data(), ck_blk.data(), ckpt_rows),
                   kBlock),
               "reference::lightning_prefill_blocked"))
    return false;
  std::printf(
      "  ran      per-token recurrence (the ground truth) %.2f s; block form, block %d (the kernels' form) %.2f s\n",
      s_rec, kBlock, t_blk.seconds());

  // Relative RMSE per (sequence, head), so the 1-token sequence is judged on its own.
  double worst = 0.0;
  for (int32_t b = 0; b < B; ++b) {
    for (int h = 0; h < kH; ++h) {
      double num = 0.0, den = 0.0;
      for (int64_t t = st.cu[b]; t < st.cu[b + 1]; ++t) {
        for (int j = 0; j < kD; ++j) {
          const int64_t e = (t * kH + h) * kD + j;
          num += (o_blk[e] - o_rec[e]) * (o_blk[e] - o_rec[e]);
          den += o_rec[e] * o_rec[e];
        }
      }
      worsen(worst, std::sqrt(num / den));
    }
  }
  check_le("o, block form vs recurrence, worst relative RMSE over (sequence, head)", worst, kFp64Tol,
           "fp64 vs fp64, the same sums in two orders: about (n + d) 2^-53 ~ 1e-13 here; 1e-10 leaves margin "
           "and is 1e8 below the 1/lambda error of a wrong block decay");

  // Saved states: slots 2 and 0, and the checkpoint rows, per head.
  worst = 0.0;
  auto state_rmse = [&](const float* a, const float* b) {
    std::vector<double> da(a, a + kHeadElems), db(b, b + kHeadElems);
    worsen(worst, rel_rmse(da.data(), db.data(), kHeadElems, 1));
  };
  for (int32_t b = 0; b < B; ++b) {
    if (st.slot_ids[b] < 0) continue;
    for (int h = 0; h < kH; ++h) {
      const int64_t off = st.slot_ids[b] * kSlotElems + h * kHeadElems;
      state_rmse(&pool_blk[off], &pool_rec[off]);
    }
  }
  for (int64_t r = 0; r < ckpt_rows * kH; ++r) state_rmse(&ck_blk[r * kHeadElems], &ck_rec[r * kHeadElems]);
  check_le("saved states (slots 2, 0) and the 3 checkpoints, block vs recurrence, worst rel. RMSE per head", worst,
           2 * kU32 + kFp64Tol,
           "each form rounds its fp64 state to fp32 once per store, so the two differ by at most one fp32 ulp "
           "(2^-23 relative) plus the fp64 difference");

  int64_t written = 0;
  for (int64_t r = 0; r < ckpt_rows; ++r) {
    bool all = true;
    for (int64_t e = 0; e < kSlotElems; ++e) {
      all = all && std::isfinite(ck_blk[r * kSlotElems + e]) && std::isfinite(ck_rec[r * kSlotElems + e]);
    }
    written += all;
  }
  int64_t changed = 0;
  for (int slot : {1, 3}) {
    changed += std::memcmp(&pool_blk[slot * kSlotElems], &st.stale[slot * kSlotElems], kSlotElems * sizeof(float)) != 0;
    changed += std::memcmp(&pool_rec[slot * kSlotElems], &st.stale[slot * kSlotElems], kSlotElems * sizeof(float)) != 0;
  }
  check_eq("checkpoint rows fully written by both forms (buffers poisoned with NaN)", written, ckpt_rows,
           "floor(300/256) + 0 (slot -1 writes none) + floor(517/256) = 1 + 0 + 2");
  check_eq("pool slots 1 and 3, not in this batch, changed (bit compare, both forms)", changed, 0,
           "a call writes only the slots its sequences name");

  st.pool = pool_blk;  // stage 4 decodes from the states the block form (the kernels' form) saved
  st.done = true;
  std::printf("  stage time %.2f s\n", timer.seconds());
  return true;
}

bool stage_decode(const Prefill& st) {
  std::printf("\n[4/4] lightning decode: %d steps from the states stage 1 saved, against one longer prefill\n",
              kDecodeSteps);
  Timer timer;
  // Row 1 is padding (a CUDA-graph batch rounded up): slot -1, nothing read or written.
  const std::vector<int32_t> rows_slot = {st.slot_ids[0], -1, st.slot_ids[2]};
  const std::vector<int32_t> rows_seq = {0, -1, 2};
  const int32_t R = static_cast<int32_t>(rows_slot.size());
  print_list("  batch    3 decode rows, slot_ids = ", rows_slot,
             ": sequence 0, a padding row (slot -1, as in a CUDA-graph batch rounded up), sequence 2\n");
  std::printf(
      "  step     q, k, v [3, H, 3, d] bf16 fused (SiLU on load), o [3, H, d] fp64, the fp32 pool updated in place\n");
  std::printf(
      "  compare  one stateless prefill of sequences 0 and 2 plus their %d new tokens (%d and %d tokens), "
      "per-token recurrence\n",
      kDecodeSteps, st.lens[0] + kDecodeSteps, st.lens[2] + kDecodeSteps);

  std::vector<float> pool = st.pool;
  std::vector<std::vector<float>> snaps = {pool};  // the pool before each step, for the bound
  std::vector<bf16> step_qkv(static_cast<size_t>(kDecodeSteps * R * kQkvTokenStride));
  fill_normal(step_qkv, 1.0);
  std::vector<double> o_dec(static_cast<size_t>(kDecodeSteps * R * kH * kD), kNaN);
  Timer t_dec;
  for (int s = 0; s < kDecodeSteps; ++s) {
    fl::DecodeParams p;
    p.batch_size = R;
    p.num_heads = kH;
    p.dk = p.dv = kD;
    p.qkv_dtype = DType::kBF16;
    const bf16* base = &step_qkv[s * R * kQkvTokenStride];
    p.q = base;
    p.k = base + kD;
    p.v = base + 2 * kD;
    p.q_stride_token = p.k_stride_token = p.v_stride_token = kQkvTokenStride;
    p.q_stride_head = p.k_stride_head = p.v_stride_head = kQkvHeadStride;
    p.silu_qkv = true;
    p.o_dtype = DType::kF64;
    p.o = &o_dec[s * R * kH * kD];
    p.o_stride_token = kH * kD;
    p.o_stride_head = kD;
    p.slopes = st.slopes.data();
    p.scale = 1.0f;
    p.state = pool.data();
    p.num_slots = kNumSlots;
    p.slot_ids = rows_slot.data();
    if (!call_ok(ref::lightning_decode(p), "reference::lightning_decode")) return false;
    snaps.push_back(pool);
  }
  const double s_dec = t_dec.seconds();

  // The same tokens through one prefill: sequence 0's prompt + its new tokens, then sequence 2's.
  std::vector<int32_t> cu = {0};
  std::vector<bf16> qkv;
  for (int32_t r : {0, 2}) {
    const int32_t b = rows_seq[r];
    qkv.insert(qkv.end(), &st.qkv[st.cu[b] * kQkvTokenStride], &st.qkv[st.cu[b + 1] * kQkvTokenStride]);
    for (int s = 0; s < kDecodeSteps; ++s) {
      const bf16* row = &step_qkv[(s * R + r) * kQkvTokenStride];
      qkv.insert(qkv.end(), row, row + kQkvTokenStride);
    }
    cu.push_back(cu.back() + st.lens[b] + kDecodeSteps);
  }
  std::vector<double> o_long(static_cast<size_t>(cu.back() * kH * kD), kNaN);
  const std::vector<int32_t> stateless = {-1, -1};
  Timer t_long;
  if (!call_ok(ref::lightning_prefill(prefill_params(cu, qkv, st.slopes, o_long.data(), nullptr, 0, stateless.data(),
                                                     nullptr, nullptr, 0)),
               "reference::lightning_prefill"))
    return false;
  std::printf("  ran      %d decode steps %.3f s; the longer prefill %.2f s\n", kDecodeSteps, s_dec, t_long.seconds());

  // Per-element bound. Decode stores the state to fp32 after the prefill and after every step;
  // the long prefill keeps fp64 throughout. With S_r the state stored before step r + 1 and
  // lambda <= 1, the state error at step t is at most 2^-24 sum_{r<t} |S_r| elementwise, so
  //     |o_dec - o_long|_j <= sum_i |q_i| (2^-24 (1 + 1e-6) sum_{r<t} |S_r|_ij + 1e-10 max_r |S_r|_ij)
  // where the second term covers the fp64 difference of the two prefill forms (stage 1's bound).
  double worst_ratio = 0.0, num = 0.0, den = 0.0;
  for (int32_t r : {0, 2}) {
    const int32_t b = rows_seq[r];
    const int64_t slot = rows_slot[r];
    const int64_t first_new = cu[r == 0 ? 0 : 1] + st.lens[b];
    for (int s = 0; s < kDecodeSteps; ++s) {
      for (int h = 0; h < kH; ++h) {
        const bf16* qrow = &step_qkv[(s * R + r) * kQkvTokenStride + h * kQkvHeadStride];
        double q[kD];
        for (int i = 0; i < kD; ++i) q[i] = silu(to_double(qrow[i]));
        for (int j = 0; j < kD; ++j) {
          double bound = 0.0;
          for (int i = 0; i < kD; ++i) {
            double sum = 0.0, mx = 0.0;
            for (int t = 0; t <= s; ++t) {
              const double x = std::fabs(double(snaps[t][slot * kSlotElems + h * kHeadElems + i * kD + j]));
              sum += x;
              mx = std::max(mx, x);
            }
            bound += std::fabs(q[i]) * (kU32 * (1 + 1e-6) * sum + kFp64Tol * mx);
          }
          const double got = o_dec[((s * R + r) * kH + h) * kD + j];
          const double want = o_long[((first_new + s) * kH + h) * kD + j];
          worsen(worst_ratio, std::fabs(got - want) / bound);
          num += (got - want) * (got - want);
          den += want * want;
        }
      }
    }
  }
  std::printf("  info     relative RMSE of the decode outputs against the prefill: %.3g\n", std::sqrt(num / den));
  check_le("decode o vs the longer prefill, worst |difference| / its per-element bound", worst_ratio, 1.0,
           "sum_i |q_i| (2^-24 sum_{r<t} |S_r|_ij + 1e-10 max_r |S_r|_ij): one fp32 rounding of the state per "
           "stored step, lambda <= 1, plus stage 1's fp64 tolerance");

  int64_t touched = 0;
  for (int s = 0; s < kDecodeSteps; ++s)
    for (int64_t e = 0; e < kH * kD; ++e) touched += !std::isnan(o_dec[(s * R + 1) * kH * kD + e]);
  for (int slot : {1, 3})
    touched += std::memcmp(&pool[slot * kSlotElems], &st.pool[slot * kSlotElems], kSlotElems * sizeof(float)) != 0;
  check_eq("padding row: o elements written (poisoned with NaN) + unused slots 1, 3 changed", touched, 0,
           "a slot -1 row reads and writes nothing, o included");
  std::printf("  stage time %.2f s\n", timer.seconds());
  return true;
}

// ---- stage 2: MoE ------------------------------------------------------------------------------

constexpr int kModel = 256;  // hidden size of the demo's tokens (MiniMax-Text-01: 6144)
constexpr int kFfn = 128;    // expert intermediate size (MiniMax-Text-01: 9216)
constexpr int kTileM = 64;   // rows per tile of a grouped GEMM, for the tile-padded view

struct Experts {
  int E = 0;
  std::vector<float> w1;  // [E, F, D]
  std::vector<float> w2;  // [E, D, F]
  // y = W2 silu(W1 x) in fp64: a tiny dense expert MLP standing in for the grouped GEMM.
  void forward(int e, const double* x, double* y) const {
    double hid[kFfn];
    for (int f = 0; f < kFfn; ++f) {
      const float* w = &w1[(int64_t(e) * kFfn + f) * kModel];
      double acc = 0.0;
      for (int d = 0; d < kModel; ++d) acc += double(w[d]) * x[d];
      hid[f] = silu(acc);
    }
    for (int d = 0; d < kModel; ++d) {
      const float* w = &w2[(int64_t(e) * kModel + d) * kFfn];
      double acc = 0.0;
      for (int f = 0; f < kFfn; ++f) acc += double(w[f]) * hid[f];
      y[d] = acc;
    }
  }
};

bool stage_moe(int64_t T) {
  std::printf("\n[2/4] MoE: MiniMax-Text-01 routing, permutation, gather, experts, combine\n");
  Timer timer;
  const fm::RoutePolicy pol = fm::presets::minimax_text_01();
  const int E = pol.num_experts, k = pol.top_k;
  const int64_t rows = T * k;

  std::vector<bf16> hidden(static_cast<size_t>(T * kModel));
  fill_normal(hidden, 1.0);
  std::vector<float> logits(static_cast<size_t>(T * E));
  fill_normal(logits, 1.0);
  Experts ex;
  ex.E = E;
  ex.w1.resize(static_cast<size_t>(E) * kFfn * kModel);
  ex.w2.resize(static_cast<size_t>(E) * kModel * kFfn);
  fill_normal(ex.w1, 1.0 / std::sqrt(double(kModel)));
  fill_normal(ex.w2, 1.0 / std::sqrt(double(kFfn)));

  std::printf("  tokens   T = %" PRId64
              " (as many as stage 1's batch), hidden [T, D=%d] bf16 and router logits [T, E=%d] fp32, "
              "generated\n",
              T, kModel, E);
  std::printf(
      "  route    preset minimax_text_01(): softmax over %d experts, top-%d, renormalized -> topk_ids, "
      "topk_weights [T, %d] fp32\n",
      E, k, k);

  // Route.
  std::vector<int32_t> topk_ids(static_cast<size_t>(rows), -1), counts(E, -1);
  std::vector<float> topk_w(static_cast<size_t>(rows), NAN);
  fm::RouteParams rp;
  rp.policy = pol;
  rp.logits = logits.data();
  rp.logits_dtype = DType::kF32;
  rp.logits_row_stride = E;
  rp.num_tokens = T;
  rp.topk_ids = topk_ids.data();
  rp.topk_weights = topk_w.data();
  rp.weights_dtype = DType::kF32;
  rp.expert_counts = counts.data();
  if (!call_ok(ref::moe_route(rp), "reference::moe_route")) return false;

  // Permute: the compact view (grouped by expert) and the tile-padded view of a block GEMM.
  std::vector<int64_t> offset(E + 1, -1);
  std::vector<int32_t> exp_to_perm(static_cast<size_t>(rows), -1), perm_to_exp(static_cast<size_t>(rows), -1);
  std::vector<int32_t> sorted_ids(static_cast<size_t>(fm::tile_padded_capacity(T, k, E, kTileM)), -1);
  std::vector<int32_t> tile_expert(static_cast<size_t>(fm::tile_count_capacity(T, k, E, kTileM)), -2);
  int32_t post_padded = -1;
  fm::PermuteParams pp;
  pp.topk_ids = topk_ids.data();
  pp.num_tokens = T;
  pp.top_k = k;
  pp.num_experts = E;
  pp.expert_first_token_offset = offset.data();
  pp.expanded_to_permuted = exp_to_perm.data();
  pp.permuted_to_expanded = perm_to_exp.data();
  pp.tile_m = kTileM;
  pp.sorted_token_ids = sorted_ids.data();
  pp.tile_expert_ids = tile_expert.data();
  pp.num_tokens_post_padded = &post_padded;
  if (!call_ok(ref::moe_permute(pp), "reference::moe_permute")) return false;
  const auto mm = std::minmax_element(counts.begin(), counts.end());
  std::printf("  permute  %" PRId64
              " (token, slot) rows grouped by expert, %d .. %d rows per expert; tile-padded view "
              "for %d-row tiles: %d rows\n",
              rows, *mm.first, *mm.second, kTileM, post_padded);

  // Gather the rows in expert order (bf16 -> fp32 is exact).
  std::vector<float> xg(static_cast<size_t>(rows * kModel), NAN);
  fm::GatherParams gp;
  gp.hidden = hidden.data();
  gp.hidden_dtype = DType::kBF16;
  gp.hidden_row_stride = kModel;
  gp.num_tokens = T;
  gp.top_k = k;
  gp.hidden_size = kModel;
  gp.row_map = perm_to_exp.data();
  gp.num_rows = rows;
  gp.out = xg.data();
  gp.out_dtype = DType::kF32;
  gp.out_row_stride = kModel;
  if (!call_ok(ref::moe_gather(gp), "reference::moe_gather")) return false;
  std::printf("  gather   x [T*k, D] fp32, rows in expert order\n");

  // The experts: one dense loop over each expert's contiguous row range (a grouped GEMM's job).
  Timer t_exp;
  std::vector<float> y(static_cast<size_t>(rows * kModel), NAN);
  std::vector<double> xd(kModel), yd(kModel);
  for (int e = 0; e < E; ++e) {
    for (int64_t r = offset[e]; r < offset[e + 1]; ++r) {
      for (int d = 0; d < kModel; ++d) xd[d] = xg[r * kModel + d];
      ex.forward(e, xd.data(), yd.data());
      for (int d = 0; d < kModel; ++d) y[r * kModel + d] = static_cast<float>(yd[d]);
    }
  }
  std::printf(
      "  experts  %d MLPs y = W2 silu(W1 x), W1 [%d, %d], W2 [%d, %d] fp32, over their row ranges -> y [T*k, D] fp32 "
      "(%.2f s)\n",
      E, kFfn, kModel, kModel, kFfn, t_exp.seconds());

  // Combine back to token order with the routing weights, in a fixed order.
  std::vector<float> out(static_cast<size_t>(T * kModel), NAN);
  fm::CombineParams cp;
  cp.expert_out = y.data();
  cp.expert_out_dtype = DType::kF32;
  cp.expert_out_row_stride = kModel;
  cp.num_expert_rows = rows;
  cp.num_tokens = T;
  cp.top_k = k;
  cp.hidden_size = kModel;
  cp.expanded_to_row = exp_to_perm.data();
  cp.topk_weights = topk_w.data();
  cp.weights_dtype = DType::kF32;
  cp.out = out.data();
  cp.out_dtype = DType::kF32;
  cp.out_row_stride = kModel;
  if (!call_ok(ref::moe_combine(cp), "reference::moe_combine")) return false;
  std::printf("  combine  out[t] = w(t,0) y(t,0) + w(t,1) y(t,1) -> [T, D] fp32\n");

  // The direct computation, per token, written from the routing rule: softmax over all E logits,
  // the two largest (ties to the lower index), renormalized; both experts run on x_t itself.
  Timer t_direct;
  int64_t id_mismatch = 0;
  double worst_w = 0.0, worst_out = 0.0;
  std::vector<double> x(kModel), acc(kModel), mag(kModel), yj(kModel);
  for (int64_t t = 0; t < T; ++t) {
    double mx = -INFINITY, z = 0.0;
    for (int e = 0; e < E; ++e) mx = std::max(mx, double(logits[t * E + e]));
    std::vector<double> prob(E);
    for (int e = 0; e < E; ++e) z += prob[e] = std::exp(double(logits[t * E + e]) - mx);
    for (int e = 0; e < E; ++e) prob[e] /= z;
    int first = 0;
    for (int e = 1; e < E; ++e)
      if (prob[e] > prob[first]) first = e;
    int second = first == 0 ? 1 : 0;
    for (int e = 0; e < E; ++e)
      if (e != first && prob[e] > prob[second]) second = e;
    const int ids[2] = {first, second};
    const double w[2] = {prob[first] / (prob[first] + prob[second]), prob[second] / (prob[first] + prob[second])};
    for (int d = 0; d < kModel; ++d) x[d] = to_double(hidden[t * kModel + d]);
    std::fill(acc.begin(), acc.end(), 0.0);
    std::fill(mag.begin(), mag.end(), 0.0);
    for (int j = 0; j < k; ++j) {
      id_mismatch += topk_ids[t * k + j] != ids[j];
      worsen(worst_w, std::fabs(topk_w[t * k + j] - w[j]) / (w[j] * kU32));
      ex.forward(ids[j], x.data(), yj.data());
      for (int d = 0; d < kModel; ++d) {
        acc[d] += w[j] * yj[d];
        mag[d] += std::fabs(w[j] * yj[d]);
      }
    }
    for (int d = 0; d < kModel; ++d) worsen(worst_out, std::fabs(out[t * kModel + d] - acc[d]) / (kU32 * mag[d]));
  }
  std::printf(
      "  direct   per token: its own softmax, top-2 and renormalization in fp64, both experts on x_t, "
      "weighted sum (%.2f s)\n",
      t_direct.seconds());

  check_eq("routed expert ids differing from the direct top-2", id_mismatch, 0,
           "the preset's rule, written out: softmax, two largest, ties to the lower index");
  check_le("routing weights vs the direct ones, worst relative error in units of 2^-24", worst_w, 1 + 1e-6,
           "one rounding of the fp64 weight to fp32 (relative error <= 2^-24), plus fp64 noise");

  // The layout a grouped GEMM relies on: rows grouped by expert in (token, slot) order, the two
  // index maps inverse to each other, every expert's tile-padded rows in whole tiles.
  int64_t bad = 0;
  bad += offset[0] != 0 || offset[E] != rows;
  int64_t padded = 0;
  for (int e = 0; e < E; ++e) {
    bad += offset[e + 1] - offset[e] != counts[e];
    for (int64_t r = offset[e]; r < offset[e + 1]; ++r) {
      const int32_t i = perm_to_exp[r];
      bad += i < 0 || i >= rows || topk_ids[i] != e || exp_to_perm[i] != r;
      bad += r > offset[e] && perm_to_exp[r - 1] >= i;
    }
    padded += (counts[e] + kTileM - 1) / kTileM * kTileM;
  }
  bad += padded != post_padded;
  check_eq("layout violations (grouping, (t, j) order, inverse maps, offsets, padded row count)", bad, 0,
           "rows of expert e are [offset[e], offset[e+1]) in increasing t*k + j; padded rows = "
           "sum_e ceil(count_e / 64) * 64");
  check_le("combined output vs the direct computation, worst |out - direct| / (2^-24 sum_j |w_j y_j|)", worst_out,
           3 * (1 + 1e-6),
           "three fp32 roundings, each <= 2^-24 of sum_j |w_j y_j|: the weights, the expert outputs y, the output");
  std::printf("  stage time %.2f s\n", timer.seconds());
  return true;
}

// ---- stage 3: PyramidDrop ----------------------------------------------------------------------

bool stage_token_drop() {
  std::printf("\n[3/4] PyramidDrop between stage 0 (layers 0-7) and stage 1 (layers 8-15) on a LLaVA-style batch\n");
  Timer timer;
  constexpr int H = 8, d = 64, D = 256;
  constexpr int64_t kSystem = 35, kN = 576;  // LLaVA-1.5: system prompt, then 24 x 24 image patches
  constexpr double kRatio = 0.5;
  const std::vector<int64_t> question = {24, 61};
  const int64_t B = static_cast<int64_t>(question.size());
  std::vector<int64_t> cu = {0}, cu_spans = {0}, span_start, span_length;
  for (int64_t b = 0; b < B; ++b) {
    cu.push_back(cu.back() + kSystem + kN + question[b]);
    cu_spans.push_back(b + 1);
    span_start.push_back(kSystem);
    span_length.push_back(kN);
  }
  const int64_t L = cu.back(), num_image = B * kN;

  td::BatchLayout layout;
  layout.batch = B;
  layout.total_rows = L;
  layout.cu_seqlens = cu.data();
  layout.num_spans = B;
  layout.cu_spans = cu_spans.data();
  layout.span_start = span_start.data();
  layout.span_length = span_length.data();
  layout.num_image_tokens = num_image;

  std::printf("  batch    %" PRId64 " prompts: %" PRId64 " system tokens, one image of N = %" PRId64
              " tokens, then %" PRId64 " / %" PRId64 " question tokens: lengths %" PRId64 ", %" PRId64 " (L = %" PRId64
              ")\n",
              B, kSystem, kN, question[0], question[1], cu[1] - cu[0], cu[2] - cu[1], L);

  // Score: the last prompt token's query against every key of its sequence.
  std::vector<f16> q(static_cast<size_t>(B * H * d)), k(static_cast<size_t>(L * H * d));
  fill_normal(q, 1.0);
  fill_normal(k, 1.0);
  std::vector<float> scores(static_cast<size_t>(num_image), NAN);
  td::ScoreParams sp;
  sp.layout = layout;
  sp.num_queries = B;
  sp.q = q.data();
  sp.q_row_stride = H * d;
  sp.q_head_stride = d;
  sp.k = k.data();
  sp.k_row_stride = H * d;
  sp.k_head_stride = d;
  sp.dtype = DType::kF16;
  sp.num_heads = H;
  sp.num_kv_heads = H;
  sp.head_dim = d;
  sp.scores = scores.data();
  Timer t_score;
  if (!call_ok(ref::token_drop_score(sp), "reference::token_drop_score")) return false;
  std::printf("  score    query = last prompt token, q [%" PRId64
              ", H=%d, d=%d] fp16, k [L, %d, %d] fp16; softmax over "
              "the causal row, mean over heads -> scores [%" PRId64 "] fp32 (%.3f s)\n",
              B, H, d, H, d, num_image, t_score.seconds());

  // Select the top half of each image, in order.
  const int64_t keep = td::keep_count(kN, td::KeepRule::kFloorKeepRatio, kRatio);
  std::vector<int64_t> kept(static_cast<size_t>(B * keep), -1), cu_kept(B + 1, -1);
  td::SelectParams sel;
  sel.layout = layout;
  sel.scores = scores.data();
  sel.rule = td::KeepRule::kFloorKeepRatio;
  sel.ratio = kRatio;
  sel.num_kept = B * keep;
  sel.kept_index = kept.data();
  sel.cu_kept = cu_kept.data();
  if (!call_ok(ref::token_drop_select(sel), "reference::token_drop_select")) return false;
  std::printf("  select   ratio %.1f: keep floor(%" PRId64 " * %.1f) = %" PRId64
              " tokens of each image, ties to the lower index\n",
              kRatio, kN, kRatio, keep);

  // Compact the hidden states and renumber positions.
  const int64_t Lp = L - (num_image - B * keep);
  std::vector<f16> hid(static_cast<size_t>(L * D)), hid_out(static_cast<size_t>(Lp * D), from_double<f16>(NAN));
  fill_normal(hid, 1.0);
  std::vector<int64_t> new_cu(B + 1, -1), row_map(static_cast<size_t>(Lp), -1), pos(static_cast<size_t>(Lp), -1);
  std::vector<int64_t> new_start(B, -1), new_len(B, -1);
  td::CompactParams cp;
  cp.layout = layout;
  cp.num_kept = B * keep;
  cp.kept_index = kept.data();
  cp.cu_kept = cu_kept.data();
  cp.out_rows = Lp;
  cp.new_cu_seqlens = new_cu.data();
  cp.row_map = row_map.data();
  cp.new_span_start = new_start.data();
  cp.new_span_length = new_len.data();
  cp.hidden.in = hid.data();
  cp.hidden.out = hid_out.data();
  cp.hidden.width = D;
  cp.hidden.elem_bytes = sizeof(f16);
  cp.hidden.in_row_stride = D;
  cp.hidden.out_row_stride = D;
  cp.position_mode = td::PositionMode::kRenumber;
  cp.position_ids_out = pos.data();
  cp.position_ids_out_stride = Lp;
  if (!call_ok(ref::token_drop_compact(cp), "reference::token_drop_compact")) return false;
  std::printf("  compact  hidden [L, %d] fp16 -> [L' = %" PRId64 ", %d], new cu_seqlens {%" PRId64 ", %" PRId64
              ", %" PRId64 "}, position ids renumbered 0..L'_b-1\n",
              D, Lp, D, new_cu[0], new_cu[1], new_cu[2]);

  // Scores are attention probabilities averaged over heads: each in [0, 1], an image's sum at most
  // the whole row's mass 1.
  double worst_sum = 0.0;
  for (int64_t s = 0; s < B; ++s) {
    double sum = 0.0;
    for (int64_t j = 0; j < kN; ++j) {
      const double x = scores[s * kN + j];
      sum += (x >= 0.0 && x <= 1.0) ? x : kNaN;
    }
    worsen(worst_sum, sum);
  }
  check_le("scores are probabilities: each in [0, 1], largest image total", worst_sum, 1.0 + kN * kU32,
           "a softmax row sums to 1 over all keys; the image's share is less, plus one fp32 rounding per score");

  int64_t order_bad = 0;
  for (int64_t s = 0; s < B; ++s) {
    for (int64_t i = cu_kept[s]; i < cu_kept[s + 1]; ++i) {
      order_bad += kept[i] < span_start[s] || kept[i] >= span_start[s] + span_length[s];
      order_bad += i > cu_kept[s] && kept[i] <= kept[i - 1];
    }
  }
  check_eq("kept indices outside their image or not strictly increasing", order_bad, 0,
           "kept tokens keep their original order");
  for (int64_t s = 0; s < B; ++s) {
    char what[96];
    std::snprintf(what, sizeof what, "kept tokens of image %" PRId64, s);
    check_eq(what, cu_kept[s + 1] - cu_kept[s], keep, "floor(N * ratio) = floor(576 * 0.5) = 288");
  }
  double margin = INFINITY;
  for (int64_t s = 0; s < B; ++s) {
    std::vector<char> is_kept(kN, 0);
    for (int64_t i = cu_kept[s]; i < cu_kept[s + 1]; ++i) is_kept[kept[i] - span_start[s]] = 1;
    double min_kept = INFINITY, max_dropped = -INFINITY;
    for (int64_t j = 0; j < kN; ++j) {
      const double x = scores[s * kN + j];
      if (is_kept[j]) {
        min_kept = std::min(min_kept, x);
      } else {
        max_dropped = std::max(max_dropped, x);
      }
    }
    const double m = min_kept - max_dropped;
    if (std::isnan(m) || m < margin) margin = m;
  }
  check_ge("lowest kept score - highest dropped score, worst image", margin, 0.0,
           "the top 288 by score are kept: every kept score >= every dropped score");

  // The compaction: every output row is a bit copy of its source; text rows all stay; the image
  // rows that stay are exactly the kept ones; positions restart at 0 in each sequence.
  int64_t bad = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t seqlen = cu[b + 1] - cu[b], span_end = span_start[b] + span_length[b];
    std::vector<int64_t> expect;  // source positions of sequence b's output rows, in order
    for (int64_t t = 0; t < span_start[b]; ++t) expect.push_back(t);
    expect.insert(expect.end(), &kept[cu_kept[b]], &kept[cu_kept[b + 1]]);
    for (int64_t t = span_end; t < seqlen; ++t) expect.push_back(t);
    bad += new_cu[b + 1] - new_cu[b] != seqlen - (kN - keep);
    bad += new_cu[b + 1] - new_cu[b] != static_cast<int64_t>(expect.size());
    bad += new_start[b] != span_start[b] || new_len[b] != keep;
    for (int64_t r = new_cu[b]; r < new_cu[b + 1] && r - new_cu[b] < static_cast<int64_t>(expect.size()); ++r) {
      const int64_t src = row_map[r];
      bad += src != cu[b] + expect[r - new_cu[b]];
      bad += pos[r] != r - new_cu[b];
      bad += src < 0 || src >= L || std::memcmp(&hid_out[r * D], &hid[src * D], D * sizeof(f16)) != 0;
    }
  }
  check_eq("compaction violations (lengths, row order and content, kept rows, positions, new spans)", bad, 0,
           "per sequence: system text, the kept image rows in order, the question text, bit copies");

  // The drop schedule of sequence 0 over LLaVA-1.5's 32 layers: drops before layers 8, 16, 24.
  const int64_t drop_layers[3] = {8, 16, 24};
  const double ratios[3] = {0.5, 0.25, 0.125};
  const int64_t image_len[1] = {kN};
  td::ScheduleParams sch;
  sch.num_layers = 32;
  sch.num_drops = 3;
  sch.drop_layers = drop_layers;
  sch.ratios = ratios;
  sch.seq_len = cu[1] - cu[0];
  sch.num_spans = 1;
  sch.image_lengths = image_len;
  td::StagePlan stages[4];
  if (!call_ok(td::make_schedule(sch, stages), "token_drop::make_schedule")) return false;
  std::printf("  schedule of sequence 0 (L = %" PRId64 ", N = %" PRId64
              "), ratios 1, 1/2, 1/4, 1/8 of the original N:\n",
              sch.seq_len, kN);
  std::printf("           stage  layers  image tokens  rows L_s  decode position shift\n");
  const char* ratio_name[4] = {"1", "1/2", "1/4", "1/8"};
  for (int s = 0; s < 4; ++s) {
    std::printf("           %d      %2" PRId64 "-%-2" PRId64 "   %4" PRId64 " (%-3s)    %4" PRId64 "      %4" PRId64
                "\n",
                s, stages[s].first_layer, stages[s].end_layer - 1, stages[s].image_tokens, ratio_name[s],
                stages[s].seq_len, stages[s].position_shift);
  }
  check_eq("rows of sequence 0 after this drop vs the schedule's stage-1 L_1", new_cu[1] - new_cu[0], stages[1].seq_len,
           "L_1 = L - (N - floor(N / 2)) = 635 - 288");
  std::printf("  stage time %.2f s\n", timer.seconds());
  return true;
}

}  // namespace

int main() {
  std::printf(
      "fulgur demo: every stage below runs fulgur's fp64 CPU references (include/fulgur/reference/), "
      "not GPU kernels; the kernels come with the kernel issues and will replace them stage by stage.\n");
  uint64_t seed = 20250117;
  if (const char* s = std::getenv("FULGUR_DEMO_SEED")) seed = std::strtoull(s, nullptr, 10);
  std::printf("data: generated, seed %" PRIu64 " (FULGUR_DEMO_SEED=<n> changes it)\n", seed);
  g_rng.seed(seed);
  Timer total;

  Prefill st;
  stage_prefill(st);
  stage_moe(st.done ? st.cu.back() : 818);
  stage_token_drop();
  if (st.done) {
    stage_decode(st);
  } else {
    std::printf("\n[4/4] lightning decode: skipped, stage 1 did not finish\n");
    record(false);
  }

  std::printf("\ntotal time %.2f s\n", total.seconds());
  if (g_failed == 0) {
    std::printf("demo: all %d checks passed\n", g_passed);
    return 0;
  }
  std::printf("demo: %d of %d checks FAILED\n", g_failed, g_passed + g_failed);
  return 1;
}
