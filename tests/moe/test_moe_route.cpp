// SPDX-License-Identifier: Apache-2.0
// fulgur::moe::route against reference::moe_route (fp64): ids and expert counts bit-exact, weights
// within a tolerance derived from fp32 arithmetic. Every preset, E in {8, 32, 60, 128, 160, 257,
// 384, 512, 1024}, k up to 32, T from 1 to 8192; explicit ties, NaN / -inf rows, all-masked
// groups, a negative bias after sigmoid, bias not leaking into the weights, determinism, batch
// invariance, bad input (error returned, outputs untouched).
//
// Inputs are "tie-free" as the spec's peers build them (a random permutation of E values scaled by
// 1/32), with one more condition, checked in fp64 and redrawn when it fails: every decision the
// kernel takes in fp32 (consecutive keys among the k+1 best, consecutive group scores around the
// topk_group-th) is either an exact tie (broken by index on both sides) or separated by more than
// 1e-4 relative, far above fp32 rounding (~1e-7), so exact id equality is a fair demand.
#include <functional>
#include <set>
#include <string>

#include "moe_test.hpp"

namespace {

using namespace moe_test;

// ---- inputs --------------------------------------------------------------------------------------

// The fp64 selection key of the spec (params.hpp steps 1-2), for input conditioning only.
std::vector<double> keys_fp64(const fm::RoutePolicy& pol, const double* x, const float* bias) {
  const int E = pol.num_experts;
  const bool before = pol.score_timing == fm::ScoreTiming::kBeforeTopK;
  std::vector<double> key(E, -kInf);
  double m = -kInf, z = 0;
  auto avail = [&](int e) { return !(std::isnan(x[e]) || x[e] == -kInf); };
  for (int e = 0; e < E; ++e)
    if (avail(e)) m = std::max(m, x[e]);
  for (int e = 0; e < E; ++e)
    if (avail(e)) z += std::exp(x[e] - m);
  for (int e = 0; e < E; ++e) {
    if (!avail(e)) continue;
    double s = x[e];
    if (before && pol.score_func == fm::ScoreFunc::kSoftmax) s = std::exp(x[e] - m) / z;
    if (before && pol.score_func == fm::ScoreFunc::kSigmoid) s = 1 / (1 + std::exp(-x[e]));
    if (bias) s += bias[e];
    key[e] = std::isnan(s) ? -kInf : s;
  }
  return key;
}

// Consecutive values of a descending list: an exact tie or a clear gap.
bool well_separated(std::vector<double> v, size_t upto) {
  std::sort(v.begin(), v.end(), std::greater<double>());
  for (size_t i = 0; i + 1 < v.size() && i < upto; ++i) {
    if (v[i] == v[i + 1] || v[i + 1] == -kInf) continue;
    if (v[i] - v[i + 1] <= 1e-4 * std::max(1.0, std::fabs(v[i]))) return false;
  }
  return true;
}

bool decisions_separated(const fm::RoutePolicy& pol, const double* x, const float* bias) {
  std::vector<double> key = keys_fp64(pol, x, bias);
  const int E = pol.num_experts, G = pol.n_group;
  if (G > 1) {
    const int gs = E / G;
    std::vector<double> gscore(G);
    for (int g = 0; g < G; ++g) {
      std::vector<double> k(key.begin() + g * gs, key.begin() + (g + 1) * gs);
      std::sort(k.begin(), k.end(), std::greater<double>());
      gscore[g] = gs >= 2 ? k[0] + k[1] : k[0];
    }
    if (!well_separated(gscore, static_cast<size_t>(pol.topk_group))) return false;
    std::vector<double> order = gscore;
    std::sort(order.begin(), order.end(), std::greater<double>());
    const double cut = order[pol.topk_group - 1];
    // Keep the groups at or above the cut (a tie at the cut is exact, broken by index alike).
    for (int e = 0; e < E; ++e)
      if (gscore[e / gs] < cut) key[e] = -kInf;
  }
  return well_separated(key, static_cast<size_t>(pol.top_k) + 1);
}

struct Inputs {
  Tensor logits;  // [T, stride]
  int64_t stride = 0;
  std::vector<float> bias;  // [E] or empty
};

// Tie-free rows: a random permutation of E values (v - E/2) / 32, redrawn until every fp32
// decision is clear. In bf16, E > 256 values of step 1/32 collide: the collisions are exact ties,
// which both sides break by index.
Inputs make_inputs(const fm::RoutePolicy& pol, DType dt, int64_t T, int64_t pad, fulgur_test::Rng& rng) {
  const int E = pol.num_experts;
  Inputs in;
  in.stride = E + pad;
  in.logits = Tensor(dt, static_cast<size_t>(T * in.stride));
  if (pol.selection_bias) {
    in.bias.resize(E);
    for (auto& b : in.bias) b = static_cast<float>(rng.normal(0.0, 0.05));
  }
  std::vector<int> perm(E);
  std::vector<double> row(E);
  for (int64_t t = 0; t < T; ++t) {
    for (int attempt = 0;; ++attempt) {
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng.gen);
      for (int e = 0; e < E; ++e) {
        in.logits.set(t * in.stride + e, (perm[e] - E / 2) / 32.0);
        row[e] = in.logits.get(t * in.stride + e);  // as the dtype holds it
      }
      if (decisions_separated(pol, row.data(), in.bias.empty() ? nullptr : in.bias.data())) break;
      REQUIRE(attempt < 200);
    }
    for (int64_t e = E; e < in.stride; ++e) in.logits.set(t * in.stride + e, 1e4);  // would win if read
  }
  return in;
}

