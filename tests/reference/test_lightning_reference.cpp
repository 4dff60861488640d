// SPDX-License-Identifier: Apache-2.0
// The lightning attention references checked against each other and against the math written
// out independently here: the quadratic closed form
//     o_t = scale * ( sum_{j<=t} lambda^{t-j} (q_t . k_j) v_j + lambda^{t+1} q_t S_init )
//     S_t = lambda^t S_init + sum_{j<t} lambda^{t-1-j} k_j^T v_j
// (lambda^e taken as pow(exp(-s), e) here, the references use exp(-s e) or repeated products),
// plus the API contract (slots, checkpoints, layouts, validation) the kernels will share.
//
// Tolerances used throughout, from the precision:
//   - fp64 against fp64 (two summation orders of the same sums): relative RMSE per sequence and
//     head <= 1e-10. Worst-case growth is about (n + dk) * 2^-53 * (sum |terms| / |sum|), below
//     1e-12 for the lengths here; 1e-10 leaves margin and is still 1e8 times smaller than the
//     1/lambda defect (up to 14%) a wrong q_decay convention produces.
//   - fp32 states: a reference rounds its fp64 state to fp32 once per store, so against the fp64
//     closed form |got - ref| <= 2^-24 |ref| (+ fp64 noise); two references storing the same
//     state may differ by one fp32 ulp <= 2^-23 |value|.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#include "fulgur/lightning/params.hpp"
#include "fulgur/lightning/slopes.hpp"
#include "fulgur/reference/lightning.hpp"
#include "fulgur_test.hpp"

namespace {

namespace lt = fulgur::lightning;
namespace ref = fulgur::reference;
using fulgur::DType;
using fulgur_test::Rng;
using lt::StateLayout;

constexpr double kU32 = 5.9604644775390625e-08;  // 2^-24: fp32 unit roundoff
constexpr double kFp64Tol = 1e-10;               // see the header comment

double silu(double x) { return x / (1.0 + std::exp(-x)); }

// ------------------------------------------------------------------------------------------------
// Problems: a packed varlen batch of dense fp64 [T, H, d] tensors.

struct Problem {
  int H = 0, dk = 0, dv = 0;
  std::vector<int32_t> cu;      // [B+1]
  std::vector<double> q, k, v;  // [T, H, dk], [T, H, dk], [T, H, dv]
  std::vector<float> slopes;    // [H]
  int32_t B() const { return static_cast<int32_t>(cu.size()) - 1; }
  int64_t T() const { return cu.back(); }
  int64_t len(int b) const { return cu[b + 1] - cu[b]; }
  const double* qa(int64_t row, int h) const { return &q[(row * H + h) * dk]; }
  const double* ka(int64_t row, int h) const { return &k[(row * H + h) * dk]; }
  const double* va(int64_t row, int h) const { return &v[(row * H + h) * dv]; }
};

enum class Dist { kRandn, kSiluRandn };

Problem make_problem(Rng& rng, const std::vector<int>& lens, int dk, int dv, const std::vector<float>& slopes,
                     Dist dist) {
  Problem pb;
  pb.H = static_cast<int>(slopes.size());
  pb.dk = dk;
  pb.dv = dv;
  pb.slopes = slopes;
  pb.cu = {0};
  for (int n : lens) pb.cu.push_back(pb.cu.back() + n);
  // SiLU(randn): what MiniMax feeds the kernel; k and v then have a positive mean, so the state
  // grows like 1 / (1 - lambda) and a decay mistake shows.
  auto draw = [&] {
    const double x = rng.normal();
    return dist == Dist::kSiluRandn ? silu(x) : x;
  };
  const int64_t T = pb.T();
  pb.q.resize(T * pb.H * dk);
  pb.k.resize(T * pb.H * dk);
  pb.v.resize(T * pb.H * dv);
  for (double& x : pb.q) x = draw();
  for (double& x : pb.k) x = draw();
  for (double& x : pb.v) x = draw();
  return pb;
}

/// The rows [from_b, to_b) of each sequence b, as a new packed problem.
Problem sub_problem(const Problem& pb, const std::vector<int64_t>& from, const std::vector<int64_t>& to) {
  Problem s;
  s.H = pb.H;
  s.dk = pb.dk;
  s.dv = pb.dv;
  s.slopes = pb.slopes;
  s.cu = {0};
  for (int b = 0; b < pb.B(); ++b) {
    for (int64_t t = from[b]; t < to[b]; ++t) {
      const int64_t row = pb.cu[b] + t;
      s.q.insert(s.q.end(), pb.qa(row, 0), pb.qa(row, 0) + int64_t{pb.H} * pb.dk);
      s.k.insert(s.k.end(), pb.ka(row, 0), pb.ka(row, 0) + int64_t{pb.H} * pb.dk);
      s.v.insert(s.v.end(), pb.va(row, 0), pb.va(row, 0) + int64_t{pb.H} * pb.dv);
    }
    s.cu.push_back(s.cu.back() + static_cast<int32_t>(to[b] - from[b]));
  }
  return s;
}

/// MiniMax-Text-01 slopes (vLLM convention) for a few of its 64 heads at one layer of 80.
std::vector<float> minimax_heads(int layer, const std::vector<int>& heads) {
  std::vector<float> all(64);
  REQUIRE(lt::fill_minimax_slopes(all.data(), 64, layer, 80).is_ok());
  std::vector<float> out;
  for (int h : heads) out.push_back(all[h]);
  return out;
}

// ------------------------------------------------------------------------------------------------
// The independent oracle: the closed forms above, O(n^2) per sequence and head.

double lambda_pow(float s, int64_t e) { return std::pow(std::exp(-static_cast<double>(s)), e); }

/// o_t for t in [0, n) of sequence b, head h, as [n][dv]. S0: kv-ordered [dk*dv], empty = zero.
std::vector<double> closed_form_o(const Problem& pb, int b, int h, double scale, const std::vector<double>& S0) {
  const int64_t n = pb.len(b), r0 = pb.cu[b];
  const int dk = pb.dk, dv = pb.dv;
  const float s = pb.slopes[h];
  std::vector<double> o(n * dv, 0.0);
  for (int64_t t = 0; t < n; ++t) {
    const double* qt = pb.qa(r0 + t, h);
    double* ot = &o[t * dv];
    for (int64_t j = 0; j <= t; ++j) {
      const double* kj = pb.ka(r0 + j, h);
      const double* vj = pb.va(r0 + j, h);
      double dot = 0;
      for (int i = 0; i < dk; ++i) dot += qt[i] * kj[i];
      const double w = lambda_pow(s, t - j) * dot;
      for (int c = 0; c < dv; ++c) ot[c] += w * vj[c];
    }
    if (!S0.empty()) {
      const double d = lambda_pow(s, t + 1);
      for (int c = 0; c < dv; ++c) {
        double acc = 0;
        for (int i = 0; i < dk; ++i) acc += qt[i] * S0[i * dv + c];
        ot[c] += d * acc;
      }
    }
    for (int c = 0; c < dv; ++c) ot[c] *= scale;
  }
  return o;
}

/// The state after the first t tokens of sequence b, head h (kv order).
std::vector<double> closed_form_state(const Problem& pb, int b, int h, int64_t t, const std::vector<double>& S0) {
  const int dk = pb.dk, dv = pb.dv;
  const float s = pb.slopes[h];
  std::vector<double> S(size_t(dk) * dv, 0.0);
  if (!S0.empty()) {
    const double d = lambda_pow(s, t);
    for (size_t e = 0; e < S.size(); ++e) S[e] = d * S0[e];
  }
  for (int64_t j = 0; j < t; ++j) {
    const double w = lambda_pow(s, t - 1 - j);
    const double* kj = pb.ka(pb.cu[b] + j, h);
    const double* vj = pb.va(pb.cu[b] + j, h);
    for (int i = 0; i < dk; ++i)
      for (int c = 0; c < dv; ++c) S[i * dv + c] += w * kj[i] * vj[c];
  }
  return S;
}

// ------------------------------------------------------------------------------------------------
// Buffers and params.

/// A pool of random states, normal(0.5, 1): non-zero, with a positive mean like a real state.
std::vector<float> random_pool(Rng& rng, int64_t slots, int H, int dk, int dv) {
  std::vector<float> pool(slots * H * dk * dv);
  for (float& x : pool) x = static_cast<float>(rng.normal(0.5, 1.0));
  return pool;
}

int64_t head_offset(int64_t slot, int H, int dk, int dv, int h) { return (slot * H + h) * int64_t{dk} * dv; }

/// Element (i, j) of a dk x dv state stored in `layout` (written from the layout's definition).
double state_at(const float* head, StateLayout layout, int dk, int dv, int i, int j) {
  return layout == StateLayout::kKV ? head[i * dv + j] : head[j * dk + i];
}

/// One head of a pool (or checkpoint row) as an fp64 kv-ordered copy.
std::vector<double> head_kv(const float* head, StateLayout layout, int dk, int dv) {
  std::vector<double> S(size_t(dk) * dv);
  for (int i = 0; i < dk; ++i)
    for (int j = 0; j < dv; ++j) S[i * dv + j] = state_at(head, layout, dk, dv, i, j);
  return S;
}

/// The same pool in the other layout.
std::vector<float> transpose_pool(const std::vector<float>& pool, int H, int dk, int dv) {
  std::vector<float> out(pool.size());
  const int64_t heads = static_cast<int64_t>(pool.size()) / (int64_t{dk} * dv);
  for (int64_t g = 0; g < heads; ++g)
    for (int i = 0; i < dk; ++i)
      for (int j = 0; j < dv; ++j) out[g * dk * dv + j * dk + i] = pool[g * dk * dv + i * dv + j];
  (void)H;
  return out;
}

lt::PrefillParams prefill_params(const Problem& pb, std::vector<double>& o) {
  lt::PrefillParams p;
  p.batch_size = pb.B();
  p.num_tokens = pb.T();
  p.cu_seqlens = pb.cu.data();
  p.num_heads = pb.H;
  p.dk = pb.dk;
  p.dv = pb.dv;
  p.qkv_dtype = DType::kF64;
  p.q = pb.q.data();
  p.k = pb.k.data();
  p.v = pb.v.data();
  p.q_stride_token = int64_t{pb.H} * pb.dk;
  p.q_stride_head = pb.dk;
  p.k_stride_token = int64_t{pb.H} * pb.dk;
  p.k_stride_head = pb.dk;
  p.v_stride_token = int64_t{pb.H} * pb.dv;
  p.v_stride_head = pb.dv;
  o.assign(pb.T() * pb.H * pb.dv, 0.0);
  fulgur_test::poison(o);
  p.o_dtype = DType::kF64;
  p.o = o.data();
  p.o_stride_token = int64_t{pb.H} * pb.dv;
  p.o_stride_head = pb.dv;
  p.slopes = pb.slopes.data();
  return p;
}

void attach_pool(lt::PrefillParams& p, std::vector<float>& pool, const std::vector<int32_t>& slots,
                 StateLayout layout = StateLayout::kKV) {
  p.state = pool.data();
  p.state_layout = layout;
  p.num_slots = static_cast<int64_t>(pool.size()) / (int64_t{p.num_heads} * p.dk * p.dv);
  p.slot_ids = slots.data();
}

/// Sequence b, head h of a dense [T, H, dv] output, as [n][dv] doubles.
template <typename T>
std::vector<double> o_slice(const std::vector<T>& o, const Problem& pb, int b, int h) {
  std::vector<double> out;
  for (int64_t t = 0; t < pb.len(b); ++t)
    for (int c = 0; c < pb.dv; ++c) out.push_back(fulgur::to_double(o[((pb.cu[b] + t) * pb.H + h) * pb.dv + c]));
  return out;
}

/// Worst relative RMSE over (sequence, head) between two fp64 outputs, so a short sequence or a
/// fast-decaying head cannot hide behind a long one. Empty sequences are skipped.
double worst_rel_rmse(const std::vector<double>& got, const std::vector<double>& want, const Problem& pb) {
  double worst = 0;
  for (int b = 0; b < pb.B(); ++b) {
    if (pb.len(b) == 0) continue;
    for (int h = 0; h < pb.H; ++h)
      worst = std::max(worst, fulgur_test::rel_rmse(o_slice(got, pb, b, h), o_slice(want, pb, b, h)));
  }
  return worst;
}

/// Elements of two fp32 state buffers that differ by more than one fp32 ulp (2^-23 |x|).
int64_t float_mismatches(const std::vector<float>& a, const std::vector<float>& b) {
  int64_t bad = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double x = a[i], y = b[i];
    if (!(std::fabs(x - y) <= 2 * kU32 * std::max(std::fabs(x), std::fabs(y)))) ++bad;
  }
  return bad;
}

