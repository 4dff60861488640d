// SPDX-License-Identifier: Apache-2.0
// Runtime element-type tags for the tensors a launcher receives, and their C++ types.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstddef>

#include "fulgur/detail/config.hpp"

FULGUR_NAMESPACE_BEGIN

enum class DType : int {
  kF32 = 0,   // float
  kF16 = 1,   // __half
  kBF16 = 2,  // __nv_bfloat16
  kF64 = 3,   // double: references and tests only; kernels never dispatch on it
};

inline const char* dtype_name(DType t) noexcept {
  switch (t) {
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
    case DType::kF64: return "f64";
  }
  return "unknown";
}

inline size_t dtype_size(DType t) noexcept {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
    case DType::kF64: return 8;
  }
  return 0;
}

template <typename T> struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::kF32; };
template <> struct DTypeOf<__half> { static constexpr DType value = DType::kF16; };
template <> struct DTypeOf<__nv_bfloat16> { static constexpr DType value = DType::kBF16; };
template <> struct DTypeOf<double> { static constexpr DType value = DType::kF64; };

/// Widen any supported element type to double (references) or float (kernels).
FULGUR_HOST_DEVICE inline double to_double(double x) { return x; }
FULGUR_HOST_DEVICE inline double to_double(float x) { return x; }
FULGUR_HOST_DEVICE inline double to_double(__half x) { return static_cast<double>(__half2float(x)); }
FULGUR_HOST_DEVICE inline double to_double(__nv_bfloat16 x) {
  return static_cast<double>(__bfloat162float(x));
}

/// Narrow a double to T with one round-to-nearest-even (via float for the 16-bit types; the double
/// rounding this implies is documented where it matters).
template <typename T> FULGUR_HOST_DEVICE inline T from_double(double x);
template <> FULGUR_HOST_DEVICE inline double from_double<double>(double x) { return x; }
template <> FULGUR_HOST_DEVICE inline float from_double<float>(double x) { return static_cast<float>(x); }
template <> FULGUR_HOST_DEVICE inline __half from_double<__half>(double x) {
  return __float2half_rn(static_cast<float>(x));
}
template <> FULGUR_HOST_DEVICE inline __nv_bfloat16 from_double<__nv_bfloat16>(double x) {
  return __float2bfloat16_rn(static_cast<float>(x));
}

FULGUR_NAMESPACE_END
