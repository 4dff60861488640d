// SPDX-License-Identifier: Apache-2.0
// Tests of the MoE CPU references (include/fulgur/reference/moe.hpp) against hand-derived cases,
// an independent brute-force router written here (full sort with index tie-break, sigmoid through
// tanh, softmax without max shift), a counting-sort construction of the permutation, and the
// direct gather / combine formulas. Spec: /work/shared/specs/moe_routing.md.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <set>
#include <vector>

#include "fulgur/moe/params.hpp"
#include "fulgur/reference/moe.hpp"
#include "fulgur_test.hpp"

namespace {

namespace moe = fulgur::moe;
namespace ref = fulgur::reference;
using fulgur::DType;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// fulgur_test::poison on an empty vector passes memset a null pointer (UB); the T = 0 cases
// have empty outputs.
template <typename T>
void poison_any(std::vector<T>& v) {
  if (!v.empty()) fulgur_test::poison(v);
}

// A tensor of a run-time dtype, stored as bytes, read and written through doubles.
struct Buf {
  Buf() = default;
  Buf(DType d, size_t count) : dt(d), n(count), bytes(count * fulgur::dtype_size(d)) {}
  void* data() { return bytes.data(); }
  const void* data() const { return bytes.data(); }
  double get(size_t i) const {
    switch (dt) {
      case DType::kF32: {
        float v;
        std::memcpy(&v, &bytes[i * 4], 4);
        return v;
      }
      case DType::kF16: {
        __half v;
        std::memcpy(&v, &bytes[i * 2], 2);
        return __half2float(v);
      }
      case DType::kBF16: {
        __nv_bfloat16 v;
        std::memcpy(&v, &bytes[i * 2], 2);
        return __bfloat162float(v);
      }
      case DType::kF64: {
        double v;
        std::memcpy(&v, &bytes[i * 8], 8);
        return v;
      }
    }
    return kNaN;
  }
  // Stores the value rounded once to the dtype (callers read it back with get()).
  void set(size_t i, double x) {
    switch (dt) {
      case DType::kF32: {
        float v = static_cast<float>(x);
        std::memcpy(&bytes[i * 4], &v, 4);
        return;
      }
      case DType::kF16: {
        __half v = __float2half_rn(static_cast<float>(x));
        std::memcpy(&bytes[i * 2], &v, 2);
        return;
      }
      case DType::kBF16: {
        __nv_bfloat16 v = __float2bfloat16_rn(static_cast<float>(x));
        std::memcpy(&bytes[i * 2], &v, 2);
        return;
      }
      case DType::kF64: std::memcpy(&bytes[i * 8], &x, 8); return;
    }
  }
  void poison() { poison_any(bytes); }
  DType dt = DType::kF32;
  size_t n = 0;
  std::vector<unsigned char> bytes;
};

// Rounding bound of one round-to-nearest to `dt`, relative (half an ulp at the bottom of a
// binade): 2^-24 fp32, 2^-11 fp16, 2^-8 bf16.
double half_ulp(DType dt) {
  switch (dt) {
    case DType::kF32: return std::ldexp(1.0, -24);
    case DType::kF16: return std::ldexp(1.0, -11);
    case DType::kBF16: return std::ldexp(1.0, -8);
    case DType::kF64: return std::ldexp(1.0, -53);
  }
  return 1.0;
}

// ------------------------------------------------------------------------------------------
// Routing helpers
// ------------------------------------------------------------------------------------------

struct RouteRun {
  fulgur::Status status;
  std::vector<int32_t> ids;
  std::vector<double> w;
  std::vector<int32_t> counts;
};

// Runs the reference on `logits` (T rows of E values, stored in logits_dtype with a row stride
// that may exceed E: the padding is NaN, so reading it would show) with outputs poisoned.
RouteRun run_route(const moe::RoutePolicy& pol, const std::vector<double>& logits, int64_t T,
                   const std::vector<float>* bias = nullptr, DType logits_dtype = DType::kF64,
                   DType weights_dtype = DType::kF32, int64_t pad = 0) {
  const int32_t E = pol.num_experts, k = pol.top_k;
  const int64_t stride = E + pad;
  Buf x(logits_dtype, static_cast<size_t>(std::max<int64_t>(T * stride, 1)));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t e = 0; e < stride; ++e) x.set(t * stride + e, e < E ? logits[t * E + e] : kNaN);
  RouteRun run;
  run.ids.assign(T * k, 0);
  poison_any(run.ids);
  Buf w(weights_dtype, T * k);
  w.poison();
  run.counts.assign(E, 0);
  fulgur_test::poison(run.counts);

  moe::RouteParams p;
  p.policy = pol;
  p.logits = x.data();
  p.logits_dtype = logits_dtype;
  p.logits_row_stride = stride;
  p.bias = bias ? bias->data() : nullptr;
  p.num_tokens = T;
  p.topk_ids = run.ids.data();
  p.topk_weights = w.data();
  p.weights_dtype = weights_dtype;
  p.expert_counts = run.counts.data();
  run.status = ref::moe_route(p);
  run.w.resize(T * k);
  for (int64_t i = 0; i < T * k; ++i) run.w[i] = w.get(i);
  return run;
}

// Independent brute-force router for one row x[0..E) (already widened from its storage dtype),
// written from the spec's composition: full sort with an index tie-break instead of repeated
// argmax; sigmoid as (1 + tanh(x/2)) / 2; softmax as exp(x) / sum exp (no max shift: test logits
// stay within |x| < 40).
struct Routed {
  std::vector<int32_t> ids;
  std::vector<double> w;
};
Routed brute_route(const moe::RoutePolicy& pol, const double* x, const float* bias) {
  const int32_t E = pol.num_experts, k = pol.top_k;
  const bool before = pol.score_timing == moe::ScoreTiming::kBeforeTopK;
  auto avail = [&](int32_t e) { return !std::isnan(x[e]) && x[e] != -kInf; };
  auto sig = [](double v) { return 0.5 * (1.0 + std::tanh(0.5 * v)); };
  std::vector<double> s(E, 0.0);
  if (pol.score_func == moe::ScoreFunc::kSoftmax) {
    double z = 0;
    for (int32_t e = 0; e < E; ++e)
      if (avail(e)) z += std::exp(x[e]);
    for (int32_t e = 0; e < E; ++e) s[e] = avail(e) ? std::exp(x[e]) / z : 0.0;
  } else if (pol.score_func == moe::ScoreFunc::kSigmoid) {
    for (int32_t e = 0; e < E; ++e) s[e] = sig(x[e]);
  } else {
    for (int32_t e = 0; e < E; ++e) s[e] = x[e];
  }
  std::vector<double> key(E);
  for (int32_t e = 0; e < E; ++e) {
    const double v = (before ? s[e] : x[e]) + (bias ? static_cast<double>(bias[e]) : 0.0);
    key[e] = (!avail(e) || std::isnan(v)) ? -kInf : v;
  }
  auto better = [](const std::vector<double>& v) {
    return [&v](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); };
  };
  if (pol.n_group > 1) {
    const int32_t gs = E / pol.n_group;
    std::vector<double> gscore(pol.n_group);
    for (int32_t g = 0; g < pol.n_group; ++g) {
      std::vector<double> ks(key.begin() + g * gs, key.begin() + (g + 1) * gs);
      std::sort(ks.begin(), ks.end(), std::greater<double>());
      gscore[g] = ks[0] + (gs >= 2 ? ks[1] : 0.0);
    }
    std::vector<int32_t> gord(pol.n_group);
    std::iota(gord.begin(), gord.end(), 0);
    std::sort(gord.begin(), gord.end(), better(gscore));
    std::vector<char> keep(pol.n_group, 0);
    for (int32_t r = 0; r < pol.topk_group; ++r) keep[gord[r]] = 1;
    for (int32_t e = 0; e < E; ++e)
      if (!keep[e / gs]) key[e] = -kInf;
  }
  std::vector<int32_t> ord(E);
  std::iota(ord.begin(), ord.end(), 0);
  std::sort(ord.begin(), ord.end(), better(key));
  Routed r;
  r.ids.assign(ord.begin(), ord.begin() + k);
  std::vector<char> valid(k);
  for (int32_t j = 0; j < k; ++j) valid[j] = key[r.ids[j]] > -kInf;
  r.w.assign(k, 0.0);
  if (before) {
    for (int32_t j = 0; j < k; ++j) r.w[j] = valid[j] ? s[r.ids[j]] : 0.0;
  } else if (pol.score_func == moe::ScoreFunc::kSoftmax) {
    double z = 0;
    for (int32_t j = 0; j < k; ++j)
      if (valid[j]) z += std::exp(x[r.ids[j]]);
    for (int32_t j = 0; j < k; ++j) r.w[j] = valid[j] ? std::exp(x[r.ids[j]]) / z : 0.0;
  } else if (pol.score_func == moe::ScoreFunc::kSigmoid) {
    for (int32_t j = 0; j < k; ++j) r.w[j] = valid[j] ? sig(x[r.ids[j]]) : 0.0;
  } else {
    for (int32_t j = 0; j < k; ++j) r.w[j] = valid[j] ? x[r.ids[j]] : 0.0;
  }
  const bool any = std::any_of(valid.begin(), valid.end(), [](char v) { return v != 0; });
  if (pol.renormalize && any) {
    double sum = 0;
    for (double v : r.w) sum += v;
    for (double& v : r.w) v /= sum + pol.renorm_eps;
  }
  for (double& v : r.w) v *= pol.scaling_factor;
  return r;
}

