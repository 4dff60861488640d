// SPDX-License-Identifier: Apache-2.0
// Lightning attention kernels: the compile-time choices (head dims, tiles, threads, shared
// memory), the build-time allow-lists, the workspace layout, and the pure host checks
// can_implement() that launchers and engines call before a launch. Host-only: no device code, so
// an engine can ask "is this configuration supported, and how much workspace?" from plain C++.
//
// The kernels themselves: fulgur/lightning/prefill.cuh and fulgur/lightning/decode.cuh; the
// design and the FLOP/byte counts: docs/design/lightning.md.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fulgur/detail/config.hpp"
#include "fulgur/detail/dispatch.hpp"
#include "fulgur/detail/dtype.hpp"
#include "fulgur/detail/status.hpp"
#include "fulgur/detail/workspace.hpp"
#include "fulgur/lightning/params.hpp"

/// Head dims (dk = dv) compiled into the tensor-core prefill and the decode kernel. An engine
/// that serves one model can cut compile time with, e.g., -DFULGUR_LIGHTNING_HEAD_DIMS=128.
/// Every value must be one the kernels support (64 or 128); others are rejected at compile time.
#ifndef FULGUR_LIGHTNING_HEAD_DIMS
#define FULGUR_LIGHTNING_HEAD_DIMS 64, 128
#endif

/// Sequence-parallel prefill: a sequence longer than this many tokens is cut into segments of
/// this length (counted from its first token in the call), processed in parallel and stitched
/// together through their states (docs/design/lightning.md, "Segments"). A multiple of 64. The cut
/// depends only on the sequence itself, never on the rest of the batch, so results stay batch
/// invariant. The default of PrefillParams::segment_tokens (which a call may set); overridable at
/// build time (the segment tests use a small value to exercise it cheaply).
#ifndef FULGUR_LIGHTNING_SEGMENT_TOKENS
#define FULGUR_LIGHTNING_SEGMENT_TOKENS 1024
#endif

