// Measures what the emulation costs per launch, per __syncthreads and per warp shuffle on this
// machine, for docs/emulation.md. Asserts only that the kernels ran correctly; the numbers are
// printed (CPU timings depend on the machine).
#include <chrono>
#include <cstdio>

#include "fulgur/detail/launch.cuh"
#include "fulgur/memory.hpp"
#include "fulgur_test.hpp"

namespace {
__global__ void k_empty(int*) {}

__global__ void k_barriers(int* out, int iters) {
  __shared__ int s[1024];
  int acc = 0;
  for (int i = 0; i < iters; ++i) {
    s[threadIdx.x] = i;
    __syncthreads();
    acc += s[(threadIdx.x + 1) % blockDim.x];
    __syncthreads();
  }
  out[threadIdx.x] = acc;
}

__global__ void k_shuffles(int* out, int iters) {
  int v = static_cast<int>(threadIdx.x);
  for (int i = 0; i < iters; ++i) v += __shfl_xor_sync(0xffffffffu, v, 1 + i % 31) & 1;
  out[threadIdx.x] = v;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

TEST_CASE("emulation costs", "[emu][costs]") {
  fulgur::DeviceBuffer<int> out(1024);
  using fulgur::detail::launch;
  {
    const int reps = 200;
    auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r) REQUIRE(launch(k_empty, dim3(1), dim3(256), 0, nullptr, out.data()) == cudaSuccess);
    std::printf("emu cost: launch of 1 block x 256 threads: %.1f us\n", 1e6 * seconds_since(t0) / reps);
  }
  for (unsigned threads : {128u, 256u, 1024u}) {
    const int iters = 200;
    auto t0 = std::chrono::steady_clock::now();
    REQUIRE(launch(k_barriers, dim3(1), dim3(threads), 0, nullptr, out.data(), iters) == cudaSuccess);
    const double per = seconds_since(t0) / (2.0 * iters);
    auto h = out.to_host();
    // Each iteration adds i: sum over i < iters.
    CHECK(h[0] == iters * (iters - 1) / 2);
    std::printf("emu cost: __syncthreads with %u threads: %.2f us\n", threads, 1e6 * per);
  }
  {
    const int iters = 2000;
    auto t0 = std::chrono::steady_clock::now();
    REQUIRE(launch(k_shuffles, dim3(1), dim3(32), 0, nullptr, out.data(), iters) == cudaSuccess);
    std::printf("emu cost: one warp shuffle (32 lanes): %.2f us\n", 1e6 * seconds_since(t0) / iters);
  }
}
