// SPDX-License-Identifier: Apache-2.0
// fulgur::token_drop::score_select_compact (one launch for score, select and the map, one block
// per sequence, then the gathers) against the separate score -> select -> compact calls: every
// output equal bit for bit (scores, kept indices, cu_kept, new cu_seqlens, row map, new spans,
// position ids, gathered rows), on LLaVA-like, GQA, fp16-compatibility, FastV, later-stage and
// strided fp32 problems; and against the fp64 reference pipeline; batch invariance; the
// conditions it refuses; bad metadata writes nothing.
#include <cstdint>
#include <cstring>
#include <vector>

#include "token_drop_event.hpp"

using namespace td_test;

TEST_CASE("token_drop fused path: LLaVA-1.5 batch, bit for bit the separate calls", "[token_drop][fused]") {
  fulgur_test::Rng rng("token_drop fused llava");
  FULGUR_INFO_SEED(rng);
  const int H = kSlowBackend ? 4 : 32, d = kSlowBackend ? 32 : 128;
  const int64_t N = kSlowBackend ? 48 : 576, D = kSlowBackend ? 64 : 1024;
  // Varied N, a text-only sequence, a two-image sequence, an image at 0, one right before the
  // query (the last token).
  // The thread backend (one OS thread per CUDA thread, for ThreadSanitizer) keeps three of them.
  const Batch bt(kSlowBackend ? std::vector<Seq>{{35 + N + 29, {{35, N}}}, {70, {}}, {N / 4 + 11, {{10, N / 4}}}}
                              : std::vector<Seq>{{35 + N + 29, {{35, N}}},
                                                 {70, {}},
                                                 {300, {{10, 100}, {150, 120}}},
                                                 {N / 2 + 3, {{0, N / 2}}},
                                                 {N / 4 + 11, {{10, N / 4}}}});
  QK<__nv_bfloat16> qk(rng, H, H, d, bt.batch(), bt.rows());
  const Queries qs;
  const Event ev(rng, bt, KeepRule::kFloorKeepRatio, 0.5, {}, PositionMode::kRenumber, 1, D);
  const EventOut sep = ev.run_separate(qk, qs, false);
  EventOut fused = ev.make_out();
  REQUIRE(ev.run_fused(qk, qs, false, fused) == cudaSuccess);
  check_equal(sep, fused);
  check_against_reference_pipeline(ev, qk, qs, fused);

  // Run to run and batch invariance: sequence 0 alone gives the same scores and kept set (not on
  // the thread backend, which looks for races).
  if (kSlowBackend) return;
  EventOut again = ev.make_out();
  REQUIRE(ev.run_fused(qk, qs, false, again) == cudaSuccess);
  check_equal(fused, again);
  const Batch one({{35 + N + 29, {{35, N}}}});
  const QK<__nv_bfloat16> qk1(qk, 0, 1, 0, one.rows());
  const Event ev1(rng, one, KeepRule::kFloorKeepRatio, 0.5, {}, PositionMode::kRenumber, 1, 0);
  EventOut alone = ev1.make_out();
  REQUIRE(ev1.run_fused(qk1, qs, false, alone) == cudaSuccess);
  const std::vector<float> s_all = read(fused.scores), s_one = read(alone.scores);
  CHECK(std::memcmp(s_all.data(), s_one.data(), static_cast<size_t>(N) * sizeof(float)) == 0);
  std::vector<int64_t> k_all = read(fused.kept), k_one = read(alone.kept);
  k_all.resize(static_cast<size_t>(N / 2));
  CHECK(k_all == k_one);
}

TEST_CASE("token_drop fused path: GQA, fp16 compatibility, FastV, keep-original 3-row positions",
          "[token_drop][fused]") {
  fulgur_test::Rng rng("token_drop fused gqa");
  FULGUR_INFO_SEED(rng);
  const int H = kSlowBackend ? 7 : 28, Hkv = kSlowBackend ? 1 : 4, d = kSlowBackend ? 32 : 128;
  const Batch bt({{200, {{20, 150}}}, {90, {{5, 40}, {50, 30}}}, {33, {}}});
  QK<__half> qk(rng, H, Hkv, d, bt.batch(), bt.rows());
  const Queries qs;
  for (bool fp16 : {false, true}) {
    if (kSlowBackend && !fp16) continue;  // one section on the thread backend
    DYNAMIC_SECTION("fp16 compatibility " << fp16) {
      const Event ev(rng, bt, KeepRule::kFastVRound, 0.75, {}, PositionMode::kKeepOriginal, 3, 256);
      const EventOut sep = ev.run_separate(qk, qs, fp16);
      EventOut fused = ev.make_out();
      REQUIRE(ev.run_fused(qk, qs, fp16, fused) == cudaSuccess);
      check_equal(sep, fused);
    }
  }
}