/// Elements of an fp32 state (in `layout`) that are not the fp32 rounding of the fp64 kv-ordered
/// `want`: |got - want| <= 2^-24 |want| + kFp64Tol * max|want| (the fp64 noise of the oracle).
int64_t state_mismatches(const float* got, StateLayout layout, int dk, int dv, const std::vector<double>& want) {
  double mx = 0;
  for (double x : want) mx = std::max(mx, std::fabs(x));
  int64_t bad = 0;
  for (int i = 0; i < dk; ++i)
    for (int j = 0; j < dv; ++j) {
      const double w = want[i * dv + j];
      const double g = state_at(got, layout, dk, dv, i, j);
      if (!(std::fabs(g - w) <= kU32 * std::fabs(w) + kFp64Tol * mx)) ++bad;
    }
  return bad;
}

template <typename T>
bool bytes_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

/// fp64 decode parameters over dense [rows, H, d] q, k, v and o (rows = batch_size * num_steps).
lt::DecodeParams decode_params(const Problem& pb, int dk, int dv, int32_t batch, const std::vector<double>& q,
                               const std::vector<double>& k, const std::vector<double>& v, std::vector<double>& o,
                               double scale, std::vector<float>& pool, int64_t num_slots, const int32_t* slots) {
  lt::DecodeParams d;
  d.batch_size = batch;
  d.num_heads = pb.H;
  d.dk = dk;
  d.dv = dv;
  d.qkv_dtype = DType::kF64;
  d.q = q.data();
  d.k = k.data();
  d.v = v.data();
  d.q_stride_token = d.k_stride_token = int64_t{pb.H} * dk;
  d.q_stride_head = d.k_stride_head = dk;
  d.v_stride_token = int64_t{pb.H} * dv;
  d.v_stride_head = dv;
  d.o_dtype = DType::kF64;
  d.o = o.data();
  d.o_stride_token = int64_t{pb.H} * dv;
  d.o_stride_head = dv;
  d.slopes = pb.slopes.data();
  d.scale = static_cast<float>(scale);
  d.state = pool.data();
  d.num_slots = num_slots;
  d.slot_ids = slots;
  return d;
}

bool is_poisoned(double x) {
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits == ~uint64_t{0};
}

}  // namespace

// ================================================================================================

TEST_CASE("lightning: block form equals the recurrence for every block size 1..256", "[reference][lightning]") {
  Rng rng("lightning block sweep");
  FULGUR_INFO_SEED(rng);
  // Fastest head of layer 0 (s = 0.917) and slowest of layer 78 (s = 5e-5): the two ends of the
  // decay range MiniMax uses.
  const std::vector<float> slopes = {minimax_heads(0, {0})[0], minimax_heads(78, {63})[0]};
  const int dk = 8, dv = 12;
  for (int bs = 1; bs <= 256; ++bs) {
    INFO("block size " << bs);
    // Lengths not multiples of the block (1, 31, 255, 257), one exactly a block, one empty.
    const std::vector<int> lens = {1, 0, 31, bs, 255, 257};
    Problem pb = make_problem(rng, lens, dk, dv, slopes, Dist::kSiluRandn);
    const std::vector<int32_t> slots = {5, 0, 3, 7, 1, 2};
    const std::vector<uint8_t> has_init = {1, 1, 0, 1, 1, 1};
    const std::vector<float> pool0 = random_pool(rng, 8, pb.H, dk, dv);
    const int64_t C = int64_t{bs} * ((32 + bs - 1) / bs);  // >= 32 tokens, a multiple of bs
    int64_t rows = 0;
    for (int b = 0; b < pb.B(); ++b) rows += pb.len(b) / C;

    std::vector<double> o_rec, o_blk;
    std::vector<float> pool_rec = pool0, pool_blk = pool0;
    std::vector<float> ck_rec(rows * pb.H * dk * dv), ck_blk(ck_rec.size());
    fulgur_test::poison(ck_rec);
    fulgur_test::poison(ck_blk);
    auto setup = [&](lt::PrefillParams& p, std::vector<float>& pool, std::vector<float>& ck) {
      attach_pool(p, pool, slots);
      p.has_initial_state = has_init.data();
      p.checkpoints = ck.data();
      p.checkpoint_interval = C;
      p.num_checkpoint_rows = rows;
    };
    lt::PrefillParams pr = prefill_params(pb, o_rec);
    setup(pr, pool_rec, ck_rec);
    lt::PrefillParams pk = prefill_params(pb, o_blk);
    setup(pk, pool_blk, ck_blk);
    REQUIRE(ref::lightning_prefill(pr).is_ok());
    REQUIRE(ref::lightning_prefill_blocked(pk, bs).is_ok());

    CHECK(worst_rel_rmse(o_blk, o_rec, pb) <= kFp64Tol);
    CHECK(float_mismatches(pool_blk, pool_rec) == 0);
    CHECK(float_mismatches(ck_blk, ck_rec) == 0);  // NaN poison left anywhere fails too
  }
}

TEST_CASE("lightning: recurrence and block form match the quadratic closed form", "[reference][lightning]") {
  Rng rng("lightning closed form");
  FULGUR_INFO_SEED(rng);
  // Layer-0, -40 and -78 heads, plus s = 0 (plain linear attention, lambda = 1).
  std::vector<float> slopes = {minimax_heads(0, {0})[0], minimax_heads(40, {20})[0], minimax_heads(78, {63})[0], 0.f};
  const int dk = 16, dv = 8;
  Problem pb = make_problem(rng, {0, 1, 31, 255, 257, 913}, dk, dv, slopes, Dist::kRandn);
  const std::vector<int32_t> slots = {4, 0, 1, 2, 3, 5};
  const std::vector<float> pool0 = random_pool(rng, 6, pb.H, dk, dv);
  const double scale = 1.0 / std::sqrt(double(dk));  // fla's default, to exercise scale != 1

  for (int form = 0; form < 3; ++form) {
    const int bs = form == 0 ? 0 : form == 1 ? 64 : 256;
    INFO((form == 0 ? "recurrence" : "blocked") << " block " << bs);
    std::vector<double> o;
    std::vector<float> pool = pool0;
    lt::PrefillParams p = prefill_params(pb, o);
    attach_pool(p, pool, slots);
    p.scale = static_cast<float>(scale);
    REQUIRE((form == 0 ? ref::lightning_prefill(p) : ref::lightning_prefill_blocked(p, bs)).is_ok());
    for (int b = 0; b < pb.B(); ++b)
      for (int h = 0; h < pb.H; ++h) {
        INFO("sequence " << b << " head " << h);
        const std::vector<double> S0 =
            head_kv(&pool0[head_offset(slots[b], pb.H, dk, dv, h)], StateLayout::kKV, dk, dv);
        if (pb.len(b) > 0) {
          CHECK(fulgur_test::rel_rmse(o_slice(o, pb, b, h), closed_form_o(pb, b, h, double(p.scale), S0)) <= kFp64Tol);
        }
        CHECK(state_mismatches(&pool[head_offset(slots[b], pb.H, dk, dv, h)], StateLayout::kKV, dk, dv,
                               closed_form_state(pb, b, h, pb.len(b), S0)) == 0);
      }
  }
}

TEST_CASE("lightning: checkpoints hold the intermediate states", "[reference][lightning]") {
  Rng rng("lightning checkpoints");
  FULGUR_INFO_SEED(rng);
  const int dk = 8, dv = 8;
  Problem pb = make_problem(rng, {200, 63, 0, 64, 129}, dk, dv, minimax_heads(40, {0, 63}), Dist::kSiluRandn);
  const int64_t C = 64;  // counts: 3, 0, 0, 1 (= the final state), 2
  const std::vector<int64_t> counts = {3, 0, 0, 1, 2};
  const std::vector<int32_t> slots = {2, 0, 4, 3, -1};  // the last one is stateless: no rows
  const int64_t row_elems = int64_t{pb.H} * dk * dv;

  for (StateLayout layout : {StateLayout::kKV, StateLayout::kVK}) {
    for (bool packed : {false, true}) {
      for (int bs : {0, 16, 64}) {
        INFO("layout " << int(layout) << " packed " << packed << " block " << bs);
        std::vector<float> pool0 = random_pool(rng, 5, pb.H, dk, dv);
        std::vector<float> pool = pool0;
        // Caller-chosen rows with gaps: sequence b gets rows [off[b], off[b+1]), more than it
        // needs, so the spare rows must stay untouched. Packed: the documented prefix sum.
        const std::vector<int32_t> offsets = {1, 5, 6, 6, 8, 11};
        const int64_t num_rows = packed ? 6 : 11;
        std::vector<float> ck(num_rows * row_elems);
        fulgur_test::poison(ck);
        const std::vector<float> ck_before = ck;
        std::vector<double> o;
        lt::PrefillParams p = prefill_params(pb, o);
        attach_pool(p, pool, slots, layout);
        p.checkpoints = ck.data();
        p.checkpoint_interval = C;
        p.checkpoint_offsets = packed ? nullptr : offsets.data();
        p.num_checkpoint_rows = num_rows;
        REQUIRE((bs == 0 ? ref::lightning_prefill(p) : ref::lightning_prefill_blocked(p, bs)).is_ok());

        std::vector<bool> written(num_rows, false);
        int64_t packed_row = 0;
        for (int b = 0; b < pb.B(); ++b) {
          const int64_t base = packed ? packed_row : offsets[b];
          packed_row += pb.len(b) / C;
          if (slots[b] < 0) continue;
          for (int64_t i = 0; i < counts[b]; ++i) {
            written[base + i] = true;
            for (int h = 0; h < pb.H; ++h) {
              INFO("sequence " << b << " checkpoint " << i << " head " << h);
              const std::vector<double> S0 = head_kv(&pool0[head_offset(slots[b], pb.H, dk, dv, h)], layout, dk, dv);
              const std::vector<double> want = closed_form_state(pb, b, h, (i + 1) * C, S0);
              CHECK(state_mismatches(&ck[(base + i) * row_elems + h * dk * dv], layout, dk, dv, want) == 0);
            }
          }
        }
        // Rows no sequence owns (gaps, spare capacity, the stateless sequence's rows) untouched.
        for (int64_t r = 0; r < num_rows; ++r) {
          if (written[r]) continue;
          INFO("row " << r);
          CHECK(std::memcmp(&ck[r * row_elems], &ck_before[r * row_elems], row_elems * sizeof(float)) == 0);
        }
      }
    }
  }
}

