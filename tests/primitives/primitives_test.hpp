// SPDX-License-Identifier: Apache-2.0
// Shared pieces of the primitives tests: launching, reading back, and the orders the tests check
// against, written from their definitions with plain float comparisons (never with the bit maps
// the library sorts by), so a wrong bit trick in the library cannot hide in the oracle.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "fulgur/detail/launch.cuh"
#include "fulgur/memory.hpp"
#include "fulgur_test.hpp"

namespace prim_test {

using fulgur::DeviceBuffer;
using fulgur::detail::launch;

constexpr float kInf = std::numeric_limits<float>::infinity();

inline float qnan() { return std::numeric_limits<float>::quiet_NaN(); }
/// A NaN with the sign bit and a payload, to check that every NaN is handled alike.
inline float neg_nan_payload() {
  const uint32_t u = 0xffc01234u;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float pos_nan_payload() {
  const uint32_t u = 0x7f800001u;  // signalling-style payload
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

template <typename T>
std::vector<T> read(const DeviceBuffer<T>& buf) {
  REQUIRE(fulgur::device_synchronize() == cudaSuccess);
  return buf.to_host();
}

/// The top-k order (spec: moe_routing.md "Tie-breaking", token_drop.md "Selection"): larger key
/// first, NaN counted as -inf, -0.0 equal to +0.0 (numeric ==), then lower index first.
inline float rank_value(float x) { return std::isnan(x) ? -kInf : x; }
inline bool ranks_before(float a, int ia, float b, int ib) {
  const float x = rank_value(a), y = rank_value(b);
  if (x != y) return x > y;
  return ia < ib;
}
/// Indices of keys[0, n) in top-k order.
inline std::vector<int> rank_order(const float* keys, int n) {
  std::vector<int> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return ranks_before(keys[a], a, keys[b], b); });
  return idx;
}

/// Ascending float order of the block sort: numbers by <, -0.0 == +0.0, every NaN after +inf and
/// equal to the other NaNs.
inline bool float_sort_less(float a, float b) {
  if (std::isnan(a)) return false;
  if (std::isnan(b)) return true;
  return a < b;
}

/// x -> a * x + b under unsigned (mod 2^32) arithmetic: composition is associative and not
/// commutative, so a scan that combines in the wrong order fails; 8 bytes, so it travels as two
/// shuffle words.
struct Affine {
  unsigned a, b;
};
struct Compose {  // apply l, then r
  FULGUR_HOST_DEVICE Affine operator()(const Affine& l, const Affine& r) const {
    return Affine{l.a * r.a, r.a * l.b + r.b};
  }
};
inline Affine random_affine(fulgur_test::Rng& rng) {
  return Affine{static_cast<unsigned>(rng.uniform_int(0, 0xffffffffll)),
                static_cast<unsigned>(rng.uniform_int(0, 0xffffffffll))};
}

/// The emulation's thread backend (the ThreadSanitizer build, FULGUR_EMU_THREADS=1) runs one OS
/// thread per CUDA thread, about 50x slower than the fiber backend: there the tests keep every
/// kernel configuration but fewer input patterns and sizes (races do not depend on the data).
#if defined(FULGUR_EMU_THREADS) && FULGUR_EMU_THREADS
constexpr bool kSlowBackend = true;
#else
constexpr bool kSlowBackend = false;
#endif
template <typename T>
std::vector<T> full_or_slow(std::vector<T> full, std::vector<T> slow) {
  return kSlowBackend ? slow : full;
}

/// Input patterns for the order-sensitive tests.
enum class Pattern { kRandom, kFewDistinct, kAllEqual, kAscending, kDescending, kSpecials, kPermutation };
inline const char* pattern_name(Pattern p) {
  switch (p) {
    case Pattern::kRandom: return "random";
    case Pattern::kFewDistinct: return "few distinct (ties)";
    case Pattern::kAllEqual: return "all equal";
    case Pattern::kAscending: return "ascending";
    case Pattern::kDescending: return "descending";
    case Pattern::kSpecials: return "NaN/inf/zero mix";
    case Pattern::kPermutation: return "tie-free permutation / 32";
  }
  return "?";
}
constexpr Pattern kAllPatterns[] = {Pattern::kRandom,     Pattern::kFewDistinct, Pattern::kAllEqual,
                                    Pattern::kAscending,  Pattern::kDescending,  Pattern::kSpecials,
                                    Pattern::kPermutation};
/// All patterns, or two adversarial ones on the slow backend.
inline std::vector<Pattern> test_patterns() {
  return full_or_slow<Pattern>({std::begin(kAllPatterns), std::end(kAllPatterns)},
                               {Pattern::kFewDistinct, Pattern::kSpecials});
}

/// n float keys of the given pattern. kSpecials mixes +-NaN (with payloads), +-inf, +-0.0,
/// denormals, duplicates and ordinary values; kPermutation is the peers' tie-free test input (a
/// random permutation of 0..n-1 scaled by 1/32, exact in float).
inline std::vector<float> make_keys(Pattern p, int n, fulgur_test::Rng& rng) {
  std::vector<float> k(static_cast<size_t>(n));
  switch (p) {
    case Pattern::kRandom:
      for (float& x : k) x = static_cast<float>(rng.normal());
      break;
    case Pattern::kFewDistinct:
      for (float& x : k) x = static_cast<float>(rng.uniform_int(0, 3)) * 0.5f - 0.5f;
      break;
    case Pattern::kAllEqual:
      for (float& x : k) x = 0.75f;
      break;
    case Pattern::kAscending:
      for (int i = 0; i < n; ++i) k[static_cast<size_t>(i)] = static_cast<float>(i) * 0.25f - 7.0f;
      break;
    case Pattern::kDescending:
      for (int i = 0; i < n; ++i) k[static_cast<size_t>(i)] = 3.0f - static_cast<float>(i) * 0.125f;
      break;
    case Pattern::kSpecials: {
      const float specials[] = {
          qnan(), -qnan(), neg_nan_payload(), pos_nan_payload(), kInf, -kInf, 0.0f, -0.0f, 1e-40f, -1e-40f, 1.0f,
          -1.0f,  2.5f};
      for (float& x : k) x = specials[rng.uniform_int(0, 12)];
      break;
    }
    case Pattern::kPermutation: {
      std::vector<int> perm(static_cast<size_t>(n));
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng.gen);
      for (int i = 0; i < n; ++i) k[static_cast<size_t>(i)] = static_cast<float>(perm[static_cast<size_t>(i)]) / 32.0f;
      break;
    }
  }
  return k;
}

}  // namespace prim_test
