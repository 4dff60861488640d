// SPDX-License-Identifier: Apache-2.0
// Checks bench/gbench_lite.hpp, the fallback harness the GPU check uses when Google Benchmark
// cannot be loaded there: names with Google Benchmark's suffixes, the filter, manual time, the
// counters and the JSON layout bench/compare.py reads. Host-only; prints "N passed, N failed".
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "gbench_lite.hpp"

namespace {

int passed = 0, failed = 0;
void check(bool ok, const char* what) {
  if (ok) {
    ++passed;
  } else {
    ++failed;
    std::printf("FAILED: %s\n", what);
  }
}

int runs_a = 0, runs_b = 0;

}  // namespace

int main(int argc, char** argv) {
  const std::string out = argc > 1 ? argv[1] : "lite_selftest.json";
  benchmark::RegisterBenchmark("fam.a/x=1",
                               [](benchmark::State& s) {
                                 ++runs_a;
                                 for (auto _ : s) s.SetIterationTime(2e-6);  // 2 us per iteration
                                 s.counters["bytes"] = 1000.0;
                                 s.counters["floor_frac"] = 0.5;
                               })
      ->UseManualTime()
      ->Iterations(4)
      ->Unit(benchmark::kMicrosecond);
  benchmark::RegisterBenchmark("fam.b/x=2",
                               [](benchmark::State& s) {
                                 ++runs_b;
                                 s.SkipWithError("no launcher");
                                 for (auto _ : s) s.SetIterationTime(1.0);
                               })
      ->UseManualTime()
      ->Iterations(3);
  benchmark::RegisterBenchmark("other.c",
                               [](benchmark::State& s) {
                                 for (auto _ : s) s.SetIterationTime(1.0);
                               })
      ->UseManualTime()
      ->Iterations(1);
  benchmark::AddCustomContext("fulgur_device", "none \"quoted\"");

  const std::string out_flag = "--benchmark_out=" + out;
  char a0[] = "selftest", a1[] = "--benchmark_filter=^fam\\.", a3[] = "--benchmark_min_time=0.05", a4[] = "--unknown";
  std::string a2s = out_flag;
  char* av[] = {a0, a1, &a2s[0], a3, a4, nullptr};
  int ac = 5;
  benchmark::Initialize(&ac, av);
  check(ac == 2 && std::string(av[1]) == "--unknown", "Initialize consumes the flags it knows, leaves the rest");
  check(benchmark::RunSpecifiedBenchmarks() == 2, "the filter selects two benchmarks");
  check(runs_a == 1 && runs_b == 1, "each selected benchmark runs once");

  std::ifstream f(out);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string j = ss.str();
  auto has = [&](const char* s) { return j.find(s) != std::string::npos; };
  check(has("\"name\": \"fam.a/x=1/iterations:4/manual_time\""), "name carries Google Benchmark's suffixes");
  check(has("\"iterations\": 4"), "iteration count");
  check(has("\"real_time\": 2"), "manual time per iteration in the unit (2 us)");
  check(has("\"time_unit\": \"us\""), "time unit");
  check(has("\"bytes\": 1000"), "counter");
  check(has("\"floor_frac\": 0.5"), "counter");
  check(has("\"error_occurred\": true") && has("\"error_message\": \"no launcher\""), "skipped benchmark");
  check(has("\"fulgur_device\": \"none \\\"quoted\\\"\""), "custom context, escaped");
  check(!has("other.c"), "filtered-out benchmark absent");
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