TEST_CASE("lightning: prefill then decode steps equals one longer prefill", "[reference][lightning]") {
  Rng rng("lightning prefill decode");
  FULGUR_INFO_SEED(rng);
  const int dk = 16, dv = 16, steps = 6;
  const std::vector<int> prompt = {5, 64, 130};
  std::vector<int> full = prompt;
  for (int& n : full) n += steps;
  Problem pb = make_problem(rng, full, dk, dv, minimax_heads(78, {0, 40, 63}), Dist::kSiluRandn);
  std::vector<int64_t> zero(3, 0), cut(prompt.begin(), prompt.end());
  const Problem head = sub_problem(pb, zero, cut);
  const std::vector<int32_t> slots = {3, 0, 5};
  const std::vector<float> pool0 = random_pool(rng, 6, pb.H, dk, dv);
  const double scale = 1.0;

  // One prefill over prompt + steps tokens: the reference answer.
  std::vector<double> o_full;
  std::vector<float> pool_full = pool0;
  lt::PrefillParams pf = prefill_params(pb, o_full);
  attach_pool(pf, pool_full, slots);
  REQUIRE(ref::lightning_prefill(pf).is_ok());

  // Smax[b][h]: elementwise max |S_u| over the states the chain stores (u = prompt .. prompt +
  // steps), from the closed form. Each fp32 store perturbs the state by <= 2^-24 |S_u|, and
  // earlier perturbations only decay, so after r stores the state is off by <= r 2^-24 Smax.
  std::vector<std::vector<std::vector<double>>> Smax(3, std::vector<std::vector<double>>(pb.H));
  for (int b = 0; b < 3; ++b)
    for (int h = 0; h < pb.H; ++h) {
      const std::vector<double> S0 = head_kv(&pool0[head_offset(slots[b], pb.H, dk, dv, h)], StateLayout::kKV, dk, dv);
      Smax[b][h].assign(size_t(dk) * dv, 0.0);
      for (int64_t u = prompt[b]; u <= prompt[b] + steps; ++u) {
        const std::vector<double> S = closed_form_state(pb, b, h, u, S0);
        for (size_t e = 0; e < S.size(); ++e) Smax[b][h][e] = std::max(Smax[b][h][e], std::fabs(S[e]));
      }
    }

  for (int bs : {0, 16}) {
    INFO("prompt prefill " << (bs == 0 ? "recurrence" : "blocked 16"));
    std::vector<double> o_head;
    std::vector<float> pool = pool0;
    lt::PrefillParams ph = prefill_params(head, o_head);
    attach_pool(ph, pool, slots);
    REQUIRE((bs == 0 ? ref::lightning_prefill(ph) : ref::lightning_prefill_blocked(ph, bs)).is_ok());

    // The same continuation as one multi-token call (num_steps = steps, speculative decoding)
    // from the prompt's state, with every step's state written out. The state was stored once
    // (after the prompt) before the call, so o is within 2^-24 scale sum_i |q_i| Smax(i, j) of the
    // long prefill; step state t is the closed form at prompt + t + 1 up to that store and its
    // own rounding (2 stores); the pool holds the last step state, bit for bit.
    {
      const int B = 3;
      std::vector<float> mpool = pool;
      std::vector<double> q(B * steps * pb.H * dk), k(q.size()), v(B * steps * pb.H * dv), o(v.size());
      std::vector<float> st(size_t(B) * steps * pb.H * dk * dv);
      fulgur_test::poison(o);
      for (int b = 0; b < B; ++b)
        for (int t = 0; t < steps; ++t) {
          const int64_t row = pb.cu[b] + prompt[b] + t, r = int64_t{b} * steps + t;
          std::copy(pb.qa(row, 0), pb.qa(row, 0) + pb.H * dk, &q[r * pb.H * dk]);
          std::copy(pb.ka(row, 0), pb.ka(row, 0) + pb.H * dk, &k[r * pb.H * dk]);
          std::copy(pb.va(row, 0), pb.va(row, 0) + pb.H * dv, &v[r * pb.H * dv]);
        }
      lt::DecodeParams d = decode_params(pb, dk, dv, B, q, k, v, o, scale, mpool, 6, slots.data());
      d.num_steps = steps;
      d.step_states = st.data();
      REQUIRE(ref::lightning_decode(d).is_ok());
      for (int b = 0; b < B; ++b)
        for (int h = 0; h < pb.H; ++h) {
          INFO("multi-token call, sequence " << b << " head " << h);
          const std::vector<double> S0 =
              head_kv(&pool0[head_offset(slots[b], pb.H, dk, dv, h)], StateLayout::kKV, dk, dv);
          for (int t = 0; t < steps; ++t) {
            const int64_t tok = pb.cu[b] + prompt[b] + t, r = int64_t{b} * steps + t;
            const double* qt = pb.qa(tok, h);
            for (int j = 0; j < dv; ++j) {
              double mag = 0;
              for (int i = 0; i < dk; ++i) mag += std::fabs(qt[i]) * Smax[b][h][i * dv + j];
              const double want = o_full[(tok * pb.H + h) * dv + j];
              CHECK(std::fabs(o[(r * pb.H + h) * dv + j] - want) <= kU32 * scale * mag + kFp64Tol * std::fabs(want));
            }
            const std::vector<double> S = closed_form_state(pb, b, h, prompt[b] + t + 1, S0);
            const float* got = &st[(size_t(r) * pb.H + h) * dk * dv];
            for (int e = 0; e < dk * dv; ++e)
              CHECK(std::fabs(double(got[e]) - S[e]) <= 2 * kU32 * Smax[b][h][e] * (1 + 1e-6) + kFp64Tol * std::fabs(S[e]));
          }
          const float* last = &st[(size_t(b * steps + steps - 1) * pb.H + h) * dk * dv];
          CHECK(std::memcmp(&mpool[head_offset(slots[b], pb.H, dk, dv, h)], last, sizeof(float) * dk * dv) == 0);
        }
    }

    // Decode batch: the three sequences plus a padding row (slot -1) in the middle.
    const int B = 4;
    const std::vector<int32_t> dslots = {slots[0], -1, slots[1], slots[2]};
    const std::vector<int> seq_of_row = {0, -1, 1, 2};
    for (int step = 0; step < steps; ++step) {
      INFO("decode step " << step);
      std::vector<double> q(B * pb.H * dk), k(B * pb.H * dk), v(B * pb.H * dv), o(B * pb.H * dv);
      for (double& x : q) x = rng.normal();  // padding row keeps random data
      for (double& x : k) x = rng.normal();
      for (double& x : v) x = rng.normal();
      fulgur_test::poison(o);
      for (int r = 0; r < B; ++r) {
        if (seq_of_row[r] < 0) continue;
        const int64_t row = pb.cu[seq_of_row[r]] + prompt[seq_of_row[r]] + step;
        std::copy(pb.qa(row, 0), pb.qa(row, 0) + pb.H * dk, &q[r * pb.H * dk]);
        std::copy(pb.ka(row, 0), pb.ka(row, 0) + pb.H * dk, &k[r * pb.H * dk]);
        std::copy(pb.va(row, 0), pb.va(row, 0) + pb.H * dv, &v[r * pb.H * dv]);
      }
      const lt::DecodeParams d = decode_params(pb, dk, dv, B, q, k, v, o, scale, pool, 6, dslots.data());
      REQUIRE(ref::lightning_decode(d).is_ok());

      for (int r = 0; r < B; ++r) {
        const int b = seq_of_row[r];
        if (b < 0) {
          for (int e = 0; e < pb.H * dv; ++e) CHECK(is_poisoned(o[r * pb.H * dv + e]));
          continue;
        }
        const int64_t t = prompt[b] + step;  // token index inside sequence b
        for (int h = 0; h < pb.H; ++h) {
          INFO("sequence " << b << " head " << h);
          // The chain has stored the state step + 1 times (after the prompt, after each earlier
          // step), so |o_chain - o_full| <= (step + 1) 2^-24 scale sum_i |q_i| Smax(i, j), plus
          // fp64 noise.
          const double* qt = pb.qa(pb.cu[b] + t, h);
          for (int j = 0; j < dv; ++j) {
            double mag = 0;
            for (int i = 0; i < dk; ++i) mag += std::fabs(qt[i]) * Smax[b][h][i * dv + j];
            const double want = o_full[((pb.cu[b] + t) * pb.H + h) * dv + j];
            const double got = o[(r * pb.H + h) * dv + j];
            CHECK(std::fabs(got - want) <= (step + 1) * kU32 * scale * mag + kFp64Tol * std::fabs(want));
          }
        }
      }
    }
    // Final states: steps + 1 stores in the chain, one in the long prefill.
    for (int b = 0; b < 3; ++b)
      for (int h = 0; h < pb.H; ++h) {
        const float* got = &pool[head_offset(slots[b], pb.H, dk, dv, h)];
        const float* want = &pool_full[head_offset(slots[b], pb.H, dk, dv, h)];
        for (int e = 0; e < dk * dv; ++e)
          CHECK(std::fabs(double(got[e]) - want[e]) <= (steps + 2) * kU32 * Smax[b][h][e] * (1 + 1e-6));
      }
    // Slots nobody named are untouched.
    CHECK(std::memcmp(&pool[head_offset(1, pb.H, dk, dv, 0)], &pool0[head_offset(1, pb.H, dk, dv, 0)],
                      2 * pb.H * dk * dv * sizeof(float)) == 0);  // slots 1, 2
    CHECK(std::memcmp(&pool[head_offset(4, pb.H, dk, dv, 0)], &pool0[head_offset(4, pb.H, dk, dv, 0)],
                      pb.H * dk * dv * sizeof(float)) == 0);  // slot 4
  }
}

