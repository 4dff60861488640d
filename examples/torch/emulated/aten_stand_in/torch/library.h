// SPDX-License-Identifier: Apache-2.0
// Stand-in for the few PyTorch declarations examples/torch/fulgur_torch.cpp uses, so that CI
// (which has no PyTorch) can run the bindings' logic under fulgur's CPU emulation: host memory,
// sizes and strides, TORCH_CHECK throwing std::runtime_error. Not PyTorch: only what the bindings
// call, with the semantics they rely on (examples/torch/README.md, "Tests").
#pragma once
#include <string>
namespace torch {
struct Library {
  void def(const char*) {}
  template <typename F>
  void impl(const char*, F f) {
    (void)f;
  }
};
}  // namespace torch
#define TORCH_LIBRARY(ns, m) void torch_library_##ns(torch::Library& m)
#define TORCH_LIBRARY_IMPL(ns, k, m) void torch_library_impl_##ns##k(torch::Library& m)
