// SPDX-License-Identifier: Apache-2.0
// PyTorch bindings of fulgur's kernels, registered as torch ops in the `fulgur` namespace
// (torch.ops.fulgur.<name>; fulgur_torch/__init__.py loads the library and re-exports them).
//
// Each op checks devices, dtypes and the last-dimension contiguity fulgur's Params require,
// allocates its outputs (and any workspace) with PyTorch's caching allocator, fills the fulgur
// Params from the tensors' sizes and strides, and launches on the current CUDA stream of the
// inputs' device through fulgur_ops (the nvcc-compiled half). A refusal raises RuntimeError with
// fulgur's own reason (can_implement()). Nothing here synchronizes, so the ops can be captured in
// CUDA graphs like the launchers themselves.
//
// Index and metadata tensors must already have the dtype fulgur uses (int32 for lightning and
// MoE, int64 for token dropping): converting them here would hide a copy per call. Sizes the host
// cannot read from device tensors without a synchronization (the image-token count, the number of
// kept tokens, the packed row count) are int arguments, as in fulgur's Params; the Python helpers
// in fulgur_torch/__init__.py compute them from host metadata.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "fulgur_ops.h"

namespace {

namespace fl = fulgur::lightning;
namespace fm = fulgur::moe;
namespace td = fulgur::token_drop;
using at::Tensor;

// ---- checks and conversions ---------------------------------------------------------------------

void check_ok(const fulgur_ops::OpStatus& s, const char* op) {
  TORCH_CHECK(s.ok(), "fulgur.", op, ": ", s.reason, " (", cudaGetErrorName(s.code), ")");
}

fulgur::DType to_fulgur(at::ScalarType t, const char* what) {
  switch (t) {
    case at::kFloat: return fulgur::DType::kF32;
    case at::kHalf: return fulgur::DType::kF16;
    case at::kBFloat16: return fulgur::DType::kBF16;
    default: TORCH_CHECK(false, what, ": dtype must be float32, float16 or bfloat16, got ", t);
  }
  return fulgur::DType::kF32;  // unreachable
}

void check_cuda(const Tensor& t, const at::Device& device, const char* what) {
  TORCH_CHECK(t.is_cuda(), what, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == device, what, " must be on ", device, ", like the first input; it is on ", t.device());
}

void check_index(const Tensor& t, const at::Device& device, at::ScalarType dtype, int64_t numel, const char* what) {
  check_cuda(t, device, what);
  TORCH_CHECK(t.scalar_type() == dtype, what, " must be ", dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), what, " must be contiguous");
  TORCH_CHECK(numel < 0 || t.numel() == numel, what, " must have ", numel, " elements, got ", t.numel());
}

// fulgur reads rows through element strides and needs the last dimension contiguous.
void check_rows(const Tensor& t, int64_t dim, const char* what) {
  TORCH_CHECK(t.dim() == dim, what, " must have ", dim, " dimensions, got ", t.dim());
  TORCH_CHECK(t.size(dim - 1) <= 1 || t.stride(dim - 1) == 1, what, ": the last dimension must be contiguous");
}

// The element stride of dimension `dim` as fulgur's row pitch. PyTorch may report any stride for
// a dimension of size 0 or 1, where fulgur never steps: the dense pitch is used there, so the
// Params stay valid. A broadcast dimension (stride 0 over several rows) is refused.
int64_t pitch(const Tensor& t, int64_t dim) {
  if (t.size(dim) <= 1) {
    int64_t s = 1;
    for (int64_t d = dim + 1; d < t.dim(); ++d) s *= t.size(d);
    return s > 0 ? s : 1;
  }
  TORCH_CHECK(t.stride(dim) > 0, "fulgur ops need positive strides; dimension ", dim,
              " has stride 0 or less (an expanded or flipped tensor: pass .contiguous())");
  return t.stride(dim);
}

template <typename T>
T* ptr_or_null(const c10::optional<Tensor>& t) {
  return t.has_value() ? static_cast<T*>(t->data_ptr()) : nullptr;
}

Tensor workspace(size_t bytes, const Tensor& like) {
  // The caching allocator records the allocation on the current stream, so the memory is reused
  // only after the kernels queued on that stream: the workspace may die at the end of this call.
  return at::empty({static_cast<int64_t>(bytes > 0 ? bytes : 1)}, like.options().dtype(at::kByte));
}

