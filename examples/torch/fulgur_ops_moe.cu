// SPDX-License-Identifier: Apache-2.0
// fulgur_ops: MoE routing, permutation, gather and combine (see fulgur_ops.h).
#include "fulgur/moe.cuh"
#include "fulgur_ops_common.cuh"

namespace fulgur_ops {

namespace fm = fulgur::moe;

OpStatus moe_route(const fm::RouteParams& p, cudaStream_t stream) {
  const fulgur::Status s = fm::can_implement(p);
  if (!s) return detail::from_status(s);
  return detail::from_launch(fm::route(p, stream));
}

OpStatus moe_permute_workspace(const fm::PermuteParams& p, size_t& bytes) {
  bytes = 0;
  const fulgur::Status s = fm::can_implement(p);
  if (!s) return detail::from_status(s);
  // The size query reads only the sizes in p; it may still fail (e.g. a scan size that does not fit).
  return detail::from_launch(fm::permute(nullptr, bytes, p, nullptr));
}

OpStatus moe_permute(void* workspace, size_t workspace_bytes, const fm::PermuteParams& p, cudaStream_t stream) {
  const fulgur::Status s = fm::can_implement(p);
  if (!s) return detail::from_status(s);
  if (workspace == nullptr) return OpStatus{cudaErrorInvalidValue, "permute: workspace is null"};
  size_t bytes = workspace_bytes;
  const cudaError_t e = fm::permute(workspace, bytes, p, stream);
  if (e == cudaErrorInvalidValue) {
    return OpStatus{e, "permute: workspace smaller than its size query"};  // can_implement passed
  }
  return detail::from_launch(e);
}

OpStatus moe_gather(const fm::GatherParams& p, cudaStream_t stream) {
  const fulgur::Status s = fm::can_implement(p);
  if (!s) return detail::from_status(s);
  return detail::from_launch(fm::gather(p, stream));
}

OpStatus moe_combine(const fm::CombineParams& p, cudaStream_t stream) {
  const fulgur::Status s = fm::can_implement(p);
  if (!s) return detail::from_status(s);
  return detail::from_launch(fm::combine(p, stream));
}

}  // namespace fulgur_ops
