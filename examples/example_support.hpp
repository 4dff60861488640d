// SPDX-License-Identifier: Apache-2.0
// What every example program needs besides fulgur itself: a seeded random source that gives the
// same numbers with every compiler, and the small helpers that print a failed call's error and,
// where fulgur can say, its reason in words. Not part of the library.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>

#include "fulgur/detail/status.hpp"

namespace fulgur_example {

// Random numbers from a seed (splitmix64 + Box-Muller), the same sequence with every compiler.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return (static_cast<double>(next() >> 11) + 0.5) * 0x1.0p-53; }  // (0, 1)
  double normal() { return std::sqrt(-2.0 * std::log(uniform())) * std::cos(6.283185307179586 * uniform()); }
};

// cudaGetErrorString lives in the CUDA runtime library, which an emulated build does not link;
// the codes fulgur's launchers document are few.
inline const char* error_name(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    default: return "another cudaError_t";
  }
}

// Every call that returns a cudaError_t goes through this: print what failed and how.
inline bool ok(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return true;
  std::printf("  %s failed: %s (%d)\n", what, error_name(e), static_cast<int>(e));
  return false;
}

// A launcher's cudaError_t says what class of failure; can_implement(params) (found in the
// Params' own family namespace) says why, in words.
template <typename Params>
bool launched(cudaError_t e, const char* what, const Params& p) {
  if (ok(e, what)) return true;
  std::printf("  reason: %s\n", can_implement(p).reason());
  return false;
}

// The references return a Status too: the same checks as the launchers, then the reason.
inline bool ref_ok(const fulgur::Status& s, const char* what) {
  if (s) return true;
  std::printf("  reference %s: %s\n", what, s.reason());
  return false;
}

}  // namespace fulgur_example
