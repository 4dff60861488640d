// SPDX-License-Identifier: Apache-2.0
// Stand-in for the few PyTorch declarations examples/torch/fulgur_torch.cpp uses, so that CI
// (which has no PyTorch) can run the bindings' logic under fulgur's CPU emulation: host memory,
// sizes and strides, TORCH_CHECK throwing std::runtime_error. Not PyTorch: only what the bindings
// call, with the semantics they rely on (examples/torch/README.md, "Tests").
#pragma once
#include <ATen/ATen.h>
#include <cuda_runtime_api.h>
namespace at {
namespace cuda {
struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(c10::DeviceIndex) { return {}; }
}  // namespace cuda
}  // namespace at
