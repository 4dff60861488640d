// Semantics of the CUDA execution model as fulgur's emulation provides it. The same source runs
// on a GPU (test_emu_gpu), where the hardware defines the expected behaviour; checks of
// emulation-only behaviour (deadlock reports, resume orders) are compiled only under emulation.
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <string>
#include <vector>

#include "fulgur/detail/launch.cuh"
#include "fulgur/memory.hpp"
#include "fulgur_test.hpp"

using fulgur::DeviceBuffer;
using fulgur::detail::launch;

namespace {

__global__ void k_builtins(uint32_t* out) {
  const unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned bid = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned nthreads = blockDim.x * blockDim.y * blockDim.z;
  uint32_t* o = out + 4 * (bid * nthreads + tid);
  o[0] = threadIdx.x | threadIdx.y << 10 | threadIdx.z << 20;
  o[1] = blockIdx.x | blockIdx.y << 10 | blockIdx.z << 20;
  o[2] = blockDim.x | blockDim.y << 10 | blockDim.z << 20;
  o[3] = gridDim.x | gridDim.y << 10 | gridDim.z << 20;
}

// Reverse n values through static shared memory: needs block-scope sharing and the barrier.
__global__ void k_reverse(const int* in, int* out, int n) {
  __shared__ int buf[1024];
  const int t = static_cast<int>(threadIdx.x);
  buf[t] = in[blockIdx.x * n + t] * 3 + 1;
  __syncthreads();
  out[blockIdx.x * n + t] = buf[n - 1 - t];
}

__global__ void k_barrier_variants(const int* pred, int* out) {
  const int p = pred[threadIdx.x];
  const int c = __syncthreads_count(p);
  const int a = __syncthreads_and(p);
  const int o = __syncthreads_or(p);
  out[3 * threadIdx.x + 0] = c;
  out[3 * threadIdx.x + 1] = a;
  out[3 * threadIdx.x + 2] = o;
}

// Every shuffle flavour on lane-identifying values, at width 32 and 8.
__global__ void k_shuffles(int* out, int src, int delta, int lane_mask) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  const int v = 1000 * static_cast<int>(threadIdx.x / 32) + lane;
  int* o = out + 8 * threadIdx.x;
  o[0] = __shfl_sync(0xffffffffu, v, src);
  o[1] = __shfl_up_sync(0xffffffffu, v, delta);
  o[2] = __shfl_down_sync(0xffffffffu, v, delta);
  o[3] = __shfl_xor_sync(0xffffffffu, v, lane_mask);
  o[4] = __shfl_sync(0xffffffffu, v, src, 8);
  o[5] = __shfl_up_sync(0xffffffffu, v, delta, 8);
  o[6] = __shfl_down_sync(0xffffffffu, v, delta, 8);
  o[7] = __shfl_xor_sync(0xffffffffu, v, lane_mask, 8);
}

__global__ void k_shuffle_types(double* d_out, __nv_bfloat16* b_out, long long* l_out) {
  const unsigned lane = threadIdx.x % 32;
  d_out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 0.5 + lane, 1);
  b_out[threadIdx.x] = __shfl_down_sync(0xffffffffu, __float2bfloat16_rn(static_cast<float>(lane)), 1);
  l_out[threadIdx.x] = __shfl_sync(0xffffffffu, (1ll << 40) + lane, 31 - static_cast<int>(lane));
}

// Votes on a per-lane predicate; the two half-warps also vote separately with partial masks.
__global__ void k_votes(const int* pred, unsigned* out) {
  const unsigned lane = threadIdx.x % 32;
  const int p = pred[threadIdx.x];
  unsigned* o = out + 6 * threadIdx.x;
  o[0] = __ballot_sync(0xffffffffu, p);
  o[1] = static_cast<unsigned>(__any_sync(0xffffffffu, p));
  o[2] = static_cast<unsigned>(__all_sync(0xffffffffu, p));
  o[3] = __match_any_sync(0xffffffffu, p);
  const unsigned half = lane < 16 ? 0x0000ffffu : 0xffff0000u;
  o[4] = __ballot_sync(half, p);
  o[5] = static_cast<unsigned>(__shfl_sync(half, p * 100 + static_cast<int>(lane), 0, 16));
}

