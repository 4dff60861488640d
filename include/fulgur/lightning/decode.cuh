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
//    and would only evict useful lines from L2). Split grids (batch x heads < 512) issue all
//    loads before any arithmetic (one round trip); unsplit grids stream the pieces in groups of
//    four, the next group's loads in flight while the current one is updated and stored
//    (64 registers: 4 CTAs of 256 threads per SM; DecodeMode below).
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

/// The three decode kernels (the same arithmetic, in the same order, per state element):
///  - kOneToken: every piece loaded before any arithmetic. For small grids (batch x heads < 512,
///    split columns), where all states fit the register file at once and latency dominates:
///    each thread waits for one round trip.
///  - kStream: one token, pieces streamed in groups (run()), 64 registers so 4 CTAs of 256
///    threads fit an SM; for batch x heads >= 512 (no split), where the states of the grid do
///    not fit the register file and the load-all kernel ran in two waves of all-loads then
///    all-stores (62-68% of HBM bandwidth on the H200 at 512-1024, docs/design/lightning.md).
///  - kSteps: several tokens per row (num_steps > 1 or step_states): the pieces stay live in
///    registers across the tokens (d = 128: ~215 registers, one CTA per SM).
enum class DecodeMode { kOneToken, kStream, kSteps };

template <int kD, bool kVK, typename Tin, DecodeMode kMode>
struct DecodeKernel {
  static constexpr bool kSteps = kMode == DecodeMode::kSteps;
  static constexpr int kRowsPerThread = kD / 8;  // float4 pieces of the state per thread
  static constexpr int kMaxThreads = 2 * kD;     // splits == 1
  static constexpr int kLanesPerRow = kD / 4;    // [dv][dk]: lanes sharing one row of S^T
  /// Pieces per group (see run()): kStream streams groups of 4, the others keep all pieces as
  /// one group.
  static constexpr int kGroup = kMode == DecodeMode::kStream ? 4 : kRowsPerThread;
  static constexpr int kGroups = kRowsPerThread / kGroup;
  /// CTAs per SM each kernel is built for (its __launch_bounds__): kStream 1024 threads, i.e. at
  /// most 64 registers per thread, which two groups of pieces leave room for.
  static constexpr int kMinBlocks = kMode == DecodeMode::kStream ? 1024 / kMaxThreads : 1;
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

    // Piece k of this thread is float4 number `chunk` of row row_first + k * row_step ([dk][dv]:
    // row i of S; [dv][dk]: row j of S^T). Addresses come from one base pointer (with
    // compile-time offsets for [dk][dv]) rather than one 64-bit address per piece.
    int row_first, row_step, chunk;
    if (!kVK) {
      const int chunks = cols / 4;
      row_first = tid / chunks;
      row_step = 8;
      chunk = j0 / 4 + tid % chunks;
    } else {
      row_step = threads / kLanesPerRow;  // rows per pass of the CTA
      row_first = j0 + tid / kLanesPerRow;
      chunk = tid % kLanesPerRow;
    }
    float* const Sp = S + int64_t{row_first} * kD + 4 * chunk;
    const auto piece_offset = [&](int k) { return (kVK ? k * row_step : 8 * k) * kD; };

