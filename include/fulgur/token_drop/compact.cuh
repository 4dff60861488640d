// SPDX-License-Identifier: Apache-2.0
// fulgur::token_drop::compact: the order-preserving compaction of a packed batch after a drop.
// Per sequence: prefix text, the kept tokens of the first span, the text between spans, ...,
// suffix text (reference::token_drop_compact defines every output).
//
// Two kinds of launch:
//   map    : one block per sequence. It finds its output offset from the metadata alone (input
//            rows before it minus the image tokens dropped before it), writes new_cu_seqlens[b+1],
//            the new span starts and lengths, the row map (source row of every output row) and
//            the position ids (renumbered 0..L'_b-1, or the kept tokens' original ids, 1 or 3
//            rows). Block 0 also writes a verdict flag to the workspace: the gathers read it and
//            move nothing when the metadata check failed.
//   gather : grid (row tiles, tensors). A bit copy of whole rows through the map, with 16-byte
//            vectors when the tensor's pointers, strides and row size allow (else 8, 4, 2, 1
//            bytes); up to kMaxGatherTensors tensors of one vector width per launch, so the
//            hidden states, labels and a layer's K/V rows move in one or a few launches.
// The gather is the only real traffic: the kept rows of every tensor read once and written once
// (LLaVA-NeXT, D = 4096 bf16, 3K rows keeping 1/2 of 2,880 image tokens: 2 x 13 MB).
#pragma once

#include <cstdint>

#include "fulgur/detail/cuda.cuh"
#include "fulgur/detail/launch.cuh"
#include "fulgur/detail/status.hpp"
#include "fulgur/detail/workspace.hpp"
#include "fulgur/token_drop/common.cuh"
#include "fulgur/token_drop/params.hpp"

