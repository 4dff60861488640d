// SPDX-License-Identifier: Apache-2.0
// Deterministic top-k of (float key, int index) candidates at warp and block scope.
//
// The order (one definition for every routine here, and for the MoE routing and token-drop
// kernels built on them): a candidate ranks above another when its key is larger; equal keys
// rank by LOWER index first. Keys compare as numbers with -0.0 == +0.0; every NaN ranks
// together with -inf, below every number (so among NaN and -inf keys the lower index still
// wins). That is float_rank_bits (sort.cuh). Results come in that order: descending key, ties
// by ascending index; select_indices gives the kept indices in ascending index order instead
// (what order-preserving compaction needs). k larger than the candidate count keeps them all.
//
// warp_topk: k <= kWidth (<= 32) over up to kWidth * kItemsPerLane candidates held in
//   registers, strided across the lanes of a (logical) warp: item i of lane l is candidate
//   l + kWidth * i. k rounds of a shuffle-only argmax over a packed 64-bit (rank, ~index) word;
//   only the lane that owned a round's winner rescans its items. Lane r of the group receives
//   the r-th result. 5 shuffles of 64 bits per round for a full warp.
// BlockTopK: any k over up to kBlockThreads * kItemsPerThread candidates (blocked arrangement).
//   select / select_indices: a 4-pass (8-bit) radix select of the k-th rank, then one block
//   scan of packed (greater, equal) counts gives every kept candidate its slot in index order;
//   ties at the threshold are kept lowest index first. About 14 barriers.
//   topk: a stable descending block radix sort of the ranks (sort.cuh), first k written.
#pragma once

#include <cstdint>

#include "fulgur/primitives/block.cuh"
#include "fulgur/primitives/sort.cuh"
#include "fulgur/primitives/warp.cuh"

FULGUR_NAMESPACE_BEGIN
namespace primitives {

/// One top-k result. An empty slot (fewer candidates than k) is {-inf, -1}.
struct KeyIndex {
  float key;
  int index;
};

/// The top-k rank as a function object for BlockRadixSort::sort_by (ascending = best first):
/// descending float_rank_bits.
struct RankDescending {
  FULGUR_HOST_DEVICE FULGUR_FORCEINLINE uint32_t operator()(float k) const { return ~float_rank_bits(k); }
};

namespace detail {

// Packed candidate for the warp argmax: rank in the high word, ~index in the low word, so the
// unsigned maximum is the best key and, among equal keys, the lowest index. 0 = no candidate
// (every real candidate has rank >= float_rank_bits(-inf) = 0x007fffff > 0).
FULGUR_DEVICE FULGUR_FORCEINLINE unsigned long long pack_candidate(float key, int index) {
  return static_cast<unsigned long long>(float_rank_bits(key)) << 32 | static_cast<unsigned>(~index);
}
FULGUR_DEVICE FULGUR_FORCEINLINE KeyIndex unpack_candidate(unsigned long long c) {
  if (c == 0ull) return KeyIndex{-INFINITY, -1};
  return KeyIndex{float_from_ordered_bits(static_cast<uint32_t>(c >> 32)), static_cast<int>(~static_cast<unsigned>(c))};
}

template <int kWidth, int kItemsPerLane>
FULGUR_DEVICE FULGUR_FORCEINLINE KeyIndex warp_topk_packed(unsigned long long (&c)[kItemsPerLane], int k,
                                                           unsigned mask) {
  const int lane = static_cast<int>(lane_id() & (kWidth - 1));
  unsigned long long best = 0ull;
  FULGUR_UNROLL
  for (int i = 0; i < kItemsPerLane; ++i) best = c[i] > best ? c[i] : best;
  unsigned long long mine = 0ull;
  // Every group runs the same rounds (k is uniform), so the shuffles stay convergent even when a
  // group runs out of candidates: its later winners are 0, an empty slot.
  for (int r = 0; r < k; ++r) {
    const unsigned long long w = warp_reduce<kWidth>(best, Max{}, mask);
    if (lane == r) mine = w;
    if (w != 0ull && best == w) {  // this lane owned the winner: drop it, find the next best
      best = 0ull;
      FULGUR_UNROLL
      for (int i = 0; i < kItemsPerLane; ++i) {
        if (c[i] == w) c[i] = 0ull;
        best = c[i] > best ? c[i] : best;
      }
    }
  }
  return unpack_candidate(mine);
}

}  // namespace detail

/// Top-k of the candidates l + kWidth * i (item i of group lane l), those with index < n.
/// Lane r < k of each group receives the r-th best {key, index}; other lanes and empty slots get
/// {-inf, -1}. The key returned is the key as ranked: a NaN comes back as -inf, -0.0 as +0.0
/// (read keys[index] for the original). k (clamped to kWidth) must be the same on every lane of
/// `mask` (it sets the number of shuffle rounds); n may differ between groups.
template <int kWidth = 32, int kItemsPerLane>
FULGUR_DEVICE FULGUR_FORCEINLINE KeyIndex warp_topk(const float (&keys)[kItemsPerLane], int n, int k,
                                                    unsigned mask = kFullMask) {
  static_assert(detail::CheckWidth<kWidth>::value, "");
  const int lane = static_cast<int>(detail::lane_id() & (kWidth - 1));
  unsigned long long c[kItemsPerLane];
  FULGUR_UNROLL
  for (int i = 0; i < kItemsPerLane; ++i) {
    const int index = lane + kWidth * i;
    c[i] = index < n ? detail::pack_candidate(keys[i], index) : 0ull;
  }
  return detail::warp_topk_packed<kWidth>(c, k < kWidth ? k : kWidth, mask);
}

/// As warp_topk, with each candidate's index given (distinct, >= 0; a negative index marks an
/// empty item), for arrangements other than the strided one.
template <int kWidth = 32, int kItemsPerLane>
FULGUR_DEVICE FULGUR_FORCEINLINE KeyIndex warp_topk_indexed(const float (&keys)[kItemsPerLane],
                                                            const int (&indices)[kItemsPerLane], int k,
                                                            unsigned mask = kFullMask) {
  static_assert(detail::CheckWidth<kWidth>::value, "");
  unsigned long long c[kItemsPerLane];
  FULGUR_UNROLL
  for (int i = 0; i < kItemsPerLane; ++i) c[i] = indices[i] >= 0 ? detail::pack_candidate(keys[i], indices[i]) : 0ull;
  return detail::warp_topk_packed<kWidth>(c, k < kWidth ? k : kWidth, mask);
}

/// Loads the strided arrangement warp_topk takes: item i of group lane l = row[l + kWidth * i],
/// `fill` at or past n.
template <int kWidth = 32, int kItemsPerLane, typename T>
FULGUR_DEVICE FULGUR_FORCEINLINE void load_warp_strided(const T* row, int n, T (&items)[kItemsPerLane], T fill) {
  const int lane = static_cast<int>(detail::lane_id() & (kWidth - 1));
  FULGUR_UNROLL
  for (int i = 0; i < kItemsPerLane; ++i) {
    const int j = lane + kWidth * i;
    items[i] = j < n ? row[j] : fill;
  }
}

/// Block top-k / top-k selection over n <= kBlockThreads * kItemsPerThread candidates in the
/// blocked arrangement (item i of thread t is candidate t * kItemsPerThread + i; items at or past
/// n are ignored). Every thread calls with the same n and k. Each call ends with a barrier, so
/// the storage can be reused at once.
template <int kBlockThreads, int kItemsPerThread>
class BlockTopK {
  static_assert(detail::CheckBlockThreads<kBlockThreads>::value, "");

