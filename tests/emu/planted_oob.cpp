// Kernels that index shared memory one element past the end. AddressSanitizer must report both:
// static shared memory (function-local statics) and dynamic shared memory (exact-size buffer).
#include <cstdio>
#include <cstring>

#include "fulgur/detail/launch.cuh"
#include "fulgur/memory.hpp"

FULGUR_KERNEL void k_static_oob(int* out, int n) {
  __shared__ int s[64];
  s[threadIdx.x] = 1;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x + n];  // n = 1: thread 63 reads s[64]
}

FULGUR_KERNEL void k_dynamic_oob(int* out, int n) {
  FULGUR_DYNAMIC_SMEM(int, s);
  s[threadIdx.x] = 1;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x + n];
}

int main(int argc, char** argv) {
  const bool dynamic = argc > 1 && std::strcmp(argv[1], "dynamic") == 0;
  fulgur::DeviceBuffer<int> out(64);
  cudaError_t e = dynamic ? fulgur::detail::launch(k_dynamic_oob, dim3(1), dim3(64), 64 * sizeof(int), nullptr,
                                                   out.data(), 1)
                          : fulgur::detail::launch(k_static_oob, dim3(1), dim3(64), 0, nullptr, out.data(), 1);
  std::printf("launch: %d\n", static_cast<int>(e));
  return 0;
}
