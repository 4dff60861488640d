// SPDX-License-Identifier: Apache-2.0
// CPU references for lightning attention (fp64 arithmetic, any input/output dtype). They take the
// kernels' own PrefillParams / DecodeParams and write o, the slot pool and the checkpoints exactly
// where the kernels do, so a kernel test compares buffers one to one.
//
//   lightning_prefill          the per-token recurrence: the ground truth
//   lightning_prefill_blocked  the block (chunked) form the kernels implement, any block 1..256
//   lightning_decode           num_steps recurrence steps per batch row (1: plain decode), state
//                              updated in place, optionally each step's state written out
//
// Math (the family spec, "The recurrence"; MiniMax-01 and Lightning Attention-2), per sequence and
// head, lambda = exp(-s_h):
//     S_t = lambda * S_{t-1} + k_t^T v_t        (decay first, then add the current token)
//     o_t = scale * q_t S_t                     (the current token is included)
// The state is fp32 in memory (pool and checkpoints) and fp64 while a call runs, so a reference
// rounds it to fp32 exactly where a kernel stores it: once at the end of a call and at each
// checkpoint.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "fulgur/detail/config.hpp"
#include "fulgur/detail/dtype.hpp"
#include "fulgur/detail/status.hpp"
#include "fulgur/lightning/params.hpp"

