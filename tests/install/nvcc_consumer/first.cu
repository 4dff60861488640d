// SPDX-License-Identifier: Apache-2.0
// Translation unit 1 of the vendored-headers consumer: main() and one use of every launcher.
#include <cstdio>

#include "launch_all.cuh"

cudaError_t second_translation_unit(unsigned char* scratch, void* workspace, size_t workspace_bytes,
                                    cudaStream_t stream);

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: linked, not run\n");
    return 77;
  }
  void* scratch = nullptr;
  void* ws = nullptr;
  const size_t bytes = 1 << 20;
  if (cudaMalloc(&scratch, 8192) != cudaSuccess || cudaMemset(scratch, 0, 8192) != cudaSuccess ||
      cudaMalloc(&ws, bytes) != cudaSuccess)
    return 1;
  unsigned char* z = static_cast<unsigned char*>(scratch);
  const cudaError_t a = launch_every_family(z, ws, bytes, nullptr);
  const cudaError_t b = second_translation_unit(z, ws, bytes, nullptr);
  const cudaError_t s = cudaDeviceSynchronize();
  cudaFree(ws);
  cudaFree(scratch);
  std::printf("first: %s, second: %s, sync: %s\n", cudaGetErrorString(a), cudaGetErrorString(b), cudaGetErrorString(s));
  return a == cudaSuccess && b == cudaSuccess && s == cudaSuccess ? 0 : 1;
}