// Weight check: both sides are fp64 values that agree to ~1e-15 relative, each rounded once to
// the weights dtype, so they differ by at most one rounding of the output: 2 * half_ulp relative
// (plus 1e-300 for exact zeros).
bool weight_close(double got, double want, DType dt) {
  return std::fabs(got - want) <= 2.0 * half_ulp(dt) * std::fabs(want) + 1e-300;
}

// Tolerance for hand-derived weights written to fp32: the stored value is the fp32 rounding of
// the exact weight (|w| <= 2.5 here), so |err| <= 2^-24 * 2.5 < 2e-7.
constexpr double kHandTol = 2e-7;

// Histogram check shared by the routing tests: expert_counts counts every slot, valid or not.
void check_counts(const RouteRun& run, int32_t E) {
  std::vector<int32_t> hist(E, 0);
  for (int32_t id : run.ids) {
    REQUIRE(id >= 0);
    REQUIRE(id < E);
    ++hist[id];
  }
  CHECK(run.counts == hist);
}

// Tie-free logits as peers build them: a random permutation of 0..E-1 scaled by 1/32 (exact in
// bf16 up to 256/32, and in f16/f32 throughout), centered so sigmoid does not saturate.
std::vector<double> perm_logits(fulgur_test::Rng& rng, int32_t E) {
  std::vector<double> v(E);
  std::iota(v.begin(), v.end(), 0.0);
  std::shuffle(v.begin(), v.end(), rng.gen);
  for (double& x : v) x = (x - E / 2) / 32.0;
  return v;
}

}  // namespace

// ==========================================================================================
// Routing: hand-built cases, one per family
// ==========================================================================================

TEST_CASE("moe_route Mixtral: softmax top-2, renormalized, tie to the lower index", "[reference][moe]") {
  // x = [0, 1, 2, 0.5, -1, 3, 0, 2]: the largest logit is e5 (3); e2 and e7 tie at 2 and the
  // lower index e2 wins. ids = [5, 2]. Renormalized softmax over all = softmax over {3, 2}:
  // w5 = e^3 / (e^3 + e^2) = 1 / (1 + e^-1) = 0.7310585786, w2 = 1 - w5 = 0.2689414214.
  const std::vector<double> x = {0, 1, 2, 0.5, -1, 3, 0, 2};
  auto run = run_route(moe::presets::mixtral(), x, 1);
  REQUIRE(run.status.is_ok());
  CHECK(run.ids == std::vector<int32_t>{5, 2});
  const double w5 = 1.0 / (1.0 + std::exp(-1.0));
  CHECK(std::fabs(run.w[0] - w5) < kHandTol);
  CHECK(std::fabs(run.w[1] - (1.0 - w5)) < kHandTol);
  check_counts(run, 8);
}

TEST_CASE("moe_route Qwen2-MoE: softmax without renormalization", "[reference][moe]") {
  // Qwen2 policy shrunk to E = 4, k = 2. x = ln[1, 2, 3, 4] -> softmax = [0.1, 0.2, 0.3, 0.4]
  // exactly (sum of exp = 10). Top-2: e3, e2 with weights 0.4, 0.3 (sum 0.7, NOT 1: no
  // renormalization; renormalized would be 4/7, 3/7).
  auto pol = moe::presets::qwen2_moe(4, 2);
  const std::vector<double> x = {std::log(1.0), std::log(2.0), std::log(3.0), std::log(4.0)};
  auto run = run_route(pol, x, 1);
  REQUIRE(run.status.is_ok());
  CHECK(run.ids == std::vector<int32_t>{3, 2});
  CHECK(std::fabs(run.w[0] - 0.4) < kHandTol);
  CHECK(std::fabs(run.w[1] - 0.3) < kHandTol);
}

TEST_CASE("moe_route DeepSeek-V3: masked groups are -inf, bias selects only, scale 2.5", "[reference][moe]") {
  // DeepSeek-V3 policy shrunk to E = 8 in 4 groups of 2, keep 2 groups, sigmoid, renormalize
  // (eps 1e-20), scale 2.5.
  //   x    = [ 2,    1,    -1,   -2,   0,   3,    4,    -4  ]
  //   bias = [-1,   -0.5,  -1,   -1,  -1,  -1,   -1,    -1  ]
  //   s = sigmoid(x) = [.8807971, .7310586, .2689414, .1192029, .5, .9525741, .9820138, .0179862]
  //   key = s + bias = [-.1192029, .2310586, -.7310586, -.8807971, -.5, -.0474259, -.0179862,
  //                     -.9820138]
  //   group score (sum of its 2 keys): G0 = .1118557, G1 = -1.6118557, G2 = -.5474259,
  //                                    G3 = -1.0 (s(4) + s(-4) = 1 exactly)
  //   kept groups: G0, G2 -> candidates e1 (.2310586), e5 (-.0474259), e0 (-.1192029), e4 (-.5)
  // k = 4: ids = [1, 5, 0, 4]. Every kept key but e1's is NEGATIVE: had the masked experts been
  // set to 0 instead of -inf, e2, e3, e6 would displace e5, e0, e4 ([1, 2, 3, 6]); without
  // grouping the ids would be [1, 6, 5, 0]; without the bias e1 would rank below e0.
  // Weights from the UNBIASED sigmoid: w = 2.5 * s / (s(1) + s(3) + s(2) + s(0) + 1e-20)
  //   sum = .7310586 + .9525741 + .8807971 + .5 = 3.0644298
  //   w = 2.5 * [.2385627, .3108487, .2874261, .1631625] = [.5964067, .7771218, .7185652, .4079062]
  // (with a leaking bias the weights would be built from the keys and differ in sign).
  auto pol = moe::presets::deepseek_v3();
  pol.num_experts = 8;
  pol.n_group = 4;
  pol.topk_group = 2;
  pol.top_k = 4;
  const std::vector<double> x = {2, 1, -1, -2, 0, 3, 4, -4};
  const std::vector<float> bias = {-1, -0.5f, -1, -1, -1, -1, -1, -1};
  auto sig = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
  auto run = run_route(pol, x, 1, &bias);
  REQUIRE(run.status.is_ok());
  CHECK(run.ids == std::vector<int32_t>{1, 5, 0, 4});
  const double sum = sig(1) + sig(3) + sig(2) + sig(0);
  const double want[4] = {2.5 * sig(1) / sum, 2.5 * sig(3) / sum, 2.5 * sig(2) / sum, 2.5 * sig(0) / sum};
  for (int j = 0; j < 4; ++j) CHECK(std::fabs(run.w[j] - want[j]) < kHandTol);
  CHECK(std::fabs(run.w[0] - 0.5964067) < 1e-6);  // the hand value above, to its 7 digits

  // k = 2 from the same row: the two best kept experts, renormalized over those two:
  //   w = 2.5 * [s(1), s(3)] / (s(1) + s(3)) = 2.5 * [.4342150, .5657850] = [1.085538, 1.414462]
  pol.top_k = 2;
  run = run_route(pol, x, 1, &bias);
  REQUIRE(run.status.is_ok());
  CHECK(run.ids == std::vector<int32_t>{1, 5});
  CHECK(std::fabs(run.w[0] - 2.5 * sig(1) / (sig(1) + sig(3))) < kHandTol);
  CHECK(std::fabs(run.w[1] - 2.5 * sig(3) / (sig(1) + sig(3))) < kHandTol);
  CHECK(std::fabs(run.w[0] + run.w[1] - 2.5) < kHandTol);  // renormalized, then scaled
}

TEST_CASE("moe_route MiniMax-M2: sigmoid + bias for selection, weights unbiased", "[reference][moe]") {
  // MiniMax-M2 policy shrunk to E = 4, k = 2. x = [0, 1, 2, -1], bias = [0.5, 0, -0.5, 0]:
  //   s = [.5, .7310586, .8807971, .2689414]; key = [1.0, .7310586, .3807971, .2689414]
  //   ids = [0, 1] (unbiased, the top-2 would be [2, 1]).
  //   w = [s(0), s(1)] / (s(0) + s(1)) = [.5, .7310586] / 1.2310586 = [.4061545, .5938455]
  auto pol = moe::presets::minimax_m2();
  pol.num_experts = 4;
  pol.top_k = 2;
  const std::vector<double> x = {0, 1, 2, -1};
  const std::vector<float> bias = {0.5f, 0, -0.5f, 0};
  auto run = run_route(pol, x, 1, &bias);
  REQUIRE(run.status.is_ok());
  CHECK(run.ids == std::vector<int32_t>{0, 1});
  const double s1 = 1.0 / (1.0 + std::exp(-1.0));
  CHECK(std::fabs(run.w[0] - 0.5 / (0.5 + s1)) < kHandTol);
  CHECK(std::fabs(run.w[1] - s1 / (0.5 + s1)) < kHandTol);
  CHECK(std::fabs(run.w[0] - 0.4061545) < 1e-6);
}

TEST_CASE("moe_route Llama-4: top-1 on raw logits, then sigmoid of that logit", "[reference][moe]") {
  // E = 16 (Scout), k = 1. Row 0: e1 and e3 tie at 2 -> e1; w = sigmoid(2) = .8807971 (NOT the
  // softmax probability, and not renormalized to 1). Row 1: the best logit is negative,
  // -0.5 at e9: w = sigmoid(-0.5) = .3775407.
  auto pol = moe::presets::llama4();
  CHECK(pol.weight_site == moe::WeightSite::kInput);
  std::vector<double> x(32, -3.0);
  x[0] = 0.5, x[1] = 2, x[2] = -1, x[3] = 2;
  x[16 + 9] = -0.5, x[16 + 10] = -0.75;
  auto run = run_route(pol, x, 2);
  REQUIRE(run.status.is_ok());
  CHECK(run.ids == std::vector<int32_t>{1, 9});
  CHECK(std::fabs(run.w[0] - 1.0 / (1.0 + std::exp(-2.0))) < kHandTol);
  CHECK(std::fabs(run.w[1] - 1.0 / (1.0 + std::exp(0.5))) < kHandTol);
}

