// SPDX-License-Identifier: Apache-2.0
// fulgur lightning attention, as an inference engine calls it: one varlen prefill over a packed
// batch whose recurrent states live in a slot pool, then one decode step for the same requests,
// each checked against the fp64 reference (include/fulgur/reference/lightning.hpp).
//
// The operation (docs/lightning.md, MiniMax-01 / Lightning Attention-2), per sequence and head:
//     S_t = lambda S_{t-1} + k_t^T v_t,   o_t = scale * q_t S_t,   lambda = exp(-slope_h)
// with an fp32 state S of dk x dv per head, kept between calls in a caller-owned pool.
//
// Build and run: `ctest -L examples` in the build folder, or build/examples/fulgur_example_lightning
// [seed]. The same source runs on the CPU under fulgur's emulation (g++, fulgur::emulation) and,
// compiled by nvcc, on a GPU: device memory goes through fulgur/memory.hpp (cudaMalloc and
// cudaMemcpy in a CUDA build, host memory under emulation).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "fulgur/lightning.cuh"  // prefill, decode, Params, can_implement, slopes
#include "example_support.hpp"
#include "fulgur/memory.hpp"     // DeviceBuffer, device_synchronize (examples and tests only)
#include "fulgur/reference/lightning.hpp"

namespace lt = fulgur::lightning;
using fulgur::DeviceBuffer;
using fulgur::DType;
using bf16 = __nv_bfloat16;

using namespace fulgur_example;  // Rng, error_name, ok, launched, ref_ok

namespace {

double to_d(bf16 x) { return fulgur::to_double(x); }

// Relative RMSE of got against want: sqrt(sum (g - w)^2 / sum w^2).
struct Err {
  double rel_rmse = 0, max_abs = 0, max_ref = 0;  // max_ref: largest |want|, for scale
};
Err compare(const std::vector<double>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  Err e;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = got[i] - want[i];
    num += d * d;
    den += want[i] * want[i];
    e.max_abs = std::max(e.max_abs, std::fabs(d));
    e.max_ref = std::max(e.max_ref, std::fabs(want[i]));
  }
  if (!(e.max_abs == e.max_abs)) e.max_abs = INFINITY;  // NaN: an element was never written
  e.rel_rmse = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  if (!(e.rel_rmse == e.rel_rmse)) e.rel_rmse = INFINITY;
  return e;
}

}  // namespace

