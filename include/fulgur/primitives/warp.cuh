// SPDX-License-Identifier: Apache-2.0
// Warp-level collectives over logical warps of kWidth lanes (1, 2, 4, 8, 16 or 32; a 32-lane
// warp holds 32 / kWidth groups, lanes [g * kWidth, (g + 1) * kWidth)): reduce, inclusive and
// exclusive scan, broadcast. Built on __shfl_*_sync alone, so the same source runs on the GPU
// and under fulgur's CPU emulation; CUB's WarpReduce / WarpScan do not compile against the
// emulation (docs/emulation.md).
//
// Contract (the CUDA one for *_sync intrinsics): every lane named in `mask` calls the same
// collective with the same mask and kWidth; `mask` must cover whole kWidth-lane groups. The
// default full mask suits the common case where all 32 lanes take part, each group computing its
// own result. Blocks are 1D or the lane is taken from the linear thread index, as in CUDA.
//
// Determinism: reductions use an xor butterfly, so every lane of a group ends with the same,
// bit-identical value; the combination order is fixed by the lane numbering (not by
// scheduling), so float results repeat run to run. `op` must be associative and commutative for
// reductions, associative for scans.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "fulgur/detail/cuda.cuh"

/// Full unrolling of a loop with a compile-time trip count (register arrays must be indexed
/// with constants to stay in registers under nvcc). Host compilers get nothing: under the
/// emulation the loops run as written.
#if !defined(FULGUR_UNROLL)
#if defined(__CUDACC__)
#define FULGUR_UNROLL _Pragma("unroll")
#else
#define FULGUR_UNROLL
#endif
#endif

FULGUR_NAMESPACE_BEGIN
namespace primitives {

/// All 32 lanes.
constexpr unsigned kFullMask = 0xffffffffu;

/// a + b.
struct Sum {
  template <typename T>
  FULGUR_HOST_DEVICE FULGUR_FORCEINLINE T operator()(const T& a, const T& b) const {
    return a + b;
  }
};

/// The larger of a and b. For float/double it is fmax: a NaN operand is ignored unless both are
/// NaN, so the result does not depend on the combination order.
struct Max {
  template <typename T>
  FULGUR_HOST_DEVICE FULGUR_FORCEINLINE T operator()(const T& a, const T& b) const {
    return a < b ? b : a;
  }
  FULGUR_HOST_DEVICE FULGUR_FORCEINLINE float operator()(float a, float b) const { return fmaxf(a, b); }
  FULGUR_HOST_DEVICE FULGUR_FORCEINLINE double operator()(double a, double b) const { return fmax(a, b); }
};

/// The smaller of a and b (fmin for float/double: NaN ignored unless both are NaN).
struct Min {
  template <typename T>
  FULGUR_HOST_DEVICE FULGUR_FORCEINLINE T operator()(const T& a, const T& b) const {
    return b < a ? b : a;
  }
  FULGUR_HOST_DEVICE FULGUR_FORCEINLINE float operator()(float a, float b) const { return fminf(a, b); }
  FULGUR_HOST_DEVICE FULGUR_FORCEINLINE double operator()(double a, double b) const { return fmin(a, b); }
};

namespace detail {

/// The calling thread's lane: linear thread index mod 32, which is how CUDA forms warps.
FULGUR_DEVICE FULGUR_FORCEINLINE unsigned lane_id() {
  return (threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)) & 31u;
}

template <int kWidth>
struct CheckWidth {
  static_assert(kWidth >= 1 && kWidth <= 32 && (kWidth & (kWidth - 1)) == 0,
                "logical warp width must be 1, 2, 4, 8, 16 or 32");
  static constexpr bool value = true;
};

// Types the CUDA shuffle intrinsics take directly; anything else travels as 32-bit words.
template <typename T>
struct ShuffleNative
    : std::integral_constant<bool, std::is_same<T, int>::value || std::is_same<T, unsigned>::value ||
                                       std::is_same<T, long>::value || std::is_same<T, unsigned long>::value ||
                                       std::is_same<T, long long>::value ||
                                       std::is_same<T, unsigned long long>::value || std::is_same<T, float>::value ||
                                       std::is_same<T, double>::value> {};

enum class ShflKind { kXor, kUp, kDown, kIdx };

template <ShflKind kKind, typename T>
FULGUR_DEVICE FULGUR_FORCEINLINE T shfl_native(unsigned mask, T v, int arg, int width) {
  if (kKind == ShflKind::kXor) return __shfl_xor_sync(mask, v, arg, width);
  if (kKind == ShflKind::kUp) return __shfl_up_sync(mask, v, static_cast<unsigned>(arg), width);
  if (kKind == ShflKind::kDown) return __shfl_down_sync(mask, v, static_cast<unsigned>(arg), width);
  return __shfl_sync(mask, v, arg, width);
}

/// Shuffle of any trivially copyable T: natively where CUDA has an overload, else word by word
/// (as CUB's ShuffleIndex does), so a (key, index) struct is one call.
template <ShflKind kKind, typename T>
FULGUR_DEVICE FULGUR_FORCEINLINE T shfl(unsigned mask, T v, int arg, int width) {
  static_assert(std::is_trivially_copyable<T>::value, "warp collectives need a trivially copyable type");
  if constexpr (ShuffleNative<T>::value) {
    return shfl_native<kKind>(mask, v, arg, width);
  } else {
    constexpr int kWords = static_cast<int>((sizeof(T) + 3) / 4);
    unsigned w[kWords] = {};
    memcpy(w, &v, sizeof(T));
    FULGUR_UNROLL
    for (int i = 0; i < kWords; ++i) w[i] = shfl_native<kKind>(mask, w[i], arg, width);
    T r = v;
    memcpy(&r, w, sizeof(T));
    return r;
  }
}

}  // namespace detail

