// SPDX-License-Identifier: Apache-2.0
// Lightning attention prefill on tensor cores (mma.sync m16n8k16 bf16, fp32 accumulation):
// the block form of the family spec (shared/specs/lightning_attention.md, "Block (chunked)
// form"; Lightning Attention-2, Qin et al. 2024, Sec. 3), per sequence and head, blocks of
// m <= 64 tokens with local indices t, j in [0, m):
//
//     P        = (Q K^T) * diag,   diag[t,j] = lambda^{t-j} (t >= j), 0 above the diagonal
//     O        = scale * ( P V + (Q * q_decay) S_prev ),   q_decay[t] = lambda^{t+1}
//     S_next   = lambda^m S_prev + (K * k_decay)^T V,      k_decay[j] = lambda^{m-1-j}
//
// Design (docs/design/lightning.md has the derivations and the FLOP/byte counts):
//  - Work item = one segment of one sequence and one head: a sequence of at most
//    L tokens is one segment (L = PrefillParams::segment_tokens, default kSegmentTokens = 1024); a
//    longer one is cut into segments of that
//    length, which run in parallel: a first kernel computes each non-last segment's own state
//    contribution D_i = sum_j lambda^{L-1-j} k_j^T v_j from zero, a scan chains them
//    (S_{i+1} = lambda^L S_i + D_i), and the main kernel then runs every segment from its start
//    state. The cut depends only on the sequence, so results stay batch invariant.
//  - One CTA of kD/16 warps per work item. Warp w owns the state columns dv in [16w, 16w+16): it
//    keeps S^T[dv][dk] (16 x kD, fp32) in mma accumulator registers across the segment. The
//    accumulator fragment of S^T is exactly the B fragment of S for Q S, so the fp32 state never
//    leaves registers between blocks except for checkpoints.
//  - Precision: the state is an mma operand twice (Q S_prev and, through the decayed V, the
//    update); both operands that carry an fp32 value (S, V * k_decay, and P) are split into bf16
//    hi + lo (16 significant bits) and multiplied as two mma terms. bf16 inputs are exact bf16
//    operands (one term); f16/f32 inputs, and bf16 inputs with the fused SiLU, are split into two
//    terms as loaded (kTerms = 2), and products of two split operands keep the hi*hi, hi*lo and
//    lo*hi terms. The compounding decay lambda^m is applied as fp32 hi + lo. Measured errors:
//    docs/design/lightning.md.
//  - Per block: Q, K, V (converted to bf16 terms, SiLU applied) in shared memory; P = Q K^T split
//    across warps into shared memory; then every warp computes O and the state update for its 16
//    columns. bf16 inputs without SiLU (one term, nothing to convert) are copied by cp.async into
//    a second buffer one block ahead: two __syncthreads per block. Other inputs go through
//    registers (16-byte loads prefetched one block ahead for 16-bit inputs), converted and
//    stored: three __syncthreads per block. Deterministic: fixed summation order, no atomics.
//  - The device checks the index arrays first (a 1-CTA kernel that also builds the work lists);
//    the other kernels read its verdict from the workspace and write nothing when they are bad.
#pragma once

#include <cstdint>
#include <type_traits>

#include "fulgur/arch/cp_async.cuh"
#include "fulgur/arch/ldmatrix.cuh"
#include "fulgur/arch/mma.cuh"
#include "fulgur/detail/config.hpp"
#include "fulgur/detail/cuda.cuh"
#include "fulgur/detail/dispatch.hpp"
#include "fulgur/detail/launch.cuh"
#include "fulgur/detail/workspace.hpp"
#include "fulgur/lightning/device_common.cuh"
#include "fulgur/lightning/params.hpp"
#include "fulgur/lightning/traits.hpp"
#include "fulgur/primitives/block.cuh"

