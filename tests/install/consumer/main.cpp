// A consumer that includes fulgur's headers, launches a kernel through the emulation and checks
// the result: proves the exported target carries the include paths (CCCL too), C++17 and the
// emulation settings.
#include <cstdio>
#include <vector>

#include <cub/version.cuh>  // CCCL must be on the include path for host compilers

#include "fulgur/detail/launch.cuh"
#include "fulgur/memory.hpp"
#include "fulgur/version.hpp"

FULGUR_KERNEL void k_scale(const float* in, float* out, float s, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) out[i] = in[i] * s;
}

int main() {
  const int n = 300;
  std::vector<float> in(n);
  for (int i = 0; i < n; ++i) in[i] = 0.5f * static_cast<float>(i) - 7.0f;
  fulgur::DeviceBuffer<float> d_in(in), d_out(n);
  if (fulgur::detail::launch(k_scale, dim3((n + 127) / 128), dim3(128), 0, nullptr, d_in.data(), d_out.data(), 3.0f,
                             n) != cudaSuccess)
    return 1;
  std::vector<float> out = d_out.to_host();
  for (int i = 0; i < n; ++i)
    if (out[i] != in[i] * 3.0f) {
      std::printf("mismatch at %d\n", i);
      return 1;
    }
  std::printf("consumer OK: fulgur %s, CUB %d\n", FULGUR_VERSION_STRING, CUB_VERSION);
  return 0;
}
