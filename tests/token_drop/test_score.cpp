// SPDX-License-Identifier: Apache-2.0
// fulgur::token_drop::score against the fp64 reference (reference::token_drop_score) on LLaVA-1.5,
// LLaVA-NeXT and Qwen2-VL-like shapes, several query rows, strided inputs, every dtype, the fp16
// compatibility mode, image placement edge cases; determinism and batch invariance bit for bit;
// bad input writes nothing.
#include <cmath>
#include <cstdint>
#include <vector>

#include "token_drop_test.hpp"

using namespace td_test;

namespace {

/// The same score computed plainly in fp32 on the host (float dot, float softmax row, float
/// means): a same-precision reference, whose error against fp64 sets the RMSE tolerance (twice
/// it, the conventions' rule).
template <typename T>
std::vector<double> plain_fp32_scores(const Batch& bt, const QK<T>& qk, const Queries& qs, float scale_in) {
  const float scale = scale_in == 0.0f ? static_cast<float>(1.0 / std::sqrt(static_cast<double>(qk.d))) : scale_in;
  std::vector<double> out;
  for (int64_t b = 0; b < bt.batch(); ++b) {
    const int64_t s0 = bt.cu_spans[b], s1 = bt.cu_spans[b + 1];
    if (s0 == s1) continue;
    const int64_t q0 = qs.cu.empty() ? b : qs.cu[b], q1 = qs.cu.empty() ? b + 1 : qs.cu[b + 1];
    const int64_t row0 = bt.cu_seqlens[b];
    std::vector<float> acc;
    for (int64_t s = s0; s < s1; ++s) acc.resize(acc.size() + static_cast<size_t>(bt.length[s]), 0.0f);
    for (int64_t qi = q0; qi < q1; ++qi) {
      const int64_t pos = qs.pos.empty() ? bt.seqlen(b) - 1 : qs.pos[qi];
      std::vector<float> head_sum(acc.size(), 0.0f);
      for (int h = 0; h < qk.H; ++h) {
        const int g = h / (qk.H / qk.Hkv);
        std::vector<float> logit(static_cast<size_t>(pos + 1));
        float m = -INFINITY;
        for (int64_t j = 0; j <= pos; ++j) {
          float dot = 0.0f;
          for (int i = 0; i < qk.d; ++i)
            dot += static_cast<float>(qk.qv(qi, h, i)) * static_cast<float>(qk.kv(row0 + j, g, i));
          logit[j] = dot * scale;
          m = std::max(m, logit[j]);
        }
        float sum = 0.0f;
        for (int64_t j = 0; j <= pos; ++j) sum += std::exp(logit[j] - m);
        size_t t = 0;
        for (int64_t s = s0; s < s1; ++s)
          for (int64_t j = bt.start[s]; j < bt.start[s] + bt.length[s]; ++j)
            head_sum[t++] += std::exp(logit[j] - m) / sum;
      }
      for (size_t t = 0; t < acc.size(); ++t) acc[t] += head_sum[t] / static_cast<float>(qk.H);
    }
    for (float a : acc) out.push_back(a / static_cast<float>(q1 - q0));
  }
  return out;
}

/// Kernel vs fp64 reference: every score within the derived worst-case relative bound, and the
/// relative RMSE at most twice that of the plain fp32 host computation, plus 4u: on a GPU, expf
/// and logf are accurate to 2 and 1 ulp (CUDA Programming Guide, single-precision functions)
/// where the host's are correctly rounded or nearly so, up to 3u more per probability.
template <typename T>
void check_against_reference(const Batch& bt, const QK<T>& qk, const Queries& qs, const std::vector<float>& got,
                             float scale = 0.0f) {
  const std::vector<float> ref = reference_scores(bt, qk, qs, scale);
  REQUIRE(got.size() == ref.size());
  int64_t max_keys = 0;
  for (int64_t b = 0; b < bt.batch(); ++b) max_keys = std::max(max_keys, bt.seqlen(b));
  const double s = scale == 0.0f ? 1.0 / std::sqrt(static_cast<double>(qk.d)) : scale;
  const double bound = score_error_bound(qk, s, max_keys);
  std::vector<double> g(got.begin(), got.end()), r(ref.begin(), ref.end());
  double worst = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    REQUIRE(std::isfinite(got[i]));
    worst = std::max(worst, std::fabs(g[i] - r[i]) / std::fabs(r[i]));
  }
  const double rmse = fulgur_test::rel_rmse(g, r);
  const double plain = fulgur_test::rel_rmse(plain_fp32_scores(bt, qk, qs, scale), r);
  INFO("worst relative error " << worst << " (bound " << bound << "), rel RMSE " << rmse << " (plain fp32 " << plain
                               << ")");
  CHECK(worst <= bound);
  CHECK(rmse <= 2.0 * plain + 4.0 * std::ldexp(1.0, -24));
}

}  // namespace

