// SPDX-License-Identifier: Apache-2.0
// Shared pieces of the token-drop kernels (score.cuh, select.cuh, compact.cuh, fused.cuh): the
// tile choices, the device copy of the keep-count rule, the selection rank, the block-wide check
// of the batch metadata, and the small block helpers they all use. docs/design/token_drop.md explains
// the design; params.hpp documents every Params field.
//
// Why a device-side metadata check: launchers must not read device memory, so a span outside
// its sequence or a query before its image cannot be seen on the host. Every kernel that writes
// a Params output first checks, block-cooperatively, ALL the metadata its launch depends on (the
// same conditions as validate() in params.hpp); on a violation every block of the launch sees
// the same verdict and returns before writing anything. validate() on host copies gives the
// reason. The check reads O(B + S + Q) int64 values per block (plus the kept indices for the
// compaction map), a few microseconds of L2 traffic at most.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "fulgur/detail/cuda.cuh"
#include "fulgur/primitives/block.cuh"
#include "fulgur/primitives/warp.cuh"
#include "fulgur/token_drop/params.hpp"

/// Keeps a runtime-bounded loop rolled under nvcc (unrolled copies of a loop body with global
/// stores multiplied the code and made ptxas spill); nothing for host compilers.
#if !defined(FULGUR_NO_UNROLL)
#if defined(__CUDACC__)
#define FULGUR_NO_UNROLL _Pragma("unroll 1")
#else
#define FULGUR_NO_UNROLL
#endif
#endif