FULGUR_NAMESPACE_BEGIN
namespace lightning {
namespace detail {

#if defined(__CUDACC__) || defined(FULGUR_EMULATE)

// ---- device-side check of the index arrays ---------------------------------------------------

constexpr int kCheckThreads = 256;

/// One CTA: checks cu_seqlens, slot_ids, checkpoint_offsets and slopes, writes the verdict to
/// status[0], (packed checkpoints) each sequence's first checkpoint row to ckpt_base, and the
/// work lists of the segment kernels (traits.hpp, PrefillWorkspace). A template only so that a
/// header-defined kernel has vague linkage: two translation units that include this header must
/// link (a plain __global__ function here is a duplicate symbol).
template <int kUnused = 0>
FULGUR_KERNEL void __launch_bounds__(kCheckThreads)
    prefill_check_kernel(PrefillParams p, int32_t* status, int32_t* ckpt_base, int32_t* seg_owner, int32_t* part_owner,
                         int64_t groups, int64_t seg_items) {
  using Scan = ::fulgur::primitives::BlockScan<long long, kCheckThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  const int tid = static_cast<int>(threadIdx.x);
  const int32_t B = p.batch_size;
  const int32_t* cu = p.cu_seqlens;
  int err = 0;
  if (tid == 0 && (cu[0] != 0 || cu[B] > p.num_tokens)) err = static_cast<int>(PrefillArrayError::kCuSeqlens);
  for (int32_t b = tid; b < B; b += kCheckThreads) {
    const int32_t n = cu[b + 1] - cu[b];
    if (cu[b + 1] < cu[b]) {
      err = static_cast<int>(PrefillArrayError::kCuSeqlens);
    } else if (p.max_seqlen > 0 && n > p.max_seqlen) {
      err = static_cast<int>(PrefillArrayError::kMaxSeqlen);
    }
    const int32_t s = p.slot_ids[b];
    if (s < -1 || s >= p.num_slots) err = static_cast<int>(PrefillArrayError::kSlotIds);
    if (p.checkpoints != nullptr && p.checkpoint_offsets != nullptr) {
      const int32_t* off = p.checkpoint_offsets;
      if (int64_t{off[b + 1]} - off[b] < checkpoint_count(n < 0 ? 0 : n, p.checkpoint_interval))
        err = static_cast<int>(PrefillArrayError::kCheckpointOffsets);
    }
  }
  for (int32_t h = tid; h < p.num_heads; h += kCheckThreads) {
    const float s = p.slopes[h];
    if (!(s >= 0.f && s <= 3.4e38f)) err = static_cast<int>(PrefillArrayError::kSlopes);  // NaN fails too
  }
  if (tid == 0 && p.checkpoints != nullptr && p.checkpoint_offsets != nullptr) {
    const int32_t* off = p.checkpoint_offsets;
    if (off[0] < 0 || off[B] > p.num_checkpoint_rows) err = static_cast<int>(PrefillArrayError::kCheckpointOffsets);
  }
  // Packed checkpoint rows: exclusive prefix sum of floor(n_b / c) over the batch, in tiles of
  // kCheckThreads sequences (integers: the order of the sum does not matter).
  if (p.checkpoints != nullptr && p.checkpoint_offsets == nullptr) {
    long long running = 0;
    for (int32_t base = 0; base < B; base += kCheckThreads) {
      const int32_t b = base + tid;
      long long count = 0;
      if (b < B) {
        const int32_t n = cu[b + 1] - cu[b];
        count = checkpoint_count(n < 0 ? 0 : n, p.checkpoint_interval);
      }
      long long tile_total = 0;
      const long long excl = Scan(scan_storage).exclusive_sum(count, tile_total);
      if (b < B) ckpt_base[b] = static_cast<int32_t>(running + excl < INT32_MAX ? running + excl : INT32_MAX);
      running += tile_total;
      __syncthreads();  // scan_storage is reused by the next tile
    }
    if (tid == 0) {
      ckpt_base[B] = static_cast<int32_t>(running < INT32_MAX ? running : INT32_MAX);
      if (running > p.num_checkpoint_rows) err = static_cast<int>(PrefillArrayError::kCheckpointOffsets);
    }
  }
  // Any thread's finding wins; the smallest code is reported so the verdict is deterministic.
  using Reduce = ::fulgur::primitives::BlockReduce<int, kCheckThreads>;
  __shared__ typename Reduce::TempStorage reduce_storage;
  const int worst = Reduce(reduce_storage).reduce(err == 0 ? 0x7fffffff : err, ::fulgur::primitives::Min{});
  if (tid == 0) status[0] = worst == 0x7fffffff ? 0 : worst;

  // Work lists: item b + floor(cu[b] / L) + i of the main kernel is segment i of sequence b, item
  // floor(cu[b] / L) + i of the segment-state kernel its segment i < last. Built only from valid
  // arrays (bad ones leave every item empty; the kernels return on the status anyway).
  for (int64_t k = tid; k < seg_items; k += kCheckThreads) seg_owner[k] = -1;
  for (int64_t k = tid; k < groups; k += kCheckThreads) part_owner[k] = -1;
  __syncthreads();
  if (worst != 0x7fffffff) return;
  const int64_t L = segment_tokens(p);
  for (int32_t b = tid; b < B; b += kCheckThreads) {
    const int64_t n = cu[b + 1] - cu[b];
    const int64_t group = cu[b] / L;
    const int64_t nseg = segment_count(n, L);
    for (int64_t i = 0; i < nseg; ++i) seg_owner[b + group + i] = b;
    for (int64_t i = 0; i + 1 < nseg; ++i) part_owner[group + i] = b;
  }
}

// ---- the tensor-core prefill -------------------------------------------------------------

/// Everything the main kernel needs besides the Params: where the device check left its verdict
/// and the packed checkpoint rows.
struct PrefillExtra {
  const int32_t* status = nullptr;
  const int32_t* ckpt_base = nullptr;   // null: use p.checkpoint_offsets
  const int32_t* seg_owner = nullptr;   // main kernel work item -> sequence (-1: none)
  const int32_t* part_owner = nullptr;  // segment-state kernel work item -> sequence (-1: none)
  float* seg_state = nullptr;           // traits.hpp, PrefillWorkspace
  float* first_state = nullptr;
};

template <int kD, int kTerms, typename Tin>
struct PrefillKernel {
  using Tile = PrefillTile<kD>;
  using In = Input<Tin>;
  static constexpr int kBlock = Tile::kBlock;
  static constexpr int kWarps = Tile::kWarps;
  static constexpr int kThreads = Tile::kThreads;
  static constexpr int kPitch = Tile::kPitch;
  static constexpr int kPPitch = Tile::kPPitch;
  static constexpr int kChunksPerRow = kD / In::kPerChunk;
  static constexpr int kChunksPerThread = kBlock * kChunksPerRow / kThreads;
  static_assert(kBlock * kChunksPerRow % kThreads == 0, "the load tile must divide evenly");
  /// bf16 inputs taken as they are (one term, no SiLU: no conversion on the way to shared
  /// memory): cp.async copies the next block's Q, K, V straight into a second shared-memory
  /// buffer while this block computes (no registers held, no store phase, two barriers per
  /// block instead of three).
  static constexpr bool kAsync = kTerms == 1 && std::is_same<Tin, __nv_bfloat16>::value;
  /// Otherwise prefetch the next block's raw chunks into registers while this one computes:
  /// 16-bit inputs only (3 x kChunksPerThread x 16 B = 48 registers per thread); f32 would need 96.
  static constexpr bool kPrefetch = !kAsync && sizeof(Tin) == 2;
  static constexpr int kTermStride = kBlock * kPitch;    // elements between terms of Q, K, V
  static constexpr int kPTermStride = kBlock * kPPitch;  // ... of P
  static constexpr int kBuffers = kAsync ? 2 : 1;        // Q, K, V buffers
  static constexpr int kBufferStride = 3 * kTerms * kTermStride;  // elements from one to the next
  static constexpr size_t kSmemBytes = Tile::smem_bytes(kTerms, kBuffers);

  struct Smem {
    __nv_bfloat16* q;
    __nv_bfloat16* k;
    __nv_bfloat16* v;
    __nv_bfloat16* p;
    float* decay;     // decay[e] = lambda^e rounded to fp32, e in [0, kBlock]
    float* decay_lo;  // decay_lo[e] = lambda^e - decay[e] (the block decay is applied as hi + lo)
  };

  /// Raw input chunks of one block, in registers: [tensor q/k/v][chunk].
  struct Raw {
    uint4 c[3][kChunksPerThread];
  };

  /// Tensor x (0 = q, 1 = k, 2 = v): its elements and strides (token, head).
  struct Source {
    const Tin* base;
    int64_t st, sh;
  };
  FULGUR_DEVICE FULGUR_FORCEINLINE static Source source(const PrefillParams& p, int x) {
    return {static_cast<const Tin*>(x == 0 ? p.q : (x == 1 ? p.k : p.v)),
            x == 0 ? p.q_stride_token : (x == 1 ? p.k_stride_token : p.v_stride_token),
            x == 0 ? p.q_stride_head : (x == 1 ? p.k_stride_head : p.v_stride_head)};
  }

