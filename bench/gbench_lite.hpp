// SPDX-License-Identifier: Apache-2.0
// A minimal stand-in for the subset of Google Benchmark's API that fulgur's benchmarks use, for
// machines where the library is missing or cannot be loaded (bench/CMakeLists.txt picks it only
// then; see the comment there for why). It keeps the same names (namespace benchmark), the same
// command-line flags the GPU check uses and the same JSON layout, so bench/compare.py and the
// docs read either output alike:
//   --benchmark_list_tests[=true]   print the benchmark names, run nothing
//   --benchmark_filter=REGEX        run the benchmarks whose name matches (std::regex_search)
//   --benchmark_out=FILE            also write the results as JSON (the only out format)
//   --benchmark_out_format=json     accepted (json is the only format)
//   --benchmark_format=console|json what goes to stdout
//   --benchmark_min_time=X          accepted and ignored: fulgur's benchmarks fix their
//                                   iteration counts (bench/common.cuh)
// Names get the suffixes Google Benchmark appends: "/iterations:N" when Iterations(N) was set and
// "/manual_time" with UseManualTime(). Only what fulgur's benchmarks call is implemented: one
// thread, no repetitions, no arguments ranges, no fixtures.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <functional>
#include <map>
#include <memory>
#include <regex>
#include <string>
#include <utility>
#include <vector>

namespace benchmark {

#define FULGUR_BENCH_LITE_ACTIVE 1

enum TimeUnit { kNanosecond, kMicrosecond, kMillisecond, kSecond };

class Counter {
 public:
  enum Flags { kDefault = 0 };
  Counter(double v = 0.0, Flags f = kDefault) : value(v), flags(f) {}  // NOLINT: implicit like GB
  operator double() const { return value; }                            // NOLINT
  double value;
  Flags flags;
};
using UserCounters = std::map<std::string, Counter>;

template <class T>
inline void DoNotOptimize(T const&) {}

class State {
 public:
  struct Iter {
    State* s;
    int64_t i;
    bool operator!=(const Iter& o) const { return i < o.i && !s->error_; }
    void operator++() { ++i; }
    int operator*() const { return 0; }
  };
  explicit State(int64_t max_iterations) : max_iterations_(max_iterations) {}
  Iter begin() { return Iter{this, 0}; }
  Iter end() { return Iter{this, error_ ? 0 : max_iterations_}; }
  void SetIterationTime(double seconds) {
    manual_seconds_ += seconds;
    ++done_;
  }
  void SkipWithError(const char* msg) {
    error_ = true;
    error_message_ = msg ? msg : "";
  }
  void SetLabel(const std::string& label) { label_ = label; }
  int64_t iterations() const { return done_; }
  int64_t max_iterations() const { return max_iterations_; }
  UserCounters counters;

  // Read by the runner.
  bool error_ = false;
  std::string error_message_;
  std::string label_;
  double manual_seconds_ = 0.0;
  int64_t done_ = 0;

 private:
  int64_t max_iterations_;
};

class Benchmark {
 public:
  Benchmark(std::string name, std::function<void(State&)> fn) : name_(std::move(name)), fn_(std::move(fn)) {}
  Benchmark* UseManualTime() {
    manual_ = true;
    return this;
  }
  Benchmark* Iterations(int64_t n) {
    iterations_ = n;
    return this;
  }
  Benchmark* Unit(TimeUnit u) {
    unit_ = u;
    return this;
  }
  std::string full_name() const {
    std::string n = name_;
    if (iterations_ > 0) n += "/iterations:" + std::to_string(iterations_);
    if (manual_) n += "/manual_time";
    return n;
  }
  std::string name_;
  std::function<void(State&)> fn_;
  bool manual_ = false;
  int64_t iterations_ = 0;
  TimeUnit unit_ = kNanosecond;
};

namespace lite {

struct Registry {
  std::vector<std::unique_ptr<Benchmark>> benchmarks;
  std::vector<std::pair<std::string, std::string>> context;
  bool list_only = false;
  std::string filter = ".";
  std::string out_file;
  std::string format = "console";
};
inline Registry& registry() {
  static Registry r;
  return r;
}

inline std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      o += buf;
    } else {
      o += c;
    }
  }
  return o;
}