TEST_CASE("token_drop score kernel: LLaVA-1.5 shapes, batch of 2, bf16", "[token_drop][score]") {
  fulgur_test::Rng rng("token_drop score kernel llava15");
  FULGUR_INFO_SEED(rng);
  // LLaVA-1.5-7B: 32 heads, d = 128, 576 image tokens after a 35-token system prompt; two
  // sequences with different instruction lengths. Thread backend: a 4-head, d = 32 miniature.
  const int H = kSlowBackend ? 4 : 32, d = kSlowBackend ? 32 : 128;
  const int64_t N = kSlowBackend ? 60 : 576;
  const Batch bt({{35 + N + 29, {{35, N}}}, {35 + N + 64, {{35, N}}}});
  QK<__nv_bfloat16> qk(rng, H, H, d, 2, bt.rows());
  const Queries qs;
  DeviceBuffer<float> scores = poisoned<float>(static_cast<size_t>(bt.image_tokens));
  REQUIRE(run_score(score_params(bt, qk, qs, true), scores) == cudaSuccess);
  const std::vector<float> got = read(scores);
  check_against_reference(bt, qk, qs, got);

  // Run to run: bitwise the same.
  DeviceBuffer<float> again = poisoned<float>(static_cast<size_t>(bt.image_tokens));
  REQUIRE(run_score(score_params(bt, qk, qs, true), again) == cudaSuccess);
  CHECK(bytes_equal(read(again), got));

  // Batch invariance: sequence 1 alone (its own rows and keys) scores bitwise the same.
  const Batch one({{35 + N + 64, {{35, N}}}});
  const QK<__nv_bfloat16> qk1(qk, 1, 1, bt.cu_seqlens[1], one.rows());
  DeviceBuffer<float> alone = poisoned<float>(static_cast<size_t>(N));
  REQUIRE(run_score(score_params(one, qk1, qs, true), alone) == cudaSuccess);
  const std::vector<float> a = read(alone);
  CHECK(std::memcmp(a.data(), got.data() + N, static_cast<size_t>(N) * sizeof(float)) == 0);

  // cu_queries = [0, 1, 2] and explicit last positions: the same path, the same bits.
  const Queries explicit_q({0, 1, 2}, {bt.seqlen(0) - 1, bt.seqlen(1) - 1});
  DeviceBuffer<float> ex = poisoned<float>(static_cast<size_t>(bt.image_tokens));
  REQUIRE(run_score(score_params(bt, qk, explicit_q, true), ex) == cudaSuccess);
  CHECK(bytes_equal(read(ex), got));
}

TEST_CASE("token_drop score kernel: GQA (Qwen2-VL heads), two images, no-image sequence, fp16", "[token_drop][score]") {
  fulgur_test::Rng rng("token_drop score kernel gqa");
  FULGUR_INFO_SEED(rng);
  // Qwen2-VL-7B: 28 query heads on 4 kv heads (7 per group: one chunk of 4 and one of 3).
  const int H = kSlowBackend ? 7 : 28, Hkv = kSlowBackend ? 1 : 4, d = kSlowBackend ? 32 : 128;
  // A two-image sequence, a text-only one (passes through: no scores), an image at position 0
  // with the query right after it.
  const Batch bt({{150, {{10, 50}, {70, 40}}}, {40, {}}, {65, {{0, 64}}}});
  QK<__half> qk(rng, H, Hkv, d, 3, bt.rows());
  const Queries qs;
  DeviceBuffer<float> scores = poisoned<float>(static_cast<size_t>(bt.image_tokens));
  REQUIRE(run_score(score_params(bt, qk, qs, true), scores) == cudaSuccess);
  check_against_reference(bt, qk, qs, read(scores));
}

