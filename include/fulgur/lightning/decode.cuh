// SPDX-License-Identifier: Apache-2.0
// Lightning attention decode: one new token per sequence, the state updated in place in the slot
// pool (family spec, "The recurrence"; per batch row b and head h, lambda = exp(-s_h)):
//
//     S = lambda S + k^T v        o = scale * q S
//
// Bandwidth-bound: each (row, head) reads and writes its dk x dv fp32 state once (128 KiB at
// d = 128) against 4 d^2 FLOPs, 0.5 FLOP per byte. Design (docs/design/lightning.md):
//  - One CTA per (batch row, head, column split). A split owns dv / splits state columns (the
//    columns are independent: o_j needs only column j of S), so a small batch still fills the
//    GPU; decode_splits() (traits.hpp) picks 1, 2 or 4 from batch x heads.
//  - 2 * (dv / splits) threads; every thread owns d / 8 float4 pieces of the state, loaded and
//    stored with 16-byte streaming accesses (ld/st.global.cs: the state is touched once per step
//    and would only evict useful lines from L2), all loads issued before any arithmetic.
//      [dk][dv] layout: thread (row group r of 8, column chunk c) updates rows r, r + 8, ...
//        of its 4 columns and accumulates q_i S_ij; the 8 row groups are summed in order
//        through shared memory.
//      [dv][dk] layout: a row of S^T (one output) is d / 4 lanes of one warp; their partial
//        dot products are summed by a fixed xor-shuffle tree.
//    Either way every output and state element is computed by the same operations in the same
//    order whatever the split and the batch: results are deterministic and batch invariant.
//  - Several tokens per row (num_steps, speculative decoding): the CTA keeps its state piece in
//    registers across the row's tokens, storing the pool once after the last one and, if asked,
//    every token's state to step_states; each token runs exactly the one-token arithmetic.
//  - slot -1 rows exit at once (nothing read or written). Every CTA checks all slot ids and
//    slopes before writing anything, so bad device arrays make the whole call write nothing.
#pragma once

#include <cstdint>
#include <type_traits>

#include "fulgur/detail/config.hpp"
#include "fulgur/detail/cuda.cuh"
#include "fulgur/detail/dispatch.hpp"
#include "fulgur/detail/launch.cuh"
#include "fulgur/lightning/device_common.cuh"
#include "fulgur/lightning/params.hpp"
#include "fulgur/lightning/traits.hpp"

FULGUR_NAMESPACE_BEGIN
namespace lightning {
namespace detail {

#if defined(__CUDACC__) || defined(FULGUR_EMULATE)

/// kSteps: the multi-token path (num_steps > 1 or step_states): the state piece stays live in
/// registers across the tokens, which costs registers (d = 128: ~215 against ~124 on sm_90a, one
/// CTA per SM instead of two), so one-token calls keep a kernel that stores as it goes.
template <int kD, bool kVK, typename Tin, bool kSteps>
struct DecodeKernel {
  static constexpr int kRowsPerThread = kD / 8;  // float4 pieces of the state per thread
  static constexpr int kMaxThreads = 2 * kD;     // splits == 1
  static constexpr int kLanesPerRow = kD / 4;    // [dv][dk]: lanes sharing one row of S^T
  using In = Input<Tin>;

  /// Widen (and SiLU) n contiguous input elements into shared memory, 16 bytes per thread step.
  FULGUR_DEVICE FULGUR_FORCEINLINE static void stage(float* dst, const Tin* src, int n, bool silu_qkv, int tid,
                                                     int threads) {
    for (int c = tid; c * In::kPerChunk < n; c += threads) {
      float f[In::kPerChunk];
      In::widen(load_chunk(src + c * In::kPerChunk), f);
#pragma unroll
      for (int e = 0; e < In::kPerChunk; ++e) dst[c * In::kPerChunk + e] = silu_qkv ? silu(f[e]) : f[e];
    }
  }