TEST_CASE("token_drop fused path: later stage (original N), strided fp32, explicit query positions",
          "[token_drop][fused]") {
  fulgur_test::Rng rng("token_drop fused stage");
  FULGUR_INFO_SEED(rng);
  // Stage 2 on spans that hold 288 and 60 tokens after stage 1: keep floor(N_orig / 4).
  const Batch bt({{35 + 288 + 30, {{35, 288}}}, {120, {{4, 60}}}});
  QK<float> qk(rng, 8, 2, 40, 2, bt.rows(), 3);  // padding 3: the scalar-load path
  const Queries qs({}, {35 + 288 + 5, 100});     // queries before the end of their sequences
  const Event ev(rng, bt, KeepRule::kFloorKeepRatio, 0.25, {576, 120}, PositionMode::kRenumber, 1, 40);
  const EventOut sep = ev.run_separate(qk, qs, false);
  EventOut fused = ev.make_out();
  REQUIRE(ev.run_fused(qk, qs, false, fused) == cudaSuccess);
  check_equal(sep, fused);
  check_against_reference_pipeline(ev, qk, qs, fused);
}

TEST_CASE("token_drop fused path: a batch of 16 random sequences", "[token_drop][fused]") {
  fulgur_test::Rng rng("token_drop fused batch 16");
  FULGUR_INFO_SEED(rng);
  // 16 sequences of 1 to 260 tokens with 0, 1 or 2 images of random length anywhere before the
  // last token (some of length 0): varied N per sequence, text-only sequences, images at 0.
  std::vector<Seq> seqs;
  const int batch = kSlowBackend ? 3 : 16;
  for (int b = 0; b < batch; ++b) {
    Seq s{rng.uniform_int(1, 260), {}};
    int64_t at = 0;
    const int64_t images = rng.uniform_int(0, 2);
    for (int64_t i = 0; i < images && at < s.len - 1; ++i) {
      const int64_t start = rng.uniform_int(at, s.len - 1);
      const int64_t len = rng.uniform_int(0, s.len - 1 - start);
      s.spans.push_back({start, len});
      at = start + len;
    }
    seqs.push_back(s);
  }
  const Batch bt(seqs);
  QK<__nv_bfloat16> qk(rng, 8, 2, 64, bt.batch(), bt.rows());
  const Queries qs;
  for (PositionMode mode : {PositionMode::kRenumber, PositionMode::kKeepOriginal}) {
    if (kSlowBackend && mode == PositionMode::kKeepOriginal) continue;  // one mode on the thread backend
    const Event ev(rng, bt, KeepRule::kFloorKeepRatio, 0.25, {}, mode, 3, 24);
    const EventOut sep = ev.run_separate(qk, qs, false);
    EventOut fused = ev.make_out();
    REQUIRE(ev.run_fused(qk, qs, false, fused) == cudaSuccess);
    check_equal(sep, fused);
    check_against_reference_pipeline(ev, qk, qs, fused);
  }
}

