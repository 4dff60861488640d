// SPDX-License-Identifier: Apache-2.0
// fulgur::moe::route_permute (one launch for decode batches) against route() followed by
// permute() (themselves tested against the references): every output bitwise equal, for the
// presets, T from 0 to one full block (T*k = 4096) and one token more (the two-launch path), a
// grouped policy whose key buffers do not fit the fused kernel (two-launch path), the ids also
// checked against the reference router; workspace query; bad input, at the launch and at the
// workspace query (which validates everything but the pointers).
#include <functional>
#include <string>
#include <utility>

#include "moe_test.hpp"

namespace {

using namespace moe_test;

struct Out {
  cudaError_t err = cudaSuccess;
  std::vector<int32_t> ids, counts, e2p, p2e, sorted, tiles, post, masked, mcounts;
  std::vector<float> w;
  std::vector<int64_t> off;
  bool operator==(const Out& o) const {
    return ids == o.ids && counts == o.counts && e2p == o.e2p && p2e == o.p2e && sorted == o.sorted &&
           tiles == o.tiles && post == o.post && masked == o.masked && mcounts == o.mcounts && bitwise_equal(w, o.w) &&
           off == o.off;
  }
};

Out run(const fm::RoutePolicy& pol, const Tensor& logits, const std::vector<float>& bias, int64_t T, bool fused,
        bool* fused_ran = nullptr) {
  const int E = pol.num_experts, k = pol.top_k;
  const size_t N = static_cast<size_t>(T * k);
  auto d_logits = upload(logits);
  auto d_bias = upload(bias);
  auto d_ids = poisoned<int32_t>(N);
  auto d_w = poisoned<float>(N);
  auto d_counts = poisoned<int32_t>(E);
  auto d_off = poisoned<int64_t>(E + 1);
  auto d_e2p = poisoned<int32_t>(N), d_p2e = poisoned<int32_t>(N);
  auto d_sorted = poisoned<int32_t>(static_cast<size_t>(fm::tile_padded_capacity(T, k, E, 32)));
  auto d_tiles = poisoned<int32_t>(static_cast<size_t>(fm::tile_count_capacity(T, k, E, 32)));
  auto d_post = poisoned<int32_t>(1);
  auto d_masked = poisoned<int32_t>(static_cast<size_t>(E) * 4);
  auto d_mc = poisoned<int32_t>(E);
  fm::RouteParams r;
  r.policy = pol;
  r.logits = d_logits.data();
  r.logits_dtype = logits.dt;
  r.logits_row_stride = E;
  r.bias = pol.selection_bias ? d_bias.data() : nullptr;
  r.num_tokens = T;
  r.topk_ids = d_ids.data();
  r.topk_weights = d_w.data();
  r.expert_counts = d_counts.data();
  fm::PermuteParams p;
  p.topk_ids = d_ids.data();
  p.num_tokens = T;
  p.top_k = k;
  p.num_experts = E;
  p.expert_first_token_offset = d_off.data();
  p.expanded_to_permuted = d_e2p.data();
  p.permuted_to_expanded = d_p2e.data();
  p.tile_m = 32;
  p.sorted_token_ids = d_sorted.data();
  p.tile_expert_ids = d_tiles.data();
  p.num_tokens_post_padded = d_post.data();
  p.masked_capacity = 4;
  p.masked_expanded = d_masked.data();
  p.masked_counts = d_mc.data();
  Out o;
  size_t bytes = 0;
  if (fused) {
    if (fused_ran) *fused_ran = fm::detail::fused_route_permute_fits(r);
    o.err = fm::route_permute(nullptr, bytes, r, p, nullptr);
    REQUIRE(o.err == cudaSuccess);
    REQUIRE(bytes > 0);
    DeviceBuffer<unsigned char> ws(bytes);
    ws.fill_bytes(0xFF);
    o.err = fm::route_permute(ws.data(), bytes, r, p, nullptr);
  } else {
    o.err = fm::route(r, nullptr);
    REQUIRE(o.err == cudaSuccess);
    REQUIRE(fm::permute(nullptr, bytes, p, nullptr) == cudaSuccess);
    DeviceBuffer<unsigned char> ws(bytes);
    o.err = fm::permute(ws.data(), bytes, p, nullptr);
  }
  o.ids = download(d_ids), o.w = download(d_w), o.counts = download(d_counts), o.off = download(d_off);
  o.e2p = download(d_e2p), o.p2e = download(d_p2e), o.sorted = download(d_sorted), o.tiles = download(d_tiles);
  o.post = download(d_post), o.masked = download(d_masked), o.mcounts = download(d_mc);
  return o;
}

void check(const fm::RoutePolicy& pol, DType dt, int64_t T, bool expect_fused, const std::string& label) {
  fulgur_test::Rng rng("route_permute " + label + std::to_string(T));
  FULGUR_INFO_SEED(rng);
  INFO(label << " E=" << pol.num_experts << " k=" << pol.top_k << " T=" << T);
  const int E = pol.num_experts;
  Tensor logits(dt, static_cast<size_t>(T * E));
  std::vector<int> perm(E);
  for (int64_t t = 0; t < T; ++t) {
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng.gen);
    for (int e = 0; e < E; ++e) logits.set(t * E + e, (perm[e] - E / 2) / 32.0);
  }
  std::vector<float> bias(E);
  for (auto& b : bias) b = static_cast<float>(rng.normal(0, 0.05));
  bool fused_ran = false;
  const Out f = run(pol, logits, bias, T, true, &fused_ran);
  CHECK(fused_ran == expect_fused);
  const Out s = run(pol, logits, bias, T, false);
  REQUIRE(f.err == cudaSuccess);
  REQUIRE(s.err == cudaSuccess);
  CHECK(f == s);
  // The ids also agree with the reference router wherever its fp64 decisions are clear; with
  // these inputs (softmax on logits, or a fixed tie-free set) they are for the ungrouped presets.
  if (pol.n_group == 1 && !pol.selection_bias) {
    std::vector<int32_t> ids(static_cast<size_t>(T * pol.top_k));
    std::vector<float> w(ids.size());
    fm::RouteParams r;
    r.policy = pol;
    r.logits = logits.data();
    r.logits_dtype = dt;
    r.logits_row_stride = E;
    r.num_tokens = T;
    r.topk_ids = ids.data();
    r.topk_weights = w.data();
    REQUIRE(ref::moe_route(r).is_ok());
    CHECK(ids == f.ids);
  }
}

