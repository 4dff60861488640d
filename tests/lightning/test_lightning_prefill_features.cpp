// SPDX-License-Identifier: Apache-2.0
// Every PrefillParams feature of the tensor-core prefill against the fp64 recurrence: the slot
// pool (slot -1, has_initial_state, unused slots untouched, a pool shared across layers), both
// state layouts, checkpoints (packed and caller-given offsets), the fused [T, H, 3, d] layout and
// padded head strides, the fused SiLU, empty sequences and batches. Tolerances:
// lt_test::tolerance_for (lightning_test.hpp, derived there). Every buffer the call must not
// write is poisoned or random beforehand and checked bit for bit (lt_test::compare).
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

TEST_CASE("lightning prefill: slot -1, has_initial_state and untouched slots", "[lightning]") {
  for (int d : {64, 128}) {
    PrefillCase c;
    c.d = d;
    c.H = 2;
    // Stateless sequences (slot -1) still write o; a zero-length sequence with a slot copies its
    // initial state (or writes zeros when has_initial_state is 0); slots 2 and 4.. are unused.
    c.lens = light() ? std::vector<int>{5, 0, 3} : std::vector<int>{70, 65, 0, 1, 0, 130};
    c.slots = light() ? std::vector<int32_t>{3, -1, 0} : std::vector<int32_t>{3, -1, 0, -1, 5, 1};
    c.has_init = light() ? std::vector<uint8_t>{0, 1, 1} : std::vector<uint8_t>{1, 1, 0, 0, 1, 0};
    INFO("d " << d);
    check_case(c, "prefill slots d" + std::to_string(d));
  }
}

TEST_CASE("lightning prefill: [dv][dk] state layout and a pool shared across layers", "[lightning]") {
  PrefillCase c;
  c.d = 64;
  c.H = 2;
  c.lens = light() ? std::vector<int>{9} : std::vector<int>{100, 1, 64};
  c.layout = StateLayout::kVK;
  c.pool_layers = 3;  // [slots, 3 layers, H, d, d]: this call owns layer 1 only
  c.pool_layer = 1;
  check_case(c, "prefill layout vk");
}

TEST_CASE("lightning prefill: checkpoints equal the recurrence's states", "[lightning]") {
  struct Variant {
    int d;
    int64_t interval;
    bool offsets;
    StateLayout layout;
  };
  const std::vector<Variant> variants = light() ? std::vector<Variant>{{64, 64, false, StateLayout::kKV}}
                                                : std::vector<Variant>{{64, 64, false, StateLayout::kKV},
                                                                       {64, 128, true, StateLayout::kVK},
                                                                       {128, 64, true, StateLayout::kKV}};
  for (const Variant& v : variants) {
    PrefillCase c;
    c.d = v.d;
    c.H = 2;
    // Lengths around the interval: none, exactly one, one plus a partial block, several; a
    // stateless sequence writes no checkpoint rows (they stay poisoned).
    c.lens = light() ? std::vector<int>{130, 64} : std::vector<int>{64, 63, 200, 0, 129, 70};
    c.slots = light() ? std::vector<int32_t>{0, 1} : std::vector<int32_t>{0, 1, 2, 3, -1, 4};
    c.ckpt_interval = v.interval;
    c.ckpt_offsets = v.offsets;
    c.layout = v.layout;
    INFO("d " << v.d << ", interval " << v.interval << (v.offsets ? ", offsets" : ", packed"));
    check_case(c, "prefill checkpoints " + std::to_string(v.d) + "/" + std::to_string(v.interval));
  }
}

TEST_CASE("lightning prefill: fused [T, H, 3, d] layout and padded head strides", "[lightning]") {
  {
    PrefillCase c;
    c.d = 64;
    c.H = 3;
    c.fused = true;  // q = base, k = base + d, v = base + 2d; token stride 3Hd, head stride 3d
    c.lens = light() ? std::vector<int>{7} : std::vector<int>{65, 2};
    check_case(c, "prefill fused layout");
  }
  {
    PrefillCase c;
    c.d = 128;
    c.H = 2;
    c.head_pad = 24;  // head stride d + 24 for q, k, v and o: nothing between heads is read or written
    c.lens = light() ? std::vector<int>{3} : std::vector<int>{66};
    check_case(c, "prefill padded heads");
  }
}

TEST_CASE("lightning prefill: fused SiLU", "[lightning]") {
  // The raw projection (randn) goes in; the kernel applies SiLU as it loads (two bf16 terms, so
  // the fp32 SiLU is not rounded to bf16); the reference applies it in fp64.
  for (int d : {64, 128}) {
    PrefillCase c;
    c.d = d;
    c.H = 2;
    c.silu = true;
    c.lens = light() ? std::vector<int>{4} : std::vector<int>{1, 90};
    INFO("d " << d);
    const Worst w = check_case(c, "prefill silu d" + std::to_string(d));
    WARN("fused SiLU, d " << d << ": worst rel RMSE o " << w.o << ", state " << w.state);
  }
}

TEST_CASE("lightning prefill: empty sequences and empty batches", "[lightning]") {
  {
    // No tokens at all (q/k/v/o may then be null): states are still copied or zeroed.
    PrefillCase c;
    c.lens = {0, 0, 0};
    c.has_init = {1, 0, 1};
    c.pad_rows = 0;
    check_case(c, "prefill all empty");
  }
  {
    Rng rng("prefill empty batch");
    PrefillCase c;
    c.lens = {};
    const PrefillProblem pb(c, rng);
    const PrefillResult got = pb.run_kernel();
    REQUIRE(got.err == cudaSuccess);
    REQUIRE(got.device_status == lt::PrefillArrayError::kOk);
    int64_t changed = 0;
    for (size_t i = 0; i < got.pool.size(); ++i) changed += f32_bits(got.pool[i]) != f32_bits(pb.pool0[i]);
    CHECK(changed == 0);
    for (unsigned char byte : got.o) CHECK(byte == 0xFF);
  }
}
