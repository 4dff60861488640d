// SPDX-License-Identifier: Apache-2.0
// fulgur demo: one MiniMax-01-style step through fulgur's KERNELS on generated data, every stage
// checked against the fp64 CPU references (include/fulgur/reference/) and timed:
//   1. lightning prefill of a varlen batch (fused [T, H, 3, d] bf16 projection, fused SiLU,
//      MiniMax slopes, a slot-indexed fp32 state pool, checkpoints),
//   2. MoE on the prefill's output: MiniMax-Text-01 routing (E = 32, top-2 softmax), permute,
//      gather, small dense experts on the host (fulgur has no grouped GEMM), combine,
//   3. a PyramidDrop event between two stages on the MoE's output: score, select, compact of the
//      image spans in the batch,
//   4. lightning decode steps from the states the prefill kernel saved.
//
// One source, two builds (`bash scripts/demo.sh` picks): g++ with fulgur's CPU emulation of the
// CUDA execution model (FULGUR_EMULATE; the kernels run on the CPU, no GPU needed), or nvcc as
// CUDA on a GPU. Device memory goes through fulgur/memory.hpp, which is host memory under
// emulation and cudaMalloc memory in the CUDA build.
//
// Tolerances are derived from the precision next to each check. Exit status 0 when every check
// passes, 1 when one fails, 77 when the CUDA build finds no GPU. FULGUR_DEMO_SEED=<n> changes the
// data.
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

#include "example_support.hpp"  // error_name
#include "fulgur/lightning.cuh"
#include "fulgur/memory.hpp"
#include "fulgur/moe.cuh"
#include "fulgur/reference/lightning.hpp"
#include "fulgur/reference/moe.hpp"
#include "fulgur/reference/token_drop.hpp"
#include "fulgur/token_drop.cuh"

