// SPDX-License-Identifier: Apache-2.0
// Warp and block top-k (fulgur/primitives/topk.cuh) against std::stable_sort of the indices with
// the spec's order (larger key first, NaN as -inf, lower index wins ties), on random and
// adversarial keys: ties, all equal, NaN/inf/signed-zero mixes, sorted both ways, tie-free
// permutations; n not a multiple of the warp/block, n < k, k = 0, 1, 32, n = 1. The kept set of
// the block select is also checked against a std::nth_element threshold.
#include <set>

#include "fulgur/primitives/topk.cuh"
#include "primitives_test.hpp"

namespace prim_test_topk {

using namespace prim_test;
namespace prim = fulgur::primitives;

// Every row in one launch: row r has n_r candidates at keys + r * ld.
struct Rows {
  std::vector<float> keys;
  std::vector<int> n;
  std::vector<Pattern> pattern;
  int ld = 0;
};

Rows make_rows(const std::vector<int>& sizes, int ld, fulgur_test::Rng& rng) {
  Rows rows;
  rows.ld = ld;
  for (int n : sizes) {
    for (Pattern p : test_patterns()) {
      auto k = make_keys(p, n, rng);
      k.resize(static_cast<size_t>(ld), 1e30f);  // past n: keys that would win if not ignored
      rows.keys.insert(rows.keys.end(), k.begin(), k.end());
      rows.n.push_back(n);
      rows.pattern.push_back(p);
    }
  }
  return rows;
}

// The key as warp_topk reports it: NaN as -inf, -0.0 as +0.0.
uint32_t ranked_key_bits(float x) {
  if (std::isnan(x)) return bits(-kInf);
  if (x == 0.0f) return 0u;
  return bits(x);
}

// ---- warp top-k -------------------------------------------------------------------------------
template <int W, int kItems, bool kIndexed>
FULGUR_KERNEL void k_warp_topk(const float* keys, const int* row_n, int rows, int ld, int k, float* out_keys,
                               int* out_idx) {
  const int t = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  const int row = t / W, lane = t % W;
  // Groups past the last row still take part in the (full-mask) collectives, with no candidates.
  const int n = row < rows ? row_n[row] : 0;
  const float* src = keys + static_cast<size_t>(row < rows ? row : 0) * ld;
  prim::KeyIndex r;
  if (kIndexed) {
    // Blocked instead of strided: lane l holds candidates l * kItems + i.
    float items[kItems];
    int idx[kItems];
    for (int i = 0; i < kItems; ++i) {
      const int j = lane * kItems + i;
      items[i] = src[j];  // past n: the row's 1e30 padding, which must be ignored
      idx[i] = j < n ? j : -1;
    }
    r = prim::warp_topk_indexed<W>(items, idx, k);
  } else {
    float items[kItems];
    prim::load_warp_strided<W>(src, ld, items, 0.0f);  // the whole row: items past n must be ignored
    r = prim::warp_topk<W>(items, n, k);
  }
  if (row < rows && lane < k) {
    out_keys[static_cast<size_t>(row) * k + lane] = r.key;
    out_idx[static_cast<size_t>(row) * k + lane] = r.index;
  }
}

template <int W, int kItems, bool kIndexed = false>
void check_warp_topk(const std::vector<int>& sizes, const std::vector<int>& ks, const char* name) {
  fulgur_test::Rng rng(std::string("warp topk ") + name);
  FULGUR_INFO_SEED(rng);
  const Rows rows = make_rows(sizes, W * kItems, rng);
  const int num_rows = static_cast<int>(rows.n.size());
  const int threads = 128, blocks = (num_rows * W + threads - 1) / threads;
  DeviceBuffer<float> d_keys(rows.keys);
  DeviceBuffer<int> d_n(rows.n);
  for (int k : ks) {
    INFO(name << " k " << k);
    DeviceBuffer<float> d_out_keys(static_cast<size_t>(num_rows) * k);
    DeviceBuffer<int> d_out_idx(static_cast<size_t>(num_rows) * k);
    d_out_keys.fill_bytes(0xFF);
    d_out_idx.fill_bytes(0xFF);
    REQUIRE(launch(k_warp_topk<W, kItems, kIndexed>, dim3(blocks), dim3(threads), 0, nullptr, d_keys.data(), d_n.data(),
                   num_rows, rows.ld, k, d_out_keys.data(), d_out_idx.data()) == cudaSuccess);
    const auto out_keys = read(d_out_keys);
    const auto out_idx = d_out_idx.to_host();
    for (int row = 0; row < num_rows; ++row) {
      const int n = rows.n[row];
      const float* keys = rows.keys.data() + static_cast<size_t>(row) * rows.ld;
      const auto order = rank_order(keys, n);
      INFO("row " << row << " n " << n << " pattern " << pattern_name(rows.pattern[row]));
      for (int r = 0; r < k; ++r) {
        const size_t o = static_cast<size_t>(row) * k + r;
        INFO("rank " << r);
        if (r < n) {
          REQUIRE(out_idx[o] == order[r]);
          CHECK(bits(out_keys[o]) == ranked_key_bits(keys[order[r]]));
        } else {  // fewer candidates than k: empty slots
          CHECK(out_idx[o] == -1);
          CHECK(out_keys[o] == -kInf);
        }
      }
    }
  }
}

// ---- block top-k ------------------------------------------------------------------------------
template <int kThreads, int kItems>
FULGUR_KERNEL void k_block_topk(const float* keys, const int* row_n, int ld, int k, int stride, float* out_keys,
                                int* out_idx, int* out_sel, int* out_kept) {
  using TopK = prim::BlockTopK<kThreads, kItems>;
  __shared__ typename TopK::TempStorage storage;
  const int row = static_cast<int>(blockIdx.x), n = row_n[row];
  float items[kItems];
  // The whole row, 1e30 padding past n included: the primitive must ignore items past n.
  prim::load_blocked(keys + static_cast<size_t>(row) * ld, ld, items, 0.0f);
  const size_t o = static_cast<size_t>(row) * stride;
  // Both calls end with a barrier, so they share the storage without one in between.
  const int kept = TopK(storage).topk(items, n, k, out_keys + o, out_idx + o);
  const int kept_sel = TopK(storage).select_indices(items, n, k, out_sel + o);
  if (threadIdx.x == 0) {
    out_kept[2 * row] = kept;
    out_kept[2 * row + 1] = kept_sel;
  }
}

template <int kThreads, int kItems>
void check_block_topk(const std::vector<int>& sizes, const std::vector<int>& ks, const char* name) {
  fulgur_test::Rng rng(std::string("block topk ") + name);
  FULGUR_INFO_SEED(rng);
  const Rows rows = make_rows(sizes, kThreads * kItems, rng);
  const int num_rows = static_cast<int>(rows.n.size());
  DeviceBuffer<float> d_keys(rows.keys);
  DeviceBuffer<int> d_n(rows.n);
  for (int k : ks) {
    INFO(name << " k " << k);
    const int stride = std::max(k, 0) + 1;  // one guard slot past k: must stay untouched
    DeviceBuffer<float> d_out_keys(static_cast<size_t>(num_rows) * stride);
    DeviceBuffer<int> d_out_idx(static_cast<size_t>(num_rows) * stride), d_sel(d_out_idx.size()), d_kept(2 * num_rows);
    d_out_keys.fill_bytes(0xFF);
    d_out_idx.fill_bytes(0xFF);
    d_sel.fill_bytes(0xFF);
    d_kept.fill_bytes(0xFF);
    REQUIRE(launch(k_block_topk<kThreads, kItems>, dim3(num_rows), dim3(kThreads), 0, nullptr, d_keys.data(),
                   d_n.data(), rows.ld, k, stride, d_out_keys.data(), d_out_idx.data(), d_sel.data(),
                   d_kept.data()) == cudaSuccess);
    const auto out_keys = read(d_out_keys);
    const auto out_idx = d_out_idx.to_host(), sel = d_sel.to_host(), kept_out = d_kept.to_host();
    for (int row = 0; row < num_rows; ++row) {
      const int n = rows.n[row];
      const float* keys = rows.keys.data() + static_cast<size_t>(row) * rows.ld;
      const auto order = rank_order(keys, n);
      const int kept = std::max(0, std::min(k, n));
      INFO("row " << row << " n " << n << " pattern " << pattern_name(rows.pattern[row]));
      CHECK(kept_out[2 * row] == kept);
      CHECK(kept_out[2 * row + 1] == kept);
      std::vector<int> expected_sel(order.begin(), order.begin() + kept);
      std::sort(expected_sel.begin(), expected_sel.end());
      int bad = 0;
      for (int r = 0; r < stride && bad < 5; ++r) {
        const size_t o = static_cast<size_t>(row) * stride + r;
        const bool ok =
            r < kept ? out_idx[o] == order[r] && bits(out_keys[o]) == bits(keys[order[r]]) && sel[o] == expected_sel[r]
                     : out_idx[o] == -1 && bits(out_keys[o]) == 0xffffffffu && sel[o] == -1;  // untouched
        if (!ok) {
          ++bad;
          INFO("rank " << r << " got index " << out_idx[o] << " selected " << sel[o] << " expected "
                       << (r < kept ? order[r] : -1) << " / " << (r < kept ? expected_sel[r] : -1));
          CHECK(ok);
        }
      }
      CHECK(bad == 0);
      // Independent threshold check (std::nth_element): every kept key ranks at or above the
      // kept-th largest value, every dropped key at or below it.
      if (kept > 0 && kept < n) {
        std::vector<float> v(static_cast<size_t>(n));
        for (int i = 0; i < n; ++i) v[i] = rank_value(keys[i]);
        std::nth_element(v.begin(), v.begin() + (kept - 1), v.end(), std::greater<float>());
        const float threshold = v[kept - 1];
        std::set<int> chosen(sel.begin() + static_cast<ptrdiff_t>(row) * stride,
                             sel.begin() + static_cast<ptrdiff_t>(row) * stride + kept);
        CHECK(static_cast<int>(chosen.size()) == kept);
        for (int i = 0; i < n; ++i) {
          if (chosen.count(i))
            CHECK(rank_value(keys[i]) >= threshold);
          else
            CHECK(rank_value(keys[i]) <= threshold);
        }
      }
    }
  }
}

}  // namespace prim_test_topk
using namespace prim_test_topk;  // kernels live in a named namespace: hidden visibility needs external linkage