// ---- running both sides ----------------------------------------------------------------------------

struct Routed {
  cudaError_t err = cudaSuccess;
  std::vector<int32_t> ids;
  Tensor weights;
  std::vector<int32_t> counts;
};

fm::RouteParams params_for(const fm::RoutePolicy& pol, const Inputs& in, int64_t T, DType wdt) {
  fm::RouteParams p;
  p.policy = pol;
  p.logits_dtype = in.logits.dt;
  p.logits_row_stride = in.stride;
  p.num_tokens = T;
  p.weights_dtype = wdt;
  return p;
}

Routed run_kernel(fm::RouteParams p, const Inputs& in, bool counts) {
  const int64_t T = p.num_tokens;
  const int k = p.policy.top_k;
  auto d_logits = upload(in.logits);
  DeviceBuffer<float> d_bias = in.bias.empty() ? DeviceBuffer<float>() : upload(in.bias);
  auto d_ids = poisoned<int32_t>(static_cast<size_t>(T * k));
  auto d_w = poisoned<unsigned char>(static_cast<size_t>(T * k) * fulgur::dtype_size(p.weights_dtype));
  auto d_counts = poisoned<int32_t>(counts ? static_cast<size_t>(p.policy.num_experts) : 0);
  p.logits = d_logits.data();
  p.bias = in.bias.empty() ? nullptr : d_bias.data();
  p.topk_ids = d_ids.data();
  p.topk_weights = d_w.data();
  p.expert_counts = counts ? d_counts.data() : nullptr;
  Routed r;
  r.err = fm::route(p, nullptr);
  r.ids = download(d_ids);
  r.weights = download(d_w, p.weights_dtype, static_cast<size_t>(T * k));
  r.counts = download(d_counts);
  return r;
}

Routed run_reference(fm::RouteParams p, const Inputs& in, bool counts) {
  const int64_t T = p.num_tokens;
  const int k = p.policy.top_k;
  Routed r;
  r.ids.assign(static_cast<size_t>(T * k), -7);
  r.weights = Tensor(p.weights_dtype, static_cast<size_t>(T * k));
  r.counts.assign(counts ? p.policy.num_experts : 0, -7);
  p.logits = in.logits.data();
  p.bias = in.bias.empty() ? nullptr : in.bias.data();
  p.topk_ids = r.ids.data();
  p.topk_weights = r.weights.data();
  p.expert_counts = counts ? r.counts.data() : nullptr;
  r.err = ref::moe_route(p).code();
  return r;
}

// Relative error bound of a kernel weight (fp32) against the fp64 reference, from the operations
// that form it (u = 2^-24): softmax statistics sum about E/W + log2(W) terms in a fixed tree
// (<= (E/32 + 5) u), exp of x - m errs by |x - m| u from the subtraction plus ~2 ulp of expf, the
// division, the renormalizing sum over <= 32 lanes (5 levels) and its division, and the scale:
// about 2 * spread + E/32 + 16 units; doubled, as a same-precision reference's own error would be.
// A bf16 weight adds its rounding (half an ulp) and the chance that the fp32 value sits on the
// other side of a bf16 rounding boundary: one bf16 ulp.
double weight_tolerance(const fm::RoutePolicy& pol, double spread, DType wdt, double ref) {
  const double units = 2 * spread + pol.num_experts / 32.0 + 16;
  double tol = 2 * units * kU32 * std::fabs(ref);
  if (wdt == DType::kBF16) tol += ulp(DType::kBF16, ref);
  return tol;
}