  /// Global -> registers: tensor x (0 = q, 1 = k, 2 = v) of the block at row0 with m rows.
  FULGUR_DEVICE FULGUR_FORCEINLINE static void load_tensor(uint4 (&raw)[kChunksPerThread], const PrefillParams& p,
                                                           int x, int h, int64_t row0, int m, int tid) {
    const auto [base, st, sh] = source(p, x);
#pragma unroll
    for (int i = 0; i < kChunksPerThread; ++i) {
      const int c = tid + i * kThreads;
      const int r = c / kChunksPerRow;
      const int cc = c % kChunksPerRow;
      if (r < m) {
        raw[i] = load_chunk(base + (row0 + r) * st + h * sh + cc * In::kPerChunk);
      } else {
        raw[i] = make_uint4(0u, 0u, 0u, 0u);  // rows past the block's end are zero
      }
    }
  }

  /// Widen, apply SiLU, split into kTerms bf16 terms and store tensor x to shared memory.
  FULGUR_DEVICE FULGUR_FORCEINLINE static void store_tensor(const uint4 (&raw)[kChunksPerThread], __nv_bfloat16* dst,
                                                            bool silu_qkv, int tid) {
#pragma unroll
    for (int i = 0; i < kChunksPerThread; ++i) {
      const int c = tid + i * kThreads;
      const int r = c / kChunksPerRow;
      const int cc = c % kChunksPerRow;
      __nv_bfloat16* d = dst + r * kPitch + cc * In::kPerChunk;
      if (kTerms == 1 && DTypeOf<Tin>::value == DType::kBF16 && !silu_qkv) {
        *reinterpret_cast<uint4*>(d) = raw[i];  // bf16 as is: exact
        continue;
      }
      float f[In::kPerChunk];
      In::widen(raw[i], f);
      if (silu_qkv) {
#pragma unroll
        for (int e = 0; e < In::kPerChunk; ++e) f[e] = silu(f[e]);  // silu(0) = 0 keeps padding zero
      }
      uint32_t hi[In::kPerChunk / 2], lo[In::kPerChunk / 2];
#pragma unroll
      for (int e = 0; e < In::kPerChunk / 2; ++e) {
        if (kTerms == 2) {
          split_bf16x2(f[2 * e], f[2 * e + 1], hi[e], lo[e]);
        } else {
          hi[e] = pack_bf16x2(f[2 * e], f[2 * e + 1]);
        }
      }
      if constexpr (In::kPerChunk == 8) {
        *reinterpret_cast<uint4*>(d) = make_uint4(hi[0], hi[1], hi[2], hi[3]);
        if (kTerms == 2) *reinterpret_cast<uint4*>(d + kTermStride) = make_uint4(lo[0], lo[1], lo[2], lo[3]);
      } else {
        *reinterpret_cast<uint2*>(d) = make_uint2(hi[0], hi[1]);
        if (kTerms == 2) *reinterpret_cast<uint2*>(d + kTermStride) = make_uint2(lo[0], lo[1]);
      }
    }
  }

  /// kAsync: cp.async tensors kFirst..2 of the block at row0 with m rows into the buffer `dst`
  /// (rows past the block's end zero-filled), as one commit group.
  template <int kFirst>
  FULGUR_DEVICE FULGUR_FORCEINLINE static void load_async(const PrefillParams& p, const Smem& dst, int h,
                                                          int64_t row0, int m, int tid) {
#pragma unroll
    for (int x = kFirst; x < 3; ++x) {
      const auto [base, st, sh] = source(p, x);
      __nv_bfloat16* const d = x == 0 ? dst.q : (x == 1 ? dst.k : dst.v);
#pragma unroll
      for (int i = 0; i < kChunksPerThread; ++i) {
        const int c = tid + i * kThreads;
        const int r = c / kChunksPerRow;
        const int cc = c % kChunksPerRow;
        __nv_bfloat16* const sd = d + r * kPitch + cc * In::kPerChunk;
        if (r < m) {
          ::fulgur::arch::cp_async_16(sd, base + (row0 + r) * st + h * sh + cc * In::kPerChunk);
        } else {
          ::fulgur::arch::cp_async_16_zfill(sd, base, 0);  // rows past the block's end are zero
        }
      }
    }
    ::fulgur::arch::cp_async_commit();
  }
  /// The Smem view of Q, K, V buffer `buf` (P and the decay tables are shared).
  FULGUR_DEVICE FULGUR_FORCEINLINE static Smem buffer(const Smem& s, int buf) {
    Smem b = s;
    b.q = s.q + buf * kBufferStride;
    b.k = s.k + buf * kBufferStride;
    b.v = s.v + buf * kBufferStride;
    return b;
  }

  /// Tensors kFirst..2 (q, k, v; the segment-state kernel skips q).
  template <int kFirst>
  FULGUR_DEVICE FULGUR_FORCEINLINE static void load_raw(Raw& raw, const PrefillParams& p, int h, int64_t row0, int m,
                                                        int tid) {
#pragma unroll
    for (int x = kFirst; x < 3; ++x) load_tensor(raw.c[x], p, x, h, row0, m, tid);
  }
  template <int kFirst>
  FULGUR_DEVICE FULGUR_FORCEINLINE static void store_raw(const Raw& raw, const Smem& s, bool silu_qkv, int tid) {
    if (kFirst == 0) store_tensor(raw.c[0], s.q, silu_qkv, tid);
    store_tensor(raw.c[1], s.k, silu_qkv, tid);
    store_tensor(raw.c[2], s.v, silu_qkv, tid);
  }
  /// Without prefetch (f32 inputs): one tensor at a time, so only a third of the chunks are live.
  template <int kFirst>
  FULGUR_DEVICE FULGUR_FORCEINLINE static void load_store_direct(const PrefillParams& p, const Smem& s, int h,
                                                                 int64_t row0, int m, int tid) {
    // Not unrolled: the compiler would otherwise hoist all three tensors' loads (96 registers)
    // over the 64 state accumulators and spill. q, k, v are adjacent in shared memory.
#pragma unroll 1
    for (int x = kFirst; x < 3; ++x) {
      uint4 raw[kChunksPerThread];
      load_tensor(raw, p, x, h, row0, m, tid);
      store_tensor(raw, s.q + x * (kTerms * kTermStride), p.silu_qkv, tid);
    }
  }

