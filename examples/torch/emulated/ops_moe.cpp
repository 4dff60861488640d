// SPDX-License-Identifier: Apache-2.0
// fulgur_ops_moe.cu built by the host compiler under fulgur's CPU emulation (FULGUR_EMULATE).
#include "../fulgur_ops_moe.cu"
