// SPDX-License-Identifier: Apache-2.0
// Device-wide sort, scan and select for launchers that are best served by CUB (a radix sort of
// T*k pairs, an exclusive scan of per-expert counts, a flagged select). Thin wrappers in the
// library's launcher style:
//
//   cudaError_t op(void* workspace, size_t& workspace_bytes, <arrays, sizes>, cudaStream_t stream)
//
// A null workspace only stores the size needed in workspace_bytes (always > 0, so allocating it
// gives a usable pointer) and returns cudaSuccess. Otherwise workspace_bytes must be at least
// that size (else cudaErrorInvalidValue), the operation is enqueued on `stream`, nothing is
// allocated and nothing is synchronized (safe inside CUDA graph capture).
//
// On the GPU they call cub::DeviceRadixSort::SortPairs, cub::DeviceScan::ExclusiveSum and
// cub::DeviceSelect::Flagged. Under FULGUR_EMULATE the same calls run synchronously on the host
// through Thrust's host backend (thrust::stable_sort_by_key / exclusive_scan / copy_if with
// thrust::host): the real library, with the order defined as CUB defines it (the comparator
// below reproduces CUB's radix order bit for bit). Thrust may allocate host memory there; the
// workspace is unused.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "fulgur/detail/cuda.cuh"

#if FULGUR_EMULATING
#include <thrust/copy.h>
#include <thrust/execution_policy.h>
#include <thrust/scan.h>
#include <thrust/sort.h>
#else
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#include <cub/device/device_select.cuh>
#endif

