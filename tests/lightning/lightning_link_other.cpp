// SPDX-License-Identifier: Apache-2.0
// The second translation unit of test_lightning_link: includes the public header and launches
// both operations, so the kernels are instantiated here as well as in test_lightning_link.cpp.
#include "lightning_test.hpp"

namespace lt_test {

/// A one-sequence prefill followed by a decode step, from this translation unit.
cudaError_t run_from_other_tu(const PrefillProblem& pb, std::vector<unsigned char>& o_bytes) {
  const PrefillResult r = pb.run_kernel();
  o_bytes = r.o;
  if (r.err != cudaSuccess) return r.err;
  Rng rng("link other tu decode");
  DecodeCase dc;
  dc.d = 64;
  const DecodeProblem dp(dc, rng);
  return dp.run_kernel().err;
}

}  // namespace lt_test
