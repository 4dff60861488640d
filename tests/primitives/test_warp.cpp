// SPDX-License-Identifier: Apache-2.0
// Warp collectives (fulgur/primitives/warp.cuh) at every logical width, against std::accumulate /
// std::partial_sum over each group of lanes. Integer inputs and integer-valued floats (exact in
// float at these sizes) are compared bit for bit; random floats with the rounding bound of the
// butterfly's depth.
#include "fulgur/primitives/warp.cuh"
#include "primitives_test.hpp"

namespace prim_test_warp {

using namespace prim_test;
namespace prim = fulgur::primitives;

constexpr int kOuts = 9;

template <int W, typename T>
FULGUR_KERNEL void k_warp_collectives(const T* in, T* out, T init) {
  const int t = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  const T v = in[t];
  T* o = out + kOuts * t;
  o[0] = prim::warp_reduce_sum<W>(v);
  o[1] = prim::warp_reduce_max<W>(v);
  o[2] = prim::warp_reduce_min<W>(v);
  o[3] = prim::warp_inclusive_sum<W>(v);
  o[4] = prim::warp_exclusive_sum<W>(v);
  const prim::WarpScanResult<T> r = prim::warp_scan<W>(v, prim::Sum{}, init);
  o[5] = r.exclusive;
  o[6] = r.aggregate;
  o[7] = prim::warp_inclusive_scan<W>(v, prim::Max{});
  o[8] = prim::warp_broadcast<W>(v, W - 1);
}

struct KeyIdx {
  float key;
  int idx;
};
struct ArgMax {  // larger key, then lower index: commutative and associative
  FULGUR_HOST_DEVICE KeyIdx operator()(const KeyIdx& x, const KeyIdx& y) const {
    if (x.key != y.key) return x.key > y.key ? x : y;
    return x.idx < y.idx ? x : y;
  }
};

template <int W>
FULGUR_KERNEL void k_warp_structs(const Affine* f, const KeyIdx* kv, Affine* scan_out, Affine* excl_out,
                                  KeyIdx* argmax_out) {
  const int t = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  scan_out[t] = prim::warp_inclusive_scan<W>(f[t], Compose{});
  excl_out[t] = prim::warp_exclusive_scan<W>(f[t], Compose{}, Affine{1u, 0u});
  argmax_out[t] = prim::warp_reduce<W>(kv[t], ArgMax{});
}

// The two half-warps diverge and run different collectives with their own masks.
FULGUR_KERNEL void k_partial_masks(const int* in, int* out) {
  const int t = static_cast<int>(threadIdx.x);
  const int lane = t % 32;
  if (lane < 16) {
    out[t] = prim::warp_reduce_sum<16>(in[t], 0x0000ffffu);
  } else {
    out[t] = prim::warp_inclusive_sum<8>(in[t], 0xffff0000u);
  }
}

template <typename T>
T make_value(fulgur_test::Rng& rng, int i);
template <>
int make_value<int>(fulgur_test::Rng& rng, int) {
  return static_cast<int>(rng.uniform_int(-100000, 100000));
}
template <>
float make_value<float>(fulgur_test::Rng& rng, int) {
  return static_cast<float>(rng.uniform_int(-1000, 1000));  // integer-valued: 32-term sums exact
}
template <>
double make_value<double>(fulgur_test::Rng& rng, int) {
  return static_cast<double>(rng.uniform_int(-(1ll << 40), 1ll << 40));
}
template <>
unsigned long long make_value<unsigned long long>(fulgur_test::Rng& rng, int) {
  return static_cast<unsigned long long>(rng.uniform_int(0, 1ll << 50)) << 8;  // high words matter
}
template <>
short make_value<short>(fulgur_test::Rng& rng, int) {
  return static_cast<short>(rng.uniform_int(-500, 500));  // init + a 32-term sum fits in a short
}

template <int W, typename T>
void check_collectives(const char* type_name) {
  fulgur_test::Rng rng(std::string("warp collectives ") + type_name + " " + std::to_string(W));
  FULGUR_INFO_SEED(rng);
  INFO("type " << type_name << " width " << W);
  const int blocks = 2, threads = 64, n = blocks * threads;
  for (int trial = 0; trial < (kSlowBackend ? 1 : 3); ++trial) {
    std::vector<T> in(n);
    for (int i = 0; i < n; ++i) in[i] = trial == 2 ? T(7) : make_value<T>(rng, i);  // trial 2: all equal
    if (trial == 1)  // sorted descending inside each group: max at lane 0, min at the last lane
      for (int g = 0; g < n; g += W) std::sort(in.begin() + g, in.begin() + g + W, [](T a, T b) { return b < a; });
    const T init = make_value<T>(rng, 0);
    DeviceBuffer<T> d_in(in), d_out(static_cast<size_t>(n) * kOuts);
    d_out.fill_bytes(0xFF);
    REQUIRE(launch(k_warp_collectives<W, T>, dim3(blocks), dim3(threads), 0, nullptr, d_in.data(), d_out.data(),
                   init) == cudaSuccess);
    const std::vector<T> out = read(d_out);
    for (int g = 0; g < n; g += W) {
      const auto first = in.begin() + g, last = first + W;
      const T sum = std::accumulate(first, last, T(0));
      const T mx = *std::max_element(first, last), mn = *std::min_element(first, last);
      std::vector<T> incl(W), run_max(W);
      std::partial_sum(first, last, incl.begin());
      std::partial_sum(first, last, run_max.begin(), [](T a, T b) { return a < b ? b : a; });
      for (int j = 0; j < W; ++j) {
        const T* o = &out[static_cast<size_t>(kOuts * (g + j))];
        INFO("trial " << trial << " group at " << g << " lane " << j);
        CHECK(o[0] == sum);
        CHECK(o[1] == mx);
        CHECK(o[2] == mn);
        CHECK(o[3] == incl[j]);
        CHECK(o[4] == (j == 0 ? T(0) : incl[j - 1]));
        CHECK(o[5] == (j == 0 ? init : T(init + incl[j - 1])));
        CHECK(o[6] == sum);
        CHECK(o[7] == run_max[j]);
        CHECK(o[8] == in[g + W - 1]);
      }
    }
  }
}

template <int W>
void check_all_types() {
  check_collectives<W, int>("int");
  check_collectives<W, float>("float");
  check_collectives<W, double>("double");
  check_collectives<W, unsigned long long>("u64");
  check_collectives<W, short>("short");
}

}  // namespace prim_test_warp
using namespace prim_test_warp;  // kernels live in a named namespace: hidden visibility needs external linkage