TEST_CASE("lightning: a prefill split in two calls equals one prefill", "[reference][lightning]") {
  Rng rng("lightning split prefill");
  FULGUR_INFO_SEED(rng);
  const int dk = 8, dv = 16;
  Problem pb = make_problem(rng, {300, 77, 1, 129}, dk, dv, minimax_heads(40, {0, 63}), Dist::kSiluRandn);
  // Split points: mid-block, all in the first call, all in the second, exactly a block.
  const std::vector<int64_t> zero = {0, 0, 0, 0}, split = {100, 77, 0, 64}, end = {300, 77, 1, 129};
  const Problem first = sub_problem(pb, zero, split), second = sub_problem(pb, split, end);
  const std::vector<int32_t> slots = {1, 3, 0, 2};
  const std::vector<float> pool0 = random_pool(rng, 4, pb.H, dk, dv);

  for (int bs : {0, 64}) {
    INFO((bs == 0 ? "recurrence" : "blocked 64"));
    auto run = [&](const Problem& p_, std::vector<double>& o, std::vector<float>& pool) {
      lt::PrefillParams p = prefill_params(p_, o);
      attach_pool(p, pool, slots);
      REQUIRE((bs == 0 ? ref::lightning_prefill(p) : ref::lightning_prefill_blocked(p, bs)).is_ok());
    };
    std::vector<double> o_full, o1, o2;
    std::vector<float> pool_full = pool0, pool = pool0;
    run(pb, o_full, pool_full);
    run(first, o1, pool);
    const std::vector<float> pool_mid = pool;
    run(second, o2, pool);

    for (int b = 0; b < pb.B(); ++b)
      for (int h = 0; h < pb.H; ++h) {
        INFO("sequence " << b << " head " << h);
        const std::vector<double> full = o_slice(o_full, pb, b, h);
        // The first call does the same arithmetic on the same tokens: identical bits.
        const std::vector<double> a = o_slice(o1, first, b, h);
        CHECK(std::equal(a.begin(), a.end(), full.begin()));
        // The second call starts from the fp32 handover state (one rounding, <= 2^-24 |S_p|,
        // then only decayed): |o2 - o_full| <= 2^-24 scale sum_i |q_i| |S_p(i, j)| + fp64 noise.
        const std::vector<double> c = o_slice(o2, second, b, h);
        const std::vector<double> Sp =
            head_kv(&pool_mid[head_offset(slots[b], pb.H, dk, dv, h)], StateLayout::kKV, dk, dv);
        for (int64_t t = 0; t < second.len(b); ++t) {
          const double* qt = second.qa(second.cu[b] + t, h);
          for (int j = 0; j < dv; ++j) {
            double mag = 0;
            for (int i = 0; i < dk; ++i) mag += std::fabs(qt[i]) * std::fabs(Sp[i * dv + j]);
            const double want = full[(split[b] + t) * dv + j];
            CHECK(std::fabs(c[t * dv + j] - want) <= 2 * kU32 * mag + kFp64Tol * std::fabs(want));
          }
        }
        // Final state: the handover error decayed by lambda^(n - p), plus each side's own final
        // rounding: |got - want| <= 2^-24 (lambda^(n-p) |S_p| + 2 |S_n|) (+ 1e-6 slack).
        const float* got = &pool[head_offset(slots[b], pb.H, dk, dv, h)];
        const float* want = &pool_full[head_offset(slots[b], pb.H, dk, dv, h)];
        const double dec = lambda_pow(pb.slopes[h], pb.len(b) - split[b]);
        for (int e = 0; e < dk * dv; ++e)
          CHECK(std::fabs(double(got[e]) - want[e]) <=
                kU32 * (dec * std::fabs(Sp[e]) + 2 * std::fabs(double(want[e]))) * (1 + 1e-6));
      }
  }
}

TEST_CASE("lightning: both state layouts give the same results (transposed)", "[reference][lightning]") {
  Rng rng("lightning layouts");
  FULGUR_INFO_SEED(rng);
  const int dk = 8, dv = 12;  // dk != dv so a transposition slip changes the shape
  Problem pb = make_problem(rng, {70, 1, 33}, dk, dv, minimax_heads(0, {3, 60}), Dist::kSiluRandn);
  const std::vector<int32_t> slots = {2, 0, 1};
  const std::vector<float> pool_kv0 = random_pool(rng, 3, pb.H, dk, dv);
  const std::vector<float> pool_vk0 = transpose_pool(pool_kv0, pb.H, dk, dv);
  const int64_t rows = 70 / 16 + 0 + 33 / 16;

  for (int bs : {0, 16}) {
    INFO((bs == 0 ? "recurrence" : "blocked 16"));
    std::vector<double> o_kv, o_vk;
    std::vector<float> pool_kv = pool_kv0, pool_vk = pool_vk0;
    std::vector<float> ck_kv(rows * pb.H * dk * dv), ck_vk(ck_kv.size());
    auto run = [&](std::vector<double>& o, std::vector<float>& pool, std::vector<float>& ck, StateLayout layout) {
      lt::PrefillParams p = prefill_params(pb, o);
      attach_pool(p, pool, slots, layout);
      fulgur_test::poison(ck);
      p.checkpoints = ck.data();
      p.checkpoint_interval = 16;
      p.num_checkpoint_rows = rows;
      REQUIRE((bs == 0 ? ref::lightning_prefill(p) : ref::lightning_prefill_blocked(p, bs)).is_ok());
    };
    run(o_kv, pool_kv, ck_kv, StateLayout::kKV);
    run(o_vk, pool_vk, ck_vk, StateLayout::kVK);
    // The layout only moves where a state element lives: same arithmetic, identical bits.
    CHECK(bytes_equal(o_kv, o_vk));
    CHECK(bytes_equal(transpose_pool(pool_kv, pb.H, dk, dv), pool_vk));
    CHECK(bytes_equal(transpose_pool(ck_kv, pb.H, dk, dv), ck_vk));
    // And kVK means [dv][dk]: read through the layout's definition, it is the true state.
    for (int h = 0; h < pb.H; ++h) {
      const std::vector<double> S0 =
          head_kv(&pool_vk0[head_offset(slots[0], pb.H, dk, dv, h)], StateLayout::kVK, dk, dv);
      CHECK(state_mismatches(&pool_vk[head_offset(slots[0], pb.H, dk, dv, h)], StateLayout::kVK, dk, dv,
                             closed_form_state(pb, 0, h, 70, S0)) == 0);
    }
  }

  // Decode in both layouts.
  std::vector<float> pool_kv = pool_kv0, pool_vk = pool_vk0;
  const int B = 3;
  std::vector<double> q(B * pb.H * dk), k(q.size()), v(B * pb.H * dv), o_kv(v.size()), o_vk(v.size());
  for (double& x : q) x = silu(rng.normal());
  for (double& x : k) x = silu(rng.normal());
  for (double& x : v) x = silu(rng.normal());
  auto decode = [&](std::vector<double>& o, std::vector<float>& pool, StateLayout layout) {
    lt::DecodeParams d;
    d.batch_size = B;
    d.num_heads = pb.H;
    d.dk = dk;
    d.dv = dv;
    d.qkv_dtype = DType::kF64;
    d.q = q.data();
    d.k = k.data();
    d.v = v.data();
    d.q_stride_token = d.k_stride_token = int64_t{pb.H} * dk;
    d.q_stride_head = d.k_stride_head = dk;
    d.v_stride_token = d.o_stride_token = int64_t{pb.H} * dv;
    d.v_stride_head = d.o_stride_head = dv;
    d.o_dtype = DType::kF64;
    d.o = o.data();
    d.slopes = pb.slopes.data();
    d.state = pool.data();
    d.state_layout = layout;
    d.num_slots = 3;
    d.slot_ids = slots.data();
    fulgur_test::poison(o);
    REQUIRE(ref::lightning_decode(d).is_ok());
  };
  decode(o_kv, pool_kv, StateLayout::kKV);
  decode(o_vk, pool_vk, StateLayout::kVK);
  CHECK(bytes_equal(o_kv, o_vk));
  CHECK(bytes_equal(transpose_pool(pool_kv, pb.H, dk, dv), pool_vk));
  // One step by hand: S' = lambda S + k^T v, o = q S' (scale 1).
  for (int r = 0; r < B; ++r)
    for (int h = 0; h < pb.H; ++h) {
      const std::vector<double> S =
          head_kv(&pool_kv0[head_offset(slots[r], pb.H, dk, dv, h)], StateLayout::kKV, dk, dv);
      const double lam = std::exp(-double(pb.slopes[h]));
      const double* qr = &q[(r * pb.H + h) * dk];
      const double* kr = &k[(r * pb.H + h) * dk];
      const double* vr = &v[(r * pb.H + h) * dv];
      std::vector<double> S1(S.size()), want(dv, 0.0), got(dv);
      for (int i = 0; i < dk; ++i)
        for (int j = 0; j < dv; ++j) S1[i * dv + j] = lam * S[i * dv + j] + kr[i] * vr[j];
      for (int j = 0; j < dv; ++j) {
        for (int i = 0; i < dk; ++i) want[j] += qr[i] * S1[i * dv + j];
        got[j] = o_vk[(r * pb.H + h) * dv + j];
      }
      CHECK(fulgur_test::rel_rmse(got, want) <= kFp64Tol);
      CHECK(state_mismatches(&pool_vk[head_offset(slots[r], pb.H, dk, dv, h)], StateLayout::kVK, dk, dv, S1) == 0);
    }
}

TEST_CASE("lightning: slot -1, has_initial_state = 0, empty sequences and padding rows", "[reference][lightning]") {
  Rng rng("lightning slots");
  FULGUR_INFO_SEED(rng);
  const int dk = 8, dv = 8;
  Problem pb = make_problem(rng, {40, 37, 0, 0, 21}, dk, dv, minimax_heads(20, {1, 50}), Dist::kSiluRandn);
  const int64_t pad_rows = 3;  // rows after cu_seqlens[B] that belong to no sequence
  const int64_t head_elems = int64_t{dk} * dv, slot_elems = pb.H * head_elems;
  // seq 0: slot 2 with its state; seq 1: stateless (-1); seq 2: empty, slot 0, keeps its state;
  // seq 3: empty, slot 4, has_initial_state = 0 (so the zero state is written);
  // seq 4: slot 1, has_initial_state = 0 over a poisoned slot.
  const std::vector<int32_t> slots = {2, -1, 0, 4, 1};
  const std::vector<uint8_t> has_init = {1, 1, 1, 0, 0};

  for (int bs : {0, 16}) {
    INFO((bs == 0 ? "recurrence" : "blocked 16"));
    std::vector<float> pool = random_pool(rng, 6, pb.H, dk, dv);
    // Slots 1, 3 and 5 poisoned: 1 must not be read (has_initial_state = 0), 3 and 5 are nobody's.
    std::memset(&pool[1 * slot_elems], 0xFF, slot_elems * sizeof(float));
    std::memset(&pool[3 * slot_elems], 0xFF, slot_elems * sizeof(float));
    std::memset(&pool[5 * slot_elems], 0xFF, slot_elems * sizeof(float));
    const std::vector<float> pool0 = pool;
    std::vector<float> ck(8 * slot_elems);
    fulgur_test::poison(ck);
    const std::vector<float> ck0 = ck;

    std::vector<double> o;
    lt::PrefillParams p = prefill_params(pb, o);
    o.resize(o.size() + pad_rows * pb.H * dv);
    fulgur_test::poison(o);
    p.o = o.data();
    p.num_tokens = pb.T() + pad_rows;
    attach_pool(p, pool, slots);
    p.has_initial_state = has_init.data();
    p.checkpoints = ck.data();
    p.checkpoint_interval = 16;  // packed rows: seq 0: 0, 1; seq 1: 2, 3 (stateless); seq 4: 4
    p.num_checkpoint_rows = 8;
    REQUIRE((bs == 0 ? ref::lightning_prefill(p) : ref::lightning_prefill_blocked(p, bs)).is_ok());

    for (int b = 0; b < pb.B(); ++b)
      for (int h = 0; h < pb.H; ++h) {
        INFO("sequence " << b << " head " << h);
        std::vector<double> S0;  // empty: start from zero
        if (slots[b] >= 0 && has_init[b])
          S0 = head_kv(&pool0[head_offset(slots[b], pb.H, dk, dv, h)], StateLayout::kKV, dk, dv);
        if (pb.len(b) > 0) {
          CHECK(fulgur_test::rel_rmse(o_slice(o, pb, b, h), closed_form_o(pb, b, h, 1.0, S0)) <= kFp64Tol);
        }
        if (slots[b] >= 0) {
          const std::vector<double> want = closed_form_state(pb, b, h, pb.len(b), S0);
          const float* got = &pool[head_offset(slots[b], pb.H, dk, dv, h)];
          if (pb.len(b) == 0 && !S0.empty()) {
            // An empty sequence hands its state through unchanged, bit for bit.
            CHECK(std::memcmp(got, &pool0[head_offset(slots[b], pb.H, dk, dv, h)], head_elems * sizeof(float)) == 0);
          } else if (pb.len(b) == 0) {
            for (int e = 0; e < dk * dv; ++e) CHECK(got[e] == 0.f);
          } else {
            CHECK(state_mismatches(got, StateLayout::kKV, dk, dv, want) == 0);
          }
        }
      }
    // Nobody's slots (3, 5) untouched, stateless sequence's checkpoint rows (2, 3) and spare
    // rows (5..7) untouched, padding rows of o untouched.
    CHECK(std::memcmp(&pool[3 * slot_elems], &pool0[3 * slot_elems], slot_elems * sizeof(float)) == 0);
    CHECK(std::memcmp(&pool[5 * slot_elems], &pool0[5 * slot_elems], slot_elems * sizeof(float)) == 0);
    CHECK(std::memcmp(&ck[2 * slot_elems], &ck0[2 * slot_elems], 2 * slot_elems * sizeof(float)) == 0);
    CHECK(std::memcmp(&ck[5 * slot_elems], &ck0[5 * slot_elems], 3 * slot_elems * sizeof(float)) == 0);
    for (int64_t e = pb.T() * pb.H * dv; e < static_cast<int64_t>(o.size()); ++e) CHECK(is_poisoned(o[e]));
    // Checkpoint row 4 (seq 4, 16 tokens from zero) is written and finite.
    for (int h = 0; h < pb.H; ++h)
      CHECK(state_mismatches(&ck[4 * slot_elems + h * head_elems], StateLayout::kKV, dk, dv,
                             closed_form_state(pb, 4, h, 16, {})) == 0);
  }
}

