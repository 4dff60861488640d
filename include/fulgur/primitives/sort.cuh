// SPDX-License-Identifier: Apache-2.0
// Block radix sort of (key, value) pairs held in registers, blocked arrangement (item i of
// thread t is element t * kItemsPerThread + i), and the order-preserving key maps it sorts by.
//
// The sort is stable (LSD radix sort, each pass stable): elements with equal sort bits keep
// their blocked order, so sort_descending orders ties by ascending original position, which is
// the "lower index wins" tie-break the MoE and token-drop kernels need.
//
// Keys: uint32_t, int32_t (two's complement order) and float. Floats are ordered as numbers with
// two definitions CUB leaves open made explicit: -0.0 and +0.0 are equal (as operator< says),
// and every NaN, whatever its sign or payload, sorts above +inf (last ascending, first
// descending, as torch.sort does); NaNs are equal to each other. The keys themselves travel
// unchanged (a -0.0 or a NaN payload comes back bit for bit): the order is computed from the
// key at every pass, never stored in place of it.
//
// Each pass (kRadixBits bits, default 4): every thread counts its digits into its own column of a
// digit-major counter table (no atomics), one block-wide exclusive scan of the table gives every
// (digit, thread) its first output slot, and keys then values are exchanged through shared
// memory. The counter table and the exchange buffers share storage. 8 barriers per pass; a
// 32-bit sort is 8 passes. Under the emulation that is about 64 barriers per sort.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "fulgur/primitives/block.cuh"