void check_against_reference(const fm::RoutePolicy& pol, DType dt, DType wdt, int64_t T, int64_t pad, bool counts,
                             const std::string& label) {
  fulgur_test::Rng rng("route " + label);
  FULGUR_INFO_SEED(rng);
  INFO(label << " E=" << pol.num_experts << " k=" << pol.top_k << " T=" << T << " logits " << fulgur::dtype_name(dt)
             << " weights " << fulgur::dtype_name(wdt));
  const Inputs in = make_inputs(pol, dt, T, pad, rng);
  const fm::RouteParams p = params_for(pol, in, T, wdt);
  const Routed want = run_reference(p, in, counts);
  REQUIRE(want.err == cudaSuccess);
  const Routed got = run_kernel(p, in, counts);
  REQUIRE(got.err == cudaSuccess);
  REQUIRE(got.ids == want.ids);  // bit-exact selection and slot order
  if (counts) REQUIRE(got.counts == want.counts);
  const double spread = pol.num_experts / 32.0;
  size_t bad = 0;
  double worst = 0;
  for (size_t i = 0; i < want.weights.n; ++i) {
    const double r = want.weights.get(i), g = got.weights.get(i);
    const double tol = weight_tolerance(pol, spread, wdt, r);
    if (!(std::fabs(g - r) <= tol)) ++bad;
    worst = std::max(worst, std::fabs(g - r) / std::max(tol, 1e-300));
  }
  INFO("worst |got - ref| / tolerance = " << worst);
  REQUIRE(bad == 0);
}

struct Named {
  const char* name;
  fm::RoutePolicy pol;
};
std::vector<Named> all_presets() {
  namespace pr = fm::presets;
  return {{"minimax_text_01", pr::minimax_text_01()},
          {"mixtral", pr::mixtral()},
          {"qwen3_moe", pr::qwen3_moe()},
          {"qwen2_moe(60,4)", pr::qwen2_moe()},
          {"qwen2_moe(64,8)", pr::qwen2_moe(64, 8)},
          {"deepseek_v3", pr::deepseek_v3()},
          {"kimi_k2", pr::kimi_k2()},
          {"minimax_m2", pr::minimax_m2()},
          {"llama4(16)", pr::llama4()},
          {"llama4(128)", pr::llama4(128)},
          {"gpt_oss(32)", pr::gpt_oss()},
          {"gpt_oss(128)", pr::gpt_oss(128)}};
}

// ---- tests ---------------------------------------------------------------------------------------

TEST_CASE("route: every preset matches the reference", "[moe][route]") {
  const DType dts[] = {DType::kF32, DType::kBF16, DType::kF16};
  int n = 0;
  for (const Named& m : all_presets()) {
    for (int64_t T : kLight ? std::vector<int64_t>{n % 2 ? 1 : 3} : std::vector<int64_t>{1, 3, 64, 257}) {
      const DType dt = dts[n % 3];
      const DType wdt = (n % 4 == 3) ? DType::kBF16 : DType::kF32;
      check_against_reference(m.pol, dt, wdt, T, (n % 5 == 1) ? 3 : 0, n % 2 == 0, m.name);
      ++n;
    }
  }
}

TEST_CASE("route: large batches (MiniMax-Text-01 and DeepSeek-V3 shapes)", "[moe][route]") {
  check_against_reference(fm::presets::minimax_text_01(), DType::kBF16, DType::kF32, sized(8192, 512), 0, true,
                          "minimax 8192");
  check_against_reference(fm::presets::deepseek_v3(), DType::kF32, DType::kF32, sized(1000, 100), 0, true,
                          "deepseek 1000");
}

