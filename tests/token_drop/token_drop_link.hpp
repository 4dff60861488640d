// SPDX-License-Identifier: Apache-2.0
// Shared by the two translation units of test_token_drop_link: one drop event on a small
// LLaVA-like batch run through the separate calls (score, select, compact) and the fused path.
// run_event is a template on the calling unit's number, so each unit launches the kernels from
// its own copy of the code (the kernels themselves must merge at link time).
#pragma once

#include <utility>

#include "token_drop_event.hpp"

namespace td_link {

using namespace td_test;

/// The problem: two sequences with images (one at position 0) and a text-only one, H = 4, d = 64,
/// bf16 q/k, hidden rows of 128 bf16.
struct Problem {
  Batch bt{std::vector<Seq>{{20 + 96 + 9, {{20, 96}}}, {40, {}}, {50, {{0, 32}}}}};
  QK<__nv_bfloat16> qk;
  Queries qs;
  Event ev;
  explicit Problem(fulgur_test::Rng& rng)
      : qk(rng, 4, 4, 64, bt.batch(), bt.rows()),
        ev(rng, bt, KeepRule::kFloorKeepRatio, 0.5, {}, PositionMode::kRenumber, 1, 128) {}
};

struct Outs {
  EventOut separate, fused;
  cudaError_t fused_err = cudaSuccess;
};

template <int kUnit>
Outs run_event(const Problem& pb) {
  Outs o;
  o.separate = pb.ev.run_separate(pb.qk, pb.qs, false);
  o.fused = pb.ev.make_out();
  o.fused_err = pb.ev.run_fused(pb.qk, pb.qs, false, o.fused);
  return o;
}

Outs run_event_in_other_unit(const Problem& pb);

}  // namespace td_link