TEST_CASE("lightning: the SiLU flag equals applying SiLU to the inputs beforehand", "[reference][lightning]") {
  Rng rng("lightning silu");
  FULGUR_INFO_SEED(rng);
  const int dk = 16, dv = 16;
  Problem raw = make_problem(rng, {1, 200, 57}, dk, dv, minimax_heads(40, {0, 30, 63}), Dist::kRandn);
  // The kernel applies SiLU to the bf16 value as loaded: round the raw inputs to bf16 first.
  std::vector<__nv_bfloat16> qb(raw.q.size()), kb(raw.k.size()), vb(raw.v.size());
  for (size_t i = 0; i < qb.size(); ++i) qb[i] = fulgur::from_double<__nv_bfloat16>(raw.q[i]);
  for (size_t i = 0; i < kb.size(); ++i) kb[i] = fulgur::from_double<__nv_bfloat16>(raw.k[i]);
  for (size_t i = 0; i < vb.size(); ++i) vb[i] = fulgur::from_double<__nv_bfloat16>(raw.v[i]);
  Problem act = raw;  // SiLU applied here, in fp64, to the widened bf16 values
  for (size_t i = 0; i < qb.size(); ++i) act.q[i] = silu(fulgur::to_double(qb[i]));
  for (size_t i = 0; i < kb.size(); ++i) act.k[i] = silu(fulgur::to_double(kb[i]));
  for (size_t i = 0; i < vb.size(); ++i) act.v[i] = silu(fulgur::to_double(vb[i]));
  const std::vector<int32_t> slots = {0, 1, 2};
  const std::vector<float> pool0 = random_pool(rng, 3, raw.H, dk, dv);

  for (int bs : {0, 64}) {
    INFO((bs == 0 ? "recurrence" : "blocked 64"));
    std::vector<double> o_flag, o_pre;
    std::vector<float> pool_flag = pool0, pool_pre = pool0;
    lt::PrefillParams pf = prefill_params(raw, o_flag);
    pf.qkv_dtype = DType::kBF16;
    pf.q = qb.data();
    pf.k = kb.data();
    pf.v = vb.data();
    pf.silu_qkv = true;
    attach_pool(pf, pool_flag, slots);
    lt::PrefillParams pp = prefill_params(act, o_pre);
    attach_pool(pp, pool_pre, slots);
    REQUIRE((bs == 0 ? ref::lightning_prefill(pf) : ref::lightning_prefill_blocked(pf, bs)).is_ok());
    REQUIRE((bs == 0 ? ref::lightning_prefill(pp) : ref::lightning_prefill_blocked(pp, bs)).is_ok());
    CHECK(worst_rel_rmse(o_flag, o_pre, raw) <= kFp64Tol);
    CHECK(float_mismatches(pool_flag, pool_pre) == 0);
    // And against the closed form on the activated inputs.
    for (int h = 0; h < raw.H; ++h) {
      const std::vector<double> S0 = head_kv(&pool0[head_offset(slots[1], raw.H, dk, dv, h)], StateLayout::kKV, dk, dv);
      CHECK(fulgur_test::rel_rmse(o_slice(o_flag, raw, 1, h), closed_form_o(act, 1, h, 1.0, S0)) <= kFp64Tol);
    }
  }

  // Decode with the flag: one step from the same pool, against the hand-activated inputs.
  const int B = 3, H = raw.H;
  std::vector<__nv_bfloat16> qd(B * H * dk), kd(B * H * dk), vd(B * H * dv);
  std::vector<double> qa(qd.size()), ka(kd.size()), va(vd.size()), o_flag(B * H * dv), o_pre(B * H * dv);
  auto fill = [&](std::vector<__nv_bfloat16>& x, std::vector<double>& xa) {
    for (size_t i = 0; i < x.size(); ++i) {
      x[i] = fulgur::from_double<__nv_bfloat16>(rng.normal());
      xa[i] = silu(fulgur::to_double(x[i]));
    }
  };
  fill(qd, qa);
  fill(kd, ka);
  fill(vd, va);
  std::vector<float> pool_flag = pool0, pool_pre = pool0;
  auto decode = [&](DType t, const void* q, const void* k, const void* v, bool flag, std::vector<double>& o,
                    std::vector<float>& pool) {
    lt::DecodeParams d;
    d.batch_size = B;
    d.num_heads = H;
    d.dk = dk;
    d.dv = dv;
    d.qkv_dtype = t;
    d.q = q;
    d.k = k;
    d.v = v;
    d.q_stride_token = d.k_stride_token = int64_t{H} * dk;
    d.q_stride_head = d.k_stride_head = dk;
    d.v_stride_token = d.o_stride_token = int64_t{H} * dv;
    d.v_stride_head = d.o_stride_head = dv;
    d.silu_qkv = flag;
    d.o_dtype = DType::kF64;
    d.o = o.data();
    d.slopes = raw.slopes.data();
    d.state = pool.data();
    d.num_slots = 3;
    d.slot_ids = slots.data();
    fulgur_test::poison(o);
    REQUIRE(ref::lightning_decode(d).is_ok());
  };
  decode(DType::kBF16, qd.data(), kd.data(), vd.data(), true, o_flag, pool_flag);
  decode(DType::kF64, qa.data(), ka.data(), va.data(), false, o_pre, pool_pre);
  CHECK(fulgur_test::rel_rmse(o_flag, o_pre) <= kFp64Tol);
  CHECK(float_mismatches(pool_flag, pool_pre) == 0);
}

namespace {

template <typename T>
struct OutUnit;  // per-element bound on |round_T(x) - x|: rel * |x| + abs
// fp32: one rounding. fp16 / bf16: rounded through float (from_double), so 2^-24 more.
template <>
struct OutUnit<float> {
  static constexpr double rel = 5.9604644775390625e-08, abs = 0;
};
// fp16: 11-bit significand; below 2^-14 subnormals are spaced 2^-24 apart (half-spacing 2^-25).
template <>
struct OutUnit<__half> {
  static constexpr double rel = 0x1p-11 + 0x1p-24, abs = 0x1p-25;
};
// bf16: 8-bit significand, fp32's exponent range.
template <>
struct OutUnit<__nv_bfloat16> {
  static constexpr double rel = 0x1p-8 + 0x1p-24, abs = 0;
};

template <typename TIn, typename TOut>
void check_dtype_pair(const char* name) {
  Rng rng(name);
  FULGUR_INFO_SEED(rng);
  const int dk = 16, dv = 16;
  // randn inputs, slopes 0.5 and 0.01: outputs stay far inside fp16's range (|o| ~ 1e2).
  Problem pb = make_problem(rng, {1, 31, 257}, dk, dv, {0.5f, 0.01f}, Dist::kRandn);
  // The inputs the reference sees are the TIn values; the oracle uses them widened exactly.
  std::vector<TIn> q(pb.q.size()), k(pb.k.size()), v(pb.v.size());
  for (size_t i = 0; i < q.size(); ++i) pb.q[i] = fulgur::to_double(q[i] = fulgur::from_double<TIn>(pb.q[i]));
  for (size_t i = 0; i < k.size(); ++i) pb.k[i] = fulgur::to_double(k[i] = fulgur::from_double<TIn>(pb.k[i]));
  for (size_t i = 0; i < v.size(); ++i) pb.v[i] = fulgur::to_double(v[i] = fulgur::from_double<TIn>(pb.v[i]));
  const std::vector<int32_t> slots = {1, 2, 0};
  const std::vector<float> pool0 = random_pool(rng, 3, pb.H, dk, dv);

  for (int bs : {0, 32}) {
    INFO((bs == 0 ? "recurrence" : "blocked 32"));
    std::vector<double> unused;
    std::vector<TOut> o(pb.T() * pb.H * dv);
    fulgur_test::poison(o);
    std::vector<float> pool = pool0;
    lt::PrefillParams p = prefill_params(pb, unused);
    p.qkv_dtype = fulgur::DTypeOf<TIn>::value;
    p.q = q.data();
    p.k = k.data();
    p.v = v.data();
    p.o_dtype = fulgur::DTypeOf<TOut>::value;
    p.o = o.data();
    attach_pool(p, pool, slots);
    REQUIRE((bs == 0 ? ref::lightning_prefill(p) : ref::lightning_prefill_blocked(p, bs)).is_ok());
    for (int b = 0; b < pb.B(); ++b)
      for (int h = 0; h < pb.H; ++h) {
        INFO("sequence " << b << " head " << h);
        const std::vector<double> S0 =
            head_kv(&pool0[head_offset(slots[b], pb.H, dk, dv, h)], StateLayout::kKV, dk, dv);
        const std::vector<double> want = closed_form_o(pb, b, h, 1.0, S0);
        const std::vector<double> got = o_slice(o, pb, b, h);
        double mx = 0;
        for (double x : want) mx = std::max(mx, std::fabs(x));
        // Only the final rounding to TOut separates got from the fp64 closed form.
        for (size_t e = 0; e < want.size(); ++e)
          CHECK(std::fabs(got[e] - want[e]) <=
                OutUnit<TOut>::rel * std::fabs(want[e]) + OutUnit<TOut>::abs + kFp64Tol * mx);
        CHECK(state_mismatches(&pool[head_offset(slots[b], pb.H, dk, dv, h)], StateLayout::kKV, dk, dv,
                               closed_form_state(pb, b, h, pb.len(b), S0)) == 0);
      }
  }
}

}  // namespace

