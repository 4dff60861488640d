// SPDX-License-Identifier: Apache-2.0
// Device memory and stream helpers for tests, examples and benchmarks that must run both on a
// GPU and under fulgur's CPU emulation from one source. Under emulation "device" memory is host
// memory (kernels run on the CPU); under a CUDA build it is cudaMalloc'd. Launchers never use
// these: they take the caller's pointers and never allocate.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "fulgur/detail/cuda.cuh"

FULGUR_NAMESPACE_BEGIN

inline cudaError_t device_malloc(void** p, size_t bytes) {
#if FULGUR_EMULATING
  // Aligned like cudaMalloc (256 B) so vector loads behave as on the GPU.
  *p = bytes ? std::aligned_alloc(256, (bytes + 255) / 256 * 256) : nullptr;
  return (bytes && !*p) ? cudaErrorMemoryAllocation : cudaSuccess;
#else
  return cudaMalloc(p, bytes);
#endif
}

inline cudaError_t device_free(void* p) {
#if FULGUR_EMULATING
  std::free(p);
  return cudaSuccess;
#else
  return cudaFree(p);
#endif
}

enum class CopyKind { kHostToDevice, kDeviceToHost, kDeviceToDevice };

inline cudaError_t device_memcpy(void* dst, const void* src, size_t bytes, CopyKind kind) {
#if FULGUR_EMULATING
  (void)kind;
  if (bytes) std::memcpy(dst, src, bytes);
  return cudaSuccess;
#else
  const cudaMemcpyKind k = kind == CopyKind::kHostToDevice   ? cudaMemcpyHostToDevice
                           : kind == CopyKind::kDeviceToHost ? cudaMemcpyDeviceToHost
                                                             : cudaMemcpyDeviceToDevice;
  return cudaMemcpy(dst, src, bytes, k);
#endif
}

inline cudaError_t device_memset(void* p, int value, size_t bytes) {
#if FULGUR_EMULATING
  if (bytes) std::memset(p, value, bytes);
  return cudaSuccess;
#else
  return cudaMemset(p, value, bytes);
#endif
}

inline cudaError_t device_synchronize() {
#if FULGUR_EMULATING
  return cudaSuccess;  // emulated launches complete before they return
#else
  return cudaDeviceSynchronize();
#endif
}

/// True when kernels run on a real GPU in this build and a device is present.
inline bool have_device() {
#if FULGUR_EMULATING
  return false;
#else
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
#endif
}

/// An owning device array of T. Copy helpers take host vectors. Allocation failures leave the
/// buffer empty; error() reports the last failure.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) { alloc(n); }
  explicit DeviceBuffer(const std::vector<T>& host) {
    alloc(host.size());
    copy_from_host(host.data(), host.size());
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept { swap(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    swap(o);
    return *this;
  }
  ~DeviceBuffer() { reset(); }

  cudaError_t alloc(size_t n) {
    reset();
    void* p = nullptr;
    err_ = device_malloc(&p, n * sizeof(T));
    if (err_ == cudaSuccess) {
      ptr_ = static_cast<T*>(p);
      size_ = n;
    }
    return err_;
  }
  void reset() {
    if (ptr_) device_free(ptr_);
    ptr_ = nullptr;
    size_ = 0;
  }
  cudaError_t copy_from_host(const T* src, size_t n) {
    return err_ = device_memcpy(ptr_, src, n * sizeof(T), CopyKind::kHostToDevice);
  }
  cudaError_t copy_from_host(const std::vector<T>& src) { return copy_from_host(src.data(), src.size()); }
  cudaError_t copy_to_host(T* dst, size_t n) const {
    return device_memcpy(dst, ptr_, n * sizeof(T), CopyKind::kDeviceToHost);
  }
  std::vector<T> to_host() const {
    std::vector<T> v(size_);
    copy_to_host(v.data(), size_);
    return v;
  }
  /// Fill every byte with `byte` (0xFF poisons floats with NaN).
  cudaError_t fill_bytes(int byte) { return err_ = device_memset(ptr_, byte, size_ * sizeof(T)); }

  T* data() const { return ptr_; }
  size_t size() const { return size_; }
  size_t bytes() const { return size_ * sizeof(T); }
  cudaError_t error() const { return err_; }

 private:
  void swap(DeviceBuffer& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(size_, o.size_);
    std::swap(err_, o.err_);
  }
  T* ptr_ = nullptr;
  size_t size_ = 0;
  cudaError_t err_ = cudaSuccess;
};

FULGUR_NAMESPACE_END
