// SPDX-License-Identifier: Apache-2.0
// Shared pieces of the lightning kernel tests: a problem (packed varlen batch, any input/output
// dtype, dense or MiniMax's fused [T, H, 3, d] layout, slot pool, checkpoints) built from a
// printed seed, run once through the kernels (device buffers: host memory under emulation) and
// once through the fp64 references (fulgur/reference/lightning.hpp) on identical copies, then
// compared buffer by buffer. Everything that must not be written is poisoned or random before the
// run and checked bit for bit afterwards.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "fulgur/lightning.cuh"
#include "fulgur/memory.hpp"
#include "fulgur/reference/lightning.hpp"
#include "fulgur_test.hpp"

namespace lt_test {

namespace lt = fulgur::lightning;
using fulgur::DeviceBuffer;
using fulgur::DType;
using fulgur_test::Rng;
using lt::StateLayout;

/// Sanitizer builds shrink the heavy cases: the TSan build runs one OS thread per CUDA thread
/// (~100x slower), the ASan build is -O1 with checked accesses (~4x). The Release build runs the
/// full sizes.
inline bool light() {
#if (defined(FULGUR_EMU_THREADS) && FULGUR_EMU_THREADS) || defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  return true;
#else
  return false;
#endif
}

inline double silu(double x) { return x / (1.0 + std::exp(-x)); }

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

/// MiniMax-Text-01 slopes (vLLM convention) of the first H of its 64 heads at `layer` of 80,
/// or, with spread, H heads spread over all 64 (fastest to slowest decay).
inline std::vector<float> minimax_slopes(int H, int layer, bool spread = true) {
  std::vector<float> all(64);
  REQUIRE(lt::fill_minimax_slopes(all.data(), 64, layer, 80).is_ok());
  std::vector<float> out(H);
  for (int h = 0; h < H; ++h) out[h] = all[spread ? (h * 63) / (H > 1 ? H - 1 : 1) : h];
  return out;
}

// ---- typed byte storage -----------------------------------------------------------------------

inline void store_as(DType t, void* base, int64_t i, double x) {
  switch (t) {
    case DType::kF32: static_cast<float*>(base)[i] = static_cast<float>(x); break;
    case DType::kF16: static_cast<__half*>(base)[i] = fulgur::from_double<__half>(x); break;
    case DType::kBF16: static_cast<__nv_bfloat16*>(base)[i] = fulgur::from_double<__nv_bfloat16>(x); break;
    case DType::kF64: static_cast<double*>(base)[i] = x; break;
  }
}
inline double load_as(DType t, const void* base, int64_t i) {
  switch (t) {
    case DType::kF32: return static_cast<const float*>(base)[i];
    case DType::kF16: return fulgur::to_double(static_cast<const __half*>(base)[i]);
    case DType::kBF16: return fulgur::to_double(static_cast<const __nv_bfloat16*>(base)[i]);
    case DType::kF64: return static_cast<const double*>(base)[i];
  }
  return 0;
}
/// x rounded to dtype t and widened back: the value a kernel reads.
inline double round_to(DType t, double x) {
  unsigned char buf[8];
  store_as(t, buf, 0, x);
  return load_as(t, buf, 0);
}

/// Host bytes mirrored into a device buffer.
struct Blob {
  std::vector<unsigned char> host;
  DeviceBuffer<unsigned char> dev;
  void to_device() {
    dev = DeviceBuffer<unsigned char>(host.size() ? host.size() : 16);
    if (!host.empty()) REQUIRE(dev.copy_from_host(host) == cudaSuccess);
  }
  std::vector<unsigned char> from_device() const {
    REQUIRE(fulgur::device_synchronize() == cudaSuccess);
    std::vector<unsigned char> v(host.size());
    if (!v.empty()) REQUIRE(dev.copy_to_host(v.data(), v.size()) == cudaSuccess);
    return v;
  }
};

// ---- prefill problems ---------------------------------------------------------------------------

struct PrefillCase {
  std::vector<int> lens;      // sequence lengths (0 allowed)
  int H = 2;                  // heads
  int d = 64;                 // dk = dv
  DType in = DType::kBF16;    // q, k, v dtype
  DType out = DType::kBF16;   // o dtype
  bool fused = false;         // q|k|v of a head contiguous: [T, H, 3, d]
  int head_pad = 0;           // extra elements between heads (dense layout; multiple of 8)
  bool silu = false;          // fused SiLU (inputs are then raw randn)
  bool zero_mean = false;     // randn inputs instead of SiLU(randn)
  std::vector<float> slopes;  // [H]; empty: MiniMax layer 40, heads spread
  float scale = 1.f;
  StateLayout layout = StateLayout::kKV;
  std::vector<int32_t> slots;     // [B]; empty: slot b for sequence b
  int64_t extra_slots = 2;        // pool slots no sequence uses (must stay untouched)
  std::vector<uint8_t> has_init;  // [B]; empty: null (all 1)
  double init_scale = 1.0;        // magnitude of the pool's initial contents (0: zero states)
  int64_t ckpt_interval = 0;      // 0: no checkpoints
  bool ckpt_offsets = false;      // explicit per-sequence offsets (one spare row each) vs packed
  int64_t pad_rows = 3;           // rows of q/k/v/o past cu[B] (o there must stay untouched)
  int pool_layers = 1;            // > 1: the pool holds [slots, layers, H, d, d] (state_stride_slot)
  int pool_layer = 0;             // ... and this call uses this layer
};

/// Results read back from one run, in dense views.
struct PrefillResult {
  cudaError_t err = cudaSuccess;
  lt::PrefillArrayError device_status = lt::PrefillArrayError::kOk;
  std::vector<unsigned char> o;  // o buffer bytes
  std::vector<float> pool;       // whole pool
  std::vector<float> ckpt;       // whole checkpoint buffer
};

class PrefillProblem {
 public:
  PrefillCase c;
  int32_t B = 0;
  int64_t T = 0;  // rows of q/k/v/o, cu[B] + pad_rows
  std::vector<int32_t> cu, slots, ckpt_off;
  std::vector<uint8_t> has_init;
  std::vector<float> slopes;
  int64_t num_slots = 0, ckpt_rows = 0;
  // The values a kernel reads (already rounded to the input dtype), dense [T, H, d].
  std::vector<double> q, k, v;
  std::vector<float> pool0;  // pool before the call

