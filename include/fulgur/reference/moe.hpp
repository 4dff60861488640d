// SPDX-License-Identifier: Apache-2.0
// CPU references for MoE routing, permutation, gather (dispatch) and combine, in fp64.
// The math is /work/shared/specs/moe_routing.md; the contracts are the Params structs in
// include/fulgur/moe/params.hpp, which these functions take unchanged (host pointers).
//
// Defined results the kernels must reproduce:
//   * Ties in selection (experts or groups): the lower index wins, always.
//   * NaN and -inf logits make an expert unavailable: its selection key is -inf. A NaN key (for
//     example a NaN bias) is -inf too.
//   * A slot whose selection key is -inf is INVALID: it still carries a real expert id (the
//     lowest-index expert not yet picked, since all -inf keys tie), so downstream indexing stays in
//     bounds, but its weight is exactly 0 and it joins no softmax or renormalization sum.
//     Consequence for a row with no finite score (all NaN / -inf): ids = 0, 1, ..., k-1 and all
//     weights 0, so the combine adds nothing for that token. The same rule covers rows with fewer
//     than k available experts inside the kept groups.
//   * +inf logits are outside the contract: the reference follows IEEE arithmetic (softmax gives
//     NaN, which makes the expert unavailable), kernels may differ. Tests must not feed +inf.
//   * Renormalization with renorm_eps = 0 and a zero sum (only possible with ScoreFunc::kNone or
//     underflowed scores) divides by zero as every engine does.
//   * Selection on softmax scores is done in fp64, where distinct fp32/bf16 logits give distinct
//     probabilities unless exp underflows (a logit spread above ~745). Kernels that select on fp32
//     probabilities can tie earlier (spread above ~87, or adjacent fp32 logits): kernel tests use
//     tie-free logits with a moderate spread (a permutation scaled by 1/32, as peers do).
//
// Host-only; compiles with g++ -std=c++17 and the CUDA include path (for the 16-bit types).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "fulgur/detail/config.hpp"
#include "fulgur/detail/dtype.hpp"
#include "fulgur/detail/status.hpp"
#include "fulgur/moe/params.hpp"

