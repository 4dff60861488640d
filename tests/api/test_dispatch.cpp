#include <type_traits>

#include "fulgur/detail/dispatch.hpp"
#include "fulgur_test.hpp"

namespace {
template <typename T>
cudaError_t record_size(size_t* out) {
  *out = sizeof(T);
  return cudaSuccess;
}
}  // namespace

TEST_CASE("dtype dispatch maps runtime tags to C++ types", "[api]") {
  size_t size = 0;
  for (auto t : {fulgur::DType::kF32, fulgur::DType::kF16, fulgur::DType::kBF16}) {
    size = 0;
    cudaError_t err = FULGUR_DISPATCH_DTYPE(t, T, return record_size<T>(&size););
    CHECK(err == cudaSuccess);
    CHECK(size == fulgur::dtype_size(t));
  }
  // f64 is a reference-only type: kernels never dispatch on it.
  CHECK(FULGUR_DISPATCH_DTYPE(fulgur::DType::kF64, T, return record_size<T>(&size);) ==
        cudaErrorNotSupported);
}

TEST_CASE("value dispatch follows the allow-list", "[api]") {
  int seen = 0;
  auto run = [&](int v) {
    return FULGUR_DISPATCH_VALUE(int, v, kV, (32, 64, 128), seen = kV; return cudaSuccess;);
  };
  CHECK(run(64) == cudaSuccess);
  CHECK(seen == 64);
  CHECK(run(128) == cudaSuccess);
  CHECK(seen == 128);
  seen = -1;
  CHECK(run(96) == cudaErrorNotSupported);
  CHECK(seen == -1);
  CHECK(fulgur::detail::value_allowed<int, 32, 64, 128>(32));
  CHECK_FALSE(fulgur::detail::value_allowed<int, 32, 64, 128>(33));
}
