// busctl top: rates, lag and fill from two looks at a bus.
#include "tools/busctl/top.h"

#include <csignal>
#include <thread>
#include "tools/busctl/command.h"
#include <nlohmann/json.hpp>

#include <chrono>
#include <map>

#include <fmt/format.h>

#include "bus/group_client.h"
#include "shm/process.h"

namespace shmbus {

using json = nlohmann::json;

const char* retention_name(RetentionMode r) { return r == RetentionMode::kBlock ? "block" : "overwrite"; }
const char* fsync_name(FsyncPolicy f) { return f == FsyncPolicy::kNever ? "never" : f == FsyncPolicy::kAlways ? "always" : "interval"; }
const char* spill_state_name(std::uint32_t s) { return s == 1 ? "spilling" : s == 2 ? "error" : "waiting"; }

nlohmann::json topic_json(const TopicInfo& t) {
  nlohmann::json j = {{"name", t.name},
            {"partitions", t.config.partitions},
            {"capacity", t.config.capacity},
            {"max_record", t.config.max_record},
            {"retention", retention_name(t.config.retention)},
            {"claim_timeout_ms", t.config.claim_timeout_ms},
            {"shm_bytes", t.shm_bytes},
            {"created_ns", t.created_ns},
            {"spill", nullptr}};
  if (t.config.spill.enabled)
    j["spill"] = {{"retention_bytes", t.config.spill.retention_bytes},
                  {"retention_ms", t.config.spill.retention_ms},
                  {"segment_bytes", t.config.spill.segment_bytes},
                  {"fsync", fsync_name(t.config.spill.fsync)},
                  {"fsync_interval_ms", t.config.spill.fsync_interval_ms}};
  if (!t.partitions.empty()) {
    nlohmann::json parts = nlohmann::json::array();
    for (const auto& p : t.partitions)
      parts.push_back({{"partition", p.partition},
                       {"start_offset", p.start_offset},
                       {"end_offset", p.end_offset},
                       {"bytes_used", p.bytes_used},
                       {"capacity", p.capacity},
                       {"writers", p.writers},
                       {"gates", p.gates},
                       {"dead_claims_reclaimed", p.dead_claims_reclaimed},
                       {"claims_timed_out", p.claims_timed_out},
                       {"late_commits_refused", p.late_commits_refused},
                       {"waiters_reaped", p.waiters_reaped},
                       {"gates_reaped", p.gates_reaped}});
    if (t.config.spill.enabled)
      for (std::size_t i = 0; i < t.partitions.size(); ++i) {
        const auto& p = t.partitions[i];
        parts[i]["disk"] = {{"start_offset", p.disk_start_offset},
                            {"end_offset", p.disk_end_offset},
                            {"bytes", p.disk_bytes},
                            {"lag", p.end_offset > p.disk_end_offset ? p.end_offset - p.disk_end_offset : 0},
                            {"lost", p.spill_lost},
                            {"state", spill_state_name(p.spill_state)}};
      }
    j["partition_info"] = parts;
  }
  return j;
}


TopSample top_sample(Bus& bus) {
  TopSample s;
  s.mono_ns = shm::monotonic_ns();
  for (const auto& listed : bus.list_topics()) {
    auto t = bus.describe_topic(listed.name);
    if (t) s.topics.push_back(topic_json(*t));  // else deleted meanwhile
  }
  auto conn = BusdConnection::connect(bus.name(), std::chrono::milliseconds(500), /*autostart=*/false);
  if (!conn) {
    s.busd = {{"running", false}, {"problem", conn.error().message}};
    return s;
  }
  auto st = (*conn)->request({{"op", "status"}}, std::chrono::seconds(2));
  if (!st) {
    s.busd = {{"running", false}, {"problem", st.error().message}};
    return s;
  }
  s.busd = *st;
  s.busd["running"] = true;
  auto list = (*conn)->request({{"op", "group_list"}}, std::chrono::seconds(2));
  if (list && list->contains("groups"))
    for (const auto& g : (*list)["groups"]) {
      auto d = (*conn)->request({{"op", "group_describe"}, {"group", g.value("group", "")}}, std::chrono::seconds(2));
      if (!d) continue;
      json one = *d;
      one["group"] = g.value("group", "");
      s.groups.push_back(one);
    }
  return s;
}

namespace {

double per_second(std::uint64_t before, std::uint64_t after, double seconds) {
  return after > before && seconds > 0 ? static_cast<double>(after - before) / seconds : 0.0;
}

}  // namespace

json top_frame(const TopSample& before, const TopSample& after) {
  const double secs = static_cast<double>(after.mono_ns - before.mono_ns) / 1e9;
  std::map<std::pair<std::string, std::uint32_t>, std::uint64_t> ends, committed;
  for (const auto& t : before.topics)
    for (const auto& p : t["partition_info"]) ends[{t["name"], p["partition"]}] = p["end_offset"];
  for (const auto& g : before.groups)
    for (const auto& p : g.value("partitions", json::array()))
      if (p["committed"].is_number_unsigned())
        committed[{g["group"].get<std::string>() + "\n" + p["topic"].get<std::string>(), p["partition"]}] = p["committed"];

  json frame = {{"interval_ms", static_cast<std::uint64_t>(secs * 1000)}, {"busd", after.busd}};
  json topics = json::array();
  for (const auto& t : after.topics) {
    json parts = json::array();
    double rate = 0;
    for (auto p : t["partition_info"]) {
      const std::string name = t["name"];
      auto it = ends.find({name, p["partition"]});
      const double r = it == ends.end() ? 0.0 : per_second(it->second, p["end_offset"], secs);
      p["produce_rate"] = r;
      rate += r;
      const std::uint64_t cap = p["capacity"];
      p["fill_pct"] = cap ? 100.0 * static_cast<double>(p["bytes_used"].get<std::uint64_t>()) / static_cast<double>(cap) : 0.0;

      parts.push_back(p);
    }
    json one = t;
    one["partition_info"] = parts;
    one["produce_rate"] = rate;
    topics.push_back(one);
  }
  frame["topics"] = topics;
  json groups = json::array();
  for (const auto& g : after.groups) {
    json parts = json::array();
    double rate = 0;
    std::uint64_t lag = 0;
    for (auto p : g.value("partitions", json::array())) {
      const std::string key = g["group"].get<std::string>() + "\n" + p["topic"].get<std::string>();
      auto it = committed.find({key, p["partition"]});
      const double r = it != committed.end() && p["committed"].is_number_unsigned() ? per_second(it->second, p["committed"], secs) : 0.0;
      p["consume_rate"] = r;
      rate += r;
      if (p["lag"].is_number_unsigned()) lag += p["lag"].get<std::uint64_t>();
      parts.push_back(p);
    }
    groups.push_back({{"group", g["group"]},
                      {"state", g.value("state", "")},
                      {"generation", g.value("generation", 0ull)},
                      {"members", g.value("members", json::array()).size()},
                      {"lag", lag},
                      {"consume_rate", rate},
                      {"partitions", parts}});
  }
  frame["groups"] = groups;
  return frame;
}

std::string top_render(const json& f) {
  std::string out;
  const json& b = f["busd"];
  if (b.value("running", false))
    out += fmt::format("busd pid {}  up {:.0f} s  groups {}  members {}  (rates over {} ms)\n", b.value("pid", 0),
                       b.value("uptime_ms", 0.0) / 1000, b.value("groups", 0), b.value("members", 0), f["interval_ms"].get<std::uint64_t>());
  else
    out += fmt::format("busd not running ({}): groups not shown  (rates over {} ms)\n", b.value("problem", "?"),
                       f["interval_ms"].get<std::uint64_t>());
  out += fmt::format("\n{:<24} {:>4} {:>14} {:>12} {:>6} {:>4} {:>4} {:>10} {:>9}\n", "TOPIC", "PART", "END", "PRODUCE/s", "FILL%",
                     "WRTR", "GATE", "SPILL-LAG", "SPILL");
  for (const auto& t : f["topics"])
    for (const auto& p : t["partition_info"]) {
      const bool spill = !t["spill"].is_null();
      out += fmt::format("{:<24} {:>4} {:>14} {:>12.0f} {:>6.1f} {:>4} {:>4} {:>10} {:>9}\n", t["name"].get<std::string>(),
                         p["partition"].get<std::uint32_t>(), p["end_offset"].get<std::uint64_t>(), p["produce_rate"].get<double>(),
                         p["fill_pct"].get<double>(), p["writers"].get<std::uint32_t>(), p["gates"].get<std::uint32_t>(),
                         spill ? std::to_string(p["disk"]["lag"].get<std::uint64_t>()) : "-",
                         spill ? p["disk"]["state"].get<std::string>() : "-");
    }
  if (!f["groups"].empty()) {
    out += fmt::format("\n{:<24} {:<12} {:>7} {:>10} {:>12}\n", "GROUP", "STATE", "MEMBERS", "LAG", "CONSUME/s");
    for (const auto& g : f["groups"])
      out += fmt::format("{:<24} {:<12} {:>7} {:>10} {:>12.0f}\n", g["group"].get<std::string>(), g["state"].get<std::string>(),
                         g["members"].get<std::size_t>(), g["lag"].get<std::uint64_t>(), g["consume_rate"].get<double>());
  }
  return out;
}

namespace busctl {
namespace {

using json = nlohmann::json;

class TopCommand final : public Command {
 public:
  explicit TopCommand(CLI::App& app) {
    top = sub(&app, "top", "live view: topics, partitions, produce/consume rates, lag, spill, busd health");
    top->add_flag("--once", top_once, "print one frame (two looks --interval-ms apart) and exit");
    top->add_option("--interval-ms", top_interval, "time between looks (default 1000)");
    top->footer("Examples:\n  busctl top\n  busctl top --once --json | jq '.groups[].lag'");
  }

