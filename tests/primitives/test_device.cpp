// SPDX-License-Identifier: Apache-2.0
// Device-wide wrappers (fulgur/primitives/device.cuh): CUB on the GPU, Thrust's host backend under
// emulation. Checked against std::stable_sort / std::exclusive_scan-style loops / a filter loop,
// and for the launcher contract: size query, too-small workspace, empty input.
#include "fulgur/primitives/device.cuh"
#include "primitives_test.hpp"

namespace prim_test_device {

using namespace prim_test;
namespace prim = fulgur::primitives;

// CUB's float order (a radix order on sign-magnitude bits, -0.0 mapped to +0.0), written from
// that description: numbers ascending with -0.0 == +0.0; a NaN with the sign bit set before
// everything, larger payload first; one without after everything, larger payload last.
int float_class(float x) { return std::isnan(x) ? (std::signbit(x) ? 0 : 2) : 1; }
bool cub_float_less(float a, float b) {
  const int ca = float_class(a), cb = float_class(b);
  if (ca != cb) return ca < cb;
  if (ca == 0) return bits(a) > bits(b);
  if (ca == 2) return bits(a) < bits(b);
  return a < b;
}

template <typename K, typename Less>
void check_sort_pairs(const std::vector<K>& keys, Less less, int begin_bit, int end_bit, const char* what) {
  INFO(what << " n " << keys.size() << " bits [" << begin_bit << "," << end_bit << ")");
  const int64_t n = static_cast<int64_t>(keys.size());
  std::vector<int> values(keys.size());
  std::iota(values.begin(), values.end(), 0);
  DeviceBuffer<K> d_keys_in(keys), d_keys_out(keys.size() + 1);
  DeviceBuffer<int> d_values_in(values), d_values_out(keys.size() + 1);
  d_keys_out.fill_bytes(0xFF);
  d_values_out.fill_bytes(0xFF);
  size_t bytes = 0;
  REQUIRE(prim::device_sort_pairs<K, int>(nullptr, bytes, nullptr, nullptr, nullptr, nullptr, n, nullptr, begin_bit,
                                          end_bit) == cudaSuccess);
  REQUIRE(bytes > 0);
  DeviceBuffer<unsigned char> ws(bytes);
  if (bytes > 1) {  // one byte short: rejected, outputs untouched
    size_t short_bytes = bytes - 1;
    CHECK(prim::device_sort_pairs(ws.data(), short_bytes, d_keys_in.data(), d_keys_out.data(), d_values_in.data(),
                                  d_values_out.data(), n, nullptr, begin_bit, end_bit) == cudaErrorInvalidValue);
    const auto untouched = read(d_values_out);
    CHECK(std::all_of(untouched.begin(), untouched.end(), [](int v) { return v == -1; }));
  }
  REQUIRE(prim::device_sort_pairs(ws.data(), bytes, d_keys_in.data(), d_keys_out.data(), d_values_in.data(),
                                  d_values_out.data(), n, nullptr, begin_bit, end_bit) == cudaSuccess);
  const auto out_keys = read(d_keys_out);
  const auto out_values = d_values_out.to_host();
  std::vector<int> order(values);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return less(keys[a], keys[b]); });
  int bad = 0;
  for (size_t i = 0; i < keys.size() && bad < 5; ++i) {
    const bool ok = out_values[i] == order[i] && std::memcmp(&out_keys[i], &keys[order[i]], sizeof(K)) == 0;
    if (!ok) {
      ++bad;
      INFO("rank " << i << " got " << out_values[i] << " expected " << order[i]);
      CHECK(ok);
    }
  }
  CHECK(bad == 0);
  CHECK(out_values[keys.size()] == -1);  // nothing written past n
}

}  // namespace prim_test_device
using namespace prim_test_device;  // kernels live in a named namespace: hidden visibility needs external linkage

TEST_CASE("device_sort_pairs: uint32, int64 and float keys, bit ranges", "[primitives][device]") {
  fulgur_test::Rng rng("device sort pairs");
  FULGUR_INFO_SEED(rng);
  for (int n : {1, 1000, 5000}) {
    std::vector<uint32_t> u(static_cast<size_t>(n));
    for (auto& x : u) x = static_cast<uint32_t>(rng.uniform_int(0, 0xffffffffll)) & (n == 5000 ? 0xff00000fu : ~0u);
    check_sort_pairs(
        u, [](uint32_t a, uint32_t b) { return a < b; }, 0, 32, "uint32");
    check_sort_pairs(
        u, [](uint32_t a, uint32_t b) { return (a >> 8 & 0xffffu) < (b >> 8 & 0xffffu); }, 8, 24, "uint32 bits 8..24");
    std::vector<int64_t> s(static_cast<size_t>(n));
    for (auto& x : s) x = rng.uniform_int(-5, 5) * (int64_t{1} << 40) + rng.uniform_int(-2, 2);
    check_sort_pairs(
        s, [](int64_t a, int64_t b) { return a < b; }, 0, 64, "int64");
    for (Pattern p : test_patterns()) check_sort_pairs(make_keys(p, n, rng), cub_float_less, 0, 32, pattern_name(p));
  }
}

