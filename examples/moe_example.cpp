// SPDX-License-Identifier: Apache-2.0
// fulgur MoE routing and dispatch, as an inference engine chains it for one MoE layer:
//
//     route    router logits [T, E]  -> top-k expert ids and weights per token
//     permute  ids [T, k]            -> rows grouped by expert (offsets + index maps)
//     gather   hidden [T, D]         -> the rows each expert reads, grouped by expert
//     (your grouped expert GEMM over expert_first_token_offset; here a stand-in on the host)
//     combine  expert outputs        -> out[t] = sum_j w[t,j] * y[row(t,j)] + shared expert
//
// each stage checked against the fp64 references (include/fulgur/reference/moe.hpp) on the same
// inputs. docs/moe.md has the API, the error table and the precision argument.
//
// Build and run: `ctest -L examples` in the build folder, or build/examples/fulgur_example_moe
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

#include "example_support.hpp"
#include "fulgur/memory.hpp"  // DeviceBuffer, device_synchronize (examples and tests only)
#include "fulgur/moe.cuh"     // route, permute, gather, combine, Params, presets
#include "fulgur/reference/moe.hpp"

namespace fm = fulgur::moe;
using fulgur::DeviceBuffer;
using fulgur::DType;
using bf16 = __nv_bfloat16;

using namespace fulgur_example;  // Rng, error_name, ok, launched, ref_ok

namespace {

double to_d(bf16 x) { return fulgur::to_double(x); }

// Distance between x and the next bf16 (8 significant bits).
double bf16_ulp(double x) {
  int e = 0;
  std::frexp(x == 0 ? 1e-30 : x, &e);  // |x| in [2^(e-1), 2^e)
  return std::ldexp(1.0, e - 8);
}

const char* verdict(bool pass) { return pass ? "PASS" : "FAIL"; }

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
  std::printf("fulgur MoE example, seed %llu (rerun with: %s <seed>)\n", static_cast<unsigned long long>(seed),
              argv[0]);
  Rng rng(seed);
  bool pass = true;

  // ---- The layer ------------------------------------------------------------------------------
  // Qwen3-MoE routing (the preset: 128 experts, top-8, softmax over all experts, the 8 weights
  // renormalized to sum 1). Every model's policy is one preset in fulgur/moe/params.hpp
  // (DeepSeek-V3, Kimi-K2, Mixtral, Llama-4, gpt-oss...). A 64-token prefill chunk and a
  // hidden size of 512 (the real model's is 2048 or 4096) keep the emulated run short.
  const fm::RoutePolicy policy = fm::presets::qwen3_moe();
  const int E = policy.num_experts, k = policy.top_k;
  const int64_t T = 64, D = 512;
  const int64_t rows = T * k;  // (token, slot) pairs: the "expanded" rows, index i = t*k + j

  // Router logits as the router GEMM leaves them: bf16, about unit scale. Hidden states and the
  // shared expert's output: randn in bf16.
  std::vector<bf16> logits(T * E), hidden(T * D), shared(T * D);
  for (bf16& x : logits) x = fulgur::from_double<bf16>(rng.normal());
  for (bf16& x : hidden) x = fulgur::from_double<bf16>(rng.normal());
  for (bf16& x : shared) x = fulgur::from_double<bf16>(0.5 * rng.normal());
  std::printf(
      "layer: Qwen3-MoE routing (E = %d, top-%d, softmax, renormalized), T = %lld tokens, hidden %lld, "
      "bf16 logits/hidden/out, fp32 weights\n",
      E, k, static_cast<long long>(T), static_cast<long long>(D));

  DeviceBuffer<bf16> d_logits(logits), d_hidden(hidden), d_shared(shared);
  DeviceBuffer<int32_t> d_ids(static_cast<size_t>(rows)), d_counts(E);
  DeviceBuffer<float> d_weights(static_cast<size_t>(rows));
  DeviceBuffer<int64_t> d_offsets(E + 1);
  DeviceBuffer<int32_t> d_e2p(static_cast<size_t>(rows)), d_p2e(static_cast<size_t>(rows));
  DeviceBuffer<bf16> d_rows(static_cast<size_t>(rows * D)), d_out(static_cast<size_t>(T * D));
  for (cudaError_t e :
       {d_logits.error(), d_hidden.error(), d_shared.error(), d_ids.error(), d_counts.error(), d_weights.error(),
        d_offsets.error(), d_e2p.error(), d_p2e.error(), d_rows.error(), d_out.error()})
    if (!ok(e, "allocating device memory")) return 1;
  // Poison the outputs (0xFF bytes: -1 as int32, NaN as floats) so an unwritten element shows.
  for (cudaError_t e :
       {d_ids.fill_bytes(0xFF), d_weights.fill_bytes(0xFF), d_counts.fill_bytes(0xFF), d_offsets.fill_bytes(0xFF),
        d_e2p.fill_bytes(0xFF), d_p2e.fill_bytes(0xFF), d_rows.fill_bytes(0xFF), d_out.fill_bytes(0xFF)})
    if (!ok(e, "poisoning outputs")) return 1;