cudaStream_t current_stream(const Tensor& t) { return at::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

// ---- lightning attention ------------------------------------------------------------------------

struct LightningCommon {
  int64_t H = 0, dk = 0, dv = 0;
};

LightningCommon check_lightning(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& slopes,
                                const Tensor& state, const char* op) {
  const at::Device dev = q.device();
  TORCH_CHECK(q.is_cuda(), op, ": q must be a CUDA tensor");
  check_cuda(k, dev, "k");
  check_cuda(v, dev, "v");
  check_rows(q, 3, "q");
  check_rows(k, 3, "k");
  check_rows(v, 3, "v");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
              ": q, k and v must share one dtype");
  LightningCommon c;
  c.H = q.size(1);
  c.dk = q.size(2);
  c.dv = v.size(2);
  TORCH_CHECK(k.size(0) == q.size(0) && v.size(0) == q.size(0), op, ": q, k, v must have the same number of rows");
  TORCH_CHECK(k.size(1) == c.H && v.size(1) == c.H, op, ": q, k, v must have the same number of heads");
  TORCH_CHECK(k.size(2) == c.dk, op, ": q and k must have the same head dim");
  check_index(slopes, dev, at::kFloat, c.H, "slopes");
  check_cuda(state, dev, "state");
  TORCH_CHECK(state.scalar_type() == at::kFloat, op, ": state must be float32 (fulgur keeps the state in fp32)");
  TORCH_CHECK(state.dim() == 4 && state.size(1) == c.H, op, ": state must be [num_slots, H, d, d]");
  TORCH_CHECK(state.size(0) == 0 || state[0].is_contiguous(), op, ": each slot of state must be contiguous");
  return c;
}

void fill_state(fl::StateLayout& layout, float*& ptr, int64_t& num_slots, int64_t& stride_slot, const Tensor& state,
                const LightningCommon& c, bool state_vk) {
  layout = state_vk ? fl::StateLayout::kVK : fl::StateLayout::kKV;
  const int64_t d0 = state_vk ? c.dv : c.dk, d1 = state_vk ? c.dk : c.dv;
  TORCH_CHECK(state.size(2) == d0 && state.size(3) == d1, "state must be [num_slots, H, ", d0, ", ", d1, "] (",
              state_vk ? "state_vk" : "dk x dv", ")");
  num_slots = state.size(0);
  ptr = num_slots > 0 ? state.data_ptr<float>() : nullptr;
  stride_slot = num_slots > 1 ? state.stride(0) : 0;
}

Tensor lightning_prefill(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens,
                         const Tensor& slopes, const Tensor& state, const Tensor& slot_ids, double scale, bool silu,
                         c10::optional<at::ScalarType> out_dtype, const c10::optional<Tensor>& has_initial_state,
                         int64_t max_seqlen, bool state_vk) {
  const LightningCommon c = check_lightning(q, k, v, slopes, state, "lightning_prefill");
  const at::Device dev = q.device();
  const c10::cuda::CUDAGuard guard(dev);
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.numel() >= 1, "cu_seqlens must be [B + 1]");
  const int64_t B = cu_seqlens.numel() - 1;
  check_index(cu_seqlens, dev, at::kInt, B + 1, "cu_seqlens");
  check_index(slot_ids, dev, at::kInt, B, "slot_ids");
  if (has_initial_state) check_index(*has_initial_state, dev, at::kByte, B, "has_initial_state");

  const int64_t T = q.size(0);
  Tensor o = at::empty({T, c.H, c.dv}, q.options().dtype(out_dtype.value_or(q.scalar_type())));

  fl::PrefillParams p;
  p.batch_size = static_cast<int32_t>(B);
  p.num_tokens = T;
  p.cu_seqlens = cu_seqlens.data_ptr<int32_t>();
  p.max_seqlen = static_cast<int32_t>(max_seqlen);
  p.num_heads = static_cast<int32_t>(c.H);
  p.dk = static_cast<int32_t>(c.dk);
  p.dv = static_cast<int32_t>(c.dv);
  p.qkv_dtype = to_fulgur(q.scalar_type(), "q");
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.q_stride_token = pitch(q, 0), p.q_stride_head = pitch(q, 1);
  p.k_stride_token = pitch(k, 0), p.k_stride_head = pitch(k, 1);
  p.v_stride_token = pitch(v, 0), p.v_stride_head = pitch(v, 1);
  p.silu_qkv = silu;
  p.o_dtype = to_fulgur(o.scalar_type(), "out_dtype");
  p.o = o.data_ptr();
  p.o_stride_token = c.H * c.dv, p.o_stride_head = c.dv;
  p.slopes = slopes.data_ptr<float>();
  p.scale = static_cast<float>(scale);
  fill_state(p.state_layout, p.state, p.num_slots, p.state_stride_slot, state, c, state_vk);
  p.slot_ids = slot_ids.data_ptr<int32_t>();
  p.has_initial_state = ptr_or_null<const uint8_t>(has_initial_state);

  size_t bytes = 0;
  check_ok(fulgur_ops::lightning_prefill_workspace(p, bytes), "lightning_prefill");
  Tensor ws = workspace(bytes, q);
  check_ok(fulgur_ops::lightning_prefill(ws.data_ptr(), bytes, p, current_stream(q)), "lightning_prefill");
  return o;
}

