// SPDX-License-Identifier: Apache-2.0
// fulgur::moe::permute: the layouts an expert GEMM consumes, from topk_ids (PermuteParams,
// include/fulgur/moe/params.hpp; oracle: reference::moe_permute). Rows grouped by expert, each
// expert's rows in increasing expanded index i = t*k + j: a stable order that no scheduling
// decision can change (no atomic ever decides a position; integer atomics only count).
//
// Two paths that write the same bits (tested):
//   single block (T*k <= kPermuteChunk = 4096, decode): one launch. The block radix-sorts the T*k
//     (expert, i) pairs stably (primitives::BlockRadixSort, 4-bit passes over bit_width(E) bits),
//     so sorted position == permuted row; expert offsets come from the segment heads, a block
//     scan of the tile-padded counts gives the tile view, and every view is written by that block.
//   multi block (any T*k): chunks of kScatterChunk = 1024 rows, two kernels (and a 4-byte
//   memset of the ticket): every launch costs a few microseconds of a call that moves well under
//   a megabyte, so the count table's scan and the per-expert outputs ride on the count kernel.
//     1. count:    per-chunk expert histogram (shared-memory integer atomics), written
//                  expert-major to the workspace as counts[e * B + b]; expert-parallel per-chunk
//                  rank counts; token_in_rank for the chunk's tokens. Then each block takes a
//                  ticket (atomicAdd after a __threadfence); the block that takes the last one
//                  sees every count and, alone: scans the E*B counts in place (entry (e, b)
//                  becomes the first permuted row of chunk b's rows of expert e; integers, so
//                  the same values in any order), then the expert offsets, tile-padded starts,
//                  tile ids, padding sentinels, masked counts and overflow, rank send counts;
//     2. scatter:  each chunk sorts its rows stably by expert again; a row's permuted row is its
//                  (e, b) start plus its rank inside its segment (block max-scan of the heads);
//                  every per-row output is written once; masked sentinels grid-stride.
//
// Bytes: reads T*k ids (4 B), writes offsets 8(E+1) + both maps 8*T*k + views; the multi-block
// path also moves the E*B count table three times. No floating point.
#pragma once

#include <cstdint>

#include "fulgur/detail/cuda.cuh"
#include "fulgur/detail/launch.cuh"
#include "fulgur/detail/status.hpp"
#include "fulgur/detail/workspace.hpp"
#include "fulgur/moe/common.cuh"
#include "fulgur/moe/params.hpp"
#include "fulgur/primitives/block.cuh"
#include "fulgur/primitives/sort.cuh"

