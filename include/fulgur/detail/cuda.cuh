// SPDX-License-Identifier: Apache-2.0
// The one header every fulgur kernel header includes for the CUDA language: the real CUDA
// headers under nvcc, plus fulgur's emulation of the device built-ins under a host compiler with
// FULGUR_EMULATE (docs/emulation.md).
#pragma once

#include "fulgur/detail/config.hpp"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#if defined(FULGUR_EMULATE) && !defined(__CUDACC__)
#include "fulgur/emu/emu.hpp"
#define FULGUR_EMULATING 1
#else
#define FULGUR_EMULATING 0
#endif

/// Dynamic shared memory: declares `T* name` pointing at the block's dynamic shared memory, whose
/// size is the launch's smem_bytes. Under emulation it is an exact-size, 0xFF-poisoned buffer.
#if FULGUR_EMULATING
#define FULGUR_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(::fulgur::emu::dynamic_smem())
#else
#define FULGUR_DYNAMIC_SMEM(T, name)                                 \
  extern __shared__ __align__(16) unsigned char fulgur_dynamic_smem_[]; \
  T* name = reinterpret_cast<T*>(fulgur_dynamic_smem_)
#endif

/// Qualifier for kernels: hidden visibility inside fulgur's versioned namespace.
#define FULGUR_KERNEL __global__ FULGUR_HIDDEN
