// SPDX-License-Identifier: Apache-2.0
// Block-level reduce and scan over a 1D block of exactly kBlockThreads threads (a multiple of 32,
// at most 1024), in the CUB style: the caller declares the collective's TempStorage in shared
// memory and constructs the collective on it,
//
//     using Scan = fulgur::primitives::BlockScan<int, 256>;
//     __shared__ typename Scan::TempStorage scan_storage;
//     int offset = Scan(scan_storage).exclusive_sum(flag, total);
//
// so a kernel can alias the storage of collectives it uses at different times (a union).
// Every thread of the block must call the collective (it contains __syncthreads()). As in CUB,
// the storage may be reused, by this or another collective, only after a __syncthreads()
// that follows the call: the call's last reads of the storage happen after its last barrier.
//
// Results are deterministic: warp partials are combined in warp order, never with atomics. Every
// thread receives the block-wide result (reduce and aggregates), unlike CUB's thread-0-only
// reduce, at no extra barrier. Built on fulgur/primitives/warp.cuh, so it runs under the
// emulation too.
#pragma once

#include "fulgur/primitives/warp.cuh"

FULGUR_NAMESPACE_BEGIN
namespace primitives {

namespace detail {
template <int kBlockThreads>
struct CheckBlockThreads {
  static_assert(kBlockThreads >= 32 && kBlockThreads <= 1024 && kBlockThreads % 32 == 0,
                "block collectives need a multiple of 32 threads, at most 1024");
  static constexpr bool value = true;
};
}  // namespace detail

/// Reduction over the block; every thread receives the result.
template <typename T, int kBlockThreads>
class BlockReduce {
  static_assert(detail::CheckBlockThreads<kBlockThreads>::value, "");

 public:
  static constexpr int kWarps = kBlockThreads / 32;
  struct TempStorage {
    T warp_partials[kWarps];
  };

  FULGUR_DEVICE FULGUR_FORCEINLINE explicit BlockReduce(TempStorage& storage) : s_(storage) {}

  /// op over every thread's `v`: warp butterflies, then the warp partials in warp order.
  template <typename Op>
  FULGUR_DEVICE FULGUR_FORCEINLINE T reduce(T v, Op op) {
    const int tid = static_cast<int>(threadIdx.x);
    const T w = warp_reduce<32>(v, op);
    if ((tid & 31) == 0) s_.warp_partials[tid >> 5] = w;
    __syncthreads();
    T r = s_.warp_partials[0];
    FULGUR_UNROLL
    for (int i = 1; i < kWarps; ++i) r = op(r, s_.warp_partials[i]);
    return r;
  }
  /// op over N items per thread (each thread folds its items in order first).
  template <int N, typename Op>
  FULGUR_DEVICE FULGUR_FORCEINLINE T reduce(const T (&items)[N], Op op) {
    T v = items[0];
    FULGUR_UNROLL
    for (int i = 1; i < N; ++i) v = op(v, items[i]);
    return reduce(v, op);
  }

  FULGUR_DEVICE FULGUR_FORCEINLINE T sum(T v) { return reduce(v, Sum{}); }
  template <int N>
  FULGUR_DEVICE FULGUR_FORCEINLINE T sum(const T (&items)[N]) {
    return reduce(items, Sum{});
  }
  FULGUR_DEVICE FULGUR_FORCEINLINE T max(T v) { return reduce(v, Max{}); }
  FULGUR_DEVICE FULGUR_FORCEINLINE T min(T v) { return reduce(v, Min{}); }

 private:
  TempStorage& s_;
};

/// Prefix scans over the block in thread order (thread t's items follow thread t-1's: the
/// "blocked" arrangement for the N-item overloads). Every thread receives the block aggregate.
template <typename T, int kBlockThreads>
class BlockScan {
  static_assert(detail::CheckBlockThreads<kBlockThreads>::value, "");

 public:
  static constexpr int kWarps = kBlockThreads / 32;
  struct TempStorage {
    T warp_aggregates[kWarps];
  };

  FULGUR_DEVICE FULGUR_FORCEINLINE explicit BlockScan(TempStorage& storage) : s_(storage) {}

