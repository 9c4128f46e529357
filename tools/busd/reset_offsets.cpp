// busd's reset_offsets: a group's committed offsets set by position, shift or time, per
// partition, planned (dry run) or executed, clamped to what exists (disk log included), as
// Kafka's kafka-consumer-groups --reset-offsets does.
#include <algorithm>
#include <charconv>

#include "bus/disk_log.h"
#include "bus/names.h"
#include "bus/offset_lookup.h"
#include "bus/topic.h"
#include "shm/process.h"
#include "tools/busd/daemon.h"

namespace shmbus::daemon {

namespace {

struct ResetPlan {
  std::string mode;        // earliest | latest | offset | shift | datetime
  std::int64_t value = 0;  // the offset, the shift, or the time (ns since the epoch)
  bool execute = false;
};

// The request's plan; the old {"to": "earliest" | "latest" | N} executes at once, as it did.
Result<ResetPlan> parse_plan(const json& req) {
  ResetPlan plan;
  if (req.contains("to") && !req.contains("mode")) {
    const std::string to = req["to"].is_string() ? req["to"].get<std::string>() : "";
    plan.execute = true;
    if (to == "earliest" || to == "latest") {
      plan.mode = to;
      return plan;
    }
    std::uint64_t off = 0;
    auto [ptr, ec] = std::from_chars(to.data(), to.data() + to.size(), off);
    if (to.empty() || ec != std::errc() || ptr != to.data() + to.size() || off > INT64_MAX)
      return make_error(Errc::kInvalidArgument, fmt::format("--to '{}': use earliest, latest or an offset", to));
    plan.mode = "offset";
    plan.value = static_cast<std::int64_t>(off);
    return plan;
  }
  plan.mode = req.value("mode", "");
  if (plan.mode != "earliest" && plan.mode != "latest" && plan.mode != "offset" && plan.mode != "shift" &&
      plan.mode != "datetime")
    return make_error(Errc::kInvalidArgument,
                      fmt::format("reset mode '{}': use earliest, latest, offset, shift or datetime", plan.mode));
  if (plan.mode != "earliest" && plan.mode != "latest") {
    if (!req.contains("value") || !req["value"].is_number_integer())
      return make_error(Errc::kInvalidArgument, fmt::format("reset mode '{}' needs an integer value", plan.mode));
    plan.value = req["value"].get<std::int64_t>();
    if (plan.mode == "offset" && plan.value < 0)
      return make_error(Errc::kInvalidArgument, fmt::format("offset {} is negative", plan.value));
  }
  if (req.contains("execute") && !req["execute"].is_boolean())
    return make_error(Errc::kInvalidArgument, "execute is true or false");
  plan.execute = req.value("execute", false);
  return plan;
}

}  // namespace

void Daemon::op_reset_offsets(Conn& c, const json& req) {
  const std::string group = req.value("group", ""), topic = req.value("topic", "");
  if (auto ok = validate_name("group", group); !ok) return reply_error(c, req, ok.error().code, ok.error().message);
  auto g = groups_.find(group);
  if (g != groups_.end() && !g->second.members.empty())
    return reply_error(c, req, Errc::kInvalidArgument,
                       fmt::format("group '{}' has {} live members: stop them before resetting its offsets", group,
                                   g->second.members.size()));
  auto t = bus_->topic(topic);
  if (!t) return reply_error(c, req, t.error().code, t.error().message);
  auto plan = parse_plan(req);
  if (!plan) return reply_error(c, req, plan.error().code, plan.error().message);
  std::vector<std::uint32_t> parts;
  if (req.contains("partitions") && !req["partitions"].is_null()) {
    if (!req["partitions"].is_array()) return reply_error(c, req, Errc::kInvalidArgument, "partitions is a list of numbers");
    for (const auto& p : req["partitions"]) {
      if (!p.is_number_unsigned() || p.get<std::uint64_t>() >= (*t)->partitions())
        return reply_error(c, req, Errc::kInvalidArgument,
                           fmt::format("topic '{}' has no partition {} (it has {})", topic, p.dump(), (*t)->partitions()));
      parts.push_back(p.get<std::uint32_t>());
    }
  } else {
    for (std::uint32_t p = 0; p < (*t)->partitions(); ++p) parts.push_back(p);
  }
  const bool spilled = (*t)->config().spill.enabled;
  json rows = json::array();
  std::vector<std::pair<std::uint32_t, std::uint64_t>> todo;
  for (std::uint32_t p : parts) {
    const shm::Ring& ring = (*t)->ring(p);
    const std::uint64_t first = earliest_offset(ring, spilled), end = ring.end_offset();
    const auto current = offsets_.get({group, topic, p});
    std::int64_t want = 0;
    if (plan->mode == "earliest") {
      want = static_cast<std::int64_t>(first);
    } else if (plan->mode == "latest") {
      want = static_cast<std::int64_t>(end);
    } else if (plan->mode == "offset") {
      want = plan->value;
    } else if (plan->mode == "shift") {
      if (!current)
        return reply_error(c, req, Errc::kInvalidArgument,
                           fmt::format("cannot shift the offset of {}-{}: group '{}' has no committed offset there", topic,
                                       p, group));
      if (__builtin_add_overflow(static_cast<std::int64_t>(*current), plan->value, &want))
        want = plan->value > 0 ? INT64_MAX : INT64_MIN;
    } else {
      auto at = offset_for_time(spilled ? disklog::partition_dir(paths_.state_dir, topic, p) : std::string(), ring,
                                plan->value);
      if (!at) return reply_error(c, req, at.error().code, at.error().message);
      want = static_cast<std::int64_t>(*at);
    }
    // Clamped to what exists, as Kafka does: below the start is the start, past the end the end.
    const std::uint64_t target = want < static_cast<std::int64_t>(first) ? first
                                 : static_cast<std::uint64_t>(want) > end ? end
                                                                          : static_cast<std::uint64_t>(want);
    rows.push_back({{"topic", topic}, {"partition", p}, {"current", current ? json(*current) : json(nullptr)},
                    {"target", target}, {"earliest", first}, {"end", end}, {"clamped", target != static_cast<std::uint64_t>(want)}});
    todo.push_back({p, target});
  }
  json out{{"ok", true}, {"group", group}, {"executed", plan->execute}, {"partitions", rows}};
  if (!plan->execute) return reply(c, req, out);
  for (const auto& [p, off] : todo) offsets_.put({group, topic, p}, off);
  if (auto ok = offsets_.flush(); !ok) return reply_error(c, req, ok.error().code, ok.error().message);
  json gate_errors = json::array();
  for (const auto& [p, off] : todo) {
    update_gate(group, {topic, p});
    if (auto why = gate_error(group, {topic, p})) gate_errors.push_back(*why);
  }
  // The operator just set them: the group's offsets are fresh, its retention clock starts again.
  if (g == groups_.end() || g->second.members.empty()) empty_since_ns_[group] = shm::realtime_ns();
  publish_group(group);
  log(fmt::format("group '{}': offsets of topic '{}' reset ({}) by pid {}", group, topic, plan->mode, c.pid));
  if (!gate_errors.empty()) out["gate_errors"] = gate_errors;
  return reply(c, req, out);
}

}  // namespace shmbus::daemon
