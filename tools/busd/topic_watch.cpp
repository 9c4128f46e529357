// busd's watch over the bus's topics, for the groups: subscriptions by pattern ('^...', as
// librdkafka's) take topics created later, and a topic created, deleted, or deleted and
// created again rebalances the groups subscribed to it (Kafka's consumers see it in their
// metadata refresh; busd looks at the registry every 200 ms). A topic's partition count
// never changes here (Bus::alter_topic cannot add partitions).
#include <algorithm>

#include "bus/names.h"
#include "bus/topic.h"
#include "bus/topic_pattern.h"
#include "tools/busd/daemon.h"

namespace shmbus::daemon {

Status Daemon::check_subscription(const std::vector<std::string>& subscription, Bus& bus) {
  for (const auto& entry : subscription) {
    if (TopicPattern::is_pattern(entry)) {
      if (auto p = TopicPattern::compile(entry); !p) return tl::unexpected(p.error());
    } else if (auto t = bus.topic(entry); !t) {
      return tl::unexpected(t.error());
    }
  }
  return {};
}

std::vector<std::string> Daemon::resolve_subscription(const std::vector<std::string>& subscription,
                                                      const std::vector<std::string>& listed) {
  std::set<std::string> out;
  for (const auto& entry : subscription) {
    if (!TopicPattern::is_pattern(entry)) {
      out.insert(entry);  // a name stays subscribed while its topic is deleted: created again, it is assigned again
      continue;
    }
    auto p = TopicPattern::compile(entry);  // checked at the join
    if (!p) continue;
    for (const auto& name : listed)
      if (p->matches(name)) out.insert(name);
  }
  return {out.begin(), out.end()};
}

std::vector<std::string> Daemon::listed_topics() {
  std::vector<std::string> names;
  for (const auto& t : bus_->list_topics()) names.push_back(t.name);
  return names;
}

void Daemon::watch_topics() {
  std::map<std::string, std::uint64_t> now;
  for (const auto& t : bus_->list_topics()) now[t.name] = t.epoch;
  if (now == topics_seen_) return;
  std::set<std::string> changed, recreated;
  for (const auto& [name, epoch] : now) {
    auto was = topics_seen_.find(name);
    if (was == topics_seen_.end()) changed.insert(name);
    else if (was->second != epoch) changed.insert(name), recreated.insert(name);
  }
  for (const auto& [name, epoch] : topics_seen_)
    if (!now.count(name)) changed.insert(name);
  topics_seen_ = std::move(now);
  std::vector<std::string> listed;
  for (const auto& [name, epoch] : topics_seen_) listed.push_back(name);
  for (auto& [gname, g] : groups_) {
    bool affected = false;
    for (auto& [id, m] : g.members) {
      auto topics = resolve_subscription(m.subscription, listed);
      for (const auto& t : topics) affected |= changed.count(t) > 0;
      if (topics != m.topics) {
        m.topics = std::move(topics);
        affected = true;
      }
      for (const auto& tp : m.owned) {
        affected |= changed.count(tp.topic) > 0;
        if (recreated.count(tp.topic)) m.reissue.insert(tp.topic);
      }
    }
    if (!affected) continue;
    std::string what;
    for (const auto& t : changed)
      what += fmt::format("{}'{}' {}", what.empty() ? "" : ", ", t,
                          recreated.count(t) ? "created again" : (topics_seen_.count(t) ? "created" : "deleted"));
    log(fmt::format("group '{}': topics changed ({}): rebalancing", gname, what));
    rebalance(g);
  }
}

}  // namespace shmbus::daemon
