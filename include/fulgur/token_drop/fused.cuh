// SPDX-License-Identifier: Apache-2.0
// fulgur::token_drop::score_select_compact: the common inference case (one query row per
// sequence, cu_queries == nullptr) in one launch for score, select and the compaction map,
// followed by the compaction's gather launch(es).
//
// Grid (B x grid_parts, H_kv), as the score's first launch: every block first computes its part
// of its sequence's causal row (score_partials_block: the (max, sum exp) statistics and the image
// keys' logits, to the workspace), so the whole GPU reads K once, in parallel. Then each block
// takes a ticket from its sequence's counter (after a __threadfence, so its writes are visible
// first); the block that takes the last ticket of sequence b finishes b alone: it checks the
// batch's metadata, turns the stored logits into scores (score_tile, as the score's second
// launch), selects each span (select_span, as select_kernel) and builds b's part of the map
// (build_sequence_map, as compact_map_kernel). These are the very device functions of the
// separate kernels, with the same block size and the same reduction orders, so every output
// equals the separate score -> select -> compact calls bit for bit (tested), and which block
// happens to finish a sequence changes nothing.
//
// Cost over the separate calls: none of their launches but the gathers, no scores or kept
// indices read back from global memory by another launch; the finishing block's work (N H stored
// logits read, one block radix select per span, the map) is serial per sequence. The tickets are
// zeroed by a cudaMemsetAsync on the stream before the launch (the workspace's contents are
// arbitrary on entry, CUB style).
#pragma once

#include <cstdint>

#include "fulgur/detail/cuda.cuh"
#include "fulgur/detail/dispatch.hpp"
#include "fulgur/detail/launch.cuh"
#include "fulgur/detail/status.hpp"
#include "fulgur/detail/workspace.hpp"
#include "fulgur/token_drop/common.cuh"
#include "fulgur/token_drop/compact.cuh"
#include "fulgur/token_drop/params.hpp"
#include "fulgur/token_drop/score.cuh"
#include "fulgur/token_drop/select.cuh"

FULGUR_NAMESPACE_BEGIN
namespace token_drop {
namespace detail {

/// Shared-memory floats of the fused kernel: the larger of the part and tile work areas.
FULGUR_HOST_DEVICE constexpr int64_t fused_work_floats(int heads, int group, int head_dim) {
  return part_smem_floats(group, head_dim) > tile_smem_floats(heads, head_dim) ? part_smem_floats(group, head_dim)
                                                                               : tile_smem_floats(heads, head_dim);
}
inline size_t fused_smem_bytes(const ScoreParams& p) {
  return static_cast<size_t>(fused_work_floats(p.num_heads, p.num_heads / p.num_kv_heads, p.head_dim)) *
         sizeof(float);
}

/// Grid (B * grid_parts, H_kv): block (b * grid_parts + part, kvh) scores its part of sequence
/// b's row, then the last block of sequence b to finish that scores, selects and maps b.
/// tickets[0..B) must be zero at launch.
template <typename T, int V>
FULGUR_KERNEL void __launch_bounds__(kThreads, kMinBlocksPerSm)
    fused_kernel(ScoreParams sp, SelectParams sel, CompactParams cp, ScoreGeometry g, Stats* partials, float* logits,
                 unsigned* tickets, int64_t* row_map, int* flag) {
  FULGUR_DYNAMIC_SMEM(float, smem);
  __shared__ CheckStorage check_storage;
  __shared__ typename BlockSum::TempStorage sum_storage;
  __shared__ SelectStorage select_storage;
  __shared__ int finisher;
  const BatchLayout& l = sp.layout;
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t b = static_cast<int64_t>(blockIdx.x) / g.grid_parts;
  const int part = static_cast<int>(blockIdx.x % g.grid_parts);

  // Phase 1 (every block): the statistics and image logits of one part of b's row.
  score_partials_block<T, V>(sp, g, partials, logits, b, part, static_cast<int>(blockIdx.y), smem, sum_storage);

  // Phase 2 (the last of b's blocks): its writes and everyone else's are visible once the ticket
  // says all of b's blocks have fenced theirs.
  __threadfence();
  __syncthreads();
  if (tid == 0) {
    const unsigned per_sequence = static_cast<unsigned>(g.grid_parts) * static_cast<unsigned>(g.kv_heads);
    finisher = atomicAdd(&tickets[b], 1u) == per_sequence - 1u ? 1 : 0;
  }
  __syncthreads();
  if (!finisher) return;
  __threadfence();

  CheckSpec spec;
  spec.score = true;
  spec.num_queries = sp.num_queries;
  spec.query_pos = sp.query_pos;
  spec.select = true;
  spec.original_length = sel.original_length;
  spec.rule = sel.rule;
  spec.ratio = sel.ratio;
  spec.select_num_kept = sel.num_kept;
  const bool ok = check_batch(l, spec, check_storage);
  if (b == 0 && tid == 0) *flag = ok ? 1 : 0;
  if (!ok) return;

  const int64_t row0 = l.cu_seqlens[b], seqlen = l.cu_seqlens[b + 1] - row0;
  const int64_t s0 = l.num_spans > 0 ? l.cu_spans[b] : 0;
  const int64_t s1 = l.num_spans > 0 ? l.cu_spans[b + 1] : 0;
  auto keep_of = [&sel, &l](int64_t s) {
    return keep_count_device(sel.original_length ? sel.original_length[s] : l.span_length[s], sel.rule, sel.ratio);
  };
  // Image tokens and kept tokens of the spans before this sequence: its offsets into scores and
  // kept_index.
  long long tokens_before = 0, kept_before = 0;
  for (int64_t t = tid; t < s0; t += kThreads) {
    tokens_before += l.span_length[t];
    kept_before += keep_of(t);
  }
  __syncthreads();  // sum_storage was last used by phase 1
  tokens_before = BlockSum(sum_storage).sum(tokens_before);
  __syncthreads();
  kept_before = BlockSum(sum_storage).sum(kept_before);
  int64_t image = 0;
  for (int64_t s = s0; s < s1; ++s) image += l.span_length[s];

  // Score (as score_probs_kernel for query row b, from the stored logits).
  if (image > 0) {
    const int64_t pos = sp.query_pos ? sp.query_pos[b] : seqlen - 1;
    const Stats* row = partials + b * g.heads * kScoreMaxParts;
    int64_t token = tokens_before;
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t len = l.span_length[s];
      for (int64_t t0 = 0; t0 < len; t0 += kScoreTile) {
        const int count = static_cast<int>(len - t0 < kScoreTile ? len - t0 : kScoreTile);
        float acc = 0.0f;
        score_tile<T, V>(
            sp, g, b, pos, row0, l.span_start[s] + t0, count,
            [row](int h) { return row + static_cast<int64_t>(h) * kScoreMaxParts; }, 1, smem, logits + token + t0,
            l.num_image_tokens, acc);
        if (tid < count) sp.scores[token + t0 + tid] = finish_score(sp, acc, 1);
      }
      token += len;
    }
  }
  __syncthreads();  // this block's scores are visible to all its threads