Tensor lightning_decode(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& slopes, const Tensor& state,
                        const Tensor& slot_ids, double scale, bool silu, c10::optional<at::ScalarType> out_dtype,
                        bool state_vk) {
  const LightningCommon c = check_lightning(q, k, v, slopes, state, "lightning_decode");
  const at::Device dev = q.device();
  const c10::cuda::CUDAGuard guard(dev);
  const int64_t B = q.size(0);
  check_index(slot_ids, dev, at::kInt, B, "slot_ids");
  // Rows whose slot is -1 (padding) are not written by the kernel: zeros make them defined.
  Tensor o = at::zeros({B, c.H, c.dv}, q.options().dtype(out_dtype.value_or(q.scalar_type())));

  fl::DecodeParams p;
  p.batch_size = static_cast<int32_t>(B);
  p.num_heads = static_cast<int32_t>(c.H);
  p.dk = static_cast<int32_t>(c.dk);
  p.dv = static_cast<int32_t>(c.dv);
  p.qkv_dtype = to_fulgur(q.scalar_type(), "q");
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.q_stride_token = pitch(q, 0), p.q_stride_head = pitch(q, 1);
  p.k_stride_token = pitch(k, 0), p.k_stride_head = pitch(k, 1);
  p.v_stride_token = pitch(v, 0), p.v_stride_head = pitch(v, 1);
  p.silu_qkv = silu;
  p.o_dtype = to_fulgur(o.scalar_type(), "out_dtype");
  p.o = o.data_ptr();
  p.o_stride_token = c.H * c.dv, p.o_stride_head = c.dv;
  p.slopes = slopes.data_ptr<float>();
  p.scale = static_cast<float>(scale);
  fill_state(p.state_layout, p.state, p.num_slots, p.state_stride_slot, state, c, state_vk);
  p.slot_ids = slot_ids.data_ptr<int32_t>();
  check_ok(fulgur_ops::lightning_decode(p, current_stream(q)), "lightning_decode");
  return o;
}

// ---- MoE ----------------------------------------------------------------------------------------

fm::ScoreFunc score_func_of(const std::string& s) {
  if (s == "softmax") return fm::ScoreFunc::kSoftmax;
  if (s == "sigmoid") return fm::ScoreFunc::kSigmoid;
  if (s == "none") return fm::ScoreFunc::kNone;
  TORCH_CHECK(false, "moe_route: score_func must be 'softmax', 'sigmoid' or 'none', got '", s, "'");
  return fm::ScoreFunc::kSoftmax;
}