  PrefillProblem(const PrefillCase& cs, Rng& rng) : c(cs) {
    B = static_cast<int32_t>(c.lens.size());
    cu = {0};
    for (int n : c.lens) cu.push_back(cu.back() + n);
    T = cu.back() + c.pad_rows;
    const int64_t n_elems = T * c.H * c.d;
    q.resize(n_elems);
    k.resize(n_elems);
    v.resize(n_elems);
    // SiLU(randn) is what MiniMax feeds the kernel (k, v with a positive mean: the state grows
    // like 1 / (1 - lambda) and decay mistakes show). With the fused SiLU the raw randn is stored.
    auto draw = [&] {
      const double x = rng.normal();
      return (c.silu || c.zero_mean) ? x : silu(x);
    };
    for (auto* vec : {&q, &k, &v})
      for (double& x : *vec) x = round_to(c.in, draw());
    slopes = c.slopes.empty() ? minimax_slopes(c.H, 40) : c.slopes;
    REQUIRE(static_cast<int>(slopes.size()) == c.H);
    slots = c.slots;
    if (slots.empty())
      for (int32_t b = 0; b < B; ++b) slots.push_back(b);
    int32_t max_slot = -1;
    for (int32_t s : slots) max_slot = std::max(max_slot, s);
    num_slots = max_slot + 1 + c.extra_slots;
    has_init = c.has_init;
    pool0.resize(num_slots * c.pool_layers * head_elems() * c.H);
    for (float& x : pool0) x = static_cast<float>(c.init_scale * rng.normal());
    if (c.ckpt_interval > 0) {
      ckpt_off = {0};
      for (int32_t b = 0; b < B; ++b) {
        const int64_t cnt = c.lens[b] / c.ckpt_interval;
        ckpt_off.push_back(ckpt_off.back() + static_cast<int32_t>(cnt + (c.ckpt_offsets ? 1 : 0)));
      }
      ckpt_rows = ckpt_off.back() + 1;  // one spare row at the end (must stay untouched)
    }
  }