  // Select (as select_kernel for each span of b).
  if (b == 0 && tid == 0 && sel.cu_kept != nullptr) sel.cu_kept[0] = 0;
  int64_t token = tokens_before, kept = kept_before;
  for (int64_t s = s0; s < s1; ++s) {
    const int64_t len = l.span_length[s], keep = keep_of(s);
    if (tid == 0 && sel.cu_kept != nullptr) sel.cu_kept[s + 1] = kept + keep;
    select_span(sel.scores + token, len, keep, l.span_start[s], sel.kept_index + kept, select_storage);
    token += len;
    kept += keep;
  }
  __syncthreads();  // the kept indices are visible

  // Map (as compact_map_kernel for sequence b).
  const int64_t new_row0 = row0 - (tokens_before - kept_before);
  if (tid == 0) {
    if (b == 0) cp.new_cu_seqlens[0] = 0;
    cp.new_cu_seqlens[b + 1] = new_row0 + seqlen - image + (kept - kept_before);
  }
  build_sequence_map(cp, b, new_row0, sel.kept_index, kept_before, keep_of, row_map);
}

/// Workspace of the fused path: the score's partials and image logits, one ticket per sequence,
/// then compact()'s.
inline void carve_fused_workspace(::fulgur::detail::WorkspaceCarver& c, const ScoreParams& sp,
                                  const CompactParams& cp, Stats** partials, float** logits,
                                  unsigned** tickets, int** flag, int64_t** row_map) {
  carve_score_workspace(c, sp, partials, logits);
  *tickets = c.take<unsigned>(static_cast<size_t>(sp.layout.batch));
  carve_compact_workspace(c, cp, flag, row_map);
}

inline bool same_layout(const BatchLayout& a, const BatchLayout& b) {
  return a.batch == b.batch && a.total_rows == b.total_rows && a.cu_seqlens == b.cu_seqlens &&
         a.num_spans == b.num_spans && a.cu_spans == b.cu_spans && a.span_start == b.span_start &&
         a.span_length == b.span_length && a.num_image_tokens == b.num_image_tokens;
}

}  // namespace detail

