// SPDX-License-Identifier: Apache-2.0
// Two translation units (this one and token_drop_link_other.cpp) include fulgur/token_drop.cuh
// and launch every token-drop kernel: the program must link (every kernel defined in a header is
// a template, so the copies merge) and both units must compute the same bits, which also agree
// with the fp64 reference pipeline (scores within the derived bound, selection and compaction
// exactly).
#include "token_drop_link.hpp"

using namespace td_link;

TEST_CASE("token_drop: two translation units that launch the kernels link and agree", "[token_drop]") {
  fulgur_test::Rng rng("token_drop link");
  FULGUR_INFO_SEED(rng);
  const Problem pb(rng);
  const Outs a = run_event<0>(pb);
  const Outs b = run_event_in_other_unit(pb);
  REQUIRE(a.fused_err == cudaSuccess);
  REQUIRE(b.fused_err == cudaSuccess);
  check_equal(a.separate, b.separate);
  check_equal(a.fused, b.fused);
  check_equal(a.separate, a.fused);
  check_against_reference_pipeline(pb.ev, pb.qk, pb.qs, a.separate);
}