  bool parsed() const override { return top->parsed(); }

  int run(const Context& ctx) override {
    const Globals& g = ctx.g;
    std::ostream& out = ctx.out;
    std::ostream& err = ctx.err;
    if (top_interval < 10 || top_interval > 3'600'000)
      return fail(err, Error{Errc::kInvalidArgument, "--interval-ms must be from 10 to 3600000"});
    auto bus = attach(g, false);
    if (!bus) return fail(err, bus.error());
    catch_stop_signals();
    TopSample before = top_sample(**bus);
    for (bool first = true; !g_stop; first = false) {
      for (std::uint64_t slept = 0; slept < top_interval && !g_stop; slept += 10) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      if (g_stop && !first) break;
      TopSample after = top_sample(**bus);
      json frame = top_frame(before, after);
      frame["bus"] = (*bus)->name();
      if (g.json) out << frame.dump() << "\n";
      // Redraw in place on a terminal; elsewhere (a pipe, a file) frames follow each other, plain.
      else if (!top_once && ctx.out_is_terminal) out << "\x1b[H\x1b[2J" << fmt::format("bus {}\n", (*bus)->name()) << top_render(frame);
      else out << (first ? "" : "\n") << fmt::format("bus {}\n", (*bus)->name()) << top_render(frame);
      out.flush();
      if (top_once || !out) break;
      before = std::move(after);
    }
    return kOk;
  }

 private:
  CLI::App* top;
  bool top_once = false;
  std::uint64_t top_interval = 1000;
};

}  // namespace

std::unique_ptr<Command> top_command(CLI::App& app) { return std::make_unique<TopCommand>(app); }

}  // namespace busctl

}  // namespace shmbus