FULGUR_NAMESPACE_BEGIN
namespace token_drop {
namespace detail {

// ---------------------------------------------------------------------------------------------
// Tile choices (one place; the reasons are in docs/design/token_drop.md, "Tiling constants").

/// Threads of every token-drop block. The score's partial and tile functions must run with the
/// same block size in the separate kernels and in the fused kernel (their reduction trees depend
/// on it), so there is one constant.
constexpr int kThreads = 256;
/// __launch_bounds__'s second argument for every kernel: caps registers at 128 per thread. With the
/// plain __launch_bounds__(256), ptxas 13.0 chose 32-48 registers for several kernels and spilled;
/// with this bound none spills (tests/token_drop/check_sass.cmake checks it on sm_80 and sm_90a).
constexpr int kMinBlocksPerSm = 2;
/// A query row's causal keys 0..pos are split into at most this many parts, each scored by its
/// own block: enough blocks for one LLaVA-NeXT sequence (32 heads x 24 parts) to fill a GPU.
constexpr int kScoreMaxParts = 32;
/// Part lengths are multiples of this (and at least this), so short rows use few parts.
constexpr int kScorePartGrain = 64;
/// Image tokens per tile of the probability pass (logits tile [H][kScoreTile] in shared memory).
constexpr int kScoreTile = 64;
/// Query heads sharing one K row load in the dot product (a GQA group is walked in chunks of 4).
constexpr int kHeadChunk = 4;
/// Row tensors gathered by one launch of the compaction gather (grid.y); more take more launches.
constexpr int kMaxGatherTensors = 16;
/// Vector elements one gather block moves per tile, about 8 per thread.
constexpr int kGatherVectorsPerBlock = 8 * kThreads;
/// Opt-in shared memory per block on sm_80 / sm_90 (227 KB); configurations needing more are
/// not supported.
constexpr size_t kMaxSmemBytes = 227 * 1024;

FULGUR_HOST_DEVICE constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/// Keys per part of a causal row of n keys: n / kScoreMaxParts rounded up to the grain. A function
/// of the row alone, so a sequence is split the same way whatever shares its batch.
FULGUR_HOST_DEVICE constexpr int64_t score_part_len(int64_t n) {
  const int64_t per = ceil_div(n, kScoreMaxParts);
  return ceil_div(per < kScorePartGrain ? kScorePartGrain : per, kScorePartGrain) * kScorePartGrain;
}
FULGUR_HOST_DEVICE constexpr int score_num_parts(int64_t n) {
  return n <= 0 ? 0 : static_cast<int>(ceil_div(n, score_part_len(n)));
}

/// The most parts any row of at most `rows` keys has (parts are not monotone in n: 2,048 keys make
/// 32 parts of 64, 2,049 make 17 of 128). Launch 1 needs only this many blocks per query row, a
/// bound the host computes from total_rows, so short batches do not launch 32 mostly empty blocks
/// per row (which costs little on a GPU but a lot under the emulation's thread backend).
FULGUR_HOST_DEVICE constexpr int score_grid_parts(int64_t rows) {
  return rows >= int64_t{kScorePartGrain} * kScoreMaxParts
             ? kScoreMaxParts
             : static_cast<int>(ceil_div(rows < 1 ? 1 : rows, kScorePartGrain));
}

/// Lanes that share one key row's dot product: enough for one vector each, a power of two <= 32.
FULGUR_HOST_DEVICE constexpr int score_group_lanes(int head_dim, int vec) {
  const int nvec = (head_dim + vec - 1) / vec;
  int g = 1;
  while (g < nvec && g < 32) g *= 2;
  return g;
}

// ---------------------------------------------------------------------------------------------
// Keep counts and the selection order.

/// keep_count (params.hpp) for device code: the same double operations, so the same integers.
FULGUR_HOST_DEVICE inline int64_t keep_count_device(int64_t n, KeepRule rule, double ratio) {
  if (rule == KeepRule::kFloorKeepRatio) return static_cast<int64_t>(floor(static_cast<double>(n) * ratio));
  const double x = static_cast<double>(n) * (1.0 - ratio);
  const double f = floor(x);
  const double frac = x - f;
  double r = f;
  if (frac > 0.5) {
    r = f + 1.0;
  } else if (frac == 0.5) {
    r = (fmod(f, 2.0) == 0.0) ? f : f + 1.0;
  }
  return static_cast<int64_t>(r);
}

/// The selection order as an unsigned rank (larger ranks first, equal ranks by lower index): the
/// numeric order of the scores with -0.0 == +0.0, and every NaN below every number, -inf
/// included (reference::token_drop_select's rule). Numbers map to the usual order-preserving
/// bit pattern (>= 0x007fffff, the image of -inf); NaN maps to 0.
FULGUR_HOST_DEVICE FULGUR_FORCEINLINE uint32_t select_rank(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0u;
  if ((u & 0x7fffffffu) == 0u) return 0x80000000u;
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// ---------------------------------------------------------------------------------------------
// Loads.

FULGUR_DEVICE FULGUR_FORCEINLINE float to_float(float x) { return x; }
FULGUR_DEVICE FULGUR_FORCEINLINE float to_float(__half x) { return __half2float(x); }
FULGUR_DEVICE FULGUR_FORCEINLINE float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

/// V consecutive elements as floats: one 16-byte load when V * sizeof(T) == 16 (the caller
/// guarantees the alignment), else element by element.
template <typename T, int V>
FULGUR_DEVICE FULGUR_FORCEINLINE void load_vec(const T* p, float (&out)[V]) {
  if constexpr (V * sizeof(T) == 16) {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    T e[V];
    memcpy(static_cast<void*>(e), &raw, sizeof raw);
    FULGUR_UNROLL
    for (int i = 0; i < V; ++i) out[i] = to_float(e[i]);
  } else {
    FULGUR_UNROLL
    for (int i = 0; i < V; ++i) out[i] = to_float(p[i]);
  }
}

// ---------------------------------------------------------------------------------------------
// Block helpers.

using BlockSum = primitives::BlockReduce<long long, kThreads>;

/// Sum of a[0, n) over the block (every thread receives it). Ends with the reduce's barrier; the
/// storage may be reused after the next barrier.
FULGUR_DEVICE FULGUR_FORCEINLINE long long block_sum_prefix(const int64_t* a, int64_t n,
                                                            typename BlockSum::TempStorage& storage) {
  long long v = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) v += a[i];
  return BlockSum(storage).sum(v);
}

/// Smallest b in [0, count) with cu[b + 1] > x: the segment of a CSR offset array holding x
/// (empty segments skipped). Returns count - 1 when none does (the caller re-checks).
FULGUR_DEVICE FULGUR_FORCEINLINE int64_t segment_of(const int64_t* cu, int64_t count, int64_t x) {
  int64_t lo = 0, hi = count - 1;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (cu[mid + 1] > x) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  return lo;
}

// ---------------------------------------------------------------------------------------------
// The block-wide metadata check.

/// What a launch's check covers beyond the layout (BatchLayout's conditions are always checked).
struct CheckSpec {
  // Score: queries of every sequence with image tokens lie at or after its last span's end.
  bool score = false;
  int64_t num_queries = 0;
  const int64_t* cu_queries = nullptr;
  const int64_t* query_pos = nullptr;
  // Select: keep counts from the original lengths fit the current spans and sum to num_kept.
  bool select = false;
  const int64_t* original_length = nullptr;
  KeepRule rule = KeepRule::kFloorKeepRatio;
  double ratio = 1.0;
  int64_t select_num_kept = 0;
  // Compact: cu_kept is a CSR over the spans summing to num_kept; kept indices lie in their span,
  // strictly ascending.
  bool compact = false;
  const int64_t* kept_index = nullptr;
  const int64_t* cu_kept = nullptr;
  int64_t compact_num_kept = 0;
};

struct CheckStorage {
  typename BlockSum::TempStorage image_sum;
  typename BlockSum::TempStorage keep_sum;
};

/// True on every thread when the metadata satisfies params.hpp's validate() for the parts named in
/// `c`. Every thread of the block must call it. Memory-safe on any metadata: each array is read
/// only inside its documented extent, and offsets read from one array are bounds-checked before
/// they index another.
FULGUR_DEVICE inline bool check_batch(const BatchLayout& l, const CheckSpec& c, CheckStorage& st) {
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t B = l.batch, S = l.num_spans;
  bool ok = true;
  long long image_tokens = 0, keep_total = 0;

  // One thread per sequence: offsets, its spans (inside, ascending, non-overlapping), its queries.
  // (Straight-line conditions rather than `continue`: early loop exits make ptxas split the
  // kernel with CALL.REL.NOINC and spill around it.)
  for (int64_t b = tid; b < B; b += kThreads) {
    const int64_t r0 = l.cu_seqlens[b], r1 = l.cu_seqlens[b + 1];
    const bool rows_ok =
        r0 >= 0 && r1 >= r0 && r1 <= l.total_rows && (b != 0 || r0 == 0) && (b != B - 1 || r1 == l.total_rows);
    const int64_t seqlen = rows_ok ? r1 - r0 : 0;
    int64_t s0 = 0, s1 = 0;
    bool spans_ok = true;
    if (l.cu_spans != nullptr) {
      s0 = l.cu_spans[b];
      s1 = l.cu_spans[b + 1];
      spans_ok = s0 >= 0 && s1 >= s0 && s1 <= S && (b != 0 || s0 == 0) && (b != B - 1 || s1 == S);
      if (!spans_ok) s1 = s0 = 0;
    }
    bool seq_ok = rows_ok && spans_ok;
    int64_t prev_end = 0, seq_image = 0;
    for (int64_t s = s0; s < s1; ++s) {
      const int64_t start = l.span_start[s], len = l.span_length[s];
      seq_ok = seq_ok && start >= prev_end && len >= 0 && start <= seqlen && len <= seqlen - start;
      prev_end = start + len;
      seq_image += len;
    }
    if (c.score) {
      int64_t q0 = b, q1 = b + 1;
      if (c.cu_queries != nullptr) {  // the CSR itself, for every sequence
        q0 = c.cu_queries[b];
        q1 = c.cu_queries[b + 1];
        seq_ok = seq_ok && q0 >= 0 && q1 >= q0 && q1 <= c.num_queries && (b != 0 || q0 == 0) &&
                 (b != B - 1 || q1 == c.num_queries);
      }
      if (seq_image > 0) {  // an image needs a query row, after the image
        seq_ok = seq_ok && q1 > q0;
        const int64_t q_end = seq_ok ? q1 : q0;
        for (int64_t qi = q0; qi < q_end; ++qi) {
          const int64_t pos = c.query_pos != nullptr ? c.query_pos[qi] : seqlen - 1;
          seq_ok = seq_ok && pos >= prev_end && pos < seqlen;
        }
      }
    }
    ok = ok && seq_ok;
  }
  // No spans: a given cu_spans must say so for every sequence.
  if (S == 0 && l.cu_spans != nullptr) {
    for (int64_t b = tid; b <= B; b += kThreads) {
      if (l.cu_spans[b] != 0) ok = false;
    }
  }

  // One thread per span: the image-token total, keep counts, the kept CSR.
  for (int64_t s = tid; s < S; s += kThreads) {
    const int64_t len = l.span_length[s];
    image_tokens += len;
    if (c.select) {
      const int64_t n = c.original_length != nullptr ? c.original_length[s] : len;
      const int64_t keep = n < 0 ? 0 : keep_count_device(n, c.rule, c.ratio);
      if (n < 0 || keep > len) ok = false;
      keep_total += keep;
    }
    if (c.compact) {
      const int64_t k0 = c.cu_kept[s], k1 = c.cu_kept[s + 1];
      if ((s == 0 && k0 != 0) || (s == S - 1 && k1 != c.compact_num_kept)) ok = false;
      if (k1 < k0 || k1 - k0 > len) ok = false;
    }
  }
  // One thread per kept index: inside its span, above its predecessor in the span.
  if (c.compact && S > 0) {
    for (int64_t i = tid; i < c.compact_num_kept; i += kThreads) {
      const int64_t s = segment_of(c.cu_kept, S, i);
      const int64_t k0 = c.cu_kept[s], k1 = c.cu_kept[s + 1];
      const int64_t j = c.kept_index[i];
      const bool in_csr = i >= k0 && i < k1;
      ok = ok && in_csr && j >= l.span_start[s] && j - l.span_start[s] < l.span_length[s] &&
           (i == k0 || c.kept_index[i - 1] < j);
    }
  }
  if (c.compact && S == 0 && c.compact_num_kept != 0) ok = false;

  const bool all_ok = __syncthreads_and(ok) != 0;
  const long long image_sum = BlockSum(st.image_sum).sum(image_tokens);
  const long long keep_sum = c.select ? BlockSum(st.keep_sum).sum(keep_total) : 0;
  return all_ok && image_sum == l.num_image_tokens && (!c.select || keep_sum == c.select_num_kept);
}

// ---------------------------------------------------------------------------------------------
// Host helpers shared by the launchers.

/// Largest power of two <= 16 dividing every value: the vector width (bytes) a pointer and
/// stride set allows.
inline int common_vector_bytes(const uint64_t* values, int count) {
  int v = 16;
  for (int i = 0; i < count; ++i) {
    while (v > 1 && values[i] % static_cast<uint64_t>(v) != 0) v /= 2;
  }
  return v;
}

}  // namespace detail
}  // namespace token_drop
FULGUR_NAMESPACE_END
