// SPDX-License-Identifier: Apache-2.0
// Long-sequence drift of the prefill's fp32 state against the fp64 recurrence: one sequence of
// 65,536 tokens at MiniMax-Text-01's slowest decay (layer 78 of 80, head 63: slope 4.9e-5,
// lambda^64 = 0.9969, so a state entry lives about 320 blocks and the final state still holds
// the last ~20K tokens), checkpoints every 4,096 tokens, a random initial state, fp32 output.
//
// Bound, derived (docs/lightning.md, "Precision"): per block the state is decayed by lambda^64
// (applied as fp32 hi + lo, so its own error is ~2^-48) and accumulates 64 tokens through mma in
// fp32: rounding errors of about 2^-24 |S| with varying signs, which the decay forgets at rate
// 1 - lambda^64. Their random walk settles near 2^-24 * sqrt(#roundings per block / (1 -
// lambda^128)) = 6e-8 * sqrt(128 / 6.2e-3) ~ 1e-5 relative; the split operands add ~2^-16 per
// term with random signs over ~20K terms (< 1e-6). Bound 1e-4 for every checkpoint, the final
// state and every output, flat along the sequence: an error that grew with length (a one-sided
// decay error: 2^-24 per block becomes 2e-5 x (blocks so far) until it saturates) would show.
//
// Size: the issue asks for >= 64K tokens; under emulation one head of d = 64 (about 27 ms per
// block: ~30 s for the 1,024 blocks). The d = 128 kernel shares every line of the state path.
#include "lightning_test.hpp"

using namespace lt_test;

TEST_CASE("lightning prefill: fp32 state drift over 65,536 tokens", "[lightning]") {
  Rng rng("prefill drift");
  FULGUR_INFO_SEED(rng);
  PrefillCase c;
  c.lens = {light() ? 1024 : 65536};
  c.H = 1;
  c.d = 64;
  c.out = DType::kF32;
  c.slopes = {minimax_slopes(64, 78, /*spread=*/false)[63]};
  c.ckpt_interval = light() ? 256 : 4096;
  c.pad_rows = 0;
  const PrefillProblem pb(c, rng);
  const PrefillResult got = pb.run_kernel();
  const PrefillResult ref = pb.run_reference();
  const Worst w = compare(pb, got, ref, Tolerance{1e-4, 1e-4});
  // The drift along the sequence, for the log: checkpoint rel RMSE every interval.
  std::string trace;
  for (int64_t row = 0; row < pb.ckpt_rows - 1; ++row) {
    const double e = fulgur_test::rel_rmse(pb.ckpt_state(got.ckpt, row, 0), pb.ckpt_state(ref.ckpt, row, 0));
    trace += " " + std::to_string(e).substr(0, 8);
  }
  WARN("slope " << c.slopes[0] << ": worst rel RMSE o " << w.o << ", state " << w.state << "; checkpoints:" << trace);
}
