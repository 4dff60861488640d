// SPDX-License-Identifier: Apache-2.0
// examples/torch's bindings (fulgur_torch.cpp) run under fulgur's CPU emulation, with the ATen
// stand-in of aten_stand_in/ in place of PyTorch: every op's Params filling (sizes, strides,
// optional tensors, workspaces, refusals) checked end to end against small independent fp64 /
// sort-based references. CI has no PyTorch; the pytest (test_fulgur_torch.py) runs the same ops
// through real PyTorch on the GPU machine (bench/gpu_check.sh).
#include "../fulgur_torch.cpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>

static int fails = 0;
#define EXPECT(c, ...)                                 \
  do {                                                 \
    if (!(c)) {                                        \
      ++fails;                                         \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__); \
      std::printf(__VA_ARGS__);                        \
      std::printf("\n");                               \
    }                                                  \
  } while (0)

std::mt19937 rng(12345);
float nrm() {
  static std::normal_distribution<float> n(0.f, 1.f);
  return n(rng);
}
float bf(float x) { return __bfloat162float(__float2bfloat16(x)); }

at::Tensor make(std::vector<int64_t> sz, at::ScalarType t) { return at::empty(sz, at::TensorOptions{}.dtype(t)); }
template <typename T>
at::Tensor from(std::vector<T> v, at::ScalarType t) {
  at::Tensor x = make({(int64_t)v.size()}, t);
  std::memcpy(x.data_ptr(), v.data(), v.size() * sizeof(T));
  return x;
}

void test_lightning() {
  const int H = 2, d = 64;
  std::vector<int> lens = {1, 63, 0, 70};
  std::vector<int32_t> cu = {0};
  for (int n : lens) cu.push_back(cu.back() + n);
  const int T = cu.back(), B = (int)lens.size();
  at::Tensor qkv = make({T, H, 3, d}, at::kBFloat16);
  std::vector<double> Q(T * H * d), K(T * H * d), V(T * H * d);
  auto* p = qkv.data_ptr<__nv_bfloat16>();
  for (int t = 0; t < T; ++t)
    for (int h = 0; h < H; ++h)
      for (int w = 0; w < 3; ++w)
        for (int i = 0; i < d; ++i) {
          float x = bf(0.5f * nrm());
          p[((t * H + h) * 3 + w) * d + i] = __float2bfloat16(x);
          (w == 0 ? Q : w == 1 ? K : V)[(t * H + h) * d + i] = x;
        }
  at::Tensor q = qkv.select(2, 0), k = qkv.select(2, 1), v = qkv.select(2, 2);
  at::Tensor slopes = from<float>({0.25f, 0.0625f}, at::kFloat);
  const int S = 5;
  at::Tensor state = make({S, H, d, d}, at::kFloat);
  std::vector<double> pool(S * H * d * d);
  for (size_t i = 0; i < pool.size(); ++i) {
    float x = 0.1f * nrm();
    state.data_ptr<float>()[i] = x;
    pool[i] = x;
  }
  std::vector<int32_t> slots = {3, 0, 4, -1};
  std::vector<uint8_t> init = {1, 0, 1, 1};
  const double scale = 0.125;
  at::Tensor o = lightning_prefill(q, k, v, from(cu, at::kInt), slopes, state, from(slots, at::kInt), scale, false,
                                   at::kFloat, from(init, at::kByte), 0, false);
  // reference
  double err2 = 0, ref2 = 0;
  for (int b = 0; b < B; ++b) {
    std::vector<double> St(H * d * d, 0.0);
    if (slots[b] >= 0 && init[b])
      std::copy(pool.begin() + slots[b] * H * d * d, pool.begin() + (slots[b] + 1) * H * d * d, St.begin());
    for (int t = cu[b]; t < cu[b + 1]; ++t)
      for (int h = 0; h < H; ++h) {
        double lam = std::exp(-(double)slopes.data_ptr<float>()[h]);
        double* Sh = &St[h * d * d];
        for (int i = 0; i < d; ++i)
          for (int j = 0; j < d; ++j)
            Sh[i * d + j] = lam * Sh[i * d + j] + K[(t * H + h) * d + i] * V[(t * H + h) * d + j];
        for (int j = 0; j < d; ++j) {
          double acc = 0;
          for (int i = 0; i < d; ++i) acc += Q[(t * H + h) * d + i] * Sh[i * d + j];
          double got = o.data_ptr<float>()[(t * H + h) * d + j];
          err2 += (got - scale * acc) * (got - scale * acc);
          ref2 += scale * scale * acc * acc;
        }
      }
    if (slots[b] >= 0) std::copy(St.begin(), St.end(), pool.begin() + slots[b] * H * d * d);
  }
  EXPECT(std::sqrt(err2 / ref2) < 1e-4, "prefill o rel rmse %g", std::sqrt(err2 / ref2));
  double se = 0, sr = 0;
  for (size_t i = 0; i < pool.size(); ++i) {
    double g = state.data_ptr<float>()[i];
    se += (g - pool[i]) * (g - pool[i]);
    sr += pool[i] * pool[i];
  }
  EXPECT(std::sqrt(se / sr) < 1e-4, "prefill state rel rmse %g", std::sqrt(se / sr));
  std::printf("lightning prefill: o rel rmse %.3g, state %.3g\n", std::sqrt(err2 / ref2), std::sqrt(se / sr));

  // decode: rows 0..2 -> slots 0, -1, 3
  at::Tensor dq = make({3, H, d}, at::kFloat), dk = make({3, H, d}, at::kFloat), dv = make({3, H, d}, at::kFloat);
  for (int i = 0; i < 3 * H * d; ++i) {
    dq.data_ptr<float>()[i] = nrm();
    dk.data_ptr<float>()[i] = nrm();
    dv.data_ptr<float>()[i] = nrm();
  }
  std::vector<int32_t> ds = {0, -1, 3};
  at::Tensor od = lightning_decode(dq, dk, dv, slopes, state, from(ds, at::kInt), 1.0, false, at::kFloat, false);
  double e2 = 0, r2 = 0;
  for (int r = 0; r < 3; ++r)
    for (int h = 0; h < H; ++h) {
      if (ds[r] < 0) {
        for (int j = 0; j < d; ++j) EXPECT(od.data_ptr<float>()[(r * H + h) * d + j] == 0.f, "padding row written");
        continue;
      }
      double lam = std::exp(-(double)slopes.data_ptr<float>()[h]);
      double* Sh = &pool[(ds[r] * H + h) * d * d];
      const float* kk = dk.data_ptr<float>() + (r * H + h) * d;
      const float* vv = dv.data_ptr<float>() + (r * H + h) * d;
      const float* qq = dq.data_ptr<float>() + (r * H + h) * d;
      for (int i = 0; i < d; ++i)
        for (int j = 0; j < d; ++j) Sh[i * d + j] = lam * Sh[i * d + j] + (double)kk[i] * vv[j];
      for (int j = 0; j < d; ++j) {
        double acc = 0;
        for (int i = 0; i < d; ++i) acc += qq[i] * Sh[i * d + j];
        double g = od.data_ptr<float>()[(r * H + h) * d + j];
        e2 += (g - acc) * (g - acc);
        r2 += acc * acc;
      }
    }
  EXPECT(std::sqrt(e2 / r2) < 1e-5, "decode rel rmse %g", std::sqrt(e2 / r2));
  std::printf("lightning decode: o rel rmse %.3g\n", std::sqrt(e2 / r2));
}