TEST_CASE("token_drop score kernel: several query rows, strided fp32 inputs, custom scale", "[token_drop][score]") {
  fulgur_test::Rng rng("token_drop score kernel multi query");
  FULGUR_INFO_SEED(rng);
  const int H = kSlowBackend ? 4 : 8, Hkv = 2, d = 40;  // d = 40: 10 vectors of 4 floats, 16 lanes
  // Training: queries just before each answer span, the last at the end; sequence 1's image
  // ends right before its only query.
  const Batch bt({{300, {{20, 100}}}, {131, {{3, 127}}}});
  const Queries qs({0, 3, 4}, {130, 200, 299, 130});
  for (int64_t pad : {0, 3}) {  // pad 3: strides not multiples of 4, the scalar-load path
    DYNAMIC_SECTION("padding " << pad) {
      QK<float> qk(rng, H, Hkv, d, 4, bt.rows(), pad);
      DeviceBuffer<float> scores = poisoned<float>(static_cast<size_t>(bt.image_tokens));
      REQUIRE(run_score(score_params(bt, qk, qs, true, 0.07f), scores) == cudaSuccess);
      check_against_reference(bt, qk, qs, read(scores), 0.07f);
    }
  }
}

TEST_CASE("token_drop score kernel: fp16 compatibility mode", "[token_drop][score]") {
  fulgur_test::Rng rng("token_drop score kernel fp16 compat");
  FULGUR_INFO_SEED(rng);
  const int H = kSlowBackend ? 4 : 16, d = 64;
  const Batch bt({{200, {{30, 150}}}});
  QK<__nv_bfloat16> qk(rng, H, H, d, 1, bt.rows());
  const Queries qs;
  DeviceBuffer<float> scores = poisoned<float>(static_cast<size_t>(bt.image_tokens));
  REQUIRE(run_score(score_params(bt, qk, qs, true, 0.0f, true), scores) == cudaSuccess);
  const std::vector<float> got = read(scores);
  const std::vector<float> ref = reference_scores(bt, qk, qs, 0.0f, true);
  // Every output is an fp16 value; against the reference it may differ by one fp16 step where the
  // fp32 sum before a rounding lands on the other side of a rounding boundary than the fp64 one
  // (the pre-rounding difference is ~1e-5 relative, so at most one step, and rarely).
  int64_t equal = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const float r = ref[i];
    CHECK(fulgur::to_double(__float2half_rn(got[i])) == static_cast<double>(got[i]));
    const double step = std::ldexp(1.0, std::ilogb(r) - 10);  // fp16 spacing at r (normal range)
    CHECK(std::fabs(got[i] - r) <= step);
    equal += got[i] == r;
  }
  INFO(equal << " of " << got.size() << " equal to the reference");
  CHECK(equal >= static_cast<int64_t>(got.size() * 9 / 10));
}

TEST_CASE("token_drop score kernel: LLaVA-NeXT, 2,880 image tokens", "[token_drop][score]") {
  if (kSlowBackend) return;  // the shape only; the code paths are those of the tests above
  fulgur_test::Rng rng("token_drop score kernel llava next");
  FULGUR_INFO_SEED(rng);
  const Batch bt({{35 + 2880 + 40, {{35, 2880}}}});
  QK<__nv_bfloat16> qk(rng, 32, 32, 128, 1, bt.rows());
  const Queries qs;
  DeviceBuffer<float> scores = poisoned<float>(2880);
  REQUIRE(run_score(score_params(bt, qk, qs, true), scores) == cudaSuccess);
  const std::vector<float> got = read(scores);
  check_against_reference(bt, qk, qs, got);
}

