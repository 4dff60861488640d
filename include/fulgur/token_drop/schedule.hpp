// SPDX-License-Identifier: Apache-2.0
// Host-side drop schedule of one sequence: which layers form each stage, how many image tokens
// and rows each stage holds, and the position a decode token takes in each stage.
//
// Stages (spec, "The method"): the drops happen before layers drop_layers[0] < drop_layers[1] <
// ... (PyramidDrop on LLaVA-1.5: 8, 16, 24 of 32; FastV: K = 2). Stage 0 runs layers
// [0, drop_layers[0]) on all N image tokens; stage s >= 1 runs [drop_layers[s-1], drop_layers[s])
// (the last stage ends at num_layers) on keep_s tokens, keep_s taken from the ORIGINAL N of each
// span with the stage's ratio (KeepRule). Then, per stage,
//   L_s        = L - (N - keep_s)                     rows of the prefill, and KV entries held
//   shift_s    = N - keep_s                           tokens dropped so far
//   decode pos = orig_pos - shift_s  (kRenumber)      positions were renumbered 0..L_s-1, so a new
//              = orig_pos            (kKeepOriginal)  token continues right after L_s - 1
// Decode re-ranks nothing: the kept set is fixed, only the positions shift.
#pragma once

#include <cstdint>

#include "fulgur/detail/config.hpp"
#include "fulgur/detail/status.hpp"
#include "fulgur/token_drop/params.hpp"

FULGUR_NAMESPACE_BEGIN
namespace token_drop {

struct ScheduleParams {
  int64_t num_layers = 0;  // decoder layers (>= 1), e.g. 32
  int64_t num_drops = 0;   // drop events (>= 0); the schedule has num_drops + 1 stages
  const int64_t* drop_layers = nullptr;  // [num_drops] host: first layer after each drop, strictly
                                         // ascending, in [0, num_layers)
  const double* ratios = nullptr;        // [num_drops] host: ratio of each drop (KeepRule), in
                                         // [0, 1]; stage 0 keeps everything
  KeepRule rule = KeepRule::kFloorKeepRatio;
  int64_t seq_len = 0;    // L: prompt rows of the sequence before any drop
  int64_t num_spans = 0;  // image spans of the sequence (0: no image, nothing changes)
  const int64_t* image_lengths = nullptr;  // [num_spans] host: ORIGINAL tokens N_i of each span;
                                           // each span is ranked and counted on its own
};

struct StagePlan {
  int64_t first_layer = 0;  // layers [first_layer, end_layer) run in this stage
  int64_t end_layer = 0;
  int64_t image_tokens = 0;    // keep_s = sum_i keep_count(N_i, rule, ratio_s); N at stage 0
  int64_t seq_len = 0;         // L_s = L - (N - keep_s)
  int64_t position_shift = 0;  // N - keep_s: decode position in kRenumber mode is orig - shift
};

/// Readable reasons for a bad schedule (reads the host arrays).
inline Status validate(const ScheduleParams& p) {
  FULGUR_CHECK_ARG(p.num_layers >= 1, "token_drop schedule: num_layers must be >= 1");
  FULGUR_CHECK_ARG(p.num_drops >= 0, "token_drop schedule: num_drops must be >= 0");
  FULGUR_CHECK_ARG(p.num_drops == 0 || (p.drop_layers && p.ratios),
                   "token_drop schedule: drop_layers or ratios is null");
  FULGUR_CHECK_ARG(p.rule == KeepRule::kFloorKeepRatio || p.rule == KeepRule::kFastVRound,
                   "token_drop schedule: unknown keep rule");
  FULGUR_CHECK_ARG(p.seq_len >= 0, "token_drop schedule: seq_len must be >= 0");
  FULGUR_CHECK_ARG(p.num_spans >= 0, "token_drop schedule: num_spans must be >= 0");
  FULGUR_CHECK_ARG(p.num_spans == 0 || p.image_lengths != nullptr,
                   "token_drop schedule: image_lengths is null");
  int64_t n = 0;
  for (int64_t i = 0; i < p.num_spans; ++i) {
    FULGUR_CHECK_ARG(p.image_lengths[i] >= 0, "token_drop schedule: image length must be >= 0");
    n += p.image_lengths[i];
  }
  FULGUR_CHECK_ARG(n <= p.seq_len, "token_drop schedule: more image tokens than seq_len");
  for (int64_t s = 0; s < p.num_drops; ++s) {
    FULGUR_CHECK_ARG(p.drop_layers[s] >= 0 && p.drop_layers[s] < p.num_layers,
                     "token_drop schedule: drop layer outside [0, num_layers)");
    FULGUR_CHECK_ARG(s == 0 || p.drop_layers[s] > p.drop_layers[s - 1],
                     "token_drop schedule: drop layers must be strictly ascending");
    FULGUR_CHECK_ARG(detail::ratio_ok(p.ratios[s]), "token_drop schedule: ratio outside [0, 1]");
    // Dropped tokens never come back: every span's count may only shrink from stage to stage.
    for (int64_t i = 0; i < p.num_spans; ++i) {
      const int64_t keep = keep_count(p.image_lengths[i], p.rule, p.ratios[s]);
      const int64_t prev =
          s == 0 ? p.image_lengths[i] : keep_count(p.image_lengths[i], p.rule, p.ratios[s - 1]);
      FULGUR_CHECK_ARG(keep <= prev,
                       "token_drop schedule: a stage keeps more image tokens than the previous "
                       "one (ratios must not grow)");
    }
  }
  return Status::success();
}

/// Fills stages[0 .. num_drops] (a host array of num_drops + 1 entries). Bad input: the reason,
/// and `stages` untouched.
inline Status make_schedule(const ScheduleParams& p, StagePlan* stages) {
  FULGUR_RETURN_IF_ERROR(validate(p));
  FULGUR_CHECK_ARG(stages != nullptr, "token_drop schedule: stages is null");
  int64_t n = 0;
  for (int64_t i = 0; i < p.num_spans; ++i) n += p.image_lengths[i];
  for (int64_t s = 0; s <= p.num_drops; ++s) {
    StagePlan st;
    st.first_layer = s == 0 ? 0 : p.drop_layers[s - 1];
    st.end_layer = s == p.num_drops ? p.num_layers : p.drop_layers[s];
    int64_t keep = n;
    if (s > 0) {
      keep = 0;
      for (int64_t i = 0; i < p.num_spans; ++i) {
        keep += keep_count(p.image_lengths[i], p.rule, p.ratios[s - 1]);
      }
    }
    st.image_tokens = keep;
    st.position_shift = n - keep;
    st.seq_len = p.seq_len - st.position_shift;
    stages[s] = st;
  }
  return Status::success();
}

/// The stage that runs `layer` (stages as filled by make_schedule); -1 when no stage does.
inline int64_t stage_of_layer(const StagePlan* stages, int64_t num_stages, int64_t layer) {
  for (int64_t s = 0; s < num_stages; ++s) {
    if (layer >= stages[s].first_layer && layer < stages[s].end_layer) return s;
  }
  return -1;
}

/// Position id a token at original position `orig_pos` (>= L for decode tokens) takes in a
/// stage: shifted by the dropped count in kRenumber mode, unchanged in kKeepOriginal mode.
inline int64_t decode_position(const StagePlan& stage, PositionMode mode, int64_t orig_pos) {
  return mode == PositionMode::kRenumber ? orig_pos - stage.position_shift : orig_pos;
}

}  // namespace token_drop
FULGUR_NAMESPACE_END
