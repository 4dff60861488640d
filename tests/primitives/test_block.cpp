// SPDX-License-Identifier: Apache-2.0
// Block reduce and scan (fulgur/primitives/block.cuh) for several block sizes and items per
// thread, against std::accumulate / std::partial_sum over each block's blocked sequence. One
// kernel runs every collective in turn on ONE shared storage (a union), with the __syncthreads()
// the CUB-style contract asks for between uses, so storage reuse is exercised too. Integers and
// integer-valued floats: exact comparisons (every partial sum is below 2^24).
#include "fulgur/primitives/block.cuh"
#include "primitives_test.hpp"

namespace prim_test_block {

using namespace prim_test;
namespace prim = fulgur::primitives;

template <int N>
constexpr int record_size() {
  return 2 + 4 * N + 5;
}

template <typename T, int kThreads, int N>
FULGUR_KERNEL void k_block_collectives(const T* in, T* out, T init) {
  using Reduce = prim::BlockReduce<T, kThreads>;
  using Scan = prim::BlockScan<T, kThreads>;
  __shared__ union {
    typename Reduce::TempStorage reduce;
    typename Scan::TempStorage scan;
  } storage;
  const int tid = static_cast<int>(threadIdx.x);
  const T* block_in = in + static_cast<size_t>(blockIdx.x) * kThreads * N;
  T items[N], res[N];
  prim::load_blocked(block_in, kThreads * N, items, T(0));
  T* r = out + (static_cast<size_t>(blockIdx.x) * kThreads + tid) * record_size<N>();

  r[0] = Reduce(storage.reduce).sum(items);
  __syncthreads();
  r[1] = Reduce(storage.reduce).max(items[0]);
  __syncthreads();
  T aggregate;
  Scan(storage.scan).exclusive_sum(items, res, aggregate);
  for (int i = 0; i < N; ++i) r[2 + i] = res[i];
  r[2 + 4 * N] = aggregate;
  __syncthreads();
  Scan(storage.scan).inclusive_sum(items, res);
  for (int i = 0; i < N; ++i) r[2 + N + i] = res[i];
  __syncthreads();
  Scan(storage.scan).exclusive_scan(items, res, prim::Max{}, init);
  for (int i = 0; i < N; ++i) r[2 + 2 * N + i] = res[i];
  __syncthreads();
  // In place (out == in), as the contract allows.
  for (int i = 0; i < N; ++i) res[i] = items[i];
  Scan(storage.scan).inclusive_scan(res, res, prim::Max{});
  for (int i = 0; i < N; ++i) r[2 + 3 * N + i] = res[i];
  __syncthreads();
  r[2 + 4 * N + 1] = Scan(storage.scan).exclusive_scan(items[0], prim::Sum{}, init, aggregate);
  r[2 + 4 * N + 2] = aggregate;
  __syncthreads();
  r[2 + 4 * N + 3] = Scan(storage.scan).inclusive_sum(items[0]);
  __syncthreads();
  r[2 + 4 * N + 4] = Scan(storage.scan).exclusive_sum(items[0]);
}

template <typename T, int kThreads, int N>
void check_block(const char* name) {
  fulgur_test::Rng rng(std::string("block collectives ") + name);
  FULGUR_INFO_SEED(rng);
  INFO(name);
  const int blocks = 2, per_block = kThreads * N;
  const int R = record_size<N>();
  for (int trial = 0; trial < (kSlowBackend ? 1 : 2); ++trial) {
    std::vector<T> in(static_cast<size_t>(blocks) * per_block);
    for (T& v : in) v = trial == 1 ? T(3) : static_cast<T>(rng.uniform_int(-1000, 1000));
    const T init = static_cast<T>(rng.uniform_int(-100, 100));
    DeviceBuffer<T> d_in(in), d_out(static_cast<size_t>(blocks) * kThreads * R);
    d_out.fill_bytes(0xFF);
    REQUIRE(launch(k_block_collectives<T, kThreads, N>, dim3(blocks), dim3(kThreads), 0, nullptr, d_in.data(),
                   d_out.data(), init) == cudaSuccess);
    const auto out = read(d_out);
    for (int b = 0; b < blocks; ++b) {
      const auto first = in.begin() + static_cast<ptrdiff_t>(b) * per_block, last = first + per_block;
      const T sum = std::accumulate(first, last, T(0));
      std::vector<T> incl(per_block), incl_max(per_block);
      std::partial_sum(first, last, incl.begin());
      std::partial_sum(first, last, incl_max.begin(), [](T a, T c) { return a < c ? c : a; });
      // Single-item scans see item 0 of every thread.
      std::vector<T> firsts(kThreads), firsts_incl(kThreads);
      for (int t = 0; t < kThreads; ++t) firsts[t] = first[t * N];
      std::partial_sum(firsts.begin(), firsts.end(), firsts_incl.begin());
      const T first_sum = firsts_incl.back();
      const T first_max = *std::max_element(firsts.begin(), firsts.end());
      for (int t = 0; t < kThreads; ++t) {
        const T* r = &out[(static_cast<size_t>(b) * kThreads + t) * R];
        INFO("trial " << trial << " block " << b << " thread " << t);
        CHECK(r[0] == sum);
        CHECK(r[1] == first_max);
        for (int i = 0; i < N; ++i) {
          const int e = t * N + i;
          CHECK(r[2 + i] == (e == 0 ? T(0) : incl[e - 1]));
          CHECK(r[2 + N + i] == incl[e]);
          CHECK(r[2 + 2 * N + i] == (e == 0 ? init : std::max(init, incl_max[e - 1])));
          CHECK(r[2 + 3 * N + i] == incl_max[e]);
        }
        CHECK(r[2 + 4 * N] == sum);
        CHECK(r[2 + 4 * N + 1] == (t == 0 ? init : T(init + firsts_incl[t - 1])));
        CHECK(r[2 + 4 * N + 2] == first_sum);
        CHECK(r[2 + 4 * N + 3] == firsts_incl[t]);
        CHECK(r[2 + 4 * N + 4] == (t == 0 ? T(0) : firsts_incl[t - 1]));
      }
    }
  }
}

}  // namespace prim_test_block
using namespace prim_test_block;  // kernels live in a named namespace: hidden visibility needs external linkage

