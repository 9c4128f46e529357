// busctl mirror run|check|status: topics mirrored between the bus and a Kafka cluster
// (tools/mirror/, docs/mirror.md). `run` is the long-running mirror process.
#include <ostream>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bus/names.h"
#include "tools/busctl/command.h"
#include "tools/mirror/config.h"
#include "tools/mirror/mirror.h"
#include "tools/mirror/status.h"

namespace shmbus::busctl {
namespace {

using json = nlohmann::json;

class MirrorCommands final : public Command {
 public:
  explicit MirrorCommands(CLI::App& app) {
    mirror = sub(&app, "mirror", "mirror topics between the bus and a Kafka cluster (docs/mirror.md)");
    mirror->require_subcommand(1);
    run_cmd = sub(mirror, "run", "run the mirrors of a configuration file until SIGTERM or SIGINT");
    run_cmd->add_option("--config", config, "the mirrors' JSON configuration (docs/mirror.md)")->required();
    run_cmd->footer("Example:\n  busctl mirror run --config /etc/shmbus/mirror.json");
    check = sub(mirror, "check", "check a configuration file and print the mirrors it defines");
    check->add_option("--config", config, "the mirrors' JSON configuration")->required();
    check->footer("Example:\n  busctl mirror check --config mirror.json");
    status = sub(mirror, "status", "each mirror's state, lag, rate and last error (from its status file)");
    status->footer("Example:\n  busctl mirror status --json");
  }

  bool parsed() const override { return mirror->parsed(); }

  int run(const Context& ctx) override {
    if (status->parsed()) return show_status(ctx);
    auto cfg = mirror::load_config(config);
    if (!cfg) return fail(ctx.err, cfg.error());
    // --bus wins over the file's "bus", which wins over SHMBUS_BUS.
    const std::string bus = !ctx.g.bus.empty() ? ctx.g.bus : !cfg->bus.empty() ? cfg->bus : default_bus_name();
    if (check->parsed()) {
      json list = json::array();
      for (const auto& m : cfg->mirrors)
        list.push_back({{"name", m.name}, {"direction", mirror::direction_name(m.direction)}, {"bus_topic", m.bus_topic},
                        {"kafka_topic", m.kafka_topic}, {"group", m.group}});
      if (ctx.g.json) {
        ctx.out << json{{"bus", bus}, {"mirrors", list}}.dump() << "\n";
      } else {
        for (const auto& m : list)
          ctx.out << fmt::format("{} {}: bus {} topic {} {} Kafka topic {} (group {})\n", m["name"].get<std::string>(),
                                 m["direction"].get<std::string>(), bus, m["bus_topic"].get<std::string>(),
                                 m["direction"] == "out" ? "->" : "<-", m["kafka_topic"].get<std::string>(),
                                 m["group"].get<std::string>());
      }
      return kOk;
    }
    catch_stop_signals();
    auto st = mirror::run_mirrors(*cfg, bus, [] { return g_stop != 0; }, ctx.out);
    if (!st) return fail(ctx.err, st.error());
    return kOk;
  }

 private:
  int show_status(const Context& ctx) {
    const std::string bus = ctx.g.bus.empty() ? default_bus_name() : ctx.g.bus;
    if (auto v = validate_name("bus", bus); !v) return fail(ctx.err, v.error());
    auto all = mirror::read_statuses(bus);
    if (!all) return fail(ctx.err, all.error());
    if (ctx.g.json) {
      json list = json::array();
      for (const auto& s : *all) list.push_back(mirror::to_json(s));
      ctx.out << json{{"bus", bus}, {"mirrors", list}}.dump() << "\n";
      return kOk;
    }
    if (all->empty()) {
      ctx.out << fmt::format("no mirrors have run on bus {} (busctl mirror run --config FILE)\n", bus);
      return kOk;
    }
    ctx.out << fmt::format("{:<20} {:<4} {:<9} {:>10} {:>9} {:>10} {:>12}  {}\n", "MIRROR", "DIR", "STATE", "LAG", "LAG(s)",
                           "RECORDS/s", "RECORDS", "LAST ERROR");
    for (const auto& s : *all) {
      const std::string lag = s.lag_records < 0 ? "-" : std::to_string(s.lag_records);
      ctx.out << fmt::format("{:<20} {:<4} {:<9} {:>10} {:>9.1f} {:>10.0f} {:>12}  {}\n", s.name, s.direction, s.state, lag,
                             s.lag_seconds, s.records_per_s, s.records, s.last_error.empty() ? "-" : s.last_error);
    }
    return kOk;
  }

  CLI::App *mirror, *run_cmd, *check, *status;
  std::string config;
};

}  // namespace

std::unique_ptr<Command> mirror_commands(CLI::App& app) { return std::make_unique<MirrorCommands>(app); }

}  // namespace shmbus::busctl
