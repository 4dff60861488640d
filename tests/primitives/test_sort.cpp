// SPDX-License-Identifier: Apache-2.0
// Block radix sort (fulgur/primitives/sort.cuh) against std::stable_sort with comparators written
// from the documented orders, values = original positions so stability is checked exactly. Keys
// come back bit for bit (a -0.0 or a NaN payload survives the sort).
#include "fulgur/primitives/sort.cuh"
#include "primitives_test.hpp"

namespace prim_test_sort {

using namespace prim_test;
namespace prim = fulgur::primitives;

template <typename K, int kThreads, int N, bool kDescending, bool kKeysOnly>
FULGUR_KERNEL void k_block_sort(const K* keys_in, K* keys_out, int* values_out, int begin_bit, int end_bit) {
  using Sort = prim::BlockRadixSort<K, int, kThreads, N>;
  __shared__ typename Sort::TempStorage storage;
  const size_t base = static_cast<size_t>(blockIdx.x) * kThreads * N;
  K keys[N];
  int values[N];
  prim::load_blocked(keys_in + base, kThreads * N, keys, K(0));
  for (int i = 0; i < N; ++i) values[i] = static_cast<int>(threadIdx.x) * N + i;
  if (kKeysOnly) {
    if (kDescending)
      Sort(storage).sort_descending(keys, begin_bit, end_bit);
    else
      Sort(storage).sort(keys, begin_bit, end_bit);
  } else {
    if (kDescending)
      Sort(storage).sort_descending(keys, values, begin_bit, end_bit);
    else
      Sort(storage).sort(keys, values, begin_bit, end_bit);
    // The sort ends with a barrier: the storage can be reused at once (sorted again: a no-op on
    // the order, since the sort is stable and the keys are now ordered).
    if (kDescending)
      Sort(storage).sort_descending(keys, values, begin_bit, end_bit);
    else
      Sort(storage).sort(keys, values, begin_bit, end_bit);
    prim::store_blocked(values_out + base, kThreads * N, values);
  }
  prim::store_blocked(keys_out + base, kThreads * N, keys);
}

uint32_t key_bits(uint32_t k) { return k; }
uint32_t key_bits(int32_t k) { return static_cast<uint32_t>(k); }
uint32_t key_bits(float k) { return bits(k); }

// Ascending order on bits [b, e): written per key type from the definition.
bool sort_less(uint32_t a, uint32_t c, int b, int e) {
  const uint32_t mask = e - b >= 32 ? 0xffffffffu : ((1u << (e - b)) - 1u);
  return ((a >> b) & mask) < ((c >> b) & mask);
}
bool sort_less(int32_t a, int32_t c, int, int) { return a < c; }
bool sort_less(float a, float c, int, int) { return float_sort_less(a, c); }

template <typename K, int kThreads, int N, bool kDescending, bool kKeysOnly = false>
void check_sort(const std::vector<K>& keys, int begin_bit, int end_bit, const char* what) {
  constexpr int per_block = kThreads * N;
  const int blocks = static_cast<int>(keys.size()) / per_block;
  INFO(what << ": " << kThreads << "x" << N << (kDescending ? " descending" : " ascending")
            << (kKeysOnly ? " keys only" : "") << " bits [" << begin_bit << "," << end_bit << ")");
  DeviceBuffer<K> d_in(keys), d_keys(keys.size());
  DeviceBuffer<int> d_values(keys.size());
  d_keys.fill_bytes(0xFF);
  d_values.fill_bytes(0xFF);
  REQUIRE(launch(k_block_sort<K, kThreads, N, kDescending, kKeysOnly>, dim3(blocks), dim3(kThreads), 0, nullptr,
                 d_in.data(), d_keys.data(), d_values.data(), begin_bit, end_bit) == cudaSuccess);
  const auto out_keys = read(d_keys);
  const auto out_values = d_values.to_host();
  for (int b = 0; b < blocks; ++b) {
    std::vector<int> order(per_block);
    std::iota(order.begin(), order.end(), 0);
    const K* k = keys.data() + static_cast<size_t>(b) * per_block;
    std::stable_sort(order.begin(), order.end(), [&](int x, int y) {
      return kDescending ? sort_less(k[y], k[x], begin_bit, end_bit) : sort_less(k[x], k[y], begin_bit, end_bit);
    });
    int bad = 0;
    for (int r = 0; r < per_block && bad < 5; ++r) {
      const size_t o = static_cast<size_t>(b) * per_block + r;
      const bool key_ok = key_bits(out_keys[o]) == key_bits(k[order[r]]);
      const bool value_ok = kKeysOnly || out_values[o] == order[r];
      if (!key_ok || !value_ok) {
        ++bad;
        INFO("block " << b << " rank " << r << " expected position " << order[r]);
        CHECK(key_ok);
        CHECK(value_ok);
      }
    }
    CHECK(bad == 0);
  }
}

template <int kThreads, int N>
void check_float_patterns(fulgur_test::Rng& rng) {
  for (Pattern p : test_patterns()) {
    const auto keys = make_keys(p, 2 * kThreads * N, rng);
    check_sort<float, kThreads, N, false>(keys, 0, 32, pattern_name(p));
    check_sort<float, kThreads, N, true>(keys, 0, 32, pattern_name(p));
  }
}

}  // namespace prim_test_sort
using namespace prim_test_sort;  // kernels live in a named namespace: hidden visibility needs external linkage

