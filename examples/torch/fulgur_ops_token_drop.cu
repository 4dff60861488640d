// SPDX-License-Identifier: Apache-2.0
// fulgur_ops: visual token dropping, score / select / compact (see fulgur_ops.h).
#include "fulgur/token_drop.cuh"
#include "fulgur_ops_common.cuh"

namespace fulgur_ops {

namespace td = fulgur::token_drop;

OpStatus token_drop_score_workspace(const td::ScoreParams& p, size_t& bytes) {
  bytes = 0;
  const fulgur::Status s = td::can_implement(p);
  if (!s) return detail::from_status(s);
  return detail::from_launch(td::score(nullptr, bytes, p, nullptr));
}

OpStatus token_drop_score(void* workspace, size_t workspace_bytes, const td::ScoreParams& p, cudaStream_t stream) {
  const fulgur::Status s = td::can_implement(p);
  if (!s) return detail::from_status(s);
  size_t bytes = workspace_bytes;
  const cudaError_t e = td::score(workspace, bytes, p, stream);
  if (e == cudaErrorInvalidValue) return OpStatus{e, "token_drop score: workspace missing, too small or misaligned"};
  return detail::from_launch(e);
}

OpStatus token_drop_select(const td::SelectParams& p, cudaStream_t stream) {
  const fulgur::Status s = td::can_implement(p);
  if (!s) return detail::from_status(s);
  return detail::from_launch(td::select(p, stream));
}

OpStatus token_drop_compact_workspace(const td::CompactParams& p, size_t& bytes) {
  bytes = 0;
  const fulgur::Status s = td::can_implement(p);
  if (!s) return detail::from_status(s);
  return detail::from_launch(td::compact(nullptr, bytes, p, nullptr));
}

OpStatus token_drop_compact(void* workspace, size_t workspace_bytes, const td::CompactParams& p, cudaStream_t stream) {
  const fulgur::Status s = td::can_implement(p);
  if (!s) return detail::from_status(s);
  size_t bytes = workspace_bytes;
  const cudaError_t e = td::compact(workspace, bytes, p, stream);
  if (e == cudaErrorInvalidValue) {
    return OpStatus{e, "token_drop compact: workspace missing, too small or misaligned"};
  }
  return detail::from_launch(e);
}

}  // namespace fulgur_ops
