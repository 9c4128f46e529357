// busctl as a function (tests and the fuzzer call it too); tools/busctl/main.cpp only calls this.
#pragma once

#include <iosfwd>

namespace shmbus {

// Exit codes: 0 ok, 1 runtime error, 2 usage error.
int busctl_main(int argc, const char* const* argv, std::istream& in, std::ostream& out, std::ostream& err);

}  // namespace shmbus
