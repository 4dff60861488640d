// SPDX-License-Identifier: Apache-2.0
// fulgur lightning attention (MiniMax-01, Lightning Attention-2): the public entry point.
//
//   fulgur::lightning::prefill(workspace, workspace_bytes, PrefillParams, stream)
//       tensor-core chunked prefill over a packed varlen batch (lightning/prefill.cuh)
//   fulgur::lightning::decode(DecodeParams, stream)
//       one token per sequence, slot pool updated in place (lightning/decode.cuh)
//   fulgur::lightning::can_implement(params), prefill_workspace_bytes(params)
//       pure host checks and sizes (lightning/traits.hpp)
//   PrefillParams / DecodeParams and validate(): lightning/params.hpp
//   MiniMax / ALiBi slopes: lightning/slopes.hpp
//   fp64 CPU references of the same operations: fulgur/reference/lightning.hpp
//
// API, launch rules and precision: docs/lightning.md; design: docs/design/lightning.md.
#pragma once

#include "fulgur/lightning/decode.cuh"
#include "fulgur/lightning/params.hpp"
#include "fulgur/lightning/prefill.cuh"
#include "fulgur/lightning/slopes.hpp"
#include "fulgur/lightning/traits.hpp"
