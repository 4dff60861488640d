// SPDX-License-Identifier: Apache-2.0
// The sequence-parallel path of the prefill (segments, traits.hpp): built with
// FULGUR_LIGHTNING_SEGMENT_TOKENS=128 (tests/lightning/CMakeLists.txt) so that short, cheap
// sequences already span several segments: every length around the segment edges, empty and
// one-token sequences beside long ones, slot -1, has_initial_state 0, both state layouts,
// checkpoints inside and at the ends of segments, two-term inputs; against the fp64 recurrence
// (tolerances: lt_test::tolerance_for), plus determinism and batch invariance, bitwise.
// The default segment length (1024) runs in test_lightning_prefill (4096 tokens) and
// test_lightning_drift (65,536 tokens). The per-call length (PrefillParams::segment_tokens):
// other lengths against the reference, the build's length given explicitly equal to the default
// bit for bit, invariance at a per-call length.
#include "lightning_test.hpp"

using namespace lt_test;

static_assert(lt::kSegmentTokens == 128, "this test is built with FULGUR_LIGHTNING_SEGMENT_TOKENS=128");

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

/// Batch invariance, bitwise: each sequence run alone (with the same `mutate` of the params)
/// gives the o rows and the pool slot it gets inside the batch result `all`.
template <typename Mutate>
void check_batch_invariant(const PrefillProblem& pb, const PrefillResult& all, Mutate&& mutate) {
  const size_t row_bytes = static_cast<size_t>(pb.o_stride_token()) * fulgur::dtype_size(pb.c.out);
  const int64_t n = pb.slot_stride();
  for (int s = 0; s < pb.B; ++s) {
    const PrefillResult r = pb.single(s).run_kernel(mutate);
    REQUIRE(r.err == cudaSuccess);
    INFO("sequence " << s);
    CHECK(std::memcmp(r.o.data(), all.o.data() + pb.cu[s] * row_bytes, pb.c.lens[s] * row_bytes) == 0);
    CHECK(std::memcmp(r.pool.data(), all.pool.data() + pb.slots[s] * n, n * 4) == 0);
  }
}

}  // namespace

TEST_CASE("lightning prefill segments: lengths around the segment edges, slots, checkpoints", "[lightning]") {
  for (int d : {64, 128})
    for (StateLayout layout : {StateLayout::kKV, StateLayout::kVK}) {
      if (light() && d == 128) continue;
      PrefillCase c;
      c.d = d;
      c.H = 2;
      c.layout = layout;
      c.out = DType::kF32;
      c.lens = light() ? std::vector<int>{129, 0, 300} : std::vector<int>{0, 1, 128, 129, 255, 64, 257, 700, 256};
      c.slots = light() ? std::vector<int32_t>{0, 1, 2} : std::vector<int32_t>{0, 1, 2, 3, -1, 4, 5, 6, -1};
      c.has_init = light() ? std::vector<uint8_t>{1, 1, 0} : std::vector<uint8_t>{1, 0, 1, 1, 1, 1, 0, 1, 1};
      c.ckpt_interval = 64;  // checkpoints inside segments and at their ends
      INFO("d " << d << (layout == StateLayout::kVK ? ", [dv][dk]" : ", [dk][dv]"));
      const Worst w = check_case(c, "segments d" + std::to_string(d));
      WARN("segments, d " << d << ": worst rel RMSE o " << w.o << ", state " << w.state);
    }
}

TEST_CASE("lightning prefill segments: two-term inputs, slow and fast decay", "[lightning]") {
  PrefillCase c;
  c.d = 64;
  c.H = 3;
  c.in = DType::kF16;
  c.silu = true;
  c.slopes = {0.9f, 0.01f, 4.9e-5f};
  c.lens = light() ? std::vector<int>{260} : std::vector<int>{513, 1, 200};
  c.ckpt_interval = 128;
  c.ckpt_offsets = true;
  check_case(c, "segments two terms");
}

