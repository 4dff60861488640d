// SPDX-License-Identifier: Apache-2.0
// Status: the result of a host-side check (can_implement, argument validation). It carries the
// cudaError_t a launcher returns and a static, human-readable reason. No allocation, no iostream.
//
// Success is made with the static factory `Status::success()` (or `Status()`) and checked with the
// member `s.ok()` (absl's spelling), `s.is_ok()` or `if (s)`. The factory was once called `ok()`,
// next to the member `is_ok()`, so `REQUIRE(s.ok())` called the static factory and was always
// true; `ok()` is now the non-static check, and an old `return Status::ok();` fails to compile
// (a member called without an object) instead of meaning something else.
#pragma once

#include <cuda_runtime_api.h>

#include "fulgur/detail/config.hpp"

FULGUR_NAMESPACE_BEGIN

class Status {
 public:
  constexpr Status() noexcept = default;
  constexpr Status(cudaError_t code, const char* reason) noexcept : code_(code), reason_(reason) {}

  /// The success status (code cudaSuccess, reason "ok"). Check a status with `ok()`.
  static constexpr Status success() noexcept { return Status(); }
  /// Bad arguments: null where required, misaligned, sizes that do not fit.
  static constexpr Status invalid(const char* reason) noexcept {
    return Status(cudaErrorInvalidValue, reason);
  }
  /// A configuration that this build does not compile in (dtype, head dim, top-k bucket).
  static constexpr Status not_supported(const char* reason) noexcept {
    return Status(cudaErrorNotSupported, reason);
  }

  /// True when the code is cudaSuccess. A member: `Status::ok()` does not compile.
  constexpr bool ok() const noexcept { return is_ok(); }
  constexpr bool is_ok() const noexcept { return code_ == cudaSuccess; }
  constexpr explicit operator bool() const noexcept { return is_ok(); }
  constexpr cudaError_t code() const noexcept { return code_; }
  /// A static string; "ok" on success. Never null.
  constexpr const char* reason() const noexcept { return reason_ ? reason_ : "ok"; }

 private:
  cudaError_t code_ = cudaSuccess;
  const char* reason_ = nullptr;
};

FULGUR_NAMESPACE_END

/// Return `status` from the enclosing function when `cond` is false (host-side validation).
#define FULGUR_CHECK_ARG(cond, reason)                  \
  do {                                                  \
    if (!(cond)) return ::fulgur::Status::invalid(reason); \
  } while (0)

/// Propagate a failed Status.
#define FULGUR_RETURN_IF_ERROR(expr)          \
  do {                                        \
    ::fulgur::Status fulgur_status_ = (expr); \
    if (!fulgur_status_) return fulgur_status_; \
  } while (0)
