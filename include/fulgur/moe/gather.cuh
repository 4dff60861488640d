// SPDX-License-Identifier: Apache-2.0
// fulgur::moe::gather (dispatch): out[r, :] = (w[t, j] *) hidden[t, :] for i = row_map[r] = t*k + j,
// a zero row for the sentinel (GatherParams, include/fulgur/moe/params.hpp; oracle:
// reference::moe_gather).
//
// One warp per (output row, chunk of kGatherUnroll x 32 x V columns): grid (rows / 4, chunks),
// 4 warps per 128-thread block. Each lane moves V = 16 / min(in, out element size) elements per
// step with 16-byte loads and stores (LDG.E.128 / STG.E.128), its kGatherUnroll loads issued
// before any store. Chunking the row keeps a decode batch (T = 1..64 rows of 4-7K columns) from
// being one warp walking each row, a chain of dependent memory round trips. The vector path needs H, both row strides a multiple
// of V and both base pointers 16-byte aligned (checked on the host); anything else runs the same
// kernel one element per lane. Same dtype in and out without scaling copies the bits; otherwise
// each element is widened to fp32, multiplied by the fp32 weight, and rounded once to out_dtype.
//
// Bytes: num_rows * H * (in + out element size) (+ k weights); no reuse: bandwidth-bound.
// FLOPs: num_rows * H multiplies when scaling.
//
// Token-major path (GatherParams::expanded_to_row): one warp per (token, chunk) reads the chunk
// once and writes it to the token's k rows: T * H * in + num_rows * H * out bytes, the floor. The
// row path reads each token k times at scattered moments (rows are in expert order), so the
// repeats come from HBM: at k = 8 it moves 1.9x the floor.
#pragma once

#include <cstdint>
#include <type_traits>

#include "fulgur/detail/cuda.cuh"
#include "fulgur/detail/dispatch.hpp"
#include "fulgur/detail/launch.cuh"
#include "fulgur/detail/status.hpp"
#include "fulgur/moe/common.cuh"
#include "fulgur/moe/params.hpp"
#include "fulgur/primitives/warp.cuh"