 public:
  static constexpr int kCapacity = kBlockThreads * kItemsPerThread;
  static_assert(kCapacity <= 65535, "select packs two 16-bit counts per scan element");
  using Sort = BlockRadixSort<float, int, kBlockThreads, kItemsPerThread, 4>;
  using Scan = BlockScan<uint32_t, kBlockThreads>;

  struct TempStorage {
    union {
      typename Sort::TempStorage sort;
      struct {
        uint32_t histogram[256];
        typename Scan::TempStorage scan;
        uint32_t digit;
        uint32_t remaining;
      } select;
    } u;
  };

  FULGUR_DEVICE FULGUR_FORCEINLINE explicit BlockTopK(TempStorage& storage) : s_(storage) {}

  /// Marks the kept candidates: position[i] = the item's slot in the kept set in ascending index
  /// order, or -1. Returns the number kept, min(max(k, 0), n), on every thread.
  FULGUR_DEVICE int select(const float (&keys)[kItemsPerThread], int n, int k, int (&position)[kItemsPerThread]) {
    const int tid = static_cast<int>(threadIdx.x);
    n = n < kCapacity ? n : kCapacity;
    const int kept = k < 0 ? 0 : (k < n ? k : n);
    uint32_t rank[kItemsPerThread];
    FULGUR_UNROLL
    for (int i = 0; i < kItemsPerThread; ++i) rank[i] = tid * kItemsPerThread + i < n ? float_rank_bits(keys[i]) : 0u;

    // Radix select, most significant byte first: find the kept-th largest rank `threshold` and
    // how many candidates equal to it are kept (`remaining`).
    uint32_t threshold = 0u, remaining = static_cast<uint32_t>(kept);
    if (kept > 0) {
      for (int shift = 24; shift >= 0; shift -= 8) {
        const uint32_t high_mask = shift == 24 ? 0u : 0xffffffffu << (shift + 8);
        for (int j = tid; j < 256; j += kBlockThreads) s_.u.select.histogram[j] = 0u;
        __syncthreads();
        FULGUR_UNROLL
        for (int i = 0; i < kItemsPerThread; ++i)
          if (tid * kItemsPerThread + i < n && (rank[i] & high_mask) == threshold)
            atomicAdd(&s_.u.select.histogram[(rank[i] >> shift) & 255u], 1u);
        __syncthreads();
        if (tid < 32) find_digit(remaining);
        __syncthreads();
        threshold |= s_.u.select.digit << shift;
        remaining = s_.u.select.remaining;
      }
    }

    // Kept: rank > threshold, or rank == threshold among the first `remaining` such in index
    // order. One exclusive scan of (greater << 16 | equal) gives both counts before each item.
    uint32_t flags[kItemsPerThread];
    FULGUR_UNROLL
    for (int i = 0; i < kItemsPerThread; ++i) {
      const bool valid = kept > 0 && tid * kItemsPerThread + i < n;
      flags[i] = !valid ? 0u : rank[i] > threshold ? 1u << 16 : rank[i] == threshold ? 1u : 0u;
    }
    uint32_t before[kItemsPerThread];
    Scan(s_.u.select.scan).exclusive_sum(flags, before);
    FULGUR_UNROLL
    for (int i = 0; i < kItemsPerThread; ++i) {
      const uint32_t greater = before[i] >> 16, equal = before[i] & 0xffffu;
      const uint32_t slot = greater + (equal < remaining ? equal : remaining);
      const bool keep = (flags[i] >> 16) != 0u || (flags[i] != 0u && equal < remaining);
      position[i] = keep ? static_cast<int>(slot) : -1;
    }
    __syncthreads();
    return kept;
  }