FULGUR_NAMESPACE_BEGIN
namespace primitives {

/// Order-preserving map of a float to uint32 for ascending sorts: a < b as numbers implies
/// bits(a) < bits(b); -0.0 and +0.0 map to one value; every NaN maps to 0xffffffff, above +inf.
FULGUR_HOST_DEVICE FULGUR_FORCEINLINE uint32_t float_ordered_bits(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0xffffffffu;  // NaN
  if (u == 0x80000000u) u = 0u;                             // -0.0 -> +0.0
  // Negative numbers: flip every bit (larger magnitude, smaller key); others: set the sign bit.
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/// The top-k ranking key: float_ordered_bits, except that every NaN ranks together with -inf
/// (below every number), so a NaN score is never preferred to a real one.
FULGUR_HOST_DEVICE FULGUR_FORCEINLINE uint32_t float_rank_bits(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x007fffffu;  // NaN -> float_ordered_bits(-inf)
  return float_ordered_bits(x);
}

/// Inverse of float_ordered_bits on its image (-0.0 comes back as +0.0, a NaN as 0x7fffffff).
FULGUR_HOST_DEVICE FULGUR_FORCEINLINE float float_from_ordered_bits(uint32_t b) {
  const uint32_t u = (b & 0x80000000u) ? (b & 0x7fffffffu) : ~b;
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
}

/// The ascending radix order of a key type.
template <typename KeyT>
struct RadixOrder;
template <>
struct RadixOrder<uint32_t> {
  FULGUR_HOST_DEVICE FULGUR_FORCEINLINE uint32_t operator()(uint32_t k) const { return k; }
};
template <>
struct RadixOrder<int32_t> {
  FULGUR_HOST_DEVICE FULGUR_FORCEINLINE uint32_t operator()(int32_t k) const {
    return static_cast<uint32_t>(k) ^ 0x80000000u;
  }
};
template <>
struct RadixOrder<float> {
  FULGUR_HOST_DEVICE FULGUR_FORCEINLINE uint32_t operator()(float k) const { return float_ordered_bits(k); }
};

/// Descending order: the complement of an ascending order's bits.
template <typename Order>
struct Reversed {
  Order order;
  template <typename KeyT>
  FULGUR_HOST_DEVICE FULGUR_FORCEINLINE uint32_t operator()(KeyT k) const {
    return ~order(k);
  }
};

/// A value type for keys-only sorts.
struct NoValue {};

namespace detail {
/// Shared-memory index with one padding word after every 32: the strided accesses of
/// BlockRadixSort (thread t reading kBuckets or kItemsPerThread consecutive words) then fall in
/// distinct banks instead of up to 32 threads in one bank. Measured on H200 (BlockTopK::topk,
/// one block): 8192 items (256 x 32) 52.9 -> 31.5 us, 2880 items (256 x 12) 18.8 -> 16.4 us.
/// (A namespace-scope function: a member one is not usable in the class's own array bounds.)
FULGUR_HOST_DEVICE FULGUR_FORCEINLINE constexpr int smem_padded(int i) { return i + (i >> 5); }
}  // namespace detail

/// Stable block radix sort of kItemsPerThread (key, value) pairs per thread over a 1D block of
/// kBlockThreads threads. KeyT: uint32_t, int32_t or float; ValueT: any trivial type.
template <typename KeyT, typename ValueT, int kBlockThreads, int kItemsPerThread, int kRadixBits = 4>
class BlockRadixSort {
  static_assert(detail::CheckBlockThreads<kBlockThreads>::value, "");
  static_assert(std::is_same<KeyT, uint32_t>::value || std::is_same<KeyT, int32_t>::value ||
                    std::is_same<KeyT, float>::value,
                "BlockRadixSort keys are uint32_t, int32_t or float");
  static_assert(std::is_trivial<ValueT>::value, "BlockRadixSort values must be a trivial type");
  static_assert(kItemsPerThread >= 1 && kItemsPerThread <= 64, "1..64 items per thread");
  static_assert(kRadixBits >= 1 && kRadixBits <= 8, "1..8 radix bits per pass");

  static constexpr bool kHasValues = !std::is_same<ValueT, NoValue>::value;

 public:
  static constexpr int kItems = kBlockThreads * kItemsPerThread;
  static constexpr int kBuckets = 1 << kRadixBits;

  struct TempStorage {
    union {
      uint32_t counters[detail::smem_padded(kBuckets * kBlockThreads)];  // [digit][thread], padded
      KeyT keys[detail::smem_padded(kItems)];                            // padded
      ValueT values[kHasValues ? detail::smem_padded(kItems) : 1];
    } u;
    typename BlockScan<uint32_t, kBlockThreads>::TempStorage scan;
  };

  FULGUR_DEVICE FULGUR_FORCEINLINE explicit BlockRadixSort(TempStorage& storage) : s_(storage) {}

  /// Ascending by RadixOrder<KeyT> bits [begin_bit, end_bit). Ends with a barrier: the storage
  /// is free for reuse when it returns.
  FULGUR_DEVICE FULGUR_FORCEINLINE void sort(KeyT (&keys)[kItemsPerThread], ValueT (&values)[kItemsPerThread],
                                             int begin_bit = 0, int end_bit = 32) {
    sort_by(keys, values, RadixOrder<KeyT>{}, begin_bit, end_bit);
  }
  /// Descending by RadixOrder<KeyT> bits [begin_bit, end_bit); ties keep their blocked order.
  FULGUR_DEVICE FULGUR_FORCEINLINE void sort_descending(KeyT (&keys)[kItemsPerThread],
                                                        ValueT (&values)[kItemsPerThread], int begin_bit = 0,
                                                        int end_bit = 32) {
    sort_by(keys, values, Reversed<RadixOrder<KeyT>>{}, begin_bit, end_bit);
  }
  /// Keys only.
  FULGUR_DEVICE FULGUR_FORCEINLINE void sort(KeyT (&keys)[kItemsPerThread], int begin_bit = 0, int end_bit = 32) {
    ValueT unused[kItemsPerThread];
    sort_by(keys, unused, RadixOrder<KeyT>{}, begin_bit, end_bit);
  }
  FULGUR_DEVICE FULGUR_FORCEINLINE void sort_descending(KeyT (&keys)[kItemsPerThread], int begin_bit = 0,
                                                        int end_bit = 32) {
    ValueT unused[kItemsPerThread];
    sort_by(keys, unused, Reversed<RadixOrder<KeyT>>{}, begin_bit, end_bit);
  }

  /// Ascending by bits [begin_bit, end_bit) of order(key), a uint32_t; `order` is a function
  /// object (e.g. Reversed<...>, or the top-k rank of topk.cuh). The engine of the above.
  template <typename Order>
  FULGUR_DEVICE void sort_by(KeyT (&keys)[kItemsPerThread], ValueT (&values)[kItemsPerThread], Order order,
                             int begin_bit, int end_bit) {
    const int tid = static_cast<int>(threadIdx.x);
    for (int bit = begin_bit; bit < end_bit; bit += kRadixBits) {
      const int nbits = end_bit - bit < kRadixBits ? end_bit - bit : kRadixBits;
      const uint32_t digit_mask = (1u << nbits) - 1u;

      // Count this thread's digits in its own column; the count before an item is its rank
      // among this thread's items with the same digit.
      FULGUR_UNROLL
      for (int d = 0; d < kBuckets; ++d) s_.u.counters[detail::smem_padded(d * kBlockThreads + tid)] = 0u;
      uint32_t slot[kItemsPerThread];  // digit << 16 | rank within the thread, then the output slot
      FULGUR_UNROLL
      for (int i = 0; i < kItemsPerThread; ++i) {
        const uint32_t d = (order(keys[i]) >> bit) & digit_mask;
        uint32_t& c = s_.u.counters[detail::smem_padded(static_cast<int>(d) * kBlockThreads + tid)];
        slot[i] = d << 16 | c;
        c = c + 1u;
      }
      __syncthreads();

      // Exclusive scan of the table in (digit, thread) order: thread t scans the kBuckets
      // consecutive entries [t * kBuckets, (t + 1) * kBuckets).
      uint32_t c[kBuckets];
      uint32_t total = 0;
      FULGUR_UNROLL
      for (int j = 0; j < kBuckets; ++j) {
        const uint32_t x = s_.u.counters[detail::smem_padded(tid * kBuckets + j)];
        c[j] = total;
        total += x;
      }
      const uint32_t before = BlockScan<uint32_t, kBlockThreads>(s_.scan).exclusive_sum(total);
      FULGUR_UNROLL
      for (int j = 0; j < kBuckets; ++j) s_.u.counters[detail::smem_padded(tid * kBuckets + j)] = before + c[j];
      __syncthreads();

      FULGUR_UNROLL
      for (int i = 0; i < kItemsPerThread; ++i)
        slot[i] = s_.u.counters[detail::smem_padded(static_cast<int>(slot[i] >> 16) * kBlockThreads + tid)] +
                  (slot[i] & 0xffffu);
      __syncthreads();

      exchange(keys, s_.u.keys, slot);
      if constexpr (kHasValues) exchange(values, s_.u.values, slot);
    }
  }

 private:
  // Scatter to the output slots, gather back blocked; the trailing barrier frees the buffer.
  template <typename T>
  FULGUR_DEVICE FULGUR_FORCEINLINE void exchange(T (&items)[kItemsPerThread], T* buffer,
                                                 const uint32_t (&slot)[kItemsPerThread]) {
    const int base = static_cast<int>(threadIdx.x) * kItemsPerThread;
    FULGUR_UNROLL
    for (int i = 0; i < kItemsPerThread; ++i) buffer[detail::smem_padded(static_cast<int>(slot[i]))] = items[i];
    __syncthreads();
    FULGUR_UNROLL
    for (int i = 0; i < kItemsPerThread; ++i) items[i] = buffer[detail::smem_padded(base + i)];
    __syncthreads();
  }

  TempStorage& s_;
};

}  // namespace primitives
FULGUR_NAMESPACE_END
