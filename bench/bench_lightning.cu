// SPDX-License-Identifier: Apache-2.0
// Lightning attention benchmarks (fulgur::lightning prefill and decode) at MiniMax-Text-01's
// shapes: d = 128, H = 8 (one rank of tensor parallelism 8) and H = 64 (the full model);
// prefill over N in {4K, 32K, 128K} tokens split in 1 or 4 equal sequences, plus a varlen mix of
// N = 32K; decode at batch {1, 16, 64, 256}. bf16 q, k, v (SiLU of a normal, as MiniMax feeds
// them), bf16 o, fp32 state pool with an initial state (read and written back), MiniMax slopes of
// layer 0 of 80 (rank 0's slice for H = 8), scale 1. FLOPs and minimum bytes per call:
// docs/performance.md ("Lightning attention").
#include <numeric>
#include <string>

#include "common.cuh"
#include "fulgur/lightning.cuh"
#if __has_include("fulgur/lightning/decode.cuh")
#include "fulgur/lightning/decode.cuh"
#define FULGUR_BENCH_HAVE_DECODE 1
#else
#define FULGUR_BENCH_HAVE_DECODE 0
#endif

namespace {

using namespace fulgur_bench;
namespace lt = fulgur::lightning;

constexpr int kD = 128;      // head dim (dk = dv)
constexpr int kBlock = 64;   // the spec's block B in the FLOP count (fulgur's, fla's and OpenNLPLab's chunk)
constexpr int kLayers = 80;  // MiniMax-Text-01

/// Sequence lengths of a prefill case: `seqs` equal parts of N, or the varlen mix (a long
/// document, a few medium prompts and short ones, as a serving batch holds them; sums to N).
std::vector<int32_t> seq_lengths(int64_t N, int seqs, bool varlen) {
  std::vector<int32_t> L;
  if (varlen) {
    // fractions of N: 1/2, 1/4, 1/8, 1/16, 1/32, and the rest in 1-token and odd-sized tails
    int64_t left = N;
    for (int i = 1; i <= 5; ++i) {
      const int32_t n = static_cast<int32_t>(N >> i) - 3 * i;  // not multiples of the block
      L.push_back(n);
      left -= n;
    }
    L.push_back(1);
    left -= 1;
    L.push_back(static_cast<int32_t>(left));
    return L;
  }
  for (int i = 0; i < seqs; ++i) L.push_back(static_cast<int32_t>(N / seqs));
  return L;
}

Cost prefill_cost(int H, int64_t N, int num_seqs) {
  Cost c;
  c.flops = static_cast<double>(N) * H * (4.0 * kBlock * kD + 4.0 * kD * kD);
  c.bytes = static_cast<double>(N) * H * (4.0 * kD * 2.0)               // q, k, v read, o written, bf16
            + static_cast<double>(num_seqs) * H * kD * kD * 4.0 * 2.0;  // fp32 state in and out
  return c;
}

/// steps tokens per row (speculative decoding); the state is read and written once per call.
Cost decode_cost(int H, int64_t B, int steps = 1) {
  Cost c;
  c.flops = static_cast<double>(B) * steps * H * 5.0 * kD * kD;  // S' = lambda S + k^T v (3d^2), o = q S' (2d^2)
  c.bytes = static_cast<double>(B) * H * (steps * 4.0 * kD * 2.0 + 2.0 * kD * kD * 4.0);
  return c;
}

std::vector<float> slopes_for(int H) {
  std::vector<float> s(H);
  // H = 8 is rank 0 of tensor parallelism 8 over MiniMax's 64 heads.
  lt::fill_minimax_slopes(s.data(), 64, /*layer=*/0, kLayers, lt::SlopeConvention::kVllm, 0, 64 / H);
  return s;
}

struct Tensors {
  Buf<__nv_bfloat16> q, k, v, o;
  Buf<float> state;
};

cudaError_t make_tensors(Tensors& t, int64_t rows, int H, int64_t slots, uint64_t seed) {
  const int64_t n = rows * H * kD;
  cudaError_t e;
  if ((e = t.q.alloc(n)) != cudaSuccess || (e = t.k.alloc(n)) != cudaSuccess || (e = t.v.alloc(n)) != cudaSuccess ||
      (e = t.o.alloc(n)) != cudaSuccess || (e = t.state.alloc(slots * H * kD * kD)) != cudaSuccess)
    return e;
  if ((e = fill(t.q.data(), n, seed, Dist::kSiluNormal)) != cudaSuccess) return e;
  if ((e = fill(t.k.data(), n, seed + 1, Dist::kSiluNormal)) != cudaSuccess) return e;
  if ((e = fill(t.v.data(), n, seed + 2, Dist::kSiluNormal)) != cudaSuccess) return e;
  return fill(t.state.data(), slots * H * kD * kD, seed + 3, Dist::kNormal, 0.1f);
}

void bench_prefill(benchmark::State& st, int H, int64_t N, int seqs, bool varlen, int32_t segment_tokens = 0) {
  const std::vector<int32_t> lens = seq_lengths(N, seqs, varlen);
  const int B = static_cast<int>(lens.size());
  const Cost cost = prefill_cost(H, N, B);
  const int copies = rotation_copies(cost.bytes);
  std::vector<int32_t> cu(B + 1, 0), slots(B);
  for (int b = 0; b < B; ++b) cu[b + 1] = cu[b] + lens[b];
  std::iota(slots.begin(), slots.end(), 0);
  Buf<int32_t> d_cu, d_slots;
  Buf<float> d_slopes;
  FULGUR_BENCH_CHECK(st, upload(d_cu, cu));
  FULGUR_BENCH_CHECK(st, upload(d_slots, slots));
  FULGUR_BENCH_CHECK(st, upload(d_slopes, slopes_for(H)));
  std::vector<Tensors> t(copies);
  std::vector<lt::PrefillParams> ps(copies);
  size_t ws_bytes = 0;
  for (int c = 0; c < copies; ++c) {
    FULGUR_BENCH_CHECK(st, make_tensors(t[c], N, H, B, 1000 + 10 * c));
    lt::PrefillParams& p = ps[c];
    p.batch_size = B;
    p.num_tokens = N;
    p.cu_seqlens = d_cu.data();
    p.max_seqlen = *std::max_element(lens.begin(), lens.end());
    p.segment_tokens = segment_tokens;
    p.num_heads = H;
    p.dk = p.dv = kD;
    p.qkv_dtype = p.o_dtype = fulgur::DType::kBF16;
    p.q = t[c].q.data();
    p.k = t[c].k.data();
    p.v = t[c].v.data();
    p.o = t[c].o.data();
    p.q_stride_token = p.k_stride_token = p.v_stride_token = p.o_stride_token = int64_t{H} * kD;
    p.q_stride_head = p.k_stride_head = p.v_stride_head = p.o_stride_head = kD;
    p.slopes = d_slopes.data();
    p.scale = 1.0f;
    p.state = t[c].state.data();
    p.num_slots = B;
    p.slot_ids = d_slots.data();
    size_t bytes = 0;
    FULGUR_BENCH_CHECK(st, lt::prefill(nullptr, bytes, p, nullptr));
    ws_bytes = std::max(ws_bytes, bytes);
  }
  Buf<unsigned char> ws;
  FULGUR_BENCH_CHECK(st, ws.alloc(ws_bytes));
  // The index arrays are checked on the device, and a bad one makes the call write nothing: make
  // sure the timed calls do the work.
  {
    size_t bytes = ws_bytes;
    FULGUR_BENCH_CHECK(st, lt::prefill(ws.data(), bytes, ps[0], nullptr));
    lt::PrefillArrayError err = lt::PrefillArrayError::kOk;
    FULGUR_BENCH_CHECK(st, lt::prefill_device_status(ws.data(), err));
    if (err != lt::PrefillArrayError::kOk) {
      st.SkipWithError("lightning prefill: the device check rejected the benchmark's index arrays");
      return;
    }
  }
  FULGUR_BENCH_CHECK(st, cudaDeviceSynchronize());
  run_timed(st, cost, copies, [&](int c, cudaStream_t s) {
    size_t bytes = ws_bytes;
    return lt::prefill(ws.data(), bytes, ps[c], s);
  });
}

/// load_all: launch the load-all one-token kernel (DecodeMode::kOneToken) on the unsplit grid
/// that decode() gives the streaming kernel, so one run compares the two at B x H >= 512
/// (docs/design/lightning.md, "Streaming the state for large batches").
void bench_decode(benchmark::State& st, int H, int64_t B, int steps = 1, bool load_all = false) {
#if FULGUR_BENCH_HAVE_DECODE
  const Cost cost = decode_cost(H, B, steps);
  const int copies = rotation_copies(cost.bytes);
  std::vector<int32_t> slots(B);
  std::iota(slots.begin(), slots.end(), 0);
  Buf<int32_t> d_slots;
  Buf<float> d_slopes;
  FULGUR_BENCH_CHECK(st, upload(d_slots, slots));
  FULGUR_BENCH_CHECK(st, upload(d_slopes, slopes_for(H)));
  std::vector<Tensors> t(copies);
  std::vector<lt::DecodeParams> ps(copies);
  for (int c = 0; c < copies; ++c) {
    FULGUR_BENCH_CHECK(st, make_tensors(t[c], B * steps, H, B, 2000 + 10 * c));
    lt::DecodeParams& p = ps[c];
    p.batch_size = static_cast<int32_t>(B);
    p.num_steps = steps;
    p.num_heads = H;
    p.dk = p.dv = kD;
    p.qkv_dtype = p.o_dtype = fulgur::DType::kBF16;
    p.q = t[c].q.data();
    p.k = t[c].k.data();
    p.v = t[c].v.data();
    p.o = t[c].o.data();
    p.q_stride_token = p.k_stride_token = p.v_stride_token = p.o_stride_token = int64_t{H} * kD;
    p.q_stride_head = p.k_stride_head = p.v_stride_head = p.o_stride_head = kD;
    p.slopes = d_slopes.data();
    p.scale = 1.0f;
    p.state = t[c].state.data();
    p.num_slots = B;
    p.slot_ids = d_slots.data();
  }
  FULGUR_BENCH_CHECK(st, cudaDeviceSynchronize());
  if (load_all) {
    if (steps != 1 || lt::decode_splits(B * H) != 1) {
      st.SkipWithError("the load-all comparison is for one-token calls with B x H >= 512");
      for (auto _ : st) {
      }
      return;
    }
    run_timed(st, cost, copies, [&](int c, cudaStream_t s) {
      lt::detail::decode_kernel<kD, false, __nv_bfloat16, lt::detail::DecodeMode::kOneToken>
          <<<dim3(static_cast<unsigned>(B), static_cast<unsigned>(H), 1), dim3(2 * kD), 0, s>>>(ps[c]);
      return cudaGetLastError();
    });
    return;
  }
  run_timed(st, cost, copies, [&](int c, cudaStream_t s) { return lt::decode(ps[c], s); });
#else
  (void)H;
  (void)B;
  (void)steps;
  (void)load_all;
  st.SkipWithError("fulgur::lightning decode is not in this build (include/fulgur/lightning/decode.cuh missing)");
  for (auto _ : st) {
  }
#endif
}

void register_all() {
  for (int H : {8, 64}) {
    for (int64_t N : {int64_t{4096}, int64_t{32768}, int64_t{131072}}) {
      for (int seqs : {1, 4}) {
        const std::string name = "lightning.prefill/H=" + std::to_string(H) + "/d=128/N=" + std::to_string(N) +
                                 "/seqs=" + std::to_string(seqs);
        add(name, prefill_cost(H, N, seqs), [H, N, seqs](benchmark::State& s) { bench_prefill(s, H, N, seqs, false); });
      }
    }
    const int64_t N = 32768;
    const std::vector<int32_t> lens = seq_lengths(N, 0, true);
    std::string extra = "lens=";
    for (size_t i = 0; i < lens.size(); ++i) extra += (i ? "," : "") + std::to_string(lens[i]);
    const int nv = static_cast<int>(lens.size());
    add(
        "lightning.prefill/H=" + std::to_string(H) + "/d=128/N=32768/seqs=varlen" + std::to_string(nv),
        prefill_cost(H, N, nv), [H, N](benchmark::State& s) { bench_prefill(s, H, N, 0, true); }, extra);
  }
  // The per-call segment length (PrefillParams::segment_tokens; default 1024): fewer, longer
  // segments read k and v a second time for fewer tokens but give fewer CTAs (32768 turns
  // segments off); shorter ones give more CTAs (N = 4096, H = 8 is 32 CTAs at the default, a
  // quarter of the SMs) for more segment-state work and a longer scan. The same bytes and floor
  // as the default-length shape.
  for (int H : {8, 64}) {
    for (int seqs : {1, 4}) {
      for (int64_t N : {int64_t{4096}, int64_t{32768}}) {
        const std::vector<int32_t> segs =
            N == 4096 ? std::vector<int32_t>{256, 512} : std::vector<int32_t>{512, 2048, 4096, 32768};
        for (int32_t seg : segs) {
          add("lightning.prefill/H=" + std::to_string(H) + "/d=128/N=" + std::to_string(N) +
                  "/seqs=" + std::to_string(seqs) + "/seg=" + std::to_string(seg),
              prefill_cost(H, N, seqs),
              [H, N, seqs, seg](benchmark::State& s) { bench_prefill(s, H, N, seqs, false, seg); });
        }
      }
    }
  }
  for (int H : {8, 64}) {
    for (int64_t B : {1, 16, 64, 256}) {
      add("lightning.decode/H=" + std::to_string(H) + "/d=128/B=" + std::to_string(B), decode_cost(H, B),
          [H, B](benchmark::State& s) { bench_decode(s, H, B); });
    }
  }
  // The load-all one-token kernel on the same unsplit grids (B x H >= 512), beside the
  // streaming kernel decode() runs there: same bytes and floor.
  for (int H : {8, 64}) {
    for (int64_t B : {16, 64, 256}) {
      if (B * H < 512) continue;
      add("lightning.decode/H=" + std::to_string(H) + "/d=128/B=" + std::to_string(B) + "/kernel=load_all",
          decode_cost(H, B), [H, B](benchmark::State& s) { bench_decode(s, H, B, 1, true); });
    }
  }
  // Speculative decoding: 4 tokens per row in one call (the state read and written once).
  for (int H : {8, 64}) {
    add("lightning.decode/H=" + std::to_string(H) + "/d=128/B=64/steps=4", decode_cost(H, 64, 4),
        [H](benchmark::State& s) { bench_decode(s, H, 64, 4); });
  }
}

}  // namespace

FULGUR_BENCH_MAIN("lightning", register_all)
