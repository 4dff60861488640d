// SPDX-License-Identifier: Apache-2.0
// Parameters of the similarity-ranked visual token drop (PyramidDrop, FastV), the plain data the
// GPU kernels and the CPU references (include/fulgur/reference/token_drop.hpp) both take.
// The math is the project's token-drop spec (specs/token_drop.md); "step n" below refers to the
// numbered list of its section "The score".
//
// One drop event is three operations on a packed varlen batch (no padding, cu_seqlens):
//   score   : score_j = mean over heads h and query rows q of softmax_j(q_h . k_{g(h), 0..pos})
//             for the image tokens j only (spec steps 3-5),
//   select  : keep the top keep_s image tokens of each span, ties to the lower index, ascending,
//   compact : drop the other image rows from hidden states (and any other row tensors), write
//             the new cu_seqlens and the new position ids.
// The host-side schedule (stage keep counts, stage lengths, decode position shift) is in
// fulgur/token_drop/schedule.hpp.
//
// Metadata (cu_seqlens, spans, query positions, kept indices) is int64 throughout, like the
// index tensors PyTorch produces (topk, arange, position_ids); engines holding int32 cu_seqlens
// widen them once per batch.
//
// Two levels of host checks, both returning a Status with a readable reason and writing nothing:
//   validate_arguments(p): sizes, null pointers, strides, enums, ratios. Never dereferences a
//                          pointer, so it is what a GPU launcher's can_implement calls.
//   validate(p)          : validate_arguments(p) plus the content of the metadata arrays (spans
//                          inside their sequence, queries after the image, kept indices sorted).
//                          It reads the metadata, which must then be host-readable; the
//                          references call it first. Engines may call it on host copies in debug.
#pragma once

#include <cmath>
#include <cstdint>

#include "fulgur/detail/config.hpp"
#include "fulgur/detail/dtype.hpp"
#include "fulgur/detail/overlap.hpp"
#include "fulgur/detail/status.hpp"

FULGUR_NAMESPACE_BEGIN
namespace token_drop {

/// How many image tokens a stage keeps, from the ORIGINAL count N of a span and the stage ratio.
enum class KeepRule : int {
  /// PyramidDrop: keep = floor(N * r), r the kept fraction (1, 1/2, 1/4, 1/8 by default). The
  /// product is taken in double, exactly as upstream's Python int(N * r).
  kFloorKeepRatio = 0,
  /// FastV: keep = round(N * (1 - R)), R the dropped fraction, rounded as Python 3's round()
  /// (half to even) on the double product, as upstream's topk(round(...)) does.
  kFastVRound = 1,
};

/// Position ids of the compacted sequence.
enum class PositionMode : int {
  /// PyramidDrop: renumber 0..L'-1 per sequence (every position row gets the same numbers).
  kRenumber = 0,
  /// FastV, VScan, SparseVLM v2, vLLM EVS: kept tokens keep their original ids (all rows).
  kKeepOriginal = 1,
};

/// keep count of a span of `n` original image tokens at a stage with ratio `ratio` (see
/// KeepRule). Precondition: n >= 0 and 0 <= ratio <= 1 (validate() checks it); the result is then
/// in [0, n].
inline int64_t keep_count(int64_t n, KeepRule rule, double ratio) {
  if (rule == KeepRule::kFloorKeepRatio) {
    return static_cast<int64_t>(std::floor(static_cast<double>(n) * ratio));
  }
  // Python's round(): nearest integer, exact halves to the even neighbour. x - floor(x) is exact
  // in double, so the half test is exact too.
  const double x = static_cast<double>(n) * (1.0 - ratio);
  const double f = std::floor(x);
  const double frac = x - f;
  double r = f;
  if (frac > 0.5) {
    r = f + 1.0;
  } else if (frac == 0.5) {
    r = (std::fmod(f, 2.0) == 0.0) ? f : f + 1.0;
  }
  return static_cast<int64_t>(r);
}

/// The batch every token-drop operation reads: B packed sequences and their image spans.
/// Positions inside a sequence (span starts, query positions, kept indices) are relative to the
/// sequence start; the row of position t of sequence b in a packed tensor is cu_seqlens[b] + t.
struct BatchLayout {
  int64_t batch = 0;                     // B >= 0
  int64_t total_rows = 0;                // L = cu_seqlens[B], rows of the packed tensors
  const int64_t* cu_seqlens = nullptr;   // [B + 1] 0 = cu_seqlens[0] <= ... <= cu_seqlens[B] = L;
                                         // required when B > 0
  int64_t num_spans = 0;                 // S >= 0, image spans of the whole batch
  const int64_t* cu_spans = nullptr;     // [B + 1] spans of sequence b are cu_spans[b] ..
                                         // cu_spans[b+1]-1 (none: no image, passes through);
                                         // may be null only when S == 0
  const int64_t* span_start = nullptr;   // [S] first image position of each span, in its sequence,
                                         // spans of a sequence ascending, non-overlapping; null
                                         // only when S == 0
  const int64_t* span_length = nullptr;  // [S] CURRENT image tokens of each span (>= 0); null
                                         // only when S == 0
  /// Image tokens of the batch, sum of span_length: the length of the packed per-image-token
  /// arrays (scores). Span s's tokens occupy [sum_{t<s} span_length[t], ... + span_length[s]).
  int64_t num_image_tokens = 0;
};

/// Score: per-image-token attention of the query row(s), spec steps 3-5.
struct ScoreParams {
  BatchLayout layout;

