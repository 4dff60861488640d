#include <cstring>
#include <type_traits>

#include "fulgur/detail/status.hpp"
#include "fulgur/version.hpp"
#include "fulgur_test.hpp"

namespace {
fulgur::Status check_positive(int n) {
  FULGUR_CHECK_ARG(n > 0, "n must be positive");
  return fulgur::Status::success();
}
fulgur::Status chain(int n) {
  FULGUR_RETURN_IF_ERROR(check_positive(n));
  return fulgur::Status::not_supported("reached the end");
}

// Whether `T::ok()` compiles without an object. Status's `ok()` is the member check, so it must
// not: the static factory that used to have this name made `REQUIRE(s.ok())` always true.
template <class T, class = void>
struct has_static_ok : std::false_type {};
template <class T>
struct has_static_ok<T, std::void_t<decltype(T::ok())>> : std::true_type {};

struct WithStaticOk {
  static bool ok() { return true; }
};
static_assert(has_static_ok<WithStaticOk>::value, "the detector sees a static ok()");
static_assert(!has_static_ok<fulgur::Status>::value, "Status::ok() must not compile: ok() is the member check");
static_assert(fulgur::Status::success().ok(), "success() is ok()");
static_assert(!fulgur::Status::invalid("x").ok(), "an error is not ok()");
}  // namespace

TEST_CASE("Status carries a code and a readable reason", "[api]") {
  fulgur::Status ok;
  CHECK(ok.is_ok());
  CHECK(ok.code() == cudaSuccess);
  CHECK(std::strcmp(ok.reason(), "ok") == 0);

  auto bad = check_positive(0);
  CHECK_FALSE(bad);
  CHECK(bad.code() == cudaErrorInvalidValue);
  CHECK(std::strcmp(bad.reason(), "n must be positive") == 0);

  CHECK(chain(-1).code() == cudaErrorInvalidValue);
  CHECK(chain(3).code() == cudaErrorNotSupported);
  CHECK(std::strcmp(chain(3).reason(), "reached the end") == 0);
}

TEST_CASE("Status::success() makes a success, ok() checks one", "[api]") {
  const fulgur::Status s = fulgur::Status::success();
  CHECK(s.ok());
  CHECK(s.is_ok());
  CHECK(static_cast<bool>(s));
  CHECK(s.code() == cudaSuccess);
  CHECK(std::strcmp(s.reason(), "ok") == 0);
  CHECK(check_positive(1).ok());

  const fulgur::Status bad = check_positive(0);
  CHECK_FALSE(bad.ok());
  CHECK_FALSE(bad.is_ok());
  CHECK_FALSE(fulgur::Status::not_supported("no").ok());
  CHECK_FALSE(chain(3).ok());
}

TEST_CASE("version macros agree with the version string", "[api]") {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%d.%d.%d", FULGUR_VERSION_MAJOR, FULGUR_VERSION_MINOR,
                FULGUR_VERSION_PATCH);
  CHECK(std::string(buf) == FULGUR_VERSION_STRING);
  CHECK(FULGUR_VERSION == FULGUR_VERSION_MAJOR * 10000 + FULGUR_VERSION_MINOR * 100 + FULGUR_VERSION_PATCH);
}