void test_moe() {
  const int T = 7, E = 8, k = 2, Hd = 24;
  at::Tensor logits = make({T, E}, at::kFloat);
  for (int t = 0; t < T; ++t) {
    std::vector<int> perm(E);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int e = 0; e < E; ++e) logits.data_ptr<float>()[t * E + e] = perm[e] / 32.f;
  }
  auto [ids, w, counts] = moe_route(logits, k, "softmax", true, {}, 1, 1, 0.0, 1.0, false, {});
  for (int t = 0; t < T; ++t) {
    std::vector<int> order(E);
    std::iota(order.begin(), order.end(), 0);
    const float* x = logits.data_ptr<float>() + t * E;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return x[a] > x[b]; });
    double m = x[order[0]], s0 = std::exp(x[order[0]] - m), s1 = std::exp(x[order[1]] - m);
    EXPECT(ids.data_ptr<int32_t>()[t * k] == order[0] && ids.data_ptr<int32_t>()[t * k + 1] == order[1],
           "route ids t=%d", t);
    EXPECT(std::fabs(w.data_ptr<float>()[t * k] - s0 / (s0 + s1)) < 1e-6, "route w");
  }
  auto [off, e2p, p2e] = moe_permute(ids, E);
  std::vector<int> flat(ids.data_ptr<int32_t>(), ids.data_ptr<int32_t>() + T * k), ord(T * k);
  std::iota(ord.begin(), ord.end(), 0);
  std::stable_sort(ord.begin(), ord.end(), [&](int a, int b) { return flat[a] < flat[b]; });
  for (int r = 0; r < T * k; ++r) {
    EXPECT(p2e.data_ptr<int32_t>()[r] == ord[r], "p2e");
    EXPECT(e2p.data_ptr<int32_t>()[ord[r]] == r, "e2p");
  }
  EXPECT(off.data_ptr<int64_t>()[E] == T * k, "offsets");
  at::Tensor hidden = make({T, Hd}, at::kBFloat16);
  for (int i = 0; i < T * Hd; ++i) hidden.data_ptr<__nv_bfloat16>()[i] = __float2bfloat16(nrm());
  at::Tensor g = moe_gather(hidden, p2e, k, {}, {}, {});
  at::Tensor gt = moe_gather(hidden, {}, k, {}, {}, e2p);  // token by token, no row map
  for (int r = 0; r < T * k; ++r) {
    EXPECT(std::memcmp(g.data_ptr<__nv_bfloat16>() + r * Hd, hidden.data_ptr<__nv_bfloat16>() + (ord[r] / k) * Hd,
                       2 * Hd) == 0,
           "gather row %d", r);
    EXPECT(std::memcmp(gt.data_ptr<__nv_bfloat16>() + r * Hd, g.data_ptr<__nv_bfloat16>() + r * Hd, 2 * Hd) == 0,
           "gather by token row %d", r);
  }
  at::Tensor out = moe_combine(g, k, e2p, w, hidden, 0.5, at::kFloat);
  double maxerr = 0;
  for (int t = 0; t < T; ++t)
    for (int c = 0; c < Hd; ++c) {
      double hv = __bfloat162float(hidden.data_ptr<__nv_bfloat16>()[t * Hd + c]);
      double ref = (w.data_ptr<float>()[t * k] + w.data_ptr<float>()[t * k + 1]) * hv + 0.5 * hv;
      maxerr = std::max(maxerr, std::fabs(out.data_ptr<float>()[t * Hd + c] - ref) / (std::fabs(ref) + 1e-30));
    }
  EXPECT(maxerr < 1e-6, "combine rel err %g", maxerr);
  std::printf("moe: route/permute/gather exact, combine rel err %.3g\n", maxerr);
  try {
    moe_route(logits, 9, "softmax", false, {}, 1, 1, 0.0, 1.0, false, {});
    EXPECT(false, "no throw");
  } catch (const std::exception& e) {
    std::printf("refusal: %s\n", e.what());
    EXPECT(std::strstr(e.what(), "route: top_k must not exceed num_experts") != nullptr, "reason: %s", e.what());
  }
}

