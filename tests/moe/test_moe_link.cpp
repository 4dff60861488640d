// SPDX-License-Identifier: Apache-2.0
// Two translation units (this one and moe_link_other.cpp) include fulgur/moe.cuh and launch every
// MoE kernel: the program must link (every kernel defined in a header is a template and every
// device helper inline, so the copies merge) and both units must compute the same bits, which
// also agree with the references: ids exactly (tie-free logits), gather exactly, combine within
// one bf16 ulp (fp32 accumulation of two products, one rounding to bf16: at most half an ulp
// plus a few fp32 ulps).
#include "moe_link.hpp"

using namespace moe_link;

TEST_CASE("moe: two translation units that launch the kernels link and agree", "[moe]") {
  fulgur_test::Rng rng("moe link");
  FULGUR_INFO_SEED(rng);
  const PipelineIn in(rng);
  const PipelineOut a = run_pipeline<0>(in);
  const PipelineOut b = run_pipeline_in_other_unit(in);
  REQUIRE(a.err == cudaSuccess);
  REQUIRE(b.err == cudaSuccess);
  CHECK(a.ids == b.ids);
  CHECK(bitwise_equal(a.w, b.w));
  CHECK(a.off == b.off);
  CHECK(a.e2p == b.e2p);
  CHECK(a.p2e == b.p2e);
  CHECK(bitwise_equal(a.gathered, b.gathered));
  CHECK(bitwise_equal(a.combined, b.combined));
  // The two permutation paths and the fused route + permute give the same bits.
  CHECK(a.off_multi == a.off);
  CHECK(a.e2p_multi == a.e2p);
  CHECK(a.p2e_multi == a.p2e);
  CHECK(a.ids_fused == a.ids);
  CHECK(a.e2p_fused == a.e2p);

  const int E = in.policy.num_experts, k = in.policy.top_k;
  const int64_t T = in.T, H = in.H, N = T * k;
  // Routing ids against the fp64 reference router.
  std::vector<int32_t> ids(static_cast<size_t>(N));
  std::vector<float> w(ids.size());
  fm::RouteParams r;
  r.policy = in.policy;
  r.logits = in.logits.data();
  r.logits_dtype = in.logits.dt;
  r.logits_row_stride = E;
  r.num_tokens = T;
  r.topk_ids = ids.data();
  r.topk_weights = w.data();
  REQUIRE(ref::moe_route(r).is_ok());
  CHECK(a.ids == ids);
  // Every permuted row holds its token's hidden row, bit for bit.
  for (int64_t q = 0; q < N; ++q) {
    const int64_t t = a.p2e[static_cast<size_t>(q)] / k;
    REQUIRE(t >= 0);
    REQUIRE(t < T);
    for (int64_t h = 0; h < H; ++h)
      REQUIRE(a.gathered.get(static_cast<size_t>(q * H + h)) == in.hidden.get(static_cast<size_t>(t * H + h)));
  }
  // Combine against the reference on the kernel's own routing (weights and row map).
  Tensor expect(DType::kF64, static_cast<size_t>(T * H));
  fm::CombineParams c;
  c.expert_out = in.expert_out.data();
  c.expert_out_dtype = in.expert_out.dt;
  c.expert_out_row_stride = H;
  c.num_expert_rows = N;
  c.num_tokens = T;
  c.top_k = k;
  c.hidden_size = H;
  c.expanded_to_row = a.e2p.data();
  c.topk_weights = a.w.data();
  c.out = expect.data();
  c.out_dtype = DType::kF64;
  c.out_row_stride = H;
  REQUIRE(ref::moe_combine(c).is_ok());
  int64_t bad = 0;
  for (int64_t i = 0; i < T * H; ++i) {
    const double want = expect.get(static_cast<size_t>(i));
    if (std::fabs(a.combined.get(static_cast<size_t>(i)) - want) > ulp(DType::kBF16, want)) ++bad;
  }
  CHECK(bad == 0);
}
