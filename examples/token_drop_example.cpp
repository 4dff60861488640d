// SPDX-License-Identifier: Apache-2.0
// fulgur visual token dropping (PyramidDrop / FastV) inside a VLM's language model, as an engine
// runs one drop event between two decoder layers of a prefill:
//
//     score    how much the last instruction token attends to each image token (softmax over
//              its whole causal row, mean over heads)
//     select   per image span, the top keep tokens, in their original order
//     compact  drop the other image rows from the hidden states, new cu_seqlens and position ids
//
// each checked against the fp64 references (include/fulgur/reference/token_drop.hpp), then the
// fused path (score_select_compact: one launch for all three plus the row gather) checked bit for
// bit against the separate calls. The host schedule (fulgur/token_drop/schedule.hpp) says how many
// tokens each stage keeps and where a decode token's position goes. docs/token_drop.md has the
// API, the error table and the precision argument.
//
// Build and run: `ctest -L examples` in the build folder, or
// build/examples/fulgur_example_token_drop [seed]. The same source runs on the CPU under
// fulgur's emulation (g++, fulgur::emulation) and, compiled by nvcc, on a GPU: device memory goes
// through fulgur/memory.hpp (cudaMalloc and cudaMemcpy in a CUDA build, host memory under
// emulation).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "example_support.hpp"
#include "fulgur/memory.hpp"  // DeviceBuffer, device_synchronize (examples and tests only)
#include "fulgur/reference/token_drop.hpp"
#include "fulgur/token_drop.cuh"  // score, select, compact, the fused call, the schedule

namespace td = fulgur::token_drop;
using fulgur::DeviceBuffer;
using fulgur::DType;
using bf16 = __nv_bfloat16;

using namespace fulgur_example;  // Rng, error_name, ok, launched, ref_ok

namespace {

const char* verdict(bool pass) { return pass ? "PASS" : "FAIL"; }

// Everything one drop event writes, in device memory.
struct EventOutputs {
  DeviceBuffer<float> scores;                                        // [num_image_tokens]
  DeviceBuffer<int64_t> kept_index, cu_kept;                         // [num_kept], [S+1]
  DeviceBuffer<int64_t> new_cu_seqlens, row_map;                     // [B+1], [L']
  DeviceBuffer<int64_t> new_span_start, new_span_length, positions;  // [S], [S], [L']
  DeviceBuffer<bf16> hidden;                                         // [L', D]
  EventOutputs(int64_t n_image, int64_t n_kept, int64_t S, int64_t B, int64_t out_rows, int64_t D)
      : scores(n_image),
        kept_index(n_kept),
        cu_kept(S + 1),
        new_cu_seqlens(B + 1),
        row_map(out_rows),
        new_span_start(S),
        new_span_length(S),
        positions(out_rows),
        hidden(out_rows * D) {}
  cudaError_t poison() {  // 0xFF bytes: NaN scores, -1 indices: an unwritten element shows
    for (cudaError_t e : {scores.fill_bytes(0xFF), kept_index.fill_bytes(0xFF), cu_kept.fill_bytes(0xFF),
                          new_cu_seqlens.fill_bytes(0xFF), row_map.fill_bytes(0xFF), new_span_start.fill_bytes(0xFF),
                          new_span_length.fill_bytes(0xFF), positions.fill_bytes(0xFF), hidden.fill_bytes(0xFF)})
      if (e != cudaSuccess) return e;
    return cudaSuccess;
  }
};

}  // namespace