TEST_CASE("lightning: fp32, fp16 and bf16 inputs and outputs", "[reference][lightning]") {
  check_dtype_pair<float, float>("lightning dtypes f32 f32");
  check_dtype_pair<__half, __half>("lightning dtypes f16 f16");
  check_dtype_pair<__nv_bfloat16, __nv_bfloat16>("lightning dtypes bf16 bf16");
  check_dtype_pair<__nv_bfloat16, float>("lightning dtypes bf16 f32");
  check_dtype_pair<float, __nv_bfloat16>("lightning dtypes f32 bf16");
}

TEST_CASE("lightning: MiniMax slopes at layers 0, 40 and 78 of 80 with SiLU(randn) inputs", "[reference][lightning]") {
  Rng rng("lightning minimax");
  FULGUR_INFO_SEED(rng);
  const int H = 64, dk = 8, dv = 8;  // all 64 heads; small head dim keeps the fp64 work small
  std::vector<int> heads(H);
  for (int h = 0; h < H; ++h) heads[h] = h;
  for (int layer : {0, 40, 78}) {
    INFO("layer " << layer);
    const std::vector<float> slopes = minimax_heads(layer, heads);
    // A warm-up prompt builds a realistic non-zero state in each slot, then the batch runs on it.
    Problem warm = make_problem(rng, {300, 300, 300, 300, 300}, dk, dv, slopes, Dist::kSiluRandn);
    Problem pb = make_problem(rng, {1, 31, 255, 257, 913}, dk, dv, slopes, Dist::kSiluRandn);
    const std::vector<int32_t> slots = {0, 1, 2, 3, 4};
    std::vector<float> pool0(5 * H * dk * dv);
    fulgur_test::poison(pool0);
    const std::vector<uint8_t> fresh(5, 0);
    std::vector<double> o_warm;
    lt::PrefillParams pw = prefill_params(warm, o_warm);
    attach_pool(pw, pool0, slots);
    pw.has_initial_state = fresh.data();
    REQUIRE(ref::lightning_prefill(pw).is_ok());

    std::vector<double> o_rec, o_blk;
    std::vector<float> pool_rec = pool0, pool_blk = pool0;
    lt::PrefillParams pr = prefill_params(pb, o_rec);
    attach_pool(pr, pool_rec, slots);
    lt::PrefillParams pk = prefill_params(pb, o_blk);
    attach_pool(pk, pool_blk, slots);
    REQUIRE(ref::lightning_prefill(pr).is_ok());
    REQUIRE(ref::lightning_prefill_blocked(pk, 256).is_ok());  // MiniMax's engine block size
    CHECK(worst_rel_rmse(o_blk, o_rec, pb) <= kFp64Tol);
    CHECK(float_mismatches(pool_blk, pool_rec) == 0);
    // Closed form for the fastest, a middle and the slowest head of the longest sequence.
    for (int h : {0, 31, 63}) {
      INFO("head " << h);
      const std::vector<double> S0 = head_kv(&pool0[head_offset(4, H, dk, dv, h)], StateLayout::kKV, dk, dv);
      CHECK(fulgur_test::rel_rmse(o_slice(o_rec, pb, 4, h), closed_form_o(pb, 4, h, 1.0, S0)) <= kFp64Tol);
      CHECK(state_mismatches(&pool_rec[head_offset(4, H, dk, dv, h)], StateLayout::kKV, dk, dv,
                             closed_form_state(pb, 4, h, 913, S0)) == 0);
    }
  }
}

TEST_CASE("lightning: fused head-major [T, H, 3, d] input equals a dense copy", "[reference][lightning]") {
  Rng rng("lightning fused qkv");
  FULGUR_INFO_SEED(rng);
  const int H = 4, d = 16;
  Problem pb = make_problem(rng, {45, 0, 130}, d, d, minimax_heads(10, {0, 20, 40, 63}), Dist::kRandn);
  const int64_t T = pb.T();
  // MiniMax's qkv projection: head h owns [q_h | k_h | v_h], 3 * d values, per token.
  std::vector<__nv_bfloat16> fused(T * H * 3 * d);
  for (int64_t t = 0; t < T; ++t)
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < d; ++i) {
        __nv_bfloat16* base = &fused[((t * H + h) * 3) * d];
        base[i] = fulgur::from_double<__nv_bfloat16>(pb.qa(t, h)[i]);
        base[d + i] = fulgur::from_double<__nv_bfloat16>(pb.ka(t, h)[i]);
        base[2 * d + i] = fulgur::from_double<__nv_bfloat16>(pb.va(t, h)[i]);
      }
  std::vector<__nv_bfloat16> q(T * H * d), k(q.size()), v(q.size());
  for (int64_t t = 0; t < T; ++t)
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < d; ++i) {
        q[(t * H + h) * d + i] = fused[((t * H + h) * 3) * d + i];
        k[(t * H + h) * d + i] = fused[((t * H + h) * 3) * d + d + i];
        v[(t * H + h) * d + i] = fused[((t * H + h) * 3) * d + 2 * d + i];
      }
  const std::vector<int32_t> slots = {0, 2, 1};
  const std::vector<float> pool0 = random_pool(rng, 3, H, d, d);

  for (int bs : {0, 64}) {
    INFO((bs == 0 ? "recurrence" : "blocked 64"));
    std::vector<double> o_fused, o_dense;
    std::vector<float> pool_fused = pool0, pool_dense = pool0;
    lt::PrefillParams pf = prefill_params(pb, o_fused);
    pf.qkv_dtype = DType::kBF16;
    pf.silu_qkv = true;
    pf.q = fused.data();
    pf.k = fused.data() + d;
    pf.v = fused.data() + 2 * d;
    pf.q_stride_token = pf.k_stride_token = pf.v_stride_token = int64_t{H} * 3 * d;
    pf.q_stride_head = pf.k_stride_head = pf.v_stride_head = 3 * d;
    attach_pool(pf, pool_fused, slots);
    lt::PrefillParams pd = prefill_params(pb, o_dense);
    pd.qkv_dtype = DType::kBF16;
    pd.silu_qkv = true;
    pd.q = q.data();
    pd.k = k.data();
    pd.v = v.data();
    attach_pool(pd, pool_dense, slots);
    REQUIRE((bs == 0 ? ref::lightning_prefill(pf) : ref::lightning_prefill_blocked(pf, bs)).is_ok());
    REQUIRE((bs == 0 ? ref::lightning_prefill(pd) : ref::lightning_prefill_blocked(pd, bs)).is_ok());
    // Same values, only addressed differently: identical bits.
    CHECK(bytes_equal(o_fused, o_dense));
    CHECK(bytes_equal(pool_fused, pool_dense));
    for (double x : o_fused) CHECK(std::isfinite(x));
  }
}

TEST_CASE("lightning: distinct strides for q, k, v and o equal a dense run", "[reference][lightning]") {
  Rng rng("lightning strides");
  FULGUR_INFO_SEED(rng);
  const int dk = 8, dv = 12;
  Problem pb = make_problem(rng, {37, 1, 80}, dk, dv, minimax_heads(30, {0, 21, 42}), Dist::kSiluRandn);
  const int H = pb.H;
  const int64_t T = pb.T();
  // Every tensor addressed differently, so swapping any two strides or pointers shows:
  //   q head-major [H, T, dk]; k [T, H, dk + 3] plus 7 spare values per token;
  //   v [T, H, dv] plus 5 per token; o head-major [H, T, dv + 2].
  const int64_t qs_t = dk, qs_h = T * dk;
  const int64_t ks_h = dk + 3, ks_t = H * ks_h + 7;
  const int64_t vs_h = dv, vs_t = H * dv + 5;
  const int64_t os_t = dv + 2, os_h = T * os_t;
  std::vector<double> q(H * qs_h), k(T * ks_t), v(T * vs_t), o(H * os_h);
  for (double& x : k) x = rng.normal();  // padding holds data, never read
  for (double& x : v) x = rng.normal();
  for (int64_t t = 0; t < T; ++t)
    for (int h = 0; h < H; ++h) {
      for (int i = 0; i < dk; ++i) q[t * qs_t + h * qs_h + i] = pb.qa(t, h)[i];
      for (int i = 0; i < dk; ++i) k[t * ks_t + h * ks_h + i] = pb.ka(t, h)[i];
      for (int i = 0; i < dv; ++i) v[t * vs_t + h * vs_h + i] = pb.va(t, h)[i];
    }
  fulgur_test::poison(o);
  const std::vector<int32_t> slots = {2, 0, 1};
  const std::vector<float> pool0 = random_pool(rng, 3, H, dk, dv);
  // The strided run's pool is one layer of a pool shared by two layers, [slots, 2, H, dk, dv]:
  // layer 1 is the view (base + H dk dv, slot stride 2 H dk dv); layer 0 must stay untouched.
  const int64_t slot_elems = int64_t{H} * dk * dv;
  std::vector<float> shared0 = random_pool(rng, 3 * 2, H, dk, dv);
  for (int slot = 0; slot < 3; ++slot)
    std::copy(&pool0[slot * slot_elems], &pool0[(slot + 1) * slot_elems], &shared0[(2 * slot + 1) * slot_elems]);
  auto layer_of = [&](const std::vector<float>& shared, int layer) {
    std::vector<float> out;
    for (int slot = 0; slot < 3; ++slot)
      out.insert(out.end(), &shared[(2 * slot + layer) * slot_elems], &shared[(2 * slot + layer + 1) * slot_elems]);
    return out;
  };

  for (int bs : {0, 16}) {
    INFO((bs == 0 ? "recurrence" : "blocked 16"));
    std::vector<double> o_dense;
    std::vector<float> pool_dense = pool0, shared = shared0;
    lt::PrefillParams pd = prefill_params(pb, o_dense);
    attach_pool(pd, pool_dense, slots);
    lt::PrefillParams ps = pd;
    ps.q = q.data();
    ps.k = k.data();
    ps.v = v.data();
    ps.o = o.data();
    ps.q_stride_token = qs_t;
    ps.q_stride_head = qs_h;
    ps.k_stride_token = ks_t;
    ps.k_stride_head = ks_h;
    ps.v_stride_token = vs_t;
    ps.v_stride_head = vs_h;
    ps.o_stride_token = os_t;
    ps.o_stride_head = os_h;
    ps.state = shared.data() + slot_elems;
    ps.state_stride_slot = 2 * slot_elems;
    REQUIRE((bs == 0 ? ref::lightning_prefill(pd) : ref::lightning_prefill_blocked(pd, bs)).is_ok());
    REQUIRE((bs == 0 ? ref::lightning_prefill(ps) : ref::lightning_prefill_blocked(ps, bs)).is_ok());
    int64_t differ = 0;
    for (int64_t t = 0; t < T; ++t)
      for (int h = 0; h < H; ++h)
        for (int j = 0; j < dv; ++j) differ += o[t * os_t + h * os_h + j] != o_dense[(t * H + h) * dv + j];
    CHECK(differ == 0);  // same values, same arithmetic: identical bits
    CHECK(bytes_equal(layer_of(shared, 1), pool_dense));
    CHECK(bytes_equal(layer_of(shared, 0), layer_of(shared0, 0)));
    // o's row padding (2 values per row) is not written.
    for (int64_t t = 0; t < T; ++t)
      for (int h = 0; h < H; ++h)
        for (int j = dv; j < dv + 2; ++j) CHECK(is_poisoned(o[t * os_t + h * os_h + j]));
  }

  // Decode with the same strides (B = 3 rows as the tokens).
  const int B = 3;
  std::vector<double> qd(H * B * dk), kd(B * ks_t), vd(B * vs_t), od(H * B * os_t);
  std::vector<double> qn(B * H * dk), kn(qn.size()), vn(B * H * dv), on(vn.size());
  for (int r = 0; r < B; ++r)
    for (int h = 0; h < H; ++h) {
      for (int i = 0; i < dk; ++i) qd[r * dk + h * B * dk + i] = qn[(r * H + h) * dk + i] = rng.normal();
      for (int i = 0; i < dk; ++i) kd[r * ks_t + h * ks_h + i] = kn[(r * H + h) * dk + i] = rng.normal();
      for (int i = 0; i < dv; ++i) vd[r * vs_t + h * vs_h + i] = vn[(r * H + h) * dv + i] = rng.normal();
    }
  std::vector<float> pool_a = pool0, shared = shared0;
  lt::DecodeParams dn;
  dn.batch_size = B;
  dn.num_heads = H;
  dn.dk = dk;
  dn.dv = dv;
  dn.qkv_dtype = DType::kF64;
  dn.q = qn.data();
  dn.k = kn.data();
  dn.v = vn.data();
  dn.q_stride_token = dn.k_stride_token = int64_t{H} * dk;
  dn.q_stride_head = dn.k_stride_head = dk;
  dn.v_stride_token = dn.o_stride_token = int64_t{H} * dv;
  dn.v_stride_head = dn.o_stride_head = dv;
  dn.o_dtype = DType::kF64;
  dn.o = on.data();
  dn.slopes = pb.slopes.data();
  dn.state = pool_a.data();
  dn.num_slots = 3;
  dn.slot_ids = slots.data();
  lt::DecodeParams dsd = dn;
  dsd.q = qd.data();
  dsd.k = kd.data();
  dsd.v = vd.data();
  dsd.o = od.data();
  dsd.q_stride_token = dk;
  dsd.q_stride_head = int64_t{B} * dk;
  dsd.k_stride_token = ks_t;
  dsd.k_stride_head = ks_h;
  dsd.v_stride_token = vs_t;
  dsd.v_stride_head = vs_h;
  dsd.o_stride_token = os_t;
  dsd.o_stride_head = int64_t{B} * os_t;
  dsd.state = shared.data() + slot_elems;
  dsd.state_stride_slot = 2 * slot_elems;
  fulgur_test::poison(on);
  fulgur_test::poison(od);
  REQUIRE(ref::lightning_decode(dn).is_ok());
  REQUIRE(ref::lightning_decode(dsd).is_ok());
  int64_t differ = 0;
  for (int r = 0; r < B; ++r)
    for (int h = 0; h < H; ++h)
      for (int j = 0; j < dv; ++j) differ += od[r * os_t + h * B * os_t + j] != on[(r * H + h) * dv + j];
  CHECK(differ == 0);
  CHECK(bytes_equal(layer_of(shared, 1), pool_a));
  CHECK(bytes_equal(layer_of(shared, 0), layer_of(shared0, 0)));
}