void test_token_drop() {
  // seq 0: 12 tokens, image at [2, 8); seq 1: 5 tokens, text only.
  const int Hq = 4, Hkv = 2, d = 16, L = 17, D = 8;
  std::vector<int64_t> cu = {0, 12, 17}, cus = {0, 1, 1}, st = {2}, ln = {6};
  at::Tensor q = make({2, Hq, d}, at::kFloat), k = make({L, Hkv, d}, at::kFloat);
  for (int i = 0; i < 2 * Hq * d; ++i) q.data_ptr<float>()[i] = nrm();
  for (int i = 0; i < L * Hkv * d; ++i) k.data_ptr<float>()[i] = nrm();
  at::Tensor tcu = from(cu, at::kLong), tcus = from(cus, at::kLong), tst = from(st, at::kLong),
             tln = from(ln, at::kLong);
  at::Tensor scores = token_drop_score(q, k, tcu, tcus, tst, tln, 6, 0.0, false, {}, {});
  std::vector<double> p(12, 0.0);
  for (int h = 0; h < Hq; ++h) {
    std::vector<double> lg(12);
    double m = -1e300;
    for (int j = 0; j < 12; ++j) {
      double a = 0;
      for (int i = 0; i < d; ++i)
        a += (double)q.data_ptr<float>()[h * d + i] * k.data_ptr<float>()[(j * Hkv + h / 2) * d + i];
      lg[j] = a / 4.0;
      m = std::max(m, lg[j]);
    }
    double s = 0;
    for (double x : lg) s += std::exp(x - m);
    for (int j = 0; j < 12; ++j) p[j] += std::exp(lg[j] - m) / s / Hq;
  }
  double maxrel = 0;
  for (int j = 0; j < 6; ++j) maxrel = std::max(maxrel, std::fabs(scores.data_ptr<float>()[j] - p[2 + j]) / p[2 + j]);
  EXPECT(maxrel < 1e-5, "scores rel err %g", maxrel);
  auto [kept, cu_kept] = token_drop_select(scores, tcu, tcus, tst, tln, L, 3, 0.5, 0, {});
  std::vector<int> ord(6);
  std::iota(ord.begin(), ord.end(), 0);
  std::stable_sort(ord.begin(), ord.end(),
                   [&](int a, int b) { return scores.data_ptr<float>()[a] > scores.data_ptr<float>()[b]; });
  std::vector<int64_t> want(ord.begin(), ord.begin() + 3);
  std::sort(want.begin(), want.end());
  for (int i = 0; i < 3; ++i) EXPECT(kept.data_ptr<int64_t>()[i] == want[i] + 2, "kept %d", i);
  at::Tensor hidden = make({L, D}, at::kFloat);
  for (int i = 0; i < L * D; ++i) hidden.data_ptr<float>()[i] = (float)i;
  std::vector<int64_t> posv(3 * L);
  for (int r = 0; r < 3; ++r)
    for (int i = 0; i < L; ++i) posv[r * L + i] = 100 * r + i;
  at::Tensor pos = from(posv, at::kLong);
  pos.sz = {3, L};
  pos.st = {L, 1};
  auto [h2, ncu, rmap, nst, nln, pout] = token_drop_compact(hidden, tcu, tcus, tst, tln, 6, kept, cu_kept, 1, pos);
  std::vector<int64_t> rows;
  for (int i = 0; i < 12; ++i)
    if (i < 2 || i >= 8 || std::find(want.begin(), want.end(), i - 2) != want.end()) rows.push_back(i);
  for (int i = 12; i < 17; ++i) rows.push_back(i);
  EXPECT(h2.size(0) == (int64_t)rows.size(), "rows %ld", (long)h2.size(0));
  for (size_t r = 0; r < rows.size(); ++r) {
    EXPECT(rmap.data_ptr<int64_t>()[r] == rows[r], "row map %zu", r);
    EXPECT(h2.data_ptr<float>()[r * D + 3] == hidden.data_ptr<float>()[rows[r] * D + 3], "hidden %zu", r);
    for (int pr = 0; pr < 3; ++pr)
      EXPECT(pout.data_ptr<int64_t>()[pr * rows.size() + r] == posv[pr * L + rows[r]], "pos");
  }
  EXPECT(ncu.data_ptr<int64_t>()[1] == 9 && ncu.data_ptr<int64_t>()[2] == 14, "new cu");
  EXPECT(nst.data_ptr<int64_t>()[0] == 2 && nln.data_ptr<int64_t>()[0] == 3, "new span");
  std::printf("token_drop: scores max rel err %.3g, select/compact exact\n", maxrel);
}

