// busd's watch over members that live on but stop doing their part, with Kafka's two
// clocks: the heartbeat (the member's heartbeat thread, against its session timeout) and the
// poll count (its poll(), against its max poll interval); and the revoke deadline of a
// rebalance. A member whose process dies needs none of this: its socket closes.
#include "shm/process.h"
#include "tools/busd/daemon.h"

namespace shmbus::daemon {

void Daemon::note_liveness(Member& m, const json& req) {
  m.session_timeout_ms = std::max<std::int64_t>(100, req.value("session_timeout_ms", std::int64_t{45'000}));
  const std::int64_t max_poll = req.value("max_poll_interval_ms", std::int64_t{0});
  m.max_poll_interval_ms = max_poll > 0 ? std::max<std::int64_t>(100, max_poll) : 0;
  MemberSlot& s = slots_[m.slot];
  const std::uint64_t now = shm::monotonic_ns();
  // A new lease first: a heartbeat thread of the slot's previous member stops storing.
  s.lease.fetch_add(1, std::memory_order_release);  // SYNC POINT: Heartbeat::beat's acquire
  s.heartbeat_ns.store(now, std::memory_order_relaxed);
  m.seen_polls = s.polls.load(std::memory_order_relaxed);
  m.polled_ns = now;
}

std::int64_t Daemon::revoke_timeout_ms(const Member& m) const {
  // Kafka's rebalance timeout is the member's max.poll.interval.ms: the time it may take
  // to reach its next poll(), where it gives the partitions up. busd's
  // --rebalance-timeout-ms only for a client that sent none (layout minor 0).
  return m.max_poll_interval_ms > 0 ? m.max_poll_interval_ms : opts_.rebalance_timeout_ms;
}

void Daemon::expire_members(std::uint64_t now) {
  std::erase_if(kafka_pending_, [&](const auto& p) { return now > p.second; });  // KIP-394 ids never used
  for (auto& [name, g] : groups_) {
    struct Expired {
      std::string id, reason, why;
    };
    std::vector<Expired> expired;
    for (auto& [id, m] : g.members) {
      if (m.kafka) {
        // Its heartbeats are requests (Heartbeat, and JoinGroup, SyncGroup, OffsetCommit);
        // while its JoinGroup waits for the generation to form, the join barrier's own
        // deadline (the others' rebalance timeouts) is what bounds it.
        const std::uint64_t quiet = now > m.kafka->seen_ns ? now - m.kafka->seen_ns : 0;
        if (m.kafka->state != KafkaMember::State::kJoining &&
            quiet > static_cast<std::uint64_t>(m.session_timeout_ms) * 1'000'000ull)
          expired.push_back({id, "session_timeout",
                             fmt::format("Kafka member: no heartbeat for {} ms (session timeout {} ms)", quiet / 1'000'000,
                                         m.session_timeout_ms)});
        else if (m.revoking && now > m.revoke_deadline_ns)
          expired.push_back({id, "revoke_timeout",
                             fmt::format("Kafka member: did not join again within {} ms (its rebalance timeout)",
                                         revoke_timeout_ms(m))});
        continue;
      }
      if (m.absent()) {
        if (now - m.absent_since_ns > static_cast<std::uint64_t>(m.session_timeout_ms) * 1'000'000ull)
          expired.push_back({id, "session_timeout", fmt::format("static member away for longer than its session timeout ({} ms)",
                                                                m.session_timeout_ms)});
        continue;
      }
      const MemberSlot& s = slots_[m.slot];
      const std::uint64_t hb = s.heartbeat_ns.load(std::memory_order_relaxed);
      const std::uint64_t polls = s.polls.load(std::memory_order_relaxed);
      if (polls != m.seen_polls) {
        m.seen_polls = polls;
        m.polled_ns = now;
      }
      if (now > hb && now - hb > static_cast<std::uint64_t>(m.session_timeout_ms) * 1'000'000ull)
        expired.push_back({id, "session_timeout",
                           fmt::format("no heartbeat for {} ms (session timeout {} ms)", (now - hb) / 1'000'000,
                                       m.session_timeout_ms)});
      else if (m.max_poll_interval_ms > 0 && now - m.polled_ns > static_cast<std::uint64_t>(m.max_poll_interval_ms) * 1'000'000ull)
        expired.push_back({id, "max_poll_interval",
                           fmt::format("no poll() for {} ms (max poll interval {} ms)", (now - m.polled_ns) / 1'000'000,
                                       m.max_poll_interval_ms)});
      else if (m.revoking && now > m.revoke_deadline_ns)
        expired.push_back({id, "revoke_timeout",
                           fmt::format("did not give up its revoked partitions within {} ms (its rebalance timeout)",
                                       revoke_timeout_ms(m))});
    }
    for (const auto& e : expired) {
      const int fd = g.members.count(e.id) ? g.members.at(e.id).fd : -1;
      auto c = conns_.find(fd);
      if (c != conns_.end()) {
        send(fd, json{{"push", "evicted"}, {"group", name}, {"reason", e.reason}, {"message", e.why}});
        notify_member(g.members.at(e.id));  // so that it stops at its next poll
        c->second.member_id.clear();
      }
      remove_member(g, e.id, e.why);
    }
  }
}

}  // namespace shmbus::daemon