TEST_CASE("block reduce and scan: sizes, items per thread, storage reuse", "[primitives][block]") {
  check_block<int, 32, 1>("int 32x1");
  check_block<int, 96, 3>("int 96x3");
  check_block<float, 128, 4>("float 128x4");
  check_block<long long, 256, 1>("i64 256x1");
  if (!kSlowBackend) check_block<int, 256, 12>("int 256x12");
  check_block<float, 1024, 2>("float 1024x2");
}

namespace prim_test_block {
FULGUR_KERNEL void k_block_float_sum(const float* in, float* out) {
  using Reduce = prim::BlockReduce<float, 256>;
  __shared__ typename Reduce::TempStorage storage;
  float items[4];
  prim::load_blocked(in, 1024, items, 0.0f);
  out[threadIdx.x] = Reduce(storage).sum(items);
}
}  // namespace prim_test_block

TEST_CASE("block float sum of random values: rounding bound, identical on every thread", "[primitives][block]") {
  fulgur_test::Rng rng("block float sum");
  FULGUR_INFO_SEED(rng);
  std::vector<float> in(1024);
  double exact = 0, abs_sum = 0;
  for (float& v : in) {
    v = static_cast<float>(rng.normal(0.5, 1.0));
    exact += v;
    abs_sum += std::fabs(v);
  }
  DeviceBuffer<float> d_in(in), d_out(256);
  d_out.fill_bytes(0xFF);
  REQUIRE(launch(k_block_float_sum, dim3(1), dim3(256), 0, nullptr, d_in.data(), d_out.data()) == cudaSuccess);
  const auto out = read(d_out);
  // Each term passes through at most 3 (items) + 5 (warp) + 7 (warps) = 15 float additions:
  // |error| <= 15 u sum|x| to first order (u = 2^-24); 1.01 covers the second-order term.
  const double bound = 1.01 * 15 * std::ldexp(1.0, -24) * abs_sum;
  for (int t = 0; t < 256; ++t) {
    CHECK(std::fabs(out[t] - exact) <= bound);
    CHECK(bits(out[t]) == bits(out[0]));
  }
}