  /// Offset of state element (row dk, column dv) of one head in the pool's layout.
  FULGUR_DEVICE FULGUR_FORCEINLINE static int64_t state_offset(StateLayout layout, int dk, int dv) {
    return layout == StateLayout::kKV ? int64_t{dk} * kD + dv : int64_t{dv} * kD + dk;
  }

  /// The warp's S^T fragments: sacc[nd][i] holds S(dk = 8 nd + 2 t + (i & 1), dv = 16 w + g + 8 (i / 2)).
  FULGUR_DEVICE FULGUR_FORCEINLINE static void read_state(float (&sacc)[kD / 8][4], const float* src,
                                                          StateLayout layout, int w, int lane) {
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int nd = 0; nd < kD / 8; ++nd)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        sacc[nd][i] = src[state_offset(layout, 8 * nd + 2 * t + (i & 1), 16 * w + g + 8 * (i / 2))];
      }
  }
  FULGUR_DEVICE FULGUR_FORCEINLINE static void write_state(const float (&sacc)[kD / 8][4], float* dst,
                                                           StateLayout layout, int w, int lane) {
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int nd = 0; nd < kD / 8; ++nd)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        dst[state_offset(layout, 8 * nd + 2 * t + (i & 1), 16 * w + g + 8 * (i / 2))] = sacc[nd][i];
      }
  }

  FULGUR_DEVICE FULGUR_FORCEINLINE static void mma(float (&acc)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    const uint32_t b[2] = {b0, b1};
    ::fulgur::arch::mma_m16n8k16_bf16(acc, a, b, acc);
  }

  /// P = (Q K^T) * diag for this warp's 16 rows x kKeysPerWarp keys, stored as two bf16 terms
  /// (hi + lo): P is an fp32 result, and rounding it to one bf16 term cost up to 3.4e-3 relative
  /// RMSE in o (measured, docs/design/lightning.md), against 1.5e-4 with the split.
  FULGUR_DEVICE FULGUR_FORCEINLINE static void scores(const Smem& s, int w, int lane) {
    constexpr int kNT = Tile::kScoreTiles;
    const int g = lane / 4, t = lane % 4;
    const int row_base = 16 * Tile::score_row_block(w);
    const int key_base = Tile::score_key_group(w) * Tile::kKeysPerWarp;
    float acc[kNT][4];
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[nt][i] = 0.f;
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) {
      uint32_t a[kTerms][4];
#pragma unroll
      for (int ta = 0; ta < kTerms; ++ta) {
        ::fulgur::arch::ldmatrix_x4(
            a[ta],
            s.q + ta * kTermStride + (row_base + lane % 8 + 8 * ((lane / 8) & 1)) * kPitch + 16 * ks + 8 * (lane / 16));
      }
#pragma unroll
      for (int np = 0; np < kNT / 2; ++np) {
        const int key0 = key_base + 16 * np;
        if (key0 > row_base + 15) continue;  // both n8 tiles above the diagonal: P = 0 there
        uint32_t b[kTerms][4];
#pragma unroll
        for (int tb = 0; tb < kTerms; ++tb) {
          // K is [key][dk], i.e. B = K^T read column-major: non-transposed ldmatrix; matrices
          // (keys +0, dk +0), (keys +0, dk +8), (keys +8, dk +0), (keys +8, dk +8).
          ::fulgur::arch::ldmatrix_x4(b[tb], s.k + tb * kTermStride + (key0 + lane % 8 + 8 * (lane / 16)) * kPitch +
                                                 16 * ks + 8 * ((lane / 8) & 1));
        }
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          if (key0 + 8 * half > row_base + 15) continue;
#pragma unroll
          for (int ta = 0; ta < kTerms; ++ta)
#pragma unroll
            for (int tb = 0; tb + ta < kTerms; ++tb)
              mma(acc[2 * np + half], a[ta], b[tb][2 * half], b[tb][2 * half + 1]);
        }
      }
    }
    // Decay mask, then bf16 terms into shared memory. Rows/keys past the block's end are zero
    // already (zero-filled Q and K).
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int hrow = 0; hrow < 2; ++hrow) {
        const int row = row_base + g + 8 * hrow;
        const int key = key_base + 8 * nt + 2 * t;
        const int d0 = row - key, d1 = row - key - 1;
        const float x0 = d0 >= 0 ? acc[nt][2 * hrow] * s.decay[d0] : 0.f;
        const float x1 = d1 >= 0 ? acc[nt][2 * hrow + 1] * s.decay[d1] : 0.f;
        uint32_t* dst = reinterpret_cast<uint32_t*>(s.p + row * kPPitch + key);
        uint32_t hi, lo;
        split_bf16x2(x0, x1, hi, lo);
        dst[0] = hi;
        dst[kPTermStride / 2] = lo;
      }
  }

  /// O = scale * ( (Q S_prev) * q_decay + P V ) for this warp's 16 columns, stored for the m
  /// rows of the block that starts at row `row`.
  FULGUR_DEVICE FULGUR_FORCEINLINE static void output(const PrefillParams& p, const Smem& s,
                                                      const float (&sacc)[kD / 8][4], int64_t row, int h, int m, int w,
                                                      int lane) {
    const int g = lane / 4, t = lane % 4;
    // ---- O = scale * ( (Q S_prev) * q_decay + P V ) for this warp's 16 columns ----
    float oacc[4][2][4];
#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
      for (int nv = 0; nv < 2; ++nv)
#pragma unroll
        for (int i = 0; i < 4; ++i) oacc[mt][nv][i] = 0.f;
#pragma unroll
    for (int ks = 0; ks < kD / 16; ++ks) {
      // B fragments of S (k = dk 16ks.., n = dv 16w + 8nv..) straight from the S^T accumulators,
      // split into bf16 hi + lo.
      uint32_t sb[2][2][2];  // [term][nv][reg]
#pragma unroll
      for (int nv = 0; nv < 2; ++nv)
#pragma unroll
        for (int r = 0; r < 2; ++r)
          split_bf16x2(sacc[2 * ks + r][2 * nv], sacc[2 * ks + r][2 * nv + 1], sb[0][nv][r], sb[1][nv][r]);
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) {
        if (16 * mt >= m) continue;  // rows past the block's end (warp-uniform)
        uint32_t a[kTerms][4];
#pragma unroll
        for (int ta = 0; ta < kTerms; ++ta) {
          ::fulgur::arch::ldmatrix_x4(a[ta], s.q + ta * kTermStride +
                                                 (16 * mt + lane % 8 + 8 * ((lane / 8) & 1)) * kPitch + 16 * ks +
                                                 8 * (lane / 16));
        }
#pragma unroll
        for (int nv = 0; nv < 2; ++nv) {
          mma(oacc[mt][nv], a[0], sb[0][nv][0], sb[0][nv][1]);
          mma(oacc[mt][nv], a[0], sb[1][nv][0], sb[1][nv][1]);
          if (kTerms == 2) mma(oacc[mt][nv], a[1], sb[0][nv][0], sb[0][nv][1]);
        }
      }
    }
