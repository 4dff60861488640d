// SPDX-License-Identifier: Apache-2.0
// The arch layer (mma, ldmatrix, cp.async, cvt.rna.tf32) run through real kernels. The same source
// is built twice: under fulgur's CPU emulation (test_arch_emu: the emulated paths) and by nvcc
// (test_arch_emu_gpu: the inline PTX on a GPU, skipped without one).
//
// How hardware and emulation are compared. One binary cannot hold both, so each instruction's
// emulated path is a thin shell (gather the warp's registers) around a pure host model
// (fulgur::arch::emulate, arch/emulate.hpp). Every test here checks the kernel's output against
// expectations this file derives on its own from the PTX ISA tables; the "model" checks also
// compare every lane's registers, bit for bit, with the host model computed in the same process.
// On a GPU that is hardware vs emulation for identical registers; under emulation it checks the
// gather plumbing. Bit-for-bit checks use data on which every summation order is exact (integers
// with sums below 2^24), since tensor cores sum in another order than the model.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "arch_test_kernels.cuh"
#include "fulgur/detail/dtype.hpp"
#include "fulgur/detail/launch.cuh"
#include "fulgur/memory.hpp"
#include "fulgur_test.hpp"

using fulgur::DeviceBuffer;
using fulgur::detail::launch;
namespace emulate = fulgur::arch::emulate;

namespace {

uint32_t f2u(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
float u2f(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
template <typename T>
uint16_t bits16(T x) {
  static_assert(sizeof(T) == 2, "16-bit type");
  uint16_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

void sync_ok(cudaError_t launch_status) {
  REQUIRE(launch_status == cudaSuccess);
  REQUIRE(fulgur::device_synchronize() == cudaSuccess);
}

// ---- The PTX ISA fragment tables, restated here independently of arch/layout.hpp. -------------
// g = lane / 4, t = lane % 4; h = half of a 32-bit register (0 = low 16 bits).
// m16n8k16 .bf16/.f16: A register r holds A[g + 8(r%2)][2t + h + 8(r/2)];
//                      B register r holds B[2t + h + 8r][g];
// accumulators:        C/D element i is C[g + 8(i/2)][2t + i%2]   (also for m16n8k8);
// m16n8k8 .tf32:       A register r holds A[g + 8(r%2)][t + 4(r/2)]; B register r holds B[t + 4r][g].
struct Tile {
  double a[16][16] = {};  // [M][K], K = 16 or 8
  double b[16][8] = {};   // [K][N]
  double c[16][8] = {};   // [M][N]
};

struct WarpRegs {
  uint32_t a[32][4];
  uint32_t b[32][2];
  float c[32][4];
  float d[32][4];
};

uint16_t to_bits16(double v, bool bf16) {
  return bf16 ? bits16(fulgur::from_double<__nv_bfloat16>(v)) : bits16(fulgur::from_double<__half>(v));
}

void pack_c(const Tile& m, WarpRegs& w) {
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 4; ++i) w.c[l][i] = static_cast<float>(m.c[l / 4 + 8 * (i / 2)][2 * (l % 4) + i % 2]);
}

void pack_m16n8k16(const Tile& m, bool bf16, WarpRegs& w) {
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int r = 0; r < 4; ++r) {
      const int row = g + 8 * (r % 2), col = 2 * t + 8 * (r / 2);
      w.a[l][r] = to_bits16(m.a[row][col], bf16) | static_cast<uint32_t>(to_bits16(m.a[row][col + 1], bf16)) << 16;
    }
    for (int r = 0; r < 2; ++r) {
      const int k = 2 * t + 8 * r;
      w.b[l][r] = to_bits16(m.b[k][g], bf16) | static_cast<uint32_t>(to_bits16(m.b[k + 1][g], bf16)) << 16;
    }
  }
  pack_c(m, w);
}

// tf32 operands are given as fp32 bit patterns (the tests control the low 13 bits).
struct Tf32Bits {
  uint32_t a[16][8];
  uint32_t b[8][8];
};
void pack_m16n8k8_tf32(const Tf32Bits& x, const Tile& m, WarpRegs& w) {
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int r = 0; r < 4; ++r) w.a[l][r] = x.a[g + 8 * (r % 2)][t + 4 * (r / 2)];
    for (int r = 0; r < 2; ++r) w.b[l][r] = x.b[t + 4 * r][g];
  }
  pack_c(m, w);
}

/// D = C + A B in double; exact for the integer-valued tiles used with it.
void expected_d(const Tile& m, int k, double (&d)[16][8]) {
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 8; ++n) {
      double s = m.c[r][n];
      for (int q = 0; q < k; ++q) s += m.a[r][q] * m.b[q][n];
      d[r][n] = s;
    }
}