FULGUR_NAMESPACE_BEGIN
namespace moe {

/// Which permutation path runs. kAuto: single block when T*k <= kPermuteChunk, else multi block.
/// Both give bit-identical outputs; forcing one is for tests and benchmarks.
enum class PermutePath : int32_t { kAuto = 0, kSingleBlock = 1, kMultiBlock = 2 };

namespace detail {

constexpr int kPermuteThreads = 256;
constexpr int kPermuteItems = 16;
/// Rows of the single-block path (its capacity).
constexpr int kPermuteChunk = kPermuteThreads * kPermuteItems;
/// Rows per chunk of the multi-block path: smaller than the single block's capacity, so that
/// T = 8K, k = 8 spreads over 64 blocks rather than 16 (the count table grows to E * 64 entries,
/// a few hundred KB at most for realistic E).
constexpr int kScatterItems = 4;
constexpr int kScatterChunk = kPermuteThreads * kScatterItems;
/// Experts per thread in the block scans over experts (E <= kMaxExperts).
constexpr int kPermuteExpertItems = kMaxExperts / kPermuteThreads;
static_assert(kPermuteExpertItems * kPermuteThreads == kMaxExperts, "");

using PermuteSort = primitives::BlockRadixSort<uint32_t, int32_t, kPermuteThreads, kPermuteItems, 4>;
using ScatterSort = primitives::BlockRadixSort<uint32_t, int32_t, kPermuteThreads, kScatterItems, 4>;
using PermuteScan = primitives::BlockScan<int32_t, kPermuteThreads>;

FULGUR_HOST_DEVICE FULGUR_FORCEINLINE int bit_width(uint32_t v) {
  int b = 0;
  while (v != 0u) {
    ++b;
    v >>= 1;
  }
  return b;
}

struct PermuteSmem {
  union {
    PermuteSort::TempStorage sort;
    int32_t pad[kMaxExperts + 1];  // tile-padded start of each expert (single block)
    int32_t hist[kMaxExperts];     // rank histogram (expert parallelism)
  } u;
  int32_t off[kMaxExperts + 1];  // first permuted row of each expert
  int32_t last_key[kPermuteThreads];
  PermuteScan::TempStorage scan;
};

struct ScatterSmem {
  ScatterSort::TempStorage sort;
  int32_t last_key[kPermuteThreads];
  PermuteScan::TempStorage scan;
};

/// Loads rows [begin, begin + kPermuteThreads * kItems) as (expert, expanded index) pairs (rows
/// past N get the key E, which sorts last) and sorts them stably by expert. Ends with a barrier.
template <int kItems>
FULGUR_DEVICE FULGUR_FORCEINLINE void load_sort_chunk(
    const PermuteParams& p, int64_t begin, uint32_t (&keys)[kItems], int32_t (&vals)[kItems],
    typename primitives::BlockRadixSort<uint32_t, int32_t, kPermuteThreads, kItems, 4>::TempStorage& storage) {
  const int64_t N = p.num_tokens * p.top_k;
  const int tid = static_cast<int>(threadIdx.x);
  FULGUR_UNROLL
  for (int i = 0; i < kItems; ++i) {
    const int64_t q = begin + tid * kItems + i;
    keys[i] = q < N ? static_cast<uint32_t>(p.topk_ids[q]) : static_cast<uint32_t>(p.num_experts);
    vals[i] = static_cast<int32_t>(q);
  }
  primitives::BlockRadixSort<uint32_t, int32_t, kPermuteThreads, kItems, 4>(storage).sort(
      keys, vals, 0, bit_width(static_cast<uint32_t>(p.num_experts)));
}

/// The key before each of this thread's sorted items (-1 before position 0). Uses last_key;
/// contains a barrier.
template <int kItems>
FULGUR_DEVICE FULGUR_FORCEINLINE void previous_keys(const uint32_t (&keys)[kItems], int32_t* last_key,
                                                    int32_t (&prev)[kItems]) {
  const int tid = static_cast<int>(threadIdx.x);
  last_key[tid] = static_cast<int32_t>(keys[kItems - 1]);
  __syncthreads();
  prev[0] = tid == 0 ? -1 : last_key[tid - 1];
  FULGUR_UNROLL
  for (int i = 1; i < kItems; ++i) prev[i] = static_cast<int32_t>(keys[i - 1]);
}

/// Writes every output of one real row: expert e, expanded index i, permuted row r; off_e and
/// pad_e are the expert's first compact and tile-padded rows.
FULGUR_DEVICE FULGUR_FORCEINLINE void write_row(const PermuteParams& p, int32_t e, int32_t i, int32_t r, int32_t off_e,
                                                int32_t pad_e) {
  if (p.expanded_to_permuted != nullptr) p.expanded_to_permuted[i] = r;
  if (p.permuted_to_expanded != nullptr) p.permuted_to_expanded[r] = i;
  if (p.local_expert_of_row != nullptr) {
    const int32_t per_rank = p.num_experts / p.num_ranks;
    p.local_expert_of_row[r] = e % per_rank;
  }
  const int32_t c = r - off_e;  // rank of the row inside its expert, (t, j) order
  if (p.sorted_token_ids != nullptr) p.sorted_token_ids[pad_e + c] = i;
  if (p.masked_expanded != nullptr && c < p.masked_capacity)
    p.masked_expanded[static_cast<int64_t>(e) * p.masked_capacity + c] = i;
}

/// True when slot j of token t is the first of its token on its rank (a token is sent once per
/// rank).
FULGUR_DEVICE FULGUR_FORCEINLINE bool first_on_rank(const PermuteParams& p, int64_t q, int32_t per_rank,
                                                    int32_t& rank) {
  const int64_t t = q / p.top_k;
  const int j = static_cast<int>(q - t * p.top_k);
  rank = p.topk_ids[q] / per_rank;
  for (int jj = 0; jj < j; ++jj)
    if (p.topk_ids[t * p.top_k + jj] / per_rank == rank) return false;
  return true;
}

/// token_in_rank[t, r] for tokens [t0, t1), every entry written (0 or 1).
FULGUR_DEVICE FULGUR_FORCEINLINE void write_token_in_rank(const PermuteParams& p, int64_t t0, int64_t t1) {
  const int R = p.num_ranks;
  const int32_t per_rank = p.num_experts / R;
  const int64_t n = (t1 - t0) * R;
  for (int64_t s = threadIdx.x; s < n; s += blockDim.x) {
    const int64_t t = t0 + s / R;
    const int r = static_cast<int>(s % R);
    uint8_t hit = 0;
    for (int j = 0; j < p.top_k; ++j) hit |= static_cast<uint8_t>(p.topk_ids[t * p.top_k + j] / per_rank == r);
    p.token_in_rank[t * R + r] = hit;
  }
}

/// Per-expert outputs, given off[0..E] (the first permuted row of each expert, off[E] = T*k):
/// expert_first_token_offset, the tile-padded view (starts to pad_out[0..E], tile ids, padding and
/// tail sentinels), masked counts and overflow, and, when fill_masked, the masked sentinels.
/// Every thread of the block calls it; starts and ends with a barrier.
FULGUR_DEVICE inline void finalize_experts(const PermuteParams& p, const int32_t* off, int32_t* pad_out, bool fill_masked,
                                    PermuteScan::TempStorage& scan) {
  const int tid = static_cast<int>(threadIdx.x);
  const int E = p.num_experts;
  const int64_t N = p.num_tokens * p.top_k;
  const int32_t sentinel = static_cast<int32_t>(N);
  __syncthreads();
  for (int e = tid; e <= E; e += kPermuteThreads) p.expert_first_token_offset[e] = off[e];

  int32_t count[kPermuteExpertItems];
  FULGUR_UNROLL
  for (int i = 0; i < kPermuteExpertItems; ++i) {
    const int e = tid * kPermuteExpertItems + i;
    count[i] = e < E ? off[e + 1] - off[e] : 0;
  }

  if (p.sorted_token_ids != nullptr) {
    const int32_t M = p.tile_m;
    int32_t padded[kPermuteExpertItems], start[kPermuteExpertItems];
    FULGUR_UNROLL
    for (int i = 0; i < kPermuteExpertItems; ++i) padded[i] = (count[i] + M - 1) / M * M;
    int32_t post = 0;
    PermuteScan(scan).exclusive_sum(padded, start, post);
    FULGUR_UNROLL
    for (int i = 0; i < kPermuteExpertItems; ++i) {
      const int e = tid * kPermuteExpertItems + i;
      if (e >= E) continue;
      pad_out[e] = start[i];
      for (int32_t b = start[i] / M; b < (start[i] + padded[i]) / M; ++b) p.tile_expert_ids[b] = e;
      for (int32_t s = start[i] + count[i]; s < start[i] + padded[i]; ++s) p.sorted_token_ids[s] = sentinel;
    }
    if (tid == 0) {
      pad_out[E] = post;
      p.num_tokens_post_padded[0] = post;
    }
    // tile_padded_capacity / tile_count_capacity (params.hpp, host-only) spelled out.
    const int64_t cap = N + static_cast<int64_t>(E) * (M - 1);
    const int64_t tiles_cap = (cap + M - 1) / M;
    for (int64_t s = post + tid; s < cap; s += kPermuteThreads) p.sorted_token_ids[s] = sentinel;
    for (int64_t b = post / M + tid; b < tiles_cap; b += kPermuteThreads) p.tile_expert_ids[b] = -1;
    __syncthreads();  // the scan storage is reused below
  }

  if (p.masked_expanded != nullptr) {
    const int32_t C = p.masked_capacity;
    int32_t dropped[kPermuteExpertItems], unused[kPermuteExpertItems];
    FULGUR_UNROLL
    for (int i = 0; i < kPermuteExpertItems; ++i) {
      const int e = tid * kPermuteExpertItems + i;
      dropped[i] = count[i] > C ? count[i] - C : 0;
      if (e < E) p.masked_counts[e] = count[i] < C ? count[i] : C;
    }
    int32_t total = 0;
    PermuteScan(scan).exclusive_sum(dropped, unused, total);
    if (tid == 0 && p.masked_overflow != nullptr) p.masked_overflow[0] = total;
    if (fill_masked) {
      const int64_t n = static_cast<int64_t>(E) * C;
      for (int64_t s = tid; s < n; s += kPermuteThreads) {
        const int e = static_cast<int>(s / C);
        const int32_t c = static_cast<int32_t>(s - static_cast<int64_t>(e) * C);
        if (c >= off[e + 1] - off[e]) p.masked_expanded[s] = sentinel;
      }
    }
  }
  __syncthreads();
}

// ---- single block ------------------------------------------------------------------------------

/// The whole single-block permutation (T*k <= kPermuteChunk), by the calling block of
/// kPermuteThreads threads. Starts by reading topk_ids: a caller that wrote them in the same
/// kernel (the fused route + permute) puts a __syncthreads() before.
FULGUR_DEVICE inline void permute_single_block(const PermuteParams& p, PermuteSmem& smem) {
  const int tid = static_cast<int>(threadIdx.x);
  const int E = p.num_experts;
  const int32_t N = static_cast<int32_t>(p.num_tokens * p.top_k);

  uint32_t keys[kPermuteItems];
  int32_t vals[kPermuteItems];
  load_sort_chunk<kPermuteItems>(p, 0, keys, vals, smem.u.sort);

  // Sorted position == permuted row. A segment head at position q with key e (previous key pe)
  // starts experts pe+1 .. e: they all begin at q (the ones between are empty). Padding rows
  // carry key E, so the first of them closes the last experts at q = N.
  int32_t prev[kPermuteItems];
  previous_keys(keys, smem.last_key, prev);
  FULGUR_UNROLL
  for (int i = 0; i < kPermuteItems; ++i) {
    const int32_t q = tid * kPermuteItems + i;
    const int32_t key = static_cast<int32_t>(keys[i]);
    for (int32_t e = prev[i] + 1; e <= key && e <= E; ++e) smem.off[e] = q;
  }
  if (tid == kPermuteThreads - 1) {  // a full chunk has no padding row to close the last experts
    for (int32_t e = static_cast<int32_t>(keys[kPermuteItems - 1]) + 1; e <= E; ++e) smem.off[e] = kPermuteChunk;
  }
  finalize_experts(p, smem.off, smem.u.pad, true, smem.scan);

  FULGUR_UNROLL
  for (int i = 0; i < kPermuteItems; ++i) {
    const int32_t q = tid * kPermuteItems + i;
    if (q < N) {
      const int32_t e = static_cast<int32_t>(keys[i]);
      write_row(p, e, vals[i], q, smem.off[e], p.sorted_token_ids != nullptr ? smem.u.pad[e] : 0);
    }
  }

  if (p.rank_send_counts != nullptr) {
    const int R = p.num_ranks;
    const int32_t per_rank = E / R;
    __syncthreads();  // smem.u.pad is read above
    for (int r = tid; r < R; r += kPermuteThreads) smem.u.hist[r] = 0;
    __syncthreads();
    for (int32_t q = tid; q < N; q += kPermuteThreads) {
      int32_t rank;
      if (first_on_rank(p, q, per_rank, rank)) atomicAdd(&smem.u.hist[rank], 1);
    }
    __syncthreads();
    for (int r = tid; r < R; r += kPermuteThreads) p.rank_send_counts[r] = smem.u.hist[r];
  }
  if (p.token_in_rank != nullptr) write_token_in_rank(p, 0, p.num_tokens);
}

// Every kernel of this file is a template only so that a header-defined kernel has vague linkage:
// two translation units of one program that include this header must link (a plain __global__
// function here is a duplicate symbol; test_moe_link). The device helpers are inline for the same
// reason (under emulation they are plain host functions).
template <int kUnused = 0>
FULGUR_KERNEL void __launch_bounds__(kPermuteThreads) permute_single_kernel(const PermuteParams p) {
  __shared__ PermuteSmem smem;
  permute_single_block(p, smem);
}

// ---- multi block -------------------------------------------------------------------------------

/// Exclusive prefix sum of a[0, n) in place, by the calling block (kPermuteThreads threads), in
/// tiles of kPermuteThreads * 8 entries with a running carry. Ends with a barrier.
FULGUR_DEVICE inline void block_exclusive_sum_inplace(int32_t* a, int64_t n, PermuteScan::TempStorage& scan) {
  constexpr int kItems = 8;
  const int tid = static_cast<int>(threadIdx.x);
  int32_t carry = 0;
  for (int64_t base = 0; base < n; base += static_cast<int64_t>(kPermuteThreads) * kItems) {
    int32_t v[kItems], out[kItems];
    FULGUR_UNROLL
    for (int i = 0; i < kItems; ++i) {
      const int64_t q = base + tid * kItems + i;
      v[i] = q < n ? a[q] : 0;
    }
    int32_t total = 0;
    PermuteScan(scan).exclusive_sum(v, out, total);
    FULGUR_UNROLL
    for (int i = 0; i < kItems; ++i) {
      const int64_t q = base + tid * kItems + i;
      if (q < n) a[q] = carry + out[i];
    }
    carry += total;
    __syncthreads();  // the scan storage is reused by the next tile; the sums are visible to all
  }
}

/// Count kernel of the multi-block path; its last block (ticket: *ticket must be 0 at launch)
/// scans the count table in place and writes the per-expert outputs, ws_off and ws_pad.
template <int kUnused = 0>
FULGUR_KERNEL void __launch_bounds__(kPermuteThreads)
    permute_count_kernel(const PermuteParams p, int32_t* block_counts, int32_t* block_rank_counts, int32_t B,
                         unsigned* ticket, int32_t* ws_off, int32_t* ws_pad) {
  __shared__ union {
    int32_t hist[kMaxExperts];
    int32_t off[kMaxExperts + 1];
  } u;
  __shared__ PermuteScan::TempStorage scan;
  __shared__ int finisher;
  int32_t* const hist = u.hist;
  const int tid = static_cast<int>(threadIdx.x);
  const int E = p.num_experts;
  const int64_t N = p.num_tokens * p.top_k;
  const int64_t b = blockIdx.x;
  const int64_t begin = b * kScatterChunk;
  const int64_t end = begin + kScatterChunk < N ? begin + kScatterChunk : N;

  for (int e = tid; e < E; e += kPermuteThreads) hist[e] = 0;
  __syncthreads();
  for (int64_t q = begin + tid; q < end; q += kPermuteThreads) atomicAdd(&hist[p.topk_ids[q]], 1);
  __syncthreads();
  for (int e = tid; e < E; e += kPermuteThreads) block_counts[e * static_cast<int64_t>(B) + b] = hist[e];

  if (p.rank_send_counts != nullptr) {
    const int R = p.num_ranks;
    const int32_t per_rank = E / R;
    __syncthreads();
    for (int r = tid; r < R; r += kPermuteThreads) hist[r] = 0;
    __syncthreads();
    for (int64_t q = begin + tid; q < end; q += kPermuteThreads) {
      int32_t rank;
      if (first_on_rank(p, q, per_rank, rank)) atomicAdd(&hist[rank], 1);
    }
    __syncthreads();
    for (int r = tid; r < R; r += kPermuteThreads) block_rank_counts[r * static_cast<int64_t>(B) + b] = hist[r];
  }
  if (p.token_in_rank != nullptr) {
    // Chunk b owns the tokens whose first row lies in it.
    const int64_t k = p.top_k;
    const int64_t t0 = (begin + k - 1) / k;
    int64_t t1 = (begin + kScatterChunk + k - 1) / k;
    if (t1 > p.num_tokens) t1 = p.num_tokens;
    if (t0 < t1) write_token_in_rank(p, t0, t1);
  }

  // The last block to finish sees every chunk's counts: its ticket comes after every other
  // block's __threadfence (and its own fence orders its reads after the ticket).
  __threadfence();
  __syncthreads();
  if (tid == 0) finisher = atomicAdd(ticket, 1u) == static_cast<unsigned>(B) - 1u ? 1 : 0;
  __syncthreads();
  if (!finisher) return;
  __threadfence();

  block_exclusive_sum_inplace(block_counts, static_cast<int64_t>(E) * B, scan);
  int32_t* const off = u.off;  // hist is dead: the barriers above separate them
  for (int e = tid; e < E; e += kPermuteThreads) off[e] = block_counts[e * static_cast<int64_t>(B)];
  if (tid == 0) off[E] = static_cast<int32_t>(N);
  finalize_experts(p, off, ws_pad, false, scan);
  for (int e = tid; e <= E; e += kPermuteThreads) ws_off[e] = off[e];
  if (p.rank_send_counts != nullptr) {
    for (int r = tid; r < p.num_ranks; r += kPermuteThreads) {
      int32_t s = 0;
      for (int32_t c = 0; c < B; ++c) s += block_rank_counts[r * static_cast<int64_t>(B) + c];
      p.rank_send_counts[r] = s;
    }
  }
}

template <int kUnused = 0>
FULGUR_KERNEL void __launch_bounds__(kPermuteThreads)
    permute_scatter_kernel(const PermuteParams p, const int32_t* block_offsets, int32_t B, const int32_t* ws_off,
                           const int32_t* ws_pad) {
  __shared__ ScatterSmem smem;
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t b = blockIdx.x;
  const int64_t N = p.num_tokens * p.top_k;

  uint32_t keys[kScatterItems];
  int32_t vals[kScatterItems];
  load_sort_chunk<kScatterItems>(p, b * kScatterChunk, keys, vals, smem.sort);
  int32_t prev[kScatterItems];
  previous_keys(keys, smem.last_key, prev);
  // Segment start of each position: inclusive max-scan of the head positions.
  int32_t head[kScatterItems], seg[kScatterItems];
  FULGUR_UNROLL
  for (int i = 0; i < kScatterItems; ++i)
    head[i] = static_cast<int32_t>(keys[i]) != prev[i] ? tid * kScatterItems + i : 0;
  PermuteScan(smem.scan).inclusive_scan(head, seg, primitives::Max{});
  FULGUR_UNROLL
  for (int i = 0; i < kScatterItems; ++i) {
    if (vals[i] < N) {
      const int32_t e = static_cast<int32_t>(keys[i]);
      const int32_t r = block_offsets[e * static_cast<int64_t>(B) + b] + (tid * kScatterItems + i - seg[i]);
      write_row(p, e, vals[i], r, ws_off[e], p.sorted_token_ids != nullptr ? ws_pad[e] : 0);
    }
  }

  if (p.masked_expanded != nullptr) {
    const int32_t C = p.masked_capacity;
    const int64_t n = static_cast<int64_t>(p.num_experts) * C;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * kPermuteThreads;
    for (int64_t s = b * kPermuteThreads + tid; s < n; s += stride) {
      const int e = static_cast<int>(s / C);
      const int32_t c = static_cast<int32_t>(s - static_cast<int64_t>(e) * C);
      if (c >= ws_off[e + 1] - ws_off[e]) p.masked_expanded[s] = static_cast<int32_t>(N);
    }
  }
}

inline PermutePath resolve_path(const PermuteParams& p, PermutePath path) {
  if (path != PermutePath::kAuto) return path;
  return p.num_tokens * p.top_k <= kPermuteChunk ? PermutePath::kSingleBlock : PermutePath::kMultiBlock;
}

inline int64_t permute_chunks(const PermuteParams& p) {
  const int64_t n = (p.num_tokens * p.top_k + kScatterChunk - 1) / kScatterChunk;
  return n > 0 ? n : 1;
}

/// The checks a workspace-size query needs (sizes only, no pointers).
inline Status permute_sizes_ok(const PermuteParams& p) {
  FULGUR_CHECK_ARG(p.num_tokens >= 0, "permute: num_tokens must be >= 0");
  FULGUR_CHECK_ARG(p.top_k >= 1 && p.top_k <= kMaxTopK, "permute: top_k must be in [1, kMaxTopK]");
  FULGUR_CHECK_ARG(p.num_experts >= 1 && p.num_experts <= kMaxExperts,
                   "permute: num_experts must be in [1, kMaxExperts]");
  FULGUR_CHECK_ARG(p.num_tokens <= kMaxIndex / p.top_k, "permute: num_tokens * top_k must fit in int32");
  FULGUR_CHECK_ARG(p.num_ranks >= 1 && p.num_experts % p.num_ranks == 0, "permute: num_ranks must divide num_experts");
  return Status::success();
}

struct PermuteWorkspace {
  int32_t* block_offsets = nullptr;      // [E * B]: counts, scanned in place by the count kernel
  int32_t* block_rank_counts = nullptr;  // [R * B]
  int32_t* off = nullptr;                // [E + 1]
  int32_t* pad = nullptr;                // [E + 1]
  unsigned* ticket = nullptr;            // [1], zeroed before the count kernel
  size_t bytes = 0;
};

inline void carve_permute_workspace(void* base, const PermuteParams& p, PermuteWorkspace& w) {
  const int64_t B = permute_chunks(p);
  const int64_t cells = static_cast<int64_t>(p.num_experts) * B;
  ::fulgur::detail::WorkspaceCarver c(base);
  w.block_offsets = c.take<int32_t>(static_cast<size_t>(cells));
  w.block_rank_counts = c.take<int32_t>(static_cast<size_t>(p.num_ranks) * static_cast<size_t>(B));
  w.off = c.take<int32_t>(static_cast<size_t>(p.num_experts) + 1);
  w.pad = c.take<int32_t>(static_cast<size_t>(p.num_experts) + 1);
  w.ticket = c.take<unsigned>(1);
  w.bytes = c.bytes();
}

}  // namespace detail

/// Whether permute() runs these parameters: validate(p) (host only, never reads device memory).
/// topk_ids must lie in [0, E): the kernels assume it (the reference checks it).
inline Status can_implement(const PermuteParams& p) {
  FULGUR_RETURN_IF_ERROR(validate(p));
  return Status::success();
}

/// Permutation by expert and every view PermuteParams asks for, as reference::moe_permute
/// defines them (bit-exact). CUB style: a null workspace stores the bytes needed for `path` in
/// workspace_bytes (only the sizes in p are read) and returns; otherwise the workspace must be
/// 16-byte aligned and the work is enqueued on `stream` (no allocation, no synchronization;
/// graph-capturable). Bad input returns cudaErrorInvalidValue and writes nothing.
inline cudaError_t permute(void* workspace, size_t& workspace_bytes, const PermuteParams& p,
                           cudaStream_t stream = nullptr, PermutePath path = PermutePath::kAuto) {
  {
    const Status s = detail::permute_sizes_ok(p);
    if (!s) return s.code();
  }
  if (path != PermutePath::kAuto && path != PermutePath::kSingleBlock && path != PermutePath::kMultiBlock)
    return cudaErrorInvalidValue;
  path = detail::resolve_path(p, path);
  if (path == PermutePath::kSingleBlock && p.num_tokens * p.top_k > detail::kPermuteChunk) return cudaErrorInvalidValue;
  detail::PermuteWorkspace w;
  if (path == PermutePath::kMultiBlock) {
    detail::carve_permute_workspace(nullptr, p, w);
  } else {
    w.bytes = ::fulgur::detail::WorkspaceCarver::kAlignment;  // nonzero: an allocation of it is non-null
  }
  if (workspace == nullptr) {
    workspace_bytes = w.bytes;
    return cudaSuccess;
  }
  {
    const Status s = can_implement(p);
    if (!s) return s.code();
  }
  if (workspace_bytes < w.bytes || reinterpret_cast<uintptr_t>(workspace) % 16 != 0) return cudaErrorInvalidValue;

  if (path == PermutePath::kSingleBlock) {
    return ::fulgur::detail::launch(detail::permute_single_kernel<>, dim3(1), dim3(detail::kPermuteThreads), 0, stream,
                                    p);
  }
  detail::carve_permute_workspace(workspace, p, w);
  const int64_t B = detail::permute_chunks(p);
  if (B > 0x7fffffff) return cudaErrorInvalidValue;
  const int32_t B32 = static_cast<int32_t>(B);
  cudaError_t e = ::fulgur::detail::memset_async(w.ticket, 0, sizeof(unsigned), stream);
  if (e != cudaSuccess) return e;
  e = ::fulgur::detail::launch(detail::permute_count_kernel<>, dim3(static_cast<unsigned>(B)),
                               dim3(detail::kPermuteThreads), 0, stream, p, w.block_offsets, w.block_rank_counts, B32,
                               w.ticket, w.off, w.pad);
  if (e != cudaSuccess) return e;
  return ::fulgur::detail::launch(detail::permute_scatter_kernel<>, dim3(static_cast<unsigned>(B)),
                                  dim3(detail::kPermuteThreads), 0, stream, p,
                                  static_cast<const int32_t*>(w.block_offsets), B32, static_cast<const int32_t*>(w.off),
                                  static_cast<const int32_t*>(w.pad));
}

}  // namespace moe
FULGUR_NAMESPACE_END