  // The caller's stream: an engine passes its own. Launchers only enqueue work on it (no
  // allocation, no synchronization: the whole chain can be captured in a CUDA graph). The stages
  // depend on each other through stream order. This example uses the default stream.
  cudaStream_t stream = nullptr;

  // ---- 1. route ---------------------------------------------------------------------------------
  // Strides are in elements; a row stride larger than E reads logits padded per row in place.
  fm::RouteParams rp;
  rp.policy = policy;
  rp.logits = d_logits.data();  // [T, E]
  rp.logits_dtype = DType::kBF16;
  rp.logits_row_stride = E;
  rp.num_tokens = T;
  rp.topk_ids = d_ids.data();          // [T, k] int32, slot j = the j-th best expert
  rp.topk_weights = d_weights.data();  // [T, k]
  rp.weights_dtype = DType::kF32;
  rp.expert_counts = d_counts.data();  // [E] optional: rows per expert (sums to T*k)
  // No workspace: route takes the Params and a stream.
  if (!launched(fm::route(rp, stream), "route", rp)) return 1;

  // ---- 2. permute -------------------------------------------------------------------------------
  // The compact view: rows grouped by expert, in (t, j) order inside an expert. The same call can
  // also write the tile-padded view a block-wise grouped GEMM reads (sorted_token_ids...), the
  // masked [E, capacity] view of low-latency dispatch, and expert-parallel send counts.
  // (route_permute() does both stages in one launch when T*k <= 4096, the decode case.)
  fm::PermuteParams pp;
  pp.topk_ids = d_ids.data();  // route's output, read in stream order
  pp.num_tokens = T;
  pp.top_k = k;
  pp.num_experts = E;
  pp.expert_first_token_offset = d_offsets.data();  // [E+1] int64: expert e owns rows [off[e], off[e+1])
  pp.expanded_to_permuted = d_e2p.data();           // [T*k]: permuted row of (t, j)
  pp.permuted_to_expanded = d_p2e.data();           // [T*k]: (t, j) of permuted row r
  // Workspace, CUB style: a null workspace only reports its size (never 0).
  size_t ws_bytes = 0;
  if (!launched(fm::permute(nullptr, ws_bytes, pp, stream), "permute workspace query", pp)) return 1;
  DeviceBuffer<unsigned char> ws(ws_bytes);
  if (!ok(ws.error(), "allocating the permute workspace")) return 1;
  if (!launched(fm::permute(ws.data(), ws_bytes, pp, stream), "permute", pp)) return 1;

  // ---- 3. gather --------------------------------------------------------------------------------
  // One row map serves every layout: permuted_to_expanded for the compact view. Row r of the
  // output is hidden[t] for i = row_map[r] = t*k + j (scale_by_weight would multiply it by
  // w[t, j]: Llama-4 applies the weight to the expert's input).
  fm::GatherParams gp;
  gp.hidden = d_hidden.data();  // [T, D]
  gp.hidden_dtype = DType::kBF16;
  gp.hidden_row_stride = D;
  gp.num_tokens = T;
  gp.top_k = k;
  gp.hidden_size = D;
  gp.row_map = d_p2e.data();
  gp.num_rows = rows;
  gp.out = d_rows.data();  // [T*k, D], grouped by expert
  gp.out_dtype = DType::kBF16;
  gp.out_row_stride = D;
  if (!launched(fm::gather(gp, stream), "gather", gp)) return 1;

  if (!ok(fulgur::device_synchronize(), "synchronizing")) return 1;
  const std::vector<int32_t> ids = d_ids.to_host(), counts = d_counts.to_host();
  const std::vector<float> weights = d_weights.to_host();
  const std::vector<int64_t> offsets = d_offsets.to_host();
  const std::vector<int32_t> e2p = d_e2p.to_host(), p2e = d_p2e.to_host();
  std::vector<bf16> expert_rows = d_rows.to_host();

