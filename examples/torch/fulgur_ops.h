// SPDX-License-Identifier: Apache-2.0
// The framework-free half of fulgur's PyTorch extension: one function per operation that takes
// the operation's fulgur Params (filled by the caller from its tensors), a caller-provided
// workspace and a stream, checks the Params with can_implement() and launches. No torch include,
// no allocation, no synchronization: the torch bindings (fulgur_torch.cpp) own the tensors and
// allocate workspaces from PyTorch's caching allocator; another framework (JAX FFI, an engine's
// own op layer) can reuse these files unchanged.
//
// Why this split: fulgur's launchers are device code (.cuh, compiled by nvcc) while the bindings
// include torch's headers, which are slow to compile and need the host compiler torch was built
// with. Keeping the two in separate translation units lets nvcc see no torch header and the host
// compiler see only fulgur's host-only Params headers (params.hpp).
//
// Every function returns an OpStatus: code == cudaSuccess, or the launcher's error with a static,
// readable reason (can_implement()'s reason, or the CUDA runtime's error string).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "fulgur/lightning/params.hpp"
#include "fulgur/moe/params.hpp"
#include "fulgur/token_drop/params.hpp"

namespace fulgur_ops {

struct OpStatus {
  cudaError_t code = cudaSuccess;
  const char* reason = "ok";  // static string, never null
  bool ok() const { return code == cudaSuccess; }
};

// ---- lightning attention ------------------------------------------------------------------------
/// Bytes of workspace lightning_prefill needs (0 with a reason when the Params are refused).
OpStatus lightning_prefill_workspace(const fulgur::lightning::PrefillParams& p, size_t& bytes);
/// The workspace must hold lightning_prefill_workspace() bytes, 16-byte aligned, and stay alive
/// until the call's kernels finish on `stream` (the caching allocator's stream semantics do this).
OpStatus lightning_prefill(void* workspace, size_t workspace_bytes, const fulgur::lightning::PrefillParams& p,
                           cudaStream_t stream);
OpStatus lightning_decode(const fulgur::lightning::DecodeParams& p, cudaStream_t stream);

// ---- MoE routing and dispatch -------------------------------------------------------------------
OpStatus moe_route(const fulgur::moe::RouteParams& p, cudaStream_t stream);
OpStatus moe_permute_workspace(const fulgur::moe::PermuteParams& p, size_t& bytes);
OpStatus moe_permute(void* workspace, size_t workspace_bytes, const fulgur::moe::PermuteParams& p, cudaStream_t stream);
OpStatus moe_gather(const fulgur::moe::GatherParams& p, cudaStream_t stream);
OpStatus moe_combine(const fulgur::moe::CombineParams& p, cudaStream_t stream);

// ---- visual token dropping ----------------------------------------------------------------------
OpStatus token_drop_score_workspace(const fulgur::token_drop::ScoreParams& p, size_t& bytes);
OpStatus token_drop_score(void* workspace, size_t workspace_bytes, const fulgur::token_drop::ScoreParams& p,
                          cudaStream_t stream);
OpStatus token_drop_select(const fulgur::token_drop::SelectParams& p, cudaStream_t stream);
OpStatus token_drop_compact_workspace(const fulgur::token_drop::CompactParams& p, size_t& bytes);
OpStatus token_drop_compact(void* workspace, size_t workspace_bytes, const fulgur::token_drop::CompactParams& p,
                            cudaStream_t stream);

}  // namespace fulgur_ops