/// Every lane's D registers must equal the expected matrix, placed by the accumulator table, as
/// fp32 bit patterns.
void check_d_exact(const WarpRegs& w, const double (&d)[16][8], const std::string& what) {
  int bad = 0;
  std::ostringstream first;
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 4; ++i) {
      const int row = l / 4 + 8 * (i / 2), col = 2 * (l % 4) + i % 2;
      const float want = static_cast<float>(d[row][col]);
      if (f2u(w.d[l][i]) != f2u(want)) {
        if (bad++ == 0)
          first << what << ": lane " << l << " d" << i << " (D[" << row << "][" << col << "]) = " << w.d[l][i]
                << ", expected " << want;
      }
    }
  INFO(first.str());
  CHECK(bad == 0);
}

/// The same registers through the host model must give identical bits.
void check_d_model(const WarpRegs& w, int op, const std::string& what) {
  float model[32][4];
  if (op == arch_test::kMmaBF16) emulate::mma_m16n8k16_bf16_warp(w.a, w.b, w.c, model);
  if (op == arch_test::kMmaF16) emulate::mma_m16n8k16_f16_warp(w.a, w.b, w.c, model);
  if (op == arch_test::kMmaTF32) emulate::mma_m16n8k8_tf32_warp(w.a, w.b, w.c, model);
  int bad = 0;
  std::ostringstream first;
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 4; ++i)
      if (f2u(w.d[l][i]) != f2u(model[l][i]) && bad++ == 0)
        first << what << ": lane " << l << " d" << i << " = " << w.d[l][i] << ", host model " << model[l][i];
  INFO(first.str());
  CHECK(bad == 0);
}

void run_mma_once(int op, WarpRegs& w) {
  DeviceBuffer<uint32_t> da(32 * 4), db(32 * 2);
  DeviceBuffer<float> dc(32 * 4), dd(32 * 4);
  REQUIRE(da.copy_from_host(&w.a[0][0], 32 * 4) == cudaSuccess);
  REQUIRE(db.copy_from_host(&w.b[0][0], 32 * 2) == cudaSuccess);
  REQUIRE(dc.copy_from_host(&w.c[0][0], 32 * 4) == cudaSuccess);
  REQUIRE(dd.fill_bytes(0xFF) == cudaSuccess);  // NaN poison: unwritten registers show
  const dim3 grid(1), block(32);
  if (op == arch_test::kMmaBF16)
    sync_ok(launch(arch_test::mma_once_kernel<arch_test::kMmaBF16>, grid, block, 0, nullptr, da.data(), db.data(),
                   dc.data(), dd.data()));
  if (op == arch_test::kMmaF16)
    sync_ok(launch(arch_test::mma_once_kernel<arch_test::kMmaF16>, grid, block, 0, nullptr, da.data(), db.data(),
                   dc.data(), dd.data()));
  if (op == arch_test::kMmaTF32)
    sync_ok(launch(arch_test::mma_once_kernel<arch_test::kMmaTF32>, grid, block, 0, nullptr, da.data(), db.data(),
                   dc.data(), dd.data()));
  REQUIRE(dd.copy_to_host(&w.d[0][0], 32 * 4) == cudaSuccess);
}

// C values are multiples of 512, A and B values at most 256, so D = C + (one selected product)
// shows both which A/B element was selected and which C element was added.
void identifying_c(Tile& m) {
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 8; ++n) m.c[r][n] = 512.0 * (8 * r + n + 1);
}

}  // namespace

TEST_CASE("arch layout: each fragment table covers its matrix exactly once", "[arch]") {
  using namespace fulgur::arch;
  auto covers = [](int rows, int cols, int per_lane, auto coord) {
    std::vector<int> hits(static_cast<size_t>(rows * cols), 0);
    for (int l = 0; l < 32; ++l)
      for (int i = 0; i < per_lane; ++i) {
        const FragCoord p = coord(l, i);
        if (p.row < 0 || p.row >= rows || p.col < 0 || p.col >= cols) return false;
        ++hits[static_cast<size_t>(p.row * cols + p.col)];
      }
    for (int h : hits)
      if (h != 1) return false;
    return true;
  };
  CHECK(covers(16, 16, 8, mma_m16n8k16_a_coord));
  CHECK(covers(16, 8, 4, mma_m16n8k16_b_coord));
  CHECK(covers(16, 8, 4, mma_m16n8_c_coord));
  CHECK(covers(16, 8, 4, mma_m16n8k8_tf32_a_coord));
  CHECK(covers(8, 8, 2, mma_m16n8k8_tf32_b_coord));
  CHECK(covers(8, 8, 2, [](int l, int h) { return ldmatrix_coord(l, h, false); }));
  CHECK(covers(8, 8, 2, [](int l, int h) { return ldmatrix_coord(l, h, true); }));
}

