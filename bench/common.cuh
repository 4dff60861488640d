// SPDX-License-Identifier: Apache-2.0
// What every fulgur benchmark binary shares (bench/CMakeLists.txt builds one binary per family):
//
// - Timing: CUDA events around the launch(es) of one call, reported to Google Benchmark with
//   UseManualTime, so the time is the GPU's, not the host's.
// - Cold caches: before every timed call a cudaMemsetAsync over a buffer of twice the L2 size
//   (H100 50 MB, H200 60 MB) evicts whatever the previous call left in L2; and the inputs are
//   rotated over several copies (enough to exceed twice the L2 together, at least 2), so even a
//   partial eviction cannot let a call read its inputs from cache.
// - Fixed iteration counts: the count is chosen at registration from the call's floor (target
//   time / floor, clamped to [kMinIters, kMaxIters]) instead of Google Benchmark's min_time
//   loop: with manual time, min_time counts GPU time only, so a 3 us kernel would need 16,000
//   iterations of ~70 us wall (flush + sync) each. --fulgur_target_time=S sets the target
//   (default 0.05 s); --benchmark_min_time is then ignored, as Google Benchmark does whenever
//   Iterations() is set.
// - Counters (per call): bytes (minimum traffic), flops, GB/s and TFLOP/s (from the mean time),
//   floor_us = max(bytes / BW, flops / peak), floor_frac = floor / mean time (1 = at the floor),
//   min_us (fastest call). BW and peak: --fulgur_bw / --fulgur_peak (B/s, FLOP/s), else the
//   environment (FULGUR_BENCH_BW, FULGUR_BENCH_PEAK), else the measured rates of this workplace's
//   cards by device name (H200: 4.3e12 B/s device-to-device copy, 7.9e14 bf16 FLOP/s; H100: 3.0e12
//   and 7.98e14), else the device-to-device copy rate this binary measures once at start (peak
//   then defaults to the H100 figure). The context of the JSON output records which was used.
// - Without a GPU the binary prints why and exits 0; --benchmark_list_tests and --fulgur_costs
//   (name, bytes, flops, iterations, floor, extra shape details as TSV, computed on the host)
//   work everywhere.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#if FULGUR_BENCH_LITE
#include "gbench_lite.hpp"
#else
#include <benchmark/benchmark.h>
#endif

#include "fulgur/memory.hpp"

namespace fulgur_bench {

// ---- rates and costs ---------------------------------------------------------------------------

struct Rates {
  double bw = 3.0e12;     // B/s
  double peak = 7.98e14;  // FLOP/s
  std::string source = "default (H100 measured)";
  double measured_d2d = 0;  // B/s of this binary's own copy measurement (0: not measured)
};
inline Rates& rates() {
  static Rates r;
  return r;
}

/// Minimum work of one call: the bytes it must move (each input read once, each output written
/// once) and the FLOPs it must do. The counting for each family is in docs/performance.md.
struct Cost {
  double bytes = 0;
  double flops = 0;
};
inline double floor_seconds(const Cost& c) { return std::max(c.bytes / rates().bw, c.flops / rates().peak); }

struct Options {
  double target_time = 0.05;  // seconds of GPU time per benchmark, spread over its iterations
  bool costs_only = false;
  bool list_only = false;
  bool have_gpu = false;
  int device = 0;
  size_t l2_bytes = 60u << 20;
  size_t free_bytes = 0;
  std::string device_name = "none";
};
inline Options& options() {
  static Options o;
  return o;
}

constexpr int kMinIters = 10;
constexpr int kMaxIters = 200;

// ---- errors ------------------------------------------------------------------------------------

/// Skips the benchmark with the CUDA error's text (the run goes on with the next benchmark).
#define FULGUR_BENCH_CHECK(state, expr)                                                                    \
  do {                                                                                                     \
    const cudaError_t fulgur_bench_e_ = (expr);                                                            \
    if (fulgur_bench_e_ != cudaSuccess) {                                                                  \
      const std::string fulgur_bench_m_ = std::string(#expr) + ": " + cudaGetErrorString(fulgur_bench_e_); \
      (state).SkipWithError(fulgur_bench_m_.c_str());                                                      \
      return;                                                                                              \
    }                                                                                                      \
  } while (0)

// ---- device memory and inputs ------------------------------------------------------------------

template <typename T>
using Buf = fulgur::DeviceBuffer<T>;

/// Copies of one call's inputs to rotate through: enough to exceed twice the L2 together, at least
/// 2, at most 8, and within half of the free device memory (at least 1).
inline int rotation_copies(double bytes_per_copy) {
  const double l2x2 = 2.0 * static_cast<double>(options().l2_bytes);
  int n = static_cast<int>(std::ceil(l2x2 / std::max(bytes_per_copy, 1.0)));
  n = std::max(2, std::min(8, n));
  const double budget = 0.5 * static_cast<double>(options().free_bytes);
  while (n > 1 && n * bytes_per_copy > budget) --n;
  return n;
}

__device__ inline uint32_t hash_u32(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return static_cast<uint32_t>(x);
}
/// Standard normal from two hashes (Box-Muller).
__device__ inline float hash_normal(uint64_t seed, uint64_t i) {
  const float u1 = (hash_u32(seed * 0x9E3779B97F4A7C15ULL + 2 * i) + 1.0f) * 2.3283064e-10f;
  const float u2 = hash_u32(seed * 0x9E3779B97F4A7C15ULL + 2 * i + 1) * 2.3283064e-10f;
  return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
}

enum class Dist { kNormal, kSiluNormal, kUniform01 };

template <typename T>
__device__ inline T from_float(float x) {
  return static_cast<T>(x);
}
template <>
__device__ inline __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
template <>
__device__ inline __half from_float<__half>(float x) {
  return __float2half(x);
}

template <typename T>
__global__ void fill_kernel(T* p, int64_t n, uint64_t seed, Dist dist, float scale) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n; i += int64_t{gridDim.x} * blockDim.x) {
    float x;
    if (dist == Dist::kUniform01) {
      x = hash_u32(seed * 0x9E3779B97F4A7C15ULL + i) * 2.3283064e-10f;
    } else {
      x = hash_normal(seed, i);
      if (dist == Dist::kSiluNormal) x = x / (1.0f + expf(-x));
    }
    p[i] = from_float<T>(scale * x);
  }
}