std::tuple<Tensor, Tensor, Tensor> moe_route(const Tensor& logits, int64_t top_k, const std::string& score_func,
                                             bool renormalize, const c10::optional<Tensor>& bias, int64_t n_group,
                                             int64_t topk_group, double renorm_eps, double scaling_factor,
                                             bool score_after_topk, c10::optional<at::ScalarType> weights_dtype) {
  TORCH_CHECK(logits.is_cuda(), "moe_route: logits must be a CUDA tensor");
  check_rows(logits, 2, "logits");
  const at::Device dev = logits.device();
  const c10::cuda::CUDAGuard guard(dev);
  const int64_t T = logits.size(0), E = logits.size(1);
  if (bias) check_index(*bias, dev, at::kFloat, E, "bias");
  const at::ScalarType wt = weights_dtype.value_or(at::kFloat);
  TORCH_CHECK(wt == at::kFloat || wt == at::kBFloat16, "moe_route: weights_dtype must be float32 or bfloat16");

  Tensor ids = at::empty({T, top_k}, logits.options().dtype(at::kInt));
  Tensor weights = at::empty({T, top_k}, logits.options().dtype(wt));
  Tensor counts = at::empty({E}, logits.options().dtype(at::kInt));

  fm::RouteParams p;
  p.policy.num_experts = static_cast<int32_t>(E);
  p.policy.top_k = static_cast<int32_t>(top_k);
  p.policy.score_func = score_func_of(score_func);
  p.policy.score_timing = score_after_topk ? fm::ScoreTiming::kAfterTopK : fm::ScoreTiming::kBeforeTopK;
  p.policy.selection_bias = bias.has_value();
  p.policy.n_group = static_cast<int32_t>(n_group);
  p.policy.topk_group = static_cast<int32_t>(topk_group);
  p.policy.renormalize = renormalize;
  p.policy.renorm_eps = static_cast<float>(renorm_eps);
  p.policy.scaling_factor = static_cast<float>(scaling_factor);
  p.logits = logits.data_ptr();
  p.logits_dtype = to_fulgur(logits.scalar_type(), "logits");
  p.logits_row_stride = pitch(logits, 0);
  p.bias = ptr_or_null<const float>(bias);
  p.num_tokens = T;
  p.topk_ids = ids.data_ptr<int32_t>();
  p.topk_weights = weights.data_ptr();
  p.weights_dtype = to_fulgur(wt, "weights_dtype");
  p.expert_counts = counts.data_ptr<int32_t>();
  check_ok(fulgur_ops::moe_route(p, current_stream(logits)), "moe_route");
  return {ids, weights, counts};
}

std::tuple<Tensor, Tensor, Tensor> moe_permute(const Tensor& topk_ids, int64_t num_experts) {
  TORCH_CHECK(topk_ids.is_cuda(), "moe_permute: topk_ids must be a CUDA tensor");
  TORCH_CHECK(topk_ids.dim() == 2, "moe_permute: topk_ids must be [T, k]");
  const at::Device dev = topk_ids.device();
  const c10::cuda::CUDAGuard guard(dev);
  check_index(topk_ids, dev, at::kInt, -1, "topk_ids");
  const int64_t T = topk_ids.size(0), k = topk_ids.size(1);
  Tensor offsets = at::empty({num_experts + 1}, topk_ids.options().dtype(at::kLong));
  Tensor e2p = at::empty({T * k}, topk_ids.options());
  Tensor p2e = at::empty({T * k}, topk_ids.options());

  fm::PermuteParams p;
  p.topk_ids = topk_ids.data_ptr<int32_t>();
  p.num_tokens = T;
  p.top_k = static_cast<int32_t>(k);
  p.num_experts = static_cast<int32_t>(num_experts);
  p.expert_first_token_offset = offsets.data_ptr<int64_t>();
  p.expanded_to_permuted = e2p.data_ptr<int32_t>();
  p.permuted_to_expanded = p2e.data_ptr<int32_t>();
  size_t bytes = 0;
  check_ok(fulgur_ops::moe_permute_workspace(p, bytes), "moe_permute");
  Tensor ws = workspace(bytes, topk_ids);
  check_ok(fulgur_ops::moe_permute(ws.data_ptr(), bytes, p, current_stream(topk_ids)), "moe_permute");
  return {offsets, e2p, p2e};
}

// row_map, expanded_to_row or both (GatherParams): with expanded_to_row the rows are written
// token by token (each hidden row read once); without row_map the output has T*k rows and every
// one must be named (the compact view's expanded_to_permuted), since rows it does not name are
// left as at::empty left them.
Tensor moe_gather(const Tensor& hidden, const c10::optional<Tensor>& row_map, int64_t top_k,
                  const c10::optional<Tensor>& topk_weights, c10::optional<at::ScalarType> out_dtype,
                  const c10::optional<Tensor>& expanded_to_row) {
  TORCH_CHECK(hidden.is_cuda(), "moe_gather: hidden must be a CUDA tensor");
  check_rows(hidden, 2, "hidden");
  TORCH_CHECK(row_map || expanded_to_row, "moe_gather: give row_map, expanded_to_row or both");
  const at::Device dev = hidden.device();
  const c10::cuda::CUDAGuard guard(dev);
  const int64_t T = hidden.size(0), H = hidden.size(1);
  if (row_map) check_index(*row_map, dev, at::kInt, -1, "row_map");
  if (expanded_to_row) check_index(*expanded_to_row, dev, at::kInt, T * top_k, "expanded_to_row");
  const int64_t rows = row_map ? row_map->numel() : T * top_k;
  if (topk_weights) check_index(*topk_weights, dev, topk_weights->scalar_type(), T * top_k, "topk_weights");
  Tensor out = at::empty({rows, H}, hidden.options().dtype(out_dtype.value_or(hidden.scalar_type())));

  fm::GatherParams p;
  p.hidden = hidden.data_ptr();
  p.hidden_dtype = to_fulgur(hidden.scalar_type(), "hidden");
  p.hidden_row_stride = pitch(hidden, 0);
  p.num_tokens = T;
  p.top_k = static_cast<int32_t>(top_k);
  p.hidden_size = H;
  p.row_map = row_map ? row_map->data_ptr<int32_t>() : nullptr;
  p.expanded_to_row = expanded_to_row ? expanded_to_row->data_ptr<int32_t>() : nullptr;
  p.num_rows = rows;
  p.scale_by_weight = topk_weights.has_value();
  if (topk_weights) {
    p.topk_weights = topk_weights->data_ptr();
    p.weights_dtype = to_fulgur(topk_weights->scalar_type(), "topk_weights");
  }
  p.out = out.data_ptr();
  p.out_dtype = to_fulgur(out.scalar_type(), "out_dtype");
  p.out_row_stride = H;
  check_ok(fulgur_ops::moe_gather(p, current_stream(hidden)), "moe_gather");
  return out;
}

