// SPDX-License-Identifier: Apache-2.0
// fulgur::token_drop::compact against reference::token_drop_compact, byte for byte: new
// cu_seqlens, row map, new spans, position ids (renumbered / original, 1 and 3 rows), and the
// gathers of row tensors of every element size and alignment (16-, 8-, 4-, 2- and 1-byte vector
// paths), more tensors than one launch takes, the row map kept in the workspace; prefix and
// suffix text untouched; no-image and empty sequences; keep = 0 and keep = N; the decode position
// formula against the schedule; bad input writes nothing.
#include <cstdint>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

#include "token_drop_test.hpp"

using namespace td_test;

namespace {

/// One row tensor of a compaction: random input bytes, poisoned outputs for the kernel and the
/// reference. `offset` bytes shift both base pointers (misaligned tensors).
struct Tensor {
  int64_t elem_bytes, width, in_stride, out_stride, offset;
  std::vector<unsigned char> in, ref_out;
  DeviceBuffer<unsigned char> d_in, d_out;
  Tensor(fulgur_test::Rng& rng, int64_t rows, int64_t out_rows, int64_t elem, int64_t w, int64_t in_pad,
         int64_t out_pad, int64_t off)
      : elem_bytes(elem), width(w), in_stride(w + in_pad), out_stride(w + out_pad), offset(off) {
    in.resize(static_cast<size_t>(rows * in_stride * elem + off));
    for (auto& b : in) b = static_cast<unsigned char>(rng.uniform_int(0, 255));
    ref_out.assign(static_cast<size_t>(out_rows * out_stride * elem + off), 0xEE);
    d_in = DeviceBuffer<unsigned char>(in);
    d_out = DeviceBuffer<unsigned char>(ref_out.size() > 0 ? ref_out.size() : 1);
    REQUIRE(d_out.fill_bytes(0xEE) == cudaSuccess);
  }
  RowTensor view(bool device) {
    RowTensor t;
    t.in = (device ? d_in.data() : in.data()) + offset;
    t.out = (device ? d_out.data() : ref_out.data()) + offset;
    t.width = width;
    t.elem_bytes = elem_bytes;
    t.in_row_stride = in_stride;
    t.out_row_stride = out_stride;
    return t;
  }
};

/// A compaction problem and the outputs of both implementations.
struct Problem {
  const Batch& bt;
  std::vector<int64_t> kept, cu_kept, positions;
  int64_t out_rows = 0;
  int P = 1;
  PositionMode mode = PositionMode::kRenumber;
  std::vector<std::unique_ptr<Tensor>> tensors;  // [0] is the hidden state
  DeviceBuffer<int64_t> d_kept, d_cu_kept, d_positions;

