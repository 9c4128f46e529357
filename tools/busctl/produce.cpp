// busctl produce: one record per line of stdin.
#include <cstdint>
#include <istream>
#include <optional>
#include <ostream>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "shmbus/producer.h"
#include "tools/busctl/command.h"
#include "tools/busctl/units.h"

namespace shmbus::busctl {
namespace {

using json = nlohmann::json;

class ProduceCommand final : public Command {
 public:
  explicit ProduceCommand(CLI::App& app) {
    produce = sub(&app, "produce", "send one record per line of stdin");
    produce->add_option("topic", p_topic, "topic")->required();
    produce->add_option("--partition", p_partition, "partition (default: by key, else sticky)");
    produce->add_option("--key-separator", p_sep, "split each line into key<SEP>value")->each([&](const std::string&) { p_have_sep = true; });
    produce->footer("Examples:\n  printf 'k1:v1\\nk2:v2\\n' | busctl produce orders --key-separator :\n  seq 1 1000 | busctl produce orders --partition 0");
  }

  bool parsed() const override { return produce->parsed(); }

  int run(const Context& ctx) override {
    const Globals& g = ctx.g;
    std::ostream& out = ctx.out;
    std::ostream& err = ctx.err;
    std::istream& in = ctx.in;
    std::optional<std::uint32_t> partition;
    if (!p_partition.empty()) {
      auto p = parse_count("--partition", p_partition);
      if (!p) return fail(err, p.error());
      if (*p > UINT32_MAX) return fail(err, Error{Errc::kInvalidArgument, fmt::format("--partition {} is out of range", *p)});
      partition = static_cast<std::uint32_t>(*p);
    }
    if (p_have_sep && p_sep.empty()) return fail(err, Error{Errc::kInvalidArgument, "--key-separator must not be empty"});
    auto bus = attach(g, false);
    if (!bus) return fail(err, bus.error());
    auto producer = Producer::create(*bus);
    if (!producer) return fail(err, producer.error());
    std::string line;
    std::uint64_t n = 0, lineno = 0;
    while (std::getline(in, line)) {
      ++lineno;
      Message m;
      std::string_view v = line;
      if (p_have_sep) {
        const auto at = line.find(p_sep);
        if (at == std::string::npos) {
          err << fmt::format("busctl: line {} has no key separator '{}'; {} records were sent before it\n", lineno, p_sep, n);
          return kRuntime;
        }
        m.key = as_bytes(std::string_view(line).substr(0, at));
        v = std::string_view(line).substr(at + p_sep.size());
      }
      m.value = as_bytes(v);
      auto r = producer->send(p_topic, m, partition);
      if (!r) {
        err << fmt::format("busctl: line {}: {}; {} records were sent before it\n", lineno, r.error().message, n);
        return r.error().code == Errc::kInvalidArgument ? kUsage : kRuntime;
      }
      ++n;
    }
    if (g.json) out << json{{"topic", p_topic}, {"records", n}}.dump() << "\n";
    return kOk;
  }

 private:
  CLI::App* produce;
  std::string p_topic, p_sep, p_partition;
  bool p_have_sep = false;
};

}  // namespace

std::unique_ptr<Command> produce_command(CLI::App& app) { return std::make_unique<ProduceCommand>(app); }

}  // namespace shmbus::busctl
