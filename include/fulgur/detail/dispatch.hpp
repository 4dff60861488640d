// SPDX-License-Identifier: Apache-2.0
// Compile-time dispatch of runtime axes (dtype, head dim, top-k bucket) with build-time
// allow-lists. Each macro turns a runtime value into a compile-time constant for its body; a
// value outside the allow-list returns cudaErrorNotSupported from the dispatch expression.
//
// Allow-lists cut compile time and binary size for engines that need a few configurations:
//   -DFULGUR_ALLOW_F32=0 removes every fp32-input instantiation;
//   each family defines its own value lists (e.g. FULGUR_LIGHTNING_HEAD_DIMS) the same way.
#pragma once

#include <cuda_runtime_api.h>

#include <type_traits>

#include "fulgur/detail/dtype.hpp"

#ifndef FULGUR_ALLOW_F32
#define FULGUR_ALLOW_F32 1
#endif
#ifndef FULGUR_ALLOW_F16
#define FULGUR_ALLOW_F16 1
#endif
#ifndef FULGUR_ALLOW_BF16
#define FULGUR_ALLOW_BF16 1
#endif

FULGUR_NAMESPACE_BEGIN
namespace detail {

template <typename T> struct TypeTag { using type = T; };
template <typename T, T V> struct ValueTag { static constexpr T value = V; };

/// Calls f(TypeTag<T>{}) for the C++ type of `t`, or returns cudaErrorNotSupported.
template <typename F>
cudaError_t dispatch_dtype(DType t, F&& f) {
  switch (t) {
    case DType::kF32:
      if constexpr (FULGUR_ALLOW_F32) return f(TypeTag<float>{});
      break;
    case DType::kF16:
      if constexpr (FULGUR_ALLOW_F16) return f(TypeTag<__half>{});
      break;
    case DType::kBF16:
      if constexpr (FULGUR_ALLOW_BF16) return f(TypeTag<__nv_bfloat16>{});
      break;
    default:
      break;
  }
  return cudaErrorNotSupported;
}

/// Calls f(ValueTag<T, V>{}) for the V in Allowed... equal to `v`, or returns
/// cudaErrorNotSupported. Allowed... is the build's allow-list for this axis.
template <typename T, T... Allowed, typename F>
cudaError_t dispatch_value(T v, F&& f) {
  cudaError_t result = cudaErrorNotSupported;
  bool hit = ((v == Allowed ? (result = f(ValueTag<T, Allowed>{}), true) : false) || ...);
  (void)hit;
  return result;
}

/// True when v is in Allowed... (for can_implement, which must not instantiate kernels).
template <typename T, T... Allowed>
constexpr bool value_allowed(T v) {
  return ((v == Allowed) || ...);
}

}  // namespace detail
FULGUR_NAMESPACE_END

/// FULGUR_DISPATCH_DTYPE(dtype, T, body): body sees `using T = <element type>` and must return
/// cudaError_t. Evaluates to the body's result or cudaErrorNotSupported.
#define FULGUR_DISPATCH_DTYPE(dtype, T, ...)                                      \
  ::fulgur::detail::dispatch_dtype((dtype), [&](auto fulgur_tag_) -> cudaError_t { \
    using T = typename decltype(fulgur_tag_)::type;                                \
    __VA_ARGS__                                                                    \
  })

/// FULGUR_DISPATCH_VALUE(type, value, NAME, (allowed list), body): body sees
/// `constexpr type NAME` equal to value. Example:
///   FULGUR_DISPATCH_VALUE(int, head_dim, kD, (FULGUR_LIGHTNING_HEAD_DIMS), return run<kD>(p););
#define FULGUR_DETAIL_UNPAREN(...) __VA_ARGS__
#define FULGUR_DISPATCH_VALUE(fulgur_type_, fulgur_value_, NAME, allowed, ...)             \
  ::fulgur::detail::dispatch_value<fulgur_type_, FULGUR_DETAIL_UNPAREN allowed>(           \
      (fulgur_value_), [&](auto fulgur_tag_) -> cudaError_t {                              \
        constexpr fulgur_type_ NAME = decltype(fulgur_tag_)::value;                        \
        __VA_ARGS__                                                                        \
      })
