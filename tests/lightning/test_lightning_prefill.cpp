// SPDX-License-Identifier: Apache-2.0
// The tensor-core prefill against the fp64 per-token recurrence (fulgur/reference/lightning.hpp):
// the lengths of the list (block edges 63/64/65, 255/256/257, 913, 4096), MiniMax slopes
// for layers 0, 40 and 78 of 80 with H = 8 and 64, varlen batches with empty and one-token
// sequences, both head dims. Inputs SiLU(randn) (positive-mean k and v, as MiniMax feeds the
// kernel) unless a case says otherwise; non-zero initial states from the pool.
// Tolerances: lt_test::tolerance_for (lightning_test.hpp, derived there).
//
// Emulation cost (Release, one core): about 27 ms per 64-token block and head at d = 64 and
// 95 ms at d = 128 (the emulated mma dominates), so d = 128 and H = 64 use fewer tokens.
#include "lightning_test.hpp"

using namespace lt_test;

namespace {

Worst check_case(const PrefillCase& c, const std::string& name) {
  Rng rng(name);
  FULGUR_INFO_SEED(rng);
  INFO(name);
  const PrefillProblem pb(c, rng);
  const PrefillResult got = pb.run_kernel();
  const PrefillResult ref = pb.run_reference();
  return compare(pb, got, ref, tolerance_for(c.out));
}

}  // namespace

TEST_CASE("lightning prefill: every length of the list in one varlen batch, d = 64", "[lightning]") {
  PrefillCase c;
  c.lens = light() ? std::vector<int>{1, 63, 65} : std::vector<int>{1, 31, 63, 64, 65, 255, 256, 257, 913, 4096};
  c.H = light() ? 1 : 2;
  c.d = 64;
  c.slopes = minimax_slopes(c.H, 78);  // slowest decay: the state carries over every block
  const Worst w = check_case(c, "prefill lengths d64");
  WARN("worst rel RMSE: o " << w.o << ", state " << w.state);
}

TEST_CASE("lightning prefill: block edges and a long sequence, d = 128", "[lightning]") {
  PrefillCase c;
  c.lens = light() ? std::vector<int>{65} : std::vector<int>{1, 31, 63, 64, 65, 257};
  c.H = 2;
  c.d = 128;
  c.slopes = minimax_slopes(c.H, 40);
  const Worst w = check_case(c, "prefill lengths d128");
  WARN("worst rel RMSE: o " << w.o << ", state " << w.state);
}

TEST_CASE("lightning prefill: MiniMax slopes, layers 0, 40, 78, H = 8", "[lightning]") {
  for (int layer : {0, 40, 78}) {
    PrefillCase c;
    c.lens = light() ? std::vector<int>{70} : std::vector<int>{0, 1, 130, 77};
    c.H = light() ? 2 : 8;
    c.d = 64;
    c.slopes = minimax_slopes(c.H, layer);
    INFO("layer " << layer);
    check_case(c, "prefill slopes H8 layer " + std::to_string(layer));
  }
}

TEST_CASE("lightning prefill: 64 heads, layers 0, 40 and 78, d = 64", "[lightning]") {
  // Every one of MiniMax-Text-01's 64 slopes in order (fastest 0.917 to slowest 0.0039 at layer
  // 0; times 0.49 at layer 40 and 0.0127 at layer 78), varlen with an empty and a one-token
  // sequence. The d = 128
  // version with the fused projection layout: test_lightning_prefill_minimax.
  for (int layer : {0, 40, 78}) {
    PrefillCase c;
    c.lens = light() ? std::vector<int>{3} : std::vector<int>{0, 1, 66};
    c.H = light() ? 4 : 64;
    c.d = 64;
    c.slopes = minimax_slopes(c.H, layer, /*spread=*/false);
    INFO("layer " << layer);
    check_case(c, "prefill H64 layer " + std::to_string(layer));
  }
}

TEST_CASE("lightning prefill: zero-mean inputs, zero initial state, scale 1/sqrt(d)", "[lightning]") {
  PrefillCase c;
  c.lens = light() ? std::vector<int>{20} : std::vector<int>{129, 5};
  c.H = 3;
  c.d = 64;
  c.zero_mean = true;  // randn: heavy cancellation in q.k and in the state
  c.init_scale = 0.0;
  c.scale = 0.125f;
  c.slopes = {0.9f, 0.05f, 0.f};  // includes slope 0 (lambda = 1: no decay at all)
  check_case(c, "prefill zero mean");
}
