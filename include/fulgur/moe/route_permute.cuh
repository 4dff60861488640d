// SPDX-License-Identifier: Apache-2.0
// fulgur::moe::route_permute: route() followed by permute() on its ids, in ONE launch for decode
// batches (T*k <= kPermuteChunk = 4096): a single 256-thread block routes every token (the same
// per-token device code as route(), a logical warp per token, 256 / width tokens per step), then,
// after a barrier, permutes the ids it has just written (the same code as permute()'s single-block
// path). Expert counts come from the permutation's offsets, so no zeroing launch and no atomics.
// Larger batches (or a grouped policy whose per-warp key buffers do not fit the shared memory the
// permutation leaves free) run route() then permute(): the outputs are the same bits either way
// (tested), so callers need not care which ran.
//
// Saves one launch (and, with expert counts, two) on the decode path, where the spec notes that
// launch overhead dominates.
#pragma once

#include <cstdint>

#include "fulgur/detail/cuda.cuh"
#include "fulgur/detail/dispatch.hpp"
#include "fulgur/detail/launch.cuh"
#include "fulgur/detail/status.hpp"
#include "fulgur/moe/params.hpp"
#include "fulgur/moe/permute.cuh"
#include "fulgur/moe/route.cuh"

FULGUR_NAMESPACE_BEGIN
namespace moe {
namespace detail {

/// Tokens routed per step of the fused kernel for a routing capacity.
FULGUR_HOST_DEVICE constexpr int fused_tokens_per_step(int capacity) { return kPermuteThreads / route_width(capacity); }

/// True when the fused kernel runs these parameters: one block's worth of rows, and the group
/// stage's key buffers (one per token of a step) fit the permutation's shared scratch.
inline bool fused_route_permute_fits(const RouteParams& r) {
  if (r.num_tokens * r.policy.top_k > kPermuteChunk) return false;
  if (r.policy.n_group <= 1) return true;
  const int capacity = route_capacity(r.policy.num_experts);
  const size_t need = static_cast<size_t>(fused_tokens_per_step(capacity)) * r.policy.num_experts * sizeof(float);
  return need <= sizeof(PermuteSmem::u);
}

template <typename TLogit, int kCapacity>
FULGUR_KERNEL void __launch_bounds__(kPermuteThreads, 1) route_permute_kernel(const RouteParams r, const PermuteParams p) {
  __shared__ PermuteSmem smem;
  constexpr int kWidth = route_width(kCapacity);
  constexpr int kPerStep = fused_tokens_per_step(kCapacity);
  const int slot = static_cast<int>(threadIdx.x) / kWidth;
  // The group stage's key buffers live in the permutation's scratch, unused until the sort.
  float* group_keys = reinterpret_cast<float*>(&smem.u) + static_cast<int64_t>(slot) * r.policy.num_experts;
  const int64_t steps = (r.num_tokens + kPerStep - 1) / kPerStep;  // uniform over the block
  for (int64_t s = 0; s < steps; ++s) route_token<TLogit, kCapacity>(r, s * kPerStep + slot, group_keys, false);
  __syncthreads();  // every id is written (and visible to the block) before the sort reads them
  permute_single_block(p, smem);
  if (r.expert_counts != nullptr) {
    for (int e = static_cast<int>(threadIdx.x); e < r.policy.num_experts; e += kPermuteThreads)
      r.expert_counts[e] = smem.off[e + 1] - smem.off[e];
  }
}

inline Status route_permute_shapes_match(const RouteParams& r, const PermuteParams& p) {
  FULGUR_CHECK_ARG(p.num_tokens == r.num_tokens && p.top_k == r.policy.top_k && p.num_experts == r.policy.num_experts,
                   "route_permute: permute's T, k, E must equal route's");
  return Status::success();
}

/// The checks of can_implement(r, p) that read no pointer, which the workspace-size query runs:
/// the routing policy and route's sizes, dtypes and limits (the same functions as the launch,
/// so the same codes: invalid, or not_supported for E > 1024 and the like), permute's sizes,
/// and the T, k, E match.
inline Status route_permute_sizes_ok(const RouteParams& r, const PermuteParams& p) {
  FULGUR_RETURN_IF_ERROR(validate_route_sizes(r));
  FULGUR_RETURN_IF_ERROR(route_supported(r));
  FULGUR_RETURN_IF_ERROR(permute_sizes_ok(p));
  FULGUR_RETURN_IF_ERROR(route_permute_shapes_match(r, p));
  return Status::success();
}

}  // namespace detail

/// Whether route_permute() runs these parameters (host only): can_implement of both operations,
/// and p must permute exactly the ids r writes (same pointer, T, k, E).
inline Status can_implement(const RouteParams& r, const PermuteParams& p) {
  FULGUR_RETURN_IF_ERROR(can_implement(r));
  FULGUR_RETURN_IF_ERROR(can_implement(p));
  FULGUR_RETURN_IF_ERROR(detail::route_permute_shapes_match(r, p));
  FULGUR_CHECK_ARG(r.num_tokens == 0 || p.topk_ids == r.topk_ids,
                   "route_permute: permute must read the topk_ids route writes");
  return Status::success();
}

/// route(r) then permute(p) on the ids it writes, fused into one launch when T*k <= 4096 (see
/// the header comment); identical outputs either way. CUB style for the permutation's workspace:
/// a null workspace stores the bytes needed in workspace_bytes and returns. The size query reads
/// no pointer, but runs the launch's own checks of everything else it reads: the routing policy,
/// route's T, dtypes, stride and limits, permute's sizes and the T, k, E match
/// (detail::route_permute_sizes_ok), so a bad policy gets the launch's code there too, with
/// workspace_bytes untouched. Pointers, and the views they switch on (bias, tile-padded and masked
/// outputs), are checked at the launch. No allocation, no synchronization; bad input returns the
/// documented error and writes nothing.
inline cudaError_t route_permute(void* workspace, size_t& workspace_bytes, const RouteParams& r, const PermuteParams& p,
                                 cudaStream_t stream = nullptr) {
  if (workspace == nullptr) {
    const Status s = detail::route_permute_sizes_ok(r, p);
    if (!s) return s.code();
  }
  const bool fused = detail::fused_route_permute_fits(r) && r.num_tokens == p.num_tokens && r.policy.top_k == p.top_k &&
                     detail::route_capacity(r.policy.num_experts) != 0;
  if (workspace == nullptr) {
    if (fused) {
      workspace_bytes = ::fulgur::detail::WorkspaceCarver::kAlignment;
      return cudaSuccess;
    }
    return permute(nullptr, workspace_bytes, p, stream);
  }
  const Status s = can_implement(r, p);
  if (!s) return s.code();
  if (reinterpret_cast<uintptr_t>(workspace) % 16 != 0) return cudaErrorInvalidValue;
  if (!fused) {
    size_t need = 0;
    cudaError_t e = permute(nullptr, need, p, stream);
    if (e != cudaSuccess) return e;
    if (workspace_bytes < need) return cudaErrorInvalidValue;
    e = route(r, stream);
    if (e != cudaSuccess) return e;
    return permute(workspace, workspace_bytes, p, stream);
  }
  if (workspace_bytes < ::fulgur::detail::WorkspaceCarver::kAlignment) return cudaErrorInvalidValue;
  const int capacity = detail::route_capacity(r.policy.num_experts);
  return FULGUR_DISPATCH_DTYPE(r.logits_dtype, TLogit, {
    return FULGUR_DISPATCH_VALUE(int, capacity, kCapacity, (FULGUR_MOE_ROUTE_CAPACITIES), {
      if constexpr (detail::route_capacity_ok(kCapacity)) {
        return ::fulgur::detail::launch(detail::route_permute_kernel<TLogit, kCapacity>, dim3(1),
                                        dim3(detail::kPermuteThreads), 0, stream, r, p);
      } else {
        return cudaErrorNotSupported;
      }
    });
  });
}

}  // namespace moe
FULGUR_NAMESPACE_END