#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float qd = s.decay[16 * mt + g + 8 * (i / 2) + 1];  // lambda^{t+1}
#pragma unroll
        for (int nv = 0; nv < 2; ++nv) oacc[mt][nv][i] *= qd;
      }
#pragma unroll
    for (int ks = 0; ks < kBlock / 16; ++ks) {
      if (16 * ks >= m) continue;
      uint32_t vb[kTerms][4];
#pragma unroll
      for (int tb = 0; tb < kTerms; ++tb) {
        // V is [key][dv] = B row-major: transposed ldmatrix; matrices (keys +0, dv +0),
        // (keys +8, dv +0), (keys +0, dv +8), (keys +8, dv +8).
        ::fulgur::arch::ldmatrix_x4_trans(
            vb[tb],
            s.v + tb * kTermStride + (16 * ks + lane % 8 + 8 * ((lane / 8) & 1)) * kPitch + 16 * w + 8 * (lane / 16));
      }
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) {
        if (ks > mt || 16 * mt >= m) continue;  // P tile above the diagonal, or rows past the end
        uint32_t a[2][4];
#pragma unroll
        for (int ta = 0; ta < 2; ++ta) {
          ::fulgur::arch::ldmatrix_x4(a[ta], s.p + ta * kPTermStride +
                                                 (16 * mt + lane % 8 + 8 * ((lane / 8) & 1)) * kPPitch + 16 * ks +
                                                 8 * (lane / 16));
        }
#pragma unroll
        for (int nv = 0; nv < 2; ++nv) {
          // P hi * V, P lo * V (and P hi * V lo for two-term inputs).
          mma(oacc[mt][nv], a[0], vb[0][2 * nv], vb[0][2 * nv + 1]);
          mma(oacc[mt][nv], a[1], vb[0][2 * nv], vb[0][2 * nv + 1]);
          if (kTerms == 2) mma(oacc[mt][nv], a[0], vb[kTerms - 1][2 * nv], vb[kTerms - 1][2 * nv + 1]);
        }
      }
    }
    {
      void* const o = p.o;
      const int64_t obase = row * p.o_stride_token + h * p.o_stride_head;
#pragma unroll
      for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int hrow = 0; hrow < 2; ++hrow) {
          const int row = 16 * mt + g + 8 * hrow;
          if (row >= m) continue;
#pragma unroll
          for (int nv = 0; nv < 2; ++nv) {
            const int col = 16 * w + 8 * nv + 2 * t;
            store_pair(o, p.o_dtype, obase + row * p.o_stride_token + col, p.scale * oacc[mt][nv][2 * hrow],
                       p.scale * oacc[mt][nv][2 * hrow + 1]);
          }
        }
    }
  }

  /// S^T = lambda^m S^T + (V * k_decay)^T K for this warp's 16 dv rows.
  FULGUR_DEVICE FULGUR_FORCEINLINE static void update_state(const Smem& s, float (&sacc)[kD / 8][4], int m, int w,
                                                            int lane) {
    const int t = lane % 4;
    // ---- S^T = lambda^m S^T + (V * k_decay)^T K for this warp's 16 dv rows ----
    const float block_decay = s.decay[m], block_decay_lo = s.decay_lo[m];
#pragma unroll
    for (int nd = 0; nd < kD / 8; ++nd)
#pragma unroll
      for (int i = 0; i < 4; ++i) sacc[nd][i] = fmaf(sacc[nd][i], block_decay, sacc[nd][i] * block_decay_lo);
#pragma unroll
    for (int ks = 0; ks < kBlock / 16; ++ks) {
      if (16 * ks >= m) continue;
      uint32_t va[kTerms][4];
#pragma unroll
      for (int tv = 0; tv < kTerms; ++tv) {
        // A = V^T (rows dv, columns tokens) from V [token][dv]: transposed ldmatrix; matrices
        // (tokens +0, dv +0), (tokens +0, dv +8), (tokens +8, dv +0), (tokens +8, dv +8).
        ::fulgur::arch::ldmatrix_x4_trans(
            va[tv],
            s.v + tv * kTermStride + (16 * ks + lane % 8 + 8 * (lane / 16)) * kPitch + 16 * w + 8 * ((lane / 8) & 1));
      }
      // Register r holds tokens 16ks + 2t + 8 (r / 2) + {0, 1}: scale by k_decay in fp32, then
      // split into bf16 hi + lo. Tokens past the block's end get 0 (no positive exponent).
      uint32_t ah[4], al[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int j = 16 * ks + 2 * t + 8 * (r / 2);
        const float kd0 = j < m ? s.decay[m - 1 - j] : 0.f;
        const float kd1 = j + 1 < m ? s.decay[m - 2 - j] : 0.f;
        float2 x = unpack_bf16x2(va[0][r]);
        if (kTerms == 2) {
          const float2 y = unpack_bf16x2(va[kTerms - 1][r]);
          x.x += y.x;
          x.y += y.y;
        }
        split_bf16x2(x.x * kd0, x.y * kd1, ah[r], al[r]);
      }
#pragma unroll
      for (int np = 0; np < kD / 16; ++np) {
        uint32_t kb[kTerms][4];
#pragma unroll
        for (int tb = 0; tb < kTerms; ++tb) {
          // K is [token][dk] = B row-major: transposed ldmatrix, as V above.
          ::fulgur::arch::ldmatrix_x4_trans(kb[tb], s.k + tb * kTermStride +
                                                        (16 * ks + lane % 8 + 8 * ((lane / 8) & 1)) * kPitch + 16 * np +
                                                        8 * (lane / 16));
        }
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          float(&acc)[4] = sacc[2 * np + half];
          mma(acc, ah, kb[0][2 * half], kb[0][2 * half + 1]);
          mma(acc, al, kb[0][2 * half], kb[0][2 * half + 1]);
          if (kTerms == 2) mma(acc, ah, kb[kTerms - 1][2 * half], kb[kTerms - 1][2 * half + 1]);
        }
      }
    }
  }

  /// The warp's S^T fragments <-> a [dv][dk] fp32 array (the workspace's segment states):
  /// elements 2t, 2t + 1 of a row are adjacent, so each access is 8 bytes.
  FULGUR_DEVICE FULGUR_FORCEINLINE static void read_vk(float (&sacc)[kD / 8][4], const float* src, int w, int lane) {
    read_state(sacc, src, StateLayout::kVK, w, lane);
  }

  /// Main kernel (kStateOnly = false): one work item = one segment of one sequence (the whole
  /// sequence when it is at most segment_tokens(p) long) and one head: O for its tokens, the
  /// checkpoints that fall in it, and, for the last segment, the final state into the pool.
  /// Segment-state kernel (kStateOnly = true): one work item = a segment that is not its
  /// sequence's last, from a zero state: its own contribution sum_j lambda^{L-1-j} k_j^T v_j
  /// into the workspace (the scan kernel turns these into segment start states).
  template <bool kStateOnly>
  FULGUR_DEVICE static void run(const PrefillParams& p, const PrefillExtra& extra) {
    FULGUR_DYNAMIC_SMEM(__nv_bfloat16, smem_base);
    if (extra.status[0] != 0) return;  // the device check found bad index arrays: write nothing

    const int tid = static_cast<int>(threadIdx.x);
    const int w = tid / 32, lane = tid % 32;
    const int64_t item = blockIdx.x;
    const int h = static_cast<int>(blockIdx.y);
    const int32_t b = kStateOnly ? extra.part_owner[item] : extra.seg_owner[item];
    if (b < 0) return;  // no work for this item (uniform across the CTA)

    Smem s;
    s.q = smem_base;
    s.k = s.q + kTerms * kTermStride;
    s.v = s.k + kTerms * kTermStride;
    s.p = s.q + kBuffers * kBufferStride;
    s.decay = reinterpret_cast<float*>(s.p + 2 * kPTermStride);
    s.decay_lo = s.decay + kBlock + 1;

    // Positions inside the packed batch fit int32 (cu_seqlens are int32): 32-bit loop state keeps
    // registers free for the 64 state accumulators (offsets are formed in int64 where used).
    const int32_t row0 = p.cu_seqlens[b];
    const int32_t n = p.cu_seqlens[b + 1] - row0;
    const int32_t L = static_cast<int32_t>(segment_tokens(p));  // a multiple of 64 (validate)
    const int32_t group = row0 / L;  // first workspace slot of this sequence
    const int32_t seg = static_cast<int32_t>(kStateOnly ? item - group : item - b - group);
    const int32_t nseg = static_cast<int32_t>(segment_count(n, L));
    const int32_t seg_begin = seg * L;
    const int32_t seg_end = nseg == 1 ? n : (n - seg_begin > L ? seg_begin + L : n);
    const int64_t head_elems = int64_t{kD} * kD;
    const int64_t slot_elems = int64_t{p.num_heads} * head_elems;  // one workspace slot, all heads
    const int32_t slot = p.slot_ids[b];
    const bool stateful = slot >= 0;
    // This head's state in the pool (recomputed at the end rather than kept live across the loop).
    auto slot_state = [&]() {
      const int64_t pool_stride = p.state_stride_slot != 0 ? p.state_stride_slot : slot_elems;
      return p.state + p.slot_ids[b] * pool_stride + h * head_elems;
    };
    const bool checkpointing = !kStateOnly && stateful && p.checkpoints != nullptr;
    int64_t ckpt_row0 = 0;
    if (checkpointing) ckpt_row0 = extra.ckpt_base != nullptr ? extra.ckpt_base[b] : p.checkpoint_offsets[b];

    // lambda^e = exp(-s e) for e in [0, kBlock], never a positive exponent, evaluated in fp64 once
    // per CTA and rounded to fp32 (hi) with the rounding error kept (lo). Only the block decay
    // lambda^m compounds (a state entry is multiplied by it once per block it survives), so only
    // it is applied as hi + lo: a one-sided fp32 error in it would grow into a relative drift of
    // 2^-24 / (1 - lambda^64), 2e-5 at the slowest MiniMax slope (docs/design/lightning.md).
    for (int e = tid; e <= kBlock; e += kThreads) {
      const double x = exp(-static_cast<double>(p.slopes[h]) * e);
      const float hi = static_cast<float>(x);
      s.decay[e] = hi;
      s.decay_lo[e] = static_cast<float>(x - static_cast<double>(hi));
    }

    // The state at the segment's start: the pool (or zero) for a single-segment sequence, the
    // scan's copy of it for segment 0 of a longer one (its last segment writes the pool, so
    // segment 0 must not read it), the scanned start state for the others, zero for the
    // segment-state kernel.
    float sacc[kD / 8][4];
#pragma unroll
    for (int nd = 0; nd < kD / 8; ++nd)
#pragma unroll
      for (int i = 0; i < 4; ++i) sacc[nd][i] = 0.f;
    if (!kStateOnly) {
      if (nseg == 1) {
        if (stateful && (p.has_initial_state == nullptr || p.has_initial_state[b] != 0)) {
          read_state(sacc, slot_state(), p.state_layout, w, lane);
        }
      } else if (seg == 0) {
        read_vk(sacc, extra.first_state + group * slot_elems + h * head_elems, w, lane);
      } else {
        read_vk(sacc, extra.seg_state + (group + seg - 1) * slot_elems + h * head_elems, w, lane);
      }
    }

    const int32_t num_blocks = (seg_end - seg_begin + kBlock - 1) / kBlock;
    constexpr int kFirst = kStateOnly ? 1 : 0;  // the segment-state kernel reads only k and v
    Raw raw;
    if (num_blocks > 0) {
      const int m0 = static_cast<int>(seg_end - seg_begin < kBlock ? seg_end - seg_begin : kBlock);
      if (kAsync) {
        load_async<kFirst>(p, s, h, int64_t{row0} + seg_begin, m0, tid);
      } else if (kPrefetch) {
        load_raw<kFirst>(raw, p, h, int64_t{row0} + seg_begin, m0, tid);
      }
    }

    for (int32_t blk = 0; blk < num_blocks; ++blk) {
      const int32_t start = seg_begin + blk * kBlock;  // position in the sequence
      const int m = static_cast<int>(seg_end - start < kBlock ? seg_end - start : kBlock);
      const int32_t next_start = start + kBlock;
      const int m_next = static_cast<int>(seg_end - next_start < kBlock ? seg_end - next_start : kBlock);
      if (kAsync) {
        ::fulgur::arch::cp_async_wait<0>();  // this thread's copies of this block have landed
        // Everyone's copies are visible, and every warp is done with the previous block (its
        // buffer, which the next copies overwrite, and P); the first time, the decay table too.
        __syncthreads();
        if (blk + 1 < num_blocks) {
          load_async<kFirst>(p, buffer(s, (blk + 1) & 1), h, int64_t{row0} + next_start, m_next, tid);
        }
      } else {
        if (kPrefetch) {
          store_raw<kFirst>(raw, s, p.silu_qkv, tid);
        } else {
          load_store_direct<kFirst>(p, s, h, int64_t{row0} + start, m, tid);
        }
        __syncthreads();  // Q, K, V (and, the first time, the decay table) are visible
        if (kPrefetch && blk + 1 < num_blocks) {  // the next block's loads are in flight during compute
          load_raw<kFirst>(raw, p, h, int64_t{row0} + next_start, m_next, tid);
        }
      }
      const Smem cur = kAsync ? buffer(s, blk & 1) : s;
      if (!kStateOnly) {
        scores(cur, w, lane);
        __syncthreads();  // P is visible
        output(p, cur, sacc, int64_t{row0} + start, h, m, w, lane);
      }
      update_state(cur, sacc, m, w, lane);
      // Checkpoint: the state after (start + m) tokens when that is a multiple of the interval
      // (the interval is a multiple of kBlock, so only full blocks can end on one).
      if (checkpointing && (start + m) % p.checkpoint_interval == 0) {
        const int64_t crow = ckpt_row0 + (int64_t{start} + m) / p.checkpoint_interval - 1;
        write_state(sacc, p.checkpoints + crow * slot_elems + h * head_elems, p.state_layout, w, lane);
      }
      // Every warp is done with Q, K, V, P before they are refilled (kAsync: the next block's
      // first barrier does it, the copies going to the other buffer).
      if (!kAsync) __syncthreads();
    }

    if (kStateOnly) {
      write_state(sacc, extra.seg_state + (group + seg) * slot_elems + h * head_elems, StateLayout::kVK, w, lane);
    } else if (seg_end == p.cu_seqlens[b + 1] - p.cu_seqlens[b] && p.slot_ids[b] >= 0) {
      // The last segment writes the final state. Length and slot id are re-read rather than kept
      // live across the loop (each cost a spill at d = 128).
      write_state(sacc, slot_state(), p.state_layout, w, lane);
    }
  }
};