int main(int argc, char** argv) {
#if !FULGUR_EMULATING
  // The nvcc build runs the kernels on a card; without one there is nothing to run (CTest reads
  // 77 as "skipped").
  if (!fulgur::have_device()) {
    std::printf("no CUDA device: skipping\n");
    return 77;
  }
#endif
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 20261126ull;
  std::printf("fulgur lightning example, seed %llu (rerun with: %s <seed>)\n", static_cast<unsigned long long>(seed),
              argv[0]);
  Rng rng(seed);
  bool pass = true;

  // ---- The model and the batch ---------------------------------------------------------------
  // MiniMax-Text-01: 64 lightning heads of d = 128, 80 layers. With tensor parallelism over 16
  // GPUs this rank (5) holds 4 heads; the slopes depend on the GLOBAL head index and the layer.
  const int kGlobalHeads = 64, kLayers = 80, kLayer = 40, kTpSize = 16, kTpRank = 5;
  const int H = kGlobalHeads / kTpSize, d = 128;
  std::vector<float> slopes(H);
  const fulgur::Status slope_status = lt::fill_minimax_slopes(slopes.data(), kGlobalHeads, kLayer, kLayers,
                                                              lt::SlopeConvention::kVllm, kTpRank, kTpSize);
  if (!slope_status) {
    std::printf("fill_minimax_slopes: %s\n", slope_status.reason());
    return 1;
  }

  // Three requests packed without padding (varlen): a new 130-token prompt, the second chunk
  // (67 tokens) of a chunked prefill, and a 5-token chunk. Sequence b owns rows
  // [cu_seqlens[b], cu_seqlens[b+1]) of q, k, v and o.
  const std::vector<int32_t> lens = {130, 67, 5};
  const int32_t B = static_cast<int32_t>(lens.size());
  std::vector<int32_t> cu_seqlens = {0};
  for (int32_t n : lens) cu_seqlens.push_back(cu_seqlens.back() + n);
  const int64_t T = cu_seqlens.back();

  // The state pool: one fp32 [H, dk, dv] state per slot, indexed by the engine's slot ids (a
  // request keeps its slot from prefill through every decode step). Slot 1 belongs to a request
  // that is not in this batch: nothing may touch it. The new request got slot 2, whose contents
  // are stale (left by a finished request): has_initial_state = 0 says "start from zero".
  const int64_t num_slots = 4;
  const std::vector<int32_t> slot_ids = {2, 0, 3};
  const std::vector<uint8_t> has_initial_state = {0, 1, 1};
  const int64_t state_elems = num_slots * H * d * d;
  std::vector<float> pool(state_elems);
  for (float& x : pool) x = static_cast<float>(rng.normal());

  // q, k, v: the raw projection output, randn in bf16, dense [T, H, d]. MiniMax applies SiLU to
  // them; the kernel fuses it (silu_qkv), so the values it uses are SiLU(randn): k and v with a
  // positive mean, which makes the state grow like 1 / (1 - lambda), as in the model.
  const int64_t qkv_elems = T * H * d;
  std::vector<bf16> q(qkv_elems), k(qkv_elems), v(qkv_elems);
  for (auto* t : {&q, &k, &v})
    for (bf16& x : *t) x = fulgur::from_double<bf16>(rng.normal());

  std::printf(
      "prefill: %d sequences (lengths %d, %d, %d), T = %lld tokens, H = %d heads (rank %d of %d), "
      "dk = dv = %d, bf16 q/k/v/o, fp32 state pool of %lld slots, MiniMax layer %d slopes %.3g..%.3g\n",
      B, lens[0], lens[1], lens[2], static_cast<long long>(T), H, kTpRank, kTpSize, d,
      static_cast<long long>(num_slots), kLayer, slopes[H - 1], slopes[0]);

  // ---- Device buffers --------------------------------------------------------------------------
  DeviceBuffer<bf16> d_q(q), d_k(k), d_v(v), d_o(static_cast<size_t>(qkv_elems));
  DeviceBuffer<float> d_pool(pool), d_slopes(slopes);
  DeviceBuffer<int32_t> d_cu(cu_seqlens), d_slots(slot_ids);
  DeviceBuffer<uint8_t> d_has_init(has_initial_state);
  for (cudaError_t e : {d_q.error(), d_k.error(), d_v.error(), d_o.error(), d_pool.error(), d_slopes.error(),
                        d_cu.error(), d_slots.error(), d_has_init.error()})
    if (!ok(e, "allocating and filling device memory")) return 1;
  // Poison o (0xFFFF is a bf16 NaN): a row the kernel forgot to write would show in the check.
  if (!ok(d_o.fill_bytes(0xFF), "poisoning o")) return 1;

  // ---- Prefill parameters -----------------------------------------------------------------------
  // Plain data: pointers, sizes, dtypes and 64-bit strides in ELEMENTS. Every field is
  // documented in include/fulgur/lightning/params.hpp.
  lt::PrefillParams p;
  p.batch_size = B;
  p.num_tokens = T;            // rows of q, k, v, o
  p.cu_seqlens = d_cu.data();  // [B+1] int32, device memory
  p.max_seqlen = 130;          // optional upper bound (0 = unknown)
  p.num_heads = H;
  p.dk = p.dv = d;  // 64 or 128 (can_implement says which are compiled in)
  p.qkv_dtype = DType::kBF16;
  p.q = d_q.data();  // [T, H, dk]
  p.k = d_k.data();  // [T, H, dk]
  p.v = d_v.data();  // [T, H, dv]
  // Dense [T, H, d]: a token row is H*d elements, a head d. MiniMax's fused projection
  // [T, H, 3, d] is read in place instead with q = base, k = base + d, v = base + 2d,
  // stride_token = 3*H*d, stride_head = 3*d.
  p.q_stride_token = p.k_stride_token = p.v_stride_token = int64_t{H} * d;
  p.q_stride_head = p.k_stride_head = p.v_stride_head = d;
  p.silu_qkv = true;  // SiLU applied as loaded
  p.o_dtype = DType::kBF16;
  p.o = d_o.data();  // [T, H, dv]
  p.o_stride_token = int64_t{H} * d;
  p.o_stride_head = d;
  p.slopes = d_slopes.data();  // [H] fp32, device memory
  p.scale = 1.0f;              // MiniMax uses 1
  p.state = d_pool.data();     // [num_slots, H, dk, dv] fp32, read then overwritten
  p.state_layout = lt::StateLayout::kKV;
  p.num_slots = num_slots;
  p.state_stride_slot = 0;                  // dense pool; a pool shared across layers sets it
  p.slot_ids = d_slots.data();              // [B] int32; -1 = stateless sequence
  p.has_initial_state = d_has_init.data();  // [B] uint8 or null (= all 1)

  // can_implement is a pure host check (no device memory read): run it once when an engine
  // configures a layer to fail early with a readable reason. The launcher runs it again.
  const fulgur::Status st = lt::can_implement(p);
  if (!st) {
    std::printf("can_implement: %s\n", st.reason());
    return 1;
  }

  // The caller's stream: an engine passes its own (e.g. PyTorch's current stream). Launchers only
  // enqueue work on it: they never allocate, synchronize or print, so the call can be captured
  // in a CUDA graph. This example uses the default stream.
  cudaStream_t stream = nullptr;

  // Workspace, CUB style: a null workspace only reports its size. (An engine sizes it once for
  // its largest batch: it grows with num_tokens, 2 * floor(T/1024) * H * d * d * 4 bytes plus
  // a few small arrays, at least 256 bytes.)
  size_t ws_bytes = 0;
  if (!ok(lt::prefill(nullptr, ws_bytes, p, stream), "prefill workspace query")) return 1;
  DeviceBuffer<unsigned char> ws(ws_bytes);  // 256-byte aligned, as cudaMalloc
  if (!ok(ws.error(), "allocating the workspace")) return 1;
  std::printf("  workspace: %zu bytes\n", ws_bytes);
  if (!ok(lt::prefill(ws.data(), ws_bytes, p, stream), "prefill")) return 1;

  // The launcher checked everything the host can see. Index arrays in device memory (cu_seqlens,
  // slot ids, slopes) are checked by the device, which writes nothing at all when they are bad
  // and leaves the reason in the workspace: a debug build reads it (4 bytes, synchronous).
  lt::PrefillArrayError device_status = lt::PrefillArrayError::kOk;
  if (!ok(lt::prefill_device_status(ws.data(), device_status), "reading the prefill device status")) return 1;
  if (device_status != lt::PrefillArrayError::kOk) {
    std::printf("  prefill rejected its device arrays (PrefillArrayError %d)\n", static_cast<int>(device_status));
    return 1;
  }
  if (!ok(fulgur::device_synchronize(), "synchronizing")) return 1;
  const std::vector<bf16> o_got = d_o.to_host();
  const std::vector<float> pool_got = d_pool.to_host();

  // ---- The fp64 reference on host copies --------------------------------------------------------
  // The reference takes the same Params with host pointers and writes o and the pool exactly
  // where the kernel does (o rounded to bf16 once, the state to fp32 once).
  std::vector<bf16> o_ref(qkv_elems);
  std::vector<float> pool_ref = pool;
  lt::PrefillParams hp = p;
  hp.cu_seqlens = cu_seqlens.data();
  hp.q = q.data();
  hp.k = k.data();
  hp.v = v.data();
  hp.o = o_ref.data();
  hp.slopes = slopes.data();
  hp.state = pool_ref.data();
  hp.slot_ids = slot_ids.data();
  hp.has_initial_state = has_initial_state.data();
  const fulgur::Status ref_status = fulgur::reference::lightning_prefill(hp);
  if (!ref_status) {
    std::printf("reference: %s\n", ref_status.reason());
    return 1;
  }

  // Tolerances, from the precision (docs/lightning.md, "Precision"; tests/lightning derive the
  // same). The kernel keeps the state in fp32 and feeds the tensor cores bf16 hi + lo pairs
  // (16 significant bits): each product is off by at most ~3 * 2^-16 = 4.6e-5 of itself, fp32
  // accumulation adds ~64 * 2^-24 = 4e-6, so its fp32 results are within ~5e-5 relative of
  // fp64: the bound for every state is 1e-4 (relative RMSE per head). o is stored in bf16 and
  // compared with the reference rounded to bf16: two values 5e-5 apart round to different bf16
  // neighbours (ulp 2^-7 relative) at most ~1e-4 / 2^-8 = 2.6% of the time, a relative RMSE of
  // at most sqrt(0.026) * 2^-7 = 1.3e-3: bound 2e-3 per sequence and head. A decay off by one
  // step (the classic 1/lambda slip) is off by >= 1e-2 and fails both.
  const double kTolO = 2e-3, kTolState = 1e-4;
  Err worst_o, worst_state;
  for (int32_t b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      std::vector<double> g, w;
      for (int64_t row = cu_seqlens[b]; row < cu_seqlens[b + 1]; ++row)
        for (int j = 0; j < d; ++j) {
          const int64_t i = (row * H + h) * d + j;
          g.push_back(to_d(o_got[i]));
          w.push_back(to_d(o_ref[i]));
        }
      const Err e = compare(g, w);
      worst_o.rel_rmse = std::max(worst_o.rel_rmse, e.rel_rmse);
      worst_o.max_abs = std::max(worst_o.max_abs, e.max_abs);
      worst_o.max_ref = std::max(worst_o.max_ref, e.max_ref);
    }
  int64_t untouched_changed = 0;
  for (int64_t s = 0; s < num_slots; ++s) {
    const bool used = std::find(slot_ids.begin(), slot_ids.end(), s) != slot_ids.end();
    for (int h = 0; h < H; ++h) {
      const int64_t base = (s * H + h) * d * d;
      if (!used) {  // bit for bit unchanged
        untouched_changed += std::memcmp(&pool_got[base], &pool[base], sizeof(float) * d * d) != 0;
        continue;
      }
      const Err e = compare(std::vector<double>(pool_got.begin() + base, pool_got.begin() + base + d * d),
                            std::vector<double>(pool_ref.begin() + base, pool_ref.begin() + base + d * d));
      worst_state.rel_rmse = std::max(worst_state.rel_rmse, e.rel_rmse);
      worst_state.max_abs = std::max(worst_state.max_abs, e.max_abs);
    }
  }
  bool step_pass = worst_o.rel_rmse <= kTolO && worst_state.rel_rmse <= kTolState && untouched_changed == 0;
  // max |err| is about one bf16 step (2^-8 relative) of the largest outputs: rounding, not error.
  std::printf("  o:     worst rel RMSE %.2e (bound %.0e), max |err| %.2e (|o| up to %.1f)\n", worst_o.rel_rmse, kTolO,
              worst_o.max_abs, worst_o.max_ref);
  std::printf("  state: worst rel RMSE %.2e (bound %.0e), max |err| %.2e; slot 1 (not in the batch) %s\n",
              worst_state.rel_rmse, kTolState, worst_state.max_abs, untouched_changed ? "CHANGED" : "untouched");
  std::printf("  prefill: %s\n", step_pass ? "PASS" : "FAIL");
  pass = pass && step_pass;

  // ---- A bad input is rejected, nothing written ---------------------------------------------------
  // q one element (2 bytes) past an allocation is not 16-byte aligned: the kernels load q, k, v
  // with 16-byte vectors, so the launcher refuses with cudaErrorInvalidValue (docs/lightning.md,
  // "Errors") before launching anything, and o keeps its contents.
  {
    lt::PrefillParams bad = p;
    bad.q = d_q.data() + 1;
    const fulgur::Status why = lt::can_implement(bad);
    const cudaError_t e = lt::prefill(ws.data(), ws_bytes, bad, stream);
    if (!ok(fulgur::device_synchronize(), "synchronizing")) return 1;
    const bool untouched = std::memcmp(d_o.to_host().data(), o_got.data(), sizeof(bf16) * qkv_elems) == 0;
    const bool good = e == cudaErrorInvalidValue && untouched;
    std::printf("bad input (q misaligned by one element): prefill returned %s, reason \"%s\"; o %s: %s\n",
                error_name(e), why.reason(), untouched ? "untouched" : "WRITTEN", good ? "PASS" : "FAIL");
    pass = pass && good;
  }

  // ---- One decode step ------------------------------------------------------------------------
  // One new token per request, batch rows in any order; each row names its slot, and the state
  // is updated in place. Row 3 is padding (a CUDA-graph batch rounded up to 4): slot -1, nothing
  // is read or written for it, o included. Decode needs no workspace.
  const int32_t DB = 4;
  const std::vector<int32_t> dec_slots = {0, 2, 3, -1};
  const int64_t dec_elems = int64_t{DB} * H * d;
  std::vector<bf16> dq(dec_elems), dk(dec_elems), dv(dec_elems);
  for (auto* t : {&dq, &dk, &dv})
    for (bf16& x : *t) x = fulgur::from_double<bf16>(rng.normal());
  DeviceBuffer<bf16> d_dq(dq), d_dk(dk), d_dv(dv), d_do(static_cast<size_t>(dec_elems));
  DeviceBuffer<int32_t> d_dec_slots(dec_slots);
  if (!ok(d_do.fill_bytes(0xFF), "poisoning decode o")) return 1;
  std::printf("decode: %d rows (slots 0, 2, 3 and a padding row), H = %d, d = %d\n", DB, H, d);

  lt::DecodeParams dp;
  dp.batch_size = DB;
  dp.num_heads = H;
  dp.dk = dp.dv = d;
  dp.qkv_dtype = DType::kBF16;
  dp.q = d_dq.data();  // [B, H, dk]: one token per row
  dp.k = d_dk.data();
  dp.v = d_dv.data();
  dp.q_stride_token = dp.k_stride_token = dp.v_stride_token = int64_t{H} * d;
  dp.q_stride_head = dp.k_stride_head = dp.v_stride_head = d;
  dp.silu_qkv = true;
  dp.o_dtype = DType::kBF16;
  dp.o = d_do.data();  // [B, H, dv]
  dp.o_stride_token = int64_t{H} * d;
  dp.o_stride_head = d;
  dp.slopes = d_slopes.data();
  dp.scale = 1.0f;
  dp.state = d_pool.data();  // the pool the prefill just wrote
  dp.state_layout = lt::StateLayout::kKV;
  dp.num_slots = num_slots;
  dp.slot_ids = d_dec_slots.data();
  if (!ok(lt::decode(dp, stream), "decode")) {
    std::printf("  reason: %s\n", lt::can_implement(dp).reason());
    return 1;
  }
  if (!ok(fulgur::device_synchronize(), "synchronizing")) return 1;
  const std::vector<bf16> do_got = d_do.to_host();
  const std::vector<float> pool_got2 = d_pool.to_host();

  // Reference decode, continuing the reference chain (its own pool after its prefill), so the
  // check covers prefill and decode together; the errors do not compound beyond the bounds above
  // (one more step adds one more fp32 rounding).
  std::vector<bf16> do_ref(dec_elems);
  lt::DecodeParams hdp = dp;
  hdp.q = dq.data();
  hdp.k = dk.data();
  hdp.v = dv.data();
  hdp.o = do_ref.data();
  hdp.slopes = slopes.data();
  hdp.state = pool_ref.data();
  hdp.slot_ids = dec_slots.data();
  const fulgur::Status dref_status = fulgur::reference::lightning_decode(hdp);
  if (!dref_status) {
    std::printf("reference decode: %s\n", dref_status.reason());
    return 1;
  }
  Err dworst_o, dworst_state;
  int64_t padding_written = 0;
  for (int32_t b = 0; b < DB; ++b) {
    const int64_t base = int64_t{b} * H * d;
    if (dec_slots[b] < 0) {  // padding row: o still poisoned
      for (int64_t i = base; i < base + int64_t{H} * d; ++i) {
        uint16_t bits;
        std::memcpy(&bits, &do_got[i], 2);
        padding_written += bits != 0xFFFF;
      }
      continue;
    }
    for (int h = 0; h < H; ++h) {
      std::vector<double> g, w;
      for (int j = 0; j < d; ++j) {
        g.push_back(to_d(do_got[base + h * d + j]));
        w.push_back(to_d(do_ref[base + h * d + j]));
      }
      const Err e = compare(g, w);
      dworst_o.rel_rmse = std::max(dworst_o.rel_rmse, e.rel_rmse);
      dworst_o.max_abs = std::max(dworst_o.max_abs, e.max_abs);
      dworst_o.max_ref = std::max(dworst_o.max_ref, e.max_ref);
      const int64_t sb = (int64_t{dec_slots[b]} * H + h) * d * d;
      const Err es = compare(std::vector<double>(pool_got2.begin() + sb, pool_got2.begin() + sb + d * d),
                             std::vector<double>(pool_ref.begin() + sb, pool_ref.begin() + sb + d * d));
      dworst_state.rel_rmse = std::max(dworst_state.rel_rmse, es.rel_rmse);
      dworst_state.max_abs = std::max(dworst_state.max_abs, es.max_abs);
    }
  }
  step_pass = dworst_o.rel_rmse <= kTolO && dworst_state.rel_rmse <= kTolState && padding_written == 0;
  std::printf("  o:     worst rel RMSE %.2e (bound %.0e), max |err| %.2e (|o| up to %.1f); padding row %s\n",
              dworst_o.rel_rmse, kTolO, dworst_o.max_abs, dworst_o.max_ref, padding_written ? "WRITTEN" : "untouched");
  std::printf("  state: worst rel RMSE %.2e (bound %.0e), max |err| %.2e\n", dworst_state.rel_rmse, kTolState,
              dworst_state.max_abs);
  std::printf("  decode: %s\n", step_pass ? "PASS" : "FAIL");
  pass = pass && step_pass;

  std::printf("%s\n", pass ? "PASS" : "FAIL");
  return pass ? 0 : 1;
}
