// SPDX-License-Identifier: Apache-2.0
// main() for every Catch2 test binary: prints the base seed; GPU builds exit with 77 (CTest's
// skip code here) when no CUDA device is present, so they skip cleanly on GPU-less machines.
#if defined(FULGUR_CATCH2_V3)
#include <catch2/catch_session.hpp>
#else
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#endif

#include <cstdio>

#include "fulgur_test.hpp"

#if defined(FULGUR_TEST_REQUIRES_GPU)
#include <cuda_runtime_api.h>
#endif

int main(int argc, char* argv[]) {
#if defined(FULGUR_TEST_REQUIRES_GPU)
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipping this GPU test binary\n");
    return 77;
  }
#endif
  std::printf("fulgur tests: FULGUR_TEST_SEED=%llu\n",
              static_cast<unsigned long long>(fulgur_test::base_seed()));
  return Catch::Session().run(argc, argv);
}
