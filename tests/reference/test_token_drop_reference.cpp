// SPDX-License-Identifier: Apache-2.0
// The token-drop references (score, select, compact, schedule) against the spec's properties and
// against plain computations written here from the math: the score against a PyTorch-style full
// softmax row per head (materialized, repeat_kv for GQA, mean over heads, slice the image), the
// selection against a stable-sort oracle, the compaction against a keep-flag walk.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <numeric>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "fulgur/reference/token_drop.hpp"
#include "fulgur_test.hpp"

namespace {

using fulgur::DType;
using fulgur::Status;
using fulgur::token_drop::BatchLayout;
using fulgur::token_drop::CompactParams;
using fulgur::token_drop::KeepRule;
using fulgur::token_drop::PositionMode;
using fulgur::token_drop::RowTensor;
using fulgur::token_drop::ScheduleParams;
using fulgur::token_drop::ScoreParams;
using fulgur::token_drop::SelectParams;
using fulgur::token_drop::StagePlan;
namespace ref = fulgur::reference;
namespace td = fulgur::token_drop;

// ---------------------------------------------------------------------------------------------
// Test data helpers.

/// Values stored in one dtype, with the exact double each stored element represents (what both
/// the reference and the oracle must compute from).
struct Stored {
  DType dtype = DType::kF32;
  std::vector<float> f32;
  std::vector<__half> f16;
  std::vector<__nv_bfloat16> bf16;
  std::vector<double> f64;
  std::vector<double> exact;

  Stored(DType t, size_t n) : dtype(t), exact(n, 0.0) {
    switch (t) {
      case DType::kF32: f32.assign(n, 0.0f); break;
      case DType::kF16: f16.assign(n, fulgur::from_double<__half>(0.0)); break;
      case DType::kBF16: bf16.assign(n, fulgur::from_double<__nv_bfloat16>(0.0)); break;
      case DType::kF64: f64.assign(n, 0.0); break;
    }
  }
  void set(size_t i, double v) {
    switch (dtype) {
      case DType::kF32:
        f32[i] = fulgur::from_double<float>(v);
        exact[i] = fulgur::to_double(f32[i]);
        break;
      case DType::kF16:
        f16[i] = fulgur::from_double<__half>(v);
        exact[i] = fulgur::to_double(f16[i]);
        break;
      case DType::kBF16:
        bf16[i] = fulgur::from_double<__nv_bfloat16>(v);
        exact[i] = fulgur::to_double(bf16[i]);
        break;
      case DType::kF64:
        f64[i] = v;
        exact[i] = v;
        break;
    }
  }
  const void* data() const {
    switch (dtype) {
      case DType::kF32: return f32.data();
      case DType::kF16: return f16.data();
      case DType::kBF16: return bf16.data();
      case DType::kF64: return f64.data();
    }
    return nullptr;
  }
};

struct Seq {
  int64_t len;
  std::vector<std::pair<int64_t, int64_t>> spans;  // (start, length)
};

/// A packed varlen batch: cu_seqlens, cu_spans and the span arrays of a list of sequences.
struct Layout {
  std::vector<int64_t> cu_seqlens{0}, cu_spans{0}, start, length;
  int64_t image_tokens = 0;

  explicit Layout(const std::vector<Seq>& seqs) {
    for (const Seq& s : seqs) {
      cu_seqlens.push_back(cu_seqlens.back() + s.len);
      for (auto sp : s.spans) {
        start.push_back(sp.first);
        length.push_back(sp.second);
        image_tokens += sp.second;
      }
      cu_spans.push_back(static_cast<int64_t>(start.size()));
    }
  }
  int64_t batch() const { return static_cast<int64_t>(cu_seqlens.size()) - 1; }
  int64_t rows() const { return cu_seqlens.back(); }
  int64_t spans() const { return static_cast<int64_t>(start.size()); }
  int64_t seqlen(int64_t b) const { return cu_seqlens[b + 1] - cu_seqlens[b]; }
  BatchLayout view() const {
    BatchLayout l;
    l.batch = batch();
    l.total_rows = rows();
    l.cu_seqlens = cu_seqlens.data();
    l.num_spans = spans();
    l.cu_spans = cu_spans.data();
    l.span_start = start.data();
    l.span_length = length.data();
    l.num_image_tokens = image_tokens;
    return l;
  }
};

template <typename T>
bool bytes_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

/// Attention-like q and k: N(0, 1.2^2) entries give q.k/sqrt(d) a standard deviation of 1.44,
/// softmax rows neither flat nor one-hot; a few keys get a larger norm (attention-sink-like
/// peaks, the case the ranking exists for).
struct QK {
  int H, Hkv, d;
  int64_t Q, L;
  int64_t q_row_stride, q_head_stride, k_row_stride, k_head_stride;
  Stored q, k;
  QK(fulgur_test::Rng& rng, DType t, int H_, int Hkv_, int d_, int64_t Q_, int64_t L_, int64_t qpad,
     int64_t kpad)
      : H(H_),
        Hkv(Hkv_),
        d(d_),
        Q(Q_),
        L(L_),
        q_row_stride(H_ * (d_ + qpad) + qpad),
        q_head_stride(d_ + qpad),
        k_row_stride(Hkv_ * (d_ + kpad) + kpad),
        k_head_stride(d_ + kpad),
        q(t, static_cast<size_t>(Q_ * q_row_stride)),
        k(t, static_cast<size_t>(L_ * k_row_stride)) {
    for (size_t i = 0; i < q.exact.size(); ++i) q.set(i, rng.normal(0.0, 1.2));
    for (int64_t j = 0; j < L; ++j) {
      const double gain = rng.uniform(0.0, 1.0) < 0.03 ? 2.5 : 1.0;
      for (int64_t e = 0; e < k_row_stride; ++e)
        k.set(j * k_row_stride + e, gain * rng.normal(0.0, 1.2));
    }
  }
  double qv(int64_t row, int h, int i) const {
    return q.exact[row * q_row_stride + h * q_head_stride + i];
  }
  double kv(int64_t row, int g, int i) const {
    return k.exact[row * k_row_stride + g * k_head_stride + i];
  }
  void fill(ScoreParams& p) const {
    p.q = q.data();
    p.q_row_stride = q_row_stride;
    p.q_head_stride = q_head_stride;
    p.k = k.data();
    p.k_row_stride = k_row_stride;
    p.k_head_stride = k_head_stride;
    p.dtype = q.dtype;
    p.num_heads = H;
    p.num_kv_heads = Hkv;
    p.head_dim = d;
    p.num_queries = Q;
  }
};

double round_half(double x) { return fulgur::to_double(__float2half_rn(static_cast<float>(x))); }

/// The spec's score written the way upstream's PyTorch does it: for each query row, the full
/// attention row attn[h][j] = softmax_j(q_h . repeat_kv(K)_h[j] * scale) over j = 0..pos
/// (materialized), mean over heads, slice the image spans, mean over the query rows. With
/// `fp16`, the .to(fp16) after the softmax and the fp16 results of both torch.mean calls.
std::vector<double> plain_scores(const Layout& lay, const QK& t, const std::vector<int64_t>& cu_q,
                                 const std::vector<int64_t>& qpos, double scale, bool fp16) {
  std::vector<double> out;
  for (int64_t b = 0; b < lay.batch(); ++b) {
    const int64_t n_img_b = [&] {
      int64_t n = 0;
      for (int64_t s = lay.cu_spans[b]; s < lay.cu_spans[b + 1]; ++s) n += lay.length[s];
      return n;
    }();
    if (lay.cu_spans[b] == lay.cu_spans[b + 1]) continue;
    std::vector<double> acc(static_cast<size_t>(n_img_b), 0.0);
    const int64_t nq = cu_q[b + 1] - cu_q[b];
    for (int64_t qi = cu_q[b]; qi < cu_q[b + 1]; ++qi) {
      const int64_t pos = qpos[qi];
      std::vector<std::vector<double>> attn(t.H, std::vector<double>(pos + 1));
      for (int h = 0; h < t.H; ++h) {
        const int kvh = h / (t.H / t.Hkv);  // repeat_kv: head h reads kv head h / n_rep
        for (int64_t j = 0; j <= pos; ++j) {
          double dot = 0;
          for (int i = 0; i < t.d; ++i) dot += t.qv(qi, h, i) * t.kv(lay.cu_seqlens[b] + j, kvh, i);
          attn[h][j] = dot * scale;
        }
        const double m = *std::max_element(attn[h].begin(), attn[h].end());
        double sum = 0;
        for (double& v : attn[h]) sum += (v = std::exp(v - m));
        for (double& v : attn[h]) {
          v /= sum;
          if (fp16) v = round_half(v);
        }
      }
      std::vector<double> mean_head(pos + 1, 0.0);
      for (int64_t j = 0; j <= pos; ++j) {
        for (int h = 0; h < t.H; ++h) mean_head[j] += attn[h][j];
        mean_head[j] /= t.H;
        if (fp16) mean_head[j] = round_half(mean_head[j]);
      }
      size_t o = 0;
      for (int64_t s = lay.cu_spans[b]; s < lay.cu_spans[b + 1]; ++s) {
        for (int64_t j = lay.start[s]; j < lay.start[s] + lay.length[s]; ++j)
          acc[o++] += mean_head[j];
      }
    }
    for (double v : acc) out.push_back(fp16 ? round_half(v / nq) : v / nq);
  }
  return out;
}

/// fp32 output of an fp64 computation: half an fp32 ulp (2^-24 relative) from the final rounding,
/// plus fp64 summation-order differences between the two computations (~1e-13 relative for
/// logits of size ~10 and rows of ~1e3 terms). 2^-23 relative covers both with margin and fails
/// on any real error (a wrong head, key, scale or normalization changes scores by far more).
void check_scores_exact(const std::vector<float>& got, const std::vector<double>& want) {
  REQUIRE(got.size() == want.size());
  size_t bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double tol = std::ldexp(std::fabs(want[i]), -23);
    if (!(std::fabs(static_cast<double>(got[i]) - want[i]) <= tol)) {
      if (bad++ < 5) {
        INFO("score " << i << ": got " << got[i] << " want " << want[i]);
        CHECK(std::fabs(static_cast<double>(got[i]) - want[i]) <= tol);
      }
    }
  }
  CHECK(bad == 0);
}