namespace {

namespace fl = fulgur::lightning;
namespace fm = fulgur::moe;
namespace td = fulgur::token_drop;
namespace ref = fulgur::reference;
using fulgur::DeviceBuffer;
using fulgur::DType;
using fulgur::from_double;
using fulgur::to_double;
using bf16 = __nv_bfloat16;

constexpr double kU32 = 0x1p-24;  // fp32 unit roundoff
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// ---- reporting ---------------------------------------------------------------------------------

int g_passed = 0;
int g_failed = 0;
const char* g_where = "";  // "emulated" or "GPU": printed beside every kernel time

bool record(bool ok) {
  ++(ok ? g_passed : g_failed);
  return ok;
}

// Every check prints its number against its bound and where the bound comes from. NaN fails
// (comparisons with NaN are false), so an unwritten, NaN-poisoned output cannot pass.
bool check_le(const char* what, double value, double bound, const char* why) {
  const bool ok = value <= bound;
  std::printf("  [%s] %s: %.3g <= %.3g\n", ok ? "pass" : "FAIL", what, value, bound);
  std::printf("         bound: %s\n", why);
  return record(ok);
}
bool check_eq(const char* what, int64_t value, int64_t want, const char* why) {
  const bool ok = value == want;
  std::printf("  [%s] %s: %" PRId64 " == %" PRId64 "\n", ok ? "pass" : "FAIL", what, value, want);
  std::printf("         why: %s\n", why);
  return record(ok);
}
bool ref_ok(const fulgur::Status& s, const char* call) {
  if (s) return true;
  std::printf("  [FAIL] %s rejected its arguments: %s\n", call, s.reason());
  return record(false);
}

struct Timer {
  std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
  double ms() const { return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count(); }
};

// Runs one launcher call and waits for it; `ms` gets the wall time of call + synchronize. A
// launcher that returns an error is a failed check.
template <typename Call>
bool run_kernel(const char* what, double& ms, Call&& call) {
  fulgur::device_synchronize();
  Timer t;
  cudaError_t e = call();
  if (e == cudaSuccess) e = fulgur::device_synchronize();
  ms = t.ms();
  if (e == cudaSuccess) return true;
  std::printf("  [FAIL] %s returned %s (%d)\n", what, fulgur_example::error_name(e), static_cast<int>(e));
  return record(false);
}

// ---- data and device buffers --------------------------------------------------------------------

std::mt19937_64 g_rng;
double randn() { return std::normal_distribution<double>(0.0, 1.0)(g_rng); }
template <typename T>
void fill_normal(std::vector<T>& v, double sigma) {
  for (T& x : v) x = from_double<T>(sigma * randn());
}

template <typename T>
DeviceBuffer<T> upload(const std::vector<T>& v) {
  return DeviceBuffer<T>(v);
}
// 0xFF in every byte: NaN floats and bf16, -1 integers. Unwritten elements show.
template <typename T>
DeviceBuffer<T> poisoned(size_t n) {
  DeviceBuffer<T> b(n ? n : 1);
  b.fill_bytes(0xFF);
  return b;
}
template <typename T>
std::vector<T> download(const DeviceBuffer<T>& b) {
  fulgur::device_synchronize();
  return b.to_host();
}
template <typename T>
int64_t bytes_differing(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return static_cast<int64_t>(std::max(a.size(), b.size()) * sizeof(T));
  const unsigned char* x = reinterpret_cast<const unsigned char*>(a.data());
  const unsigned char* y = reinterpret_cast<const unsigned char*>(b.data());
  int64_t n = 0;
  for (size_t i = 0; i < a.size() * sizeof(T); ++i) n += x[i] != y[i];
  return n;
}

// Relative RMSE sqrt(sum (got - want)^2 / sum want^2); NaN in got propagates (and fails checks).
struct RelRmse {
  double num = 0.0, den = 0.0;
  void add(double got, double want) {
    num += (got - want) * (got - want);
    den += want * want;
  }
  double value() const { return den > 0 ? std::sqrt(num / den) : std::sqrt(num); }
};
void worsen(double& worst, double x) {  // NaN-propagating max
  if (std::isnan(x) || x > worst) worst = x;
}

double silu(double x) { return x / (1.0 + std::exp(-x)); }
// Spacing of bf16 values at |x| (8 significant bits).
double ulp_bf16(double x) {
  int e = x != 0.0 ? std::ilogb(x) : -126;
  return std::ldexp(1.0, std::max(e, -126) - 7);
}

void print_list(const char* prefix, const std::vector<int32_t>& v, const char* suffix) {
  std::printf("%s{", prefix);
  for (size_t i = 0; i < v.size(); ++i) std::printf(i ? ", %d" : "%d", v[i]);
  std::printf("}%s", suffix);
}

// ---- the step's shapes ---------------------------------------------------------------------------

// Lightning layers: 4 of MiniMax-Text-01's 64 heads of dim 128 (the slice rank 15 of a 16-way
// tensor-parallel split holds: the slowest decays of the layer), layer 40 of 80. Under emulation
// the prefill costs about 80 ms per 64-token block and head at d = 128, hence a few hundred
// tokens and 4 heads.
constexpr int kH = 4;
constexpr int kD = 128;
constexpr int kGlobalHeads = 64, kTpSize = 16, kTpRank = 15, kLayer = 40, kNumLayers = 80;
constexpr int kNumSlots = 5;        // the state pool; the batch owns slots 2, 0, 3
constexpr int kCkptInterval = 128;  // prefix-caching checkpoints every 128 tokens
constexpr int kDecodeSteps = 4;
constexpr int64_t kHeadElems = int64_t{kD} * kD;
constexpr int64_t kSlotElems = kH * kHeadElems;
// q, k, v of one token and head side by side, as MiniMax's fused projection writes them:
// [T, H, 3, d], read in place through strides.
constexpr int64_t kQkvTokenStride = 3 * kH * kD;
constexpr int64_t kQkvHeadStride = 3 * kD;
constexpr int kModel = kH * kD;  // hidden size seen by the MoE and the drop (the o rows)
constexpr int kFfn = 128;        // expert intermediate size

// Relative RMSE bounds of the lightning kernels against the fp64 references (derived in
// tests/lightning/lightning_test.hpp and docs/lightning.md, "Precision"): every mma operand with
// more than 8 significant bits is split into bf16 hi + lo, so each product is within ~3 * 2^-16
// of itself and fp32 accumulation adds ~64 * 2^-24: fp32 results (states) within 1e-4. bf16
// outputs are compared with the reference rounded to bf16: unrounded values within 1e-4 round to
// different neighbours with probability <= 1e-4 / 2^-8 ~ 5%, each time by one ulp (<= 2^-7
// relative): RMSE <= sqrt(0.05) * 2^-7 = 1.7e-3, bound 2e-3.
constexpr double kStateTol = 1e-4;
constexpr double kOutTol = 2e-3;

struct Step {
  // Stage 1's batch and what the later stages read.
  std::vector<int32_t> lens, cu, slots;
  std::vector<uint8_t> has_init;
  int32_t B = 0;
  int64_t T = 0;
  std::vector<float> slopes;
  DeviceBuffer<float> d_slopes, d_pool;  // the pool the prefill kernel left
  std::vector<float> pool_ref;           // the pool the reference prefill left
  DeviceBuffer<bf16> d_o;                // prefill output [T, H * d]: the MoE's input
  std::vector<bf16> o;                   // its host copy
  DeviceBuffer<bf16> d_moe_out;          // MoE output [T, D]: the drop's input
  std::vector<bf16> moe_out;
  bool prefill_done = false, moe_done = false;
};

fl::PrefillParams prefill_params(const Step& st, const bf16* qkv, bf16* o, float* pool, const int32_t* cu,
                                 const int32_t* slots, const uint8_t* has_init, const float* slopes, float* ckpt,
                                 int64_t ckpt_rows) {
  fl::PrefillParams p;
  p.batch_size = st.B;
  p.num_tokens = st.T;
  p.cu_seqlens = cu;
  p.num_heads = kH;
  p.dk = p.dv = kD;
  p.qkv_dtype = DType::kBF16;
  p.q = qkv;
  p.k = qkv + kD;
  p.v = qkv + 2 * kD;
  p.q_stride_token = p.k_stride_token = p.v_stride_token = kQkvTokenStride;
  p.q_stride_head = p.k_stride_head = p.v_stride_head = kQkvHeadStride;
  p.silu_qkv = true;  // MiniMax applies SiLU to the projection output; the kernel fuses it
  p.o_dtype = DType::kBF16;
  p.o = o;
  p.o_stride_token = kModel;
  p.o_stride_head = kD;
  p.slopes = slopes;
  p.scale = 1.0f;  // MiniMax: no 1/sqrt(d)
  p.state = pool;
  p.num_slots = kNumSlots;
  p.slot_ids = slots;
  p.has_initial_state = has_init;
  p.checkpoints = ckpt;
  p.checkpoint_interval = kCkptInterval;
  p.num_checkpoint_rows = ckpt_rows;
  return p;
}

// ---- stage 1: lightning prefill --------------------------------------------------------------------

void stage_prefill(Step& st) {
  std::printf("\n[1/4] lightning prefill: a varlen batch through MiniMax-Text-01-style lightning attention\n");
  Timer stage;
  // Sequence 1 is a one-token stateless request (slot -1); 0 and 2 are new requests whose slots
  // still hold a finished request's state (has_initial_state = 0: it must be ignored); 3 is the
  // second chunk of a chunked prefill, continuing from the state its slot holds.
  st.lens = {300, 1, 133, 80};
  st.slots = {2, -1, 0, 3};
  st.has_init = {0, 0, 0, 1};
  st.B = static_cast<int32_t>(st.lens.size());
  st.cu = {0};
  for (int32_t n : st.lens) st.cu.push_back(st.cu.back() + n);
  st.T = st.cu.back();
  const int64_t T = st.T;

  std::vector<bf16> qkv(static_cast<size_t>(T * kQkvTokenStride));
  fill_normal(qkv, 1.0);  // the raw projection: the kernel applies SiLU on load, so it sees SiLU(randn)
  st.slopes.resize(kH);
  if (!ref_ok(fl::fill_minimax_slopes(st.slopes.data(), kGlobalHeads, kLayer, kNumLayers, fl::SlopeConvention::kVllm,
                                      kTpRank, kTpSize),
              "fill_minimax_slopes"))
    return;
  std::vector<float> pool0(static_cast<size_t>(kNumSlots * kSlotElems));
  fill_normal(pool0, 3.0);
  int64_t ckpt_rows = 0;
  for (int32_t n : st.lens) ckpt_rows += fl::checkpoint_count(n, kCkptInterval);

  print_list("  batch    B = 4 sequences, lengths ", st.lens, "");
  std::printf(", packed T = %" PRId64 " rows\n", T);
  std::printf("  q, k, v  one fused projection [T, H=%d, 3, d=%d] bf16, read in place; SiLU fused into the loads\n", kH,
              kD);
  std::printf("  slopes   layer %d of %d, global heads %d..%d of %d (TP rank %d of %d): s = %.5f .. %.5f\n", kLayer,
              kNumLayers, kTpRank * kH, kTpRank * kH + kH - 1, kGlobalHeads, kTpRank, kTpSize, st.slopes[0],
              st.slopes[kH - 1]);
  print_list("  state    fp32 pool [5 slots, H, d, d]; slot_ids = ", st.slots, "");
  std::printf(", has_initial_state = {0, 0, 0, 1} (sequence 3 continues a chunked prefill)\n");
  std::printf("  ckpt     every %d tokens: %" PRId64 " rows [rows, H, d, d] fp32; o [T, H, d] bf16\n", kCkptInterval,
              ckpt_rows);

  // Kernel.
  auto d_qkv = upload(qkv);
  auto d_cu = upload(st.cu);
  auto d_slots = upload(st.slots);
  auto d_init = upload(st.has_init);
  st.d_slopes = upload(st.slopes);
  st.d_pool = upload(pool0);
  st.d_o = poisoned<bf16>(static_cast<size_t>(T * kModel));
  auto d_ckpt = poisoned<float>(static_cast<size_t>(ckpt_rows * kSlotElems));
  const fl::PrefillParams p =
      prefill_params(st, d_qkv.data(), st.d_o.data(), st.d_pool.data(), d_cu.data(), d_slots.data(), d_init.data(),
                     st.d_slopes.data(), d_ckpt.data(), ckpt_rows);
  size_t ws_bytes = 0;
  double ms = 0;
  if (!run_kernel("lightning::prefill (workspace query)", ms, [&] { return fl::prefill(nullptr, ws_bytes, p); }))
    return;
  DeviceBuffer<unsigned char> ws(ws_bytes);
  if (!run_kernel("lightning::prefill", ms, [&] { return fl::prefill(ws.data(), ws_bytes, p); })) return;
  fl::PrefillArrayError dev_status = fl::PrefillArrayError::kOk;
  fl::prefill_device_status(ws.data(), dev_status);
  std::printf("  kernel   fulgur::lightning::prefill: %.1f ms (%s), workspace %zu bytes\n", ms, g_where, ws_bytes);
  st.o = download(st.d_o);
  const std::vector<float> pool = download(st.d_pool);
  const std::vector<float> ckpt = download(d_ckpt);

  // Reference: the per-token recurrence in fp64 on host copies of the same inputs.
  std::vector<bf16> o_ref(static_cast<size_t>(T * kModel), from_double<bf16>(kNaN));
  st.pool_ref = pool0;
  std::vector<float> ckpt_ref(static_cast<size_t>(ckpt_rows * kSlotElems), NAN);
  Timer t_ref;
  if (!ref_ok(ref::lightning_prefill(prefill_params(st, qkv.data(), o_ref.data(), st.pool_ref.data(), st.cu.data(),
                                                    st.slots.data(), st.has_init.data(), st.slopes.data(),
                                                    ckpt_ref.data(), ckpt_rows)),
              "reference::lightning_prefill"))
    return;
  std::printf("  ref      reference::lightning_prefill (fp64 per-token recurrence): %.1f ms (host)\n", t_ref.ms());

  check_eq("device check verdict (PrefillArrayError)", static_cast<int64_t>(dev_status), 0,
           "cu_seqlens, slot ids and slopes are valid, so the kernel's own check must accept them");
  double worst_o = 0.0;
  for (int32_t b = 0; b < st.B; ++b) {
    for (int h = 0; h < kH; ++h) {
      RelRmse e;
      for (int64_t t = st.cu[b]; t < st.cu[b + 1]; ++t)
        for (int j = 0; j < kD; ++j) {
          const int64_t i = t * kModel + h * kD + j;
          e.add(to_double(st.o[i]), to_double(o_ref[i]));
        }
      worsen(worst_o, e.value());
    }
  }
  check_le("o vs reference (bf16), worst relative RMSE over (sequence, head)", worst_o, kOutTol,
           "bf16 rounding mismatches of values within 1e-4: sqrt(5%) * 2^-7 = 1.7e-3 (lightning_test.hpp)");
  double worst_s = 0.0;
  auto state_err = [&](const float* got, const float* want) {
    RelRmse e;
    for (int64_t i = 0; i < kHeadElems; ++i) e.add(got[i], want[i]);
    worsen(worst_s, e.value());
  };
  for (int32_t b = 0; b < st.B; ++b) {
    if (st.slots[b] < 0) continue;
    for (int h = 0; h < kH; ++h) {
      const int64_t off = st.slots[b] * kSlotElems + h * kHeadElems;
      state_err(&pool[off], &st.pool_ref[off]);
    }
  }
  for (int64_t r = 0; r < ckpt_rows * kH; ++r) state_err(&ckpt[r * kHeadElems], &ckpt_ref[r * kHeadElems]);
  check_le("final states (slots 2, 0, 3) and 3 checkpoints vs reference, worst rel. RMSE per head", worst_s, kStateTol,
           "bf16 hi + lo split operands (~3 * 2^-16 per product) and fp32 sums: within 1e-4");
  int64_t touched = 0;
  for (int slot : {1, 4})
    touched += bytes_differing(std::vector<float>(&pool[slot * kSlotElems], &pool[(slot + 1) * kSlotElems]),
                               std::vector<float>(&pool0[slot * kSlotElems], &pool0[(slot + 1) * kSlotElems]));
  check_eq("bytes of pool slots 1 and 4 (no sequence's) changed", touched, 0,
           "a prefill writes only the slots its sequences name");
  st.prefill_done = g_failed == 0;
  std::printf("  stage    %.2f s\n", stage.ms() / 1e3);
}

// ---- stage 2: MoE ------------------------------------------------------------------------------------

void stage_moe(Step& st) {
  std::printf("\n[2/4] MoE on the prefill output: MiniMax-Text-01 routing, permute, gather, experts, combine\n");
  Timer stage;
  const fm::RoutePolicy pol = fm::presets::minimax_text_01();
  const int E = pol.num_experts, k = pol.top_k;
  const int64_t T = st.T, rows = T * k;
  const int D = kModel;

  // The residual stream x = generated token embeddings + the attention output (o scaled to unit
  // RMS: the output projection is not modelled), the MoE input h = RMSNorm(x), both bf16 (host
  // code: fulgur has no norm kernel), router logits h W_r^T in fp32 with W_r ~ N(0, 1/D): logits
  // of order 1.
  double o_ss = 0.0;
  for (const bf16& v : st.o) o_ss += to_double(v) * to_double(v);
  const double o_scale = 1.0 / std::sqrt(o_ss / double(st.o.size()));
  std::vector<bf16> xres(static_cast<size_t>(T * D)), h(static_cast<size_t>(T * D));
  for (size_t i = 0; i < xres.size(); ++i) xres[i] = from_double<bf16>(randn() + to_double(st.o[i]) * o_scale);
  for (int64_t t = 0; t < T; ++t) {
    double ss = 0.0;
    for (int j = 0; j < D; ++j) ss += to_double(xres[t * D + j]) * to_double(xres[t * D + j]);
    const double inv = 1.0 / std::sqrt(ss / D + 1e-6);
    for (int j = 0; j < D; ++j) h[t * D + j] = from_double<bf16>(to_double(xres[t * D + j]) * inv);
  }
  std::vector<float> wr(static_cast<size_t>(E) * D), w1(static_cast<size_t>(E) * kFfn * D),
      w2(static_cast<size_t>(E) * D * kFfn);
  fill_normal(wr, 1.0 / std::sqrt(double(D)));
  fill_normal(w1, 1.0 / std::sqrt(double(D)));
  fill_normal(w2, 1.0 / std::sqrt(double(kFfn)));
  std::vector<float> logits(static_cast<size_t>(T * E));
  for (int64_t t = 0; t < T; ++t)
    for (int e = 0; e < E; ++e) {
      double acc = 0.0;
      for (int j = 0; j < D; ++j) acc += double(wr[int64_t(e) * D + j]) * to_double(h[t * D + j]);
      logits[t * E + e] = static_cast<float>(acc);
    }
  std::printf("  input    residual x = embeddings + prefill o, h = RMSNorm(x) [T=%" PRId64
              ", D=%d] bf16; router logits h W_r^T [T, E=%d] fp32 (host)\n",
              T, D, E);

  // Route.
  auto d_h = upload(h);
  auto d_xres = upload(xres);
  auto d_logits = upload(logits);
  auto d_ids = poisoned<int32_t>(static_cast<size_t>(rows));
  auto d_w = poisoned<float>(static_cast<size_t>(rows));
  auto d_counts = poisoned<int32_t>(static_cast<size_t>(E));
  fm::RouteParams rp;
  rp.policy = pol;
  rp.logits = d_logits.data();
  rp.logits_dtype = DType::kF32;
  rp.logits_row_stride = E;
  rp.num_tokens = T;
  rp.topk_ids = d_ids.data();
  rp.topk_weights = d_w.data();
  rp.weights_dtype = DType::kF32;
  rp.expert_counts = d_counts.data();
  double ms_route = 0, ms_perm = 0, ms_gather = 0, ms_combine = 0;
  if (!run_kernel("moe::route", ms_route, [&] { return fm::route(rp, nullptr); })) return;
  const auto ids = download(d_ids);
  const auto wts = download(d_w);
  const auto counts = download(d_counts);

  // Permute (compact view: rows grouped by expert, the two index maps).
  auto d_off = poisoned<int64_t>(static_cast<size_t>(E + 1));
  auto d_e2p = poisoned<int32_t>(static_cast<size_t>(rows));
  auto d_p2e = poisoned<int32_t>(static_cast<size_t>(rows));
  fm::PermuteParams pp;
  pp.topk_ids = d_ids.data();
  pp.num_tokens = T;
  pp.top_k = k;
  pp.num_experts = E;
  pp.expert_first_token_offset = d_off.data();
  pp.expanded_to_permuted = d_e2p.data();
  pp.permuted_to_expanded = d_p2e.data();
  size_t perm_bytes = 0;
  if (!run_kernel("moe::permute (workspace query)", ms_perm, [&] { return fm::permute(nullptr, perm_bytes, pp); }))
    return;
  DeviceBuffer<unsigned char> perm_ws(perm_bytes);
  if (!run_kernel("moe::permute", ms_perm, [&] { return fm::permute(perm_ws.data(), perm_bytes, pp); })) return;
  const auto off = download(d_off);
  const auto e2p = download(d_e2p);
  const auto p2e = download(d_p2e);

  // Gather the rows in expert order (bf16 -> bf16: a bit copy).
  auto d_x = poisoned<bf16>(static_cast<size_t>(rows * D));
  fm::GatherParams gp;
  gp.hidden = d_h.data();
  gp.hidden_dtype = DType::kBF16;
  gp.hidden_row_stride = D;
  gp.num_tokens = T;
  gp.top_k = k;
  gp.hidden_size = D;
  gp.row_map = d_p2e.data();
  gp.num_rows = rows;
  gp.out = d_x.data();
  gp.out_dtype = DType::kBF16;
  gp.out_row_stride = D;
  if (!run_kernel("moe::gather", ms_gather, [&] { return fm::gather(gp); })) return;
  const auto x = download(d_x);

  // Experts: y = W2 silu(W1 x), one dense loop per expert over its contiguous row range (the job of
  // a grouped GEMM, which fulgur leaves to the engine), fp64 sums, y stored in bf16.
  Timer t_exp;
  std::vector<bf16> y(static_cast<size_t>(rows * D));
  std::vector<double> hid(kFfn);
  int64_t bad_range = 0;
  for (int e = 0; e < E; ++e) {
    if (off[e] < 0 || off[e + 1] < off[e] || off[e + 1] > rows) {
      ++bad_range;
      continue;
    }
    for (int64_t r = off[e]; r < off[e + 1]; ++r) {
      for (int f = 0; f < kFfn; ++f) {
        const float* w = &w1[(int64_t(e) * kFfn + f) * D];
        double acc = 0.0;
        for (int j = 0; j < D; ++j) acc += double(w[j]) * to_double(x[r * D + j]);
        hid[f] = silu(acc);
      }
      for (int j = 0; j < D; ++j) {
        const float* w = &w2[(int64_t(e) * D + j) * kFfn];
        double acc = 0.0;
        for (int f = 0; f < kFfn; ++f) acc += double(w[f]) * hid[f];
        y[r * D + j] = from_double<bf16>(acc);
      }
    }
  }
  const double ms_exp = t_exp.ms();

  // Combine: out[t] = w(t,0) y(t,0) + w(t,1) y(t,1) + x[t] (the residual), fixed order, bf16.
  auto d_y = upload(y);
  st.d_moe_out = poisoned<bf16>(static_cast<size_t>(T * D));
  fm::CombineParams cp;
  cp.expert_out = d_y.data();
  cp.expert_out_dtype = DType::kBF16;
  cp.expert_out_row_stride = D;
  cp.num_expert_rows = rows;
  cp.num_tokens = T;
  cp.top_k = k;
  cp.hidden_size = D;
  cp.expanded_to_row = d_e2p.data();
  cp.topk_weights = d_w.data();
  cp.weights_dtype = DType::kF32;
  cp.residual = d_xres.data();
  cp.residual_dtype = DType::kBF16;
  cp.residual_row_stride = D;
  cp.out = st.d_moe_out.data();
  cp.out_dtype = DType::kBF16;
  cp.out_row_stride = D;
  if (!run_kernel("moe::combine", ms_combine, [&] { return fm::combine(cp); })) return;
  st.moe_out = download(st.d_moe_out);
  const auto mm = std::minmax_element(counts.begin(), counts.end());
  std::printf("  kernels  route %.1f ms, permute %.1f ms, gather %.1f ms, combine %.1f ms (%s)\n", ms_route, ms_perm,
              ms_gather, ms_combine, g_where);
  std::printf("  layout   %" PRId64 " (token, slot) rows grouped by expert, %d .. %d rows per expert\n", rows,
              *mm.first, *mm.second);
  std::printf("  experts  %d MLPs W2 silu(W1 x), W1 [%d, %d], W2 [%d, %d] fp32 on the host: %.0f ms\n", E, kFfn, D, D,
              kFfn, ms_exp);
  std::printf("  combine  out [T, D] bf16 = sum_j w_j y_j + x (the residual)\n");

  // References on host copies of each kernel's inputs.
  Timer t_ref;
  std::vector<int32_t> ids_ref(static_cast<size_t>(rows), -1), counts_ref(E, -1);
  std::vector<float> w_ref(static_cast<size_t>(rows), NAN);
  fm::RouteParams rr = rp;
  rr.logits = logits.data();
  rr.topk_ids = ids_ref.data();
  rr.topk_weights = w_ref.data();
  rr.expert_counts = counts_ref.data();
  if (!ref_ok(ref::moe_route(rr), "reference::moe_route")) return;
  std::vector<int64_t> off_ref(E + 1, -1);
  std::vector<int32_t> e2p_ref(static_cast<size_t>(rows), -1), p2e_ref(static_cast<size_t>(rows), -1);
  fm::PermuteParams pr = pp;
  pr.topk_ids = ids.data();  // the kernel's ids: the permutation is checked on its own input
  pr.expert_first_token_offset = off_ref.data();
  pr.expanded_to_permuted = e2p_ref.data();
  pr.permuted_to_expanded = p2e_ref.data();
  if (!ref_ok(ref::moe_permute(pr), "reference::moe_permute")) return;
  std::vector<bf16> x_ref(static_cast<size_t>(rows * D), from_double<bf16>(kNaN));
  fm::GatherParams gr = gp;
  gr.hidden = h.data();
  gr.row_map = p2e.data();
  gr.out = x_ref.data();
  if (!ref_ok(ref::moe_gather(gr), "reference::moe_gather")) return;
  std::vector<bf16> out_ref(static_cast<size_t>(T * D), from_double<bf16>(kNaN));
  fm::CombineParams cr = cp;
  cr.expert_out = y.data();
  cr.expanded_to_row = e2p.data();
  cr.topk_weights = wts.data();
  cr.residual = xres.data();
  cr.out = out_ref.data();
  if (!ref_ok(ref::moe_combine(cr), "reference::moe_combine")) return;
  std::printf("  ref      reference::moe_route, moe_permute, moe_gather, moe_combine (fp64): %.1f ms (host)\n",
              t_ref.ms());

  int64_t id_diff = 0;
  for (int64_t i = 0; i < rows; ++i) id_diff += ids[i] != ids_ref[i];
  for (int e = 0; e < E; ++e) id_diff += counts[e] != counts_ref[e];
  check_eq("expert ids and expert counts differing from the reference", id_diff, 0,
           "softmax is monotonic, so the kernel ranks the logits themselves, exactly like the fp64 reference");
  double worst_w = 0.0;
  for (int64_t t = 0; t < T; ++t) {
    const auto lo_hi = std::minmax_element(&logits[t * E], &logits[t * E] + E);
    const double bound = 2.0 * (2.0 * (double(*lo_hi.second) - double(*lo_hi.first)) + E / 32.0 + 16.0) * kU32;
    for (int j = 0; j < k; ++j)
      worsen(worst_w,
             std::fabs(double(wts[t * k + j]) - double(w_ref[t * k + j])) / (std::fabs(w_ref[t * k + j]) * bound));
  }
  check_le("routing weights vs reference, worst relative error / its per-token bound", worst_w, 1.0,
           "2 (2 spread + E/32 + 16) 2^-24: exp(x - max) amplifies fp32 rounding by the logit spread, the "
           "softmax sum and renormalization add the rest; doubled as for a same-precision reference (moe.md)");
  const int64_t layout_diff =
      bytes_differing(off, off_ref) + bytes_differing(e2p, e2p_ref) + bytes_differing(p2e, p2e_ref) + bad_range;
  check_eq("permutation bytes differing from the reference (offsets, both index maps)", layout_diff, 0,
           "positions come from a stable sort of the ids: an exact function of them");
  check_eq("gathered row bytes differing from the reference", bytes_differing(x, x_ref), 0,
           "bf16 -> bf16 without scaling is a bit copy");
  int64_t over = 0;
  double worst_c = 0.0;
  RelRmse e_out;
  for (int64_t t = 0; t < T; ++t) {
    for (int j = 0; j < D; ++j) {
      double mag = std::fabs(to_double(xres[t * D + j]));
      for (int s = 0; s < k; ++s) {
        const int32_t r = e2p[t * k + s];
        mag += (r >= 0 && r < rows) ? std::fabs(double(wts[t * k + s]) * to_double(y[r * D + j])) : kNaN;
      }
      const double want = to_double(out_ref[t * D + j]), got = to_double(st.moe_out[t * D + j]);
      const double bound = (k + 2) * kU32 * mag + ulp_bf16(want);
      worsen(worst_c, std::fabs(got - want) / bound);
      e_out.add(got, want);
      over += !(std::fabs(got - want) <= bound);
    }
  }
  std::printf(
      "  info     combined output vs reference: relative RMSE %.2g, worst |error| / bound %.2g (1: one bf16 "
      "ulp apart)\n",
      e_out.value(), worst_c);
  check_eq("combined elements outside (k + 2) 2^-24 sum |terms| + 1 bf16 ulp of the reference", over, 0,
           "k + 1 fp32 fmas and one rounding to bf16 on each side (moe.md, Precision)");
  st.moe_done = true;
  std::printf("  stage    %.2f s\n", stage.ms() / 1e3);
}

// ---- stage 3: PyramidDrop ------------------------------------------------------------------------------

void stage_token_drop(Step& st) {
  std::printf("\n[3/4] PyramidDrop between stage 0 and stage 1: score, select, compact of the image spans\n");
  Timer stage;
  constexpr int Hq = 4, Hkv = 2, dh = 128;  // GQA scoring heads
  constexpr double kRatio = 0.5;            // stage 1 keeps half of each image
  const int D = kModel;
  const int64_t B = st.B, L = st.T;
  // Sequence 0: a 20-token system prompt, a 16 x 16-patch image (256 tokens), 24 question tokens.
  // Sequence 2: 4 tokens, a 100-token image, 29 question tokens. Sequences 1 and 3: text only.
  std::vector<int64_t> cu(st.cu.begin(), st.cu.end()), cu_spans = {0, 1, 1, 2, 2}, span_start = {20, 4},
                                                       span_length = {256, 100};
  const int64_t S = 2, num_image = 356;
  td::BatchLayout layout;
  layout.batch = B;
  layout.total_rows = L;
  layout.cu_seqlens = cu.data();
  layout.num_spans = S;
  layout.cu_spans = cu_spans.data();
  layout.span_start = span_start.data();
  layout.span_length = span_length.data();
  layout.num_image_tokens = num_image;

  // Keys of every token and the query of each sequence's last token, projected on the host from
  // the normalized MoE output (W ~ 1.2 N(0, 1/D): q.k/sqrt(d) of order 1), bf16.
  std::vector<float> wq(static_cast<size_t>(Hq * dh * D)), wk(static_cast<size_t>(Hkv * dh * D));
  fill_normal(wq, 1.2 / std::sqrt(double(D)));
  fill_normal(wk, 1.2 / std::sqrt(double(D)));
  std::vector<double> xn(static_cast<size_t>(L * D));
  for (int64_t t = 0; t < L; ++t) {
    double ss = 0.0;
    for (int j = 0; j < D; ++j) ss += to_double(st.moe_out[t * D + j]) * to_double(st.moe_out[t * D + j]);
    const double inv = 1.0 / std::sqrt(ss / D + 1e-6);
    for (int j = 0; j < D; ++j) xn[t * D + j] = to_double(st.moe_out[t * D + j]) * inv;
  }
  auto project = [&](const std::vector<float>& w, int out_dim, int64_t row, bf16* dst) {
    for (int o = 0; o < out_dim; ++o) {
      double acc = 0.0;
      for (int j = 0; j < D; ++j) acc += double(w[int64_t(o) * D + j]) * xn[row * D + j];
      dst[o] = from_double<bf16>(acc);
    }
  };
  std::vector<bf16> k(static_cast<size_t>(L * Hkv * dh)), q(static_cast<size_t>(B * Hq * dh));
  for (int64_t t = 0; t < L; ++t) project(wk, Hkv * dh, t, &k[t * Hkv * dh]);
  for (int64_t b = 0; b < B; ++b) project(wq, Hq * dh, cu[b + 1] - 1, &q[b * Hq * dh]);
  std::printf("  batch    stage 1's 4 sequences (L = %" PRId64
              "): image spans of 256 tokens in sequence 0 at 20, of 100 "
              "in sequence 2 at 4; 1 and 3 text only\n",
              L);
  std::printf(
      "  score    q of each last token [B, Hq=%d, d=%d], k [L, Hkv=%d, d] bf16 (GQA), projected from the "
      "normalized MoE output (host)\n",
      Hq, dh, Hkv);

  // Device copies.
  auto d_cu = upload(cu);
  auto d_cu_spans = upload(cu_spans);
  auto d_start = upload(span_start);
  auto d_len = upload(span_length);
  td::BatchLayout dl = layout;
  dl.cu_seqlens = d_cu.data();
  dl.cu_spans = d_cu_spans.data();
  dl.span_start = d_start.data();
  dl.span_length = d_len.data();
  auto d_q = upload(q);
  auto d_k = upload(k);
  auto d_scores = poisoned<float>(static_cast<size_t>(num_image));
  td::ScoreParams sp;
  sp.layout = dl;
  sp.num_queries = B;
  sp.q = d_q.data();
  sp.q_row_stride = Hq * dh;
  sp.q_head_stride = dh;
  sp.k = d_k.data();
  sp.k_row_stride = Hkv * dh;
  sp.k_head_stride = dh;
  sp.dtype = DType::kBF16;
  sp.num_heads = Hq;
  sp.num_kv_heads = Hkv;
  sp.head_dim = dh;
  sp.scores = d_scores.data();
  size_t score_bytes = 0;
  double ms_score = 0, ms_select = 0, ms_compact = 0;
  if (!run_kernel("token_drop::score (workspace query)", ms_score,
                  [&] { return td::score(nullptr, score_bytes, sp, nullptr); }))
    return;
  DeviceBuffer<unsigned char> score_ws(score_bytes);
  if (!run_kernel("token_drop::score", ms_score, [&] { return td::score(score_ws.data(), score_bytes, sp, nullptr); }))
    return;
  const auto scores = download(d_scores);

  const int64_t keep0 = td::keep_count(span_length[0], td::KeepRule::kFloorKeepRatio, kRatio);
  const int64_t keep1 = td::keep_count(span_length[1], td::KeepRule::kFloorKeepRatio, kRatio);
  const int64_t num_kept = keep0 + keep1;
  auto d_kept = poisoned<int64_t>(static_cast<size_t>(num_kept));
  auto d_cu_kept = poisoned<int64_t>(static_cast<size_t>(S + 1));
  td::SelectParams sel;
  sel.layout = dl;
  sel.scores = d_scores.data();
  sel.rule = td::KeepRule::kFloorKeepRatio;
  sel.ratio = kRatio;
  sel.num_kept = num_kept;
  sel.kept_index = d_kept.data();
  sel.cu_kept = d_cu_kept.data();
  if (!run_kernel("token_drop::select", ms_select, [&] { return td::select(sel, nullptr); })) return;
  const auto kept = download(d_kept);
  const auto cu_kept = download(d_cu_kept);

  const int64_t Lp = L - (num_image - num_kept);
  auto d_new_cu = poisoned<int64_t>(static_cast<size_t>(B + 1));
  auto d_row_map = poisoned<int64_t>(static_cast<size_t>(Lp));
  auto d_new_start = poisoned<int64_t>(static_cast<size_t>(S));
  auto d_new_len = poisoned<int64_t>(static_cast<size_t>(S));
  auto d_pos = poisoned<int64_t>(static_cast<size_t>(Lp));
  auto d_hid = poisoned<bf16>(static_cast<size_t>(Lp * D));
  td::CompactParams cp;
  cp.layout = dl;
  cp.num_kept = num_kept;
  cp.kept_index = d_kept.data();
  cp.cu_kept = d_cu_kept.data();
  cp.out_rows = Lp;
  cp.new_cu_seqlens = d_new_cu.data();
  cp.row_map = d_row_map.data();
  cp.new_span_start = d_new_start.data();
  cp.new_span_length = d_new_len.data();
  cp.hidden.in = st.d_moe_out.data();
  cp.hidden.out = d_hid.data();
  cp.hidden.width = D;
  cp.hidden.elem_bytes = sizeof(bf16);
  cp.hidden.in_row_stride = D;
  cp.hidden.out_row_stride = D;
  cp.position_mode = td::PositionMode::kRenumber;
  cp.position_ids_out = d_pos.data();
  cp.position_ids_out_stride = Lp;
  size_t compact_bytes = 0;
  if (!run_kernel("token_drop::compact (workspace query)", ms_compact,
                  [&] { return td::compact(nullptr, compact_bytes, cp, nullptr); }))
    return;
  DeviceBuffer<unsigned char> compact_ws(compact_bytes);
  if (!run_kernel("token_drop::compact", ms_compact,
                  [&] { return td::compact(compact_ws.data(), compact_bytes, cp, nullptr); }))
    return;
  const auto new_cu = download(d_new_cu);
  const auto row_map = download(d_row_map);
  const auto new_start = download(d_new_start);
  const auto new_len = download(d_new_len);
  const auto pos = download(d_pos);
  const auto hid = download(d_hid);
  std::printf("  kernels  score %.1f ms, select %.1f ms, compact %.1f ms (%s)\n", ms_score, ms_select, ms_compact,
              g_where);
  std::printf("  result   keep floor(N / 2) = %" PRId64 " + %" PRId64 " image tokens; hidden [L=%" PRId64
              ", D=%d] bf16 -> [L'=%" PRId64 ", %d]; new cu_seqlens {%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64
              ", %" PRId64 "}, positions renumbered\n",
              keep0, keep1, L, D, Lp, D, new_cu[0], new_cu[1], new_cu[2], new_cu[3], new_cu[4]);

  // References: scores from the fp64 computation; select and compact are exact functions of their
  // inputs, so they run on the kernel's scores and kept indices and must agree byte for byte.
  Timer t_ref;
  std::vector<float> scores_ref(static_cast<size_t>(num_image), NAN);
  td::ScoreParams sr = sp;
  sr.layout = layout;
  sr.q = q.data();
  sr.k = k.data();
  sr.scores = scores_ref.data();
  if (!ref_ok(ref::token_drop_score(sr), "reference::token_drop_score")) return;
  std::vector<int64_t> kept_ref(static_cast<size_t>(num_kept), -1), cu_kept_ref(S + 1, -1);
  td::SelectParams sl = sel;
  sl.layout = layout;
  sl.scores = scores.data();
  sl.kept_index = kept_ref.data();
  sl.cu_kept = cu_kept_ref.data();
  if (!ref_ok(ref::token_drop_select(sl), "reference::token_drop_select")) return;
  // The selection the fp64 scores make, for information.
  std::vector<int64_t> kept_fp64(static_cast<size_t>(num_kept), -1);
  sl.scores = scores_ref.data();
  sl.kept_index = kept_fp64.data();
  sl.cu_kept = nullptr;
  if (!ref_ok(ref::token_drop_select(sl), "reference::token_drop_select")) return;
  std::vector<int64_t> new_cu_ref(B + 1, -1), row_map_ref(static_cast<size_t>(Lp), -1), new_start_ref(S, -1),
      new_len_ref(S, -1), pos_ref(static_cast<size_t>(Lp), -1);
  std::vector<bf16> hid_ref(static_cast<size_t>(Lp * D), from_double<bf16>(kNaN));
  td::CompactParams cr = cp;
  cr.layout = layout;
  cr.kept_index = kept.data();
  cr.cu_kept = cu_kept.data();
  cr.new_cu_seqlens = new_cu_ref.data();
  cr.row_map = row_map_ref.data();
  cr.new_span_start = new_start_ref.data();
  cr.new_span_length = new_len_ref.data();
  cr.hidden.in = st.moe_out.data();
  cr.hidden.out = hid_ref.data();
  cr.position_ids_out = pos_ref.data();
  if (!ref_ok(ref::token_drop_compact(cr), "reference::token_drop_compact")) return;
  std::printf("  ref      reference::token_drop_score, _select, _compact (fp64): %.1f ms (host)\n", t_ref.ms());

  // Score bound (docs/token_drop.md, Precision; token_drop_test.hpp): with u = 2^-24, each logit
  // is off by at most E = scale gamma_d max sum_i |q_i k_i| + 2u max |logit| (an fmaf dot of d
  // terms, one rounded multiply), each probability by 2E + (n + 16)u relative (n keys summed,
  // expf/logf and merge roundings), and the head mean adds H + Q roundings.
  const double scale = 1.0 / std::sqrt(double(dh)), gamma = dh * kU32 / (1.0 - dh * kU32);
  double max_abs_dot = 0.0, max_logit = 0.0;
  int64_t max_keys = 0;
  for (int64_t b = 0; b < B; ++b) {
    max_keys = std::max(max_keys, cu[b + 1] - cu[b]);
    for (int hh = 0; hh < Hq; ++hh)
      for (int64_t t = cu[b]; t < cu[b + 1]; ++t) {
        double a = 0.0, s = 0.0;
        for (int i = 0; i < dh; ++i) {
          const double prod = to_double(q[(b * Hq + hh) * dh + i]) * to_double(k[(t * Hkv + hh / (Hq / Hkv)) * dh + i]);
          a += std::fabs(prod);
          s += prod;
        }
        max_abs_dot = std::max(max_abs_dot, a);
        max_logit = std::max(max_logit, std::fabs(s * scale));
      }
  }
  const double E = scale * gamma * max_abs_dot + 2.0 * kU32 * max_logit;
  const double score_bound = 2.0 * E + double(max_keys + 16 + Hq + B) * kU32;
  double worst_rel = 0.0;
  for (int64_t i = 0; i < num_image; ++i)
    worsen(worst_rel, std::fabs(double(scores[i]) - double(scores_ref[i])) / std::fabs(double(scores_ref[i])));
  check_le("scores vs reference, worst relative error", worst_rel, score_bound,
           "2E + (n + 16 + H + Q) 2^-24 from fp32 dots, softmax and means on this data (token_drop.md, Precision)");
  check_eq("kept index bytes differing from the reference selection of the kernel's scores",
           bytes_differing(kept, kept_ref) + bytes_differing(cu_kept, cu_kept_ref), 0,
           "the top floor(N/2) of each span, ascending, ties to the lower index: an exact function of the scores");
  int64_t diff_fp64 = 0;
  for (int64_t i = 0; i < num_kept; ++i) diff_fp64 += kept[i] != kept_fp64[i];
  std::printf("  info     kept positions that differ from the selection on the fp64 scores: %" PRId64
              " (only near-ties within the score bound can)\n",
              diff_fp64);
  const int64_t compact_diff = bytes_differing(new_cu, new_cu_ref) + bytes_differing(row_map, row_map_ref) +
                               bytes_differing(new_start, new_start_ref) + bytes_differing(new_len, new_len_ref) +
                               bytes_differing(pos, pos_ref) + bytes_differing(hid, hid_ref);
  check_eq("compaction bytes differing from the reference (cu_seqlens, row map, spans, positions, hidden)",
           compact_diff, 0, "the compaction is index logic and bit copies");

  // The PyramidDrop schedule of sequence 0 over 32 layers (drops before 8, 16, 24): this event is
  // the first drop, so sequence 0's new length is the schedule's stage-1 length.
  const int64_t drop_layers[3] = {8, 16, 24};
  const double ratios[3] = {0.5, 0.25, 0.125};
  const int64_t image_len[1] = {span_length[0]};
  td::ScheduleParams sch;
  sch.num_layers = 32;
  sch.num_drops = 3;
  sch.drop_layers = drop_layers;
  sch.ratios = ratios;
  sch.seq_len = cu[1] - cu[0];
  sch.num_spans = 1;
  sch.image_lengths = image_len;
  td::StagePlan stages[4];
  if (!ref_ok(td::make_schedule(sch, stages), "token_drop::make_schedule")) return;
  std::printf("  schedule sequence 0 over 32 layers, image tokens per stage:");
  for (int s = 0; s < 4; ++s) std::printf(" %" PRId64, stages[s].image_tokens);
  std::printf(", lengths:");
  for (int s = 0; s < 4; ++s) std::printf(" %" PRId64, stages[s].seq_len);
  std::printf("\n");
  check_eq("sequence 0's length after this drop vs the schedule's stage-1 length", new_cu[1] - new_cu[0],
           stages[1].seq_len, "L_1 = L - (N - floor(N / 2)) = 300 - 128");
  std::printf("  stage    %.2f s\n", stage.ms() / 1e3);
}

// ---- stage 4: lightning decode ---------------------------------------------------------------------------

void stage_decode(Step& st) {
  std::printf("\n[4/4] lightning decode: %d steps from the states the prefill kernel saved\n", kDecodeSteps);
  Timer stage;
  // Rows: sequences 0, 2, 3 by their slots and one padding row (slot -1, as in a CUDA-graph batch
  // rounded up), which must read and write nothing.
  const std::vector<int32_t> rows_slot = {st.slots[0], -1, st.slots[2], st.slots[3]};
  const int32_t R = static_cast<int32_t>(rows_slot.size());
  print_list("  batch    4 rows, slot_ids = ", rows_slot, ": sequences 0, padding, 2, 3\n");
  std::printf(
      "  step     q, k, v [4, H, 3, d] bf16 fused (SiLU on load) -> o [4, H, d] bf16, the fp32 pool in place\n");
  std::printf("  ref      the fp64 reference decode, step by step, from the reference prefill's pool\n");

  const std::vector<float> pool_start = download(st.d_pool);
  std::vector<float> pool_ref = st.pool_ref;
  auto d_slots = upload(rows_slot);
  double worst_o = 0.0, ms_total = 0.0, ms_ref = 0.0;
  int64_t padding_written = 0;
  for (int s = 0; s < kDecodeSteps; ++s) {
    std::vector<bf16> qkv(static_cast<size_t>(R * kQkvTokenStride));
    fill_normal(qkv, 1.0);
    auto d_qkv = upload(qkv);
    auto d_o = poisoned<bf16>(static_cast<size_t>(R * kModel));
    fl::DecodeParams p;
    p.batch_size = R;
    p.num_heads = kH;
    p.dk = p.dv = kD;
    p.qkv_dtype = DType::kBF16;
    p.q = d_qkv.data();
    p.k = d_qkv.data() + kD;
    p.v = d_qkv.data() + 2 * kD;
    p.q_stride_token = p.k_stride_token = p.v_stride_token = kQkvTokenStride;
    p.q_stride_head = p.k_stride_head = p.v_stride_head = kQkvHeadStride;
    p.silu_qkv = true;
    p.o_dtype = DType::kBF16;
    p.o = d_o.data();
    p.o_stride_token = kModel;
    p.o_stride_head = kD;
    p.slopes = st.d_slopes.data();
    p.scale = 1.0f;
    p.state = st.d_pool.data();
    p.num_slots = kNumSlots;
    p.slot_ids = d_slots.data();
    double ms = 0;
    if (!run_kernel("lightning::decode", ms, [&] { return fl::decode(p); })) return;
    ms_total += ms;
    const auto o = download(d_o);

    std::vector<bf16> o_ref(static_cast<size_t>(R * kModel), from_double<bf16>(kNaN));
    fl::DecodeParams pr = p;
    pr.q = qkv.data();
    pr.k = qkv.data() + kD;
    pr.v = qkv.data() + 2 * kD;
    pr.o = o_ref.data();
    pr.slopes = st.slopes.data();
    pr.state = pool_ref.data();
    pr.slot_ids = rows_slot.data();
    Timer t_ref;
    if (!ref_ok(ref::lightning_decode(pr), "reference::lightning_decode")) return;
    ms_ref += t_ref.ms();
    for (int32_t r = 0; r < R; ++r) {
      for (int h = 0; h < kH; ++h) {
        RelRmse e;
        for (int j = 0; j < kD; ++j) {
          const int64_t i = int64_t(r) * kModel + h * kD + j;
          if (rows_slot[r] < 0) {
            padding_written += !std::isnan(to_double(o[i]));
          } else {
            e.add(to_double(o[i]), to_double(o_ref[i]));
          }
        }
        if (rows_slot[r] >= 0) worsen(worst_o, e.value());
      }
    }
  }
  const std::vector<float> pool = download(st.d_pool);
  std::printf("  kernel   fulgur::lightning::decode: %d steps, %.2f ms in all (%s); reference %.1f ms (host)\n",
              kDecodeSteps, ms_total, g_where, ms_ref);

  // The kernel's states carry the prefill's error (<= 1e-4) into decode, whose own error is far
  // smaller (docs/lightning.md: ~4e-8 per step): states within 2e-4. o is then within 2e-4 before
  // rounding, so bf16 neighbours differ with probability <= 2e-4 / 2^-8 ~ 10%: RMSE <= sqrt(0.1)
  // 2^-7 = 2.5e-3, bound 3e-3.
  check_le("decode o vs reference (bf16), worst relative RMSE over (step, row, head)", worst_o, 3e-3,
           "the prefill's state error (<= 1e-4) plus decode's, then bf16 rounding mismatches: sqrt(10%) 2^-7");
  double worst_s = 0.0;
  for (int32_t r = 0; r < R; ++r) {
    if (rows_slot[r] < 0) continue;
    for (int h = 0; h < kH; ++h) {
      RelRmse e;
      const int64_t off = rows_slot[r] * kSlotElems + h * kHeadElems;
      for (int64_t i = 0; i < kHeadElems; ++i) e.add(pool[off + i], pool_ref[off + i]);
      worsen(worst_s, e.value());
    }
  }
  check_le("states after decode vs reference, worst relative RMSE per head", worst_s, 2 * kStateTol,
           "the prefill's 1e-4 plus decode's own (fp32 state, lambda as fp32 hi + lo): 2e-4");
  int64_t untouched = padding_written;
  for (int slot : {1, 4})
    untouched +=
        bytes_differing(std::vector<float>(&pool[slot * kSlotElems], &pool[(slot + 1) * kSlotElems]),
                        std::vector<float>(&pool_start[slot * kSlotElems], &pool_start[(slot + 1) * kSlotElems]));
  check_eq("padding row o elements written + bytes of unused slots 1, 4 changed", untouched, 0,
           "a slot -1 row reads and writes nothing; decode writes only the rows' slots");
  std::printf("  stage    %.2f s\n", stage.ms() / 1e3);
}

}  // namespace