void test_edges() {
  at::Tensor q = make({4, 2, 96}, at::kBFloat16);
  at::Tensor st = at::zeros({1, 2, 96, 96}, at::TensorOptions{}.dtype(at::kFloat));
  std::vector<int32_t> cu = {0, 4}, sl = {0};
  try {
    lightning_prefill(q, q, q, from(cu, at::kInt), from<float>({0.1f, 0.2f}, at::kFloat), st, from(sl, at::kInt), 1.0,
                      false, {}, {}, 0, false);
    EXPECT(false, "no throw");
  } catch (const std::exception& e) {
    std::printf("refusal: %s\n", e.what());
    EXPECT(std::strstr(e.what(), "head dim must be 64 or 128") != nullptr, "reason: %s", e.what());
  }
  at::Tensor ids = make({0, 2}, at::kInt);
  auto [off, e2p, p2e] = moe_permute(ids, 8);
  for (int e = 0; e <= 8; ++e) EXPECT(off.data_ptr<int64_t>()[e] == 0, "empty permute offsets");
  // empty prefill batch of one empty sequence
  at::Tensor q0 = make({0, 2, 64}, at::kBFloat16);
  at::Tensor st0 = at::zeros({1, 2, 64, 64}, at::TensorOptions{}.dtype(at::kFloat));
  std::vector<int32_t> cu0 = {0, 0};
  at::Tensor o0 = lightning_prefill(q0, q0, q0, from(cu0, at::kInt), from<float>({0.1f, 0.2f}, at::kFloat), st0,
                                    from(sl, at::kInt), 1.0, false, {}, {}, 0, false);
  EXPECT(o0.numel() == 0, "empty o");
  std::printf("edges ok\n");
}

int main() {
  test_edges();
  test_lightning();
  test_moe();
  test_token_drop();
  std::printf("%s (%d failures)\n", fails ? "FAILED" : "all ok", fails);
  return fails ? 1 : 0;
}
