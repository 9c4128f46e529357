// busctl status and busctl group (list, describe, delete, reset-offsets): questions to busd.
#include <charconv>
#include <chrono>
#include <cstdint>
#include <ostream>
#include <sstream>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bus/group_client.h"
#include "shm/process.h"
#include "tools/busctl/command.h"
#include "tools/time_text.h"

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
    g_delete = sub(group_cmd, "delete", "delete a group: its committed offsets and the gates by which it holds producers");
    g_delete->add_option("name", g_name, "group")->required();
    g_delete->footer("Refused while the group has live members (stop them first), as Kafka's --delete.\n"
                     "Example:\n  busctl group delete billing");
    g_reset = sub(group_cmd, "reset-offsets",
                  "plan (default) or --execute new committed offsets of a group (refused while it has live members)");
    g_reset->add_option("name", g_name, "group")->required();
    g_reset->add_option("--topic", g_topic, "TOPIC or TOPIC:P,P,...  (only those partitions)")->required();
    constexpr const char* kTarget = "Target (exactly one)";
    g_reset->add_flag("--to-earliest", r_earliest, "the oldest offset still readable (a spilled topic's disk log included)")
        ->group(kTarget);
    g_reset->add_flag("--to-latest", r_latest, "the end: skip everything not consumed yet")->group(kTarget);
    g_reset->add_option("--to-offset", r_offset, "this offset (clamped to what exists)")->group(kTarget);
    g_reset->add_option("--shift-by", r_shift, "the committed offset plus N (N may be negative; clamped)")->group(kTarget);
    g_reset->add_option("--to-datetime", r_datetime,
                        "the first record at or after YYYY-MM-DDTHH:MM:SS[.sss][Z|+hh:mm] (local time without a zone)")
        ->group(kTarget);
    g_reset->add_option("--by-duration", r_duration, "the first record at or after now minus DURATION (30m, 2h, 7d, PT2H)")
        ->group(kTarget);
    g_reset->add_option("--to", r_old)->group("");  // the old spelling: refused, naming the new ones
    g_reset->add_flag("--dry-run", r_dry, "print the plan, change nothing (the default)");
    g_reset->add_flag("--execute", r_execute, "apply the plan");
    g_reset->footer("Offsets are clamped to what exists (earliest .. end), as Kafka does.\nExamples:\n"
                    "  busctl group reset-offsets billing --topic orders --to-earliest            # the plan\n"
                    "  busctl group reset-offsets billing --topic orders:0,2 --to-latest --execute\n"
                    "  busctl group reset-offsets billing --topic orders --by-duration 1h --execute");
  }

  bool parsed() const override { return status->parsed() || group_cmd->parsed(); }

  int run(const Context& ctx) override {
    const Globals& g = ctx.g;
    std::ostream& out = ctx.out;
    std::ostream& err = ctx.err;
    // Usage errors before busd is asked (or started).
    Result<json> reset = g_reset->parsed() ? reset_request() : Result<json>(json());
    if (!reset) return fail(err, reset.error());
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
    else if (g_delete->parsed()) req = {{"op", "group_delete"}, {"group", g_name}};
    else req = *reset;
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
    else if (g_delete->parsed()) out << fmt::format("group {} deleted\n", g_name);
    else print_reset(out, err, j);
    return j.contains("gate_errors") ? kRuntime : kOk;
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
        out << fmt::format("{} listening on {}{}\n", kind, l.value("address", "?"),
                           kind == "metrics" ? " (GET /metrics)"
                                             : fmt::format(" (Kafka protocol, {} connections)", l.value("connections", 0)));
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
      // A Kafka-protocol member (through busd's Kafka gateway) has no pid here: "kafka".
      const std::string pid = m.value("kind", "native") == "kafka" ? "kafka" : std::to_string(m["pid"].get<int>());
      out << fmt::format("{:<36} {:>8} {:<16} {}\n", m["member_id"].get<std::string>(), pid, m["name"].get<std::string>(), parts);
    }
    out << fmt::format("{:<24} {:>9} {:>12} {:>12} {:>10}  {}\n", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "MEMBER");
    for (const auto& p : j["partitions"])
      out << fmt::format("{:<24} {:>9} {:>12} {:>12} {:>10}  {}\n", p["topic"].get<std::string>(), p["partition"].get<int>(),
                         p["committed"].is_null() ? "-" : p["committed"].dump(), p["end_offset"].get<std::uint64_t>(),
                         p["lag"].is_null() ? "-" : p["lag"].dump(), p["member_id"].is_null() ? "-" : p["member_id"].get<std::string>());
  }

  // The reset-offsets request from the options; usage errors name what was wrong.
  Result<json> reset_request() {
    if (!r_old.empty())
      return tl::unexpected(usage("--to is gone: use --to-earliest, --to-latest or --to-offset N (or --shift-by, --to-datetime, "
                   "--by-duration), and --execute to apply the plan"));
    if (r_dry && r_execute) return tl::unexpected(usage("--dry-run and --execute exclude each other"));
    const int targets = r_earliest + r_latest + !r_offset.empty() + !r_shift.empty() + !r_datetime.empty() + !r_duration.empty();
    if (targets != 1)
      return tl::unexpected(usage("give exactly one of --to-earliest, --to-latest, --to-offset, --shift-by, --to-datetime, --by-duration"));
    json req{{"op", "reset_offsets"}, {"group", g_name}, {"execute", r_execute}};
    const auto colon = g_topic.find(':');
    req["topic"] = g_topic.substr(0, colon);
    if (colon != std::string::npos) {
      json parts = json::array();
      std::stringstream list(g_topic.substr(colon + 1));
      for (std::string p; std::getline(list, p, ',');) {
        std::uint32_t n = 0;
        auto [ptr, ec] = std::from_chars(p.data(), p.data() + p.size(), n);
        if (p.empty() || ec != std::errc() || ptr != p.data() + p.size())
          return tl::unexpected(usage(fmt::format("--topic '{}': partitions are numbers, as in orders:0,2", g_topic)));
        parts.push_back(n);
      }
      if (parts.empty()) return tl::unexpected(usage(fmt::format("--topic '{}': no partition after ':'", g_topic)));
      if (g_topic.back() == ',')  // getline drops an empty last entry: "t:0," would move partition 0 alone
        return tl::unexpected(usage(fmt::format("--topic '{}': a partition is missing after the last ','", g_topic)));
      req["partitions"] = parts;
    }
    if (r_earliest) req["mode"] = "earliest";
    else if (r_latest) req["mode"] = "latest";
    else if (!r_offset.empty() || !r_shift.empty()) {
      const std::string& text = r_offset.empty() ? r_shift : r_offset;
      std::int64_t v = 0;
      auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
      if (text.empty() || ec != std::errc() || ptr != text.data() + text.size() || (!r_offset.empty() && v < 0))
        return tl::unexpected(usage(fmt::format("{} '{}': {}", r_offset.empty() ? "--shift-by" : "--to-offset", text,
                                 r_offset.empty() ? "a whole number, maybe negative" : "an offset, 0 or more")));
      req["mode"] = r_offset.empty() ? "shift" : "offset";
      req["value"] = v;
    } else {
      auto ts = !r_datetime.empty() ? timetext::parse_datetime_ns(r_datetime) : timetext::parse_duration_ns(r_duration);
      if (!ts) return tl::unexpected(usage(fmt::format("{}: {}", r_datetime.empty() ? "--by-duration" : "--to-datetime", ts.error().message)));
      req["mode"] = "datetime";
      req["value"] = r_datetime.empty() ? shm::realtime_ns() - *ts : *ts;
    }
    return req;
  }

  void print_reset(std::ostream& out, std::ostream& err, json& j) {
    out << fmt::format("{:<24} {:<24} {:>9} {:>14} {:>14}\n", "GROUP", "TOPIC", "PARTITION", "CURRENT", "NEW-OFFSET");
    for (const auto& p : j["partitions"])
      out << fmt::format("{:<24} {:<24} {:>9} {:>14} {:>14}{}\n", g_name, p["topic"].get<std::string>(), p["partition"].get<int>(),
                         p["current"].is_null() ? "-" : p["current"].dump(), p["target"].get<std::uint64_t>(),
                         p["clamped"].get<bool>() ? fmt::format("  (clamped to {}..{})", p["earliest"].get<std::uint64_t>(),
                                                                p["end"].get<std::uint64_t>())
                                                  : "");
    if (!j["executed"].get<bool>()) out << "dry run: nothing changed (add --execute to apply)\n";
    for (const auto& e : j.value("gate_errors", json::array())) err << "busctl: " << e.get<std::string>() << "\n";
  }

  CLI::App *status, *group_cmd, *g_list, *g_describe, *g_delete, *g_reset;
  std::string g_name, g_topic, r_offset, r_shift, r_datetime, r_duration, r_old;
  bool r_earliest = false, r_latest = false, r_dry = false, r_execute = false;
};

}  // namespace

std::unique_ptr<Command> group_commands(CLI::App& app) { return std::make_unique<GroupCommands>(app); }

}  // namespace shmbus::busctl
