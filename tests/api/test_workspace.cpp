#include <cstdint>
#include <vector>

#include "fulgur/detail/workspace.hpp"
#include "fulgur_test.hpp"

namespace {
// The same carving sequence a launcher would run twice: once to size, once to hand out arrays.
struct Parts {
  float* a;
  int64_t* b;
  char* c;
};
Parts carve(fulgur::detail::WorkspaceCarver& w, size_t n) {
  Parts p;
  p.a = w.take<float>(n);
  p.b = w.take<int64_t>(n + 1);
  p.c = w.take<char>(3);
  return p;
}
}  // namespace

TEST_CASE("workspace carving: sizing pass and carving pass agree", "[api]") {
  for (size_t n : {0, 1, 63, 64, 65, 1000}) {
    fulgur::detail::WorkspaceCarver sizing(nullptr);
    Parts null_parts = carve(sizing, n);
    CHECK(sizing.sizing());
    CHECK(null_parts.a == nullptr);
    const size_t bytes = sizing.bytes();
    // Lower bound from the arrays themselves; upper bound adds one alignment gap per array.
    const size_t raw = n * 4 + (n + 1) * 8 + 3;
    CHECK(bytes >= raw);
    CHECK(bytes <= raw + 3 * fulgur::detail::WorkspaceCarver::kAlignment);
    CHECK(bytes % fulgur::detail::WorkspaceCarver::kAlignment == 0);

    std::vector<unsigned char> buf(bytes + 256);
    auto* base = reinterpret_cast<unsigned char*>(
        (reinterpret_cast<uintptr_t>(buf.data()) + 255) / 256 * 256);
    fulgur::detail::WorkspaceCarver real(base);
    Parts p = carve(real, n);
    CHECK(real.bytes() == bytes);
    auto off = [&](const void* q) { return static_cast<size_t>(static_cast<const unsigned char*>(q) - base); };
    CHECK(off(p.a) % 256 == 0);
    CHECK(off(p.b) % 256 == 0);
    CHECK(off(p.c) % 256 == 0);
    // Arrays do not overlap and stay inside the sized buffer.
    CHECK(off(p.b) >= off(p.a) + n * 4);
    CHECK(off(p.c) >= off(p.b) + (n + 1) * 8);
    CHECK(off(p.c) + 3 <= bytes);
  }
}
