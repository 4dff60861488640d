// SPDX-License-Identifier: Apache-2.0
// Lightning attention (MiniMax-01, Lightning Attention-2): the arguments of the prefill and decode
// operations, shared by the GPU kernels and the CPU references (include/fulgur/reference/
// lightning.hpp, which also writes out the block form). Host-only plain data. The math:
//
//     S_t = lambda * S_{t-1} + k_t^T v_t,   o_t = scale * q_t S_t,   lambda = exp(-slope_h)
//
// per sequence and head, with an fp32 state S in R^{dk x dv} kept in a caller-owned slot pool.
//
// Conventions every field below follows:
// - Index arrays (cu_seqlens, slot_ids, checkpoint_offsets) are int32: that is what engines
//   already hold (vLLM's query_start_loc and state indices, flash-attn's cu_seqlens), so a step
//   needs no conversion kernel. Element offsets are always formed in int64 (index * stride).
// - Strides are in elements (not bytes) of the tensor's own dtype. The last dimension (dk or dv)
//   is contiguous (stride 1). Per-token and per-head strides are free, so both a dense
//   [T, H, d] tensor and MiniMax's fused head-major projection [T, H, 3, d] are read in place:
//   for the fused one, q = base, k = base + d, v = base + 2d, stride_token = 3*H*d,
//   stride_head = 3*d.
// - What a launch writes (o, the state pool, checkpoints / step_states) must share no byte with
//   anything else it writes or reads; validate() checks it on the addresses (docs/lightning.md).
// - A pointer documented "required" may still be null when the tensor it names has no elements
//   (num_tokens == 0 or batch_size == 0): PyTorch hands out null data pointers for empty tensors.
#pragma once

#include <cmath>
#include <cstdint>

#include "fulgur/detail/config.hpp"
#include "fulgur/detail/dtype.hpp"
#include "fulgur/detail/overlap.hpp"
#include "fulgur/detail/status.hpp"

FULGUR_NAMESPACE_BEGIN
namespace lightning {

/// How one head's dk x dv state is laid out inside a slot. vLLM and fla use kKV; SGLang also
/// offers kVK (the transpose), which lets a decode kernel read a row of S per output element.
enum class StateLayout : int {
  kKV = 0,  // [dk][dv]: S(i, j) at i * dv + j
  kVK = 1,  // [dv][dk]: S(i, j) at j * dk + i
};

/// Number of checkpoints a sequence of n tokens produces with interval c: the states after
/// c, 2c, ..., floor(n/c)*c tokens of this call (the last one equals the final state when c | n).
FULGUR_HOST_DEVICE inline int64_t checkpoint_count(int64_t n, int64_t c) { return c > 0 ? n / c : 0; }

/// Prefill (and chunked prefill) over a packed variable-length batch.
///
/// Sequence b owns the rows [cu_seqlens[b], cu_seqlens[b+1]) of q, k, v and o. Its state
/// starts from the slot pool (or zero, see slot_ids / has_initial_state), runs the recurrence
/// over its tokens, and the final state is written back to the same slot. Rows of o outside
/// every sequence are not written.
struct PrefillParams {
  // ---- batch ---------------------------------------------------------------------------------
  int32_t batch_size = 0;               // B >= 0
  int64_t num_tokens = 0;               // T: rows of q, k, v, o; cu_seqlens[B] <= T
  const int32_t* cu_seqlens = nullptr;  // [B+1], required. cu_seqlens[0] == 0, non-decreasing;
                                        // zero-length sequences allowed: their final state is
                                        // their initial state (zero if has_initial_state is 0)
  int32_t max_seqlen = 0;               // optional hint for grid sizing: an upper bound on every
                                        // sequence length; 0 = unknown (kernels use num_tokens)
  int32_t segment_tokens = 0;           // performance option: sequences longer than this are cut
                                        // into segments of this many tokens that run in parallel
                                        // (docs/design/lightning.md, "Segments"); 0 = the build's
                                        // default (FULGUR_LIGHTNING_SEGMENT_TOKENS, 1024), else a
                                        // multiple of 64. Results differ between values only by
                                        // fp32 rounding; for one value they are deterministic and
                                        // batch invariant (the cut depends on the sequence alone)