Tensor moe_combine(const Tensor& expert_out, int64_t top_k, const c10::optional<Tensor>& expanded_to_row,
                   const c10::optional<Tensor>& topk_weights, const c10::optional<Tensor>& residual,
                   double residual_scale, c10::optional<at::ScalarType> out_dtype) {
  TORCH_CHECK(expert_out.is_cuda(), "moe_combine: expert_out must be a CUDA tensor");
  check_rows(expert_out, 2, "expert_out");
  TORCH_CHECK(top_k >= 1, "moe_combine: top_k must be >= 1");
  const at::Device dev = expert_out.device();
  const c10::cuda::CUDAGuard guard(dev);
  const int64_t H = expert_out.size(1);
  // T comes from whichever tensor names the (token, slot) pairs.
  int64_t Tk = expert_out.size(0);
  if (expanded_to_row) {
    Tk = expanded_to_row->numel();
  } else if (topk_weights) {
    Tk = topk_weights->numel();
  }
  TORCH_CHECK(Tk % top_k == 0, "moe_combine: the number of (token, slot) pairs must be a multiple of top_k");
  const int64_t T = Tk / top_k;
  if (expanded_to_row) check_index(*expanded_to_row, dev, at::kInt, T * top_k, "expanded_to_row");
  if (topk_weights) check_index(*topk_weights, dev, topk_weights->scalar_type(), T * top_k, "topk_weights");
  if (residual) {
    check_cuda(*residual, dev, "residual");
    check_rows(*residual, 2, "residual");
    TORCH_CHECK(residual->size(0) == T && residual->size(1) == H, "moe_combine: residual must be [T, H]");
  }
  Tensor out = at::empty({T, H}, expert_out.options().dtype(out_dtype.value_or(expert_out.scalar_type())));

  fm::CombineParams p;
  p.expert_out = expert_out.data_ptr();
  p.expert_out_dtype = to_fulgur(expert_out.scalar_type(), "expert_out");
  p.expert_out_row_stride = pitch(expert_out, 0);
  p.num_expert_rows = expert_out.size(0);
  p.num_tokens = T;
  p.top_k = static_cast<int32_t>(top_k);
  p.hidden_size = H;
  p.expanded_to_row = ptr_or_null<const int32_t>(expanded_to_row);
  if (topk_weights) {
    p.topk_weights = topk_weights->data_ptr();
    p.weights_dtype = to_fulgur(topk_weights->scalar_type(), "topk_weights");
  }
  if (residual) {
    p.residual = residual->data_ptr();
    p.residual_dtype = to_fulgur(residual->scalar_type(), "residual");
    p.residual_row_stride = pitch(*residual, 0);
    p.residual_scale = static_cast<float>(residual_scale);
  }
  p.out = out.data_ptr();
  p.out_dtype = to_fulgur(out.scalar_type(), "out_dtype");
  p.out_row_stride = H;
  check_ok(fulgur_ops::moe_combine(p, current_stream(expert_out)), "moe_combine");
  return out;
}

// ---- token dropping -----------------------------------------------------------------------------