TEST_CASE("moe_route gpt-oss: top-4 on logits, softmax over the selected values", "[reference][moe]") {
  // gpt-oss policy shrunk to E = 6 (k = 4). x = [1, 3, 0, 2, -1, 2.5]: ids = [1, 5, 3, 0]
  // (logits 3, 2.5, 2, 1). w = softmax([3, 2.5, 2, 1]) = [1, e^-.5, e^-1, e^-2] / Z,
  //   Z = 1 + .6065307 + .3678794 + .1353353 = 2.1097454
  //   w = [.4739908, .2874900, .1743715, .0641477]
  // Softmax over all 6 logits would give smaller weights (sum < 1).
  auto pol = moe::presets::gpt_oss();
  pol.num_experts = 6;
  const std::vector<double> x = {1, 3, 0, 2, -1, 2.5};
  auto run = run_route(pol, x, 1);
  REQUIRE(run.status.is_ok());
  CHECK(run.ids == std::vector<int32_t>{1, 5, 3, 0});
  const double Z = 1 + std::exp(-0.5) + std::exp(-1.0) + std::exp(-2.0);
  const double want[4] = {1 / Z, std::exp(-0.5) / Z, std::exp(-1.0) / Z, std::exp(-2.0) / Z};
  for (int j = 0; j < 4; ++j) CHECK(std::fabs(run.w[j] - want[j]) < kHandTol);
  CHECK(std::fabs(run.w[0] - 0.4739908) < 1e-6);
}

TEST_CASE("moe_route: sigmoid, renormalize, scale 2.5 without groups (Nemotron-style)", "[reference][moe]") {
  // E = 4, k = 2, sigmoid, renormalize (eps 0), scale 2.5. x = [0, ln 3, -ln 3, ln 3]:
  // s = [1/2, 3/4, 1/4, 3/4]; e1 and e3 tie -> ids [1, 3]; w = 2.5 * [.5, .5] = [1.25, 1.25]
  // (exactly representable, so exact equality).
  moe::RoutePolicy pol;
  pol.num_experts = 4;
  pol.top_k = 2;
  pol.score_func = moe::ScoreFunc::kSigmoid;
  pol.renormalize = true;
  pol.scaling_factor = 2.5f;
  const std::vector<double> x = {0, std::log(3.0), -std::log(3.0), std::log(3.0)};
  auto run = run_route(pol, x, 1);
  REQUIRE(run.status.is_ok());
  CHECK(run.ids == std::vector<int32_t>{1, 3});
  CHECK(run.w[0] == 1.25);
  CHECK(run.w[1] == 1.25);
}

// ==========================================================================================
// Routing: ties, NaN and -inf
// ==========================================================================================

TEST_CASE("moe_route: all-equal logits select ids 0..k-1 under every policy", "[reference][moe]") {
  // Every key ties, so the lower index wins each pick: ids = 0, 1, ..., k-1. Softmax before
  // top-k + renormalize: every weight is 1/k; DeepSeek grouping: all group scores tie, groups
  // 0..topk_group-1 are kept (they hold experts 0..k-1 since topk_group * E/n_group >= k).
  const std::vector<moe::RoutePolicy> pols = {moe::presets::minimax_text_01(), moe::presets::qwen3_moe(),
                                              moe::presets::deepseek_v3(),     moe::presets::kimi_k2(),
                                              moe::presets::gpt_oss(),         moe::presets::llama4(128)};
  for (const auto& pol : pols) {
    const int32_t E = pol.num_experts, k = pol.top_k;
    std::vector<double> x(3 * E);
    for (int t = 0; t < 3; ++t)
      for (int32_t e = 0; e < E; ++e) x[t * E + e] = 0.25 * t - 0.5;  // equal within a row
    std::vector<float> bias(E, -0.125f);
    auto run = run_route(pol, x, 3, pol.selection_bias ? &bias : nullptr);
    REQUIRE(run.status.is_ok());
    for (int t = 0; t < 3; ++t) {
      CAPTURE(E, k, t);
      for (int32_t j = 0; j < k; ++j) CHECK(run.ids[t * k + j] == j);
      if (pol.renormalize || pol.score_timing == moe::ScoreTiming::kAfterTopK) {
        if (pol.score_func == moe::ScoreFunc::kSoftmax || pol.renormalize) {
          // Equal weights summing to scaling_factor.
          for (int32_t j = 0; j < k; ++j) CHECK(std::fabs(run.w[t * k + j] - pol.scaling_factor / k) < kHandTol);
        }
      }
    }
    check_counts(run, E);
  }
}

TEST_CASE("moe_route: NaN and -inf logits are unavailable; empty rows give ids 0..k-1, weight 0", "[reference][moe]") {
  SECTION("softmax before top-k, renormalized, k = 4 of 8") {
    auto pol = moe::presets::mixtral();
    pol.top_k = 4;
    const double n = kNaN, m = -kInf;
    const std::vector<double> x = {
        n, n,   n, n, n, n, n, n,  // row 0: all NaN
        m, m,   m, m, m, m, m, m,  // row 1: all -inf
        n, 1,   m, 3, n, n, m, n,  // row 2: two available experts (e3 = 3, e1 = 1)
        n, 0.5, 2, n, 1, m, 0, 3,  // row 3: NaN present, enough finite logits
    };
    auto run = run_route(pol, x, 4);
    REQUIRE(run.status.is_ok());
    // Rows 0, 1: no finite score -> ids 0..3, weights exactly 0 (not NaN).
    for (int t = 0; t < 2; ++t)
      for (int j = 0; j < 4; ++j) {
        CHECK(run.ids[t * 4 + j] == j);
        CHECK(run.w[t * 4 + j] == 0.0);
      }
    // Row 2: valid picks e3, e1; the two invalid slots land on the lowest untaken ids 0, 2 with
    // weight 0. Softmax over the available {1, 3}: w3 = 1 / (1 + e^-2) = .8807971,
    // w1 = .1192029 (already summing to 1, renormalization keeps them).
    CHECK(std::vector<int32_t>(run.ids.begin() + 8, run.ids.begin() + 12) == std::vector<int32_t>{3, 1, 0, 2});
    CHECK(std::fabs(run.w[8] - 1.0 / (1.0 + std::exp(-2.0))) < kHandTol);
    CHECK(std::fabs(run.w[9] - 1.0 / (1.0 + std::exp(2.0))) < kHandTol);
    CHECK(run.w[10] == 0.0);
    CHECK(run.w[11] == 0.0);
    // Row 3: logits 3 (e7), 2 (e2), 1 (e4), 0.5 (e1); NaN never outranks. Renormalized over the 4:
    // w = [e^3, e^2, e^1, e^.5] / (e^3 + e^2 + e^1 + e^.5)
    CHECK(std::vector<int32_t>(run.ids.begin() + 12, run.ids.end()) == std::vector<int32_t>{7, 2, 4, 1});
    const double Z = std::exp(3.0) + std::exp(2.0) + std::exp(1.0) + std::exp(0.5);
    CHECK(std::fabs(run.w[12] - std::exp(3.0) / Z) < kHandTol);
    CHECK(std::fabs(run.w[15] - std::exp(0.5) / Z) < kHandTol);
    check_counts(run, 8);  // invalid slots are counted: the counts still sum to T*k = 16
  }
  SECTION("sigmoid + bias: a -inf or NaN logit is unavailable whatever its bias") {
    // E = 4, k = 2, x = [-inf, 0, NaN, 1], bias = [5, 0, 5, 0]. sigmoid(-inf) + 5 = 5 would win
    // if -inf were a score of 0; it must not. Available keys: e1 = .5, e3 = .7310586 ->
    // ids [3, 1], w = [s(1), s(0)] / (s(1) + s(0)) = [.5938455, .4061545].
    auto pol = moe::presets::minimax_m2();
    pol.num_experts = 4;
    pol.top_k = 2;
    const std::vector<float> bias = {5, 0, 5, 0};
    auto run = run_route(pol, {-kInf, 0, kNaN, 1}, 1, &bias);
    REQUIRE(run.status.is_ok());
    CHECK(run.ids == std::vector<int32_t>{3, 1});
    const double s1 = 1.0 / (1.0 + std::exp(-1.0));
    CHECK(std::fabs(run.w[0] - s1 / (s1 + 0.5)) < kHandTol);
    CHECK(std::fabs(run.w[1] - 0.5 / (s1 + 0.5)) < kHandTol);
  }
  SECTION("a NaN bias makes its expert unavailable") {
    // E = 4, k = 1, x = [3, 0, 0, 0], bias = [NaN, 0, 0.25, 0]: e0 has the best logit but a NaN
    // key; e2 wins (key .5 + .25). w = s(0) / (s(0) + eps) = 1 (eps 1e-20 is below fp64 ulp).
    auto pol = moe::presets::minimax_m2();
    pol.num_experts = 4;
    pol.top_k = 1;
    const std::vector<float> bias = {std::numeric_limits<float>::quiet_NaN(), 0, 0.25f, 0};
    auto run = run_route(pol, {3, 0, 0, 0}, 1, &bias);
    REQUIRE(run.status.is_ok());
    CHECK(run.ids == std::vector<int32_t>{2});
    CHECK(run.w[0] == 1.0);
  }
  SECTION("gpt-oss: softmax after top-k over the valid slots only") {
    // E = 4, k = 4, x = [NaN, 2, -inf, 1]: ids [1, 3, 0, 2]; w = softmax([2, 1]) = [.7310586,
    // .2689414], then 0, 0.
    auto pol = moe::presets::gpt_oss(4);
    auto run = run_route(pol, {kNaN, 2, -kInf, 1}, 1);
    REQUIRE(run.status.is_ok());
    CHECK(run.ids == std::vector<int32_t>{1, 3, 0, 2});
    CHECK(std::fabs(run.w[0] - 1.0 / (1.0 + std::exp(-1.0))) < kHandTol);
    CHECK(std::fabs(run.w[1] - 1.0 / (1.0 + std::exp(1.0))) < kHandTol);
    CHECK(run.w[2] == 0.0);
    CHECK(run.w[3] == 0.0);
  }
  SECTION("DeepSeek groups: an all-NaN group is never kept over finite groups; all-NaN row") {
    // E = 8 in 4 groups of 2, keep 2, k = 2, zero bias. Row 0: group 0 (e0, e1) is NaN, so its
    // score is -inf; groups: G1 = s(1) + s(0), G2 = s(-1) + s(-2), G3 = s(2) + s(-3): G3 =
    // .8807971 + .0474259 = .9282230 < G1 = 1.2310586, G2 = .3881443 -> keep G1, G3:
    // ids = [6, 2] (keys .8807971, .7310586).
    // Row 1: all NaN -> ids [0, 1], weights 0.
    auto pol = moe::presets::deepseek_v3();
    pol.num_experts = 8;
    pol.n_group = 4;
    pol.topk_group = 2;
    pol.top_k = 2;
    const std::vector<float> bias(8, 0.0f);
    std::vector<double> x = {kNaN, kNaN, 1, 0, -1, -2, 2, -3};
    x.insert(x.end(), 8, kNaN);
    auto run = run_route(pol, x, 2, &bias);
    REQUIRE(run.status.is_ok());
    CHECK(run.ids == std::vector<int32_t>{6, 2, 0, 1});
    auto sig = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
    CHECK(std::fabs(run.w[0] - 2.5 * sig(2) / (sig(2) + sig(1))) < kHandTol);
    CHECK(run.w[2] == 0.0);
    CHECK(run.w[3] == 0.0);
  }
}