/// Runs the reference score with one query at the last token of each sequence.
std::vector<float> run_score(const Layout& lay, const QK& t, const std::vector<int64_t>* cu_q,
                             const std::vector<int64_t>* qpos, float scale, bool fp16) {
  std::vector<float> scores(static_cast<size_t>(lay.image_tokens) + 1);  // +1: a guard element
  fulgur_test::poison(scores);
  ScoreParams p;
  p.layout = lay.view();
  t.fill(p);
  p.cu_queries = cu_q ? cu_q->data() : nullptr;
  p.query_pos = qpos ? qpos->data() : nullptr;
  p.softmax_scale = scale;
  p.fp16_compat = fp16;
  p.scores = scores.data();
  const Status st = ref::token_drop_score(p);
  INFO(st.reason());
  REQUIRE(st.is_ok());
  CHECK(std::isnan(scores.back()));  // nothing written past the image tokens
  scores.pop_back();
  for (float v : scores) CHECK_FALSE(std::isnan(v));
  return scores;
}

std::vector<int64_t> last_token_queries(const Layout& lay) {
  std::vector<int64_t> qpos;
  for (int64_t b = 0; b < lay.batch(); ++b) qpos.push_back(lay.seqlen(b) - 1);
  return qpos;
}

std::vector<int64_t> one_query_each(const Layout& lay) {
  std::vector<int64_t> cu(static_cast<size_t>(lay.batch()) + 1);
  std::iota(cu.begin(), cu.end(), int64_t{0});
  return cu;
}

/// Selection oracle: stable sort by descending score keeps lower indices first among equal
/// scores; the first `keep` are the kept set, returned ascending (span-relative indices).
std::vector<int64_t> oracle_topk(const float* s, int64_t n, int64_t keep) {
  std::vector<int64_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), int64_t{0});
  std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) { return s[a] > s[b]; });
  idx.resize(static_cast<size_t>(keep));
  std::sort(idx.begin(), idx.end());
  return idx;
}

struct SelectOut {
  std::vector<int64_t> kept, cu_kept;
};

SelectOut run_select(const Layout& lay, const std::vector<float>& scores, KeepRule rule,
                     double ratio, int64_t num_kept,
                     const std::vector<int64_t>* original = nullptr) {
  SelectOut o;
  o.kept.assign(static_cast<size_t>(num_kept) + 1, 0);  // +1: guard
  o.cu_kept.assign(static_cast<size_t>(lay.spans()) + 1, 0);
  fulgur_test::poison(o.kept);
  fulgur_test::poison(o.cu_kept);
  SelectParams p;
  p.layout = lay.view();
  p.scores = scores.data();
  p.rule = rule;
  p.ratio = ratio;
  p.original_length = original ? original->data() : nullptr;
  p.num_kept = num_kept;
  p.kept_index = o.kept.data();
  p.cu_kept = o.cu_kept.data();
  const Status st = ref::token_drop_select(p);
  INFO(st.reason());
  REQUIRE(st.is_ok());
  CHECK(o.kept.back() == -1);  // poison (all bits set) untouched past num_kept
  o.kept.pop_back();
  return o;
}

