// SPDX-License-Identifier: Apache-2.0
// CPU references of the visual token drop (PyramidDrop / FastV): score, select, compact, and the
// host schedule (fulgur/token_drop/schedule.hpp, re-exported here). fp64 arithmetic, any input
// dtype read through its DType tag. They take the Params of fulgur/token_drop/params.hpp, call
// validate() first (so metadata must be host-readable) and, on bad input, return its Status
// without writing any output.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fulgur/detail/config.hpp"
#include "fulgur/detail/dtype.hpp"
#include "fulgur/detail/status.hpp"
#include "fulgur/token_drop/params.hpp"
#include "fulgur/token_drop/schedule.hpp"

FULGUR_NAMESPACE_BEGIN
namespace reference {

namespace token_drop_detail {

inline double load(const void* base, DType t, int64_t i) {
  switch (t) {
    case DType::kF32: return to_double(static_cast<const float*>(base)[i]);
    case DType::kF16: return to_double(static_cast<const __half*>(base)[i]);
    case DType::kBF16: return to_double(static_cast<const __nv_bfloat16*>(base)[i]);
    case DType::kF64: return static_cast<const double*>(base)[i];
  }
  return NAN;
}

/// Round to fp16 and back (round-to-nearest-even, through float as from_double does).
inline double round_fp16(double x) { return to_double(from_double<__half>(x)); }

/// scale * q_h . k_{g(h), row}: spec step 3 for one query row, one head and one key row.
inline double logit(const token_drop::ScoreParams& p, int64_t qrow, int h, int64_t krow,
                    double scale) {
  const int g = h / (p.num_heads / p.num_kv_heads);  // GQA: consecutive query heads share a kv head
  const int64_t qoff = qrow * p.q_row_stride + h * p.q_head_stride;
  const int64_t koff = krow * p.k_row_stride + g * p.k_head_stride;
  double dot = 0.0;
  for (int i = 0; i < p.head_dim; ++i) {
    dot += load(p.q, p.dtype, qoff + i) * load(p.k, p.dtype, koff + i);
  }
  return scale * dot;
}

}  // namespace token_drop_detail

/// score_j = (1 / (Q_b H)) sum_{q, h} p_{q,h,j} for the image tokens j of each sequence, with
/// p_{q,h,j} = exp(logit_{q,h,j} - lse_{q,h}) and lse_{q,h} the log-sum-exp over ALL keys 0..pos_q
/// of the sequence (spec steps 3-5: causal row, no renormalization over the image tokens).
/// Materializes only one lse per (query row, head); logits are recomputed for the image tokens.
inline Status token_drop_score(const token_drop::ScoreParams& p) {
  FULGUR_RETURN_IF_ERROR(token_drop::validate(p));
  using token_drop_detail::logit;
  const token_drop::BatchLayout& l = p.layout;
  const int H = p.num_heads;
  const double scale = p.softmax_scale == 0.0f ? 1.0 / std::sqrt(static_cast<double>(p.head_dim))
                                               : static_cast<double>(p.softmax_scale);
  std::vector<double> lse;
  int64_t out = 0;  // next score, span order
  for (int64_t b = 0; b < l.batch && l.num_spans > 0; ++b) {
    const int64_t s0 = l.cu_spans[b], s1 = l.cu_spans[b + 1];
    if (s0 == s1) continue;  // no image: nothing to score
    const int64_t row0 = l.cu_seqlens[b];
    const int64_t seqlen = l.cu_seqlens[b + 1] - row0;
    const int64_t q0 = p.cu_queries ? p.cu_queries[b] : b;
    const int64_t nq = (p.cu_queries ? p.cu_queries[b + 1] : b + 1) - q0;

    // Pass 1: lse_{q,h} = m + log sum_{j <= pos} exp(logit_j - m), m the row max (overflow-free).
    lse.assign(static_cast<size_t>(nq * H), 0.0);
    for (int64_t qi = 0; qi < nq; ++qi) {
      const int64_t pos = p.query_pos ? p.query_pos[q0 + qi] : seqlen - 1;
      for (int h = 0; h < H; ++h) {
        double m = -INFINITY;
        for (int64_t j = 0; j <= pos; ++j) m = std::fmax(m, logit(p, q0 + qi, h, row0 + j, scale));
        double sum = 0.0;
        for (int64_t j = 0; j <= pos; ++j)
          sum += std::exp(logit(p, q0 + qi, h, row0 + j, scale) - m);
        lse[static_cast<size_t>(qi * H + h)] = m + std::log(sum);
      }
    }

    // Pass 2: the image tokens only. Every query position is past every span (validate), so
    // each image key is inside each query's causal row.
    for (int64_t s = s0; s < s1; ++s) {
      for (int64_t j = l.span_start[s]; j < l.span_start[s] + l.span_length[s]; ++j) {
        double query_sum = 0.0;
        for (int64_t qi = 0; qi < nq; ++qi) {
          double head_sum = 0.0;
          for (int h = 0; h < H; ++h) {
            const double pr = std::exp(logit(p, q0 + qi, h, row0 + j, scale) -
                                       lse[static_cast<size_t>(qi * H + h)]);
            // Upstream: softmax in fp32, then .to(fp16) before torch.mean over heads.
            head_sum += p.fp16_compat ? token_drop_detail::round_fp16(pr) : pr;
          }
          double head_mean = head_sum / H;
          if (p.fp16_compat) head_mean = token_drop_detail::round_fp16(head_mean);  // fp16 mean
          query_sum += head_mean;
        }
        double score = query_sum / static_cast<double>(nq);
        if (p.fp16_compat) score = token_drop_detail::round_fp16(score);  // fp16 mean over queries
        p.scores[out++] = from_double<float>(score);
      }
    }
  }
  return Status::success();
}

/// Per span: keep_s = keep_count(N, rule, ratio) tokens, N the original length. Token i beats
/// token j when s_i > s_j, or s_i == s_j and i < j (lower index wins ties; NaN ranks below every
/// number). That is a strict total order, so rank_i = #{j : j beats i} is a permutation of
/// 0..n-1 and "keep i iff rank_i < keep_s" keeps exactly keep_s tokens, the top ones; walking i
/// upward writes them ascending. O(n^2) per span on purpose: each line checks against the rule.
inline Status token_drop_select(const token_drop::SelectParams& p) {
  FULGUR_RETURN_IF_ERROR(token_drop::validate(p));
  const token_drop::BatchLayout& l = p.layout;
  auto beats = [](float a, int64_t ia, float b, int64_t ib) {
    const bool na = std::isnan(a), nb = std::isnan(b);
    if (na != nb) return nb;          // a number beats NaN
    if (!na && a != b) return a > b;  // higher score
    return ia < ib;                   // tie (or both NaN): lower index
  };
  int64_t out = 0;
  int64_t in = 0;  // first score of the span
  for (int64_t s = 0; s < l.num_spans; ++s) {
    const int64_t n = l.span_length[s];
    const int64_t n_orig = p.original_length ? p.original_length[s] : n;
    const int64_t keep = token_drop::keep_count(n_orig, p.rule, p.ratio);
    if (p.cu_kept) p.cu_kept[s] = out;
    const float* sc = p.scores + in;
    for (int64_t i = 0; i < n; ++i) {
      int64_t rank = 0;
      for (int64_t j = 0; j < n; ++j) rank += beats(sc[j], j, sc[i], i) ? 1 : 0;
      if (rank < keep) p.kept_index[out++] = l.span_start[s] + i;
    }
    in += n;
  }
  if (p.cu_kept) p.cu_kept[l.num_spans] = out;
  return Status::success();
}

/// Order-preserving compaction: per sequence, every text row and the kept image rows, in their
/// original order; new cu_seqlens; gathered row tensors (bit copies); position ids renumbered
/// 0..L'_b-1 (all P rows) or the kept tokens' original ids.
inline Status token_drop_compact(const token_drop::CompactParams& p) {
  FULGUR_RETURN_IF_ERROR(token_drop::validate(p));
  const token_drop::BatchLayout& l = p.layout;

  auto copy_row = [](const token_drop::RowTensor& t, int64_t src, int64_t dst) {
    if (t.in == nullptr) return;
    const size_t bytes = static_cast<size_t>(t.width * t.elem_bytes);
    std::memcpy(static_cast<char*>(t.out) + dst * t.out_row_stride * t.elem_bytes,
                static_cast<const char*>(t.in) + src * t.in_row_stride * t.elem_bytes, bytes);
  };

  int64_t dst = 0;
  if (l.batch > 0) p.new_cu_seqlens[0] = 0;
  for (int64_t b = 0; b < l.batch; ++b) {
    const int64_t row0 = l.cu_seqlens[b];
    const int64_t seqlen = l.cu_seqlens[b + 1] - row0;
    const int64_t s0 = l.num_spans ? l.cu_spans[b] : 0;
    const int64_t s1 = l.num_spans ? l.cu_spans[b + 1] : 0;
    const int64_t dst0 = dst;
    int64_t s = s0;                           // the current or next span of this sequence
    int64_t k = s0 < s1 ? p.cu_kept[s0] : 0;  // next kept index of span s
    int64_t dropped = 0;                      // image tokens dropped so far in this sequence
    for (int64_t t = 0; t < seqlen; ++t) {
      while (s < s1 && t >= l.span_start[s] + l.span_length[s]) {  // past span s (or empty)
        if (p.new_span_start) p.new_span_start[s] = l.span_start[s] - dropped;
        if (p.new_span_length) p.new_span_length[s] = p.cu_kept[s + 1] - p.cu_kept[s];
        dropped += l.span_length[s] - (p.cu_kept[s + 1] - p.cu_kept[s]);
        ++s;
        k = s < s1 ? p.cu_kept[s] : 0;
      }
      bool keep = true;
      if (s < s1 && t >= l.span_start[s]) {  // image token of span s: kept iff listed
        keep = k < p.cu_kept[s + 1] && p.kept_index[k] == t;
        if (keep) ++k;
      }
      if (!keep) continue;
      const int64_t src = row0 + t;
      if (p.row_map) p.row_map[dst] = src;
      copy_row(p.hidden, src, dst);
      for (int i = 0; i < p.num_extra; ++i) copy_row(p.extra[i], src, dst);
      if (p.position_ids_out) {
        for (int r = 0; r < p.position_rows; ++r) {
          p.position_ids_out[r * p.position_ids_out_stride + dst] =
              p.position_mode == token_drop::PositionMode::kRenumber
                  ? dst - dst0
                  : p.position_ids[r * p.position_ids_stride + src];
        }
      }
      ++dst;
    }
    // Spans ending at the sequence end (or empty ones there) are finished here.
    for (; s < s1; ++s) {
      if (p.new_span_start) p.new_span_start[s] = l.span_start[s] - dropped;
      if (p.new_span_length) p.new_span_length[s] = p.cu_kept[s + 1] - p.cu_kept[s];
      dropped += l.span_length[s] - (p.cu_kept[s + 1] - p.cu_kept[s]);
    }
    p.new_cu_seqlens[b + 1] = dst;
  }
  return Status::success();
}

/// The host schedule (fulgur/token_drop/schedule.hpp is the product code; this is the same call
/// under the reference's naming, for users who test against the reference header alone).
inline Status token_drop_schedule(const token_drop::ScheduleParams& p,
                                  token_drop::StagePlan* stages) {
  return token_drop::make_schedule(p, stages);
}

}  // namespace reference
FULGUR_NAMESPACE_END
