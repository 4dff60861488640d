// SPDX-License-Identifier: Apache-2.0
// Which matrix element each lane holds in each register of the warp-level instructions the arch
// layer wraps (mma.sync, ldmatrix). Written from the PTX ISA's fragment tables; the emulated
// instructions (arch/emulate.hpp) are built on these, and kernels use them to place accumulator
// fragments (epilogues) without re-deriving the tables.
//
// Sources (PTX ISA 8.7 numbering; the sections move between releases, the anchors do not):
//   [mma-16816] §9.7.14.5.8 "Matrix Fragments for mma.m16n8k16 with floating point type"
//               (#warp-level-matrix-fragment-mma-16816-float), .f16/.bf16 multiplicands.
//   [mma-1688]  §9.7.14.5.7 "Matrix Fragments for mma.m16n8k8" (#warp-level-matrix-fragment-mma-1688),
//               .tf32 multiplicands; its accumulator table is the same as [mma-16816]'s.
//   [ldmatrix]  §9.7.14.5.15 "Warp-level matrix load instruction: ldmatrix"
//               (#warp-level-matrix-instructions-ldmatrix), .m8n8 .b16 and Figure 104.
// In all tables groupID = laneid >> 2 and threadID_in_group = laneid % 4. "Element i" is the
// table's a_i / b_i / c_i; 16-bit elements are packed two to a 32-bit register, the lower-numbered
// element in the low half ("Elements (low to high)"), so element i lives in register i / 2.
#pragma once

#include "fulgur/detail/config.hpp"

FULGUR_NAMESPACE_BEGIN
namespace arch {

/// A (row, column) position inside one instruction-level matrix.
struct FragCoord {
  int row;
  int col;
};

// ---- mma.m16n8k16, .f16 / .bf16 ([mma-16816]) ----------------------------------------------
/// A is 16x16 (row = M, col = K), 8 elements per lane in 4 registers (.f16x2).
FULGUR_HOST_DEVICE constexpr FragCoord mma_m16n8k16_a_coord(int lane, int i) {
  // row = groupID for a_i with 0 <= i < 2 || 4 <= i < 6, groupID + 8 otherwise;
  // col = threadID_in_group * 2 + (i & 1), plus 8 for i >= 4.
  return FragCoord{(i < 2 || (i >= 4 && i < 6)) ? (lane >> 2) : (lane >> 2) + 8,
                   (lane % 4) * 2 + (i & 1) + (i >= 4 ? 8 : 0)};
}
/// B is 16x8 (row = K, col = N), 4 elements per lane in 2 registers.
FULGUR_HOST_DEVICE constexpr FragCoord mma_m16n8k16_b_coord(int lane, int i) {
  // row = threadID_in_group * 2 + (i & 1), plus 8 for i >= 2; col = groupID.
  return FragCoord{(lane % 4) * 2 + (i & 1) + (i >= 2 ? 8 : 0), lane >> 2};
}
/// C and D are 16x8 fp32, 4 elements per lane (one per register). Same table for mma.m16n8k8.
FULGUR_HOST_DEVICE constexpr FragCoord mma_m16n8_c_coord(int lane, int i) {
  // row = groupID for c_i with i < 2, groupID + 8 otherwise; col = threadID_in_group * 2 + (i & 1).
  return FragCoord{i < 2 ? (lane >> 2) : (lane >> 2) + 8, (lane % 4) * 2 + (i & 1)};
}

// ---- mma.m16n8k8, .tf32 ([mma-1688]) -------------------------------------------------------
/// A is 16x8 (row = M, col = K), 4 elements per lane, one .tf32 per .b32 register.
FULGUR_HOST_DEVICE constexpr FragCoord mma_m16n8k8_tf32_a_coord(int lane, int i) {
  // row = groupID for a0 and a2, groupID + 8 for a1 and a3;
  // col = threadID_in_group for a0 and a1, threadID_in_group + 4 for a2 and a3.
  return FragCoord{(i == 0 || i == 2) ? (lane >> 2) : (lane >> 2) + 8, i < 2 ? (lane % 4) : (lane % 4) + 4};
}
/// B is 8x8 (row = K, col = N), 2 elements per lane.
FULGUR_HOST_DEVICE constexpr FragCoord mma_m16n8k8_tf32_b_coord(int lane, int i) {
  // row = threadID_in_group for b0, threadID_in_group + 4 for b1; col = groupID.
  return FragCoord{i == 0 ? (lane % 4) : (lane % 4) + 4, lane >> 2};
}

// ---- ldmatrix.m8n8.b16 ([ldmatrix]) -------------------------------------------------------
/// Element `half` (0 = low 16 bits) of destination register j of `lane` is element (row, col) of
/// matrix j, where row r of matrix j starts at the address supplied by thread j * 8 + r.
/// Without .trans a group of four lanes holds one row (Figure 104); .trans loads the matrix
/// column-major, so the lane receives the transposed element.
FULGUR_HOST_DEVICE constexpr FragCoord ldmatrix_coord(int lane, int half, bool trans) {
  return trans ? FragCoord{(lane % 4) * 2 + half, lane >> 2} : FragCoord{lane >> 2, (lane % 4) * 2 + half};
}

}  // namespace arch
FULGUR_NAMESPACE_END