  // ---- shape ---------------------------------------------------------------------------------
  int32_t num_heads = 0;  // H > 0 (heads on this rank)
  int32_t dk = 0;         // q/k head dim > 0
  int32_t dv = 0;         // v/o head dim > 0

  // ---- inputs (one dtype for q, k, v: they come from one projection) ------------------------
  DType qkv_dtype = DType::kBF16;
  const void* q = nullptr;                        // [T, H, dk] (strided), required
  const void* k = nullptr;                        // [T, H, dk] (strided), required
  const void* v = nullptr;                        // [T, H, dv] (strided), required
  int64_t q_stride_token = 0, q_stride_head = 0;  // > 0
  int64_t k_stride_token = 0, k_stride_head = 0;  // > 0
  int64_t v_stride_token = 0, v_stride_head = 0;  // > 0
  bool silu_qkv = false;                          // apply SiLU(x) = x / (1 + exp(-x)) to q, k, v as loaded (MiniMax
                                                  // applies it to the projection output; fusing it saves a pass)

  // ---- output --------------------------------------------------------------------------------
  DType o_dtype = DType::kBF16;
  void* o = nullptr;                              // [T, H, dv] (strided), required
  int64_t o_stride_token = 0, o_stride_head = 0;  // > 0

  // ---- decay and scale -----------------------------------------------------------------------
  const float* slopes = nullptr;  // [H], required; s_h >= 0, lambda_h = exp(-s_h). MiniMax and
                                  // ALiBi slopes: fulgur/lightning/slopes.hpp
  float scale = 1.f;              // o = scale * q S. MiniMax uses 1 (fla and SGLang default to
                                  // 1/sqrt(dk): pass that explicitly if wanted)

  // ---- state pool (fp32: a bf16 state loses increments, vLLM PR 19592) ----------------------
  float* state = nullptr;  // [num_slots, H, dk, dv] (kKV) or [num_slots, H, dv, dk] (kVK);
                           // required when num_slots > 0. Read, then overwritten in place.
  StateLayout state_layout = StateLayout::kKV;
  int64_t num_slots = 0;                       // slots in the pool (slot_ids must be < num_slots)
  int64_t state_stride_slot = 0;               // elements between slots; 0 = dense (H * dk * dv). Lets a pool
                                               // shared across layers ([slots, L, H, dk, dv]) be used in place
  const int32_t* slot_ids = nullptr;           // [B], required. slot_ids[b] >= 0: the slot sequence b
                                               // reads its initial state from and writes its final state
                                               // (and checkpoints) for. -1: a stateless sequence: starts
                                               // from zero, o is written, no state or checkpoint is
                                               // written. Non-negative ids must be distinct in one call.
  const uint8_t* has_initial_state = nullptr;  // [B] or null (= all 1). 0: ignore the slot's
                                               // contents and start from zero (a new request
                                               // whose slot holds stale data) but still write
                                               // the final state and checkpoints

  // ---- checkpoints for prefix caching of hybrid models ---------------------------------------
  // With checkpoints != null, sequence b (slot >= 0) writes the state after c, 2c, ...,
  // floor(n_b / c) * c of its tokens in this call (c = checkpoint_interval, counted from the
  // first token of this call, so a chunked prefill whose chunks start at multiples of c writes
  // the states at absolute multiples of c). Checkpoint i of sequence b (0-based) is row
  // checkpoint_offsets[b] + i of `checkpoints`, each row one full [H, dk, dv] state in
  // state_layout, so it can be copied into a pool slot as is. Sequences with slot -1 write none.
  float* checkpoints = nullptr;                 // [num_checkpoint_rows, H, dk, dv] (state_layout) or
                                                // null = no checkpoints
  int64_t checkpoint_interval = 0;              // c > 0 when checkpoints != null, else must be 0.
                                                // Kernels need c to be a multiple of their block size
                                                // (can_implement says which); references accept any c
                                                // (the blocked reference: a multiple of its block)
  const int32_t* checkpoint_offsets = nullptr;  // [B+1] or null. Non-decreasing, and
                                                // offsets[b+1] - offsets[b] >= floor(n_b / c)
                                                // (rows past the count stay untouched), so an
                                                // engine can point each sequence at its own
                                                // region. Null: packed, offsets[b] =
                                                // sum_{j<b} floor(n_j / c) over all sequences
                                                // (slot -1 ones too; their rows stay untouched)
  int64_t num_checkpoint_rows = 0;              // rows in `checkpoints` (bounds check of the offsets)
};

/// One decode step for a batch of sequences: one new token each, state updated in place.
struct DecodeParams {
  int32_t batch_size = 0;  // B >= 0
  int32_t num_heads = 0;   // H > 0
  int32_t dk = 0;          // > 0
  int32_t dv = 0;          // > 0

