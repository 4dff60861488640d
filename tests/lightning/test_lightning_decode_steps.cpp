// SPDX-License-Identifier: Apache-2.0
// Multi-token decode (DecodeParams::num_steps, speculative decoding): several tokens per batch
// row in one call, each token's state optionally written to step_states. Checked against
//   - the fp64 reference (reference::lightning_decode with num_steps): o of every token, every
//     step state and the final pool within tolerance; padding rows and unused slots untouched;
//   - num_steps successive one-token kernel calls: o, pool and every step state bit for bit (the
//     kernel carries the fp32 state in registers exactly as a one-token call stores and reloads
//     it);
// and bad inputs (num_steps < 1, misaligned step_states, a bad slot id on the device) write
// nothing.
//
// Tolerances: o as lt_test::tolerance_for (lightning_test.hpp). The kernel's state is fp32 across
// the call's tokens while the reference keeps fp64 and rounds only where it stores: each token
// adds at most the one-step error of test_lightning_decode (bound 1e-6 relative), so after t
// tokens the state is within t * 1e-6.
#include <functional>

#include "lightning_test.hpp"

using namespace lt_test;

namespace {

constexpr double kStateTolPerStep = 1e-6;

struct StepsCase {
  int B = 3, steps = 4, H = 2, d = 64;
  StateLayout layout = StateLayout::kKV;
  DType in = DType::kBF16, out = DType::kBF16;
  std::vector<int32_t> slots{1, -1, 0};  // [B]
};

/// The token rows of all batch rows as one DecodeProblem of B * steps rows (q, k, v, o rows
/// b * steps + t); its first B slot ids are the batch rows' slots.
DecodeCase problem_case(const StepsCase& sc) {
  DecodeCase c;
  c.B = sc.B * sc.steps;
  c.H = sc.H;
  c.d = sc.d;
  c.in = sc.in;
  c.out = sc.out;
  c.layout = sc.layout;
  c.slots = sc.slots;
  c.slots.resize(static_cast<size_t>(c.B), -1);
  return c;
}

struct StepsRun {
  DecodeResult r;
  std::vector<float> step_states;  // [B, steps, H, d, d]
};

int64_t step_elems(const StepsCase& sc) { return int64_t{sc.B} * sc.steps * sc.H * sc.d * sc.d; }

StepsRun run_kernel_steps(const StepsCase& sc, const DecodeProblem& pb, bool with_step_states = true) {
  DeviceBuffer<float> st(static_cast<size_t>(step_elems(sc)));
  REQUIRE(st.fill_bytes(0xFF) == cudaSuccess);
  StepsRun run;
  run.r = pb.run_kernel(pb.pool0, [&](lt::DecodeParams& p) {
    p.batch_size = sc.B;
    p.num_steps = sc.steps;
    p.step_states = with_step_states ? st.data() : nullptr;
  });
  run.step_states = st.to_host();
  return run;
}

StepsRun run_reference_steps(const StepsCase& sc, const DecodeProblem& pb) {
  Blob qb, kb, vb;
  pb.fill_inputs(qb, kb, vb);
  StepsRun run;
  run.r.o.assign(static_cast<size_t>(pb.o_elems() * fulgur::dtype_size(sc.out)), 0xFF);
  run.r.pool = pb.pool0;
  run.step_states.assign(static_cast<size_t>(step_elems(sc)), 0.f);
  lt::DecodeParams p = pb.params(qb.host.data(), kb.host.data(), vb.host.data(), run.r.o.data(), run.r.pool.data(),
                                 pb.slots.data(), pb.slopes.data());
  p.batch_size = sc.B;
  p.num_steps = sc.steps;
  p.step_states = run.step_states.data();
  const fulgur::Status s = fulgur::reference::lightning_decode(p);
  INFO(s.reason());
  REQUIRE(s.is_ok());
  return run;
}

std::vector<double> head_state(const std::vector<float>& buf, int64_t base, int64_t n) {
  return std::vector<double>(buf.begin() + base, buf.begin() + base + n);
}

void check_against_reference(const StepsCase& sc, const std::string& name) {
  Rng rng(name);
  FULGUR_INFO_SEED(rng);
  INFO(name << ": B " << sc.B << ", steps " << sc.steps << ", d " << sc.d << ", "
            << (sc.layout == StateLayout::kVK ? "[dv][dk]" : "[dk][dv]") << ", " << fulgur::dtype_name(sc.in)
            << " -> " << fulgur::dtype_name(sc.out));
  const DecodeProblem pb(problem_case(sc), rng);
  const StepsRun got = run_kernel_steps(sc, pb);
  const StepsRun ref = run_reference_steps(sc, pb);
  REQUIRE(got.r.err == cudaSuccess);
  const Tolerance tol = tolerance_for(sc.out);
  const int64_t he = pb.head_elems();
  const size_t es = fulgur::dtype_size(sc.out);
  std::vector<char> used(pb.pool0.size(), 0);
  for (int b = 0; b < sc.B; ++b) {
    const int32_t s = sc.slots[b];
    for (int t = 0; t < sc.steps; ++t) {
      const int row = b * sc.steps + t;
      for (int h = 0; h < sc.H; ++h) {
        const int64_t sbase = ((int64_t{row}) * sc.H + h) * he;
        if (s < 0) {
          int64_t touched = 0;
          for (int j = 0; j < sc.d; ++j)
            for (size_t byte = 0; byte < es; ++byte) touched += got.r.o[((int64_t{row} * sc.H + h) * sc.d + j) * es + byte] != 0xFF;
          for (int64_t i = 0; i < he; ++i) touched += f32_bits(got.step_states[sbase + i]) != 0xFFFFFFFFu;
          INFO("padding row " << b << ", token " << t << ", head " << h << ": o and step state untouched");
          CHECK(touched == 0);
          continue;
        }
        const double eo = fulgur_test::rel_rmse(pb.o_row(got.r, row, h), pb.o_row(ref.r, row, h));
        const double est = fulgur_test::rel_rmse(head_state(got.step_states, sbase, he), head_state(ref.step_states, sbase, he));
        INFO("row " << b << " (slot " << s << "), token " << t << ", head " << h << ": o rel RMSE " << eo
                    << ", step state " << est);
        CHECK(eo <= tol.o);
        CHECK(est <= kStateTolPerStep * (t + 1));
      }
    }
    if (s < 0) continue;
    for (int h = 0; h < sc.H; ++h) {
      const double ef = fulgur_test::rel_rmse(pb.slot_state(got.r.pool, s, h), pb.slot_state(ref.r.pool, s, h));
      INFO("row " << b << " final state, head " << h << ": rel RMSE " << ef);
      CHECK(ef <= kStateTolPerStep * sc.steps);
      const int64_t base = (s * sc.H + h) * he;
      std::fill(used.begin() + base, used.begin() + base + he, 1);
      // The pool holds the last token's state: the same bits as the last step state.
      const int64_t last = ((int64_t{b} * sc.steps + sc.steps - 1) * sc.H + h) * he;
      int64_t differ = 0;
      for (int64_t i = 0; i < he; ++i) differ += f32_bits(got.r.pool[base + i]) != f32_bits(got.step_states[last + i]);
      CHECK(differ == 0);
    }
  }
  int64_t changed = 0;
  for (size_t i = 0; i < used.size(); ++i) changed += !used[i] && f32_bits(got.r.pool[i]) != f32_bits(pb.pool0[i]);
  INFO("pool elements outside the rows' slots that changed");
  CHECK(changed == 0);
}

}  // namespace

