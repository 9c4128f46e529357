// The consumer's inside, shared by its rooms: bus/consumer.cpp (the public API, assignment
// and the poll loop), bus/consumer_ring.cpp (reading rings), bus/consumer_disk.cpp (reading
// the disk log of spilled topics), bus/consumer_group.cpp (group membership). Internal.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "bus/busd_layout.h"
#include "bus/disk_log.h"
#include "bus/group_client.h"
#include "bus/statistics.h"
#include "bus/heartbeat.h"
#include "bus/topic.h"
#include "shm/process.h"
#include "shm/ring.h"
#include "shm/segment.h"
#include "shmbus/consumer.h"

namespace shmbus {

// Named, not anonymous: every room of the consumer shares these.
namespace consumer_detail {

struct Assigned {
  TopicPartition tp;
  std::shared_ptr<Topic> topic;
  shm::RingReader reader;
  // Our own open file description of the partition: its locks hold our gate and waiter
  // slot, and the kernel drops them if we die (shm/ofd_lock.h). Invalid on read-only buses.
  shm::SegmentLock lock;
  int waiter = -1;                // our waiter slot (bit in NotifyLine::waiters), -1: none
  shm::GateSlot* gate = nullptr;  // when holding producers back
  std::uint64_t gate_position = ~0ull;
  bool zero_copy = false;
  std::uint64_t empty_polls = 0;
  std::uint64_t skip_below = 0;   // a seek past an unfinished claim: records below it are not returned
  bool paused = false;            // Consumer::pause(): poll() skips it
  // Spilled topics: offsets older than the ring come from the disk log. While disk_next is
  // set, records come from there; the ring reader waits at the ring's start (its gate, if
  // any, too) until the disk catches up with it.
  std::unique_ptr<disklog::LogReader> disk;
  std::uint64_t disk_next = kFromRing;
  std::uint64_t lost = 0;          // records skipped here, for the statistics (which take them)
  std::uint64_t aborted_seen = 0;  // reader.aborted_skipped() the statistics have counted
  static constexpr std::uint64_t kFromRing = ~0ull;
  std::uint64_t next_offset() const noexcept { return disk_next != kFromRing ? disk_next : reader.offset(); }
};

// A copied record of the batch, filled in once the arena stops growing (it may move).
struct ArenaRecord {
  std::size_t index;     // in the batch
  std::size_t arena_at;  // the record's bytes in the arena
  std::uint64_t pos = 0;  // copies of the ring: where it was, and its length
  std::uint32_t len = 0;
};

// Key, headers and value fit in the record's length.
inline bool lengths_fit(const shm::RecordHeader& h) noexcept {
  const std::uint64_t klen = h.key_len == shm::kNullKey ? 0 : h.key_len;
  return shm::kRecordHeaderSize + klen + h.headers_len + h.value_len <= h.length;
}

// The fields of a record's bytes (header and payload, in the ring or a copy) into `r`;
// false when its lengths do not fit its size.
[[gnu::always_inline]] inline bool decode(const std::byte* rec, ConsumedRecord& r) noexcept {
  shm::RecordHeader h;
  std::memcpy(static_cast<void*>(&h), rec, sizeof h);
  if (!lengths_fit(h)) return false;
  const std::uint64_t klen = h.key_len == shm::kNullKey ? 0 : h.key_len;
  const std::byte* payload = rec + shm::kRecordHeaderSize;
  r.timestamp_ns = h.timestamp_ns;
  if (h.key_len != shm::kNullKey) r.key = Bytes(payload, klen);
  else r.key.reset();
  r.raw_headers = Bytes(payload + klen, h.headers_len);
  r.value = Bytes(payload + klen + h.headers_len, h.value_len);
  r.null_value = (h.flags & shm::kRecordNullValue) != 0 && h.value_len == 0;  // as the spiller writes it to disk
  return true;
}


}  // namespace consumer_detail

using consumer_detail::ArenaRecord;
using consumer_detail::Assigned;

struct GroupState {
  std::string name;
  std::vector<std::string> topics;
  std::unique_ptr<BusdConnection> conn;
  std::string member_id;
  std::uint64_t generation = 0;
  shm::Segment segment;
  MemberSlot* slot = nullptr;
  std::uint32_t lease = 0;  // the slot's lease busd gave us
  // After `segment`: destroyed (its thread stopped) before the segment is unmapped.
  Heartbeat heartbeat;
  std::uint32_t seen_notice = 0;
  std::uint64_t polls = 0;
  std::uint64_t last_check = 0, last_commit = 0, last_reconnect = 0;
  bool assigned_once = false;
  std::uint64_t reconnect_backoff = 100'000'000;  // ns between attempts to reach busd again
  std::map<std::pair<std::string, std::uint32_t>, std::uint64_t> last_committed;  // by us, or when we took it
  std::string left_why;  // why busd last removed us (until we are a member again)
};

struct Consumer::Impl {
  std::shared_ptr<Bus> bus;
  ConsumerConfig config;
  std::optional<GroupState> group;
  // A consumer of assign() with config.group_id (Kafka's simple consumer group): a
  // connection to busd for commits and committed offsets, no membership. bus/consumer_commits.cpp.
  std::unique_ptr<BusdConnection> simple_conn;
  std::map<std::pair<std::string, std::uint32_t>, std::uint64_t> simple_committed;
  std::uint64_t simple_polls = 0, simple_last_commit = 0;
  // commit_async() with a callback, in the order sent, answered on the connection of
  // `serial` (bumped each time the group's or the simple connection is made anew).
  struct PendingCommit {
    std::uint64_t serial = 0, id = 0;
    std::vector<std::pair<TopicPartition, std::uint64_t>> offsets;
    Consumer::CommitCallback done;
  };
  std::deque<PendingCommit> pending_commits;
  std::uint64_t conn_serial = 0;
  std::vector<Assigned> assigned;
  // Copies of records: grows by doubling and is never zero-filled (vector::resize would
  // memset every byte before the copy overwrites it).
  std::unique_ptr<std::byte[]> arena;
  std::size_t arena_cap = 0, arena_used = 0;
  // The records of the poll in the making: zero-copy ones are decoded as they are read,
  // copied ones (arena) once the arena stops growing.
  std::vector<ConsumedRecord> batch;
  std::vector<ArenaRecord> arena_records;
  std::optional<Error> deferred;  // an error met after other records of the same poll
  std::size_t rr = 0;
  std::uint64_t lost = 0;
  std::uint64_t aborted_base = 0;
  std::unique_ptr<stats::ConsumerStats> stats;  // statistics_interval > 0 only
  // The process that made it: gates and waiter slots are this process's (a forked child
  // that inherits the consumer must neither use nor release them).
  std::int32_t pid = shm::self_process().pid;
  std::uint32_t fork_gen = shm::fork_generation();  // after self_process(): its atfork handler moves it

