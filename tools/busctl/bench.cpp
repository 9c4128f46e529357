// busctl bench: runs shmbus_bench with the arguments as given.
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ostream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "bus/paths.h"
#include "tools/busctl/command.h"

namespace shmbus::busctl {
namespace {

std::string bench_binary() {
  if (const char* e = std::getenv("SHMBUS_BENCH_BIN"); e && *e) return e;
  auto beside = executable_beside_self({"shmbus_bench", "bench/shmbus_bench"});
  return beside.empty() ? std::string("shmbus_bench") : beside;
}

class BenchCommand final : public Command {
 public:
  explicit BenchCommand(CLI::App& app) {
    bench = app.add_subcommand("bench", "latency / throughput / idle benchmarks (runs shmbus_bench; see its --help)");
    bench->prefix_command();  // everything after `bench` goes to shmbus_bench as it is
  }

  bool parsed() const override { return bench->parsed(); }

  int run(const Context& ctx) override {
    std::ostream& out = ctx.out;
    std::ostream& err = ctx.err;
    const std::string bin = bench_binary();
    std::vector<std::string> args = {bin};
    for (const auto& a : bench->remaining()) args.push_back(a);
    if (args.size() == 1) args.push_back("--help");
    std::vector<char*> argv2;
    for (auto& a : args) argv2.push_back(a.data());
    argv2.push_back(nullptr);
    out.flush();
    ::execv(bin.c_str(), argv2.data());
    err << fmt::format("busctl: cannot run {}: {} (set SHMBUS_BENCH_BIN)\n", bin, std::strerror(errno));
    return kRuntime;
  }

 private:
  CLI::App* bench;
};

}  // namespace

std::unique_ptr<Command> bench_command(CLI::App& app) { return std::make_unique<BenchCommand>(app); }

}  // namespace shmbus::busctl