TEST_CASE("warp reduce/scan/broadcast at every width and type", "[primitives][warp]") {
  check_all_types<1>();
  check_all_types<2>();
  check_all_types<4>();
  check_all_types<8>();
  check_all_types<16>();
  check_all_types<32>();
}

template <int W>
static void check_structs() {
  fulgur_test::Rng rng("warp structs " + std::to_string(W));
  FULGUR_INFO_SEED(rng);
  const int n = 64;
  std::vector<Affine> f(n);
  std::vector<KeyIdx> kv(n);
  for (int i = 0; i < n; ++i) {
    f[i] = Affine{static_cast<unsigned>(rng.uniform_int(0, 0xffffffffll)),
                  static_cast<unsigned>(rng.uniform_int(0, 0xffffffffll))};
    // Few distinct keys (ties), indices not in lane order, so both parts of ArgMax matter.
    kv[i] = KeyIdx{static_cast<float>(rng.uniform_int(0, 2)), static_cast<int>((i * 37) % 64)};
  }
  DeviceBuffer<Affine> d_f(f), d_scan(n), d_excl(n);
  DeviceBuffer<KeyIdx> d_kv(kv), d_arg(n);
  d_scan.fill_bytes(0xFF);
  d_excl.fill_bytes(0xFF);
  d_arg.fill_bytes(0xFF);
  REQUIRE(launch(k_warp_structs<W>, dim3(1), dim3(n), 0, nullptr, d_f.data(), d_kv.data(), d_scan.data(), d_excl.data(),
                 d_arg.data()) == cudaSuccess);
  const auto scan = read(d_scan), excl = d_excl.to_host();
  const auto arg = d_arg.to_host();
  for (int g = 0; g < n; g += W) {
    Affine acc{1u, 0u};
    KeyIdx best = kv[g];
    for (int j = 0; j < W; ++j) best = ArgMax{}(best, kv[g + j]);
    for (int j = 0; j < W; ++j) {
      INFO("width " << W << " lane " << g + j);
      CHECK(excl[g + j].a == acc.a);
      CHECK(excl[g + j].b == acc.b);
      acc = Compose{}(acc, f[g + j]);
      CHECK(scan[g + j].a == acc.a);
      CHECK(scan[g + j].b == acc.b);
      CHECK(arg[g + j].key == best.key);
      CHECK(arg[g + j].idx == best.idx);
    }
  }
}