TEST_CASE("lightning: slope helpers match hand-derived values", "[reference][lightning]") {
  using lt::SlopeConvention;
  const SlopeConvention kV = SlopeConvention::kVllm, kT = SlopeConvention::kTransformers;
  // exp2 of these exact rationals is within an ulp; 1e-15 relative covers it.
  auto near = [](double got, double want) { return std::fabs(got - want) <= 1e-15 * std::fabs(want); };

  // H = 64 (power of two): start = 2^(-2^-(6-3)) = 2^(-1/8), slope_h = 2^(-(h+1)/8); both
  // conventions agree. h = 7 -> 1/2, h = 63 -> 2^-8.
  for (int h = 0; h < 64; ++h) {
    CHECK(near(lt::alibi_base_slope(64, h), std::exp2(-(h + 1) / 8.0)));
    CHECK(near(lt::base_slope(64, h, kT), std::exp2(-(h + 1) / 8.0)));
  }
  CHECK(lt::alibi_base_slope(64, 7) == 0.5);
  CHECK(lt::alibi_base_slope(64, 63) == 0.00390625);
  CHECK(near(lt::alibi_base_slope(64, 0), 0.91700404320467123));  // 2^(-1/8)

  // H = 8: start = 2^(-2^0) = 1/2, slope_h = 2^-(h+1): 1/2, 1/4, ..., 1/256 (exact).
  for (int h = 0; h < 8; ++h) CHECK(lt::alibi_base_slope(8, h) == std::ldexp(1.0, -(h + 1)));

  // H = 6: p = 4 -> pow2(4) = 2^(-8/4 (h+1)) = 1/4, 1/16, 1/64, 1/256; then pow2(8) =
  // 1/2, 1/4, 1/8, ... taken at indices 0, 2: 1/2, 1/8.
  const double h6[] = {0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125};
  for (int h = 0; h < 6; ++h) CHECK(lt::alibi_base_slope(6, h) == h6[h]);
  // transformers ignores the ALiBi interleave: 2^(-8(h+1)/6) = 2^(-4(h+1)/3).
  for (int h = 0; h < 6; ++h) CHECK(near(lt::base_slope(6, h, kT), std::exp2(-4.0 * (h + 1) / 3.0)));

  // H = 12: p = 8 -> 2^-(h+1) for h < 8; pow2(16) = 2^(-(i+1)/2) at i = 0, 2, 4, 6:
  // 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
  for (int h = 0; h < 8; ++h) CHECK(lt::alibi_base_slope(12, h) == std::ldexp(1.0, -(h + 1)));
  const double h12[] = {0.70710678118654752, 0.35355339059327376, 0.17677669529663688, 0.088388347648318440};
  for (int i = 0; i < 4; ++i) CHECK(near(lt::alibi_base_slope(12, 8 + i), h12[i]));

  // H = 48: p = 32 -> 2^(-(h+1)/4) for h < 32; pow2(64) = 2^(-(i+1)/8) at even i = 2m:
  // 2^(-(2m+1)/8), m = 0..15.
  for (int h = 0; h < 32; ++h) CHECK(near(lt::alibi_base_slope(48, h), std::exp2(-(h + 1) / 4.0)));
  for (int m = 0; m < 16; ++m) CHECK(near(lt::alibi_base_slope(48, 32 + m), std::exp2(-(2 * m + 1) / 8.0)));

  // Layer factors, L = 80. vLLM: 1 - l/79 + 1e-5; transformers: 1 - l/(79 + 1e-5) + 1e-5.
  // 1 - l/(L-1) cancels: an error of 2^-53 in l/(L-1) is 2^-53 / 0.0127 ~ 1e-14 relative to the
  // layer-78 factor, and 1e-5 itself is not exact in binary; 1e-13 covers both.
  auto near_f = [](double got, double want) { return std::fabs(got - want) <= 1e-13 * std::fabs(want); };
  CHECK(near_f(lt::layer_factor(0, 80, kV), 1.00001));
  CHECK(near_f(lt::layer_factor(40, 80, kV), 39.0 / 79.0 + 1e-5));
  CHECK(near_f(lt::layer_factor(78, 80, kV), 1.0 / 79.0 + 1e-5));  // 0.0126682...
  CHECK(near_f(lt::layer_factor(79, 80, kV), 1e-5));
  CHECK(near_f(lt::layer_factor(0, 1, kV), 1.00001));  // vLLM's single-layer case
  CHECK(near_f(lt::layer_factor(78, 80, kT), 1.0 / 79.00001 + 1e-5 + 1e-5 / 79.00001));
  CHECK(near_f(lt::layer_factor(0, 80, kT), 1.00001));
  // The two conventions differ by l/(L-1) - l/(L-1+1e-5) = l 1e-5 / ((L-1)(L-1+1e-5)): for l = 78,
  // 1.2498e-7 absolute, ~1e-5 relative to the factor 0.01267.
  CHECK(std::fabs(lt::layer_factor(78, 80, kT) - lt::layer_factor(78, 80, kV) - 78e-5 / (79.0 * 79.00001)) < 1e-15);

  // Tensor parallel: H = 64 over 4 ranks, rank 2 owns global heads 32..47.
  std::vector<float> out(16);
  REQUIRE(lt::fill_minimax_slopes(out.data(), 64, 78, 80, kV, 2, 4).is_ok());
  for (int i = 0; i < 16; ++i) {
    const double want = std::exp2(-(32 + i + 1) / 8.0) * (1.0 / 79.0 + 1e-5);
    CHECK(std::fabs(out[i] - want) <= kU32 * want);  // one rounding to float
  }
  // Non power of two with TP: H = 48 over 2 ranks, rank 1 owns 24..47 (interleaved tail included).
  std::vector<float> out48(24);
  REQUIRE(lt::fill_minimax_slopes(out48.data(), 48, 0, 80, kV, 1, 2).is_ok());
  CHECK(std::fabs(out48[8] - std::exp2(-1 / 8.0) * 1.00001) <= kU32 * 1.0);  // global head 32

  // Bad arguments: invalid, nothing written.
  std::vector<float> poisoned(64);
  fulgur_test::poison(poisoned);
  const std::vector<float> before = poisoned;
  CHECK(lt::fill_minimax_slopes(nullptr, 64, 0, 80).code() == cudaErrorInvalidValue);
  CHECK(lt::fill_minimax_slopes(poisoned.data(), 0, 0, 80).code() == cudaErrorInvalidValue);
  CHECK(lt::fill_minimax_slopes(poisoned.data(), 64, 80, 80).code() == cudaErrorInvalidValue);
  CHECK(lt::fill_minimax_slopes(poisoned.data(), 64, -1, 80).code() == cudaErrorInvalidValue);
  CHECK(lt::fill_minimax_slopes(poisoned.data(), 64, 0, 0).code() == cudaErrorInvalidValue);
  CHECK(lt::fill_minimax_slopes(poisoned.data(), 64, 0, 80, kV, 0, 3).code() == cudaErrorInvalidValue);
  CHECK(lt::fill_minimax_slopes(poisoned.data(), 64, 0, 80, kV, 4, 4).code() == cudaErrorInvalidValue);
  CHECK(lt::fill_minimax_slopes(poisoned.data(), 64, 0, 80, SlopeConvention(9)).code() == cudaErrorInvalidValue);
  CHECK(bytes_equal(poisoned, before));
}