TEST_CASE("warp top-k: full warp, up to 1024 candidates, k 1..32", "[primitives][topk]") {
  check_warp_topk<32, 32>(full_or_slow<int>({1, 7, 31, 32, 33, 60, 257, 384, 1000, 1024}, {7, 257, 1024}),
                          full_or_slow<int>({1, 2, 8, 22, 32}, {2, 32}), "w32x32");
}

TEST_CASE("warp top-k: sub-warp groups (8 lanes, small expert counts)", "[primitives][topk]") {
  check_warp_topk<8, 4>({1, 5, 8, 9, 31, 32}, {1, 2, 8}, "w8x4");
  check_warp_topk<16, 3>({1, 16, 17, 48}, {1, 4, 16}, "w16x3");
}

TEST_CASE("warp top-k with explicit indices (blocked arrangement, empty items)", "[primitives][topk]") {
  check_warp_topk<32, 8, true>({1, 33, 160, 255, 256}, {1, 8, 32}, "indexed w32x8");
}

TEST_CASE("block top-k and select: up to 8192 candidates, large k", "[primitives][topk]") {
  check_block_topk<256, 32>(full_or_slow<int>({1, 255, 257, 2880, 3000, 8192}, {257, 8192}),
                            full_or_slow<int>({0, 1, 32, 288, 1500, 9000}, {0, 288, 9000}), "256x32");
}

TEST_CASE("block top-k and select: 128 threads x 5 (LLaVA's 576 image tokens)", "[primitives][topk]") {
  check_block_topk<128, 5>(full_or_slow<int>({1, 100, 576, 640}, {100, 576}),
                           full_or_slow<int>({1, 72, 144, 288, 576, 700}, {72, 700}), "128x5");
}