  // ---- one item per thread -----------------------------------------------------------------
  /// Thread t receives op(init, v_0, ..., v_{t-1}) (init on thread 0).
  template <typename Op>
  FULGUR_DEVICE FULGUR_FORCEINLINE T exclusive_scan(T v, Op op, T init, T& block_aggregate) {
    Parts p = scan_parts(v, op, block_aggregate);
    const T prefix = p.warp == 0 ? init : op(init, p.warp_prefix);
    return p.lane == 0 ? prefix : op(prefix, p.lane_exclusive);
  }
  template <typename Op>
  FULGUR_DEVICE FULGUR_FORCEINLINE T exclusive_scan(T v, Op op, T init) {
    T aggregate;
    return exclusive_scan(v, op, init, aggregate);
  }
  /// Thread t receives op(v_0, ..., v_t).
  template <typename Op>
  FULGUR_DEVICE FULGUR_FORCEINLINE T inclusive_scan(T v, Op op, T& block_aggregate) {
    Parts p = scan_parts(v, op, block_aggregate);
    return p.warp == 0 ? p.lane_inclusive : op(p.warp_prefix, p.lane_inclusive);
  }
  template <typename Op>
  FULGUR_DEVICE FULGUR_FORCEINLINE T inclusive_scan(T v, Op op) {
    T aggregate;
    return inclusive_scan(v, op, aggregate);
  }
  /// Exclusive prefix sum; thread 0 receives T(0).
  FULGUR_DEVICE FULGUR_FORCEINLINE T exclusive_sum(T v, T& block_aggregate) {
    Parts p = scan_parts(v, Sum{}, block_aggregate);
    if (p.lane == 0) return p.warp == 0 ? T(0) : p.warp_prefix;
    return p.warp == 0 ? p.lane_exclusive : p.warp_prefix + p.lane_exclusive;
  }
  FULGUR_DEVICE FULGUR_FORCEINLINE T exclusive_sum(T v) {
    T aggregate;
    return exclusive_sum(v, aggregate);
  }
  FULGUR_DEVICE FULGUR_FORCEINLINE T inclusive_sum(T v, T& block_aggregate) {
    return inclusive_scan(v, Sum{}, block_aggregate);
  }
  FULGUR_DEVICE FULGUR_FORCEINLINE T inclusive_sum(T v) { return inclusive_scan(v, Sum{}); }

  // ---- N items per thread, blocked arrangement (item i of thread t is element t * N + i) ----
  // `out` may be `in`.
  template <int N, typename Op>
  FULGUR_DEVICE FULGUR_FORCEINLINE void exclusive_scan(const T (&in)[N], T (&out)[N], Op op, T init,
                                                       T& block_aggregate) {
    T run = exclusive_scan(thread_total(in, op), op, init, block_aggregate);
    FULGUR_UNROLL
    for (int i = 0; i < N; ++i) {
      const T x = in[i];
      out[i] = run;
      run = op(run, x);
    }
  }
  template <int N, typename Op>
  FULGUR_DEVICE FULGUR_FORCEINLINE void exclusive_scan(const T (&in)[N], T (&out)[N], Op op, T init) {
    T aggregate;
    exclusive_scan(in, out, op, init, aggregate);
  }
  template <int N, typename Op>
  FULGUR_DEVICE FULGUR_FORCEINLINE void inclusive_scan(const T (&in)[N], T (&out)[N], Op op, T& block_aggregate) {
    const int tid = static_cast<int>(threadIdx.x);
    Parts p = scan_parts(thread_total(in, op), op, block_aggregate);
    // Threads before this one: the warps before it, then the lanes before it in its warp.
    T before = p.warp_prefix;
    if (p.lane != 0) before = p.warp == 0 ? p.lane_exclusive : op(p.warp_prefix, p.lane_exclusive);
    T run = tid == 0 ? in[0] : op(before, in[0]);
    out[0] = run;
    FULGUR_UNROLL
    for (int i = 1; i < N; ++i) {
      run = op(run, in[i]);
      out[i] = run;
    }
  }
  template <int N, typename Op>
  FULGUR_DEVICE FULGUR_FORCEINLINE void inclusive_scan(const T (&in)[N], T (&out)[N], Op op) {
    T aggregate;
    inclusive_scan(in, out, op, aggregate);
  }
  template <int N>
  FULGUR_DEVICE FULGUR_FORCEINLINE void exclusive_sum(const T (&in)[N], T (&out)[N], T& block_aggregate) {
    T run = exclusive_sum(thread_total(in, Sum{}), block_aggregate);
    FULGUR_UNROLL
    for (int i = 0; i < N; ++i) {
      const T x = in[i];
      out[i] = run;
      run = run + x;
    }
  }
  template <int N>
  FULGUR_DEVICE FULGUR_FORCEINLINE void exclusive_sum(const T (&in)[N], T (&out)[N]) {
    T aggregate;
    exclusive_sum(in, out, aggregate);
  }
  template <int N>
  FULGUR_DEVICE FULGUR_FORCEINLINE void inclusive_sum(const T (&in)[N], T (&out)[N], T& block_aggregate) {
    inclusive_scan(in, out, Sum{}, block_aggregate);
  }
  template <int N>
  FULGUR_DEVICE FULGUR_FORCEINLINE void inclusive_sum(const T (&in)[N], T (&out)[N]) {
    T aggregate;
    inclusive_scan(in, out, Sum{}, aggregate);
  }