TEST_CASE("mma m16n8k16 bf16/f16: fragments follow the PTX ISA tables; exact and equal to the host model on "
          "integer data",
          "[arch][mma]") {
  fulgur_test::Rng rng("arch mma m16n8k16 layout");
  FULGUR_INFO_SEED(rng);
  for (const bool bf16 : {true, false}) {
    const int op = bf16 ? arch_test::kMmaBF16 : arch_test::kMmaF16;
    const std::string type = bf16 ? "bf16" : "f16";
    // (1) B one-hot: D[r][n] = C[r][n] + A[r][n + 8s] exposes where every A element sits.
    for (int s = 0; s < 2; ++s) {
      Tile m;
      for (int r = 0; r < 16; ++r)
        for (int k = 0; k < 16; ++k) m.a[r][k] = 16 * r + k + 1;  // 1..256: exact in bf16 and f16
      for (int k = 0; k < 16; ++k)
        for (int n = 0; n < 8; ++n) m.b[k][n] = (k == n + 8 * s) ? 1.0 : 0.0;
      identifying_c(m);
      WarpRegs w;
      pack_m16n8k16(m, bf16, w);
      run_mma_once(op, w);
      double d[16][8];
      expected_d(m, 16, d);
      check_d_exact(w, d, type + " A-select s=" + std::to_string(s));
      check_d_model(w, op, type + " A-select s=" + std::to_string(s));
    }
    // (2) A one-hot: D[r][n] = C[r][n] + B[(r + s) % 16][n] exposes where every B element sits.
    for (int s : {0, 5}) {
      Tile m;
      for (int r = 0; r < 16; ++r)
        for (int k = 0; k < 16; ++k) m.a[r][k] = (k == (r + s) % 16) ? 1.0 : 0.0;
      for (int k = 0; k < 16; ++k)
        for (int n = 0; n < 8; ++n) m.b[k][n] = 8 * k + n + 1;
      identifying_c(m);
      WarpRegs w;
      pack_m16n8k16(m, bf16, w);
      run_mma_once(op, w);
      double d[16][8];
      expected_d(m, 16, d);
      check_d_exact(w, d, type + " B-select s=" + std::to_string(s));
      check_d_model(w, op, type + " B-select s=" + std::to_string(s));
    }
    // (3) Random integers: |A|, |B| <= 8, |C| <= 256, so |D| <= 256 + 16 * 64 and every partial
    // sum is an integer far below 2^24: exact in any summation order.
    for (int rep = 0; rep < 3; ++rep) {
      Tile m;
      for (auto& row : m.a)
        for (double& v : row) v = static_cast<double>(rng.uniform_int(-8, 8));
      for (auto& row : m.b)
        for (double& v : row) v = static_cast<double>(rng.uniform_int(-8, 8));
      for (auto& row : m.c)
        for (double& v : row) v = static_cast<double>(rng.uniform_int(-256, 256));
      WarpRegs w;
      pack_m16n8k16(m, bf16, w);
      run_mma_once(op, w);
      double d[16][8];
      expected_d(m, 16, d);
      check_d_exact(w, d, type + " random integers");
      check_d_model(w, op, type + " random integers");
    }
  }
}

TEST_CASE("mma m16n8k16: on real-valued data the result and the host model differ only by fp32 accumulation "
          "rounding",
          "[arch][mma]") {
  fulgur_test::Rng rng("arch mma m16n8k16 real data");
  FULGUR_INFO_SEED(rng);
  for (const bool bf16 : {true, false}) {
    const int op = bf16 ? arch_test::kMmaBF16 : arch_test::kMmaF16;
    Tile m;
    // Values rounded to the input type, so the products are exactly the ones the hardware forms.
    for (auto& row : m.a)
      for (double& v : row) v = bf16 ? fulgur::to_double(fulgur::from_double<__nv_bfloat16>(rng.normal()))
                                     : fulgur::to_double(fulgur::from_double<__half>(rng.normal()));
    for (auto& row : m.b)
      for (double& v : row) v = bf16 ? fulgur::to_double(fulgur::from_double<__nv_bfloat16>(rng.normal()))
                                     : fulgur::to_double(fulgur::from_double<__half>(rng.normal()));
    for (auto& row : m.c)
      for (double& v : row) v = static_cast<float>(rng.normal());
    WarpRegs w;
    pack_m16n8k16(m, bf16, w);
    run_mma_once(op, w);
    float model[32][4];
    if (bf16) emulate::mma_m16n8k16_bf16_warp(w.a, w.b, w.c, model);
    if (!bf16) emulate::mma_m16n8k16_f16_warp(w.a, w.b, w.c, model);
    // Bound: both sides add 16 exact products to C in fp32, each of the 16 additions off by at most
    // one ulp of the running magnitude (2^-23 relative, truncation included), so each is within
    // 17 * 2^-23 * (|C| + sum |a b|) of the exact value, and of each other within twice that.
    int bad = 0;
    for (int l = 0; l < 32; ++l)
      for (int i = 0; i < 4; ++i) {
        const int row = l / 4 + 8 * (i / 2), col = 2 * (l % 4) + i % 2;
        double mag = std::fabs(m.c[row][col]);
        for (int k = 0; k < 16; ++k) mag += std::fabs(m.a[row][k] * m.b[k][col]);
        const double bound = 2 * 17 * std::ldexp(1.0, -23) * mag;
        if (!(std::fabs(static_cast<double>(w.d[l][i]) - model[l][i]) <= bound)) ++bad;
      }
    CHECK(bad == 0);
  }
}

