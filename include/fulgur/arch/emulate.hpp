// SPDX-License-Identifier: Apache-2.0
// Host models of the warp-level instructions the arch layer wraps: given every lane's registers
// (or row addresses), compute what each lane receives, following the PTX ISA's documented
// fragment layouts (arch/layout.hpp). Pure host code, no emulation runtime needed: the emulated
// device path of each wrapper (arch/mma.cuh, arch/ldmatrix.cuh) gathers the warp's operands and
// calls these, and the GPU tests call the same functions to predict, bit for bit, what the
// hardware must return for the same registers.
//
// Arithmetic of the mma models (documented so results can be reasoned about):
//   - Multiplicands are widened exactly to fp32 (bf16, f16 and tf32 values are all floats), so
//     every product a*b is exact (at most 11 + 11 significand bits).
//   - D[r][c] = C[r][c] + sum_k A[r][k] * B[k][c], accumulated in fp32 starting from C, k in
//     ascending order, each step one fma rounded to nearest even.
//   Tensor cores add the products in another order with other internal rounding, so the model
//   and the hardware agree bit for bit only when every partial sum is exact in fp32 (for example
//   integer-valued inputs whose sums stay below 2^24); otherwise they differ by rounding.
//   - .tf32 operands: the hardware uses only the tf32 bits of each .b32 register (sign, 8
//     exponent bits, top 10 significand bits); the low 13 bits are ignored, i.e. the operand is
//     truncated toward zero. Round with float_to_tf32 (cvt.rna) first for round-to-nearest.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "fulgur/arch/layout.hpp"
#include "fulgur/detail/config.hpp"

FULGUR_NAMESPACE_BEGIN
namespace arch {
namespace emulate {

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

/// bf16 is the upper half of an fp32: widening is a shift.
inline float bf16_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

/// IEEE binary16 to fp32, exact for every input (NaN payloads kept).
inline float f16_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1fu) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));
  if (exponent != 0) return bits_to_float(sign | ((exponent + (127 - 15)) << 23) | (mantissa << 13));
  const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);  // subnormal: m * 2^-24
  return sign ? -magnitude : magnitude;
}

/// What an mma .tf32 operand register means: its low 13 bits are ignored.
inline float tf32_operand(uint32_t bits) { return bits_to_float(bits & 0xffffe000u); }

/// cvt.rna.tf32.f32: round to the nearest tf32 (10 significand bits), ties away from zero; the
/// result is a .b32 whose low 13 bits are zero. A finite value that rounds past the largest tf32
/// becomes infinity. Infinities and NaNs are not rounded, only cut to their upper 19 bits (the
/// payload is kept, so a NaN whose payload lies only in the low 13 bits becomes infinity): what
/// an H200 returned for every NaN pattern tests/arch tried (e.g. 0x7f800001 -> 0x7f800000,
/// 0x7fffffff -> 0x7fffe000).
inline uint32_t float_to_tf32(float x) {
  const uint32_t u = float_to_bits(x);
  if ((u & 0x7f800000u) == 0x7f800000u) return u & 0xffffe000u;
  // Adding half of the dropped range to the magnitude bits and truncating rounds half away from
  // zero; a carry out of the significand correctly bumps the exponent (up to infinity).
  return (u + 0x1000u) & 0xffffe000u;
}

// ---- mma -------------------------------------------------------------------------------------

/// The operands of one m16n8k16 or m16n8k8 mma as whole matrices (K = 16 or 8).
struct MmaMatrices {
  float a[16][16];  // [M][K]
  float b[16][8];   // [K][N]
  float c[16][8];   // [M][N]
  int k;
};

enum class MmaKind { kBF16, kF16 };

inline float unpack_16bit(uint32_t reg, int half, MmaKind kind) {
  const uint16_t h = static_cast<uint16_t>(reg >> (16 * half));
  return kind == MmaKind::kBF16 ? bf16_to_float(h) : f16_to_float(h);
}

inline void assemble_c(const float (&c)[32][4], MmaMatrices& m) {
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) {
      const FragCoord p = mma_m16n8_c_coord(lane, i);
      m.c[p.row][p.col] = c[lane][i];
    }
}

/// Scatter every lane's m16n8k16 registers into matrices per [mma-16816] (arch/layout.hpp).
inline void assemble_m16n8k16(MmaKind kind, const uint32_t (&a)[32][4], const uint32_t (&b)[32][2],
                              const float (&c)[32][4], MmaMatrices& m) {
  m.k = 16;
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 8; ++i) {  // element i is half i % 2 of register i / 2
      const FragCoord p = mma_m16n8k16_a_coord(lane, i);
      m.a[p.row][p.col] = unpack_16bit(a[lane][i / 2], i % 2, kind);
    }
    for (int i = 0; i < 4; ++i) {
      const FragCoord p = mma_m16n8k16_b_coord(lane, i);
      m.b[p.row][p.col] = unpack_16bit(b[lane][i / 2], i % 2, kind);
    }
  }
  assemble_c(c, m);
}