 private:
  struct Parts {
    int lane, warp;
    T lane_inclusive;  // op over this warp's lanes 0..lane
    T lane_exclusive;  // op over this warp's lanes 0..lane-1 (undefined on lane 0)
    T warp_prefix;     // op over the aggregates of warps 0..warp-1 (undefined on warp 0)
  };

  template <int N, typename Op>
  FULGUR_DEVICE FULGUR_FORCEINLINE static T thread_total(const T (&in)[N], Op op) {
    T v = in[0];
    FULGUR_UNROLL
    for (int i = 1; i < N; ++i) v = op(v, in[i]);
    return v;
  }

  // One barrier: warp scans, warp aggregates through shared memory, then each thread folds the
  // aggregates of the warps before it (at most 31 broadcast loads) in warp order.
  template <typename Op>
  FULGUR_DEVICE FULGUR_FORCEINLINE Parts scan_parts(T v, Op op, T& block_aggregate) {
    const int tid = static_cast<int>(threadIdx.x);
    Parts p{tid & 31, tid >> 5, v, v, v};
    p.lane_inclusive = warp_inclusive_scan<32>(v, op);
    p.lane_exclusive = detail::shfl<detail::ShflKind::kUp>(kFullMask, p.lane_inclusive, 1, 32);
    if (p.lane == 31) s_.warp_aggregates[p.warp] = p.lane_inclusive;
    __syncthreads();
    T aggregate = s_.warp_aggregates[0];
    p.warp_prefix = aggregate;
    FULGUR_UNROLL
    for (int w = 1; w < kWarps; ++w) {
      if (w == p.warp) p.warp_prefix = aggregate;
      aggregate = op(aggregate, s_.warp_aggregates[w]);
    }
    block_aggregate = aggregate;
    return p;
  }

  TempStorage& s_;
};

// ---- data movement for the blocked arrangement --------------------------------------------------
/// Thread t loads elements t * N + i, i < N; positions at or past `n` get `fill`.
template <int N, typename T>
FULGUR_DEVICE FULGUR_FORCEINLINE void load_blocked(const T* src, int n, T (&items)[N], T fill) {
  const int base = static_cast<int>(threadIdx.x) * N;
  FULGUR_UNROLL
  for (int i = 0; i < N; ++i) items[i] = base + i < n ? src[base + i] : fill;
}
/// Thread t stores its items to elements t * N + i that are below `n`.
template <int N, typename T>
FULGUR_DEVICE FULGUR_FORCEINLINE void store_blocked(T* dst, int n, const T (&items)[N]) {
  const int base = static_cast<int>(threadIdx.x) * N;
  FULGUR_UNROLL
  for (int i = 0; i < N; ++i)
    if (base + i < n) dst[base + i] = items[i];
}

}  // namespace primitives
FULGUR_NAMESPACE_END