TEST_CASE("mma m16n8k8 tf32: fragments follow the PTX ISA tables, operands are truncated to tf32", "[arch][mma]") {
  fulgur_test::Rng rng("arch mma m16n8k8 tf32 layout");
  FULGUR_INFO_SEED(rng);
  auto exact_bits = [](const Tile& m) {
    Tf32Bits x;
    for (int r = 0; r < 16; ++r)
      for (int k = 0; k < 8; ++k) x.a[r][k] = f2u(static_cast<float>(m.a[r][k]));
    for (int k = 0; k < 8; ++k)
      for (int n = 0; n < 8; ++n) x.b[k][n] = f2u(static_cast<float>(m.b[k][n]));
    return x;
  };
  auto run_and_check = [&](const Tile& m, const Tf32Bits& x, const std::string& what) {
    WarpRegs w;
    pack_m16n8k8_tf32(x, m, w);
    run_mma_once(arch_test::kMmaTF32, w);
    double d[16][8];
    expected_d(m, 8, d);
    check_d_exact(w, d, what);
    check_d_model(w, arch_test::kMmaTF32, what);
  };
  for (int s : {0, 3}) {  // B one-hot: D[r][n] = C[r][n] + A[r][(n + s) % 8]
    Tile m;
    for (int r = 0; r < 16; ++r)
      for (int k = 0; k < 8; ++k) m.a[r][k] = 8 * r + k + 1;
    for (int k = 0; k < 8; ++k)
      for (int n = 0; n < 8; ++n) m.b[k][n] = (k == (n + s) % 8) ? 1.0 : 0.0;
    identifying_c(m);
    run_and_check(m, exact_bits(m), "tf32 A-select s=" + std::to_string(s));
  }
  for (int s : {0, 5}) {  // A one-hot: D[r][n] = C[r][n] + B[(r + s) % 8][n]
    Tile m;
    for (int r = 0; r < 16; ++r)
      for (int k = 0; k < 8; ++k) m.a[r][k] = (k == (r + s) % 8) ? 1.0 : 0.0;
    for (int k = 0; k < 8; ++k)
      for (int n = 0; n < 8; ++n) m.b[k][n] = 8 * k + n + 1;
    identifying_c(m);
    run_and_check(m, exact_bits(m), "tf32 B-select s=" + std::to_string(s));
  }
  {  // random integers, exact in any order
    Tile m;
    for (int r = 0; r < 16; ++r)
      for (int k = 0; k < 8; ++k) m.a[r][k] = static_cast<double>(rng.uniform_int(-8, 8));
    for (int k = 0; k < 8; ++k)
      for (int n = 0; n < 8; ++n) m.b[k][n] = static_cast<double>(rng.uniform_int(-8, 8));
    for (auto& row : m.c)
      for (double& v : row) v = static_cast<double>(rng.uniform_int(-256, 256));
    run_and_check(m, exact_bits(m), "tf32 random integers");
  }
  {
    // Truncation: fp32 operands with random low 13 bits. A is one-hot, so each output is a single
    // product of two truncated operands (at most 11 x 11 significand bits: exact in fp32) plus
    // zeros. The expected tile applies the truncation itself; rounding the operands to nearest
    // instead would change many outputs (counted below, so the test can tell the two apart).
    Tile m;
    Tf32Bits x;
    int differs_if_rounded = 0;
    const int s = 2;
    for (int r = 0; r < 16; ++r)
      for (int k = 0; k < 8; ++k) {
        const bool on = k == (r + s) % 8;
        const float v = on ? static_cast<float>((r % 2 ? -1.0 : 1.0) * (1.0 + r / 16.0 + rng.uniform(0, 1.0 / 16))) : 0.f;
        x.a[r][k] = on ? f2u(v) | static_cast<uint32_t>(rng.uniform_int(1, 0x1fff)) : 0u;
      }
    for (int k = 0; k < 8; ++k)
      for (int n = 0; n < 8; ++n) x.b[k][n] = f2u(static_cast<float>(rng.normal())) | static_cast<uint32_t>(rng.uniform_int(0, 0x1fff));
    for (int r = 0; r < 16; ++r)
      for (int k = 0; k < 8; ++k) m.a[r][k] = u2f(x.a[r][k] & 0xffffe000u);
    for (int k = 0; k < 8; ++k)
      for (int n = 0; n < 8; ++n) m.b[k][n] = u2f(x.b[k][n] & 0xffffe000u);
    for (int r = 0; r < 16; ++r)
      for (int n = 0; n < 8; ++n) {
        const int k = (r + s) % 8;
        const double rounded = static_cast<double>(u2f(emulate::float_to_tf32(u2f(x.a[r][k])))) *
                               u2f(emulate::float_to_tf32(u2f(x.b[k][n])));
        if (rounded != m.a[r][k] * m.b[k][n]) ++differs_if_rounded;
      }
    REQUIRE(differs_if_rounded > 32);  // the data discriminates truncation from rounding
    run_and_check(m, x, "tf32 truncation of the low 13 bits");
  }
}