  /// The same data as sequence b alone (batch invariance): its rows, its slot's initial state as
  /// slot 0 (or -1), same slopes and options.
  PrefillProblem single(int b) const {
    PrefillProblem s = *this;
    const int64_t n = c.lens[b];
    s.c.lens = {c.lens[b]};
    s.B = 1;
    s.cu = {0, static_cast<int32_t>(n)};
    s.T = n + c.pad_rows;
    const int64_t row_elems = int64_t{c.H} * c.d;
    for (auto pr : {std::make_pair(&s.q, &q), std::make_pair(&s.k, &k), std::make_pair(&s.v, &v)}) {
      pr.first->assign(pr.second->begin() + cu[b] * row_elems, pr.second->begin() + cu[b + 1] * row_elems);
      pr.first->resize(s.T * row_elems, 0.25);
    }
    s.slots = {slots[b] >= 0 ? 0 : -1};
    s.num_slots = 1;
    s.pool0.assign(static_cast<size_t>(slot_stride()), 0.f);
    if (slots[b] >= 0) {
      const int64_t base = slots[b] * slot_stride();
      std::copy(pool0.begin() + base, pool0.begin() + base + slot_stride(), s.pool0.begin());
    }
    s.has_init = has_init.empty() ? std::vector<uint8_t>{} : std::vector<uint8_t>{has_init[b]};
    if (c.ckpt_interval > 0) {
      s.ckpt_off = {0, static_cast<int32_t>(n / c.ckpt_interval + (c.ckpt_offsets ? 1 : 0))};
      s.ckpt_rows = s.ckpt_off.back() + 1;
    }
    return s;
  }

  int64_t head_elems() const { return int64_t{c.d} * c.d; }
  int64_t slot_stride() const { return int64_t{c.pool_layers} * c.H * head_elems(); }
  int64_t ckpt_elems() const { return ckpt_rows * c.H * head_elems(); }

  // Strides of the input layout (elements).
  int64_t in_stride_token() const { return c.fused ? 3LL * c.H * c.d : int64_t{c.H} * (c.d + c.head_pad); }
  int64_t in_stride_head() const { return c.fused ? 3LL * c.d : c.d + c.head_pad; }
  int64_t o_stride_token() const { return int64_t{c.H} * (c.d + c.head_pad); }
  int64_t o_stride_head() const { return c.d + c.head_pad; }
  int64_t in_elems() const { return T * in_stride_token(); }
  int64_t o_elems() const { return T * o_stride_token(); }

  /// Input bytes: separate q, k, v tensors, or one fused tensor (q_bytes only).
  void fill_inputs(Blob& qb, Blob& kb, Blob& vb) const {
    const size_t es = fulgur::dtype_size(c.in);
    const int64_t n = in_elems() * (c.fused ? 1 : 1);
    qb.host.assign(static_cast<size_t>(n) * es, 0xAB);
    if (!c.fused) {
      kb.host.assign(static_cast<size_t>(n) * es, 0xAB);
      vb.host.assign(static_cast<size_t>(n) * es, 0xAB);
    }
    for (int64_t t = 0; t < T; ++t)
      for (int h = 0; h < c.H; ++h)
        for (int i = 0; i < c.d; ++i) {
          const int64_t src = (t * c.H + h) * c.d + i;
          const int64_t base = t * in_stride_token() + h * in_stride_head() + i;
          if (c.fused) {
            store_as(c.in, qb.host.data(), base, q[src]);
            store_as(c.in, qb.host.data(), base + c.d, k[src]);
            store_as(c.in, qb.host.data(), base + 2 * c.d, v[src]);
          } else {
            store_as(c.in, qb.host.data(), base, q[src]);
            store_as(c.in, kb.host.data(), base, k[src]);
            store_as(c.in, vb.host.data(), base, v[src]);
          }
        }
  }