  /// Writes the kept candidates' indices in ascending order to out_indices[0, kept). Returns kept.
  FULGUR_DEVICE int select_indices(const float (&keys)[kItemsPerThread], int n, int k, int* out_indices) {
    int position[kItemsPerThread];
    const int kept = select(keys, n, k, position);
    const int base = static_cast<int>(threadIdx.x) * kItemsPerThread;
    FULGUR_UNROLL
    for (int i = 0; i < kItemsPerThread; ++i)
      if (position[i] >= 0) out_indices[position[i]] = base + i;
    return kept;
  }

  /// The kept candidates best first (descending key, ties by ascending index):
  /// out_keys[r] (the input key, unchanged; may be null) and out_indices[r] for r < kept.
  FULGUR_DEVICE int topk(const float (&keys)[kItemsPerThread], int n, int k, float* out_keys, int* out_indices) {
    const int tid = static_cast<int>(threadIdx.x);
    n = n < kCapacity ? n : kCapacity;
    const int kept = k < 0 ? 0 : (k < n ? k : n);
    if (kept == 0) return 0;
    // Items past n become -inf: the sort is stable and they sit after every real candidate in
    // blocked order, so they rank after every real -inf/NaN too.
    float sort_keys[kItemsPerThread];
    int index[kItemsPerThread];
    FULGUR_UNROLL
    for (int i = 0; i < kItemsPerThread; ++i) {
      index[i] = tid * kItemsPerThread + i;
      sort_keys[i] = index[i] < n ? keys[i] : -INFINITY;
    }
    Sort(s_.u.sort).sort_by(sort_keys, index, RankDescending{}, 0, 32);
    FULGUR_UNROLL
    for (int i = 0; i < kItemsPerThread; ++i) {
      const int r = tid * kItemsPerThread + i;
      if (r < kept) {
        if (out_keys) out_keys[r] = sort_keys[i];
        out_indices[r] = index[i];
      }
    }
    return kept;
  }

 private:
  // Warp 0: lane l holds the 8 digits 255 - 8l .. 248 - 8l (descending); an exclusive scan over
  // the lanes counts the candidates with a larger digit, and the one digit whose bucket holds
  // the `remaining`-th largest is published with the count still needed inside it.
  FULGUR_DEVICE FULGUR_FORCEINLINE void find_digit(uint32_t remaining) {
    const int lane = static_cast<int>(threadIdx.x);
    uint32_t count[8];
    uint32_t lane_total = 0u;
    FULGUR_UNROLL
    for (int j = 0; j < 8; ++j) {
      count[j] = s_.u.select.histogram[255 - 8 * lane - j];
      lane_total += count[j];
    }
    uint32_t larger = warp_exclusive_sum<32>(lane_total);
    FULGUR_UNROLL
    for (int j = 0; j < 8; ++j) {
      if (larger < remaining && larger + count[j] >= remaining) {
        s_.u.select.digit = static_cast<uint32_t>(255 - 8 * lane - j);
        s_.u.select.remaining = remaining - larger;
      }
      larger += count[j];
    }
  }

  TempStorage& s_;
};

}  // namespace primitives
FULGUR_NAMESPACE_END