  DType qkv_dtype = DType::kBF16;
  const void* q = nullptr;                        // [B, H, dk] (strided), required
  const void* k = nullptr;                        // [B, H, dk] (strided), required
  const void* v = nullptr;                        // [B, H, dv] (strided), required
  int64_t q_stride_token = 0, q_stride_head = 0;  // > 0; token = batch row
  int64_t k_stride_token = 0, k_stride_head = 0;  // > 0
  int64_t v_stride_token = 0, v_stride_head = 0;  // > 0
  bool silu_qkv = false;                          // SiLU on q, k, v as loaded

  DType o_dtype = DType::kBF16;
  void* o = nullptr;                              // [B, H, dv] (strided), required; rows with slot -1 are not written
  int64_t o_stride_token = 0, o_stride_head = 0;  // > 0

  const float* slopes = nullptr;  // [H], required; s_h >= 0
  float scale = 1.f;

  float* state = nullptr;  // [num_slots, H, dk, dv] (kKV) or [num_slots, H, dv, dk] (kVK);
                           // required when num_slots > 0; updated in place
  StateLayout state_layout = StateLayout::kKV;
  int64_t num_slots = 0;
  int64_t state_stride_slot = 0;      // 0 = dense (H * dk * dv)
  const int32_t* slot_ids = nullptr;  // [B], required. -1 = padding (e.g. a CUDA-graph batch
                                      // rounded up): nothing is read or written for that row,
                                      // o and step_states included. Non-negative ids must be
                                      // distinct.