// ==========================================================================================
// Routing: randomized comparison with the brute force, E in {8 .. 1024}, k up to 32
// ==========================================================================================

TEST_CASE("moe_route matches an independent brute force for many E, k and policies", "[reference][moe]") {
  fulgur_test::Rng rng("moe_route brute force");
  FULGUR_INFO_SEED(rng);
  const int32_t Es[] = {8, 60, 160, 257, 384, 512, 1024};
  const int32_t ks[] = {1, 2, 8, 22, 32};
  const DType ldts[] = {DType::kF32, DType::kBF16, DType::kF16, DType::kF64};
  int config = 0, rows_checked = 0;
  auto check = [&](const moe::RoutePolicy& pol, bool with_bias, bool perm) {
    const int32_t E = pol.num_experts, k = pol.top_k;
    const int64_t T = 12;
    const DType ldt = ldts[config % 4];
    const DType wdt = config % 3 == 2 ? DType::kBF16 : DType::kF32;
    const int64_t pad = config % 2 ? 3 : 0;
    ++config;
    std::vector<double> x(T * E);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> row;
      if (perm) {
        row = perm_logits(rng, E);
      } else {
        row.resize(E);
        for (double& v : row) v = rng.normal(0.0, 2.0);
      }
      std::copy(row.begin(), row.end(), x.begin() + t * E);
    }
    // Round the inputs to their storage dtype here, so the brute force sees what the reference
    // reads.
    Buf stored(ldt, x.size());
    for (size_t i = 0; i < x.size(); ++i) stored.set(i, x[i]), x[i] = stored.get(i);
    // Bias: sometimes all negative (the -inf-versus-0 masking pitfall), else centered.
    std::vector<float> bias(E);
    const double shift = config % 2 ? -1.0 : 0.0;
    for (float& b : bias) b = static_cast<float>(shift + rng.uniform(-0.3, 0.3));
    auto run = run_route(pol, x, T, with_bias ? &bias : nullptr, ldt, wdt, pad);
    REQUIRE(run.status.is_ok());
    for (int64_t t = 0; t < T; ++t) {
      auto want = brute_route(pol, &x[t * E], with_bias ? bias.data() : nullptr);
      INFO("E " << E << " k " << k << " t " << t << " score " << int(pol.score_func) << " timing "
                << int(pol.score_timing) << " groups " << pol.n_group << "/" << pol.topk_group << " logits "
                << fulgur::dtype_name(ldt));
      for (int32_t j = 0; j < k; ++j) {
        REQUIRE(run.ids[t * k + j] == want.ids[j]);
        CHECK(weight_close(run.w[t * k + j], want.w[j], wdt));
      }
      ++rows_checked;
    }
    check_counts(run, E);
  };

  for (int32_t E : Es) {
    // Largest group count in {8, 6, 4, 16} dividing E (257 is prime: no grouping).
    int32_t ng = 1;
    for (int32_t g : {16, 8, 6, 4})
      if (E % g == 0 && E / g >= 2 && ng == 1) ng = g;
    for (int32_t k : ks) {
      if (k > E) continue;
      moe::RoutePolicy base;
      base.num_experts = E;
      base.top_k = k;
      // Softmax before top-k, renormalized (Qwen3 / Mixtral / MiniMax-Text-01).
      auto p = base;
      p.renormalize = true;
      check(p, false, true);
      // Softmax before, not renormalized (Qwen2), Gaussian logits.
      p.renormalize = false;
      check(p, false, false);
      // Sigmoid + bias, grouped when possible, renormalize + scale (DeepSeek / Kimi / MiniMax-M2).
      p = base;
      p.score_func = moe::ScoreFunc::kSigmoid;
      p.selection_bias = true;
      p.renormalize = true;
      p.renorm_eps = 1e-20f;
      p.scaling_factor = 2.5f;
      if (ng > 1) {
        p.n_group = ng;
        p.topk_group = std::max<int32_t>(ng / 2, (k + E / ng - 1) / (E / ng));
      }
      check(p, true, true);
      check(p, true, false);
      // Softmax after top-k (gpt-oss) and sigmoid after top-k (Llama-4 generalized to k).
      p = base;
      p.score_timing = moe::ScoreTiming::kAfterTopK;
      check(p, false, false);
      p.score_func = moe::ScoreFunc::kSigmoid;
      check(p, false, true);
      // Raw logits + bias, weights = raw logits (kNone).
      p = base;
      p.score_func = moe::ScoreFunc::kNone;
      p.selection_bias = true;
      check(p, true, false);
    }
  }
  // The presets at their native sizes.
  for (const auto& pol : {moe::presets::minimax_text_01(), moe::presets::mixtral(), moe::presets::qwen3_moe(),
                          moe::presets::qwen2_moe(), moe::presets::deepseek_v3(), moe::presets::kimi_k2(),
                          moe::presets::minimax_m2(), moe::presets::llama4(128), moe::presets::gpt_oss(128)}) {
    check(pol, pol.selection_bias, true);
    check(pol, pol.selection_bias, false);
  }
  CHECK(rows_checked > 2000);
}

TEST_CASE("moe_route MiniMax-Text-01 on bf16 logits with many ties matches the brute force", "[reference][moe]") {
  // vLLM selects MiniMax-Text-01 experts on logits cast to bf16, so exact ties are common. Logits
  // on a 1/4 grid in [-2, 2] (17 values for 32 experts) force ties inside and at the edge of the
  // top-2 in most rows.
  fulgur_test::Rng rng("moe_route bf16 ties");
  FULGUR_INFO_SEED(rng);
  const auto pol = moe::presets::minimax_text_01();
  const int64_t T = 200;
  std::vector<double> x(T * 32);
  for (double& v : x) v = std::round(std::max(-2.0, std::min(2.0, rng.normal(0.0, 1.0))) * 4) / 4;
  auto run = run_route(pol, x, T, nullptr, DType::kBF16, DType::kBF16);
  REQUIRE(run.status.is_ok());
  int rows_with_tie = 0;
  for (int64_t t = 0; t < T; ++t) {
    auto want = brute_route(pol, &x[t * 32], nullptr);
    CAPTURE(t);
    CHECK(run.ids[t * 2] == want.ids[0]);
    CHECK(run.ids[t * 2 + 1] == want.ids[1]);
    for (int j = 0; j < 2; ++j) CHECK(weight_close(run.w[t * 2 + j], want.w[j], DType::kBF16));
    // A tie decided the selection when the k-th logit has an equal logit among the rest.
    const double kth = x[t * 32 + want.ids[1]];
    int equal = 0;
    for (int e = 0; e < 32; ++e) equal += x[t * 32 + e] == kth;
    rows_with_tie += equal > 1;
  }
  CHECK(rows_with_tie > T / 2);  // the test really exercises ties
}

