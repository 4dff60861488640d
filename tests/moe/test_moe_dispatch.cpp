// SPDX-License-Identifier: Apache-2.0
// fulgur::moe::gather and fulgur::moe::combine against reference::moe_gather / moe_combine (fp64),
// every dtype pair, vector (16-byte) and element paths, the row maps of every permute view
// (compact, tile-padded with sentinels, masked), scaling by bf16 / f32 weights, dropped rows,
// residual with its own dtype, scale and per-token scale, in place. Tolerances are derived from
// fp32 rounding next to each check. Determinism, batch invariance, bad input, and one
// route -> permute -> gather -> expert -> combine pass against the references end to end.
#include <algorithm>
#include <functional>
#include <string>

#include "moe_test.hpp"

namespace {

using namespace moe_test;

const DType kDtypes[] = {DType::kF32, DType::kF16, DType::kBF16};

Tensor random_tensor(DType dt, size_t n, fulgur_test::Rng& rng, double scale = 1.0) {
  Tensor t(dt, n);
  for (size_t i = 0; i < n; ++i) t.set(i, rng.normal(0.0, scale));
  return t;
}

std::vector<int32_t> random_ids(int64_t T, int k, int E, fulgur_test::Rng& rng) {
  std::vector<int32_t> ids(static_cast<size_t>(T * k));
  std::vector<int> perm(E);
  for (int64_t t = 0; t < T; ++t) {
    std::iota(perm.begin(), perm.end(), 0);
    for (int j = 0; j < k; ++j) {
      std::swap(perm[j], perm[static_cast<size_t>(rng.uniform_int(j, E - 1))]);
      ids[t * k + j] = perm[j];
    }
  }
  return ids;
}

// Row maps of the three views, from the reference permutation of random ids.
struct RowMaps {
  std::vector<int32_t> compact, tiled, masked, e2p;
};
RowMaps row_maps(int64_t T, int k, int E, fulgur_test::Rng& rng) {
  const auto ids = random_ids(T, k, E, rng);
  RowMaps m;
  std::vector<int64_t> off(E + 1);
  m.compact.resize(static_cast<size_t>(T * k));
  m.e2p.resize(static_cast<size_t>(T * k));
  m.tiled.resize(static_cast<size_t>(fm::tile_padded_capacity(T, k, E, 16)));
  std::vector<int32_t> tiles(static_cast<size_t>(fm::tile_count_capacity(T, k, E, 16))), post(1), counts(E);
  m.masked.resize(static_cast<size_t>(E) * 3);
  fm::PermuteParams p;
  p.topk_ids = ids.data();
  p.num_tokens = T;
  p.top_k = k;
  p.num_experts = E;
  p.expert_first_token_offset = off.data();
  p.permuted_to_expanded = m.compact.data();
  p.expanded_to_permuted = m.e2p.data();
  p.tile_m = 16;
  p.sorted_token_ids = m.tiled.data();
  p.tile_expert_ids = tiles.data();
  p.num_tokens_post_padded = post.data();
  p.masked_capacity = 3;
  p.masked_expanded = m.masked.data();
  p.masked_counts = counts.data();
  REQUIRE(ref::moe_permute(p).is_ok());
  return m;
}

// ---- gather ---------------------------------------------------------------------------------------

struct GatherCase {
  DType in = DType::kBF16, out = DType::kBF16, wdt = DType::kF32;
  int64_t T = 0, H = 0, in_pad = 0, out_pad = 0;
  int k = 2;
  bool scale = false;
  bool misalign = false;  // shift both tensors by one element: forces the element path
  // Token-major path: expanded_to_row (null: the row path), with or without row_map beside it.
  const std::vector<int32_t>* e2r = nullptr;
  bool row_map_too = true;
};

struct GatherRun {
  cudaError_t err;
  Tensor out;
};

GatherRun run_gather(const GatherCase& c, const Tensor& hidden, const Tensor& weights,
                     const std::vector<int32_t>& row_map, bool kernel) {
  const int64_t rows = static_cast<int64_t>(row_map.size());
  const int64_t in_stride = c.H + c.in_pad, out_stride = c.H + c.out_pad;
  const int64_t shift = c.misalign ? 1 : 0;
  fm::GatherParams p;
  p.hidden_dtype = c.in;
  p.hidden_row_stride = in_stride;
  p.num_tokens = c.T;
  p.top_k = c.k;
  p.hidden_size = c.H;
  p.num_rows = rows;
  p.scale_by_weight = c.scale;
  p.weights_dtype = c.wdt;
  p.out_dtype = c.out;
  p.out_row_stride = out_stride;
  const size_t out_n = static_cast<size_t>(rows * out_stride + shift);
  if (!kernel) {
    Tensor out(c.out, out_n);
    out.poison();
    p.hidden = hidden.bytes.data() + shift * fulgur::dtype_size(c.in);  // as the kernel reads it
    p.row_map = c.e2r == nullptr || c.row_map_too ? row_map.data() : nullptr;
    p.expanded_to_row = c.e2r != nullptr ? c.e2r->data() : nullptr;
    p.topk_weights = c.scale ? weights.data() : nullptr;
    p.out = out.data();
    return {ref::moe_gather(p).code(), out};
  }
  auto d_hidden = upload(hidden);
  auto d_w = upload(weights);
  auto d_map = upload(row_map);
  auto d_e2r = upload(c.e2r != nullptr ? *c.e2r : std::vector<int32_t>{0});
  auto d_out = poisoned<unsigned char>(out_n * fulgur::dtype_size(c.out));
  p.hidden = d_hidden.data() + shift * fulgur::dtype_size(c.in);
  p.row_map = c.e2r == nullptr || c.row_map_too ? d_map.data() : nullptr;
  p.expanded_to_row = c.e2r != nullptr ? d_e2r.data() : nullptr;
  p.topk_weights = c.scale ? static_cast<const void*>(d_w.data()) : nullptr;
  p.out = d_out.data() + shift * fulgur::dtype_size(c.out);
  const cudaError_t e = fm::gather(p, nullptr);
  Tensor got = download(d_out, c.out, out_n);
  // Undo the shift so both sides index alike.
  Tensor out(c.out, out_n);
  out.poison();
  std::memcpy(out.data(), got.bytes.data() + shift * fulgur::dtype_size(c.out),
              (out_n - shift) * fulgur::dtype_size(c.out));
  return {e, out};
}

void check_gather(const GatherCase& c, const std::vector<int32_t>& row_map, fulgur_test::Rng& rng,
                  const std::string& label) {
  INFO(label << ": " << fulgur::dtype_name(c.in) << " -> " << fulgur::dtype_name(c.out) << " H=" << c.H
             << " rows=" << row_map.size() << " scale=" << c.scale << " misalign=" << c.misalign);
  const int64_t in_stride = c.H + c.in_pad;
  Tensor hidden = random_tensor(c.in, static_cast<size_t>(c.T * in_stride + 1), rng);
  Tensor weights = random_tensor(c.wdt, static_cast<size_t>(c.T * c.k), rng, 0.5);
  const GatherRun want = run_gather(c, hidden, weights, row_map, false);
  REQUIRE(want.err == cudaSuccess);
  const GatherRun got = run_gather(c, hidden, weights, row_map, true);
  REQUIRE(got.err == cudaSuccess);
  const int64_t out_stride = c.H + c.out_pad;
  // Without scaling the kernel converts each element once, as the reference: bit-exact. With
  // scaling the kernel's fp32 product of a <= 24-bit element and a 24-bit weight is the exact
  // product rounded once, as the reference's fp64 product (exact: 48 bits) rounded to fp32, so
  // an fp32 output is bit-exact too; a 16-bit output rounds that fp32 value again: one unit in
  // its last place at most.
  const bool exact = !c.scale || c.out == DType::kF32;
  // A row that neither writes (expanded_to_row without row_map, a row it does not name) keeps
  // its poison on both sides; every written value is finite (random normal inputs).
  size_t bad = 0;
  for (size_t r = 0; r < row_map.size(); ++r) {
    for (int64_t h = 0; h < c.H; ++h) {
      const size_t i = r * out_stride + h;
      const double g = got.out.get(i), w = want.out.get(i);
      const bool ok = (std::isnan(g) && std::isnan(w)) || (exact ? (g == w) : std::fabs(g - w) <= ulp(c.out, w));
      bad += !ok;
    }
    // Padding between rows stays untouched.
    for (int64_t h = c.H; h < out_stride; ++h) bad += !std::isnan(got.out.get(r * out_stride + h));
  }
  CHECK(bad == 0);
  if (c.e2r != nullptr) {
    // The token path writes the row path's bits in every row it writes.
    GatherCase row_path = c;
    row_path.e2r = nullptr;
    const GatherRun rows = run_gather(row_path, hidden, weights, row_map, true);
    REQUIRE(rows.err == cudaSuccess);
    std::vector<bool> named(row_map.size(), c.row_map_too);
    for (int32_t r : *c.e2r)
      if (r >= 0) named[static_cast<size_t>(r)] = true;
    const size_t es = fulgur::dtype_size(c.out);
    size_t differ = 0, written = 0;
    for (size_t r = 0; r < row_map.size(); ++r) {
      if (!named[r]) continue;
      ++written;
      differ += std::memcmp(got.out.bytes.data() + r * out_stride * es, rows.out.bytes.data() + r * out_stride * es,
                            static_cast<size_t>(c.H) * es) != 0;
    }
    CHECK(written > 0);
    CHECK(differ == 0);
  }
}

// Every (in, out) dtype pair, without and with scaling (the weight dtype following the input's):
// fn gets the base case of T tokens and top-k. The sanitizer builds (one OS thread per CUDA
// thread) keep the same-dtype pairs and one conversion.
template <typename Fn>
void for_each_gather_case(int64_t T, int k, Fn&& fn) {
  for (DType in : kDtypes) {
    for (DType out : kDtypes) {
      if (kLight && !((in == DType::kBF16 && out == DType::kBF16) || (in == DType::kF32 && out == DType::kBF16)))
        continue;
      for (bool scale : {false, true}) {
        GatherCase c;
        c.in = in, c.out = out, c.T = T, c.k = k, c.scale = scale;
        c.wdt = scale && in == DType::kBF16 ? DType::kBF16 : DType::kF32;
        fn(c);
      }
    }
  }
}

// The inverse of a row map: the row holding each expanded index, -1 where no row does.
std::vector<int32_t> inverse_map(const std::vector<int32_t>& row_map, int64_t expanded) {
  std::vector<int32_t> inv(static_cast<size_t>(expanded), -1);
  for (size_t r = 0; r < row_map.size(); ++r)
    if (row_map[r] >= 0 && row_map[r] < expanded) inv[static_cast<size_t>(row_map[r])] = static_cast<int32_t>(r);
  return inv;
}

TEST_CASE("gather: every dtype pair, every view, both paths", "[moe][gather]") {
  fulgur_test::Rng rng("gather sweep");
  FULGUR_INFO_SEED(rng);
  const int64_t T = sized(37, 12);
  const int k = 4, E = 16;
  const RowMaps maps = row_maps(T, k, E, rng);
  for_each_gather_case(T, k, [&](GatherCase c) {
    c.H = 64;
    check_gather(c, maps.compact, rng, "compact");
    c.H = 136, c.in_pad = 8, c.out_pad = 24;  // multiples of 8: still the vector path
    // The tile-padded map has T*k + E*15 rows: once in the sanitizer builds.
    if (!kLight || (c.in == c.out && !c.scale)) check_gather(c, maps.tiled, rng, "tiled (sentinel rows)");
    c.H = 40, c.in_pad = 0, c.out_pad = 0, c.misalign = true;  // the element path
    check_gather(c, maps.masked, rng, "masked, misaligned");
    c.H = 7, c.misalign = false;  // H not a multiple of the vector
    check_gather(c, maps.compact, rng, "H = 7");
  });
}

TEST_CASE("gather: token by token (expanded_to_row), every view, the row path's bits", "[moe][gather]") {
  fulgur_test::Rng rng("gather by token");
  FULGUR_INFO_SEED(rng);
  // T*k > E * 3 (the masked view's capacity) in every build: the masked view drops slots.
  const int64_t T = sized(29, 5);
  const int k = 3, E = 4;
  const RowMaps maps = row_maps(T, k, E, rng);
  // permute's expanded_to_permuted is the compact map's inverse; the padded views' inverses
  // leave out the sentinel rows (tiled) and the slots dropped by the capacity (masked).
  REQUIRE(maps.e2p == inverse_map(maps.compact, T * k));
  const std::vector<int32_t> tiled_inv = inverse_map(maps.tiled, T * k);
  const std::vector<int32_t> masked_inv = inverse_map(maps.masked, T * k);
  REQUIRE(std::count(masked_inv.begin(), masked_inv.end(), -1) > 0);
  for_each_gather_case(T, k, [&](GatherCase c) {
    c.e2r = &maps.e2p, c.row_map_too = false;
    c.H = 1064;  // two column chunks (bf16 pairs), the second partial
    check_gather(c, maps.compact, rng, "compact, expanded_to_row only");
    c.e2r = &tiled_inv, c.row_map_too = true;
    c.H = 136, c.in_pad = 8, c.out_pad = 24;
    check_gather(c, maps.tiled, rng, "tiled, both maps: sentinel rows zeroed");
    c.e2r = &masked_inv;
    c.H = 40, c.in_pad = 0, c.out_pad = 0, c.misalign = true;  // the element path
    check_gather(c, maps.masked, rng, "masked, both maps, misaligned: dropped slots skipped");
    c.row_map_too = false, c.misalign = false, c.H = 7;
    check_gather(c, maps.masked, rng, "masked, expanded_to_row only: padding rows untouched");
  });
}

TEST_CASE("gather: MiniMax shape (H = 6144, k = 2, bf16) and edge rows", "[moe][gather]") {
  fulgur_test::Rng rng("gather minimax");
  FULGUR_INFO_SEED(rng);
  const int64_t T = sized(48, 8);
  const RowMaps maps = row_maps(T, 2, 32, rng);
  GatherCase c;
  c.T = T, c.k = 2, c.H = 6144;
  check_gather(c, maps.compact, rng, "minimax");
  c.scale = true, c.wdt = DType::kF32;  // Llama-4 style input scaling
  check_gather(c, maps.tiled, rng, "minimax scaled");
  // Rows cut into several column chunks (1,024 bf16 columns on the vector path, 128 on the element
  // path) with a partial last one.
  c.H = 2088;
  check_gather(c, maps.tiled, rng, "chunks, partial last, scaled");
  c.scale = false, c.H = 300, c.misalign = true;
  check_gather(c, maps.compact, rng, "element path, chunks");
  c.misalign = false;
  // A row map of sentinels only: zero rows.
  c.scale = false, c.H = 64;
  const std::vector<int32_t> sentinels = {static_cast<int32_t>(T * 2), 0, static_cast<int32_t>(T * 2)};
  check_gather(c, sentinels, rng, "sentinels");
  // Entries outside [0, T*k] are outside the contract (the reference rejects them); the kernel
  // writes a zero row for them rather than reading out of bounds.
  const std::vector<int32_t> odd = {-5, static_cast<int32_t>(T * 2 + 9)};
  Tensor hidden = random_tensor(c.in, static_cast<size_t>(T * c.H), rng);
  const GatherRun got = run_gather(c, hidden, Tensor(c.wdt, 1), odd, true);
  REQUIRE(got.err == cudaSuccess);
  for (size_t i = 0; i < 2 * 64; ++i) CHECK(got.out.get(i) == 0.0);
}

TEST_CASE("gather: vector and element paths give the same bits; deterministic", "[moe][gather]") {
  fulgur_test::Rng rng("gather paths");
  FULGUR_INFO_SEED(rng);
  const int64_t T = sized(20, 5);
  const RowMaps maps = row_maps(T, 4, 8, rng);
  GatherCase c;
  c.in = DType::kF32, c.out = DType::kBF16, c.T = T, c.k = 4, c.H = 96, c.scale = true;
  Tensor hidden = random_tensor(c.in, static_cast<size_t>(T * c.H + 1), rng);
  Tensor weights = random_tensor(c.wdt, static_cast<size_t>(T * 4), rng);
  const GatherRun a = run_gather(c, hidden, weights, maps.compact, true);
  const GatherRun b = run_gather(c, hidden, weights, maps.compact, true);
  c.misalign = true;
  const GatherRun s = run_gather(c, hidden, weights, maps.compact, true);
  REQUIRE(a.err == cudaSuccess);
  CHECK(bitwise_equal(a.out, b.out));
  // The misaligned run reads hidden shifted by one element: compare against a run on the shifted
  // copy instead.
  Tensor shifted(c.in, hidden.n);
  std::memcpy(shifted.data(), hidden.bytes.data() + fulgur::dtype_size(c.in),
              (hidden.n - 1) * fulgur::dtype_size(c.in));
  c.misalign = false;
  const GatherRun a2 = run_gather(c, shifted, weights, maps.compact, true);
  REQUIRE(a2.err == cudaSuccess);
  REQUIRE(s.err == cudaSuccess);
  CHECK(std::memcmp(a2.out.data(), s.out.data(), a2.out.bytes.size()) == 0);
}

TEST_CASE("gather: bad input returns the documented error and writes nothing", "[moe][gather]") {
  auto d_hidden = poisoned<float>(64);
  auto d_out = poisoned<float>(64);
  auto d_map = upload(std::vector<int32_t>{0, 1});
  auto base = [&] {
    fm::GatherParams p;
    p.hidden = d_hidden.data();
    p.hidden_dtype = DType::kF32;
    p.hidden_row_stride = 16;
    p.num_tokens = 2;
    p.top_k = 1;
    p.hidden_size = 16;
    p.row_map = d_map.data();
    p.num_rows = 2;
    p.out = d_out.data();
    p.out_dtype = DType::kF32;
    p.out_row_stride = 16;
    return p;
  };
  struct Bad {
    const char* what;
    std::function<void(fm::GatherParams&)> edit;
    cudaError_t code;
  };
  const std::vector<Bad> cases = {
      {"null out", [](fm::GatherParams& p) { p.out = nullptr; }, cudaErrorInvalidValue},
      {"null row_map (and no expanded_to_row)", [](fm::GatherParams& p) { p.row_map = nullptr; },
       cudaErrorInvalidValue},
      {"null hidden", [](fm::GatherParams& p) { p.hidden = nullptr; }, cudaErrorInvalidValue},
      {"stride < H", [](fm::GatherParams& p) { p.out_row_stride = 15; }, cudaErrorInvalidValue},
      {"H = 0", [](fm::GatherParams& p) { p.hidden_size = 0; }, cudaErrorInvalidValue},
      {"k = 0", [](fm::GatherParams& p) { p.top_k = 0; }, cudaErrorInvalidValue},
      {"scale without weights", [](fm::GatherParams& p) { p.scale_by_weight = true; }, cudaErrorInvalidValue},
      {"f16 weights", [](fm::GatherParams& p) { p.scale_by_weight = true, p.weights_dtype = DType::kF16; },
       cudaErrorInvalidValue},
      {"f64 out", [](fm::GatherParams& p) { p.out_dtype = DType::kF64; }, cudaErrorNotSupported},
      {"out over hidden", [](fm::GatherParams& p) { p.out = const_cast<void*>(p.hidden); }, cudaErrorInvalidValue},
      {"out over hidden's second row",
       [](fm::GatherParams& p) { p.out = static_cast<float*>(const_cast<void*>(p.hidden)) + 16; },
       cudaErrorInvalidValue},
      {"out over row_map", [](fm::GatherParams& p) { p.out = const_cast<int32_t*>(p.row_map); },
       cudaErrorInvalidValue},
  };
  for (const Bad& b : cases) {
    INFO(b.what);
    fm::GatherParams p = base();
    b.edit(p);
    CHECK(fm::can_implement(p).code() == b.code);
    CHECK(fm::gather(p, nullptr) == b.code);
  }
  for (float v : download(d_out)) CHECK(std::isnan(v));
  // Rows interleaved in one buffer without a shared byte are accepted: hidden's rows at 0 and 32
  // floats, out's at 16 and 48 (both strides 32); out shifted by one float shares bytes.
  fm::GatherParams p = base();
  p.hidden_row_stride = 32;
  p.out_row_stride = 32;
  p.out = d_hidden.data() + 16;
  CHECK(fm::can_implement(p).ok());
  p.out = d_hidden.data() + 15;
  CHECK(fm::can_implement(p).code() == cudaErrorInvalidValue);
}

// ---- combine --------------------------------------------------------------------------------------

struct CombineCase {
  DType y = DType::kBF16, out = DType::kBF16, wdt = DType::kF32, res = DType::kBF16;
  int64_t T = 0, H = 0, pad = 0;
  int k = 2;
  bool weights = true, map = true, residual = false, token_scale = false, in_place = false, misalign = false;
  float residual_scale = 1.0f;
  int drop_every = 0;  // every n-th expanded index is dropped (row -1)
};

struct CombineInputs {
  Tensor y, w, res;
  std::vector<int32_t> map;
  std::vector<float> ts;
  int64_t y_rows = 0;
};

CombineInputs make_combine_inputs(const CombineCase& c, fulgur_test::Rng& rng) {
  CombineInputs in;
  const int64_t stride = c.H + c.pad;
  in.y_rows = c.T * c.k + 3;  // a few rows no map points at
  in.y = random_tensor(c.y, static_cast<size_t>(in.y_rows * stride), rng);
  in.w = random_tensor(c.wdt, static_cast<size_t>(c.T * c.k), rng, 0.5);
  in.res = random_tensor(c.res, static_cast<size_t>(c.T * stride), rng);
  if (c.map) {
    in.map.resize(static_cast<size_t>(c.T * c.k));
    std::iota(in.map.begin(), in.map.end(), 0);
    std::shuffle(in.map.begin(), in.map.end(), rng.gen);
    if (c.drop_every)
      for (size_t i = 0; i < in.map.size(); i += c.drop_every) in.map[i] = -1;
  }
  in.ts.resize(static_cast<size_t>(c.T));
  for (auto& s : in.ts) s = static_cast<float>(rng.uniform(0, 1));
  return in;
}

struct CombineRun {
  cudaError_t err;
  Tensor out;
};

CombineRun run_combine(const CombineCase& c, const CombineInputs& in, bool kernel) {
  const int64_t stride = c.H + c.pad;
  const int64_t shift = c.misalign ? 1 : 0;
  fm::CombineParams p;
  p.expert_out_dtype = c.y;
  p.expert_out_row_stride = stride;
  p.num_expert_rows = in.y_rows;
  p.num_tokens = c.T;
  p.top_k = c.k;
  p.hidden_size = c.H;
  p.weights_dtype = c.wdt;
  p.residual_dtype = c.in_place ? c.out : c.res;
  p.residual_row_stride = stride;
  p.residual_scale = c.residual_scale;
  p.out_dtype = c.out;
  p.out_row_stride = stride;
  const size_t out_n = static_cast<size_t>(c.T * stride + shift);
  // In place: out starts as the residual (in out's dtype).
  Tensor out0(c.out, out_n);
  out0.poison();
  if (c.in_place)
    for (size_t i = 0; i < in.res.n; ++i) out0.set(i, in.res.get(i));
  if (!kernel) {
    Tensor out = out0;
    p.expert_out = in.y.data();
    p.expanded_to_row = c.map ? in.map.data() : nullptr;
    p.topk_weights = c.weights ? in.w.data() : nullptr;
    p.residual = c.in_place ? out.data() : c.residual ? in.res.data() : nullptr;
    p.residual_token_scale = c.residual && c.token_scale ? in.ts.data() : nullptr;
    p.out = out.data();
    return {ref::moe_combine(p).code(), out};
  }
  auto d_y = upload(in.y);
  auto d_w = upload(in.w);
  auto d_res = upload(in.res);
  auto d_map = upload(in.map);
  auto d_ts = upload(in.ts);
  auto d_out = upload(out0);
  const size_t osz = fulgur::dtype_size(c.out);
  p.expert_out = d_y.data();
  p.expanded_to_row = c.map ? d_map.data() : nullptr;
  p.topk_weights = c.weights ? static_cast<const void*>(d_w.data()) : nullptr;
  p.out = d_out.data() + shift * osz;
  p.residual = c.in_place ? p.out : c.residual ? static_cast<const void*>(d_res.data()) : nullptr;
  p.residual_token_scale = c.residual && c.token_scale ? d_ts.data() : nullptr;
  if (c.in_place && shift) {  // keep the residual rows where out now starts
    Tensor moved(c.out, out_n);
    moved.poison();
    std::memcpy(moved.bytes.data() + shift * osz, out0.data(), (out_n - shift) * osz);
    d_out.copy_from_host(moved.bytes);
  }
  const cudaError_t e = fm::combine(p, nullptr);
  Tensor got = download(d_out, c.out, out_n);
  Tensor out(c.out, out_n);
  out.poison();
  std::memcpy(out.data(), got.bytes.data() + shift * osz, (out_n - shift) * osz);
  return {e, out};
}

void check_combine(const CombineCase& c, fulgur_test::Rng& rng, const std::string& label) {
  INFO(label << ": y " << fulgur::dtype_name(c.y) << " out " << fulgur::dtype_name(c.out) << " res "
             << fulgur::dtype_name(c.res) << " T=" << c.T << " k=" << c.k << " H=" << c.H << " weights=" << c.weights
             << " map=" << c.map << " residual=" << c.residual << " in_place=" << c.in_place
             << " misalign=" << c.misalign);
  const CombineInputs in = make_combine_inputs(c, rng);
  const CombineRun want = run_combine(c, in, false);
  REQUIRE(want.err == cudaSuccess);
  const CombineRun got = run_combine(c, in, true);
  REQUIRE(got.err == cudaSuccess);
  const int64_t stride = c.H + c.pad;
  // The documented order, exactly: fp32 fmas j = 0..k-1 ascending, then the residual's fma with
  // the fp32 factor residual_scale * token_scale, one rounding to out_dtype. A kernel that
  // accumulates in another order (or groups its loads and reorders the fmas) differs in the bits.
  Tensor one(c.out, 1);
  auto round_out = [&](double v) {
    one.set(0, v);
    return one.get(0);
  };
  size_t order_bad = 0;
  for (int64_t t = 0; t < c.T; ++t) {
    for (int64_t h = 0; h < c.H; ++h) {
      float acc = 0.0f;
      for (int j = 0; j < c.k; ++j) {
        const int64_t i = t * c.k + j;
        const int64_t row = c.map ? in.map[i] : i;
        if (row < 0) continue;
        const float w = c.weights ? static_cast<float>(in.w.get(i)) : 1.0f;
        acc = std::fma(w, static_cast<float>(in.y.get(row * stride + h)), acc);
      }
      if (c.residual || c.in_place) {
        const float rs = c.residual_scale * (c.residual && c.token_scale ? in.ts[t] : 1.0f);
        const double r = in.res.get(t * stride + h);
        acc = std::fma(rs, static_cast<float>(c.in_place ? round_out(r) : r), acc);
      }
      order_bad += !(got.out.get(t * stride + h) == round_out(acc));
    }
  }
  CHECK(order_bad == 0);
  size_t bad = 0;
  double worst = 0;
  for (int64_t t = 0; t < c.T; ++t) {
    const double s =
        c.residual || c.in_place ? std::fabs(c.residual_scale * (c.token_scale && c.residual ? in.ts[t] : 1.0)) : 0;
    for (int64_t h = 0; h < c.H; ++h) {
      // Sum of |terms|: each of the k fmas rounds once in fp32 (<= u times the running sum,
      // bounded by this), plus the residual factor's product: (k + 2) u sum|terms|; then the
      // final rounding to out_dtype (one ulp covers both sides' roundings).
      double mag = 0;
      for (int j = 0; j < c.k; ++j) {
        const int64_t i = t * c.k + j;
        const int64_t row = c.map ? in.map[i] : i;
        if (row < 0) continue;
        mag += std::fabs((c.weights ? in.w.get(i) : 1.0) * in.y.get(row * stride + h));
      }
      if (c.residual || c.in_place) mag += s * std::fabs(in.res.get(t * stride + h));
      const double w = want.out.get(t * stride + h), g = got.out.get(t * stride + h);
      const double tol = (c.k + 2) * kU32 * mag + ulp(c.out, w);
      bad += !(std::fabs(g - w) <= tol);
      worst = std::max(worst, std::fabs(g - w) / tol);
    }
    for (int64_t h = c.H; h < stride; ++h) bad += !(std::isnan(got.out.get(t * stride + h)) || c.in_place);
  }
  INFO("worst |got - ref| / tolerance = " << worst);
  CHECK(bad == 0);
}

TEST_CASE("combine: every dtype pair, maps, weights, residuals", "[moe][combine]") {
  fulgur_test::Rng rng("combine sweep");
  FULGUR_INFO_SEED(rng);
  int n = 0;
  for (DType y : kDtypes) {
    for (DType out : kDtypes) {
      if (kLight && !((y == DType::kBF16 && out == DType::kBF16) || (y == DType::kBF16 && out == DType::kF32)))
        continue;
      CombineCase c;
      c.y = y, c.out = out, c.T = sized(21, 7), c.k = 1 + n % 8, c.H = 64;
      c.wdt = n % 2 ? DType::kBF16 : DType::kF32;
      c.res = kDtypes[(n + 1) % 3];
      check_combine(c, rng, "plain");
      c.residual = true, c.residual_scale = 0.75f, c.token_scale = true, c.drop_every = 5;
      check_combine(c, rng, "residual, token scale, drops");
      c.map = false, c.weights = false, c.pad = 8, c.H = 120;  // identity rows, unit weights
      check_combine(c, rng, "identity map, unit weights");
      c.map = true, c.weights = true, c.misalign = true, c.H = 33, c.pad = 0, c.residual = false;  // element path
      check_combine(c, rng, "element path");
      c.misalign = false, c.H = 64, c.in_place = true, c.residual = false, c.residual_scale = -1.5f;
      check_combine(c, rng, "in place");
      ++n;
    }
  }
}

TEST_CASE("combine: MiniMax shape and k = 32", "[moe][combine]") {
  fulgur_test::Rng rng("combine shapes");
  FULGUR_INFO_SEED(rng);
  CombineCase c;
  c.T = sized(40, 8), c.k = 2, c.H = 6144, c.residual = true;
  check_combine(c, rng, "minimax");
  // Rows cut into several column chunks with a partial last one (vector path, then element path).
  c.H = 2088, c.k = 3, c.drop_every = 4;
  check_combine(c, rng, "chunks, partial last");
  c.H = 300, c.misalign = true;
  check_combine(c, rng, "element path, chunks");
  c.misalign = false, c.drop_every = 0, c.residual = false;
  c.T = sized(9, 3), c.k = 32, c.H = 256, c.out = DType::kF32, c.y = DType::kF32;
  check_combine(c, rng, "k = 32");
  c.k = 8, c.T = 1, c.H = 8;
  check_combine(c, rng, "decode");
}

TEST_CASE("combine: deterministic and batch invariant", "[moe][combine]") {
  fulgur_test::Rng rng("combine determinism");
  FULGUR_INFO_SEED(rng);
  CombineCase c;
  c.T = sized(30, 3), c.k = 8, c.H = 256, c.residual = true, c.token_scale = true, c.out = DType::kF32;
  const CombineInputs in = make_combine_inputs(c, rng);
  const CombineRun a = run_combine(c, in, true);
  const CombineRun b = run_combine(c, in, true);
  REQUIRE(a.err == cudaSuccess);
  CHECK(bitwise_equal(a.out, b.out));
  // Tokens [t0, t0 + n) alone: the same bits (the kernel's order is per token, fixed).
  const int64_t t0 = c.T / 3, n = c.T / 4;
  CombineCase s = c;
  s.T = n;
  CombineInputs sub = in;
  sub.map.assign(in.map.begin() + t0 * c.k, in.map.begin() + (t0 + n) * c.k);
  sub.w = Tensor(c.wdt, static_cast<size_t>(n * c.k));
  for (int64_t i = 0; i < n * c.k; ++i) sub.w.set(i, in.w.get(t0 * c.k + i));
  sub.res = Tensor(c.res, static_cast<size_t>(n * c.H));
  for (int64_t i = 0; i < n * c.H; ++i) sub.res.set(i, in.res.get(t0 * c.H + i));
  sub.ts.assign(in.ts.begin() + t0, in.ts.begin() + t0 + n);
  const CombineRun part = run_combine(s, sub, true);
  REQUIRE(part.err == cudaSuccess);
  for (int64_t i = 0; i < n * c.H; ++i) CHECK(part.out.get(i) == a.out.get(t0 * c.H + i));
}

TEST_CASE("combine: bad input returns the documented error and writes nothing", "[moe][combine]") {
  auto d_y = poisoned<float>(64);
  auto d_out = poisoned<float>(64);
  auto d_res = poisoned<double>(64);
  auto base = [&] {
    fm::CombineParams p;
    p.expert_out = d_y.data();
    p.expert_out_dtype = DType::kF32;
    p.expert_out_row_stride = 16;
    p.num_expert_rows = 4;
    p.num_tokens = 2;
    p.top_k = 2;
    p.hidden_size = 16;
    p.out = d_out.data();
    p.out_dtype = DType::kF32;
    p.out_row_stride = 16;
    return p;
  };
  struct Bad {
    const char* what;
    std::function<void(fm::CombineParams&)> edit;
    cudaError_t code;
  };
  const std::vector<Bad> cases = {
      {"null out", [](fm::CombineParams& p) { p.out = nullptr; }, cudaErrorInvalidValue},
      {"null y", [](fm::CombineParams& p) { p.expert_out = nullptr; }, cudaErrorInvalidValue},
      {"too few rows without a map", [](fm::CombineParams& p) { p.num_expert_rows = 3; }, cudaErrorInvalidValue},
      {"stride < H", [](fm::CombineParams& p) { p.expert_out_row_stride = 8; }, cudaErrorInvalidValue},
      {"k = 33", [](fm::CombineParams& p) { p.top_k = 33; }, cudaErrorInvalidValue},
      {"NaN residual scale", [](fm::CombineParams& p) { p.residual_scale = NAN; }, cudaErrorInvalidValue},
      {"token scale without residual",
       [](fm::CombineParams& p) { p.residual_token_scale = reinterpret_cast<const float*>(p.out); },
       cudaErrorInvalidValue},
      {"alias with another dtype",
       [](fm::CombineParams& p) { p.residual = p.out, p.residual_dtype = DType::kBF16, p.residual_row_stride = 16; },
       cudaErrorInvalidValue},
      {"f64 y", [](fm::CombineParams& p) { p.expert_out_dtype = DType::kF64; }, cudaErrorNotSupported},
      {"out over y", [](fm::CombineParams& p) { p.out = const_cast<void*>(p.expert_out); }, cudaErrorInvalidValue},
      {"out over topk_weights", [](fm::CombineParams& p) { p.topk_weights = p.out; }, cudaErrorInvalidValue},
      {"out over residual, shifted by one element",
       [](fm::CombineParams& p) {
         p.residual = static_cast<float*>(p.out) + 1, p.residual_dtype = DType::kF32, p.residual_row_stride = 16;
       },
       cudaErrorInvalidValue},
      {"out over the residual token scales",
       [&](fm::CombineParams& p) {
         p.residual = d_res.data(), p.residual_dtype = DType::kF32, p.residual_row_stride = 16;
         p.residual_token_scale = static_cast<const float*>(p.out);
       },
       cudaErrorInvalidValue},
      {"f64 residual",
       [&](fm::CombineParams& p) {
         p.residual = d_res.data(), p.residual_dtype = DType::kF64, p.residual_row_stride = 16;
       },
       cudaErrorNotSupported},
  };
  for (const Bad& b : cases) {
    INFO(b.what);
    fm::CombineParams p = base();
    b.edit(p);
    CHECK(fm::can_implement(p).code() == b.code);
    CHECK(fm::combine(p, nullptr) == b.code);
  }
  for (float v : download(d_out)) CHECK(std::isnan(v));
  // The in-place residual add (out is residual: same pointer, dtype and stride) stays accepted.
  fm::CombineParams p = base();
  p.residual = p.out, p.residual_dtype = DType::kF32, p.residual_row_stride = 16;
  CHECK(fm::can_implement(p).ok());
}

// ---- the whole MoE layer's data path -------------------------------------------------------------

TEST_CASE("route -> permute -> gather -> experts -> combine matches the references", "[moe]") {
  // A Qwen2-MoE-like layer (60 experts, top-4, not renormalized) whose "experts" are per-expert
  // scales c_e = (e + 1) / 64 applied on the host to the gathered rows, plus a shared expert as
  // the residual with a per-token gate. Expected: out[t] = sum_j w_j c_{e_j} x_t + g_t x_t, from
  // the references; the kernels' chain must agree within the combine tolerance plus the bf16
  // rounding of the expert outputs (identical on both sides, so they cancel).
  fulgur_test::Rng rng("moe layer");
  FULGUR_INFO_SEED(rng);
  const fm::RoutePolicy pol = fm::presets::qwen2_moe();
  const int E = pol.num_experts, k = pol.top_k;
  const int64_t T = sized(50, 5), H = 128;
  Tensor logits = random_tensor(DType::kBF16, static_cast<size_t>(T * E), rng);
  Tensor x = random_tensor(DType::kBF16, static_cast<size_t>(T * H), rng);
  std::vector<float> gate(static_cast<size_t>(T));
  for (auto& g : gate) g = static_cast<float>(rng.uniform(0, 1));

  // Device chain.
  auto d_logits = upload(logits);
  auto d_x = upload(x);
  auto d_gate = upload(gate);
  auto d_ids = poisoned<int32_t>(static_cast<size_t>(T * k));
  auto d_w = poisoned<float>(static_cast<size_t>(T * k));
  fm::RouteParams rp;
  rp.policy = pol;
  rp.logits = d_logits.data();
  rp.logits_dtype = DType::kBF16;
  rp.logits_row_stride = E;
  rp.num_tokens = T;
  rp.topk_ids = d_ids.data();
  rp.topk_weights = d_w.data();
  REQUIRE(fm::route(rp, nullptr) == cudaSuccess);
  auto d_off = poisoned<int64_t>(E + 1);
  auto d_e2p = poisoned<int32_t>(static_cast<size_t>(T * k));
  auto d_p2e = poisoned<int32_t>(static_cast<size_t>(T * k));
  fm::PermuteParams pp;
  pp.topk_ids = d_ids.data();
  pp.num_tokens = T;
  pp.top_k = k;
  pp.num_experts = E;
  pp.expert_first_token_offset = d_off.data();
  pp.expanded_to_permuted = d_e2p.data();
  pp.permuted_to_expanded = d_p2e.data();
  size_t bytes = 0;
  REQUIRE(fm::permute(nullptr, bytes, pp, nullptr) == cudaSuccess);
  DeviceBuffer<unsigned char> ws(bytes);
  REQUIRE(fm::permute(ws.data(), bytes, pp, nullptr) == cudaSuccess);
  auto d_rows = poisoned<__nv_bfloat16>(static_cast<size_t>(T * k * H));
  fm::GatherParams gp;
  gp.hidden = d_x.data();
  gp.hidden_dtype = DType::kBF16;
  gp.hidden_row_stride = H;
  gp.num_tokens = T;
  gp.top_k = k;
  gp.hidden_size = H;
  gp.row_map = d_p2e.data();
  gp.num_rows = T * k;
  gp.out = d_rows.data();
  gp.out_dtype = DType::kBF16;
  gp.out_row_stride = H;
  REQUIRE(fm::gather(gp, nullptr) == cudaSuccess);
  // "Experts" on the host: permuted row r belongs to the expert whose offset range holds it.
  const auto off = download(d_off);
  auto rows = download(d_rows);
  for (int e = 0; e < E; ++e)
    for (int64_t r = off[e]; r < off[e + 1]; ++r)
      for (int64_t h = 0; h < H; ++h)
        rows[r * H + h] = __float2bfloat16_rn(__bfloat162float(rows[r * H + h]) * (e + 1) / 64.0f);
  DeviceBuffer<__nv_bfloat16> d_y(rows);
  auto d_out = poisoned<__nv_bfloat16>(static_cast<size_t>(T * H));
  fm::CombineParams cp;
  cp.expert_out = d_y.data();
  cp.expert_out_dtype = DType::kBF16;
  cp.expert_out_row_stride = H;
  cp.num_expert_rows = T * k;
  cp.num_tokens = T;
  cp.top_k = k;
  cp.hidden_size = H;
  cp.expanded_to_row = d_e2p.data();
  cp.topk_weights = d_w.data();
  cp.residual = d_x.data();
  cp.residual_dtype = DType::kBF16;
  cp.residual_row_stride = H;
  cp.residual_token_scale = d_gate.data();
  cp.out = d_out.data();
  cp.out_dtype = DType::kBF16;
  cp.out_row_stride = H;
  REQUIRE(fm::combine(cp, nullptr) == cudaSuccess);
  const auto got = download(d_out);
  const auto ids = download(d_ids);

  // Reference chain on the host (same inputs).
  std::vector<int32_t> r_ids(static_cast<size_t>(T * k));
  std::vector<float> r_w(static_cast<size_t>(T * k));
  rp.logits = logits.data();
  rp.topk_ids = r_ids.data();
  rp.topk_weights = r_w.data();
  REQUIRE(ref::moe_route(rp).is_ok());
  CHECK(r_ids == ids);  // random normal bf16 logits: ties are possible, and broken alike
  size_t bad = 0;
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t h = 0; h < H; ++h) {
      const double xv = x.get(t * H + h);
      double want = gate[t] * xv, mag = std::fabs(want);
      for (int j = 0; j < k; ++j) {
        const int e = r_ids[t * k + j];
        const double y =
            static_cast<double>(__bfloat162float(__float2bfloat16_rn(static_cast<float>(xv) * (e + 1) / 64.0f)));
        want += r_w[t * k + j] * y;
        mag += std::fabs(r_w[t * k + j] * y);
      }
      // Route weights agree to ~1e-6 relative (route test); combine to (k + 2) u; then bf16.
      const double tol = 1e-5 * mag + ulp(DType::kBF16, want);
      bad += !(std::fabs(__bfloat162float(got[t * H + h]) - want) <= tol);
    }
  }
  CHECK(bad == 0);
}

}  // namespace