/// Pure host check of the fused path: each operation's own check, the fused path's conditions
/// (one query row per sequence), and that the three Params describe one drop event (same layout,
/// select reads the score's output, compact reads the select's).
inline Status can_implement(const ScoreParams& sp, const SelectParams& sel, const CompactParams& cp) {
  FULGUR_RETURN_IF_ERROR(can_implement(sp));
  FULGUR_RETURN_IF_ERROR(can_implement(sel));
  FULGUR_RETURN_IF_ERROR(can_implement(cp));
  FULGUR_CHECK_ARG(detail::same_layout(sp.layout, sel.layout) && detail::same_layout(sp.layout, cp.layout),
                   "token_drop fused: score, select and compact must share one layout");
  FULGUR_CHECK_ARG(sel.scores == sp.scores, "token_drop fused: select.scores must be score.scores");
  FULGUR_CHECK_ARG(cp.kept_index == sel.kept_index && cp.num_kept == sel.num_kept,
                   "token_drop fused: compact must read select's kept_index and num_kept");
  FULGUR_CHECK_ARG(sp.layout.num_spans == 0 || (sel.cu_kept != nullptr && cp.cu_kept == sel.cu_kept),
                   "token_drop fused: select.cu_kept is required and must be compact.cu_kept");
  if (sp.cu_queries != nullptr) {
    return Status::not_supported(
        "token_drop fused: one query row per sequence only (cu_queries must be null); "
        "use score, select and compact");
  }
  FULGUR_CHECK_ARG(sp.layout.batch <= INT32_MAX / detail::kScoreMaxParts,
                   "token_drop fused: more than 2^26 - 1 sequences (grid x is sequences x parts)");
  FULGUR_CHECK_ARG(sp.num_kv_heads <= 65535, "token_drop fused: num_kv_heads above 65535");
  if (detail::fused_smem_bytes(sp) > detail::kMaxSmemBytes) {
    return Status::not_supported("token_drop fused: the heads' shared memory exceeds 227 KB");
  }
  return Status::success();
}

/// score -> select -> compact in one launch for score, selection and map (see the top of this
/// file) plus the gather launch(es), after a cudaMemsetAsync of the per-sequence tickets.
/// Outputs and errors are those of the separate calls; the workspace holds the score's partials
/// and logits (as score()), B 4-byte tickets and compact()'s workspace, each rounded up to 256
/// bytes. Bad metadata: nothing is written.
inline cudaError_t score_select_compact(void* workspace, size_t& workspace_bytes, const ScoreParams& sp,
                                        const SelectParams& sel, const CompactParams& cp, cudaStream_t stream = nullptr) {
  const Status st = can_implement(sp, sel, cp);
  if (!st) return st.code();
  ::fulgur::detail::WorkspaceCarver sizing(nullptr);
  detail::Stats* partials = nullptr;
  float* logits = nullptr;
  unsigned* tickets = nullptr;
  int* flag = nullptr;
  int64_t* row_map = nullptr;
  detail::carve_fused_workspace(sizing, sp, cp, &partials, &logits, &tickets, &flag, &row_map);
  if (workspace == nullptr) {
    workspace_bytes = sizing.bytes();
    return cudaSuccess;
  }
  if (workspace_bytes < sizing.bytes() || reinterpret_cast<uintptr_t>(workspace) % 16 != 0)
    return cudaErrorInvalidValue;
  if (sp.layout.batch == 0) return select(sel, stream);  // only cu_kept[0] = 0 to write, if asked
  ::fulgur::detail::WorkspaceCarver carver(workspace);
  detail::carve_fused_workspace(carver, sp, cp, &partials, &logits, &tickets, &flag, &row_map);
  cudaError_t e = ::fulgur::detail::memset_async(tickets, 0, static_cast<size_t>(sp.layout.batch) * sizeof(unsigned),
                                                 stream);
  if (e != cudaSuccess) return e;
  e = FULGUR_DISPATCH_DTYPE(sp.dtype, T, {
    constexpr int kV = static_cast<int>(16 / sizeof(T));
    const bool vec = detail::score_vec<T>(sp) > 1;
    const detail::ScoreGeometry g = detail::make_geometry(sp, vec ? kV : 1);
    const dim3 grid(static_cast<unsigned>(sp.layout.batch * g.grid_parts), static_cast<unsigned>(sp.num_kv_heads));
    if (vec) {
      return ::fulgur::detail::launch(detail::fused_kernel<T, kV>, grid, dim3(detail::kThreads),
                                      detail::fused_smem_bytes(sp), stream, sp, sel, cp, g, partials, logits, tickets,
                                      row_map, flag);
    }
    return ::fulgur::detail::launch(detail::fused_kernel<T, 1>, grid, dim3(detail::kThreads),
                                    detail::fused_smem_bytes(sp), stream, sp, sel, cp, g, partials, logits, tickets,
                                    row_map, flag);
  });
  if (e != cudaSuccess) return e;
  return detail::launch_gathers(cp, row_map, flag, stream);
}

}  // namespace token_drop
FULGUR_NAMESPACE_END
