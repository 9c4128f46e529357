// Fuzzes busctl's argument parsing and its size/count parsers. The input is split on NUL
// bytes into arguments. Commands that would create or change anything (create, produce,
// delete, bench, doctor --fix, --bus) are left out: against a bus that does not exist,
// every other command must end in a message and an exit code, never a crash.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include "tools/busctl/cli.h"
#include "tools/busctl/units.h"

using namespace shmbus;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const bool env = [] {
    ::setenv("SHMBUS_NO_AUTOSTART", "1", 1);
    ::setenv("SHMBUS_BUS", ("fuzzargs" + std::to_string(::getpid())).c_str(), 1);
    ::setenv("SHMBUS_DIR", ("/tmp/shmbus_fuzz_args_" + std::to_string(::getpid())).c_str(), 1);
    return true;
  }();
  (void)env;
  const std::string input(reinterpret_cast<const char*>(data), size);
  (void)parse_size(input);
  (void)parse_count("--count", input);
  std::vector<std::string> args = {"busctl"};
  std::string cur;
  for (char c : input) {
    if (c == '\0') {
      args.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  args.push_back(cur);
  if (args.size() > 24) return 0;
  for (const auto& a : args)
    if (a == "create" || a == "produce" || a == "delete" || a == "bench" || a == "--fix" || a.find("--bus") == 0)
      return 0;  // would touch real state
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  std::istringstream in;
  std::ostringstream out, err;
  const int code = busctl_main(static_cast<int>(argv.size()), argv.data(), in, out, err);
  if (code < 0 || code > 2) __builtin_trap();
  return 0;
}
