// SPDX-License-Identifier: Apache-2.0
// fulgur::moe::combine (unpermute): out[t] = sum_{j = 0..k-1, ascending} w[t, j] * y[row(t, j)]
//   + residual_scale * residual_token_scale[t] * residual[t]   (CombineParams,
// include/fulgur/moe/params.hpp; oracle: reference::moe_combine).
//
// One warp per (token, chunk of kGatherUnroll x 32 x V columns): grid (T / 4, chunks), 4 warps
// per 128-thread block, so a decode batch still spreads over many warps. The token's k (row,
// weight) pairs are staged in shared memory; each lane owns kGatherUnroll steps of V =
// 16 / min(y, out element size) consecutive columns, loads them from each of the k rows with
// 16-byte loads (the loads of 4 rows, 2 for fp32 rows, issued together), and accumulates in
// fp32 with one fused multiply-add per term, j ascending (the spec's fixed order: the result
// does not depend on scheduling or on the other tokens of the batch). The residual term is one
// more fma with the fp32 product residual_scale * residual_token_scale[t]; the sum is rounded
// once to out_dtype with a 16-byte store. No atomics. The vector path needs H and every row
// stride a multiple of V and the tensors 16-byte aligned (checked on the host); otherwise the
// same kernel runs one column per lane.
//
// Bytes: T * H * (k * y size + out size (+ residual size)) + 8 T k; FLOPs: 2 T H (k + 1).
// Error against the fp64 reference: each fma rounds once in fp32, so |got - ref| <= (k + 1) *
// 2^-24 * sum_j |w y| (+ the residual term) before the final rounding to out_dtype (docs/design/moe.md).
#pragma once

#include <cstdint>

#include "fulgur/detail/cuda.cuh"
#include "fulgur/detail/dispatch.hpp"
#include "fulgur/detail/launch.cuh"
#include "fulgur/detail/status.hpp"
#include "fulgur/moe/common.cuh"
#include "fulgur/moe/gather.cuh"
#include "fulgur/moe/params.hpp"

