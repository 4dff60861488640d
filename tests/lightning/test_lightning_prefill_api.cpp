// SPDX-License-Identifier: Apache-2.0
// The prefill's contract: every input/output dtype against the fp64 recurrence, determinism and
// batch invariance (bitwise), the workspace protocol, bad host arguments (the documented
// cudaError_t, nothing written), bad device index arrays (nothing written, the reason left in
// the workspace), element offsets past 2^31. Tolerances: lt_test::tolerance_for
// (lightning_test.hpp, derived there).
#include "lightning_test.hpp"

using namespace lt_test;

namespace {

bool sanitized() { return light(); }

void check_untouched(const PrefillProblem& pb, const PrefillResult& r) {
  int64_t o_written = 0, ckpt_written = 0, pool_changed = 0;
  for (unsigned char byte : r.o) o_written += byte != 0xFF;
  for (float x : r.ckpt) ckpt_written += f32_bits(x) != 0xFFFFFFFFu;
  for (size_t i = 0; i < r.pool.size(); ++i) pool_changed += f32_bits(r.pool[i]) != f32_bits(pb.pool0[i]);
  CHECK(o_written == 0);
  CHECK(ckpt_written == 0);
  CHECK(pool_changed == 0);
}

}  // namespace

TEST_CASE("lightning prefill: every input and output dtype", "[lightning]") {
  for (int d : {64, 128})
    for (DType in : {DType::kBF16, DType::kF16, DType::kF32})
      for (DType out : {DType::kBF16, DType::kF16, DType::kF32}) {
        if (d == 128 && out != DType::kF32) continue;  // the epilogue does not depend on d
        Rng rng("prefill dtypes");
        FULGUR_INFO_SEED(rng);
        PrefillCase c;
        c.d = d;
        c.H = 2;
        c.in = in;
        c.out = out;
        c.lens = light() ? std::vector<int>{5} : std::vector<int>{1, 70};
        INFO("d " << d << ", " << fulgur::dtype_name(in) << " -> " << fulgur::dtype_name(out));
        const PrefillProblem pb(c, rng);
        const Worst w = compare(pb, pb.run_kernel(), pb.run_reference(), tolerance_for(out));
        if (out == DType::kF32) {
          WARN("d " << d << ", " << fulgur::dtype_name(in) << " in, f32 out: worst rel RMSE o " << w.o << ", state "
                    << w.state);
        }
      }
}

TEST_CASE("lightning prefill: deterministic and batch invariant (bitwise)", "[lightning]") {
  for (bool silu : {false, true}) {
    Rng rng("prefill invariance");
    PrefillCase c;
    c.d = 64;
    c.H = 2;
    c.silu = silu;
    c.lens = light() ? std::vector<int>{3, 66} : std::vector<int>{70, 1, 130, 0};
    c.slots = light() ? std::vector<int32_t>{1, 0} : std::vector<int32_t>{2, -1, 0, 1};
    c.ckpt_interval = 64;
    const PrefillProblem pb(c, rng);
    const PrefillResult a = pb.run_kernel(), b = pb.run_kernel();
    INFO("silu " << silu);
    CHECK(a.o == b.o);
    CHECK(std::memcmp(a.pool.data(), b.pool.data(), a.pool.size() * 4) == 0);
    CHECK(std::memcmp(a.ckpt.data(), b.ckpt.data(), a.ckpt.size() * 4) == 0);
    // Each sequence alone gives the same bits as inside the batch.
    const size_t es = fulgur::dtype_size(c.out);
    for (int s = 0; s < pb.B; ++s) {
      const PrefillProblem one = pb.single(s);
      const PrefillResult r = one.run_kernel();
      REQUIRE(r.err == cudaSuccess);
      INFO("sequence " << s);
      const size_t row_bytes = static_cast<size_t>(pb.o_stride_token()) * es;
      CHECK(std::memcmp(r.o.data(), a.o.data() + pb.cu[s] * row_bytes, c.lens[s] * row_bytes) == 0);
      if (pb.slots[s] >= 0) {
        const int64_t n = pb.slot_stride();
        CHECK(std::memcmp(r.pool.data(), a.pool.data() + pb.slots[s] * n, n * 4) == 0);
      }
    }
  }
}

