// SPDX-License-Identifier: Apache-2.0
// Kernels that exercise the arch layer: small tiled GEMMs built on cp.async + ldmatrix(.trans) +
// mma (bf16, f16, tf32), and one-instruction kernels that expose every lane's registers so tests
// can check fragment layouts against the PTX ISA. Included by test_arch_emu.cpp (compiled under
// emulation and by nvcc) and by sass_kernels.cu (the SASS/resource check).
#pragma once

#include <cstdint>

#include "fulgur/arch/arch.cuh"
#include "fulgur/detail/cuda.cuh"

namespace arch_test {

// ---- GEMM: C[M,N] (fp32) = A[M,K] * B[K,N], all row-major, leading dimensions K, N, N. -------
// Block tile 32x32, 4 warps in a 2x2 grid each owning a 16x16 sub-tile (two m16n8 accumulators),
// two cp.async stages. Rows past M and columns past N or K are zero-filled in shared memory and
// not stored; K and N must be multiples of one 16-byte chunk (8 16-bit or 4 fp32 elements).
constexpr int kGemmThreads = 128;
constexpr int kBM = 32;
constexpr int kBN = 32;

template <typename T>
struct Mma16x8x16;
template <>
struct Mma16x8x16<__nv_bfloat16> {
  static FULGUR_DEVICE FULGUR_FORCEINLINE void run(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    fulgur::arch::mma_m16n8k16_bf16(acc, a, b, acc);
  }
};
template <>
struct Mma16x8x16<__half> {
  static FULGUR_DEVICE FULGUR_FORCEINLINE void run(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    fulgur::arch::mma_m16n8k16_f16(acc, a, b, acc);
  }
};

// Padding rows by 16 bytes makes the 8 row addresses of an ldmatrix fall in distinct banks.
template <typename T>
struct alignas(16) GemmSmem16 {
  static constexpr int kBK = 32;
  T a[2][kBM][kBK + 8];
  T b[2][kBK][kBN + 8];
};

template <typename T>
FULGUR_KERNEL void __launch_bounds__(kGemmThreads)
    gemm16_kernel(const T* __restrict__ A, const T* __restrict__ B, float* __restrict__ C, int M, int N, int K) {
  constexpr int kBK = GemmSmem16<T>::kBK;
  __shared__ GemmSmem16<T> s;
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int m0 = static_cast<int>(blockIdx.y) * kBM;
  const int n0 = static_cast<int>(blockIdx.x) * kBN;
  const int wm = (warp / 2) * 16;
  const int wn = (warp % 2) * 16;

  // Each thread copies one 16-byte chunk of the A tile (32 rows x 4 chunks) and one of the B tile
  // (32 rows x 4 chunks); chunks outside the matrix are zero-filled.
  auto load_tile = [&](int kt, int stage) {
    const int k0 = kt * kBK;
    const int r = tid / 4;
    const int c = (tid % 4) * 8;
    const bool a_ok = m0 + r < M && k0 + c < K;
    fulgur::arch::cp_async_16_zfill(&s.a[stage][r][c], a_ok ? A + static_cast<size_t>(m0 + r) * K + k0 + c : A,
                                    a_ok ? 16u : 0u);
    const bool b_ok = k0 + r < K && n0 + c < N;
    fulgur::arch::cp_async_16_zfill(&s.b[stage][r][c], b_ok ? B + static_cast<size_t>(k0 + r) * N + n0 + c : B,
                                    b_ok ? 16u : 0u);
  };

  float acc[2][4] = {};
  const int ktiles = (K + kBK - 1) / kBK;
  load_tile(0, 0);
  fulgur::arch::cp_async_commit();
  for (int kt = 0; kt < ktiles; ++kt) {
    const int st = kt % 2;
    if (kt + 1 < ktiles) load_tile(kt + 1, (kt + 1) % 2);
    fulgur::arch::cp_async_commit();  // possibly empty: keeps "all but the newest group" uniform
    fulgur::arch::cp_async_wait<1>();  // tile kt has landed (for this thread) ...
    __syncthreads();                   // ... and for every thread
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      // Lanes 8j..8j+7 address matrix j: A's four 8x8 blocks in a0..a3 order (rows +8 for odd j,
      // k +8 for j >= 2); B's blocks (k +8 for odd j, n +8 for j >= 2) read transposed, giving
      // b0,b1 of the first n8 tile then of the second.
      const int j = lane / 8;
      const int r = lane % 8;
      uint32_t a[4];
      uint32_t b[4];
      fulgur::arch::ldmatrix_x4(a, &s.a[st][wm + r + 8 * (j & 1)][kk + 8 * (j >> 1)]);
      fulgur::arch::ldmatrix_x4_trans(b, &s.b[st][kk + r + 8 * (j & 1)][wn + 8 * (j >> 1)]);
      const uint32_t b0[2] = {b[0], b[1]};
      const uint32_t b1[2] = {b[2], b[3]};
      Mma16x8x16<T>::run(acc[0], a, b0);
      Mma16x8x16<T>::run(acc[1], a, b1);
    }
    __syncthreads();  // everyone is done with stage st before it is refilled
  }

#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const fulgur::arch::FragCoord p = fulgur::arch::mma_m16n8_c_coord(lane, i);
      const int row = m0 + wm + p.row;
      const int col = n0 + wn + 8 * nt + p.col;
      if (row < M && col < N) C[static_cast<size_t>(row) * N + col] = acc[nt][i];
    }
}

