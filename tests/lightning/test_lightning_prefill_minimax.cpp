// SPDX-License-Identifier: Apache-2.0
// The prefill in MiniMax-Text-01's configuration: 64 heads of dim 128, the fused head-major
// projection output [T, H, 3, d] read in place through strides, SiLU fused into the loads,
// bf16 in and out, slopes of layer 78 of 80 (the slowest decays), a non-zero pool state.
// Against the fp64 recurrence; tolerances: lt_test::tolerance_for (lightning_test.hpp).
// Emulation: about 150 ms per block and head here (two-term inputs, d = 128), so two short
// sequences.
#include "lightning_test.hpp"

using namespace lt_test;

TEST_CASE("lightning prefill: MiniMax-Text-01 layer (H = 64, d = 128, fused qkv, SiLU)", "[lightning]") {
  Rng rng("prefill minimax layer");
  FULGUR_INFO_SEED(rng);
  PrefillCase c;
  c.lens = light() ? std::vector<int>{2} : std::vector<int>{1, 40};
  c.H = light() ? 4 : 64;
  c.d = 128;
  c.fused = true;
  c.silu = true;
  c.slopes = minimax_slopes(c.H, 78, /*spread=*/false);
  const PrefillProblem pb(c, rng);
  const PrefillResult got = pb.run_kernel();
  const PrefillResult ref = pb.run_reference();
  const Worst w = compare(pb, got, ref, tolerance_for(c.out));
  WARN("worst rel RMSE: o " << w.o << ", state " << w.state);
}