namespace prim_test_block {
// A non-commutative operator: every scan variant must combine in thread/item order.
template <int kThreads, int N>
FULGUR_KERNEL void k_block_ordered_scans(const Affine* in, Affine* out) {
  using Scan = prim::BlockScan<Affine, kThreads>;
  __shared__ typename Scan::TempStorage storage;
  const int tid = static_cast<int>(threadIdx.x);
  Affine items[N], res[N], aggregate;
  prim::load_blocked(in, kThreads * N, items, Affine{1u, 0u});
  Affine* r = out + static_cast<size_t>(tid) * (2 * N + 3);
  Scan(storage).exclusive_scan(items, res, Compose{}, Affine{3u, 5u}, aggregate);
  for (int i = 0; i < N; ++i) r[i] = res[i];
  r[2 * N] = aggregate;
  __syncthreads();
  Scan(storage).inclusive_scan(items, res, Compose{});
  for (int i = 0; i < N; ++i) r[N + i] = res[i];
  __syncthreads();
  r[2 * N + 1] = Scan(storage).inclusive_scan(items[0], Compose{});
  __syncthreads();
  r[2 * N + 2] = Scan(storage).exclusive_scan(items[0], Compose{}, Affine{3u, 5u});
}

template <int kThreads, int N>
void check_ordered_scans() {
  fulgur_test::Rng rng("block ordered scans " + std::to_string(kThreads) + "x" + std::to_string(N));
  FULGUR_INFO_SEED(rng);
  std::vector<Affine> in(kThreads * N);
  for (auto& f : in) f = random_affine(rng);
  DeviceBuffer<Affine> d_in(in), d_out(static_cast<size_t>(kThreads) * (2 * N + 3));
  d_out.fill_bytes(0xFF);
  REQUIRE(launch(k_block_ordered_scans<kThreads, N>, dim3(1), dim3(kThreads), 0, nullptr, d_in.data(), d_out.data()) ==
          cudaSuccess);
  const auto out = read(d_out);
  auto same = [](const Affine& x, const Affine& y) { return x.a == y.a && x.b == y.b; };
  const Affine init{3u, 5u};
  Affine total = in[0];
  for (int e = 1; e < kThreads * N; ++e) total = Compose{}(total, in[e]);
  Affine run = init, run_incl{1u, 0u}, first_run{1u, 0u}, first_excl = init;
  for (int t = 0; t < kThreads; ++t) {
    const Affine* r = &out[static_cast<size_t>(t) * (2 * N + 3)];
    INFO("thread " << t);
    for (int i = 0; i < N; ++i) {
      CHECK(same(r[i], run));
      run = Compose{}(run, in[t * N + i]);
      run_incl = Compose{}(run_incl, in[t * N + i]);
      CHECK(same(r[N + i], run_incl));
    }
    CHECK(same(r[2 * N], total));
    first_run = Compose{}(first_run, in[t * N]);
    CHECK(same(r[2 * N + 1], first_run));
    CHECK(same(r[2 * N + 2], first_excl));
    first_excl = Compose{}(first_excl, in[t * N]);
  }
}
}  // namespace prim_test_block

TEST_CASE("block scans combine in order (non-commutative operator)", "[primitives][block]") {
  check_ordered_scans<64, 1>();
  check_ordered_scans<160, 3>();
}
