// busd's partition assignors (range, roundrobin, sticky): pure functions over members and partitions.
#include "tools/busd/assignor.h"

#include <algorithm>
#include <set>

#include <fmt/format.h>

namespace shmbus {
namespace {

bool tp_less(const TopicPartition& a, const TopicPartition& b) {
  return a.topic != b.topic ? a.topic < b.topic : a.partition < b.partition;
}

bool subscribes(const MemberSubscription& m, const std::string& topic) {
  return std::find(m.topics.begin(), m.topics.end(), topic) != m.topics.end();
}

// Members sorted by id, as Kafka sorts them, so every assignor is deterministic.
std::vector<const MemberSubscription*> sorted(const std::vector<MemberSubscription>& members) {
  std::vector<const MemberSubscription*> out;
  for (const auto& m : members) out.push_back(&m);
  std::sort(out.begin(), out.end(), [](auto* a, auto* b) { return a->member_id < b->member_id; });
  return out;
}

Assignment empty_for(const std::vector<MemberSubscription>& members) {
  Assignment a;
  for (const auto& m : members) a[m.member_id];
  return a;
}

void sort_lists(Assignment& a) {
  for (auto& [id, tps] : a) std::sort(tps.begin(), tps.end(), tp_less);
}

}  // namespace

Result<AssignorKind> parse_assignor(std::string_view name) {
  if (name == "range") return AssignorKind::kRange;
  if (name == "roundrobin") return AssignorKind::kRoundRobin;
  if (name == "sticky" || name == "cooperative-sticky") return AssignorKind::kSticky;
  return make_error(Errc::kInvalidArgument, fmt::format("unknown assignor '{}': use range, roundrobin or sticky", name));
}

const char* assignor_name(AssignorKind k) {
  switch (k) {
    case AssignorKind::kRange: return "range";
    case AssignorKind::kRoundRobin: return "roundrobin";
    case AssignorKind::kSticky: return "sticky";
  }
  return "?";
}

Assignment assign_range(const TopicPartitionCounts& topics, const std::vector<MemberSubscription>& members) {
  Assignment a = empty_for(members);
  const auto all = sorted(members);
  for (const auto& [topic, n] : topics) {
    std::vector<const MemberSubscription*> subs;
    for (auto* m : all)
      if (subscribes(*m, topic)) subs.push_back(m);
    if (subs.empty()) continue;
    const std::uint32_t per = n / static_cast<std::uint32_t>(subs.size());
    const std::uint32_t extra = n % static_cast<std::uint32_t>(subs.size());
    for (std::uint32_t i = 0; i < subs.size(); ++i) {
      const std::uint32_t start = per * i + std::min(i, extra);
      const std::uint32_t count = per + (i < extra ? 1 : 0);
      for (std::uint32_t p = start; p < start + count; ++p) a[subs[i]->member_id].push_back({topic, p});
    }
  }
  sort_lists(a);
  return a;
}

Assignment assign_roundrobin(const TopicPartitionCounts& topics, const std::vector<MemberSubscription>& members) {
  Assignment a = empty_for(members);
  const auto all = sorted(members);
  if (all.empty()) return a;
  std::size_t next = 0;
  for (const auto& [topic, n] : topics) {
    for (std::uint32_t p = 0; p < n; ++p) {
      // The next member in circular order that subscribes to this topic.
      for (std::size_t tries = 0; tries < all.size(); ++tries) {
        const auto* m = all[next % all.size()];
        ++next;
        if (subscribes(*m, topic)) {
          a[m->member_id].push_back({topic, p});
          break;
        }
      }
    }
  }
  sort_lists(a);
  return a;
}

Assignment assign_sticky(const TopicPartitionCounts& topics, const std::vector<MemberSubscription>& members) {
  Assignment a = empty_for(members);
  const auto all = sorted(members);
  if (all.empty()) return a;
  // Every partition some member subscribes to.
  std::set<std::pair<std::string, std::uint32_t>> wanted;
  for (const auto& [topic, n] : topics)
    for (auto* m : all)
      if (subscribes(*m, topic)) {
        for (std::uint32_t p = 0; p < n; ++p) wanted.insert({topic, p});
        break;
      }
  const std::size_t total = wanted.size();
  // 1. Keep what each member owned, if it still exists, it still subscribes, and nobody
  //    kept it already.
  std::set<std::pair<std::string, std::uint32_t>> taken;
  for (auto* m : all)
    for (const auto& tp : m->owned) {
      const auto key = std::make_pair(tp.topic, tp.partition);
      if (wanted.count(key) && subscribes(*m, tp.topic) && !taken.count(key)) {
        taken.insert(key);
        a[m->member_id].push_back(tp);
      }
    }
  // 2. Balance: nobody keeps more than its fair share; the first `total % members`
  //    members (by load, then id) may keep one more.
  const std::size_t floor_share = total / all.size();
  std::size_t ceil_slots = total % all.size();
  std::vector<const MemberSubscription*> by_load = all;
  std::stable_sort(by_load.begin(), by_load.end(),
                   [&](auto* x, auto* y) { return a[x->member_id].size() > a[y->member_id].size(); });
  for (auto* m : by_load) {
    auto& mine = a[m->member_id];
    std::sort(mine.begin(), mine.end(), tp_less);
    std::size_t limit = floor_share;
    if (ceil_slots > 0 && mine.size() > floor_share) {
      limit = floor_share + 1;
      --ceil_slots;
    }
    while (mine.size() > limit) {  // give up the highest partitions: the move is minimal
      taken.erase({mine.back().topic, mine.back().partition});
      mine.pop_back();
    }
  }
  // 3. The rest goes to the least loaded member that subscribes to its topic.
  for (const auto& key : wanted) {
    if (taken.count(key)) continue;
    const MemberSubscription* best = nullptr;
    for (auto* m : all)
      if (subscribes(*m, key.first) && (!best || a[m->member_id].size() < a[best->member_id].size())) best = m;
    if (!best) continue;
    a[best->member_id].push_back({key.first, key.second});
    taken.insert(key);
  }
  sort_lists(a);
  return a;
}

Assignment assign(AssignorKind kind, const TopicPartitionCounts& topics, const std::vector<MemberSubscription>& members) {
  switch (kind) {
    case AssignorKind::kRange: return assign_range(topics, members);
    case AssignorKind::kRoundRobin: return assign_roundrobin(topics, members);
    case AssignorKind::kSticky: return assign_sticky(topics, members);
  }
  return {};
}

}  // namespace shmbus