  Problem(fulgur_test::Rng& rng, const Batch& b, const std::vector<int64_t>& keeps, int rows, PositionMode m)
      : bt(b), P(rows), mode(m) {
    // A random kept subset per span, ascending.
    cu_kept.push_back(0);
    for (int64_t s = 0; s < bt.spans(); ++s) {
      std::vector<int64_t> idx(static_cast<size_t>(bt.length[s]));
      std::iota(idx.begin(), idx.end(), bt.start[s]);
      std::shuffle(idx.begin(), idx.end(), rng.gen);
      idx.resize(static_cast<size_t>(keeps[s]));
      std::sort(idx.begin(), idx.end());
      kept.insert(kept.end(), idx.begin(), idx.end());
      cu_kept.push_back(static_cast<int64_t>(kept.size()));
    }
    out_rows = bt.rows() - (bt.image_tokens - static_cast<int64_t>(kept.size()));
    // Original position ids (M-RoPE-like rows with distinct values; row stride rows + 7).
    positions.resize(static_cast<size_t>(P * (bt.rows() + 7)));
    for (size_t i = 0; i < positions.size(); ++i) positions[i] = static_cast<int64_t>(i * 3 + 11);
    d_kept = DeviceBuffer<int64_t>(kept.empty() ? std::vector<int64_t>{0} : kept);
    d_cu_kept = DeviceBuffer<int64_t>(cu_kept);
    d_positions = DeviceBuffer<int64_t>(positions);
  }
  int64_t num_kept() const { return static_cast<int64_t>(kept.size()); }
  CompactParams params(bool device) const {
    CompactParams p;
    p.layout = device ? bt.device() : bt.host();
    p.num_kept = num_kept();
    p.kept_index = device ? d_kept.data() : kept.data();
    p.cu_kept = device ? d_cu_kept.data() : cu_kept.data();
    p.out_rows = out_rows;
    p.position_mode = mode;
    p.position_rows = P;
    p.position_ids = device ? d_positions.data() : positions.data();
    p.position_ids_stride = bt.rows() + 7;
    p.position_ids_out_stride = out_rows + 5;
    return p;
  }
};

struct Outputs {
  std::vector<int64_t> cu, row_map, span_start, span_length, positions;
};

/// Runs the kernel (device) and the reference (host) on a problem; compares everything.
void run_and_compare(Problem& pr, bool with_row_map = true) {
  const Batch& bt = pr.bt;
  const size_t B1 = static_cast<size_t>(bt.batch() + 1), S = static_cast<size_t>(bt.spans() > 0 ? bt.spans() : 1);
  const size_t R = static_cast<size_t>(pr.out_rows > 0 ? pr.out_rows : 1);
  const size_t Pn = static_cast<size_t>(pr.P * (pr.out_rows + 5));
  // Reference.
  Outputs want{std::vector<int64_t>(B1, -1), std::vector<int64_t>(R, -1), std::vector<int64_t>(S, -1),
               std::vector<int64_t>(S, -1), std::vector<int64_t>(Pn, -1)};
  std::vector<RowTensor> host_extra, dev_extra;
  for (size_t i = 1; i < pr.tensors.size(); ++i) {
    host_extra.push_back(pr.tensors[i]->view(false));
    dev_extra.push_back(pr.tensors[i]->view(true));
  }
  CompactParams h = pr.params(false);
  h.new_cu_seqlens = want.cu.data();
  h.row_map = want.row_map.data();
  h.new_span_start = want.span_start.data();
  h.new_span_length = want.span_length.data();
  h.position_ids_out = want.positions.data();
  if (!pr.tensors.empty()) h.hidden = pr.tensors[0]->view(false);
  h.extra = host_extra.data();
  h.num_extra = static_cast<int>(host_extra.size());
  REQUIRE(ref::token_drop_compact(h).is_ok());

  // Kernel.
  DeviceBuffer<int64_t> cu = poisoned<int64_t>(B1), row_map = poisoned<int64_t>(R), ss = poisoned<int64_t>(S),
                        sl = poisoned<int64_t>(S), pos = poisoned<int64_t>(Pn);
  CompactParams p = pr.params(true);
  p.new_cu_seqlens = cu.data();
  p.row_map = with_row_map ? row_map.data() : nullptr;
  p.new_span_start = ss.data();
  p.new_span_length = sl.data();
  p.position_ids_out = pos.data();
  if (!pr.tensors.empty()) p.hidden = pr.tensors[0]->view(true);
  p.extra = dev_extra.data();
  p.num_extra = static_cast<int>(dev_extra.size());
  size_t bytes = 0;
  REQUIRE(td::compact(nullptr, bytes, p, nullptr) == cudaSuccess);
  DeviceBuffer<unsigned char> ws(bytes);
  REQUIRE(td::compact(ws.data(), bytes, p, nullptr) == cudaSuccess);

  CHECK(read(cu) == want.cu);
  if (with_row_map) CHECK(read(row_map) == want.row_map);
  CHECK(read(ss) == want.span_start);
  CHECK(read(sl) == want.span_length);
  CHECK(read(pos) == want.positions);
  for (size_t i = 0; i < pr.tensors.size(); ++i) {
    INFO("tensor " << i << " elem " << pr.tensors[i]->elem_bytes << " width " << pr.tensors[i]->width << " offset "
                   << pr.tensors[i]->offset);
    std::vector<unsigned char> got = read(pr.tensors[i]->d_out);
    got.resize(pr.tensors[i]->ref_out.size());
    CHECK(got == pr.tensors[i]->ref_out);
  }
  // Prefix and suffix text rows are copies of the input rows at the same sequence offsets.
  const std::vector<int64_t> map = want.row_map;
  for (int64_t b = 0; b < bt.batch(); ++b) {
    if (bt.cu_spans[b] == bt.cu_spans[b + 1]) {  // no image: passes through unchanged
      CHECK(want.cu[b + 1] - want.cu[b] == bt.seqlen(b));
      for (int64_t t = 0; t < bt.seqlen(b); ++t) CHECK(map[want.cu[b] + t] == bt.cu_seqlens[b] + t);
      continue;
    }
    const int64_t first = bt.start[bt.cu_spans[b]];
    for (int64_t t = 0; t < first; ++t) CHECK(map[want.cu[b] + t] == bt.cu_seqlens[b] + t);
    const int64_t last = bt.cu_spans[b + 1] - 1, end = bt.start[last] + bt.length[last];
    for (int64_t t = 0; t < bt.seqlen(b) - end; ++t) CHECK(map[want.cu[b + 1] - 1 - t] == bt.cu_seqlens[b + 1] - 1 - t);
  }
}

void add_tensors(fulgur_test::Rng& rng, Problem& pr, int64_t D) {
  const int64_t L = pr.bt.rows(), R = pr.out_rows;
  pr.tensors.push_back(std::make_unique<Tensor>(rng, L, R, 2, D, 0, 8, 0));   // hidden bf16: 16 B
  pr.tensors.push_back(std::make_unique<Tensor>(rng, L, R, 8, 1, 0, 0, 0));   // labels int64: 8 B
  pr.tensors.push_back(std::make_unique<Tensor>(rng, L, R, 1, 1, 0, 0, 0));   // mask bytes: 1 B
  pr.tensors.push_back(std::make_unique<Tensor>(rng, L, R, 4, 3, 1, 0, 0));   // fp32 x3: 4 B
  pr.tensors.push_back(std::make_unique<Tensor>(rng, L, R, 2, 5, 2, 1, 2));   // odd fp16 rows: 2 B
  pr.tensors.push_back(std::make_unique<Tensor>(rng, L, R, 2, 64, 0, 0, 4));  // K row, misaligned: 4 B
  pr.tensors.push_back(std::make_unique<Tensor>(rng, L, R, 4, 0, 0, 0, 0));   // empty rows: skipped
}

/// The bad-input tests' problem: two sequences with images, every kind of row tensor, poisoned
/// map outputs.
struct Rig {
  Batch bt;
  Problem pr;
  DeviceBuffer<int64_t> cu, map, pos;
  std::vector<RowTensor> extra;
  Rig(fulgur_test::Rng& rng, PositionMode mode)
      : bt({{100, {{10, 80}}}, {50, {{0, 20}}}}),
        pr(rng, bt, {40, 10}, 1, mode),
        cu(poisoned<int64_t>(3)),
        map(poisoned<int64_t>(150)),
        pos(poisoned<int64_t>(150)) {
    add_tensors(rng, pr, 32);
    for (size_t i = 1; i < pr.tensors.size(); ++i) extra.push_back(pr.tensors[i]->view(true));
  }
  CompactParams params() {
    CompactParams p = pr.params(true);
    p.new_cu_seqlens = cu.data();
    p.row_map = map.data();
    p.position_ids_out = pos.data();
    p.hidden = pr.tensors[0]->view(true);
    p.extra = extra.data();
    p.num_extra = static_cast<int>(extra.size());
    return p;
  }
  /// Outputs still poisoned, inputs and metadata as uploaded.
  void untouched() {
    for (int64_t x : read(cu)) CHECK(x == -1);
    for (int64_t x : read(map)) CHECK(x == -1);
    for (int64_t x : read(pos)) CHECK(x == -1);
    for (auto& t : pr.tensors) {
      for (unsigned char c : read(t->d_out)) CHECK(c == 0xEE);
      CHECK(read(t->d_in) == t->in);
    }
    CHECK(read(pr.d_kept) == pr.kept);
    CHECK(read(bt.d_cu_seqlens) == bt.cu_seqlens);
  }
};

/// compact() with a fresh workspace: the size query's error, or the launch's.
cudaError_t run_compact(const CompactParams& p) {
  size_t bytes = 0;
  cudaError_t e = td::compact(nullptr, bytes, p, nullptr);
  if (e != cudaSuccess) return e;
  DeviceBuffer<unsigned char> ws(bytes);
  return td::compact(ws.data(), bytes, p, nullptr);
}

/// can_implement's reason, empty when it accepts.
std::string refusal(const CompactParams& p) {
  const fulgur::Status s = td::can_implement(p);
  return s.ok() ? std::string() : std::string(s.reason());
}

}  // namespace

