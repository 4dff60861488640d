// SPDX-License-Identifier: Apache-2.0
// Parameters of the MoE routing and dispatch operations (docs: /work/shared/specs/moe_routing.md).
//
// Four operations, one Params struct each, shared by the CPU references
// (include/fulgur/reference/moe.hpp) and the GPU kernels:
//   RouteParams    router logits [T, E]  -> topk_ids [T, k], topk_weights [T, k], expert counts
//   PermuteParams  topk_ids [T, k]       -> expert offsets, index maps, tile-padded / masked views,
//                                           expert-parallel send counts
//   GatherParams   hidden [T, H]         -> rows in a dispatch layout (optionally scaled)
//   CombineParams  expert outputs        -> out[t] = sum_j w[t,j] * y[row(t,j)] (+ residual)
//
// Conventions used by every struct below:
//   * Expanded index: the (token t, slot j) pair is named by the token-major flat index
//     i = t * k + j (vLLM's convention, NOT TensorRT-LLM's slot-major j * T + t). Every index map
//     stores or consumes this flat index; t = i / k, j = i % k.
//   * Slot order: slot j of token t holds its j-th best expert (decreasing selection score,
//     ties to the lower expert index).
//   * Permuted order: rows grouped by expert (expert 0 first); inside one expert, rows in
//     increasing expanded index, i.e. increasing (t, j). This is a stable, deterministic order.
//   * Sentinel: T * k marks "no row" in sorted_token_ids, masked_expanded and gather row maps.
//   * Expert ids in topk_ids are GLOBAL ids in [0, E). Under expert parallelism, rank r owns the
//     global experts [r * E/R, (r + 1) * E/R); its LOCAL id of global expert e is e - r * E/R.
//     Fields holding local ids say so in their name.
//   * Strides are in elements and are 64-bit; rows must not overlap (stride >= row length).
//
// Host-only, plain data, no allocation. validate(...) returns a readable reason for bad input;
// the references call it first and touch no output when it fails.
#pragma once

#include <cmath>
#include <cstdint>

#include "fulgur/detail/config.hpp"
#include "fulgur/detail/dtype.hpp"
#include "fulgur/detail/overlap.hpp"
#include "fulgur/detail/status.hpp"

FULGUR_NAMESPACE_BEGIN
namespace moe {

/// Largest top-k any operation accepts (DeepSeek-class models use 8, Nemotron-3 22).
constexpr int32_t kMaxTopK = 32;
/// Largest expert count the routing contract covers. The spec asks for "any E, up to at least
/// 1024"; 4096 leaves room above the largest models served today (512) while keeping a per-row
/// score buffer bounded. A GPU launcher's can_implement may narrow this further.
constexpr int32_t kMaxExperts = 4096;
/// Tile (block_m) range of the tile-padded view: the M of block-wise grouped GEMMs (vLLM and
/// SGLang fused_moe use 16..256). M must also be a multiple of 16 (every MMA tile is).
constexpr int32_t kMinTileM = 16;
constexpr int32_t kMaxTileM = 256;

/// Index maps are int32 (what every engine passes); all row counts, including the padded
/// capacity, must stay below this.
constexpr int64_t kMaxIndex = 2147483647;  // INT32_MAX

// ----------------------------------------------------------------------------------------------
// Routing
// ----------------------------------------------------------------------------------------------

/// The function that turns router logits x into scores.
enum class ScoreFunc : int32_t {
  kSoftmax = 0,  // s_e = exp(x_e - max) / sum_i exp(x_i - max), over the experts it sees
  kSigmoid = 1,  // s_e = 1 / (1 + exp(-x_e)), per expert
  kNone = 2,     // s_e = x_e (raw logits)
};

/// Whether the score function is applied to all E logits before selection, or only to the k
/// selected logits after it (gpt-oss: softmax over the k values; Llama-4: sigmoid of the top-1).
enum class ScoreTiming : int32_t {
  kBeforeTopK = 0,  // select on score + bias; weight = score of the selected expert
  kAfterTopK = 1,   // select on logit + bias; weight = score function over the selected logits
};

/// Where the routing weight is applied. Informational for engines composing gather/combine:
/// kInput models scale the expert's INPUT rows (GatherParams::scale_by_weight = true) and
/// combine with unit weights (CombineParams::topk_weights = null).
enum class WeightSite : int32_t {
  kOutput = 0,  // out[t] = sum_j w[t,j] * expert_j(x[t])           (almost every model)
  kInput = 1,   // out[t] = sum_j expert_j(w[t,j] * x[t])           (Llama-4)
};

/// The model-defined part of routing: what a preset returns. The routing function is the
/// composition (spec, "Routing functions real models use"):
///   1. an expert whose logit x[e] is NaN or -inf is unavailable (its key below is -inf)
///   2. base[e] = score(x)[e] if timing == kBeforeTopK else x[e];   key[e] = base[e] + bias[e]
///      (bias only when selection_bias; a NaN key is -inf; an unavailable expert's key is -inf)
///   3. if n_group > 1: group score = sum of the top min(2, E/n_group) keys of the group; keep the
///      topk_group best groups (ties: lower group index); keys outside kept groups become -inf
///      (never 0: with sigmoid + a negative bias, 0 would outrank every kept expert)
///   4. pick k experts by decreasing key, ties to the lower expert index (slot j = j-th pick)
///   5. weight: score of the selected experts, from the UNBIASED scores (bias never leaks);
///      slots whose key is -inf ("invalid" slots) get weight 0 and join no sum
///   6. renormalize: w_j /= (sum over valid slots of w + renorm_eps), when any slot is valid
///   7. w_j *= scaling_factor
struct RoutePolicy {
  int32_t num_experts = 0;  // E: routed experts, 1..kMaxExperts
  int32_t top_k = 0;        // k: experts per token, 1..min(kMaxTopK, E)
  ScoreFunc score_func = ScoreFunc::kSoftmax;
  ScoreTiming score_timing = ScoreTiming::kBeforeTopK;
  /// The model has a selection-only correction bias (DeepSeek-V3 e_score_correction_bias,
  /// MiniMax-M2 routing bias): RouteParams::bias must be non-null exactly when this is true, so a
  /// forgotten or stray bias is caught by validate() instead of silently changing routing.
  bool selection_bias = false;
  int32_t n_group = 1;                           // groups of E / n_group consecutive experts; 1 = no grouping
  int32_t topk_group = 1;                        // groups kept per token, 1..n_group; topk_group * E/n_group >= k
  bool renormalize = false;                      // divide the k weights by their sum (+ renorm_eps)
  float renorm_eps = 0.0f;                       // >= 0; DeepSeek-style models add 1e-20
  float scaling_factor = 1.0f;                   // routed_scaling_factor (DeepSeek-V3: 2.5), finite
  WeightSite weight_site = WeightSite::kOutput;  // informational, see WeightSite
};

/// One routing call: T rows of router logits in, k (id, weight) pairs per row out.
struct RouteParams {
  RoutePolicy policy{};