TEST_CASE("lightning prefill: workspace protocol", "[lightning]") {
  Rng rng("prefill workspace");
  PrefillCase c;
  c.lens = {3, 2};
  c.ckpt_interval = 64;
  const PrefillProblem pb(c, rng);
  Blob qb, kb, vb;
  pb.fill_inputs(qb, kb, vb);
  qb.to_device();
  kb.to_device();
  vb.to_device();
  DeviceBuffer<unsigned char> o(static_cast<size_t>(pb.o_elems() * 2));
  REQUIRE(o.fill_bytes(0xFF) == cudaSuccess);
  DeviceBuffer<float> pool(pb.pool0), ckpt(static_cast<size_t>(pb.ckpt_elems()));
  DeviceBuffer<int32_t> cu(pb.cu), slots(pb.slots), off(pb.ckpt_off);
  DeviceBuffer<float> slopes(pb.slopes);
  const lt::PrefillParams p = pb.params(qb.dev.data(), kb.dev.data(), vb.dev.data(), o.data(), pool.data(), ckpt.data(),
                                        cu.data(), slots.data(), nullptr, off.data(), slopes.data());
  size_t bytes = 0;
  REQUIRE(lt::prefill(nullptr, bytes, p) == cudaSuccess);
  CHECK(bytes == lt::prefill_workspace_bytes(p));
  CHECK(bytes >= 256);
  REQUIRE(fulgur::device_synchronize() == cudaSuccess);
  for (unsigned char byte : o.to_host()) CHECK(byte == 0xFF);  // a size query launches nothing
  DeviceBuffer<unsigned char> ws(bytes + 16);
  size_t small = bytes - 1;
  CHECK(lt::prefill(ws.data(), small, p) == cudaErrorInvalidValue);  // too small
  size_t enough = bytes;
  CHECK(lt::prefill(ws.data() + 4, enough, p) == cudaErrorInvalidValue);  // misaligned
  REQUIRE(fulgur::device_synchronize() == cudaSuccess);
  for (unsigned char byte : o.to_host()) CHECK(byte == 0xFF);
  CHECK(lt::prefill(ws.data(), enough, p) == cudaSuccess);
  REQUIRE(fulgur::device_synchronize() == cudaSuccess);
  lt::PrefillArrayError e{};
  REQUIRE(lt::prefill_device_status(ws.data(), e) == cudaSuccess);
  CHECK(e == lt::PrefillArrayError::kOk);
}

