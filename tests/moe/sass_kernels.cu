// SPDX-License-Identifier: Apache-2.0
// Instantiates every MoE kernel through its launcher, for the SASS / resource check
// (check_sass.cmake): compiled with nvcc -Xptxas -v for sm_80 and sm_90a, never run.
#include "fulgur/moe.cuh"

namespace fm = fulgur::moe;

cudaError_t instantiate_moe_kernels(const fm::RouteParams& r, const fm::PermuteParams& p, const fm::GatherParams& g,
                                    const fm::CombineParams& c, void* ws, size_t& bytes, cudaStream_t s) {
  cudaError_t e = fm::route(r, s);
  e = e == cudaSuccess ? fm::permute(ws, bytes, p, s) : e;
  e = e == cudaSuccess ? fm::gather(g, s) : e;
  e = e == cudaSuccess ? fm::combine(c, s) : e;
  e = e == cudaSuccess ? fm::route_permute(ws, bytes, r, p, s) : e;
  return e;
}