FULGUR_NAMESPACE_BEGIN
namespace reference {
namespace lightning_detail {

using lightning::StateLayout;

inline double load(const void* base, DType t, int64_t i) {
  switch (t) {
    case DType::kF32: return to_double(static_cast<const float*>(base)[i]);
    case DType::kF16: return to_double(static_cast<const __half*>(base)[i]);
    case DType::kBF16: return to_double(static_cast<const __nv_bfloat16*>(base)[i]);
    case DType::kF64: return static_cast<const double*>(base)[i];
  }
  return 0.0;
}

inline void store(void* base, DType t, int64_t i, double x) {
  switch (t) {
    case DType::kF32: static_cast<float*>(base)[i] = from_double<float>(x); break;
    case DType::kF16: static_cast<__half*>(base)[i] = from_double<__half>(x); break;
    case DType::kBF16: static_cast<__nv_bfloat16*>(base)[i] = from_double<__nv_bfloat16>(x); break;
    case DType::kF64: static_cast<double*>(base)[i] = x; break;
  }
}

inline double silu(double x) { return x / (1.0 + std::exp(-x)); }

/// Read `n` contiguous elements of one token and head; SiLU applies to the value as loaded
/// (after widening), as a fused kernel would apply it in registers.
inline void load_vec(const void* base, DType t, int64_t offset, int n, bool apply_silu, double* out) {
  for (int i = 0; i < n; ++i) {
    const double x = load(base, t, offset + i);
    out[i] = apply_silu ? silu(x) : x;
  }
}

/// Offset of element (i, j) of a dk x dv state in the given layout.
inline int64_t state_index(StateLayout layout, int dk, int dv, int i, int j) {
  return layout == StateLayout::kKV ? int64_t{i} * dv + j : int64_t{j} * dk + i;
}

/// One head's fp32 state block <-> the fp64 working copy S[i * dv + j] (always kv order here).
inline void read_state(const float* src, StateLayout layout, int dk, int dv, double* S) {
  for (int i = 0; i < dk; ++i)
    for (int j = 0; j < dv; ++j) S[i * dv + j] = src[state_index(layout, dk, dv, i, j)];
}
inline void write_state(const double* S, StateLayout layout, int dk, int dv, float* dst) {
  for (int i = 0; i < dk; ++i)
    for (int j = 0; j < dv; ++j) dst[state_index(layout, dk, dv, i, j)] = static_cast<float>(S[i * dv + j]);
}

inline int64_t slot_stride(int64_t given, int H, int dk, int dv) { return given != 0 ? given : int64_t{H} * dk * dv; }

/// Where sequence b's checkpoints start: the caller's offsets, or the packed prefix sum
/// over all sequences (PrefillParams::checkpoint_offsets).
inline int64_t checkpoint_base(const lightning::PrefillParams& p, int32_t b) {
  if (p.checkpoint_offsets != nullptr) return p.checkpoint_offsets[b];
  int64_t rows = 0;
  for (int32_t j = 0; j < b; ++j) {
    rows += lightning::checkpoint_count(p.cu_seqlens[j + 1] - p.cu_seqlens[j], p.checkpoint_interval);
  }
  return rows;
}

/// Everything both prefill forms share: per sequence and head, the initial state, then
/// `run(...)` over the tokens, then the final state. `run` receives the fp64 state (updated in
/// place) and a callback that stores a checkpoint after a given number of tokens.
template <typename Run>
inline void prefill_driver(const lightning::PrefillParams& p, Run&& run) {
  const int H = p.num_heads, dk = p.dk, dv = p.dv;
  const int64_t head_elems = int64_t{dk} * dv;
  const int64_t pool_stride = slot_stride(p.state_stride_slot, H, dk, dv);
  std::vector<double> S(static_cast<size_t>(head_elems));
  for (int32_t b = 0; b < p.batch_size; ++b) {
    const int64_t row0 = p.cu_seqlens[b];
    const int64_t n = p.cu_seqlens[b + 1] - row0;
    const int32_t slot = p.slot_ids[b];
    const bool stateful = slot >= 0;
    const bool read_initial = stateful && (p.has_initial_state == nullptr || p.has_initial_state[b] != 0);
    const bool checkpointing = stateful && p.checkpoints != nullptr;
    const int64_t ckpt_base = checkpointing ? checkpoint_base(p, b) : 0;
    for (int h = 0; h < H; ++h) {
      float* slot_state = stateful ? p.state + slot * pool_stride + h * head_elems : nullptr;
      if (read_initial) {
        read_state(slot_state, p.state_layout, dk, dv, S.data());
      } else {
        for (double& x : S) x = 0.0;
      }
      // Checkpoint i (the state after (i+1)*c tokens) of this sequence, head h.
      auto checkpoint = [&](int64_t tokens_done) {
        if (!checkpointing || tokens_done % p.checkpoint_interval != 0) return;
        const int64_t row = ckpt_base + tokens_done / p.checkpoint_interval - 1;
        float* dst = p.checkpoints + row * (int64_t{H} * head_elems) + h * head_elems;
        write_state(S.data(), p.state_layout, dk, dv, dst);
      };
      run(row0, n, h, S.data(), checkpoint);
      if (stateful) write_state(S.data(), p.state_layout, dk, dv, slot_state);
    }
  }
}

inline Status check_prefill(const lightning::PrefillParams& p) {
  FULGUR_RETURN_IF_ERROR(lightning::validate(p));
  FULGUR_RETURN_IF_ERROR(lightning::validate_host_arrays(p));
  return Status::success();
}

}  // namespace lightning_detail

/// Ground truth: the per-token recurrence, token by token, in fp64.
inline Status lightning_prefill(const lightning::PrefillParams& p) {
  using namespace lightning_detail;
  FULGUR_RETURN_IF_ERROR(check_prefill(p));
  const int dk = p.dk, dv = p.dv;
  std::vector<double> q(dk), k(dk), v(dv);
  prefill_driver(p, [&](int64_t row0, int64_t n, int h, double* S, auto&& checkpoint) {
    const double lambda = std::exp(-static_cast<double>(p.slopes[h]));
    const double scale = p.scale;
    for (int64_t t = 0; t < n; ++t) {
      const int64_t row = row0 + t;
      load_vec(p.q, p.qkv_dtype, row * p.q_stride_token + h * p.q_stride_head, dk, p.silu_qkv, q.data());
      load_vec(p.k, p.qkv_dtype, row * p.k_stride_token + h * p.k_stride_head, dk, p.silu_qkv, k.data());
      load_vec(p.v, p.qkv_dtype, row * p.v_stride_token + h * p.v_stride_head, dv, p.silu_qkv, v.data());
      // S_t = lambda S_{t-1} + k_t^T v_t: decay first, then add the current token.
      for (int i = 0; i < dk; ++i)
        for (int j = 0; j < dv; ++j) S[i * dv + j] = lambda * S[i * dv + j] + k[i] * v[j];
      // o_t = scale * q_t S_t: the current token is included.
      const int64_t o_off = row * p.o_stride_token + h * p.o_stride_head;
      for (int j = 0; j < dv; ++j) {
        double acc = 0.0;
        for (int i = 0; i < dk; ++i) acc += q[i] * S[i * dv + j];
        store(p.o, p.o_dtype, o_off + j, scale * acc);
      }
      checkpoint(t + 1);
    }
  });
  return Status::success();
}

/// The block form the kernels implement (spec, "Block (chunked) form"), blocks of
/// `block_size` tokens counted from each sequence's first token in this call; the last block of
/// a sequence has m <= block_size tokens. With local indices t, j in [0, m):
///     O_intra[t] = sum_{j <= t} lambda^{t-j} (q_t . k_j) v_j
///     O_inter[t] = lambda^{t+1} q_t S_prev                   (q_decay: the current token's
///                                                              own decay step is included)
///     S_next     = lambda^m S_prev + sum_j lambda^{m-1-j} k_j^T v_j     (k_decay)
/// (Pairing k_decay with lambda^t instead, as vLLM's prefill kernel reads, makes the inter-block
/// term 1/lambda too large; tests/reference pins lambda^{t+1} against the recurrence.)
/// Powers are exp(-s * e) with e >= 0: never a positive exponent, so no overflow however long
/// the block or small lambda. Checkpoints fall on block ends, so checkpoint_interval must be a
/// multiple of block_size. block_size in [1, 256].
inline Status lightning_prefill_blocked(const lightning::PrefillParams& p, int block_size) {
  using namespace lightning_detail;
  FULGUR_CHECK_ARG(block_size >= 1 && block_size <= 256,
                   "lightning prefill (blocked reference): block_size must be in [1, 256]");
  FULGUR_RETURN_IF_ERROR(check_prefill(p));
  FULGUR_CHECK_ARG(p.checkpoints == nullptr || p.checkpoint_interval % block_size == 0,
                   "lightning prefill (blocked reference): checkpoint_interval must be a multiple "
                   "of block_size");
  const int dk = p.dk, dv = p.dv, B = block_size;
  std::vector<double> Q(size_t(B) * dk), K(size_t(B) * dk), V(size_t(B) * dv);
  std::vector<double> KV(size_t(dk) * dv), qk(B), decay(B + 1);
  prefill_driver(p, [&](int64_t row0, int64_t n, int h, double* S, auto&& checkpoint) {
    const double s = p.slopes[h];
    // decay[e] = lambda^e = exp(-s e), e in [0, B]: each power from one exp, not a product.
    for (int e = 0; e <= B; ++e) decay[e] = std::exp(-s * e);
    const double scale = p.scale;
    for (int64_t start = 0; start < n; start += B) {
      const int m = static_cast<int>(n - start < B ? n - start : B);
      for (int t = 0; t < m; ++t) {
        const int64_t row = row0 + start + t;
        load_vec(p.q, p.qkv_dtype, row * p.q_stride_token + h * p.q_stride_head, dk, p.silu_qkv, &Q[t * dk]);
        load_vec(p.k, p.qkv_dtype, row * p.k_stride_token + h * p.k_stride_head, dk, p.silu_qkv, &K[t * dk]);
        load_vec(p.v, p.qkv_dtype, row * p.v_stride_token + h * p.v_stride_head, dv, p.silu_qkv, &V[t * dv]);
      }
      for (int t = 0; t < m; ++t) {
        // Row t of (Q K^T) * diag, diag[t][j] = lambda^{t-j} for j <= t, 0 above the diagonal.
        for (int j = 0; j <= t; ++j) {
          double dot = 0.0;
          for (int i = 0; i < dk; ++i) dot += Q[t * dk + i] * K[j * dk + i];
          qk[j] = dot * decay[t - j];
        }
        const double q_decay = decay[t + 1];
        const int64_t o_off = (row0 + start + t) * p.o_stride_token + h * p.o_stride_head;
        for (int c = 0; c < dv; ++c) {
          double intra = 0.0;
          for (int j = 0; j <= t; ++j) intra += qk[j] * V[j * dv + c];
          double inter = 0.0;
          for (int i = 0; i < dk; ++i) inter += Q[t * dk + i] * S[i * dv + c];
          store(p.o, p.o_dtype, o_off + c, scale * (intra + q_decay * inter));
        }
      }
      // S_next = lambda^m S_prev + (K * k_decay)^T V, k_decay[j] = lambda^{m-1-j}.
      for (double& x : KV) x = 0.0;
      for (int j = 0; j < m; ++j) {
        const double kd = decay[m - 1 - j];
        for (int i = 0; i < dk; ++i) {
          const double kij = K[j * dk + i] * kd;
          for (int c = 0; c < dv; ++c) KV[i * dv + c] += kij * V[j * dv + c];
        }
      }
      const double block_decay = decay[m];
      for (int64_t e = 0; e < int64_t{dk} * dv; ++e) S[e] = block_decay * S[e] + KV[e];
      checkpoint(start + m);
    }
  });
  return Status::success();
}

/// num_steps decode tokens per batch row, in order: S = lambda S + k^T v, o = scale * q S for
/// each (token row b * num_steps + t), S written back in place after the last one and, when
/// step_states is set, after every token (rounded to fp32 like a checkpoint; the state stays
/// fp64 across the call's tokens, as in a prefill). Rows with slot -1 read and write nothing
/// (o and step_states included).
inline Status lightning_decode(const lightning::DecodeParams& p) {
  using namespace lightning_detail;
  FULGUR_RETURN_IF_ERROR(lightning::validate(p));
  FULGUR_RETURN_IF_ERROR(lightning::validate_host_arrays(p));
  const int H = p.num_heads, dk = p.dk, dv = p.dv;
  const int64_t head_elems = int64_t{dk} * dv;
  const int64_t pool_stride = slot_stride(p.state_stride_slot, H, dk, dv);
  const int64_t step_stride = slot_stride(p.step_state_stride, H, dk, dv);
  std::vector<double> q(dk), k(dk), v(dv), S(static_cast<size_t>(head_elems));
  for (int32_t b = 0; b < p.batch_size; ++b) {
    const int32_t slot = p.slot_ids[b];
    if (slot < 0) continue;
    for (int h = 0; h < H; ++h) {
      float* slot_state = p.state + slot * pool_stride + h * head_elems;
      read_state(slot_state, p.state_layout, dk, dv, S.data());
      const double lambda = std::exp(-static_cast<double>(p.slopes[h]));
      for (int32_t t = 0; t < p.num_steps; ++t) {
        const int64_t row = int64_t{b} * p.num_steps + t;
        load_vec(p.q, p.qkv_dtype, row * p.q_stride_token + h * p.q_stride_head, dk, p.silu_qkv, q.data());
        load_vec(p.k, p.qkv_dtype, row * p.k_stride_token + h * p.k_stride_head, dk, p.silu_qkv, k.data());
        load_vec(p.v, p.qkv_dtype, row * p.v_stride_token + h * p.v_stride_head, dv, p.silu_qkv, v.data());
        for (int i = 0; i < dk; ++i)
          for (int j = 0; j < dv; ++j) S[i * dv + j] = lambda * S[i * dv + j] + k[i] * v[j];
        const int64_t o_off = row * p.o_stride_token + h * p.o_stride_head;
        for (int j = 0; j < dv; ++j) {
          double acc = 0.0;
          for (int i = 0; i < dk; ++i) acc += q[i] * S[i * dv + j];
          store(p.o, p.o_dtype, o_off + j, p.scale * acc);
        }
        if (p.step_states != nullptr)
          write_state(S.data(), p.state_layout, dk, dv, p.step_states + row * step_stride + h * head_elems);
      }
      write_state(S.data(), p.state_layout, dk, dv, slot_state);
    }
  }
  return Status::success();
}

}  // namespace reference
FULGUR_NAMESPACE_END