/// Scatter every lane's m16n8k8 .tf32 registers into matrices per [mma-1688].
inline void assemble_m16n8k8_tf32(const uint32_t (&a)[32][4], const uint32_t (&b)[32][2], const float (&c)[32][4],
                                  MmaMatrices& m) {
  m.k = 8;
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 4; ++i) {
      const FragCoord p = mma_m16n8k8_tf32_a_coord(lane, i);
      m.a[p.row][p.col] = tf32_operand(a[lane][i]);
    }
    for (int i = 0; i < 2; ++i) {
      const FragCoord p = mma_m16n8k8_tf32_b_coord(lane, i);
      m.b[p.row][p.col] = tf32_operand(b[lane][i]);
    }
  }
  assemble_c(c, m);
}

/// One lane's four D registers (accumulator layout of [mma-16816] / [mma-1688]).
inline void mma_lane_outputs(const MmaMatrices& m, int lane, float (&d)[4]) {
  for (int i = 0; i < 4; ++i) {
    const FragCoord p = mma_m16n8_c_coord(lane, i);
    float acc = m.c[p.row][p.col];
    for (int k = 0; k < m.k; ++k) acc = std::fma(m.a[p.row][k], m.b[k][p.col], acc);
    d[i] = acc;
  }
}

/// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 for one lane, from all lanes' registers.
inline void mma_m16n8k16_bf16_lane(int lane, const uint32_t (&a)[32][4], const uint32_t (&b)[32][2],
                                   const float (&c)[32][4], float (&d)[4]) {
  MmaMatrices m;
  assemble_m16n8k16(MmaKind::kBF16, a, b, c, m);
  mma_lane_outputs(m, lane, d);
}
/// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 for one lane.
inline void mma_m16n8k16_f16_lane(int lane, const uint32_t (&a)[32][4], const uint32_t (&b)[32][2],
                                  const float (&c)[32][4], float (&d)[4]) {
  MmaMatrices m;
  assemble_m16n8k16(MmaKind::kF16, a, b, c, m);
  mma_lane_outputs(m, lane, d);
}
/// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 for one lane.
inline void mma_m16n8k8_tf32_lane(int lane, const uint32_t (&a)[32][4], const uint32_t (&b)[32][2],
                                  const float (&c)[32][4], float (&d)[4]) {
  MmaMatrices m;
  assemble_m16n8k8_tf32(a, b, c, m);
  mma_lane_outputs(m, lane, d);
}

/// The whole warp's D registers: d[lane][i].
inline void mma_m16n8k16_bf16_warp(const uint32_t (&a)[32][4], const uint32_t (&b)[32][2], const float (&c)[32][4],
                                   float (&d)[32][4]) {
  MmaMatrices m;
  assemble_m16n8k16(MmaKind::kBF16, a, b, c, m);
  for (int lane = 0; lane < 32; ++lane) mma_lane_outputs(m, lane, d[lane]);
}
inline void mma_m16n8k16_f16_warp(const uint32_t (&a)[32][4], const uint32_t (&b)[32][2], const float (&c)[32][4],
                                  float (&d)[32][4]) {
  MmaMatrices m;
  assemble_m16n8k16(MmaKind::kF16, a, b, c, m);
  for (int lane = 0; lane < 32; ++lane) mma_lane_outputs(m, lane, d[lane]);
}
inline void mma_m16n8k8_tf32_warp(const uint32_t (&a)[32][4], const uint32_t (&b)[32][2], const float (&c)[32][4],
                                  float (&d)[32][4]) {
  MmaMatrices m;
  assemble_m16n8k8_tf32(a, b, c, m);
  for (int lane = 0; lane < 32; ++lane) mma_lane_outputs(m, lane, d[lane]);
}

// ---- ldmatrix --------------------------------------------------------------------------------

/// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16 for one lane. row_addr[t] is the
/// address thread t supplied; only threads 0 .. 8 * num - 1 are read (the others' addresses are
/// ignored, as on sm_80+). Each row is 8 16-bit elements (16 bytes). Writes r[0 .. num-1].
inline void ldmatrix_lane(int lane, int num, bool trans, const void* const (&row_addr)[32], uint32_t* r) {
  for (int j = 0; j < num; ++j) {
    uint32_t v = 0;
    for (int half = 0; half < 2; ++half) {
      const FragCoord p = ldmatrix_coord(lane, half, trans);
      const unsigned char* row = static_cast<const unsigned char*>(row_addr[j * 8 + p.row]);
      uint16_t e;
      std::memcpy(&e, row + 2 * p.col, sizeof e);
      v |= static_cast<uint32_t>(e) << (16 * half);
    }
    r[j] = v;
  }
}
/// The whole warp: r[lane][0 .. num-1].
inline void ldmatrix_warp(int num, bool trans, const void* const (&row_addr)[32], uint32_t (&r)[32][4]) {
  for (int lane = 0; lane < 32; ++lane) ldmatrix_lane(lane, num, trans, row_addr, r[lane]);
}

}  // namespace emulate
}  // namespace arch
FULGUR_NAMESPACE_END
