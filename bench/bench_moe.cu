// SPDX-License-Identifier: Apache-2.0
// MoE routing and dispatch benchmarks (fulgur::moe route / permute / gather / combine) at the
// issue's shapes: MiniMax-Text-01 (E = 32, k = 2, H = 6144), Qwen3-235B (E = 128, k = 8,
// H = 4096), DeepSeek-V3 (E = 256, k = 8, 8 groups keep 4, sigmoid + bias, H = 7168); T in {1, 64,
// 1K, 8K, 32K}. Minimum bytes and FLOPs per call: docs/performance.md ("MoE"). Inputs: fp32 router
// logits (what vLLM's topk_softmax takes), int32 ids, fp32 weights, bf16 hidden states.
#include <string>

#include "common.cuh"
#include "fulgur/moe.cuh"

namespace {

using namespace fulgur_bench;
namespace moe = fulgur::moe;

struct Model {
  const char* name;
  moe::RoutePolicy policy;
  int64_t hidden;
};

std::vector<Model> models() {
  return {{"minimax", moe::presets::minimax_text_01(), 6144},
          {"qwen3", moe::presets::qwen3_moe(), 4096},
          {"deepseek_v3", moe::presets::deepseek_v3(), 7168}};
}

const int64_t kTokens[] = {1, 64, 1024, 8192, 32768};
constexpr int32_t kTileM = 64;  // the tile-padded view's M (vLLM fused_moe's usual BLOCK_SIZE_M)

std::string base_name(const char* op, const Model& m, int64_t T, bool with_h) {
  std::string n = std::string("moe.") + op + "/model=" + m.name + "/E=" + std::to_string(m.policy.num_experts) +
                  "/k=" + std::to_string(m.policy.top_k);
  if (with_h) n += "/H=" + std::to_string(m.hidden);
  return n + "/T=" + std::to_string(T);
}

// ---- costs (docs/performance.md) ---------------------------------------------------------------

Cost route_cost(const Model& m, int64_t T) {
  const double E = m.policy.num_experts, k = m.policy.top_k;
  Cost c;
  c.bytes = T * E * 4.0 + (m.policy.selection_bias ? E * 4.0 : 0.0) + T * k * (4.0 + 4.0);
  return c;
}
Cost permute_cost(const Model& m, int64_t T) {
  const double E = m.policy.num_experts, k = m.policy.top_k;
  Cost c;
  c.bytes = T * k * 4.0 + (E + 1) * 8.0 + 2.0 * T * k * 4.0;
  return c;
}
Cost align_cost(const Model& m, int64_t T) {
  const int32_t E = m.policy.num_experts, k = m.policy.top_k;
  Cost c;
  c.bytes = T * k * 4.0 + (E + 1) * 8.0 + 4.0 * moe::tile_padded_capacity(T, k, E, kTileM) +
            4.0 * moe::tile_count_capacity(T, k, E, kTileM) + 4.0;
  return c;
}
Cost gather_cost(const Model& m, int64_t T) {
  const double k = m.policy.top_k, H = m.hidden;
  Cost c;
  c.bytes = T * H * 2.0 + T * k * H * 2.0 + T * k * 4.0;
  return c;
}
Cost combine_cost(const Model& m, int64_t T) {
  const double k = m.policy.top_k, H = m.hidden;
  Cost c;
  c.bytes = T * k * H * 2.0 + T * k * (4.0 + 4.0) + T * H * 2.0;
  c.flops = 2.0 * T * k * H;
  return c;
}

// ---- shared setup: routed ids and the permutation maps of one batch --------------------------

struct Routed {
  Buf<float> logits, bias, weights;
  Buf<int32_t> ids, e2p, p2e;
  Buf<int64_t> offsets;
  Buf<unsigned char> ws;
};

cudaError_t make_routing(const Model& m, int64_t T, uint64_t seed, Routed& r, bool maps) {
  const int32_t E = m.policy.num_experts, k = m.policy.top_k;
  cudaError_t e;
  if ((e = r.logits.alloc(T * E)) != cudaSuccess) return e;
  if ((e = fill(r.logits.data(), T * E, seed, Dist::kNormal)) != cudaSuccess) return e;
  if (m.policy.selection_bias) {
    if ((e = r.bias.alloc(E)) != cudaSuccess) return e;
    if ((e = fill(r.bias.data(), E, seed + 1, Dist::kNormal, 0.1f)) != cudaSuccess) return e;
  }
  if ((e = r.ids.alloc(T * k)) != cudaSuccess) return e;
  if ((e = r.weights.alloc(T * k)) != cudaSuccess) return e;
  moe::RouteParams rp;
  rp.policy = m.policy;
  rp.logits = r.logits.data();
  rp.logits_dtype = fulgur::DType::kF32;
  rp.logits_row_stride = E;
  rp.bias = m.policy.selection_bias ? r.bias.data() : nullptr;
  rp.num_tokens = T;
  rp.topk_ids = r.ids.data();
  rp.topk_weights = r.weights.data();
  rp.weights_dtype = fulgur::DType::kF32;
  if ((e = moe::route(rp, nullptr)) != cudaSuccess) return e;
  if (!maps) return cudaDeviceSynchronize();
  if ((e = r.offsets.alloc(E + 1)) != cudaSuccess) return e;
  if ((e = r.e2p.alloc(T * k)) != cudaSuccess) return e;
  if ((e = r.p2e.alloc(T * k)) != cudaSuccess) return e;
  moe::PermuteParams pp;
  pp.topk_ids = r.ids.data();
  pp.num_tokens = T;
  pp.top_k = k;
  pp.num_experts = E;
  pp.expert_first_token_offset = r.offsets.data();
  pp.expanded_to_permuted = r.e2p.data();
  pp.permuted_to_expanded = r.p2e.data();
  size_t bytes = 0;
  if ((e = moe::permute(nullptr, bytes, pp, nullptr)) != cudaSuccess) return e;
  if ((e = r.ws.alloc(bytes)) != cudaSuccess) return e;
  if ((e = moe::permute(r.ws.data(), bytes, pp, nullptr)) != cudaSuccess) return e;
  return cudaDeviceSynchronize();
}

// ---- benchmarks --------------------------------------------------------------------------------

void bench_route(benchmark::State& st, Model m, int64_t T) {
  const int32_t E = m.policy.num_experts, k = m.policy.top_k;
  const Cost cost = route_cost(m, T);
  const int copies = rotation_copies(cost.bytes);
  std::vector<Buf<float>> logits(copies), weights(copies);
  std::vector<Buf<int32_t>> ids(copies);
  Buf<float> bias;
  if (m.policy.selection_bias) {
    FULGUR_BENCH_CHECK(st, bias.alloc(E));
    FULGUR_BENCH_CHECK(st, fill(bias.data(), E, 7, Dist::kNormal, 0.1f));
  }
  std::vector<moe::RouteParams> ps(copies);
  for (int c = 0; c < copies; ++c) {
    FULGUR_BENCH_CHECK(st, logits[c].alloc(T * E));
    FULGUR_BENCH_CHECK(st, fill(logits[c].data(), T * E, 100 + c, Dist::kNormal));
    FULGUR_BENCH_CHECK(st, ids[c].alloc(T * k));
    FULGUR_BENCH_CHECK(st, weights[c].alloc(T * k));
    moe::RouteParams& p = ps[c];
    p.policy = m.policy;
    p.logits = logits[c].data();
    p.logits_dtype = fulgur::DType::kF32;
    p.logits_row_stride = E;
    p.bias = m.policy.selection_bias ? bias.data() : nullptr;
    p.num_tokens = T;
    p.topk_ids = ids[c].data();
    p.topk_weights = weights[c].data();
    p.weights_dtype = fulgur::DType::kF32;
  }
  run_timed(st, cost, copies, [&](int c, cudaStream_t s) { return moe::route(ps[c], s); });
}

void bench_permute(benchmark::State& st, Model m, int64_t T, bool align) {
  const int32_t E = m.policy.num_experts, k = m.policy.top_k;
  const Cost cost = align ? align_cost(m, T) : permute_cost(m, T);
  const int copies = rotation_copies(cost.bytes);
  std::vector<Routed> routed(copies);
  std::vector<Buf<int64_t>> offsets(copies);
  std::vector<Buf<int32_t>> a(copies), b(copies), tiles(copies), post(copies);
  std::vector<moe::PermuteParams> ps(copies);
  size_t ws_bytes = 0;
  for (int c = 0; c < copies; ++c) {
    FULGUR_BENCH_CHECK(st, make_routing(m, T, 200 + c, routed[c], false));
    FULGUR_BENCH_CHECK(st, offsets[c].alloc(E + 1));
    moe::PermuteParams& p = ps[c];
    p.topk_ids = routed[c].ids.data();
    p.num_tokens = T;
    p.top_k = k;
    p.num_experts = E;
    p.expert_first_token_offset = offsets[c].data();
    if (align) {
      FULGUR_BENCH_CHECK(st, a[c].alloc(moe::tile_padded_capacity(T, k, E, kTileM)));
      FULGUR_BENCH_CHECK(st, tiles[c].alloc(moe::tile_count_capacity(T, k, E, kTileM)));
      FULGUR_BENCH_CHECK(st, post[c].alloc(1));
      p.tile_m = kTileM;
      p.sorted_token_ids = a[c].data();
      p.tile_expert_ids = tiles[c].data();
      p.num_tokens_post_padded = post[c].data();
    } else {
      FULGUR_BENCH_CHECK(st, a[c].alloc(T * k));
      FULGUR_BENCH_CHECK(st, b[c].alloc(T * k));
      p.expanded_to_permuted = a[c].data();
      p.permuted_to_expanded = b[c].data();
    }
    size_t bytes = 0;
    FULGUR_BENCH_CHECK(st, moe::permute(nullptr, bytes, p, nullptr));
    ws_bytes = std::max(ws_bytes, bytes);
  }
  Buf<unsigned char> ws;
  FULGUR_BENCH_CHECK(st, ws.alloc(ws_bytes));
  run_timed(st, cost, copies, [&](int c, cudaStream_t s) {
    size_t bytes = ws_bytes;
    return moe::permute(ws.data(), bytes, ps[c], s);
  });
}

// by_token: the token-major path (expanded_to_row = the compact view's expanded_to_permuted, no
// row map): each token's row read once. Otherwise the row path over permuted_to_expanded.
void bench_gather(benchmark::State& st, Model m, int64_t T, bool by_token) {
  const int32_t k = m.policy.top_k;
  const int64_t H = m.hidden;
  const Cost cost = gather_cost(m, T);
  const int copies = rotation_copies(cost.bytes);
  Routed routed;
  FULGUR_BENCH_CHECK(st, make_routing(m, T, 300, routed, true));
  std::vector<Buf<__nv_bfloat16>> hidden(copies), out(copies);
  std::vector<moe::GatherParams> ps(copies);
  for (int c = 0; c < copies; ++c) {
    FULGUR_BENCH_CHECK(st, hidden[c].alloc(T * H));
    FULGUR_BENCH_CHECK(st, fill(hidden[c].data(), T * H, 310 + c, Dist::kNormal));
    FULGUR_BENCH_CHECK(st, out[c].alloc(T * k * H));
    moe::GatherParams& p = ps[c];
    p.hidden = hidden[c].data();
    p.hidden_dtype = fulgur::DType::kBF16;
    p.hidden_row_stride = H;
    p.num_tokens = T;
    p.top_k = k;
    p.hidden_size = H;
    p.row_map = by_token ? nullptr : routed.p2e.data();
    p.expanded_to_row = by_token ? routed.e2p.data() : nullptr;
    p.num_rows = T * k;
    p.out = out[c].data();
    p.out_dtype = fulgur::DType::kBF16;
    p.out_row_stride = H;
  }
  run_timed(st, cost, copies, [&](int c, cudaStream_t s) { return moe::gather(ps[c], s); });
}

void bench_combine(benchmark::State& st, Model m, int64_t T) {
  const int32_t k = m.policy.top_k;
  const int64_t H = m.hidden;
  const Cost cost = combine_cost(m, T);
  const int copies = rotation_copies(cost.bytes);
  Routed routed;
  FULGUR_BENCH_CHECK(st, make_routing(m, T, 400, routed, true));
  std::vector<Buf<__nv_bfloat16>> y(copies), out(copies);
  std::vector<moe::CombineParams> ps(copies);
  for (int c = 0; c < copies; ++c) {
    FULGUR_BENCH_CHECK(st, y[c].alloc(T * k * H));
    FULGUR_BENCH_CHECK(st, fill(y[c].data(), T * k * H, 410 + c, Dist::kNormal));
    FULGUR_BENCH_CHECK(st, out[c].alloc(T * H));
    moe::CombineParams& p = ps[c];
    p.expert_out = y[c].data();
    p.expert_out_dtype = fulgur::DType::kBF16;
    p.expert_out_row_stride = H;
    p.num_expert_rows = T * k;
    p.num_tokens = T;
    p.top_k = k;
    p.hidden_size = H;
    p.expanded_to_row = routed.e2p.data();
    p.topk_weights = routed.weights.data();
    p.weights_dtype = fulgur::DType::kF32;
    p.out = out[c].data();
    p.out_dtype = fulgur::DType::kBF16;
    p.out_row_stride = H;
  }
  run_timed(st, cost, copies, [&](int c, cudaStream_t s) { return moe::combine(ps[c], s); });
}

void register_all() {
  for (const Model& m : models()) {
    for (int64_t T : kTokens) {
      add(base_name("route", m, T, false), route_cost(m, T), [m, T](benchmark::State& s) { bench_route(s, m, T); });
      add(base_name("permute", m, T, false), permute_cost(m, T),
          [m, T](benchmark::State& s) { bench_permute(s, m, T, false); });
      add(base_name("align", m, T, false), align_cost(m, T),
          [m, T](benchmark::State& s) { bench_permute(s, m, T, true); });
      add(base_name("gather", m, T, true), gather_cost(m, T),
          [m, T](benchmark::State& s) { bench_gather(s, m, T, false); });
      add(base_name("gather_by_token", m, T, true), gather_cost(m, T),
          [m, T](benchmark::State& s) { bench_gather(s, m, T, true); });
      add(base_name("combine", m, T, true), combine_cost(m, T),
          [m, T](benchmark::State& s) { bench_combine(s, m, T); });
    }
  }
}

}  // namespace

FULGUR_BENCH_MAIN("moe", register_all)
