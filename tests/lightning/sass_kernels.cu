// SPDX-License-Identifier: Apache-2.0
// Every lightning kernel configuration as one nvcc translation unit for the SASS/resource check
// (check_sass.cmake): explicit instantiations of what the launchers dispatch to.
#include "fulgur/lightning.cuh"

namespace lt = fulgur::lightning;
namespace ltd = fulgur::lightning::detail;

#define FULGUR_LT_PREFILL(D, TERMS, T) \
  template __global__ void ltd::prefill_kernel<D, TERMS, T>(lt::PrefillParams, ltd::PrefillExtra);
FULGUR_LT_PREFILL(64, 1, __nv_bfloat16)
FULGUR_LT_PREFILL(64, 2, __nv_bfloat16)
FULGUR_LT_PREFILL(64, 2, __half)
FULGUR_LT_PREFILL(64, 2, float)
FULGUR_LT_PREFILL(128, 1, __nv_bfloat16)
FULGUR_LT_PREFILL(128, 2, __nv_bfloat16)
FULGUR_LT_PREFILL(128, 2, __half)
FULGUR_LT_PREFILL(128, 2, float)

#define FULGUR_LT_DECODE(D, VK, T) template __global__ void ltd::decode_kernel<D, VK, T>(lt::DecodeParams);
FULGUR_LT_DECODE(64, false, __nv_bfloat16)
FULGUR_LT_DECODE(64, true, __nv_bfloat16)
FULGUR_LT_DECODE(128, false, __nv_bfloat16)
FULGUR_LT_DECODE(128, true, __nv_bfloat16)
FULGUR_LT_DECODE(128, false, __half)
FULGUR_LT_DECODE(128, false, float)
FULGUR_LT_DECODE(128, true, float)
