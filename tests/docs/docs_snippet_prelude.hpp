// SPDX-License-Identifier: Apache-2.0
// Included first by every translation unit of documentation snippets (tests/docs). Fragments
// ("<!-- snippet: fragment -->") use fulgur's public headers without including them, so the
// prelude includes every public header, the CPU references and the memory helpers the examples
// use. A program snippet must still include what it uses: a reader copies it whole.
#pragma once

#include <cstdint>
#include <cstdio>
#include <vector>

#include "fulgur/lightning.cuh"
#include "fulgur/memory.hpp"
#include "fulgur/moe.cuh"
#include "fulgur/reference/lightning.hpp"
#include "fulgur/reference/moe.hpp"
#include "fulgur/reference/token_drop.hpp"
#include "fulgur/token_drop.cuh"

/// Runs one program snippet's main (renamed snippet_main) and reports it; 1 when it fails.
inline int fulgur_docs_run_one(const char* where, int (*snippet_main)()) {
  std::printf("--- %s\n", where);
  std::fflush(stdout);
  const int rc = snippet_main();
  std::printf("--- %s: %s (returned %d)\n", where, rc == 0 ? "ok" : "FAILED", rc);
  return rc == 0 ? 0 : 1;
}
