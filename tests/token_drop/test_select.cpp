// SPDX-License-Identifier: Apache-2.0
// fulgur::token_drop::select against reference::token_drop_select (the kept index sets must be
// identical: the selection is integer logic on the same fp32 scores) and the spec's properties:
// exactly keep_s per span from the original N, strictly increasing, every kept score >= every
// dropped one, ties to the lower index, NaN below -inf, -0.0 == +0.0, keep = 0 and keep = N,
// both keep rules, spans longer than 65,536 tokens; the device keep-count rule equals the host
// one; bad input writes nothing.
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "fulgur/detail/launch.cuh"
#include "token_drop_test.hpp"

using namespace td_test;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

enum class Pattern { kRandom, kFewDistinct, kSpecials };

/// Scores of one pattern: attention-like probabilities (log-normal around 1/L), heavy ties, or a
/// mix of NaN (with payloads and sign), +-inf, +-0.0, denormals and duplicates.
std::vector<float> make_scores(fulgur_test::Rng& rng, int64_t n, Pattern pattern) {
  std::vector<float> s(static_cast<size_t>(n));
  for (auto& x : s) {
    switch (pattern) {
      case Pattern::kRandom: x = static_cast<float>(std::exp(rng.normal(-6.5, 1.0))); break;
      case Pattern::kFewDistinct: x = static_cast<float>(rng.uniform_int(0, 3)) * 0.25f; break;
      case Pattern::kSpecials: {
        const int64_t c = rng.uniform_int(0, 9);
        uint32_t u = 0;
        switch (c) {
          case 0: x = std::numeric_limits<float>::quiet_NaN(); break;
          case 1:
            u = 0xffc01234u;
            std::memcpy(&x, &u, 4);
            break;  // negative NaN with payload
          case 2: x = -kInf; break;
          case 3: x = kInf; break;
          case 4: x = 0.0f; break;
          case 5: x = -0.0f; break;
          case 6: x = std::numeric_limits<float>::denorm_min(); break;
          case 7: x = -1.0f; break;
          default: x = static_cast<float>(rng.uniform_int(0, 4)) * 0.5f; break;
        }
        break;
      }
    }
  }
  return s;
}

void check_select(const Batch& bt, const std::vector<float>& scores, KeepRule rule, double ratio,
                  const std::vector<int64_t>* original = nullptr) {
  DeviceBuffer<float> d_scores(scores.empty() ? std::vector<float>{0.0f} : scores);
  const SelectOut got = run_select_kernel(bt, d_scores, rule, ratio, original);
  const SelectOut want = reference_select(bt, scores, rule, ratio, original);
  CHECK(got.kept == want.kept);
  CHECK(got.cu_kept == want.cu_kept);
  std::vector<int64_t> keeps;
  for (int64_t s = 0; s < bt.spans(); ++s)
    keeps.push_back(td::keep_count(original ? (*original)[s] : bt.length[s], rule, ratio));
  check_selection_properties(bt, scores, got, keeps);
}

__global__ void keep_count_kernel(const int64_t* n, const double* ratio, int count, int rule, int64_t* out) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < count) out[i] = td::detail::keep_count_device(n[i], static_cast<KeepRule>(rule), ratio[i]);
}

}  // namespace

TEST_CASE("token_drop select kernel: equals the reference, spec properties, every pattern", "[token_drop][select]") {
  fulgur_test::Rng rng("token_drop select kernel patterns");
  FULGUR_INFO_SEED(rng);
  // LLaVA-1.5 batch with varied N per sequence, a two-image sequence, a text-only sequence, an
  // empty span and single-token spans, span lengths around the block size (255, 256, 257).
  const Batch bt({{640, {{35, 576}}},
                  {300, {{0, 255}}},
                  {90, {}},
                  {700, {{5, 256}, {300, 257}, {600, 0}, {650, 1}}},
                  {10, {{9, 1}}}});
  for (Pattern pattern : {Pattern::kRandom, Pattern::kFewDistinct, Pattern::kSpecials}) {
    const std::vector<float> scores = make_scores(rng, bt.image_tokens, pattern);
    // The thread backend (one OS thread per CUDA thread) keeps one ratio per code path.
    const std::vector<double> ratios =
        kSlowBackend ? std::vector<double>{0.5, 1.0, 0.0} : std::vector<double>{0.5, 0.25, 0.125, 1.0, 0.0, 0.37};
    const std::vector<double> drops =
        kSlowBackend ? std::vector<double>{0.75} : std::vector<double>{0.75, 0.5, 0.0, 1.0};
    for (double ratio : ratios) {
      DYNAMIC_SECTION("pattern " << static_cast<int>(pattern) << " floor ratio " << ratio) {
        check_select(bt, scores, KeepRule::kFloorKeepRatio, ratio);
      }
    }
    for (double drop : drops) {
      DYNAMIC_SECTION("pattern " << static_cast<int>(pattern) << " FastV R " << drop) {
        check_select(bt, scores, KeepRule::kFastVRound, drop);
      }
    }
  }
}