__global__ void k_atomics(int* i_sum, unsigned long long* u_sum, float* f_sum, int* i_min, int* i_max,
                             unsigned* cas_winner, __half* h_sum, __nv_bfloat16* b_sum) {
  const int g = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  atomicAdd(i_sum, g);
  atomicAdd(u_sum, static_cast<unsigned long long>(g) << 20);
  atomicAdd(f_sum, 0.25f);
  atomicMin(i_min, 1000 - g);
  atomicMax(i_max, g * 7 - 3);
  atomicCAS(cas_winner, 0xffffffffu, static_cast<unsigned>(g));
  atomicAdd(h_sum, __float2half(1.0f));
  atomicAdd(b_sum, __float2bfloat16(1.0f));
}

// Records the size of dynamic shared memory through a write/read pattern across threads.
__global__ void k_dynamic_smem(const float* in, float* out, int n) {
  FULGUR_DYNAMIC_SMEM(float, s);
  for (int i = static_cast<int>(threadIdx.x); i < n; i += static_cast<int>(blockDim.x)) s[i] = in[i] * 2.0f;
  __syncthreads();
  for (int i = static_cast<int>(threadIdx.x); i < n; i += static_cast<int>(blockDim.x)) out[i] = s[n - 1 - i];
}

// A partial last warp: 40 threads = one full warp and one of 8 lanes; reduce within each warp.
__global__ void k_partial_warp(int* out) {
  int v = static_cast<int>(threadIdx.x) + 1;
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  if (threadIdx.x % 32 == 0) out[threadIdx.x / 32] = v;
}

// Exited threads count as arrived at later block barriers.
__global__ void k_early_exit(int* out) {
  __shared__ int s[64];
  if (threadIdx.x >= 48) return;
  s[threadIdx.x] = static_cast<int>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = s[47 - threadIdx.x];
}


// Math and conversion intrinsics kernels use, vector types, __ldg and 16-bit pair arithmetic.
__global__ void k_math(const float4* in, float* out, __nv_bfloat162* bf2, __half2* h2, double* d_sum) {
  const unsigned t = threadIdx.x;
  const float4 v = __ldg(&in[t]);
  float* o = out + 8 * t;
  o[0] = __expf(v.x);
  o[1] = exp2f(v.y);
  o[2] = __fdividef(v.z, v.w);
  o[3] = __frcp_rn(v.w);
  o[4] = rsqrtf(v.w);
  o[5] = __bfloat162float(__float2bfloat16_rn(v.x));
  o[6] = __half2float(__float2half_rn(v.y));
  o[7] = __saturatef(v.z);
  bf2[t] = __hmul2(__floats2bfloat162_rn(v.x, v.y), __floats2bfloat162_rn(2.0f, 0.5f));
  h2[t] = __hadd2(__floats2half2_rn(v.x, v.y), __floats2half2_rn(1.0f, -1.0f));
  atomicAdd(d_sum, static_cast<double>(t) * 0.5);
}

template <typename T>
std::vector<T> run_and_read(DeviceBuffer<T>& buf) {
  REQUIRE(fulgur::device_synchronize() == cudaSuccess);
  return buf.to_host();
}

}  // namespace

TEST_CASE("built-in variables for 3D grids and blocks", "[emu]") {
  const dim3 grid(3, 2, 2), block(4, 3, 2);
  const size_t threads = 3 * 2 * 2 * 4 * 3 * 2;
  DeviceBuffer<uint32_t> out(threads * 4);
  out.fill_bytes(0xFF);
  REQUIRE(launch(k_builtins, grid, block, 0, nullptr, out.data()) == cudaSuccess);
  auto h = run_and_read(out);
  size_t i = 0;
  for (unsigned bz = 0; bz < 2; ++bz)
    for (unsigned by = 0; by < 2; ++by)
      for (unsigned bx = 0; bx < 3; ++bx)
        for (unsigned tz = 0; tz < 2; ++tz)
          for (unsigned ty = 0; ty < 3; ++ty)
            for (unsigned tx = 0; tx < 4; ++tx, ++i) {
              CHECK(h[4 * i + 0] == (tx | ty << 10 | tz << 20));
              CHECK(h[4 * i + 1] == (bx | by << 10 | bz << 20));
              CHECK(h[4 * i + 2] == (4u | 3u << 10 | 2u << 20));
              CHECK(h[4 * i + 3] == (3u | 2u << 10 | 2u << 20));
            }
}