int main() {
  std::printf("fulgur demo: a MiniMax-01-style step through fulgur's kernels, checked against the fp64 references\n");
#if FULGUR_EMULATING
  g_where = "emulated";
  std::printf("device: none: the kernels run on the CPU under fulgur's emulation of the CUDA execution model.\n");
  std::printf("        Times are wall clock of the emulated kernels on the CPU, NOT GPU times.\n");
#else
  g_where = "GPU";
  int dev = 0;
  cudaDeviceProp prop;
  if (!fulgur::have_device() || cudaGetDevice(&dev) != cudaSuccess ||
      cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
    std::printf("device: none found; this is the CUDA build, which needs a GPU (the emulated build runs anywhere)\n");
    return 77;
  }
  std::printf("device: GPU %d, %s (sm_%d%d): the kernels run on it (CUDA build).\n", dev, prop.name, prop.major,
              prop.minor);
  std::printf("        Times are wall clock of launch + synchronize, first launches included (module loading).\n");
#endif
  uint64_t seed = 20250117;
  if (const char* s = std::getenv("FULGUR_DEMO_SEED")) seed = std::strtoull(s, nullptr, 10);
  std::printf("data: generated, seed %" PRIu64 " (FULGUR_DEMO_SEED=<n> changes it)\n", seed);
  g_rng.seed(seed);
  Timer total;

  Step st;
  stage_prefill(st);
  if (st.prefill_done) {
    stage_moe(st);
  } else {
    std::printf("\n[2/4] MoE: skipped, stage 1 failed\n");
    record(false);
  }
  if (st.moe_done) {
    stage_token_drop(st);
  } else {
    std::printf("\n[3/4] PyramidDrop: skipped, stage 2 did not finish\n");
    record(false);
  }
  if (st.prefill_done) {
    stage_decode(st);
  } else {
    std::printf("\n[4/4] lightning decode: skipped, stage 1 failed\n");
    record(false);
  }

  std::printf("\ntotal %.1f s (%s)\n", total.ms() / 1e3, g_where);
  if (g_failed == 0) {
    std::printf("demo: all %d checks passed\n", g_passed);
    return 0;
  }
  std::printf("demo: %d of %d checks FAILED\n", g_failed, g_passed + g_failed);
  return 1;
}