/// The scan over a multi-segment sequence's segments (one CTA per sequence, head and 1024 state
/// elements): S_0 = the initial state (pool or zero), copied to first_state for segment 0;
/// S_{i+1} = lambda^L S_i + D_i, written over D_i (seg_state slot group + i). Elementwise in
/// fp32 with lambda^L applied as hi + lo, so the result depends only on the sequence.
template <int kD>
FULGUR_KERNEL void __launch_bounds__(256) prefill_scan_kernel(PrefillParams p, PrefillExtra extra) {
  if (extra.status[0] != 0) return;
  const int32_t b = static_cast<int32_t>(blockIdx.x);
  const int h = static_cast<int>(blockIdx.y);
  const int64_t row0 = p.cu_seqlens[b];
  const int64_t n = p.cu_seqlens[b + 1] - row0;
  const int64_t L = segment_tokens(p);
  const int64_t nseg = segment_count(n, L);
  if (nseg == 1) return;
  const int e = (static_cast<int>(blockIdx.z) * 256 + static_cast<int>(threadIdx.x)) * 4;  // [dv][dk] element
  if (e >= kD * kD) return;
  const int dv = e / kD, dk = e % kD;
  const int64_t head_elems = int64_t{kD} * kD;
  const int64_t slot_elems = int64_t{p.num_heads} * head_elems;
  const int64_t group = row0 / L;

  float4 carry = make_float4(0.f, 0.f, 0.f, 0.f);
  const int32_t slot = p.slot_ids[b];
  if (slot >= 0 && (p.has_initial_state == nullptr || p.has_initial_state[b] != 0)) {
    const int64_t pool_stride = p.state_stride_slot != 0 ? p.state_stride_slot : slot_elems;
    const float* src = p.state + slot * pool_stride + h * head_elems;
    if (p.state_layout == StateLayout::kVK) {
      carry = *reinterpret_cast<const float4*>(src + e);
    } else {
      carry = make_float4(src[int64_t{dk} * kD + dv], src[int64_t{dk + 1} * kD + dv], src[int64_t{dk + 2} * kD + dv],
                          src[int64_t{dk + 3} * kD + dv]);
    }
  }
  *reinterpret_cast<float4*>(extra.first_state + group * slot_elems + h * head_elems + e) = carry;

  const double x = exp(-static_cast<double>(p.slopes[h]) * static_cast<double>(L));
  const float dhi = static_cast<float>(x);
  const float dlo = static_cast<float>(x - static_cast<double>(dhi));
  // The chain is serial in carry, but the D_i it reads are not: load kAhead of them before
  // chaining and storing them, so a long sequence waits for memory once per kAhead segments
  // instead of once per segment (the same arithmetic in the same order: the same bits).
  constexpr int kAhead = 8;
  float* const base = extra.seg_state + group * slot_elems + h * head_elems + e;
  for (int64_t i0 = 0; i0 + 1 < nseg; i0 += kAhead) {
    float4 d[kAhead];
#pragma unroll
    for (int j = 0; j < kAhead; ++j) {
      if (i0 + j + 1 < nseg) d[j] = *reinterpret_cast<const float4*>(base + (i0 + j) * slot_elems);
    }
#pragma unroll
    for (int j = 0; j < kAhead; ++j) {
      if (i0 + j + 1 < nseg) {
        carry.x = fmaf(carry.x, dhi, fmaf(carry.x, dlo, d[j].x));
        carry.y = fmaf(carry.y, dhi, fmaf(carry.y, dlo, d[j].y));
        carry.z = fmaf(carry.z, dhi, fmaf(carry.z, dlo, d[j].z));
        carry.w = fmaf(carry.w, dhi, fmaf(carry.w, dlo, d[j].w));
        *reinterpret_cast<float4*>(base + (i0 + j) * slot_elems) = carry;
      }
    }
  }
}