TEST_CASE("route_permute: one launch, the same bits as route + permute", "[moe][route_permute]") {
  namespace pr = fm::presets;
  for (int64_t T : kLight ? std::vector<int64_t>{5} : std::vector<int64_t>{0, 1, 5, 64}) {
    check(pr::minimax_text_01(), DType::kBF16, T, true, "minimax");
    check(pr::mixtral(), DType::kF32, T, true, "mixtral");
    check(pr::deepseek_v3(), DType::kF32, T, true, "deepseek");
    check(pr::kimi_k2(), DType::kF16, T, true, "kimi");
    check(pr::llama4(), DType::kBF16, T, true, "llama4");
  }
  // Exactly one block of rows (T*k = 4096), and one token more (two launches).
  check(pr::qwen3_moe(), DType::kBF16, sized(512, 64), true, "qwen3 full");
  if (!kLight) check(pr::qwen3_moe(), DType::kBF16, 513, false, "qwen3 full + 1");
  // Grouped E = 1024: 8 tokens x 1024 keys do not fit the permutation's scratch: two launches.
  fm::RoutePolicy big = pr::deepseek_v3();
  big.num_experts = 1024;
  check(big, DType::kF32, 3, false, "grouped E=1024");
  // Grouped with sub-warp routing (E = 8: 32 tokens per step).
  fm::RoutePolicy small = pr::mixtral();
  small.n_group = 2;
  small.topk_group = 1;
  small.score_func = fm::ScoreFunc::kSigmoid;
  check(small, DType::kF32, 40, true, "grouped E=8");
}