TEST_CASE("token_drop compact kernel: equals the reference, every output, every vector width",
          "[token_drop][compact]") {
  fulgur_test::Rng rng("token_drop compact kernel");
  FULGUR_INFO_SEED(rng);
  // LLaVA-like sequence, a two-image sequence, a text-only one, an empty sequence, an image at
  // position 0, an image at the very end (no suffix).
  const Batch bt(
      {{640, {{35, 576}}}, {300, {{10, 100}, {150, 120}}}, {50, {}}, {0, {}}, {70, {{0, 64}}}, {40, {{8, 32}}}});
  const int64_t D = kSlowBackend ? 64 : 512;
  for (PositionMode mode : {PositionMode::kRenumber, PositionMode::kKeepOriginal}) {
    for (int P : {1, 3}) {
      // The thread backend runs two of the four combinations (each code path once).
      if (kSlowBackend && (P == 3) != (mode == PositionMode::kKeepOriginal)) continue;
      DYNAMIC_SECTION("mode " << static_cast<int>(mode) << " rows " << P) {
        // Keep counts: half, a quarter, 3/8 of the others; keep = 0 and keep = N spans.
        Problem pr(rng, bt, {288, 0, 120, 16, 32}, P, mode);
        add_tensors(rng, pr, D);
        run_and_compare(pr);
        // Run to run: bitwise the same (outputs re-poisoned inside).
        for (auto& t : pr.tensors) REQUIRE(t->d_out.fill_bytes(0xEE) == cudaSuccess);
        for (auto& t : pr.tensors) std::fill(t->ref_out.begin(), t->ref_out.end(), 0xEE);
        run_and_compare(pr, /*with_row_map=*/false);  // the map in the workspace
      }
    }
  }
}