/// Reduction of `v` over each kWidth-lane group with `op`; every lane of the group receives it.
template <int kWidth = 32, typename T, typename Op>
FULGUR_DEVICE FULGUR_FORCEINLINE T warp_reduce(T v, Op op, unsigned mask = kFullMask) {
  static_assert(detail::CheckWidth<kWidth>::value, "");
  FULGUR_UNROLL
  for (int offset = kWidth / 2; offset > 0; offset /= 2)
    v = op(v, detail::shfl<detail::ShflKind::kXor>(mask, v, offset, kWidth));
  return v;
}

template <int kWidth = 32, typename T>
FULGUR_DEVICE FULGUR_FORCEINLINE T warp_reduce_sum(T v, unsigned mask = kFullMask) {
  return warp_reduce<kWidth>(v, Sum{}, mask);
}
template <int kWidth = 32, typename T>
FULGUR_DEVICE FULGUR_FORCEINLINE T warp_reduce_max(T v, unsigned mask = kFullMask) {
  return warp_reduce<kWidth>(v, Max{}, mask);
}
template <int kWidth = 32, typename T>
FULGUR_DEVICE FULGUR_FORCEINLINE T warp_reduce_min(T v, unsigned mask = kFullMask) {
  return warp_reduce<kWidth>(v, Min{}, mask);
}

/// `v` of lane `src_lane` (0 <= src_lane < kWidth) of the caller's group.
template <int kWidth = 32, typename T>
FULGUR_DEVICE FULGUR_FORCEINLINE T warp_broadcast(T v, int src_lane, unsigned mask = kFullMask) {
  static_assert(detail::CheckWidth<kWidth>::value, "");
  return detail::shfl<detail::ShflKind::kIdx>(mask, v, src_lane, kWidth);
}

/// Inclusive scan over each group: lane j receives op(v_0, ..., v_j), combined in lane order
/// (Kogge-Stone, log2(kWidth) shuffles).
template <int kWidth = 32, typename T, typename Op>
FULGUR_DEVICE FULGUR_FORCEINLINE T warp_inclusive_scan(T v, Op op, unsigned mask = kFullMask) {
  static_assert(detail::CheckWidth<kWidth>::value, "");
  const int lane = static_cast<int>(detail::lane_id() & (kWidth - 1));
  FULGUR_UNROLL
  for (int offset = 1; offset < kWidth; offset *= 2) {
    const T up = detail::shfl<detail::ShflKind::kUp>(mask, v, offset, kWidth);
    if (lane >= offset) v = op(up, v);
  }
  return v;
}

/// Everything a scan can report at once (unused members cost nothing after inlining).
template <typename T>
struct WarpScanResult {
  T inclusive;  // op(v_0, ..., v_j)
  T exclusive;  // op(init, v_0, ..., v_{j-1}); init on lane 0
  T aggregate;  // op(v_0, ..., v_{kWidth-1}), on every lane
};

/// Inclusive and exclusive scan (seeded with `init`) and the group's aggregate.
template <int kWidth = 32, typename T, typename Op>
FULGUR_DEVICE FULGUR_FORCEINLINE WarpScanResult<T> warp_scan(T v, Op op, T init, unsigned mask = kFullMask) {
  const int lane = static_cast<int>(detail::lane_id() & (kWidth - 1));
  WarpScanResult<T> r{v, init, v};
  r.inclusive = warp_inclusive_scan<kWidth>(v, op, mask);
  const T prev = detail::shfl<detail::ShflKind::kUp>(mask, r.inclusive, 1, kWidth);
  r.exclusive = lane == 0 ? init : op(init, prev);
  r.aggregate = detail::shfl<detail::ShflKind::kIdx>(mask, r.inclusive, kWidth - 1, kWidth);
  return r;
}

/// Exclusive scan seeded with `init`: lane j receives op(init, v_0, ..., v_{j-1}); lane 0 init.
template <int kWidth = 32, typename T, typename Op>
FULGUR_DEVICE FULGUR_FORCEINLINE T warp_exclusive_scan(T v, Op op, T init, unsigned mask = kFullMask) {
  const int lane = static_cast<int>(detail::lane_id() & (kWidth - 1));
  const T inclusive = warp_inclusive_scan<kWidth>(v, op, mask);
  const T prev = detail::shfl<detail::ShflKind::kUp>(mask, inclusive, 1, kWidth);
  return lane == 0 ? init : op(init, prev);
}

template <int kWidth = 32, typename T>
FULGUR_DEVICE FULGUR_FORCEINLINE T warp_inclusive_sum(T v, unsigned mask = kFullMask) {
  return warp_inclusive_scan<kWidth>(v, Sum{}, mask);
}

/// Exclusive prefix sum (lane 0 receives 0; no addition of the zero seed is performed, so float
/// sums are bit-identical to the inclusive sum of the lanes before).
template <int kWidth = 32, typename T>
FULGUR_DEVICE FULGUR_FORCEINLINE T warp_exclusive_sum(T v, unsigned mask = kFullMask) {
  const int lane = static_cast<int>(detail::lane_id() & (kWidth - 1));
  const T inclusive = warp_inclusive_scan<kWidth>(v, Sum{}, mask);
  const T prev = detail::shfl<detail::ShflKind::kUp>(mask, inclusive, 1, kWidth);
  return lane == 0 ? T(0) : prev;
}

}  // namespace primitives
FULGUR_NAMESPACE_END
