// SPDX-License-Identifier: Apache-2.0
// One token-drop event (score -> select -> compact, or the fused path) on a batch, its poisoned
// device outputs, and the checks of test_fused and test_token_drop_link: bitwise equality of two
// runs and agreement with the fp64 reference pipeline.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "token_drop_test.hpp"

namespace td_test {

/// Everything one drop event writes, on the device, poisoned.
struct EventOut {
  DeviceBuffer<float> scores;
  DeviceBuffer<int64_t> kept, cu_kept, cu, row_map, span_start, span_length, positions;
  DeviceBuffer<unsigned char> hidden;
};

struct Event {
  const Batch& bt;
  KeepRule rule;
  double ratio;
  std::vector<int64_t> original;  // empty: the current lengths
  PositionMode mode;
  int P;
  int64_t num_kept = 0, out_rows = 0, D = 0;
  std::vector<int64_t> positions;
  std::vector<unsigned char> hidden;
  DeviceBuffer<int64_t> d_original, d_positions;
  DeviceBuffer<unsigned char> d_hidden;

  Event(fulgur_test::Rng& rng, const Batch& b, KeepRule r, double x, std::vector<int64_t> orig, PositionMode m,
        int rows, int64_t hidden_dim)
      : bt(b), rule(r), ratio(x), original(std::move(orig)), mode(m), P(rows), D(hidden_dim) {
    num_kept = total_keep(bt, rule, ratio, original.empty() ? nullptr : &original);
    out_rows = bt.rows() - (bt.image_tokens - num_kept);
    positions.resize(static_cast<size_t>(P * bt.rows()));
    for (size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<int64_t>(7 * i + 1);
    hidden.resize(static_cast<size_t>(bt.rows() * D * 2));
    for (auto& c : hidden) c = static_cast<unsigned char>(rng.uniform_int(0, 255));
    if (!original.empty()) d_original = DeviceBuffer<int64_t>(original);
    d_positions = DeviceBuffer<int64_t>(positions);
    d_hidden = DeviceBuffer<unsigned char>(hidden);
  }

  EventOut make_out() const {
    EventOut o;
    o.scores = poisoned<float>(static_cast<size_t>(std::max<int64_t>(bt.image_tokens, 1)));
    o.kept = poisoned<int64_t>(static_cast<size_t>(std::max<int64_t>(num_kept, 1)));
    o.cu_kept = poisoned<int64_t>(static_cast<size_t>(bt.spans() + 1));
    o.cu = poisoned<int64_t>(static_cast<size_t>(bt.batch() + 1));
    o.row_map = poisoned<int64_t>(static_cast<size_t>(std::max<int64_t>(out_rows, 1)));
    o.span_start = poisoned<int64_t>(static_cast<size_t>(std::max<int64_t>(bt.spans(), 1)));
    o.span_length = poisoned<int64_t>(static_cast<size_t>(std::max<int64_t>(bt.spans(), 1)));
    o.positions = poisoned<int64_t>(static_cast<size_t>(std::max<int64_t>(P * out_rows, 1)));
    o.hidden = poisoned<unsigned char>(static_cast<size_t>(std::max<int64_t>(out_rows * D * 2, 1)));
    return o;
  }

  template <typename T>
  void params(const QK<T>& qk, const Queries& qs, bool fp16, EventOut& o, ScoreParams& sp, SelectParams& sel,
              CompactParams& cp) const {
    sp = score_params(bt, qk, qs, true, 0.0f, fp16);
    sp.scores = o.scores.data();
    sel = SelectParams();
    sel.layout = bt.device();
    sel.scores = o.scores.data();
    sel.rule = rule;
    sel.ratio = ratio;
    sel.original_length = original.empty() ? nullptr : d_original.data();
    sel.num_kept = num_kept;
    sel.kept_index = o.kept.data();
    sel.cu_kept = o.cu_kept.data();
    cp = CompactParams();
    cp.layout = bt.device();
    cp.num_kept = num_kept;
    cp.kept_index = o.kept.data();
    cp.cu_kept = o.cu_kept.data();
    cp.out_rows = out_rows;
    cp.new_cu_seqlens = o.cu.data();
    cp.row_map = o.row_map.data();
    cp.new_span_start = o.span_start.data();
    cp.new_span_length = o.span_length.data();
    cp.position_mode = mode;
    cp.position_rows = P;
    cp.position_ids = d_positions.data();
    cp.position_ids_stride = bt.rows();
    cp.position_ids_out = o.positions.data();
    cp.position_ids_out_stride = out_rows;
    if (D > 0) {
      cp.hidden.in = d_hidden.data();
      cp.hidden.out = o.hidden.data();
      cp.hidden.width = D;
      cp.hidden.elem_bytes = 2;
      cp.hidden.in_row_stride = D;
      cp.hidden.out_row_stride = D;
    }
  }

  template <typename T>
  EventOut run_separate(const QK<T>& qk, const Queries& qs, bool fp16) const {
    EventOut o = make_out();
    ScoreParams sp;
    SelectParams sel;
    CompactParams cp;
    params(qk, qs, fp16, o, sp, sel, cp);
    REQUIRE(run_score(sp, o.scores) == cudaSuccess);
    REQUIRE(td::select(sel, nullptr) == cudaSuccess);
    size_t bytes = 0;
    REQUIRE(td::compact(nullptr, bytes, cp, nullptr) == cudaSuccess);
    DeviceBuffer<unsigned char> ws(bytes);
    REQUIRE(td::compact(ws.data(), bytes, cp, nullptr) == cudaSuccess);
    return o;
  }

  template <typename T>
  cudaError_t run_fused(const QK<T>& qk, const Queries& qs, bool fp16, EventOut& o) const {
    ScoreParams sp;
    SelectParams sel;
    CompactParams cp;
    params(qk, qs, fp16, o, sp, sel, cp);
    size_t bytes = 0;
    cudaError_t e = td::score_select_compact(nullptr, bytes, sp, sel, cp, nullptr);
    if (e != cudaSuccess) return e;
    DeviceBuffer<unsigned char> ws(bytes);
    return td::score_select_compact(ws.data(), bytes, sp, sel, cp, nullptr);
  }
};

inline void check_equal(const EventOut& a, const EventOut& b) {
  CHECK(bytes_equal(read(a.scores), read(b.scores)));
  CHECK(read(a.kept) == read(b.kept));
  CHECK(read(a.cu_kept) == read(b.cu_kept));
  CHECK(read(a.cu) == read(b.cu));
  CHECK(read(a.row_map) == read(b.row_map));
  CHECK(read(a.span_start) == read(b.span_start));
  CHECK(read(a.span_length) == read(b.span_length));
  CHECK(read(a.positions) == read(b.positions));
  CHECK(read(a.hidden) == read(b.hidden));
}

/// The fused outputs against the fp64 reference pipeline run on the fused scores (the selection
/// and compaction are exact functions of them) and the scores against the reference scores.
template <typename T>
void check_against_reference_pipeline(const Event& ev, const QK<T>& qk, const Queries& qs, const EventOut& o) {
  const std::vector<float> scores = read(o.scores);
  const std::vector<float> ref_scores = reference_scores(ev.bt, qk, qs);
  int64_t max_keys = 0;
  for (int64_t b = 0; b < ev.bt.batch(); ++b) max_keys = std::max(max_keys, ev.bt.seqlen(b));
  // The derived worst-case bound of a kernel score (token_drop_test.hpp, score_error_bound).
  const double bound = score_error_bound(qk, 1.0 / std::sqrt(static_cast<double>(qk.d)), max_keys);
  for (int64_t i = 0; i < ev.bt.image_tokens; ++i) {
    CHECK(std::fabs(static_cast<double>(scores[i]) - ref_scores[i]) <= bound * std::fabs(ref_scores[i]));
  }
  const SelectOut sel =
      reference_select(ev.bt, scores, ev.rule, ev.ratio, ev.original.empty() ? nullptr : &ev.original);
  std::vector<int64_t> kept = read(o.kept);
  kept.resize(static_cast<size_t>(ev.num_kept));
  CHECK(kept == sel.kept);
  CHECK(read(o.cu_kept) == sel.cu_kept);
  std::vector<int64_t> keeps;
  for (int64_t s = 0; s < ev.bt.spans(); ++s)
    keeps.push_back(td::keep_count(ev.original.empty() ? ev.bt.length[s] : ev.original[s], ev.rule, ev.ratio));
  check_selection_properties(ev.bt, scores, SelectOut{kept, read(o.cu_kept)}, keeps);
  // Compaction: the reference on the same kept set.
  std::vector<int64_t> cu(static_cast<size_t>(ev.bt.batch() + 1)), map(static_cast<size_t>(ev.out_rows));
  std::vector<unsigned char> hid(static_cast<size_t>(ev.out_rows * ev.D * 2));
  std::vector<int64_t> pos(static_cast<size_t>(ev.P * ev.out_rows));
  CompactParams h;
  h.layout = ev.bt.host();
  h.num_kept = ev.num_kept;
  h.kept_index = sel.kept.data();
  h.cu_kept = sel.cu_kept.data();
  h.out_rows = ev.out_rows;
  h.new_cu_seqlens = cu.data();
  h.row_map = map.data();
  h.position_mode = ev.mode;
  h.position_rows = ev.P;
  h.position_ids = ev.positions.data();
  h.position_ids_stride = ev.bt.rows();
  h.position_ids_out = pos.data();
  h.position_ids_out_stride = ev.out_rows;
  h.hidden.in = ev.hidden.data();
  h.hidden.out = hid.data();
  h.hidden.width = ev.D;
  h.hidden.elem_bytes = 2;
  h.hidden.in_row_stride = ev.D;
  h.hidden.out_row_stride = ev.D;
  REQUIRE(ref::token_drop_compact(h).is_ok());
  CHECK(read(o.cu) == cu);
  CHECK(read(o.row_map) == map);
  CHECK(read(o.positions) == pos);
  CHECK(read(o.hidden) == hid);
}


}  // namespace td_test
