// SPDX-License-Identifier: Apache-2.0
// Workspace carving. A launcher states its scratch needs as a sequence of typed arrays; the same
// code runs twice: once with a null base to compute the total size (the CUB-style size query),
// once with the caller's buffer to hand out aligned sub-arrays. Because both passes run the same
// sequence of take() calls, size and layout can never disagree.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fulgur/detail/config.hpp"

FULGUR_NAMESPACE_BEGIN
namespace detail {

class WorkspaceCarver {
 public:
  /// Every sub-array starts on this boundary: enough for 16-byte vector access and for CUB.
  static constexpr size_t kAlignment = 256;

  /// base == nullptr: sizing pass (pointers handed out are null).
  explicit WorkspaceCarver(void* base) noexcept : base_(static_cast<unsigned char*>(base)) {}

  template <typename T>
  T* take(size_t count) noexcept {
    offset_ = align_up(offset_);
    T* p = base_ ? reinterpret_cast<T*>(base_ + offset_) : nullptr;
    offset_ += count * sizeof(T);
    return p;
  }

  /// Total bytes needed by everything taken so far (rounded to the alignment).
  size_t bytes() const noexcept { return align_up(offset_); }
  bool sizing() const noexcept { return base_ == nullptr; }

  static constexpr size_t align_up(size_t n) noexcept {
    return (n + kAlignment - 1) / kAlignment * kAlignment;
  }

 private:
  unsigned char* base_;
  size_t offset_ = 0;
};

}  // namespace detail
FULGUR_NAMESPACE_END