FULGUR_NAMESPACE_BEGIN
namespace primitives {

namespace detail {

#if FULGUR_EMULATING
/// What the emulated wrappers report as their workspace: nonzero, so that a caller that
/// allocates exactly the reported size gets a non-null pointer, and aligned like cudaMalloc.
constexpr size_t kEmulatedWorkspaceBytes = 256;

template <typename KeyT>
using RadixUnsigned = std::conditional_t<
    sizeof(KeyT) == 1, uint8_t,
    std::conditional_t<sizeof(KeyT) == 2, uint16_t, std::conditional_t<sizeof(KeyT) == 4, uint32_t, uint64_t>>>;

/// CUB's radix order (cub/util_type.cuh Traits::TwiddleIn, plus the -0.0 -> +0.0 step of
/// cub/block/radix_rank_sort_operations.cuh): unsigned as is, signed with the sign bit flipped,
/// floating point sign-magnitude flipped (a NaN with the sign bit set sorts first, without it
/// last).
template <typename KeyT>
inline uint64_t cub_radix_bits(KeyT key) {
  using U = RadixUnsigned<KeyT>;
  U u;
  std::memcpy(&u, &key, sizeof u);
  constexpr U kHigh = static_cast<U>(U(1) << (8 * sizeof(U) - 1));
  if constexpr (std::is_floating_point<KeyT>::value) {
    if (u == kHigh) u = 0;  // -0.0 sorts as +0.0
    u = (u & kHigh) ? static_cast<U>(~u) : static_cast<U>(u | kHigh);
  } else if constexpr (std::is_signed<KeyT>::value) {
    u = static_cast<U>(u ^ kHigh);
  }
  return static_cast<uint64_t>(u);
}

template <typename KeyT>
struct CubRadixLess {
  int begin_bit, end_bit;
  bool operator()(const KeyT& a, const KeyT& b) const {
    const int bits = end_bit - begin_bit;
    const uint64_t mask = bits >= 64 ? ~uint64_t{0} : ((uint64_t{1} << bits) - 1);
    return ((cub_radix_bits(a) >> begin_bit) & mask) < ((cub_radix_bits(b) >> begin_bit) & mask);
  }
};

struct NonZero {
  template <typename F>
  bool operator()(const F& f) const {
    return f != F(0);
  }
};
#endif

inline bool workspace_query(void* workspace, size_t& workspace_bytes, size_t needed, cudaError_t& result) {
  if (workspace == nullptr) {
    workspace_bytes = needed;
    result = cudaSuccess;
    return true;
  }
  if (workspace_bytes < needed) {
    result = cudaErrorInvalidValue;
    return true;
  }
  return false;
}

}  // namespace detail

/// Stable ascending sort of num_items (key, value) pairs by key bits [begin_bit, end_bit), in
/// CUB's radix order (unsigned; signed two's complement; floating point as numbers with
/// -0.0 == +0.0, and a NaN by its bits: sign bit set first, clear last, ordered by payload
/// within). keys_out/values_out must not overlap the inputs. KeyT: an integer or floating-point
/// type; ValueT: trivially copyable.
template <typename KeyT, typename ValueT>
cudaError_t device_sort_pairs(void* workspace, size_t& workspace_bytes, const KeyT* keys_in, KeyT* keys_out,
                              const ValueT* values_in, ValueT* values_out, int64_t num_items, cudaStream_t stream,
                              int begin_bit = 0, int end_bit = static_cast<int>(sizeof(KeyT) * 8)) {
  static_assert(std::is_arithmetic<KeyT>::value, "device_sort_pairs keys are integers or floating point");
  if (num_items < 0 || begin_bit < 0 || end_bit > static_cast<int>(sizeof(KeyT) * 8) || begin_bit > end_bit)
    return cudaErrorInvalidValue;
#if FULGUR_EMULATING
  (void)stream;
  cudaError_t result;
  if (detail::workspace_query(workspace, workspace_bytes, detail::kEmulatedWorkspaceBytes, result)) return result;
  if (num_items > 0 && (!keys_in || !keys_out || !values_in || !values_out)) return cudaErrorInvalidValue;
  const size_t n = static_cast<size_t>(num_items);
  if (n == 0) return cudaSuccess;
  std::memmove(keys_out, keys_in, n * sizeof(KeyT));
  std::memmove(static_cast<void*>(values_out), values_in, n * sizeof(ValueT));
  thrust::stable_sort_by_key(thrust::host, keys_out, keys_out + n, values_out,
                             detail::CubRadixLess<KeyT>{begin_bit, end_bit});
  return cudaSuccess;
#else
  size_t needed = 0;
  cudaError_t e = cub::DeviceRadixSort::SortPairs(nullptr, needed, keys_in, keys_out, values_in, values_out, num_items,
                                                  begin_bit, end_bit, stream);
  if (e != cudaSuccess) return e;
  if (needed == 0) needed = 1;
  cudaError_t result;
  if (detail::workspace_query(workspace, workspace_bytes, needed, result)) return result;
  if (num_items > 0 && (!keys_in || !keys_out || !values_in || !values_out)) return cudaErrorInvalidValue;
  size_t bytes = workspace_bytes;
  return cub::DeviceRadixSort::SortPairs(workspace, bytes, keys_in, keys_out, values_in, values_out, num_items,
                                         begin_bit, end_bit, stream);
#endif
}

/// out[i] = in[0] + ... + in[i-1] (out[0] = 0), accumulated in T. `out` may equal `in`.
template <typename T>
cudaError_t device_exclusive_sum(void* workspace, size_t& workspace_bytes, const T* in, T* out, int64_t num_items,
                                 cudaStream_t stream) {
  static_assert(std::is_arithmetic<T>::value, "device_exclusive_sum sums arithmetic types");
  if (num_items < 0) return cudaErrorInvalidValue;
#if FULGUR_EMULATING
  (void)stream;
  cudaError_t result;
  if (detail::workspace_query(workspace, workspace_bytes, detail::kEmulatedWorkspaceBytes, result)) return result;
  if (num_items > 0 && (!in || !out)) return cudaErrorInvalidValue;
  if (num_items == 0) return cudaSuccess;
  thrust::exclusive_scan(thrust::host, in, in + num_items, out, T(0));
  return cudaSuccess;
#else
  size_t needed = 0;
  cudaError_t e = cub::DeviceScan::ExclusiveSum(nullptr, needed, in, out, num_items, stream);
  if (e != cudaSuccess) return e;
  if (needed == 0) needed = 1;
  cudaError_t result;
  if (detail::workspace_query(workspace, workspace_bytes, needed, result)) return result;
  if (num_items > 0 && (!in || !out)) return cudaErrorInvalidValue;
  size_t bytes = workspace_bytes;
  return cub::DeviceScan::ExclusiveSum(workspace, bytes, in, out, num_items, stream);
#endif
}

/// Copies the in[i] whose flags[i] != 0 to out, in order, and writes their count to
/// *num_selected (device memory). out must not overlap in.
template <typename T, typename FlagT>
cudaError_t device_select_flagged(void* workspace, size_t& workspace_bytes, const T* in, const FlagT* flags, T* out,
                                  int64_t* num_selected, int64_t num_items, cudaStream_t stream) {
  if (num_items < 0) return cudaErrorInvalidValue;
#if FULGUR_EMULATING
  (void)stream;
  cudaError_t result;
  if (detail::workspace_query(workspace, workspace_bytes, detail::kEmulatedWorkspaceBytes, result)) return result;
  if (!num_selected || (num_items > 0 && (!in || !flags || !out))) return cudaErrorInvalidValue;
  if (num_items == 0) {
    *num_selected = 0;
    return cudaSuccess;
  }
  T* end = thrust::copy_if(thrust::host, in, in + num_items, flags, out, detail::NonZero{});
  *num_selected = static_cast<int64_t>(end - out);
  return cudaSuccess;
#else
  size_t needed = 0;
  cudaError_t e = cub::DeviceSelect::Flagged(nullptr, needed, in, flags, out, num_selected, num_items, stream);
  if (e != cudaSuccess) return e;
  if (needed == 0) needed = 1;
  cudaError_t result;
  if (detail::workspace_query(workspace, workspace_bytes, needed, result)) return result;
  if (!num_selected || (num_items > 0 && (!in || !flags || !out))) return cudaErrorInvalidValue;
  size_t bytes = workspace_bytes;
  return cub::DeviceSelect::Flagged(workspace, bytes, in, flags, out, num_selected, num_items, stream);
#endif
}

}  // namespace primitives
FULGUR_NAMESPACE_END