  int64_t num_queries = 0;  // Q: query rows of the batch (one per sequence in inference)
  const int64_t* cu_queries = nullptr;  // [B + 1] query rows of sequence b are cu_queries[b] ..
                                        // cu_queries[b+1]-1; null: Q == B, row b belongs to
                                        // sequence b
  const int64_t* query_pos = nullptr;   // [Q] position of each query row in its sequence, at or
                                        // after the end of every image span of that sequence
                                        // (causal row over keys 0..pos); null: the sequence's
                                        // last token (the last prompt token, inference)

  const void* q = nullptr;    // [Q, H_q, d] post-RoPE queries, dtype `dtype`, last dim contiguous;
                              // required when there is an image token
  int64_t q_row_stride = 0;   // elements between query rows (>= 1)
  int64_t q_head_stride = 0;  // elements between heads of a row (>= 1)

  const void* k = nullptr;    // [L, H_kv, d] post-RoPE keys of the whole packed batch, dtype
                              // `dtype`, last dim contiguous; required when there is an image token
  int64_t k_row_stride = 0;   // elements between key rows (>= 1)
  int64_t k_head_stride = 0;  // elements between kv heads of a row (>= 1)

  DType dtype = DType::kBF16;  // q and k element type: kF32, kF16, kBF16 (kF64 references only)
  int num_heads = 0;           // H_q >= 1
  int num_kv_heads = 0;  // H_kv >= 1, divides H_q; query head h reads kv head h / (H_q / H_kv)
  int head_dim = 0;      // d >= 1

  /// Multiplies q . k (spec step 3). 0: 1/sqrt(head_dim), the default; otherwise finite > 0.
  float softmax_scale = 0.0f;
  /// Upstream compatibility (spec step 4): round each probability to fp16 before the head mean,
  /// the head mean to fp16, and the mean over query rows to fp16, as upstream's fp32 softmax
  /// followed by .to(fp16) and torch.mean on fp16 tensors does. Default off: exact scores.
  bool fp16_compat = false;

  float* scores = nullptr;  // [layout.num_image_tokens] output, packed in span order (see
                            // BatchLayout); required when num_image_tokens > 0
};

/// Select: the kept image tokens of every span, ranked on their own.
struct SelectParams {
  BatchLayout layout;  // the CURRENT spans (after earlier drops)

  const float* scores = nullptr;  // [layout.num_image_tokens] the score output, span order;
                                  // NaN ranks below every number

  KeepRule rule = KeepRule::kFloorKeepRatio;
  double ratio = 1.0;  // in [0, 1]: the stage's kept fraction (kFloorKeepRatio) or dropped
                       // fraction R (kFastVRound)
  const int64_t* original_length = nullptr;  // [S] ORIGINAL image tokens of each span, the N the
                                             // keep count is taken from (spec: "always from the
                                             // original N"); null: the current span_length.
                                             // keep_count(N, rule, ratio) must not exceed the
                                             // current span length