TEST_CASE("moe_route presets follow the spec table", "[reference][moe]") {
  using SF = moe::ScoreFunc;
  using ST = moe::ScoreTiming;
  struct Row {
    moe::RoutePolicy p;
    int E, k;
    SF sf;
    ST st;
    bool bias;
    int ng, tg;
    bool renorm;
    float eps, scale;
    moe::WeightSite site;
  };
  const auto out = moe::WeightSite::kOutput;
  const Row rows[] = {
      {moe::presets::minimax_text_01(), 32, 2, SF::kSoftmax, ST::kBeforeTopK, false, 1, 1, true, 0, 1, out},
      {moe::presets::mixtral(), 8, 2, SF::kSoftmax, ST::kBeforeTopK, false, 1, 1, true, 0, 1, out},
      {moe::presets::qwen3_moe(), 128, 8, SF::kSoftmax, ST::kBeforeTopK, false, 1, 1, true, 0, 1, out},
      {moe::presets::qwen2_moe(), 60, 4, SF::kSoftmax, ST::kBeforeTopK, false, 1, 1, false, 0, 1, out},
      {moe::presets::deepseek_v3(), 256, 8, SF::kSigmoid, ST::kBeforeTopK, true, 8, 4, true, 1e-20f, 2.5f, out},
      {moe::presets::kimi_k2(), 384, 8, SF::kSigmoid, ST::kBeforeTopK, true, 1, 1, true, 1e-20f, 2.827f, out},
      {moe::presets::minimax_m2(), 256, 8, SF::kSigmoid, ST::kBeforeTopK, true, 1, 1, true, 1e-20f, 1, out},
      {moe::presets::llama4(), 16, 1, SF::kSigmoid, ST::kAfterTopK, false, 1, 1, false, 0, 1, moe::WeightSite::kInput},
      {moe::presets::gpt_oss(), 32, 4, SF::kSoftmax, ST::kAfterTopK, false, 1, 1, false, 0, 1, out},
  };
  for (const auto& r : rows) {
    CAPTURE(r.E, r.k);
    CHECK(moe::validate(r.p).is_ok());
    CHECK(r.p.num_experts == r.E);
    CHECK(r.p.top_k == r.k);
    CHECK(r.p.score_func == r.sf);
    CHECK(r.p.score_timing == r.st);
    CHECK(r.p.selection_bias == r.bias);
    CHECK(r.p.n_group == r.ng);
    CHECK(r.p.topk_group == r.tg);
    CHECK(r.p.renormalize == r.renorm);
    CHECK(r.p.renorm_eps == r.eps);
    CHECK(r.p.scaling_factor == r.scale);
    CHECK(r.p.weight_site == r.site);
  }
  CHECK(moe::validate(moe::presets::llama4(128)).is_ok());
  CHECK(moe::validate(moe::presets::gpt_oss(128)).is_ok());
  CHECK(moe::validate(moe::presets::qwen2_moe(64, 8)).is_ok());
}

TEST_CASE("moe_route validate rejects bad input and touches no output", "[reference][moe]") {
  const int32_t E = 16, k = 4;
  const int64_t T = 3;
  std::vector<float> x(T * E, 0.5f);
  std::vector<float> bias(E, 0.0f);
  std::vector<int32_t> ids(T * k), counts(E);
  std::vector<float> w(T * k);
  moe::RouteParams good;
  good.policy = moe::presets::deepseek_v3();
  good.policy.num_experts = E;
  good.policy.n_group = 4;
  good.policy.topk_group = 2;
  good.policy.top_k = k;
  good.logits = x.data();
  good.logits_row_stride = E;
  good.bias = bias.data();
  good.num_tokens = T;
  good.topk_ids = ids.data();
  good.topk_weights = w.data();
  good.expert_counts = counts.data();
  REQUIRE(moe::validate(good).is_ok());

  struct Bad {
    const char* what;
    void (*mutate)(moe::RouteParams&);
  };
  const Bad bads[] = {
      {"E = 0", [](moe::RouteParams& p) { p.policy.num_experts = 0; }},
      {"E too large", [](moe::RouteParams& p) { p.policy.num_experts = moe::kMaxExperts + 16; }},
      {"k = 0", [](moe::RouteParams& p) { p.policy.top_k = 0; }},
      {"k = 33", [](moe::RouteParams& p) { p.policy.top_k = 33; }},
      {"k > E", [](moe::RouteParams& p) { p.policy.top_k = 17; }},
      {"n_group not dividing", [](moe::RouteParams& p) { p.policy.n_group = 3; }},
      {"n_group = 0", [](moe::RouteParams& p) { p.policy.n_group = 0; }},
      {"topk_group > n_group", [](moe::RouteParams& p) { p.policy.topk_group = 5; }},
      {"kept groups too small",  // 1 group of 4 experts cannot hold k = 5
       [](moe::RouteParams& p) { p.policy.topk_group = 1, p.policy.top_k = 5; }},
      {"negative eps", [](moe::RouteParams& p) { p.policy.renorm_eps = -1e-6f; }},
      {"NaN eps", [](moe::RouteParams& p) { p.policy.renorm_eps = std::nanf(""); }},
      {"inf scale", [](moe::RouteParams& p) { p.policy.scaling_factor = INFINITY; }},
      {"bad score enum", [](moe::RouteParams& p) { p.policy.score_func = moe::ScoreFunc(7); }},
      {"bad timing enum", [](moe::RouteParams& p) { p.policy.score_timing = moe::ScoreTiming(2); }},
      {"T < 0", [](moe::RouteParams& p) { p.num_tokens = -1; }},
      {"stride < E", [](moe::RouteParams& p) { p.logits_row_stride = E - 1; }},
      {"null logits", [](moe::RouteParams& p) { p.logits = nullptr; }},
      {"null ids", [](moe::RouteParams& p) { p.topk_ids = nullptr; }},
      {"null weights", [](moe::RouteParams& p) { p.topk_weights = nullptr; }},
      {"missing bias", [](moe::RouteParams& p) { p.bias = nullptr; }},
      {"stray bias", [](moe::RouteParams& p) { p.policy.selection_bias = false; }},
      {"f16 weights", [](moe::RouteParams& p) { p.weights_dtype = DType::kF16; }},
      {"bad logits dtype", [](moe::RouteParams& p) { p.logits_dtype = DType(9); }},
  };
  for (const auto& b : bads) {
    CAPTURE(b.what);
    fulgur_test::poison(ids), fulgur_test::poison(w), fulgur_test::poison(counts);
    const auto ids0 = ids;
    const auto counts0 = counts;
    std::vector<unsigned char> w0(w.size() * 4);
    std::memcpy(w0.data(), w.data(), w0.size());
    moe::RouteParams p = good;
    b.mutate(p);
    const auto st = moe::validate(p);
    CHECK(st.code() == cudaErrorInvalidValue);
    CHECK(std::strlen(st.reason()) > 10);
    const auto st2 = ref::moe_route(p);
    CHECK(st2.code() == cudaErrorInvalidValue);
    CHECK(ids == ids0);
    CHECK(counts == counts0);
    CHECK(std::memcmp(w.data(), w0.data(), w0.size()) == 0);
  }
  // T == 0 is valid with null tensors and writes only zero counts.
  moe::RouteParams empty = good;
  empty.num_tokens = 0;
  empty.logits = nullptr, empty.topk_ids = nullptr, empty.topk_weights = nullptr;
  fulgur_test::poison(counts);
  CHECK(ref::moe_route(empty).is_ok());
  CHECK(counts == std::vector<int32_t>(E, 0));
}

// ==========================================================================================
// Permutation
// ==========================================================================================

namespace {

// topk_ids with a skewed expert popularity (weights ~ 1/(e+1)^1.2 after a random relabeling, so
// some experts get many rows, several none). distinct: the k experts of a token differ, as
// routing produces; otherwise duplicates are allowed (the permutation must not care).
std::vector<int32_t> skewed_ids(fulgur_test::Rng& rng, int64_t T, int32_t k, int32_t E, bool distinct) {
  std::vector<int32_t> label(E);
  std::iota(label.begin(), label.end(), 0);
  std::shuffle(label.begin(), label.end(), rng.gen);
  std::vector<double> pw(E);
  for (int32_t e = 0; e < E; ++e) pw[e] = std::pow(e + 1.0, -1.2);
  std::discrete_distribution<int32_t> pick(pw.begin(), pw.end());
  std::vector<int32_t> ids(T * k);
  for (int64_t t = 0; t < T; ++t) {
    std::set<int32_t> used;
    for (int32_t j = 0; j < k; ++j) {
      int32_t e;
      do e = label[pick(rng.gen)];
      while (distinct && used.count(e));
      used.insert(e);
      ids[t * k + j] = e;
    }
  }
  return ids;
}

}  // namespace