TEST_CASE("route: expert counts and top-k sweep (fast path for every E)", "[moe][route]") {
  for (int E : {8, 32, 60, 128, 160, 257, 384, 512, 1024}) {
    for (int k : {1, 2, 4, 6, 8, 22, 32}) {
      if (k > E) continue;
      // The sanitizer builds (one OS thread per CUDA thread) keep a few pairs.
      if (kLight && !((E == 8 && k == 2) || (E == 60 && k == 4) || (E == 257 && k == 8) || (E == 384 && k == 22) ||
                      (E == 1024 && k == 32)))
        continue;
      fm::RoutePolicy pol;
      pol.num_experts = E;
      pol.top_k = k;
      pol.score_func = fm::ScoreFunc::kSoftmax;
      pol.renormalize = (k % 4) != 2;
      check_against_reference(pol, E <= 256 ? DType::kBF16 : DType::kF32, DType::kF32, 5, 0, true, "softmax sweep");
      // Sigmoid with a selection bias and, where E splits into 8 or 4 groups holding k, groups.
      fm::RoutePolicy sg = pol;
      sg.score_func = fm::ScoreFunc::kSigmoid;
      sg.selection_bias = true;
      sg.renorm_eps = 1e-20f;
      sg.scaling_factor = 2.5f;
      for (int G : {8, 4}) {
        if (E % G == 0 && (E / G) * (G / 2) >= k && G <= E) {
          sg.n_group = G;
          sg.topk_group = G / 2;
          break;
        }
      }
      check_against_reference(sg, DType::kF16, DType::kF32, 4, 1, false, "sigmoid sweep");
    }
  }
}

TEST_CASE("route: softmax after top-k and raw scores", "[moe][route]") {
  fm::RoutePolicy pol;
  pol.num_experts = 257;
  pol.top_k = 6;
  pol.score_func = fm::ScoreFunc::kSoftmax;
  pol.score_timing = fm::ScoreTiming::kAfterTopK;
  check_against_reference(pol, DType::kF32, DType::kF32, 9, 0, true, "softmax after");
  pol.score_func = fm::ScoreFunc::kNone;
  pol.score_timing = fm::ScoreTiming::kBeforeTopK;
  check_against_reference(pol, DType::kBF16, DType::kF32, 9, 0, true, "raw before");
  pol.score_timing = fm::ScoreTiming::kAfterTopK;
  pol.scaling_factor = -0.5f;
  check_against_reference(pol, DType::kBF16, DType::kBF16, 9, 0, true, "raw after");
}

// Hand-made rows run through both sides; ids and counts exact, weights to the tolerance.
void check_rows(const fm::RoutePolicy& pol, DType dt, const std::vector<std::vector<double>>& rows,
                const std::vector<float>& bias, const std::string& label) {
  INFO(label);
  Inputs in;
  in.stride = pol.num_experts;
  in.logits = Tensor(dt, rows.size() * pol.num_experts);
  for (size_t t = 0; t < rows.size(); ++t)
    for (int e = 0; e < pol.num_experts; ++e) in.logits.set(t * pol.num_experts + e, rows[t][e]);
  in.bias = bias;
  const fm::RouteParams p = params_for(pol, in, static_cast<int64_t>(rows.size()), DType::kF32);
  const Routed want = run_reference(p, in, true);
  REQUIRE(want.err == cudaSuccess);
  const Routed got = run_kernel(p, in, true);
  REQUIRE(got.err == cudaSuccess);
  CHECK(got.ids == want.ids);
  CHECK(got.counts == want.counts);
  for (size_t i = 0; i < want.weights.n; ++i) {
    const double r = want.weights.get(i), g = got.weights.get(i);
    INFO("slot " << i << " ref " << r << " got " << g);
    if (r == 0) {
      CHECK(g == 0);  // invalid slots weigh exactly 0
    } else {
      CHECK(std::fabs(g - r) <= weight_tolerance(pol, 8, DType::kF32, r));
    }
  }
}

TEST_CASE("route: ties go to the lower expert index", "[moe][route]") {
  for (int E : {8, 60, 257}) {
    fm::RoutePolicy pol = fm::presets::qwen2_moe(E, std::min(E, 6));
    std::vector<std::vector<double>> rows;
    rows.push_back(std::vector<double>(E, 0.5));  // all equal: ids 0..k-1
    std::vector<double> r(E);
    for (int e = 0; e < E; ++e) r[e] = (e % 3) * 0.25;  // many exact ties at three levels
    rows.push_back(r);
    for (int e = 0; e < E; ++e) r[e] = ((E - e) % 4) * 0.125;  // ties whose lower index is later
    rows.push_back(r);
    check_rows(pol, DType::kBF16, rows, {}, "ties softmax E=" + std::to_string(E));
    pol.score_func = fm::ScoreFunc::kSigmoid;
    check_rows(pol, DType::kBF16, rows, {}, "ties sigmoid E=" + std::to_string(E));
  }
  // Equal group scores: the lower group wins.
  fm::RoutePolicy ds = fm::presets::deepseek_v3();
  std::vector<double> r(256, -1.0);
  for (int g = 0; g < 8; ++g) r[g * 32 + 5] = r[g * 32 + 9] = 0.75;  // every group scores the same
  check_rows(ds, DType::kF32, {r}, std::vector<float>(256, 0.0f), "equal group scores");
}