td::BatchLayout make_layout(const Tensor& cu_seqlens, const Tensor& cu_spans, const Tensor& span_start,
                            const Tensor& span_length, int64_t total_rows, int64_t num_image_tokens,
                            const at::Device& dev) {
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.numel() >= 1, "cu_seqlens must be [B + 1]");
  const int64_t B = cu_seqlens.numel() - 1;
  check_index(cu_seqlens, dev, at::kLong, B + 1, "cu_seqlens");
  check_index(cu_spans, dev, at::kLong, B + 1, "cu_spans");
  const int64_t S = span_start.numel();
  check_index(span_start, dev, at::kLong, S, "span_start");
  check_index(span_length, dev, at::kLong, S, "span_length");
  td::BatchLayout l;
  l.batch = B;
  l.total_rows = total_rows;
  l.cu_seqlens = cu_seqlens.data_ptr<int64_t>();
  l.num_spans = S;
  l.cu_spans = cu_spans.data_ptr<int64_t>();
  l.span_start = S > 0 ? span_start.data_ptr<int64_t>() : nullptr;
  l.span_length = S > 0 ? span_length.data_ptr<int64_t>() : nullptr;
  l.num_image_tokens = num_image_tokens;
  return l;
}

Tensor token_drop_score(const Tensor& q, const Tensor& k, const Tensor& cu_seqlens, const Tensor& cu_spans,
                        const Tensor& span_start, const Tensor& span_length, int64_t num_image_tokens,
                        double softmax_scale, bool fp16_compat, const c10::optional<Tensor>& cu_queries,
                        const c10::optional<Tensor>& query_pos) {
  TORCH_CHECK(q.is_cuda(), "token_drop_score: q must be a CUDA tensor");
  const at::Device dev = q.device();
  const c10::cuda::CUDAGuard guard(dev);
  check_cuda(k, dev, "k");
  check_rows(q, 3, "q");
  check_rows(k, 3, "k");
  TORCH_CHECK(k.scalar_type() == q.scalar_type(), "token_drop_score: q and k must share one dtype");
  TORCH_CHECK(k.size(2) == q.size(2), "token_drop_score: q and k must have the same head dim");
  const int64_t Q = q.size(0);
  if (cu_queries) check_index(*cu_queries, dev, at::kLong, cu_seqlens.numel(), "cu_queries");
  if (query_pos) check_index(*query_pos, dev, at::kLong, Q, "query_pos");
  Tensor scores = at::empty({num_image_tokens}, q.options().dtype(at::kFloat));

  td::ScoreParams p;
  p.layout = make_layout(cu_seqlens, cu_spans, span_start, span_length, k.size(0), num_image_tokens, dev);
  p.num_queries = Q;
  p.cu_queries = ptr_or_null<const int64_t>(cu_queries);
  p.query_pos = ptr_or_null<const int64_t>(query_pos);
  p.q = q.data_ptr();
  p.q_row_stride = pitch(q, 0);
  p.q_head_stride = pitch(q, 1);
  p.k = k.data_ptr();
  p.k_row_stride = pitch(k, 0);
  p.k_head_stride = pitch(k, 1);
  p.dtype = to_fulgur(q.scalar_type(), "q");
  p.num_heads = static_cast<int>(q.size(1));
  p.num_kv_heads = static_cast<int>(k.size(1));
  p.head_dim = static_cast<int>(q.size(2));
  p.softmax_scale = static_cast<float>(softmax_scale);
  p.fp16_compat = fp16_compat;
  p.scores = num_image_tokens > 0 ? scores.data_ptr<float>() : nullptr;
  size_t bytes = 0;
  check_ok(fulgur_ops::token_drop_score_workspace(p, bytes), "token_drop_score");
  Tensor ws = workspace(bytes, q);
  check_ok(fulgur_ops::token_drop_score(ws.data_ptr(), bytes, p, current_stream(q)), "token_drop_score");
  return scores;
}