TEST_CASE("lightning decode steps: against the reference, both head dims and layouts, padding rows",
          "[lightning]") {
  for (int d : {64, 128})
    for (StateLayout layout : {StateLayout::kKV, StateLayout::kVK}) {
      if (light() && d == 128) continue;
      StepsCase sc;
      sc.d = d;
      sc.layout = layout;
      sc.out = d == 64 ? DType::kBF16 : DType::kF32;
      check_against_reference(sc, "decode steps");
    }
  StepsCase f32;
  f32.in = DType::kF32;
  f32.out = DType::kF16;
  f32.steps = 2;
  f32.B = 2;
  f32.slots = {0, 2};
  check_against_reference(f32, "decode steps f32");
  StepsCase one;  // num_steps = 1 through the same path
  one.steps = 1;
  check_against_reference(one, "decode steps one");
}

TEST_CASE("lightning decode steps: bit for bit num_steps successive one-token calls", "[lightning]") {
  for (StateLayout layout : {StateLayout::kKV, StateLayout::kVK}) {
    StepsCase sc;
    sc.layout = layout;
    sc.steps = 3;
    Rng rng("decode steps vs single");
    FULGUR_INFO_SEED(rng);
    const DecodeProblem pb(problem_case(sc), rng);
    const StepsRun multi = run_kernel_steps(sc, pb);
    REQUIRE(multi.r.err == cudaSuccess);
    const size_t in_es = fulgur::dtype_size(sc.in), out_es = fulgur::dtype_size(sc.out);
    const int64_t he = pb.head_elems();
    std::vector<float> pool = pb.pool0;
    for (int t = 0; t < sc.steps; ++t) {
      // Token t of every row: the rows b * steps + t, through strides steps times larger.
      const DecodeResult single = pb.run_kernel(pool, [&](lt::DecodeParams& p) {
        p.batch_size = sc.B;
        const size_t in_off = static_cast<size_t>(t * pb.in_stride_token()) * in_es;
        p.q = static_cast<const unsigned char*>(p.q) + in_off;
        p.k = static_cast<const unsigned char*>(p.k) + in_off;
        p.v = static_cast<const unsigned char*>(p.v) + in_off;
        p.q_stride_token *= sc.steps;
        p.k_stride_token *= sc.steps;
        p.v_stride_token *= sc.steps;
        p.o = static_cast<unsigned char*>(p.o) + static_cast<size_t>(t * p.o_stride_token) * out_es;
        p.o_stride_token *= sc.steps;
      });
      REQUIRE(single.err == cudaSuccess);
      pool = single.pool;
      for (int b = 0; b < sc.B; ++b) {
        const int32_t s = sc.slots[b];
        if (s < 0) continue;
        const int64_t row = int64_t{b} * sc.steps + t;
        const size_t o0 = static_cast<size_t>(row * sc.H * sc.d) * out_es, o1 = o0 + sc.H * sc.d * out_es;
        INFO("row " << b << ", token " << t);
        CHECK(std::equal(multi.r.o.begin() + o0, multi.r.o.begin() + o1, single.o.begin() + o0));
        for (int h = 0; h < sc.H; ++h) {
          int64_t differ = 0;
          const int64_t sbase = (row * sc.H + h) * he, pbase = (s * sc.H + h) * he;
          for (int64_t i = 0; i < he; ++i) differ += f32_bits(multi.step_states[sbase + i]) != f32_bits(pool[pbase + i]);
          CHECK(differ == 0);
        }
      }
    }
    int64_t differ = 0;
    for (size_t i = 0; i < pool.size(); ++i) differ += f32_bits(pool[i]) != f32_bits(multi.r.pool[i]);
    CHECK(differ == 0);
    // Without step_states: the same o and pool.
    const StepsRun plain = run_kernel_steps(sc, pb, false);
    REQUIRE(plain.r.err == cudaSuccess);
    CHECK(plain.r.o == multi.r.o);
    differ = 0;
    for (size_t i = 0; i < pool.size(); ++i) differ += f32_bits(plain.r.pool[i]) != f32_bits(multi.r.pool[i]);
    CHECK(differ == 0);
  }
}