TEST_CASE("static shared memory has block scope and __syncthreads orders it", "[emu]") {
  fulgur_test::Rng rng("emu reverse");
  FULGUR_INFO_SEED(rng);
  for (int n : {1, 31, 32, 33, 256, 1024}) {
    const int blocks = 3;
    std::vector<int> in(static_cast<size_t>(n * blocks));
    for (int& v : in) v = static_cast<int>(rng.uniform_int(-1000, 1000));
    DeviceBuffer<int> d_in(in), d_out(in.size());
    d_out.fill_bytes(0xFF);
    REQUIRE(launch(k_reverse, dim3(blocks), dim3(n), 0, nullptr, d_in.data(), d_out.data(), n) == cudaSuccess);
    auto out = run_and_read(d_out);
    for (int b = 0; b < blocks; ++b)
      for (int t = 0; t < n; ++t) REQUIRE(out[b * n + t] == in[b * n + n - 1 - t] * 3 + 1);
  }
}

TEST_CASE("__syncthreads_count / _and / _or", "[emu]") {
  fulgur_test::Rng rng("emu barrier variants");
  FULGUR_INFO_SEED(rng);
  for (int mode = 0; mode < 3; ++mode) {
    const int n = 96;
    std::vector<int> pred(n);
    for (int& p : pred) p = mode == 0 ? static_cast<int>(rng.uniform_int(0, 1)) * 5 : mode == 1 ? 1 : 0;
    const int count = static_cast<int>(std::count_if(pred.begin(), pred.end(), [](int p) { return p != 0; }));
    DeviceBuffer<int> d_pred(pred), d_out(3 * n);
    d_out.fill_bytes(0xFF);
    REQUIRE(launch(k_barrier_variants, dim3(1), dim3(n), 0, nullptr, d_pred.data(), d_out.data()) == cudaSuccess);
    auto out = run_and_read(d_out);
    for (int t = 0; t < n; ++t) {
      CHECK(out[3 * t + 0] == count);
      CHECK((out[3 * t + 1] != 0) == (count == n));
      CHECK((out[3 * t + 2] != 0) == (count > 0));
    }
  }
}

TEST_CASE("warp shuffles follow the CUDA semantics at every width", "[emu]") {
  // Expected values from the programming guide's definitions, written out independently.
  const int warps = 3;
  for (int src : {0, 5, 31, 37}) {
    for (int delta : {0, 1, 3, 16}) {
      for (int lane_mask : {1, 6, 16, 31}) {
        DeviceBuffer<int> out(8 * 32 * warps);
        out.fill_bytes(0xFF);
        REQUIRE(launch(k_shuffles, dim3(1), dim3(32 * warps), 0, nullptr, out.data(), src, delta, lane_mask) ==
                cudaSuccess);
        auto h = run_and_read(out);
        for (int w = 0; w < warps; ++w) {
          for (int l = 0; l < 32; ++l) {
            const int* o = &h[8 * (32 * w + l)];
            auto val = [&](int lane) { return 1000 * w + lane; };
            INFO("warp " << w << " lane " << l << " src " << src << " delta " << delta << " xor " << lane_mask);
            CHECK(o[0] == val(src % 32));
            CHECK(o[1] == (l >= delta ? val(l - delta) : val(l)));
            CHECK(o[2] == (l + delta < 32 ? val(l + delta) : val(l)));
            CHECK(o[3] == val(l ^ lane_mask));
            const int base = l / 8 * 8;
            CHECK(o[4] == val(base + src % 8));
            CHECK(o[5] == (l - base >= delta ? val(l - delta) : val(l)));
            CHECK(o[6] == (l - base + delta < 8 ? val(l + delta) : val(l)));
            const int x = l ^ lane_mask;
            CHECK(o[7] == (x < base + 8 ? val(x) : val(l)));
          }
        }
      }
    }
  }
}

