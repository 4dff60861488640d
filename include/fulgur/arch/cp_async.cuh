// SPDX-License-Identifier: Apache-2.0
// Asynchronous global -> shared copies (sm_80+; PTX ISA "Data Movement and Conversion
// Instructions: cp.async", "cp.async.commit_group", "cp.async.wait_group / cp.async.wait_all"):
//   cp_async_16(smem, gmem)             cp.async.cg.shared.global [smem], [gmem], 16
//   cp_async_16_zfill(smem, gmem, n)    the same copying only n (0..16) bytes, zero-filling the rest
//   cp_async_commit()                   cp.async.commit_group
//   cp_async_wait<N>()                  cp.async.wait_group N: all but the newest N committed
//                                       groups of THIS thread are complete and visible to it
//   cp_async_wait_all()                 cp.async.wait_all (= commit_group; wait_group 0)
// .cg caches in L2 only (the data is staged in shared memory, so L1 would hold a second copy).
// Both addresses must be 16-byte aligned. Completion is per thread: other threads see the data
// only after a barrier that follows the issuing thread's wait.
//
// Ordering: commit/wait carry a memory clobber so the compiler keeps this thread's shared-memory
// reads after the wait. The copy itself does not (as in CUTLASS): separate a buffer's last
// ordinary read or write from its refill with __syncthreads(), as every multistage pipeline does.
//
// Under FULGUR_EMULATE the copies are queued per thread (fulgur::emu::cp_async_*) and performed
// when a wait retires their group, so reading before the right wait shows stale data.
#pragma once

#include <cassert>
#include <cstdint>

#include "fulgur/detail/config.hpp"
#include "fulgur/detail/cuda.cuh"

FULGUR_NAMESPACE_BEGIN
namespace arch {

#if defined(__CUDACC__) || defined(FULGUR_EMULATE)

namespace detail {
#if defined(FULGUR_EMULATE)
// Source of the zero fill: the hardware writes zeros for the bytes past src_bytes, and doing it
// through the queue keeps them as asynchronous as the copied bytes.
alignas(16) inline constexpr unsigned char kCpAsyncZeros[16] = {};
#endif
}  // namespace detail

/// Copy 16 bytes from global to shared memory asynchronously (completes at a cp_async_wait).
FULGUR_DEVICE FULGUR_FORCEINLINE void cp_async_16(void* smem, const void* gmem) {
#if defined(__CUDA_ARCH__)
#if __CUDA_ARCH__ >= 800
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(__cvta_generic_to_global(gmem)));
#else
  __trap();  // cp.async needs sm_80
#endif
#elif defined(FULGUR_EMULATE)
  assert(reinterpret_cast<uintptr_t>(smem) % 16 == 0 && reinterpret_cast<uintptr_t>(gmem) % 16 == 0);
  ::fulgur::emu::cp_async_enqueue(smem, gmem, 16);
#endif
}

/// Like cp_async_16, but only the first `src_bytes` (0..16) bytes are read from `gmem`; the rest
/// of the 16 shared bytes are zero-filled. With src_bytes == 0 nothing is read, but pass a valid
/// global address anyway (e.g. the tensor's base) so the address stays well formed. This is how
/// tiles are predicated at matrix edges.
FULGUR_DEVICE FULGUR_FORCEINLINE void cp_async_16_zfill(void* smem, const void* gmem, uint32_t src_bytes) {
#if defined(__CUDA_ARCH__)
#if __CUDA_ARCH__ >= 800
  const uint32_t s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(__cvta_generic_to_global(gmem)),
               "r"(src_bytes));
#else
  __trap();  // cp.async needs sm_80
#endif
#elif defined(FULGUR_EMULATE)
  assert(reinterpret_cast<uintptr_t>(smem) % 16 == 0 && reinterpret_cast<uintptr_t>(gmem) % 16 == 0);
  assert(src_bytes <= 16);
  unsigned char* dst = static_cast<unsigned char*>(smem);
  if (src_bytes > 0) ::fulgur::emu::cp_async_enqueue(dst, gmem, src_bytes);
  if (src_bytes < 16) ::fulgur::emu::cp_async_enqueue(dst + src_bytes, detail::kCpAsyncZeros, 16 - src_bytes);
#endif
}

/// Close the group of this thread's copies issued since the previous commit (possibly empty).
FULGUR_DEVICE FULGUR_FORCEINLINE void cp_async_commit() {
#if defined(__CUDA_ARCH__)
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
#elif defined(FULGUR_EMULATE)
  ::fulgur::emu::cp_async_commit();
#endif
}

/// Wait until at most the newest kPending committed groups of this thread are still in flight.
template <int kPending>
FULGUR_DEVICE FULGUR_FORCEINLINE void cp_async_wait() {
  static_assert(kPending >= 0, "cp.async.wait_group takes a non-negative constant");
#if defined(__CUDA_ARCH__)
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
#elif defined(FULGUR_EMULATE)
  ::fulgur::emu::cp_async_wait(kPending);
#endif
}

/// Wait for all of this thread's copies, committed or not (PTX: commit_group then wait_group 0).
FULGUR_DEVICE FULGUR_FORCEINLINE void cp_async_wait_all() {
#if defined(__CUDA_ARCH__)
#if __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
#elif defined(FULGUR_EMULATE)
  ::fulgur::emu::cp_async_commit();
  ::fulgur::emu::cp_async_wait(0);
#endif
}

#endif  // __CUDACC__ || FULGUR_EMULATE

}  // namespace arch
FULGUR_NAMESPACE_END