TEST_CASE("token_drop compact kernel: more row tensors than one launch takes (head-major K/V)",
          "[token_drop][compact]") {
  fulgur_test::Rng rng("token_drop compact kernel many tensors");
  FULGUR_INFO_SEED(rng);
  const Batch bt({{120, {{20, 80}}}, {90, {{5, 60}}}});
  Problem pr(rng, bt, {40, 30}, 1, PositionMode::kRenumber);
  // K and V of a layer computed before the drop, head-major [H, L, d] = 2 x 12 tensors of [L, d],
  // plus one misaligned tensor in the middle (a vector-width change splits the launch).
  for (int i = 0; i < 24; ++i) {
    pr.tensors.push_back(std::make_unique<Tensor>(rng, bt.rows(), pr.out_rows, 2, 32, 0, 0, i == 9 ? 2 : 0));
  }
  run_and_compare(pr);
}

TEST_CASE("token_drop compact kernel: the decode position formula after a drop", "[token_drop][compact]") {
  fulgur_test::Rng rng("token_drop compact kernel decode");
  FULGUR_INFO_SEED(rng);
  // PyramidDrop on LLaVA-1.5 (576 image tokens, 8/16/24 of 32 layers), stage 1 keeps 288: the
  // compacted sequence has L_1 = L - 288 rows (the schedule's stage length), renumbered positions
  // end at L_1 - 1, and the first decode token (original position L) continues at
  // decode_position = L - shift = L_1. In keep-original mode it keeps position L.
  const int64_t L = 35 + 576 + 29;
  const Batch bt({{L, {{35, 576}}}});
  const int64_t layers[] = {8, 16, 24};
  const double ratios[] = {0.5, 0.25, 0.125};
  td::ScheduleParams sp;
  sp.num_layers = 32;
  sp.num_drops = 3;
  sp.drop_layers = layers;
  sp.ratios = ratios;
  sp.seq_len = L;
  sp.num_spans = 1;
  const int64_t n = 576;
  sp.image_lengths = &n;
  td::StagePlan stages[4];
  REQUIRE(td::make_schedule(sp, stages).is_ok());
  for (PositionMode mode : {PositionMode::kRenumber, PositionMode::kKeepOriginal}) {
    Problem pr(rng, bt, {stages[1].image_tokens}, 1, mode);
    DeviceBuffer<int64_t> cu = poisoned<int64_t>(2), pos = poisoned<int64_t>(static_cast<size_t>(pr.out_rows + 5));
    CompactParams p = pr.params(true);
    p.new_cu_seqlens = cu.data();
    p.position_ids_out = pos.data();
    size_t bytes = 0;
    REQUIRE(td::compact(nullptr, bytes, p, nullptr) == cudaSuccess);
    DeviceBuffer<unsigned char> ws(bytes);
    REQUIRE(td::compact(ws.data(), bytes, p, nullptr) == cudaSuccess);
    const std::vector<int64_t> c = read(cu), q = read(pos);
    CHECK(c[1] == stages[1].seq_len);
    const int64_t next = td::decode_position(stages[1], mode, L);
    if (mode == PositionMode::kRenumber) {
      CHECK(q[static_cast<size_t>(c[1] - 1)] == stages[1].seq_len - 1);
      CHECK(next == c[1]);  // the decode token continues right after the compacted prompt
    } else {
      // The kept tokens keep their ids; the last prompt token is still at its original id, and the
      // decode token continues after it.
      CHECK(q[static_cast<size_t>(c[1] - 1)] == pr.positions[static_cast<size_t>(L - 1)]);
      CHECK(next == L);
    }
  }
}