TEST_CASE("route: NaN and -inf logits, rows with no finite score", "[moe][route]") {
  int n = 0;
  for (const Named& m : all_presets()) {
    if (kLight && n++ % 3 != 0) continue;
    const int E = m.pol.num_experts;
    fulgur_test::Rng rng(std::string("route nan ") + m.name);
    FULGUR_INFO_SEED(rng);
    std::vector<std::vector<double>> rows;
    rows.push_back(std::vector<double>(E, kNaN));   // no finite score: ids 0..k-1, weights 0
    rows.push_back(std::vector<double>(E, -kInf));  // the same
    std::vector<double> r(E);
    for (int e = 0; e < E; ++e) r[e] = e % 2 ? kNaN : -kInf;
    rows.push_back(r);
    // Fewer available experts than k: the rest are invalid slots on the lowest free ids.
    for (int e = 0; e < E; ++e) r[e] = e == E - 1 ? 0.5 : (e % 2 ? kNaN : -kInf);
    rows.push_back(r);
    // A sprinkling of NaN / -inf among tie-free values.
    std::vector<int> perm(E);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng.gen);
    for (int e = 0; e < E; ++e) r[e] = e % 7 == 3 ? kNaN : e % 7 == 5 ? -kInf : (perm[e] - E / 2) / 32.0;
    rows.push_back(r);
    std::vector<float> bias;
    if (m.pol.selection_bias) bias.assign(E, 0.0f);
    check_rows(m.pol, DType::kF32, rows, bias, std::string("nan/-inf ") + m.name);
  }
  // A NaN bias makes its expert unavailable.
  fm::RoutePolicy mm = fm::presets::minimax_m2();
  std::vector<float> bias(256, 0.0f);
  for (int e = 0; e < 256; e += 3) bias[e] = std::numeric_limits<float>::quiet_NaN();
  std::vector<double> r(256);
  for (int e = 0; e < 256; ++e) r[e] = (e * 37 % 256 - 128) / 32.0;
  check_rows(mm, DType::kF32, {r}, bias, "NaN bias");
}

TEST_CASE("route: all-masked groups and a negative bias after sigmoid", "[moe][route]") {
  fm::RoutePolicy ds = fm::presets::deepseek_v3();
  // Groups 0..5 all -inf: their scores are -inf, so the kept groups are 6, 7 and then 0, 1 (the
  // lower indices among the -inf ties). Groups 6 and 7 hold 64 available experts: all 8 slots
  // are valid and lie there.
  std::vector<double> r(256, -kInf);
  for (int e = 192; e < 256; ++e) r[e] = ((e * 29) % 64 - 32) / 32.0;
  // Only 3 available experts: 5 invalid slots, weights renormalized over the 3.
  std::vector<double> r3(256, -kInf);
  r3[40] = 0.25;
  r3[100] = -0.5;
  r3[250] = 1.0;
  // Sigmoid scores in (0, 1) plus a bias of -2: every key is negative. A masked expert must be
  // -inf, never 0, or it would outrank every kept one.
  std::vector<double> rn(256);
  for (int e = 0; e < 256; ++e) rn[e] = ((e * 73) % 256 - 128) / 32.0;
  std::vector<float> neg(256, -2.0f);
  for (int e = 0; e < 256; ++e) neg[e] += static_cast<float>((e * 11) % 17) / 64.0f;
  check_rows(ds, DType::kF32, {r, r3}, std::vector<float>(256, 0.0f), "all-masked groups");
  check_rows(ds, DType::kF32, {rn}, neg, "negative bias");

  // Invariant, independent of the reference: every selected expert lies in a kept group (the 4
  // groups with the best top-2 sums of biased scores), with the negative bias.
  Inputs in;
  in.stride = 256;
  in.logits = Tensor(DType::kF32, 256);
  for (int e = 0; e < 256; ++e) in.logits.set(e, rn[e]);
  in.bias = neg;
  const Routed got = run_kernel(params_for(ds, in, 1, DType::kF32), in, false);
  REQUIRE(got.err == cudaSuccess);
  std::vector<std::pair<double, int>> gs;
  for (int g = 0; g < 8; ++g) {
    std::vector<double> k;
    for (int e = g * 32; e < g * 32 + 32; ++e) k.push_back(1 / (1 + std::exp(-rn[e])) + neg[e]);
    std::sort(k.begin(), k.end(), std::greater<double>());
    gs.push_back({-(k[0] + k[1]), g});
  }
  std::sort(gs.begin(), gs.end());
  std::set<int> kept;
  for (int i = 0; i < 4; ++i) kept.insert(gs[i].second);
  for (int j = 0; j < 8; ++j) CHECK(kept.count(got.ids[j] / 32) == 1);
}