  int64_t num_kept = 0;  // sum over spans of keep_count(N_s, rule, ratio): the kept_index length
  int64_t* kept_index = nullptr;  // [num_kept] output: kept image positions (in their sequence),
                                  // span after span, strictly ascending within a span; required
                                  // when num_kept > 0
  int64_t* cu_kept = nullptr;     // [S + 1] output, may be null: kept tokens of span s are
                                  // kept_index[cu_kept[s] .. cu_kept[s+1]-1]
};

/// A tensor of rows gathered by the compaction: [L, width] in, [L', width] out. The gather is a
/// bit copy, so only the element size matters (hidden states, labels, masks, K/V rows...).
/// Elements of a row are contiguous; a head-major tensor ([H, L, d]) is H tensors of [L, d].
struct RowTensor {
  const void* in = nullptr;    // [L, width] rows, elem_bytes each element; null: tensor skipped
  void* out = nullptr;         // [L', width] output; required when `in` is set; its bytes must
                               // not overlap any input's or other output's of the launch
                               // (see detail::byte_rows_overlap)
  int64_t width = 0;           // elements per row (>= 0)
  int64_t elem_bytes = 0;      // 1, 2, 4 or 8
  int64_t in_row_stride = 0;   // elements between input rows (>= width)
  int64_t out_row_stride = 0;  // elements between output rows (>= width)
};

/// Compact: prefix text, kept image tokens, text between spans, ..., suffix text, per sequence.
struct CompactParams {
  BatchLayout layout;  // before the drop

  int64_t num_kept = 0;                 // kept image tokens of the batch
  const int64_t* kept_index = nullptr;  // [num_kept] SelectParams::kept_index; null only when
                                        // num_kept == 0
  const int64_t* cu_kept = nullptr;     // [S + 1] SelectParams::cu_kept; null only when S == 0

  int64_t out_rows = 0;  // L' = L - (num_image_tokens - num_kept), rows of every output tensor

  int64_t* new_cu_seqlens = nullptr;   // [B + 1] output, required when B > 0
  int64_t* row_map = nullptr;          // [L'] output, may be null: source row (in [0, L)) of
                                       // each output row
  int64_t* new_span_start = nullptr;   // [S] output, may be null: span starts after the drop
  int64_t* new_span_length = nullptr;  // [S] output, may be null: kept tokens of each span

  RowTensor hidden;                  // hidden states [L, D] -> [L', D]; `in` null: not gathered
  const RowTensor* extra = nullptr;  // [num_extra] host array of further row tensors (labels,
                                     // attention mask, K/V rows...); null only when num_extra == 0
  int num_extra = 0;

