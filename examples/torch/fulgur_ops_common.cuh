// SPDX-License-Identifier: Apache-2.0
// Shared by the fulgur_ops_*.cu translation units: turning a Status or a launcher's cudaError_t
// into an OpStatus with a readable reason.
#pragma once

#include <cuda_runtime_api.h>

#include "fulgur_ops.h"

namespace fulgur_ops {
namespace detail {

inline OpStatus from_status(const fulgur::Status& s) { return OpStatus{s.code(), s.reason()}; }

/// After can_implement() passed, a launcher can still fail in the CUDA runtime (no device, a
/// kernel image missing for this GPU's architecture, a sticky error from an earlier launch).
inline OpStatus from_launch(cudaError_t e) {
  if (e == cudaSuccess) return OpStatus{};
  return OpStatus{e, cudaGetErrorString(e)};
}

}  // namespace detail
}  // namespace fulgur_ops
