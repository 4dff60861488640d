// SPDX-License-Identifier: Apache-2.0
// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{.trans}.shared.b16: the warp loads 1, 2 or 4 8x8 matrices
// of 16-bit elements from shared memory into mma fragments (sm_75+; PTX ISA "Warp-level matrix
// load instruction: ldmatrix").
//
// Each lane passes the address of one matrix row (16 bytes, 16-byte aligned, in shared memory):
// threads 0-7 give the rows of matrix 0, 8-15 of matrix 1, 16-23 of matrix 2, 24-31 of matrix 3;
// for x1/x2 the other lanes' addresses are ignored (sm_80+), but they must still call. Register j
// of lane l then holds, low half first, elements (l/4, 2*(l%4)) and (l/4, 2*(l%4)+1) of matrix j;
// with .trans it holds (2*(l%4), l/4) and (2*(l%4)+1, l/4), i.e. the matrix read column-major
// (arch/layout.hpp, ldmatrix_coord). Every lane of the warp must call the same variant.
//
// Ordering: the asm has no memory clobber (as in CUTLASS), so rows written by ordinary stores must
// be published with __syncthreads()/__syncwarp() before the load, which cross-lane reads need
// anyway.
//
// Under FULGUR_EMULATE each lane publishes its row address through fulgur::emu::warp_allgather
// and assembles its registers with the host model (arch/emulate.hpp).
#pragma once

#include <cassert>
#include <cstdint>

#include "fulgur/arch/emulate.hpp"
#include "fulgur/detail/config.hpp"
#include "fulgur/detail/cuda.cuh"

FULGUR_NAMESPACE_BEGIN
namespace arch {

#if defined(__CUDACC__) || defined(FULGUR_EMULATE)

namespace detail {
#if defined(__CUDA_ARCH__)
FULGUR_DEVICE FULGUR_FORCEINLINE uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#elif defined(FULGUR_EMULATE)
template <int kNum, bool kTrans>
inline void emulated_ldmatrix(uint32_t* r, const void* smem_row_ptr) {
  // ldmatrix needs each row 16-byte aligned ("naturally aligned"); misalignment is undefined on
  // hardware, so the emulation stops on it. Lanes whose address is ignored are not checked.
  assert(::fulgur::emu::lane_id() >= 8u * kNum || reinterpret_cast<uintptr_t>(smem_row_ptr) % 16 == 0);
  const void* const* all =
      static_cast<const void* const*>(::fulgur::emu::warp_allgather(&smem_row_ptr, sizeof smem_row_ptr));
  const void* rows[32];
  for (int l = 0; l < 32; ++l) rows[l] = all[l];
  emulate::ldmatrix_lane(static_cast<int>(::fulgur::emu::lane_id()), kNum, kTrans, rows, r);
}
#endif
}  // namespace detail

/// One 8x8 matrix: lanes 0-7 give its rows.
FULGUR_DEVICE FULGUR_FORCEINLINE void ldmatrix_x1(uint32_t (&r)[1], const void* smem_row_ptr) {
#if defined(__CUDA_ARCH__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
               : "=r"(r[0])
               : "r"(detail::smem_u32(smem_row_ptr)));
#elif defined(FULGUR_EMULATE)
  detail::emulated_ldmatrix<1, false>(r, smem_row_ptr);
#endif
}

/// One 8x8 matrix, transposed.
FULGUR_DEVICE FULGUR_FORCEINLINE void ldmatrix_x1_trans(uint32_t (&r)[1], const void* smem_row_ptr) {
#if defined(__CUDA_ARCH__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
               : "=r"(r[0])
               : "r"(detail::smem_u32(smem_row_ptr)));
#elif defined(FULGUR_EMULATE)
  detail::emulated_ldmatrix<1, true>(r, smem_row_ptr);
#endif
}

/// Two 8x8 matrices: lanes 0-7 and 8-15 give their rows.
FULGUR_DEVICE FULGUR_FORCEINLINE void ldmatrix_x2(uint32_t (&r)[2], const void* smem_row_ptr) {
#if defined(__CUDA_ARCH__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(detail::smem_u32(smem_row_ptr)));
#elif defined(FULGUR_EMULATE)
  detail::emulated_ldmatrix<2, false>(r, smem_row_ptr);
#endif
}

/// Two 8x8 matrices, transposed.
FULGUR_DEVICE FULGUR_FORCEINLINE void ldmatrix_x2_trans(uint32_t (&r)[2], const void* smem_row_ptr) {
#if defined(__CUDA_ARCH__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(detail::smem_u32(smem_row_ptr)));
#elif defined(FULGUR_EMULATE)
  detail::emulated_ldmatrix<2, true>(r, smem_row_ptr);
#endif
}

/// Four 8x8 matrices: lanes 8j..8j+7 give the rows of matrix j.
FULGUR_DEVICE FULGUR_FORCEINLINE void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row_ptr) {
#if defined(__CUDA_ARCH__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(detail::smem_u32(smem_row_ptr)));
#elif defined(FULGUR_EMULATE)
  detail::emulated_ldmatrix<4, false>(r, smem_row_ptr);
#endif
}

/// Four 8x8 matrices, transposed.
FULGUR_DEVICE FULGUR_FORCEINLINE void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row_ptr) {
#if defined(__CUDA_ARCH__)
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(detail::smem_u32(smem_row_ptr)));
#elif defined(FULGUR_EMULATE)
  detail::emulated_ldmatrix<4, true>(r, smem_row_ptr);
#endif
}

#endif  // __CUDACC__ || FULGUR_EMULATE

}  // namespace arch
FULGUR_NAMESPACE_END