std::tuple<Tensor, Tensor> token_drop_select(const Tensor& scores, const Tensor& cu_seqlens, const Tensor& cu_spans,
                                             const Tensor& span_start, const Tensor& span_length, int64_t total_rows,
                                             int64_t num_kept, double ratio, int64_t rule,
                                             const c10::optional<Tensor>& original_length) {
  TORCH_CHECK(scores.is_cuda(), "token_drop_select: scores must be a CUDA tensor");
  const at::Device dev = scores.device();
  const c10::cuda::CUDAGuard guard(dev);
  check_index(scores, dev, at::kFloat, -1, "scores");
  TORCH_CHECK(rule == 0 || rule == 1, "token_drop_select: rule must be 0 (PyramidDrop floor) or 1 (FastV round)");
  td::SelectParams p;
  p.layout = make_layout(cu_seqlens, cu_spans, span_start, span_length, total_rows, scores.numel(), dev);
  if (original_length) check_index(*original_length, dev, at::kLong, p.layout.num_spans, "original_length");
  Tensor kept = at::empty({num_kept}, scores.options().dtype(at::kLong));
  Tensor cu_kept = at::empty({p.layout.num_spans + 1}, scores.options().dtype(at::kLong));
  p.scores = scores.numel() > 0 ? scores.data_ptr<float>() : nullptr;
  p.rule = static_cast<td::KeepRule>(rule);
  p.ratio = ratio;
  p.original_length = ptr_or_null<const int64_t>(original_length);
  p.num_kept = num_kept;
  p.kept_index = num_kept > 0 ? kept.data_ptr<int64_t>() : nullptr;
  p.cu_kept = cu_kept.data_ptr<int64_t>();
  check_ok(fulgur_ops::token_drop_select(p, current_stream(scores)), "token_drop_select");
  return {kept, cu_kept};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> token_drop_compact(
    const Tensor& hidden, const Tensor& cu_seqlens, const Tensor& cu_spans, const Tensor& span_start,
    const Tensor& span_length, int64_t num_image_tokens, const Tensor& kept_index, const Tensor& cu_kept,
    int64_t position_mode, const c10::optional<Tensor>& position_ids) {
  TORCH_CHECK(hidden.is_cuda(), "token_drop_compact: hidden must be a CUDA tensor");
  check_rows(hidden, 2, "hidden");
  const at::Device dev = hidden.device();
  const c10::cuda::CUDAGuard guard(dev);
  TORCH_CHECK(position_mode == 0 || position_mode == 1,
              "token_drop_compact: position_mode must be 0 (renumber) or 1 (keep original)");
  const int64_t L = hidden.size(0), D = hidden.size(1);
  td::CompactParams p;
  p.layout = make_layout(cu_seqlens, cu_spans, span_start, span_length, L, num_image_tokens, dev);
  const int64_t S = p.layout.num_spans, B = p.layout.batch;
  check_index(kept_index, dev, at::kLong, -1, "kept_index");
  check_index(cu_kept, dev, at::kLong, S + 1, "cu_kept");
  const int64_t kept = kept_index.numel();
  const int64_t out_rows = L - (num_image_tokens - kept);
  TORCH_CHECK(out_rows >= 0 && kept <= num_image_tokens, "token_drop_compact: more kept tokens than image tokens");
  int64_t P = 1;
  if (position_ids) {
    check_cuda(*position_ids, dev, "position_ids");
    TORCH_CHECK(position_ids->scalar_type() == at::kLong, "position_ids must be int64");
    TORCH_CHECK((position_ids->dim() == 1 && position_ids->size(0) == L) ||
                    (position_ids->dim() == 2 && position_ids->size(1) == L),
                "position_ids must be [L] or [P, L] (P = 3 for M-RoPE)");
    TORCH_CHECK(position_ids->stride(-1) == 1 || L <= 1, "position_ids: the last dimension must be contiguous");
    P = position_ids->dim() == 2 ? position_ids->size(0) : 1;
  }
  TORCH_CHECK(position_mode == 0 || position_ids.has_value(),
              "token_drop_compact: keeping the original positions needs position_ids");

  Tensor out = at::empty({out_rows, D}, hidden.options());
  Tensor new_cu = at::empty({B + 1}, cu_seqlens.options());
  Tensor row_map = at::empty({out_rows}, cu_seqlens.options());
  Tensor new_start = at::empty({S}, cu_seqlens.options());
  Tensor new_length = at::empty({S}, cu_seqlens.options());
  Tensor pos_out = at::empty({P, out_rows}, cu_seqlens.options());

  p.num_kept = kept;
  p.kept_index = kept > 0 ? kept_index.data_ptr<int64_t>() : nullptr;
  p.cu_kept = cu_kept.data_ptr<int64_t>();
  p.out_rows = out_rows;
  p.new_cu_seqlens = new_cu.data_ptr<int64_t>();
  p.row_map = out_rows > 0 ? row_map.data_ptr<int64_t>() : nullptr;
  p.new_span_start = S > 0 ? new_start.data_ptr<int64_t>() : nullptr;
  p.new_span_length = S > 0 ? new_length.data_ptr<int64_t>() : nullptr;
  if (out_rows > 0 && D > 0) {  // otherwise there is nothing to gather (RowTensor.in stays null)
    p.hidden.in = hidden.data_ptr();
    p.hidden.out = out.data_ptr();
    p.hidden.width = D;
    p.hidden.elem_bytes = static_cast<int64_t>(hidden.element_size());
    p.hidden.in_row_stride = pitch(hidden, 0);
    p.hidden.out_row_stride = D;
  }
  p.position_mode = static_cast<td::PositionMode>(position_mode);
  p.position_rows = static_cast<int>(P);
  if (position_ids) {
    p.position_ids = position_ids->data_ptr<int64_t>();
    p.position_ids_stride = position_ids->dim() == 2 ? pitch(*position_ids, 0) : L;
  }
  if (out_rows > 0) {
    p.position_ids_out = pos_out.data_ptr<int64_t>();
    p.position_ids_out_stride = out_rows;
  }
  size_t bytes = 0;
  check_ok(fulgur_ops::token_drop_compact_workspace(p, bytes), "token_drop_compact");
  Tensor ws = workspace(bytes, hidden);
  check_ok(fulgur_ops::token_drop_compact(ws.data_ptr(), bytes, p, current_stream(hidden)), "token_drop_compact");
  return {out, new_cu, row_map, new_start, new_length, pos_out};
}

}  // namespace

