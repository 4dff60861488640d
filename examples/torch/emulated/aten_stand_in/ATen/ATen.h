// SPDX-License-Identifier: Apache-2.0
// Stand-in for the few PyTorch declarations examples/torch/fulgur_torch.cpp uses, so that CI
// (which has no PyTorch) can run the bindings' logic under fulgur's CPU emulation: host memory,
// sizes and strides, TORCH_CHECK throwing std::runtime_error. Not PyTorch: only what the bindings
// call, with the semantics they rely on (examples/torch/README.md, "Tests").
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <vector>
namespace c10 {
template <typename T>
using optional = std::optional<T>;
enum class ScalarType { Byte, Int, Long, Float, Half, BFloat16, Double };
inline std::ostream& operator<<(std::ostream& o, ScalarType t) { return o << "dtype" << int(t); }
using DeviceIndex = int8_t;
struct Device {
  DeviceIndex index() const { return 0; }
  bool operator==(const Device&) const { return true; }
};
inline std::ostream& operator<<(std::ostream& o, Device) { return o << "cuda:0"; }
inline void check_msg(std::ostringstream&) {}
template <typename A, typename... R>
void check_msg(std::ostringstream& s, const A& a, const R&... r) {
  s << a;
  check_msg(s, r...);
}
}  // namespace c10
#define TORCH_CHECK(cond, ...)            \
  do {                                    \
    if (!(cond)) {                        \
      std::ostringstream s_;              \
      ::c10::check_msg(s_, __VA_ARGS__);  \
      throw std::runtime_error(s_.str()); \
    }                                     \
  } while (0)
namespace at {
using c10::Device;
using c10::ScalarType;
constexpr ScalarType kByte = ScalarType::Byte, kInt = ScalarType::Int, kLong = ScalarType::Long,
                     kFloat = ScalarType::Float, kHalf = ScalarType::Half, kBFloat16 = ScalarType::BFloat16,
                     kDouble = ScalarType::Double;
inline size_t esize(ScalarType t) {
  switch (t) {
    case kByte: return 1;
    case kHalf:
    case kBFloat16: return 2;
    case kInt:
    case kFloat: return 4;
    default: return 8;
  }
}
struct TensorOptions {
  ScalarType dt = kFloat;
  TensorOptions dtype(ScalarType t) const {
    TensorOptions o;
    o.dt = t;
    return o;
  }
};
struct Tensor {
  std::shared_ptr<unsigned char> base;
  int64_t off = 0;  // bytes
  std::vector<int64_t> sz, st;
  ScalarType dt = kFloat;
  int64_t dim() const { return (int64_t)sz.size(); }
  int64_t size(int64_t d) const { return sz[d < 0 ? d + dim() : d]; }
  int64_t stride(int64_t d) const { return st[d < 0 ? d + dim() : d]; }
  int64_t numel() const {
    int64_t n = 1;
    for (auto s : sz) n *= s;
    return n;
  }
  void* data_ptr() const { return numel() ? base.get() + off : nullptr; }
  template <typename T>
  T* data_ptr() const {
    return static_cast<T*>(data_ptr());
  }
  ScalarType scalar_type() const { return dt; }
  bool is_cuda() const { return true; }
  Device device() const { return {}; }
  bool is_contiguous() const {
    int64_t e = 1;
    for (int64_t d = dim() - 1; d >= 0; --d) {
      if (sz[d] != 1 && st[d] != e) return false;
      e *= sz[d];
    }
    return true;
  }
  TensorOptions options() const {
    TensorOptions o;
    o.dt = dt;
    return o;
  }
  size_t element_size() const { return esize(dt); }
  Tensor select(int64_t d, int64_t i) const {
    Tensor t = *this;
    t.off += i * st[d] * (int64_t)esize(dt);
    t.sz.erase(t.sz.begin() + d);
    t.st.erase(t.st.begin() + d);
    return t;
  }
  Tensor operator[](int64_t i) const { return select(0, i); }
};
inline Tensor empty(std::vector<int64_t> sz, TensorOptions o) {
  Tensor t;
  t.sz = sz;
  t.dt = o.dt;
  t.st.resize(sz.size());
  int64_t e = 1;
  for (int64_t d = (int64_t)sz.size() - 1; d >= 0; --d) {
    t.st[d] = e;
    e *= sz[d];
  }
  size_t bytes = (size_t)e * esize(o.dt) + 512;
  unsigned char* p = static_cast<unsigned char*>(std::aligned_alloc(512, (bytes + 511) / 512 * 512));
  std::memset(p, 0xA5, bytes);  // poison: unwritten outputs show
  t.base = std::shared_ptr<unsigned char>(p, [](unsigned char* q) { std::free(q); });
  return t;
}
inline Tensor zeros(std::vector<int64_t> sz, TensorOptions o) {
  Tensor t = empty(sz, o);
  std::memset(t.data_ptr(), 0, t.numel() * esize(o.dt));
  return t;
}
}  // namespace at