TEST_CASE("lightning decode steps: bad inputs write nothing", "[lightning]") {
  StepsCase sc;
  Rng rng("decode steps bad");
  FULGUR_INFO_SEED(rng);
  const DecodeProblem pb(problem_case(sc), rng);
  DeviceBuffer<float> st(static_cast<size_t>(step_elems(sc)) + 4);
  REQUIRE(st.fill_bytes(0xFF) == cudaSuccess);
  struct Bad {
    const char* what;
    cudaError_t expect;
    std::function<void(lt::DecodeParams&)> mutate;
  };
  const std::vector<Bad> bad = {
      {"num_steps 0", cudaErrorInvalidValue, [](lt::DecodeParams& p) { p.num_steps = 0; }},
      {"step_states misaligned", cudaErrorInvalidValue, [&](lt::DecodeParams& p) { p.step_states = st.data() + 1; }},
      {"step_state_stride too small", cudaErrorInvalidValue,
       [&](lt::DecodeParams& p) { p.step_state_stride = int64_t{sc.H} * sc.d * sc.d - 4; }},
      {"step_state_stride not a multiple of 4", cudaErrorInvalidValue,
       [&](lt::DecodeParams& p) { p.step_state_stride = int64_t{sc.H} * sc.d * sc.d + 2; }},
      {"step_states over the state pool", cudaErrorInvalidValue, [](lt::DecodeParams& p) { p.step_states = p.state; }},
      {"step_states over o", cudaErrorInvalidValue,
       [](lt::DecodeParams& p) { p.step_states = static_cast<float*>(p.o); }},
  };
  for (const Bad& b : bad) {
    INFO(b.what);
    const DecodeResult r = pb.run_kernel(pb.pool0, [&](lt::DecodeParams& p) {
      p.batch_size = sc.B;
      p.num_steps = sc.steps;
      p.step_states = st.data();
      b.mutate(p);
    });
    CHECK(r.err == b.expect);
    CHECK(std::all_of(r.o.begin(), r.o.end(), [](unsigned char x) { return x == 0xFF; }));
    int64_t changed = 0;
    for (size_t i = 0; i < r.pool.size(); ++i) changed += f32_bits(r.pool[i]) != f32_bits(pb.pool0[i]);
    CHECK(changed == 0);
    const std::vector<float> s = st.to_host();
    CHECK(std::all_of(s.begin(), s.end(), [](float x) { return f32_bits(x) == 0xFFFFFFFFu; }));
  }
  // A slot id out of range on the device: the launcher cannot see it, the kernel writes nothing.
  DeviceBuffer<int32_t> bad_slots(std::vector<int32_t>{1, -1, static_cast<int32_t>(pb.num_slots)});
  const DecodeResult r = pb.run_kernel(pb.pool0, [&](lt::DecodeParams& p) {
    p.batch_size = sc.B;
    p.num_steps = sc.steps;
    p.step_states = st.data();
    p.slot_ids = bad_slots.data();
  });
  CHECK(r.err == cudaSuccess);
  CHECK(std::all_of(r.o.begin(), r.o.end(), [](unsigned char x) { return x == 0xFF; }));
  int64_t changed = 0;
  for (size_t i = 0; i < r.pool.size(); ++i) changed += f32_bits(r.pool[i]) != f32_bits(pb.pool0[i]);
  CHECK(changed == 0);
  const std::vector<float> s = st.to_host();
  CHECK(std::all_of(s.begin(), s.end(), [](float x) { return f32_bits(x) == 0xFFFFFFFFu; }));
}