TEST_CASE("shuffles carry 16- and 64-bit payloads", "[emu]") {
  DeviceBuffer<double> d(64);
  DeviceBuffer<__nv_bfloat16> b(64);
  DeviceBuffer<long long> l(64);
  d.fill_bytes(0xFF);
  b.fill_bytes(0xFF);
  l.fill_bytes(0xFF);
  REQUIRE(launch(k_shuffle_types, dim3(1), dim3(64), 0, nullptr, d.data(), b.data(), l.data()) == cudaSuccess);
  auto hd = run_and_read(d);
  auto hb = b.to_host();
  auto hl = l.to_host();
  for (int t = 0; t < 64; ++t) {
    const int lane = t % 32;
    CHECK(hd[t] == 0.5 + (lane ^ 1));
    CHECK(__bfloat162float(hb[t]) == static_cast<float>(lane < 31 ? lane + 1 : lane));
    CHECK(hl[t] == (1ll << 40) + (31 - lane));
  }
}

TEST_CASE("votes: ballot, any, all, match_any, partial masks", "[emu]") {
  fulgur_test::Rng rng("emu votes");
  FULGUR_INFO_SEED(rng);
  for (int trial = 0; trial < 4; ++trial) {
    const int n = 64;
    std::vector<int> pred(n);
    for (int& p : pred)
      p = trial == 0 ? 1 : trial == 1 ? 0 : static_cast<int>(rng.uniform_int(0, 2));  // 0,1,2: match classes
    DeviceBuffer<int> d_pred(pred);
    DeviceBuffer<unsigned> out(6 * n);
    out.fill_bytes(0xFF);
    REQUIRE(launch(k_votes, dim3(1), dim3(n), 0, nullptr, d_pred.data(), out.data()) == cudaSuccess);
    auto h = run_and_read(out);
    for (int w = 0; w < 2; ++w) {
      unsigned ballot = 0;
      for (int l = 0; l < 32; ++l) ballot |= (pred[32 * w + l] != 0 ? 1u : 0u) << l;
      for (int l = 0; l < 32; ++l) {
        const unsigned* o = &h[6 * (32 * w + l)];
        unsigned match = 0;
        for (int s = 0; s < 32; ++s) match |= (pred[32 * w + s] == pred[32 * w + l] ? 1u : 0u) << s;
        const unsigned half = l < 16 ? 0x0000ffffu : 0xffff0000u;
        CHECK(o[0] == ballot);
        CHECK(o[1] == (ballot != 0 ? 1u : 0u));
        CHECK(o[2] == (ballot == 0xffffffffu ? 1u : 0u));
        CHECK(o[3] == match);
        CHECK(o[4] == (ballot & half));
        const int leader = l < 16 ? 0 : 16;
        CHECK(o[5] == static_cast<unsigned>(pred[32 * w + leader] * 100 + leader));
      }
    }
  }
}

TEST_CASE("atomics across blocks: int, u64, float, min, max, CAS, half, bf16", "[emu]") {
  const int blocks = 4, threads = 64, n = blocks * threads;
  DeviceBuffer<int> i_sum(std::vector<int>{7}), i_min(std::vector<int>{1 << 30}), i_max(std::vector<int>{-(1 << 30)});
  DeviceBuffer<unsigned long long> u_sum(std::vector<unsigned long long>{0});
  DeviceBuffer<float> f_sum(std::vector<float>{1.0f});
  DeviceBuffer<unsigned> cas(std::vector<unsigned>{0xffffffffu});
  DeviceBuffer<__half> h_sum(std::vector<__half>{__float2half(0.0f)});
  DeviceBuffer<__nv_bfloat16> b_sum(std::vector<__nv_bfloat16>{__float2bfloat16(0.0f)});
  REQUIRE(launch(k_atomics, dim3(blocks), dim3(threads), 0, nullptr, i_sum.data(), u_sum.data(), f_sum.data(),
                 i_min.data(), i_max.data(), cas.data(), h_sum.data(), b_sum.data()) == cudaSuccess);
  REQUIRE(fulgur::device_synchronize() == cudaSuccess);
  CHECK(i_sum.to_host()[0] == 7 + n * (n - 1) / 2);
  CHECK(u_sum.to_host()[0] == (static_cast<unsigned long long>(n) * (n - 1) / 2) << 20);
  CHECK(f_sum.to_host()[0] == 1.0f + 0.25f * n);  // exact: multiples of 1/4 below 2^22
  CHECK(i_min.to_host()[0] == 1000 - (n - 1));
  CHECK(i_max.to_host()[0] == (n - 1) * 7 - 3);
  CHECK(cas.to_host()[0] < static_cast<unsigned>(n));  // exactly one thread's index won
  CHECK(__half2float(h_sum.to_host()[0]) == static_cast<float>(n));       // 256 is exact in fp16
  CHECK(__bfloat162float(b_sum.to_host()[0]) == static_cast<float>(n));  // bf16 counts to 256 exactly
}

