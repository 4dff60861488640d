// SPDX-License-Identifier: Apache-2.0
// Two translation units (this one and lightning_link_other.cpp) include fulgur/lightning.cuh and
// call prefill and decode: the program must link (every kernel defined in a header is a template,
// so the copies merge) and both copies must compute the same bits.
#include "lightning_test.hpp"

namespace lt_test {
cudaError_t run_from_other_tu(const PrefillProblem& pb, std::vector<unsigned char>& o_bytes);
}

using namespace lt_test;

TEST_CASE("lightning: two translation units that launch the kernels link and agree", "[lightning]") {
  Rng rng("link");
  PrefillCase c;
  c.lens = {70, 3};
  const PrefillProblem pb(c, rng);
  const PrefillResult here = pb.run_kernel();
  REQUIRE(here.err == cudaSuccess);
  std::vector<unsigned char> there;
  REQUIRE(run_from_other_tu(pb, there) == cudaSuccess);
  CHECK(here.o == there);
  Rng rng2("link decode");
  DecodeCase dc;
  dc.d = 64;
  const DecodeProblem dp(dc, rng2);
  CHECK(dp.run_kernel().err == cudaSuccess);
}
