// SPDX-License-Identifier: Apache-2.0
// Device helpers shared by the lightning prefill and decode kernels: reading 16-byte chunks of
// bf16/f16/f32 inputs as floats (with the fused SiLU), splitting fp32 values into two bf16
// terms for the tensor cores, and storing output pairs in the run-time output dtype.
#pragma once

#include <cstdint>
#include <cstring>

#include "fulgur/detail/config.hpp"
#include "fulgur/detail/cuda.cuh"
#include "fulgur/detail/dtype.hpp"

FULGUR_NAMESPACE_BEGIN
namespace lightning {
namespace detail {

#if defined(__CUDACC__) || defined(FULGUR_EMULATE)

FULGUR_DEVICE FULGUR_FORCEINLINE float silu(float x) { return x / (1.f + __expf(-x)); }

FULGUR_DEVICE FULGUR_FORCEINLINE float bf16_bits_to_float(uint32_t bits16) { return __uint_as_float(bits16 << 16); }

FULGUR_DEVICE FULGUR_FORCEINLINE float f16_bits_to_float(uint32_t bits16) {
  __half_raw r;
  r.x = static_cast<unsigned short>(bits16);
  return __half2float(__half(r));
}

/// Element type of q, k, v: how many fit one 16-byte chunk and how a chunk widens to fp32.
template <typename T>
struct Input;
template <>
struct Input<__nv_bfloat16> {
  static constexpr int kPerChunk = 8;
  FULGUR_DEVICE FULGUR_FORCEINLINE static void widen(const uint4& c, float (&f)[8]) {
    const uint32_t w[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[2 * i] = __uint_as_float(w[i] << 16);
      f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
};
template <>
struct Input<__half> {
  static constexpr int kPerChunk = 8;
  FULGUR_DEVICE FULGUR_FORCEINLINE static void widen(const uint4& c, float (&f)[8]) {
    const uint32_t w[4] = {c.x, c.y, c.z, c.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[2 * i] = f16_bits_to_float(w[i] & 0xffffu);
      f[2 * i + 1] = f16_bits_to_float(w[i] >> 16);
    }
  }
};
template <>
struct Input<float> {
  static constexpr int kPerChunk = 4;
  FULGUR_DEVICE FULGUR_FORCEINLINE static void widen(const uint4& c, float (&f)[4]) {
    f[0] = __uint_as_float(c.x);
    f[1] = __uint_as_float(c.y);
    f[2] = __uint_as_float(c.z);
    f[3] = __uint_as_float(c.w);
  }
};

/// One 16-byte read-only global load (LDG.E.128 on the GPU).
FULGUR_DEVICE FULGUR_FORCEINLINE uint4 load_chunk(const void* p) { return __ldg(static_cast<const uint4*>(p)); }

/// Two floats -> bf16x2 (round to nearest even), the first in the low half (the lower-index
/// element of an mma fragment register).
FULGUR_DEVICE FULGUR_FORCEINLINE uint32_t pack_bf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return u;
}

FULGUR_DEVICE FULGUR_FORCEINLINE float2 unpack_bf16x2(uint32_t u) {
  return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
}

/// x ~= hi + lo with hi = bf16(x) and lo = bf16(x - hi): 16 significant bits (relative error
/// <= 2^-17) from two bf16 mma operands. x - hi is exact in fp32 (hi is x rounded to 8 bits).
FULGUR_DEVICE FULGUR_FORCEINLINE void split_bf16x2(float a, float b, uint32_t& hi, uint32_t& lo) {
  hi = pack_bf16x2(a, b);
  const float2 h = unpack_bf16x2(hi);
  lo = pack_bf16x2(a - h.x, b - h.y);
}

/// Store two consecutive output elements (8-byte aligned for f32, 4-byte otherwise) in the
/// run-time output dtype. The branch is uniform across the grid.
FULGUR_DEVICE FULGUR_FORCEINLINE void store_pair(void* base, DType t, int64_t offset, float a, float b) {
  if (t == DType::kBF16) {
    *reinterpret_cast<__nv_bfloat162*>(static_cast<__nv_bfloat16*>(base) + offset) = __floats2bfloat162_rn(a, b);
  } else if (t == DType::kF16) {
    *reinterpret_cast<__half2*>(static_cast<__half*>(base) + offset) = __floats2half2_rn(a, b);
  } else {
    *reinterpret_cast<float2*>(static_cast<float*>(base) + offset) = make_float2(a, b);
  }
}

#endif  // __CUDACC__ || FULGUR_EMULATE

}  // namespace detail
}  // namespace lightning
FULGUR_NAMESPACE_END