  lt::PrefillParams params(const void* qp, const void* kp, const void* vp, void* o, float* pool, float* ckpt,
                           const int32_t* cu_p, const int32_t* slots_p, const uint8_t* has_init_p,
                           const int32_t* ckpt_off_p, const float* slopes_p) const {
    lt::PrefillParams p;
    p.batch_size = B;
    p.num_tokens = T;
    p.cu_seqlens = cu_p;
    p.num_heads = c.H;
    p.dk = p.dv = c.d;
    p.qkv_dtype = c.in;
    const size_t es = fulgur::dtype_size(c.in);
    if (c.fused) {
      const unsigned char* base = static_cast<const unsigned char*>(qp);
      p.q = base;
      p.k = base + c.d * es;
      p.v = base + 2 * c.d * es;
    } else {
      p.q = qp;
      p.k = kp;
      p.v = vp;
    }
    p.q_stride_token = p.k_stride_token = p.v_stride_token = in_stride_token();
    p.q_stride_head = p.k_stride_head = p.v_stride_head = in_stride_head();
    p.silu_qkv = c.silu;
    p.o_dtype = c.out;
    p.o = o;
    p.o_stride_token = o_stride_token();
    p.o_stride_head = o_stride_head();
    p.slopes = slopes_p;
    p.scale = c.scale;
    p.state = pool + int64_t{c.pool_layer} * c.H * head_elems();
    p.state_stride_slot = c.pool_layers > 1 ? slot_stride() : 0;
    p.state_layout = c.layout;
    p.num_slots = num_slots;
    p.slot_ids = slots_p;
    p.has_initial_state = has_init_p;
    if (c.ckpt_interval > 0) {
      p.checkpoints = ckpt;
      p.checkpoint_interval = c.ckpt_interval;
      p.checkpoint_offsets = c.ckpt_offsets ? ckpt_off_p : nullptr;
      p.num_checkpoint_rows = ckpt_rows;
    }
    return p;
  }

  /// The fp64 recurrence (ground truth) on host copies.
  PrefillResult run_reference() const {
    Blob qb, kb, vb;
    fill_inputs(qb, kb, vb);
    PrefillResult r;
    r.o.assign(static_cast<size_t>(o_elems() * fulgur::dtype_size(c.out)), 0xFF);
    r.pool = pool0;
    r.ckpt.assign(static_cast<size_t>(ckpt_elems()), 0.f);
    fulgur_test::poison(r.ckpt);
    const lt::PrefillParams p =
        params(qb.host.data(), kb.host.data(), vb.host.data(), r.o.data(), r.pool.data(), r.ckpt.data(), cu.data(),
               slots.data(), has_init.empty() ? nullptr : has_init.data(), ckpt_off.data(), slopes.data());
    const fulgur::Status st = fulgur::reference::lightning_prefill(p);
    INFO(st.reason());
    REQUIRE(st.is_ok());
    return r;
  }

  /// The kernel on device copies. `mutate` may edit the device-side params (bad-input tests).
  template <typename Mutate>
  PrefillResult run_kernel(Mutate&& mutate) const {
    Blob qb, kb, vb;
    fill_inputs(qb, kb, vb);
    qb.to_device();
    if (!c.fused) {
      kb.to_device();
      vb.to_device();
    }
    DeviceBuffer<unsigned char> o(static_cast<size_t>(o_elems() * fulgur::dtype_size(c.out)));
    REQUIRE(o.fill_bytes(0xFF) == cudaSuccess);
    DeviceBuffer<float> pool(pool0);
    DeviceBuffer<float> ckpt(static_cast<size_t>(ckpt_elems() > 0 ? ckpt_elems() : 4));
    REQUIRE(ckpt.fill_bytes(0xFF) == cudaSuccess);
    DeviceBuffer<int32_t> cu_d(cu), slots_d(slots.empty() ? std::vector<int32_t>{0} : slots);
    DeviceBuffer<int32_t> off_d(ckpt_off.empty() ? std::vector<int32_t>{0} : ckpt_off);
    DeviceBuffer<uint8_t> init_d(has_init.empty() ? std::vector<uint8_t>{1} : has_init);
    DeviceBuffer<float> slopes_d(slopes);
    lt::PrefillParams p = params(qb.dev.data(), c.fused ? nullptr : kb.dev.data(), c.fused ? nullptr : vb.dev.data(),
                                 o.data(), pool.data(), ckpt.data(), cu_d.data(), slots_d.data(),
                                 has_init.empty() ? nullptr : init_d.data(), off_d.data(), slopes_d.data());
    mutate(p);
    PrefillResult r;
    size_t ws_bytes = 0;
    r.err = lt::prefill(nullptr, ws_bytes, p);
    DeviceBuffer<unsigned char> ws(ws_bytes ? ws_bytes : 256);
    if (r.err == cudaSuccess) {
      r.err = lt::prefill(ws.data(), ws_bytes, p);
      REQUIRE(fulgur::device_synchronize() == cudaSuccess);
      if (r.err == cudaSuccess) REQUIRE(lt::prefill_device_status(ws.data(), r.device_status) == cudaSuccess);
    }
    REQUIRE(fulgur::device_synchronize() == cudaSuccess);
    r.o = o.to_host();
    r.pool = pool.to_host();
    r.ckpt = ckpt.to_host();
    if (ckpt_elems() == 0) r.ckpt.clear();
    return r;
  }
  PrefillResult run_kernel() const {
    return run_kernel([](lt::PrefillParams&) {});
  }