// The schemas name what each op mutates: Tensor(a!) state is updated in place by both lightning
// ops, so torch.compile and functionalization know about it.
TORCH_LIBRARY(fulgur, m) {
  m.def(
      "lightning_prefill(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens, Tensor slopes, Tensor(a!) state, "
      "Tensor slot_ids, float scale=1.0, bool silu=False, ScalarType? out_dtype=None, "
      "Tensor? has_initial_state=None, int max_seqlen=0, bool state_vk=False) -> Tensor");
  m.def(
      "lightning_decode(Tensor q, Tensor k, Tensor v, Tensor slopes, Tensor(a!) state, Tensor slot_ids, "
      "float scale=1.0, bool silu=False, ScalarType? out_dtype=None, bool state_vk=False) -> Tensor");
  m.def(
      "moe_route(Tensor logits, int top_k, str score_func='softmax', bool renormalize=False, Tensor? bias=None, "
      "int n_group=1, int topk_group=1, float renorm_eps=0.0, float scaling_factor=1.0, "
      "bool score_after_topk=False, ScalarType? weights_dtype=None) -> (Tensor, Tensor, Tensor)");
  m.def("moe_permute(Tensor topk_ids, int num_experts) -> (Tensor, Tensor, Tensor)");
  m.def(
      "moe_gather(Tensor hidden, Tensor? row_map, int top_k, Tensor? topk_weights=None, "
      "ScalarType? out_dtype=None, Tensor? expanded_to_row=None) -> Tensor");
  m.def(
      "moe_combine(Tensor expert_out, int top_k, Tensor? expanded_to_row=None, Tensor? topk_weights=None, "
      "Tensor? residual=None, float residual_scale=1.0, ScalarType? out_dtype=None) -> Tensor");
  m.def(
      "token_drop_score(Tensor q, Tensor k, Tensor cu_seqlens, Tensor cu_spans, Tensor span_start, "
      "Tensor span_length, int num_image_tokens, float softmax_scale=0.0, bool fp16_compat=False, "
      "Tensor? cu_queries=None, Tensor? query_pos=None) -> Tensor");
  m.def(
      "token_drop_select(Tensor scores, Tensor cu_seqlens, Tensor cu_spans, Tensor span_start, "
      "Tensor span_length, int total_rows, int num_kept, float ratio, int rule=0, "
      "Tensor? original_length=None) -> (Tensor, Tensor)");
  m.def(
      "token_drop_compact(Tensor hidden, Tensor cu_seqlens, Tensor cu_spans, Tensor span_start, "
      "Tensor span_length, int num_image_tokens, Tensor kept_index, Tensor cu_kept, int position_mode=0, "
      "Tensor? position_ids=None) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(fulgur, CUDA, m) {
  m.impl("lightning_prefill", &lightning_prefill);
  m.impl("lightning_decode", &lightning_decode);
  m.impl("moe_route", &moe_route);
  m.impl("moe_permute", &moe_permute);
  m.impl("moe_gather", &moe_gather);
  m.impl("moe_combine", &moe_combine);
  m.impl("token_drop_score", &token_drop_score);
  m.impl("token_drop_select", &token_drop_select);
  m.impl("token_drop_compact", &token_drop_compact);
}