TEST_CASE("token_drop compact kernel: empty batch, no spans", "[token_drop][compact]") {
  fulgur_test::Rng rng("token_drop compact kernel empty");
  FULGUR_INFO_SEED(rng);
  const Batch none({});
  CompactParams p;
  p.layout = none.device();
  size_t bytes = 0;
  REQUIRE(td::compact(nullptr, bytes, p, nullptr) == cudaSuccess);
  DeviceBuffer<unsigned char> ws(bytes);
  CHECK(td::compact(ws.data(), bytes, p, nullptr) == cudaSuccess);
  const Batch text({{30, {}}, {0, {}}, {12, {}}});  // text only: everything passes through
  Problem pr(rng, text, {}, 3, PositionMode::kKeepOriginal);
  add_tensors(rng, pr, 32);
  run_and_compare(pr);
}

TEST_CASE("token_drop compact kernel: bad input is rejected and writes nothing", "[token_drop][compact]") {
  fulgur_test::Rng rng("token_drop compact kernel bad input");
  FULGUR_INFO_SEED(rng);
  Rig rig(rng, PositionMode::kRenumber);
  const Batch& bt = rig.bt;
  Problem& pr = rig.pr;
  const std::vector<RowTensor>& extra = rig.extra;
  auto params = [&] { return rig.params(); };
  const auto run = run_compact;
  auto untouched = [&] { rig.untouched(); };
  CompactParams p = params();
  p.position_rows = 2;
  CHECK(run(p) == cudaErrorInvalidValue);
  p = params();
  p.out_rows = 99;
  CHECK(run(p) == cudaErrorInvalidValue);
  p = params();
  p.new_cu_seqlens = nullptr;
  CHECK(run(p) == cudaErrorInvalidValue);
  p = params();
  RowTensor aliased = p.hidden;
  aliased.out = const_cast<void*>(aliased.in);
  p.hidden = aliased;
  CHECK(run(p) == cudaErrorInvalidValue);
  untouched();
  // Partial overlap of the input and output rows: the same error as identical pointers, nothing
  // written (the input buffer, which the output would write into, keeps its bytes too).
  {
    // The hidden state's output starts at input row 1.
    Tensor& h = *pr.tensors[0];
    p = params();
    RowTensor shifted = p.hidden;
    shifted.out =
        const_cast<unsigned char*>(static_cast<const unsigned char*>(shifted.in)) + h.in_stride * h.elem_bytes;
    p.hidden = shifted;
    CHECK(run(p) == cudaErrorInvalidValue);
    CHECK(refusal(p).find("overlap") != std::string::npos);
    CHECK(read(h.d_in) == h.in);
    untouched();
  }
  {
    // An extra tensor (fp32 x3, input stride 4) in one buffer: the output's last element is the
    // input's first; then the output ends exactly where the input starts (accepted).
    const Tensor& t = *pr.tensors[3];
    const int64_t L = bt.rows(), R = pr.out_rows;
    const int64_t in_span = ((L - 1) * t.in_stride + t.width) * t.elem_bytes;
    const int64_t out_span = ((R - 1) * t.out_stride + t.width) * t.elem_bytes;
    std::vector<unsigned char> bytes(static_cast<size_t>(out_span + in_span), 0xEE);
    DeviceBuffer<unsigned char> buf(bytes);
    std::vector<RowTensor> ex = extra;
    RowTensor& x = ex[2];  // pr.tensors[3]
    REQUIRE(x.width == 3);
    x.out = buf.data();
    x.in = buf.data() + out_span - t.elem_bytes;
    p = params();
    p.extra = ex.data();
    CHECK(run(p) == cudaErrorInvalidValue);
    CHECK(refusal(p).find("overlap") != std::string::npos);
    CHECK(read(buf) == bytes);
    untouched();
    x.in = buf.data() + out_span;  // adjacent, disjoint
    CHECK(td::can_implement(p).ok());
    // The input ends inside the output: the output starts at the input's last element.
    x.in = buf.data();
    x.out = buf.data() + in_span - t.elem_bytes;
    CHECK(refusal(p).find("overlap") != std::string::npos);
    x.out = buf.data() + in_span;
    CHECK(td::can_implement(p).ok());
  }
  // Metadata only the device sees: a kept index outside its span, indices not ascending.
  for (int variant = 0; variant < 3; ++variant) {
    std::vector<int64_t> kept = pr.kept;
    if (variant == 0) kept[3] = 5;                  // before span 0 (starts at 10)
    if (variant == 1) std::swap(kept[0], kept[1]);  // not ascending
    if (variant == 2) kept[40] = 25;                // past span 1 (0..19)
    DeviceBuffer<int64_t> d(kept);
    p = params();
    p.kept_index = d.data();
    CompactParams h = pr.params(false);
    h.kept_index = kept.data();
    CHECK(td::validate(h).code() == cudaErrorInvalidValue);
    CHECK(run(p) == cudaSuccess);
    untouched();
  }
}