TEST_CASE("dynamic shared memory of the launch's size", "[emu]") {
  fulgur_test::Rng rng("emu dynamic smem");
  FULGUR_INFO_SEED(rng);
  for (int n : {1, 100, 4096, 20000}) {  // 20000 floats = 80 KB: above the 48 KB default limit
    std::vector<float> in(static_cast<size_t>(n));
    for (float& v : in) v = static_cast<float>(rng.normal());
    DeviceBuffer<float> d_in(in), d_out(in.size());
    d_out.fill_bytes(0xFF);
    REQUIRE(launch(k_dynamic_smem, dim3(1), dim3(128), sizeof(float) * n, nullptr, d_in.data(), d_out.data(), n) ==
            cudaSuccess);
    auto out = run_and_read(d_out);
    for (int i = 0; i < n; ++i) REQUIRE(out[i] == in[n - 1 - i] * 2.0f);
  }
}


TEST_CASE("math intrinsics, vector loads, bf16x2/half2 arithmetic, double atomics", "[emu]") {
  fulgur_test::Rng rng("emu math");
  FULGUR_INFO_SEED(rng);
  const int n = 64;
  std::vector<float4> in(n);
  for (auto& v : in)
    v = make_float4(static_cast<float>(rng.uniform(-4, 4)), static_cast<float>(rng.uniform(-8, 8)),
                    static_cast<float>(rng.uniform(-2, 2)), static_cast<float>(rng.uniform(0.25, 4)));
  DeviceBuffer<float4> d_in(in);
  DeviceBuffer<float> out(8 * n);
  DeviceBuffer<__nv_bfloat162> bf2(n);
  DeviceBuffer<__half2> h2(n);
  DeviceBuffer<double> d_sum(std::vector<double>{0.0});
  out.fill_bytes(0xFF);
  REQUIRE(launch(k_math, dim3(1), dim3(n), 0, nullptr, d_in.data(), out.data(), bf2.data(), h2.data(),
                 d_sum.data()) == cudaSuccess);
  auto o = run_and_read(out);
  auto b = bf2.to_host();
  auto h = h2.to_host();
  for (int t = 0; t < n; ++t) {
    const float4 v = in[t];
    const float* r = &o[8 * t];
    // Approximate hardware intrinsics: __expf/exp2f within 2 + 1.16|x| ulp, __fdividef and
    // rsqrtf within 2 ulp (CUDA programming guide, intrinsic functions); 2^-20 relative covers them
    // for |x| <= 8. __frcp_rn and the conversions are correctly rounded: exact comparisons.
    const double tol = 1.0 / (1 << 20);
    CHECK(std::fabs(r[0] - std::exp(double(v.x))) <= tol * std::exp(double(v.x)));
    CHECK(std::fabs(r[1] - std::exp2(double(v.y))) <= tol * std::exp2(double(v.y)));
    CHECK(std::fabs(r[2] - double(v.z) / v.w) <= tol * std::fabs(double(v.z) / v.w) + 1e-30);
    CHECK(r[3] == 1.0f / v.w);
    CHECK(std::fabs(r[4] - 1.0 / std::sqrt(double(v.w))) <= tol / std::sqrt(double(v.w)));
    CHECK(r[5] == __bfloat162float(__float2bfloat16_rn(v.x)));
    CHECK(r[6] == __half2float(__float2half_rn(v.y)));
    CHECK(r[7] == std::min(1.0f, std::max(0.0f, v.z)));
    // Multiplying by 2 and 0.5 is exact in bf16; adding +-1 to an fp16 value rounds once.
    CHECK(__low2float(b[t]) == 2.0f * __bfloat162float(__float2bfloat16_rn(v.x)));
    CHECK(__high2float(b[t]) == 0.5f * __bfloat162float(__float2bfloat16_rn(v.y)));
    CHECK(__low2float(h[t]) == __half2float(__float2half_rn(__half2float(__float2half_rn(v.x)) + 1.0f)));
    CHECK(__high2float(h[t]) == __half2float(__float2half_rn(__half2float(__float2half_rn(v.y)) - 1.0f)));
  }
  CHECK(d_sum.to_host()[0] == 0.5 * n * (n - 1) / 2);  // multiples of 1/2: exact in any order
}

