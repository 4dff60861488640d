// SPDX-License-Identifier: Apache-2.0
// Shared by the two translation units of test_moe_link: a route -> permute -> gather -> combine
// pipeline (and the fused route_permute) on one generated batch, returning every output's bytes.
// run_pipeline is a template on the calling unit's number, so each unit compiles and launches the
// kernels from its own copy of the code (the kernels themselves must merge at link time).
#pragma once

#include <cstdint>
#include <vector>

#include "moe_test.hpp"

namespace moe_link {

using namespace moe_test;

struct PipelineOut {
  cudaError_t err = cudaSuccess;
  std::vector<int32_t> ids, e2p, p2e, e2p_multi, p2e_multi, ids_fused, e2p_fused;
  std::vector<float> w;
  std::vector<int64_t> off, off_multi;
  Tensor gathered, combined;
};

/// E = 32, k = 2 (MiniMax-Text-01's policy), T tokens of hidden size H in bf16, tie-free logits
/// (a random permutation of the experts per token, scaled by 1/32: exact in bf16).
struct PipelineIn {
  fm::RoutePolicy policy = fm::presets::minimax_text_01();
  int64_t T = 37;
  int64_t H = 96;
  Tensor logits{DType::kBF16, 0};
  Tensor hidden{DType::kBF16, 0};
  Tensor expert_out{DType::kBF16, 0};  // stands in for the experts' outputs, [T*k, H]
  explicit PipelineIn(fulgur_test::Rng& rng) {
    const int E = policy.num_experts;
    logits = Tensor(DType::kBF16, static_cast<size_t>(T * E));
    std::vector<int> perm(E);
    for (int64_t t = 0; t < T; ++t) {
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng.gen);
      for (int e = 0; e < E; ++e) logits.set(t * E + e, (perm[e] - E / 2) / 32.0);
    }
    hidden = Tensor(DType::kBF16, static_cast<size_t>(T * H));
    for (size_t i = 0; i < hidden.n; ++i) hidden.set(static_cast<int64_t>(i), rng.normal(0, 1));
    const int64_t rows = T * policy.top_k;
    expert_out = Tensor(DType::kBF16, static_cast<size_t>(rows * H));
    for (size_t i = 0; i < expert_out.n; ++i) expert_out.set(static_cast<int64_t>(i), rng.normal(0, 1));
  }
};

