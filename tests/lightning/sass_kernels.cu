// SPDX-License-Identifier: Apache-2.0
// Every lightning kernel configuration as one nvcc translation unit for the SASS/resource check
// (check_sass.cmake): explicit instantiations of everything the launchers dispatch to (the
// launchers are templates, so including the header alone instantiates nothing).
#include "fulgur/lightning.cuh"

namespace lt = fulgur::lightning;
namespace ltd = fulgur::lightning::detail;

template __global__ void ltd::prefill_check_kernel<0>(lt::PrefillParams, int32_t*, int32_t*, int32_t*, int32_t*,
                                                      int64_t, int64_t);

#define FULGUR_LT_PREFILL(D, TERMS, T)                                                             \
  template __global__ void ltd::prefill_kernel<D, TERMS, T>(lt::PrefillParams, ltd::PrefillExtra); \
  template __global__ void ltd::prefill_segment_state_kernel<D, TERMS, T>(lt::PrefillParams, ltd::PrefillExtra);
FULGUR_LT_PREFILL(64, 1, __nv_bfloat16)
FULGUR_LT_PREFILL(64, 2, __nv_bfloat16)
FULGUR_LT_PREFILL(64, 2, __half)
FULGUR_LT_PREFILL(64, 2, float)
FULGUR_LT_PREFILL(128, 1, __nv_bfloat16)
FULGUR_LT_PREFILL(128, 2, __nv_bfloat16)
FULGUR_LT_PREFILL(128, 2, __half)
FULGUR_LT_PREFILL(128, 2, float)
template __global__ void ltd::prefill_scan_kernel<64>(lt::PrefillParams, ltd::PrefillExtra);
template __global__ void ltd::prefill_scan_kernel<128>(lt::PrefillParams, ltd::PrefillExtra);

#define FULGUR_LT_DECODE_MODE(D, T, MODE)                                                          \
  template __global__ void ltd::decode_kernel<D, false, T, ltd::DecodeMode::MODE>(lt::DecodeParams); \
  template __global__ void ltd::decode_kernel<D, true, T, ltd::DecodeMode::MODE>(lt::DecodeParams);
#define FULGUR_LT_DECODE(D, T)               \
  FULGUR_LT_DECODE_MODE(D, T, kOneToken)     \
  FULGUR_LT_DECODE_MODE(D, T, kStream)       \
  FULGUR_LT_DECODE_MODE(D, T, kSteps)
FULGUR_LT_DECODE(64, __nv_bfloat16)
FULGUR_LT_DECODE(64, __half)
FULGUR_LT_DECODE(64, float)
FULGUR_LT_DECODE(128, __nv_bfloat16)
FULGUR_LT_DECODE(128, __half)
FULGUR_LT_DECODE(128, float)
