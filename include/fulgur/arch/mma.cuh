// SPDX-License-Identifier: Apache-2.0
// Warp-level tensor-core mma.sync, one wrapper per instruction (sm_80+):
//   mma_m16n8k16_bf16  mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
//   mma_m16n8k16_f16   mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32
//   mma_m16n8k8_tf32   mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32
//   float_to_tf32      cvt.rna.tf32.f32
// Every lane of the warp must call an mma with the same shape and types (.sync.aligned): call it
// only where the whole warp agrees. Which element each lane holds is in arch/layout.hpp (PTX ISA
// "Matrix Fragments for mma.m16n8k16 with floating point type" and "... for mma.m16n8k8").
//
// Under FULGUR_EMULATE each lane publishes its registers through fulgur::emu::warp_allgather and
// computes its own outputs with the host model in arch/emulate.hpp (products exact, fp32
// accumulation from C in ascending k; tf32 operands truncated to their tf32 bits). The model and
// the hardware agree bit for bit only when all partial sums are exact in fp32.
#pragma once

#include <cstdint>
#include <cstring>

#include "fulgur/arch/emulate.hpp"
#include "fulgur/arch/layout.hpp"
#include "fulgur/detail/config.hpp"
#include "fulgur/detail/cuda.cuh"

FULGUR_NAMESPACE_BEGIN
namespace arch {

/// fp32 -> tf32 bits with round-to-nearest, ties away from zero (cvt.rna.tf32.f32); the low 13
/// bits of the result are zero. Usable on the host too (then it is the host model).
FULGUR_HOST_DEVICE FULGUR_FORCEINLINE uint32_t float_to_tf32(float x) {
#if defined(__CUDA_ARCH__)
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
  return r;
#else
  return emulate::float_to_tf32(x);
#endif
}

#if defined(__CUDACC__) || defined(FULGUR_EMULATE)

namespace detail {
#if defined(FULGUR_EMULATE)
// One lane's mma operands as published to the warp (40 bytes, within warp_allgather's 256).
struct MmaLaneOperands {
  uint32_t a[4];
  uint32_t b[2];
  float c[4];
};

// Gather the warp's registers, then compute this lane's D with the host model `lane_fn`.
template <typename LaneFn>
inline void emulated_mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4],
                         LaneFn lane_fn) {
  MmaLaneOperands mine;
  std::memcpy(mine.a, a, sizeof mine.a);
  std::memcpy(mine.b, b, sizeof mine.b);
  std::memcpy(mine.c, c, sizeof mine.c);
  const auto* all = static_cast<const MmaLaneOperands*>(::fulgur::emu::warp_allgather(&mine, sizeof mine));
  uint32_t wa[32][4];
  uint32_t wb[32][2];
  float wc[32][4];
  for (int l = 0; l < 32; ++l) {
    std::memcpy(wa[l], all[l].a, sizeof wa[l]);
    std::memcpy(wb[l], all[l].b, sizeof wb[l]);
    std::memcpy(wc[l], all[l].c, sizeof wc[l]);
  }
  lane_fn(static_cast<int>(::fulgur::emu::lane_id()), wa, wb, wc, d);  // d may alias c: c was copied
}
#endif
}  // namespace detail

/// D = A * B + C for a 16x8x16 tile, bf16 multiplicands, fp32 accumulators. a: 4 registers of two
/// bf16 each, b: 2, c/d: 4 fp32 (layouts in arch/layout.hpp). d may be the same array as c.
FULGUR_DEVICE FULGUR_FORCEINLINE void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                        const float (&c)[4]) {
#if defined(__CUDA_ARCH__)
#if __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
#else
  __trap();  // bf16 mma needs sm_80; kernels using it are dispatched to sm_80+ only
#endif
#elif defined(FULGUR_EMULATE)
  detail::emulated_mma(d, a, b, c, emulate::mma_m16n8k16_bf16_lane);
#endif
}

/// D = A * B + C for a 16x8x16 tile, f16 multiplicands, fp32 accumulators (same layouts as bf16).
FULGUR_DEVICE FULGUR_FORCEINLINE void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                       const float (&c)[4]) {
#if defined(__CUDA_ARCH__)
#if __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
#else
  __trap();  // the m16n8k16 shape needs sm_80
#endif
#elif defined(FULGUR_EMULATE)
  detail::emulated_mma(d, a, b, c, emulate::mma_m16n8k16_f16_lane);
#endif
}

/// D = A * B + C for a 16x8x8 tile, tf32 multiplicands (one per .b32 register, low 13 bits
/// ignored: round with float_to_tf32 first), fp32 accumulators. a: 4, b: 2, c/d: 4 registers.
FULGUR_DEVICE FULGUR_FORCEINLINE void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                       const float (&c)[4]) {
#if defined(__CUDA_ARCH__)
#if __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
#else
  __trap();  // tf32 mma needs sm_80
#endif
#elif defined(FULGUR_EMULATE)
  detail::emulated_mma(d, a, b, c, emulate::mma_m16n8k8_tf32_lane);
#endif
}

#endif  // __CUDACC__ || FULGUR_EMULATE

}  // namespace arch
FULGUR_NAMESPACE_END