TEST_CASE("route: the selection bias never leaks into the weights", "[moe][route]") {
  // Weights are the unbiased sigmoid of the selected logits, renormalized, times 2.5: computed
  // here from the kernel's own ids, independently of the reference.
  fm::RoutePolicy pol = fm::presets::minimax_m2();
  fulgur_test::Rng rng("route bias leak");
  FULGUR_INFO_SEED(rng);
  pol.scaling_factor = 2.5f;
  const int64_t T = 16;
  Inputs in = make_inputs(pol, DType::kF32, T, 0, rng);
  for (auto& b : in.bias) b = static_cast<float>(rng.uniform(-3, 3));  // large: changes the winners
  const Routed got = run_kernel(params_for(pol, in, T, DType::kF32), in, false);
  REQUIRE(got.err == cudaSuccess);
  for (int64_t t = 0; t < T; ++t) {
    double sum = 0;
    for (int j = 0; j < 8; ++j) sum += 1 / (1 + std::exp(-in.logits.get(t * 256 + got.ids[t * 8 + j])));
    for (int j = 0; j < 8; ++j) {
      const double w = 2.5 / (1 + std::exp(-in.logits.get(t * 256 + got.ids[t * 8 + j]))) / (sum + 1e-20);
      CHECK(std::fabs(got.weights.get(t * 8 + j) - w) <= 64 * kU32 * w);
    }
  }
}

TEST_CASE("route: deterministic and batch invariant", "[moe][route]") {
  for (const Named& m : {all_presets()[0], all_presets()[5], all_presets()[6]}) {
    fulgur_test::Rng rng(std::string("route determinism ") + m.name);
    FULGUR_INFO_SEED(rng);
    const int64_t T = sized(40, 8);
    const Inputs in = make_inputs(m.pol, DType::kBF16, T, 0, rng);
    const fm::RouteParams p = params_for(m.pol, in, T, DType::kF32);
    const Routed a = run_kernel(p, in, true);
    const Routed b = run_kernel(p, in, true);
    REQUIRE(a.err == cudaSuccess);
    CHECK(a.ids == b.ids);
    CHECK(bitwise_equal(a.weights, b.weights));
    CHECK(a.counts == b.counts);
    // Tokens [t0, t0 + n) routed alone give the same bits as inside the batch.
    const int64_t t0 = T / 3, n = std::max<int64_t>(1, T / 4);
    const int k = m.pol.top_k;
    Inputs sub;
    sub.stride = in.stride;
    sub.bias = in.bias;
    sub.logits = Tensor(in.logits.dt, static_cast<size_t>(n * in.stride));
    const size_t esz = fulgur::dtype_size(in.logits.dt);
    std::memcpy(sub.logits.data(), in.logits.bytes.data() + t0 * in.stride * esz, n * in.stride * esz);
    const Routed s = run_kernel(params_for(m.pol, sub, n, DType::kF32), sub, false);
    REQUIRE(s.err == cudaSuccess);
    for (int64_t i = 0; i < n * k; ++i) {
      CHECK(s.ids[i] == a.ids[t0 * k + i]);
      CHECK(s.weights.get(i) == a.weights.get(t0 * k + i));
    }
  }
}

