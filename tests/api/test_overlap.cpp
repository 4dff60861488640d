// SPDX-License-Identifier: Apache-2.0
// fulgur::detail::byte_rows_overlap (fulgur/detail/overlap.hpp), the launchers' check that an
// output shares no byte with another output or an input, against marking every byte.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "fulgur/detail/overlap.hpp"
#include "fulgur_test.hpp"

TEST_CASE("byte_rows_overlap agrees with a byte-by-byte check", "[api][overlap]") {
  // Two row sets in one 1 KiB buffer; the answer is compared with marking every byte. Exact when
  // the byte strides are equal or a set has one row; otherwise it may refuse sets that share no
  // byte (their spans meet), but must never accept sets that share one.
  fulgur_test::Rng rng("byte_rows_overlap");
  FULGUR_INFO_SEED(rng);
  std::vector<unsigned char> buf(1024);
  int exact_overlap = 0, exact_disjoint = 0, exact_interleaved = 0, conservative = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    const int64_t elem = int64_t{1} << rng.uniform_int(0, 3);
    struct Set {
      int64_t offset, rows, width, stride;
    } s[2];
    for (Set& x : s) {
      x.offset = rng.uniform_int(0, 160);
      x.rows = rng.uniform_int(0, 6);
      x.width = rng.uniform_int(0, 6);
      x.stride = x.width + rng.uniform_int(0, 8);
    }
    if (rng.uniform_int(0, 1) == 1) {  // equal strides (the common interleaved layout)
      s[1].stride = s[0].stride;
      s[1].width = std::min(s[1].width, s[1].stride);
    }
    std::vector<int> mark(buf.size(), 0);
    bool shared = false;
    fulgur::detail::ByteRows r[2];
    for (int k = 0; k < 2; ++k) {
      r[k] = fulgur::detail::strided_bytes(buf.data() + s[k].offset, s[k].rows, s[k].width, s[k].stride, elem);
      for (int64_t i = 0; i < s[k].rows; ++i)
        for (int64_t e = 0; e < s[k].width * elem; ++e) {
          const size_t at = static_cast<size_t>(s[k].offset + i * s[k].stride * elem + e);
          REQUIRE(at < buf.size());
          if (k == 0) mark[at] = 1;
          if (k == 1 && mark[at]) shared = true;
        }
    }
    const bool got = fulgur::detail::byte_rows_overlap(r[0], r[1]);
    CHECK(got == fulgur::detail::byte_rows_overlap(r[1], r[0]));  // symmetric
    const bool exact = s[0].stride == s[1].stride || s[0].rows == 1 || s[1].rows == 1 || s[0].rows == 0 ||
                       s[1].rows == 0 || s[0].width == 0 || s[1].width == 0;
    INFO("trial " << trial << " elem " << elem << " a " << s[0].offset << "/" << s[0].rows << "/" << s[0].width << "/"
                  << s[0].stride << " b " << s[1].offset << "/" << s[1].rows << "/" << s[1].width << "/"
                  << s[1].stride);
    if (exact) {
      CHECK(got == shared);
      const bool spans_meet = fulgur::detail::byte_ranges_overlap(
          r[0].base, fulgur::detail::row_span_bytes(s[0].rows, s[0].stride, s[0].width, elem), r[1].base,
          fulgur::detail::row_span_bytes(s[1].rows, s[1].stride, s[1].width, elem));
      (shared ? exact_overlap : (spans_meet ? exact_interleaved : exact_disjoint))++;
    } else {
      CHECK((got || !shared));  // never accepts a shared byte
      conservative += got && !shared;
    }
  }
  // Every kind of case was drawn: sharing, disjoint, interleaved without sharing (the case a
  // span check alone refuses), and refusals of the conservative rule.
  CHECK(exact_overlap > 100);
  CHECK(exact_disjoint > 100);
  CHECK(exact_interleaved > 100);
  CHECK(conservative > 0);
}