FULGUR_NAMESPACE_BEGIN
namespace reference {
namespace moe_detail {

/// Element i of a tensor whose dtype is only known at run time, widened to double.
inline double load(const void* base, DType dt, int64_t i) {
  switch (dt) {
    case DType::kF32: return to_double(static_cast<const float*>(base)[i]);
    case DType::kF16: return to_double(static_cast<const __half*>(base)[i]);
    case DType::kBF16: return to_double(static_cast<const __nv_bfloat16*>(base)[i]);
    case DType::kF64: return static_cast<const double*>(base)[i];
  }
  return std::numeric_limits<double>::quiet_NaN();
}

/// Round v once to the tensor's dtype and store it at element i.
inline void store(void* base, DType dt, int64_t i, double v) {
  switch (dt) {
    case DType::kF32: static_cast<float*>(base)[i] = from_double<float>(v); return;
    case DType::kF16: static_cast<__half*>(base)[i] = from_double<__half>(v); return;
    case DType::kBF16: static_cast<__nv_bfloat16*>(base)[i] = from_double<__nv_bfloat16>(v); return;
    case DType::kF64: static_cast<double*>(base)[i] = v; return;
  }
}

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

/// Index of the largest key among those not yet taken; ties (including all -inf) go to the lower
/// index because only a strictly greater key replaces the current best in an ascending scan.
inline int64_t argmax_untaken(const std::vector<double>& key, const std::vector<char>& taken) {
  int64_t best = -1;
  for (int64_t i = 0; i < static_cast<int64_t>(key.size()); ++i) {
    if (taken[i]) continue;
    if (best < 0 || key[i] > key[best]) best = i;
  }
  return best;
}

}  // namespace moe_detail

/// Top-k routing of T tokens (RouteParams, spec "Routing functions real models use"). Writes
/// topk_ids, topk_weights and, when set, expert_counts. Returns validate(p) unchanged on bad input
/// without touching any output.
inline Status moe_route(const moe::RouteParams& p) {
  using namespace moe_detail;
  FULGUR_RETURN_IF_ERROR(moe::validate(p));
  const moe::RoutePolicy& pol = p.policy;
  const int64_t T = p.num_tokens;
  const int32_t E = pol.num_experts;
  const int32_t k = pol.top_k;
  const bool before = pol.score_timing == moe::ScoreTiming::kBeforeTopK;

  if (p.expert_counts) {
    for (int32_t e = 0; e < E; ++e) p.expert_counts[e] = 0;
  }

  std::vector<double> x(E), score(E), key(E);
  std::vector<char> available(E), taken(E);
  for (int64_t t = 0; t < T; ++t) {
    // Step 1: NaN and -inf logits mark an unavailable expert (the spec's "NaN treated as -inf").
    for (int32_t e = 0; e < E; ++e) {
      x[e] = load(p.logits, p.logits_dtype, t * p.logits_row_stride + e);
      available[e] = !(std::isnan(x[e]) || x[e] == kNegInf);
    }

    // Step 2: scores over all E experts when the score function runs before selection. Softmax
    // uses only the available experts (an unavailable one has probability exactly 0).
    if (before) {
      if (pol.score_func == moe::ScoreFunc::kSoftmax) {
        double m = kNegInf;
        for (int32_t e = 0; e < E; ++e)
          if (available[e]) m = std::max(m, x[e]);
        double z = 0.0;
        for (int32_t e = 0; e < E; ++e) z += available[e] ? std::exp(x[e] - m) : 0.0;
        for (int32_t e = 0; e < E; ++e) score[e] = available[e] ? std::exp(x[e] - m) / z : 0.0;
      } else if (pol.score_func == moe::ScoreFunc::kSigmoid) {
        for (int32_t e = 0; e < E; ++e) score[e] = sigmoid(x[e]);
      } else {
        for (int32_t e = 0; e < E; ++e) score[e] = x[e];
      }
    }
    // Selection key = (score before top-k, or the raw logit) + selection-only bias.
    for (int32_t e = 0; e < E; ++e) {
      double k_e = before ? score[e] : x[e];
      if (p.bias) k_e += static_cast<double>(p.bias[e]);
      key[e] = (!available[e] || std::isnan(k_e)) ? kNegInf : k_e;
    }

    // Step 3: group-limited selection. Group score = sum of the group's top-2 keys (DeepSeek-V3
    // noaux_tc); experts of the groups not kept get key -inf, never 0 (spec pitfall).
    if (pol.n_group > 1) {
      const int32_t gs = E / pol.n_group;
      const int32_t top_in_group = std::min<int32_t>(2, gs);
      std::vector<double> group_score(pol.n_group);
      for (int32_t g = 0; g < pol.n_group; ++g) {
        std::vector<double> gk(key.begin() + static_cast<int64_t>(g) * gs,
                               key.begin() + static_cast<int64_t>(g + 1) * gs);
        std::vector<char> gtaken(gs, 0);
        double sum = 0.0;
        for (int32_t r = 0; r < top_in_group; ++r) {
          const int64_t i = argmax_untaken(gk, gtaken);
          gtaken[i] = 1;
          sum += gk[i];
        }
        group_score[g] = sum;  // -inf when the group has fewer than 2 available experts
      }
      std::vector<char> gtaken(pol.n_group, 0);
      for (int32_t r = 0; r < pol.topk_group; ++r) gtaken[argmax_untaken(group_score, gtaken)] = 1;
      for (int32_t e = 0; e < E; ++e)
        if (!gtaken[e / gs]) key[e] = kNegInf;
    }

    // Step 4: k picks by decreasing key, ties to the lower index. An invalid pick (key -inf)
    // lands on the lowest-index expert not yet taken.
    std::fill(taken.begin(), taken.end(), 0);
    int32_t ids[moe::kMaxTopK];
    bool valid[moe::kMaxTopK];
    for (int32_t j = 0; j < k; ++j) {
      const int64_t e = argmax_untaken(key, taken);
      taken[e] = 1;
      ids[j] = static_cast<int32_t>(e);
      valid[j] = key[e] != kNegInf;
    }

    // Step 5: weights from the UNBIASED scores; invalid slots weigh 0 and join no sum.
    double w[moe::kMaxTopK];
    if (before) {
      for (int32_t j = 0; j < k; ++j) w[j] = valid[j] ? score[ids[j]] : 0.0;
    } else if (pol.score_func == moe::ScoreFunc::kSoftmax) {
      // Softmax over the selected logits only (gpt-oss).
      double m = kNegInf;
      for (int32_t j = 0; j < k; ++j)
        if (valid[j]) m = std::max(m, x[ids[j]]);
      double z = 0.0;
      for (int32_t j = 0; j < k; ++j) z += valid[j] ? std::exp(x[ids[j]] - m) : 0.0;
      for (int32_t j = 0; j < k; ++j) w[j] = valid[j] ? std::exp(x[ids[j]] - m) / z : 0.0;
    } else if (pol.score_func == moe::ScoreFunc::kSigmoid) {
      for (int32_t j = 0; j < k; ++j) w[j] = valid[j] ? sigmoid(x[ids[j]]) : 0.0;  // Llama-4
    } else {
      for (int32_t j = 0; j < k; ++j) w[j] = valid[j] ? x[ids[j]] : 0.0;
    }

    // Step 6: renormalize over the valid slots; a row with none keeps its zeros.
    bool any_valid = false;
    for (int32_t j = 0; j < k; ++j) any_valid = any_valid || valid[j];
    if (pol.renormalize && any_valid) {
      double sum = 0.0;
      for (int32_t j = 0; j < k; ++j) sum += w[j];
      const double denom = sum + static_cast<double>(pol.renorm_eps);
      for (int32_t j = 0; j < k; ++j) w[j] = w[j] / denom;
    }

    // Step 7: routed scaling factor, then one rounding to the weights dtype.
    for (int32_t j = 0; j < k; ++j) {
      p.topk_ids[t * k + j] = ids[j];
      store(p.topk_weights, p.weights_dtype, t * k + j, w[j] * static_cast<double>(pol.scaling_factor));
      if (p.expert_counts) ++p.expert_counts[ids[j]];
    }
  }
  return Status::success();
}

/// Permutation by expert (PermuteParams), computed with a stable-sort oracle: the expanded indices
/// i = t*k + j, listed in increasing order, are stable-sorted by expert, which orders the rows by
/// (expert, t, j) exactly. Every other view is read off that one order. Returns invalid, touching
/// no output, when validate(p) fails or an id lies outside [0, E).
inline Status moe_permute(const moe::PermuteParams& p) {
  FULGUR_RETURN_IF_ERROR(moe::validate(p));
  const int64_t T = p.num_tokens;
  const int32_t k = p.top_k;
  const int32_t E = p.num_experts;
  const int64_t rows = T * k;
  const int32_t sentinel = static_cast<int32_t>(rows);
  for (int64_t i = 0; i < rows; ++i) {
    if (p.topk_ids[i] < 0 || p.topk_ids[i] >= E)
      return Status::invalid("permute: topk_ids holds an id outside [0, num_experts)");
  }

  std::vector<int32_t> order(rows);  // order[r] = expanded index of permuted row r
  for (int64_t i = 0; i < rows; ++i) order[i] = static_cast<int32_t>(i);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p.topk_ids[a] < p.topk_ids[b]; });

  // Offsets: count per expert, then an exclusive prefix sum.
  std::vector<int64_t> count(E, 0);
  for (int64_t i = 0; i < rows; ++i) ++count[p.topk_ids[i]];
  p.expert_first_token_offset[0] = 0;
  for (int32_t e = 0; e < E; ++e) p.expert_first_token_offset[e + 1] = p.expert_first_token_offset[e] + count[e];
  const int64_t* offset = p.expert_first_token_offset;

  for (int64_t r = 0; r < rows; ++r) {
    if (p.permuted_to_expanded) p.permuted_to_expanded[r] = order[r];
    if (p.expanded_to_permuted) p.expanded_to_permuted[order[r]] = static_cast<int32_t>(r);
  }

  // Tile-padded view: each non-empty expert takes ceil(count / M) tiles of M rows, its rows first,
  // then the sentinel. The buffers are written in full so nothing stale survives past the end.
  if (p.sorted_token_ids) {
    const int32_t M = p.tile_m;
    const int64_t cap = moe::tile_padded_capacity(T, k, E, M);
    const int64_t tiles_cap = moe::tile_count_capacity(T, k, E, M);
    for (int64_t s = 0; s < cap; ++s) p.sorted_token_ids[s] = sentinel;
    for (int64_t b = 0; b < tiles_cap; ++b) p.tile_expert_ids[b] = -1;
    int64_t pos = 0;
    for (int32_t e = 0; e < E; ++e) {
      const int64_t padded = (count[e] + M - 1) / M * M;
      for (int64_t c = 0; c < count[e]; ++c) p.sorted_token_ids[pos + c] = order[offset[e] + c];
      for (int64_t b = pos / M; b < (pos + padded) / M; ++b) p.tile_expert_ids[b] = e;
      pos += padded;
    }
    p.num_tokens_post_padded[0] = static_cast<int32_t>(pos);
  }

  // Masked view: the first masked_capacity rows of each expert in (t, j) order; the rest drop.
  if (p.masked_expanded) {
    const int64_t C = p.masked_capacity;
    int64_t dropped = 0;
    for (int32_t e = 0; e < E; ++e) {
      const int64_t placed = std::min<int64_t>(count[e], C);
      for (int64_t c = 0; c < C; ++c) p.masked_expanded[e * C + c] = c < placed ? order[offset[e] + c] : sentinel;
      p.masked_counts[e] = static_cast<int32_t>(placed);
      dropped += count[e] - placed;
    }
    if (p.masked_overflow) p.masked_overflow[0] = static_cast<int32_t>(dropped);
  }

  // Expert parallelism: rank of global expert e is e / (E/R). A token is sent once per rank.
  const int32_t R = p.num_ranks;
  const int32_t per_rank = E / R;
  if (p.rank_send_counts || p.token_in_rank) {
    if (p.rank_send_counts)
      for (int32_t r = 0; r < R; ++r) p.rank_send_counts[r] = 0;
    std::vector<char> hit(R);
    for (int64_t t = 0; t < T; ++t) {
      std::fill(hit.begin(), hit.end(), 0);
      for (int32_t j = 0; j < k; ++j) hit[p.topk_ids[t * k + j] / per_rank] = 1;
      for (int32_t r = 0; r < R; ++r) {
        if (p.token_in_rank) p.token_in_rank[t * R + r] = static_cast<uint8_t>(hit[r]);
        if (p.rank_send_counts && hit[r]) ++p.rank_send_counts[r];
      }
    }
  }
  if (p.local_expert_of_row) {
    for (int64_t r = 0; r < rows; ++r) {
      const int32_t e = p.topk_ids[order[r]];
      p.local_expert_of_row[r] = e - (e / per_rank) * per_rank;
    }
  }
  return Status::success();
}