template <int kD, int kTerms, typename Tin>
FULGUR_KERNEL void __launch_bounds__(PrefillTile<kD>::kThreads, 1) prefill_kernel(PrefillParams p, PrefillExtra extra) {
  PrefillKernel<kD, kTerms, Tin>::template run<false>(p, extra);
}

template <int kD, int kTerms, typename Tin>
FULGUR_KERNEL void __launch_bounds__(PrefillTile<kD>::kThreads, 1)
    prefill_segment_state_kernel(PrefillParams p, PrefillExtra extra) {
  PrefillKernel<kD, kTerms, Tin>::template run<true>(p, extra);
}

/// The launches of one prefill after the device check: segment states (when some sequence may
/// be longer than a segment), their scan, then the main kernel.
template <int kD, int kTerms, typename Tin>
cudaError_t launch_prefill(const PrefillParams& p, const PrefillExtra& extra, int64_t groups, int64_t seg_items,
                           cudaStream_t stream) {
  using Tile = PrefillTile<kD>;
  const size_t smem = PrefillKernel<kD, kTerms, Tin>::kSmemBytes;
  const unsigned heads = static_cast<unsigned>(p.num_heads);
  if (groups > 0) {
    cudaError_t e = ::fulgur::detail::launch(prefill_segment_state_kernel<kD, kTerms, Tin>,
                                             dim3(static_cast<unsigned>(groups), heads), dim3(Tile::kThreads), smem,
                                             stream, p, extra);
    if (e != cudaSuccess) return e;
    e = ::fulgur::detail::launch(prefill_scan_kernel<kD>,
                                 dim3(static_cast<unsigned>(p.batch_size), heads, (kD * kD + 1023) / 1024), dim3(256),
                                 0, stream, p, extra);
    if (e != cudaSuccess) return e;
  }
  return ::fulgur::detail::launch(prefill_kernel<kD, kTerms, Tin>, dim3(static_cast<unsigned>(seg_items), heads),
                                  dim3(Tile::kThreads), smem, stream, p, extra);
}