  FULGUR_DEVICE static void run(const DecodeParams& p) {
    __shared__ float sq[kD];
    __shared__ float sk[kD];
    __shared__ float sv[kD];
    __shared__ float red[8][kD];
    __shared__ float so[kD];

    const int b = static_cast<int>(blockIdx.x);
    const int h = static_cast<int>(blockIdx.y);
    const int split = static_cast<int>(blockIdx.z);
    const int cols = kD / static_cast<int>(gridDim.z);  // dv columns of this CTA
    const int j0 = split * cols;
    const int threads = static_cast<int>(blockDim.x);  // 2 * cols
    const int tid = static_cast<int>(threadIdx.x);

    const int32_t slot = p.slot_ids[b];
    if (slot < 0) return;  // padding row: nothing is read or written (uniform across the CTA)

    // All-or-nothing: any bad slot id or slope anywhere in the call and no CTA writes.
    bool bad = false;
    for (int i = tid; i < p.batch_size; i += threads) {
      const int32_t s = p.slot_ids[i];
      bad |= s < -1 || s >= p.num_slots;
    }
    for (int i = tid; i < p.num_heads; i += threads) {
      const float s = p.slopes[i];
      bad |= !(s >= 0.f && s <= 3.4e38f);
    }

    const int64_t head_elems = int64_t{kD} * kD;
    const int64_t pool_stride = p.state_stride_slot != 0 ? p.state_stride_slot : int64_t{p.num_heads} * head_elems;
    // This row's own slot decides whether its state may be read before the CTA-wide verdict.
    const bool slot_ok = slot < p.num_slots;
    float* const S = p.state + (slot_ok ? slot : 0) * pool_stride + h * head_elems;

    // Issue the state loads first (the dominant traffic), then stage q, k, v.
    float4 st[kRowsPerThread];
    int row_of[kRowsPerThread];  // [dk][dv]: row i of S; [dv][dk]: row j of S^T
    int chunk;                   // which float4 of the row
    if (!kVK) {
      const int chunks = cols / 4;
      const int r = tid / chunks;
      chunk = j0 / 4 + tid % chunks;
#pragma unroll
      for (int k = 0; k < kRowsPerThread; ++k) row_of[k] = r + 8 * k;
    } else {
      const int rows_per_pass = threads / kLanesPerRow;
      const int r = tid / kLanesPerRow;
      chunk = tid % kLanesPerRow;
#pragma unroll
      for (int k = 0; k < kRowsPerThread; ++k) row_of[k] = j0 + k * rows_per_pass + r;
    }
    if (slot_ok) {
#pragma unroll
      for (int k = 0; k < kRowsPerThread; ++k)
        st[k] = __ldcs(reinterpret_cast<const float4*>(S + int64_t{row_of[k]} * kD + 4 * chunk));
    }

    // lambda = exp(-s) in fp64, applied as hi + lo: decode multiplies a state entry by it once per
    // token for as long as the entry lives, so a one-sided fp32 error would compound into a
    // relative drift of 2^-24 / (1 - lambda), 1e-3 at the slowest MiniMax slope. (Read after the
    // verdict below: a bad slope is never used.)
    const int steps = kSteps ? p.num_steps : 1;
    const int64_t step_stride = p.step_state_stride != 0 ? p.step_state_stride : int64_t{p.num_heads} * head_elems;
    double lambda_d = 0.0;
    float lambda = 0.f, lambda_lo = 0.f;

    // The row's tokens in order; the state stays in registers between them, so each token does
    // exactly what a one-token call would do on the state the previous token left.
    for (int t = 0; t < steps; ++t) {
      const int64_t row = int64_t{b} * steps + t;  // token row of q, k, v and o
      const Tin* q = static_cast<const Tin*>(p.q) + row * p.q_stride_token + h * p.q_stride_head;
      const Tin* k = static_cast<const Tin*>(p.k) + row * p.k_stride_token + h * p.k_stride_head;
      const Tin* v = static_cast<const Tin*>(p.v) + row * p.v_stride_token + h * p.v_stride_head;
      // Barriers: the previous token's readers of sq/sk/sv finished before its pre-store barrier.
      stage(sq, q, kD, p.silu_qkv, tid, threads);
      stage(sk, k, kD, p.silu_qkv, tid, threads);
      stage(sv, v, kD, p.silu_qkv, tid, threads);  // all of v: 2d bytes, simpler than slicing
      if (t == 0) {
        if (__syncthreads_or(bad)) return;
        lambda_d = exp(-static_cast<double>(p.slopes[h]));
        lambda = static_cast<float>(lambda_d);
        lambda_lo = static_cast<float>(lambda_d - static_cast<double>(lambda));
      } else {
        __syncthreads();
      }
      const bool last = !kSteps || t == steps - 1;
      float* const Sout = kSteps && p.step_states != nullptr
                              ? p.step_states + (int64_t{b} * steps + t) * step_stride + h * head_elems
                              : nullptr;
      if (!kVK) {
        // S[i][j] = lambda S[i][j] + k_i v_j for this thread's rows i and columns j = 4 chunk + e.
        const int r = row_of[0];
        float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
        const float4 vj = make_float4(sv[4 * chunk], sv[4 * chunk + 1], sv[4 * chunk + 2], sv[4 * chunk + 3]);
#pragma unroll
        for (int kk = 0; kk < kRowsPerThread; ++kk) {
          const int i = row_of[kk];
          const float ki = sk[i], qi = sq[i];
          float4 s = st[kk];
          s.x = fmaf(lambda, s.x, fmaf(lambda_lo, s.x, ki * vj.x));
          s.y = fmaf(lambda, s.y, fmaf(lambda_lo, s.y, ki * vj.y));
          s.z = fmaf(lambda, s.z, fmaf(lambda_lo, s.z, ki * vj.z));
          s.w = fmaf(lambda, s.w, fmaf(lambda_lo, s.w, ki * vj.w));
          if (kSteps) st[kk] = s;
          if (last) __stcs(reinterpret_cast<float4*>(S + int64_t{i} * kD + 4 * chunk), s);
          if (Sout != nullptr) __stcs(reinterpret_cast<float4*>(Sout + int64_t{i} * kD + 4 * chunk), s);
          acc.x = fmaf(qi, s.x, acc.x);
          acc.y = fmaf(qi, s.y, acc.y);
          acc.z = fmaf(qi, s.z, acc.z);
          acc.w = fmaf(qi, s.w, acc.w);
        }
        const int jl = 4 * chunk - j0;  // local column
        red[r][jl] = acc.x;
        red[r][jl + 1] = acc.y;
        red[r][jl + 2] = acc.z;
        red[r][jl + 3] = acc.w;
        __syncthreads();
        for (int j = tid; j < cols; j += threads) {
          float o = red[0][j];
#pragma unroll
          for (int g = 1; g < 8; ++g) o += red[g][j];
          so[j] = o;
        }
      } else {
        // S^T[j][i] = lambda S^T[j][i] + v_j k_i for this thread's rows j and i = 4 chunk + e;
        // o_j = sum_i q_i S^T[j][i] over the row's lanes.
        const float4 ki = make_float4(sk[4 * chunk], sk[4 * chunk + 1], sk[4 * chunk + 2], sk[4 * chunk + 3]);
        const float4 qi = make_float4(sq[4 * chunk], sq[4 * chunk + 1], sq[4 * chunk + 2], sq[4 * chunk + 3]);
#pragma unroll
        for (int kk = 0; kk < kRowsPerThread; ++kk) {
          const int j = row_of[kk];
          const float vj = sv[j];
          float4 s = st[kk];
          s.x = fmaf(lambda, s.x, fmaf(lambda_lo, s.x, vj * ki.x));
          s.y = fmaf(lambda, s.y, fmaf(lambda_lo, s.y, vj * ki.y));
          s.z = fmaf(lambda, s.z, fmaf(lambda_lo, s.z, vj * ki.z));
          s.w = fmaf(lambda, s.w, fmaf(lambda_lo, s.w, vj * ki.w));
          if (kSteps) st[kk] = s;
          if (last) __stcs(reinterpret_cast<float4*>(S + int64_t{j} * kD + 4 * chunk), s);
          if (Sout != nullptr) __stcs(reinterpret_cast<float4*>(Sout + int64_t{j} * kD + 4 * chunk), s);
          float part = qi.x * s.x;
          part = fmaf(qi.y, s.y, part);
          part = fmaf(qi.z, s.z, part);
          part = fmaf(qi.w, s.w, part);
#pragma unroll
          for (int off = kLanesPerRow / 2; off > 0; off /= 2) part += __shfl_xor_sync(0xffffffffu, part, off);
          if (chunk == 0) so[j - j0] = part;
        }
      }
      // Also orders this token's reads of sq/sk/sv (and red) before the next token's staging.
      __syncthreads();
      const int64_t obase = row * p.o_stride_token + h * p.o_stride_head + j0;
      for (int j = 2 * tid; j < cols; j += 2 * threads)
        store_pair(p.o, p.o_dtype, obase + j, p.scale * so[j], p.scale * so[j + 1]);
    }
  }
};

template <int kD, bool kVK, typename Tin, bool kSteps>
FULGUR_KERNEL void __launch_bounds__(2 * kD, 1) decode_kernel(DecodeParams p) {
  DecodeKernel<kD, kVK, Tin, kSteps>::run(p);
}

#endif  // __CUDACC__ || FULGUR_EMULATE

}  // namespace detail

#if defined(__CUDACC__) || defined(FULGUR_EMULATE)

/// Lightning attention decode (DecodeParams, params.hpp): for every batch row with a slot and
/// each of its num_steps tokens in order, S = lambda S + k^T v in place in the pool and
/// o = scale * q S (and the state after each token in step_states when given). Rows with slot -1
/// read and write nothing. Returns cudaErrorInvalidValue / cudaErrorNotSupported (nothing launched)
/// when can_implement() says so; slot ids or slopes that are bad on the device make the whole
/// call write nothing (the launcher cannot read device memory to report it; validate them on the
/// host with validate_host_arrays() when in doubt). Never allocates or synchronizes; safe in CUDA
/// graph capture. Deterministic and batch invariant.
///
/// A template (Params is always DecodeParams, deduced) so that the kernels are compiled only in
/// the translation units that call decode (see prefill()).
template <typename Params, typename = std::enable_if_t<std::is_same<Params, DecodeParams>::value>>
cudaError_t decode(const Params& p, cudaStream_t stream = nullptr) {
  const Status st = can_implement(p);
  if (!st) return st.code();
  if (p.batch_size == 0) return cudaSuccess;
  const int splits = decode_splits(int64_t{p.batch_size} * p.num_heads);
  const dim3 grid(static_cast<unsigned>(p.batch_size), static_cast<unsigned>(p.num_heads),
                  static_cast<unsigned>(splits));
  const bool vk = p.state_layout == StateLayout::kVK;
  const bool steps = p.num_steps > 1 || p.step_states != nullptr;  // the multi-token kernel
  return FULGUR_DISPATCH_VALUE(int, p.dk, kD, (FULGUR_LIGHTNING_HEAD_DIMS), {
    const dim3 block(static_cast<unsigned>(2 * kD / splits));
    return FULGUR_DISPATCH_DTYPE(p.qkv_dtype, Tin, {
      if (steps) {
        return vk ? ::fulgur::detail::launch(detail::decode_kernel<kD, true, Tin, true>, grid, block, 0, stream, p)
                  : ::fulgur::detail::launch(detail::decode_kernel<kD, false, Tin, true>, grid, block, 0, stream, p);
      }
      return vk ? ::fulgur::detail::launch(detail::decode_kernel<kD, true, Tin, false>, grid, block, 0, stream, p)
                : ::fulgur::detail::launch(detail::decode_kernel<kD, false, Tin, false>, grid, block, 0, stream, p);
    });
  });
}

#endif  // __CUDACC__ || FULGUR_EMULATE

}  // namespace lightning
FULGUR_NAMESPACE_END
