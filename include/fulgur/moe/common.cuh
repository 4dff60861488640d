// SPDX-License-Identifier: Apache-2.0
// Device helpers shared by the MoE kernels (route, permute, gather, combine): element conversion
// to and from fp32, runtime-dtype scalar loads, and vector loads/stores of V elements through the
// widest aligned word (16 bytes where the vector is 16 bytes or more: LDG.E.128 / STG.E.128).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "fulgur/detail/cuda.cuh"
#include "fulgur/detail/dispatch.hpp"
#include "fulgur/detail/dtype.hpp"
#include "fulgur/primitives/warp.cuh"

FULGUR_NAMESPACE_BEGIN
namespace moe {
namespace detail {

template <typename T>
FULGUR_HOST_DEVICE FULGUR_FORCEINLINE float to_float(T x);
template <>
FULGUR_HOST_DEVICE FULGUR_FORCEINLINE float to_float<float>(float x) {
  return x;
}
template <>
FULGUR_HOST_DEVICE FULGUR_FORCEINLINE float to_float<__half>(__half x) {
  return __half2float(x);
}
template <>
FULGUR_HOST_DEVICE FULGUR_FORCEINLINE float to_float<__nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

/// Round-to-nearest-even conversion from fp32 (one rounding, as the references' from_double of an
/// fp32-representable value).
template <typename T>
FULGUR_HOST_DEVICE FULGUR_FORCEINLINE T from_float(float x);
template <>
FULGUR_HOST_DEVICE FULGUR_FORCEINLINE float from_float<float>(float x) {
  return x;
}
template <>
FULGUR_HOST_DEVICE FULGUR_FORCEINLINE __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
FULGUR_HOST_DEVICE FULGUR_FORCEINLINE __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

/// Element i of an f32 or bf16 weight tensor (the two weight dtypes Params allow).
FULGUR_DEVICE FULGUR_FORCEINLINE float load_weight(const void* w, DType dt, int64_t i) {
  return dt == DType::kBF16 ? __bfloat162float(static_cast<const __nv_bfloat16*>(w)[i])
                            : static_cast<const float*>(w)[i];
}

/// Element i of an f32 / f16 / bf16 tensor whose dtype is known only at run time.
FULGUR_DEVICE FULGUR_FORCEINLINE float load_any(const void* base, DType dt, int64_t i) {
  switch (dt) {
    case DType::kF16: return __half2float(static_cast<const __half*>(base)[i]);
    case DType::kBF16: return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
    default: return static_cast<const float*>(base)[i];
  }
}

/// The word a vector of kBytes bytes moves in: 16 bytes when kBytes is a multiple of 16, else 8,
/// 4 or 2 (a single 16-bit element). Callers guarantee that alignment (the launchers check it on
/// the host).
template <int kBytes>
struct VecWord {
  static_assert(kBytes % 2 == 0, "vectors are whole 16-bit words");
  using type = typename std::conditional<
      kBytes % 16 == 0, uint4,
      typename std::conditional<kBytes % 8 == 0, uint2,
                                typename std::conditional<kBytes % 4 == 0, uint32_t, uint16_t>::type>::type>::type;
  static constexpr int kCount = kBytes / static_cast<int>(sizeof(type));
};

/// Loads V consecutive elements at p (aligned to the vector word) as stored: the first half of
/// load_vec, for callers that keep several loads in flight before widening them.
template <int V, typename T>
FULGUR_DEVICE FULGUR_FORCEINLINE void load_raw(const T* __restrict__ p, T (&e)[V]) {
  using W = VecWord<V* static_cast<int>(sizeof(T))>;
  typename W::type raw[W::kCount];
  const typename W::type* src = reinterpret_cast<const typename W::type*>(p);
  FULGUR_UNROLL
  for (int i = 0; i < W::kCount; ++i) raw[i] = src[i];
  memcpy(e, raw, sizeof e);
}

/// Loads V consecutive elements at p (aligned to the vector word) and widens them to fp32.
template <int V, typename T>
FULGUR_DEVICE FULGUR_FORCEINLINE void load_vec(const T* __restrict__ p, float (&out)[V]) {
  T e[V];
  load_raw<V>(p, e);
  FULGUR_UNROLL
  for (int i = 0; i < V; ++i) out[i] = to_float(e[i]);
}

/// Rounds V fp32 values to T and stores them at p (aligned to the vector word).
template <int V, typename T>
FULGUR_DEVICE FULGUR_FORCEINLINE void store_vec(T* __restrict__ p, const float (&in)[V]) {
  using W = VecWord<V* static_cast<int>(sizeof(T))>;
  T e[V];
  FULGUR_UNROLL
  for (int i = 0; i < V; ++i) e[i] = from_float<T>(in[i]);
  typename W::type raw[W::kCount];
  memcpy(raw, e, sizeof raw);
  typename W::type* dst = reinterpret_cast<typename W::type*>(p);
  FULGUR_UNROLL
  for (int i = 0; i < W::kCount; ++i) dst[i] = raw[i];
}

/// load_vec for a tensor whose dtype (f32, f16, bf16) is known only at run time.
template <int V>
FULGUR_DEVICE FULGUR_FORCEINLINE void load_vec_any(const void* p, DType dt, float (&out)[V]) {
  switch (dt) {
    case DType::kF16: load_vec<V>(static_cast<const __half*>(p), out); break;
    case DType::kBF16: load_vec<V>(static_cast<const __nv_bfloat16*>(p), out); break;
    default: load_vec<V>(static_cast<const float*>(p), out); break;
  }
}

/// Size in bytes of an f32 / f16 / bf16 element.
FULGUR_HOST_DEVICE FULGUR_FORCEINLINE int storage_bytes(DType dt) { return dt == DType::kF32 ? 4 : 2; }

/// True when this build compiles kernels for dtype t (FULGUR_ALLOW_* allow-lists).
inline bool dtype_compiled(DType t) {
  return (t == DType::kF32 && FULGUR_ALLOW_F32) || (t == DType::kF16 && FULGUR_ALLOW_F16) ||
         (t == DType::kBF16 && FULGUR_ALLOW_BF16);
}

/// True when p is aligned to `bytes`.
inline bool aligned_to(const void* p, uint64_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

/// Fills n elements with a value (grid-stride).
template <typename T>
FULGUR_KERNEL void fill_kernel(T* p, int64_t n, T value) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) p[i] = value;
}

}  // namespace detail
}  // namespace moe
FULGUR_NAMESPACE_END