TEST_CASE("ldmatrix x1/x2/x4 with and without .trans: registers follow the PTX ISA layout", "[arch][ldmatrix]") {
  constexpr int kRows = arch_test::kLdmRows;
  std::vector<uint16_t> src(kRows * 8);
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < 8; ++c) src[static_cast<size_t>(r * 8 + c)] = static_cast<uint16_t>(0xA000 | r << 4 | c);
  // Lane l supplies row (7l + 5) % 40: distinct rows, in an order unrelated to the lane.
  std::vector<int> row_of_lane(32);
  for (int l = 0; l < 32; ++l) row_of_lane[static_cast<size_t>(l)] = (7 * l + 5) % 40;

  DeviceBuffer<uint16_t> dsrc(src);
  DeviceBuffer<int> drows(row_of_lane);
  DeviceBuffer<uint32_t> dout(6 * 32 * 4);
  REQUIRE(dout.fill_bytes(0xFF) == cudaSuccess);
  sync_ok(launch(arch_test::ldmatrix_once_kernel, dim3(1), dim3(32), 0, nullptr, dsrc.data(), drows.data(),
                 dout.data()));
  const std::vector<uint32_t> out = dout.to_host();

  // Rows of matrix j come from the addresses of threads 8j..8j+7. Without .trans lane l gets
  // row l/4, columns 2(l%4) and 2(l%4)+1 (low half first); with .trans, column l/4 of rows 2(l%4)
  // and 2(l%4)+1.
  auto element = [&](int j, int row, int col) {
    return static_cast<uint32_t>(src[static_cast<size_t>(row_of_lane[static_cast<size_t>(8 * j + row)] * 8 + col)]);
  };
  const void* host_rows[32];
  for (int l = 0; l < 32; ++l) host_rows[l] = &src[static_cast<size_t>(row_of_lane[static_cast<size_t>(l)] * 8)];
  const int nums[6] = {1, 1, 2, 2, 4, 4};
  for (int v = 0; v < 6; ++v) {
    const int num = nums[v];
    const bool trans = v % 2 == 1;
    uint32_t model[32][4];
    emulate::ldmatrix_warp(num, trans, host_rows, model);
    int bad_layout = 0, bad_model = 0, clobbered = 0;
    for (int l = 0; l < 32; ++l)
      for (int j = 0; j < 4; ++j) {
        const uint32_t got = out[static_cast<size_t>((v * 32 + l) * 4 + j)];
        if (j >= num) {
          clobbered += got != 0xFFFFFFFFu;
          continue;
        }
        const int g = l / 4, t = l % 4;
        const uint32_t want = trans ? (element(j, 2 * t, g) | element(j, 2 * t + 1, g) << 16)
                                    : (element(j, g, 2 * t) | element(j, g, 2 * t + 1) << 16);
        bad_layout += got != want;
        bad_model += got != model[l][j];
      }
    INFO("variant x" << num << (trans ? ".trans" : ""));
    CHECK(bad_layout == 0);
    CHECK(bad_model == 0);
    CHECK(clobbered == 0);
  }
}

