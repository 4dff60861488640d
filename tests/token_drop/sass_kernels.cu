// SPDX-License-Identifier: Apache-2.0
// Instantiates every token-drop kernel (each launcher dispatches over all dtypes and vector
// widths) for the SASS/resource check of tests/token_drop/check_sass.cmake. Compiled only, never
// run.
#include "fulgur/token_drop.cuh"

namespace td = fulgur::token_drop;

cudaError_t fulgur_token_drop_sass_instantiate(void* ws, size_t& bytes, const td::ScoreParams& sp,
                                               const td::SelectParams& sel, const td::CompactParams& cp,
                                               cudaStream_t stream) {
  cudaError_t e = td::score(ws, bytes, sp, stream);
  if (e == cudaSuccess) e = td::select(sel, stream);
  if (e == cudaSuccess) e = td::compact(ws, bytes, cp, stream);
  if (e == cudaSuccess) e = td::score_select_compact(ws, bytes, sp, sel, cp, stream);
  return e;
}
