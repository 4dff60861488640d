// SPDX-License-Identifier: Apache-2.0
// Per-head decay slopes for lightning attention (MiniMax-Text-01 and the ALiBi family): the
// `slopes` array of PrefillParams / DecodeParams, lambda_h = exp(-slope_h). Host-only.
//
// Two peer conventions exist, and they differ in two places:
//   kVllm (vLLM, SGLang): ALiBi base slopes (Press et al.), which for a head count H that is not
//     a power of two interleave the slopes of the next power of two; layer factor
//     1 - l/(L-1) + 1e-5 (1 + 1e-5 when L <= 1).
//   kTransformers (Hugging Face transformers, mlx-lm): base 2^(-8/H) raised to h+1 for every H;
//     layer factor 1 - l/(L-1+1e-5) + 1e-5.
// For H a power of two (MiniMax-Text-01: H = 64) the base slopes agree and the factors differ
// by about 1e-5 relative (l/(L-1) vs l/(L-1+1e-5)).
//
// Values are computed in fp64 and rounded to float once. Peers round in fp32 along the way
// (vLLM: fp32(base) * factor in fp32), so a value may differ from theirs in the last bit or
// two: a relative change of ~1e-7 in the slope, far below any output tolerance.
#pragma once

#include <cmath>
#include <cstdint>

#include "fulgur/detail/config.hpp"
#include "fulgur/detail/status.hpp"

FULGUR_NAMESPACE_BEGIN
namespace lightning {

enum class SlopeConvention : int {
  kVllm = 0,          // vLLM, SGLang: ALiBi base slopes, factor 1 - l/(L-1) + 1e-5
  kTransformers = 1,  // transformers: 2^(-8(h+1)/H) for every H, factor 1 - l/(L-1+1e-5) + 1e-5
};

/// ALiBi base slope of head h in [0, H). For H a power of two: start = 2^(-8/H) and
/// slope_h = start^(h+1) = 2^(-8(h+1)/H). Otherwise, with p = 2^floor(log2 H): the p slopes of
/// H = p, then every other slope of H = 2p (its slopes 0, 2, 4, ...), the first H - p of them;
/// slope 2i of 2p heads is 2^(-8(2i+1)/(2p)).
inline double alibi_base_slope(int num_heads, int h) {
  int p = 1;
  while (2 * p <= num_heads) p *= 2;
  if (h < p) return std::exp2(-8.0 * (h + 1) / p);
  const int i = h - p;
  return std::exp2(-8.0 * (2 * i + 1) / (2.0 * p));
}

/// transformers' base slope: (1 / 2^(8/H))^(h+1) = 2^(-8(h+1)/H), whatever H.
inline double geometric_base_slope(int num_heads, int h) { return std::exp2(-8.0 * (h + 1) / num_heads); }

inline double base_slope(int num_heads, int h, SlopeConvention conv) {
  return conv == SlopeConvention::kTransformers ? geometric_base_slope(num_heads, h) : alibi_base_slope(num_heads, h);
}

/// The per-layer multiplier MiniMax applies to every head's slope (global layer index l of L
/// layers, softmax layers included: MiniMax-Text-01 has L = 80). Later layers decay more slowly;
/// the last one keeps only the 1e-5 floor.
inline double layer_factor(int layer, int num_layers, SlopeConvention conv) {
  if (conv == SlopeConvention::kTransformers) {
    return 1.0 - layer / (num_layers - 1 + 1e-5) + 1e-5;
  }
  if (num_layers <= 1) return 1.0 + 1e-5;
  return 1.0 - static_cast<double>(layer) / (num_layers - 1) + 1e-5;
}

/// Slope of global head h in fp64: base_slope * layer_factor.
inline double minimax_slope(int num_heads, int h, int layer, int num_layers, SlopeConvention conv) {
  return base_slope(num_heads, h, conv) * layer_factor(layer, num_layers, conv);
}

/// Fill out[0, num_heads / tp_size) with the slopes of the heads tensor-parallel rank tp_rank
/// owns: the contiguous slice [tp_rank * H / tp_size, (tp_rank + 1) * H / tp_size) of the global
/// heads, matching the slice of the q/k/v projection columns that rank holds. num_heads is the
/// global head count (it sets the base slopes). Writes nothing on bad arguments.
inline Status fill_minimax_slopes(float* out, int num_heads, int layer, int num_layers,
                                  SlopeConvention conv = SlopeConvention::kVllm, int tp_rank = 0, int tp_size = 1) {
  FULGUR_CHECK_ARG(out != nullptr, "lightning slopes: out is null");
  FULGUR_CHECK_ARG(num_heads > 0, "lightning slopes: num_heads must be positive");
  FULGUR_CHECK_ARG(num_layers > 0, "lightning slopes: num_layers must be positive");
  FULGUR_CHECK_ARG(layer >= 0 && layer < num_layers, "lightning slopes: layer must be in [0, L)");
  FULGUR_CHECK_ARG(conv == SlopeConvention::kVllm || conv == SlopeConvention::kTransformers,
                   "lightning slopes: unknown convention");
  FULGUR_CHECK_ARG(tp_size > 0 && num_heads % tp_size == 0,
                   "lightning slopes: tp_size must be positive and divide num_heads");
  FULGUR_CHECK_ARG(tp_rank >= 0 && tp_rank < tp_size, "lightning slopes: tp_rank out of range");
  const int local = num_heads / tp_size;
  for (int i = 0; i < local; ++i) {
    out[i] = static_cast<float>(minimax_slope(num_heads, tp_rank * local + i, layer, num_layers, conv));
  }
  return Status::success();
}

}  // namespace lightning
FULGUR_NAMESPACE_END
