// Consumer: read partitions at its own offsets. assign() needs no daemon.
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
  std::chrono::milliseconds session_timeout{10'000};  // no poll() for this long: evicted
  bool enable_auto_commit = true;
  std::chrono::milliseconds auto_commit_interval{1'000};  // Kafka: 5 s
  std::string client_name{};  // shown by `busctl group describe`; empty: the process name
  // Called from poll() (and subscribe()) when busd gives or takes partitions.
  std::function<void(const std::vector<TopicPartition>&)> on_assigned{};
  std::function<void(const std::vector<TopicPartition>&)> on_revoked{};

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

  // Replaces the assignment. Each partition starts where auto_offset_reset says
  // (earliest: the oldest record in the ring, latest: the next one written).
  Status assign(const std::vector<TopicPartition>& partitions);
  std::vector<TopicPartition> assignment() const;

  // Joins `group` (starting busd if none runs) and waits for the first assignment. Each
  // partition starts at the group's committed offset, else where auto_offset_reset says.
  // Assignments change from poll() as members come and go (on_assigned / on_revoked).
  Status subscribe(const std::vector<std::string>& topics, const std::string& group);
  // Commits the current positions of all assigned partitions (the next offsets to read).
  Status commit();
  Status commit_async();
  Status commit(const std::vector<std::pair<TopicPartition, std::uint64_t>>& offsets);
  Result<std::vector<std::optional<std::uint64_t>>> committed(const std::vector<TopicPartition>& partitions);
  // Leaves the group (committing first with auto-commit); also done by the destructor.
  Status close();
  std::string member_id() const;
  std::uint64_t generation() const;

  Status seek(const TopicPartition& tp, std::uint64_t offset);
  Status seek_to_beginning(const TopicPartition& tp);
  Status seek_to_end(const TopicPartition& tp);
  Result<std::uint64_t> position(const TopicPartition& tp) const;

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
  explicit Consumer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shmbus
