// fulgur: header-only CUDA kernels for lightning attention, MoE routing and visual token dropping.
// SPDX-License-Identifier: Apache-2.0
#pragma once

#define FULGUR_VERSION_MAJOR 0
#define FULGUR_VERSION_MINOR 1
#define FULGUR_VERSION_PATCH 0
// Single integer for preprocessor comparisons: MAJOR * 10000 + MINOR * 100 + PATCH.
#define FULGUR_VERSION (FULGUR_VERSION_MAJOR * 10000 + FULGUR_VERSION_MINOR * 100 + FULGUR_VERSION_PATCH)
#define FULGUR_VERSION_STRING "0.1.0"