TEST_CASE("lightning prefill: bad host arguments return the documented error and write nothing", "[lightning]") {
  Rng rng("prefill bad host args");
  PrefillCase c;
  c.lens = {3, 2};
  c.ckpt_interval = 64;
  const PrefillProblem pb(c, rng);
  struct Bad {
    const char* what;
    cudaError_t want;
    void (*mutate)(lt::PrefillParams&);
  };
  const Bad bad[] = {
      {"null q", cudaErrorInvalidValue, [](lt::PrefillParams& p) { p.q = nullptr; }},
      {"null o", cudaErrorInvalidValue, [](lt::PrefillParams& p) { p.o = nullptr; }},
      {"null cu_seqlens", cudaErrorInvalidValue, [](lt::PrefillParams& p) { p.cu_seqlens = nullptr; }},
      {"null slot_ids", cudaErrorInvalidValue, [](lt::PrefillParams& p) { p.slot_ids = nullptr; }},
      {"null slopes", cudaErrorInvalidValue, [](lt::PrefillParams& p) { p.slopes = nullptr; }},
      {"null state with slots", cudaErrorInvalidValue, [](lt::PrefillParams& p) { p.state = nullptr; }},
      {"misaligned q", cudaErrorInvalidValue,
       [](lt::PrefillParams& p) { p.q = static_cast<const __nv_bfloat16*>(p.q) + 4; }},
      {"q stride not a multiple of 16 bytes", cudaErrorInvalidValue,
       [](lt::PrefillParams& p) { p.q_stride_token += 4; }},
      {"v head stride not a multiple of 16 bytes", cudaErrorInvalidValue,
       [](lt::PrefillParams& p) { p.v_stride_head = 68; }},
      {"odd o stride", cudaErrorInvalidValue, [](lt::PrefillParams& p) { p.o_stride_token += 1; }},
      {"zero stride", cudaErrorInvalidValue, [](lt::PrefillParams& p) { p.k_stride_head = 0; }},
      {"checkpoint interval not a multiple of 64", cudaErrorInvalidValue,
       [](lt::PrefillParams& p) { p.checkpoint_interval = 96; }},
      {"negative num_tokens", cudaErrorInvalidValue, [](lt::PrefillParams& p) { p.num_tokens = -1; }},
      {"segment_tokens not a multiple of 64", cudaErrorInvalidValue,
       [](lt::PrefillParams& p) { p.segment_tokens = 100; }},
      {"negative segment_tokens", cudaErrorInvalidValue, [](lt::PrefillParams& p) { p.segment_tokens = -64; }},
      {"non-finite scale", cudaErrorInvalidValue, [](lt::PrefillParams& p) { p.scale = INFINITY; }},
      {"head dim 96", cudaErrorNotSupported, [](lt::PrefillParams& p) { p.dk = p.dv = 96; }},
      {"head dim 256", cudaErrorNotSupported, [](lt::PrefillParams& p) { p.dk = p.dv = 256; }},
      {"dk != dv", cudaErrorNotSupported, [](lt::PrefillParams& p) { p.dk = 128; }},
      {"f64 inputs", cudaErrorNotSupported, [](lt::PrefillParams& p) { p.qkv_dtype = DType::kF64; }},
      {"f64 output", cudaErrorNotSupported, [](lt::PrefillParams& p) { p.o_dtype = DType::kF64; }},
      // What the launch writes must share no byte with what it reads or with another output.
      {"o over q", cudaErrorInvalidValue, [](lt::PrefillParams& p) { p.o = const_cast<void*>(p.q); }},
      {"o over v's second token", cudaErrorInvalidValue,
       [](lt::PrefillParams& p) {
         p.o = const_cast<__nv_bfloat16*>(static_cast<const __nv_bfloat16*>(p.v) + p.v_stride_token);
       }},
      {"o over the state pool", cudaErrorInvalidValue, [](lt::PrefillParams& p) { p.o = p.state; }},
      {"checkpoints over the state pool", cudaErrorInvalidValue,
       [](lt::PrefillParams& p) { p.checkpoints = p.state + 4; }},
      {"state pool over the slopes", cudaErrorInvalidValue,
       [](lt::PrefillParams& p) { p.slopes = p.state + 1; }},
      {"state pool over cu_seqlens", cudaErrorInvalidValue,
       [](lt::PrefillParams& p) { p.cu_seqlens = reinterpret_cast<const int32_t*>(p.state); }},
  };
  for (const Bad& b : bad) {
    INFO(b.what);
    const PrefillResult r = pb.run_kernel(b.mutate);
    CHECK(r.err == b.want);
    check_untouched(pb, r);
  }
}

TEST_CASE("lightning prefill: bad device arrays write nothing and leave the reason", "[lightning]") {
  Rng rng("prefill bad device arrays");
  PrefillCase c;
  c.lens = {70, 3, 66};
  c.slots = {0, 2, 1};
  c.ckpt_interval = 64;
  c.ckpt_offsets = true;
  const PrefillProblem pb(c, rng);
  struct Bad {
    const char* what;
    lt::PrefillArrayError want;
    void (*edit)(PrefillProblem&);
  };
  const Bad bad[] = {
      {"cu_seqlens decreasing", lt::PrefillArrayError::kCuSeqlens, [](PrefillProblem& q) { q.cu[2] = q.cu[1] - 1; }},
      {"cu_seqlens[0] != 0", lt::PrefillArrayError::kCuSeqlens, [](PrefillProblem& q) { q.cu[0] = 1; }},
      {"cu_seqlens[B] > num_tokens", lt::PrefillArrayError::kCuSeqlens,
       [](PrefillProblem& q) { q.cu.back() = static_cast<int32_t>(q.T + 1); }},
      {"slot id >= num_slots", lt::PrefillArrayError::kSlotIds,
       [](PrefillProblem& q) { q.slots[1] = static_cast<int32_t>(q.num_slots); }},
      {"slot id < -1", lt::PrefillArrayError::kSlotIds, [](PrefillProblem& q) { q.slots[2] = -3; }},
      {"checkpoint offsets leave too few rows", lt::PrefillArrayError::kCheckpointOffsets,
       [](PrefillProblem& q) { q.ckpt_off[1] = q.ckpt_off[0]; }},
      {"checkpoint offsets past the buffer", lt::PrefillArrayError::kCheckpointOffsets,
       [](PrefillProblem& q) { q.ckpt_off.back() = static_cast<int32_t>(q.ckpt_rows + 5); }},
      {"negative slope", lt::PrefillArrayError::kSlopes, [](PrefillProblem& q) { q.slopes[1] = -0.25f; }},
      {"NaN slope", lt::PrefillArrayError::kSlopes, [](PrefillProblem& q) { q.slopes[0] = NAN; }},
  };
  for (const Bad& b : bad) {
    INFO(b.what);
    PrefillProblem q = pb;
    b.edit(q);
    const PrefillResult r = q.run_kernel();
    CHECK(r.err == cudaSuccess);  // the launcher cannot read device memory
    CHECK(r.device_status == b.want);
    check_untouched(pb, r);
  }
  {
    INFO("a sequence longer than max_seqlen");
    const PrefillResult r = pb.run_kernel([](lt::PrefillParams& p) { p.max_seqlen = 66; });
    CHECK(r.err == cudaSuccess);
    CHECK(r.device_status == lt::PrefillArrayError::kMaxSeqlen);
    check_untouched(pb, r);
  }
  {
    INFO("packed checkpoints that need more rows than num_checkpoint_rows");
    PrefillProblem q = pb;
    q.c.ckpt_offsets = false;
    const PrefillResult r = q.run_kernel([](lt::PrefillParams& p) { p.num_checkpoint_rows = 1; });
    CHECK(r.err == cudaSuccess);
    CHECK(r.device_status == lt::PrefillArrayError::kCheckpointOffsets);
    check_untouched(pb, r);
  }
}