/// The spec's selection properties for every span, independent of how the reference ranks:
/// exactly `keep` indices, strictly increasing, inside the span; every kept score >= every
/// dropped score, and an equal score is kept only ahead of a higher index (lower index wins);
/// plus equality with the stable-sort oracle.
void check_selection(const Layout& lay, const std::vector<float>& scores, const SelectOut& o,
                     const std::vector<int64_t>& keeps) {
  int64_t off = 0;
  REQUIRE(o.cu_kept[0] == 0);
  for (int64_t s = 0; s < lay.spans(); ++s) {
    const int64_t n = lay.length[s], st = lay.start[s];
    const int64_t k0 = o.cu_kept[s], k1 = o.cu_kept[s + 1];
    REQUIRE(k1 - k0 == keeps[s]);
    std::vector<bool> kept(static_cast<size_t>(n), false);
    for (int64_t i = k0; i < k1; ++i) {
      REQUIRE(o.kept[i] >= st);
      REQUIRE(o.kept[i] < st + n);
      if (i > k0) CHECK(o.kept[i] > o.kept[i - 1]);
      kept[o.kept[i] - st] = true;
    }
    const float* sc = scores.data() + off;
    bool order_ok = true;
    for (int64_t a = 0; a < n; ++a) {
      if (!kept[a]) continue;
      for (int64_t b = 0; b < n; ++b) {
        if (kept[b]) continue;
        if (sc[a] < sc[b] || (sc[a] == sc[b] && a > b)) order_ok = false;
      }
    }
    CHECK(order_ok);
    const std::vector<int64_t> want = oracle_topk(sc, n, keeps[s]);
    std::vector<int64_t> got;
    for (int64_t i = k0; i < k1; ++i) got.push_back(o.kept[i] - st);
    CHECK(got == want);
    off += n;
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Score.

TEST_CASE("token_drop score: LLaVA-1.5 shapes against the plain softmax row",
          "[reference][token_drop]") {
  fulgur_test::Rng rng("token_drop score llava");
  FULGUR_INFO_SEED(rng);
  // LLaVA-1.5-7B: 32 heads of 128, a 35-token system prompt, 576 image tokens, 29 instruction
  // tokens (L = 640); beside it a text-only prompt, an image at position 0 of another size, and
  // an image right before the query (the query is its first non-image token).
  const Layout lay({{640, {{35, 576}}}, {23, {}}, {150, {{0, 100}}}, {81, {{5, 75}}}});
  const QK t(rng, DType::kF32, 32, 32, 128, lay.batch(), lay.rows(), 0, 0);
  const std::vector<int64_t> qpos = last_token_queries(lay);
  const std::vector<int64_t> cu_q = one_query_each(lay);
  const std::vector<double> want = plain_scores(lay, t, cu_q, qpos, 1.0 / std::sqrt(128.0), false);
  // Defaults: cu_queries null (one query per sequence), query_pos null (the last token), scale 0.
  check_scores_exact(run_score(lay, t, nullptr, nullptr, 0.0f, false), want);
  // The same, spelled out.
  check_scores_exact(run_score(lay, t, &cu_q, &qpos, 0.0f, false), want);
  // No renormalization over the image: scores of a sequence sum to the attention mass the image
  // receives, < 1 when there is text before the query (here the query itself is text).
  double llava_mass = 0;
  for (size_t j = 0; j < 576; ++j) llava_mass += want[j];
  CHECK(llava_mass < 1.0);
  CHECK(llava_mass > 0.5);  // 576 of 640 keys are image tokens with comparable logits
}

TEST_CASE("token_drop score: GQA head mapping", "[reference][token_drop]") {
  fulgur_test::Rng rng("token_drop score gqa");
  FULGUR_INFO_SEED(rng);
  // Qwen2-VL-7B's ratio: 28 query heads on 4 kv heads (7 per group), d = 64 to stay small.
  const Layout lay({{90, {{10, 64}}}, {71, {{3, 40}, {50, 12}}}});
  const QK t(rng, DType::kBF16, 28, 4, 64, lay.batch(), lay.rows(), 0, 0);
  const std::vector<int64_t> qpos = last_token_queries(lay), cu_q = one_query_each(lay);
  const double scale = 1.0 / 8.0;
  const std::vector<double> want = plain_scores(lay, t, cu_q, qpos, scale, false);
  const std::vector<float> got = run_score(lay, t, nullptr, nullptr, 0.0f, false);
  check_scores_exact(got, want);
  // The oracle reads kv head h / 7 (repeat_kv); h % 4 or kv head 0 for all would not match it.
  // Swapping kv heads 0 and 3 must change the scores and still match: the kv head index is read.
  QK swapped = t;
  for (int64_t j = 0; j < t.L; ++j) {
    for (int i = 0; i < t.d; ++i) {
      const size_t a = static_cast<size_t>(j * t.k_row_stride + 0 * t.k_head_stride + i);
      const size_t b = static_cast<size_t>(j * t.k_row_stride + 3 * t.k_head_stride + i);
      std::swap(swapped.k.bf16[a], swapped.k.bf16[b]);
      std::swap(swapped.k.exact[a], swapped.k.exact[b]);
    }
  }
  const std::vector<float> got_swapped = run_score(lay, swapped, nullptr, nullptr, 0.0f, false);
  check_scores_exact(got_swapped, plain_scores(lay, swapped, cu_q, qpos, scale, false));
  double diff = 0;
  for (size_t i = 0; i < got.size(); ++i)
    diff = std::fmax(diff, std::fabs(got[i] - got_swapped[i]) / got[i]);
  CHECK(diff > 1e-3);  // kv heads matter
}

TEST_CASE("token_drop score: several query rows, strided 16-bit inputs, custom scale",
          "[reference][token_drop]") {
  fulgur_test::Rng rng("token_drop score multiquery");
  FULGUR_INFO_SEED(rng);
  // Training-style: every token right before an answer span is a query; scores average over
  // them. Three spans in one sequence (multi-image), spans back to back, an empty span, an
  // image at position 0 and an image ending right before the query.
  const Layout lay({{60, {{0, 12}, {12, 9}, {30, 0}, {40, 7}}},  // spans touching, one empty
                    {33, {{20, 12}}},                            // image ends at the query (32)
                    {25, {}},                                    // text only (its query unused)
                    {48, {{1, 30}}}});
  // Query rows: 3, 1, 0, 2; positions at/after the last span's end.
  const std::vector<int64_t> cu_q = {0, 3, 4, 4, 6};
  const std::vector<int64_t> qpos = {47, 52, 59, 32, 31, 47};
  for (DType dt : {DType::kF16, DType::kBF16, DType::kF64}) {
    INFO(fulgur::dtype_name(dt));
    // Padding inside the strides (qpad/kpad) must be skipped: head stride d + 3, row stride
    // larger than H * head stride.
    const QK t(rng, dt, 6, 2, 48, 6, lay.rows(), 3, 5);
    const float scale = 0.11f;
    const std::vector<double> want =
        plain_scores(lay, t, cu_q, qpos, static_cast<double>(scale), false);
    check_scores_exact(run_score(lay, t, &cu_q, &qpos, scale, false), want);
  }
}

TEST_CASE("token_drop score: image right before the query, query at the span end",
          "[reference][token_drop]") {
  fulgur_test::Rng rng("token_drop score edges");
  FULGUR_INFO_SEED(rng);
  // Sequence 0: the whole prompt but the query is image ([0, 31) image, query at 31).
  // Sequence 1: a one-token image in text. Sequence 2: the smallest image sequence (the query
  // cannot be an image token): image at 0, query at 1.
  const Layout lay({{32, {{0, 31}}}, {9, {{4, 1}}}, {2, {{0, 1}}}});
  const QK t(rng, DType::kF32, 4, 4, 16, lay.batch(), lay.rows(), 0, 0);
  const std::vector<int64_t> qpos = last_token_queries(lay), cu_q = one_query_each(lay);
  check_scores_exact(run_score(lay, t, nullptr, nullptr, 0.0f, false),
                     plain_scores(lay, t, cu_q, qpos, 0.25, false));
}

TEST_CASE("token_drop score: fp16 compatibility mode", "[reference][token_drop]") {
  fulgur_test::Rng rng("token_drop score fp16 compat");
  FULGUR_INFO_SEED(rng);
  const Layout lay({{300, {{20, 256}}}, {70, {{2, 40}}}});
  const std::vector<int64_t> cu_q = {0, 1, 3}, qpos = {299, 69, 60};
  const QK t(rng, DType::kF16, 8, 8, 64, 3, lay.rows(), 0, 0);
  const std::vector<float> compat = run_score(lay, t, &cu_q, &qpos, 0.0f, true);
  const std::vector<double> want_compat = plain_scores(lay, t, cu_q, qpos, 0.125, true);
  const std::vector<double> exact = plain_scores(lay, t, cu_q, qpos, 0.125, false);
  REQUIRE(compat.size() == exact.size());
  size_t differ = 0, not_half = 0, off_bound = 0;
  for (size_t i = 0; i < exact.size(); ++i) {
    const double c = compat[i];
    if (round_half(c) != c) ++not_half;  // every compat score is an fp16 value
    // The same fp16 roundings applied to the same values: the probabilities differ between the
    // two computations only by fp64 summation order (~1e-16 relative), and the head and query
    // means of fp16 values are exact in fp64 (a handful of values of bounded exponent range,
    // divided by 8 or 2). A probability within 1e-16 of an fp16 rounding boundary has odds of
    // about 1e-12 per value, so the results must be identical.
    if (c != want_compat[i]) ++differ;
    // Against the exact score: three fp16 roundings of values <= the score's size (probability,
    // head mean, query mean), each within 2^-11 relative plus 2^-25 absolute (half the fp16
    // subnormal spacing), to first order 3 * (2^-11 s + 2^-25); 1% slack for the second order.
    const double bound = 1.01 * 3.0 * (std::ldexp(exact[i], -11) + std::ldexp(1.0, -25));
    if (std::fabs(c - exact[i]) > bound) ++off_bound;
  }
  CHECK(not_half == 0);
  CHECK(differ == 0);
  CHECK(off_bound == 0);
  // The mode changes something: exact scores are not fp16 values in general.
  size_t differs = 0;
  for (size_t i = 0; i < exact.size(); ++i)
    differs += (static_cast<double>(compat[i]) != static_cast<float>(exact[i]));
  CHECK(differs > exact.size() / 2);
}

// ---------------------------------------------------------------------------------------------
// Keep counts and selection.

TEST_CASE("token_drop keep counts: PyramidDrop floor and FastV round rules",
          "[reference][token_drop]") {
  using td::keep_count;
  // PyramidDrop, LLaVA-1.5: N = 576 and lambda = 0.5 -> 576 * 1, 1/2, 1/4, 1/8 = 576, 288, 144, 72.
  CHECK(keep_count(576, KeepRule::kFloorKeepRatio, 1.0) == 576);
  CHECK(keep_count(576, KeepRule::kFloorKeepRatio, 0.5) == 288);
  CHECK(keep_count(576, KeepRule::kFloorKeepRatio, 0.25) == 144);
  CHECK(keep_count(576, KeepRule::kFloorKeepRatio, 0.125) == 72);
  CHECK(keep_count(576, KeepRule::kFloorKeepRatio, 0.0) == 0);
  // floor, not round: 151 * 0.5 = 75.5 -> 75.
  CHECK(keep_count(151, KeepRule::kFloorKeepRatio, 0.5) == 75);
  // Python's int(100 * 0.29): 0.29 is 0.28999999999999998 in double, the product rounds to
  // 28.999999999999996, so upstream keeps 28, not 29.
  CHECK(keep_count(100, KeepRule::kFloorKeepRatio, 0.29) == 28);
  // FastV, round(N * (1 - R)): R = 0.5 -> 288, R = 0.75 -> 144 (LLaVA's 75% pruning).
  CHECK(keep_count(576, KeepRule::kFastVRound, 0.5) == 288);
  CHECK(keep_count(576, KeepRule::kFastVRound, 0.75) == 144);
  // 576 * (1 - 0.9) = 576 * 0.09999999999999998 = 57.6 - 2e-14 -> 58.
  CHECK(keep_count(576, KeepRule::kFastVRound, 0.9) == 58);
  // Python 3 rounds halves to even: 5 * 0.5 = 2.5 -> 2, 7 * 0.5 = 3.5 -> 4, 3 * 0.5 = 1.5 -> 2.
  CHECK(keep_count(5, KeepRule::kFastVRound, 0.5) == 2);
  CHECK(keep_count(7, KeepRule::kFastVRound, 0.5) == 4);
  CHECK(keep_count(3, KeepRule::kFastVRound, 0.5) == 2);
  // 10 * (1 - 0.3) = 10 * 0.7 = 7.000000000000001 in double -> 7.
  CHECK(keep_count(10, KeepRule::kFastVRound, 0.3) == 7);
  CHECK(keep_count(576, KeepRule::kFastVRound, 0.0) == 576);
  CHECK(keep_count(576, KeepRule::kFastVRound, 1.0) == 0);
}

TEST_CASE("token_drop select: top-k properties, ties, varied spans", "[reference][token_drop]") {
  fulgur_test::Rng rng("token_drop select");
  FULGUR_INFO_SEED(rng);
  // Varied N per sequence, a text-only sequence, several spans in one, a one-token span.
  const Layout lay(
      {{700, {{35, 576}}}, {30, {}}, {260, {{0, 100}, {120, 1}, {130, 128}}}, {50, {{40, 9}}}});
  std::vector<float> scores(static_cast<size_t>(lay.image_tokens));
  for (int trial = 0; trial < 3; ++trial) {
    // trial 0: continuous scores; trial 1: 8 levels only (many ties: the tie rule decides);
    // trial 2: every score equal (the lowest indices must win).
    for (float& s : scores) {
      s = trial == 0   ? static_cast<float>(rng.uniform(1e-5, 1e-2))
          : trial == 1 ? static_cast<float>(rng.uniform_int(1, 8)) * 1e-3f
                       : 1.5e-3f;
    }
    for (double r : {1.0, 0.5, 0.25, 0.125, 0.3, 0.0}) {
      INFO("trial " << trial << " ratio " << r);
      std::vector<int64_t> keeps;
      for (int64_t s = 0; s < lay.spans(); ++s)
        keeps.push_back(static_cast<int64_t>(std::floor(lay.length[s] * r)));
      const int64_t total = std::accumulate(keeps.begin(), keeps.end(), int64_t{0});
      const SelectOut o = run_select(lay, scores, KeepRule::kFloorKeepRatio, r, total);
      check_selection(lay, scores, o, keeps);
      if (r == 1.0) CHECK(total == lay.image_tokens);  // keep = N: everything, in order
      if (r == 0.0) CHECK(total == 0);                 // keep = 0: nothing
      if (trial == 2) {
        // All equal: the first keep_s of each span.
        for (int64_t s = 0; s < lay.spans(); ++s) {
          for (int64_t i = 0; i < keeps[s]; ++i)
            CHECK(o.kept[o.cu_kept[s] + i] == lay.start[s] + i);
        }
      }
    }
  }
  // FastV: R = 0.75 on every span, round(N / 4): 576 -> 144, 100 -> 25, 1 -> round(0.25) = 0,
  // 128 -> 32, 9 -> round(2.25) = 2.
  for (float& s : scores) s = static_cast<float>(rng.uniform(1e-5, 1e-2));
  const std::vector<int64_t> keeps = {144, 25, 0, 32, 2};
  const SelectOut o = run_select(lay, scores, KeepRule::kFastVRound, 0.75, 203);
  check_selection(lay, scores, o, keeps);
}

TEST_CASE("token_drop select: keep counts from the original N at a later stage; NaN ranks last",
          "[reference][token_drop]") {
  fulgur_test::Rng rng("token_drop select stage");
  FULGUR_INFO_SEED(rng);
  // Stage 2 of LLaVA: the span holds 288 tokens after the first drop, the keep count is
  // floor(576 * 1/4) = 144 from the original 576, not floor(288 / 4).
  const Layout lay({{352, {{35, 288}}}, {90, {{10, 50}}}});
  const std::vector<int64_t> original = {576, 101};  // 101 * 0.25 = 25.25 -> 25 <= 50
  std::vector<float> scores(static_cast<size_t>(lay.image_tokens));
  for (float& s : scores) s = static_cast<float>(rng.uniform(1e-5, 1e-2));
  scores[3] = NAN;  // a NaN in span 0 is never preferred to a number
  const SelectOut o = run_select(lay, scores, KeepRule::kFloorKeepRatio, 0.25, 144 + 25, &original);
  CHECK(o.cu_kept[1] == 144);
  CHECK(o.cu_kept[2] == 169);
  for (int64_t i = 0; i < 144; ++i) CHECK(o.kept[i] != 35 + 3);
  std::vector<float> no_nan = scores;
  no_nan[3] = -1.0f;  // ranks last among these positive scores, like NaN
  check_selection(lay, no_nan, o, {144, 25});
  // All kept (ratio 1 of a span that was never dropped) keeps the NaN too, in order.
  const Layout one({{20, {{2, 10}}}});
  std::vector<float> s1(10, 1e-3f);
  s1[4] = NAN;
  const SelectOut all = run_select(one, s1, KeepRule::kFloorKeepRatio, 1.0, 10);
  for (int64_t i = 0; i < 10; ++i) CHECK(all.kept[i] == 2 + i);
}

// ---------------------------------------------------------------------------------------------
// Compaction.

namespace {

/// An independent compaction: a keep flag per packed row (text: kept; image: kept iff listed),
/// then the kept rows in order.
struct Expected {
  std::vector<int64_t> rows;  // source row of each output row
  std::vector<int64_t> cu;    // new cu_seqlens
  std::vector<int64_t> new_start, new_len;
};

Expected expected_compaction(const Layout& lay, const std::vector<int64_t>& kept,
                             const std::vector<int64_t>& cu_kept) {
  std::vector<bool> keep(static_cast<size_t>(lay.rows()), true);
  for (int64_t b = 0; b < lay.batch(); ++b) {
    for (int64_t s = lay.cu_spans[b]; s < lay.cu_spans[b + 1]; ++s) {
      for (int64_t j = lay.start[s]; j < lay.start[s] + lay.length[s]; ++j)
        keep[lay.cu_seqlens[b] + j] = false;
      for (int64_t i = cu_kept[s]; i < cu_kept[s + 1]; ++i)
        keep[lay.cu_seqlens[b] + kept[i]] = true;
    }
  }
  Expected e;
  e.cu.push_back(0);
  for (int64_t b = 0; b < lay.batch(); ++b) {
    for (int64_t r = lay.cu_seqlens[b]; r < lay.cu_seqlens[b + 1]; ++r) {
      if (keep[r]) e.rows.push_back(r);
    }
    e.cu.push_back(static_cast<int64_t>(e.rows.size()));
    // New span start: the rows kept before the span's start in this sequence.
    for (int64_t s = lay.cu_spans[b]; s < lay.cu_spans[b + 1]; ++s) {
      int64_t before = 0;
      for (int64_t j = 0; j < lay.start[s]; ++j) before += keep[lay.cu_seqlens[b] + j];
      e.new_start.push_back(before);
      e.new_len.push_back(cu_kept[s + 1] - cu_kept[s]);
    }
  }
  return e;
}

/// A random kept set per span: keep counts from `keeps`, indices a random subset, ascending.
void random_kept(fulgur_test::Rng& rng, const Layout& lay, const std::vector<int64_t>& keeps,
                 std::vector<int64_t>& kept, std::vector<int64_t>& cu_kept) {
  kept.clear();
  cu_kept.assign(1, 0);
  for (int64_t s = 0; s < lay.spans(); ++s) {
    std::vector<int64_t> idx(static_cast<size_t>(lay.length[s]));
    std::iota(idx.begin(), idx.end(), lay.start[s]);
    std::shuffle(idx.begin(), idx.end(), rng.gen);
    idx.resize(static_cast<size_t>(keeps[s]));
    std::sort(idx.begin(), idx.end());
    kept.insert(kept.end(), idx.begin(), idx.end());
    cu_kept.push_back(static_cast<int64_t>(kept.size()));
  }
}

}  // namespace

TEST_CASE("token_drop compact: row tensors, cu_seqlens, spans, both position modes, 1 and 3 rows",
          "[reference][token_drop]") {
  fulgur_test::Rng rng("token_drop compact");
  FULGUR_INFO_SEED(rng);
  // A text-only sequence (passes through), an image at position 0, two images with text between
  // them, an image right before the last token, an empty sequence; keep counts include 0 and N.
  const Layout lay(
      {{17, {}}, {40, {{0, 30}}}, {90, {{5, 40}, {50, 36}}}, {25, {{10, 14}}}, {0, {}}});
  const std::vector<int64_t> keeps = {7, 0, 36, 14};
  std::vector<int64_t> kept, cu_kept;
  random_kept(rng, lay, keeps, kept, cu_kept);
  const int64_t L = lay.rows();
  const int64_t num_kept = static_cast<int64_t>(kept.size());
  const int64_t Lp = L - (lay.image_tokens - num_kept);
  const Expected e = expected_compaction(lay, kept, cu_kept);
  REQUIRE(static_cast<int64_t>(e.rows.size()) == Lp);

  // Hidden states: bf16 [L, 24] with row stride 29 in, 26 out (padding must stay untouched).
  const int64_t D = 24, in_ld = 29, out_ld = 26;
  std::vector<__nv_bfloat16> hidden(static_cast<size_t>(L * in_ld));
  for (auto& h : hidden) h = fulgur::from_double<__nv_bfloat16>(rng.normal());
  // Labels: int64 [L] (an answer id or -100), K rows of a layer computed before the drop: fp16
  // [L, 2 heads x 8], and a byte mask [L].
  std::vector<int64_t> labels(static_cast<size_t>(L));
  for (auto& v : labels) v = rng.uniform(0, 1) < 0.5 ? -100 : rng.uniform_int(0, 32000);
  std::vector<__half> krows(static_cast<size_t>(L * 16));
  for (auto& v : krows) v = fulgur::from_double<__half>(rng.normal());
  std::vector<uint8_t> mask(static_cast<size_t>(L));
  for (auto& v : mask) v = static_cast<uint8_t>(rng.uniform_int(1, 255));
  // Position ids [3, L] in M-RoPE style (text: t, t, t; image: t0, t0 + row, t0 + col), row
  // stride L + 3; the 1-row case reads row 0.
  const int64_t pos_ld = L + 3;
  std::vector<int64_t> pos(static_cast<size_t>(3 * pos_ld), 0);
  for (int64_t b = 0; b < lay.batch(); ++b) {
    for (int64_t t = 0; t < lay.seqlen(b); ++t) {
      const int64_t r = lay.cu_seqlens[b] + t;
      int64_t p0 = t, p1 = t, p2 = t;
      for (int64_t s = lay.cu_spans[b]; s < lay.cu_spans[b + 1]; ++s) {
        if (t >= lay.start[s] && t < lay.start[s] + lay.length[s]) {
          const int64_t i = t - lay.start[s];
          p0 = lay.start[s];
          p1 = lay.start[s] + i / 6;
          p2 = lay.start[s] + i % 6;
        }
      }
      pos[r] = p0;
      pos[pos_ld + r] = p1;
      pos[2 * pos_ld + r] = p2;
    }
  }

  for (PositionMode mode : {PositionMode::kRenumber, PositionMode::kKeepOriginal}) {
    for (int prow : {1, 3}) {
      INFO("mode " << static_cast<int>(mode) << " rows " << prow);
      std::vector<__nv_bfloat16> hidden_out(static_cast<size_t>(Lp * out_ld));
      std::vector<int64_t> labels_out(static_cast<size_t>(Lp)), row_map(static_cast<size_t>(Lp));
      std::vector<__half> krows_out(static_cast<size_t>(Lp * 16));
      std::vector<uint8_t> mask_out(static_cast<size_t>(Lp));
      const int64_t pos_out_ld = Lp + 1;
      std::vector<int64_t> pos_out(static_cast<size_t>(prow * pos_out_ld));
      std::vector<int64_t> new_cu(static_cast<size_t>(lay.batch()) + 1),
          ns(static_cast<size_t>(lay.spans())), nl(ns.size());
      fulgur_test::poison(hidden_out);
      fulgur_test::poison(labels_out);
      fulgur_test::poison(row_map);
      fulgur_test::poison(krows_out);
      fulgur_test::poison(mask_out);
      fulgur_test::poison(pos_out);
      fulgur_test::poison(new_cu);
      fulgur_test::poison(ns);
      fulgur_test::poison(nl);

      RowTensor extra[3];
      extra[0] = {labels.data(), labels_out.data(), 1, 8, 1, 1};
      extra[1] = {krows.data(), krows_out.data(), 16, 2, 16, 16};
      extra[2] = {mask.data(), mask_out.data(), 1, 1, 1, 1};
      CompactParams p;
      p.layout = lay.view();
      p.num_kept = num_kept;
      p.kept_index = kept.data();
      p.cu_kept = cu_kept.data();
      p.out_rows = Lp;
      p.new_cu_seqlens = new_cu.data();
      p.row_map = row_map.data();
      p.new_span_start = ns.data();
      p.new_span_length = nl.data();
      p.hidden = {hidden.data(), hidden_out.data(), D, 2, in_ld, out_ld};
      p.extra = extra;
      p.num_extra = 3;
      p.position_mode = mode;
      p.position_rows = prow;
      p.position_ids = pos.data();
      p.position_ids_stride = pos_ld;
      p.position_ids_out = pos_out.data();
      p.position_ids_out_stride = pos_out_ld;
      const Status st = ref::token_drop_compact(p);
      INFO(st.reason());
      REQUIRE(st.is_ok());

      CHECK(new_cu == e.cu);
      CHECK(row_map == e.rows);
      CHECK(ns == e.new_start);
      CHECK(nl == e.new_len);
      bool rows_ok = true, pad_ok = true, pos_ok = true;
      for (int64_t o = 0; o < Lp; ++o) {
        const int64_t src = e.rows[o];
        rows_ok &= std::memcmp(&hidden_out[o * out_ld], &hidden[src * in_ld], D * 2) == 0;
        for (int64_t c = D; c < out_ld; ++c) {
          uint16_t bits;
          std::memcpy(&bits, &hidden_out[o * out_ld + c], 2);
          pad_ok &= bits == 0xFFFF;  // still poisoned
        }
        rows_ok &= labels_out[o] == labels[src];
        rows_ok &= std::memcmp(&krows_out[o * 16], &krows[src * 16], 32) == 0;
        rows_ok &= mask_out[o] == mask[src];
        int64_t b = 0;
        while (e.cu[b + 1] <= o) ++b;
        for (int r = 0; r < prow; ++r) {
          // Renumber: 0..L'_b - 1 in every row; keep-original: the source's ids, row by row.
          const int64_t want =
              mode == PositionMode::kRenumber ? o - e.cu[b] : pos[r * pos_ld + src];
          pos_ok &= pos_out[r * pos_out_ld + o] == want;
        }
      }
      for (int r = 0; r < prow; ++r) pos_ok &= pos_out[r * pos_out_ld + Lp] == -1;  // pad untouched
      CHECK(rows_ok);
      CHECK(pad_ok);
      CHECK(pos_ok);
      // The text-only sequence passes through unchanged; the empty one stays empty.
      CHECK(e.cu[1] == 17);
      CHECK(e.cu[5] == e.cu[4]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Score -> select -> compact, one PyramidDrop event on a LLaVA-sized batch.

TEST_CASE("token_drop pipeline: LLaVA batch, prefix and suffix untouched, kept >= dropped",
          "[reference][token_drop]") {
  fulgur_test::Rng rng("token_drop pipeline");
  FULGUR_INFO_SEED(rng);
  const Layout lay({{640, {{35, 576}}}, {41, {}}, {200, {{0, 150}}}, {120, {{7, 40}, {60, 52}}}});
  const int H = 32, d = 128;
  const QK t(rng, DType::kBF16, H, H, d, lay.batch(), lay.rows(), 0, 0);
  const std::vector<float> scores = run_score(lay, t, nullptr, nullptr, 0.0f, false);
  check_scores_exact(scores, plain_scores(lay, t, one_query_each(lay), last_token_queries(lay),
                                          1.0 / std::sqrt(128.0), false));

  // Stage 1 of PyramidDrop: r = 1/2 -> 288, 75, 20, 26.
  const std::vector<int64_t> keeps = {288, 75, 20, 26};
  const SelectOut sel = run_select(lay, scores, KeepRule::kFloorKeepRatio, 0.5, 409);
  check_selection(lay, scores, sel, keeps);

  const int64_t D = 64;  // hidden width kept small; the gather does not depend on it
  std::vector<float> hidden(static_cast<size_t>(lay.rows() * D));
  for (float& v : hidden) v = static_cast<float>(rng.normal());
  const int64_t Lp = lay.rows() - (lay.image_tokens - 409);
  std::vector<float> hidden_out(static_cast<size_t>(Lp * D));
  std::vector<int64_t> new_cu(static_cast<size_t>(lay.batch()) + 1),
      pos_out(static_cast<size_t>(Lp)), ns(4), nl(4);
  fulgur_test::poison(hidden_out);
  fulgur_test::poison(pos_out);
  CompactParams p;
  p.layout = lay.view();
  p.num_kept = 409;
  p.kept_index = sel.kept.data();
  p.cu_kept = sel.cu_kept.data();
  p.out_rows = Lp;
  p.new_cu_seqlens = new_cu.data();
  p.new_span_start = ns.data();
  p.new_span_length = nl.data();
  p.hidden = {hidden.data(), hidden_out.data(), D, 4, D, D};
  p.position_mode = PositionMode::kRenumber;
  p.position_ids_out = pos_out.data();
  REQUIRE(ref::token_drop_compact(p).is_ok());

  // New lengths: 640 - 288 = 352, 41, 200 - 75 = 125, 120 - 20 - 26 = 74; the second span of
  // the last sequence moves up by the 20 tokens dropped from its first: 60 - 20 = 40.
  CHECK(new_cu == std::vector<int64_t>{0, 352, 393, 518, 592});
  CHECK(ns == std::vector<int64_t>{35, 0, 7, 40});
  CHECK(nl == keeps);
  auto row_equal = [&](int64_t out_row, int64_t in_row) {
    return std::memcmp(&hidden_out[out_row * D], &hidden[in_row * D], D * 4) == 0;
  };
  bool ok = true;
  // LLaVA sequence: prefix 0..34 and suffix 611..639 untouched and in place (suffix now at
  // 35 + 288 = 323..351); the kept image rows in between, in order.
  for (int64_t t0 = 0; t0 < 35; ++t0) ok &= row_equal(t0, t0);
  for (int64_t t0 = 611; t0 < 640; ++t0) ok &= row_equal(t0 - 288, t0);
  for (int64_t i = 0; i < 288; ++i) ok &= row_equal(35 + i, sel.kept[i]);
  // Text-only sequence: passes through.
  for (int64_t t0 = 0; t0 < 41; ++t0) ok &= row_equal(352 + t0, 640 + t0);
  // Image at 0: the kept image first, then the 50 text rows.
  for (int64_t t0 = 150; t0 < 200; ++t0) ok &= row_equal(393 + 75 + (t0 - 150), 681 + t0);
  CHECK(ok);
  // Renumbered positions: 0..L'_b - 1.
  bool pos_ok = true;
  for (int64_t b = 0; b < 4; ++b) {
    for (int64_t o = new_cu[b]; o < new_cu[b + 1]; ++o) pos_ok &= pos_out[o] == o - new_cu[b];
  }
  CHECK(pos_ok);
}

TEST_CASE("token_drop keep-original mode: dropping equals masking the dropped key columns",
          "[reference][token_drop]") {
  fulgur_test::Rng rng("token_drop masking equivalence");
  FULGUR_INFO_SEED(rng);
  // After a drop, a later layer's query attends over the compacted keys. With post-RoPE keys
  // gathered by the compaction (a row tensor), its scores over the kept image tokens must equal
  // the full row's softmax with the dropped columns masked to -inf.
  const Layout lay({{96, {{10, 64}}}, {50, {{0, 30}, {35, 10}}}});
  const int H = 8, Hkv = 2, d = 32;
  const QK t(rng, DType::kF32, H, Hkv, d, lay.batch(), lay.rows(), 0, 0);
  std::vector<int64_t> kept, cu_kept;
  random_kept(rng, lay, {20, 9, 5}, kept, cu_kept);
  const int64_t Lp = lay.rows() - (lay.image_tokens - 34);
  std::vector<float> k_out(static_cast<size_t>(Lp * t.k_row_stride));
  std::vector<int64_t> new_cu(3), ns(3), nl(3);
  CompactParams c;
  c.layout = lay.view();
  c.num_kept = 34;
  c.kept_index = kept.data();
  c.cu_kept = cu_kept.data();
  c.out_rows = Lp;
  c.new_cu_seqlens = new_cu.data();
  c.new_span_start = ns.data();
  c.new_span_length = nl.data();
  c.hidden = {t.k.f32.data(), k_out.data(), t.k_row_stride, 4, t.k_row_stride, t.k_row_stride};
  c.position_mode = PositionMode::kKeepOriginal;
  REQUIRE(ref::token_drop_compact(c).is_ok());

  // Scores on the compacted batch, query = last token of each sequence.
  const int64_t n_kept_img = 34;
  std::vector<float> got(static_cast<size_t>(n_kept_img));
  ScoreParams p;
  t.fill(p);
  p.k = k_out.data();
  p.layout.batch = 2;
  p.layout.total_rows = Lp;
  p.layout.cu_seqlens = new_cu.data();
  p.layout.num_spans = 3;
  p.layout.cu_spans = lay.cu_spans.data();
  p.layout.span_start = ns.data();
  p.layout.span_length = nl.data();
  p.layout.num_image_tokens = n_kept_img;
  p.scores = got.data();
  REQUIRE(ref::token_drop_score(p).is_ok());

  // Masked full rows, written here: logits over the ORIGINAL keys, dropped image keys -inf.
  std::vector<double> want;
  for (int64_t b = 0; b < 2; ++b) {
    std::vector<bool> dropped(static_cast<size_t>(lay.seqlen(b)), false);
    for (int64_t s = lay.cu_spans[b]; s < lay.cu_spans[b + 1]; ++s) {
      for (int64_t j = lay.start[s]; j < lay.start[s] + lay.length[s]; ++j) dropped[j] = true;
      for (int64_t i = cu_kept[s]; i < cu_kept[s + 1]; ++i) dropped[kept[i]] = false;
    }
    const int64_t pos = lay.seqlen(b) - 1;
    std::vector<double> mean(static_cast<size_t>(pos + 1), 0.0);
    for (int h = 0; h < H; ++h) {
      std::vector<double> row(static_cast<size_t>(pos + 1));
      for (int64_t j = 0; j <= pos; ++j) {
        double dot = 0;
        for (int i = 0; i < d; ++i)
          dot += t.qv(b, h, i) * t.kv(lay.cu_seqlens[b] + j, h / (H / Hkv), i);
        row[j] = dropped[j] ? -INFINITY : dot / std::sqrt(static_cast<double>(d));
      }
      const double m = *std::max_element(row.begin(), row.end());
      double sum = 0;
      for (double& v : row) sum += (v = std::exp(v - m));
      for (int64_t j = 0; j <= pos; ++j) mean[j] += row[j] / sum / H;
    }
    for (int64_t s = lay.cu_spans[b]; s < lay.cu_spans[b + 1]; ++s) {
      for (int64_t i = cu_kept[s]; i < cu_kept[s + 1]; ++i) want.push_back(mean[kept[i]]);
    }
  }
  check_scores_exact(got, want);
}

// ---------------------------------------------------------------------------------------------
// Schedule and decode positions.

TEST_CASE("token_drop schedule: LLaVA stages, lengths and decode positions",
          "[reference][token_drop]") {
  // LLaVA-1.5-7B, 32 layers, drops before layers 8, 16, 24 with r = 1/2, 1/4, 1/8 of N = 576 in a
  // 640-token prompt. By hand: keep 576, 288, 144, 72; L_s = 640 - (576 - keep) = 640, 352, 208,
  // 136; shift = 576 - keep = 0, 288, 432, 504.
  const int64_t layers[] = {8, 16, 24};
  const double ratios[] = {0.5, 0.25, 0.125};
  const int64_t n[] = {576};
  ScheduleParams sp;
  sp.num_layers = 32;
  sp.num_drops = 3;
  sp.drop_layers = layers;
  sp.ratios = ratios;
  sp.seq_len = 640;
  sp.num_spans = 1;
  sp.image_lengths = n;
  StagePlan st[4];
  REQUIRE(ref::token_drop_schedule(sp, st).is_ok());
  const int64_t want[4][5] = {
      {0, 8, 576, 640, 0}, {8, 16, 288, 352, 288}, {16, 24, 144, 208, 432}, {24, 32, 72, 136, 504}};
  for (int s = 0; s < 4; ++s) {
    INFO("stage " << s);
    CHECK(st[s].first_layer == want[s][0]);
    CHECK(st[s].end_layer == want[s][1]);
    CHECK(st[s].image_tokens == want[s][2]);
    CHECK(st[s].seq_len == want[s][3]);
    CHECK(st[s].position_shift == want[s][4]);
  }
  CHECK(td::stage_of_layer(st, 4, 0) == 0);
  CHECK(td::stage_of_layer(st, 4, 7) == 0);
  CHECK(td::stage_of_layer(st, 4, 8) == 1);
  CHECK(td::stage_of_layer(st, 4, 31) == 3);
  CHECK(td::stage_of_layer(st, 4, 32) == -1);
  // The first generated token has original position 640: renumbered, it sits right after the
  // stage's L_s rows (0..L_s - 1): 640, 352, 208, 136; the tenth (orig 649) at 145 in stage 3.
  CHECK(td::decode_position(st[0], PositionMode::kRenumber, 640) == 640);
  CHECK(td::decode_position(st[1], PositionMode::kRenumber, 640) == 352);
  CHECK(td::decode_position(st[2], PositionMode::kRenumber, 640) == 208);
  CHECK(td::decode_position(st[3], PositionMode::kRenumber, 640) == 136);
  CHECK(td::decode_position(st[3], PositionMode::kRenumber, 649) == 145);
  CHECK(td::decode_position(st[3], PositionMode::kKeepOriginal, 649) == 649);

  // The same numbers from chained drops: compact 576 -> 288 -> 144 -> 72 with renumbering, keep
  // counts from the original N each time; the last renumbered position + 1 is the decode
  // position of original 640, and the stage lengths match.
  fulgur_test::Rng rng("token_drop schedule chain");
  FULGUR_INFO_SEED(rng);
  std::vector<int64_t> cu = {0, 640}, cu_spans = {0, 1}, start = {35}, len = {576};
  const std::vector<int64_t> original = {576};
  for (int s = 1; s <= 3; ++s) {
    BatchLayout l;
    l.batch = 1;
    l.total_rows = cu[1];
    l.cu_seqlens = cu.data();
    l.num_spans = 1;
    l.cu_spans = cu_spans.data();
    l.span_start = start.data();
    l.span_length = len.data();
    l.num_image_tokens = len[0];
    std::vector<float> scores(static_cast<size_t>(len[0]));
    for (float& v : scores) v = static_cast<float>(rng.uniform(1e-5, 1e-2));
    std::vector<int64_t> kept(static_cast<size_t>(st[s].image_tokens)), cu_kept(2);
    SelectParams sel;
    sel.layout = l;
    sel.scores = scores.data();
    sel.ratio = ratios[s - 1];
    sel.original_length = original.data();
    sel.num_kept = st[s].image_tokens;
    sel.kept_index = kept.data();
    sel.cu_kept = cu_kept.data();
    REQUIRE(ref::token_drop_select(sel).is_ok());
    std::vector<int64_t> new_cu(2), ns(1), nl(1), pos_out(static_cast<size_t>(st[s].seq_len));
    CompactParams c;
    c.layout = l;
    c.num_kept = st[s].image_tokens;
    c.kept_index = kept.data();
    c.cu_kept = cu_kept.data();
    c.out_rows = st[s].seq_len;
    c.new_cu_seqlens = new_cu.data();
    c.new_span_start = ns.data();
    c.new_span_length = nl.data();
    c.position_ids_out = pos_out.data();
    const Status status = ref::token_drop_compact(c);
    INFO(status.reason());
    REQUIRE(status.is_ok());
    CHECK(new_cu[1] == st[s].seq_len);
    CHECK(pos_out.back() + 1 == td::decode_position(st[s], PositionMode::kRenumber, 640));
    cu = new_cu;
    start = ns;
    len = nl;
  }
  CHECK(len[0] == 72);
}

TEST_CASE("token_drop schedule: FastV, multiple spans, no image", "[reference][token_drop]") {
  // FastV on LLaVA-1.5: K = 2, R = 0.75: round(576 * 0.25) = 144 kept; L_1 = 640 - 432 = 208.
  const int64_t k2[] = {2};
  const double r75[] = {0.75};
  const int64_t n576[] = {576};
  ScheduleParams sp;
  sp.num_layers = 32;
  sp.num_drops = 1;
  sp.drop_layers = k2;
  sp.ratios = r75;
  sp.rule = KeepRule::kFastVRound;
  sp.seq_len = 640;
  sp.num_spans = 1;
  sp.image_lengths = n576;
  StagePlan st[2];
  REQUIRE(td::make_schedule(sp, st).is_ok());
  CHECK(st[0].end_layer == 2);
  CHECK(st[1].first_layer == 2);
  CHECK(st[1].image_tokens == 144);
  CHECK(st[1].seq_len == 208);
  CHECK(st[1].position_shift == 432);
  // FastV keeps original positions: a decode token keeps its original id.
  CHECK(td::decode_position(st[1], PositionMode::kKeepOriginal, 640) == 640);

  // Two images of 101 and 51 tokens, r = 1/2: each span on its own, floor(50.5) + floor(25.5) =
  // 50 + 25 = 75 (one fewer than floor(152 / 2) = 76); shift 152 - 75 = 77.
  const int64_t two[] = {101, 51};
  const int64_t l8[] = {8};
  const double r_half[] = {0.5};
  ScheduleParams mp;
  mp.num_layers = 32;
  mp.num_drops = 1;
  mp.drop_layers = l8;
  mp.ratios = r_half;
  mp.seq_len = 200;
  mp.num_spans = 2;
  mp.image_lengths = two;
  REQUIRE(td::make_schedule(mp, st).is_ok());
  CHECK(st[1].image_tokens == 75);
  CHECK(st[1].seq_len == 123);
  CHECK(st[1].position_shift == 77);

  // No image: every stage holds the whole prompt, positions never shift.
  mp.num_spans = 0;
  mp.image_lengths = nullptr;
  REQUIRE(td::make_schedule(mp, st).is_ok());
  CHECK(st[1].image_tokens == 0);
  CHECK(st[1].seq_len == 200);
  CHECK(td::decode_position(st[1], PositionMode::kRenumber, 200) == 200);
}

// ---------------------------------------------------------------------------------------------
// validate(): bad input returns a reason and writes nothing.

TEST_CASE("token_drop validate: bad input is rejected and no output is touched",
          "[reference][token_drop]") {
  fulgur_test::Rng rng("token_drop validate");
  FULGUR_INFO_SEED(rng);
  const Layout lay({{40, {{5, 20}}}, {12, {}}, {30, {{0, 10}, {12, 8}}}});
  const QK t(rng, DType::kF32, 4, 2, 16, lay.batch(), lay.rows(), 0, 0);
  std::vector<float> scores(static_cast<size_t>(lay.image_tokens));
  fulgur_test::poison(scores);
  const std::vector<float> poisoned = scores;
  std::vector<int64_t> qpos = {39, 11, 29};
  ScoreParams good;
  good.layout = lay.view();
  t.fill(good);
  good.query_pos = qpos.data();
  good.scores = scores.data();
  REQUIRE(td::validate(good).is_ok());

  std::vector<int64_t> bad_start = lay.start, bad_len = lay.length, bad_cu = lay.cu_seqlens,
                       bad_q = qpos;
  const std::vector<std::pair<const char*, std::function<void(ScoreParams&)>>> score_cases = {
      {"span outside its sequence",
       [&](ScoreParams& p) {
         bad_start = {25, 0, 12};
         p.layout.span_start = bad_start.data();
       }},
      {"spans overlap",
       [&](ScoreParams& p) {
         bad_start = {5, 0, 9};
         p.layout.span_start = bad_start.data();
       }},
      {"query before the span end",
       [&](ScoreParams& p) {
         bad_q = {20, 11, 29};
         p.query_pos = bad_q.data();
       }},
      {"query outside the sequence",
       [&](ScoreParams& p) {
         bad_q = {40, 11, 29};
         p.query_pos = bad_q.data();
       }},
      {"num_image_tokens mismatch", [](ScoreParams& p) { p.layout.num_image_tokens -= 1; }},
      {"cu_seqlens end mismatch",
       [&](ScoreParams& p) {
         bad_cu = {0, 40, 52, 81};
         p.layout.cu_seqlens = bad_cu.data();
       }},
      {"kv heads do not divide", [](ScoreParams& p) { p.num_kv_heads = 3; }},
      {"null q", [](ScoreParams& p) { p.q = nullptr; }},
      {"null scores", [](ScoreParams& p) { p.scores = nullptr; }},
      {"negative scale", [](ScoreParams& p) { p.softmax_scale = -1.0f; }},
      {"zero stride", [](ScoreParams& p) { p.k_head_stride = 0; }},
      {"image without query",
       [](ScoreParams& p) {
         static const int64_t cu_q[] = {0, 1, 2, 2};  // the third sequence has two images
         p.cu_queries = cu_q;
         p.num_queries = 2;
       }},
      {"negative span length",
       [&](ScoreParams& p) {
         bad_len = {20, -1, 8};
         p.layout.span_length = bad_len.data();
       }},
  };
  for (const auto& c : score_cases) {
    INFO(c.first);
    ScoreParams p = good;
    bad_start = lay.start;
    bad_len = lay.length;
    bad_cu = lay.cu_seqlens;
    bad_q = qpos;
    c.second(p);
    const Status st = ref::token_drop_score(p);
    INFO(st.reason());
    CHECK_FALSE(st.is_ok());
    CHECK(st.code() == cudaErrorInvalidValue);
    CHECK(std::strlen(st.reason()) > 10);
    CHECK(bytes_equal(scores, poisoned));
  }

  // Select.
  std::vector<float> sc(static_cast<size_t>(lay.image_tokens), 1e-3f);
  std::vector<int64_t> kept(40), cu_kept(4);
  fulgur_test::poison(kept);
  fulgur_test::poison(cu_kept);
  const std::vector<int64_t> kept0 = kept, cu_kept0 = cu_kept;
  std::vector<int64_t> orig = {20, 10, 8};
  SelectParams sg;
  sg.layout = lay.view();
  sg.scores = sc.data();
  sg.ratio = 0.5;
  sg.num_kept = 10 + 5 + 4;
  sg.kept_index = kept.data();
  sg.cu_kept = cu_kept.data();
  REQUIRE(td::validate(sg).is_ok());
  const std::vector<std::pair<const char*, std::function<void(SelectParams&)>>> select_cases = {
      {"ratio below 0", [](SelectParams& p) { p.ratio = -0.1; }},
      {"ratio above 1", [](SelectParams& p) { p.ratio = 1.5; }},
      {"ratio NaN", [](SelectParams& p) { p.ratio = NAN; }},
      {"keep exceeds the current span",
       [&](SelectParams& p) {
         orig = {60, 10, 8};
         p.original_length = orig.data();
       }},
      {"num_kept mismatch", [](SelectParams& p) { p.num_kept = 18; }},
      {"null kept_index", [](SelectParams& p) { p.kept_index = nullptr; }},
      {"unknown rule", [](SelectParams& p) { p.rule = static_cast<KeepRule>(7); }},
  };
  for (const auto& c : select_cases) {
    INFO(c.first);
    SelectParams p = sg;
    c.second(p);
    const Status st = ref::token_drop_select(p);
    INFO(st.reason());
    CHECK_FALSE(st.is_ok());
    CHECK(bytes_equal(kept, kept0));
    CHECK(bytes_equal(cu_kept, cu_kept0));
  }

  // Compact.
  std::vector<int64_t> ki = {5, 7, 9, 0, 2, 12, 13}, ck = {0, 3, 5, 7};
  const int64_t Lp = lay.rows() - (lay.image_tokens - 7);
  std::vector<float> hid(static_cast<size_t>(lay.rows() * 4), 1.0f),
      hid_out(static_cast<size_t>(Lp * 4));
  std::vector<int64_t> new_cu(4), pos_out(static_cast<size_t>(3 * Lp));
  fulgur_test::poison(hid_out);
  fulgur_test::poison(new_cu);
  fulgur_test::poison(pos_out);
  const std::vector<float> hid_out0 = hid_out;
  const std::vector<int64_t> new_cu0 = new_cu, pos_out0 = pos_out;
  CompactParams cg;
  cg.layout = lay.view();
  cg.num_kept = 7;
  cg.kept_index = ki.data();
  cg.cu_kept = ck.data();
  cg.out_rows = Lp;
  cg.new_cu_seqlens = new_cu.data();
  cg.hidden = {hid.data(), hid_out.data(), 4, 4, 4, 4};
  cg.position_ids_out = pos_out.data();
  REQUIRE(td::validate(cg).is_ok());
  std::vector<int64_t> bad_ki = ki;
  const std::vector<std::pair<const char*, std::function<void(CompactParams&)>>> compact_cases = {
      {"kept index outside its span",
       [&](CompactParams& p) {
         bad_ki = {5, 7, 25, 0, 2, 12, 13};
         p.kept_index = bad_ki.data();
       }},
      {"kept indices not ascending",
       [&](CompactParams& p) {
         bad_ki = {5, 9, 7, 0, 2, 12, 13};
         p.kept_index = bad_ki.data();
       }},
      {"kept index repeated",
       [&](CompactParams& p) {
         bad_ki = {5, 7, 7, 0, 2, 12, 13};
         p.kept_index = bad_ki.data();
       }},
      {"out_rows mismatch", [](CompactParams& p) { p.out_rows -= 1; }},
      {"position rows 2", [](CompactParams& p) { p.position_rows = 2; }},
      {"keep-original without input ids",
       [](CompactParams& p) { p.position_mode = PositionMode::kKeepOriginal; }},
      {"output aliases input", [&](CompactParams& p) { p.hidden.out = hid.data(); }},
      {"element size 3", [](CompactParams& p) { p.hidden.elem_bytes = 3; }},
      {"stride below width", [](CompactParams& p) { p.hidden.out_row_stride = 3; }},
      {"null new_cu_seqlens", [](CompactParams& p) { p.new_cu_seqlens = nullptr; }},
      {"extra without array", [](CompactParams& p) { p.num_extra = 1; }},
      {"3 rows, short stride",
       [](CompactParams& p) {
         p.position_rows = 3;
         p.position_ids_out_stride = 10;
       }},
  };
  for (const auto& c : compact_cases) {
    INFO(c.first);
    CompactParams p = cg;
    bad_ki = ki;
    c.second(p);
    const Status st = ref::token_drop_compact(p);
    INFO(st.reason());
    CHECK_FALSE(st.is_ok());
    CHECK(bytes_equal(hid_out, hid_out0));
    CHECK(bytes_equal(new_cu, new_cu0));
    CHECK(bytes_equal(pos_out, pos_out0));
  }

  // Schedule.
  const int64_t layers[] = {8, 16, 24};
  const int64_t n[] = {576};
  double ratios[] = {0.5, 0.25, 0.125};
  ScheduleParams sp;
  sp.num_layers = 32;
  sp.num_drops = 3;
  sp.drop_layers = layers;
  sp.ratios = ratios;
  sp.seq_len = 640;
  sp.num_spans = 1;
  sp.image_lengths = n;
  StagePlan st[4];
  REQUIRE(td::validate(sp).is_ok());
  const int64_t bad_layers[] = {8, 8, 24};
  const int64_t late_layers[] = {8, 16, 32};
  const double growing[] = {0.25, 0.5, 0.125};
  const double outside[] = {0.5, 1.25, 0.125};
  const std::vector<std::pair<const char*, std::function<void(ScheduleParams&)>>> sched_cases = {
      {"drop layers not ascending", [&](ScheduleParams& p) { p.drop_layers = bad_layers; }},
      {"drop layer past the last layer", [&](ScheduleParams& p) { p.drop_layers = late_layers; }},
      {"ratios grow", [&](ScheduleParams& p) { p.ratios = growing; }},
      {"ratio outside [0, 1]", [&](ScheduleParams& p) { p.ratios = outside; }},
      {"more image tokens than the prompt", [](ScheduleParams& p) { p.seq_len = 500; }},
      {"no layers", [](ScheduleParams& p) { p.num_layers = 0; }},
  };
  for (const auto& c : sched_cases) {
    INFO(c.first);
    ScheduleParams p = sp;
    for (StagePlan& s : st) s.seq_len = -7;
    c.second(p);
    const Status status = ref::token_drop_schedule(p, st);
    INFO(status.reason());
    CHECK_FALSE(status.is_ok());
    for (const StagePlan& s : st) CHECK(s.seq_len == -7);
  }
}