TEST_CASE("route: bad input returns the documented error and writes nothing", "[moe][route]") {
  const fm::RoutePolicy good = fm::presets::deepseek_v3();
  fulgur_test::Rng rng("route bad input");
  const Inputs in = make_inputs(good, DType::kF32, 4, 0, rng);
  auto d_logits = upload(in.logits);
  auto d_bias = upload(in.bias);
  auto d_ids = poisoned<int32_t>(4 * 32);
  auto d_w = poisoned<float>(4 * 32);
  auto d_counts = poisoned<int32_t>(2048);
  auto base = [&] {
    fm::RouteParams p = params_for(good, in, 4, DType::kF32);
    p.logits = d_logits.data();
    p.bias = d_bias.data();
    p.topk_ids = d_ids.data();
    p.topk_weights = d_w.data();
    p.expert_counts = d_counts.data();
    return p;
  };
  struct Bad {
    const char* what;
    std::function<void(fm::RouteParams&)> edit;
    cudaError_t code;
  };
  const std::vector<Bad> cases = {
      {"k > E", [](fm::RouteParams& p) { p.policy.num_experts = 4, p.policy.n_group = 1, p.policy.topk_group = 1; },
       cudaErrorInvalidValue},
      {"topk_group > n_group", [](fm::RouteParams& p) { p.policy.topk_group = 9; }, cudaErrorInvalidValue},
      {"E not divisible into groups", [](fm::RouteParams& p) { p.policy.n_group = 7; }, cudaErrorInvalidValue},
      {"kept groups hold fewer than k",
       [](fm::RouteParams& p) { p.policy.n_group = 32, p.policy.topk_group = 1, p.policy.top_k = 9; },
       cudaErrorInvalidValue},
      {"null logits", [](fm::RouteParams& p) { p.logits = nullptr; }, cudaErrorInvalidValue},
      {"null ids", [](fm::RouteParams& p) { p.topk_ids = nullptr; }, cudaErrorInvalidValue},
      {"null weights", [](fm::RouteParams& p) { p.topk_weights = nullptr; }, cudaErrorInvalidValue},
      {"bias missing", [](fm::RouteParams& p) { p.bias = nullptr; }, cudaErrorInvalidValue},
      {"stray bias", [](fm::RouteParams& p) { p.policy.selection_bias = false; }, cudaErrorInvalidValue},
      {"k = 0", [](fm::RouteParams& p) { p.policy.top_k = 0; }, cudaErrorInvalidValue},
      {"k = 33", [](fm::RouteParams& p) { p.policy.top_k = 33; }, cudaErrorInvalidValue},
      {"stride < E", [](fm::RouteParams& p) { p.logits_row_stride = 255; }, cudaErrorInvalidValue},
      {"negative T", [](fm::RouteParams& p) { p.num_tokens = -1; }, cudaErrorInvalidValue},
      {"f16 weights", [](fm::RouteParams& p) { p.weights_dtype = DType::kF16; }, cudaErrorInvalidValue},
      {"NaN scale", [](fm::RouteParams& p) { p.policy.scaling_factor = NAN; }, cudaErrorInvalidValue},
      {"f64 logits", [](fm::RouteParams& p) { p.logits_dtype = DType::kF64; }, cudaErrorNotSupported},
      {"E = 2048", [](fm::RouteParams& p) { p.policy.num_experts = 2048, p.logits_row_stride = 2048; },
       cudaErrorNotSupported},
      {"n_group = 64",
       [](fm::RouteParams& p) {
         p.policy.num_experts = 512, p.logits_row_stride = 512, p.policy.n_group = 64, p.policy.topk_group = 8;
       },
       cudaErrorNotSupported},
  };
  for (const Bad& b : cases) {
    INFO(b.what);
    fm::RouteParams p = base();
    b.edit(p);
    CHECK(fm::can_implement(p).code() == b.code);
    CHECK(fm::route(p, nullptr) == b.code);
  }
  // Nothing was written by any of them.
  for (int32_t v : download(d_ids)) CHECK(v == -1);
  for (int32_t v : download(d_counts)) CHECK(v == -1);
  for (float v : download(d_w)) CHECK(std::isnan(v));
  // T = 0 writes only the (zero) expert counts.
  fm::RouteParams p = base();
  p.num_tokens = 0;
  REQUIRE(fm::route(p, nullptr) == cudaSuccess);
  const auto counts = download(d_counts);
  for (int e = 0; e < 256; ++e) CHECK(counts[e] == 0);
  for (int e = 256; e < 2048; ++e) CHECK(counts[e] == -1);
  for (int32_t v : download(d_ids)) CHECK(v == -1);
}

}  // namespace