/// Dispatch (GatherParams): out[r] = (w[t, j] *) hidden[t] for i = row_map[r] = t*k + j, a zero
/// row for the sentinel T*k. The product is formed in fp64 and rounded once to out_dtype. With
/// expanded_to_row and no row_map, only the rows it names are written (out[expanded_to_row[i]]
/// from expanded index i). Returns invalid, touching no output, when validate(p) fails, a row_map
/// entry lies outside [0, T*k], or expanded_to_row names a row >= num_rows, names a row twice,
/// or (with row_map) is not row_map's inverse.
inline Status moe_gather(const moe::GatherParams& p) {
  using namespace moe_detail;
  FULGUR_RETURN_IF_ERROR(moe::validate(p));
  const int64_t rows = p.num_tokens * p.top_k;
  if (p.row_map != nullptr) {
    for (int64_t r = 0; r < p.num_rows; ++r) {
      if (p.row_map[r] < 0 || p.row_map[r] > rows)
        return Status::invalid("gather: row_map holds an entry outside [0, T*k]");
    }
  }
  // expanded_to_row: distinct rows below num_rows, and (with row_map) exactly its inverse.
  if (p.expanded_to_row != nullptr && p.num_rows > 0) {
    std::vector<int64_t> named(static_cast<size_t>(p.num_rows), -1);
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t r = p.expanded_to_row[i];
      if (r < 0) continue;
      if (r >= p.num_rows) return Status::invalid("gather: expanded_to_row holds a row >= num_rows");
      if (named[static_cast<size_t>(r)] >= 0) return Status::invalid("gather: expanded_to_row names a row twice");
      named[static_cast<size_t>(r)] = i;
    }
    if (p.row_map != nullptr) {
      for (int64_t r = 0; r < p.num_rows; ++r) {
        const int64_t i = p.row_map[r];
        if ((i < rows ? i : -1) != named[static_cast<size_t>(r)])
          return Status::invalid("gather: expanded_to_row is not the inverse of row_map");
      }
    }
  }
  const int64_t H = p.hidden_size;
  // Row r holds expanded index i (a token row), the sentinel (zeros), or nothing (untouched).
  auto write_row = [&](int64_t r, int64_t i) {
    const int64_t t = i / p.top_k;
    const bool is_row = i < rows;
    const double w = is_row && p.scale_by_weight ? load(p.topk_weights, p.weights_dtype, i) : 1.0;
    for (int64_t h = 0; h < H; ++h) {
      const double v = is_row ? w * load(p.hidden, p.hidden_dtype, t * p.hidden_row_stride + h) : 0.0;
      store(p.out, p.out_dtype, r * p.out_row_stride + h, v);
    }
  };
  if (p.row_map != nullptr) {
    for (int64_t r = 0; r < p.num_rows; ++r) write_row(r, p.row_map[r]);
  } else if (p.num_rows > 0) {
    for (int64_t i = 0; i < rows; ++i)
      if (p.expanded_to_row[i] >= 0) write_row(p.expanded_to_row[i], i);
  }
  return Status::success();
}

