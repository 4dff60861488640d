// SPDX-License-Identifier: Apache-2.0
// Whether two sets of rows in memory share a byte: the launchers' check that an output does not
// overlap another output or an input of the same launch (a shared byte is a race between blocks,
// and its result depends on the schedule). Compares addresses only, so it works on device
// pointers without reading them.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fulgur/detail/config.hpp"

FULGUR_NAMESPACE_BEGIN
namespace detail {

/// Bytes from the first byte of a row tensor's first row to the last byte of its last row:
/// ((rows - 1) * row_stride + width) * elem_bytes, 0 when rows or width is 0, saturating at
/// UINT64_MAX. Takes checked fields (rows, width >= 0, row_stride >= width, elem_bytes 1 to 8).
inline uint64_t row_span_bytes(int64_t rows, int64_t row_stride, int64_t width, int64_t elem_bytes) {
  if (rows <= 0 || width <= 0) return 0;
  const uint64_t r = static_cast<uint64_t>(rows - 1), s = static_cast<uint64_t>(row_stride);
  const uint64_t w = static_cast<uint64_t>(width), e = static_cast<uint64_t>(elem_bytes);
  if (s != 0 && r > (UINT64_MAX - w) / s) return UINT64_MAX;
  const uint64_t elems = r * s + w;
  return elems > UINT64_MAX / e ? UINT64_MAX : elems * e;
}

/// Whether [a, a + na) and [b, b + nb) share a byte (an empty range shares none).
inline bool byte_ranges_overlap(const void* a, uint64_t na, const void* b, uint64_t nb) {
  if (na == 0 || nb == 0) return false;
  const uintptr_t pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return pa <= pb ? static_cast<uint64_t>(pb - pa) < na : static_cast<uint64_t>(pa - pb) < nb;
}

/// Bytes a launch touches in one tensor or array: `rows` rows of `width` bytes, `stride` bytes
/// from one row's start to the next's (a contiguous array is one row).
struct ByteRows {
  const void* base = nullptr;
  int64_t rows = 0;
  uint64_t width = 0;
  uint64_t stride = 0;
};
inline uint64_t saturating_mul(uint64_t a, uint64_t b) { return b != 0 && a > UINT64_MAX / b ? UINT64_MAX : a * b; }
inline ByteRows array_bytes(const void* base, int64_t count, int64_t elem_bytes) {
  ByteRows r;
  r.base = base;
  r.rows = base != nullptr && count > 0 ? 1 : 0;
  r.width = r.rows ? saturating_mul(static_cast<uint64_t>(count), static_cast<uint64_t>(elem_bytes)) : 0;
  r.stride = r.width;
  return r;
}
/// Takes checked fields (width >= 0, row_stride >= width, elem_bytes 1 to 8).
inline ByteRows strided_bytes(const void* base, int64_t rows, int64_t width, int64_t row_stride, int64_t elem_bytes) {
  ByteRows r;
  r.base = base;
  r.rows = base != nullptr && rows > 0 && width > 0 ? rows : 0;
  r.width = saturating_mul(static_cast<uint64_t>(width), static_cast<uint64_t>(elem_bytes));
  r.stride = saturating_mul(static_cast<uint64_t>(row_stride), static_cast<uint64_t>(elem_bytes));
  return r;
}
inline int64_t floor_div(int64_t a, int64_t b) {  // b > 0
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

/// Whether two ByteRows share a byte. Exact when both have the same stride or either is one row
/// (rows i of a and j of b meet iff the offset of b's row j from a's row i, delta - (i - j)
/// stride, lies in (-width_b, width_a): an interval of i - j to intersect with the pairs that
/// exist). With different strides, whether the spans from first to last byte meet: a row set
/// interleaved with another of a different stride is refused even where no byte is shared.
inline bool byte_rows_overlap(ByteRows a, ByteRows b) {
  const uint64_t na = row_span_bytes(a.rows, static_cast<int64_t>(a.stride), static_cast<int64_t>(a.width), 1);
  const uint64_t nb = row_span_bytes(b.rows, static_cast<int64_t>(b.stride), static_cast<int64_t>(b.width), 1);
  if (!byte_ranges_overlap(a.base, na, b.base, nb)) return false;
  if (a.rows == 1 && b.rows == 1) return true;  // the spans are the bytes
  if (a.rows == 1) a.stride = b.stride;
  if (b.rows == 1) b.stride = a.stride;
  constexpr uint64_t kExactLimit = uint64_t{1} << 61;  // keeps the arithmetic below in int64
  if (a.stride != b.stride || a.stride == 0 || na >= kExactLimit || nb >= kExactLimit) return true;
  // The spans overlap, so |delta| < max(na, nb) < 2^61.
  const int64_t delta = static_cast<int64_t>(reinterpret_cast<uintptr_t>(b.base) - reinterpret_cast<uintptr_t>(a.base));
  const int64_t S = static_cast<int64_t>(a.stride);
  const int64_t wa = static_cast<int64_t>(a.width), wb = static_cast<int64_t>(b.width);
  // k = i - j with delta - k S in (-wb, wa), i in [0, a.rows), j in [0, b.rows).
  const int64_t k_lo = floor_div(delta - wa, S) + 1, k_hi = floor_div(delta + wb - 1, S);
  const int64_t lo = k_lo > 1 - b.rows ? k_lo : 1 - b.rows;
  const int64_t hi = k_hi < a.rows - 1 ? k_hi : a.rows - 1;
  return lo <= hi;
}

/// No output shares a byte with another output or with an input: what a launch writes it must
/// own, since other blocks may read the input or write the other output at the same time.
template <size_t kOut, size_t kIn>
inline bool outputs_disjoint(const ByteRows (&out)[kOut], const ByteRows (&in)[kIn]) {
  for (size_t i = 0; i < kOut; ++i) {
    for (size_t j = i + 1; j < kOut; ++j)
      if (byte_rows_overlap(out[i], out[j])) return false;
    for (size_t j = 0; j < kIn; ++j)
      if (byte_rows_overlap(out[i], in[j])) return false;
  }
  return true;
}

}  // namespace detail
FULGUR_NAMESPACE_END