TEST_CASE("lightning prefill segments: deterministic and batch invariant (bitwise)", "[lightning]") {
  Rng rng("segments invariance");
  PrefillCase c;
  c.d = 64;
  c.H = 2;
  c.lens = light() ? std::vector<int>{130, 3} : std::vector<int>{300, 5, 129, 0, 400};
  c.ckpt_interval = 64;
  const PrefillProblem pb(c, rng);
  const PrefillResult a = pb.run_kernel(), b = pb.run_kernel();
  CHECK(a.o == b.o);
  CHECK(std::memcmp(a.pool.data(), b.pool.data(), a.pool.size() * 4) == 0);
  CHECK(std::memcmp(a.ckpt.data(), b.ckpt.data(), a.ckpt.size() * 4) == 0);
  check_batch_invariant(pb, a, [](lt::PrefillParams&) {});
}

TEST_CASE("lightning prefill segments: the segment length set per call", "[lightning]") {
  Rng rng("segments per call");
  FULGUR_INFO_SEED(rng);
  PrefillCase c;
  c.d = 64;
  c.H = 2;
  c.out = DType::kF32;
  c.lens = light() ? std::vector<int>{200, 0, 70} : std::vector<int>{0, 1, 129, 200, 450, 64};
  c.ckpt_interval = 64;
  const PrefillProblem pb(c, rng);
  const PrefillResult ref = pb.run_reference();
  const PrefillResult dflt = pb.run_kernel();
  // 64 (a segment per block), 192 (not a power of two), 256, and 4096 (every sequence one segment).
  for (int32_t L : {64, 192, 256, 4096}) {
    INFO("segment_tokens " << L);
    const PrefillResult got = pb.run_kernel([L](lt::PrefillParams& p) { p.segment_tokens = L; });
    REQUIRE(got.err == cudaSuccess);
    REQUIRE(got.device_status == lt::PrefillArrayError::kOk);
    const Worst w = compare(pb, got, ref, tolerance_for(c.out));
    WARN("segment_tokens " << L << ": worst rel RMSE o " << w.o << ", state " << w.state << "; o bitwise "
                           << (got.o == dflt.o ? "equal to" : "different from") << " the default length's");
  }
  // The build's length given explicitly is the default path: the same bits.
  const PrefillResult same = pb.run_kernel([](lt::PrefillParams& p) {
    p.segment_tokens = static_cast<int32_t>(lt::kSegmentTokens);
  });
  CHECK(same.o == dflt.o);
  CHECK(std::memcmp(same.pool.data(), dflt.pool.data(), same.pool.size() * 4) == 0);
  CHECK(std::memcmp(same.ckpt.data(), dflt.ckpt.data(), same.ckpt.size() * 4) == 0);
  // Batch invariance holds for a per-call length too: each sequence alone gives its batch bits.
  auto with192 = [](lt::PrefillParams& p) { p.segment_tokens = 192; };
  check_batch_invariant(pb, pb.run_kernel(with192), with192);
}

TEST_CASE("lightning prefill segments: workspace size", "[lightning]") {
  lt::PrefillParams p;
  p.batch_size = 3;
  p.num_heads = 2;
  p.dk = p.dv = 64;
  p.num_tokens = 1000;  // floor(1000 / 128) = 7 segment slots of 2 x 64 x 64 floats, twice
  const size_t states = 2 * 7 * size_t{2 * 64 * 64} * sizeof(float);
  CHECK(lt::prefill_workspace_bytes(p) >= states);
  CHECK(lt::prefill_workspace_bytes(p) <= states + 4 * 256 + 64 * 4);
  p.num_tokens = 127;  // no sequence can span two segments: only the small arrays
  CHECK(lt::prefill_workspace_bytes(p) <= 4 * 256);
  p.num_tokens = 1000;
  p.segment_tokens = 256;  // a per-call length: floor(1000 / 256) = 3 slots
  CHECK(lt::prefill_workspace_bytes(p) >= 2 * 3 * size_t{2 * 64 * 64} * sizeof(float));
  CHECK(lt::prefill_workspace_bytes(p) < states);
}