TEST_CASE("cvt.rna.tf32.f32: round to nearest tf32, ties away from zero", "[arch][tf32]") {
  // Hand-derived cases (tf32 keeps 10 of fp32's 23 significand bits; the low 13 bits of the
  // result are zero; 0x1000 is half a tf32 ulp):
  struct Case {
    uint32_t in, want;
    const char* why;
  };
  const Case cases[] = {
      {0x3f800000u, 0x3f800000u, "1.0 is a tf32"},
      {0x3f801000u, 0x3f802000u, "1 + 2^-11, a tie: away from zero (nearest-even would give 1.0)"},
      {0xbf801000u, 0xbf802000u, "-(1 + 2^-11): away from zero, i.e. more negative"},
      {0x3f800fffu, 0x3f800000u, "just below the tie: down"},
      {0x3f801001u, 0x3f802000u, "just above the tie: up"},
      {0x3fffffffu, 0x40000000u, "rounding up carries into the exponent: 2.0"},
      {0x7f7fffffu, 0x7f800000u, "FLT_MAX is above the largest tf32 plus half an ulp: +inf"},
      {0x7f800000u, 0x7f800000u, "+inf"},
      {0xff800000u, 0xff800000u, "-inf"},
      {0x00000000u, 0x00000000u, "+0"},
      {0x80000000u, 0x80000000u, "-0"},
      {0x00000fffu, 0x00000000u, "subnormal below half an ulp: +0"},
      {0x00001000u, 0x00002000u, "subnormal tie: away from zero"},
      // NaN and inf are not rounded, only cut to their upper 19 bits; these three are what an
      // H200 returned (tests/arch GPU run), and the emulation must agree:
      {0x7fc01fffu, 0x7fc00000u, "quiet NaN: low 13 bits dropped, not rounded up"},
      {0x7fffffffu, 0x7fffe000u, "all-ones NaN: no rounding carry into the sign"},
      {0x7f800001u, 0x7f800000u, "NaN with its payload only in the low 13 bits: becomes +inf"},
  };
  fulgur_test::Rng rng("arch cvt tf32");
  FULGUR_INFO_SEED(rng);
  std::vector<float> in;
  for (const Case& c : cases) in.push_back(u2f(c.in));
  const size_t n_cases = in.size();
  // Random bit patterns (NaNs, infinities and subnormals among them), checked against the host
  // model: on a GPU this is hardware vs emulation bit for bit.
  for (int i = 0; i < 4096; ++i) in.push_back(u2f(static_cast<uint32_t>(rng.uniform_int(0, 0xffffffffll))));
  for (int i = 0; i < 256; ++i)  // exponent all ones: NaN or inf with random payloads
    in.push_back(u2f(static_cast<uint32_t>(rng.uniform_int(0, 1)) << 31 | 0x7f800000u |
                     static_cast<uint32_t>(rng.uniform_int(0, 0x7fffff))));

  DeviceBuffer<float> din(in);
  DeviceBuffer<uint32_t> dout(in.size());
  REQUIRE(dout.fill_bytes(0xAB) == cudaSuccess);
  sync_ok(launch(arch_test::cvt_tf32_kernel, dim3(static_cast<unsigned>((in.size() + 127) / 128)), dim3(128), 0,
                 nullptr, din.data(), dout.data(), static_cast<int>(in.size())));
  const std::vector<uint32_t> out = dout.to_host();
  for (size_t i = 0; i < n_cases; ++i) {
    INFO(cases[i].why << ": got 0x" << std::hex << out[i]);
    CHECK(out[i] == cases[i].want);
  }
  int bad_model = 0, low_bits = 0;
  std::ostringstream first;
  for (size_t i = n_cases; i < in.size(); ++i) {
    const uint32_t model = emulate::float_to_tf32(in[i]);
    if (out[i] != model && bad_model++ == 0)
      first << "input 0x" << std::hex << f2u(in[i]) << ": got 0x" << out[i] << ", host model 0x" << model;
    if ((out[i] & 0x1fffu) != 0) ++low_bits;  // a tf32 never has low bits set
  }
  INFO(first.str());
  CHECK(bad_model == 0);
  CHECK(low_bits == 0);
}

TEST_CASE("cp.async: commit groups complete in order, zero fill past the source size", "[arch][cp_async]") {
  fulgur_test::Rng rng("arch cp.async groups");
  FULGUR_INFO_SEED(rng);
  std::vector<unsigned char> src(3 * 32 * 16);
  for (auto& b : src) b = static_cast<unsigned char>(rng.uniform_int(0, 0xED));  // never the poison 0xEE
  std::vector<uint32_t> zfill(32);
  for (int l = 0; l < 32; ++l) zfill[static_cast<size_t>(l)] = static_cast<uint32_t>(l % 17);  // 0..16 bytes
  DeviceBuffer<unsigned char> dsrc(src);
  DeviceBuffer<uint32_t> dz(zfill);
  DeviceBuffer<unsigned char> dout(5 * 32 * 16);
  REQUIRE(dout.fill_bytes(0x11) == cudaSuccess);
  sync_ok(launch(arch_test::cp_async_groups_kernel, dim3(1), dim3(32), 0, nullptr, dsrc.data(), dz.data(),
                 dout.data()));
  const std::vector<unsigned char> out = dout.to_host();
  auto at = [&](const std::vector<unsigned char>& v, int q, int l, int i) {
    return v[static_cast<size_t>((q * 32 + l) * 16 + i)];
  };
  int bad = 0, bad_fill = 0, early = 0;
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < 16; ++i) {
      bad += at(out, 0, l, i) != at(src, 0, l, i);  // group 0 after wait_group 2
      bad += at(out, 2, l, i) != at(src, 2, l, i);  // group 2 after wait_all
      const unsigned char want1 = i < static_cast<int>(zfill[static_cast<size_t>(l)]) ? at(src, 1, l, i) : 0;
      bad_fill += at(out, 1, l, i) != want1;  // group 1 after wait_group 1
      early += at(out, 3, l, i) != 0xEE || at(out, 4, l, i) != 0xEE;
    }
  CHECK(bad == 0);
  CHECK(bad_fill == 0);