TEST_CASE("moe_permute: offsets, inverse maps, (t, j) order, padded, masked and EP views", "[reference][moe]") {
  fulgur_test::Rng rng("moe_permute invariants");
  FULGUR_INFO_SEED(rng);
  struct Cfg {
    int64_t T;
    int32_t k, E, M, R, cap;
    bool distinct;
  };
  const Cfg cfgs[] = {
      {0, 2, 8, 16, 2, 4, true},        {1, 1, 8, 16, 1, 1, true},       {37, 2, 8, 16, 4, 5, true},
      {300, 8, 60, 64, 6, 30, true},    {129, 4, 257, 128, 1, 3, true},  {64, 8, 256, 32, 8, 10, true},
      {50, 32, 1024, 256, 16, 2, true}, {200, 22, 512, 16, 8, 12, true}, {90, 6, 16, 48, 4, 40, false},
  };
  for (const auto& c : cfgs) {
    CAPTURE(c.T, c.k, c.E, c.M, c.R, c.cap);
    const int64_t rows = c.T * c.k;
    const int32_t sentinel = static_cast<int32_t>(rows);
    const auto ids = skewed_ids(rng, c.T, c.k, c.E, c.distinct);
    const int64_t pcap = moe::tile_padded_capacity(c.T, c.k, c.E, c.M);
    const int64_t tcap = moe::tile_count_capacity(c.T, c.k, c.E, c.M);
    std::vector<int64_t> off(c.E + 1);
    std::vector<int32_t> e2p(rows), p2e(rows), sorted(pcap), tiles(tcap), npp(1),
        masked(static_cast<size_t>(c.E) * c.cap), mcount(c.E), mover(1), send(c.R), local(rows);
    std::vector<uint8_t> in_rank(c.T * c.R);
    for (auto* v : {&e2p, &p2e, &sorted, &tiles, &npp, &masked, &mcount, &mover, &send, &local}) poison_any(*v);
    poison_any(off), poison_any(in_rank);

    moe::PermuteParams p;
    p.topk_ids = ids.data();
    p.num_tokens = c.T;
    p.top_k = c.k;
    p.num_experts = c.E;
    p.expert_first_token_offset = off.data();
    p.expanded_to_permuted = e2p.data();
    p.permuted_to_expanded = p2e.data();
    p.tile_m = c.M;
    p.sorted_token_ids = sorted.data();
    p.tile_expert_ids = tiles.data();
    p.num_tokens_post_padded = npp.data();
    p.masked_capacity = c.cap;
    p.masked_expanded = masked.data();
    p.masked_counts = mcount.data();
    p.masked_overflow = mover.data();
    p.num_ranks = c.R;
    p.rank_send_counts = send.data();
    p.token_in_rank = in_rank.data();
    p.local_expert_of_row = local.data();
    REQUIRE(ref::moe_permute(p).is_ok());

    // Independent construction: counting sort, one bucket per expert filled by increasing
    // expanded index.
    std::vector<std::vector<int32_t>> bucket(c.E);
    for (int64_t i = 0; i < rows; ++i) bucket[ids[i]].push_back(static_cast<int32_t>(i));

    // Offsets: start at 0, monotone, segment sizes = bucket sizes, total T*k.
    CHECK(off[0] == 0);
    for (int32_t e = 0; e < c.E; ++e) {
      CHECK(off[e + 1] >= off[e]);
      CHECK(off[e + 1] - off[e] == static_cast<int64_t>(bucket[e].size()));
    }
    CHECK(off[c.E] == rows);

    // Maps: inverse bijections; each row holds its expert's entries in increasing (t, j) order,
    // equal to the counting sort.
    std::vector<int32_t> want_order;
    for (const auto& b : bucket) want_order.insert(want_order.end(), b.begin(), b.end());
    CHECK(p2e == want_order);
    std::vector<char> seen(rows, 0);
    for (int64_t r = 0; r < rows; ++r) {
      REQUIRE(p2e[r] >= 0);
      REQUIRE(p2e[r] < rows);
      CHECK(!seen[p2e[r]]);  // every (t, j) exactly once
      seen[p2e[r]] = 1;
      CHECK(e2p[p2e[r]] == r);
    }
    for (int64_t i = 0; i < rows; ++i) CHECK(p2e[e2p[i]] == i);
    for (int32_t e = 0; e < c.E; ++e)
      for (int64_t r = off[e]; r < off[e + 1]; ++r) {
        CHECK(ids[p2e[r]] == e);
        if (r > off[e]) CHECK(p2e[r] > p2e[r - 1]);  // (t, j) order = increasing flat index
      }

    // Tile-padded view, built independently: each expert's bucket then sentinels up to a
    // multiple of M; one tile id per M rows; the rest of the buffers sentinel / -1.
    std::vector<int32_t> want_sorted, want_tiles;
    for (int32_t e = 0; e < c.E; ++e) {
      if (bucket[e].empty()) continue;
      want_sorted.insert(want_sorted.end(), bucket[e].begin(), bucket[e].end());
      while (want_sorted.size() % c.M) want_sorted.push_back(sentinel);
      while (want_tiles.size() * c.M < want_sorted.size()) want_tiles.push_back(e);
    }
    CHECK(npp[0] == static_cast<int32_t>(want_sorted.size()));
    CHECK(npp[0] % c.M == 0);
    CHECK(npp[0] <= pcap);
    want_sorted.resize(pcap, sentinel);
    want_tiles.resize(tcap, -1);
    CHECK(sorted == want_sorted);
    CHECK(tiles == want_tiles);
    // And its invariants stated directly: every real entry of tile b belongs to tile_expert_ids[b].
    for (int64_t s = 0; s < npp[0]; ++s)
      if (sorted[s] != sentinel) CHECK(ids[sorted[s]] == tiles[s / c.M]);

    // Masked view: the first min(count, cap) rows of each expert, the rest sentinel; overflow is
    // the number of rows beyond the capacity (documented: the last rows in (t, j) order drop).
    int64_t dropped = 0;
    for (int32_t e = 0; e < c.E; ++e) {
      const int64_t n = bucket[e].size();
      CHECK(mcount[e] == std::min<int64_t>(n, c.cap));
      for (int32_t s = 0; s < c.cap; ++s) CHECK(masked[e * c.cap + s] == (s < n ? bucket[e][s] : sentinel));
      dropped += std::max<int64_t>(0, n - c.cap);
    }
    CHECK(mover[0] == dropped);

    // EP: distinct tokens per rank (a token counted once per rank), token_in_rank, local ids.
    const int32_t per = c.E / c.R;
    std::vector<std::set<int64_t>> tokens_of_rank(c.R);
    for (int64_t i = 0; i < rows; ++i) tokens_of_rank[ids[i] / per].insert(i / c.k);
    for (int32_t r = 0; r < c.R; ++r) {
      CHECK(send[r] == static_cast<int32_t>(tokens_of_rank[r].size()));
      for (int64_t t = 0; t < c.T; ++t) CHECK(in_rank[t * c.R + r] == (tokens_of_rank[r].count(t) ? 1 : 0));
    }
    for (int64_t r = 0; r < rows; ++r) {
      const int32_t e = ids[p2e[r]];
      CHECK(local[r] == e % per);
      CHECK(local[r] >= 0);
      CHECK(local[r] < per);
    }
    // Rank r's rows are the contiguous block [off[r*per], off[(r+1)*per]).
    for (int32_t r = 0; r < c.R; ++r)
      for (int64_t row = off[r * per]; row < off[(r + 1) * per]; ++row) CHECK(ids[p2e[row]] / per == r);
  }
}

TEST_CASE("moe_permute validate rejects bad input and touches no output", "[reference][moe]") {
  const int64_t T = 5;
  const int32_t k = 2, E = 8, M = 16;
  std::vector<int32_t> ids = {0, 1, 2, 3, 4, 5, 6, 7, 1, 2};
  std::vector<int64_t> off(E + 1);
  std::vector<int32_t> e2p(T * k), sorted(moe::tile_padded_capacity(T, k, E, M)),
      tiles(moe::tile_count_capacity(T, k, E, M)), npp(1), masked(E * 2), mcount(E), send(4);
  moe::PermuteParams good;
  good.topk_ids = ids.data();
  good.num_tokens = T;
  good.top_k = k;
  good.num_experts = E;
  good.expert_first_token_offset = off.data();
  good.expanded_to_permuted = e2p.data();
  good.tile_m = M;
  good.sorted_token_ids = sorted.data();
  good.tile_expert_ids = tiles.data();
  good.num_tokens_post_padded = npp.data();
  good.masked_capacity = 2;
  good.masked_expanded = masked.data();
  good.masked_counts = mcount.data();
  good.num_ranks = 4;
  good.rank_send_counts = send.data();
  REQUIRE(moe::validate(good).is_ok());
  struct Bad {
    const char* what;
    void (*mutate)(moe::PermuteParams&);
  };
  static std::vector<int32_t> bad_ids = {0, 1, 2, 3, 4, 5, 6, 8, 1, 2};  // 8 is out of range
  static std::vector<int32_t> neg_ids = {0, 1, 2, 3, 4, -1, 6, 7, 1, 2};
  static int32_t spare = 0;
  const Bad bads[] = {
      {"k = 0", [](moe::PermuteParams& p) { p.top_k = 0; }},
      {"k = 33", [](moe::PermuteParams& p) { p.top_k = 33; }},
      {"E = 0", [](moe::PermuteParams& p) { p.num_experts = 0; }},
      {"T < 0", [](moe::PermuteParams& p) { p.num_tokens = -2; }},
      {"T*k overflows int32", [](moe::PermuteParams& p) { p.num_tokens = int64_t(1) << 31; }},
      {"null offsets", [](moe::PermuteParams& p) { p.expert_first_token_offset = nullptr; }},
      {"null ids", [](moe::PermuteParams& p) { p.topk_ids = nullptr; }},
      {"partial tile view", [](moe::PermuteParams& p) { p.tile_expert_ids = nullptr; }},
      {"tile_m = 8", [](moe::PermuteParams& p) { p.tile_m = 8; }},
      {"tile_m = 24", [](moe::PermuteParams& p) { p.tile_m = 24; }},
      {"tile_m = 512", [](moe::PermuteParams& p) { p.tile_m = 512; }},
      {"partial masked view", [](moe::PermuteParams& p) { p.masked_counts = nullptr; }},
      {"capacity 0", [](moe::PermuteParams& p) { p.masked_capacity = 0; }},
      {"overflow without masked view",
       [](moe::PermuteParams& p) {
         p.masked_expanded = nullptr, p.masked_counts = nullptr, p.masked_overflow = &spare;
       }},
      {"R = 0", [](moe::PermuteParams& p) { p.num_ranks = 0; }},
      {"R not dividing E", [](moe::PermuteParams& p) { p.num_ranks = 3; }},
      {"id out of range (data)", [](moe::PermuteParams& p) { p.topk_ids = bad_ids.data(); }},
      {"negative id (data)", [](moe::PermuteParams& p) { p.topk_ids = neg_ids.data(); }},
  };
  for (const auto& b : bads) {
    CAPTURE(b.what);
    fulgur_test::poison(off), fulgur_test::poison(e2p), fulgur_test::poison(sorted);
    fulgur_test::poison(tiles), fulgur_test::poison(npp), fulgur_test::poison(masked);
    fulgur_test::poison(mcount), fulgur_test::poison(send);
    const auto off0 = off;
    const auto e2p0 = e2p, sorted0 = sorted, tiles0 = tiles, npp0 = npp, masked0 = masked, mcount0 = mcount,
               send0 = send;
    moe::PermuteParams p = good;
    b.mutate(p);
    const auto st = ref::moe_permute(p);
    CHECK(st.code() == cudaErrorInvalidValue);
    CHECK(std::strlen(st.reason()) > 10);
    CHECK(off == off0);
    CHECK(e2p == e2p0);
    CHECK(sorted == sorted0);
    CHECK(tiles == tiles0);
    CHECK(npp == npp0);
    CHECK(masked == masked0);
    CHECK(mcount == mcount0);
    CHECK(send == send0);
  }
}