  ~Impl() { release_gates(); }

  // poll()'s fast path may serve this poll (bus/consumer.cpp, read_fast): the process that
  // made the consumer, one partition read from its ring (not paused, not from the disk log,
  // no seek past an unfinished claim), nothing deferred, no statistics. Checked on every poll, field by field: a cached flag would need each of the
  // many places that change these to clear it.
  bool fast_poll() const noexcept {
    if (fork_gen != shm::fork_generation() || assigned.size() != 1 || stats || deferred) return false;
    const Assigned& a = assigned[0];
    return !a.paused && a.disk_next == Assigned::kFromRing && a.skip_below == 0;
  }
  enum class FastRead { kGot, kEmpty, kSlow };
  inline FastRead read_fast();  // defined (and called) in bus/consumer.cpp only
  Result<std::span<const ConsumedRecord>> poll_loop(std::chrono::nanoseconds timeout, bool look);

  // Hot helpers of more than one room, kept inline here as they were in one file.
  std::byte* arena_take(std::size_t n) {
    if (arena_used + n > arena_cap) {
      std::size_t cap = std::max<std::size_t>(arena_cap * 2, std::max<std::size_t>(arena_used + n, 65536));
      auto bigger = std::make_unique_for_overwrite<std::byte[]>(cap);
      if (arena_used) std::memcpy(bigger.get(), arena.get(), arena_used);
      arena = std::move(bigger);
      arena_cap = cap;
    }
    std::byte* at = arena.get() + arena_used;
    arena_used += n;
    return at;
  }

  void set_gate(Assigned& a) {
    // Store only when it moved: a store pulls the line back from a producer that read it.
    if (!a.gate || a.gate_position == a.reader.position()) return;
    const bool back = a.reader.position() < a.gate_position;
    a.gate_position = a.reader.position();
    // seq_cst when back: the consumer's half of the Dekker in bump_gate_generation.
    a.gate->position.store(a.gate_position, back ? std::memory_order_seq_cst : std::memory_order_release);
    // Moving back (seek) is like a new gate: a producer may already have reclaimed past it.
    if (back && a.reader.ring().bump_gate_generation() > a.gate_position) {
      a.reader.seek_earliest();
      a.gate_position = a.reader.position();
      a.gate->position.store(a.gate_position, std::memory_order_release);
    }
  }

  // A record copied into the arena at `arena_at`: its place in the batch, decoded later.
  // A copy of the ring also says where it was and how long (0 for records from disk).
  void take_copied(const Assigned& a, std::uint64_t offset, std::size_t arena_at, std::uint64_t pos = 0,
                   std::uint32_t len = 0) {
    ConsumedRecord& r = batch.emplace_back();
    r.topic = a.tp.topic;
    r.partition = a.tp.partition;
    r.offset = offset;
    arena_records.push_back(ArenaRecord{batch.size() - 1, arena_at, pos, len});
  }

