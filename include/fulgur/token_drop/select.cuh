// SPDX-License-Identifier: Apache-2.0
// fulgur::token_drop::select: per image span, the keep_count(N, rule, ratio) best tokens (N the
// span's ORIGINAL length), written as ascending positions; ties go to the lower index and NaN
// ranks below every number (reference::token_drop_select defines the set).
//
// One block per span. The rank of a score is a 32-bit unsigned (select_rank, common.cuh); a
// 4-pass, 8-bit radix select finds the keep-th largest rank `threshold` and how many of the
// candidates equal to it are kept (`remaining`); a last pass in index order, one block scan per
// 256 candidates, gives every kept token its slot: (candidates above the threshold before it) +
// min(candidates at the threshold before it, remaining). Integer logic only, so the result is
// exact, deterministic and the same whatever the block size or the batch. The span's scores are
// re-read from global memory (L1/L2) in each pass: 5 reads of 4 N bytes, any span length.
#pragma once

#include <cstdint>

#include "fulgur/detail/cuda.cuh"
#include "fulgur/detail/launch.cuh"
#include "fulgur/detail/status.hpp"
#include "fulgur/primitives/block.cuh"
#include "fulgur/primitives/warp.cuh"
#include "fulgur/token_drop/common.cuh"
#include "fulgur/token_drop/params.hpp"

