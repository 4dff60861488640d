// SPDX-License-Identifier: Apache-2.0
// Shared pieces of the MoE kernel tests: run-time-dtype host tensors, upload/download, a light
// mode for the sanitizer builds, and the precision constants the tolerances are derived from.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "fulgur/memory.hpp"
#include "fulgur/moe.cuh"
#include "fulgur/reference/moe.hpp"
#include "fulgur_test.hpp"

namespace moe_test {

namespace fm = fulgur::moe;
namespace ref = fulgur::reference;
using fulgur::DeviceBuffer;
using fulgur::DType;

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
/// Unit roundoff of fp32 (round to nearest): every fp32 operation errs by at most u * |result|.
constexpr double kU32 = 1.0 / (1 << 24);

/// The ThreadSanitizer build (thread backend: one OS thread per CUDA thread, ~100x slower) runs
/// smaller shapes; the Release and AddressSanitizer (fiber backend) builds run the full set.
#if (defined(FULGUR_EMU_THREADS) && FULGUR_EMU_THREADS) || defined(__SANITIZE_THREAD__)
constexpr bool kLight = true;
#else
constexpr bool kLight = false;
#endif
/// n in the full build, max(1, n / div) in the sanitizer builds.
inline int64_t sized(int64_t n, int64_t div = 8) { return kLight ? std::max<int64_t>(1, n / div) : n; }

/// A tensor of a run-time dtype stored as bytes (host), read and written through doubles.
struct Tensor {
  Tensor() = default;
  Tensor(DType d, size_t count) : dt(d), n(count), bytes(count * fulgur::dtype_size(d)) {}
  void* data() { return bytes.data(); }
  const void* data() const { return bytes.data(); }
  double get(size_t i) const { return ref::moe_detail::load(bytes.data(), dt, static_cast<int64_t>(i)); }
  void set(size_t i, double v) { ref::moe_detail::store(bytes.data(), dt, static_cast<int64_t>(i), v); }
  void poison() {
    if (!bytes.empty()) std::memset(bytes.data(), 0xFF, bytes.size());
  }
  DType dt = DType::kF32;
  size_t n = 0;
  std::vector<unsigned char> bytes;
};

/// The device copy of a host tensor (bytes), and back.
inline DeviceBuffer<unsigned char> upload(const Tensor& t) { return DeviceBuffer<unsigned char>(t.bytes); }
template <typename T>
inline DeviceBuffer<T> upload(const std::vector<T>& v) {
  return DeviceBuffer<T>(v);
}
inline Tensor download(const DeviceBuffer<unsigned char>& d, DType dt, size_t n) {
  REQUIRE(fulgur::device_synchronize() == cudaSuccess);
  Tensor t(dt, n);
  if (n) d.copy_to_host(reinterpret_cast<unsigned char*>(t.data()), t.bytes.size());
  return t;
}
template <typename T>
inline std::vector<T> download(const DeviceBuffer<T>& d) {
  REQUIRE(fulgur::device_synchronize() == cudaSuccess);
  return d.to_host();
}
/// A device buffer of n elements filled with 0xFF bytes (poison: unwritten elements show).
template <typename T>
inline DeviceBuffer<T> poisoned(size_t n) {
  DeviceBuffer<T> d(n);
  if (n) d.fill_bytes(0xFF);
  return d;
}

/// Spacing of the dtype's values just above |x| (one unit in the last place).
inline double ulp(DType dt, double x) {
  const int mant = dt == DType::kBF16 ? 8 : dt == DType::kF16 ? 11 : dt == DType::kF32 ? 24 : 53;
  const int min_exp = dt == DType::kBF16 ? -126 : dt == DType::kF16 ? -14 : dt == DType::kF32 ? -126 : -1022;
  x = std::fabs(x);
  int e = x > 0 ? std::ilogb(x) : min_exp;
  if (e < min_exp) e = min_exp;
  return std::ldexp(1.0, e - (mant - 1));
}

template <typename T>
inline bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}
inline bool bitwise_equal(const Tensor& a, const Tensor& b) { return bitwise_equal(a.bytes, b.bytes); }

}  // namespace moe_test