  // Records of `a` skipped: lost to this consumer.
  void add_lost(Assigned& a, std::uint64_t n) noexcept {
    lost += n;
    a.lost += n;
  }
  // The topic of a partition that exists (else invalid_argument naming it).
  Result<std::shared_ptr<Topic>> topic_of(const TopicPartition& tp) const;
  // bus/consumer_stats.cpp: takes the partitions' counts; reports when due.
  void statistics_tick();

  // bus/consumer.cpp: assignment
  Result<Assigned> make_assigned(const TopicPartition& tp, std::optional<std::uint64_t> start);
  Status arm(Assigned& a);
  void drop(const TopicPartition& tp);
  static void release_slots(Assigned& a);
  void release_gates();
  Assigned* find(const TopicPartition& tp);
  void drop_deleted();  // bus/consumer_group.cpp: partitions of deleted topics, as lost
  Result<Assigned*> require(const TopicPartition& tp);
  Status set_paused(const std::vector<TopicPartition>& tps, bool paused);

  // bus/consumer_ring.cpp: reading rings
  static bool seek_ring(Assigned& a, std::uint64_t offset);
  Status take_gate(Assigned& a);
  Status reset(Assigned& a);
  Status check_stall(Assigned& a, bool& moved);
  [[gnu::cold]] Status corrupt(const Assigned& a) const;
  Status fetch_one(std::size_t idx, std::size_t limit);
  Status check_copied_lengths(Assigned& a, std::size_t first);
  [[gnu::cold, gnu::noinline]] static Status bad_lengths(const ConsumedRecord& r);
  Status fetch();
  Status finish_batch();
  bool has_data();
  void block(std::int64_t max_ns);
  std::uint32_t in_flight_waits = 0;  // block() calls in a row that found a claim in flight

  // bus/consumer_disk.cpp: reading the disk log
  void seek_beginning(Assigned& a);
  bool to_disk(Assigned& a, std::uint64_t offset);
  Status fetch_disk(std::size_t idx, std::size_t limit);

  // bus/consumer_group.cpp: group membership
  std::string client_name() const;
  proto::json join_request(bool with_owned) const;
  Status join(bool with_owned);
  Status bus_alive() const;
  // A commit the consumer makes by itself (auto-commit), answered to config.on_commit.
  Status auto_commit(const std::vector<std::pair<TopicPartition, std::uint64_t>>& offs, bool sync);
  Status commit_offsets(const std::vector<std::pair<TopicPartition, std::uint64_t>>& offs, bool sync,
                        Consumer::CommitCallback done = {});
  std::vector<std::pair<TopicPartition, std::uint64_t>> positions(bool only_changed);
  Result<std::vector<std::optional<std::uint64_t>>> fetch_committed(const std::vector<TopicPartition>& tps);
  static std::vector<TopicPartition> parse_tps(const proto::json& j);
  Status on_revoke(const std::vector<TopicPartition>& tps);
  void on_lose(const std::vector<TopicPartition>& tps);
  Status on_assign(std::uint64_t generation, const std::vector<TopicPartition>& tps);
  Status process_pushes();
  // Once per poll: a group member's poll count (busd judges max_poll_interval by it) and its
  // notice word; every 8th poll, or on a notice, the rest (group_tick_slow). Inline: the
  // poll's fast path pays a few instructions for it.
  Status group_tick() {
    if (!group) {
      if (simple_conn && (++simple_polls & 7) == 0) [[unlikely]] simple_tick();
      return {};
    }
    ++group->polls;
    if (group->slot) group->slot->polls.store(group->polls, std::memory_order_relaxed);
    // SYNC POINT: acquire; pairs with busd's release bump of the notice.
    const bool check = group->slot && group->conn && group->slot->notice.load(std::memory_order_acquire) != group->seen_notice;
    if ((group->polls & 7) != 0 && !check) [[likely]] return {};
    return group_tick_slow(check);
  }
  Status group_tick_slow(bool check);
  void forget_slot();
  std::map<std::pair<std::string, std::uint32_t>, std::uint64_t>& committed_by_us() {
    return group ? group->last_committed : simple_committed;
  }

  // bus/consumer_commits.cpp: commits of a consumer of assign() with a group_id
  Result<BusdConnection*> simple_connection();
  Result<std::vector<std::optional<std::uint64_t>>> simple_starts(const std::vector<TopicPartition>& tps);
  void simple_tick();
  Status simple_close();
  void settle_commits(bool wait);  // calls the callbacks of the answered ones (all with `wait`)
};

// What busd's Kafka gateway asks of a Consumer beyond the public API. Its reader is sought
// back to each Fetch's offset and reads up to where it stopped before, so its empty looks at
// that spot never reach check_stall()'s 256th: it asks for the look itself.
struct ConsumerInternals {
  // Looks at once whether `tp`'s reader is held at an aborted claim, a stuck one or a lap
  // (check_stall() without waiting for the 256th empty look). True: it can read on.
  static Result<bool> look_past_stall(Consumer& c, const TopicPartition& tp);
};

}  // namespace shmbus
