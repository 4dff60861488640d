// SPDX-License-Identifier: Apache-2.0
// The decode kernel against the fp64 reference step (fulgur/reference/lightning.hpp): both head
// dims, both state layouts, every dtype, slot -1 padding rows, every column split, the fused
// [B, H, 3, d] layout, SiLU; prefill followed by decode equals a longer prefill; determinism,
// batch and split invariance (bitwise); bad inputs write nothing.
//
// Tolerances: o as lt_test::tolerance_for (lightning_test.hpp). The state takes one fp32 fma
// per element (lambda S + k v, lambda from exp2f within 2 ulp): relative error about 2^-24 *
// (|lambda S| + |k v|) / |S_new| + 2^-23 < 3e-7 unless the two terms cancel; bound 1e-6.
#include "lightning_test.hpp"

using namespace lt_test;

namespace {

constexpr double kStateTol = 1e-6;

Worst check_case(const DecodeCase& c, const std::string& name) {
  Rng rng(name);
  FULGUR_INFO_SEED(rng);
  INFO(name);
  const DecodeProblem pb(c, rng);
  const DecodeResult got = pb.run_kernel();
  const DecodeResult ref = pb.run_reference();
  Tolerance tol = tolerance_for(c.out);
  tol.state = kStateTol;
  return compare(pb, got, ref, tol, pb.pool0);
}

}  // namespace

TEST_CASE("lightning decode: both head dims and layouts, padding rows", "[lightning]") {
  for (int d : {64, 128})
    for (StateLayout layout : {StateLayout::kKV, StateLayout::kVK})
      for (DType out : {DType::kBF16, DType::kF32}) {
        if (light() && (d == 128 || out == DType::kBF16)) continue;
        DecodeCase c;
        c.d = d;
        c.B = 5;
        c.H = 3;
        c.layout = layout;
        c.out = out;
        c.slots = {2, -1, 0, 5, -1};  // slots 1, 3, 4, 6.. unused: must stay untouched
        INFO("d " << d << (layout == StateLayout::kVK ? ", [dv][dk]" : ", [dk][dv]") << ", out "
                  << fulgur::dtype_name(out));
        const Worst w = check_case(c, "decode basic");
        if (out == DType::kF32) WARN("d " << d << ": worst rel RMSE o " << w.o << ", state " << w.state);
      }
}

TEST_CASE("lightning decode: every dtype, SiLU, fused layout", "[lightning]") {
  for (DType in : {DType::kBF16, DType::kF16, DType::kF32})
    for (DType out : {DType::kBF16, DType::kF16, DType::kF32}) {
      DecodeCase c;
      c.d = 64;
      c.B = 2;
      c.H = 2;
      c.in = in;
      c.out = out;
      c.silu = in == DType::kF32;  // vLLM's fp32 path; the bf16 fused case is below
      INFO(fulgur::dtype_name(in) << " -> " << fulgur::dtype_name(out));
      check_case(c, "decode dtypes");
    }
  DecodeCase c;
  c.d = 128;
  c.B = 3;
  c.H = 2;
  c.fused = true;
  c.silu = true;
  c.layout = StateLayout::kVK;
  check_case(c, "decode fused silu");
}