struct alignas(16) GemmSmemTf32 {
  static constexpr int kBK = 16;
  float a[2][kBM][kBK + 4];  // 80-byte rows: ldmatrix row addresses stay 16-byte aligned
  float b[2][kBK][kBN + 8];  // 40-float rows: the (k = t, n = g) fragment loads hit 32 banks
};

/// fp32 inputs, rounded to tf32 (cvt.rna) as fragments are formed; m16n8k8 tf32 mma.
FULGUR_KERNEL void __launch_bounds__(kGemmThreads)
    gemm_tf32_kernel(const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, int M, int N,
                     int K) {
  constexpr int kBK = GemmSmemTf32::kBK;
  __shared__ GemmSmemTf32 s;
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % 32;
  const int warp = tid / 32;
  const int m0 = static_cast<int>(blockIdx.y) * kBM;
  const int n0 = static_cast<int>(blockIdx.x) * kBN;
  const int wm = (warp / 2) * 16;
  const int wn = (warp % 2) * 16;

  // A tile: 32 rows x 4 chunks of 4 floats; B tile: 16 rows x 8 chunks.
  auto load_tile = [&](int kt, int stage) {
    const int k0 = kt * kBK;
    const int ar = tid / 4;
    const int ac = (tid % 4) * 4;
    const bool a_ok = m0 + ar < M && k0 + ac < K;
    fulgur::arch::cp_async_16_zfill(&s.a[stage][ar][ac], a_ok ? A + static_cast<size_t>(m0 + ar) * K + k0 + ac : A,
                                    a_ok ? 16u : 0u);
    const int br = tid / 8;
    const int bc = (tid % 8) * 4;
    const bool b_ok = k0 + br < K && n0 + bc < N;
    fulgur::arch::cp_async_16_zfill(&s.b[stage][br][bc], b_ok ? B + static_cast<size_t>(k0 + br) * N + n0 + bc : B,
                                    b_ok ? 16u : 0u);
  };

  float acc[2][4] = {};
  const int ktiles = (K + kBK - 1) / kBK;
  const int g = lane >> 2;
  const int t = lane % 4;
  load_tile(0, 0);
  fulgur::arch::cp_async_commit();
  for (int kt = 0; kt < ktiles; ++kt) {
    const int st = kt % 2;
    if (kt + 1 < ktiles) load_tile(kt + 1, (kt + 1) % 2);
    fulgur::arch::cp_async_commit();
    fulgur::arch::cp_async_wait<1>();
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 8) {
      // An 8x8 b16 matrix is an 8x4 fp32 matrix and lane l receives fp32 element (l/4, l%4), so
      // plain ldmatrix yields the tf32 A fragment: block j covers rows +8 (odd j), k +4 (j >= 2).
      const int j = lane / 8;
      const int r = lane % 8;
      uint32_t a[4];
      fulgur::arch::ldmatrix_x4(a, &s.a[st][wm + r + 8 * (j & 1)][kk + 4 * (j >> 1)]);
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = fulgur::arch::float_to_tf32(__uint_as_float(a[i]));
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const uint32_t b[2] = {fulgur::arch::float_to_tf32(s.b[st][kk + t][wn + 8 * nt + g]),
                               fulgur::arch::float_to_tf32(s.b[st][kk + t + 4][wn + 8 * nt + g])};
        fulgur::arch::mma_m16n8k8_tf32(acc[nt], a, b, acc[nt]);
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const fulgur::arch::FragCoord p = fulgur::arch::mma_m16n8_c_coord(lane, i);
      const int row = m0 + wm + p.row;
      const int col = n0 + wn + 8 * nt + p.col;
      if (row < M && col < N) C[static_cast<size_t>(row) * N + col] = acc[nt][i];
    }
}

// ---- One instruction per warp, every lane's registers in and out. ---------------------------
enum MmaOp : int { kMmaBF16 = 0, kMmaF16 = 1, kMmaTF32 = 2 };

/// One warp (32 threads): a[lane][4], b[lane][2], c[lane][4] -> d[lane][4].
template <int kOp>
FULGUR_KERNEL void mma_once_kernel(const uint32_t* a, const uint32_t* b, const float* c, float* d) {
  const int lane = static_cast<int>(threadIdx.x);
  uint32_t ra[4];
  uint32_t rb[2];
  float rc[4];
  float rd[4];
  for (int i = 0; i < 4; ++i) ra[i] = a[lane * 4 + i];
  for (int i = 0; i < 2; ++i) rb[i] = b[lane * 2 + i];
  for (int i = 0; i < 4; ++i) rc[i] = c[lane * 4 + i];
  if constexpr (kOp == kMmaBF16) {
    fulgur::arch::mma_m16n8k16_bf16(rd, ra, rb, rc);
  } else if constexpr (kOp == kMmaF16) {
    fulgur::arch::mma_m16n8k16_f16(rd, ra, rb, rc);
  } else {
    fulgur::arch::mma_m16n8k8_tf32(rd, ra, rb, rc);
  }
  for (int i = 0; i < 4; ++i) d[lane * 4 + i] = rd[i];
}