  const void* logits = nullptr;      // [T, E] router logits, row stride logits_row_stride; required
                                     // when T > 0
  DType logits_dtype = DType::kF32;  // f32, f16, bf16 (f64: references only)
  int64_t logits_row_stride = 0;     // elements between consecutive tokens, >= E
  /// [E] fp32 selection-only correction bias, or null. Non-null exactly when
  /// policy.selection_bias. It changes which experts win, never the weights.
  const float* bias = nullptr;

  int64_t num_tokens = 0;  // T >= 0; T == 0 writes only expert_counts (zeros)

  int32_t* topk_ids = nullptr;        // [T, k] contiguous, global expert ids; required when T > 0
  void* topk_weights = nullptr;       // [T, k] contiguous; required when T > 0
  DType weights_dtype = DType::kF32;  // f32 or bf16
  /// [E] or null: number of the T*k slots routed to each expert, invalid slots included (they
  /// carry a real id and are dispatched with weight 0), so the counts sum to T * k.
  int32_t* expert_counts = nullptr;
};

// ----------------------------------------------------------------------------------------------
// Permutation (the layouts an expert GEMM consumes)
// ----------------------------------------------------------------------------------------------

/// Rows of the tile-padded view: sum_e ceil(count_e / M) * M <= T*k + E*(M-1). Size
/// sorted_token_ids with this.
constexpr int64_t tile_padded_capacity(int64_t num_tokens, int32_t top_k, int32_t num_experts, int32_t tile_m) {
  return num_tokens * top_k + static_cast<int64_t>(num_experts) * (tile_m - 1);
}
/// Tiles of the tile-padded view at capacity: size tile_expert_ids with this.
constexpr int64_t tile_count_capacity(int64_t num_tokens, int32_t top_k, int32_t num_experts, int32_t tile_m) {
  return (tile_padded_capacity(num_tokens, top_k, num_experts, tile_m) + tile_m - 1) / tile_m;
}

/// Sort the T*k (token, slot) pairs by expert and produce the views a grouped GEMM needs.
/// Only expert_first_token_offset is required; every other output is produced when non-null.
/// Rows of one expert are always in increasing (t, j) order. topk_ids must lie in [0, E): the
/// reference checks it and returns invalid; kernels assume it.
struct PermuteParams {
  const int32_t* topk_ids = nullptr;  // [T, k] contiguous global ids in [0, E); required when T>0
  int64_t num_tokens = 0;             // T >= 0
  int32_t top_k = 0;                  // k, 1..kMaxTopK
  int32_t num_experts = 0;            // E, 1..kMaxExperts

