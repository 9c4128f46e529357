// busctl bench: runs shmbus_bench with the arguments as given.
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ostream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "bus/paths.h"
#include "tools/busctl/command.h"

namespace shmbus::busctl {
namespace {

std::string bench_binary() {
  if (const char* e = std::getenv("SHMBUS_BENCH_BIN"); e && *e) return e;
  auto beside = executable_beside_self({"shmbus_bench", "bench/shmbus_bench"});
  return beside.empty() ? std::string("shmbus_bench") : beside;
}

// The CPUs this process may run on (sched_getaffinity), which the benchmark's processes inherit.
std::vector<int> allowed_cpus() {
  std::vector<int> out;
  cpu_set_t set;
  CPU_ZERO(&set);
  const long conf = ::sysconf(_SC_NPROCESSORS_CONF);
  if (::sched_getaffinity(0, sizeof set, &set) != 0) {  // unknown: every configured CPU
    for (long c = 0; c < conf; ++c) out.push_back(static_cast<int>(c));
    return out;
  }
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) out.push_back(c);
  return out;
}

// --cpus A,B (or --cpus=A,B) refused here, before the benchmark starts, when a CPU does not
// exist or this process may not run on it: pinning to it would fail in the child.
Status check_cpus(const std::vector<std::string>& args) {
  for (std::size_t i = 0; i < args.size(); ++i) {
    std::string list;
    if (args[i] == "--cpus" && i + 1 < args.size()) list = args[i + 1];
    else if (args[i].starts_with("--cpus=")) list = args[i].substr(7);
    else continue;
    const std::vector<int> allowed = allowed_cpus();
    for (std::size_t at = 0; at <= list.size();) {
      const std::size_t comma = std::min(list.find(',', at), list.size());
      const std::string one = list.substr(at, comma - at);
      char* end = nullptr;
      const long cpu = std::strtol(one.c_str(), &end, 10);
      if (one.empty() || *end != '\0' || cpu < 0)
        return tl::unexpected(usage(fmt::format("--cpus '{}': '{}' is not a CPU number", list, one)));
      if (std::find(allowed.begin(), allowed.end(), cpu) == allowed.end())
        return tl::unexpected(usage(fmt::format("--cpus '{}': CPU {} does not exist or is not available to this process (CPUs: {})",
                                                list, cpu, fmt::join(allowed, ","))));
      at = comma + 1;
    }
  }
  return {};
}

class BenchCommand final : public Command {
 public:
  explicit BenchCommand(CLI::App& app) {
    bench = app.add_subcommand("bench", "latency / throughput / spill / idle / acks / kafka benchmarks (runs shmbus_bench; see its --help)");
    bench->prefix_command();  // everything after `bench` goes to shmbus_bench as it is
  }

  bool parsed() const override { return bench->parsed(); }

  int run(const Context& ctx) override {
    std::ostream& out = ctx.out;
    std::ostream& err = ctx.err;
    const std::string bin = bench_binary();
    std::vector<std::string> args = {bin};
    for (const auto& a : bench->remaining()) args.push_back(a);
    if (auto ok = check_cpus(args); !ok) return fail(err, ok.error());
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