TEST_CASE("device_exclusive_sum: int64 offsets, in place, empty", "[primitives][device]") {
  fulgur_test::Rng rng("device exclusive sum");
  FULGUR_INFO_SEED(rng);
  for (int n : {1, 257, 10000}) {
    std::vector<int64_t> in(static_cast<size_t>(n));
    for (auto& x : in) x = rng.uniform_int(0, 1ll << 33);  // the total exceeds 2^32
    DeviceBuffer<int64_t> d_in(in), d_out(in.size());
    d_out.fill_bytes(0xFF);
    size_t bytes = 0;
    REQUIRE(prim::device_exclusive_sum<int64_t>(nullptr, bytes, nullptr, nullptr, n, nullptr) == cudaSuccess);
    REQUIRE(bytes > 0);
    DeviceBuffer<unsigned char> ws(bytes);
    REQUIRE(prim::device_exclusive_sum(ws.data(), bytes, d_in.data(), d_out.data(), n, nullptr) == cudaSuccess);
    const auto out = read(d_out);
    int64_t run = 0;
    for (int i = 0; i < n; ++i) {
      REQUIRE(out[i] == run);
      run += in[i];
    }
    // In place on int flags.
    std::vector<int> flags(static_cast<size_t>(n));
    for (auto& f : flags) f = static_cast<int>(rng.uniform_int(0, 1));
    DeviceBuffer<int> d_flags(flags);
    size_t fbytes = 0;
    REQUIRE(prim::device_exclusive_sum<int>(nullptr, fbytes, nullptr, nullptr, n, nullptr) == cudaSuccess);
    DeviceBuffer<unsigned char> fws(fbytes);
    REQUIRE(prim::device_exclusive_sum(fws.data(), fbytes, d_flags.data(), d_flags.data(), n, nullptr) == cudaSuccess);
    const auto scanned = read(d_flags);
    int frun = 0;
    for (int i = 0; i < n; ++i) {
      REQUIRE(scanned[i] == frun);
      frun += flags[i];
    }
  }
  size_t bytes = 0;
  REQUIRE(prim::device_exclusive_sum<int>(nullptr, bytes, nullptr, nullptr, 0, nullptr) == cudaSuccess);
  DeviceBuffer<unsigned char> ws(bytes);
  CHECK(prim::device_exclusive_sum<int>(ws.data(), bytes, nullptr, nullptr, 0, nullptr) == cudaSuccess);
  CHECK(prim::device_exclusive_sum<int>(ws.data(), bytes, nullptr, nullptr, -1, nullptr) == cudaErrorInvalidValue);
}

TEST_CASE("device_select_flagged: order kept, count written", "[primitives][device]") {
  fulgur_test::Rng rng("device select flagged");
  FULGUR_INFO_SEED(rng);
  for (int n : {1, 300, 7000}) {
    for (int density : {0, 1, 2}) {  // none, about a third, all
      std::vector<int> in(static_cast<size_t>(n));
      std::vector<unsigned char> flags(in.size());
      for (int i = 0; i < n; ++i) {
        in[i] = static_cast<int>(rng.uniform_int(-1000000, 1000000));
        flags[i] = density == 0 ? 0 : density == 2 ? 1 : (rng.uniform_int(0, 2) == 0 ? 3 : 0);
      }
      DeviceBuffer<int> d_in(in), d_out(in.size());
      DeviceBuffer<unsigned char> d_flags(flags);
      DeviceBuffer<int64_t> d_count(1);
      d_out.fill_bytes(0xFF);
      d_count.fill_bytes(0xFF);
      size_t bytes = 0;
      REQUIRE(prim::device_select_flagged(nullptr, bytes, d_in.data(), d_flags.data(), d_out.data(), d_count.data(), n,
                                          nullptr) == cudaSuccess);
      REQUIRE(bytes > 0);
      DeviceBuffer<unsigned char> ws(bytes);
      REQUIRE(prim::device_select_flagged(ws.data(), bytes, d_in.data(), d_flags.data(), d_out.data(), d_count.data(),
                                          n, nullptr) == cudaSuccess);
      const auto out = read(d_out);
      const auto count = d_count.to_host();
      std::vector<int> expected;
      for (int i = 0; i < n; ++i)
        if (flags[i]) expected.push_back(in[i]);
      INFO("n " << n << " density " << density);
      REQUIRE(count[0] == static_cast<int64_t>(expected.size()));
      for (size_t i = 0; i < expected.size(); ++i) REQUIRE(out[i] == expected[i]);
      for (size_t i = expected.size(); i < out.size(); ++i) REQUIRE(out[i] == -1);  // untouched
    }
  }
}