  // ---- views -------------------------------------------------------------------------------
  double o_at(const PrefillResult& r, int64_t row, int h, int j) const {
    return load_as(c.out, r.o.data(), row * o_stride_token() + h * o_stride_head() + j);
  }
  /// o of sequence b, head h as a flat vector.
  std::vector<double> o_block(const PrefillResult& r, int b, int h) const {
    std::vector<double> out;
    for (int64_t row = cu[b]; row < cu[b + 1]; ++row)
      for (int j = 0; j < c.d; ++j) out.push_back(o_at(r, row, h, j));
    return out;
  }
  /// One head's state of one pool slot (layout as stored).
  int64_t slot_head_base(int64_t slot, int h) const {
    return slot * slot_stride() + int64_t{c.pool_layer} * c.H * head_elems() + h * head_elems();
  }
  std::vector<double> slot_state(const std::vector<float>& pool, int64_t slot, int h) const {
    const int64_t base = slot_head_base(slot, h);
    return std::vector<double>(pool.begin() + base, pool.begin() + base + head_elems());
  }
  std::vector<double> ckpt_state(const std::vector<float>& ck, int64_t row, int h) const {
    const int64_t base = row * c.H * head_elems() + h * head_elems();
    return std::vector<double>(ck.begin() + base, ck.begin() + base + head_elems());
  }
};

/// Relative RMSE bounds against the fp64 references, per (sequence, head) block of o and per
/// head of every written state. Derivation (docs/lightning.md, "Precision"):
///  - Every mma operand that carries more than 8 significant bits is split into bf16 hi + lo
///    (x = hi + lo + e, |lo| <= 2^-8 |x|, |e| <= 2^-16 |x|), and a product of two such operands
///    keeps hi*hi + hi*lo + lo*hi, dropping lo*lo (<= 2^-16 |xy|): each product term is off by at
///    most about 3 * 2^-16 = 4.6e-5 of itself, with signs that vary from term to term. fp32
///    accumulation adds about n * 2^-24 (n <= 64 per mma chain: 4e-6), exp2f a few ulp.
///    So the fp32 result is within ~5e-5 relative even if every error lined up; 1e-4 is the
///    bound for fp32 outputs and for every state (measured: 2e-6 .. 1e-5). A 1/lambda decay slip
///    (>= 1e-2) or a dropped lo term (~2^-9 = 2e-3) fails it.
///  - A 16-bit output is compared with the reference rounded to the same dtype. The two
///    unrounded values differ by <= 1e-4 relative, so they round to different neighbours only
///    when a rounding boundary lies between them: for bf16 (ulp <= 2^-7 relative) with
///    probability <= 2e-4 / 2^-8 = 5%, a relative RMSE <= sqrt(0.05) * 2^-7 = 1.7e-3: bound 2e-3
///    (the requirement is 5e-3; measured ~2e-4). f16 (ulp <= 2^-10): probability <= 40%,
///    RMSE <= sqrt(0.4) * 2^-10 = 6e-4: bound 1e-3.
struct Tolerance {
  double o;
  double state;
};

inline Tolerance tolerance_for(DType out) {
  switch (out) {
    case DType::kBF16: return {2e-3, 1e-4};
    case DType::kF16: return {1e-3, 1e-4};
    default: return {1e-4, 1e-4};
  }
}

/// Compare a kernel run with the reference run of the same problem: every (sequence, head)
/// block of o within tol.o (relative RMSE), every written state and checkpoint within
/// tol.state, and everything that must not be written bit for bit untouched. Returns the worst
/// errors seen (for the log).
struct Worst {
  double o = 0, state = 0;
};

inline Worst compare(const PrefillProblem& pb, const PrefillResult& got, const PrefillResult& ref, Tolerance tol) {
  Worst worst;
  REQUIRE(got.err == cudaSuccess);
  REQUIRE(got.device_status == lt::PrefillArrayError::kOk);
  const auto& c = pb.c;
  // o: rows inside sequences within tolerance; every other element still poisoned.
  std::vector<char> inside(static_cast<size_t>(pb.o_elems()), 0);
  for (int b = 0; b < pb.B; ++b)
    for (int h = 0; h < c.H; ++h) {
      const std::vector<double> g = pb.o_block(got, b, h), e = pb.o_block(ref, b, h);
      if (g.empty()) continue;
      const double err = fulgur_test::rel_rmse(g, e);
      worst.o = std::max(worst.o, err);
      INFO("o of sequence " << b << " (length " << c.lens[b] << "), head " << h << ": rel RMSE " << err);
      CHECK(err <= tol.o);
      for (int64_t row = pb.cu[b]; row < pb.cu[b + 1]; ++row)
        for (int j = 0; j < c.d; ++j) inside[row * pb.o_stride_token() + h * pb.o_stride_head() + j] = 1;
    }
  {
    const size_t es = fulgur::dtype_size(c.out);
    int64_t touched = 0;
    for (int64_t i = 0; i < pb.o_elems(); ++i) {
      if (inside[i]) continue;
      for (size_t byte = 0; byte < es; ++byte) touched += got.o[i * es + byte] != 0xFF;
    }
    INFO("bytes of o outside every sequence that were written");
    CHECK(touched == 0);
  }
  // Pool: used slots within tolerance of the reference; everything else bit for bit unchanged.
  std::vector<char> used(pb.pool0.size(), 0);
  for (int b = 0; b < pb.B; ++b) {
    const int32_t s = pb.slots[b];
    if (s < 0) continue;
    for (int h = 0; h < c.H; ++h) {
      std::fill(used.begin() + pb.slot_head_base(s, h), used.begin() + pb.slot_head_base(s, h) + pb.head_elems(), 1);
      const double err = fulgur_test::rel_rmse(pb.slot_state(got.pool, s, h), pb.slot_state(ref.pool, s, h));
      worst.state = std::max(worst.state, err);
      INFO("final state of sequence " << b << " (slot " << s << "), head " << h << ": rel RMSE " << err);
      CHECK(err <= tol.state);
    }
  }
  {
    int64_t changed = 0;
    for (size_t i = 0; i < used.size(); ++i) changed += !used[i] && f32_bits(got.pool[i]) != f32_bits(pb.pool0[i]);
    INFO("pool elements outside the used slots (and layer) that changed");
    CHECK(changed == 0);
  }
  // Checkpoints: rows the reference wrote within tolerance; the rest untouched (poison).
  if (c.ckpt_interval > 0) {
    const int64_t per_row = c.H * pb.head_elems();
    for (int64_t row = 0; row < pb.ckpt_rows; ++row) {
      const bool written = f32_bits(ref.ckpt[row * per_row]) != 0xFFFFFFFFu;
      if (written) {
        for (int h = 0; h < c.H; ++h) {
          const double err = fulgur_test::rel_rmse(pb.ckpt_state(got.ckpt, row, h), pb.ckpt_state(ref.ckpt, row, h));
          worst.state = std::max(worst.state, err);
          INFO("checkpoint row " << row << ", head " << h << ": rel RMSE " << err);
          CHECK(err <= tol.state);
        }
      } else {
        int64_t touched = 0;
        for (int64_t i = row * per_row; i < (row + 1) * per_row; ++i) touched += f32_bits(got.ckpt[i]) != 0xFFFFFFFFu;
        INFO("checkpoint row " << row << " must stay untouched");
        CHECK(touched == 0);
      }
    }
  }
  return worst;
}

// ---- decode problems ----------------------------------------------------------------------------

struct DecodeCase {
  int B = 3;
  int H = 2;
  int d = 64;
  DType in = DType::kBF16;
  DType out = DType::kBF16;
  bool fused = false;  // q|k|v of a head contiguous: [B, H, 3, d]
  bool silu = false;
  bool zero_mean = false;
  std::vector<float> slopes;  // [H]; empty: MiniMax layer 40, heads spread
  float scale = 1.f;
  StateLayout layout = StateLayout::kKV;
  std::vector<int32_t> slots;  // [B]; empty: slot b
  int64_t extra_slots = 2;
  double init_scale = 1.0;
};

struct DecodeResult {
  cudaError_t err = cudaSuccess;
  std::vector<unsigned char> o;
  std::vector<float> pool;
};

class DecodeProblem {
 public:
  DecodeCase c;
  std::vector<int32_t> slots;
  std::vector<float> slopes, pool0;
  std::vector<double> q, k, v;  // dense [B, H, d], rounded to the input dtype
  int64_t num_slots = 0;