// ==========================================================================================
// Gather and combine
// ==========================================================================================

TEST_CASE("moe_gather matches the direct formula for every layout and dtype", "[reference][moe]") {
  fulgur_test::Rng rng("moe_gather");
  FULGUR_INFO_SEED(rng);
  const int64_t T = 13, H = 40;
  const int32_t k = 3, E = 6, M = 16;
  const auto ids = skewed_ids(rng, T, k, E, true);
  // Row maps from the permutation: compact (T*k rows) and tile-padded (with sentinels).
  const int64_t pcap = moe::tile_padded_capacity(T, k, E, M);
  std::vector<int64_t> off(E + 1);
  std::vector<int32_t> p2e(T * k), sorted(pcap), tiles(moe::tile_count_capacity(T, k, E, M)), npp(1);
  moe::PermuteParams pp;
  pp.topk_ids = ids.data(), pp.num_tokens = T, pp.top_k = k, pp.num_experts = E;
  pp.expert_first_token_offset = off.data(), pp.permuted_to_expanded = p2e.data();
  pp.tile_m = M, pp.sorted_token_ids = sorted.data(), pp.tile_expert_ids = tiles.data();
  pp.num_tokens_post_padded = npp.data();
  REQUIRE(ref::moe_permute(pp).is_ok());
  REQUIRE(npp[0] > T * k);  // there are padding rows to check

  const DType dts[] = {DType::kF32, DType::kF16, DType::kBF16};
  for (DType in_dt : dts)
    for (DType out_dt : dts)
      for (int scale = 0; scale < 2; ++scale)
        for (int layout = 0; layout < 2; ++layout) {
          CAPTURE(fulgur::dtype_name(in_dt), fulgur::dtype_name(out_dt), scale, layout);
          const int64_t in_stride = H + 5, out_stride = H + 2;
          Buf hidden(in_dt, T * in_stride);
          for (size_t i = 0; i < hidden.n; ++i) hidden.set(i, rng.normal());
          Buf w(DType::kF32, T * k);
          for (size_t i = 0; i < w.n; ++i) w.set(i, rng.uniform(0.05, 0.6));
          const std::vector<int32_t>& map = layout ? sorted : p2e;
          const int64_t nrows = layout ? npp[0] : T * k;
          Buf out(out_dt, nrows * out_stride);
          out.poison();
          moe::GatherParams g;
          g.hidden = hidden.data(), g.hidden_dtype = in_dt, g.hidden_row_stride = in_stride;
          g.num_tokens = T, g.top_k = k, g.hidden_size = H;
          g.row_map = map.data(), g.num_rows = nrows;
          g.scale_by_weight = scale != 0;
          g.topk_weights = w.data(), g.weights_dtype = DType::kF32;
          g.out = out.data(), g.out_dtype = out_dt, g.out_row_stride = out_stride;
          REQUIRE(ref::moe_gather(g).is_ok());
          for (int64_t r = 0; r < nrows; ++r) {
            const int64_t i = map[r];
            for (int64_t h = 0; h < H; ++h) {
              const double got = out.get(r * out_stride + h);
              if (i == T * k) {
                REQUIRE(got == 0.0);  // sentinel rows are zero rows
                continue;
              }
              // Exact value: the product of two stored values (exact in fp64: <= 24 + 24 bits).
              const double want = (scale ? w.get(i) : 1.0) * hidden.get((i / k) * in_stride + h);
              // Unscaled copies to the same or a wider dtype are exact. Otherwise one rounding to
              // out_dt: fp32 directly (<= 2^-24 relative); fp16 / bf16 via float (half an ulp plus
              // 2^-24 relative), plus half the fp16 subnormal spacing (2^-25) for tiny values.
              const bool exact_copy = !scale && (out_dt == DType::kF32 || out_dt == in_dt);
              double tol = 0.0;
              if (!exact_copy) {
                tol = (half_ulp(out_dt) + (out_dt == DType::kF32 ? 0.0 : std::ldexp(1.0, -24))) * std::fabs(want) +
                      (out_dt == DType::kF16 ? std::ldexp(1.0, -25) : 0.0);
              }
              REQUIRE(std::fabs(got - want) <= tol);
            }
          }
        }
}

TEST_CASE("moe_combine matches the direct formula (maps, null weights, residual, in place)", "[reference][moe]") {
  fulgur_test::Rng rng("moe_combine");
  FULGUR_INFO_SEED(rng);
  const int64_t T = 11, H = 33;
  const int32_t k = 4, E = 10;
  const auto ids = skewed_ids(rng, T, k, E, true);
  std::vector<int64_t> off(E + 1);
  std::vector<int32_t> e2p(T * k);
  moe::PermuteParams pp;
  pp.topk_ids = ids.data(), pp.num_tokens = T, pp.top_k = k, pp.num_experts = E;
  pp.expert_first_token_offset = off.data(), pp.expanded_to_permuted = e2p.data();
  REQUIRE(ref::moe_permute(pp).is_ok());

  for (int variant = 0; variant < 6; ++variant) {
    // 0: compact map, f32 weights, f32 out; 1: identity map (null), bf16 weights, bf16 out;
    // 2: null weights (input-site models); 3: residual with scale and per-token gate, f16 out;
    // 4: dropped rows (negative map entries); 5: in-place add into the residual (out == residual).
    CAPTURE(variant);
    const DType y_dt = variant % 2 ? DType::kBF16 : DType::kF32;
    const DType w_dt = variant == 1 ? DType::kBF16 : DType::kF32;
    const DType out_dt = variant == 1 ? DType::kBF16 : variant == 3 ? DType::kF16 : DType::kF32;
    const int64_t ystride = H + 7, ostride = H + 1;
    const int64_t yrows = T * k + 3;
    Buf y(y_dt, yrows * ystride);
    for (size_t i = 0; i < y.n; ++i) y.set(i, rng.normal());
    Buf w(w_dt, T * k);
    for (size_t i = 0; i < w.n; ++i) w.set(i, rng.uniform(0.05, 0.5));
    std::vector<int32_t> map = e2p;
    if (variant == 4)
      for (int64_t i = 0; i < T * k; i += 5) map[i] = -1;
    const bool with_res = variant == 3 || variant == 5;
    Buf res(out_dt, T * ostride);
    for (size_t i = 0; i < res.n; ++i) res.set(i, rng.normal(0.0, 2.0));
    const Buf res0 = res;  // a copy: variant 5 overwrites res
    std::vector<float> gate(T);
    for (float& g : gate) g = static_cast<float>(rng.uniform(0.1, 0.9));
    Buf out(out_dt, T * ostride);
    out.poison();

    moe::CombineParams c;
    c.expert_out = y.data(), c.expert_out_dtype = y_dt, c.expert_out_row_stride = ystride;
    c.num_expert_rows = yrows;
    c.num_tokens = T, c.top_k = k, c.hidden_size = H;
    c.expanded_to_row = variant == 1 ? nullptr : map.data();
    c.topk_weights = variant == 2 ? nullptr : w.data();
    c.weights_dtype = w_dt;
    if (with_res) {
      c.residual = res.data(), c.residual_dtype = out_dt, c.residual_row_stride = ostride;
      c.residual_scale = 0.75f;
      c.residual_token_scale = variant == 3 ? gate.data() : nullptr;
    }
    c.out = variant == 5 ? res.data() : out.data();
    c.out_dtype = out_dt, c.out_row_stride = ostride;
    REQUIRE(ref::moe_combine(c).is_ok());
    const Buf& result = variant == 5 ? res : out;

    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        double want = 0, mag = 0;
        for (int32_t j = 0; j < k; ++j) {
          const int64_t i = t * k + j;
          const int64_t row = variant == 1 ? i : map[i];
          if (row < 0) continue;
          const double term = (variant == 2 ? 1.0 : w.get(i)) * y.get(row * ystride + h);
          want += term, mag += std::fabs(term);
        }
        if (with_res) {
          const double term = 0.75 * (variant == 3 ? gate[t] : 1.0) * res0.get(t * ostride + h);
          want += term, mag += std::fabs(term);
        }
        // Both sums are fp64 over the same <= 5 terms (error <= 5 * 2^-53 * mag), then one
        // rounding to out_dt: |err| <= 2 * half_ulp(out) * |want| + 1e-14 * mag, plus 2^-25
        // for fp16 subnormals.
        const double tol =
            2 * half_ulp(out_dt) * std::fabs(want) + 1e-14 * mag + (out_dt == DType::kF16 ? std::ldexp(1.0, -25) : 0.0);
        REQUIRE(std::fabs(result.get(t * ostride + h) - want) <= tol);
      }
    // Padding columns of out are never written.
    if (variant != 5)
      for (int64_t t = 0; t < T; ++t) CHECK(std::isnan(out.get(t * ostride + H)));
  }
}

