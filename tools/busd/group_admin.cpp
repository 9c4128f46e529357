// busd's groups over their lifetime: who their durable gates are (the name table in busd's
// segment, bus/gate_names.h), gates that could not be held, group delete, and the expiry of
// offsets of groups idle for offsets_retention.
#include <algorithm>
#include <set>

#include "bus/gate_names.h"
#include "bus/names.h"
#include "bus/topic.h"
#include "shm/process.h"
#include "shm/ring.h"
#include "tools/busd/daemon.h"

namespace shmbus::daemon {

void Daemon::group_changed(const Group& g) {
  if (g.members.empty()) empty_since_ns_.emplace(g.name, shm::realtime_ns());
  else empty_since_ns_.erase(g.name);
  publish_group(g.name);
}

void Daemon::publish_group(const std::string& name) {
  if (!names_) return;
  GroupNameEntry e;
  e.name = name;
  auto g = groups_.find(name);
  if (g != groups_.end()) {
    e.members = static_cast<std::uint32_t>(g->second.members.size());
    for (const auto& [id, m] : g->second.members)
      if (!m.kafka && e.pids.size() < kGroupNamePids) e.pids.push_back(m.pid);  // a Kafka member has no pid here
  }
  auto idle = empty_since_ns_.find(name);
  e.empty_since_ns = idle == empty_since_ns_.end() ? 0 : idle->second;
  if (!publish_group_name(names_, e))
    log(fmt::format("group '{}': busd's name table is full ({} groups): producers it holds back cannot name it", name,
                    kGroupNameSlots));
}

void Daemon::publish_known_groups() {
  // Groups of the previous busd: idle from our start until a member comes back.
  std::set<std::string> known;
  for (const auto& [k, o] : offsets_.all()) known.insert(k.group);
  for (const auto& name : known) {
    empty_since_ns_.emplace(name, started_ns_);
    publish_group(name);
  }
}

void Daemon::note_gate(const std::string& group, const TopicPartition& tp, bool held) {
  const auto key = std::make_pair(group, tp);
  if (held) {
    if (gate_failures_.erase(key))
      log(fmt::format("group '{}' {}-{}: its committed offset holds producers back again (a gate slot was free)", group,
                      tp.topic, tp.partition));
    return;
  }
  if (gate_failures_.count(key)) return;  // said once; retried every second
  const std::string why = fmt::format(
      "the block guarantee is NOT held for group '{}' on {}-{}: every one of its {} gate slots is taken (busctl topic "
      "describe {}; busctl doctor), so producers may overwrite what the group has not consumed",
      group, tp.topic, tp.partition, shm::kGateSlots, tp.topic);
  gate_failures_[key] = why;
  log(why);
}

std::optional<std::string> Daemon::gate_error(const std::string& group, const TopicPartition& tp) const {
  auto it = gate_failures_.find({group, tp});
  if (it == gate_failures_.end()) return std::nullopt;
  return it->second;
}

void Daemon::annotate_gates(json& d) {
  const std::string group = d.value("group", "");
  for (auto& row : d["partitions"]) {
    auto why = gate_error(group, {row["topic"].get<std::string>(), row["partition"].get<std::uint32_t>()});
    if (why) d["gate_errors"].push_back(*why);
    row["gate_held"] = !why.has_value();
  }
  auto idle = empty_since_ns_.find(group);
  if (idle != empty_since_ns_.end() && d["members"].empty())
    d["empty_for_ms"] = std::max<std::int64_t>(0, shm::realtime_ns() - idle->second) / 1'000'000;
}

void Daemon::retry_failed_gates() {
  if (gate_failures_.empty() || ticks_ % 50 != 0) return;
  std::vector<std::pair<std::string, TopicPartition>> again;
  for (const auto& [k, why] : gate_failures_) again.push_back(k);
  for (const auto& [group, tp] : again) update_gate(group, tp);
}

void Daemon::forget_group(const std::string& name, const std::string& why) {
  // Its gates go first: producers it held back move on at once.
  std::set<std::string> topics;
  for (const auto& [k, o] : offsets_.all())
    if (k.group == name) topics.insert(k.topic);
  const std::uint64_t key = group_gate_key(name);
  for (const auto& t : topics)
    if (auto topic = bus_->topic(t))
      for (std::uint32_t p = 0; p < (*topic)->partitions(); ++p) (void)shm::release_durable_gate((*topic)->ring(p), key);
  offsets_.erase_group(name);
  std::erase_if(dirty_gates_, [&](const auto& d) { return d.first == name; });
  std::erase_if(gate_failures_, [&](const auto& f) { return f.first.first == name; });
  if (names_) clear_group_name(names_, name);
  empty_since_ns_.erase(name);
  groups_.erase(name);
  log(fmt::format("group '{}' deleted: {}", name, why));
}

void Daemon::expire_idle_groups() {
  const std::int64_t now = shm::realtime_ns();
  const std::int64_t keep_ns = opts_.offsets_retention_ms * 1'000'000;
  std::vector<std::string> expired;
  for (const auto& [name, since] : empty_since_ns_) {
    auto g = groups_.find(name);
    if ((g == groups_.end() || g->second.members.empty()) && now - since >= keep_ns) expired.push_back(name);
  }
  for (const auto& name : expired)
    forget_group(name, fmt::format("no live member for {} ms (offsets retention {} ms): its committed offsets expired",
                                   (now - empty_since_ns_[name]) / 1'000'000, opts_.offsets_retention_ms));
}

void Daemon::op_group_delete(Conn& c, const json& req) {
  const std::string group = req.value("group", "");
  if (auto ok = validate_name("group", group); !ok) return reply_error(c, req, ok.error().code, ok.error().message);
  bool known = groups_.count(group) > 0;
  for (const auto& [k, o] : offsets_.all()) known |= k.group == group;
  if (!known) return reply_error(c, req, Errc::kNotFound, fmt::format("group '{}' does not exist on bus '{}'", group, bus_->name()));
  auto g = groups_.find(group);
  if (g != groups_.end() && !g->second.members.empty()) {
    std::string pids;
    for (const auto& [id, m] : g->second.members) pids += fmt::format("{}{}", pids.empty() ? "" : ", ", m.pid);
    return reply_error(c, req, Errc::kInvalidArgument,
                       fmt::format("group '{}' is not empty: {} live members (pid {}); stop them first", group,
                                   g->second.members.size(), pids));
  }
  forget_group(group, fmt::format("asked by pid {}", c.pid));
  return reply(c, req, json{{"ok", true}, {"group", group}});
}

}  // namespace shmbus::daemon