TEST_CASE("lightning prefill: element offsets past 2^31", "[lightning]") {
  if (sanitized()) return;  // a 4 GiB (mostly untouched) buffer: not under the sanitizers
  // One sequence of 2 tokens whose q rows and o rows sit 2^31 + 128 elements apart in one
  // buffer (q at the start of each row, o right after it): the second token's offsets only fit
  // int64. k and v are dense. Compared with the same problem laid out densely.
  Rng rng("prefill large offsets");
  PrefillCase c;
  c.lens = {2};
  c.H = 1;
  c.d = 64;
  c.out = DType::kBF16;
  c.pad_rows = 0;
  const PrefillProblem pb(c, rng);
  const PrefillResult want = pb.run_kernel();
  REQUIRE(want.err == cudaSuccess);

  const int64_t stride = (int64_t{1} << 31) + 128;
  DeviceBuffer<unsigned char> big;
  if (big.alloc(static_cast<size_t>((stride + 128) * 2)) != cudaSuccess) {
    WARN("could not reserve 4 GiB; skipped");
    return;
  }
  Blob qb, kb, vb;
  pb.fill_inputs(qb, kb, vb);
  kb.to_device();
  vb.to_device();
  std::vector<unsigned char> poison(128, 0xFF);
  for (int t = 0; t < 2; ++t) {
    REQUIRE(fulgur::device_memcpy(big.data() + t * stride * 2, qb.host.data() + t * 64 * 2, 128,
                                  fulgur::CopyKind::kHostToDevice) == cudaSuccess);
    REQUIRE(fulgur::device_memcpy(big.data() + (t * stride + 64) * 2, poison.data(), 128,
                                  fulgur::CopyKind::kHostToDevice) == cudaSuccess);
  }
  DeviceBuffer<float> pool(pb.pool0);
  DeviceBuffer<int32_t> cu(pb.cu), slots(pb.slots);
  DeviceBuffer<float> slopes(pb.slopes);
  lt::PrefillParams p = pb.params(big.data(), kb.dev.data(), vb.dev.data(), big.data() + 128, pool.data(), nullptr,
                                  cu.data(), slots.data(), nullptr, nullptr, slopes.data());
  p.num_tokens = 2;
  p.q_stride_token = stride;
  p.o_stride_token = stride;
  size_t bytes = 0;
  REQUIRE(lt::prefill(nullptr, bytes, p) == cudaSuccess);
  DeviceBuffer<unsigned char> ws(bytes);
  REQUIRE(lt::prefill(ws.data(), bytes, p) == cudaSuccess);
  REQUIRE(fulgur::device_synchronize() == cudaSuccess);
  for (int t = 0; t < 2; ++t) {
    std::vector<unsigned char> got(128);
    REQUIRE(fulgur::device_memcpy(got.data(), big.data() + (t * stride + 64) * 2, 128,
                                  fulgur::CopyKind::kDeviceToHost) == cudaSuccess);
    INFO("token " << t);
    CHECK(std::memcmp(got.data(), want.o.data() + t * 128, 128) == 0);
  }
  CHECK(std::memcmp(pool.to_host().data(), want.pool.data(), want.pool.size() * 4) == 0);
}
