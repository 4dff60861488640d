// SPDX-License-Identifier: Apache-2.0
// fulgur::token_drop::score: per image token, the mean over heads and query rows of the query's
// softmax probability over its whole causal row (spec, "The score", steps 3-5):
//
//   logit_{q,h,j} = scale * q_h . k_{g(h), j},   g(h) = h / (H_q / H_kv),   j = 0..pos_q
//   lse_{q,h}     = log sum_{j <= pos_q} exp(logit_{q,h,j})
//   score_j       = 1/Q_b sum_q 1/H sum_h exp(logit_{q,h,j} - lse_{q,h})   for image tokens j
//
// Two launches, no attention matrix anywhere (only one (max, sum) pair per query row, head and
// part reaches global memory):
//   1. partials: grid (query row x part, kv head). A part is up to kScoreMaxParts-th of the row
//      (score_part_len); the block computes the logits of its keys for the query heads of one kv
//      head and reduces them to (m, l) = (max, sum exp(logit - max)), online per lane group, then
//      across groups in a fixed order.
//   2. probabilities: grid (span, token split). Per tile of kScoreTile image tokens and per query
//      row: lse from the parts (merged in part order), the tile's logits for all heads, then one
//      thread per token sums exp(logit - lse) over the heads in head order. With one query row
//      per sequence (cu_queries == nullptr, inference) launch 1 also stores the image keys'
//      logits, an [H, num_image_tokens] fp32 slab in the workspace, and launch 2 reads them; with
//      several query rows per sequence (whose count is device data) launch 2 recomputes them into
//      shared memory, reading the image keys a second time.
//
// Every floating-point operation whose result reaches a score is written out (fmaf, __fmul_rn,
// fixed shuffle trees, sequential merges), so the fused kernel (fused.cuh), which runs the same
// device functions in one block per sequence, produces the same bits, and no compiler contraction
// choice can differ between the two. Results never depend on the batch: parts, tiles and
// reduction orders are functions of the sequence alone.
//
// Work: 2 d H L_b flops per query row (one dot per key and head; again per image key when
// recomputing); bytes: K read once for the causal row (plus the image keys again when
// recomputing), 8 H N bytes of stored logits written and read, 4 N bytes of scores written.
#pragma once

#include <cmath>
#include <cstdint>

#include "fulgur/detail/cuda.cuh"
#include "fulgur/detail/dispatch.hpp"
#include "fulgur/detail/launch.cuh"
#include "fulgur/detail/status.hpp"
#include "fulgur/detail/workspace.hpp"
#include "fulgur/token_drop/common.cuh"
#include "fulgur/token_drop/params.hpp"