FULGUR_NAMESPACE_BEGIN
namespace moe {
namespace detail {

template <typename TY, typename TOut, bool kVector>
FULGUR_KERNEL void __launch_bounds__(kDispatchThreads) combine_kernel(const CombineParams p) {
  constexpr int V = kVector ? vec_elems<TY, TOut>() : 1;
  constexpr int kStep = 32 * V;
  __shared__ int32_t s_row[kDispatchWarps][kMaxTopK];
  __shared__ float s_w[kDispatchWarps][kMaxTopK];
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kDispatchWarps + warp;
  if (t >= p.num_tokens) return;  // the whole warp leaves together
  const int k = p.top_k;
  if (lane < k) {
    const int64_t i = t * k + lane;
    s_row[warp][lane] = p.expanded_to_row != nullptr ? p.expanded_to_row[i] : static_cast<int32_t>(i);
    s_w[warp][lane] = p.topk_weights != nullptr ? load_weight(p.topk_weights, p.weights_dtype, i) : 1.0f;
  }
  __syncwarp(primitives::kFullMask);

  const int64_t H = p.hidden_size;
  const TY* __restrict__ y = static_cast<const TY*>(p.expert_out);
  TOut* __restrict__ out = static_cast<TOut*>(p.out) + t * p.out_row_stride;
  const bool has_residual = p.residual != nullptr;
  const float rs =
      has_residual ? p.residual_scale * (p.residual_token_scale != nullptr ? p.residual_token_scale[t] : 1.0f) : 0.0f;
  const int rbytes = storage_bytes(p.residual_dtype);
  const unsigned char* res =
      has_residual ? static_cast<const unsigned char*>(p.residual) + t * p.residual_row_stride * rbytes : nullptr;

  // This warp's chunk of the row, kGatherUnroll steps of kStep columns: every step's loads of one
  // expert row are issued before its fmas (latency), and each element still accumulates j = 0, 1,
  // ..., k-1 and then the residual, the fixed order.
  const int64_t c0 = static_cast<int64_t>(blockIdx.y) * dispatch_chunk<V>();
  const int64_t c1 = c0 + dispatch_chunk<V>() < H ? c0 + dispatch_chunk<V>() : H;
  const int64_t h0 = c0 + lane * V;
  float acc[kGatherUnroll][V];
  FULGUR_UNROLL
  for (int u = 0; u < kGatherUnroll; ++u)
    FULGUR_UNROLL
    for (int e = 0; e < V; ++e) acc[u][e] = 0.0f;
  // The expert rows in groups of kGroup: a group's loads are all issued (kept as stored, 64
  // registers) before its fmas, so a warp waits for ceil(k / kGroup) memory round trips instead
  // of k (a decode batch has few warps to hide them). The fmas still run j ascending.
  constexpr int kGroup = V * static_cast<int>(sizeof(TY)) <= 16 ? 4 : 2;
  for (int j0 = 0; j0 < k; j0 += kGroup) {
    TY raw[kGroup][kGatherUnroll][V];
    int32_t row[kGroup];
    FULGUR_UNROLL
    for (int g = 0; g < kGroup; ++g) {
      row[g] = j0 + g < k ? s_row[warp][j0 + g] : -1;
      if (row[g] < 0) continue;  // past k, or dropped by a capacity: contributes nothing
      const TY* yr = y + static_cast<int64_t>(row[g]) * p.expert_out_row_stride;
      FULGUR_UNROLL
      for (int u = 0; u < kGatherUnroll; ++u)
        if (h0 + kStep * u < c1) load_raw<V>(yr + h0 + kStep * u, raw[g][u]);
    }
    FULGUR_UNROLL
    for (int g = 0; g < kGroup; ++g) {
      if (row[g] < 0) continue;
      const float w = s_w[warp][j0 + g];
      FULGUR_UNROLL
      for (int u = 0; u < kGatherUnroll; ++u)
        if (h0 + kStep * u < c1) {
          FULGUR_UNROLL
          for (int e = 0; e < V; ++e) acc[u][e] = fmaf(w, to_float(raw[g][u][e]), acc[u][e]);
        }
    }
  }
  if (has_residual) {  // read before out is written (out may alias the residual)
    float v[kGatherUnroll][V];
    FULGUR_UNROLL
    for (int u = 0; u < kGatherUnroll; ++u)
      if (h0 + kStep * u < c1) load_vec_any<V>(res + (h0 + kStep * u) * rbytes, p.residual_dtype, v[u]);
    FULGUR_UNROLL
    for (int u = 0; u < kGatherUnroll; ++u)
      if (h0 + kStep * u < c1) {
        FULGUR_UNROLL
        for (int e = 0; e < V; ++e) acc[u][e] = fmaf(rs, v[u][e], acc[u][e]);
      }
  }
  FULGUR_UNROLL
  for (int u = 0; u < kGatherUnroll; ++u)
    if (h0 + kStep * u < c1) store_vec<V>(out + h0 + kStep * u, acc[u]);
}

template <typename TY, typename TOut>
inline bool combine_vectorizable(const CombineParams& p) {
  constexpr int V = vec_elems<TY, TOut>();
  bool ok = p.hidden_size % V == 0 && p.expert_out_row_stride % V == 0 && p.out_row_stride % V == 0 &&
            aligned_to(p.expert_out, 16) && aligned_to(p.out, 16);
  if (p.residual != nullptr) ok = ok && p.residual_row_stride % V == 0 && aligned_to(p.residual, 16);
  return ok;
}

}  // namespace detail

/// Whether combine() runs these parameters (host only). invalid: validate(p) fails.
/// not_supported: f64 tensors (references only) or a dtype this build leaves out.
inline Status can_implement(const CombineParams& p) {
  FULGUR_RETURN_IF_ERROR(validate(p));
  if (p.expert_out_dtype == DType::kF64 || p.out_dtype == DType::kF64 ||
      (p.residual != nullptr && p.residual_dtype == DType::kF64))
    return Status::not_supported("combine: f64 tensors are for the references only");
  if (!detail::dtype_compiled(p.expert_out_dtype) || !detail::dtype_compiled(p.out_dtype))
    return Status::not_supported("combine: a dtype is not compiled in (FULGUR_ALLOW_*)");
  if (p.residual != nullptr && p.residual_dtype != DType::kF32 && p.residual_dtype != DType::kF16 &&
      p.residual_dtype != DType::kBF16)
    return Status::not_supported("combine: residual_dtype must be f32, f16 or bf16");
  if ((p.num_tokens + detail::kDispatchWarps - 1) / detail::kDispatchWarps > 0x7fffffff)
    return Status::not_supported("combine: num_tokens exceeds the grid");
  if ((p.hidden_size + detail::dispatch_chunk<1>() - 1) / detail::dispatch_chunk<1>() > 65535)
    return Status::not_supported("combine: hidden_size exceeds the grid (65535 chunks of 128 columns)");
  return Status::success();
}

/// Combine: writes out[0, T) as reference::moe_combine defines it, accumulated in fp32 in the
/// fixed order j = 0..k-1, then the residual. expanded_to_row entries are assumed < num_expert_rows
/// (negative ones are skipped). Enqueued on `stream`; bad input returns can_implement's code and
/// writes nothing. Deterministic: bitwise the same on every run and for every batch composition.
inline cudaError_t combine(const CombineParams& p, cudaStream_t stream = nullptr) {
  const Status s = can_implement(p);
  if (!s) return s.code();
  if (p.num_tokens == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((p.num_tokens + detail::kDispatchWarps - 1) / detail::kDispatchWarps);
  return FULGUR_DISPATCH_DTYPE(p.expert_out_dtype, TY, {
    return FULGUR_DISPATCH_DTYPE(p.out_dtype, TOut, {
      constexpr int kV = detail::vec_elems<TY, TOut>();
      if (detail::combine_vectorizable<TY, TOut>(p)) {
        const dim3 grid(blocks, detail::dispatch_chunks<kV>(p.hidden_size));
        return ::fulgur::detail::launch(detail::combine_kernel<TY, TOut, true>, grid, dim3(detail::kDispatchThreads), 0,
                                        stream, p);
      }
      const dim3 grid(blocks, detail::dispatch_chunks<1>(p.hidden_size));
      return ::fulgur::detail::launch(detail::combine_kernel<TY, TOut, false>, grid, dim3(detail::kDispatchThreads), 0,
                                      stream, p);
    });
  });
}

}  // namespace moe
FULGUR_NAMESPACE_END
