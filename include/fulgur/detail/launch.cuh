// SPDX-License-Identifier: Apache-2.0
// The only way fulgur launches a kernel. Under nvcc: a <<<>>> launch on the caller's stream,
// raising the dynamic shared memory limit when more than 48 KB is asked, and checking the launch
// (no synchronization). Under emulation: the grid runs on the calling CPU thread before this
// returns, and a kernel that deadlocks or misuses a collective returns cudaErrorLaunchFailure
// with a description in fulgur::emu::last_error_message().
#pragma once

#include <cstddef>
#include <cstring>
#include <tuple>
#include <utility>

#include "fulgur/detail/cuda.cuh"

FULGUR_NAMESPACE_BEGIN
namespace detail {

template <typename... KernelArgs, typename... Args>
cudaError_t launch(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem_bytes, cudaStream_t stream,
                   Args&&... args) {
#if FULGUR_EMULATING
  (void)stream;
  // Arguments are converted to the kernel's parameter types once, as a launch does; every CUDA
  // thread then receives its own by-value copy through std::apply.
  std::tuple<KernelArgs...> packed(std::forward<Args>(args)...);
  const std::function<void()> body = [&] { std::apply(kernel, packed); };
  return ::fulgur::emu::detail::run_grid(grid, block, smem_bytes, body);
#else
  if (smem_bytes > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem_bytes));
    if (e != cudaSuccess) return e;
  }
  kernel<<<grid, block, smem_bytes, stream>>>(std::forward<Args>(args)...);
  return cudaGetLastError();
#endif
}

/// cudaMemsetAsync on the caller's stream (no synchronization; graph-capturable). Under
/// emulation a plain memset: emulated work completes in order on the calling thread.
inline cudaError_t memset_async(void* p, int value, size_t bytes, cudaStream_t stream) {
#if FULGUR_EMULATING
  (void)stream;
  if (bytes) std::memset(p, value, bytes);
  return cudaSuccess;
#else
  return cudaMemsetAsync(p, value, bytes, stream);
#endif
}

}  // namespace detail
FULGUR_NAMESPACE_END
