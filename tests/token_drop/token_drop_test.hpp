// SPDX-License-Identifier: Apache-2.0
// Shared pieces of the token-drop kernel tests: packed batches (host metadata for the fp64
// references, device copies for the kernels), attention-like q/k data in any dtype, and runners
// that call a kernel and its reference on the same inputs. The oracles are the fp64 references
// of include/fulgur/reference/token_drop.hpp (tested on their own in tests/reference) plus the
// spec's properties checked here directly.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "fulgur/memory.hpp"
#include "fulgur/reference/token_drop.hpp"
#include "fulgur/token_drop.cuh"
#include "fulgur_test.hpp"

namespace td_test {

using fulgur::DeviceBuffer;
using fulgur::DType;
using fulgur::token_drop::BatchLayout;
using fulgur::token_drop::CompactParams;
using fulgur::token_drop::KeepRule;
using fulgur::token_drop::PositionMode;
using fulgur::token_drop::RowTensor;
using fulgur::token_drop::ScoreParams;
using fulgur::token_drop::SelectParams;
namespace td = fulgur::token_drop;
namespace ref = fulgur::reference;

/// The emulation's thread backend (the ThreadSanitizer build) runs one OS thread per CUDA thread,
/// about 100x slower than the fiber backend: there the tests keep every code path but shrink the
/// model shapes (races do not depend on the sizes).
#if defined(FULGUR_EMU_THREADS) && FULGUR_EMU_THREADS
constexpr bool kSlowBackend = true;
#else
constexpr bool kSlowBackend = false;
#endif

template <typename T>
std::vector<T> read(const DeviceBuffer<T>& buf) {
  REQUIRE(fulgur::device_synchronize() == cudaSuccess);
  return buf.to_host();
}

template <typename T>
bool bytes_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

/// A device buffer filled with 0xFF bytes (NaN floats, -1 integers): unwritten elements show.
template <typename T>
DeviceBuffer<T> poisoned(size_t n) {
  DeviceBuffer<T> b(n);
  REQUIRE(b.fill_bytes(0xFF) == cudaSuccess);
  return b;
}

struct Seq {
  int64_t len;
  std::vector<std::pair<int64_t, int64_t>> spans;  // (start, length)
};

/// A packed varlen batch: host metadata and its device copy.
struct Batch {
  std::vector<int64_t> cu_seqlens{0}, cu_spans{0}, start, length;
  int64_t image_tokens = 0;
  DeviceBuffer<int64_t> d_cu_seqlens, d_cu_spans, d_start, d_length;

  explicit Batch(const std::vector<Seq>& seqs) {
    for (const Seq& s : seqs) {
      cu_seqlens.push_back(cu_seqlens.back() + s.len);
      for (auto sp : s.spans) {
        start.push_back(sp.first);
        length.push_back(sp.second);
        image_tokens += sp.second;
      }
      cu_spans.push_back(static_cast<int64_t>(start.size()));
    }
    upload();
  }
  /// After editing the host vectors (bad-input tests).
  void upload() {
    d_cu_seqlens = DeviceBuffer<int64_t>(cu_seqlens);
    d_cu_spans = DeviceBuffer<int64_t>(cu_spans);
    d_start = DeviceBuffer<int64_t>(start.empty() ? std::vector<int64_t>{0} : start);
    d_length = DeviceBuffer<int64_t>(length.empty() ? std::vector<int64_t>{0} : length);
  }
  int64_t batch() const { return static_cast<int64_t>(cu_seqlens.size()) - 1; }
  int64_t rows() const { return cu_seqlens.back(); }
  int64_t spans() const { return static_cast<int64_t>(start.size()); }
  int64_t seqlen(int64_t b) const { return cu_seqlens[b + 1] - cu_seqlens[b]; }
  BatchLayout host() const {
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
  BatchLayout device() const {
    BatchLayout l = host();
    l.cu_seqlens = d_cu_seqlens.data();
    l.cu_spans = d_cu_spans.data();
    l.span_start = d_start.data();
    l.span_length = d_length.data();
    return l;
  }
};

template <typename T>
DType dtype_of() {
  return fulgur::DTypeOf<T>::value;
}

/// Attention-like q and k in dtype T: N(0, 1.2^2) entries (q.k/sqrt(d) has a standard deviation
/// of 1.44, softmax rows neither flat nor one-hot), 3% of the keys with 2.5x the norm (the
/// attention-sink-like peaks the ranking exists for). Optional padding makes the strides larger
/// than the packed ones.
template <typename T>
struct QK {
  int H, Hkv, d;
  int64_t Q, L;
  int64_t q_row_stride, q_head_stride, k_row_stride, k_head_stride;
  std::vector<T> q, k;
  DeviceBuffer<T> d_q, d_k;

