// SPDX-License-Identifier: Apache-2.0
// fulgur::moe::permute against reference::moe_permute (a stable-sort oracle): every output
// bit-exact, on both paths (single block and multi block, which must also agree with each other),
// for E in {1, 8, 60, 257, 384, 1024, 4096}, k in {1, 2, 8, 22, 32}, T from 0 to 8192, tile
// M in {16, 64, 256}, masked capacities with and without overflow, 1..8 ranks. Independent
// invariants (written from the layout definitions, not from the reference): every (t, j) exactly
// once, segment bounds, stability, round trip, padding sentinels, tile ids, masked view, rank
// send counts. Determinism, batch-independent layout rules, workspace queries, bad input.
#include <functional>
#include <string>

#include "moe_test.hpp"

namespace {

using namespace moe_test;

enum class Dist { kDistinct, kRepeats, kHot };

// topk_ids as a router makes them (k distinct experts per token), or with repeats allowed, or
// with a hot expert taking most rows.
std::vector<int32_t> make_ids(int64_t T, int k, int E, Dist dist, fulgur_test::Rng& rng) {
  std::vector<int32_t> ids(static_cast<size_t>(T * k));
  std::vector<int> perm(E);
  for (int64_t t = 0; t < T; ++t) {
    if (dist == Dist::kDistinct) {
      std::iota(perm.begin(), perm.end(), 0);
      for (int j = 0; j < k; ++j) {  // partial Fisher-Yates
        const int s = static_cast<int>(rng.uniform_int(j, E - 1));
        std::swap(perm[j], perm[s]);
        ids[t * k + j] = perm[j];
      }
    } else {
      for (int j = 0; j < k; ++j) {
        const bool hot = dist == Dist::kHot && rng.uniform(0, 1) < 0.7;
        ids[t * k + j] = hot ? E / 2 : static_cast<int32_t>(rng.uniform_int(0, E - 1));
      }
    }
  }
  return ids;
}

struct Views {
  bool maps = true;
  int32_t tile_m = 0;           // 0: no tile view
  int32_t masked_capacity = 0;  // 0: no masked view
  bool overflow = true;
  int32_t ranks = 1;
  bool ep = false;  // rank_send_counts, token_in_rank, local_expert_of_row
};

struct Layout {
  cudaError_t err = cudaSuccess;
  std::vector<int64_t> offset;
  std::vector<int32_t> e2p, p2e, sorted, tile_ids, post, masked, masked_counts, overflow, send, local;
  std::vector<uint8_t> in_rank;
  bool operator==(const Layout& o) const {
    return offset == o.offset && e2p == o.e2p && p2e == o.p2e && sorted == o.sorted && tile_ids == o.tile_ids &&
           post == o.post && masked == o.masked && masked_counts == o.masked_counts && overflow == o.overflow &&
           send == o.send && local == o.local && in_rank == o.in_rank;
  }
};

struct Sizes {
  size_t rows, offsets, sorted, tiles, masked, E, R, in_rank;
};
Sizes sizes_of(int64_t T, int k, int E, const Views& v) {
  Sizes s{};
  s.rows = static_cast<size_t>(T * k);
  s.offsets = static_cast<size_t>(E) + 1;
  s.sorted = v.tile_m ? static_cast<size_t>(fm::tile_padded_capacity(T, k, E, v.tile_m)) : 0;
  s.tiles = v.tile_m ? static_cast<size_t>(fm::tile_count_capacity(T, k, E, v.tile_m)) : 0;
  s.masked = v.masked_capacity ? static_cast<size_t>(E) * v.masked_capacity : 0;
  s.E = static_cast<size_t>(E);
  s.R = static_cast<size_t>(v.ranks);
  s.in_rank = static_cast<size_t>(T) * v.ranks;
  return s;
}

fm::PermuteParams base_params(int64_t T, int k, int E, const Views& v) {
  fm::PermuteParams p;
  p.num_tokens = T;
  p.top_k = k;
  p.num_experts = E;
  p.tile_m = v.tile_m;
  p.masked_capacity = v.masked_capacity;
  p.num_ranks = v.ranks;
  return p;
}

Layout run_reference(const std::vector<int32_t>& ids, int64_t T, int k, int E, const Views& v) {
  const Sizes s = sizes_of(T, k, E, v);
  Layout L;
  L.offset.assign(s.offsets, -7);
  if (v.maps) L.e2p.assign(s.rows, -7), L.p2e.assign(s.rows, -7);
  if (v.tile_m) L.sorted.assign(s.sorted, -7), L.tile_ids.assign(s.tiles, -7), L.post.assign(1, -7);
  if (v.masked_capacity) {
    L.masked.assign(s.masked, -7), L.masked_counts.assign(s.E, -7);
    if (v.overflow) L.overflow.assign(1, -7);
  }
  if (v.ep) L.send.assign(s.R, -7), L.local.assign(s.rows, -7), L.in_rank.assign(s.in_rank, 7);
  fm::PermuteParams p = base_params(T, k, E, v);
  p.topk_ids = ids.data();
  p.expert_first_token_offset = L.offset.data();
  if (v.maps) p.expanded_to_permuted = L.e2p.data(), p.permuted_to_expanded = L.p2e.data();
  if (v.tile_m)
    p.sorted_token_ids = L.sorted.data(), p.tile_expert_ids = L.tile_ids.data(),
    p.num_tokens_post_padded = L.post.data();
  if (v.masked_capacity) {
    p.masked_expanded = L.masked.data(), p.masked_counts = L.masked_counts.data();
    if (v.overflow) p.masked_overflow = L.overflow.data();
  }
  if (v.ep)
    p.rank_send_counts = L.send.data(), p.local_expert_of_row = L.local.data(), p.token_in_rank = L.in_rank.data();
  L.err = ref::moe_permute(p).code();
  return L;
}

Layout run_kernel(const std::vector<int32_t>& ids, int64_t T, int k, int E, const Views& v, fm::PermutePath path,
                  size_t* ws_reported = nullptr) {
  const Sizes s = sizes_of(T, k, E, v);
  auto d_ids = upload(ids);
  auto d_off = poisoned<int64_t>(s.offsets);
  auto d_e2p = poisoned<int32_t>(v.maps ? s.rows : 0), d_p2e = poisoned<int32_t>(v.maps ? s.rows : 0);
  auto d_sorted = poisoned<int32_t>(s.sorted), d_tiles = poisoned<int32_t>(s.tiles);
  auto d_post = poisoned<int32_t>(v.tile_m ? 1 : 0);
  auto d_masked = poisoned<int32_t>(s.masked), d_mcounts = poisoned<int32_t>(v.masked_capacity ? s.E : 0);
  auto d_overflow = poisoned<int32_t>(v.masked_capacity && v.overflow ? 1 : 0);
  auto d_send = poisoned<int32_t>(v.ep ? s.R : 0), d_local = poisoned<int32_t>(v.ep ? s.rows : 0);
  auto d_in_rank = poisoned<uint8_t>(v.ep ? s.in_rank : 0);
  fm::PermuteParams p = base_params(T, k, E, v);
  p.topk_ids = d_ids.data();
  p.expert_first_token_offset = d_off.data();
  if (v.maps) p.expanded_to_permuted = d_e2p.data(), p.permuted_to_expanded = d_p2e.data();
  if (v.tile_m)
    p.sorted_token_ids = d_sorted.data(), p.tile_expert_ids = d_tiles.data(), p.num_tokens_post_padded = d_post.data();
  if (v.masked_capacity) {
    p.masked_expanded = d_masked.data(), p.masked_counts = d_mcounts.data();
    if (v.overflow) p.masked_overflow = d_overflow.data();
  }
  if (v.ep)
    p.rank_send_counts = d_send.data(), p.local_expert_of_row = d_local.data(), p.token_in_rank = d_in_rank.data();

  Layout L;
  size_t bytes = 0;
  L.err = fm::permute(nullptr, bytes, p, nullptr, path);
  if (L.err != cudaSuccess) return L;
  if (ws_reported) *ws_reported = bytes;
  CHECK(bytes > 0);
  DeviceBuffer<unsigned char> ws(bytes);
  ws.fill_bytes(0xFF);  // the workspace is never assumed zero
  L.err = fm::permute(ws.data(), bytes, p, nullptr, path);
  L.offset = download(d_off);
  L.e2p = download(d_e2p), L.p2e = download(d_p2e);
  L.sorted = download(d_sorted), L.tile_ids = download(d_tiles), L.post = download(d_post);
  L.masked = download(d_masked), L.masked_counts = download(d_mcounts), L.overflow = download(d_overflow);
  L.send = download(d_send), L.local = download(d_local), L.in_rank = download(d_in_rank);
  return L;
}

// Invariants of the layout written from its definition (params.hpp), independent of the reference.
void check_invariants(const Layout& L, const std::vector<int32_t>& ids, int64_t T, int k, int E, const Views& v) {
  const int64_t N = T * k;
  const int32_t sentinel = static_cast<int32_t>(N);
  REQUIRE(L.offset.size() == static_cast<size_t>(E) + 1);
  CHECK(L.offset[0] == 0);
  CHECK(L.offset[E] == N);
  for (int e = 0; e < E; ++e) REQUIRE(L.offset[e] <= L.offset[e + 1]);
  if (v.maps) {
    std::vector<int> seen(static_cast<size_t>(N), 0);
    for (int e = 0; e < E; ++e) {
      for (int64_t r = L.offset[e]; r < L.offset[e + 1]; ++r) {
        const int32_t i = L.p2e[r];
        REQUIRE(i >= 0);
        REQUIRE(i < N);
        ++seen[i];
        CHECK(ids[i] == e);                            // segment bounds
        if (r > L.offset[e]) CHECK(L.p2e[r - 1] < i);  // stable: increasing (t, j)
        CHECK(L.e2p[i] == r);                          // round trip
      }
    }
    for (int64_t i = 0; i < N; ++i) CHECK(seen[i] == 1);  // every (t, j) exactly once
  }
  if (v.tile_m) {
    const int M = v.tile_m;
    int64_t pos = 0;
    for (int e = 0; e < E; ++e) {
      const int64_t c = L.offset[e + 1] - L.offset[e];
      const int64_t padded = (c + M - 1) / M * M;
      for (int64_t s = 0; s < padded; ++s) {
        const int32_t want = s < c && v.maps ? L.p2e[L.offset[e] + s] : sentinel;
        if (s >= c || v.maps) CHECK(L.sorted[pos + s] == want);
        if (s < c) CHECK(ids[L.sorted[pos + s]] == e);
      }
      for (int64_t b = pos / M; b < (pos + padded) / M; ++b) CHECK(L.tile_ids[b] == e);
      pos += padded;
    }
    CHECK(L.post[0] == pos);
    CHECK(pos % M == 0);
    for (size_t s = static_cast<size_t>(pos); s < L.sorted.size(); ++s) CHECK(L.sorted[s] == sentinel);
    for (size_t b = static_cast<size_t>(pos / M); b < L.tile_ids.size(); ++b) CHECK(L.tile_ids[b] == -1);
  }
  if (v.masked_capacity) {
    const int64_t C = v.masked_capacity;
    int64_t dropped = 0;
    for (int e = 0; e < E; ++e) {
      const int64_t c = L.offset[e + 1] - L.offset[e];
      CHECK(L.masked_counts[e] == std::min(c, C));
      dropped += std::max<int64_t>(0, c - C);
      for (int64_t s = 0; s < C; ++s) {
        const int32_t got = L.masked[e * C + s];
        if (s < std::min(c, C)) {
          CHECK(ids[got] == e);
          if (s > 0) CHECK(L.masked[e * C + s - 1] < got);  // the first rows in (t, j) order
        } else {
          CHECK(got == sentinel);
        }
      }
    }
    if (v.overflow) CHECK(L.overflow[0] == dropped);
  }
  if (v.ep) {
    const int R = v.ranks, per = E / R;
    std::vector<int32_t> send(R, 0);
    for (int64_t t = 0; t < T; ++t) {
      for (int r = 0; r < R; ++r) {
        bool hit = false;
        for (int j = 0; j < k; ++j) hit = hit || ids[t * k + j] / per == r;
        CHECK(L.in_rank[t * R + r] == (hit ? 1 : 0));
        send[r] += hit;
      }
    }
    CHECK(L.send == send);
    if (v.maps)
      for (int64_t r = 0; r < N; ++r) CHECK(L.local[r] == ids[L.p2e[r]] % per);
  }
}

void check_case(int64_t T, int k, int E, const Views& v, Dist dist, const std::string& label) {
  fulgur_test::Rng rng("permute " + label + " " + std::to_string(T) + " " + std::to_string(k) + " " +
                       std::to_string(E));
  FULGUR_INFO_SEED(rng);
  INFO(label << ": T=" << T << " k=" << k << " E=" << E << " M=" << v.tile_m << " C=" << v.masked_capacity
             << " R=" << v.ranks);
  const auto ids = make_ids(T, k, E, dist, rng);
  const Layout want = run_reference(ids, T, k, E, v);
  REQUIRE(want.err == cudaSuccess);
  check_invariants(want, ids, T, k, E, v);  // the oracle itself obeys the definitions
  const Layout multi = run_kernel(ids, T, k, E, v, fm::PermutePath::kMultiBlock);
  REQUIRE(multi.err == cudaSuccess);
  CHECK(multi == want);
  check_invariants(multi, ids, T, k, E, v);
  if (T * k <= fm::detail::kPermuteChunk) {
    const Layout single = run_kernel(ids, T, k, E, v, fm::PermutePath::kSingleBlock);
    REQUIRE(single.err == cudaSuccess);
    CHECK(single == want);
    CHECK(single == multi);  // both paths, the same bits
  }
}

TEST_CASE("permute: both paths match the stable-sort oracle", "[moe][permute]") {
  const Views all{true, 64, 4, true, 4, true};
  // The sanitizer builds (one OS thread per CUDA thread) run a corner of the sweep.
  const std::vector<int> Es = kLight ? std::vector<int>{8, 257} : std::vector<int>{8, 60, 257, 384, 1024};
  const std::vector<int> ks = kLight ? std::vector<int>{1, 8} : std::vector<int>{1, 2, 8, 22, 32};
  const std::vector<int64_t> Ts = kLight ? std::vector<int64_t>{0, 3, 20} : std::vector<int64_t>{0, 1, 3, 64, 1000};
  int n = 0;
  for (int E : Es) {
    for (int k : ks) {
      if (k > E) continue;
      for (int64_t T : Ts) {
        if (kLight && n++ % 3 != 0) continue;
        Views v = all;
        v.ranks = E % 4 == 0 ? 4 : 1;
        v.masked_capacity = static_cast<int32_t>(std::max<int64_t>(1, T * k / E));  // some experts overflow
        check_case(T, k, E, v, Dist::kDistinct, "sweep");
      }
    }
  }
}

TEST_CASE("permute: large T, many chunks (multi-block path)", "[moe][permute]") {
  // DeepSeek-V3 shapes: E = 256, k = 8, tile 64; 8192 tokens are 64 chunks of 1024 rows.
  Views v{true, 64, 512, true, 8, true};
  check_case(sized(8192, 64), 8, 256, v, Dist::kDistinct, "deepseek");
  // A hot expert spanning many chunks; repeats inside a token.
  Views h{true, 128, 1024, true, 2, true};
  check_case(sized(3000, 30), 4, 60, h, Dist::kHot, "hot");
  check_case(sized(1500, 15), 6, 384, h, Dist::kRepeats, "repeats");
}

TEST_CASE("permute: views, tiles and ranks", "[moe][permute]") {
  for (int M : {16, 64, 256}) {
    for (int R : {1, 2, 8}) {
      if (kLight && !(M == 64 && R == 8)) continue;
      Views v{true, M, 0, false, R, true};
      check_case(37, 8, 64, v, Dist::kDistinct, "tile/rank");
    }
  }
  // Masked view alone, capacity large (no overflow) and 1 (everything but the first row drops).
  check_case(50, 4, 32, Views{false, 0, 1000, true, 1, false}, Dist::kDistinct, "masked large");
  check_case(50, 4, 32, Views{true, 0, 1, true, 1, false}, Dist::kHot, "masked 1");
  if (!kLight) check_case(50, 4, 32, Views{true, 0, 3, false, 1, false}, Dist::kHot, "masked no overflow ptr");
  // Only the offsets.
  if (!kLight) check_case(50, 2, 16, Views{false, 0, 0, false, 1, false}, Dist::kDistinct, "offsets only");
  // E = 1 (every row on one expert) and E = kMaxExperts.
  if (!kLight) check_case(33, 1, 1, Views{true, 16, 8, true, 1, true}, Dist::kRepeats, "one expert");
  check_case(sized(200, 10), 8, fm::kMaxExperts, Views{true, 16, 2, true, 16, true}, Dist::kDistinct, "E = 4096");
  // Exactly one full chunk (the single block's last segment closes without a padding row), and
  // one row more.
  check_case(512, 8, 128, Views{true, 32, 40, true, 4, true}, Dist::kDistinct, "full chunk");
  if (!kLight) check_case(4097, 1, 128, Views{true, 32, 40, true, 4, true}, Dist::kDistinct, "chunk + 1");
  // Multi-block chunk boundaries: exactly one chunk, one row more, k not dividing the chunk.
  check_case(fm::detail::kScatterChunk / 8, 8, 60, Views{true, 16, 8, true, 4, true}, Dist::kDistinct, "one chunk");
  check_case(fm::detail::kScatterChunk + 1, 1, 60, Views{true, 16, 8, true, 4, true}, Dist::kHot, "one chunk + 1");
  check_case(sized(700, 7), 3, 60, Views{true, 16, 8, true, 4, true}, Dist::kRepeats, "k = 3");
}

TEST_CASE("permute: deterministic, and auto picks a path that agrees", "[moe][permute]") {
  fulgur_test::Rng rng("permute determinism");
  FULGUR_INFO_SEED(rng);
  const Views v{true, 64, 16, true, 4, true};
  for (int64_t T : kLight ? std::vector<int64_t>{100} : std::vector<int64_t>{100, 2000}) {
    const auto ids = make_ids(T, 8, 128, Dist::kDistinct, rng);
    const Layout a = run_kernel(ids, T, 8, 128, v, fm::PermutePath::kAuto);
    const Layout b = run_kernel(ids, T, 8, 128, v, fm::PermutePath::kAuto);
    const Layout m = run_kernel(ids, T, 8, 128, v, fm::PermutePath::kMultiBlock);
    REQUIRE(a.err == cudaSuccess);
    CHECK(a == b);
    CHECK(a == m);
  }
}

TEST_CASE("permute: workspace query and bad input", "[moe][permute]") {
  const int64_t T = 40;
  const int k = 4, E = 32;
  fulgur_test::Rng rng("permute bad input");
  const auto ids = make_ids(T, k, E, Dist::kDistinct, rng);
  auto d_ids = upload(ids);
  auto d_off = poisoned<int64_t>(E + 1);
  auto d_sorted = poisoned<int32_t>(static_cast<size_t>(fm::tile_padded_capacity(T, k, E, 16)));
  auto d_tiles = poisoned<int32_t>(static_cast<size_t>(fm::tile_count_capacity(T, k, E, 16)));
  auto d_post = poisoned<int32_t>(1);
  auto d_masked = poisoned<int32_t>(E * 8);
  auto d_mc = poisoned<int32_t>(E);
  auto base = [&] {
    fm::PermuteParams p;
    p.topk_ids = d_ids.data();
    p.num_tokens = T;
    p.top_k = k;
    p.num_experts = E;
    p.expert_first_token_offset = d_off.data();
    p.tile_m = 16;
    p.sorted_token_ids = d_sorted.data();
    p.tile_expert_ids = d_tiles.data();
    p.num_tokens_post_padded = d_post.data();
    p.masked_capacity = 8;
    p.masked_expanded = d_masked.data();
    p.masked_counts = d_mc.data();
    return p;
  };
  // Workspace: a query writes the size and nothing else; both paths report a nonzero size.
  for (auto path : {fm::PermutePath::kAuto, fm::PermutePath::kSingleBlock, fm::PermutePath::kMultiBlock}) {
    size_t bytes = 0;
    CHECK(fm::permute(nullptr, bytes, base(), nullptr, path) == cudaSuccess);
    CHECK(bytes > 0);
  }
  struct Bad {
    const char* what;
    std::function<void(fm::PermuteParams&)> edit;
  };
  const std::vector<Bad> cases = {
      {"null offsets", [](fm::PermuteParams& p) { p.expert_first_token_offset = nullptr; }},
      {"null ids", [](fm::PermuteParams& p) { p.topk_ids = nullptr; }},
      {"k = 0", [](fm::PermuteParams& p) { p.top_k = 0; }},
      {"k = 33", [](fm::PermuteParams& p) { p.top_k = 33; }},
      {"E = 0", [](fm::PermuteParams& p) { p.num_experts = 0; }},
      {"E = 4097", [](fm::PermuteParams& p) { p.num_experts = 4097; }},
      {"T < 0", [](fm::PermuteParams& p) { p.num_tokens = -1; }},
      {"T*k overflows int32", [](fm::PermuteParams& p) { p.num_tokens = int64_t{1} << 30; }},
      {"tile view half set", [](fm::PermuteParams& p) { p.tile_expert_ids = nullptr; }},
      {"tile_m 8", [](fm::PermuteParams& p) { p.tile_m = 8; }},
      {"tile_m 24", [](fm::PermuteParams& p) { p.tile_m = 24; }},
      {"tile_m 512", [](fm::PermuteParams& p) { p.tile_m = 512; }},
      {"masked half set", [](fm::PermuteParams& p) { p.masked_counts = nullptr; }},
      {"masked capacity 0", [](fm::PermuteParams& p) { p.masked_capacity = 0; }},
      {"ranks do not divide E", [](fm::PermuteParams& p) { p.num_ranks = 3; }},
      {"ranks 0", [](fm::PermuteParams& p) { p.num_ranks = 0; }},
      {"single path too large", [](fm::PermuteParams& p) { p.num_tokens = 2000; }},
  };
  for (const Bad& b : cases) {
    INFO(b.what);
    fm::PermuteParams p = base();
    b.edit(p);
    const auto path =
        std::string(b.what) == "single path too large" ? fm::PermutePath::kSingleBlock : fm::PermutePath::kAuto;
    size_t bytes = 1 << 20;
    DeviceBuffer<unsigned char> ws(bytes);
    CHECK(fm::permute(ws.data(), bytes, p, nullptr, path) == cudaErrorInvalidValue);
  }
  // The size query reads only T, k, E and R (and the path), and rejects bad values of those with
  // the launch's code, workspace_bytes untouched; pointers and views are the launch's to check.
  for (const Bad& b : cases) {
    const std::string what = b.what;
    const bool sizes = what == "k = 0" || what == "k = 33" || what == "E = 0" || what == "E = 4097" ||
                       what == "T < 0" || what == "T*k overflows int32" || what == "ranks do not divide E" ||
                       what == "ranks 0" || what == "single path too large";
    if (!sizes) continue;
    INFO("size query: " << what);
    fm::PermuteParams p = base();
    b.edit(p);
    const auto path = what == "single path too large" ? fm::PermutePath::kSingleBlock : fm::PermutePath::kAuto;
    size_t bytes = 12345;
    CHECK(fm::permute(nullptr, bytes, p, nullptr, path) == cudaErrorInvalidValue);
    CHECK(bytes == 12345);
  }
  {
    size_t bytes = 12345;
    CHECK(fm::permute(nullptr, bytes, base(), nullptr, static_cast<fm::PermutePath>(7)) == cudaErrorInvalidValue);
    CHECK(bytes == 12345);
    fm::PermuteParams sizes_only;  // no pointer set: the query still answers
    sizes_only.num_tokens = T;
    sizes_only.top_k = k;
    sizes_only.num_experts = E;
    for (auto path : {fm::PermutePath::kAuto, fm::PermutePath::kSingleBlock, fm::PermutePath::kMultiBlock}) {
      size_t want = 0, got = 0;
      REQUIRE(fm::permute(nullptr, want, base(), nullptr, path) == cudaSuccess);
      CHECK(fm::permute(nullptr, got, sizes_only, nullptr, path) == cudaSuccess);
      CHECK(got == want);
    }
  }
  // Too small a workspace.
  {
    size_t bytes = 0;
    REQUIRE(fm::permute(nullptr, bytes, base(), nullptr, fm::PermutePath::kMultiBlock) == cudaSuccess);
    DeviceBuffer<unsigned char> ws(bytes);
    size_t less = bytes - 1;
    CHECK(fm::permute(ws.data(), less, base(), nullptr, fm::PermutePath::kMultiBlock) == cudaErrorInvalidValue);
  }
  // A workspace that is not 16-byte aligned, on either path.
  for (const fm::PermutePath path : {fm::PermutePath::kSingleBlock, fm::PermutePath::kMultiBlock}) {
    size_t bytes = 0;
    REQUIRE(fm::permute(nullptr, bytes, base(), nullptr, path) == cudaSuccess);
    DeviceBuffer<unsigned char> ws(bytes + 16);
    CHECK(fm::permute(ws.data() + 4, bytes, base(), nullptr, path) == cudaErrorInvalidValue);
  }
  for (int64_t v : download(d_off)) CHECK(v == -1);
  for (int32_t v : download(d_sorted)) CHECK(v == -1);
  for (int32_t v : download(d_tiles)) CHECK(v == -1);
  for (int32_t v : download(d_masked)) CHECK(v == -1);
  for (int32_t v : download(d_mc)) CHECK(v == -1);
  CHECK(download(d_post)[0] == -1);
}

}  // namespace