/// A valid two-token Mixtral call (E = 8, k = 2) into poisoned device buffers: the bad-input tests
/// break one thing in r or p and check that nothing was written.
struct SmallCall {
  DeviceBuffer<float> d_logits = poisoned<float>(16);
  DeviceBuffer<int32_t> d_ids = poisoned<int32_t>(4);
  DeviceBuffer<float> d_w = poisoned<float>(4);
  DeviceBuffer<int64_t> d_off = poisoned<int64_t>(9);
  fm::RouteParams r;
  fm::PermuteParams p;
  SmallCall() {
    r.policy = fm::presets::mixtral();
    r.logits = d_logits.data();
    r.logits_row_stride = 8;
    r.num_tokens = 2;
    r.topk_ids = d_ids.data();
    r.topk_weights = d_w.data();
    p.topk_ids = d_ids.data();
    p.num_tokens = 2;
    p.top_k = 2;
    p.num_experts = 8;
    p.expert_first_token_offset = d_off.data();
  }
};

TEST_CASE("route_permute: bad input", "[moe][route_permute]") {
  SmallCall call;
  auto& d_ids = call.d_ids;
  auto& d_w = call.d_w;
  auto& d_off = call.d_off;
  auto d_other = poisoned<int32_t>(4);
  const fm::RouteParams& r = call.r;
  const fm::PermuteParams& p = call.p;
  struct Bad {
    const char* what;
    std::function<void(fm::RouteParams&, fm::PermuteParams&)> edit;
  };
  const std::vector<Bad> cases = {
      {"other ids", [&](fm::RouteParams&, fm::PermuteParams& q) { q.topk_ids = d_other.data(); }},
      {"other T", [](fm::RouteParams&, fm::PermuteParams& q) { q.num_tokens = 1; }},
      {"other k", [](fm::RouteParams&, fm::PermuteParams& q) { q.top_k = 1; }},
      {"other E", [](fm::RouteParams&, fm::PermuteParams& q) { q.num_experts = 16; }},
      {"null weights", [](fm::RouteParams& q, fm::PermuteParams&) { q.topk_weights = nullptr; }},
      {"null offsets", [](fm::RouteParams&, fm::PermuteParams& q) { q.expert_first_token_offset = nullptr; }},
  };
  for (const Bad& b : cases) {
    INFO(b.what);
    fm::RouteParams rr = r;
    fm::PermuteParams pp = p;
    b.edit(rr, pp);
    size_t bytes = 1024;
    DeviceBuffer<unsigned char> ws(bytes);
    CHECK(fm::route_permute(ws.data(), bytes, rr, pp, nullptr) == cudaErrorInvalidValue);
  }
  size_t bytes = 0;
  REQUIRE(fm::route_permute(nullptr, bytes, r, p, nullptr) == cudaSuccess);
  DeviceBuffer<unsigned char> ws(bytes);
  size_t less = bytes - 1;
  CHECK(fm::route_permute(ws.data(), less, r, p, nullptr) == cudaErrorInvalidValue);
  DeviceBuffer<unsigned char> big(bytes + 16);
  CHECK(fm::route_permute(big.data() + 4, bytes, r, p, nullptr) == cudaErrorInvalidValue);  // not 16-byte aligned
  for (int32_t v : download(d_ids)) CHECK(v == -1);
  for (int64_t v : download(d_off)) CHECK(v == -1);
  for (float v : download(d_w)) CHECK(std::isnan(v));
}