TEST_CASE("lightning decode: column splits give identical bits (batch and split invariance)", "[lightning]") {
  // Row 0 alone (B x H = 4: 4 splits), in a batch of 64 rows (256: 2 splits) and of 160 rows
  // (640: 1 split) must produce the same o and state bits. Rows' data: row 0 is the same
  // everywhere, the others random.
  for (StateLayout layout : {StateLayout::kKV, StateLayout::kVK}) {
    DecodeCase c;
    c.d = 64;
    c.H = 4;
    c.layout = layout;
    c.out = DType::kF32;
    std::vector<DecodeResult> results;
    std::vector<int> batches = light() ? std::vector<int>{1, 32} : std::vector<int>{1, 64, 160};
    Rng rng0("decode invariance row 0");
    c.B = 1;
    const DecodeProblem first(c, rng0);
    for (int B : batches) {
      c.B = B;
      Rng rng("decode invariance batch " + std::to_string(B));
      DecodeProblem pb(c, rng);
      // Row 0 and slot 0 carry the same data in every batch.
      const int64_t row = int64_t{c.H} * c.d;
      std::copy(first.q.begin(), first.q.begin() + row, pb.q.begin());
      std::copy(first.k.begin(), first.k.begin() + row, pb.k.begin());
      std::copy(first.v.begin(), first.v.begin() + row, pb.v.begin());
      std::copy(first.pool0.begin(), first.pool0.begin() + c.H * pb.head_elems(), pb.pool0.begin());
      pb.slopes = first.slopes;
      INFO("batch " << B << ", splits " << lt::decode_splits(int64_t{B} * c.H));
      const DecodeResult r = pb.run_kernel();
      REQUIRE(r.err == cudaSuccess);
      results.push_back(r);
    }
    for (size_t i = 1; i < results.size(); ++i) {
      const size_t o_bytes = static_cast<size_t>(c.H * c.d * 4);
      CHECK(std::memcmp(results[i].o.data(), results[0].o.data(), o_bytes) == 0);
      CHECK(std::memcmp(results[i].pool.data(), results[0].pool.data(), c.H * c.d * c.d * sizeof(float)) == 0);
    }
    // And a second identical run is bitwise identical (determinism).
    c.B = batches.back();
    Rng rng("decode invariance batch " + std::to_string(c.B));
    const DecodeProblem pb(c, rng);
    const DecodeResult a = pb.run_kernel(), b = pb.run_kernel();
    CHECK(a.o == b.o);
    CHECK(std::memcmp(a.pool.data(), b.pool.data(), a.pool.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("lightning decode: the streaming kernel of large batches (batch x heads >= 512)", "[lightning]") {
  // batch x heads >= 512 (no column split) runs the kernel that streams each thread's state
  // pieces in groups (DecodeMode::kStream, decode.cuh); smaller grids load every piece first.
  // Checked against the fp64 reference with padding rows among the batch, and bit for bit
  // against the load-all kernel: row 0 of the big batch and row 0 alone (4 column splits) carry
  // the same data and must give the same o and state bits.
  for (int d : {64, 128})
    for (StateLayout layout : {StateLayout::kKV, StateLayout::kVK}) {
      // Sanitizer builds: one case (528 emulated CTAs take about a minute under ThreadSanitizer);
      // the [dk][dv] kernel is the one with a shared-memory reduction and its barriers.
      if (light() && (d == 128 || layout == StateLayout::kVK)) continue;
      DecodeCase c;
      c.d = d;
      c.H = 8;
      c.B = 66;  // 528 (row, head) pairs, two of the rows padding
      c.layout = layout;
      c.out = DType::kF32;
      c.slots.resize(static_cast<size_t>(c.B));
      for (int b = 0; b < c.B; ++b) c.slots[static_cast<size_t>(b)] = (b == 7 || b == 40) ? -1 : c.B + 1 - b;
      const std::string name = "decode stream d" + std::to_string(d) + (layout == StateLayout::kVK ? " vk" : " kv");
      INFO(name << ", splits " << lt::decode_splits(int64_t{c.B} * c.H));
      REQUIRE(lt::decode_splits(int64_t{c.B} * c.H) == 1);
      Rng rng(name);
      FULGUR_INFO_SEED(rng);
      const DecodeProblem big(c, rng);
      const DecodeResult got = big.run_kernel();
      Tolerance tol = tolerance_for(c.out);
      tol.state = kStateTol;
      compare(big, got, big.run_reference(), tol, big.pool0);

      // Row 0 alone, slot 0 holding the big batch's slot for row 0.
      DecodeCase c1 = c;
      c1.B = 1;
      c1.slots = {0};
      REQUIRE(lt::decode_splits(int64_t{c1.B} * c1.H) == 4);
      Rng rng1(name + " row 0");
      DecodeProblem one(c1, rng1);
      const int64_t row = int64_t{c.H} * c.d;
      std::copy(big.q.begin(), big.q.begin() + row, one.q.begin());
      std::copy(big.k.begin(), big.k.begin() + row, one.k.begin());
      std::copy(big.v.begin(), big.v.begin() + row, one.v.begin());
      const int64_t slot_elems = c.H * big.head_elems();
      const int64_t slot0 = c.slots[0];
      std::copy(big.pool0.begin() + slot0 * slot_elems, big.pool0.begin() + (slot0 + 1) * slot_elems,
                one.pool0.begin());
      one.slopes = big.slopes;
      const DecodeResult alone = one.run_kernel();
      REQUIRE(alone.err == cudaSuccess);
      CHECK(std::memcmp(alone.o.data(), got.o.data(), static_cast<size_t>(row) * sizeof(float)) == 0);
      CHECK(std::memcmp(alone.pool.data(), got.pool.data() + slot0 * slot_elems,
                        static_cast<size_t>(slot_elems) * sizeof(float)) == 0);
    }
}

TEST_CASE("lightning decode: prefill then decode equals a longer prefill", "[lightning]") {
  for (int d : {64, 128}) {
    if (light() && d == 128) continue;
    Rng rng("decode after prefill d" + std::to_string(d));
    FULGUR_INFO_SEED(rng);
    PrefillCase pc;
    pc.d = d;
    pc.H = 2;
    pc.out = DType::kF32;
    pc.lens = light() ? std::vector<int>{3, 66} : std::vector<int>{1, 65, 130};
    pc.slots = light() ? std::vector<int32_t>{1, 0} : std::vector<int32_t>{2, 0, 1};
    const PrefillProblem full(pc, rng);
    const PrefillResult want = full.run_reference();  // n_b tokens through the recurrence

    // The kernel prefill over the first n_b - 1 tokens of each sequence ...
    PrefillProblem pre = full;
    const int64_t row_elems = int64_t{pc.H} * d;
    pre.c.lens.clear();
    pre.cu = {0};
    pre.q.clear();
    pre.k.clear();
    pre.v.clear();
    for (int b = 0; b < full.B; ++b) {
      const int64_t n = full.c.lens[b] - 1;
      pre.c.lens.push_back(static_cast<int>(n));
      pre.cu.push_back(pre.cu.back() + static_cast<int32_t>(n));
      for (auto pr :
           {std::make_pair(&pre.q, &full.q), std::make_pair(&pre.k, &full.k), std::make_pair(&pre.v, &full.v)})
        pr.first->insert(pr.first->end(), pr.second->begin() + full.cu[b] * row_elems,
                         pr.second->begin() + (full.cu[b] + n) * row_elems);
    }
    pre.T = pre.cu.back() + pc.pad_rows;
    for (auto* vec : {&pre.q, &pre.k, &pre.v}) vec->resize(pre.T * row_elems, 0.5);
    const PrefillResult mid = pre.run_kernel();
    REQUIRE(mid.err == cudaSuccess);

    // ... then one decode step with each sequence's last token, on the pool the prefill left.
    DecodeCase dc;
    dc.d = d;
    dc.H = pc.H;
    dc.B = full.B;
    dc.out = DType::kF32;
    DecodeProblem step(dc, rng);
    step.slopes = full.slopes;
    step.slots = full.slots;
    step.num_slots = full.num_slots;
    for (int b = 0; b < full.B; ++b) {
      const int64_t last = full.cu[b + 1] - 1;
      for (int64_t e = 0; e < row_elems; ++e) {
        step.q[b * row_elems + e] = full.q[last * row_elems + e];
        step.k[b * row_elems + e] = full.k[last * row_elems + e];
        step.v[b * row_elems + e] = full.v[last * row_elems + e];
      }
    }
    const DecodeResult got = step.run_kernel(mid.pool, [](lt::DecodeParams&) {});
    REQUIRE(got.err == cudaSuccess);
    const Tolerance tol = tolerance_for(DType::kF32);
    for (int b = 0; b < full.B; ++b)
      for (int h = 0; h < pc.H; ++h) {
        std::vector<double> o_want(d);
        for (int j = 0; j < d; ++j) o_want[j] = full.o_at(want, full.cu[b + 1] - 1, h, j);
        const double eo = fulgur_test::rel_rmse(step.o_row(got, b, h), o_want);
        const double es = fulgur_test::rel_rmse(step.slot_state(got.pool, full.slots[b], h),
                                                full.slot_state(want.pool, full.slots[b], h));
        INFO("d " << d << ", sequence " << b << ", head " << h << ": o " << eo << ", state " << es);
        CHECK(eo <= tol.o);
        CHECK(es <= tol.state);
      }
  }
}

TEST_CASE("lightning decode: bad inputs write nothing", "[lightning]") {
  Rng rng("decode bad inputs");
  DecodeCase c;
  c.B = 3;
  c.H = 2;
  const DecodeProblem pb(c, rng);
  auto untouched = [&](const DecodeResult& r) {
    for (unsigned char byte : r.o) CHECK(byte == 0xFF);
    CHECK(std::memcmp(r.pool.data(), pb.pool0.data(), r.pool.size() * sizeof(float)) == 0);
  };
  SECTION("host-checked arguments return the documented error") {
    struct Bad {
      const char* what;
      cudaError_t want;
      void (*mutate)(lt::DecodeParams&);
    };
    const Bad bad[] = {
        {"null q", cudaErrorInvalidValue, [](lt::DecodeParams& p) { p.q = nullptr; }},
        {"null slot_ids", cudaErrorInvalidValue, [](lt::DecodeParams& p) { p.slot_ids = nullptr; }},
        {"misaligned k", cudaErrorInvalidValue,
         [](lt::DecodeParams& p) { p.k = static_cast<const __nv_bfloat16*>(p.k) + 1; }},
        {"stride not a multiple of 16 bytes", cudaErrorInvalidValue,
         [](lt::DecodeParams& p) { p.v_stride_token += 4; }},
        {"odd o stride", cudaErrorInvalidValue, [](lt::DecodeParams& p) { p.o_stride_head += 1; }},
        {"head dim 96", cudaErrorNotSupported, [](lt::DecodeParams& p) { p.dk = p.dv = 96; }},
        {"dk != dv", cudaErrorNotSupported, [](lt::DecodeParams& p) { p.dv = 128; }},
        {"f64 inputs", cudaErrorNotSupported, [](lt::DecodeParams& p) { p.qkv_dtype = DType::kF64; }},
        {"non-finite scale", cudaErrorInvalidValue, [](lt::DecodeParams& p) { p.scale = NAN; }},
        // What the launch writes must share no byte with what it reads or with another output
        // (with column splits, one block writes o while another still reads q).
        {"o over q", cudaErrorInvalidValue, [](lt::DecodeParams& p) { p.o = const_cast<void*>(p.q); }},
        {"o over k's last head", cudaErrorInvalidValue,
         [](lt::DecodeParams& p) {
           p.o = const_cast<__nv_bfloat16*>(static_cast<const __nv_bfloat16*>(p.k) + p.k_stride_head);
         }},
        {"o over the state pool", cudaErrorInvalidValue, [](lt::DecodeParams& p) { p.o = p.state; }},
        {"state pool over the slot ids", cudaErrorInvalidValue,
         [](lt::DecodeParams& p) { p.slot_ids = reinterpret_cast<const int32_t*>(p.state) + 2; }},
    };
    for (const Bad& b : bad) {
      INFO(b.what);
      const DecodeResult r = pb.run_kernel(pb.pool0, b.mutate);
      CHECK(r.err == b.want);
      untouched(r);
    }
  }
  SECTION("device arrays: a bad slot id or slope anywhere and nothing is written") {
    const std::vector<int32_t> bad_slots[] = {{0, 1, static_cast<int32_t>(pb.num_slots)}, {0, -2, 1}};
    for (const auto& s : bad_slots) {
      DecodeProblem bp = pb;
      bp.slots = s;
      const DecodeResult r = bp.run_kernel();
      CHECK(r.err == cudaSuccess);  // the launcher cannot read device memory
      untouched(r);
    }
    DecodeProblem bp = pb;
    bp.slopes[1] = -0.5f;
    const DecodeResult r = bp.run_kernel();
    CHECK(r.err == cudaSuccess);
    untouched(r);
  }
}