  // --- compact view: T*k rows grouped by expert -----------------------------------------------
  /// [E + 1], required: permuted rows of expert e are [offset[e], offset[e+1]); offset[0] = 0,
  /// offset[E] = T*k.
  int64_t* expert_first_token_offset = nullptr;
  /// [T*k] or null: permuted row of expanded index i = t*k + j.
  int32_t* expanded_to_permuted = nullptr;
  /// [T*k] or null: expanded index i = t*k + j held by permuted row r (inverse of the above).
  int32_t* permuted_to_expanded = nullptr;

  // --- tile-padded view (vLLM / SGLang moe_align_block_size): all three pointers or none ------
  int32_t tile_m = 0;  // M, kMinTileM..kMaxTileM, multiple of 16; used when the view is on
  /// [tile_padded_capacity(T, k, E, M)]: expert e's rows (as expanded indices, (t, j) order)
  /// padded with the sentinel T*k to a multiple of M; experts with no rows take no tiles.
  /// Entries past num_tokens_post_padded are the sentinel too (the whole buffer is written).
  int32_t* sorted_token_ids = nullptr;
  /// [tile_count_capacity(T, k, E, M)]: global expert of each M-row tile; -1 past the last tile.
  int32_t* tile_expert_ids = nullptr;
  /// [1]: rows in use, sum_e ceil(count_e / M) * M (a multiple of M).
  int32_t* num_tokens_post_padded = nullptr;

  // --- masked view (DeepEP low-latency [E, capacity, H]): both pointers or none ---------------
  int32_t masked_capacity = 0;  // rows per expert, >= 1 when the view is on
  /// [E, masked_capacity] row-major: slot c < masked_counts[e] holds the expanded index of expert
  /// e's c-th row ((t, j) order); the remaining slots hold the sentinel T*k. When an expert has
  /// more rows than the capacity, its LAST rows in (t, j) order are dropped.
  int32_t* masked_expanded = nullptr;
  /// [E]: rows placed for expert e = min(count_e, masked_capacity), safe to use as the GEMM's
  /// row count. Overflow shows as offset[e+1] - offset[e] > masked_capacity.
  int32_t* masked_counts = nullptr;
  /// [1] or null: total rows dropped by the capacity, sum_e max(0, count_e - masked_capacity).
  int32_t* masked_overflow = nullptr;

  // --- expert parallelism: R ranks, E/R consecutive experts each ------------------------------
  int32_t num_ranks = 1;  // R >= 1, divides E
  /// [R] or null: tokens sent to rank r = number of DISTINCT tokens with at least one slot on an
  /// expert of rank r (a token is sent once per rank even when several of its experts live
  /// there). Per-expert receive counts are offset[e+1] - offset[e].
  int32_t* rank_send_counts = nullptr;
  /// [T, R] or null: 1 when token t is sent to rank r, else 0 (DeepEP's is_token_in_rank).
  uint8_t* token_in_rank = nullptr;
  /// [T*k] or null: LOCAL expert id (global id - rank * E/R) of each permuted row. Rank r's rows
  /// are the permuted rows [offset[r*E/R], offset[(r+1)*E/R]).
  int32_t* local_expert_of_row = nullptr;
};

// ----------------------------------------------------------------------------------------------
// Dispatch (gather) and combine
// ----------------------------------------------------------------------------------------------

/// out[r, :] = hidden[t, :] (times w[t, j] when scale_by_weight), with i = row_map[r] = t*k + j;
/// a sentinel entry (T*k) writes a zero row, so the padding rows of the tile-padded and masked
/// views hold zeros. One row map serves every layout: permuted_to_expanded (compact view),
/// sorted_token_ids (tile-padded view) or masked_expanded (masked view, E*capacity rows).
/// Each element is rounded once to out_dtype (dtype conversion happens here).
struct GatherParams {
  const void* hidden = nullptr;       // [T, H] required when num_rows > 0
  DType hidden_dtype = DType::kBF16;  // f32, f16, bf16 (f64: references only)
  int64_t hidden_row_stride = 0;      // >= H

  int64_t num_tokens = 0;   // T >= 0
  int32_t top_k = 0;        // k, 1..kMaxTopK
  int64_t hidden_size = 0;  // H >= 1