TEST_CASE("token_drop compact kernel: outputs overlapping another output or an input are refused",
          "[token_drop][compact]") {
  fulgur_test::Rng rng("token_drop compact overlaps");
  FULGUR_INFO_SEED(rng);
  Rig rig(rng, PositionMode::kKeepOriginal);
  const Batch& bt = rig.bt;
  Problem& pr = rig.pr;
  DeviceBuffer<int64_t>& cu = rig.cu;
  DeviceBuffer<int64_t>& map = rig.map;
  auto params = [&] { return rig.params(); };
  const auto run = run_compact;
  const auto reason = refusal;
  auto untouched = [&] { rig.untouched(); };
  REQUIRE(td::can_implement(params()).ok());
  std::vector<RowTensor> ex = rig.extra;
  CompactParams p = params();
  p.extra = ex.data();
  SECTION("a tensor's output rows inside another tensor's input") {
    ex[0].out = pr.tensors[0]->d_in.data() + 64;  // labels written over hidden's input
    CHECK(run(p) == cudaErrorInvalidValue);
    CHECK(reason(p).find("an output overlaps an input") != std::string::npos);
  }
  SECTION("two tensors' outputs in the same bytes") {
    ex[2].out = pr.tensors[0]->d_out.data() + 2;
    CHECK(run(p) == cudaErrorInvalidValue);
    CHECK(reason(p).find("two outputs overlap") != std::string::npos);
  }
  SECTION("new_cu_seqlens inside row_map") {
    p.new_cu_seqlens = map.data() + 50;
    CHECK(run(p) == cudaErrorInvalidValue);
    CHECK(reason(p).find("two outputs overlap") != std::string::npos);
  }
  SECTION("new_cu_seqlens written over the layout's cu_seqlens (in place)") {
    p.new_cu_seqlens = const_cast<int64_t*>(bt.d_cu_seqlens.data());
    CHECK(run(p) == cudaErrorInvalidValue);
    CHECK(reason(p).find("an output overlaps an input") != std::string::npos);
  }
  SECTION("position ids written over kept_index") {
    p.position_ids_out = const_cast<int64_t*>(pr.d_kept.data()) + 3;
    CHECK(run(p) == cudaErrorInvalidValue);
    CHECK(reason(p).find("an output overlaps an input") != std::string::npos);
  }
  SECTION("position ids written over the original position ids' rows") {
    p.position_ids_out = const_cast<int64_t*>(pr.d_positions.data()) + 1;
    CHECK(run(p) == cudaErrorInvalidValue);
    CHECK(reason(p).find("an output overlaps an input") != std::string::npos);
  }
  untouched();
}