template <int kUnit>
PipelineOut run_pipeline(const PipelineIn& in) {
  const int E = in.policy.num_experts, k = in.policy.top_k;
  const int64_t T = in.T, H = in.H, N = T * k;
  PipelineOut o;
  auto d_logits = upload(in.logits);
  auto d_ids = poisoned<int32_t>(N), d_ids_fused = poisoned<int32_t>(N);
  auto d_w = poisoned<float>(N), d_w_fused = poisoned<float>(N);
  auto d_off = poisoned<int64_t>(E + 1), d_off_multi = poisoned<int64_t>(E + 1), d_off_fused = poisoned<int64_t>(E + 1);
  auto d_e2p = poisoned<int32_t>(N), d_p2e = poisoned<int32_t>(N);
  auto d_e2p_multi = poisoned<int32_t>(N), d_p2e_multi = poisoned<int32_t>(N);
  auto d_e2p_fused = poisoned<int32_t>(N), d_p2e_fused = poisoned<int32_t>(N);

  fm::RouteParams r;
  r.policy = in.policy;
  r.logits = d_logits.data();
  r.logits_dtype = in.logits.dt;
  r.logits_row_stride = E;
  r.num_tokens = T;
  r.topk_ids = d_ids.data();
  r.topk_weights = d_w.data();
  fm::PermuteParams p;
  p.topk_ids = d_ids.data();
  p.num_tokens = T;
  p.top_k = k;
  p.num_experts = E;
  p.expert_first_token_offset = d_off.data();
  p.expanded_to_permuted = d_e2p.data();
  p.permuted_to_expanded = d_p2e.data();

  if ((o.err = fm::route(r, nullptr)) != cudaSuccess) return o;
  // Both permutation paths: the single-block kernel and the three multi-block kernels.
  const fm::PermutePath paths[2] = {fm::PermutePath::kSingleBlock, fm::PermutePath::kMultiBlock};
  for (const fm::PermutePath path : paths) {
    fm::PermuteParams q = p;
    if (path == fm::PermutePath::kMultiBlock) {
      q.expert_first_token_offset = d_off_multi.data();
      q.expanded_to_permuted = d_e2p_multi.data();
      q.permuted_to_expanded = d_p2e_multi.data();
    }
    size_t bytes = 0;
    if ((o.err = fm::permute(nullptr, bytes, q, nullptr, path)) != cudaSuccess) return o;
    DeviceBuffer<unsigned char> ws(bytes > 0 ? bytes : 1);
    if ((o.err = fm::permute(ws.data(), bytes, q, nullptr, path)) != cudaSuccess) return o;
  }

  // Dispatch: hidden rows in permuted order, then the combine of the stand-in expert outputs.
  auto d_hidden = upload(in.hidden);
  auto d_gathered = upload(Tensor(DType::kBF16, static_cast<size_t>(N * H)));
  d_gathered.fill_bytes(0xFF);
  fm::GatherParams g;
  g.hidden = d_hidden.data();
  g.hidden_dtype = DType::kBF16;
  g.hidden_row_stride = H;
  g.num_tokens = T;
  g.top_k = k;
  g.hidden_size = H;
  g.row_map = d_p2e.data();
  g.num_rows = N;
  g.out = d_gathered.data();
  g.out_dtype = DType::kBF16;
  g.out_row_stride = H;
  if ((o.err = fm::gather(g, nullptr)) != cudaSuccess) return o;

  auto d_y = upload(in.expert_out);
  auto d_combined = upload(Tensor(DType::kBF16, static_cast<size_t>(T * H)));
  d_combined.fill_bytes(0xFF);
  fm::CombineParams c;
  c.expert_out = d_y.data();
  c.expert_out_dtype = DType::kBF16;
  c.expert_out_row_stride = H;
  c.num_expert_rows = N;
  c.num_tokens = T;
  c.top_k = k;
  c.hidden_size = H;
  c.expanded_to_row = d_e2p.data();
  c.topk_weights = d_w.data();
  c.out = d_combined.data();
  c.out_dtype = DType::kBF16;
  c.out_row_stride = H;
  if ((o.err = fm::combine(c, nullptr)) != cudaSuccess) return o;

  // The fused route + permute of decode batches.
  fm::RouteParams rf = r;
  rf.topk_ids = d_ids_fused.data();
  rf.topk_weights = d_w_fused.data();
  fm::PermuteParams pf = p;
  pf.topk_ids = d_ids_fused.data();
  pf.expert_first_token_offset = d_off_fused.data();
  pf.expanded_to_permuted = d_e2p_fused.data();
  pf.permuted_to_expanded = d_p2e_fused.data();
  size_t bytes = 0;
  if ((o.err = fm::route_permute(nullptr, bytes, rf, pf, nullptr)) != cudaSuccess) return o;
  DeviceBuffer<unsigned char> ws(bytes > 0 ? bytes : 1);
  if ((o.err = fm::route_permute(ws.data(), bytes, rf, pf, nullptr)) != cudaSuccess) return o;

  o.ids = download(d_ids), o.w = download(d_w), o.off = download(d_off);
  o.e2p = download(d_e2p), o.p2e = download(d_p2e);
  o.off_multi = download(d_off_multi), o.e2p_multi = download(d_e2p_multi), o.p2e_multi = download(d_p2e_multi);
  o.ids_fused = download(d_ids_fused), o.e2p_fused = download(d_e2p_fused);
  o.gathered = download(d_gathered, DType::kBF16, static_cast<size_t>(N * H));
  o.combined = download(d_combined, DType::kBF16, static_cast<size_t>(T * H));
  return o;
}

PipelineOut run_pipeline_in_other_unit(const PipelineIn& in);

}  // namespace moe_link