  // ---- the experts (stand-in) ------------------------------------------------------------------
  // An engine runs its grouped GEMM here: expert e multiplies the rows [off[e], off[e+1]). This
  // example scales expert e's rows by (1 + e/E) on the host, rounded to bf16, which is enough
  // to see that every row reached its expert and came back to the right token.
  std::vector<bf16> y(expert_rows.size());
  for (int e = 0; e < E; ++e)
    for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r)
      for (int64_t c = 0; c < D; ++c)
        y[r * D + c] = fulgur::from_double<bf16>(to_d(expert_rows[r * D + c]) * (1.0 + double(e) / E));
  DeviceBuffer<bf16> d_y(y);
  if (!ok(d_y.error(), "uploading the expert outputs")) return 1;

  // ---- 4. combine -------------------------------------------------------------------------------
  // out[t] = sum over j ascending of w[t,j] * y[expanded_to_permuted[t*k+j]] + residual, in fp32
  // in that fixed order (deterministic, no atomics), rounded once to bf16. The residual here is
  // the shared expert's output (Qwen2-MoE would also pass its per-token gate).
  fm::CombineParams cp;
  cp.expert_out = d_y.data();  // [T*k, D]
  cp.expert_out_dtype = DType::kBF16;
  cp.expert_out_row_stride = D;
  cp.num_expert_rows = rows;
  cp.num_tokens = T;
  cp.top_k = k;
  cp.hidden_size = D;
  cp.expanded_to_row = d_e2p.data();
  cp.topk_weights = d_weights.data();
  cp.weights_dtype = DType::kF32;
  cp.residual = d_shared.data();  // [T, D], may be null
  cp.residual_dtype = DType::kBF16;
  cp.residual_row_stride = D;
  cp.out = d_out.data();  // [T, D]
  cp.out_dtype = DType::kBF16;
  cp.out_row_stride = D;
  if (!launched(fm::combine(cp, stream), "combine", cp)) return 1;
  if (!ok(fulgur::device_synchronize(), "synchronizing")) return 1;
  const std::vector<bf16> out = d_out.to_host();

  // ---- Checks against the fp64 references, stage by stage, on the same inputs -----------------
  // route: ids and counts exactly. Qwen3's policy selects on the logits themselves (softmax
  // preserves their order), so the kernel's choice is the exact one, ties to the lower expert
  // like the reference. Weights (fp32): relative error <= 2 * (2 * spread + E/32 + 16) * 2^-24,
  // spread = max - min logit of the token (exp(x - max) amplifies the logit's rounding), E/32
  // + 5 roundings in the softmax sum, the renormalization and divisions the rest; doubled, as
  // for a same-precision reference (docs/moe.md, "Precision").
  {
    std::vector<int32_t> r_ids(rows), r_counts(E);
    std::vector<float> r_w(rows);
    fm::RouteParams h = rp;
    h.logits = logits.data();
    h.topk_ids = r_ids.data();
    h.topk_weights = r_w.data();
    h.expert_counts = r_counts.data();
    if (!ref_ok(fulgur::reference::moe_route(h), "route")) return 1;
    double worst = 0, worst_ratio = 0;
    for (int64_t t = 0; t < T; ++t) {
      double lo = INFINITY, hi = -INFINITY;
      for (int e = 0; e < E; ++e) {
        lo = std::min(lo, to_d(logits[t * E + e]));
        hi = std::max(hi, to_d(logits[t * E + e]));
      }
      const double bound = 2.0 * (2.0 * (hi - lo) + E / 32.0 + 16.0) * std::ldexp(1.0, -24);
      for (int j = 0; j < k; ++j) {
        const double rel = std::fabs(double(weights[t * k + j]) - r_w[t * k + j]) / std::fabs(double(r_w[t * k + j]));
        worst = std::max(worst, rel);
        worst_ratio = std::max(worst_ratio, rel / bound);
      }
    }
    const bool good = ids == r_ids && counts == r_counts && worst_ratio <= 1.0;
    std::printf("route:   ids %s, expert counts %s, weights max rel err %.2e (%.2f of the bound): %s\n",
                ids == r_ids ? "equal" : "DIFFER", counts == r_counts ? "equal" : "DIFFER", worst, worst_ratio,
                verdict(good));
    pass = pass && good;
  }
  // permute: integer logic, a function of the ids alone: equal to the stable-sort oracle.
  {
    std::vector<int64_t> r_off(E + 1);
    std::vector<int32_t> r_e2p(rows), r_p2e(rows);
    fm::PermuteParams h = pp;
    h.topk_ids = ids.data();
    h.expert_first_token_offset = r_off.data();
    h.expanded_to_permuted = r_e2p.data();
    h.permuted_to_expanded = r_p2e.data();
    if (!ref_ok(fulgur::reference::moe_permute(h), "permute")) return 1;
    const bool good = offsets == r_off && e2p == r_e2p && p2e == r_p2e;
    int busiest = 0;
    for (int e = 1; e < E; ++e)
      if (offsets[e + 1] - offsets[e] > offsets[busiest + 1] - offsets[busiest]) busiest = e;
    std::printf(
        "permute: %lld rows over %d experts (busiest: expert %d with %lld), workspace %zu bytes; offsets and "
        "both maps equal: %s\n",
        static_cast<long long>(rows), E, busiest, static_cast<long long>(offsets[busiest + 1] - offsets[busiest]),
        ws_bytes, verdict(good));
    pass = pass && good;
  }
  // gather: a copy (same dtype, no scaling): bit for bit.
  {
    std::vector<bf16> r_rows(rows * D);
    fm::GatherParams h = gp;
    h.hidden = hidden.data();
    h.row_map = p2e.data();
    h.out = r_rows.data();
    if (!ref_ok(fulgur::reference::moe_gather(h), "gather")) return 1;
    const bool good = std::memcmp(r_rows.data(), expert_rows.data(), sizeof(bf16) * r_rows.size()) == 0;
    std::printf("gather:  [%lld, %lld] rows bit for bit: %s\n", static_cast<long long>(rows), static_cast<long long>(D),
                verdict(good));
    pass = pass && good;
  }
  // combine: each of the k + 1 fp32 fmas rounds once, so |fp32 sum - exact| <= (k + 2) * 2^-24
  // * sum |terms|; both sides then round once to bf16, which adds at most one bf16 ulp of the
  // result. That is the per-element bound.
  {
    std::vector<bf16> r_out(T * D);
    fm::CombineParams h = cp;
    h.expert_out = y.data();
    h.expanded_to_row = e2p.data();
    h.topk_weights = weights.data();
    h.residual = shared.data();
    h.out = r_out.data();
    if (!ref_ok(fulgur::reference::moe_combine(h), "combine")) return 1;
    double max_abs = 0, num = 0, den = 0;
    int64_t over = 0;
    for (int64_t t = 0; t < T; ++t)
      for (int64_t c = 0; c < D; ++c) {
        double mag = std::fabs(to_d(shared[t * D + c]));
        for (int j = 0; j < k; ++j) mag += std::fabs(weights[t * k + j] * to_d(y[int64_t{e2p[t * k + j]} * D + c]));
        const double want = to_d(r_out[t * D + c]), got = to_d(out[t * D + c]);
        const double err = std::fabs(got - want);
        const double bound = (k + 2) * std::ldexp(1.0, -24) * mag + bf16_ulp(want);
        over += !(err <= bound);
        max_abs = std::max(max_abs, err);
        num += err * err;
        den += want * want;
      }
    const bool good = over == 0;
    std::printf("combine: [%lld, %lld] max |err| %.2e, rel RMSE %.2e, %lld elements over the bound: %s\n",
                static_cast<long long>(T), static_cast<long long>(D), max_abs, std::sqrt(num / den),
                static_cast<long long>(over), verdict(good));
    pass = pass && good;
  }

  // ---- A bad input is rejected, nothing written ---------------------------------------------------
  // Switching the layer to the DeepSeek-V3 preset (sigmoid, 8 groups, selection bias) but
  // forgetting its e_score_correction_bias would silently change the routing; RouteParams makes
  // the bias part of the contract, so route() refuses with cudaErrorInvalidValue (docs/moe.md,
  // "Launch, workspace, errors") and writes nothing. Same buffers, viewed as [T/2, 256] logits.
  {
    fm::RouteParams bad = rp;
    bad.policy = fm::presets::deepseek_v3();
    bad.logits_row_stride = bad.policy.num_experts;
    bad.num_tokens = T / 2;
    bad.expert_counts = nullptr;
    bad.bias = nullptr;  // the mistake
    const cudaError_t e = fm::route(bad, stream);
    if (!ok(fulgur::device_synchronize(), "synchronizing")) return 1;
    const bool untouched = d_ids.to_host() == ids;
    const bool good = e == cudaErrorInvalidValue && untouched;
    std::printf("bad input (DeepSeek-V3 policy without its bias): route returned %s, reason \"%s\"; topk_ids %s: %s\n",
                error_name(e), fm::can_implement(bad).reason(), untouched ? "untouched" : "WRITTEN", verdict(good));
    pass = pass && good;
  }

  std::printf("%s\n", verdict(pass));
  return pass ? 0 : 1;
}
