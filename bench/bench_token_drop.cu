// SPDX-License-Identifier: Apache-2.0
// Visual token drop benchmarks (fulgur::token_drop score / select / compact and the fused
// score_select_compact) for one PyramidDrop event (keep 1/2 of the image tokens, the first stage)
// at three model shapes, batch 1 and 16, one query row per sequence (inference):
//   llava15_7b   LLaVA-1.5-7B:  H = H_kv = 32, d = 128, D = 4096, N = 576 image tokens, L = 640
//   llava_next   LLaVA-NeXT-7B: H = H_kv = 32, d = 128, D = 4096, N = 2880, L = 2944
//   qwen2vl_7b   Qwen2-VL-7B:   H = 28, H_kv = 4, d = 128, D = 3584, N = 1296 (a 1008 x 1008
//                image), L = 1340, M-RoPE positions (3 rows) kept as they were
// LLaVA shapes renumber positions (PyramidDrop). bf16 q, k and hidden states. FLOPs and minimum
// bytes per call: docs/performance.md ("Token drop").
#include <string>

#include "common.cuh"
#include "fulgur/token_drop.cuh"

namespace {

using namespace fulgur_bench;
namespace td = fulgur::token_drop;

struct Model {
  const char* name;
  int heads, kv_heads, head_dim;
  int64_t hidden, image, prefix, suffix;
  bool mrope;  // Qwen2-VL: 3 position rows, original ids kept
  int64_t seq_len() const { return prefix + image + suffix; }
};

std::vector<Model> models() {
  return {{"llava15_7b", 32, 32, 128, 4096, 576, 35, 29, false},
          {"llava_next", 32, 32, 128, 4096, 2880, 35, 29, false},
          {"qwen2vl_7b", 28, 4, 128, 3584, 1296, 15, 29, true}};
}

constexpr double kRatio = 0.5;  // PyramidDrop's first stage: keep N/2 of the original N

int64_t keep_of(const Model& m) { return td::keep_count(m.image, td::KeepRule::kFloorKeepRatio, kRatio); }

std::string name_of(const char* op, const Model& m, int64_t B) {
  return std::string("token_drop.") + op + "/model=" + m.name + "/H=" + std::to_string(m.heads) +
         "/Hkv=" + std::to_string(m.kv_heads) + "/D=" + std::to_string(m.hidden) + "/N=" + std::to_string(m.image) +
         "/L=" + std::to_string(m.seq_len()) + "/B=" + std::to_string(B);
}

// ---- costs (docs/performance.md) ---------------------------------------------------------------

Cost score_cost(const Model& m, int64_t B) {
  Cost c;
  const double L = static_cast<double>(m.seq_len());
  c.bytes = B * (L * m.kv_heads * m.head_dim * 2.0  // every key of the causal row, read once
                 + m.heads * m.head_dim * 2.0       // the query row
                 + m.image * 4.0);                  // fp32 scores out
  c.flops = B * 2.0 * m.heads * L * m.head_dim;     // q . k over the row (softmax, mean: O(H L))
  return c;
}
Cost select_cost(const Model& m, int64_t B) {
  Cost c;
  c.bytes = B * (m.image * 4.0 + keep_of(m) * 8.0) + (B + 1) * 8.0;
  return c;
}
Cost compact_cost(const Model& m, int64_t B) {
  const double kept_rows = static_cast<double>(m.seq_len() - m.image + keep_of(m));  // L' per sequence
  const int P = m.mrope ? 3 : 1;
  Cost c;
  c.bytes = B * (2.0 * kept_rows * m.hidden * 2.0           // kept hidden rows read and written
                 + P * kept_rows * 8.0 * (m.mrope ? 2 : 1)  // positions written (and read when kept)
                 + keep_of(m) * 8.0)                        // kept indices read
            + 2.0 * (B + 1) * 8.0;                          // cu_seqlens in, new cu_seqlens out
  return c;
}
Cost fused_cost(const Model& m, int64_t B) {
  const Cost s = score_cost(m, B), c = compact_cost(m, B);
  Cost f;
  // keys + query in, scores and kept indices out, then the compaction (which reads no scores)
  f.bytes = s.bytes + B * keep_of(m) * 8.0 + (B + 1) * 8.0 + c.bytes - B * keep_of(m) * 8.0;
  f.flops = s.flops;
  return f;
}

// ---- inputs ------------------------------------------------------------------------------------

struct Layout {
  Buf<int64_t> cu_seqlens, cu_spans, span_start, span_length;
  td::BatchLayout layout;
};

cudaError_t make_layout(const Model& m, int64_t B, Layout& l) {
  std::vector<int64_t> cu(B + 1), cs(B + 1), start(B, m.prefix), len(B, m.image);
  for (int64_t b = 0; b <= B; ++b) {
    cu[b] = b * m.seq_len();
    cs[b] = b;
  }
  cudaError_t e;
  if ((e = upload(l.cu_seqlens, cu)) != cudaSuccess || (e = upload(l.cu_spans, cs)) != cudaSuccess ||
      (e = upload(l.span_start, start)) != cudaSuccess || (e = upload(l.span_length, len)) != cudaSuccess)
    return e;
  l.layout.batch = B;
  l.layout.total_rows = B * m.seq_len();
  l.layout.cu_seqlens = l.cu_seqlens.data();
  l.layout.num_spans = B;
  l.layout.cu_spans = l.cu_spans.data();
  l.layout.span_start = l.span_start.data();
  l.layout.span_length = l.span_length.data();
  l.layout.num_image_tokens = B * m.image;
  return cudaSuccess;
}

struct ScoreIO {
  Buf<__nv_bfloat16> q, k;
  Buf<float> scores;
};

cudaError_t make_score(const Model& m, int64_t B, const td::BatchLayout& layout, uint64_t seed, ScoreIO& io,
                       td::ScoreParams& p) {
  const int64_t L = layout.total_rows;
  cudaError_t e;
  if ((e = io.q.alloc(B * m.heads * m.head_dim)) != cudaSuccess) return e;
  if ((e = io.k.alloc(L * m.kv_heads * m.head_dim)) != cudaSuccess) return e;
  if ((e = io.scores.alloc(B * m.image)) != cudaSuccess) return e;
  if ((e = fill(io.q.data(), B * m.heads * m.head_dim, seed, Dist::kNormal)) != cudaSuccess) return e;
  if ((e = fill(io.k.data(), L * m.kv_heads * m.head_dim, seed + 1, Dist::kNormal)) != cudaSuccess) return e;
  p.layout = layout;
  p.num_queries = B;
  p.q = io.q.data();
  p.q_row_stride = int64_t{m.heads} * m.head_dim;
  p.q_head_stride = m.head_dim;
  p.k = io.k.data();
  p.k_row_stride = int64_t{m.kv_heads} * m.head_dim;
  p.k_head_stride = m.head_dim;
  p.dtype = fulgur::DType::kBF16;
  p.num_heads = m.heads;
  p.num_kv_heads = m.kv_heads;
  p.head_dim = m.head_dim;
  p.scores = io.scores.data();
  return cudaSuccess;
}

struct CompactIO {
  Buf<__nv_bfloat16> hidden, hidden_out;
  Buf<int64_t> new_cu, pos, pos_out;
};

cudaError_t make_compact(const Model& m, int64_t B, const td::BatchLayout& layout, uint64_t seed, CompactIO& io,
                         td::CompactParams& p) {
  const int64_t L = layout.total_rows, keep = keep_of(m);
  const int64_t Lp = L - B * (m.image - keep);
  const int P = m.mrope ? 3 : 1;
  cudaError_t e;
  if ((e = io.hidden.alloc(L * m.hidden)) != cudaSuccess) return e;
  if ((e = io.hidden_out.alloc(Lp * m.hidden)) != cudaSuccess) return e;
  if ((e = io.new_cu.alloc(B + 1)) != cudaSuccess) return e;
  if ((e = io.pos_out.alloc(P * Lp)) != cudaSuccess) return e;
  if ((e = fill(io.hidden.data(), L * m.hidden, seed, Dist::kNormal)) != cudaSuccess) return e;
  if (m.mrope) {
    std::vector<int64_t> pos(P * L);
    for (int r = 0; r < P; ++r)
      for (int64_t i = 0; i < L; ++i) pos[r * L + i] = (i % m.seq_len()) + r;  // any ids: copied as they are
    if ((e = upload(io.pos, pos)) != cudaSuccess) return e;
  }
  p.layout = layout;
  p.num_kept = B * keep;
  p.out_rows = Lp;
  p.new_cu_seqlens = io.new_cu.data();
  p.hidden.in = io.hidden.data();
  p.hidden.out = io.hidden_out.data();
  p.hidden.width = m.hidden;
  p.hidden.elem_bytes = 2;
  p.hidden.in_row_stride = p.hidden.out_row_stride = m.hidden;
  p.position_mode = m.mrope ? td::PositionMode::kKeepOriginal : td::PositionMode::kRenumber;
  p.position_rows = P;
  p.position_ids = m.mrope ? io.pos.data() : nullptr;
  p.position_ids_stride = L;
  p.position_ids_out = io.pos_out.data();
  p.position_ids_out_stride = Lp;
  return cudaSuccess;
}

/// Kept indices for the compaction-only benchmark: every other image position of each span (what
/// a score would pick is irrelevant to the gather's speed).
cudaError_t make_kept(const Model& m, int64_t B, Buf<int64_t>& kept, Buf<int64_t>& cu_kept) {
  const int64_t keep = keep_of(m);
  std::vector<int64_t> k(B * keep), ck(B + 1);
  for (int64_t b = 0; b < B; ++b) {
    ck[b] = b * keep;
    for (int64_t i = 0; i < keep; ++i) k[b * keep + i] = m.prefix + 2 * i;
  }
  ck[B] = B * keep;
  cudaError_t e = upload(kept, k);
  return e != cudaSuccess ? e : upload(cu_kept, ck);
}

// ---- benchmarks --------------------------------------------------------------------------------

void bench_score(benchmark::State& st, Model m, int64_t B) {
  const Cost cost = score_cost(m, B);
  const int copies = rotation_copies(cost.bytes);
  Layout l;
  FULGUR_BENCH_CHECK(st, make_layout(m, B, l));
  std::vector<ScoreIO> io(copies);
  std::vector<td::ScoreParams> ps(copies);
  for (int c = 0; c < copies; ++c) FULGUR_BENCH_CHECK(st, make_score(m, B, l.layout, 3000 + 10 * c, io[c], ps[c]));
  size_t bytes = 0;
  FULGUR_BENCH_CHECK(st, td::score(nullptr, bytes, ps[0], nullptr));
  Buf<unsigned char> ws;
  FULGUR_BENCH_CHECK(st, ws.alloc(std::max<size_t>(bytes, 256)));
  run_timed(st, cost, copies, [&](int c, cudaStream_t s) {
    size_t b = std::max<size_t>(bytes, 256);
    return td::score(ws.data(), b, ps[c], s);
  });
}

void bench_select(benchmark::State& st, Model m, int64_t B) {
  const Cost cost = select_cost(m, B);
  const int copies = rotation_copies(cost.bytes);
  Layout l;
  FULGUR_BENCH_CHECK(st, make_layout(m, B, l));
  std::vector<Buf<float>> scores(copies);
  std::vector<Buf<int64_t>> kept(copies), cu_kept(copies);
  std::vector<td::SelectParams> ps(copies);
  for (int c = 0; c < copies; ++c) {
    FULGUR_BENCH_CHECK(st, scores[c].alloc(B * m.image));
    FULGUR_BENCH_CHECK(st, fill(scores[c].data(), B * m.image, 4000 + c, Dist::kUniform01, 1.0f / m.image));
    FULGUR_BENCH_CHECK(st, kept[c].alloc(B * keep_of(m)));
    FULGUR_BENCH_CHECK(st, cu_kept[c].alloc(B + 1));
    td::SelectParams& p = ps[c];
    p.layout = l.layout;
    p.scores = scores[c].data();
    p.rule = td::KeepRule::kFloorKeepRatio;
    p.ratio = kRatio;
    p.num_kept = B * keep_of(m);
    p.kept_index = kept[c].data();
    p.cu_kept = cu_kept[c].data();
  }
  run_timed(st, cost, copies, [&](int c, cudaStream_t s) { return td::select(ps[c], s); });
}

void bench_compact(benchmark::State& st, Model m, int64_t B) {
  const Cost cost = compact_cost(m, B);
  const int copies = rotation_copies(cost.bytes);
  Layout l;
  FULGUR_BENCH_CHECK(st, make_layout(m, B, l));
  Buf<int64_t> kept, cu_kept;
  FULGUR_BENCH_CHECK(st, make_kept(m, B, kept, cu_kept));
  std::vector<CompactIO> io(copies);
  std::vector<td::CompactParams> ps(copies);
  for (int c = 0; c < copies; ++c) {
    FULGUR_BENCH_CHECK(st, make_compact(m, B, l.layout, 5000 + c, io[c], ps[c]));
    ps[c].kept_index = kept.data();
    ps[c].cu_kept = cu_kept.data();
  }
  size_t bytes = 0;
  FULGUR_BENCH_CHECK(st, td::compact(nullptr, bytes, ps[0], nullptr));
  Buf<unsigned char> ws;
  FULGUR_BENCH_CHECK(st, ws.alloc(std::max<size_t>(bytes, 256)));
  run_timed(st, cost, copies, [&](int c, cudaStream_t s) {
    size_t b = std::max<size_t>(bytes, 256);
    return td::compact(ws.data(), b, ps[c], s);
  });
}

void bench_fused(benchmark::State& st, Model m, int64_t B) {
  const Cost cost = fused_cost(m, B);
  const int copies = rotation_copies(cost.bytes);
  Layout l;
  FULGUR_BENCH_CHECK(st, make_layout(m, B, l));
  std::vector<ScoreIO> sio(copies);
  std::vector<CompactIO> cio(copies);
  std::vector<Buf<int64_t>> kept(copies), cu_kept(copies);
  std::vector<td::ScoreParams> sp(copies);
  std::vector<td::SelectParams> sel(copies);
  std::vector<td::CompactParams> cp(copies);
  size_t bytes = 0;
  for (int c = 0; c < copies; ++c) {
    FULGUR_BENCH_CHECK(st, make_score(m, B, l.layout, 6000 + 10 * c, sio[c], sp[c]));
    FULGUR_BENCH_CHECK(st, make_compact(m, B, l.layout, 6005 + 10 * c, cio[c], cp[c]));
    FULGUR_BENCH_CHECK(st, kept[c].alloc(B * keep_of(m)));
    FULGUR_BENCH_CHECK(st, cu_kept[c].alloc(B + 1));
    sel[c].layout = l.layout;
    sel[c].scores = sp[c].scores;
    sel[c].rule = td::KeepRule::kFloorKeepRatio;
    sel[c].ratio = kRatio;
    sel[c].num_kept = B * keep_of(m);
    sel[c].kept_index = kept[c].data();
    sel[c].cu_kept = cu_kept[c].data();
    cp[c].kept_index = kept[c].data();
    cp[c].cu_kept = cu_kept[c].data();
    size_t b = 0;
    FULGUR_BENCH_CHECK(st, td::score_select_compact(nullptr, b, sp[c], sel[c], cp[c], nullptr));
    bytes = std::max(bytes, b);
  }
  Buf<unsigned char> ws;
  FULGUR_BENCH_CHECK(st, ws.alloc(std::max<size_t>(bytes, 256)));
  run_timed(st, cost, copies, [&](int c, cudaStream_t s) {
    size_t b = std::max<size_t>(bytes, 256);
    return td::score_select_compact(ws.data(), b, sp[c], sel[c], cp[c], s);
  });
}

void register_all() {
  for (const Model& m : models()) {
    for (int64_t B : {1, 16}) {
      add(name_of("score", m, B), score_cost(m, B), [m, B](benchmark::State& s) { bench_score(s, m, B); });
      add(name_of("select", m, B), select_cost(m, B), [m, B](benchmark::State& s) { bench_select(s, m, B); });
      add(name_of("compact", m, B), compact_cost(m, B), [m, B](benchmark::State& s) { bench_compact(s, m, B); });
      add(name_of("fused", m, B), fused_cost(m, B), [m, B](benchmark::State& s) { bench_fused(s, m, B); });
    }
  }
}

}  // namespace

FULGUR_BENCH_MAIN("token_drop", register_all)
