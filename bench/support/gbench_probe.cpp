// SPDX-License-Identifier: Apache-2.0
// Configure-time probe (bench/CMakeLists.txt, try_run): links and runs one manual-time benchmark
// against the Google Benchmark library found, so a library that cannot load on this machine
// (a carried build whose C or C++ runtime is too new here) makes CMake fall back to
// bench/gbench_lite.hpp instead of failing at the GPU check.
#include <benchmark/benchmark.h>

static void probe(benchmark::State& state) {
  for (auto _ : state) state.SetIterationTime(1e-6);
  state.counters["probe"] = 1.0;
}

int main(int argc, char** argv) {
  benchmark::RegisterBenchmark("probe", probe)->UseManualTime()->Iterations(3);
  benchmark::Initialize(&argc, argv);
  benchmark::AddCustomContext("probe", "1");
  return benchmark::RunSpecifiedBenchmarks() == 1 ? 0 : 1;
}