inline const char* unit_name(TimeUnit u) {
  switch (u) {
    case kNanosecond: return "ns";
    case kMicrosecond: return "us";
    case kMillisecond: return "ms";
    default: return "s";
  }
}
inline double unit_scale(TimeUnit u) {
  switch (u) {
    case kNanosecond: return 1e9;
    case kMicrosecond: return 1e6;
    case kMillisecond: return 1e3;
    default: return 1.0;
  }
}

// %.17g keeps doubles exact; JSON has no inf/nan, so those become null.
inline std::string num(double v) {
  if (!(v == v) || v > 1.7e308 || v < -1.7e308) return "null";
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

struct Result {
  std::string name;
  int64_t family;
  int64_t iterations;
  double real_time;  // in unit, per iteration
  double cpu_time;
  TimeUnit unit;
  UserCounters counters;
  bool error;
  std::string error_message;
  std::string label;
};

inline std::string to_json(const std::vector<Result>& results) {
  std::string j = "{\n  \"context\": {\n";
  char date[64];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S%z", std::localtime(&now));
  j += "    \"date\": \"" + std::string(date) + "\",\n";
  j += "    \"library_build_type\": \"fulgur gbench_lite\",\n";
  for (const auto& kv : registry().context) {
    j += "    \"" + json_escape(kv.first) + "\": \"" + json_escape(kv.second) + "\",\n";
  }
  j += "    \"num_cpus\": 0\n  },\n  \"benchmarks\": [\n";
  for (size_t i = 0; i < results.size(); ++i) {
    const Result& r = results[i];
    j += "    {\n";
    j += "      \"name\": \"" + json_escape(r.name) + "\",\n";
    j += "      \"family_index\": " + std::to_string(r.family) + ",\n";
    j += "      \"per_family_instance_index\": 0,\n";
    j += "      \"run_name\": \"" + json_escape(r.name) + "\",\n";
    j += "      \"run_type\": \"iteration\",\n      \"repetitions\": 1,\n      \"repetition_index\": 0,\n";
    j += "      \"threads\": 1,\n";
    if (r.error) {
      j += "      \"error_occurred\": true,\n";
      j += "      \"error_message\": \"" + json_escape(r.error_message) + "\"\n";
    } else {
      j += "      \"iterations\": " + std::to_string(r.iterations) + ",\n";
      j += "      \"real_time\": " + num(r.real_time) + ",\n";
      j += "      \"cpu_time\": " + num(r.cpu_time) + ",\n";
      j += "      \"time_unit\": \"" + std::string(unit_name(r.unit)) + "\"";
      for (const auto& c : r.counters) j += ",\n      \"" + json_escape(c.first) + "\": " + num(c.second.value);
      if (!r.label.empty()) j += ",\n      \"label\": \"" + json_escape(r.label) + "\"";
      j += "\n";
    }
    j += i + 1 < results.size() ? "    },\n" : "    }\n";
  }
  j += "  ]\n}\n";
  return j;
}

inline bool flag_value(const char* arg, const char* name, std::string* value) {
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

}  // namespace lite

template <class Fn>
Benchmark* RegisterBenchmark(const char* name, Fn&& fn) {
  auto& r = lite::registry();
  r.benchmarks.emplace_back(new Benchmark(name, std::function<void(State&)>(std::forward<Fn>(fn))));
  return r.benchmarks.back().get();
}

inline void AddCustomContext(const std::string& key, const std::string& value) {
  lite::registry().context.emplace_back(key, value);
}

/// Consumes the --benchmark_* flags it knows from argv (as Google Benchmark does) and leaves the
/// rest for ReportUnrecognizedArguments.
inline void Initialize(int* argc, char** argv) {
  auto& r = lite::registry();
  int out = 1;
  for (int i = 1; i < *argc; ++i) {
    std::string v;
    if (lite::flag_value(argv[i], "--benchmark_list_tests", &v)) {
      r.list_only = v != "false" && v != "0";
    } else if (lite::flag_value(argv[i], "--benchmark_filter", &v)) {
      r.filter = v.empty() ? "." : v;
    } else if (lite::flag_value(argv[i], "--benchmark_out", &v)) {
      r.out_file = v;
    } else if (lite::flag_value(argv[i], "--benchmark_out_format", &v) ||
               lite::flag_value(argv[i], "--benchmark_min_time", &v) ||
               lite::flag_value(argv[i], "--benchmark_counters_tabular", &v)) {
      // accepted; see the top of this file
    } else if (lite::flag_value(argv[i], "--benchmark_format", &v)) {
      r.format = v;
    } else {
      argv[out++] = argv[i];
    }
  }
  *argc = out;
  if (out < 1000) argv[out] = nullptr;
}

inline bool ReportUnrecognizedArguments(int argc, char** argv) {
  for (int i = 1; i < argc; ++i)
    std::fprintf(stderr, "%s: error: unrecognized command-line flag: %s\n", argv[0], argv[i]);
  return argc > 1;
}

inline size_t RunSpecifiedBenchmarks() {
  auto& r = lite::registry();
  std::regex re;
  const bool negate = !r.filter.empty() && r.filter[0] == '-';
  try {
    re = std::regex(negate ? r.filter.substr(1) : r.filter);
  } catch (const std::regex_error&) {
    std::fprintf(stderr, "invalid --benchmark_filter regex: %s\n", r.filter.c_str());
    return 0;
  }
  std::vector<lite::Result> results;
  int64_t family = 0;
  if (!r.list_only && r.format == "console") {
    std::printf("%-64s %14s %10s  %s\n", "Benchmark", "Time", "Iterations", "UserCounters...");
  }
  for (const auto& b : r.benchmarks) {
    const std::string name = b->full_name();
    ++family;
    if (std::regex_search(name, re) == negate) continue;
    if (r.list_only) {
      std::printf("%s\n", name.c_str());
      continue;
    }
    State st(b->iterations_ > 0 ? b->iterations_ : 1);
    const auto t0 = std::chrono::steady_clock::now();
    b->fn_(st);
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    lite::Result res{name,        family - 1, st.done_,          0.0,      0.0, b->unit_,
                     st.counters, st.error_,  st.error_message_, st.label_};
    const int64_t n = st.done_ > 0 ? st.done_ : 1;
    const double per_iter = b->manual_ ? st.manual_seconds_ / n : wall / n;
    res.real_time = per_iter * lite::unit_scale(b->unit_);
    res.cpu_time = wall / n * lite::unit_scale(b->unit_);
    if (r.format == "console") {
      if (res.error) {
        std::printf("%-64s ERROR OCCURRED: '%s'\n", name.c_str(), res.error_message.c_str());
      } else {
        std::printf("%-64s %11.3f %-2s %10lld", name.c_str(), res.real_time, lite::unit_name(res.unit),
                    static_cast<long long>(res.iterations));
        for (const auto& c : res.counters) std::printf(" %s=%.4g", c.first.c_str(), c.second.value);
        if (!res.label.empty()) std::printf(" %s", res.label.c_str());
        std::printf("\n");
      }
      std::fflush(stdout);
    }
    results.push_back(std::move(res));
  }
  if (r.list_only) return 0;
  const std::string json = lite::to_json(results);
  if (r.format == "json") std::fputs(json.c_str(), stdout);
  if (!r.out_file.empty()) {
    if (std::FILE* f = std::fopen(r.out_file.c_str(), "w")) {
      std::fputs(json.c_str(), f);
      std::fclose(f);
    } else {
      std::fprintf(stderr, "cannot write %s\n", r.out_file.c_str());
    }
  }
  return results.size();
}

inline void Shutdown() {}

}  // namespace benchmark