  DecodeProblem(const DecodeCase& cs, Rng& rng) : c(cs) {
    const int64_t n = int64_t{c.B} * c.H * c.d;
    q.resize(n);
    k.resize(n);
    v.resize(n);
    auto draw = [&] {
      const double x = rng.normal();
      return (c.silu || c.zero_mean) ? x : silu(x);
    };
    for (auto* vec : {&q, &k, &v})
      for (double& x : *vec) x = round_to(c.in, draw());
    slopes = c.slopes.empty() ? minimax_slopes(c.H, 40) : c.slopes;
    slots = c.slots;
    if (slots.empty())
      for (int32_t b = 0; b < c.B; ++b) slots.push_back(b);
    int32_t max_slot = -1;
    for (int32_t s : slots) max_slot = std::max(max_slot, s);
    num_slots = max_slot + 1 + c.extra_slots;
    pool0.resize(num_slots * c.H * head_elems());
    for (float& x : pool0) x = static_cast<float>(c.init_scale * rng.normal());
  }

  int64_t head_elems() const { return int64_t{c.d} * c.d; }
  int64_t in_stride_token() const { return c.fused ? 3LL * c.H * c.d : int64_t{c.H} * c.d; }
  int64_t in_stride_head() const { return c.fused ? 3LL * c.d : c.d; }
  int64_t o_elems() const { return int64_t{c.B} * c.H * c.d; }

