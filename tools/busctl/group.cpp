// busctl status and busctl group (list, describe, reset-offsets): questions to busd.
#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bus/group_client.h"
#include "tools/busctl/command.h"

namespace shmbus::busctl {
namespace {

using json = nlohmann::json;

class GroupCommands final : public Command {
 public:
  explicit GroupCommands(CLI::App& app) {
    status = sub(&app, "status", "busd: pid, uptime, version, socket, state dir, listeners (does not start it)");
    status->footer("Example:\n  busctl status --json");
    group_cmd = sub(&app, "group", "consumer groups (starts busd if it is not running)");
    group_cmd->require_subcommand(1);
    g_list = sub(group_cmd, "list", "list groups");
    g_list->footer("Example:\n  busctl group list");
    g_describe = sub(group_cmd, "describe", "members, assignment, committed offsets and lag");
    g_describe->add_option("name", g_name, "group")->required();
    g_describe->footer("Example:\n  busctl group describe billing   # members, partitions, committed offsets, lag");
    g_reset = sub(group_cmd, "reset-offsets", "set a group's committed offsets (refused while it has live members)");
    g_reset->add_option("name", g_name, "group")->required();
    g_reset->add_option("--topic", g_topic, "topic")->required();
    g_reset->add_option("--to", g_to, "earliest | latest | OFFSET")->required();
    g_reset->footer("Example:\n  busctl group reset-offsets billing --topic orders --to earliest");
  }

  bool parsed() const override { return status->parsed() || group_cmd->parsed(); }

  int run(const Context& ctx) override {
    const Globals& g = ctx.g;
    std::ostream& out = ctx.out;
    std::ostream& err = ctx.err;
    auto bus = attach(g, false);
    if (!bus) return fail(err, bus.error());
    auto conn = BusdConnection::connect((*bus)->name(), std::chrono::seconds(5), /*autostart=*/!status->parsed());
    if (!conn) {
      if (status->parsed() && conn.error().code == Errc::kNotFound) {
        if (g.json) out << json{{"running", false}, {"bus", (*bus)->name()}}.dump() << "\n";
        else out << fmt::format("busd is not running for bus {}\n", (*bus)->name());
        return kRuntime;
      }
      return fail(err, conn.error());
    }
    json req;
    if (status->parsed()) req = {{"op", "status"}};
    else if (g_list->parsed()) req = {{"op", "group_list"}};
    else if (g_describe->parsed()) req = {{"op", "group_describe"}, {"group", g_name}};
    else req = {{"op", "reset_offsets"}, {"group", g_name}, {"topic", g_topic}, {"to", g_to}};
    auto r = (*conn)->request(req, std::chrono::seconds(5));
    if (!r) return fail(err, r.error());
    json j = *r;
    j.erase("re");
    j.erase("ok");
    if (g.json) {
      if (status->parsed()) j["running"] = true;
      out << (g_list->parsed() ? j["groups"] : j).dump() << "\n";
      return kOk;
    }
    if (status->parsed()) print_status(out, j);
    else if (g_list->parsed()) print_list(out, j);
    else if (g_describe->parsed()) print_describe(out, j);
    else print_reset(out, j);
    return kOk;
  }

 private:
  void print_status(std::ostream& out, json& j) {
    out << fmt::format("busd pid {}  version {}  protocol {}  uptime {:.1f} s\nbus {}  socket {}\nstate dir {}\ngroups {}  members {}\n",
                       j["pid"].get<int>(), j["version"].get<std::string>(), j["protocol"].get<int>(),
                       j["uptime_ms"].get<double>() / 1000, j["bus"].get<std::string>(), j["socket"].get<std::string>(),
                       j["state_dir"].get<std::string>(), j["groups"].get<int>(), j["members"].get<int>());
    // TCP listeners (busctl metrics start): what each serves on.
    if (j.contains("listeners") && j["listeners"].is_object())
      for (const auto& [kind, l] : j["listeners"].items())
        out << fmt::format("{} listening on {}{}\n", kind, l.value("address", "?"), kind == "metrics" ? " (GET /metrics)" : "");
  }

  void print_list(std::ostream& out, json& j) {
    out << fmt::format("{:<32} {:>12} {:>8} {:>10}\n", "GROUP", "STATE", "MEMBERS", "GENERATION");
    for (const auto& row : j["groups"])
      out << fmt::format("{:<32} {:>12} {:>8} {:>10}\n", row["group"].get<std::string>(), row["state"].get<std::string>(),
                         row["members"].get<int>(), row["generation"].get<std::uint64_t>());
  }

  void print_describe(std::ostream& out, json& j) {
    out << fmt::format("group {}  state {}  generation {}  assignor {}\n", g_name, j["state"].get<std::string>(),
                       j["generation"].get<std::uint64_t>(), j.value("assignor", "-"));
    out << fmt::format("{:<36} {:>8} {:<16} {}\n", "MEMBER", "PID", "NAME", "PARTITIONS");
    for (const auto& m : j["members"]) {
      std::string parts;
      for (const auto& tp : m["partitions"]) parts += fmt::format("{}{}-{}", parts.empty() ? "" : ",", tp[0].get<std::string>(), tp[1].get<int>());
      out << fmt::format("{:<36} {:>8} {:<16} {}\n", m["member_id"].get<std::string>(), m["pid"].get<int>(),
                         m["name"].get<std::string>(), parts);
    }
    out << fmt::format("{:<24} {:>9} {:>12} {:>12} {:>10}  {}\n", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "MEMBER");
    for (const auto& p : j["partitions"])
      out << fmt::format("{:<24} {:>9} {:>12} {:>12} {:>10}  {}\n", p["topic"].get<std::string>(), p["partition"].get<int>(),
                         p["committed"].is_null() ? "-" : p["committed"].dump(), p["end_offset"].get<std::uint64_t>(),
                         p["lag"].is_null() ? "-" : p["lag"].dump(), p["member_id"].is_null() ? "-" : p["member_id"].get<std::string>());
  }

  void print_reset(std::ostream& out, json& j) {
    for (const auto& p : j["partitions"])
      out << fmt::format("{} {}-{} committed offset now {}\n", g_name, p["topic"].get<std::string>(), p["partition"].get<int>(),
                         p["committed"].get<std::uint64_t>());
  }

  CLI::App *status, *group_cmd, *g_list, *g_describe, *g_reset;
  std::string g_name, g_topic, g_to;
};

}  // namespace

std::unique_ptr<Command> group_commands(CLI::App& app) { return std::make_unique<GroupCommands>(app); }

}  // namespace shmbus::busctl