  PositionMode position_mode = PositionMode::kRenumber;
  int position_rows = 1;                  // P: 1, or 3 for M-RoPE (Qwen2-VL) position ids [3, L]
  const int64_t* position_ids = nullptr;  // [P, L] original ids; required in kKeepOriginal mode
                                          // when position_ids_out is set, unused in kRenumber
  int64_t position_ids_stride = 0;        // elements between the P rows of position_ids (>= L
                                          // when P > 1)
  int64_t* position_ids_out = nullptr;    // [P, L'] output, may be null: positions not written
  int64_t position_ids_out_stride = 0;    // elements between the P rows of the output (>= L' when
                                          // P > 1)
};

// ---------------------------------------------------------------------------------------------
// Host checks.

namespace detail {

inline bool ratio_ok(double r) { return r >= 0.0 && r <= 1.0; }  // false for NaN

inline Status validate_layout_arguments(const BatchLayout& l) {
  FULGUR_CHECK_ARG(l.batch >= 0, "token_drop: batch must be >= 0");
  FULGUR_CHECK_ARG(l.total_rows >= 0, "token_drop: total_rows must be >= 0");
  FULGUR_CHECK_ARG(l.batch == 0 || l.cu_seqlens != nullptr,
                   "token_drop: cu_seqlens is null but batch > 0");
  FULGUR_CHECK_ARG(l.num_spans >= 0, "token_drop: num_spans must be >= 0");
  FULGUR_CHECK_ARG(l.num_spans == 0 || l.batch > 0,
                   "token_drop: image spans given for an empty batch");
  FULGUR_CHECK_ARG(l.num_spans == 0 || (l.cu_spans && l.span_start && l.span_length),
                   "token_drop: cu_spans, span_start and span_length are required when "
                   "num_spans > 0");
  FULGUR_CHECK_ARG(l.num_image_tokens >= 0, "token_drop: num_image_tokens must be >= 0");
  FULGUR_CHECK_ARG(l.num_image_tokens <= l.total_rows,
                   "token_drop: num_image_tokens exceeds total_rows");
  return Status::success();
}

/// Reads cu_seqlens, cu_spans, span_start, span_length (host-readable).
inline Status validate_layout_metadata(const BatchLayout& l) {
  if (l.batch > 0) {
    FULGUR_CHECK_ARG(l.cu_seqlens[0] == 0, "token_drop: cu_seqlens[0] must be 0");
    for (int64_t b = 0; b < l.batch; ++b) {
      FULGUR_CHECK_ARG(l.cu_seqlens[b + 1] >= l.cu_seqlens[b],
                       "token_drop: cu_seqlens must be non-decreasing");
    }
    FULGUR_CHECK_ARG(l.cu_seqlens[l.batch] == l.total_rows,
                     "token_drop: cu_seqlens[batch] must equal total_rows");
  } else {
    FULGUR_CHECK_ARG(l.total_rows == 0, "token_drop: total_rows > 0 but batch == 0");
  }
  if (l.num_spans == 0) {
    // cu_spans may be null; when given it must say "no spans" for every sequence.
    if (l.cu_spans != nullptr) {
      for (int64_t b = 0; b <= l.batch; ++b) {
        FULGUR_CHECK_ARG(l.cu_spans[b] == 0, "token_drop: cu_spans lists spans but num_spans == 0");
      }
    }
    FULGUR_CHECK_ARG(l.num_image_tokens == 0,
                     "token_drop: num_image_tokens must be 0 when there are no spans");
    return Status::success();
  }
  FULGUR_CHECK_ARG(l.cu_spans[0] == 0, "token_drop: cu_spans[0] must be 0");
  FULGUR_CHECK_ARG(l.cu_spans[l.batch] == l.num_spans,
                   "token_drop: cu_spans[batch] must equal num_spans");
  int64_t image_tokens = 0;
  for (int64_t b = 0; b < l.batch; ++b) {
    FULGUR_CHECK_ARG(l.cu_spans[b + 1] >= l.cu_spans[b],
                     "token_drop: cu_spans must be non-decreasing");
    const int64_t seqlen = l.cu_seqlens[b + 1] - l.cu_seqlens[b];
    int64_t prev_end = 0;
    for (int64_t s = l.cu_spans[b]; s < l.cu_spans[b + 1]; ++s) {
      FULGUR_CHECK_ARG(l.span_start[s] >= 0, "token_drop: span_start must be >= 0");
      FULGUR_CHECK_ARG(l.span_length[s] >= 0, "token_drop: span_length must be >= 0");
      FULGUR_CHECK_ARG(l.span_start[s] <= seqlen && l.span_length[s] <= seqlen - l.span_start[s],
                       "token_drop: image span outside its sequence");
      FULGUR_CHECK_ARG(l.span_start[s] >= prev_end,
                       "token_drop: image spans of a sequence must be ascending and must not "
                       "overlap");
      prev_end = l.span_start[s] + l.span_length[s];
      image_tokens += l.span_length[s];
    }
  }
  FULGUR_CHECK_ARG(image_tokens == l.num_image_tokens,
                   "token_drop: num_image_tokens must equal the sum of span_length");
  return Status::success();
}

using ::fulgur::detail::array_bytes;
using ::fulgur::detail::byte_rows_overlap;
using ::fulgur::detail::ByteRows;
using ::fulgur::detail::strided_bytes;

inline ByteRows row_tensor_in_bytes(const RowTensor& t, int64_t in_rows) {
  return strided_bytes(t.in, in_rows, t.width, t.in_row_stride, t.elem_bytes);
}
inline ByteRows row_tensor_out_bytes(const RowTensor& t, int64_t out_rows) {
  return strided_bytes(t.out, out_rows, t.width, t.out_row_stride, t.elem_bytes);
}

/// A row tensor of `in_rows` input and `out_rows` output rows. Its input and output rows must
/// share no byte (byte_rows_overlap): the gather reads one while it writes the other.
inline Status validate_row_tensor(const RowTensor& t, int64_t in_rows, int64_t out_rows) {
  if (t.in == nullptr) return Status::success();
  FULGUR_CHECK_ARG(t.out != nullptr, "token_drop: row tensor has an input but no output");
  FULGUR_CHECK_ARG(t.out != t.in, "token_drop: row tensor output must not alias its input");
  FULGUR_CHECK_ARG(t.width >= 0, "token_drop: row tensor width must be >= 0");
  FULGUR_CHECK_ARG(t.elem_bytes == 1 || t.elem_bytes == 2 || t.elem_bytes == 4 || t.elem_bytes == 8,
                   "token_drop: row tensor elem_bytes must be 1, 2, 4 or 8");
  FULGUR_CHECK_ARG(t.in_row_stride >= t.width && t.out_row_stride >= t.width,
                   "token_drop: row tensor strides must be >= width");
  FULGUR_CHECK_ARG(!byte_rows_overlap(row_tensor_in_bytes(t, in_rows), row_tensor_out_bytes(t, out_rows)),
                   "token_drop: row tensor output rows overlap its input rows");
  return Status::success();
}

}  // namespace detail

/// Pointer-free checks of a score launch (safe on device pointers).
inline Status validate_arguments(const ScoreParams& p) {
  FULGUR_RETURN_IF_ERROR(detail::validate_layout_arguments(p.layout));
  FULGUR_CHECK_ARG(p.num_heads >= 1 && p.num_kv_heads >= 1 && p.head_dim >= 1,
                   "token_drop score: num_heads, num_kv_heads and head_dim must be >= 1");
  FULGUR_CHECK_ARG(p.num_heads % p.num_kv_heads == 0,
                   "token_drop score: num_kv_heads must divide num_heads (GQA)");
  FULGUR_CHECK_ARG(p.dtype == DType::kF32 || p.dtype == DType::kF16 || p.dtype == DType::kBF16 ||
                       p.dtype == DType::kF64,
                   "token_drop score: unknown dtype");
  FULGUR_CHECK_ARG(
      p.softmax_scale == 0.0f || (std::isfinite(p.softmax_scale) && p.softmax_scale > 0.0f),
      "token_drop score: softmax_scale must be 0 (default 1/sqrt(d)) or finite > 0");
  FULGUR_CHECK_ARG(p.num_queries >= 0, "token_drop score: num_queries must be >= 0");
  FULGUR_CHECK_ARG(p.cu_queries != nullptr || p.num_queries == p.layout.batch,
                   "token_drop score: cu_queries is null, so num_queries must equal batch");
  if (p.layout.num_image_tokens > 0) {
    FULGUR_CHECK_ARG(p.q != nullptr && p.k != nullptr, "token_drop score: q or k is null");
    FULGUR_CHECK_ARG(p.scores != nullptr, "token_drop score: scores is null");
    FULGUR_CHECK_ARG(
        p.q_row_stride >= 1 && p.q_head_stride >= 1 && p.k_row_stride >= 1 && p.k_head_stride >= 1,
        "token_drop score: q/k row and head strides must be >= 1 (elements)");
  }
  return Status::success();
}

/// validate_arguments plus the metadata content (host-readable cu_seqlens, spans, queries).
inline Status validate(const ScoreParams& p) {
  FULGUR_RETURN_IF_ERROR(validate_arguments(p));
  FULGUR_RETURN_IF_ERROR(detail::validate_layout_metadata(p.layout));
  const BatchLayout& l = p.layout;
  if (p.cu_queries != nullptr && l.batch > 0) {
    FULGUR_CHECK_ARG(p.cu_queries[0] == 0, "token_drop score: cu_queries[0] must be 0");
    FULGUR_CHECK_ARG(p.cu_queries[l.batch] == p.num_queries,
                     "token_drop score: cu_queries[batch] must equal num_queries");
  }
  for (int64_t b = 0; b < l.batch; ++b) {
    const int64_t q0 = p.cu_queries ? p.cu_queries[b] : b;
    const int64_t q1 = p.cu_queries ? p.cu_queries[b + 1] : b + 1;
    FULGUR_CHECK_ARG(q1 >= q0, "token_drop score: cu_queries must be non-decreasing");
    const int64_t seqlen = l.cu_seqlens[b + 1] - l.cu_seqlens[b];
    int64_t image_end = 0;  // end of the last span; spans are ascending
    int64_t image_tokens = 0;
    if (l.num_spans > 0) {
      for (int64_t s = l.cu_spans[b]; s < l.cu_spans[b + 1]; ++s) {
        image_end = l.span_start[s] + l.span_length[s];
        image_tokens += l.span_length[s];
      }
    }
    if (image_tokens == 0) continue;  // nothing scored: queries of this sequence are unused
    FULGUR_CHECK_ARG(q1 > q0, "token_drop score: a sequence with image tokens has no query row");
    for (int64_t qi = q0; qi < q1; ++qi) {
      const int64_t pos = p.query_pos ? p.query_pos[qi] : seqlen - 1;
      FULGUR_CHECK_ARG(pos >= 0 && pos < seqlen,
                       "token_drop score: query position outside its "
                       "sequence");
      FULGUR_CHECK_ARG(pos >= image_end,
                       "token_drop score: query position before the end of an image span");
    }
  }
  return Status::success();
}

/// Pointer-free checks of a select launch.
inline Status validate_arguments(const SelectParams& p) {
  FULGUR_RETURN_IF_ERROR(detail::validate_layout_arguments(p.layout));
  FULGUR_CHECK_ARG(p.rule == KeepRule::kFloorKeepRatio || p.rule == KeepRule::kFastVRound,
                   "token_drop select: unknown keep rule");
  FULGUR_CHECK_ARG(detail::ratio_ok(p.ratio), "token_drop select: ratio outside [0, 1]");
  FULGUR_CHECK_ARG(p.num_kept >= 0 && p.num_kept <= p.layout.num_image_tokens,
                   "token_drop select: num_kept outside [0, num_image_tokens]");
  FULGUR_CHECK_ARG(p.layout.num_image_tokens == 0 || p.scores != nullptr,
                   "token_drop select: scores is null");
  FULGUR_CHECK_ARG(p.num_kept == 0 || p.kept_index != nullptr,
                   "token_drop select: kept_index is null");
  return Status::success();
}

/// validate_arguments plus the metadata content (host-readable layout and original_length).
inline Status validate(const SelectParams& p) {
  FULGUR_RETURN_IF_ERROR(validate_arguments(p));
  FULGUR_RETURN_IF_ERROR(detail::validate_layout_metadata(p.layout));
  int64_t kept = 0;
  for (int64_t s = 0; s < p.layout.num_spans; ++s) {
    const int64_t n = p.original_length ? p.original_length[s] : p.layout.span_length[s];
    FULGUR_CHECK_ARG(n >= 0, "token_drop select: original_length must be >= 0");
    const int64_t keep = keep_count(n, p.rule, p.ratio);
    FULGUR_CHECK_ARG(keep <= p.layout.span_length[s],
                     "token_drop select: keep count from the original length exceeds the "
                     "span's current length (a stage may not keep more than the previous one)");
    kept += keep;
  }
  FULGUR_CHECK_ARG(kept == p.num_kept,
                   "token_drop select: num_kept must equal the sum of the spans' keep counts");
  return Status::success();
}

namespace detail {
/// Every tensor and array a compaction writes must share no byte with another it writes or with
/// one it reads (byte_rows_overlap): the rows are gathered by many blocks at once, so a shared
/// byte is a race, and its result would depend on the schedule. Reads may overlap each other.
/// Takes a CompactParams whose other fields validate_arguments has checked.
inline Status validate_compact_overlaps(const CompactParams& p) {
  const BatchLayout& l = p.layout;
  const int64_t P = p.position_rows;
  // Written: the map arrays and position ids, then each gathered tensor's output rows.
  const ByteRows written[] = {
      array_bytes(p.new_cu_seqlens, l.batch + 1, 8),
      array_bytes(p.row_map, p.out_rows, 8),
      array_bytes(p.new_span_start, l.num_spans, 8),
      array_bytes(p.new_span_length, l.num_spans, 8),
      strided_bytes(p.position_ids_out, P, p.out_rows, P == 1 ? p.out_rows : p.position_ids_out_stride, 8),
  };
  // Read: the layout, kept_index and cu_kept, the original position ids, then each tensor's rows.
  const bool reads_positions = p.position_ids_out != nullptr && p.position_mode == PositionMode::kKeepOriginal;
  const ByteRows read[] = {
      array_bytes(l.cu_seqlens, l.batch + 1, 8),
      array_bytes(l.cu_spans, l.batch + 1, 8),
      array_bytes(l.span_start, l.num_spans, 8),
      array_bytes(l.span_length, l.num_spans, 8),
      array_bytes(p.kept_index, p.num_kept, 8),
      array_bytes(p.cu_kept, l.num_spans + 1, 8),
      reads_positions
          ? strided_bytes(p.position_ids, P, l.total_rows, P == 1 ? l.total_rows : p.position_ids_stride, 8)
          : ByteRows{},
  };
  constexpr int kWritten = sizeof(written) / sizeof(written[0]), kRead = sizeof(read) / sizeof(read[0]);
  const auto tensor = [&](int i) -> const RowTensor& { return i == 0 ? p.hidden : p.extra[i - 1]; };
  const int tensors = p.num_extra + 1;  // hidden, then extra
  const auto output = [&](int i) {
    if (i < kWritten) return written[i];
    const RowTensor& t = tensor(i - kWritten);
    return t.in != nullptr ? row_tensor_out_bytes(t, p.out_rows) : ByteRows{};
  };
  const auto input = [&](int i) {
    if (i < kRead) return read[i];
    const RowTensor& t = tensor(i - kRead);
    return t.in != nullptr ? row_tensor_in_bytes(t, l.total_rows) : ByteRows{};
  };
  for (int i = 0; i < kWritten + tensors; ++i) {
    const ByteRows o = output(i);
    if (o.rows == 0) continue;
    for (int j = i + 1; j < kWritten + tensors; ++j) {
      FULGUR_CHECK_ARG(!byte_rows_overlap(o, output(j)),
                       "token_drop compact: two outputs overlap (a gathered tensor's output rows, row_map, "
                       "new_cu_seqlens, new_span_start/length or position_ids_out share a byte)");
    }
    for (int j = 0; j < kRead + tensors; ++j) {
      FULGUR_CHECK_ARG(!byte_rows_overlap(o, input(j)),
                       "token_drop compact: an output overlaps an input (an output tensor or array shares a "
                       "byte with a row tensor, layout array, kept_index, cu_kept or position_ids it reads)");
    }
  }
  return Status::success();
}
}  // namespace detail

/// Pointer-free checks of a compaction launch.
inline Status validate_arguments(const CompactParams& p) {
  FULGUR_RETURN_IF_ERROR(detail::validate_layout_arguments(p.layout));
  FULGUR_CHECK_ARG(p.num_kept >= 0 && p.num_kept <= p.layout.num_image_tokens,
                   "token_drop compact: num_kept outside [0, num_image_tokens]");
  FULGUR_CHECK_ARG(p.out_rows == p.layout.total_rows - (p.layout.num_image_tokens - p.num_kept),
                   "token_drop compact: out_rows must be total_rows - (num_image_tokens - "
                   "num_kept)");
  FULGUR_CHECK_ARG(p.num_kept == 0 || p.kept_index != nullptr,
                   "token_drop compact: kept_index is null");
  FULGUR_CHECK_ARG(p.layout.num_spans == 0 || p.cu_kept != nullptr,
                   "token_drop compact: cu_kept is null");
  FULGUR_CHECK_ARG(p.layout.batch == 0 || p.new_cu_seqlens != nullptr,
                   "token_drop compact: new_cu_seqlens is null");
  FULGUR_RETURN_IF_ERROR(detail::validate_row_tensor(p.hidden, p.layout.total_rows, p.out_rows));
  FULGUR_CHECK_ARG(p.num_extra >= 0, "token_drop compact: num_extra must be >= 0");
  FULGUR_CHECK_ARG(p.num_extra == 0 || p.extra != nullptr, "token_drop compact: extra is null");
  for (int i = 0; i < p.num_extra; ++i) {
    FULGUR_RETURN_IF_ERROR(detail::validate_row_tensor(p.extra[i], p.layout.total_rows, p.out_rows));
  }
  FULGUR_CHECK_ARG(
      p.position_mode == PositionMode::kRenumber || p.position_mode == PositionMode::kKeepOriginal,
      "token_drop compact: unknown position mode");
  FULGUR_CHECK_ARG(p.position_rows == 1 || p.position_rows == 3,
                   "token_drop compact: position_rows must be 1 or 3 (M-RoPE)");
  if (p.position_ids_out != nullptr) {
    FULGUR_CHECK_ARG(p.position_mode == PositionMode::kRenumber || p.position_ids != nullptr,
                     "token_drop compact: keep-original positions need the input position_ids");
    FULGUR_CHECK_ARG(p.position_rows == 1 || p.position_ids_out_stride >= p.out_rows,
                     "token_drop compact: position_ids_out_stride must be >= out_rows");
    FULGUR_CHECK_ARG(p.position_ids_out != p.position_ids,
                     "token_drop compact: position_ids_out must not alias position_ids");
    if (p.position_mode == PositionMode::kKeepOriginal) {
      FULGUR_CHECK_ARG(p.position_rows == 1 || p.position_ids_stride >= p.layout.total_rows,
                       "token_drop compact: position_ids_stride must be >= total_rows");
    }
  }
  return detail::validate_compact_overlaps(p);
}

/// validate_arguments plus the metadata content (host-readable layout, kept_index, cu_kept).
inline Status validate(const CompactParams& p) {
  FULGUR_RETURN_IF_ERROR(validate_arguments(p));
  FULGUR_RETURN_IF_ERROR(detail::validate_layout_metadata(p.layout));
  const BatchLayout& l = p.layout;
  if (l.num_spans == 0) {
    FULGUR_CHECK_ARG(p.num_kept == 0, "token_drop compact: kept tokens given but no spans");
    return Status::success();
  }
  FULGUR_CHECK_ARG(p.cu_kept[0] == 0, "token_drop compact: cu_kept[0] must be 0");
  FULGUR_CHECK_ARG(p.cu_kept[l.num_spans] == p.num_kept,
                   "token_drop compact: cu_kept[num_spans] must equal num_kept");
  for (int64_t s = 0; s < l.num_spans; ++s) {
    FULGUR_CHECK_ARG(p.cu_kept[s + 1] >= p.cu_kept[s],
                     "token_drop compact: cu_kept must be non-decreasing");
    FULGUR_CHECK_ARG(p.cu_kept[s + 1] - p.cu_kept[s] <= l.span_length[s],
                     "token_drop compact: a span keeps more tokens than it has");
    const int64_t begin = l.span_start[s];
    const int64_t end = begin + l.span_length[s];
    int64_t prev = begin - 1;
    for (int64_t i = p.cu_kept[s]; i < p.cu_kept[s + 1]; ++i) {
      FULGUR_CHECK_ARG(p.kept_index[i] >= begin && p.kept_index[i] < end,
                       "token_drop compact: kept index outside its image span");
      FULGUR_CHECK_ARG(p.kept_index[i] > prev,
                       "token_drop compact: kept indices of a span must be strictly ascending");
      prev = p.kept_index[i];
    }
  }
  return Status::success();
}

}  // namespace token_drop
FULGUR_NAMESPACE_END