/// Fills n elements with a seeded distribution on the device (no host traffic, so multi-GB inputs
/// are ready in milliseconds).
template <typename T>
inline cudaError_t fill(T* p, int64_t n, uint64_t seed, Dist dist, float scale = 1.0f) {
  if (n <= 0) return cudaSuccess;
  const int64_t blocks = std::min<int64_t>((n + 255) / 256, 65536);
  fill_kernel<T><<<static_cast<unsigned>(blocks), 256>>>(p, n, seed, dist, scale);
  return cudaGetLastError();
}

template <typename T>
inline cudaError_t upload(Buf<T>& b, const std::vector<T>& host) {
  cudaError_t e = b.alloc(host.size());
  if (e != cudaSuccess) return e;
  return b.copy_from_host(host);
}

// ---- L2 flush ----------------------------------------------------------------------------------

class L2Flusher {
 public:
  cudaError_t flush(cudaStream_t s) {
    if (buf_ == nullptr) {
      bytes_ = 2 * options().l2_bytes;
      const cudaError_t e = cudaMalloc(&buf_, bytes_);
      if (e != cudaSuccess) {
        buf_ = nullptr;
        return e;
      }
    }
    return cudaMemsetAsync(buf_, ++value_ & 0xff, bytes_, s);
  }

 private:
  void* buf_ = nullptr;  // lives as long as the process: one per binary
  size_t bytes_ = 0;
  int value_ = 0;
};
inline L2Flusher& flusher() {
  static L2Flusher f;
  return f;
}

// ---- the timing loop ---------------------------------------------------------------------------