TEST_CASE("lightning: validate() rejects bad input and nothing is written", "[reference][lightning]") {
  Rng rng("lightning validate");
  FULGUR_INFO_SEED(rng);
  const int dk = 4, dv = 4;
  Problem pb = make_problem(rng, {20, 3, 17}, dk, dv, {0.3f, 0.02f}, Dist::kSiluRandn);
  const std::vector<int32_t> slots = {1, 0, 2};
  std::vector<float> pool = random_pool(rng, 3, pb.H, dk, dv);
  std::vector<float> ck(4 * pb.H * dk * dv);
  fulgur_test::poison(ck);
  std::vector<double> o;
  lt::PrefillParams good = prefill_params(pb, o);
  attach_pool(good, pool, slots);
  good.checkpoints = ck.data();
  good.checkpoint_interval = 8;  // rows: 2 + 0 + 2
  good.num_checkpoint_rows = 4;
  const std::vector<float> pool0 = pool, ck0 = ck;
  const std::vector<double> o0 = o;
  REQUIRE(lt::validate(good).is_ok());
  REQUIRE(lt::validate_host_arrays(good).is_ok());

  const std::vector<int32_t> cu_dec = {0, 20, 10, 40};
  const std::vector<int32_t> cu_start1 = {1, 20, 23, 40};
  const std::vector<int32_t> cu_over = {0, 20, 23, 41};
  const std::vector<int32_t> slots_dup = {1, 1, 2}, slots_big = {1, 3, 2}, slots_neg = {1, -2, 2};
  const std::vector<int32_t> off_short = {0, 1, 1, 3}, off_over = {0, 2, 2, 5};
  const std::vector<float> slopes_neg = {0.3f, -0.01f}, slopes_nan = {0.3f, std::nanf("")};

  struct Case {
    const char* what;
    std::function<void(lt::PrefillParams&)> mutate;
  };
  const std::vector<Case> cases = {
      {"q null", [](lt::PrefillParams& p) { p.q = nullptr; }},
      {"k null", [](lt::PrefillParams& p) { p.k = nullptr; }},
      {"v null", [](lt::PrefillParams& p) { p.v = nullptr; }},
      {"o null", [](lt::PrefillParams& p) { p.o = nullptr; }},
      {"cu_seqlens null", [](lt::PrefillParams& p) { p.cu_seqlens = nullptr; }},
      {"slopes null", [](lt::PrefillParams& p) { p.slopes = nullptr; }},
      {"slot_ids null", [](lt::PrefillParams& p) { p.slot_ids = nullptr; }},
      {"state null", [](lt::PrefillParams& p) { p.state = nullptr; }},
      {"num_heads 0", [](lt::PrefillParams& p) { p.num_heads = 0; }},
      {"dk 0", [](lt::PrefillParams& p) { p.dk = 0; }},
      {"dv negative", [](lt::PrefillParams& p) { p.dv = -4; }},
      {"batch negative", [](lt::PrefillParams& p) { p.batch_size = -1; }},
      {"num_tokens negative", [](lt::PrefillParams& p) { p.num_tokens = -1; }},
      {"max_seqlen negative", [](lt::PrefillParams& p) { p.max_seqlen = -1; }},
      {"max_seqlen too small", [](lt::PrefillParams& p) { p.max_seqlen = 19; }},
      {"q token stride 0", [](lt::PrefillParams& p) { p.q_stride_token = 0; }},
      {"v head stride negative", [](lt::PrefillParams& p) { p.v_stride_head = -4; }},
      {"o token stride 0", [](lt::PrefillParams& p) { p.o_stride_token = 0; }},
      {"cu_seqlens decreasing", [&](lt::PrefillParams& p) { p.cu_seqlens = cu_dec.data(); }},
      {"cu_seqlens[0] != 0", [&](lt::PrefillParams& p) { p.cu_seqlens = cu_start1.data(); }},
      {"cu_seqlens past num_tokens", [&](lt::PrefillParams& p) { p.cu_seqlens = cu_over.data(); }},
      {"checkpoint interval 0", [](lt::PrefillParams& p) { p.checkpoint_interval = 0; }},
      {"checkpoint interval negative", [](lt::PrefillParams& p) { p.checkpoint_interval = -8; }},
      {"interval without buffer", [](lt::PrefillParams& p) { p.checkpoints = nullptr; }},
      {"too few checkpoint rows", [](lt::PrefillParams& p) { p.num_checkpoint_rows = 3; }},
      {"checkpoint offsets short", [&](lt::PrefillParams& p) { p.checkpoint_offsets = off_short.data(); }},
      {"checkpoint offsets past rows", [&](lt::PrefillParams& p) { p.checkpoint_offsets = off_over.data(); }},
      {"duplicate slots", [&](lt::PrefillParams& p) { p.slot_ids = slots_dup.data(); }},
      {"slot past pool", [&](lt::PrefillParams& p) { p.slot_ids = slots_big.data(); }},
      {"slot -2", [&](lt::PrefillParams& p) { p.slot_ids = slots_neg.data(); }},
      {"negative slope", [&](lt::PrefillParams& p) { p.slopes = slopes_neg.data(); }},
      {"NaN slope", [&](lt::PrefillParams& p) { p.slopes = slopes_nan.data(); }},
      {"NaN scale", [](lt::PrefillParams& p) { p.scale = std::nanf(""); }},
      {"bad qkv dtype", [](lt::PrefillParams& p) { p.qkv_dtype = DType(7); }},
      {"bad o dtype", [](lt::PrefillParams& p) { p.o_dtype = DType(-1); }},
      {"bad layout", [](lt::PrefillParams& p) { p.state_layout = StateLayout(2); }},
      {"slot stride too small", [](lt::PrefillParams& p) { p.state_stride_slot = 2 * 4 * 4 - 1; }},
      {"num_slots negative", [](lt::PrefillParams& p) { p.num_slots = -1; }},
  };
  for (const Case& c : cases) {
    INFO(c.what);
    lt::PrefillParams p = good;
    c.mutate(p);
    const fulgur::Status s = ref::lightning_prefill(p);
    CHECK(s.code() == cudaErrorInvalidValue);
    CHECK(std::strlen(s.reason()) > 0);
    CHECK(ref::lightning_prefill_blocked(p, 8).code() == cudaErrorInvalidValue);
    CHECK(bytes_equal(o, o0));
    CHECK(bytes_equal(pool, pool0));
    CHECK(bytes_equal(ck, ck0));
  }
  // Blocked-only rules: block size range, interval a multiple of the block.
  CHECK(ref::lightning_prefill_blocked(good, 0).code() == cudaErrorInvalidValue);
  CHECK(ref::lightning_prefill_blocked(good, 257).code() == cudaErrorInvalidValue);
  CHECK(ref::lightning_prefill_blocked(good, 16).code() == cudaErrorInvalidValue);  // 8 % 16 != 0
  CHECK(bytes_equal(o, o0));
  CHECK(bytes_equal(pool, pool0));
  CHECK(bytes_equal(ck, ck0));

  // An empty batch with null tensors is valid and a no-op; the good params run.
  {
    const std::vector<int32_t> cu0 = {0};
    lt::PrefillParams p = good;
    p.batch_size = 0;
    p.num_tokens = 0;
    p.cu_seqlens = cu0.data();
    p.q = p.k = p.v = nullptr;
    p.o = nullptr;
    CHECK(ref::lightning_prefill(p).is_ok());
    CHECK(bytes_equal(pool, pool0));
  }
  CHECK(ref::lightning_prefill_blocked(good, 4).is_ok());

  // Decode.
  std::vector<double> q(3 * pb.H * dk, 0.5), k(q.size(), 0.25), v(3 * pb.H * dv, -0.5), od(v.size());
  fulgur_test::poison(od);
  pool = pool0;
  lt::DecodeParams dg;
  dg.batch_size = 3;
  dg.num_heads = pb.H;
  dg.dk = dk;
  dg.dv = dv;
  dg.qkv_dtype = DType::kF64;
  dg.q = q.data();
  dg.k = k.data();
  dg.v = v.data();
  dg.q_stride_token = dg.k_stride_token = int64_t{pb.H} * dk;
  dg.q_stride_head = dg.k_stride_head = dk;
  dg.v_stride_token = dg.o_stride_token = int64_t{pb.H} * dv;
  dg.v_stride_head = dg.o_stride_head = dv;
  dg.o_dtype = DType::kF64;
  dg.o = od.data();
  dg.slopes = pb.slopes.data();
  dg.state = pool.data();
  dg.num_slots = 3;
  dg.slot_ids = slots.data();
  REQUIRE(lt::validate(dg).is_ok());
  const std::vector<double> od0 = od;
  struct DCase {
    const char* what;
    std::function<void(lt::DecodeParams&)> mutate;
  };
  const std::vector<DCase> dcases = {
      {"q null", [](lt::DecodeParams& p) { p.q = nullptr; }},
      {"o null", [](lt::DecodeParams& p) { p.o = nullptr; }},
      {"slot_ids null", [](lt::DecodeParams& p) { p.slot_ids = nullptr; }},
      {"state null", [](lt::DecodeParams& p) { p.state = nullptr; }},
      {"slopes null", [](lt::DecodeParams& p) { p.slopes = nullptr; }},
      {"num_heads 0", [](lt::DecodeParams& p) { p.num_heads = 0; }},
      {"dv 0", [](lt::DecodeParams& p) { p.dv = 0; }},
      {"batch negative", [](lt::DecodeParams& p) { p.batch_size = -2; }},
      {"k head stride 0", [](lt::DecodeParams& p) { p.k_stride_head = 0; }},
      {"duplicate slots", [&](lt::DecodeParams& p) { p.slot_ids = slots_dup.data(); }},
      {"slot past pool", [&](lt::DecodeParams& p) { p.slot_ids = slots_big.data(); }},
      {"negative slope", [&](lt::DecodeParams& p) { p.slopes = slopes_neg.data(); }},
      {"bad layout", [](lt::DecodeParams& p) { p.state_layout = StateLayout(3); }},
  };
  for (const DCase& c : dcases) {
    INFO("decode: " << c.what);
    lt::DecodeParams p = dg;
    c.mutate(p);
    CHECK(ref::lightning_decode(p).code() == cudaErrorInvalidValue);
    CHECK(bytes_equal(od, od0));
    CHECK(bytes_equal(pool, pool0));
  }
  CHECK(ref::lightning_decode(dg).is_ok());
  for (double x : od) CHECK(std::isfinite(x));
}

TEST_CASE("lightning: 64K tokens, block form stays within fp64 rounding of the recurrence", "[reference][lightning]") {
  Rng rng("lightning long");
  FULGUR_INFO_SEED(rng);
  // Layer 78's fastest and slowest heads (s = 0.0116 and 4.9e-5: lambda^65536 = 0.04), so the
  // slow head's state integrates ~2e4 tokens. dk = dv = 4 keeps fp64 work to a few seconds.
  const int dk = 4, dv = 4;
  Problem pb = make_problem(rng, {65536 + 77}, dk, dv, minimax_heads(78, {0, 63}), Dist::kSiluRandn);
  const std::vector<int32_t> slots = {0};
  const std::vector<float> pool0 = random_pool(rng, 1, pb.H, dk, dv);
  std::vector<double> o_rec, o_blk;
  std::vector<float> pool_rec = pool0, pool_blk = pool0;
  lt::PrefillParams pr = prefill_params(pb, o_rec);
  attach_pool(pr, pool_rec, slots);
  lt::PrefillParams pk = prefill_params(pb, o_blk);
  attach_pool(pk, pool_blk, slots);
  REQUIRE(ref::lightning_prefill(pr).is_ok());
  REQUIRE(ref::lightning_prefill_blocked(pk, 256).is_ok());
  // Rounding grows at most linearly in the ~2e4-token window: 2e4 * 2^-53 ~ 2e-12 < 1e-10.
  CHECK(worst_rel_rmse(o_blk, o_rec, pb) <= kFp64Tol);
  // And per element over the last block, where the state has been accumulating longest,
  // relative to that head's RMS there (an element of q S can be near zero by cancellation).
  for (int h = 0; h < pb.H; ++h) {
    double ss = 0, worst = 0;
    for (int64_t t = pb.T() - 256; t < pb.T(); ++t)
      for (int j = 0; j < dv; ++j) {
        const double a = o_rec[(t * pb.H + h) * dv + j], b = o_blk[(t * pb.H + h) * dv + j];
        ss += a * a;
        worst = std::max(worst, std::fabs(a - b));
      }
    INFO("head " << h);
    CHECK(worst <= kFp64Tol * std::sqrt(ss / (256.0 * dv)));
  }
  CHECK(float_mismatches(pool_blk, pool_rec) == 0);
}
