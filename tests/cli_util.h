// busctl run in-process, as a user would type it: arguments, stdin, stdout, stderr, code.
#pragma once

#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "shmbus/bus.h"
#include "test_util.h"
#include "tools/busctl/cli.h"

namespace shmbus::test {

struct CliResult {
  int code;
  std::string out, err;
};

inline CliResult busctl(std::vector<std::string> args, const std::string& stdin_text = "") {
  args.insert(args.begin(), "busctl");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  std::istringstream in(stdin_text);
  std::ostringstream out, err;
  const int code = busctl_main(static_cast<int>(argv.size()), argv.data(), in, out, err);
  return {code, out.str(), err.str()};
}

// A test with a bus of its own, removed when it ends; run() names it to busctl.
class CliTest : public ::testing::Test {
 protected:
  void SetUp() override { bus_ = unique_bus("cli"); }
  void TearDown() override { (void)Bus::destroy(bus_); }
  CliResult run(std::vector<std::string> args, const std::string& in = "") {
    args.push_back("--bus");
    args.push_back(bus_);
    return busctl(args, in);
  }
  std::string bus_;
};

}  // namespace shmbus::test
