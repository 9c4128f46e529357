// Commits beyond a member's own: a consumer of assign() with a group id (Kafka's "simple
// consumer group": it starts at the group's committed offsets, commits and reads committed
// offsets through busd without being a member; busd takes its commits only while the group
// has no live member, tools/busd/simple_group.cpp), and asynchronous commits whose callback
// poll() calls once busd answers.
#include "bus/consumer_impl.h"

#include <chrono>
#include <thread>

#include <fmt/format.h>

namespace shmbus {

Result<BusdConnection*> Consumer::Impl::simple_connection() {
  if (config.group_id.empty())
    return make_error(Errc::kInvalidArgument,
                      "commits need a group: subscribe(), or set ConsumerConfig::group_id for a consumer of assign()");
  if (simple_conn && !simple_conn->pump()) simple_conn.reset();  // busd went away: a new one
  if (!simple_conn) {
    auto c = BusdConnection::connect(bus->name(), std::chrono::milliseconds(5000));
    if (!c) return tl::unexpected(c.error());
    simple_conn = std::move(*c);
    ++conn_serial;
  }
  return simple_conn.get();
}

// Where each partition starts: the group's committed offset, or none (auto_offset_reset).
Result<std::vector<std::optional<std::uint64_t>>> Consumer::Impl::simple_starts(const std::vector<TopicPartition>& tps) {
  if (config.group_id.empty() || tps.empty()) return std::vector<std::optional<std::uint64_t>>(tps.size());
  auto starts = fetch_committed(tps);
  if (!starts) return tl::unexpected(starts.error());
  if (starts->size() != tps.size())
    return make_error(Errc::kSystem, fmt::format("busd answered {} committed offsets for {} partitions", starts->size(), tps.size()));
  for (std::size_t i = 0; i < tps.size(); ++i)
    if ((*starts)[i]) simple_committed[{tps[i].topic, tps[i].partition}] = *(*starts)[i];
  return starts;
}

// Every 8th poll (group_tick(), consumer_impl.h): read busd's replies (so that they do not
// pile up), and auto-commit.
void Consumer::Impl::simple_tick() {
  if (!simple_conn->pump()) simple_conn.reset();  // the next commit connects again
  settle_commits(false);
  if (!simple_conn) return;
  const std::uint64_t now = shm::monotonic_ns();
  if (!config.enable_auto_commit ||
      now - simple_last_commit < static_cast<std::uint64_t>(config.auto_commit_interval.count()) * 1'000'000)
    return;
  simple_last_commit = now;
  auto offs = positions(true);
  if (!offs.empty()) (void)auto_commit(offs, false);
}

Status Consumer::Impl::simple_close() {
  // Only over a connection we have: a destructor does not start busd.
  Status result;
  if (simple_conn && config.enable_auto_commit) {
    auto offs = positions(true);
    if (!offs.empty()) result = auto_commit(offs, true);
  }
  settle_commits(true);
  return result;
}

void Consumer::Impl::settle_commits(bool wait) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!pending_commits.empty()) {
    BusdConnection* conn = group ? group->conn.get() : simple_conn.get();
    const bool same = conn && pending_commits.front().serial == conn_serial;
    std::optional<Result<proto::json>> reply;
    if (same) {
      reply = conn->take_reply(pending_commits.front().id);
      if (!reply && wait && std::chrono::steady_clock::now() < deadline && conn->pump()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
        continue;
      }
      if (!reply && !wait) return;  // not answered yet: the next poll looks again (in order)
    }
    // Taken off first: the callback may commit again.
    PendingCommit p = std::move(pending_commits.front());
    pending_commits.pop_front();
    Status result;
    if (reply && *reply) {
      for (const auto& [tp, o] : p.offsets) committed_by_us()[{tp.topic, tp.partition}] = o;
    } else if (reply) {
      result = tl::unexpected(reply->error());
    } else {
      result = make_error(Errc::kSystem, "busd did not answer this commit (its connection closed, or close() waited 5 s): it may or may not be stored");
    }
    if (p.done) p.done(p.offsets, result);
  }
}

}  // namespace shmbus
