// SPDX-License-Identifier: Apache-2.0
// fulgur's visual token dropping (PyramidDrop, FastV, multi-image, M-RoPE): the public entry point.
//
//   fulgur::token_drop::score(workspace, bytes, ScoreParams, stream)     per-image-token scores
//   fulgur::token_drop::select(SelectParams, stream)                     kept indices per span
//   fulgur::token_drop::compact(workspace, bytes, CompactParams, stream) map, cu_seqlens, gathers
//   fulgur::token_drop::score_select_compact(workspace, bytes, ScoreParams, SelectParams,
//                                            CompactParams, stream)      the fused inference path
//   fulgur::token_drop::can_implement(...)                               pure host checks
//   fulgur::token_drop::make_schedule(ScheduleParams, StagePlan*)        the host-side schedule
//
// Params: fulgur/token_drop/params.hpp (every field documented); the fp64 CPU references in
// fulgur/reference/token_drop.hpp define every output. Design and numbers: docs/token_drop.md.
#pragma once

#include "fulgur/token_drop/compact.cuh"
#include "fulgur/token_drop/fused.cuh"
#include "fulgur/token_drop/params.hpp"
#include "fulgur/token_drop/schedule.hpp"
#include "fulgur/token_drop/score.cuh"
#include "fulgur/token_drop/select.cuh"
