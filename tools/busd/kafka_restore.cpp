// Kafka members across a busd restart: written to the state dir at each change of a group's
// Kafka members, taken back when busd starts, so that a restart is invisible to a Kafka
// client whose heartbeats keep coming (as a Kafka coordinator's failover is) and nobody else
// is handed its partitions meanwhile. docs/kafka.md, "Across a busd restart".
#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "bus/names.h"
#include "bus/topic.h"
#include "shm/process.h"
#include "tools/busd/daemon.h"
#include "tools/busd/listeners.h"

namespace shmbus::daemon {

namespace {

constexpr std::uint64_t kMaxFileBytes = 64ull << 20;  // 1000 members x 1 MiB of metadata bounds a group
constexpr std::size_t kMaxMembersPerGroup = 1000;

std::string members_path(const std::string& state_dir) { return state_dir + "/kafka_members.json"; }

}  // namespace

void Daemon::save_kafka_members() {
  json groups = json::array();
  std::set<std::string> saved;
  for (const auto& [name, g] : groups_) {
    json members = json::array();
    for (const auto& [id, m] : g.members) {
      if (!m.kafka) continue;
      json protocols = json::array();
      for (const auto& [pname, meta] : m.kafka->protocols)
        protocols.push_back({{"name", pname}, {"metadata", std::vector<std::uint8_t>(meta.begin(), meta.end())}});
      json owned = json::array();
      for (const auto& tp : m.owned) owned.push_back({tp.topic, tp.partition});
      members.push_back({{"id", id}, {"client_id", m.kafka->client_id}, {"client_host", m.kafka->client_host},
                         {"generation", m.kafka->generation}, {"session_timeout_ms", m.session_timeout_ms},
                         {"rebalance_timeout_ms", m.max_poll_interval_ms}, {"subscription", m.subscription},
                         {"protocols", protocols}, {"owned", owned}});
    }
    if (members.empty()) continue;
    saved.insert(name);
    groups.push_back({{"group", name}, {"generation", g.generation}, {"assignor", assignor_name(g.assignor)},
                      {"protocol", g.kafka_protocol}, {"members", members}});
  }
  if (saved.empty() && kafka_saved_groups_.empty()) return;  // nothing then, nothing now
  const std::string path = members_path(paths_.state_dir);
  if (auto ok = write_file_whole(path, json{{"version", 1}, {"groups", groups}}.dump() + "\n", gid_ ? 0660u : 0600u, false); !ok)
    log(fmt::format("Kafka members not saved (a restart of busd will forget them): {}", ok.error().message));
  kafka_saved_groups_ = std::move(saved);
}

void Daemon::note_kafka_members_changed(const Group& g) {
  const bool has = std::any_of(g.members.begin(), g.members.end(), [](const auto& m) { return m.second.kafka.has_value(); });
  if (has || kafka_saved_groups_.count(g.name)) save_kafka_members();
}

void Daemon::restore_kafka_members() {
  const std::string path = members_path(paths_.state_dir);
  std::ifstream f(path);
  if (!f) return;  // none saved
  // Checked whole before anything is taken: a damaged file changes nothing (it is set aside).
  auto refuse = [&](const std::string& why) {
    log(fmt::format("{}: {}; the Kafka members of before the restart are forgotten (they join again); kept as {}.bad",
                    path, why, path));
    (void)::rename(path.c_str(), (path + ".bad").c_str());
  };
  std::stringstream text;
  text << f.rdbuf();
  if (text.str().size() > kMaxFileBytes) return refuse(fmt::format("{} bytes (at most {})", text.str().size(), kMaxFileBytes));
  const json j = json::parse(text.str(), nullptr, false);
  if (!j.is_object() || j.value("version", 0) != 1 || !j.contains("groups") || !j["groups"].is_array())
    return refuse("not a version-1 list of groups");
  const std::uint64_t now = shm::monotonic_ns();
  std::vector<Group> taken;
  try {
    for (const auto& jg : j["groups"]) {
      Group g;
      g.name = jg.at("group").get<std::string>();
      if (auto ok = validate_name("group", g.name); !ok) return refuse(ok.error().message);
      if (groups_.count(g.name) || std::any_of(taken.begin(), taken.end(), [&](const Group& t) { return t.name == g.name; }))
        return refuse(fmt::format("group '{}' twice", g.name));
      g.generation = jg.at("generation").get<std::uint64_t>();
      auto kind = parse_assignor(jg.at("assignor").get<std::string>());
      if (!kind) return refuse(kind.error().message);
      g.assignor = *kind;
      g.kafka_protocol = jg.at("protocol").get<std::string>();
      const auto& jm = jg.at("members");
      if (!jm.is_array() || jm.size() > kMaxMembersPerGroup)
        return refuse(fmt::format("group '{}': members not a list of at most {}", g.name, kMaxMembersPerGroup));
      std::set<TopicPartition> owned_in_group;
      for (const auto& e : jm) {
        Member m;
        m.id = e.at("id").get<std::string>();
        if (m.id.empty() || g.members.count(m.id)) return refuse(fmt::format("group '{}': a member id empty or twice", g.name));
        auto& k = m.kafka.emplace();
        k.state = KafkaMember::State::kStable;
        k.client_id = e.at("client_id").get<std::string>();
        k.client_host = e.at("client_host").get<std::string>();
        k.generation = e.at("generation").get<std::int64_t>();
        if (k.generation < 0 || static_cast<std::uint64_t>(k.generation) > g.generation)
          return refuse(fmt::format("group '{}': member {} of generation {}, after the group's {}", g.name, m.id, k.generation,
                                    g.generation));
        k.seen_ns = now;  // its session runs from the restart
        for (const auto& p : e.at("protocols")) {
          const auto bytes = p.at("metadata").get<std::vector<std::uint8_t>>();
          k.protocols.emplace_back(p.at("name").get<std::string>(), std::string(bytes.begin(), bytes.end()));
        }
        if (k.protocols.empty()) return refuse(fmt::format("group '{}': member {} lists no protocol", g.name, m.id));
        m.name = k.client_id;
        m.session_timeout_ms = e.at("session_timeout_ms").get<std::int64_t>();
        m.max_poll_interval_ms = e.at("rebalance_timeout_ms").get<std::int64_t>();
        if (m.session_timeout_ms <= 0 || m.session_timeout_ms > 3'600'000 || m.max_poll_interval_ms < 0 ||
            m.max_poll_interval_ms > 3'600'000)
          return refuse(fmt::format("group '{}': member {} has a timeout out of range", g.name, m.id));
        for (const auto& t : e.at("subscription"))
          if (validate_name("topic", t.get<std::string>())) m.subscription.push_back(t.get<std::string>());
        m.topics = resolve_subscription(m.subscription, {});
        // What it owned and still stands: a topic or partition gone since is dropped, and
        // the rebalance at the end of the start-up grace deals with the rest.
        for (const auto& o : e.at("owned")) {
          const TopicPartition tp{o.at(0).get<std::string>(), o.at(1).get<std::uint32_t>()};
          auto t = bus_->topic(tp.topic);
          if (!t || tp.partition >= (*t)->partitions() ||
              std::find(m.topics.begin(), m.topics.end(), tp.topic) == m.topics.end())
            continue;
          if (!owned_in_group.insert(tp).second)
            return refuse(fmt::format("group '{}': {}-{} owned twice", g.name, tp.topic, tp.partition));
          m.owned.push_back(tp);
          m.owned_since[tp] = static_cast<std::uint64_t>(k.generation);
          k.epochs[tp.topic] = (*t)->epoch();
        }
        g.members[m.id] = std::move(m);
      }
      taken.push_back(std::move(g));
    }
  } catch (const json::exception& e) {
    return refuse(fmt::format("malformed: {}", e.what()));
  }
  for (auto& g : taken) {
    log(fmt::format("group '{}': took back {} Kafka members of generation {} from before the restart", g.name,
                    g.members.size(), g.generation));
    const std::string name = g.name;
    groups_[name] = std::move(g);
    Group& placed = groups_[name];
    group_changed(placed);
    for (const auto& [id, m] : placed.members)
      for (const auto& tp : m.owned) update_gate(name, tp);
    kafka_saved_groups_.insert(name);
  }
}

}  // namespace shmbus::daemon
