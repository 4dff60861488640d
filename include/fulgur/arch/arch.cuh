// SPDX-License-Identifier: Apache-2.0
// fulgur's architecture layer: one wrapper per PTX instruction, each with a real path (nvcc,
// sm_80+) and an emulated path (FULGUR_EMULATE, host compilers). Inline PTX appears nowhere else
// in the library.
//   arch/layout.hpp    fragment coordinates from the PTX ISA tables (host and device)
//   arch/emulate.hpp   host models of the instructions (used by the emulation and the GPU tests)
//   arch/mma.cuh       mma.sync m16n8k16 bf16/f16, m16n8k8 tf32; cvt.rna.tf32.f32
//   arch/ldmatrix.cuh  ldmatrix.m8n8 x1/x2/x4, with and without .trans
//   arch/cp_async.cuh  cp.async.cg 16-byte copies, commit_group, wait_group, wait_all
#pragma once

#include "fulgur/arch/cp_async.cuh"
#include "fulgur/arch/emulate.hpp"
#include "fulgur/arch/layout.hpp"
#include "fulgur/arch/ldmatrix.cuh"
#include "fulgur/arch/mma.cuh"
