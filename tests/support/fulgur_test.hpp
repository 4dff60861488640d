// SPDX-License-Identifier: Apache-2.0
// Shared test support: the Catch2 include (v3 where found, else the v2 single header Debian
// ships), a printed seed for every random input, and the comparison helpers every family uses.
#pragma once

#if defined(FULGUR_CATCH2_V3)
#include <catch2/catch_approx.hpp>
#include <catch2/catch_test_macros.hpp>
using Catch::Approx;
#else
#include <catch2/catch.hpp>
#endif

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace fulgur_test {

/// The run's base seed: FULGUR_TEST_SEED from the environment, else a fixed default. The main()
/// prints it once; every test derives its own stream from it and its name so tests stay
/// independent of order and of which tests are selected.
inline uint64_t base_seed() {
  static const uint64_t seed = [] {
    const char* s = std::getenv("FULGUR_TEST_SEED");
    return s && *s ? std::strtoull(s, nullptr, 0) : uint64_t{20261126};
  }();
  return seed;
}

inline uint64_t seed_for(const std::string& name) {
  uint64_t h = 1469598103934665603ull ^ base_seed();
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  return h;
}

/// A generator for one test: seeded from the base seed and a name, and the seed is recorded in
/// Catch's output (INFO) so a failure prints it.
struct Rng {
  explicit Rng(const std::string& name) : seed(seed_for(name)), gen(seed) {}
  double normal(double mean = 0.0, double stddev = 1.0) {
    return std::normal_distribution<double>(mean, stddev)(gen);
  }
  double uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(gen); }
  int64_t uniform_int(int64_t lo, int64_t hi) {  // inclusive
    return std::uniform_int_distribution<int64_t>(lo, hi)(gen);
  }
  uint64_t seed;
  std::mt19937_64 gen;
};

/// Relative root-mean-square error ||a - b|| / ||b||, b the fp64 reference.
inline double rel_rmse(const std::vector<double>& got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

inline double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::fmax(m, std::fabs(a[i] - b[i]));
  return m;
}

/// A quiet-NaN bit pattern for poisoning outputs before a run, so unwritten elements show.
template <typename T>
inline void poison(std::vector<T>& v) {
  if (!v.empty()) std::memset(static_cast<void*>(v.data()), 0xFF, v.size() * sizeof(T));
}

}  // namespace fulgur_test

#define FULGUR_INFO_SEED(rng) INFO("seed " << (rng).seed << " (base FULGUR_TEST_SEED=" << fulgur_test::base_seed() << ")")