TEST_CASE("token_drop fused path: what it refuses, bad metadata writes nothing", "[token_drop][fused]") {
  fulgur_test::Rng rng("token_drop fused bad input");
  FULGUR_INFO_SEED(rng);
  Batch bt({{60, {{5, 40}}}, {30, {{2, 10}}}});
  QK<__nv_bfloat16> qk(rng, 4, 2, 32, 2, bt.rows());
  const Queries qs;
  const Event ev(rng, bt, KeepRule::kFloorKeepRatio, 0.5, {}, PositionMode::kRenumber, 1, 16);
  auto untouched = [&](const EventOut& o) {
    for (float x : read(o.scores)) CHECK(std::isnan(x));
    for (int64_t x : read(o.kept)) CHECK(x == -1);
    for (int64_t x : read(o.cu_kept)) CHECK(x == -1);
    for (int64_t x : read(o.cu)) CHECK(x == -1);
    for (int64_t x : read(o.row_map)) CHECK(x == -1);
    for (int64_t x : read(o.positions)) CHECK(x == -1);
    for (unsigned char c : read(o.hidden)) CHECK(c == 0xFF);
  };
  EventOut o = ev.make_out();
  ScoreParams sp;
  SelectParams sel;
  CompactParams cp;
  auto status = [&] {
    size_t bytes = 0;
    cudaError_t e = td::score_select_compact(nullptr, bytes, sp, sel, cp, nullptr);
    if (e != cudaSuccess) return e;
    DeviceBuffer<unsigned char> ws(bytes);
    return td::score_select_compact(ws.data(), bytes, sp, sel, cp, nullptr);
  };
  SECTION("several query rows per sequence: not supported") {
    const Queries multi({0, 1, 2}, {});
    ev.params(qk, multi, false, o, sp, sel, cp);
    CHECK(status() == cudaErrorNotSupported);
    CHECK(td::can_implement(sp, sel, cp).code() == cudaErrorNotSupported);
  }
  SECTION("params that do not describe one event") {
    ev.params(qk, qs, false, o, sp, sel, cp);
    DeviceBuffer<float> other(64);
    sel.scores = other.data();
    CHECK(status() == cudaErrorInvalidValue);
    ev.params(qk, qs, false, o, sp, sel, cp);
    cp.cu_kept = nullptr;
    CHECK(status() == cudaErrorInvalidValue);
    ev.params(qk, qs, false, o, sp, sel, cp);
    cp.layout.total_rows += 1;
    CHECK(status() == cudaErrorInvalidValue);
    ev.params(qk, qs, false, o, sp, sel, cp);
    sel.ratio = -0.5;
    CHECK(status() == cudaErrorInvalidValue);
  }
  SECTION("a query before the end of its image (device check)") {
    const Queries early({}, {59, 8});
    ev.params(qk, early, false, o, sp, sel, cp);
    CHECK(status() == cudaSuccess);
  }
  SECTION("a span outside its sequence (device check)") {
    bt.start[1] = 25;  // 25 + 10 > 30
    bt.upload();
    ev.params(qk, qs, false, o, sp, sel, cp);
    CHECK(status() == cudaSuccess);
  }
  untouched(o);
}

#if !FULGUR_EMULATING
TEST_CASE("token_drop launchers inside CUDA graph capture (GPU)", "[token_drop][fused][gpu]") {
  // The launchers never allocate, synchronize or read device memory, so a captured graph of
  // score -> select -> compact and of the fused path replays to the same outputs as direct calls.
  fulgur_test::Rng rng("token_drop graph capture");
  FULGUR_INFO_SEED(rng);
  const Batch bt({{35 + 576 + 29, {{35, 576}}}, {70, {}}, {300, {{10, 100}, {150, 120}}}});
  QK<__nv_bfloat16> qk(rng, 32, 8, 128, bt.batch(), bt.rows());
  const Queries qs;
  const Event ev(rng, bt, KeepRule::kFloorKeepRatio, 0.5, {}, PositionMode::kRenumber, 1, 512);
  const EventOut direct = ev.run_separate(qk, qs, false);

  EventOut sep = ev.make_out(), fused = ev.make_out();
  ScoreParams sp, fsp;
  SelectParams sel, fsel;
  CompactParams cp, fcp;
  ev.params(qk, qs, false, sep, sp, sel, cp);
  ev.params(qk, qs, false, fused, fsp, fsel, fcp);
  size_t score_bytes = 0, compact_bytes = 0, fused_bytes = 0;
  REQUIRE(td::score(nullptr, score_bytes, sp, nullptr) == cudaSuccess);
  REQUIRE(td::compact(nullptr, compact_bytes, cp, nullptr) == cudaSuccess);
  REQUIRE(td::score_select_compact(nullptr, fused_bytes, fsp, fsel, fcp, nullptr) == cudaSuccess);
  DeviceBuffer<unsigned char> ws1(score_bytes), ws2(compact_bytes), ws3(fused_bytes);
  cudaStream_t stream;
  REQUIRE(cudaStreamCreate(&stream) == cudaSuccess);
  cudaGraph_t graph;
  REQUIRE(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
  CHECK(td::score(ws1.data(), score_bytes, sp, stream) == cudaSuccess);
  CHECK(td::select(sel, stream) == cudaSuccess);
  CHECK(td::compact(ws2.data(), compact_bytes, cp, stream) == cudaSuccess);
  CHECK(td::score_select_compact(ws3.data(), fused_bytes, fsp, fsel, fcp, stream) == cudaSuccess);
  REQUIRE(cudaStreamEndCapture(stream, &graph) == cudaSuccess);
  cudaGraphExec_t exec;
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  REQUIRE(cudaGraphLaunch(exec, stream) == cudaSuccess);
  REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
  check_equal(direct, sep);
  check_equal(direct, fused);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}
#endif