    // The pieces in groups of kGroup: st holds the group being updated, next the one in flight.
    // kStream: group g + 1's loads are issued before group g is updated and stored, so a
    // thread holds two groups rather than every piece (registers for kMinBlocks CTAs per SM
    // instead of 2) and each CTA's loads overlap its stores. The other kernels have one group
    // (kSteps keeps it live across the tokens). Each piece sees the same operations in the same
    // order whatever the kernel, so results do not depend on which one runs.
    float4 st[kGroup];
    float4 next[kGroup];  // unused (optimized out) when kGroups == 1
    const auto load_group = [&](float4(&dst)[kGroup], int g) {
#pragma unroll
      for (int e = 0; e < kGroup; ++e)
        dst[e] = __ldcs(reinterpret_cast<const float4*>(Sp + piece_offset(g * kGroup + e)));
    };
    if (slot_ok) load_group(st, 0);  // the dominant traffic first, then stage q, k, v

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
      // [dk][dv]: S[i][j] = lambda S[i][j] + k_i v_j for this thread's rows i and columns
      // j = 4 chunk + e, accumulating q_i S[i][j] over its rows in order (acc).
      // [dv][dk]: S^T[j][i] = lambda S^T[j][i] + v_j k_i for this thread's rows j and
      // i = 4 chunk + e; o_j = sum_i q_i S^T[j][i] over the row's lanes (a fixed shuffle tree).
      float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
      const float4 c4 = !kVK ? make_float4(sv[4 * chunk], sv[4 * chunk + 1], sv[4 * chunk + 2], sv[4 * chunk + 3])
                             : make_float4(sk[4 * chunk], sk[4 * chunk + 1], sk[4 * chunk + 2], sk[4 * chunk + 3]);
      const float4 qi4 = kVK ? make_float4(sq[4 * chunk], sq[4 * chunk + 1], sq[4 * chunk + 2], sq[4 * chunk + 3])
                             : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 1
      for (int g = 0; g < kGroups; ++g) {
        if constexpr (kGroups > 1) {
          if (slot_ok && g + 1 < kGroups) load_group(next, g + 1);
        }
#pragma unroll
        for (int e = 0; e < kGroup; ++e) {
          const int kk = g * kGroup + e;
          const int r = row_first + kk * row_step;  // i for [dk][dv], j for [dv][dk]
          const float a = !kVK ? sk[r] : sv[r];      // the row's factor of the rank-1 update
          float4 s = st[e];
          s.x = fmaf(lambda, s.x, fmaf(lambda_lo, s.x, a * c4.x));
          s.y = fmaf(lambda, s.y, fmaf(lambda_lo, s.y, a * c4.y));
          s.z = fmaf(lambda, s.z, fmaf(lambda_lo, s.z, a * c4.z));
          s.w = fmaf(lambda, s.w, fmaf(lambda_lo, s.w, a * c4.w));
          if (kSteps) st[e] = s;
          if (last) __stcs(reinterpret_cast<float4*>(Sp + piece_offset(kk)), s);
          if (Sout != nullptr) __stcs(reinterpret_cast<float4*>(Sout + int64_t{r} * kD + 4 * chunk), s);
          if (!kVK) {
            const float qi = sq[r];
            acc.x = fmaf(qi, s.x, acc.x);
            acc.y = fmaf(qi, s.y, acc.y);
            acc.z = fmaf(qi, s.z, acc.z);
            acc.w = fmaf(qi, s.w, acc.w);
          } else {
            float part = qi4.x * s.x;
            part = fmaf(qi4.y, s.y, part);
            part = fmaf(qi4.z, s.z, part);
            part = fmaf(qi4.w, s.w, part);
#pragma unroll
            for (int off = kLanesPerRow / 2; off > 0; off /= 2) part += __shfl_xor_sync(0xffffffffu, part, off);
            if (chunk == 0) so[r - j0] = part;
          }
        }
        if constexpr (kGroups > 1) {
#pragma unroll
          for (int e = 0; e < kGroup; ++e) st[e] = next[e];
        }
      }
      if (!kVK) {
        // The 8 row groups' partial sums, added in order through shared memory.
        const int jl = 4 * chunk - j0;  // local column
        red[row_first][jl] = acc.x;
        red[row_first][jl + 1] = acc.y;
        red[row_first][jl + 2] = acc.z;
        red[row_first][jl + 3] = acc.w;
        __syncthreads();
        for (int j = tid; j < cols; j += threads) {
          float o = red[0][j];
#pragma unroll
          for (int g = 1; g < 8; ++g) o += red[g][j];
          so[j] = o;
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

template <int kD, bool kVK, typename Tin, DecodeMode kMode>
FULGUR_KERNEL void __launch_bounds__(2 * kD, (DecodeKernel<kD, kVK, Tin, kMode>::kMinBlocks))
    decode_kernel(DecodeParams p) {
  DecodeKernel<kD, kVK, Tin, kMode>::run(p);
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
  using detail::DecodeMode;
  return FULGUR_DISPATCH_VALUE(int, p.dk, kD, (FULGUR_LIGHTNING_HEAD_DIMS), {
    const dim3 block(static_cast<unsigned>(2 * kD / splits));
    return FULGUR_DISPATCH_DTYPE(p.qkv_dtype, Tin, {
      if (steps) {
        return vk ? ::fulgur::detail::launch(detail::decode_kernel<kD, true, Tin, DecodeMode::kSteps>, grid, block, 0,
                                             stream, p)
                  : ::fulgur::detail::launch(detail::decode_kernel<kD, false, Tin, DecodeMode::kSteps>, grid, block,
                                             0, stream, p);
      }
      if (splits == 1) {  // a large grid: stream
        return vk ? ::fulgur::detail::launch(detail::decode_kernel<kD, true, Tin, DecodeMode::kStream>, grid, block,
                                             0, stream, p)
                  : ::fulgur::detail::launch(detail::decode_kernel<kD, false, Tin, DecodeMode::kStream>, grid, block,
                                             0, stream, p);
      }
      return vk ? ::fulgur::detail::launch(detail::decode_kernel<kD, true, Tin, DecodeMode::kOneToken>, grid, block, 0,
                                           stream, p)
                : ::fulgur::detail::launch(detail::decode_kernel<kD, false, Tin, DecodeMode::kOneToken>, grid, block,
                                           0, stream, p);
    });
  });
}

#endif  // __CUDACC__ || FULGUR_EMULATE

}  // namespace lightning
FULGUR_NAMESPACE_END