TEST_CASE("route_permute: the workspace query rejects what the launch rejects, pointers aside",
          "[moe][route_permute]") {
  SmallCall call;
  const auto& d_ids = call.d_ids;
  const auto& d_w = call.d_w;
  const auto& d_off = call.d_off;
  const fm::RouteParams& r = call.r;
  const fm::PermuteParams& p = call.p;
  // The query reads no pointer: with none set it still answers (CUB style: size, then allocate).
  auto without_pointers = [](fm::RouteParams rr, fm::PermuteParams pp) {
    rr.logits = nullptr, rr.topk_ids = nullptr, rr.topk_weights = nullptr, rr.bias = nullptr;
    pp.topk_ids = nullptr, pp.expert_first_token_offset = nullptr;
    return std::make_pair(rr, pp);
  };
  {
    size_t with = 0, without = 0;
    REQUIRE(fm::route_permute(nullptr, with, r, p, nullptr) == cudaSuccess);
    const auto np = without_pointers(r, p);
    REQUIRE(fm::route_permute(nullptr, without, np.first, np.second, nullptr) == cudaSuccess);
    CHECK(with > 0);
    CHECK(with == without);
  }
  struct Bad {
    const char* what;
    cudaError_t want;
    std::function<void(fm::RouteParams&, fm::PermuteParams&)> edit;
  };
  const cudaError_t kInvalid = cudaErrorInvalidValue, kNotSupported = cudaErrorNotSupported;
  const std::vector<Bad> cases = {
      {"k > E", kInvalid, [](fm::RouteParams& q, fm::PermuteParams& pp) { q.policy.top_k = pp.top_k = 9; }},
      {"k > E, two launches", kInvalid,
       [](fm::RouteParams& q, fm::PermuteParams& pp) {
         q.policy.top_k = pp.top_k = 9;
         q.num_tokens = pp.num_tokens = 1000;  // T k > 4096: not the fused path
       }},
      {"k = 0", kInvalid, [](fm::RouteParams& q, fm::PermuteParams& pp) { q.policy.top_k = pp.top_k = 0; }},
      {"topk_group > n_group", kInvalid,
       [](fm::RouteParams& q, fm::PermuteParams&) {
         q.policy.n_group = 2;
         q.policy.topk_group = 3;
       }},
      {"n_group does not divide E", kInvalid, [](fm::RouteParams& q, fm::PermuteParams&) { q.policy.n_group = 3; }},
      {"kept groups hold fewer than k experts", kInvalid,
       [](fm::RouteParams& q, fm::PermuteParams&) {
         q.policy.n_group = 8;
         q.policy.topk_group = 1;
       }},
      {"unknown score_func", kInvalid,
       [](fm::RouteParams& q, fm::PermuteParams&) { q.policy.score_func = static_cast<fm::ScoreFunc>(7); }},
      {"negative renorm_eps", kInvalid, [](fm::RouteParams& q, fm::PermuteParams&) { q.policy.renorm_eps = -1.0f; }},
      {"NaN scaling_factor", kInvalid,
       [](fm::RouteParams& q, fm::PermuteParams&) { q.policy.scaling_factor = std::nanf(""); }},
      {"T < 0", kInvalid, [](fm::RouteParams& q, fm::PermuteParams& pp) { q.num_tokens = pp.num_tokens = -1; }},
      {"logits stride below E", kInvalid, [](fm::RouteParams& q, fm::PermuteParams&) { q.logits_row_stride = 7; }},
      {"unknown logits dtype", kInvalid,
       [](fm::RouteParams& q, fm::PermuteParams&) { q.logits_dtype = static_cast<DType>(99); }},
      {"f64 logits (references only)", kNotSupported,
       [](fm::RouteParams& q, fm::PermuteParams&) { q.logits_dtype = DType::kF64; }},
      {"E above the router's 1024", kNotSupported,
       [](fm::RouteParams& q, fm::PermuteParams& pp) {
         q.policy.num_experts = pp.num_experts = 2048;
         q.logits_row_stride = 2048;
       }},
      {"permute's k differs", kInvalid, [](fm::RouteParams&, fm::PermuteParams& pp) { pp.top_k = 1; }},
      {"permute's ranks do not divide E", kInvalid, [](fm::RouteParams&, fm::PermuteParams& pp) { pp.num_ranks = 3; }},
  };
  for (const Bad& b : cases) {
    INFO(b.what);
    fm::RouteParams rr = r;
    fm::PermuteParams pp = p;
    b.edit(rr, pp);
    const fulgur::Status verdict = fm::can_implement(rr, pp);  // what the launch returns
    CHECK(verdict.code() == b.want);
    size_t bytes = 12345;
    CHECK(fm::route_permute(nullptr, bytes, rr, pp, nullptr) == b.want);
    CHECK(bytes == 12345);  // untouched
    const auto np = without_pointers(rr, pp);
    CHECK(fm::route_permute(nullptr, bytes, np.first, np.second, nullptr) == b.want);
    CHECK(bytes == 12345);
    if (!verdict.ok()) {  // never launch parameters the launcher would accept: the buffers are small
      size_t ws_bytes = 1024;
      DeviceBuffer<unsigned char> ws(ws_bytes);
      CHECK(fm::route_permute(ws.data(), ws_bytes, rr, pp, nullptr) == b.want);
    }
  }
  for (int32_t v : download(d_ids)) CHECK(v == -1);
  for (int64_t v : download(d_off)) CHECK(v == -1);
  for (float v : download(d_w)) CHECK(std::isnan(v));
}

}  // namespace