TEST_CASE("token_drop select kernel: ties, NaN below -inf, signed zeros", "[token_drop][select]") {
  const Batch bt({{12, {{1, 10}}}});
  const float nan = std::numeric_limits<float>::quiet_NaN();
  // Keep 5 of 10 (ratio 0.5): the three 2.0s, then among the 1.0s at positions 3, 6, 8 the two
  // lowest (3 and 6). Position 0 is NaN: below -inf (position 9), so neither is kept.
  const std::vector<float> s = {nan, 2.0f, 0.5f, 1.0f, 2.0f, -0.0f, 1.0f, 2.0f, 1.0f, -kInf};
  DeviceBuffer<float> d(s);
  const SelectOut got = run_select_kernel(bt, d, KeepRule::kFloorKeepRatio, 0.5);
  CHECK(got.kept == std::vector<int64_t>{1 + 1, 1 + 3, 1 + 4, 1 + 6, 1 + 7});
  // Keep 9 of 10 (ratio 0.9): everything but the NaN, -inf kept above it.
  const SelectOut nine = run_select_kernel(bt, d, KeepRule::kFloorKeepRatio, 0.9);
  CHECK(nine.kept == std::vector<int64_t>{2, 3, 4, 5, 6, 7, 8, 9, 10});
  // -0.0 == +0.0: with two zeros competing for the last slot the lower index wins.
  const std::vector<float> z = {3.0f, 0.0f, 3.0f, -0.0f, 3.0f, -1.0f, 3.0f, 3.0f, 3.0f, 3.0f};
  DeviceBuffer<float> dz(z);
  // floor(10 * 0.8) = 8: the seven 3.0s and the first zero, position 1 (+0.0) before 3 (-0.0).
  const SelectOut zs = run_select_kernel(bt, dz, KeepRule::kFloorKeepRatio, 0.8);
  CHECK(zs.kept == std::vector<int64_t>{1, 2, 3, 5, 7, 8, 9, 10});
  const std::vector<float> z2 = {3.0f, -0.0f, 3.0f, 0.0f, 3.0f, -1.0f, 3.0f, 3.0f, 3.0f, 3.0f};
  DeviceBuffer<float> dz2(z2);
  CHECK(run_select_kernel(bt, dz2, KeepRule::kFloorKeepRatio, 0.8).kept ==
        std::vector<int64_t>{1, 2, 3, 5, 7, 8, 9, 10});
}

TEST_CASE("token_drop select kernel: keep counts from the original N at later stages", "[token_drop][select]") {
  fulgur_test::Rng rng("token_drop select kernel stages");
  FULGUR_INFO_SEED(rng);
  // Stage 2 of PyramidDrop on LLaVA-1.5: spans hold 288 tokens after the first drop; the stage
  // keeps floor(576 / 4) = 144 from the original 576 (not 288 / 4 = 72). A second sequence holds
  // two images of 101 and 60 original tokens.
  const Batch bt({{35 + 288 + 20, {{35, 288}}}, {200, {{10, 50}, {80, 30}}}});
  const std::vector<int64_t> original = {576, 101, 60};
  const std::vector<float> scores = make_scores(rng, bt.image_tokens, Pattern::kRandom);
  check_select(bt, scores, KeepRule::kFloorKeepRatio, 0.25, &original);
  check_select(bt, scores, KeepRule::kFloorKeepRatio, 0.125, &original);
  check_select(bt, scores, KeepRule::kFloorKeepRatio, 0.5, &original);  // 288 of 288, 50 of 50, 30 of 30
}

TEST_CASE("token_drop select kernel: a span longer than 65,536 tokens", "[token_drop][select]") {
  if (kSlowBackend) return;  // the multi-tile scan is exercised by the 576-token spans already
  fulgur_test::Rng rng("token_drop select kernel long span");
  FULGUR_INFO_SEED(rng);
  // The O(n^2) reference is too slow here: the oracle is a stable sort of the positions by
  // descending score (NaN last), whose first keep entries, sorted, are the kept set.
  const Batch bt({{70010, {{5, 70000}}}});
  for (Pattern pattern : {Pattern::kRandom, Pattern::kFewDistinct}) {
    const std::vector<float> scores = make_scores(rng, bt.image_tokens, pattern);
    DeviceBuffer<float> d(scores);
    const SelectOut got = run_select_kernel(bt, d, KeepRule::kFloorKeepRatio, 0.5);
    std::vector<int64_t> order(70000);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return scores[a] > scores[b]; });
    order.resize(35000);
    std::sort(order.begin(), order.end());
    for (auto& x : order) x += 5;
    CHECK(got.kept == order);
    check_selection_properties(bt, scores, got, {35000});
  }
}

