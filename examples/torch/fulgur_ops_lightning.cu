// SPDX-License-Identifier: Apache-2.0
// fulgur_ops: lightning attention prefill and decode (see fulgur_ops.h). Its own translation unit
// so that the prefill instantiations (the slowest part of the build) compile in parallel with the
// other families.
#include "fulgur/lightning.cuh"
#include "fulgur_ops_common.cuh"

namespace fulgur_ops {

namespace fl = fulgur::lightning;

OpStatus lightning_prefill_workspace(const fl::PrefillParams& p, size_t& bytes) {
  bytes = 0;
  const fulgur::Status s = fl::can_implement(p);
  if (!s) return detail::from_status(s);
  bytes = fl::prefill_workspace_bytes(p);
  return OpStatus{};
}

OpStatus lightning_prefill(void* workspace, size_t workspace_bytes, const fl::PrefillParams& p, cudaStream_t stream) {
  const fulgur::Status s = fl::can_implement(p);
  if (!s) return detail::from_status(s);
  if (workspace == nullptr || workspace_bytes < fl::prefill_workspace_bytes(p)) {
    return OpStatus{cudaErrorInvalidValue, "lightning prefill: workspace missing or smaller than its size query"};
  }
  return detail::from_launch(fl::prefill(workspace, workspace_bytes, p, stream));
}

OpStatus lightning_decode(const fl::DecodeParams& p, cudaStream_t stream) {
  const fulgur::Status s = fl::can_implement(p);
  if (!s) return detail::from_status(s);
  return detail::from_launch(fl::decode(p, stream));
}

}  // namespace fulgur_ops
