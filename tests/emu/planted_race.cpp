// A kernel with its __syncthreads deliberately removed. Its result can look right in a given
// resume order; ThreadSanitizer, over the emulation's thread backend, must report the race.
#include <cstdio>

#include "fulgur/detail/launch.cuh"
#include "fulgur/memory.hpp"

FULGUR_KERNEL void k_missing_barrier(int* out) {
  __shared__ int s[128];
  s[threadIdx.x] = static_cast<int>(threadIdx.x);
  // __syncthreads();  <- the planted defect
  out[threadIdx.x] = s[127 - threadIdx.x];
}

int main() {
  fulgur::DeviceBuffer<int> out(128);
  cudaError_t e = fulgur::detail::launch(k_missing_barrier, dim3(1), dim3(128), 0, nullptr, out.data());
  std::printf("launch: %d\n", static_cast<int>(e));
  return e == cudaSuccess ? 0 : 1;
}