/// Times `launch(copy, stream)` (a cudaError_t-returning call of the operation on input copy
/// `copy`) once per benchmark iteration: flush L2, record, launch, record, synchronize. One
/// untimed warm-up call first (module load, first-touch). Sets the counters described at the top
/// of this file. A failing call skips the benchmark with the error's text.
template <class Launch>
void run_timed(benchmark::State& state, const Cost& cost, int copies, Launch&& launch) {
  cudaStream_t s = nullptr;
  FULGUR_BENCH_CHECK(state, launch(0, s));
  FULGUR_BENCH_CHECK(state, cudaStreamSynchronize(s));
  cudaEvent_t a = nullptr, b = nullptr;
  FULGUR_BENCH_CHECK(state, cudaEventCreate(&a));
  FULGUR_BENCH_CHECK(state, cudaEventCreate(&b));
  double sum = 0, mn = 1e30;
  int64_t i = 0;
  std::string err;
  for (auto _ : state) {
    cudaError_t e = flusher().flush(s);
    if (e == cudaSuccess) e = cudaEventRecord(a, s);
    if (e == cudaSuccess) e = launch(static_cast<int>(i % copies), s);
    if (e == cudaSuccess) e = cudaEventRecord(b, s);
    if (e == cudaSuccess) e = cudaEventSynchronize(b);
    float ms = 0;
    if (e == cudaSuccess) e = cudaEventElapsedTime(&ms, a, b);
    if (e != cudaSuccess) {
      err = std::string("timed call: ") + cudaGetErrorString(e);
      state.SkipWithError(err.c_str());
      break;
    }
    const double sec = 1e-3 * ms;
    state.SetIterationTime(sec);
    sum += sec;
    mn = std::min(mn, sec);
    ++i;
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  if (i == 0) return;
  const double mean = sum / static_cast<double>(i);
  const double fl = floor_seconds(cost);
  state.counters["bytes"] = cost.bytes;
  state.counters["flops"] = cost.flops;
  state.counters["GB/s"] = cost.bytes / mean * 1e-9;
  state.counters["TFLOP/s"] = cost.flops / mean * 1e-12;
  state.counters["floor_us"] = fl * 1e6;
  state.counters["floor_frac"] = fl / mean;
  state.counters["min_us"] = mn * 1e6;
  state.counters["copies"] = copies;
}

// ---- registration ------------------------------------------------------------------------------

struct Entry {
  std::string name;
  Cost cost;
  int iterations;
  std::string extra;  // shape details the name cannot hold (varlen lengths), for the peers
};
inline std::vector<Entry>& entries() {
  static std::vector<Entry> e;
  return e;
}

inline int iterations_for(const Cost& c) {
  const double fl = std::max(floor_seconds(c), 2e-6);  // latency-bound calls take microseconds anyway
  const double n = std::ceil(options().target_time / fl);
  return static_cast<int>(std::max<double>(kMinIters, std::min<double>(kMaxIters, n)));
}

/// Registers one benchmark: `fn(state)` sets up its inputs and calls run_timed. Names follow
/// "family.op/key=value/..." so bench/peers and bench/compare.py can read the shape back.
inline void add(const std::string& name, const Cost& cost, std::function<void(benchmark::State&)> fn,
                const std::string& extra = "") {
  const int iters = iterations_for(cost);
  entries().push_back(Entry{name, cost, iters, extra});
  benchmark::RegisterBenchmark(name.c_str(), std::move(fn))
      ->UseManualTime()
      ->Iterations(iters)
      ->Unit(benchmark::kMicrosecond);
}

// ---- main --------------------------------------------------------------------------------------

inline bool take_flag(const char* arg, const char* name, std::string* value) {
  const size_t n = std::strlen(name);
  if (std::strncmp(arg, name, n) != 0) return false;
  if (arg[n] == '\0') {
    *value = "true";
    return true;
  }
  if (arg[n] != '=') return false;
  *value = arg + n + 1;
  return true;
}

/// Device-to-device copy rate (bytes read + written per second), best of 5 copies of 1 GiB (or a
/// quarter of the free memory).
inline double measure_d2d_bw() {
  size_t bytes = size_t{1} << 30;
  bytes = std::min(bytes, options().free_bytes / 4);
  void *x = nullptr, *y = nullptr;
  if (bytes < (size_t{64} << 20) || cudaMalloc(&x, bytes) != cudaSuccess) return 0;
  if (cudaMalloc(&y, bytes) != cudaSuccess) {
    cudaFree(x);
    return 0;
  }
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  cudaMemcpy(y, x, bytes, cudaMemcpyDeviceToDevice);  // warm-up
  float best = 1e30f;
  for (int i = 0; i < 5; ++i) {
    cudaEventRecord(a);
    cudaMemcpyAsync(y, x, bytes, cudaMemcpyDeviceToDevice);
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    best = std::min(best, ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  cudaFree(x);
  cudaFree(y);
  return cudaGetLastError() == cudaSuccess ? 2.0 * bytes / (best * 1e-3) : 0;
}

/// The shared main: reads fulgur's own flags (removing them from argv), finds the device and the
/// floor rates, registers the family's benchmarks, then hands over to Google Benchmark.
inline int run_main(int argc, char** argv, const char* family, void (*register_all)()) {
  Options& o = options();
  std::string bw_flag, peak_flag;
  std::vector<char*> rest;
  rest.push_back(argv[0]);
  for (int i = 1; i < argc; ++i) {
    std::string v;
    if (take_flag(argv[i], "--fulgur_costs", &v)) {
      o.costs_only = v != "false" && v != "0";
    } else if (take_flag(argv[i], "--fulgur_bw", &v)) {
      bw_flag = v;
    } else if (take_flag(argv[i], "--fulgur_peak", &v)) {
      peak_flag = v;
    } else if (take_flag(argv[i], "--fulgur_target_time", &v)) {
      o.target_time = std::atof(v.c_str());
    } else {
      std::string lv;
      if (take_flag(argv[i], "--benchmark_list_tests", &lv)) o.list_only = lv != "false" && lv != "0";
      rest.push_back(argv[i]);
    }
  }
  int n = 0;
  o.have_gpu = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  cudaGetLastError();  // a failed query leaves a sticky-free error; clear it
  Rates& r = rates();
  if (o.have_gpu) {
    cudaDeviceProp prop{};
    cudaGetDevice(&o.device);
    cudaGetDeviceProperties(&prop, o.device);
    o.device_name = prop.name;
    o.l2_bytes = static_cast<size_t>(prop.l2CacheSize);
    size_t total = 0;
    cudaMemGetInfo(&o.free_bytes, &total);
    const std::string name = prop.name;
    if (name.find("H200") != std::string::npos) {
      r.bw = 4.3e12;
      r.peak = 7.9e14;
      r.source = "H200 measured (docs/performance.md)";
    } else if (name.find("H100") != std::string::npos) {
      r.bw = 3.0e12;
      r.peak = 7.98e14;
      r.source = "H100 measured (docs/performance.md)";
    } else if (!o.costs_only && !o.list_only) {
      r.measured_d2d = measure_d2d_bw();
      if (r.measured_d2d > 0) {
        r.bw = r.measured_d2d;
        r.source = "bandwidth measured by this binary (device-to-device copy); peak: H100 default";
      }
    }
  }
  if (const char* e = std::getenv("FULGUR_BENCH_BW")) {
    r.bw = std::atof(e);
    r.source = "FULGUR_BENCH_BW/FULGUR_BENCH_PEAK";
  }
  if (const char* e = std::getenv("FULGUR_BENCH_PEAK")) {
    r.peak = std::atof(e);
    r.source = "FULGUR_BENCH_BW/FULGUR_BENCH_PEAK";
  }
  if (!bw_flag.empty()) {
    r.bw = std::atof(bw_flag.c_str());
    r.source = "--fulgur_bw/--fulgur_peak";
  }
  if (!peak_flag.empty()) {
    r.peak = std::atof(peak_flag.c_str());
    r.source = "--fulgur_bw/--fulgur_peak";
  }
  if (!(r.bw > 0) || !(r.peak > 0) || !(o.target_time > 0)) {
    std::fprintf(stderr, "%s: bandwidth, peak and target time must be positive\n", argv[0]);
    return 2;
  }
  if (o.have_gpu && !o.costs_only && !o.list_only && r.measured_d2d == 0) r.measured_d2d = measure_d2d_bw();

  register_all();

  if (o.costs_only) {
    std::printf("name\tbytes\tflops\titerations\tfloor_us\textra\n");
    for (const Entry& e : entries()) {
      std::printf("%s\t%.0f\t%.0f\t%d\t%.3f\t%s\n", e.name.c_str(), e.cost.bytes, e.cost.flops, e.iterations,
                  floor_seconds(e.cost) * 1e6, e.extra.c_str());
    }
    return 0;
  }
  int ac = static_cast<int>(rest.size());
  rest.push_back(nullptr);
  benchmark::Initialize(&ac, rest.data());
  if (benchmark::ReportUnrecognizedArguments(ac, rest.data())) return 1;
  if (!o.list_only && !o.have_gpu) {
    std::printf("%s: no CUDA device found: skipping the %s benchmarks (nothing measured)\n", argv[0], family);
    return 0;
  }
  char buf[64];
  benchmark::AddCustomContext("fulgur_family", family);
  benchmark::AddCustomContext("fulgur_device", o.device_name);
  std::snprintf(buf, sizeof buf, "%.4g", r.bw);
  benchmark::AddCustomContext("fulgur_floor_bw", buf);
  std::snprintf(buf, sizeof buf, "%.4g", r.peak);
  benchmark::AddCustomContext("fulgur_floor_peak", buf);
  benchmark::AddCustomContext("fulgur_floor_source", r.source);
  std::snprintf(buf, sizeof buf, "%.4g", r.measured_d2d);
  benchmark::AddCustomContext("fulgur_measured_d2d_bw", buf);
  std::snprintf(buf, sizeof buf, "%zu", o.l2_bytes);
  benchmark::AddCustomContext("fulgur_l2_bytes", buf);
#ifdef FULGUR_BENCH_LITE_ACTIVE
  benchmark::AddCustomContext("fulgur_harness", "gbench_lite");
#else
  benchmark::AddCustomContext("fulgur_harness", "google-benchmark");
#endif
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}

}  // namespace fulgur_bench

#define FULGUR_BENCH_MAIN(family, register_fn) \
  int main(int argc, char** argv) { return ::fulgur_bench::run_main(argc, argv, family, register_fn); }
