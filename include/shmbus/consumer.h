// Consumer: read partitions at its own offsets. assign() needs no daemon (unless group_id
// is set: then it starts at, and commits, the group's offsets through busd).
//
// Thread safety: a Consumer belongs to one thread at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "shmbus/bus.h"
#include "shmbus/error.h"
#include "shmbus/record.h"

namespace shmbus {

enum class OffsetReset { kEarliest, kLatest, kError };  // auto.offset.reset
enum class WaitStrategy { kSpin, kYield, kBlock, kAdaptive };

struct ConsumerConfig {
  OffsetReset auto_offset_reset = OffsetReset::kLatest;  // Kafka's default
  WaitStrategy wait = WaitStrategy::kAdaptive;
  std::chrono::nanoseconds spin{50'000};     // adaptive/block: busy-spin this long first
  std::chrono::nanoseconds yield{200'000};   // adaptive: then sched_yield this long, then sleep
  std::uint32_t max_poll_records = 500;      // Kafka's max.poll.records
  // In a `block` topic, producers wait for this consumer instead of overwriting what it has
  // not read, and poll() returns views into the ring (no copy).
  bool hold_producers = false;
  // Ignored since partition layout 3, kept so that code setting it still compiles: a dead
  // producer's claim is aborted as soon as a reader meets it (its lock tells), a stopped
  // one's after the topic's claim_timeout_ms (TopicConfig).
  std::chrono::nanoseconds stall{1'000'000};

  // Consumer groups (subscribe): busd assigns partitions and keeps committed offsets.
  std::string assignor = "sticky";                  // range | roundrobin | sticky
  // Kafka's group.id, for a consumer of assign() (Kafka's simple consumer group): assign()
  // starts each partition at the group's committed offset (else auto_offset_reset), and
  // commit(), commit_async(), committed() and auto-commit work through busd (started if
  // needed), without joining the group. busd takes these commits only while the group has
  // no live member. Empty: assign() needs no daemon and commits are refused. subscribe()
  // names its group itself; if this is set, it must be the same.
  std::string group_id{};
  // Kafka's group.instance.id (static membership): a member that names its instance keeps
  // its partitions when its process goes away (closes, restarts, dies), for session_timeout;
  // a consumer with the same instance id that joins within it gets them back without a
  // rebalance (the others notice nothing). close() then does not leave the group. Two live
  // consumers with one instance id: the second subscribe() is refused. Empty: dynamic.
  std::string group_instance_id{};
  // Liveness, with Kafka's names, defaults and meanings. A member's process that dies is
  // noticed at once (its socket closes); these are for processes that live on:
  // - session_timeout (session.timeout.ms): a thread of the consumer heartbeats every
  //   heartbeat_interval whether or not poll() is called; busd evicts a member whose
  //   heartbeat is older than this (a hung or stopped process).
  // - max_poll_interval (max.poll.interval.ms): a member that does not call poll() for this
  //   long leaves the group and its partitions go to the others; its next poll() calls
  //   on_lost and joins again. Time spent inside poll() (waiting, callbacks) counts as polling.
  // - heartbeat_interval (heartbeat.interval.ms): below session_timeout (Kafka advises a third).
  std::chrono::milliseconds session_timeout{45'000};
  std::chrono::milliseconds max_poll_interval{300'000};
  std::chrono::milliseconds heartbeat_interval{3'000};
  bool enable_auto_commit = true;
  std::chrono::milliseconds auto_commit_interval{1'000};  // Kafka: 5 s
  std::string client_name{};  // shown by `busctl group describe`; empty: the process name
  // Called from poll() (and subscribe()) when busd gives or takes partitions.
  // on_revoked: a rebalance takes them; with auto-commit their positions were committed just
  // before, and they can still be committed from inside the callback.
  // on_lost (Kafka's onPartitionsLost): they are someone else's already (this member was
  // evicted or left the group: session timeout, max poll interval, or busd gave them away
  // while it was unreachable); nothing is or can be committed for them. When on_lost is
  // not set, on_revoked is called instead, as Kafka's default onPartitionsLost does.
  std::function<void(const std::vector<TopicPartition>&)> on_assigned{};
  std::function<void(const std::vector<TopicPartition>&)> on_revoked{};
  std::function<void(const std::vector<TopicPartition>&)> on_lost{};
  // librdkafka's offset_commit_cb: the offsets and busd's answer of every commit this
  // consumer makes by itself (auto-commit: the timer's, a revocation's, close()'s). The
  // timer's commits are answered from a later poll() (ok once busd's offsets.log holds
  // them), the others at once. Called on the calling thread; it must not throw.
  std::function<void(const std::vector<std::pair<TopicPartition, std::uint64_t>>& offsets, const Status& result)>
      on_commit{};

  // Statistics (librdkafka's statistics.interval.ms and stats_cb): every statistics_interval
  // (0, the default: never) statistics_cb gets a JSON object, called from this consumer's
  // own poll(), on the calling thread, once the interval has passed. It must not throw (an
  // exception is dropped) nor use this consumer. Fields, with librdkafka's names where the
  // meaning is the same:
  //   name ("shmbus#consumer-N"), client_id (client_name, else the process name), type
  //   ("consumer"), ts (monotonic clock, us), time (wall clock, s), age (us since create()),
  //   rxmsgs, rxmsg_bytes (records returned by poll() and their key + headers + value bytes),
  //   lost (records skipped: overwritten before they were read, or gone from the disk log),
  //   aborted (offsets skipped because their claim was aborted), waits (polls that found
  //   nothing at once and waited),
  //   topics: { NAME: { topic, partitions: { "P": { partition, desired (assigned now),
  //   rxmsgs, rxbytes, lost, aborted, next_offset, app_offset, stored_offset (the position:
  //   the next offset poll() returns), committed_offset (the group's, as this consumer last
  //   knew it; -1001 when none), lo_offset, hi_offset (the ring's oldest and next offsets),
  //   consumer_lag (hi_offset - committed_offset, -1 without one), consumer_lag_stored
  //   (hi_offset - stored_offset) } } } },
  //   cgrp (subscribe() only): { group, member_id, state ("up"), generation, rebalance_cnt
  //   (assignments seen), assignment_size }.
  // Counters start at create(); a partition stays listed (desired false) once unassigned.
  std::chrono::milliseconds statistics_interval{0};
  std::function<void(const std::string& json)> statistics_cb{};
};

class Consumer {
 public:
  static Result<Consumer> create(std::shared_ptr<Bus> bus, ConsumerConfig config = {});
  Consumer(Consumer&&) noexcept;
  Consumer& operator=(Consumer&&) noexcept;
  ~Consumer();

  // Replaces the assignment. Each partition starts at the committed offset of group_id if
  // set and there is one, else where auto_offset_reset says (earliest: the oldest record in
  // the ring, latest: the next one written).
  Status assign(const std::vector<TopicPartition>& partitions);
  std::vector<TopicPartition> assignment() const;

  // Joins `group` (starting busd if none runs) and waits for the first assignment. Each
  // partition starts at the group's committed offset, else where auto_offset_reset says.
  // Assignments change from poll() as members come and go (on_assigned / on_revoked), and as
  // topics come and go: an entry of `topics` starting with '^' is a pattern (a POSIX
  // extended regex searched in the name, librdkafka's rule) that takes the topics matching
  // it, those created later too; a named topic must exist. A topic deleted is given up (as
  // lost: on_lost, else on_revoked) and poll() goes on with the others; created again, its
  // partitions are assigned afresh (docs/busd.md, "Topics come and go").
  Status subscribe(const std::vector<std::string>& topics, const std::string& group);
  // Commits the current positions of all assigned partitions (the next offsets to read), or
  // the offsets given. A member commits for the partitions it owns; a consumer of assign()
  // with a group_id while the group has no live member (ConsumerConfig::group_id).
  Status commit();
  Status commit(const std::vector<std::pair<TopicPartition, std::uint64_t>>& offsets);
  // Sends the commit and returns; busd's answer is not waited for (nor reported).
  Status commit_async();
  // Kafka's OffsetCommitCallback: the offsets sent and busd's answer (ok once they are in
  // busd's offsets.log, within ~20 ms; or why it was refused, or that the connection closed
  // before the answer). Called from this consumer's
  // poll() (or close(), which waits up to 5 s for pending answers), in the order of the
  // commits. When commit_async returns an error, nothing was sent and it is not called.
  using CommitCallback =
      std::function<void(const std::vector<std::pair<TopicPartition, std::uint64_t>>& offsets, const Status& result)>;
  Status commit_async(CommitCallback done);
  Status commit_async(const std::vector<std::pair<TopicPartition, std::uint64_t>>& offsets, CommitCallback done);
  Result<std::vector<std::optional<std::uint64_t>>> committed(const std::vector<TopicPartition>& partitions);
  // Leaves the group (committing first with auto-commit); also done by the destructor.
  Status close();
  std::string member_id() const;
  std::uint64_t generation() const;

  Status seek(const TopicPartition& tp, std::uint64_t offset);
  Status seek_to_beginning(const TopicPartition& tp);
  Status seek_to_end(const TopicPartition& tp);
  Result<std::uint64_t> position(const TopicPartition& tp) const;

  // Kafka's offsetsForTimes: for each (partition, time in ns since the epoch), the earliest
  // offset whose record's timestamp is >= that time, with that record's timestamp; nullopt
  // where every record is older (Kafka's null: the end offset is where a later one will be).
  // Looked up in the disk log of a spilled topic, then in the ring; the partitions need not
  // be assigned, no daemon is asked and nothing waits. Timestamps are the producers' (the
  // send's CLOCK_REALTIME unless set): where they go backwards, the answer is the first
  // record at or after the time in offset order. A record still being written at the end has
  // timestamp -1. Fails, for the whole call, on an unknown topic or partition.
  struct OffsetAndTimestamp {
    std::uint64_t offset;
    std::int64_t timestamp_ns;
  };
  Result<std::vector<std::optional<OffsetAndTimestamp>>> offsets_for_times(
      const std::vector<std::pair<TopicPartition, std::int64_t>>& times) const;

  // Kafka's pause/resume: paused partitions stay assigned (positions, gates and all) but
  // poll() skips them until resumed. Fails, changing nothing, if one is not assigned. A new
  // assignment (assign(), a rebalance) starts unpaused.
  Status pause(const std::vector<TopicPartition>& partitions);
  Status resume(const std::vector<TopicPartition>& partitions);
  std::vector<TopicPartition> paused() const;

  // Up to max_poll_records records, waiting up to `timeout` for the first. The records stay
  // valid until the next poll() of this consumer.
  [[nodiscard]] Result<std::span<const ConsumedRecord>> poll(std::chrono::nanoseconds timeout);

  // Records this consumer skipped because producers overwrote them before it read them.
  std::uint64_t lost() const noexcept;
  // Offsets skipped because they were aborted (dead producers, abandoned reservations).
  std::uint64_t aborted() const noexcept;

  struct Impl;

 private:
  friend struct ConsumerInternals;  // bus/consumer_impl.h: what busd asks beyond this API
  explicit Consumer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shmbus
