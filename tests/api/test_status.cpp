#include <cstring>

#include "fulgur/detail/status.hpp"
#include "fulgur/version.hpp"
#include "fulgur_test.hpp"

namespace {
fulgur::Status check_positive(int n) {
  FULGUR_CHECK_ARG(n > 0, "n must be positive");
  return fulgur::Status::ok();
}
fulgur::Status chain(int n) {
  FULGUR_RETURN_IF_ERROR(check_positive(n));
  return fulgur::Status::not_supported("reached the end");
}
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

TEST_CASE("version macros agree with the version string", "[api]") {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%d.%d.%d", FULGUR_VERSION_MAJOR, FULGUR_VERSION_MINOR,
                FULGUR_VERSION_PATCH);
  CHECK(std::string(buf) == FULGUR_VERSION_STRING);
  CHECK(FULGUR_VERSION == FULGUR_VERSION_MAJOR * 10000 + FULGUR_VERSION_MINOR * 100 + FULGUR_VERSION_PATCH);
}