TEST_CASE("warp collectives on 8-byte structs: ordered scan, argmax", "[primitives][warp]") {
  check_structs<2>();
  check_structs<8>();
  check_structs<32>();
}

TEST_CASE("warp collectives with partial masks in diverged half-warps", "[primitives][warp]") {
  fulgur_test::Rng rng("warp partial masks");
  FULGUR_INFO_SEED(rng);
  const int n = 64;
  std::vector<int> in(n);
  for (int& v : in) v = static_cast<int>(rng.uniform_int(-50, 50));
  DeviceBuffer<int> d_in(in), d_out(n);
  d_out.fill_bytes(0xFF);
  REQUIRE(launch(k_partial_masks, dim3(1), dim3(n), 0, nullptr, d_in.data(), d_out.data()) == cudaSuccess);
  const auto out = read(d_out);
  for (int w = 0; w < n; w += 32) {
    const int low = std::accumulate(in.begin() + w, in.begin() + w + 16, 0);
    for (int l = 0; l < 16; ++l) CHECK(out[w + l] == low);
    for (int g = w + 16; g < w + 32; g += 8) {
      int run = 0;
      for (int l = 0; l < 8; ++l) CHECK(out[g + l] == (run += in[g + l]));
    }
  }
}

namespace prim_test_warp {
FULGUR_KERNEL void k_float_sum(const float* in, float* out) {
  const int t = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  out[t] = prim::warp_reduce_sum<32>(in[t]);
}
}  // namespace prim_test_warp

TEST_CASE("warp float sums of random values: rounding bound, identical on every lane", "[primitives][warp]") {
  fulgur_test::Rng rng("warp float sum");
  FULGUR_INFO_SEED(rng);
  const int n = 256;
  std::vector<float> in(n);
  for (float& v : in) v = static_cast<float>(rng.normal(0.3, 2.0));
  DeviceBuffer<float> d_in(in), d_out(n);
  d_out.fill_bytes(0xFF);
  REQUIRE(launch(k_float_sum, dim3(2), dim3(128), 0, nullptr, d_in.data(), d_out.data()) == cudaSuccess);
  const auto out = read(d_out);
  for (int w = 0; w < n; w += 32) {
    double exact = 0, abs_sum = 0;
    for (int l = 0; l < 32; ++l) {
      exact += in[w + l];
      abs_sum += std::fabs(in[w + l]);
    }
    // Each term passes through log2(32) = 5 float additions: |error| <= 5 u sum|x| (u = 2^-24),
    // to first order; the factor 1.01 covers the second-order term.
    const double bound = 1.01 * 5 * std::ldexp(1.0, -24) * abs_sum;
    for (int l = 0; l < 32; ++l) {
      CHECK(std::fabs(out[w + l] - exact) <= bound);
      CHECK(bits(out[w + l]) == bits(out[w]));
    }
  }
}