  void fill_inputs(Blob& qb, Blob& kb, Blob& vb) const {
    const size_t es = fulgur::dtype_size(c.in);
    const int64_t n = int64_t{c.B} * in_stride_token();
    qb.host.assign(static_cast<size_t>(n) * es, 0xAB);
    if (!c.fused) {
      kb.host.assign(static_cast<size_t>(n) * es, 0xAB);
      vb.host.assign(static_cast<size_t>(n) * es, 0xAB);
    }
    for (int b = 0; b < c.B; ++b)
      for (int h = 0; h < c.H; ++h)
        for (int i = 0; i < c.d; ++i) {
          const int64_t src = (int64_t{b} * c.H + h) * c.d + i;
          const int64_t base = b * in_stride_token() + h * in_stride_head() + i;
          store_as(c.in, qb.host.data(), base, q[src]);
          store_as(c.in, c.fused ? qb.host.data() : kb.host.data(), base + (c.fused ? c.d : 0), k[src]);
          store_as(c.in, c.fused ? qb.host.data() : vb.host.data(), base + (c.fused ? 2 * c.d : 0), v[src]);
        }
  }

  lt::DecodeParams params(const void* qp, const void* kp, const void* vp, void* o, float* pool, const int32_t* slots_p,
                          const float* slopes_p) const {
    lt::DecodeParams p;
    p.batch_size = c.B;
    p.num_heads = c.H;
    p.dk = p.dv = c.d;
    p.qkv_dtype = c.in;
    const size_t es = fulgur::dtype_size(c.in);
    if (c.fused) {
      const unsigned char* base = static_cast<const unsigned char*>(qp);
      p.q = base;
      p.k = base + c.d * es;
      p.v = base + 2 * c.d * es;
    } else {
      p.q = qp;
      p.k = kp;
      p.v = vp;
    }
    p.q_stride_token = p.k_stride_token = p.v_stride_token = in_stride_token();
    p.q_stride_head = p.k_stride_head = p.v_stride_head = in_stride_head();
    p.silu_qkv = c.silu;
    p.o_dtype = c.out;
    p.o = o;
    p.o_stride_token = int64_t{c.H} * c.d;
    p.o_stride_head = c.d;
    p.slopes = slopes_p;
    p.scale = c.scale;
    p.state = pool;
    p.state_layout = c.layout;
    p.num_slots = num_slots;
    p.slot_ids = slots_p;
    return p;
  }

  /// The fp64 reference step on host copies, from `pool` (default: the initial pool).
  DecodeResult run_reference(const std::vector<float>* pool = nullptr) const {
    Blob qb, kb, vb;
    fill_inputs(qb, kb, vb);
    DecodeResult r;
    r.o.assign(static_cast<size_t>(o_elems() * fulgur::dtype_size(c.out)), 0xFF);
    r.pool = pool ? *pool : pool0;
    const lt::DecodeParams p =
        params(qb.host.data(), kb.host.data(), vb.host.data(), r.o.data(), r.pool.data(), slots.data(), slopes.data());
    const fulgur::Status st = fulgur::reference::lightning_decode(p);
    INFO(st.reason());
    REQUIRE(st.is_ok());
    return r;
  }

