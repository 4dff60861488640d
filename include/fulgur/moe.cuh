// SPDX-License-Identifier: Apache-2.0
// fulgur MoE routing and dispatch: the public entry point (docs/moe.md).
//
//   route    router logits [T, E]  -> topk_ids, topk_weights (+ expert counts)   moe/route.cuh
//   permute  topk_ids [T, k]       -> expert offsets, index maps, tile-padded /
//                                     masked views, expert-parallel counts        moe/permute.cuh
//   gather   hidden [T, H]         -> rows in a dispatch layout (opt. scaled)     moe/gather.cuh
//   combine  expert outputs        -> out[t] = sum_j w[t,j] y[row(t,j)] (+ res.)  moe/combine.cuh
//   route_permute  route + permute in one launch for decode batches             moe/route_permute.cuh
//
// Every operation takes its Params struct from moe/params.hpp (the same the CPU references in
// reference/moe.hpp take), has a pure-host can_implement(params), never allocates or
// synchronizes, and is deterministic.
#pragma once

#include "fulgur/moe/combine.cuh"
#include "fulgur/moe/gather.cuh"
#include "fulgur/moe/params.hpp"
#include "fulgur/moe/permute.cuh"
#include "fulgur/moe/route.cuh"
#include "fulgur/moe/route_permute.cuh"