int main(int argc, char** argv) {
#if !FULGUR_EMULATING
  // The nvcc build runs the kernels on a card; without one there is nothing to run (CTest reads
  // 77 as "skipped").
  if (!fulgur::have_device()) {
    std::printf("no CUDA device: skipping\n");
    return 77;
  }
#endif
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 20261126ull;
  std::printf("fulgur token drop example, seed %llu (rerun with: %s <seed>)\n", static_cast<unsigned long long>(seed),
              argv[0]);
  Rng rng(seed);
  bool pass = true;

  // ---- The batch: two LLaVA-style prompts, packed ---------------------------------------------
  // Each prompt is system text, one image (a 12 x 12 grid of visual tokens here; LLaVA-1.5 has
  // 24 x 24 = 576), then the user's instruction. The model is LLaVA-1.5-7B-like with fewer heads:
  // H = H_kv = 8 query/key heads of d = 128, hidden size D = 256 (real: 32 heads, 4096).
  const int64_t N = 144;                         // image tokens per prompt
  const std::vector<int64_t> prefix = {35, 12};  // system-prompt tokens before the image
  const std::vector<int64_t> suffix = {20, 41};  // instruction tokens after it
  const int64_t B = 2, S = 2;                    // sequences, image spans (one each)
  const int H = 8, Hkv = 8, d = 128;
  const int64_t D = 256;
  std::vector<int64_t> cu_seqlens = {0}, cu_spans = {0}, span_start, span_length;
  for (int64_t b = 0; b < B; ++b) {
    cu_seqlens.push_back(cu_seqlens.back() + prefix[b] + N + suffix[b]);
    cu_spans.push_back(cu_spans.back() + 1);
    span_start.push_back(prefix[b]);  // relative to the sequence start
    span_length.push_back(N);
  }
  const int64_t L = cu_seqlens.back(), n_image = S * N;

  // ---- The schedule (host only) -----------------------------------------------------------------
  // PyramidDrop on LLaVA-1.5 (32 layers): drops before layers 8, 16 and 24 keep 1/2, 1/4, 1/8 of
  // the ORIGINAL image tokens. make_schedule gives each stage's keep count, rows and the shift a
  // decode token's position takes (positions are renumbered after a drop).
  const std::vector<int64_t> drop_layers = {8, 16, 24};
  const std::vector<double> ratios = {0.5, 0.25, 0.125};
  std::vector<td::StagePlan> stages(drop_layers.size() + 1);
  td::ScheduleParams sched;
  sched.num_layers = 32;
  sched.num_drops = static_cast<int64_t>(drop_layers.size());
  sched.drop_layers = drop_layers.data();
  sched.ratios = ratios.data();
  sched.rule = td::KeepRule::kFloorKeepRatio;
  sched.seq_len = cu_seqlens[1];
  sched.num_spans = 1;
  sched.image_lengths = &N;
  const fulgur::Status sched_status = td::make_schedule(sched, stages.data());
  if (!sched_status) {
    std::printf("make_schedule: %s\n", sched_status.reason());
    return 1;
  }
  std::printf("schedule of sequence 0 (L = %lld, N = %lld), PyramidDrop on 32 layers:\n",
              static_cast<long long>(sched.seq_len), static_cast<long long>(N));
  for (size_t s = 0; s < stages.size(); ++s)
    std::printf(
        "  stage %zu: layers [%2lld, %2lld), %3lld image tokens, %3lld rows; first decode token at position "
        "%lld\n",
        s, static_cast<long long>(stages[s].first_layer), static_cast<long long>(stages[s].end_layer),
        static_cast<long long>(stages[s].image_tokens), static_cast<long long>(stages[s].seq_len),
        static_cast<long long>(td::decode_position(stages[s], td::PositionMode::kRenumber, sched.seq_len)));

  // This example runs the first drop event (before layer 8): keep floor(N * 1/2) per span.
  const td::KeepRule rule = td::KeepRule::kFloorKeepRatio;
  const double ratio = ratios[0];
  int64_t num_kept = 0;
  for (int64_t s = 0; s < S; ++s) num_kept += td::keep_count(span_length[s], rule, ratio);
  const int64_t out_rows = L - (n_image - num_kept);
  std::printf(
      "drop event: B = %lld sequences of %lld and %lld rows (L = %lld), %lld image tokens -> keep %lld; "
      "H = %d, H_kv = %d, d = %d, bf16 q/k/hidden, hidden %lld\n",
      static_cast<long long>(B), static_cast<long long>(cu_seqlens[1]),
      static_cast<long long>(cu_seqlens[2] - cu_seqlens[1]), static_cast<long long>(L), static_cast<long long>(n_image),
      static_cast<long long>(num_kept), H, Hkv, d, static_cast<long long>(D));

  // ---- Inputs ---------------------------------------------------------------------------------
  // Post-RoPE keys of every row of this layer [L, H_kv, d] and the query of each sequence's last
  // token [B, H, d] (randn in bf16: logits q.k / sqrt(d) of about unit scale); hidden states
  // [L, D]; position ids 0..L_b-1 per sequence.
  std::vector<bf16> k(L * Hkv * d), q(B * H * d), hidden(L * D);
  for (bf16& x : k) x = fulgur::from_double<bf16>(rng.normal());
  for (bf16& x : q) x = fulgur::from_double<bf16>(rng.normal());
  for (bf16& x : hidden) x = fulgur::from_double<bf16>(rng.normal());
  std::vector<int64_t> positions(L);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t r = cu_seqlens[b]; r < cu_seqlens[b + 1]; ++r) positions[r] = r - cu_seqlens[b];

  DeviceBuffer<bf16> d_k(k), d_q(q), d_hidden(hidden);
  DeviceBuffer<int64_t> d_cu(cu_seqlens), d_cu_spans(cu_spans), d_span_start(span_start), d_span_length(span_length),
      d_positions(positions);
  for (cudaError_t e : {d_k.error(), d_q.error(), d_hidden.error(), d_cu.error(), d_cu_spans.error(),
                        d_span_start.error(), d_span_length.error(), d_positions.error()})
    if (!ok(e, "allocating and filling device memory")) return 1;
  EventOutputs o(n_image, num_kept, S, B, out_rows, D);
  if (!ok(o.poison(), "allocating and poisoning the outputs")) return 1;

  // ---- Parameters -----------------------------------------------------------------------------
  // The batch layout every stage reads (int64 metadata in device memory, as PyTorch's index
  // tensors are). Positions inside a sequence are relative to its start.
  td::BatchLayout layout;
  layout.batch = B;
  layout.total_rows = L;
  layout.cu_seqlens = d_cu.data();  // [B+1]
  layout.num_spans = S;
  layout.cu_spans = d_cu_spans.data();        // [B+1]: spans of sequence b
  layout.span_start = d_span_start.data();    // [S]
  layout.span_length = d_span_length.data();  // [S] current image tokens of each span
  layout.num_image_tokens = n_image;

  td::ScoreParams sp;
  sp.layout = layout;
  sp.num_queries = B;       // one query row per sequence...
  sp.cu_queries = nullptr;  // ...row b belongs to sequence b
  sp.query_pos = nullptr;   // at the sequence's last token (the last instruction token)
  sp.q = d_q.data();        // [B, H, d]; strides in elements, last dim contiguous
  sp.q_row_stride = int64_t{H} * d;
  sp.q_head_stride = d;
  sp.k = d_k.data();  // [L, H_kv, d]; a head-major cache would set the strides instead
  sp.k_row_stride = int64_t{Hkv} * d;
  sp.k_head_stride = d;
  sp.dtype = DType::kBF16;
  sp.num_heads = H;
  sp.num_kv_heads = Hkv;  // GQA: query head h reads kv head h / (H / H_kv)
  sp.head_dim = d;
  sp.softmax_scale = 0.0f;      // 0: 1/sqrt(d)
  sp.fp16_compat = false;       // true rounds like upstream's fp16 .to(fp16) + torch.mean
  sp.scores = o.scores.data();  // [num_image_tokens] fp32, span order

  td::SelectParams sel;
  sel.layout = layout;
  sel.scores = o.scores.data();  // score's output, read in stream order
  sel.rule = rule;
  sel.ratio = ratio;              // kept fraction for PyramidDrop (FastV: the dropped fraction)
  sel.original_length = nullptr;  // later stages pass the ORIGINAL N of each span here
  sel.num_kept = num_kept;
  sel.kept_index = o.kept_index.data();  // [num_kept] ascending positions within each span
  sel.cu_kept = o.cu_kept.data();        // [S+1]

  td::CompactParams cp;
  cp.layout = layout;
  cp.num_kept = num_kept;
  cp.kept_index = o.kept_index.data();
  cp.cu_kept = o.cu_kept.data();
  cp.out_rows = out_rows;  // L' = L - dropped
  cp.new_cu_seqlens = o.new_cu_seqlens.data();
  cp.row_map = o.row_map.data();  // optional: source row of each output row
  cp.new_span_start = o.new_span_start.data();
  cp.new_span_length = o.new_span_length.data();
  cp.hidden.in = d_hidden.data();  // a bit copy of rows: only the element size matters
  cp.hidden.out = o.hidden.data();
  cp.hidden.width = D;
  cp.hidden.elem_bytes = sizeof(bf16);
  cp.hidden.in_row_stride = D;
  cp.hidden.out_row_stride = D;
  // (cp.extra / num_extra: further row tensors gathered in the same launch, e.g. K/V rows.)
  cp.position_mode = td::PositionMode::kRenumber;  // PyramidDrop; FastV keeps the original ids
  cp.position_rows = 1;                            // 3 for Qwen2-VL's M-RoPE ids [3, L]
  cp.position_ids = d_positions.data();
  cp.position_ids_stride = L;
  cp.position_ids_out = o.positions.data();
  cp.position_ids_out_stride = out_rows;

  // ---- Launch: score -> select -> compact on one stream ----------------------------------------
  // The caller's stream: an engine passes its own. Launchers only enqueue work (no allocation,
  // no synchronization, no read of device memory: graph-capturable); the stages depend on each
  // other through stream order. This example uses the default stream. score and compact need a
  // workspace, CUB style: a null workspace only reports its size. One buffer of the larger size
  // serves both, since they run one after the other on the stream.
  cudaStream_t stream = nullptr;
  size_t score_bytes = 0, compact_bytes = 0;
  if (!launched(td::score(nullptr, score_bytes, sp, stream), "score workspace query", sp)) return 1;
  if (!launched(td::compact(nullptr, compact_bytes, cp, stream), "compact workspace query", cp)) return 1;
  size_t ws_bytes = std::max(score_bytes, compact_bytes);
  DeviceBuffer<unsigned char> ws(ws_bytes);
  if (!ok(ws.error(), "allocating the workspace")) return 1;
  std::printf("  workspace: score %zu bytes, compact %zu bytes\n", score_bytes, compact_bytes);
  if (!launched(td::score(ws.data(), ws_bytes, sp, stream), "score", sp)) return 1;
  if (!launched(td::select(sel, stream), "select", sel)) return 1;
  if (!launched(td::compact(ws.data(), ws_bytes, cp, stream), "compact", cp)) return 1;
  // Bad METADATA in device memory (a span outside its sequence...) cannot be seen by the host
  // launchers: the kernels then write nothing. td::validate(params) on host copies says why.
  if (!ok(fulgur::device_synchronize(), "synchronizing")) return 1;

  const std::vector<float> scores = o.scores.to_host();
  const std::vector<int64_t> kept = o.kept_index.to_host(), cu_kept = o.cu_kept.to_host();
  const std::vector<int64_t> new_cu = o.new_cu_seqlens.to_host(), row_map = o.row_map.to_host();
  const std::vector<int64_t> new_start = o.new_span_start.to_host(), new_len = o.new_span_length.to_host();
  const std::vector<int64_t> new_pos = o.positions.to_host();
  const std::vector<bf16> new_hidden = o.hidden.to_host();

  // ---- Checks against the fp64 references --------------------------------------------------------
  // The references take the same Params with host pointers.
  td::BatchLayout host_layout = layout;
  host_layout.cu_seqlens = cu_seqlens.data();
  host_layout.cu_spans = cu_spans.data();
  host_layout.span_start = span_start.data();
  host_layout.span_length = span_length.data();

  // score. Tolerance from the precision (docs/token_drop.md, "Precision"), u = 2^-24: the kernel
  // forms each logit with a d-term fp32 fma chain, off by at most
  //   E = scale * gamma_d * max sum_i |q_i k_i| + 2u max |logit|,   gamma_d = d u / (1 - d u);
  // the log-sum-exp over the row's n keys by E + (n + 8) u; so each probability by 2E + (n + 16) u
  // relative, and the head mean adds H roundings, the query mean 1:
  //   |score - ref| <= (2E + (n + 16 + H + 1) u) * |ref|   per image token.
  // Computed from the data below (it is a worst case: the measured error is far smaller).
  {
    std::vector<float> r_scores(n_image);
    td::ScoreParams h = sp;
    h.layout = host_layout;
    h.q = q.data();
    h.k = k.data();
    h.scores = r_scores.data();
    if (!ref_ok(fulgur::reference::token_drop_score(h), "score")) return 1;
    const double u = std::ldexp(1.0, -24), scale = 1.0 / std::sqrt(double(d));
    const double gamma = d * u / (1.0 - d * u);
    double max_abs_dot = 0, max_logit = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int h_ = 0; h_ < H; ++h_)
        for (int64_t r = cu_seqlens[b]; r < cu_seqlens[b + 1]; ++r) {
          double a = 0, s = 0;
          for (int i = 0; i < d; ++i) {
            const double x =
                fulgur::to_double(q[(b * H + h_) * d + i]) * fulgur::to_double(k[(r * Hkv + h_ / (H / Hkv)) * d + i]);
            a += std::fabs(x);
            s += x;
          }
          max_abs_dot = std::max(max_abs_dot, a);
          max_logit = std::max(max_logit, std::fabs(s * scale));
        }
    int64_t max_keys = 0;
    for (int64_t b = 0; b < B; ++b) max_keys = std::max(max_keys, cu_seqlens[b + 1] - cu_seqlens[b]);
    const double E = scale * gamma * max_abs_dot + 2 * u * max_logit;
    const double bound = 2 * E + double(max_keys + 16 + H + 1) * u;
    double worst = 0, num = 0, den = 0;
    for (int64_t i = 0; i < n_image; ++i) {
      const double err = std::fabs(double(scores[i]) - r_scores[i]);
      worst = std::max(worst, err / std::fabs(double(r_scores[i])));
      num += err * err;
      den += double(r_scores[i]) * r_scores[i];
    }
    const bool good = worst <= bound;  // false for NaN: an unwritten score fails
    std::printf("score:   %lld image tokens, max rel err %.2e (bound %.2e), rel RMSE %.2e: %s\n",
                static_cast<long long>(n_image), worst, bound, std::sqrt(num / den), verdict(good));
    pass = pass && good;
  }
  // select: an exact function of the scores (ties to the lower index, NaN below every number), so
  // the reference run on the kernel's scores must give the same kept set exactly.
  std::vector<int64_t> r_kept(num_kept), r_cu_kept(S + 1);
  {
    td::SelectParams h = sel;
    h.layout = host_layout;
    h.scores = scores.data();
    h.kept_index = r_kept.data();
    h.cu_kept = r_cu_kept.data();
    if (!ref_ok(fulgur::reference::token_drop_select(h), "select")) return 1;
    const bool good = kept == r_kept && cu_kept == r_cu_kept;
    std::printf("select:  keep %lld of %lld per span (floor(N * %.2f)), kept positions equal: %s\n",
                static_cast<long long>(r_cu_kept[1] - r_cu_kept[0]), static_cast<long long>(N), ratio, verdict(good));
    pass = pass && good;
  }
  // compact: integer logic and bit copies: every output equal.
  {
    std::vector<int64_t> r_cu(B + 1), r_map(out_rows), r_start(S), r_len(S), r_pos(out_rows);
    std::vector<bf16> r_hidden(out_rows * D);
    td::CompactParams h = cp;
    h.layout = host_layout;
    h.kept_index = r_kept.data();
    h.cu_kept = r_cu_kept.data();
    h.new_cu_seqlens = r_cu.data();
    h.row_map = r_map.data();
    h.new_span_start = r_start.data();
    h.new_span_length = r_len.data();
    h.hidden.in = hidden.data();
    h.hidden.out = r_hidden.data();
    h.position_ids = positions.data();
    h.position_ids_out = r_pos.data();
    if (!ref_ok(fulgur::reference::token_drop_compact(h), "compact")) return 1;
    const bool good = new_cu == r_cu && row_map == r_map && new_start == r_start && new_len == r_len &&
                      new_pos == r_pos &&
                      std::memcmp(new_hidden.data(), r_hidden.data(), sizeof(bf16) * r_hidden.size()) == 0;
    std::printf(
        "compact: %lld -> %lld rows (sequence lengths %lld, %lld), cu_seqlens, row map, spans, positions "
        "and hidden rows equal: %s\n",
        static_cast<long long>(L), static_cast<long long>(out_rows), static_cast<long long>(new_cu[1]),
        static_cast<long long>(new_cu[2] - new_cu[1]), verdict(good));
    pass = pass && good;
  }

  // ---- The fused path ----------------------------------------------------------------------------
  // score_select_compact runs score, select and the map in ONE launch (a block per sequence) plus
  // the gathers, for the inference case of one query row per sequence. It saves two launches and
  // a round trip, which dominate at small sizes (at batch 1 with long prompts the separate score
  // spreads one row over more of the GPU). Same device functions, same order of operations:
  // every output equal to the separate calls bit for bit.
  {
    EventOutputs f(n_image, num_kept, S, B, out_rows, D);
    if (!ok(f.poison(), "allocating the fused outputs")) return 1;
    td::ScoreParams fsp = sp;
    td::SelectParams fsel = sel;
    td::CompactParams fcp = cp;
    fsp.scores = f.scores.data();  // select reads what score writes, compact what select writes
    fsel.scores = f.scores.data();
    fsel.kept_index = f.kept_index.data();
    fcp.kept_index = f.kept_index.data();
    fsel.cu_kept = f.cu_kept.data();
    fcp.cu_kept = f.cu_kept.data();
    fcp.new_cu_seqlens = f.new_cu_seqlens.data();
    fcp.row_map = f.row_map.data();
    fcp.new_span_start = f.new_span_start.data();
    fcp.new_span_length = f.new_span_length.data();
    fcp.hidden.out = f.hidden.data();
    fcp.position_ids_out = f.positions.data();
    size_t fused_bytes = 0;
    cudaError_t e = td::score_select_compact(nullptr, fused_bytes, fsp, fsel, fcp, stream);
    if (e != cudaSuccess) {
      std::printf("  fused workspace query: %s, %s\n", error_name(e), td::can_implement(fsp, fsel, fcp).reason());
      return 1;
    }
    DeviceBuffer<unsigned char> fws(fused_bytes);
    e = td::score_select_compact(fws.data(), fused_bytes, fsp, fsel, fcp, stream);
    if (e != cudaSuccess) {
      std::printf("  fused: %s, %s\n", error_name(e), td::can_implement(fsp, fsel, fcp).reason());
      return 1;
    }
    if (!ok(fulgur::device_synchronize(), "synchronizing")) return 1;
    const std::vector<float> fs = f.scores.to_host();
    const std::vector<bf16> fh = f.hidden.to_host();
    const bool good =
        std::memcmp(fs.data(), scores.data(), sizeof(float) * fs.size()) == 0 && f.kept_index.to_host() == kept &&
        f.cu_kept.to_host() == cu_kept && f.new_cu_seqlens.to_host() == new_cu && f.row_map.to_host() == row_map &&
        f.new_span_start.to_host() == new_start && f.new_span_length.to_host() == new_len &&
        f.positions.to_host() == new_pos && std::memcmp(fh.data(), new_hidden.data(), sizeof(bf16) * fh.size()) == 0;
    std::printf("fused:   score_select_compact (workspace %zu bytes) equals the separate calls bit for bit: %s\n",
                fused_bytes, verdict(good));
    pass = pass && good;
  }

  // ---- A bad input is rejected, nothing written ---------------------------------------------------
  // A keep ratio given as a percentage (50 instead of 0.5): select refuses with
  // cudaErrorInvalidValue (docs/token_drop.md, "Errors") before launching, and kept_index keeps
  // its contents.
  {
    td::SelectParams bad = sel;
    bad.ratio = 50.0;
    const cudaError_t e = td::select(bad, stream);
    if (!ok(fulgur::device_synchronize(), "synchronizing")) return 1;
    const bool untouched = o.kept_index.to_host() == kept && o.cu_kept.to_host() == cu_kept;
    const bool good = e == cudaErrorInvalidValue && untouched;
    std::printf("bad input (ratio 50 instead of 0.5): select returned %s, reason \"%s\"; kept_index %s: %s\n",
                error_name(e), td::can_implement(bad).reason(), untouched ? "untouched" : "WRITTEN", verdict(good));
    pass = pass && good;
  }

  std::printf("%s\n", verdict(pass));
  return pass ? 0 : 1;
}