  QK(fulgur_test::Rng& rng, int H_, int Hkv_, int d_, int64_t Q_, int64_t L_, int64_t pad = 0)
      : H(H_),
        Hkv(Hkv_),
        d(d_),
        Q(Q_),
        L(L_),
        q_row_stride(H_ * (d_ + pad) + pad),
        q_head_stride(d_ + pad),
        k_row_stride(Hkv_ * (d_ + pad) + pad),
        k_head_stride(d_ + pad) {
    q.resize(static_cast<size_t>(Q * q_row_stride));
    k.resize(static_cast<size_t>(L * k_row_stride));
    for (auto& x : q) x = fulgur::from_double<T>(rng.normal(0.0, 1.2));
    for (int64_t j = 0; j < L; ++j) {
      const double gain = rng.uniform(0.0, 1.0) < 0.03 ? 2.5 : 1.0;
      for (int64_t e = 0; e < k_row_stride; ++e)
        k[j * k_row_stride + e] = fulgur::from_double<T>(gain * rng.normal(0.0, 1.2));
    }
    d_q = DeviceBuffer<T>(q);
    d_k = DeviceBuffer<T>(k);
  }
  /// Rows [q0, q0 + nq) of q and [k0, k0 + nk) of k of another problem (batch invariance).
  QK(const QK& o, int64_t q0, int64_t nq, int64_t k0, int64_t nk)
      : H(o.H),
        Hkv(o.Hkv),
        d(o.d),
        Q(nq),
        L(nk),
        q_row_stride(o.q_row_stride),
        q_head_stride(o.q_head_stride),
        k_row_stride(o.k_row_stride),
        k_head_stride(o.k_head_stride),
        q(o.q.begin() + q0 * o.q_row_stride, o.q.begin() + (q0 + nq) * o.q_row_stride),
        k(o.k.begin() + k0 * o.k_row_stride, o.k.begin() + (k0 + nk) * o.k_row_stride),
        d_q(q),
        d_k(k) {}
  double qv(int64_t row, int h, int i) const {
    return fulgur::to_double(q[row * q_row_stride + h * q_head_stride + i]);
  }
  double kv(int64_t row, int g, int i) const {
    return fulgur::to_double(k[row * k_row_stride + g * k_head_stride + i]);
  }
  void fill(ScoreParams& p, bool device) const {
    p.q = device ? static_cast<const void*>(d_q.data()) : static_cast<const void*>(q.data());
    p.k = device ? static_cast<const void*>(d_k.data()) : static_cast<const void*>(k.data());
    p.q_row_stride = q_row_stride;
    p.q_head_stride = q_head_stride;
    p.k_row_stride = k_row_stride;
    p.k_head_stride = k_head_stride;
    p.dtype = dtype_of<T>();
    p.num_heads = H;
    p.num_kv_heads = Hkv;
    p.head_dim = d;
    p.num_queries = Q;
  }
};

/// Query rows of a score problem: cu_queries (empty: one per sequence, null pointer) and the
/// positions (empty: the last token, null pointer).
struct Queries {
  std::vector<int64_t> cu, pos;
  DeviceBuffer<int64_t> d_cu, d_pos;
  Queries() = default;
  Queries(std::vector<int64_t> cu_, std::vector<int64_t> pos_) : cu(std::move(cu_)), pos(std::move(pos_)) {
    if (!cu.empty()) d_cu = DeviceBuffer<int64_t>(cu);
    if (!pos.empty()) d_pos = DeviceBuffer<int64_t>(pos);
  }
  void fill(ScoreParams& p, bool device) const {
    p.cu_queries = cu.empty() ? nullptr : (device ? d_cu.data() : cu.data());
    p.query_pos = pos.empty() ? nullptr : (device ? d_pos.data() : pos.data());
  }
};

/// Runs fulgur::token_drop::score with a fresh workspace on poisoned scores; returns the error.
inline cudaError_t run_score(const ScoreParams& p, DeviceBuffer<float>& scores) {
  ScoreParams q = p;
  q.scores = scores.data();
  size_t bytes = 0;
  cudaError_t e = td::score(nullptr, bytes, q, nullptr);
  if (e != cudaSuccess) return e;
  DeviceBuffer<unsigned char> ws(bytes > 0 ? bytes : 1);
  return td::score(ws.data(), bytes, q, nullptr);
}

/// Score parameters for a batch (device or host pointers).
template <typename T>
ScoreParams score_params(const Batch& bt, const QK<T>& qk, const Queries& qs, bool device, float scale = 0.0f,
                         bool fp16 = false) {
  ScoreParams p;
  p.layout = device ? bt.device() : bt.host();
  qk.fill(p, device);
  qs.fill(p, device);
  p.softmax_scale = scale;
  p.fp16_compat = fp16;
  return p;
}

/// The fp64 reference scores of a problem.
template <typename T>
std::vector<float> reference_scores(const Batch& bt, const QK<T>& qk, const Queries& qs, float scale = 0.0f,
                                    bool fp16 = false) {
  std::vector<float> out(static_cast<size_t>(bt.image_tokens > 0 ? bt.image_tokens : 1));
  ScoreParams p = score_params(bt, qk, qs, false, scale, fp16);
  p.scores = out.data();
  REQUIRE(ref::token_drop_score(p).is_ok());
  out.resize(static_cast<size_t>(bt.image_tokens));
  return out;
}

/// Outputs of select.
struct SelectOut {
  std::vector<int64_t> kept, cu_kept;
};

inline int64_t total_keep(const Batch& bt, KeepRule rule, double ratio, const std::vector<int64_t>* original) {
  int64_t k = 0;
  for (int64_t s = 0; s < bt.spans(); ++s) k += td::keep_count(original ? (*original)[s] : bt.length[s], rule, ratio);
  return k;
}

/// Runs the select kernel on device scores; cu_kept sized num_spans + 1.
inline SelectOut run_select_kernel(const Batch& bt, const DeviceBuffer<float>& scores, KeepRule rule, double ratio,
                                   const std::vector<int64_t>* original = nullptr) {
  const int64_t num_kept = total_keep(bt, rule, ratio, original);
  DeviceBuffer<int64_t> kept = poisoned<int64_t>(static_cast<size_t>(num_kept > 0 ? num_kept : 1));
  DeviceBuffer<int64_t> cu_kept = poisoned<int64_t>(static_cast<size_t>(bt.spans() + 1));
  DeviceBuffer<int64_t> d_orig;
  SelectParams p;
  p.layout = bt.device();
  p.scores = scores.data();
  p.rule = rule;
  p.ratio = ratio;
  if (original) {
    d_orig = DeviceBuffer<int64_t>(*original);
    p.original_length = d_orig.data();
  }
  p.num_kept = num_kept;
  p.kept_index = kept.data();
  p.cu_kept = cu_kept.data();
  REQUIRE(td::select(p, nullptr) == cudaSuccess);
  SelectOut o;
  o.kept = read(kept);
  o.kept.resize(static_cast<size_t>(num_kept));
  o.cu_kept = read(cu_kept);
  return o;
}

/// The reference selection of host scores.
inline SelectOut reference_select(const Batch& bt, const std::vector<float>& scores, KeepRule rule, double ratio,
                                  const std::vector<int64_t>* original = nullptr) {
  const int64_t num_kept = total_keep(bt, rule, ratio, original);
  SelectOut o;
  o.kept.assign(static_cast<size_t>(num_kept > 0 ? num_kept : 1), -7);
  o.cu_kept.assign(static_cast<size_t>(bt.spans() + 1), -7);
  SelectParams p;
  p.layout = bt.host();
  p.scores = scores.data();
  p.rule = rule;
  p.ratio = ratio;
  p.original_length = original ? original->data() : nullptr;
  p.num_kept = num_kept;
  p.kept_index = o.kept.data();
  p.cu_kept = o.cu_kept.data();
  REQUIRE(ref::token_drop_select(p).is_ok());
  o.kept.resize(static_cast<size_t>(num_kept));
  return o;
}

/// The spec's selection properties for one selection of `scores` (span order): per span exactly
/// keep_s kept, strictly increasing inside the span, and every kept score >= every dropped one
/// (NaN counts below every number; equal scores: the kept one has the lower index).
inline void check_selection_properties(const Batch& bt, const std::vector<float>& scores, const SelectOut& o,
                                       const std::vector<int64_t>& keeps) {
  REQUIRE(o.cu_kept.size() == static_cast<size_t>(bt.spans() + 1));
  CHECK(o.cu_kept[0] == 0);
  int64_t tok = 0;
  for (int64_t s = 0; s < bt.spans(); ++s) {
    const int64_t k0 = o.cu_kept[s], k1 = o.cu_kept[s + 1];
    CHECK(k1 - k0 == keeps[s]);
    std::vector<bool> kept(static_cast<size_t>(bt.length[s]), false);
    for (int64_t i = k0; i < k1; ++i) {
      const int64_t j = o.kept[i];
      REQUIRE(j >= bt.start[s]);
      REQUIRE(j < bt.start[s] + bt.length[s]);
      if (i > k0) CHECK(o.kept[i - 1] < j);
      kept[j - bt.start[s]] = true;
    }
    // Kept beats dropped: the order "higher score first, NaN below every number, equal scores by
    // lower index" is a strict total order, so it suffices that the worst kept token beats the
    // best dropped one (linear scans, no bit tricks).
    auto beats = [&](int64_t a, int64_t b) {
      const float x = scores[tok + a], y = scores[tok + b];
      const bool xn = std::isnan(x), yn = std::isnan(y);
      if (xn != yn) return yn;
      if (!xn && x != y) return x > y;
      return a < b;
    };
    int64_t worst_kept = -1, best_dropped = -1;
    for (int64_t a = 0; a < bt.length[s]; ++a) {
      if (kept[a]) {
        if (worst_kept < 0 || beats(worst_kept, a)) worst_kept = a;
      } else if (best_dropped < 0 || beats(a, best_dropped)) {
        best_dropped = a;
      }
    }
    if (worst_kept >= 0 && best_dropped >= 0) {
      INFO("span " << s << " worst kept " << worst_kept << " (" << scores[tok + worst_kept] << ") best dropped "
                   << best_dropped << " (" << scores[tok + best_dropped] << ")");
      CHECK(beats(worst_kept, best_dropped));
    }
    tok += bt.length[s];
  }
}

/// The relative worst-case error bound of a kernel score (docs/token_drop.md, "Precision"),
/// derived from fp32 arithmetic with u = 2^-24 on the problem's own data:
///   each logit: |dlogit| <= E = scale * gamma_d * max sum_i |q_i k_i| + 2u * max|logit|
///                (fmaf dot, gamma_d = d u / (1 - d u), then one rounded multiply by scale);
///   lse: <= E + (n + 8) u (the sum of n exps in any order, expf/logf/merge roundings);
///   each probability relative: <= 2 E + (n + 16) u; head and query means add H + Q roundings.
/// `max_keys` is the longest causal row. Returned as a relative bound on each score.
template <typename T>
double score_error_bound(const QK<T>& qk, double scale, int64_t max_keys) {
  const double u = std::ldexp(1.0, -24);
  const double gamma = qk.d * u / (1.0 - qk.d * u);
  double max_abs_dot = 0.0, max_logit = 0.0;
  for (int64_t r = 0; r < qk.Q; ++r) {
    for (int h = 0; h < qk.H; ++h) {
      const int g = h / (qk.H / qk.Hkv);
      for (int64_t j = 0; j < qk.L; ++j) {
        double a = 0.0, s = 0.0;
        for (int i = 0; i < qk.d; ++i) {
          a += std::fabs(qk.qv(r, h, i) * qk.kv(j, g, i));
          s += qk.qv(r, h, i) * qk.kv(j, g, i);
        }
        max_abs_dot = std::max(max_abs_dot, a);
        max_logit = std::max(max_logit, std::fabs(s * scale));
      }
    }
  }
  const double E = scale * gamma * max_abs_dot + 2.0 * u * max_logit;
  return 2.0 * E + static_cast<double>(max_keys + 16 + qk.H + qk.Q) * u;
}

}  // namespace td_test