FULGUR_NAMESPACE_BEGIN
namespace token_drop {
namespace detail {

/// One block: the map of sequence b, whose output rows start at new_row0. The kept tokens of b's
/// spans are kept_index[first_kept ...], kept_of(s) of them for span s, span after span (the
/// compaction reads the counts from cu_kept; the fused kernel computes them, since cu_kept's
/// entry at b's first span belongs to another block there). row_map may be null.
template <typename KeptOf>
FULGUR_DEVICE void build_sequence_map(const CompactParams& p, int64_t b, int64_t new_row0, const int64_t* kept_index,
                                      int64_t first_kept, KeptOf kept_of, int64_t* row_map) {
  const int tid = static_cast<int>(threadIdx.x);
  const BatchLayout& l = p.layout;
  const int64_t row0 = l.cu_seqlens[b];
  const int64_t seqlen = l.cu_seqlens[b + 1] - row0;
  const int64_t s0 = l.num_spans > 0 ? l.cu_spans[b] : 0;
  const int64_t s1 = l.num_spans > 0 ? l.cu_spans[b + 1] : 0;
  const bool renumber = p.position_mode == PositionMode::kRenumber;
  // Segment s = the text before span s, then span s's kept tokens; segment s1 is the suffix. One
  // copy loop for all of them keeps the kernel small (ptxas spilled around three copies).
  int64_t dst = new_row0, t = 0, dropped = 0, k0 = first_kept;
  for (int64_t s = s0; s <= s1; ++s) {
    const bool suffix = s == s1;
    const int64_t start = suffix ? seqlen : l.span_start[s];
    const int64_t len = suffix ? 0 : l.span_length[s];
    const int64_t kept = suffix ? 0 : kept_of(s);
    const int64_t text = start - t;
    for (int64_t i = tid; i < text + kept; i += kThreads) {
      const int64_t src = row0 + (i < text ? t + i : kept_index[k0 + i - text]);
      const int64_t d = dst + i;
      if (row_map != nullptr) row_map[d] = src;
      if (p.position_ids_out != nullptr) {
        FULGUR_NO_UNROLL
        for (int r = 0; r < p.position_rows; ++r) {
          p.position_ids_out[r * p.position_ids_out_stride + d] =
              renumber ? d - new_row0 : p.position_ids[r * p.position_ids_stride + src];
        }
      }
    }
    if (!suffix && tid == 0) {
      if (p.new_span_start != nullptr) p.new_span_start[s] = start - dropped;
      if (p.new_span_length != nullptr) p.new_span_length[s] = kept;
    }
    dst += text + kept;
    k0 += kept;
    dropped += len - kept;
    t = start + len;
  }
}

/// Grid B: block b maps sequence b. `flag` (workspace) receives 1 when the metadata passed the
/// check, 0 otherwise.
template <int kBlockThreads>
FULGUR_KERNEL void __launch_bounds__(kBlockThreads, kMinBlocksPerSm)
    compact_map_kernel(CompactParams p, int64_t* row_map, int* flag) {
  static_assert(kBlockThreads == kThreads, "the token-drop block helpers assume kThreads");
  __shared__ CheckStorage check_storage;
  __shared__ typename BlockSum::TempStorage sum_storage;
  const BatchLayout& l = p.layout;
  CheckSpec spec;
  spec.compact = true;
  spec.kept_index = p.kept_index;
  spec.cu_kept = p.cu_kept;
  spec.compact_num_kept = p.num_kept;
  const bool ok = check_batch(l, spec, check_storage);
  const int64_t b = blockIdx.x;
  if (b == 0 && threadIdx.x == 0 && flag != nullptr) *flag = ok ? 1 : 0;
  if (!ok) return;

  const int64_t s0 = l.num_spans > 0 ? l.cu_spans[b] : 0;
  const int64_t s1 = l.num_spans > 0 ? l.cu_spans[b + 1] : 0;
  // Image tokens before this sequence, minus those kept, were dropped before its first row.
  const int64_t image_before = block_sum_prefix(l.span_length, s0, sum_storage);
  const int64_t kept_before = l.num_spans > 0 ? p.cu_kept[s0] : 0;
  const int64_t new_row0 = l.cu_seqlens[b] - (image_before - kept_before);
  if (threadIdx.x == 0) {
    int64_t image = 0;
    for (int64_t s = s0; s < s1; ++s) image += l.span_length[s];
    const int64_t kept = l.num_spans > 0 ? p.cu_kept[s1] - p.cu_kept[s0] : 0;
    if (b == 0) p.new_cu_seqlens[0] = 0;
    p.new_cu_seqlens[b + 1] = new_row0 + (l.cu_seqlens[b + 1] - l.cu_seqlens[b]) - image + kept;
  }
  const int64_t* cu_kept = p.cu_kept;
  build_sequence_map(
      p, b, new_row0, p.kept_index, kept_before, [cu_kept](int64_t s) { return cu_kept[s + 1] - cu_kept[s]; }, row_map);
}

/// The unsigned type of kBytes bytes (the gather's vector).
template <int kBytes>
struct VectorOf;
template <>
struct VectorOf<16> {
  using type = uint4;
};
template <>
struct VectorOf<8> {
  using type = uint2;
};
template <>
struct VectorOf<4> {
  using type = unsigned int;
};
template <>
struct VectorOf<2> {
  using type = unsigned short;
};
template <>
struct VectorOf<1> {
  using type = unsigned char;
};

struct GatherTensor {
  const unsigned char* in;
  unsigned char* out;
  int64_t in_stride;   // bytes between input rows
  int64_t out_stride;  // bytes between output rows
  int vectors;         // vectors per row
};
struct GatherBatch {
  GatherTensor tensor[kMaxGatherTensors];
  int rows_per_block;
};

/// Grid (ceil(out_rows / rows_per_block), tensors). Output row r of tensor y = input row
/// row_map[r], kVecBytes at a time; four independent vectors in flight per thread.
template <int kVecBytes>
FULGUR_KERNEL void __launch_bounds__(kThreads, kMinBlocksPerSm)
    gather_rows_kernel(GatherBatch batch, const int64_t* __restrict__ row_map, const int* flag, int64_t out_rows) {
  using Vec = typename VectorOf<kVecBytes>::type;
  if (*flag == 0) return;
  const GatherTensor t = batch.tensor[blockIdx.y];
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * batch.rows_per_block;
  const int rows = static_cast<int>(out_rows - r0 < batch.rows_per_block ? out_rows - r0 : batch.rows_per_block);
  const int total = rows * t.vectors;
  constexpr int kUnroll = 4;
  for (int base = static_cast<int>(threadIdx.x); base < total; base += kUnroll * kThreads) {
    Vec v[kUnroll];
    int64_t dst_off[kUnroll];
    FULGUR_UNROLL
    for (int u = 0; u < kUnroll; ++u) {
      const int idx = base + u * kThreads;
      if (idx < total) {
        const int r = idx / t.vectors, c = idx - r * t.vectors;
        const int64_t src = row_map[r0 + r];
        v[u] = *reinterpret_cast<const Vec*>(t.in + src * t.in_stride + static_cast<int64_t>(c) * kVecBytes);
        dst_off[u] = (r0 + r) * t.out_stride + static_cast<int64_t>(c) * kVecBytes;
      }
    }
    FULGUR_UNROLL
    for (int u = 0; u < kUnroll; ++u) {
      if (base + u * kThreads < total) *reinterpret_cast<Vec*>(t.out + dst_off[u]) = v[u];
    }
  }
}

/// The tensors a compaction gathers: hidden first, then the extras, skipping absent and empty ones.
template <typename F>
inline void for_each_gather_tensor(const CompactParams& p, F f) {
  if (p.hidden.in != nullptr && p.hidden.width > 0) f(p.hidden);
  for (int i = 0; i < p.num_extra; ++i) {
    if (p.extra[i].in != nullptr && p.extra[i].width > 0) f(p.extra[i]);
  }
}

inline int gather_vector_bytes(const RowTensor& t) {
  const uint64_t vals[] = {reinterpret_cast<uint64_t>(t.in), reinterpret_cast<uint64_t>(t.out),
                           static_cast<uint64_t>(t.width * t.elem_bytes),
                           static_cast<uint64_t>(t.in_row_stride * t.elem_bytes),
                           static_cast<uint64_t>(t.out_row_stride * t.elem_bytes)};
  return common_vector_bytes(vals, 5);
}

template <int kVecBytes>
cudaError_t launch_gather_batch(GatherBatch& batch, int count, int max_vectors, const int64_t* row_map, const int* flag,
                                int64_t out_rows, cudaStream_t stream) {
  int rows = kGatherVectorsPerBlock / (max_vectors > 0 ? max_vectors : 1);
  batch.rows_per_block = rows < 1 ? 1 : rows;
  const int64_t blocks = ceil_div(out_rows, batch.rows_per_block);
  return ::fulgur::detail::launch(gather_rows_kernel<kVecBytes>, dim3(static_cast<unsigned>(blocks), count),
                                  dim3(kThreads), 0, stream, batch, row_map, flag, out_rows);
}

/// Launches the gathers of every row tensor of p through row_map (flag: the map's verdict).
inline cudaError_t launch_gathers(const CompactParams& p, const int64_t* row_map, const int* flag,
                                  cudaStream_t stream) {
  if (p.out_rows == 0) return cudaSuccess;
  GatherBatch batch{};
  int count = 0, batch_vec = 0, max_vectors = 0;
  cudaError_t err = cudaSuccess;
  auto flush = [&]() {
    if (count == 0 || err != cudaSuccess) return;
    switch (batch_vec) {
      case 16: err = launch_gather_batch<16>(batch, count, max_vectors, row_map, flag, p.out_rows, stream); break;
      case 8: err = launch_gather_batch<8>(batch, count, max_vectors, row_map, flag, p.out_rows, stream); break;
      case 4: err = launch_gather_batch<4>(batch, count, max_vectors, row_map, flag, p.out_rows, stream); break;
      case 2: err = launch_gather_batch<2>(batch, count, max_vectors, row_map, flag, p.out_rows, stream); break;
      default: err = launch_gather_batch<1>(batch, count, max_vectors, row_map, flag, p.out_rows, stream); break;
    }
    count = 0;
    max_vectors = 0;
  };
  for_each_gather_tensor(p, [&](const RowTensor& t) {
    const int vec = gather_vector_bytes(t);
    if (count == kMaxGatherTensors || (count > 0 && vec != batch_vec)) flush();
    batch_vec = vec;
    GatherTensor& g = batch.tensor[count++];
    g.in = static_cast<const unsigned char*>(t.in);
    g.out = static_cast<unsigned char*>(t.out);
    g.in_stride = t.in_row_stride * t.elem_bytes;
    g.out_stride = t.out_row_stride * t.elem_bytes;
    g.vectors = static_cast<int>(t.width * t.elem_bytes / vec);
    if (g.vectors > max_vectors) max_vectors = g.vectors;
  });
  flush();
  return err;
}

inline bool needs_row_map_workspace(const CompactParams& p) {
  bool any = false;
  for_each_gather_tensor(p, [&](const RowTensor&) { any = true; });
  return any && p.row_map == nullptr && p.out_rows > 0;
}

/// Workspace of a compaction (also of the fused path): the verdict flag, and the row map when the
/// caller does not ask for it but a tensor must be gathered.
inline void carve_compact_workspace(::fulgur::detail::WorkspaceCarver& c, const CompactParams& p, int** flag,
                                    int64_t** row_map) {
  *flag = c.take<int>(1);
  *row_map = p.row_map;
  if (needs_row_map_workspace(p)) *row_map = c.take<int64_t>(static_cast<size_t>(p.out_rows));
}

}  // namespace detail

/// Pure host check of a compaction (reads no device memory).
inline Status can_implement(const CompactParams& p) {
  FULGUR_RETURN_IF_ERROR(validate_arguments(p));
  FULGUR_CHECK_ARG(p.layout.num_spans > 0 || p.layout.num_image_tokens == 0,
                   "token_drop compact: num_image_tokens must be 0 when there are no spans");
  FULGUR_CHECK_ARG(p.layout.batch <= INT32_MAX, "token_drop compact: more than 2^31 - 1 sequences");
  bool fits = true;
  detail::for_each_gather_tensor(p, [&](const RowTensor& t) {
    if (t.width * t.elem_bytes > INT32_MAX) fits = false;
  });
  FULGUR_CHECK_ARG(fits, "token_drop compact: a row tensor row of 2^31 bytes or more");
  return Status::success();
}

/// Compacts the batch (see the top of this file). CUB-style workspace: with workspace == nullptr
/// only workspace_bytes is set (256 bytes, plus 8 * out_rows when row_map is null and a tensor is
/// gathered). Bad arguments: cudaErrorInvalidValue, nothing launched. Metadata validate() would
/// reject (spans outside their sequence, kept indices outside their span or not ascending, a
/// cu_kept that does not match num_kept): nothing is written.
inline cudaError_t compact(void* workspace, size_t& workspace_bytes, const CompactParams& p, cudaStream_t stream = nullptr) {
  const Status st = can_implement(p);
  if (!st) return st.code();
  ::fulgur::detail::WorkspaceCarver sizing(nullptr);
  int* flag = nullptr;
  int64_t* row_map = nullptr;
  detail::carve_compact_workspace(sizing, p, &flag, &row_map);
  if (workspace == nullptr) {
    workspace_bytes = sizing.bytes();
    return cudaSuccess;
  }
  if (workspace_bytes < sizing.bytes() || reinterpret_cast<uintptr_t>(workspace) % 16 != 0)
    return cudaErrorInvalidValue;
  if (p.layout.batch == 0) return cudaSuccess;
  ::fulgur::detail::WorkspaceCarver carver(workspace);
  detail::carve_compact_workspace(carver, p, &flag, &row_map);
  cudaError_t e = ::fulgur::detail::launch(detail::compact_map_kernel<detail::kThreads>,
                                           dim3(static_cast<unsigned>(p.layout.batch)), dim3(detail::kThreads), 0,
                                           stream, p, row_map, flag);
  if (e != cudaSuccess) return e;
  return detail::launch_gathers(p, row_map, flag, stream);
}

}  // namespace token_drop
FULGUR_NAMESPACE_END