constexpr int kLdmRows = 48;  // 16-byte rows in the ldmatrix test's shared buffer
struct alignas(16) LdmatrixSmem {
  uint16_t e[kLdmRows][8];
};

/// One warp: src[kLdmRows][8] is staged in shared memory; lane l points at row row_of_lane[l].
/// out[v][lane][4] for the variants v = x1, x1.trans, x2, x2.trans, x4, x4.trans (registers a
/// variant does not write are left as they were).
FULGUR_KERNEL void ldmatrix_once_kernel(const uint16_t* src, const int* row_of_lane, uint32_t* out) {
  __shared__ LdmatrixSmem s;
  const int lane = static_cast<int>(threadIdx.x);
  for (int i = lane; i < kLdmRows * 8; i += 32) s.e[i / 8][i % 8] = src[i];
  __syncthreads();
  const void* p = &s.e[row_of_lane[lane]][0];
  uint32_t r1[1];
  uint32_t r2[2];
  uint32_t r4[4];
  fulgur::arch::ldmatrix_x1(r1, p);
  out[(0 * 32 + lane) * 4] = r1[0];
  fulgur::arch::ldmatrix_x1_trans(r1, p);
  out[(1 * 32 + lane) * 4] = r1[0];
  fulgur::arch::ldmatrix_x2(r2, p);
  for (int i = 0; i < 2; ++i) out[(2 * 32 + lane) * 4 + i] = r2[i];
  fulgur::arch::ldmatrix_x2_trans(r2, p);
  for (int i = 0; i < 2; ++i) out[(3 * 32 + lane) * 4 + i] = r2[i];
  fulgur::arch::ldmatrix_x4(r4, p);
  for (int i = 0; i < 4; ++i) out[(4 * 32 + lane) * 4 + i] = r4[i];
  fulgur::arch::ldmatrix_x4_trans(r4, p);
  for (int i = 0; i < 4; ++i) out[(5 * 32 + lane) * 4 + i] = r4[i];
}

/// out[i] = cvt.rna.tf32.f32(in[i]).
FULGUR_KERNEL void cvt_tf32_kernel(const float* in, uint32_t* out, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) out[i] = fulgur::arch::float_to_tf32(in[i]);
}

struct alignas(16) CpAsyncSmem {
  unsigned char slot[3][32][16];
};

/// One warp. Lane l copies src[q][l] (16 bytes) into shared slot q as three commit groups (q = 1
/// with zero fill past zfill_bytes[l]), then reads each slot back after the wait that guarantees
/// it: out[0..2][l] = slots after wait_group 2, wait_group 1, wait_all. out[3], out[4] = slots 1
/// and 2 read right after wait_group 2, under emulation only (the emulation performs copies only
/// at the wait, so it must show the poison there; on hardware the read would race the copy).
FULGUR_KERNEL void cp_async_groups_kernel(const unsigned char* src, const uint32_t* zfill_bytes, unsigned char* out) {
  __shared__ CpAsyncSmem s;
  const int lane = static_cast<int>(threadIdx.x);
  for (int q = 0; q < 3; ++q)
    for (int i = 0; i < 16; ++i) s.slot[q][lane][i] = 0xEE;
  __syncthreads();  // the copies carry no memory clobber: keep the poison stores before them
  fulgur::arch::cp_async_16(s.slot[0][lane], src + (0 * 32 + lane) * 16);
  fulgur::arch::cp_async_commit();
  fulgur::arch::cp_async_16_zfill(s.slot[1][lane], src + (1 * 32 + lane) * 16, zfill_bytes[lane]);
  fulgur::arch::cp_async_commit();
  fulgur::arch::cp_async_16(s.slot[2][lane], src + (2 * 32 + lane) * 16);
  fulgur::arch::cp_async_commit();
  auto save = [&](int which, int q) {
    for (int i = 0; i < 16; ++i) out[(which * 32 + lane) * 16 + i] = s.slot[q][lane][i];
  };
  fulgur::arch::cp_async_wait<2>();
  save(0, 0);
#if FULGUR_EMULATING
  // Reading slots whose copies may be in flight is a race on hardware (compute-sanitizer's
  // racecheck reports it); only the emulation, which defines the outcome, does it.
  save(3, 1);
  save(4, 2);
#endif
  fulgur::arch::cp_async_wait<1>();
  save(1, 1);
  fulgur::arch::cp_async_wait_all();
  save(2, 2);
}

}  // namespace arch_test