#if FULGUR_EMULATING
  // The emulation performs a group's copies at the wait that retires it, so groups 1 and 2 are
  // still the poison right after wait_group 2 (on hardware they may or may not have landed).
  CHECK(early == 0);
#else
  (void)early;
#endif
}

// ---- GEMMs ------------------------------------------------------------------------------------
namespace {

struct Shape {
  int m, n, k;
};
// One block; several blocks and k-tiles, non-square; edges in every dimension (M, N not multiples
// of the 32x32 tile, K not a multiple of the k-tile).
const Shape kShapes[] = {{32, 32, 32}, {96, 64, 128}, {40, 56, 72}};

template <typename T>
std::vector<float> run_gemm16(const std::vector<T>& a, const std::vector<T>& b, const Shape& s) {
  DeviceBuffer<T> da(a), db(b);
  DeviceBuffer<float> dc(static_cast<size_t>(s.m) * s.n);
  REQUIRE(dc.fill_bytes(0xFF) == cudaSuccess);  // NaN poison
  const dim3 grid((s.n + arch_test::kBN - 1) / arch_test::kBN, (s.m + arch_test::kBM - 1) / arch_test::kBM);
  sync_ok(launch(arch_test::gemm16_kernel<T>, grid, dim3(arch_test::kGemmThreads), 0, nullptr, da.data(), db.data(),
                 dc.data(), s.m, s.n, s.k));
  return dc.to_host();
}

std::vector<float> run_gemm_tf32(const std::vector<float>& a, const std::vector<float>& b, const Shape& s) {
  DeviceBuffer<float> da(a), db(b);
  DeviceBuffer<float> dc(static_cast<size_t>(s.m) * s.n);
  REQUIRE(dc.fill_bytes(0xFF) == cudaSuccess);
  const dim3 grid((s.n + arch_test::kBN - 1) / arch_test::kBN, (s.m + arch_test::kBM - 1) / arch_test::kBM);
  sync_ok(launch(arch_test::gemm_tf32_kernel, grid, dim3(arch_test::kGemmThreads), 0, nullptr, da.data(), db.data(),
                 dc.data(), s.m, s.n, s.k));
  return dc.to_host();
}

/// fp64 GEMM of the inputs as stored, and sum_k |a_ik b_kj| for the error bounds.
template <typename T>
void gemm_fp64(const std::vector<T>& a, const std::vector<T>& b, const Shape& s, std::vector<double>& c,
               std::vector<double>& mag) {
  c.assign(static_cast<size_t>(s.m) * s.n, 0.0);
  mag.assign(c.size(), 0.0);
  for (int i = 0; i < s.m; ++i)
    for (int j = 0; j < s.n; ++j) {
      double acc = 0, m = 0;
      for (int q = 0; q < s.k; ++q) {
        const double p = fulgur::to_double(a[static_cast<size_t>(i) * s.k + q]) *
                         fulgur::to_double(b[static_cast<size_t>(q) * s.n + j]);
        acc += p;
        m += std::fabs(p);
      }
      c[static_cast<size_t>(i) * s.n + j] = acc;
      mag[static_cast<size_t>(i) * s.n + j] = m;
    }
}

/// Elementwise |got - ref| <= rel * mag (NaN fails), plus the relative RMSE for the log.
void check_gemm(const std::vector<float>& got, const std::vector<double>& ref, const std::vector<double>& mag,
                double rel, const std::string& what) {
  int bad = 0;
  std::ostringstream first;
  std::vector<double> g(got.begin(), got.end());
  for (size_t i = 0; i < ref.size(); ++i) {
    const double err = std::fabs(g[i] - ref[i]);
    if (!(err <= rel * mag[i]) && bad++ == 0)
      first << what << ": element " << i << " = " << g[i] << ", fp64 " << ref[i] << ", bound " << rel * mag[i];
  }
  INFO(first.str() << " rel_rmse " << fulgur_test::rel_rmse(g, ref));
  CHECK(bad == 0);
}

template <typename T>
void gemm16_vs_fp64(const char* name) {
  fulgur_test::Rng rng(std::string("arch gemm16 ") + name);
  FULGUR_INFO_SEED(rng);
  for (const Shape& s : kShapes) {
    std::vector<T> a(static_cast<size_t>(s.m) * s.k), b(static_cast<size_t>(s.k) * s.n);
    for (T& v : a) v = fulgur::from_double<T>(rng.normal());
    for (T& v : b) v = fulgur::from_double<T>(rng.normal());
    const std::vector<float> c = run_gemm16(a, b, s);
    std::vector<double> ref, mag;
    gemm_fp64(a, b, s, ref, mag);
    // The inputs are exactly representable and their products exact, so the only error is fp32
    // accumulation: at most K additions (the tile loop adds each mma's result to the running
    // accumulator), each off by one ulp at most (2^-23 relative, truncating tensor cores
    // included) of a partial sum bounded by sum |a b|: |err| <= (K + 2) 2^-23 sum_k |a_ik b_kj|.
    check_gemm(c, ref, mag, (s.k + 2) * std::ldexp(1.0, -23),
               std::string(name) + " " + std::to_string(s.m) + "x" + std::to_string(s.n) + "x" + std::to_string(s.k));
  }
}

}  // namespace