TEST_CASE("block radix sort: uint32 keys, full and partial bit ranges, stability", "[primitives][sort]") {
  fulgur_test::Rng rng("block sort uint32");
  FULGUR_INFO_SEED(rng);
  const int n = 2 * 128 * 4;
  std::vector<uint32_t> random(n), few(n), equal(n, 0xdeadbeefu), asc(n), desc(n);
  for (int i = 0; i < n; ++i) {
    random[i] = static_cast<uint32_t>(rng.uniform_int(0, 0xffffffffll));
    few[i] = static_cast<uint32_t>(rng.uniform_int(0, 3)) << 30 | static_cast<uint32_t>(rng.uniform_int(0, 1));
    asc[i] = static_cast<uint32_t>(i) * 977u;
    desc[i] = 0xffffffffu - static_cast<uint32_t>(i) * 3u;
  }
  for (auto* keys : full_or_slow<std::vector<uint32_t>*>({&random, &few, &equal, &asc, &desc}, {&few})) {
    check_sort<uint32_t, 128, 4, false>(*keys, 0, 32, "uint32");
    check_sort<uint32_t, 128, 4, true>(*keys, 0, 32, "uint32");
  }
  // Partial ranges, including one not a multiple of the 4-bit digit.
  check_sort<uint32_t, 128, 4, false>(random, 4, 12, "uint32 partial");
  check_sort<uint32_t, 128, 4, false>(random, 3, 30, "uint32 partial");
  check_sort<uint32_t, 128, 4, true>(few, 30, 32, "uint32 partial");
  check_sort<uint32_t, 128, 4, false>(random, 0, 0, "uint32 empty range (identity)");
  check_sort<uint32_t, 128, 4, false, true>(random, 0, 32, "uint32");
  check_sort<uint32_t, 128, 4, true, true>(few, 0, 32, "uint32");
}

TEST_CASE("block radix sort: int32 keys", "[primitives][sort]") {
  fulgur_test::Rng rng("block sort int32");
  FULGUR_INFO_SEED(rng);
  std::vector<int32_t> keys(64 * 5);
  for (auto& k : keys)
    k = rng.uniform_int(0, 9) == 0 ? (rng.uniform_int(0, 1) ? INT32_MIN : INT32_MAX)
                                   : static_cast<int32_t>(rng.uniform_int(-20, 20));
  check_sort<int32_t, 64, 5, false>(keys, 0, 32, "int32");
  check_sort<int32_t, 64, 5, true>(keys, 0, 32, "int32");
}

TEST_CASE("block radix sort: float keys (NaN, inf, signed zeros) in every pattern", "[primitives][sort]") {
  fulgur_test::Rng rng("block sort float");
  FULGUR_INFO_SEED(rng);
  check_float_patterns<64, 3>(rng);
  check_float_patterns<256, 8>(rng);
}

TEST_CASE("float key maps: order, signed zeros, NaN, round trip", "[primitives][sort]") {
  namespace p = fulgur::primitives;
  fulgur_test::Rng rng("float key maps");
  FULGUR_INFO_SEED(rng);
  std::vector<float> v = {-kInf, -3.5f, -1e-40f, -0.0f, 0.0f, 1e-40f, 1.0f, 3.0e38f, kInf};
  for (int i = 0; i < 200; ++i) v.push_back(static_cast<float>(rng.normal(0, 100)));
  for (float a : v) {
    for (float b : v) {
      INFO(a << " vs " << b);
      CHECK((p::float_ordered_bits(a) < p::float_ordered_bits(b)) == (a < b));
      CHECK((p::float_rank_bits(a) < p::float_rank_bits(b)) == (a < b));
    }
    // Round trip is exact except -0.0, which comes back as +0.0.
    CHECK(bits(p::float_from_ordered_bits(p::float_ordered_bits(a))) == (a == 0.0f ? 0u : bits(a)));
  }
  for (float nan : {qnan(), -qnan(), neg_nan_payload(), pos_nan_payload()}) {
    CHECK(p::float_ordered_bits(nan) == 0xffffffffu);  // above +inf, all NaN equal
    CHECK(p::float_ordered_bits(nan) > p::float_ordered_bits(kInf));
    CHECK(p::float_rank_bits(nan) == p::float_rank_bits(-kInf));  // ranks with -inf
    CHECK(std::isnan(p::float_from_ordered_bits(p::float_ordered_bits(nan))));
  }
}