  template <typename Mutate>
  DecodeResult run_kernel(const std::vector<float>& pool_in, Mutate&& mutate) const {
    Blob qb, kb, vb;
    fill_inputs(qb, kb, vb);
    qb.to_device();
    if (!c.fused) {
      kb.to_device();
      vb.to_device();
    }
    DeviceBuffer<unsigned char> o(static_cast<size_t>(o_elems() * fulgur::dtype_size(c.out)) + 16);
    REQUIRE(o.fill_bytes(0xFF) == cudaSuccess);
    DeviceBuffer<float> pool(pool_in);
    DeviceBuffer<int32_t> slots_d(slots.empty() ? std::vector<int32_t>{0} : slots);
    DeviceBuffer<float> slopes_d(slopes);
    lt::DecodeParams p = params(qb.dev.data(), c.fused ? nullptr : kb.dev.data(), c.fused ? nullptr : vb.dev.data(),
                                o.data(), pool.data(), slots_d.data(), slopes_d.data());
    mutate(p);
    DecodeResult r;
    r.err = lt::decode(p);
    REQUIRE(fulgur::device_synchronize() == cudaSuccess);
    r.o = o.to_host();
    r.o.resize(static_cast<size_t>(o_elems() * fulgur::dtype_size(c.out)));
    r.pool = pool.to_host();
    return r;
  }
  DecodeResult run_kernel() const {
    return run_kernel(pool0, [](lt::DecodeParams&) {});
  }

  std::vector<double> o_row(const DecodeResult& r, int b, int h) const {
    std::vector<double> out(c.d);
    for (int j = 0; j < c.d; ++j) out[j] = load_as(c.out, r.o.data(), (int64_t{b} * c.H + h) * c.d + j);
    return out;
  }
  std::vector<double> slot_state(const std::vector<float>& pool, int64_t slot, int h) const {
    const int64_t base = (slot * c.H + h) * head_elems();
    return std::vector<double>(pool.begin() + base, pool.begin() + base + head_elems());
  }
};

/// Kernel vs reference for a decode step: o of every row with a slot and every updated state
/// within tol; o of padding rows and every other pool element untouched.
inline Worst compare(const DecodeProblem& pb, const DecodeResult& got, const DecodeResult& ref, Tolerance tol,
                     const std::vector<float>& pool_before) {
  Worst worst;
  REQUIRE(got.err == cudaSuccess);
  const auto& c = pb.c;
  const size_t es = fulgur::dtype_size(c.out);
  std::vector<char> used(pool_before.size(), 0);
  for (int b = 0; b < c.B; ++b) {
    const int32_t s = pb.slots[b];
    for (int h = 0; h < c.H; ++h) {
      if (s < 0) {
        int64_t touched = 0;
        for (int j = 0; j < c.d; ++j)
          for (size_t byte = 0; byte < es; ++byte)
            touched += got.o[((int64_t{b} * c.H + h) * c.d + j) * es + byte] != 0xFF;
        INFO("o of padding row " << b << ", head " << h << " must stay untouched");
        CHECK(touched == 0);
        continue;
      }
      const double eo = fulgur_test::rel_rmse(pb.o_row(got, b, h), pb.o_row(ref, b, h));
      const double es2 = fulgur_test::rel_rmse(pb.slot_state(got.pool, s, h), pb.slot_state(ref.pool, s, h));
      worst.o = std::max(worst.o, eo);
      worst.state = std::max(worst.state, es2);
      INFO("row " << b << " (slot " << s << "), head " << h << ": o rel RMSE " << eo << ", state " << es2);
      CHECK(eo <= tol.o);
      CHECK(es2 <= tol.state);
      const int64_t base = (s * c.H + h) * pb.head_elems();
      std::fill(used.begin() + base, used.begin() + base + pb.head_elems(), 1);
    }
  }
  int64_t changed = 0;
  for (size_t i = 0; i < used.size(); ++i) changed += !used[i] && f32_bits(got.pool[i]) != f32_bits(pool_before[i]);
  INFO("pool elements outside the rows' slots that changed");
  CHECK(changed == 0);
  return worst;
}

}  // namespace lt_test