#endif  // __CUDACC__ || FULGUR_EMULATE

}  // namespace detail

#if defined(__CUDACC__) || defined(FULGUR_EMULATE)

/// Reads the device check's verdict (PrefillArrayError) from a workspace after the call has
/// completed (synchronize first). Host helper for tests and debugging; copies 4 bytes.
inline cudaError_t prefill_device_status(const void* workspace, PrefillArrayError& out) {
  int32_t v = 0;
#if FULGUR_EMULATING
  v = *static_cast<const int32_t*>(workspace);
  const cudaError_t e = cudaSuccess;
#else
  const cudaError_t e = cudaMemcpy(&v, workspace, sizeof v, cudaMemcpyDeviceToHost);
#endif
  out = static_cast<PrefillArrayError>(v);
  return e;
}

/// Lightning attention prefill over a packed varlen batch (PrefillParams, params.hpp).
///
/// CUB-style workspace protocol: with workspace == nullptr, writes the bytes needed to
/// workspace_bytes and returns (nothing launched). Otherwise workspace must hold that many bytes
/// (16-byte aligned) and stay untouched until the call's kernels finish on `stream`.
/// Returns cudaErrorInvalidValue / cudaErrorNotSupported (with nothing launched or written)
/// when can_implement() says so. The index arrays live in device memory, so their contents are
/// checked on the device: when one is bad, the call writes nothing and leaves a
/// PrefillArrayError in the workspace (prefill_device_status()). Never allocates, never
/// synchronizes; safe in CUDA graph capture. Deterministic, and batch invariant.
///
/// A template (Params is always PrefillParams, deduced) only so that the kernels are compiled in
/// the translation units that call prefill, not in every one that includes the header: an
/// inline function's body would instantiate every dispatched kernel wherever it is seen.
template <typename Params, typename = std::enable_if_t<std::is_same<Params, PrefillParams>::value>>
cudaError_t prefill(void* workspace, size_t& workspace_bytes, const Params& p, cudaStream_t stream = nullptr) {
  const Status st = can_implement(p);
  if (!st) return st.code();
  const size_t need = prefill_workspace_bytes(p);
  if (workspace == nullptr) {
    workspace_bytes = need;
    return cudaSuccess;
  }
  if (workspace_bytes < need || !detail::aligned(workspace, 16)) return cudaErrorInvalidValue;
  ::fulgur::detail::WorkspaceCarver carver(workspace);
  const auto ws = detail::PrefillWorkspace<::fulgur::detail::WorkspaceCarver>::carve(carver, p);

  cudaError_t e =
      ::fulgur::detail::launch(detail::prefill_check_kernel<>, dim3(1), dim3(detail::kCheckThreads), 0, stream, p,
                               ws.status, ws.ckpt_base, ws.seg_owner, ws.part_owner, ws.groups, ws.seg_items);
  if (e != cudaSuccess || p.batch_size == 0) return e;

  detail::PrefillExtra extra;
  extra.status = ws.status;
  extra.ckpt_base = (p.checkpoints != nullptr && p.checkpoint_offsets == nullptr) ? ws.ckpt_base : nullptr;
  extra.seg_owner = ws.seg_owner;
  extra.part_owner = ws.part_owner;
  extra.seg_state = ws.seg_state;
  extra.first_state = ws.first_state;
  const int64_t groups = ws.groups, seg_items = ws.seg_items;
  // Two bf16 terms per input when one would lose precision: f16 (11 significant bits) and f32
  // inputs, and SiLU outputs (computed in fp32). bf16 inputs as is are exact in one term.
  const bool two_terms = p.qkv_dtype != DType::kBF16 || p.silu_qkv;
  return FULGUR_DISPATCH_VALUE(int, p.dk, kD, (FULGUR_LIGHTNING_HEAD_DIMS), {
    return FULGUR_DISPATCH_DTYPE(p.qkv_dtype, Tin, {
      if constexpr (DTypeOf<Tin>::value == DType::kBF16) {
        return two_terms ? detail::launch_prefill<kD, 2, Tin>(p, extra, groups, seg_items, stream)
                         : detail::launch_prefill<kD, 1, Tin>(p, extra, groups, seg_items, stream);
      } else {
        return detail::launch_prefill<kD, 2, Tin>(p, extra, groups, seg_items, stream);
      }
    });
  });
}

#endif  // __CUDACC__ || FULGUR_EMULATE

}  // namespace lightning
FULGUR_NAMESPACE_END