FULGUR_NAMESPACE_BEGIN
namespace moe {
namespace detail {

constexpr int kDispatchThreads = 128;  // 4 warps: one row (gather) or token (combine) each
constexpr int kDispatchWarps = kDispatchThreads / 32;
constexpr int kGatherUnroll = 4;

/// Elements per 16-byte step for a pair of element types.
template <typename TA, typename TB>
FULGUR_HOST_DEVICE constexpr int vec_elems() {
  return 16 / static_cast<int>(sizeof(TA) < sizeof(TB) ? sizeof(TA) : sizeof(TB));
}

/// Columns one warp handles (a chunk of a row): kGatherUnroll steps of 32 lanes x V elements.
/// Rows are split into chunks across blockIdx.y, so a decode batch (a few rows of several
/// thousand columns) still has many independent warps instead of one warp walking each row.
template <int V>
FULGUR_HOST_DEVICE constexpr int64_t dispatch_chunk() {
  return int64_t{32} * V * kGatherUnroll;
}
/// Chunks of a row of H columns: the grid's y extent.
template <int V>
inline unsigned dispatch_chunks(int64_t H) {
  return static_cast<unsigned>((H + dispatch_chunk<V>() - 1) / dispatch_chunk<V>());
}

/// Zeroes this lane's columns h0, h0 + 32 V, ... below c1 of one output row (a sentinel row).
template <int V, typename TOut>
FULGUR_DEVICE FULGUR_FORCEINLINE void zero_chunk(TOut* __restrict__ out, int64_t h0, int64_t c1) {
  float zero[V];
  FULGUR_UNROLL
  for (int e = 0; e < V; ++e) zero[e] = 0.0f;
  for (int64_t h = h0; h < c1; h += 32 * V) store_vec<V>(out + h, zero);
}

template <typename TIn, typename TOut, bool kVector>
FULGUR_KERNEL void __launch_bounds__(kDispatchThreads) gather_kernel(const GatherParams p) {
  constexpr int V = kVector ? vec_elems<TIn, TOut>() : 1;
  constexpr int kStep = 32 * V;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kDispatchWarps + threadIdx.x / 32;
  if (r >= p.num_rows) return;
  const int64_t H = p.hidden_size;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * dispatch_chunk<V>();  // this warp's columns [c0, c1)
  const int64_t c1 = c0 + dispatch_chunk<V>() < H ? c0 + dispatch_chunk<V>() : H;
  const int64_t rows = p.num_tokens * p.top_k;
  const int64_t i = p.row_map[r];
  TOut* __restrict__ out = static_cast<TOut*>(p.out) + r * p.out_row_stride;

  if (i < 0 || i >= rows) {  // sentinel (or an entry outside the contract): a zero row
    zero_chunk<V>(out, c0 + lane * V, c1);
    return;
  }
  const int64_t t = i / p.top_k;
  const TIn* __restrict__ in = static_cast<const TIn*>(p.hidden) + t * p.hidden_row_stride;

  if constexpr (std::is_same<TIn, TOut>::value && kVector) {
    if (!p.scale_by_weight) {  // a pure copy: move the bits, all of the chunk's loads first
      const uint4* __restrict__ src = reinterpret_cast<const uint4*>(in);
      uint4* __restrict__ dst = reinterpret_cast<uint4*>(out);
      const int64_t v0 = c0 / V + lane, n = c1 / V;
      uint4 buf[kGatherUnroll];
      FULGUR_UNROLL
      for (int u = 0; u < kGatherUnroll; ++u)
        if (v0 + 32 * u < n) buf[u] = src[v0 + 32 * u];
      FULGUR_UNROLL
      for (int u = 0; u < kGatherUnroll; ++u)
        if (v0 + 32 * u < n) dst[v0 + 32 * u] = buf[u];
      return;
    }
  }

  const float w = p.scale_by_weight ? load_weight(p.topk_weights, p.weights_dtype, i) : 1.0f;
  const int64_t h0 = c0 + lane * V;
  float v[kGatherUnroll][V];
  FULGUR_UNROLL
  for (int u = 0; u < kGatherUnroll; ++u)
    if (h0 + kStep * u < c1) load_vec<V>(in + h0 + kStep * u, v[u]);
  FULGUR_UNROLL
  for (int u = 0; u < kGatherUnroll; ++u) {
    if (h0 + kStep * u < c1) {
      FULGUR_UNROLL
      for (int e = 0; e < V; ++e) v[u][e] *= w;
      store_vec<V>(out + h0 + kStep * u, v[u]);
    }
  }
}

/// Token-major gather (GatherParams::expanded_to_row set). Blocks [0, token_blocks): one warp per
/// (token, chunk) loads the chunk of hidden[t] once and stores it to each of the token's rows,
/// j ascending (lane j < k reads entry t*k + j and its weight; the warp takes them by shuffle).
/// Blocks from token_blocks on (only when row_map is set): one warp per (row, chunk) zeroes the
/// chunk of a row whose row_map entry is a sentinel, as gather_kernel does; the other rows are
/// the token warps'. Every element is the row path's: the same fp32 product, rounded once.
template <typename TIn, typename TOut, bool kVector>
FULGUR_KERNEL void __launch_bounds__(kDispatchThreads) gather_by_token_kernel(const GatherParams p,
                                                                              int64_t token_blocks) {
  constexpr int V = kVector ? vec_elems<TIn, TOut>() : 1;
  constexpr int kStep = 32 * V;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int64_t H = p.hidden_size;
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * dispatch_chunk<V>();  // this warp's columns [c0, c1)
  const int64_t c1 = c0 + dispatch_chunk<V>() < H ? c0 + dispatch_chunk<V>() : H;
  const int64_t h0 = c0 + lane * V;
  const int64_t rows = p.num_tokens * p.top_k;

  if (static_cast<int64_t>(blockIdx.x) >= token_blocks) {  // sentinel rows of row_map
    const int64_t r = (static_cast<int64_t>(blockIdx.x) - token_blocks) * kDispatchWarps + warp;
    if (r >= p.num_rows) return;
    const int64_t i = p.row_map[r];
    if (i >= 0 && i < rows) return;  // a token warp writes this row
    zero_chunk<V>(static_cast<TOut*>(p.out) + r * p.out_row_stride, h0, c1);
    return;
  }

  const int64_t t = static_cast<int64_t>(blockIdx.x) * kDispatchWarps + warp;
  if (t >= p.num_tokens) return;  // the whole warp leaves together
  const int k = p.top_k;          // <= kMaxTopK = 32: one lane per slot
  const int32_t my_row = lane < k ? p.expanded_to_row[t * k + lane] : -1;
  const float my_w = lane < k && p.scale_by_weight ? load_weight(p.topk_weights, p.weights_dtype, t * k + lane) : 1.0f;
  const TIn* __restrict__ in = static_cast<const TIn*>(p.hidden) + t * p.hidden_row_stride;

  if constexpr (std::is_same<TIn, TOut>::value && kVector) {
    if (!p.scale_by_weight) {  // a pure copy: move the bits
      const uint4* __restrict__ src = reinterpret_cast<const uint4*>(in);
      const int64_t v0 = c0 / V + lane, n = c1 / V;
      uint4 buf[kGatherUnroll];
      FULGUR_UNROLL
      for (int u = 0; u < kGatherUnroll; ++u)
        if (v0 + 32 * u < n) buf[u] = src[v0 + 32 * u];
      for (int j = 0; j < k; ++j) {
        const int32_t r = primitives::warp_broadcast(my_row, j);
        if (r < 0 || r >= p.num_rows) continue;  // no row for this slot (uniform across the warp)
        uint4* __restrict__ dst = reinterpret_cast<uint4*>(static_cast<TOut*>(p.out) + r * p.out_row_stride);
        FULGUR_UNROLL
        for (int u = 0; u < kGatherUnroll; ++u)
          if (v0 + 32 * u < n) dst[v0 + 32 * u] = buf[u];
      }
      return;
    }
  }

  float v[kGatherUnroll][V];
  FULGUR_UNROLL
  for (int u = 0; u < kGatherUnroll; ++u)
    if (h0 + kStep * u < c1) load_vec<V>(in + h0 + kStep * u, v[u]);
  for (int j = 0; j < k; ++j) {
    const int32_t r = primitives::warp_broadcast(my_row, j);
    const float w = primitives::warp_broadcast(my_w, j);
    if (r < 0 || r >= p.num_rows) continue;
    TOut* __restrict__ out = static_cast<TOut*>(p.out) + static_cast<int64_t>(r) * p.out_row_stride;
    FULGUR_UNROLL
    for (int u = 0; u < kGatherUnroll; ++u) {
      if (h0 + kStep * u < c1) {
        float x[V];
        FULGUR_UNROLL
        for (int e = 0; e < V; ++e) x[e] = v[u][e] * w;
        store_vec<V>(out + h0 + kStep * u, x);
      }
    }
  }
}

/// Blocks of the token-major gather: token warps, then (row_map set) the sentinel-row warps.
inline int64_t gather_token_blocks(const GatherParams& p) { return (p.num_tokens + kDispatchWarps - 1) / kDispatchWarps; }
inline int64_t gather_by_token_grid_x(const GatherParams& p) {
  return gather_token_blocks(p) + (p.row_map != nullptr ? (p.num_rows + kDispatchWarps - 1) / kDispatchWarps : 0);
}

template <typename TIn, typename TOut>
inline bool gather_vectorizable(const GatherParams& p) {
  constexpr int V = vec_elems<TIn, TOut>();
  return p.hidden_size % V == 0 && p.hidden_row_stride % V == 0 && p.out_row_stride % V == 0 &&
         aligned_to(p.hidden, 16) && aligned_to(p.out, 16);
}

}  // namespace detail

/// Whether gather() runs these parameters (host only). invalid: validate(p) fails.
/// not_supported: f64 tensors (references only) or a dtype this build leaves out.
inline Status can_implement(const GatherParams& p) {
  FULGUR_RETURN_IF_ERROR(validate(p));
  if (p.hidden_dtype == DType::kF64 || p.out_dtype == DType::kF64)
    return Status::not_supported("gather: f64 tensors are for the references only");
  if (!detail::dtype_compiled(p.hidden_dtype) || !detail::dtype_compiled(p.out_dtype))
    return Status::not_supported("gather: a dtype is not compiled in (FULGUR_ALLOW_*)");
  if ((p.num_rows + detail::kDispatchWarps - 1) / detail::kDispatchWarps > 0x7fffffff ||
      (p.expanded_to_row != nullptr && detail::gather_by_token_grid_x(p) > 0x7fffffff))
    return Status::not_supported("gather: num_rows (or num_tokens) exceeds the grid");
  if ((p.hidden_size + detail::dispatch_chunk<1>() - 1) / detail::dispatch_chunk<1>() > 65535)
    return Status::not_supported("gather: hidden_size exceeds the grid (65535 chunks of 128 columns)");
  return Status::success();
}

/// Dispatch: writes p.num_rows rows of p.out as reference::moe_gather defines them (bit-exact
/// without scaling; with scaling the product is formed in fp32, so a 16-bit output can differ by
/// one unit in the last place where the fp32 product sits next to a rounding boundary). row_map
/// entries are assumed in [0, T*k]; any other entry writes a zero row. With expanded_to_row the
/// rows are written token by token (each token's row read once; same bits as the row path);
/// its entries are assumed distinct, and row_map's inverse when both are set. Enqueued on
/// `stream`; bad input returns can_implement's code and writes nothing.
inline cudaError_t gather(const GatherParams& p, cudaStream_t stream = nullptr) {
  const Status s = can_implement(p);
  if (!s) return s.code();
  if (p.num_rows == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((p.num_rows + detail::kDispatchWarps - 1) / detail::kDispatchWarps);
  const bool by_token = p.expanded_to_row != nullptr;
  const int64_t token_blocks = detail::gather_token_blocks(p);
  const unsigned by_token_blocks = static_cast<unsigned>(detail::gather_by_token_grid_x(p));
  if (by_token && by_token_blocks == 0) return cudaSuccess;  // no token and no row_map: nothing to write
  return FULGUR_DISPATCH_DTYPE(p.hidden_dtype, TIn, {
    return FULGUR_DISPATCH_DTYPE(p.out_dtype, TOut, {
      constexpr int kV = detail::vec_elems<TIn, TOut>();
      if (by_token) {
        if (detail::gather_vectorizable<TIn, TOut>(p)) {
          const dim3 grid(by_token_blocks, detail::dispatch_chunks<kV>(p.hidden_size));
          return ::fulgur::detail::launch(detail::gather_by_token_kernel<TIn, TOut, true>, grid,
                                          dim3(detail::kDispatchThreads), 0, stream, p, token_blocks);
        }
        const dim3 grid(by_token_blocks, detail::dispatch_chunks<1>(p.hidden_size));
        return ::fulgur::detail::launch(detail::gather_by_token_kernel<TIn, TOut, false>, grid,
                                        dim3(detail::kDispatchThreads), 0, stream, p, token_blocks);
      }
      if (detail::gather_vectorizable<TIn, TOut>(p)) {
        const dim3 grid(blocks, detail::dispatch_chunks<kV>(p.hidden_size));
        return ::fulgur::detail::launch(detail::gather_kernel<TIn, TOut, true>, grid, dim3(detail::kDispatchThreads), 0,
                                        stream, p);
      }
      const dim3 grid(blocks, detail::dispatch_chunks<1>(p.hidden_size));
      return ::fulgur::detail::launch(detail::gather_kernel<TIn, TOut, false>, grid, dim3(detail::kDispatchThreads), 0,
                                      stream, p);
    });
  });
}

}  // namespace moe
FULGUR_NAMESPACE_END
