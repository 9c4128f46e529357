// Static membership (Kafka's group.instance.id, KIP-345): a member that names its instance
// keeps its partitions when its connection closes (a restart), for its session timeout;
// coming back with the same instance id within it, it gets them again without a rebalance.
#include "shm/process.h"
#include "tools/busd/daemon.h"

namespace shmbus::daemon {

// The partitions of the absent member of this instance, which is dropped (nullopt: none).
// A live member of the same instance id is not fenced, as Kafka would: busd never lets two
// processes own a partition at once, so the newcomer is refused instead.
Result<std::optional<std::vector<TopicPartition>>> Daemon::claim_instance(Group& g, const std::string& instance) {
  if (instance.empty()) return std::nullopt;
  for (auto it = g.members.begin(); it != g.members.end(); ++it) {
    if (it->second.instance_id != instance) continue;
    if (!it->second.absent())
      return make_error(Errc::kAlreadyExists, fmt::format("group '{}': group_instance_id '{}' is in use by live member {} (pid {})",
                                                          g.name, instance, it->first, it->second.pid));
    std::vector<TopicPartition> owned = std::move(it->second.owned);
    log(fmt::format("group '{}': static member {} ({}) is back", g.name, instance, it->first));
    g.members.erase(it);
    return owned;
  }
  return std::nullopt;
}

// A static member whose connection closed stays, absent; false for a dynamic one.
bool Daemon::keep_absent(Group& g, const std::string& id, const std::string& why) {
  Member& m = g.members.at(id);
  // One that was giving partitions up cannot answer now: it leaves, and the group moves on.
  if (m.instance_id.empty() || m.revoking) return false;
  log(fmt::format("group '{}': static member {} ({}) is away ({}); its partitions wait for it up to {} ms", g.name,
                  m.instance_id, id, why, m.session_timeout_ms));
  slots_[m.slot].pid.store(0, std::memory_order_release);
  m.fd = -1;
  m.absent_since_ns = shm::monotonic_ns();
  return true;
}

}  // namespace shmbus::daemon
