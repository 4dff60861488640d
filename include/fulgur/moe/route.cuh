// SPDX-License-Identifier: Apache-2.0
// fulgur::moe::route: fused scoring + group-limited top-k selection + weights for every routing
// family RoutePolicy composes (spec: /work/shared/specs/moe_routing.md; contract and defined
// results: include/fulgur/moe/params.hpp and include/fulgur/reference/moe.hpp).
//
// Design (docs/design/moe.md): one logical warp of kWidth lanes per token, the token's E logits in
// registers, strided (item i of lane l is expert l + kWidth * i), so every expert count up to the
// compiled capacity takes the same fast path (E = 60, 160, 257, 384, 512 included). The capacity
// (kWidth * kItems) is the smallest of FULGUR_MOE_ROUTE_CAPACITIES >= E, chosen from E alone, so a
// token's result never depends on the batch it is in.
//   1. load, NaN / -inf -> unavailable; softmax statistics (max, sum) by warp butterflies;
//   2. key = score (or logit) + selection bias; an unavailable expert or NaN key is -inf;
//   3. groups (n_group > 1): keys staged in shared memory, kWidth / n_group lanes per group find
//      its top-2 sum, each group counts the groups ranked above it (lower index wins ties) and a
//      ballot keeps the topk_group best; the other groups' keys become -inf;
//   4. k rounds of a shuffle argmax (primitives::warp_topk: descending key, lower index on ties,
//      NaN as -inf); lane j receives slot j;
//   5. lane j recomputes its weight from the UNBIASED score of the selected logit (fetched from
//      the owning lane's registers by one shuffle per item, so no register array is indexed
//      dynamically and the row is not read twice; re-read above E = 512); softmax-after-top-k and
//      renormalization are butterflies over the k lanes; then the scaling factor.
// Selection on softmax scores is done on the logits when nothing else enters the key (softmax
// is strictly increasing, so the order is the fp64 reference's, without the ties fp32
// probabilities would add); with a bias or groups the fp32 score itself is used.
//
// Cost per token: E logits read (2 or 4 bytes each), k ids + k weights written: about
// E*2 + k*8 bytes; about 10 FLOP per expert (exp, compares). Latency-bound: 5 64-bit shuffles per
// selected slot, plus 10-20 for the softmax statistics and the group stage.
//
// Expert counts, when asked for, are zeroed by a first launch and incremented with integer
// atomics (the totals do not depend on their order).
#pragma once

#include <cmath>
#include <cstdint>

#include "fulgur/detail/cuda.cuh"
#include "fulgur/detail/dispatch.hpp"
#include "fulgur/detail/launch.cuh"
#include "fulgur/detail/status.hpp"
#include "fulgur/moe/common.cuh"
#include "fulgur/moe/params.hpp"
#include "fulgur/primitives/topk.cuh"
#include "fulgur/primitives/warp.cuh"

/// Build-time allow-list of routing capacities (experts held per token in registers). Each value
/// is 1, 2, 4, 8, 16 or 32 (a sub-warp of that many lanes, one expert per lane) or a multiple of
/// 32 up to 1024 (a full warp, value / 32 experts per lane). E runs on the smallest listed value
/// >= E; an engine serving one model can list just that model's bucket.
#ifndef FULGUR_MOE_ROUTE_CAPACITIES
#define FULGUR_MOE_ROUTE_CAPACITIES 8, 16, 32, 64, 128, 256, 512, 1024
#endif