TEST_CASE("GEMM bf16 (cp.async + ldmatrix + ldmatrix.trans + mma) matches an fp64 GEMM", "[arch][gemm]") {
  gemm16_vs_fp64<__nv_bfloat16>("bf16");
}

TEST_CASE("GEMM f16 (cp.async + ldmatrix + ldmatrix.trans + mma) matches an fp64 GEMM", "[arch][gemm]") {
  gemm16_vs_fp64<__half>("f16");
}

TEST_CASE("GEMM tf32 (cp.async + ldmatrix + cvt.rna + mma) matches an fp64 GEMM of the fp32 inputs", "[arch][gemm]") {
  fulgur_test::Rng rng("arch gemm tf32");
  FULGUR_INFO_SEED(rng);
  for (const Shape& s : kShapes) {
    std::vector<float> a(static_cast<size_t>(s.m) * s.k), b(static_cast<size_t>(s.k) * s.n);
    for (float& v : a) v = static_cast<float>(rng.normal());
    for (float& v : b) v = static_cast<float>(rng.normal());
    const std::vector<float> c = run_gemm_tf32(a, b, s);
    std::vector<double> ref, mag;
    gemm_fp64(a, b, s, ref, mag);
    // cvt.rna moves each operand by at most half a tf32 ulp, 2^-11 relative, so each product by at
    // most 2^-10 + 2^-22 relative; fp32 accumulation adds (K + 2) 2^-23 as in the 16-bit GEMMs.
    check_gemm(c, ref, mag, std::ldexp(1.0, -10) + std::ldexp(1.0, -22) + (s.k + 2) * std::ldexp(1.0, -23),
               "tf32 " + std::to_string(s.m) + "x" + std::to_string(s.n) + "x" + std::to_string(s.k));
  }
}

TEST_CASE("GEMM on integer data is exact: bit-identical to the integer product (hence hardware == emulation)",
          "[arch][gemm]") {
  // Entries in [-8, 8] are exact in bf16, f16 and tf32; with K <= 128 every partial sum is an
  // integer of magnitude <= 128 * 64 < 2^24, exact in fp32 whatever the summation order. The
  // expected result is the int64 product: the emulated and the hardware GEMMs must both produce
  // exactly its bits, so they are bit-identical to each other.
  fulgur_test::Rng rng("arch gemm integers");
  FULGUR_INFO_SEED(rng);
  for (const Shape& s : kShapes) {
    std::vector<int64_t> ai(static_cast<size_t>(s.m) * s.k), bi(static_cast<size_t>(s.k) * s.n);
    for (auto& v : ai) v = rng.uniform_int(-8, 8);
    for (auto& v : bi) v = rng.uniform_int(-8, 8);
    std::vector<uint32_t> want(static_cast<size_t>(s.m) * s.n);
    for (int i = 0; i < s.m; ++i)
      for (int j = 0; j < s.n; ++j) {
        int64_t acc = 0;
        for (int q = 0; q < s.k; ++q) acc += ai[static_cast<size_t>(i) * s.k + q] * bi[static_cast<size_t>(q) * s.n + j];
        want[static_cast<size_t>(i) * s.n + j] = f2u(static_cast<float>(acc));
      }
    auto count_bad = [&](const std::vector<float>& c) {
      int bad = 0;
      for (size_t i = 0; i < c.size(); ++i) bad += f2u(c[i]) != want[i];
      return bad;
    };
    std::vector<__nv_bfloat16> abf(ai.size()), bbf(bi.size());
    std::vector<__half> ah(ai.size()), bh(bi.size());
    std::vector<float> af(ai.size()), bf(bi.size());
    for (size_t i = 0; i < ai.size(); ++i) {
      abf[i] = fulgur::from_double<__nv_bfloat16>(static_cast<double>(ai[i]));
      ah[i] = fulgur::from_double<__half>(static_cast<double>(ai[i]));
      af[i] = static_cast<float>(ai[i]);
    }
    for (size_t i = 0; i < bi.size(); ++i) {
      bbf[i] = fulgur::from_double<__nv_bfloat16>(static_cast<double>(bi[i]));
      bh[i] = fulgur::from_double<__half>(static_cast<double>(bi[i]));
      bf[i] = static_cast<float>(bi[i]);
    }
    INFO("shape " << s.m << "x" << s.n << "x" << s.k);
    CHECK(count_bad(run_gemm16(abf, bbf, s)) == 0);
    CHECK(count_bad(run_gemm16(ah, bh, s)) == 0);
    CHECK(count_bad(run_gemm_tf32(af, bf, s)) == 0);
  }
}