TEST_CASE("token_drop score kernel: bad input is rejected and writes nothing", "[token_drop][score]") {
  fulgur_test::Rng rng("token_drop score kernel bad input");
  FULGUR_INFO_SEED(rng);
  Batch bt({{40, {{5, 20}}}, {30, {{2, 10}}}});
  QK<__nv_bfloat16> qk(rng, 4, 2, 32, 2, bt.rows());
  const Queries qs;
  auto expect_untouched = [&](const ScoreParams& p, cudaError_t want) {
    DeviceBuffer<float> scores = poisoned<float>(static_cast<size_t>(bt.image_tokens));
    CHECK(run_score(p, scores) == want);
    for (float x : read(scores)) CHECK(std::isnan(x));
  };
  SECTION("host-visible arguments: the launcher's error") {
    ScoreParams p = score_params(bt, qk, qs, true);
    p.num_kv_heads = 3;  // does not divide 4
    expect_untouched(p, cudaErrorInvalidValue);
    p = score_params(bt, qk, qs, true);
    p.softmax_scale = -1.0f;
    expect_untouched(p, cudaErrorInvalidValue);
    p = score_params(bt, qk, qs, true);
    p.k = nullptr;
    expect_untouched(p, cudaErrorInvalidValue);
    p = score_params(bt, qk, qs, true);
    p.dtype = DType::kF64;
    expect_untouched(p, cudaErrorNotSupported);
    float dummy = 0.0f;
    p.scores = &dummy;  // run_score fills it on a copy
    CHECK(td::can_implement(p).code() == cudaErrorNotSupported);
    p = score_params(bt, qk, qs, true);
    p.layout.num_image_tokens = 29;  // not the sum of the span lengths (device check)
    expect_untouched(p, cudaSuccess);
  }
  SECTION("a span outside its sequence: validate() says why, the kernels write nothing") {
    bt.length[1] = 29;  // 2 + 29 > 30
    bt.image_tokens = 49;
    bt.upload();
    CHECK(td::validate(score_params(bt, qk, qs, false)).code() == cudaErrorInvalidValue);
    expect_untouched(score_params(bt, qk, qs, true), cudaSuccess);
  }
  SECTION("a query before the end of its image") {
    const Queries early({}, {39, 10});  // sequence 1's image ends at 12
    CHECK(td::validate(score_params(bt, qk, early, false)).code() == cudaErrorInvalidValue);
    expect_untouched(score_params(bt, qk, early, true), cudaSuccess);
  }
  SECTION("a query outside its sequence, a sequence with an image and no query row") {
    const Queries outside({}, {39, 30});
    expect_untouched(score_params(bt, qk, outside, true), cudaSuccess);
    const Queries none({0, 2, 2}, {39, 38});
    ScoreParams p = score_params(bt, qk, none, true);
    CHECK(td::validate(score_params(bt, qk, none, false)).code() == cudaErrorInvalidValue);
    expect_untouched(p, cudaSuccess);
  }
  SECTION("workspace: size query, too small, misaligned") {
    ScoreParams p = score_params(bt, qk, qs, true);
    DeviceBuffer<float> scores = poisoned<float>(static_cast<size_t>(bt.image_tokens));
    p.scores = scores.data();
    size_t bytes = 0;
    REQUIRE(td::score(nullptr, bytes, p, nullptr) == cudaSuccess);
    CHECK(bytes >= static_cast<size_t>(2 * 4 * 32 * 8));
    DeviceBuffer<unsigned char> ws(bytes + 16);
    size_t small = bytes - 1;
    CHECK(td::score(ws.data(), small, p, nullptr) == cudaErrorInvalidValue);
    CHECK(td::score(ws.data() + 4, bytes, p, nullptr) == cudaErrorInvalidValue);
    for (float x : read(scores)) CHECK(std::isnan(x));
  }
}

TEST_CASE("token_drop score: row parts and launch-1 blocks per row", "[token_drop][score]") {
  namespace d = td::detail;
  // Parts are at most 32, at least 64 keys (a multiple of 64), and cover the row exactly; launch
  // 1's blocks per row equal the most parts any row up to total_rows keys can have.
  int most = 0;
  for (int64_t n = 1; n <= 6000; ++n) {
    const int64_t len = d::score_part_len(n);
    const int parts = d::score_num_parts(n);
    CHECK(len % 64 == 0);
    CHECK(parts <= 32);
    CHECK((parts - 1) * len < n);
    CHECK(parts * len >= n);
    most = std::max(most, parts);
    CHECK(d::score_grid_parts(n) == most);
  }
  CHECK(d::score_num_parts(640) == 10);   // LLaVA-1.5: 10 parts of 64
  CHECK(d::score_num_parts(2955) == 24);  // LLaVA-NeXT: 24 parts of 128
}
