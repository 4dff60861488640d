// SPDX-License-Identifier: Apache-2.0
// Compile-environment macros shared by every fulgur header.
#pragma once

#include "fulgur/version.hpp"

// FULGUR_EMULATE selects the CPU emulation of the CUDA execution model (include/fulgur/emu/).
// It is only meaningful for a host compiler; under nvcc the real CUDA path is always taken.
#if defined(__CUDACC__) && defined(FULGUR_EMULATE)
#error "FULGUR_EMULATE is for host compilers (g++/clang++); compile kernels with nvcc without it"
#endif

#if defined(__CUDACC__)
#define FULGUR_HOST_DEVICE __host__ __device__
#define FULGUR_DEVICE __device__
#define FULGUR_FORCEINLINE __forceinline__
#else
#define FULGUR_HOST_DEVICE
#define FULGUR_DEVICE
#define FULGUR_FORCEINLINE inline
#endif

// Every fulgur symbol lives in a versioned inline namespace so two engines that vendor different
// fulgur versions into one process do not violate the ODR (CUB fixed real bugs the same way).
#define FULGUR_ABI_NS v0_1
#define FULGUR_NAMESPACE_BEGIN \
  namespace fulgur {           \
  inline namespace FULGUR_ABI_NS {
#define FULGUR_NAMESPACE_END \
  }                          \
  }

// Kernels get hidden visibility so a shared library that includes fulgur does not export them.
#if defined(_WIN32)
#define FULGUR_HIDDEN
#else
#define FULGUR_HIDDEN __attribute__((visibility("hidden")))
#endif