  const int32_t* row_map = nullptr;  // [num_rows] expanded index t*k+j or sentinel T*k; required
                                     // when num_rows > 0 unless expanded_to_row is set
  int64_t num_rows = 0;              // rows to write, >= 0

  /// [T*k] or null: the output row of each expanded index i = t*k + j, the inverse of row_map
  /// (PermuteParams::expanded_to_permuted for the compact view; a negative entry: no row). When
  /// set, gather goes token by token: each token's row of hidden is read once and written to its
  /// rows, T*H elements read instead of num_rows*H (a row-by-row gather reads a token k times,
  /// far apart in time, so the repeats miss L2). Non-negative entries must be distinct and below
  /// num_rows. Rows no entry names are zeroed where row_map (when also set) holds the sentinel,
  /// and left untouched when row_map is null (the compact view names every row).
  const int32_t* expanded_to_row = nullptr;

  /// Llama-4 (WeightSite::kInput): scale each row by its routing weight.
  bool scale_by_weight = false;
  const void* topk_weights = nullptr;  // [T, k] contiguous; required when scale_by_weight
  DType weights_dtype = DType::kF32;   // f32 or bf16

  void* out = nullptr;             // [num_rows, H] required when num_rows > 0
  DType out_dtype = DType::kBF16;  // f32, f16, bf16 (f64: references only)
  int64_t out_row_stride = 0;      // >= H
};

/// out[t, :] = sum_{j = 0..k-1, ascending} w[t, j] * y[row(t, j), :]
///             + residual_scale * residual_token_scale[t] * residual[t, :]
/// accumulated in fp32 (kernels) / fp64 (reference) in that fixed order, so the result does not
/// depend on scheduling; rounded once to out_dtype. Deterministic by construction: no atomics.
struct CombineParams {
  const void* expert_out = nullptr;       // [num_expert_rows, H] y; required when T > 0
  DType expert_out_dtype = DType::kBF16;  // f32, f16, bf16 (f64: references only)
  int64_t expert_out_row_stride = 0;      // >= H
  int64_t num_expert_rows = 0;            // rows of y (>= T*k when expanded_to_row is null)

  int64_t num_tokens = 0;   // T >= 0
  int32_t top_k = 0;        // k, 1..kMaxTopK
  int64_t hidden_size = 0;  // H >= 1

  /// [T*k] or null: row of y holding expanded index i = t*k + j (PermuteParams::
  /// expanded_to_permuted for the compact view). Null: row(t, j) = t*k + j (layouts where the
  /// GEMM already scattered back, as in vLLM's fused_moe). A negative entry means the row was not
  /// computed (dropped by a capacity) and contributes nothing.
  const int32_t* expanded_to_row = nullptr;

  /// [T, k] contiguous or null: null means weight 1 (WeightSite::kInput models, whose weights
  /// were applied by the gather).
  const void* topk_weights = nullptr;
  DType weights_dtype = DType::kF32;  // f32 or bf16

  /// [T, H] or null: residual or shared-expert output added in the same pass. out may alias it
  /// (same pointer, dtype and stride) for an in-place add.
  const void* residual = nullptr;
  DType residual_dtype = DType::kBF16;  // f32, f16, bf16 (f64: references only)
  int64_t residual_row_stride = 0;      // >= H when residual is set
  float residual_scale = 1.0f;          // finite scale of the whole residual tensor
  /// [T] or null: per-token scale of the residual (Qwen2-MoE's sigmoid shared-expert gate);
  /// null means 1.
  const float* residual_token_scale = nullptr;