FULGUR_NAMESPACE_BEGIN
namespace token_drop {
namespace detail {

using SelectScan = primitives::BlockScan<unsigned long long, kThreads>;

struct SelectStorage {
  unsigned int histogram[256];
  unsigned int digit;
  unsigned int remaining;
  typename SelectScan::TempStorage scan;
};

/// Warp 0: the digit whose bucket holds the `remaining`-th largest candidate (buckets scanned
/// from digit 255 down), and how many of that bucket are still needed.
FULGUR_DEVICE FULGUR_FORCEINLINE void select_find_digit(SelectStorage& st, unsigned int remaining) {
  const int lane = static_cast<int>(threadIdx.x);
  unsigned int count[8];
  unsigned int lane_total = 0u;
  FULGUR_UNROLL
  for (int j = 0; j < 8; ++j) {
    count[j] = st.histogram[255 - 8 * lane - j];
    lane_total += count[j];
  }
  unsigned int larger = primitives::warp_exclusive_sum<32>(lane_total);
  FULGUR_UNROLL
  for (int j = 0; j < 8; ++j) {
    if (larger < remaining && larger + count[j] >= remaining) {
      st.digit = static_cast<unsigned int>(255 - 8 * lane - j);
      st.remaining = remaining - larger;
    }
    larger += count[j];
  }
}

/// One block: the `keep` best of scores[0, n) (0 <= keep), their positions start + i written
/// ascending to out[0, min(keep, n)). Every thread calls it with the same arguments.
FULGUR_DEVICE inline void select_span(const float* scores, int64_t n, int64_t keep, int64_t start, int64_t* out,
                                      SelectStorage& st) {
  const int tid = static_cast<int>(threadIdx.x);
  if (keep <= 0 || n <= 0) return;
  if (keep >= n) {  // everything, in order
    for (int64_t i = tid; i < n; i += kThreads) out[i] = start + i;
    return;
  }
  uint32_t threshold = 0u, high_mask = 0u;
  unsigned int remaining = static_cast<unsigned int>(keep);
  for (int shift = 24; shift >= 0; shift -= 8) {
    __syncthreads();  // the previous pass's readers of digit / remaining are done
    for (int j = tid; j < 256; j += kThreads) st.histogram[j] = 0u;
    __syncthreads();
    for (int64_t i = tid; i < n; i += kThreads) {
      const uint32_t r = select_rank(scores[i]);
      if ((r & high_mask) == threshold) atomicAdd(&st.histogram[(r >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (tid < 32) select_find_digit(st, remaining);
    __syncthreads();
    threshold |= st.digit << shift;
    high_mask |= 255u << shift;
    remaining = st.remaining;
  }
  // Kept: rank > threshold, or rank == threshold among the first `remaining` such in index order.
  unsigned long long carry_greater = 0ull, carry_equal = 0ull;
  for (int64_t base = 0; base < n; base += kThreads) {
    const int64_t i = base + tid;
    const uint32_t r = i < n ? select_rank(scores[i]) : 0u;
    const bool greater = i < n && r > threshold, equal = i < n && r == threshold;
    const unsigned long long flag = greater ? (1ull << 32) : (equal ? 1ull : 0ull);
    unsigned long long tile_total;
    __syncthreads();  // scan storage free again
    const unsigned long long before = SelectScan(st.scan).exclusive_sum(flag, tile_total);
    const unsigned long long greater_before = carry_greater + (before >> 32);
    const unsigned long long equal_before = carry_equal + (before & 0xffffffffull);
    if (greater || (equal && equal_before < remaining)) {
      const unsigned long long slot = greater_before + (equal_before < remaining ? equal_before : remaining);
      out[slot] = start + i;
    }
    carry_greater += tile_total >> 32;
    carry_equal += tile_total & 0xffffffffull;
  }
}

/// Grid max(num_spans, 1): block s selects span s; block 0 also writes cu_kept[0] (the only write
/// when there are no spans, as in the reference).
template <int kBlockThreads>
FULGUR_KERNEL void __launch_bounds__(kBlockThreads, kMinBlocksPerSm) select_kernel(SelectParams p) {
  static_assert(kBlockThreads == kThreads, "the token-drop block helpers assume kThreads");
  __shared__ CheckStorage check_storage;
  __shared__ typename BlockSum::TempStorage sum_storage;
  __shared__ SelectStorage select_storage;
  const BatchLayout& l = p.layout;
  CheckSpec spec;
  spec.select = true;
  spec.original_length = p.original_length;
  spec.rule = p.rule;
  spec.ratio = p.ratio;
  spec.select_num_kept = p.num_kept;
  if (!check_batch(l, spec, check_storage)) return;
  const int64_t s = blockIdx.x;
  if (s == 0 && threadIdx.x == 0 && p.cu_kept != nullptr) p.cu_kept[0] = 0;
  if (s >= l.num_spans) return;

  // Offsets of span s: its scores after the earlier spans' tokens, its kept indices after the
  // earlier spans' keep counts (one pass over the earlier spans).
  long long tokens_before = 0, kept_before = 0;
  for (int64_t t = threadIdx.x; t < s; t += kThreads) {
    tokens_before += l.span_length[t];
    kept_before += keep_count_device(p.original_length ? p.original_length[t] : l.span_length[t], p.rule, p.ratio);
  }
  tokens_before = BlockSum(sum_storage).sum(tokens_before);
  __syncthreads();
  kept_before = BlockSum(sum_storage).sum(kept_before);
  const int64_t n = l.span_length[s];
  const int64_t keep = keep_count_device(p.original_length ? p.original_length[s] : n, p.rule, p.ratio);
  if (threadIdx.x == 0 && p.cu_kept != nullptr) p.cu_kept[s + 1] = kept_before + keep;
  select_span(p.scores + tokens_before, n, keep, l.span_start[s], p.kept_index + kept_before, select_storage);
}

}  // namespace detail

/// Pure host check of a select launch (reads no device memory).
inline Status can_implement(const SelectParams& p) {
  FULGUR_RETURN_IF_ERROR(validate_arguments(p));
  FULGUR_CHECK_ARG(p.layout.num_spans > 0 || p.layout.num_image_tokens == 0,
                   "token_drop select: num_image_tokens must be 0 when there are no spans");
  FULGUR_CHECK_ARG(p.layout.num_spans <= INT32_MAX, "token_drop select: more than 2^31 - 1 spans");
  FULGUR_CHECK_ARG(p.layout.num_image_tokens < (int64_t{1} << 32), "token_drop select: 2^32 or more image tokens");
  return Status::success();
}

/// Selects the kept tokens of every span (see the top of this file); no workspace. Bad arguments:
/// cudaErrorInvalidValue, nothing launched. Metadata validate() would reject (keep counts that do
/// not fit, spans outside their sequence, num_kept not the sum of the keep counts): the kernel
/// writes nothing.
inline cudaError_t select(const SelectParams& p, cudaStream_t stream = nullptr) {
  const Status st = can_implement(p);
  if (!st) return st.code();
  if (p.cu_kept == nullptr && p.layout.num_spans == 0) return cudaSuccess;  // nothing to write
  const unsigned blocks = static_cast<unsigned>(p.layout.num_spans > 0 ? p.layout.num_spans : 1);
  return ::fulgur::detail::launch(detail::select_kernel<detail::kThreads>, dim3(blocks), dim3(detail::kThreads), 0,
                                  stream, p);
}

}  // namespace token_drop
FULGUR_NAMESPACE_END
