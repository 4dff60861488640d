// SPDX-License-Identifier: Apache-2.0
// What an engine's own .cu file does with vendored fulgur headers: include the three public
// entry points and call every launcher. Included by two translation units (first.cu, second.cu),
// so every kernel template is instantiated in both and the linker must merge them; a kernel
// defined in a header without vague linkage (a non-template __global__) would be defined twice.
// The test only compiles and links it (the machines that run it have no GPU, and sm_80 code
// would not load on an sm_90 card anyway). Run on an sm_8x GPU it launches empty problems: the
// few pointers they still name point into zeroed device scratch memory.
#pragma once

#include <cuda_runtime.h>
#include <cstddef>

#include "fulgur/lightning.cuh"
#include "fulgur/moe.cuh"
#include "fulgur/token_drop.cuh"

// `inline` as an engine's header helper would be; each translation unit still compiles the
// launchers and their kernels for its own use.
// scratch: >= 8 KiB of zeroed device memory; workspace: device memory of workspace_bytes.
inline cudaError_t launch_every_family(unsigned char* scratch, void* workspace, size_t workspace_bytes,
                                       cudaStream_t stream) {
  namespace lt = fulgur::lightning;
  namespace fm = fulgur::moe;
  namespace td = fulgur::token_drop;
  using fulgur::DType;
  cudaError_t worst = cudaSuccess;
  auto note = [&](cudaError_t e) {
    if (e != cudaSuccess) worst = e;
  };
  // Pointers an empty batch still names: cu_seqlens = {0}, slopes and bias all 0.
  const int32_t* cu0 = reinterpret_cast<const int32_t*>(scratch);
  const float* zeros = reinterpret_cast<const float*>(scratch);
  int64_t* offsets = reinterpret_cast<int64_t*>(scratch + 4096);  // [E+1] output of permute

  // Lightning attention: prefill (workspace protocol) and decode, bf16, d = 128.
  lt::PrefillParams pp;
  pp.num_heads = 1;
  pp.dk = pp.dv = 128;
  pp.cu_seqlens = cu0;
  pp.q_stride_token = pp.k_stride_token = pp.v_stride_token = pp.o_stride_token = 128;
  pp.q_stride_head = pp.k_stride_head = pp.v_stride_head = pp.o_stride_head = 128;
  pp.slopes = zeros;
  size_t bytes = 0;
  note(lt::prefill(nullptr, bytes, pp, stream));
  note(lt::prefill(workspace, workspace_bytes, pp, stream));
  lt::DecodeParams dp;
  dp.num_heads = 1;
  dp.dk = dp.dv = 128;
  dp.q_stride_token = dp.k_stride_token = dp.v_stride_token = dp.o_stride_token = 128;
  dp.q_stride_head = dp.k_stride_head = dp.v_stride_head = dp.o_stride_head = 128;
  dp.slopes = zeros;
  note(lt::decode(dp, stream));

  // MoE: route (DeepSeek-V3 policy), permute, gather, combine, and the fused route_permute.
  fm::RouteParams rp;
  rp.policy = fm::presets::deepseek_v3();
  rp.bias = zeros;  // [E]
  rp.logits_dtype = DType::kBF16;
  rp.logits_row_stride = 256;
  note(fm::route(rp, stream));
  fm::PermuteParams mp;
  mp.top_k = 8;
  mp.num_experts = 256;
  mp.expert_first_token_offset = offsets;
  note(fm::permute(nullptr, bytes, mp, stream));
  note(fm::permute(workspace, workspace_bytes, mp, stream));
  note(fm::route_permute(workspace, workspace_bytes, rp, mp, stream));
  fm::GatherParams gp;
  gp.top_k = 8;
  gp.hidden_size = 7168;
  gp.hidden_row_stride = gp.out_row_stride = 7168;
  note(fm::gather(gp, stream));
  fm::CombineParams cp;
  cp.top_k = 8;
  cp.hidden_size = 7168;
  cp.expert_out_row_stride = cp.out_row_stride = 7168;
  note(fm::combine(cp, stream));

  // Token drop: score, select, compact, and the fused path.
  td::ScoreParams sp;
  sp.num_heads = sp.num_kv_heads = 32;
  sp.head_dim = 128;
  td::SelectParams sel;
  td::CompactParams cmp;
  note(td::score(nullptr, bytes, sp, stream));
  note(td::score(workspace, workspace_bytes, sp, stream));
  note(td::select(sel, stream));
  note(td::compact(nullptr, bytes, cmp, stream));
  note(td::compact(workspace, workspace_bytes, cmp, stream));
  note(td::score_select_compact(workspace, workspace_bytes, sp, sel, cmp, stream));
  return worst;
}