  // Several tokens per sequence in one call (speculative decoding: the draft tokens of a row
  // verified together). Token t (0 <= t < num_steps) of batch row b is token row
  // b * num_steps + t of q, k, v and o (so q is [B * num_steps, H, dk] through the same strides),
  // applied in order t = 0, 1, ...: the result is bit for bit that of num_steps successive
  // one-token calls. The pool holds the state after the last token.
  int32_t num_steps = 1;  // >= 1
  // Optional [B, num_steps, H, dk, dv] ([.., dv, dk] for kVK) fp32: the state after each token,
  // so an engine that accepts only the first a draft tokens can take state a-1 (e.g. copy it
  // back into the slot). Null: not written. Rows with slot -1 are not written.
  float* step_states = nullptr;
  int64_t step_state_stride = 0;  // elements between consecutive (row, token) states; 0 = dense
                                  // (H * dk * dv); else >= H * dk * dv
};

namespace params_detail {
inline bool valid_dtype(DType t) {
  return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16 || t == DType::kF64;
}
inline bool valid_layout(StateLayout l) { return l == StateLayout::kKV || l == StateLayout::kVK; }

using ::fulgur::detail::array_bytes;
using ::fulgur::detail::ByteRows;
using ::fulgur::detail::outputs_disjoint;
using ::fulgur::detail::strided_bytes;

/// The bytes of a [tokens, heads, d] tensor with free token and head strides, as rows along the
/// larger stride, each covering the other dimension from its first to its last element.
inline ByteRows token_head_bytes(const void* base, int64_t tokens, int64_t heads, int64_t d, int64_t stride_token,
                                 int64_t stride_head, DType t) {
  const int64_t e = static_cast<int64_t>(dtype_size(t));
  if (tokens <= 0 || heads <= 0 || d <= 0) return ByteRows{};
  // (n - 1) * stride + d, saturating (strides are only checked to be positive).
  const auto extent = [d](int64_t n, int64_t stride) {
    return n - 1 > (INT64_MAX - d) / stride ? INT64_MAX : (n - 1) * stride + d;
  };
  return stride_token >= stride_head ? strided_bytes(base, tokens, extent(heads, stride_head), stride_token, e)
                                     : strided_bytes(base, heads, extent(tokens, stride_token), stride_head, e);
}
/// The slot pool: num_slots rows of H * dk * dv floats.
inline ByteRows pool_bytes(const float* state, int64_t slots, int64_t H, int64_t dk, int64_t dv, int64_t stride) {
  const int64_t n = H * dk * dv;
  return strided_bytes(state, slots, n, stride == 0 ? n : stride, 4);
}
}  // namespace params_detail

/// Host check of the scalar fields and pointers; dereferences nothing, so launchers call it on
/// device pointers. The arrays' contents are checked by validate_host_arrays().
inline Status validate(const PrefillParams& p) {
  FULGUR_CHECK_ARG(p.batch_size >= 0, "lightning prefill: batch_size must be >= 0");
  FULGUR_CHECK_ARG(p.num_tokens >= 0, "lightning prefill: num_tokens must be >= 0");
  FULGUR_CHECK_ARG(p.num_tokens <= INT32_MAX,
                   "lightning prefill: num_tokens must fit int32 "
                   "(cu_seqlens are int32)");
  FULGUR_CHECK_ARG(p.max_seqlen >= 0, "lightning prefill: max_seqlen must be >= 0 (0 = unknown)");
  FULGUR_CHECK_ARG(p.segment_tokens >= 0 && p.segment_tokens % 64 == 0,
                   "lightning prefill: segment_tokens must be 0 (default) or a positive multiple of 64");
  FULGUR_CHECK_ARG(p.num_heads > 0, "lightning prefill: num_heads must be positive");
  FULGUR_CHECK_ARG(p.dk > 0, "lightning prefill: dk must be positive");
  FULGUR_CHECK_ARG(p.dv > 0, "lightning prefill: dv must be positive");
  FULGUR_CHECK_ARG(p.cu_seqlens != nullptr, "lightning prefill: cu_seqlens is null");
  FULGUR_CHECK_ARG(params_detail::valid_dtype(p.qkv_dtype), "lightning prefill: bad qkv_dtype");
  FULGUR_CHECK_ARG(params_detail::valid_dtype(p.o_dtype), "lightning prefill: bad o_dtype");
  if (p.num_tokens > 0) {
    FULGUR_CHECK_ARG(p.q != nullptr, "lightning prefill: q is null");
    FULGUR_CHECK_ARG(p.k != nullptr, "lightning prefill: k is null");
    FULGUR_CHECK_ARG(p.v != nullptr, "lightning prefill: v is null");
    FULGUR_CHECK_ARG(p.o != nullptr, "lightning prefill: o is null");
  }
  FULGUR_CHECK_ARG(p.q_stride_token > 0 && p.q_stride_head > 0, "lightning prefill: q strides must be positive");
  FULGUR_CHECK_ARG(p.k_stride_token > 0 && p.k_stride_head > 0, "lightning prefill: k strides must be positive");
  FULGUR_CHECK_ARG(p.v_stride_token > 0 && p.v_stride_head > 0, "lightning prefill: v strides must be positive");
  FULGUR_CHECK_ARG(p.o_stride_token > 0 && p.o_stride_head > 0, "lightning prefill: o strides must be positive");
  FULGUR_CHECK_ARG(p.slopes != nullptr, "lightning prefill: slopes is null");
  FULGUR_CHECK_ARG(std::isfinite(p.scale), "lightning prefill: scale must be finite");
  FULGUR_CHECK_ARG(params_detail::valid_layout(p.state_layout), "lightning prefill: bad state_layout");
  FULGUR_CHECK_ARG(p.num_slots >= 0, "lightning prefill: num_slots must be >= 0");
  FULGUR_CHECK_ARG(p.num_slots == 0 || p.state != nullptr, "lightning prefill: state is null but num_slots > 0");
  FULGUR_CHECK_ARG(p.state_stride_slot == 0 || p.state_stride_slot >= int64_t{p.num_heads} * p.dk * p.dv,
                   "lightning prefill: state_stride_slot must be 0 (dense) or >= H*dk*dv");
  FULGUR_CHECK_ARG(p.batch_size == 0 || p.slot_ids != nullptr,
                   "lightning prefill: slot_ids is null (use -1 entries for stateless sequences)");
  if (p.checkpoints != nullptr) {
    FULGUR_CHECK_ARG(p.checkpoint_interval > 0,
                     "lightning prefill: checkpoint_interval must be positive when checkpoints "
                     "are requested");
    FULGUR_CHECK_ARG(p.num_checkpoint_rows >= 0, "lightning prefill: num_checkpoint_rows must be >= 0");
  } else {
    FULGUR_CHECK_ARG(p.checkpoint_interval == 0 && p.checkpoint_offsets == nullptr,
                     "lightning prefill: checkpoint_interval/offsets given but checkpoints is "
                     "null");
  }
  return Status::success();
}

/// What the launch writes (o, the state pool, the checkpoints) shares no byte with anything else it
/// writes or with what it reads. Addresses only (works on device pointers). The extents come from
/// the shapes, so can_implement() runs it after the shape, dtype and head-dim checks.
inline Status validate_buffers(const PrefillParams& p) {
  using namespace params_detail;
  const int64_t T = p.num_tokens, H = p.num_heads, B = p.batch_size;
  const ByteRows out[3] = {
      token_head_bytes(p.o, T, H, p.dv, p.o_stride_token, p.o_stride_head, p.o_dtype),
      pool_bytes(p.state, p.num_slots, H, p.dk, p.dv, p.state_stride_slot),
      pool_bytes(p.checkpoints, p.num_checkpoint_rows, H, p.dk, p.dv, 0),
  };
  const ByteRows in[8] = {
      token_head_bytes(p.q, T, H, p.dk, p.q_stride_token, p.q_stride_head, p.qkv_dtype),
      token_head_bytes(p.k, T, H, p.dk, p.k_stride_token, p.k_stride_head, p.qkv_dtype),
      token_head_bytes(p.v, T, H, p.dv, p.v_stride_token, p.v_stride_head, p.qkv_dtype),
      array_bytes(p.slopes, H, 4),
      array_bytes(p.cu_seqlens, B + 1, 4),
      array_bytes(p.slot_ids, B, 4),
      array_bytes(p.has_initial_state, B, 1),
      array_bytes(p.checkpoint_offsets, B + 1, 4),
  };
  FULGUR_CHECK_ARG(outputs_disjoint(out, in),
                   "lightning prefill: o, the state pool and the checkpoints must share no byte with each other "
                   "or with q, k, v, slopes, cu_seqlens, slot_ids, has_initial_state or checkpoint_offsets");
  return Status::success();
}

/// Host check of the index arrays and slopes: reads cu_seqlens, slot_ids, checkpoint_offsets and
/// slopes, so they must be host memory here (references, debug builds of an engine). Call after
/// validate(). Checks that no two sequences write one slot (a race on a GPU) and that every
/// access stays inside the pool and the checkpoint buffer.
inline Status validate_host_arrays(const PrefillParams& p) {
  const int32_t* cu = p.cu_seqlens;
  FULGUR_CHECK_ARG(cu[0] == 0, "lightning prefill: cu_seqlens[0] must be 0");
  for (int32_t b = 0; b < p.batch_size; ++b) {
    FULGUR_CHECK_ARG(cu[b + 1] >= cu[b], "lightning prefill: cu_seqlens must be non-decreasing");
    FULGUR_CHECK_ARG(p.max_seqlen == 0 || cu[b + 1] - cu[b] <= p.max_seqlen,
                     "lightning prefill: a sequence is longer than max_seqlen");
  }
  FULGUR_CHECK_ARG(cu[p.batch_size] <= p.num_tokens, "lightning prefill: cu_seqlens[B] exceeds num_tokens");
  for (int32_t h = 0; h < p.num_heads; ++h) {
    // s < 0 would make lambda > 1: the state grows without bound and the block form would
    // have to exponentiate a positive number.
    FULGUR_CHECK_ARG(std::isfinite(p.slopes[h]) && p.slopes[h] >= 0.f,
                     "lightning prefill: slopes must be finite and >= 0");
  }
  for (int32_t b = 0; b < p.batch_size; ++b) {
    const int32_t s = p.slot_ids[b];
    FULGUR_CHECK_ARG(s >= -1 && s < p.num_slots, "lightning prefill: slot_ids must be -1 or in [0, num_slots)");
    if (s < 0) continue;
    for (int32_t c = 0; c < b; ++c) {
      FULGUR_CHECK_ARG(p.slot_ids[c] != s, "lightning prefill: two sequences share a slot");
    }
  }
  if (p.checkpoints != nullptr) {
    const int64_t c = p.checkpoint_interval;
    if (p.checkpoint_offsets != nullptr) {
      const int32_t* off = p.checkpoint_offsets;
      FULGUR_CHECK_ARG(off[0] >= 0, "lightning prefill: checkpoint_offsets[0] must be >= 0");
      for (int32_t b = 0; b < p.batch_size; ++b) {
        FULGUR_CHECK_ARG(int64_t{off[b + 1]} - off[b] >= checkpoint_count(cu[b + 1] - cu[b], c),
                         "lightning prefill: checkpoint_offsets leave a sequence fewer rows "
                         "than floor(n_b / checkpoint_interval)");
      }
      FULGUR_CHECK_ARG(off[p.batch_size] <= p.num_checkpoint_rows,
                       "lightning prefill: checkpoint_offsets exceed num_checkpoint_rows");
    } else {
      int64_t rows = 0;
      for (int32_t b = 0; b < p.batch_size; ++b) rows += checkpoint_count(cu[b + 1] - cu[b], c);
      FULGUR_CHECK_ARG(rows <= p.num_checkpoint_rows,
                       "lightning prefill: the batch needs more checkpoint rows than "
                       "num_checkpoint_rows");
    }
  }
  return Status::success();
}

inline Status validate(const DecodeParams& p) {
  FULGUR_CHECK_ARG(p.batch_size >= 0, "lightning decode: batch_size must be >= 0");
  FULGUR_CHECK_ARG(p.num_heads > 0, "lightning decode: num_heads must be positive");
  FULGUR_CHECK_ARG(p.dk > 0, "lightning decode: dk must be positive");
  FULGUR_CHECK_ARG(p.dv > 0, "lightning decode: dv must be positive");
  FULGUR_CHECK_ARG(params_detail::valid_dtype(p.qkv_dtype), "lightning decode: bad qkv_dtype");
  FULGUR_CHECK_ARG(params_detail::valid_dtype(p.o_dtype), "lightning decode: bad o_dtype");
  if (p.batch_size > 0) {
    FULGUR_CHECK_ARG(p.q != nullptr, "lightning decode: q is null");
    FULGUR_CHECK_ARG(p.k != nullptr, "lightning decode: k is null");
    FULGUR_CHECK_ARG(p.v != nullptr, "lightning decode: v is null");
    FULGUR_CHECK_ARG(p.o != nullptr, "lightning decode: o is null");
    FULGUR_CHECK_ARG(p.slot_ids != nullptr, "lightning decode: slot_ids is null");
  }
  FULGUR_CHECK_ARG(p.q_stride_token > 0 && p.q_stride_head > 0, "lightning decode: q strides must be positive");
  FULGUR_CHECK_ARG(p.k_stride_token > 0 && p.k_stride_head > 0, "lightning decode: k strides must be positive");
  FULGUR_CHECK_ARG(p.v_stride_token > 0 && p.v_stride_head > 0, "lightning decode: v strides must be positive");
  FULGUR_CHECK_ARG(p.o_stride_token > 0 && p.o_stride_head > 0, "lightning decode: o strides must be positive");
  FULGUR_CHECK_ARG(p.slopes != nullptr, "lightning decode: slopes is null");
  FULGUR_CHECK_ARG(std::isfinite(p.scale), "lightning decode: scale must be finite");
  FULGUR_CHECK_ARG(params_detail::valid_layout(p.state_layout), "lightning decode: bad state_layout");
  FULGUR_CHECK_ARG(p.num_slots >= 0, "lightning decode: num_slots must be >= 0");
  FULGUR_CHECK_ARG(p.num_slots == 0 || p.state != nullptr, "lightning decode: state is null but num_slots > 0");
  FULGUR_CHECK_ARG(p.state_stride_slot == 0 || p.state_stride_slot >= int64_t{p.num_heads} * p.dk * p.dv,
                   "lightning decode: state_stride_slot must be 0 (dense) or >= H*dk*dv");
  FULGUR_CHECK_ARG(p.num_steps >= 1, "lightning decode: num_steps must be >= 1");
  FULGUR_CHECK_ARG(int64_t{p.batch_size} * p.num_steps <= INT32_MAX,
                   "lightning decode: batch_size * num_steps must fit int32");
  FULGUR_CHECK_ARG(p.step_state_stride == 0 || p.step_state_stride >= int64_t{p.num_heads} * p.dk * p.dv,
                   "lightning decode: step_state_stride must be 0 (dense) or >= H*dk*dv");
  return Status::success();
}

/// The same for decode: o, the state pool and step_states against each other and the inputs.
inline Status validate_buffers(const DecodeParams& p) {
  using namespace params_detail;
  const int64_t T = int64_t{p.batch_size} * p.num_steps, H = p.num_heads, B = p.batch_size;
  const ByteRows out[3] = {
      token_head_bytes(p.o, T, H, p.dv, p.o_stride_token, p.o_stride_head, p.o_dtype),
      pool_bytes(p.state, p.num_slots, H, p.dk, p.dv, p.state_stride_slot),
      pool_bytes(p.step_states, T, H, p.dk, p.dv, p.step_state_stride),
  };
  const ByteRows in[5] = {
      token_head_bytes(p.q, T, H, p.dk, p.q_stride_token, p.q_stride_head, p.qkv_dtype),
      token_head_bytes(p.k, T, H, p.dk, p.k_stride_token, p.k_stride_head, p.qkv_dtype),
      token_head_bytes(p.v, T, H, p.dv, p.v_stride_token, p.v_stride_head, p.qkv_dtype),
      array_bytes(p.slopes, H, 4),
      array_bytes(p.slot_ids, B, 4),
  };
  FULGUR_CHECK_ARG(outputs_disjoint(out, in),
                   "lightning decode: o, the state pool and step_states must share no byte with each other or "
                   "with q, k, v, slopes or slot_ids");
  return Status::success();
}

/// Reads slot_ids and slopes (host memory); call after validate().
inline Status validate_host_arrays(const DecodeParams& p) {
  for (int32_t h = 0; h < p.num_heads; ++h) {
    FULGUR_CHECK_ARG(std::isfinite(p.slopes[h]) && p.slopes[h] >= 0.f,
                     "lightning decode: slopes must be finite and >= 0");
  }
  for (int32_t b = 0; b < p.batch_size; ++b) {
    const int32_t s = p.slot_ids[b];
    FULGUR_CHECK_ARG(s >= -1 && s < p.num_slots, "lightning decode: slot_ids must be -1 or in [0, num_slots)");
    if (s < 0) continue;
    for (int32_t c = 0; c < b; ++c) {
      FULGUR_CHECK_ARG(p.slot_ids[c] != s, "lightning decode: two batch rows share a slot");
    }
  }
  return Status::success();
}

}  // namespace lightning
FULGUR_NAMESPACE_END