/// Combine (CombineParams): out[t] = sum_{j ascending} w[t, j] * y[row(t, j)]
/// + residual_scale * residual_token_scale[t] * residual[t], in fp64 in that fixed order, rounded
/// once to out_dtype. A kernel accumulating the same terms in fp32 in the same order agrees to
/// fp32 rounding. Returns invalid, touching no output, when validate(p) fails or an
/// expanded_to_row entry is >= num_expert_rows.
inline Status moe_combine(const moe::CombineParams& p) {
  using namespace moe_detail;
  FULGUR_RETURN_IF_ERROR(moe::validate(p));
  const int64_t T = p.num_tokens;
  const int32_t k = p.top_k;
  const int64_t H = p.hidden_size;
  if (p.expanded_to_row) {
    for (int64_t i = 0; i < T * k; ++i) {
      if (p.expanded_to_row[i] >= p.num_expert_rows)
        return Status::invalid("combine: expanded_to_row holds a row >= num_expert_rows");
    }
  }
  std::vector<double> acc(H);
  for (int64_t t = 0; t < T; ++t) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int32_t j = 0; j < k; ++j) {
      const int64_t i = t * k + j;
      const int64_t row = p.expanded_to_row ? p.expanded_to_row[i] : i;
      if (row < 0) continue;  // dropped by a capacity: contributes nothing
      const double w = p.topk_weights ? load(p.topk_weights, p.weights_dtype, i) : 1.0;
      for (int64_t h = 0; h < H; ++h)
        acc[h] += w * load(p.expert_out, p.expert_out_dtype, row * p.expert_out_row_stride + h);
    }
    if (p.residual) {
      // Read the whole residual row before writing out: out may alias residual (in-place add).
      const double s = static_cast<double>(p.residual_scale) *
                       (p.residual_token_scale ? static_cast<double>(p.residual_token_scale[t]) : 1.0);
      for (int64_t h = 0; h < H; ++h) acc[h] += s * load(p.residual, p.residual_dtype, t * p.residual_row_stride + h);
    }
    for (int64_t h = 0; h < H; ++h) store(p.out, p.out_dtype, t * p.out_row_stride + h, acc[h]);
  }
  return Status::success();
}

}  // namespace reference
FULGUR_NAMESPACE_END
