// SPDX-License-Identifier: Apache-2.0
// Timings of the MoE kernels at the goal shapes, printed for the one-call GPU check (the
// benchmark harness with L2 flushing and peer baselines is issue 7's): CUDA events around 20
// back-to-back launches after a warm-up, on the GPU build (test_moe_timing_gpu). Under emulation
// the same calls run once at small T as a smoke test (no timing: emulation says nothing about
// speed). Every launch must succeed; the outputs are checked by the other moe tests.
#include <string>

#include "moe_test.hpp"

namespace {

using namespace moe_test;

#if FULGUR_EMULATING
constexpr int64_t kT = kLight ? 8 : 64;
constexpr int kIters = 1;
#else
constexpr int64_t kT = 8192;
constexpr int kIters = 20;
#endif

// Runs f() kIters times and prints the mean time per call and the bandwidth of `bytes` moved.
template <typename F>
void timed(const std::string& what, double bytes, F f) {
  REQUIRE(f() == cudaSuccess);  // warm-up (and the emulated smoke run)
#if FULGUR_EMULATING
  (void)bytes;
  std::printf("moe timing (emulated smoke run, no time): %s\n", what.c_str());
#else
  cudaEvent_t a, b;
  REQUIRE(cudaEventCreate(&a) == cudaSuccess);
  REQUIRE(cudaEventCreate(&b) == cudaSuccess);
  REQUIRE(cudaEventRecord(a) == cudaSuccess);
  for (int i = 0; i < kIters; ++i) REQUIRE(f() == cudaSuccess);
  REQUIRE(cudaEventRecord(b) == cudaSuccess);
  REQUIRE(cudaEventSynchronize(b) == cudaSuccess);
  float ms = 0;
  REQUIRE(cudaEventElapsedTime(&ms, a, b) == cudaSuccess);
  const double us = 1e3 * ms / kIters;
  std::printf("moe timing: %-58s %9.2f us  %8.1f GB/s (minimum bytes)\n", what.c_str(), us, bytes / (us * 1e3));
  cudaEventDestroy(a);
  cudaEventDestroy(b);
#endif
  REQUIRE(fulgur::device_synchronize() == cudaSuccess);
}

Tensor random_tensor(DType dt, size_t n, fulgur_test::Rng& rng) {
  Tensor t(dt, n);
  for (size_t i = 0; i < n; ++i) t.set(i, rng.normal());
  return t;
}

TEST_CASE("moe: timings at the goal shapes (printed on a GPU)", "[moe][timing]") {
  fulgur_test::Rng rng("moe timing");
  FULGUR_INFO_SEED(rng);
  const int64_t T = kT;

  // --- route --------------------------------------------------------------------------------
  struct R {
    const char* name;
    fm::RoutePolicy pol;
    DType dt;
  };
  for (const R& r : {R{"route DeepSeek-V3 (E=256 k=8 grouped, f32)", fm::presets::deepseek_v3(), DType::kF32},
                     R{"route MiniMax-Text-01 (E=32 k=2, f32)", fm::presets::minimax_text_01(), DType::kF32},
                     R{"route Qwen3-MoE (E=128 k=8, bf16)", fm::presets::qwen3_moe(), DType::kBF16},
                     R{"route Kimi-K2 (E=384 k=8, f32)", fm::presets::kimi_k2(), DType::kF32}}) {
    const int E = r.pol.num_experts, k = r.pol.top_k;
    auto d_logits = upload(random_tensor(r.dt, static_cast<size_t>(T * E), rng));
    std::vector<float> bias(static_cast<size_t>(E));
    for (auto& b : bias) b = static_cast<float>(rng.normal(0, 0.05));
    auto d_bias = upload(bias);
    DeviceBuffer<int32_t> d_ids(static_cast<size_t>(T * k));
    DeviceBuffer<float> d_w(static_cast<size_t>(T * k));
    fm::RouteParams p;
    p.policy = r.pol;
    p.logits = d_logits.data();
    p.logits_dtype = r.dt;
    p.logits_row_stride = E;
    p.bias = r.pol.selection_bias ? d_bias.data() : nullptr;
    p.num_tokens = T;
    p.topk_ids = d_ids.data();
    p.topk_weights = d_w.data();
    const double bytes = static_cast<double>(T) * (E * fulgur::dtype_size(r.dt) + 8.0 * k);
    timed(std::string(r.name) + " T=" + std::to_string(T), bytes, [&] { return fm::route(p, nullptr); });
  }

  // --- permute ------------------------------------------------------------------------------
  for (int64_t t : T <= 64 ? std::vector<int64_t>{T} : std::vector<int64_t>{64, T}) {
    const int E = 256, k = 8;
    std::vector<int32_t> ids(static_cast<size_t>(t * k));
    for (int64_t i = 0; i < t; ++i)
      for (int j = 0; j < k; ++j) ids[i * k + j] = static_cast<int32_t>((i * 37 + j * 29 + rng.uniform_int(0, 3)) % E);
    auto d_ids = upload(ids);
    DeviceBuffer<int64_t> d_off(E + 1);
    DeviceBuffer<int32_t> d_e2p(static_cast<size_t>(t * k)), d_p2e(static_cast<size_t>(t * k));
    DeviceBuffer<int32_t> d_sorted(static_cast<size_t>(fm::tile_padded_capacity(t, k, E, 64)));
    DeviceBuffer<int32_t> d_tiles(static_cast<size_t>(fm::tile_count_capacity(t, k, E, 64))), d_post(1);
    fm::PermuteParams p;
    p.topk_ids = d_ids.data();
    p.num_tokens = t;
    p.top_k = k;
    p.num_experts = E;
    p.expert_first_token_offset = d_off.data();
    p.expanded_to_permuted = d_e2p.data();
    p.permuted_to_expanded = d_p2e.data();
    p.tile_m = 64;
    p.sorted_token_ids = d_sorted.data();
    p.tile_expert_ids = d_tiles.data();
    p.num_tokens_post_padded = d_post.data();
    for (auto path : {fm::PermutePath::kSingleBlock, fm::PermutePath::kMultiBlock}) {
      if (path == fm::PermutePath::kSingleBlock && t * k > fm::detail::kPermuteChunk) continue;
      size_t bytes = 0;
      REQUIRE(fm::permute(nullptr, bytes, p, nullptr, path) == cudaSuccess);
      DeviceBuffer<unsigned char> ws(bytes);
      const double moved = 4.0 * t * k * 4 + 8.0 * (E + 1);
      timed(std::string("permute E=256 k=8 tile 64 + maps, ") +
                (path == fm::PermutePath::kSingleBlock ? "single block" : "multi block") + " T=" + std::to_string(t),
            moved, [&] { return fm::permute(ws.data(), bytes, p, nullptr, path); });
    }
  }

  // --- gather / combine (MiniMax: H = 6144, k = 2, bf16) --------------------------------------
  {
    const int64_t H = 6144;
    const int k = 2;
    std::vector<int32_t> map(static_cast<size_t>(T * k));
    for (size_t i = 0; i < map.size(); ++i) map[i] = static_cast<int32_t>((i * 7919) % map.size());
    auto d_map = upload(map);
    DeviceBuffer<__nv_bfloat16> d_x(static_cast<size_t>(T * H)), d_rows(static_cast<size_t>(T * k * H));
    DeviceBuffer<__nv_bfloat16> d_out(static_cast<size_t>(T * H));
    DeviceBuffer<float> d_w(static_cast<size_t>(T * k));
    d_x.fill_bytes(0x3c);
    d_rows.fill_bytes(0x3c);
    d_w.fill_bytes(0x3c);
    fm::GatherParams g;
    g.hidden = d_x.data();
    g.hidden_dtype = DType::kBF16;
    g.hidden_row_stride = H;
    g.num_tokens = T;
    g.top_k = k;
    g.hidden_size = H;
    g.row_map = d_map.data();
    g.num_rows = T * k;
    g.out = d_rows.data();
    g.out_dtype = DType::kBF16;
    g.out_row_stride = H;
    timed("gather H=6144 k=2 bf16 T=" + std::to_string(T), 2.0 * T * k * H * 2, [&] { return fm::gather(g, nullptr); });
    // Token by token: the map's inverse as expanded_to_row, each token's row read once.
    std::vector<int32_t> inv(map.size());
    for (size_t r = 0; r < map.size(); ++r) inv[static_cast<size_t>(map[r])] = static_cast<int32_t>(r);
    auto d_inv = upload(inv);
    fm::GatherParams gt = g;
    gt.row_map = nullptr;
    gt.expanded_to_row = d_inv.data();
    timed("gather by token H=6144 k=2 bf16 T=" + std::to_string(T), (1.0 + k) * T * H * 2,
          [&] { return fm::gather(gt, nullptr); });
    fm::CombineParams c;
    c.expert_out = d_rows.data();
    c.expert_out_dtype = DType::kBF16;
    c.expert_out_row_stride = H;
    c.num_expert_rows = T * k;
    c.num_tokens = T;
    c.top_k = k;
    c.hidden_size = H;
    c.expanded_to_row = d_map.data();
    c.topk_weights = d_w.data();
    c.out = d_out.data();
    c.out_dtype = DType::kBF16;
    c.out_row_stride = H;
    timed("combine H=6144 k=2 bf16 T=" + std::to_string(T), (k + 1.0) * T * H * 2,
          [&] { return fm::combine(c, nullptr); });
    c.residual = d_x.data();
    c.residual_dtype = DType::kBF16;
    c.residual_row_stride = H;
    timed("combine + residual H=6144 k=2 bf16 T=" + std::to_string(T), (k + 2.0) * T * H * 2,
          [&] { return fm::combine(c, nullptr); });
  }
}

}  // namespace