TEST_CASE("token_drop select kernel: no spans, empty batch", "[token_drop][select]") {
  for (int64_t b : {0, 2}) {
    const Batch bt(b == 0 ? std::vector<Seq>{} : std::vector<Seq>{{10, {}}, {5, {}}});
    DeviceBuffer<int64_t> cu_kept = poisoned<int64_t>(1);
    SelectParams p;
    p.layout = bt.device();
    p.cu_kept = cu_kept.data();
    REQUIRE(td::select(p, nullptr) == cudaSuccess);
    CHECK(read(cu_kept)[0] == 0);  // as the reference: cu_kept[num_spans] = 0
  }
}

TEST_CASE("token_drop select kernel: the device keep count equals the host rule", "[token_drop][select]") {
  // Every n in [0, 3000) (300 on the thread backend) against a set of ratios, including those whose product lands on an
  // exact half (FastV: round half to even, 5 * 0.5 = 2.5 -> 2, 7 * 0.5 = 3.5 -> 4) and PyramidDrop's
  // powers of two.
  const std::vector<double> ratios = {0.0, 1.0, 0.5, 0.25, 0.125, 0.75, 0.1, 0.3, 1.0 / 3.0, 0.9};
  std::vector<int64_t> n;
  std::vector<double> r;
  for (int64_t i = 0; i < (kSlowBackend ? 300 : 3000); ++i) {
    for (double x : ratios) {
      n.push_back(i);
      r.push_back(x);
    }
  }
  const int count = static_cast<int>(n.size());
  DeviceBuffer<int64_t> d_n(n), out = poisoned<int64_t>(n.size());
  DeviceBuffer<double> d_r(r);
  for (KeepRule rule : {KeepRule::kFloorKeepRatio, KeepRule::kFastVRound}) {
    REQUIRE(fulgur::detail::launch(keep_count_kernel, dim3((count + 255) / 256), dim3(256), 0, nullptr, d_n.data(),
                                   d_r.data(), count, static_cast<int>(rule), out.data()) == cudaSuccess);
    const std::vector<int64_t> got = read(out);
    int64_t mismatches = 0;
    for (int i = 0; i < count; ++i) mismatches += got[i] != td::keep_count(n[i], rule, r[i]);
    CHECK(mismatches == 0);
  }
  CHECK(td::keep_count(5, KeepRule::kFastVRound, 0.5) == 2);
  CHECK(td::keep_count(7, KeepRule::kFastVRound, 0.5) == 4);
}

TEST_CASE("token_drop select kernel: bad input is rejected and writes nothing", "[token_drop][select]") {
  fulgur_test::Rng rng("token_drop select kernel bad input");
  FULGUR_INFO_SEED(rng);
  const Batch bt({{100, {{10, 80}}}, {50, {{0, 20}}}});
  const std::vector<float> scores = make_scores(rng, bt.image_tokens, Pattern::kRandom);
  DeviceBuffer<float> d_scores(scores);
  DeviceBuffer<int64_t> kept = poisoned<int64_t>(100), cu_kept = poisoned<int64_t>(3), d_orig;
  auto params = [&](double ratio) {
    SelectParams p;
    p.layout = bt.device();
    p.scores = d_scores.data();
    p.ratio = ratio;
    p.num_kept = total_keep(bt, KeepRule::kFloorKeepRatio, ratio, nullptr);
    p.kept_index = kept.data();
    p.cu_kept = cu_kept.data();
    return p;
  };
  auto untouched = [&] {
    for (int64_t x : read(kept)) CHECK(x == -1);
    for (int64_t x : read(cu_kept)) CHECK(x == -1);
  };
  SelectParams p = params(0.5);
  p.ratio = 1.5;
  CHECK(td::select(p, nullptr) == cudaErrorInvalidValue);
  p.ratio = std::nan("");
  CHECK(td::select(p, nullptr) == cudaErrorInvalidValue);
  p = params(0.5);
  p.rule = static_cast<KeepRule>(7);
  CHECK(td::select(p, nullptr) == cudaErrorInvalidValue);
  p = params(0.5);
  p.scores = nullptr;
  CHECK(td::select(p, nullptr) == cudaErrorInvalidValue);
  untouched();
  // Metadata the host cannot see: num_kept not the sum of the keep counts; an original length
  // whose keep count exceeds the current span (a stage keeping more than the previous one).
  p = params(0.5);
  p.num_kept = 49;
  CHECK(td::select(p, nullptr) == cudaSuccess);
  untouched();
  const std::vector<int64_t> original = {170, 20};  // floor(170 / 2) = 85 > 80
  d_orig = DeviceBuffer<int64_t>(original);
  p = params(0.5);
  p.original_length = d_orig.data();
  p.num_kept = 95;
  SelectParams host = p;
  host.layout = bt.host();
  host.original_length = original.data();
  CHECK(td::validate(host).code() == cudaErrorInvalidValue);
  CHECK(td::select(p, nullptr) == cudaSuccess);
  untouched();
}