TEST_CASE("a partial last warp shuffles among its existing lanes", "[emu]") {
  DeviceBuffer<int> out(2);
  out.fill_bytes(0xFF);
#if FULGUR_EMULATING
  // Under emulation a full mask in a partial warp names only existing lanes; on hardware the same
  // code is undefined behaviour, so the check is emulation-only.
  REQUIRE(launch(k_partial_warp, dim3(1), dim3(40), 0, nullptr, out.data()) == cudaSuccess);
  auto h = run_and_read(out);
  CHECK(h[0] == 32 * 33 / 2);                 // lanes 1..32
  // Threads 32..39 hold 33..40 (sum 292). At offsets 16 and 8 every source lane is missing, so
  // each lane gets its own value back (the emulation's rule for sources outside the mask) and v
  // doubles twice; offsets 4, 2, 1 then sum the 8 lanes: 4 * 292.
  CHECK(h[1] == 4 * (33 + 40) * 8 / 2);
#endif
  DeviceBuffer<int> out2(64);
  out2.fill_bytes(0xFF);
  REQUIRE(launch(k_early_exit, dim3(1), dim3(64), 0, nullptr, out2.data()) == cudaSuccess);
  auto h2 = run_and_read(out2);
  for (int t = 0; t < 48; ++t) CHECK(h2[t] == 47 - t);
  for (int t = 48; t < 64; ++t) CHECK(h2[t] == -1);  // untouched poison
}

TEST_CASE("invalid launch configurations are rejected", "[emu]") {
  DeviceBuffer<int> out(1);
  CHECK(launch(k_partial_warp, dim3(1), dim3(1025), 0, nullptr, out.data()) != cudaSuccess);
  CHECK(launch(k_partial_warp, dim3(0), dim3(32), 0, nullptr, out.data()) != cudaSuccess);
#if !FULGUR_EMULATING
  (void)cudaGetLastError();
#endif
}