TEST_CASE("token_drop compact kernel: row sets interleaved in one buffer without a shared byte are gathered",
          "[token_drop][compact]") {
  // K and V rows of one layer gathered into one [L', 2, W] buffer (two outputs, stride 2W, the
  // second starting W elements in), and a tensor whose output lives in its own input's row
  // padding (stride 2W both, output W elements in). No byte is shared, so the launch is accepted
  // and every row must land intact.
  fulgur_test::Rng rng("token_drop compact interleaved");
  FULGUR_INFO_SEED(rng);
  const Batch bt({{100, {{10, 80}}}, {50, {{0, 20}}}, {30, {}}});
  Problem pr(rng, bt, {40, 10}, 1, PositionMode::kRenumber);
  const int64_t L = bt.rows(), R = pr.out_rows, W = 24, e = 2;
  auto random_bytes = [&](size_t n) {
    std::vector<unsigned char> v(n);
    for (auto& b : v) b = static_cast<unsigned char>(rng.uniform_int(0, 255));
    return v;
  };
  const std::vector<unsigned char> k_in = random_bytes(static_cast<size_t>(L * W * e)),
                                   v_in = random_bytes(static_cast<size_t>(L * W * e));
  std::vector<unsigned char> padded(static_cast<size_t>(L * 2 * W * e), 0xEE);  // rows of W, then W padding
  const std::vector<unsigned char> h_in = random_bytes(static_cast<size_t>(L * W * e));
  for (int64_t r = 0; r < L; ++r) std::memcpy(&padded[r * 2 * W * e], &h_in[r * W * e], W * e);
  DeviceBuffer<unsigned char> d_k(k_in), d_v(v_in), d_kv(static_cast<size_t>(R * 2 * W * e)), d_h(padded);
  REQUIRE(d_kv.fill_bytes(0xEE) == cudaSuccess);
  DeviceBuffer<int64_t> cu = poisoned<int64_t>(4), map = poisoned<int64_t>(static_cast<size_t>(R));
  RowTensor k, v, h;
  k.in = d_k.data();
  k.out = d_kv.data();
  k.width = W;
  k.elem_bytes = e;
  k.in_row_stride = W;
  k.out_row_stride = 2 * W;
  v = k;
  v.in = d_v.data();
  v.out = d_kv.data() + W * e;
  h = k;
  h.in = d_h.data();
  h.out = d_h.data() + W * e;
  h.in_row_stride = 2 * W;
  std::vector<RowTensor> ex = {k, v};
  CompactParams p = pr.params(true);
  p.new_cu_seqlens = cu.data();
  p.row_map = map.data();
  p.hidden = h;
  p.extra = ex.data();
  p.num_extra = 2;
  REQUIRE(td::can_implement(p).ok());
  size_t bytes = 0;
  REQUIRE(td::compact(nullptr, bytes, p, nullptr) == cudaSuccess);
  DeviceBuffer<unsigned char> ws(bytes);
  REQUIRE(td::compact(ws.data(), bytes, p, nullptr) == cudaSuccess);
  // The row map from the reference; every output row is its input row, bit for bit.
  std::vector<int64_t> want_cu(4, -1), want_map(static_cast<size_t>(R), -1);
  CompactParams hp = pr.params(false);
  hp.new_cu_seqlens = want_cu.data();
  hp.row_map = want_map.data();
  REQUIRE(ref::token_drop_compact(hp).is_ok());
  CHECK(read(map) == want_map);
  const std::vector<unsigned char> kv = read(d_kv), hh = read(d_h);
  for (int64_t r = 0; r < R; ++r) {
    const int64_t src = want_map[static_cast<size_t>(r)];
    INFO("output row " << r << " from input row " << src);
    CHECK(std::memcmp(&kv[r * 2 * W * e], &k_in[src * W * e], W * e) == 0);
    CHECK(std::memcmp(&kv[r * 2 * W * e + W * e], &v_in[src * W * e], W * e) == 0);
    CHECK(std::memcmp(&hh[r * 2 * W * e + W * e], &h_in[src * W * e], W * e) == 0);
  }
  for (int64_t r = 0; r < L; ++r) CHECK(std::memcmp(&hh[r * 2 * W * e], &h_in[r * W * e], W * e) == 0);  // input intact
}