  void* out = nullptr;             // [T, H] required when T > 0
  DType out_dtype = DType::kBF16;  // f32, f16, bf16 (f64: references only)
  int64_t out_row_stride = 0;      // >= H
};

// ----------------------------------------------------------------------------------------------
// Validation (host-only; checks shapes, pointers and enums, never reads tensor data)
// ----------------------------------------------------------------------------------------------

namespace detail {
inline bool is_storage_dtype(DType t) {
  return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16 || t == DType::kF64;
}
inline bool is_weight_dtype(DType t) { return t == DType::kF32 || t == DType::kBF16; }
}  // namespace detail

inline Status validate(const RoutePolicy& p) {
  FULGUR_CHECK_ARG(p.num_experts >= 1 && p.num_experts <= kMaxExperts,
                   "route: num_experts must be in [1, kMaxExperts]");
  FULGUR_CHECK_ARG(p.top_k >= 1 && p.top_k <= kMaxTopK, "route: top_k must be in [1, kMaxTopK]");
  FULGUR_CHECK_ARG(p.top_k <= p.num_experts, "route: top_k must not exceed num_experts");
  FULGUR_CHECK_ARG(
      p.score_func == ScoreFunc::kSoftmax || p.score_func == ScoreFunc::kSigmoid || p.score_func == ScoreFunc::kNone,
      "route: score_func is not a ScoreFunc value");
  FULGUR_CHECK_ARG(p.score_timing == ScoreTiming::kBeforeTopK || p.score_timing == ScoreTiming::kAfterTopK,
                   "route: score_timing is not a ScoreTiming value");
  FULGUR_CHECK_ARG(p.weight_site == WeightSite::kOutput || p.weight_site == WeightSite::kInput,
                   "route: weight_site is not a WeightSite value");
  FULGUR_CHECK_ARG(p.n_group >= 1, "route: n_group must be >= 1");
  FULGUR_CHECK_ARG(p.num_experts % p.n_group == 0, "route: n_group must divide num_experts");
  FULGUR_CHECK_ARG(p.topk_group >= 1 && p.topk_group <= p.n_group, "route: topk_group must be in [1, n_group]");
  FULGUR_CHECK_ARG(static_cast<int64_t>(p.topk_group) * (p.num_experts / p.n_group) >= p.top_k,
                   "route: the kept groups (topk_group * num_experts / n_group experts) must hold "
                   "at least top_k experts");
  FULGUR_CHECK_ARG(std::isfinite(p.renorm_eps) && p.renorm_eps >= 0.0f, "route: renorm_eps must be finite and >= 0");
  FULGUR_CHECK_ARG(std::isfinite(p.scaling_factor), "route: scaling_factor must be finite");
  return Status::success();
}

namespace detail {
/// The checks of validate(RouteParams) that read no pointer: the policy, T, the dtypes and the
/// logits stride. route_permute's workspace-size query runs them (before the pointers are set).
inline Status validate_route_sizes(const RouteParams& p) {
  FULGUR_RETURN_IF_ERROR(validate(p.policy));
  const int32_t E = p.policy.num_experts;
  FULGUR_CHECK_ARG(p.num_tokens >= 0, "route: num_tokens must be >= 0");
  FULGUR_CHECK_ARG(is_storage_dtype(p.logits_dtype), "route: logits_dtype must be f32, f16, bf16 or f64");
  FULGUR_CHECK_ARG(is_weight_dtype(p.weights_dtype), "route: weights_dtype must be f32 or bf16");
  FULGUR_CHECK_ARG(p.logits_row_stride >= E, "route: logits_row_stride must be >= num_experts");
  FULGUR_CHECK_ARG(p.num_tokens <= INT64_MAX / p.logits_row_stride,
                   "route: num_tokens * logits_row_stride overflows int64");
  return Status::success();
}
}  // namespace detail

inline Status validate(const RouteParams& p) {
  FULGUR_RETURN_IF_ERROR(detail::validate_route_sizes(p));
  FULGUR_CHECK_ARG(!p.policy.selection_bias || p.bias != nullptr,
                   "route: the policy has a selection bias but bias is null");
  FULGUR_CHECK_ARG(p.policy.selection_bias || p.bias == nullptr,
                   "route: bias is set but the policy has no selection bias");
  if (p.num_tokens > 0) {
    FULGUR_CHECK_ARG(p.logits != nullptr, "route: logits is null");
    FULGUR_CHECK_ARG(p.topk_ids != nullptr, "route: topk_ids is null");
    FULGUR_CHECK_ARG(p.topk_weights != nullptr, "route: topk_weights is null");
  }
  return Status::success();
}

inline Status validate(const PermuteParams& p) {
  FULGUR_CHECK_ARG(p.num_tokens >= 0, "permute: num_tokens must be >= 0");
  FULGUR_CHECK_ARG(p.top_k >= 1 && p.top_k <= kMaxTopK, "permute: top_k must be in [1, kMaxTopK]");
  FULGUR_CHECK_ARG(p.num_experts >= 1 && p.num_experts <= kMaxExperts,
                   "permute: num_experts must be in [1, kMaxExperts]");
  FULGUR_CHECK_ARG(p.num_tokens <= kMaxIndex / p.top_k, "permute: num_tokens * top_k must fit in int32");
  const int64_t rows = p.num_tokens * p.top_k;
  FULGUR_CHECK_ARG(p.expert_first_token_offset != nullptr, "permute: expert_first_token_offset is null");
  FULGUR_CHECK_ARG(rows == 0 || p.topk_ids != nullptr, "permute: topk_ids is null");

  const bool tile_any = p.sorted_token_ids || p.tile_expert_ids || p.num_tokens_post_padded;
  const bool tile_all = p.sorted_token_ids && p.tile_expert_ids && p.num_tokens_post_padded;
  FULGUR_CHECK_ARG(tile_any == tile_all,
                   "permute: sorted_token_ids, tile_expert_ids and num_tokens_post_padded must be "
                   "set together");
  if (tile_all) {
    FULGUR_CHECK_ARG(p.tile_m >= kMinTileM && p.tile_m <= kMaxTileM && p.tile_m % 16 == 0,
                     "permute: tile_m must be a multiple of 16 in [16, 256]");
    FULGUR_CHECK_ARG(tile_padded_capacity(p.num_tokens, p.top_k, p.num_experts, p.tile_m) <= kMaxIndex,
                     "permute: the tile-padded capacity T*k + E*(M-1) must fit in int32");
  }

  const bool masked_any = p.masked_expanded || p.masked_counts;
  FULGUR_CHECK_ARG(masked_any == (p.masked_expanded && p.masked_counts),
                   "permute: masked_expanded and masked_counts must be set together");
  FULGUR_CHECK_ARG(p.masked_overflow == nullptr || masked_any, "permute: masked_overflow needs the masked view");
  if (masked_any) {
    FULGUR_CHECK_ARG(p.masked_capacity >= 1, "permute: masked_capacity must be >= 1");
    FULGUR_CHECK_ARG(static_cast<int64_t>(p.masked_capacity) * p.num_experts <= kMaxIndex,
                     "permute: num_experts * masked_capacity must fit in int32");
  }

  FULGUR_CHECK_ARG(p.num_ranks >= 1, "permute: num_ranks must be >= 1");
  FULGUR_CHECK_ARG(p.num_experts % p.num_ranks == 0, "permute: num_ranks must divide num_experts");
  return Status::success();
}

inline Status validate(const GatherParams& p) {
  FULGUR_CHECK_ARG(p.num_tokens >= 0, "gather: num_tokens must be >= 0");
  FULGUR_CHECK_ARG(p.top_k >= 1 && p.top_k <= kMaxTopK, "gather: top_k must be in [1, kMaxTopK]");
  FULGUR_CHECK_ARG(p.num_tokens <= kMaxIndex / p.top_k, "gather: num_tokens * top_k must fit in int32");
  FULGUR_CHECK_ARG(p.hidden_size >= 1, "gather: hidden_size must be >= 1");
  FULGUR_CHECK_ARG(p.num_rows >= 0, "gather: num_rows must be >= 0");
  FULGUR_CHECK_ARG(detail::is_storage_dtype(p.hidden_dtype), "gather: hidden_dtype must be f32, f16, bf16 or f64");
  FULGUR_CHECK_ARG(detail::is_storage_dtype(p.out_dtype), "gather: out_dtype must be f32, f16, bf16 or f64");
  FULGUR_CHECK_ARG(p.hidden_row_stride >= p.hidden_size, "gather: hidden_row_stride must be >= hidden_size");
  FULGUR_CHECK_ARG(p.out_row_stride >= p.hidden_size, "gather: out_row_stride must be >= hidden_size");
  if (p.scale_by_weight) {
    FULGUR_CHECK_ARG(detail::is_weight_dtype(p.weights_dtype), "gather: weights_dtype must be f32 or bf16");
  }
  if (p.num_rows > 0) {
    FULGUR_CHECK_ARG(p.row_map != nullptr || p.expanded_to_row != nullptr,
                     "gather: row_map and expanded_to_row are both null");
    FULGUR_CHECK_ARG(p.out != nullptr, "gather: out is null");
    FULGUR_CHECK_ARG(p.num_tokens == 0 || p.hidden != nullptr, "gather: hidden is null");
    FULGUR_CHECK_ARG(!p.scale_by_weight || p.num_tokens == 0 || p.topk_weights != nullptr,
                     "gather: scale_by_weight is set but topk_weights is null");
    // out must share no byte with what the launch reads (docs/moe.md, "Overlapping buffers").
    using ::fulgur::detail::array_bytes;
    using ::fulgur::detail::strided_bytes;
    const int64_t tk = p.num_tokens * p.top_k;
    const ::fulgur::detail::ByteRows out[1] = {strided_bytes(p.out, p.num_rows, p.hidden_size, p.out_row_stride,
                                                             static_cast<int64_t>(dtype_size(p.out_dtype)))};
    const ::fulgur::detail::ByteRows reads[4] = {
        strided_bytes(p.hidden, p.num_tokens, p.hidden_size, p.hidden_row_stride,
                      static_cast<int64_t>(dtype_size(p.hidden_dtype))),
        array_bytes(p.row_map, p.num_rows, 4),
        array_bytes(p.expanded_to_row, tk, 4),
        array_bytes(p.scale_by_weight ? p.topk_weights : nullptr, tk,
                    static_cast<int64_t>(dtype_size(p.weights_dtype))),
    };
    FULGUR_CHECK_ARG(::fulgur::detail::outputs_disjoint(out, reads),
                     "gather: out overlaps an input (hidden, row_map, expanded_to_row or topk_weights)");
  }
  return Status::success();
}

inline Status validate(const CombineParams& p) {
  FULGUR_CHECK_ARG(p.num_tokens >= 0, "combine: num_tokens must be >= 0");
  FULGUR_CHECK_ARG(p.top_k >= 1 && p.top_k <= kMaxTopK, "combine: top_k must be in [1, kMaxTopK]");
  FULGUR_CHECK_ARG(p.num_tokens <= kMaxIndex / p.top_k, "combine: num_tokens * top_k must fit in int32");
  FULGUR_CHECK_ARG(p.hidden_size >= 1, "combine: hidden_size must be >= 1");
  FULGUR_CHECK_ARG(p.num_expert_rows >= 0, "combine: num_expert_rows must be >= 0");
  FULGUR_CHECK_ARG(p.expanded_to_row != nullptr || p.num_expert_rows >= p.num_tokens * p.top_k,
                   "combine: without expanded_to_row, y needs num_expert_rows >= T*k");
  FULGUR_CHECK_ARG(detail::is_storage_dtype(p.expert_out_dtype),
                   "combine: expert_out_dtype must be f32, f16, bf16 or f64");
  FULGUR_CHECK_ARG(detail::is_storage_dtype(p.out_dtype), "combine: out_dtype must be f32, f16, bf16 or f64");
  FULGUR_CHECK_ARG(p.topk_weights == nullptr || detail::is_weight_dtype(p.weights_dtype),
                   "combine: weights_dtype must be f32 or bf16");
  FULGUR_CHECK_ARG(p.expert_out_row_stride >= p.hidden_size, "combine: expert_out_row_stride must be >= hidden_size");
  FULGUR_CHECK_ARG(p.out_row_stride >= p.hidden_size, "combine: out_row_stride must be >= hidden_size");
  FULGUR_CHECK_ARG(std::isfinite(p.residual_scale), "combine: residual_scale must be finite");
  if (p.residual != nullptr) {
    FULGUR_CHECK_ARG(detail::is_storage_dtype(p.residual_dtype),
                     "combine: residual_dtype must be f32, f16, bf16 or f64");
    FULGUR_CHECK_ARG(p.residual_row_stride >= p.hidden_size, "combine: residual_row_stride must be >= hidden_size");
    FULGUR_CHECK_ARG(
        p.residual != p.out || (p.residual_dtype == p.out_dtype && p.residual_row_stride == p.out_row_stride),
        "combine: out may alias residual only with the same dtype and stride");
  }
  FULGUR_CHECK_ARG(p.residual_token_scale == nullptr || p.residual != nullptr,
                   "combine: residual_token_scale is set but residual is null");
  if (p.num_tokens > 0) {
    FULGUR_CHECK_ARG(p.out != nullptr, "combine: out is null");
    FULGUR_CHECK_ARG(p.expert_out != nullptr || p.num_expert_rows == 0, "combine: expert_out is null");
    // out must share no byte with what the launch reads, except an exact alias of residual
    // (checked above: same pointer, dtype and stride; each element is read before it is written
    // by the same thread).
    using ::fulgur::detail::array_bytes;
    using ::fulgur::detail::strided_bytes;
    const int64_t tk = p.num_tokens * p.top_k;
    const ::fulgur::detail::ByteRows out[1] = {strided_bytes(p.out, p.num_tokens, p.hidden_size, p.out_row_stride,
                                                             static_cast<int64_t>(dtype_size(p.out_dtype)))};
    const bool in_place = p.residual != nullptr && p.residual == p.out;
    const ::fulgur::detail::ByteRows reads[5] = {
        strided_bytes(p.expert_out, p.num_expert_rows, p.hidden_size, p.expert_out_row_stride,
                      static_cast<int64_t>(dtype_size(p.expert_out_dtype))),
        array_bytes(p.expanded_to_row, tk, 4),
        array_bytes(p.topk_weights, tk, static_cast<int64_t>(dtype_size(p.weights_dtype))),
        strided_bytes(in_place ? nullptr : p.residual, p.num_tokens, p.hidden_size, p.residual_row_stride,
                      static_cast<int64_t>(dtype_size(p.residual_dtype))),
        array_bytes(p.residual_token_scale, p.num_tokens, 4),
    };
    FULGUR_CHECK_ARG(::fulgur::detail::outputs_disjoint(out, reads),
                     "combine: out overlaps an input (expert_out, expanded_to_row, topk_weights, "
                     "residual other than an exact alias, or residual_token_scale)");
  }
  return Status::success();
}

// ----------------------------------------------------------------------------------------------
// Presets: the routing policy of each model family (spec table). Sizes vary by checkpoint where
// noted; the defaults are the flagship's.
// ----------------------------------------------------------------------------------------------
namespace presets {

/// MiniMax-Text-01: 32 experts, top-2, softmax over all experts, renormalized. (vLLM selects on
/// logits cast to bf16: pass bf16 logits to reproduce its ties.)
inline RoutePolicy minimax_text_01() {
  RoutePolicy p;
  p.num_experts = 32;
  p.top_k = 2;
  p.score_func = ScoreFunc::kSoftmax;
  p.renormalize = true;
  return p;
}

/// Mixtral 8x7B / 8x22B: 8 experts, top-2, softmax then renormalize (= softmax over the k logits).
inline RoutePolicy mixtral() {
  RoutePolicy p;
  p.num_experts = 8;
  p.top_k = 2;
  p.score_func = ScoreFunc::kSoftmax;
  p.renormalize = true;
  return p;
}

/// Qwen3-MoE (30B-A3B, 235B-A22B): 128 experts, top-8, softmax, renormalized (norm_topk_prob).
inline RoutePolicy qwen3_moe() {
  RoutePolicy p;
  p.num_experts = 128;
  p.top_k = 8;
  p.score_func = ScoreFunc::kSoftmax;
  p.renormalize = true;
  return p;
}

/// Qwen1.5-MoE-A2.7B (60, 4) / Qwen2-57B-A14B (64, 8): softmax, NOT renormalized. The shared
/// expert's sigmoid gate is per token: CombineParams::residual_token_scale.
inline RoutePolicy qwen2_moe(int32_t num_experts = 60, int32_t top_k = 4) {
  RoutePolicy p;
  p.num_experts = num_experts;
  p.top_k = top_k;
  p.score_func = ScoreFunc::kSoftmax;
  p.renormalize = false;
  return p;
}

/// DeepSeek-V3 / R1: 256 experts in 8 groups, keep 4 groups, top-8; sigmoid; selection on
/// sigmoid + correction bias; weights from the unbiased sigmoid, renormalized (+1e-20), x 2.5.
inline RoutePolicy deepseek_v3() {
  RoutePolicy p;
  p.num_experts = 256;
  p.top_k = 8;
  p.score_func = ScoreFunc::kSigmoid;
  p.selection_bias = true;
  p.n_group = 8;
  p.topk_group = 4;
  p.renormalize = true;
  p.renorm_eps = 1e-20f;
  p.scaling_factor = 2.5f;
  return p;
}

/// Kimi K2: DeepSeek-V3 routing with 384 experts in one group; routed_scaling_factor 2.827
/// (its config.json).
inline RoutePolicy kimi_k2() {
  RoutePolicy p = deepseek_v3();
  p.num_experts = 384;
  p.n_group = 1;
  p.topk_group = 1;
  p.scaling_factor = 2.827f;
  return p;
}

/// MiniMax-M2: 256 experts, top-8, sigmoid + routing bias for selection, renormalized (eps 1e-20).
inline RoutePolicy minimax_m2() {
  RoutePolicy p;
  p.num_experts = 256;
  p.top_k = 8;
  p.score_func = ScoreFunc::kSigmoid;
  p.selection_bias = true;
  p.renormalize = true;
  p.renorm_eps = 1e-20f;
  return p;
}

/// Llama-4 Scout (16) / Maverick (128): top-1 on raw logits, then sigmoid of that logit; the
/// weight scales the expert's INPUT.
inline RoutePolicy llama4(int32_t num_experts = 16) {
  RoutePolicy p;
  p.num_experts = num_experts;
  p.top_k = 1;
  p.score_func = ScoreFunc::kSigmoid;
  p.score_timing = ScoreTiming::kAfterTopK;
  p.renormalize = false;
  p.weight_site = WeightSite::kInput;
  return p;
}

/// gpt-oss-20b (32) / 120b (128): top-4 on the logits (the router's linear bias is part of the
/// logits, not a selection bias), softmax over the 4 selected values.
inline RoutePolicy gpt_oss(int32_t num_experts = 32) {
  RoutePolicy p;
  p.num_experts = num_experts;
  p.top_k = 4;
  p.score_func = ScoreFunc::kSoftmax;
  p.score_timing = ScoreTiming::kAfterTopK;
  p.renormalize = false;
  return p;
}

}  // namespace presets
}  // namespace moe
FULGUR_NAMESPACE_END