#if FULGUR_EMULATING
namespace {

__global__ void k_deadlock(int* out) {
  // Lane 0 waits at the block barrier while lanes 1..31 wait for it in a shuffle.
  int v = static_cast<int>(threadIdx.x);
  if (threadIdx.x == 0) {
    __syncthreads();
  } else {
    v = __shfl_sync(0xffffffffu, v, 0);
  }
  out[threadIdx.x] = v;
}

__global__ void k_exited_lane(int* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}

__global__ void k_divergent_barrier(int* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

// Missing barrier between the write and the read of shared memory: which threads read a stale
// value depends on the order in which threads run, which the resume-order switch changes.
__global__ void k_racy(int* out, int salt) {
  __shared__ int s[64];
  s[threadIdx.x] = static_cast<int>(threadIdx.x) + salt;
  __syncwarp();
  out[threadIdx.x] = s[63 - threadIdx.x];  // the other warp may not have written yet
}

__global__ void k_cp_async(const float* in, float* out) {
  __shared__ float s[32];
  s[threadIdx.x] = -1.0f;
  __syncthreads();
  fulgur::emu::cp_async_enqueue(&s[threadIdx.x], &in[threadIdx.x], sizeof(float));
  fulgur::emu::cp_async_commit();
  out[threadIdx.x] = s[threadIdx.x];  // before the wait: the copy has not landed
  fulgur::emu::cp_async_wait(0);
  out[32 + threadIdx.x] = s[threadIdx.x];
}

__global__ void k_allgather(int* out) {
  const int mine[2] = {static_cast<int>(threadIdx.x), static_cast<int>(threadIdx.x) * 10};
  const int* all = static_cast<const int*>(fulgur::emu::warp_allgather(mine, sizeof mine));
  const unsigned l = threadIdx.x % 32;
  out[threadIdx.x] = all[2 * ((l + 1) % 32) + 1];
}

}  // namespace

TEST_CASE("emulation: deadlocks and misused collectives are reported, not hung", "[emu]") {
  DeviceBuffer<int> out(64);
  CHECK(launch(k_deadlock, dim3(1), dim3(32), 0, nullptr, out.data()) == cudaErrorLaunchFailure);
  const std::string msg = fulgur::emu::last_error_message();
  INFO(msg);
  CHECK(msg.find("deadlock") != std::string::npos);
  CHECK(msg.find("threads 0..0 wait at __syncthreads") != std::string::npos);
  CHECK(msg.find("threads 1..31 wait at a warp collective (mask 0xffffffff)") != std::string::npos);
  CHECK(msg.find("test_emu.cpp") != std::string::npos);

  CHECK(launch(k_exited_lane, dim3(1), dim3(32), 0, nullptr, out.data()) == cudaErrorLaunchFailure);
  CHECK(std::string(fulgur::emu::last_error_message()).find("exited") != std::string::npos);

  CHECK(launch(k_divergent_barrier, dim3(1), dim3(32), 0, nullptr, out.data()) == cudaErrorLaunchFailure);
  CHECK(std::string(fulgur::emu::last_error_message()).find("different places") != std::string::npos);

  // The emulation recovers: the next launch works.
  CHECK(launch(k_early_exit, dim3(1), dim3(64), 0, nullptr, out.data()) == cudaSuccess);
  CHECK(fulgur::emu::last_error_message().empty());
}

#if !FULGUR_EMU_THREADS
// The fiber backend's resume order decides who reads first; the thread backend (sanitizer build)
// leaves it to the OS, and ThreadSanitizer reports this race itself (planted_race).
TEST_CASE("emulation: the resume order exposes a missing barrier", "[emu]") {
  const auto saved = fulgur::emu::resume_order();
  // Each run writes with a new salt, so a value left in shared memory by an earlier run is stale.
  auto stale_lanes = [](fulgur::emu::ResumeOrder order, int salt) {
    fulgur::emu::set_resume_order(order, 7);
    DeviceBuffer<int> out(64);
    out.fill_bytes(0xFF);
    REQUIRE(launch(k_racy, dim3(1), dim3(64), 0, nullptr, out.data(), salt) == cudaSuccess);
    auto h = out.to_host();
    std::vector<int> stale;
    for (int t = 0; t < 64; ++t)
      if (h[t] != 63 - t + salt) stale.push_back(t);
    return stale;
  };
  auto fwd = stale_lanes(fulgur::emu::ResumeOrder::kForward, 1000);
  auto rev = stale_lanes(fulgur::emu::ResumeOrder::kReverse, 2000);
  fulgur::emu::set_resume_order(saved);
  // Forward: the last lane of warp 0 is released first and reads before warp 1 has run; reverse:
  // warp 1 goes first and reads warp 0's slots. The race shows in both, on different threads.
  CHECK_FALSE(fwd.empty());
  CHECK_FALSE(rev.empty());
  CHECK(fwd != rev);
}
#endif

TEST_CASE("emulation: cp.async copies land at the wait", "[emu]") {
  std::vector<float> in(32);
  std::iota(in.begin(), in.end(), 10.0f);
  DeviceBuffer<float> d_in(in), d_out(64);
  REQUIRE(launch(k_cp_async, dim3(1), dim3(32), 0, nullptr, d_in.data(), d_out.data()) == cudaSuccess);
  auto out = d_out.to_host();
  for (int t = 0; t < 32; ++t) {
    CHECK(out[t] == -1.0f);
    CHECK(out[32 + t] == in[t]);
  }
}

TEST_CASE("emulation: warp_allgather gives every lane every lane's record", "[emu]") {
  DeviceBuffer<int> out(64);
  out.fill_bytes(0xFF);
  REQUIRE(launch(k_allgather, dim3(1), dim3(64), 0, nullptr, out.data()) == cudaSuccess);
  auto h = out.to_host();
  for (int t = 0; t < 64; ++t) CHECK(h[t] == (t / 32 * 32 + (t % 32 + 1) % 32) * 10);
}
#endif