TEST_CASE("moe route -> permute -> gather -> experts -> combine equals the direct MoE formula", "[reference][moe]") {
  // Expert e is the linear map y = c_e * x with c_e = 1 + e/8, so the MoE output is known in
  // closed form: out[t] = sum_j w[t,j] * c_{id[t,j]} * x[t] (output site), and
  // out[t] = sum_j c_{id[t,j]} * (w[t,j] * x[t]) for the input site (Llama-4): the same value.
  fulgur_test::Rng rng("moe pipeline");
  FULGUR_INFO_SEED(rng);
  for (int site = 0; site < 2; ++site) {
    CAPTURE(site);
    auto pol = site ? moe::presets::llama4(16) : moe::presets::qwen3_moe();
    pol.num_experts = 16;
    if (!site) pol.top_k = 4;
    const int32_t E = pol.num_experts, k = pol.top_k;
    const int64_t T = 20, H = 24;
    std::vector<double> logits(T * E);
    for (int64_t t = 0; t < T; ++t) {
      auto row = perm_logits(rng, E);
      std::copy(row.begin(), row.end(), logits.begin() + t * E);
    }
    auto run = run_route(pol, logits, T);
    REQUIRE(run.status.is_ok());
    std::vector<float> w(run.w.begin(), run.w.end());

    std::vector<int64_t> off(E + 1);
    std::vector<int32_t> e2p(T * k), p2e(T * k);
    moe::PermuteParams pp;
    pp.topk_ids = run.ids.data(), pp.num_tokens = T, pp.top_k = k, pp.num_experts = E;
    pp.expert_first_token_offset = off.data(), pp.expanded_to_permuted = e2p.data();
    pp.permuted_to_expanded = p2e.data();
    REQUIRE(ref::moe_permute(pp).is_ok());

    std::vector<double> x(T * H), xp(T * k * H), y(T * k * H), out(T * H);
    for (double& v : x) v = rng.normal();
    moe::GatherParams g;
    g.hidden = x.data(), g.hidden_dtype = DType::kF64, g.hidden_row_stride = H;
    g.num_tokens = T, g.top_k = k, g.hidden_size = H;
    g.row_map = p2e.data(), g.num_rows = T * k;
    g.scale_by_weight = site == 1, g.topk_weights = w.data();
    g.out = xp.data(), g.out_dtype = DType::kF64, g.out_row_stride = H;
    REQUIRE(ref::moe_gather(g).is_ok());
    // The grouped "GEMM": rows of expert e are [off[e], off[e+1]).
    for (int32_t e = 0; e < E; ++e)
      for (int64_t r = off[e]; r < off[e + 1]; ++r)
        for (int64_t h = 0; h < H; ++h) y[r * H + h] = (1.0 + e / 8.0) * xp[r * H + h];
    moe::CombineParams c;
    c.expert_out = y.data(), c.expert_out_dtype = DType::kF64, c.expert_out_row_stride = H;
    c.num_expert_rows = T * k, c.num_tokens = T, c.top_k = k, c.hidden_size = H;
    c.expanded_to_row = e2p.data();
    c.topk_weights = site ? nullptr : w.data();
    c.out = out.data(), c.out_dtype = DType::kF64, c.out_row_stride = H;
    REQUIRE(ref::moe_combine(c).is_ok());
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h) {
        double want = 0, mag = 0;
        for (int32_t j = 0; j < k; ++j) {
          const double term = w[t * k + j] * (1.0 + run.ids[t * k + j] / 8.0) * x[t * H + h];
          want += term, mag += std::fabs(term);
        }
        // All fp64 with <= 3 roundings per term and k terms: 1e-14 * magnitude is ample.
        CHECK(std::fabs(out[t * H + h] - want) <= 1e-14 * mag + 1e-300);
      }
  }
}

TEST_CASE("moe_gather and moe_combine validate reject bad input and touch no output", "[reference][moe]") {
  const int64_t T = 2, H = 8;
  const int32_t k = 2;
  std::vector<float> hidden(T * H, 1.0f), w(T * k, 0.5f), y(T * k * H, 1.0f), out(T * k * H);
  std::vector<int32_t> map = {0, 1, 2, 3};
  moe::GatherParams g;
  g.hidden = hidden.data(), g.hidden_dtype = DType::kF32, g.hidden_row_stride = H;
  g.num_tokens = T, g.top_k = k, g.hidden_size = H;
  g.row_map = map.data(), g.num_rows = T * k;
  g.scale_by_weight = true, g.topk_weights = w.data();
  g.out = out.data(), g.out_dtype = DType::kF32, g.out_row_stride = H;
  REQUIRE(moe::validate(g).is_ok());
  static std::vector<int32_t> bad_map = {0, 1, 5, 3};  // 5 > T*k = 4
  static std::vector<int32_t> neg_map = {0, -1, 2, 3};
  struct BadG {
    const char* what;
    void (*mutate)(moe::GatherParams&);
  };
  const BadG gbads[] = {
      {"H = 0", [](moe::GatherParams& p) { p.hidden_size = 0; }},
      {"hidden stride < H", [](moe::GatherParams& p) { p.hidden_row_stride = 4; }},
      {"out stride < H", [](moe::GatherParams& p) { p.out_row_stride = 7; }},
      {"null map", [](moe::GatherParams& p) { p.row_map = nullptr; }},
      {"null out", [](moe::GatherParams& p) { p.out = nullptr; }},
      {"null hidden", [](moe::GatherParams& p) { p.hidden = nullptr; }},
      {"null weights with scaling", [](moe::GatherParams& p) { p.topk_weights = nullptr; }},
      {"f16 weights", [](moe::GatherParams& p) { p.weights_dtype = DType::kF16; }},
      {"bad out dtype", [](moe::GatherParams& p) { p.out_dtype = DType(11); }},
      {"k = 0", [](moe::GatherParams& p) { p.top_k = 0; }},
      {"rows < 0", [](moe::GatherParams& p) { p.num_rows = -1; }},
      {"map entry > T*k (data)", [](moe::GatherParams& p) { p.row_map = bad_map.data(); }},
      {"negative map entry (data)", [](moe::GatherParams& p) { p.row_map = neg_map.data(); }},
  };
  for (const auto& b : gbads) {
    CAPTURE(b.what);
    fulgur_test::poison(out);
    std::vector<unsigned char> before(out.size() * 4);
    std::memcpy(before.data(), out.data(), before.size());
    moe::GatherParams p = g;
    b.mutate(p);
    const auto st = ref::moe_gather(p);
    CHECK(st.code() == cudaErrorInvalidValue);
    CHECK(std::strlen(st.reason()) > 10);
    CHECK(std::memcmp(out.data(), before.data(), before.size()) == 0);
  }

  std::vector<float> res(T * H, 2.0f), gate(T, 0.5f);
  std::vector<int32_t> e2r = {0, 1, 2, 3};
  moe::CombineParams c;
  c.expert_out = y.data(), c.expert_out_dtype = DType::kF32, c.expert_out_row_stride = H;
  c.num_expert_rows = T * k, c.num_tokens = T, c.top_k = k, c.hidden_size = H;
  c.expanded_to_row = e2r.data();
  c.topk_weights = w.data(), c.weights_dtype = DType::kF32;
  c.residual = res.data(), c.residual_dtype = DType::kF32, c.residual_row_stride = H;
  c.residual_token_scale = gate.data();
  c.out = out.data(), c.out_dtype = DType::kF32, c.out_row_stride = H;
  REQUIRE(moe::validate(c).is_ok());
  static std::vector<int32_t> bad_e2r = {0, 1, 4, 3};  // 4 >= num_expert_rows
  struct BadC {
    const char* what;
    void (*mutate)(moe::CombineParams&);
  };
  const BadC cbads[] = {
      {"H = 0", [](moe::CombineParams& p) { p.hidden_size = 0; }},
      {"y stride < H", [](moe::CombineParams& p) { p.expert_out_row_stride = 3; }},
      {"out stride < H", [](moe::CombineParams& p) { p.out_row_stride = 3; }},
      {"residual stride < H", [](moe::CombineParams& p) { p.residual_row_stride = 3; }},
      {"identity map with too few rows",
       [](moe::CombineParams& p) { p.expanded_to_row = nullptr, p.num_expert_rows = 3; }},
      {"null out", [](moe::CombineParams& p) { p.out = nullptr; }},
      {"null y", [](moe::CombineParams& p) { p.expert_out = nullptr; }},
      {"NaN residual scale", [](moe::CombineParams& p) { p.residual_scale = std::nanf(""); }},
      {"token scale without residual", [](moe::CombineParams& p) { p.residual = nullptr; }},
      {"alias with another stride", [](moe::CombineParams& p) { p.residual = p.out, p.residual_row_stride = 9; }},
      {"bf16 weights flag on f16", [](moe::CombineParams& p) { p.weights_dtype = DType::kF16; }},
      {"map row >= rows (data)", [](moe::CombineParams& p) { p.expanded_to_row = bad_e2r.data(); }},
  };
  for (const auto& b : cbads) {
    CAPTURE(b.what);
    fulgur_test::poison(out);
    std::vector<unsigned char> before(out.size() * 4);
    std::memcpy(before.data(), out.data(), before.size());
    moe::CombineParams p = c;
    b.mutate(p);
    const auto st = ref::moe_combine(p);
    CHECK(st.code() == cudaErrorInvalidValue);
    CHECK(std::strlen(st.reason()) > 10);
    CHECK(std::memcmp(out.data(), before.data(), before.size()) == 0);
  }
}