FULGUR_NAMESPACE_BEGIN
namespace moe {

/// Largest expert count the routing kernel accepts (32 lanes x 32 registers); larger E returns
/// cudaErrorNotSupported.
constexpr int32_t kMaxRouteExperts = 1024;
/// Largest n_group the group stage handles (one lane group per expert group).
constexpr int32_t kMaxRouteGroups = 32;

namespace detail {

constexpr int kRouteBlockThreads = 128;

/// Capacity -> lanes per token and experts per lane.
FULGUR_HOST_DEVICE constexpr int route_width(int capacity) { return capacity < 32 ? capacity : 32; }
FULGUR_HOST_DEVICE constexpr int route_items(int capacity) { return capacity / route_width(capacity); }
FULGUR_HOST_DEVICE constexpr bool route_capacity_ok(int capacity) {
  return capacity >= 1 && capacity <= kMaxRouteExperts &&
         (capacity < 32 ? (capacity & (capacity - 1)) == 0 : capacity % 32 == 0);
}

/// Smallest compiled capacity >= E, or 0 when none is.
inline int route_capacity(int32_t num_experts) {
  constexpr int caps[] = {FULGUR_MOE_ROUTE_CAPACITIES};
  int best = 0;
  for (int c : caps)
    if (route_capacity_ok(c) && c >= num_experts && (best == 0 || c < best)) best = c;
  return best;
}

FULGUR_DEVICE FULGUR_FORCEINLINE float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

/// The score of one logit given the softmax statistics (max m, sum z over available experts).
FULGUR_DEVICE FULGUR_FORCEINLINE float route_score(ScoreFunc f, float x, float m, float z) {
  if (f == ScoreFunc::kSoftmax) return expf(x - m) / z;
  if (f == ScoreFunc::kSigmoid) return sigmoidf(x);
  return x;
}

/// Routes token t with the calling logical warp of route_width(kCapacity) lanes (every lane of
/// the warp calls it; lanes of a token past the end take part in the collectives, see no
/// candidates and write nothing). group_keys: E floats of shared memory for this token, used
/// when n_group > 1. Atomic expert counts only when count_experts.
template <typename TLogit, int kCapacity>
FULGUR_DEVICE FULGUR_FORCEINLINE void route_token(const RouteParams& p, int64_t t, float* group_keys,
                                                  bool count_experts) {
  using primitives::KeyIndex;
  constexpr int kWidth = route_width(kCapacity);
  constexpr int kItems = route_items(kCapacity);
  constexpr float kNegInf = -INFINITY;
  static_assert(route_capacity_ok(kCapacity), "routing capacity must be 1..32 (power of 2) or 32*n <= 1024");

  const RoutePolicy& pol = p.policy;
  const int E = pol.num_experts;
  const int k = pol.top_k;
  const int lane = static_cast<int>(primitives::detail::lane_id()) & (kWidth - 1);
  const bool active = t < p.num_tokens;
  const TLogit* row = static_cast<const TLogit*>(p.logits) + (active ? t * p.logits_row_stride : 0);
  const bool before = pol.score_timing == ScoreTiming::kBeforeTopK;
  const bool softmax_before = before && pol.score_func == ScoreFunc::kSoftmax;

  // Up to 16 experts per lane (E <= 512) the bias is loaded with the logits and the selected
  // logits are taken back from registers (step 5): no load waits for another. Above that the
  // extra live registers (86 -> 166 at E = 1024) would cost more occupancy than the two dependent
  // loads they save, so the bias is read when the key is formed and the selected logit re-read.
  constexpr bool kInRegisters = kItems <= 16;

  // 1. Logits (and the selection bias); NaN and -inf mark an unavailable expert.
  float x[kItems], bias[kItems];
  unsigned avail = 0u;
  FULGUR_UNROLL
  for (int i = 0; i < kItems; ++i) {
    const int e = lane + kWidth * i;
    const bool in = active && e < E;
    x[i] = in ? to_float(row[e]) : kNegInf;
    bias[i] = (kInRegisters && in && p.bias != nullptr) ? p.bias[e] : 0.0f;
    if (!(x[i] != x[i]) && x[i] != kNegInf) avail |= 1u << i;
  }

  // Softmax statistics over the available experts (butterflies: every lane gets the same bits).
  float m = kNegInf, z = 1.0f;
  if (softmax_before) {
    float local = kNegInf;
    FULGUR_UNROLL
    for (int i = 0; i < kItems; ++i)
      if (avail >> i & 1u) local = fmaxf(local, x[i]);
    m = primitives::warp_reduce_max<kWidth>(local);
    float s = 0.0f;
    FULGUR_UNROLL
    for (int i = 0; i < kItems; ++i)
      if (avail >> i & 1u) s += expf(x[i] - m);
    z = primitives::warp_reduce_sum<kWidth>(s);
  }

  // 2. Selection keys.
  const bool select_on_logits = softmax_before && p.bias == nullptr && pol.n_group == 1;
  float key[kItems];
  FULGUR_UNROLL
  for (int i = 0; i < kItems; ++i) {
    const int e = lane + kWidth * i;
    float kk = kNegInf;
    if (avail >> i & 1u) {
      kk = (!before || select_on_logits) ? x[i] : route_score(pol.score_func, x[i], m, z);
      if (p.bias != nullptr) kk += kInRegisters ? bias[i] : p.bias[e];
      if (kk != kk) kk = kNegInf;
    }
    key[i] = kk;
  }

  // 3. Group-limited selection (DeepSeek-V3 noaux_tc): group score = sum of its top-2 keys.
  if (pol.n_group > 1) {
    float* s = group_keys;
    __syncwarp(primitives::kFullMask);  // a previous token's reads of this buffer are done
    FULGUR_UNROLL
    for (int i = 0; i < kItems; ++i) {
      const int e = lane + kWidth * i;
      if (e < E) s[e] = key[i];
    }
    __syncwarp(primitives::kFullMask);
    const int G = pol.n_group;
    const int gs = E / G;
    int g_pow2 = 1;
    while (g_pow2 < G) g_pow2 *= 2;
    const int L = kWidth / g_pow2;  // lanes per group, a power of two >= 1
    const int g = lane / L, sub = lane % L;
    float v1 = kNegInf, v2 = kNegInf;  // the two largest keys seen (a multiset: equal keys count twice)
    if (g < G) {
      for (int e = g * gs + sub; e < (g + 1) * gs; e += L) {
        const float v = s[e];
        if (v > v1) {
          v2 = v1;
          v1 = v;
        } else if (v > v2) {
          v2 = v;
        }
      }
    }
    for (int off = L / 2; off >= 1; off /= 2) {
      const float o1 =
          primitives::detail::shfl<primitives::detail::ShflKind::kXor>(primitives::kFullMask, v1, off, kWidth);
      const float o2 =
          primitives::detail::shfl<primitives::detail::ShflKind::kXor>(primitives::kFullMask, v2, off, kWidth);
      const float n2 = fmaxf(fminf(v1, o1), fmaxf(v2, o2));
      v1 = fmaxf(v1, o1);
      v2 = n2;
    }
    // Every lane of group g now holds its score. Keep group g when fewer than topk_group groups
    // rank above it (a larger score, or an equal one at a lower index: -inf ties included): one
    // broadcast per group (n_group <= 32) instead of topk_group rounds of a 64-bit argmax.
    const float gscore = gs >= 2 ? v1 + v2 : v1;
    int above = 0;
    for (int h = 0; h < G; ++h) {
      const float other =
          primitives::detail::shfl<primitives::detail::ShflKind::kIdx>(primitives::kFullMask, gscore, h * L, kWidth);
      above += (other > gscore || (other == gscore && h < g)) ? 1 : 0;
    }
    // Bit g of `kept` <- the verdict of group g's first lane (lane g * L of this logical warp).
    const unsigned votes = __ballot_sync(primitives::kFullMask, sub == 0 && g < G && above < pol.topk_group);
    const unsigned mine = kWidth == 32 ? votes : (votes >> (primitives::detail::lane_id() & ~(kWidth - 1u)));
    unsigned kept = 0u;
    for (int h = 0; h < G; ++h) kept |= (mine >> (h * L) & 1u) << h;
    // Item i's expert e = lane + kWidth * i lies in group e / gs: tracked as quotient and
    // remainder, advanced by kWidth = gq * gs + gr per item (one division per token, not per item).
    const int gq = kWidth / gs, gr = kWidth % gs;
    int eg = lane / gs, er = lane % gs;
    FULGUR_UNROLL
    for (int i = 0; i < kItems; ++i) {
      const int e = lane + kWidth * i;
      if (e < E && !(kept >> eg & 1u)) key[i] = kNegInf;
      eg += gq;
      er += gr;
      if (er >= gs) {
        er -= gs;
        ++eg;
      }
    }
  }

  // 4. Top-k: lane j receives slot j (descending key, lower expert index on ties).
  const KeyIndex r = primitives::warp_topk<kWidth, kItems>(key, active ? E : 0, k);
  const bool has = lane < k && r.index >= 0;
  const bool valid = has && r.key != kNegInf;  // invalid slots keep their id, weigh 0

  // 5. Weights from the unbiased score of the selected logit, taken from the registers of the
  // lane that holds it (item index / kWidth of lane index % kWidth): one shuffle per item, all
  // lanes taking part, instead of a second, dependent read of the row, and no register array
  // indexed by a runtime value (above 16 items per lane: read from the row again). The same value
  // either way: x[i] is that logit as float.
  float xs = 0.0f;
  if (!kInRegisters) {
    if (valid) xs = to_float(row[r.index]);
  } else {
    const int src = r.index >= 0 ? (r.index & (kWidth - 1)) : 0;
    const int item = r.index >= 0 ? r.index / kWidth : -1;
    FULGUR_UNROLL
    for (int i = 0; i < kItems; ++i) {
      const float v = primitives::detail::shfl<primitives::detail::ShflKind::kIdx>(primitives::kFullMask, x[i], src,
                                                                                   kWidth);
      if (item == i) xs = v;
    }
    if (!valid) xs = 0.0f;
  }
  float w = 0.0f;
  if (before) {
    if (valid) w = route_score(pol.score_func, xs, m, z);
  } else if (pol.score_func == ScoreFunc::kSoftmax) {
    const float m2 = primitives::warp_reduce_max<kWidth>(valid ? xs : kNegInf);
    const float e2 = valid ? expf(xs - m2) : 0.0f;
    const float z2 = primitives::warp_reduce_sum<kWidth>(e2);
    if (valid) w = e2 / z2;
  } else if (valid) {
    w = pol.score_func == ScoreFunc::kSigmoid ? sigmoidf(xs) : xs;
  }
  if (pol.renormalize) {
    const float sum = primitives::warp_reduce_sum<kWidth>(w);  // invalid slots hold 0
    const int any = primitives::warp_reduce_max<kWidth>(valid ? 1 : 0);
    if (any) w = w / (sum + pol.renorm_eps);
  }
  w *= pol.scaling_factor;

  if (has) {
    const int64_t out = t * k + lane;
    p.topk_ids[out] = r.index;
    if (p.weights_dtype == DType::kBF16)
      static_cast<__nv_bfloat16*>(p.topk_weights)[out] = __float2bfloat16_rn(w);
    else
      static_cast<float*>(p.topk_weights)[out] = w;
    if (count_experts && p.expert_counts != nullptr) atomicAdd(p.expert_counts + r.index, 1);
  }
}

template <typename TLogit, int kCapacity>
FULGUR_KERNEL void __launch_bounds__(kRouteBlockThreads, 1) route_kernel(const RouteParams p) {
  constexpr int kWidth = route_width(kCapacity);
  constexpr int kTokensPerBlock = kRouteBlockThreads / kWidth;
  const int slot = static_cast<int>(threadIdx.x) / kWidth;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kTokensPerBlock + slot;
  float* group_keys = nullptr;
  if (p.policy.n_group > 1) {
    FULGUR_DYNAMIC_SMEM(float, smem);
    group_keys = smem + static_cast<int64_t>(slot) * p.policy.num_experts;
  }
  route_token<TLogit, kCapacity>(p, t, group_keys, true);
}

template <typename TLogit, int kCapacity>
cudaError_t launch_route(const RouteParams& p, cudaStream_t stream) {
  constexpr int kTokensPerBlock = kRouteBlockThreads / route_width(kCapacity);
  const int64_t blocks = (p.num_tokens + kTokensPerBlock - 1) / kTokensPerBlock;
  const size_t smem =
      p.policy.n_group > 1 ? static_cast<size_t>(kTokensPerBlock) * p.policy.num_experts * sizeof(float) : 0;
  return ::fulgur::detail::launch(route_kernel<TLogit, kCapacity>, dim3(static_cast<unsigned>(blocks)),
                                  dim3(kRouteBlockThreads), smem, stream, p);
}

/// The not_supported half of can_implement(RouteParams) (sizes and dtypes only, no pointer read):
/// what this build's route kernel cannot run. Assumes validate_route_sizes(p) passed.
inline Status route_supported(const RouteParams& p) {
  if (p.logits_dtype == DType::kF64) return Status::not_supported("route: f64 logits are for the references only");
  if (!dtype_compiled(p.logits_dtype))
    return Status::not_supported("route: this logits dtype is not compiled in (FULGUR_ALLOW_*)");
  if (p.policy.num_experts > kMaxRouteExperts)
    return Status::not_supported("route: num_experts above kMaxRouteExperts (1024) is not implemented");
  if (p.policy.n_group > kMaxRouteGroups) return Status::not_supported("route: n_group above 32 is not implemented");
  if (route_capacity(p.policy.num_experts) == 0)
    return Status::not_supported("route: no compiled capacity holds num_experts (FULGUR_MOE_ROUTE_CAPACITIES)");
  if (p.num_tokens > static_cast<int64_t>(0x7fffffff) * (kRouteBlockThreads / 32))
    return Status::not_supported("route: num_tokens exceeds the grid");
  return Status::success();
}

}  // namespace detail

/// Whether route() runs these parameters. Pure host code: never reads device memory.
/// invalid: validate(p) fails. not_supported: f64 logits (references only), E > kMaxRouteExperts,
/// n_group > kMaxRouteGroups, or a dtype / capacity this build leaves out.
inline Status can_implement(const RouteParams& p) {
  FULGUR_RETURN_IF_ERROR(validate(p));
  FULGUR_RETURN_IF_ERROR(detail::route_supported(p));
  return Status::success();
}

/// Routes p.num_tokens tokens: topk_ids, topk_weights and (when set) expert_counts, as
/// reference::moe_route defines them (selection bit-exact on tie-free inputs; weights to fp32
/// rounding, see docs/design/moe.md). Enqueued on `stream`; no allocation, no synchronization. Bad input
/// returns can_implement's code and writes nothing.
inline cudaError_t route(const RouteParams& p, cudaStream_t stream = nullptr) {
  const Status s = can_implement(p);
  if (!s) return s.code();
  if (p.expert_counts != nullptr) {
    const cudaError_t e =
        ::fulgur::detail::launch(detail::fill_kernel<int32_t>, dim3((p.policy.num_experts + 255) / 256), dim3(256), 0,
                                 stream, p.expert_counts, static_cast<int64_t>(p.policy.num_experts), int32_t{0});
    if (e != cudaSuccess) return e;
  }
  if (p.num_tokens == 0) return cudaSuccess;
  const int capacity = detail::route_capacity(p.policy.num_experts);
  return FULGUR_DISPATCH_DTYPE(p.logits_dtype, TLogit, {
    return FULGUR_DISPATCH_VALUE(int, capacity, kCapacity, (FULGUR_MOE_ROUTE_CAPACITIES), {
      if constexpr (detail::route_capacity_ok(kCapacity)) {
        return detail::launch_route<TLogit, kCapacity>(p, stream);
      } else {
        return cudaErrorNotSupported;
      }
    });
  });
}

}  // namespace moe
FULGUR_NAMESPACE_END