FULGUR_NAMESPACE_BEGIN
namespace token_drop {
namespace detail {

/// Online softmax statistics of a set of logits: m = max, l = sum exp(logit - m). Empty: l == 0
/// (a non-empty set has l >= 1, or NaN).
struct Stats {
  float m;
  float l;
};

FULGUR_HOST_DEVICE FULGUR_FORCEINLINE Stats empty_stats() { return Stats{-INFINITY, 0.0f}; }

/// Adds one logit s to the running statistics.
FULGUR_DEVICE FULGUR_FORCEINLINE void stats_add(Stats& a, float s) {
  if (s > a.m) {
    a.l = fmaf(a.l, expf(a.m - s), 1.0f);  // rescale to the new maximum (exp(-inf) = 0 at first)
    a.m = s;
  } else {
    a.l = __fadd_rn(a.l, expf(s - a.m));
  }
}

/// a followed by b (the order fixes the rounding).
FULGUR_DEVICE FULGUR_FORCEINLINE Stats stats_merge(Stats a, Stats b) {
  if (b.l == 0.0f) return a;
  if (a.l == 0.0f) return b;
  const float m = fmaxf(a.m, b.m);
  return Stats{m, fmaf(a.l, expf(a.m - m), __fmul_rn(b.l, expf(b.m - m)))};
}

/// Derived sizes of a score launch, the same in every kernel of it.
struct ScoreGeometry {
  int heads;       // H_q
  int kv_heads;    // H_kv
  int group;       // H_q / H_kv query heads per kv head
  int head_dim;    // d
  int lanes;       // lanes per key row (score_group_lanes)
  int grid_parts;  // launch 1's blocks per query row (score_grid_parts(total_rows))
  float scale;     // multiplies q . k
};

inline ScoreGeometry make_geometry(const ScoreParams& p, int vec) {
  ScoreGeometry g;
  g.heads = p.num_heads;
  g.kv_heads = p.num_kv_heads;
  g.group = p.num_heads / p.num_kv_heads;
  g.head_dim = p.head_dim;
  g.lanes = score_group_lanes(p.head_dim, vec);
  g.grid_parts = score_grid_parts(p.layout.total_rows);
  // The default 1/sqrt(d) is rounded once from double, as the reference computes it.
  g.scale =
      p.softmax_scale == 0.0f ? static_cast<float>(1.0 / std::sqrt(static_cast<double>(p.head_dim))) : p.softmax_scale;
  return g;
}

/// Sum of v over each group of `lanes` consecutive lanes (a power of two), every lane of the
/// group receiving the same bits. Every lane of the warp must call it with the same `lanes`.
FULGUR_DEVICE FULGUR_FORCEINLINE float group_sum(float v, int lanes) {
  for (int off = lanes >> 1; off > 0; off >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

/// Dot products of one key row segment with up to kHeadChunk query heads held in shared memory as
/// floats ([heads][d], row `qs`), for the lanes of one group: lane `lig` takes vectors lig,
/// lig + lanes, ... of V elements; products accumulate with fmaf in that order, then the group
/// butterfly. Lanes with valid == false contribute nothing but take part in the shuffles.
template <typename T, int V>
FULGUR_DEVICE FULGUR_FORCEINLINE void dot_heads(const T* krow, const float* qs, int d, int lanes, int lig, int nh,
                                                bool valid, float (&acc)[kHeadChunk]) {
  FULGUR_UNROLL
  for (int hh = 0; hh < kHeadChunk; ++hh) acc[hh] = 0.0f;
  if (valid) {
    const int nvec = d / V;
    for (int v = lig; v < nvec; v += lanes) {
      float kf[V];
      load_vec<T, V>(krow + v * V, kf);
      FULGUR_UNROLL
      for (int hh = 0; hh < kHeadChunk; ++hh) {
        if (hh < nh) {
          const float* qv = qs + hh * d + v * V;
          FULGUR_UNROLL
          for (int e = 0; e < V; ++e) acc[hh] = fmaf(qv[e], kf[e], acc[hh]);
        }
      }
    }
  }
  FULGUR_UNROLL
  for (int hh = 0; hh < kHeadChunk; ++hh) {
    if (hh < nh) acc[hh] = group_sum(acc[hh], lanes);
  }
}

/// Shared-memory floats score_part needs: the group's query heads and the cross-group reduction.
FULGUR_HOST_DEVICE constexpr int64_t part_smem_floats(int group, int head_dim) {
  return static_cast<int64_t>(group) * head_dim + 2 * kHeadChunk * kThreads;
}

/// One block: statistics of query row `qrow` (packed index) over keys j0 <= j < j1 of its
/// sequence (packed key row key_row0 + j) for the query heads of kv head `kvh`. Writes
/// out[h_local * out_stride] for h_local < group (thread h_local). When `logits` is not null, the
/// logit of every image key j (image_index(j) >= 0) is also stored, at logits[h * logit_stride +
/// image_index(j)] for query head h. Starts and ends with a barrier so callers may loop it.
template <typename T, int V, typename ImageIndex>
FULGUR_DEVICE void score_part(const ScoreParams& p, const ScoreGeometry& g, int64_t qrow, int64_t key_row0, int64_t j0,
                              int64_t j1, int kvh, float* smem, Stats* out, int64_t out_stride, float* logits,
                              int64_t logit_stride, ImageIndex image_index) {
  const int tid = static_cast<int>(threadIdx.x);
  const int d = g.head_dim;
  float* qs = smem;                                                                 // [group][d]
  Stats* red = reinterpret_cast<Stats*>(smem + static_cast<int64_t>(g.group) * d);  // [kHeadChunk][groups]
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);

  __syncthreads();  // the previous call's readers are done with qs / red
  for (int i = tid; i < g.group * d; i += kThreads) {
    const int hh = i / d, e = i - hh * d;
    qs[i] = to_float(q[qrow * p.q_row_stride + static_cast<int64_t>(kvh * g.group + hh) * p.q_head_stride + e]);
  }
  __syncthreads();

  const int lanes = g.lanes;
  const int groups = kThreads / lanes;
  const int grp = tid / lanes, lig = tid - grp * lanes;
  for (int h0 = 0; h0 < g.group; h0 += kHeadChunk) {
    const int nh = g.group - h0 < kHeadChunk ? g.group - h0 : kHeadChunk;
    Stats st[kHeadChunk];
    FULGUR_UNROLL
    for (int hh = 0; hh < kHeadChunk; ++hh) st[hh] = empty_stats();
    for (int64_t base = j0; base < j1; base += groups) {  // uniform trip count: shuffles converge
      const int64_t j = base + grp;
      const bool valid = j < j1;
      const T* krow = k + (key_row0 + (valid ? j : j0)) * p.k_row_stride + static_cast<int64_t>(kvh) * p.k_head_stride;
      float acc[kHeadChunk];
      dot_heads<T, V>(krow, qs + h0 * d, d, lanes, lig, nh, valid, acc);
      if (valid) {
        // (An index outside the slab can only come from metadata launch 2 rejects: not stored.)
        int64_t image = logits != nullptr && lig == 0 ? image_index(j) : -1;
        if (image >= logit_stride) image = -1;
        FULGUR_UNROLL
        for (int hh = 0; hh < kHeadChunk; ++hh) {
          if (hh < nh) {
            const float logit = __fmul_rn(acc[hh], g.scale);
            stats_add(st[hh], logit);
            if (image >= 0) logits[static_cast<int64_t>(kvh * g.group + h0 + hh) * logit_stride + image] = logit;
          }
        }
      }
    }
    if (lig == 0) {
      FULGUR_UNROLL
      for (int hh = 0; hh < kHeadChunk; ++hh) red[hh * groups + grp] = st[hh];
    }
    __syncthreads();
    if (tid < nh) {  // groups merged in group order
      Stats m = red[tid * groups];
      for (int gi = 1; gi < groups; ++gi) m = stats_merge(m, red[tid * groups + gi]);
      out[static_cast<int64_t>(h0 + tid) * out_stride] = m;
    }
    __syncthreads();
  }
}

/// Shared-memory floats score_tile needs: all query heads, their lse, the logits tile.
FULGUR_HOST_DEVICE constexpr int64_t tile_smem_floats(int heads, int head_dim) {
  return static_cast<int64_t>(heads) * head_dim + heads + static_cast<int64_t>(heads) * kScoreTile;
}

/// lse of (query row, head) from its parts' statistics stats[0], stats[stride], ... merged in
/// part order.
FULGUR_DEVICE FULGUR_FORCEINLINE float lse_of_parts(const Stats* stats, int64_t stride, int parts) {
  Stats m = empty_stats();
  for (int i = 0; i < parts; ++i) m = stats_merge(m, stats[i * stride]);
  return __fadd_rn(m.m, logf(m.l));
}

/// fp16 compatibility rounding (upstream's .to(fp16) and fp16 torch.mean results).
FULGUR_DEVICE FULGUR_FORCEINLINE float round_half(float x) { return __half2float(__float2half_rn(x)); }

/// One block, one tile: the head-mean probability of tokens jt0 .. jt0 + count - 1 of a sequence
/// (count <= kScoreTile, key rows key_row0 + j) for query row `qrow` at position `pos`, added to
/// `acc` of thread t < count. `stats(h)` points at the row's part statistics of head h, parts
/// `stride` apart. The logits are recomputed, or, when `stored` is not null, read from
/// stored[h * stored_stride + t] (written by score_part with the same operations: the same bits).
/// Starts and ends with a barrier.
template <typename T, int V, typename StatsOf>
FULGUR_DEVICE void score_tile(const ScoreParams& p, const ScoreGeometry& g, int64_t qrow, int64_t pos, int64_t key_row0,
                              int64_t jt0, int count, StatsOf stats, int64_t stride, float* smem, const float* stored,
                              int64_t stored_stride, float& acc) {
  const int tid = static_cast<int>(threadIdx.x);
  const int d = g.head_dim, H = g.heads;
  float* qs = smem;                               // [H][d]
  float* lse = qs + static_cast<int64_t>(H) * d;  // [H]
  float* logit = lse + H;                         // [H][kScoreTile]
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);

  __syncthreads();
  for (int i = tid; stored == nullptr && i < H * d; i += kThreads) {
    const int h = i / d, e = i - h * d;
    qs[i] = to_float(q[qrow * p.q_row_stride + static_cast<int64_t>(h) * p.q_head_stride + e]);
  }
  const int parts = score_num_parts(pos + 1);
  for (int h = tid; h < H; h += kThreads) lse[h] = lse_of_parts(stats(h), stride, parts);
  __syncthreads();

  // Logits of the tile: item = (token t, kv head), token-major so neighbouring groups read
  // neighbouring kv heads of one key row.
  const int lanes = g.lanes;
  const int groups = kThreads / lanes;
  const int grp = tid / lanes, lig = tid - grp * lanes;
  const int items = stored == nullptr ? count * g.kv_heads : 0;
  for (int base = 0; base < items; base += groups) {
    const int item = base + grp;
    const bool valid = item < items;
    const int t = valid ? item / g.kv_heads : 0;
    const int kvh = valid ? item - t * g.kv_heads : 0;
    const T* krow = k + (key_row0 + jt0 + t) * p.k_row_stride + static_cast<int64_t>(kvh) * p.k_head_stride;
    for (int h0 = 0; h0 < g.group; h0 += kHeadChunk) {
      const int nh = g.group - h0 < kHeadChunk ? g.group - h0 : kHeadChunk;
      float dot[kHeadChunk];
      dot_heads<T, V>(krow, qs + static_cast<int64_t>(kvh * g.group + h0) * d, d, lanes, lig, nh, valid, dot);
      if (valid && lig == 0) {
        FULGUR_UNROLL
        for (int hh = 0; hh < kHeadChunk; ++hh)
          if (hh < nh) logit[(kvh * g.group + h0 + hh) * kScoreTile + t] = __fmul_rn(dot[hh], g.scale);
      }
    }
  }
  __syncthreads();

  if (tid < count) {  // heads summed in head order (spec step 5), then the head mean
    float head_sum = 0.0f;
    for (int h = 0; h < H; ++h) {
      const float x = stored != nullptr ? stored[h * stored_stride + tid] : logit[h * kScoreTile + tid];
      float pr = expf(__fsub_rn(x, lse[h]));
      if (p.fp16_compat) pr = round_half(pr);
      head_sum = __fadd_rn(head_sum, pr);
    }
    float head_mean = head_sum / static_cast<float>(H);
    if (p.fp16_compat) head_mean = round_half(head_mean);
    acc = __fadd_rn(acc, head_mean);
  }
  __syncthreads();
}

/// Where the query rows of sequence b are.
FULGUR_DEVICE FULGUR_FORCEINLINE void query_rows(const ScoreParams& p, int64_t b, int64_t& q0, int64_t& q1) {
  q0 = p.cu_queries ? p.cu_queries[b] : b;
  q1 = p.cu_queries ? p.cu_queries[b + 1] : b + 1;
}

/// The final score of a token from the sum of its per-query head means.
FULGUR_DEVICE FULGUR_FORCEINLINE float finish_score(const ScoreParams& p, float acc, int64_t nq) {
  float s = acc / static_cast<float>(nq);
  if (p.fp16_compat) s = round_half(s);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Kernels.

/// The work of one launch-1 block: part `part` of query row `qi` for the query heads of kv head
/// `kvh`. Writes partials[(qi * H + h) * kScoreMaxParts + part] and, when `logits` is given (one
/// query row per sequence), the image keys' logits, logits[h * num_image_tokens + image token].
/// Reads only the metadata of its own query row, each value checked before use; a row the
/// probability step would reject is simply skipped (that step writes nothing then). Every exit
/// is uniform over the block; the fused kernel (fused.cuh) runs it as its first phase.
template <typename T, int V>
FULGUR_DEVICE void score_partials_block(const ScoreParams& p, const ScoreGeometry& g, Stats* partials, float* logits,
                                        int64_t qi, int part, int kvh, float* smem,
                                        typename BlockSum::TempStorage& offset_storage) {
  const BatchLayout& l = p.layout;
  int64_t b = qi;
  if (p.cu_queries != nullptr) b = segment_of(p.cu_queries, l.batch, qi);
  if (b < 0 || b >= l.batch) return;
  if (p.cu_queries != nullptr && (p.cu_queries[b] > qi || p.cu_queries[b + 1] <= qi)) return;
  const int64_t r0 = l.cu_seqlens[b], r1 = l.cu_seqlens[b + 1];
  if (r0 < 0 || r1 < r0 || r1 > l.total_rows) return;
  const int64_t s0 = l.cu_spans[b], s1 = l.cu_spans[b + 1];
  if (s0 < 0 || s1 <= s0 || s1 > l.num_spans) return;  // no image: nothing to score
  const int64_t pos = p.query_pos ? p.query_pos[qi] : r1 - r0 - 1;
  if (pos < 0 || pos >= r1 - r0) return;
  const int64_t n = pos + 1, plen = score_part_len(n);
  const int64_t j0 = part * plen;
  if (j0 >= n) return;
  const int64_t j1 = j0 + plen < n ? j0 + plen : n;
  Stats* out = partials + (qi * g.heads + static_cast<int64_t>(kvh) * g.group) * kScoreMaxParts + part;
  // Image token of key j: its span's offset in the packed scores plus its place in the span (a
  // walk over the sequence's spans, usually one or two).
  const int64_t first_token = logits != nullptr ? block_sum_prefix(l.span_length, s0, offset_storage) : 0;
  const BatchLayout* lp = &l;
  auto image_index = [lp, s0, s1, first_token](int64_t j) -> int64_t {
    int64_t offset = first_token;
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t start = lp->span_start[s], len = lp->span_length[s];
      if (j >= start && j - start < len) return offset + (j - start);
      offset += len;
    }
    return -1;
  };
  score_part<T, V>(p, g, qi, r0, j0, j1, kvh, smem, out, kScoreMaxParts, logits, l.num_image_tokens, image_index);
}

/// Launch 1: grid (num_queries * grid_parts, H_kv), grid_parts = score_grid_parts(total_rows);
/// block (qi * grid_parts + part, kvh) runs score_partials_block.
template <typename T, int V>
FULGUR_KERNEL void __launch_bounds__(kThreads, kMinBlocksPerSm)
    score_partials_kernel(ScoreParams p, ScoreGeometry g, Stats* partials, float* logits) {
  FULGUR_DYNAMIC_SMEM(float, smem);
  __shared__ typename BlockSum::TempStorage offset_storage;
  const int64_t qi = static_cast<int64_t>(blockIdx.x) / g.grid_parts;
  const int part = static_cast<int>(blockIdx.x % g.grid_parts);
  score_partials_block<T, V>(p, g, partials, logits, qi, part, static_cast<int>(blockIdx.y), smem, offset_storage);
}

/// Launch 2: grid (num_spans, splits). Block (s, y) scores the tokens of span s in its y-th share
/// of the span's tiles.
template <typename T, int V>
FULGUR_KERNEL void __launch_bounds__(kThreads, kMinBlocksPerSm)
    score_probs_kernel(ScoreParams p, ScoreGeometry g, const Stats* partials, const float* logits) {
  FULGUR_DYNAMIC_SMEM(float, smem);
  __shared__ CheckStorage check_storage;
  __shared__ typename BlockSum::TempStorage offset_storage;
  const BatchLayout& l = p.layout;
  CheckSpec spec;
  spec.score = true;
  spec.num_queries = p.num_queries;
  spec.cu_queries = p.cu_queries;
  spec.query_pos = p.query_pos;
  if (!check_batch(l, spec, check_storage)) return;

  const int64_t s = blockIdx.x;
  const int64_t n = l.span_length[s];
  const int64_t tiles = ceil_div(n, kScoreTile);
  const int64_t per_split = ceil_div(tiles, gridDim.y);
  const int64_t tile0 = per_split * blockIdx.y;
  const int64_t tile1 = tile0 + per_split < tiles ? tile0 + per_split : tiles;
  if (tile0 >= tile1) return;  // uniform over the block
  const int64_t token_offset = block_sum_prefix(l.span_length, s, offset_storage);
  const int64_t b = segment_of(l.cu_spans, l.batch, s);
  const int64_t row0 = l.cu_seqlens[b];
  int64_t q0, q1;
  query_rows(p, b, q0, q1);
  const int64_t seqlen = l.cu_seqlens[b + 1] - row0;
  for (int64_t tile = tile0; tile < tile1; ++tile) {
    const int64_t t0 = tile * kScoreTile;
    const int count = static_cast<int>(n - t0 < kScoreTile ? n - t0 : kScoreTile);
    float acc = 0.0f;
    for (int64_t qi = q0; qi < q1; ++qi) {
      const int64_t pos = p.query_pos ? p.query_pos[qi] : seqlen - 1;
      const Stats* row = partials + qi * g.heads * kScoreMaxParts;
      score_tile<T, V>(
          p, g, qi, pos, row0, l.span_start[s] + t0, count,
          [row](int h) { return row + static_cast<int64_t>(h) * kScoreMaxParts; }, 1, smem,
          logits != nullptr ? logits + token_offset + t0 : nullptr, l.num_image_tokens, acc);
    }
    if (static_cast<int>(threadIdx.x) < count)
      p.scores[token_offset + t0 + threadIdx.x] = finish_score(p, acc, q1 - q0);
  }
}

/// Vector width (elements) of the K loads: 16 bytes when the K pointer, its strides and d allow.
template <typename T>
inline int score_vec(const ScoreParams& p) {
  constexpr int kV = static_cast<int>(16 / sizeof(T));
  const uint64_t vals[] = {reinterpret_cast<uint64_t>(p.k), static_cast<uint64_t>(p.k_row_stride) * sizeof(T),
                           static_cast<uint64_t>(p.k_head_stride) * sizeof(T),
                           static_cast<uint64_t>(p.head_dim) * sizeof(T)};
  return common_vector_bytes(vals, 4) == 16 ? kV : 1;
}

inline size_t score_partials_smem(const ScoreParams& p) {
  return static_cast<size_t>(part_smem_floats(p.num_heads / p.num_kv_heads, p.head_dim)) * sizeof(float);
}
inline size_t score_tile_smem(const ScoreParams& p) {
  return static_cast<size_t>(tile_smem_floats(p.num_heads, p.head_dim)) * sizeof(float);
}

/// Token splits of the probability launch: about one block per tile on average, at most 64 per
/// span. Results do not depend on it (each token is computed alone).
inline unsigned score_splits(const ScoreParams& p) {
  const int64_t spans = p.layout.num_spans > 0 ? p.layout.num_spans : 1;
  const int64_t avg = ceil_div(p.layout.num_image_tokens, spans);
  const int64_t y = ceil_div(avg, kScoreTile);
  return static_cast<unsigned>(y < 1 ? 1 : (y > 64 ? 64 : y));
}

template <typename T, int V>
cudaError_t launch_score(const ScoreParams& p, Stats* partials, float* logits, cudaStream_t stream) {
  const ScoreGeometry g = make_geometry(p, V);
  if (p.num_queries > 0) {  // no query rows: launch 2 rejects the batch (images need queries)
    const dim3 grid1(static_cast<unsigned>(p.num_queries * g.grid_parts), static_cast<unsigned>(p.num_kv_heads));
    const cudaError_t e = ::fulgur::detail::launch(score_partials_kernel<T, V>, grid1, dim3(kThreads),
                                                   score_partials_smem(p), stream, p, g, partials, logits);
    if (e != cudaSuccess) return e;
  }
  const dim3 grid2(static_cast<unsigned>(p.layout.num_spans), score_splits(p));
  return ::fulgur::detail::launch(score_probs_kernel<T, V>, grid2, dim3(kThreads), score_tile_smem(p), stream, p, g,
                                  static_cast<const Stats*>(partials), static_cast<const float*>(logits));
}

/// The image logits are kept (launch 2 then reads them instead of recomputing them from K) when
/// every sequence has exactly one query row: an [H, num_image_tokens] fp32 slab whose size the
/// host knows. With several query rows per sequence their number per sequence is device data, so
/// launch 2 recomputes.
inline bool score_stores_logits(const ScoreParams& p) { return p.cu_queries == nullptr; }

inline void carve_score_workspace(::fulgur::detail::WorkspaceCarver& c, const ScoreParams& p, Stats** partials,
                                  float** logits) {
  *partials = c.take<Stats>(static_cast<size_t>(p.num_queries) * static_cast<size_t>(p.num_heads) * kScoreMaxParts);
  *logits = nullptr;
  if (score_stores_logits(p)) {
    *logits = c.take<float>(static_cast<size_t>(p.num_heads) * static_cast<size_t>(p.layout.num_image_tokens));
  }
}

}  // namespace detail

/// Pure host check of a score launch (reads no device memory): the pointer-free part of
/// validate(), the dtype allow-list and the launch limits.
inline Status can_implement(const ScoreParams& p) {
  FULGUR_RETURN_IF_ERROR(validate_arguments(p));
  FULGUR_CHECK_ARG(p.layout.num_spans > 0 || p.layout.num_image_tokens == 0,
                   "token_drop score: num_image_tokens must be 0 when there are no spans");
  if (p.dtype == DType::kF64) return Status::not_supported("token_drop score: fp64 inputs are for the references only");
  if ((p.dtype == DType::kF32 && !FULGUR_ALLOW_F32) || (p.dtype == DType::kF16 && !FULGUR_ALLOW_F16) ||
      (p.dtype == DType::kBF16 && !FULGUR_ALLOW_BF16)) {
    return Status::not_supported("token_drop score: this dtype is not compiled in (FULGUR_ALLOW_*)");
  }
  if (detail::score_tile_smem(p) > detail::kMaxSmemBytes || detail::score_partials_smem(p) > detail::kMaxSmemBytes) {
    return Status::not_supported("token_drop score: num_heads * (head_dim + 65) floats exceed 227 KB of shared memory");
  }
  FULGUR_CHECK_ARG(p.num_queries <= (int64_t{1} << 31) / detail::kScoreMaxParts - 1,
                   "token_drop score: too many query rows for one launch");
  FULGUR_CHECK_ARG(p.num_kv_heads <= 65535, "token_drop score: num_kv_heads above 65535");
  FULGUR_CHECK_ARG(p.layout.num_spans <= INT32_MAX && p.layout.num_image_tokens <= INT32_MAX,
                   "token_drop score: more than 2^31 spans or image tokens");
  return Status::success();
}

/// Scores every image token of the batch (see the top of this file). CUB-style workspace: with
/// workspace == nullptr only workspace_bytes is set (num_queries * num_heads * 32 * 8 bytes of
/// partials, plus num_heads * num_image_tokens * 4 bytes of logits when cu_queries is null; each
/// rounded up to 256 bytes); the workspace must be 16-byte aligned. Returns cudaErrorInvalidValue for bad arguments
/// (nothing launched), cudaErrorNotSupported for a configuration not compiled in. Metadata that validate() would reject
/// (a span outside its sequence, a query before the end of its image) cannot be seen by the host: the kernels then
/// write nothing (scores keep their previous contents).
inline cudaError_t score(void* workspace, size_t& workspace_bytes, const ScoreParams& p, cudaStream_t stream = nullptr) {
  const Status st = can_implement(p);
  if (!st) return st.code();
  ::fulgur::detail::WorkspaceCarver sizing(nullptr);
  detail::Stats* partials = nullptr;
  float* logits = nullptr;
  detail::carve_score_workspace(sizing, p, &partials, &logits);
  if (workspace == nullptr) {
    workspace_bytes = sizing.bytes();
    return cudaSuccess;
  }
  if (workspace_bytes < sizing.bytes() || reinterpret_cast<uintptr_t>(workspace) % 16 != 0)
    return cudaErrorInvalidValue;
  if (p.layout.num_image_tokens == 0) return cudaSuccess;  // nothing to score
  ::fulgur::detail::WorkspaceCarver carver(workspace);
  detail::carve_score_workspace(carver, p, &partials, &logits);
  return FULGUR_DISPATCH_DTYPE(p.dtype, T, {
    if (detail::score_vec<T>(p) > 1)
      return detail::launch_score<T, static_cast<int>(16 / sizeof(T))>(p, partials, logits, stream);
    return detail::launch_score<T, 1>(p, partials, logits, stream);
  });
}

}  // namespace token_drop
FULGUR_NAMESPACE_END