FULGUR_NAMESPACE_BEGIN
namespace lightning {

constexpr int64_t kSegmentTokens = FULGUR_LIGHTNING_SEGMENT_TOKENS;
static_assert(kSegmentTokens >= 64 && kSegmentTokens % 64 == 0,
              "FULGUR_LIGHTNING_SEGMENT_TOKENS must be a positive multiple of 64");

/// The segment length L a call uses: p.segment_tokens, or kSegmentTokens when that is 0.
FULGUR_HOST_DEVICE inline int64_t segment_tokens(const PrefillParams& p) {
  return p.segment_tokens > 0 ? int64_t{p.segment_tokens} : kSegmentTokens;
}

/// Number of segments of a sequence of n tokens with segments of L (1 for n <= L, including n = 0).
FULGUR_HOST_DEVICE inline int64_t segment_count(int64_t n, int64_t L) {
  return n <= L ? 1 : (n + L - 1) / L;
}

// ---- tiles -------------------------------------------------------------------------------------

/// The tensor-core prefill's tile for head dim kD (= dk = dv). Why these numbers: docs/design/lightning.md.
///  - kBlock tokens per block (the spec's B): 64. The block form's intra-block work grows with
///    B (4Bd FLOPs per token-head) and the inter-block work does not (4d^2, here 8d^2 with the
///    state split in two bf16 terms), so 64 balances the two at d = 64..128 while keeping the
///    64x64 score tile, Q, K and V of one block in shared memory.
///  - one warp per 16 dv columns of the state: kD / 16 warps. Each warp keeps its 16 x kD slice of
///    S^T in mma accumulator registers for the whole sequence (kD / 2 fp32 registers per thread)
///    and uses it directly as the B operand of Q S (the accumulator layout of S^T is the B
///    fragment layout of S), so the fp32 state never goes through shared memory.
template <int kD>
struct PrefillTile {
  static_assert(kD == 64 || kD == 128, "the tensor-core prefill supports head dims 64 and 128");
  static constexpr int kBlock = 64;
  static constexpr int kWarps = kD / 16;
  static constexpr int kThreads = 32 * kWarps;
  /// bf16 elements per shared-memory row of Q, K, V (and of P): +8 (16 bytes) so the 8 row
  /// addresses of an ldmatrix fall in 8 different 16-byte bank groups.
  static constexpr int kPitch = kD + 8;
  static constexpr int kPPitch = kBlock + 8;
  /// The 64 x 64 score tile P = Q K^T is split 4 (token rows) x kWarps / 4 (key columns).
  static constexpr int kColGroups = kWarps / 4;
  static constexpr int kKeysPerWarp = kBlock / kColGroups;
  static constexpr int kScoreTiles = kKeysPerWarp / 8;  // n8 tiles per warp
  /// Which 16-row block (0..3) and which key group (0..kColGroups-1) of P warp w computes. The
  /// causal mask leaves row block r with r + 1 n16 key tiles, so the work is uneven; warps issue
  /// on sub-partition w % 4, and with 8 warps the plain split (row block w % 4, key group w / 4)
  /// gives the four sub-partitions 2, 4, 6 and 8 n8 tiles per k-step. The pairing below (row
  /// block, key group) = (3,0)+(0,0), (3,1)+(2,1), (1,0)+(0,1), (2,0)+(1,1) on sub-partitions
  /// 0..3 gives 6, 6, 4, 4. With 4 warps there is one per sub-partition and nothing to pair.
  /// Only the assignment changes: every tile is computed by the same instructions, so the bits
  /// are those of any other assignment.
  FULGUR_HOST_DEVICE static constexpr int score_row_block(int w) {
    return kWarps == 8 ? static_cast<int>((0x10202133u >> (4 * w)) & 0xFu) : w % 4;
  }
  FULGUR_HOST_DEVICE static constexpr int score_key_group(int w) {
    return kWarps == 8 ? static_cast<int>((0xE2u >> w) & 1u) : w / 4;
  }
  /// Shared memory: `buffers` copies of Q, K, V as `terms` bf16 terms each (1 for bf16 inputs, 2
  /// when the inputs need a hi + lo split to keep their precision; two buffers when the next
  /// block is copied in by cp.async during this one), P as two terms, and the decay tables
  /// lambda^0..lambda^kBlock (hi and lo).
  static constexpr size_t smem_bytes(int terms, int buffers = 1) {
    return (static_cast<size_t>(buffers) * terms * 3 * kBlock * kPitch + 2 * kBlock * kPPitch) * 2 +
           2 * (kBlock + 1) * sizeof(float);
  }
};

namespace detail {
/// The score assignment covers every (row block, key group) pair exactly once.
template <int kD>
constexpr bool score_assignment_is_a_permutation() {
  using T = PrefillTile<kD>;
  unsigned seen = 0;
  for (int w = 0; w < T::kWarps; ++w) seen |= 1u << (T::score_row_block(w) * T::kColGroups + T::score_key_group(w));
  return seen == (1u << T::kWarps) - 1;
}
/// The largest number of unmasked n8 score tiles per k-step on one SM sub-partition (w % 4).
template <int kD>
constexpr int score_tiles_per_subpartition_max() {
  using T = PrefillTile<kD>;
  int load[4] = {0, 0, 0, 0};
  for (int w = 0; w < T::kWarps; ++w) {
    const int visible = 16 * T::score_row_block(w) + 16 - T::score_key_group(w) * T::kKeysPerWarp;
    load[w % 4] += visible <= 0 ? 0 : (visible / 8 < T::kScoreTiles ? visible / 8 : T::kScoreTiles);
  }
  int worst = 0;
  for (int i = 0; i < 4; ++i) worst = load[i] > worst ? load[i] : worst;
  return worst;
}
static_assert(score_assignment_is_a_permutation<64>() && score_assignment_is_a_permutation<128>(),
              "every score tile of P has exactly one warp");
static_assert(score_tiles_per_subpartition_max<128>() == 6, "d = 128: the paired assignment's balance (6, 6, 4, 4)");
}  // namespace detail

/// Decode: one CTA per (batch row, head, column split). kSplitColumns(d) columns of dv per split
/// unit; 8 row groups of threads, each with a float4 of 4 columns (docs/design/lightning.md).
template <int kD>
struct DecodeTile {
  static_assert(kD == 64 || kD == 128, "decode supports head dims 64 and 128");
  static constexpr int kRowGroups = 8;
  static constexpr int kMaxSplits = 4;
};

/// Number of column splits of each head's dv for decode: enough CTAs to fill a large GPU when
/// batch x heads is small, none when it is already large. Results do not depend on it (every
/// output column and state element is computed by the same instruction sequence whatever the
/// split), so this is a pure performance choice. Thresholds sized for ~132 SMs (H100/H200).
constexpr int decode_splits(int64_t batch_times_heads) {
  return batch_times_heads >= 512 ? 1 : (batch_times_heads >= 128 ? 2 : 4);
}

// ---- errors the device reports ------------------------------------------------------------

/// What the prefill's device-side check of the index arrays found. The launcher cannot read
/// device memory (it never synchronizes), so cu_seqlens, slot_ids, checkpoint_offsets and the
/// slopes are checked on the device by the first kernel of every call; when one is bad, nothing
/// at all is written (o, the pool, the checkpoints) and this code is left in the first 4 bytes
/// of the workspace (prefill_device_status()). Host copies can be checked up front with
/// validate_host_arrays() (params.hpp).
enum class PrefillArrayError : int32_t {
  kOk = 0,
  kCuSeqlens = 1,          // cu_seqlens[0] != 0, decreasing, or cu_seqlens[B] > num_tokens
  kMaxSeqlen = 2,          // a sequence longer than max_seqlen (when max_seqlen > 0)
  kSlotIds = 3,            // a slot id outside [-1, num_slots)
  kCheckpointOffsets = 4,  // offsets leave a sequence too few rows, or exceed num_checkpoint_rows
  kSlopes = 5,             // a slope that is negative or not finite
};

// ---- workspace ----------------------------------------------------------------------------

namespace detail {
/// The prefill workspace, carved the same way for the size query and the launch. With
/// L = segment_tokens(p) and G = floor(T / L) (T = num_tokens):
///   status       int32[4]    PrefillArrayError of this call in element 0
///   ckpt_base    int32[B+1]  first checkpoint row of each sequence (packed layout only)
///   seg_owner    int32[B+G+1] work item -> sequence of the main kernel (-1: no work)
///   part_owner   int32[G]    work item -> sequence of the segment-state kernel (-1: none)
///   seg_state    fp32[G, H, d, d]  [dv][dk]: a segment's own contribution, then (after the scan)
///                              the state at the start of the next segment
///   first_state  fp32[G, H, d, d]  [dv][dk]: the initial state of a multi-segment sequence
/// Segment i of sequence b (a full L-token range when it is not the last) uses seg_state slot
/// floor(cu[b] / L) + i and first_state slot floor(cu[b] / L): two such full ranges of the packed
/// token array are disjoint, so their floors differ, and every slot is below G. The main
/// kernel's work item of (b, i) is b + floor(cu[b] / L) + i, unique for the same reason.
template <typename Carver>
struct PrefillWorkspace {
  int32_t* status = nullptr;
  int32_t* ckpt_base = nullptr;
  int32_t* seg_owner = nullptr;
  int32_t* part_owner = nullptr;
  float* seg_state = nullptr;
  float* first_state = nullptr;
  int64_t groups = 0;     // G
  int64_t seg_items = 0;  // B + G + 1
  static PrefillWorkspace carve(Carver& c, const PrefillParams& p) {
    PrefillWorkspace w;
    w.groups = p.num_tokens / segment_tokens(p);
    w.seg_items = int64_t{p.batch_size} + w.groups + 1;
    w.status = c.template take<int32_t>(4);
    const bool packed_ckpt = p.checkpoints != nullptr && p.checkpoint_offsets == nullptr;
    w.ckpt_base = c.template take<int32_t>(packed_ckpt ? static_cast<size_t>(p.batch_size) + 1 : 0);
    w.seg_owner = c.template take<int32_t>(static_cast<size_t>(w.seg_items));
    w.part_owner = c.template take<int32_t>(static_cast<size_t>(w.groups));
    const size_t state_elems = static_cast<size_t>(w.groups) * p.num_heads * p.dk * p.dv;
    w.seg_state = c.template take<float>(state_elems);
    w.first_state = c.template take<float>(state_elems);
    return w;
  }
};

inline bool aligned(const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

inline bool head_dim_compiled(int d) { return ::fulgur::detail::value_allowed<int, FULGUR_LIGHTNING_HEAD_DIMS>(d); }

inline bool qkv_dtype_compiled(DType t) {
  switch (t) {
    case DType::kF32: return FULGUR_ALLOW_F32 != 0;
    case DType::kF16: return FULGUR_ALLOW_F16 != 0;
    case DType::kBF16: return FULGUR_ALLOW_BF16 != 0;
    default: return false;
  }
}

/// Output dtypes are a run-time switch in the epilogue (not a template axis): any of the three.
inline bool o_dtype_supported(DType t) { return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16; }

/// q/k/v rows are read with 16-byte vector loads: every row start must be 16-byte aligned.
template <typename P>
inline Status check_qkv_alignment(const P& p, bool any_rows, const char* what_ptr, const char* what_stride) {
  const size_t es = dtype_size(p.qkv_dtype);
  const int64_t vec = static_cast<int64_t>(16 / es);
  if (any_rows) {
    FULGUR_CHECK_ARG(aligned(p.q, 16) && aligned(p.k, 16) && aligned(p.v, 16), what_ptr);
  }
  FULGUR_CHECK_ARG(p.q_stride_token % vec == 0 && p.q_stride_head % vec == 0 && p.k_stride_token % vec == 0 &&
                       p.k_stride_head % vec == 0 && p.v_stride_token % vec == 0 && p.v_stride_head % vec == 0,
                   what_stride);
  return Status::success();
}
}  // namespace detail

/// Bytes of workspace prefill() needs for these parameters (also what a null-workspace call
/// reports): about 2 * floor(num_tokens / L) * H * dk * dv * 4 bytes (L = segment_tokens(p)) for the
/// segment states (0 when no sequence can be longer than a segment), plus a few small arrays.
/// Always at least 256: the device status word lives there.
inline size_t prefill_workspace_bytes(const PrefillParams& p) {
  ::fulgur::detail::WorkspaceCarver c(nullptr);
  detail::PrefillWorkspace<::fulgur::detail::WorkspaceCarver>::carve(c, p);
  return c.bytes();
}

// ---- can_implement ------------------------------------------------------------------------

/// Pure host check (reads no device memory): validate() plus what the kernels need. Returns
/// cudaErrorInvalidValue for bad arguments (including misalignment) and cudaErrorNotSupported
/// for a configuration this build does not compile in, each with a readable reason.
inline Status can_implement(const PrefillParams& p) {
  FULGUR_RETURN_IF_ERROR(validate(p));
  if (p.dk != p.dv) return Status::not_supported("lightning prefill: the kernels need dk == dv");
  if (p.dk != 64 && p.dk != 128) {
    return Status::not_supported("lightning prefill: head dim must be 64 or 128 (tensor-core path)");
  }
  if (!detail::head_dim_compiled(p.dk)) {
    return Status::not_supported("lightning prefill: head dim not in FULGUR_LIGHTNING_HEAD_DIMS for this build");
  }
  if (!detail::qkv_dtype_compiled(p.qkv_dtype)) {
    return Status::not_supported("lightning prefill: qkv_dtype must be bf16, f16 or f32 (and allowed in this build)");
  }
  if (!detail::o_dtype_supported(p.o_dtype)) {
    return Status::not_supported("lightning prefill: o_dtype must be bf16, f16 or f32");
  }
  FULGUR_CHECK_ARG(p.num_heads <= 65535, "lightning prefill: num_heads must be <= 65535 (grid y)");
  FULGUR_CHECK_ARG(int64_t{p.batch_size} + p.num_tokens / segment_tokens(p) + 1 <= INT32_MAX,
                   "lightning prefill: batch_size + num_tokens / segment length must fit the grid");
  FULGUR_RETURN_IF_ERROR(detail::check_qkv_alignment(p, p.num_tokens > 0,
                                                     "lightning prefill: q, k, v must be 16-byte aligned",
                                                     "lightning prefill: q/k/v strides must be multiples of 16 "
                                                     "bytes (16-byte row loads)"));
  FULGUR_CHECK_ARG(p.num_tokens == 0 || detail::aligned(p.o, 2 * dtype_size(p.o_dtype)),
                   "lightning prefill: o must be aligned to two elements");
  FULGUR_CHECK_ARG(p.o_stride_token % 2 == 0 && p.o_stride_head % 2 == 0,
                   "lightning prefill: o strides must be even (two-element stores)");
  FULGUR_CHECK_ARG(p.state == nullptr || detail::aligned(p.state, 16),
                   "lightning prefill: state must be 16-byte aligned");
  FULGUR_CHECK_ARG(p.state_stride_slot % 4 == 0, "lightning prefill: state_stride_slot must be a multiple of 4");
  FULGUR_CHECK_ARG(p.checkpoints == nullptr || detail::aligned(p.checkpoints, 16),
                   "lightning prefill: checkpoints must be 16-byte aligned");
  FULGUR_CHECK_ARG(p.checkpoints == nullptr || p.checkpoint_interval % PrefillTile<64>::kBlock == 0,
                   "lightning prefill: checkpoint_interval must be a multiple of the kernel block (64 tokens)");
  return validate_buffers(p);
}

/// Pure host check for decode, as for prefill.
inline Status can_implement(const DecodeParams& p) {
  FULGUR_RETURN_IF_ERROR(validate(p));
  if (p.dk != p.dv) return Status::not_supported("lightning decode: the kernel needs dk == dv");
  if (p.dk != 64 && p.dk != 128) return Status::not_supported("lightning decode: head dim must be 64 or 128");
  if (!detail::head_dim_compiled(p.dk)) {
    return Status::not_supported("lightning decode: head dim not in FULGUR_LIGHTNING_HEAD_DIMS for this build");
  }
  if (!detail::qkv_dtype_compiled(p.qkv_dtype)) {
    return Status::not_supported("lightning decode: qkv_dtype must be bf16, f16 or f32 (and allowed in this build)");
  }
  if (!detail::o_dtype_supported(p.o_dtype)) {
    return Status::not_supported("lightning decode: o_dtype must be bf16, f16 or f32");
  }
  FULGUR_CHECK_ARG(p.num_heads <= 65535, "lightning decode: num_heads must be <= 65535 (grid y)");
  FULGUR_RETURN_IF_ERROR(detail::check_qkv_alignment(p, p.batch_size > 0,
                                                     "lightning decode: q, k, v must be 16-byte aligned",
                                                     "lightning decode: q/k/v strides must be multiples of 16 "
                                                     "bytes (16-byte row loads)"));
  FULGUR_CHECK_ARG(p.batch_size == 0 || detail::aligned(p.o, 2 * dtype_size(p.o_dtype)),
                   "lightning decode: o must be aligned to two elements");
  FULGUR_CHECK_ARG(p.o_stride_token % 2 == 0 && p.o_stride_head % 2 == 0,
                   "lightning decode: o strides must be even (two-element stores)");
  FULGUR_CHECK_ARG(p.state == nullptr || detail::aligned(p.state, 16),
                   "lightning decode: state must be 16-byte aligned");
  FULGUR_CHECK_ARG(p.state_stride_slot % 4 == 0, "lightning decode: state_stride_slot must be a multiple of 4");
  FULGUR_CHECK_ARG(p.step_states == nullptr || detail::aligned(p.step_states, 16),
                   "lightning decode: step_states must be 16-byte aligned");
  FULGUR_CHECK_ARG(p.step_state_stride % 4 == 0, "lightning decode: step_state_stride must be a multiple of 4");
  return validate_buffers(p);
}

}  // namespace lightning
FULGUR_NAMESPACE_END
