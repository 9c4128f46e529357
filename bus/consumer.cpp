#include "shmbus/consumer.h"

#include <sched.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <thread>

#include <fmt/format.h>

#include "bus/busd_layout.h"
#include "bus/disk_log.h"
#include "bus/paths.h"
#include "bus/group_client.h"
#include "bus/topic.h"
#include "shm/futex.h"
#include "shm/process.h"
#include "shm/ring.h"
#include "bus/names.h"

namespace shmbus {

std::optional<Header> HeaderIterator::next() noexcept {
  if (raw_.size() < 8) return std::nullopt;
  std::uint32_t kl, vl;
  std::memcpy(&kl, raw_.data(), 4);
  std::memcpy(&vl, raw_.data() + 4, 4);
  if (raw_.size() - 8 < static_cast<std::uint64_t>(kl) + vl) return std::nullopt;
  Header h{std::string_view(reinterpret_cast<const char*>(raw_.data() + 8), kl), raw_.subspan(8 + kl, vl)};
  raw_ = raw_.subspan(8 + kl + vl);
  return h;
}

namespace {

inline void cpu_relax() noexcept { __builtin_ia32_pause(); }

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
  // Spilled topics: offsets older than the ring come from the disk log. While disk_next is
  // set, records come from there; the ring reader waits at the ring's start (its gate, if
  // any, too) until the disk catches up with it.
  std::unique_ptr<disklog::LogReader> disk;
  std::uint64_t disk_next = kFromRing;
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
  return true;
}

}  // namespace

struct GroupState {
  std::string name;
  std::vector<std::string> topics;
  std::unique_ptr<BusdConnection> conn;
  std::string member_id;
  std::uint64_t generation = 0;
  shm::Segment segment;
  MemberSlot* slot = nullptr;
  std::uint32_t seen_notice = 0;
  std::uint64_t polls = 0;
  std::uint64_t last_heartbeat = 0, last_check = 0, last_commit = 0, last_reconnect = 0;
  bool assigned_once = false;
  std::uint64_t reconnect_backoff = 100'000'000;  // ns between attempts to reach busd again
  std::map<std::pair<std::string, std::uint32_t>, std::uint64_t> last_committed;
};

struct Consumer::Impl {
  std::shared_ptr<Bus> bus;
  ConsumerConfig config;
  std::optional<GroupState> group;
  std::vector<Assigned> assigned;
  // Copies of records: grows by doubling and is never zero-filled (vector::resize would
  // memset every byte before the copy overwrites it).
  std::unique_ptr<std::byte[]> arena;
  std::size_t arena_cap = 0, arena_used = 0;

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
  // The records of the poll in the making: zero-copy ones are decoded as they are read,
  // copied ones (arena) once the arena stops growing.
  std::vector<ConsumedRecord> batch;
  std::vector<ArenaRecord> arena_records;
  std::optional<Error> deferred;  // an error met after other records of the same poll
  std::size_t rr = 0;
  std::uint64_t lost = 0;
  std::uint64_t aborted_base = 0;
  // The process that made it: gates and waiter slots are this process's (a forked child
  // that inherits the consumer must neither use nor release them).
  std::int32_t pid = shm::self_process().pid;

  ~Impl() { release_gates(); }

  Result<Assigned> make_assigned(const TopicPartition& tp, std::optional<std::uint64_t> start) {
    auto t = bus->topic(tp.topic);
    if (!t) return tl::unexpected(t.error());
    if (tp.partition >= (*t)->partitions())
      return make_error(Errc::kInvalidArgument, fmt::format("topic '{}' has {} partitions, no partition {}", tp.topic,
                                                            (*t)->partitions(), tp.partition));
    Assigned a;
    a.tp = tp;
    a.topic = *t;
    a.reader = shm::RingReader((*t)->ring(tp.partition));
    if (!bus->read_only()) {
      auto l = shm::SegmentLock::open((*t)->segment(tp.partition));
      if (!l) return tl::unexpected(l.error());
      a.lock = std::move(*l);
      a.waiter = shm::take_waiter_slot(a.reader.ring(), a.lock);
    }
    if (config.auto_offset_reset == OffsetReset::kEarliest) seek_beginning(a);
    else a.reader.seek_latest();
    if (start && *start < a.reader.ring().start_offset() && to_disk(a, *start)) return a;
    if (start) a.disk_next = Assigned::kFromRing;  // not the reset's choice: the committed offset
    if (start && !seek_ring(a, *start)) {
      // The committed offset is gone from the ring (or not written yet): auto.offset.reset.
      if (config.auto_offset_reset == OffsetReset::kError)
        return make_error(Errc::kOffsetOutOfRange, fmt::format("{}-{}: committed offset {} is not in the ring (it holds {}..{})",
                                                               tp.topic, tp.partition, *start, a.reader.ring().start_offset(),
                                                               a.reader.ring().end_offset()));
      if (*start < a.reader.ring().start_offset()) {
        // Overwritten since it was committed: lose as little as possible.
        seek_beginning(a);
        if (a.next_offset() > *start) lost += a.next_offset() - *start;
      }
    }
    return a;
  }

  // Holds producers back where the topic asks for it: always for group members of block
  // topics (what they have not committed must survive them), else on request.
  Status arm(Assigned& a) {
    const bool block = a.reader.ring().retention() == shm::Retention::kBlock;
    if (block && (config.hold_producers || group) && !bus->read_only()) {
      if (auto ok = take_gate(a); !ok) return ok;
      a.zero_copy = true;
    }
    return {};
  }

  void drop(const TopicPartition& tp) {
    for (auto it = assigned.begin(); it != assigned.end(); ++it)
      if (it->tp == tp) {
        release_slots(*it);
        assigned.erase(it);
        break;
      }
    rr = 0;
  }

  static void release_slots(Assigned& a) {
    shm::release_process_gate(a.reader.ring(), a.lock, a.gate);
    a.gate = nullptr;
    shm::release_waiter_slot(a.reader.ring(), a.lock, a.waiter);
    a.waiter = -1;
  }

  // Positions the ring reader at `offset`; false when the ring no longer (or not yet) holds
  // it. Past a claim still unfinished, the reader waits at that claim and the records
  // below `offset` are dropped as they arrive (the claim may still commit or abort).
  static bool seek_ring(Assigned& a, std::uint64_t offset) {
    a.skip_below = 0;
    const shm::ReadStatus st = a.reader.seek(offset);
    if (st == shm::ReadStatus::kNone) a.skip_below = offset;
    return st == shm::ReadStatus::kRecord || st == shm::ReadStatus::kNone;
  }

  // ---- consumer groups ----

  std::string client_name() const {
    if (!config.client_name.empty()) return config.client_name;
    std::ifstream comm("/proc/self/comm");  // the process name, as ps shows it
    std::string name;
    std::getline(comm, name);
    return name.empty() ? std::string("consumer") : name;
  }

  proto::json join_request(bool with_owned) const {
    proto::json owned = proto::json::array();
    if (with_owned)
      for (const auto& a : assigned) owned.push_back({a.tp.topic, a.tp.partition});
    return proto::json{{"op", "join"},
                       {"group", group->name},
                       {"topics", group->topics},
                       {"assignor", config.assignor},
                       {"session_timeout_ms", config.session_timeout.count()},
                       {"name", client_name()},
                       {"member_id", group->member_id},
                       {"owned", owned}};
  }

  Status join(bool with_owned) {
    // From poll() (a rejoin) keep it short: the caller is waiting for records.
    auto conn = BusdConnection::connect(bus->name(), with_owned ? std::chrono::milliseconds(500) : std::chrono::milliseconds(5000));
    if (!conn) return tl::unexpected(conn.error());
    auto r = (*conn)->request(join_request(with_owned), std::chrono::seconds(5));
    if (!r) return tl::unexpected(r.error());
    auto seg = shm::Segment::open((*r).value("segment", ""), shm::SegmentKind::kBusd, kBusdLayoutMajor, true);
    if (!seg) return tl::unexpected(seg.error());
    const std::uint32_t slot = (*r).value("slot", 0u);
    if (slot >= kMemberSlots) return make_error(Errc::kBadSegment, "busd gave a member slot out of range");
    group->segment = std::move(*seg);
    group->slot = group->segment.at<MemberSlot>(kMemberSlotsOffset) + slot;
    group->seen_notice = group->slot->notice.load(std::memory_order_acquire);
    group->member_id = (*r).value("member_id", "");
    group->conn = std::move(*conn);
    if (with_owned && r->contains("owned")) {
      // What busd did not let us keep is someone else's now: stop with it at once.
      const auto kept = parse_tps((*r)["owned"]);
      std::vector<TopicPartition> gone;
      for (const auto& a : assigned)
        if (std::find(kept.begin(), kept.end(), a.tp) == kept.end()) gone.push_back(a.tp);
      if (!gone.empty() && config.on_revoked) config.on_revoked(gone);
      for (const auto& tp : gone) drop(tp);
    }
    group->last_heartbeat = group->last_check = group->last_reconnect = shm::monotonic_ns();
    group->slot->heartbeat_ns.store(group->last_heartbeat, std::memory_order_relaxed);
    return {};
  }

  Status commit_offsets(const std::vector<std::pair<TopicPartition, std::uint64_t>>& offs, bool sync) {
    if (!group) return make_error(Errc::kInvalidArgument, "commit needs a group: call subscribe() first");
    if (!group->conn) return make_error(Errc::kSystem, fmt::format("busd is not reachable; group '{}' cannot commit now", group->name));
    proto::json arr = proto::json::array();
    for (const auto& [tp, o] : offs) arr.push_back({tp.topic, tp.partition, o});
    proto::json req{{"op", "commit"}, {"group", group->name}, {"member_id", group->member_id},
                    {"generation", group->generation}, {"offsets", arr}, {"sync", sync}};
    if (!sync) return group->conn->send(req);
    auto r = group->conn->request(req, std::chrono::seconds(5));
    if (!r) return tl::unexpected(r.error());
    for (const auto& [tp, o] : offs) group->last_committed[{tp.topic, tp.partition}] = o;
    return {};
  }

  std::vector<std::pair<TopicPartition, std::uint64_t>> positions(bool only_changed) {
    std::vector<std::pair<TopicPartition, std::uint64_t>> out;
    for (const auto& a : assigned) {
      const auto key = std::make_pair(a.tp.topic, a.tp.partition);
      auto it = group ? group->last_committed.find(key) : group->last_committed.end();
      if (only_changed && group && it != group->last_committed.end() && it->second == a.next_offset()) continue;
      out.push_back({a.tp, a.next_offset()});
    }
    return out;
  }

  Result<std::vector<std::optional<std::uint64_t>>> fetch_committed(const std::vector<TopicPartition>& tps) {
    if (!group || !group->conn) return make_error(Errc::kInvalidArgument, "committed() needs a connected group");
    proto::json arr = proto::json::array();
    for (const auto& tp : tps) arr.push_back({tp.topic, tp.partition});
    auto r = group->conn->request({{"op", "committed"}, {"group", group->name}, {"partitions", arr}}, std::chrono::seconds(5));
    if (!r) return tl::unexpected(r.error());
    std::vector<std::optional<std::uint64_t>> out;
    for (const auto& o : (*r)["offsets"]) out.push_back(o.is_number_unsigned() ? std::optional(o.get<std::uint64_t>()) : std::nullopt);
    return out;
  }

  static std::vector<TopicPartition> parse_tps(const proto::json& j) {
    std::vector<TopicPartition> out;
    if (j.is_array())
      for (const auto& tp : j)
        if (tp.is_array() && tp.size() == 2 && tp[0].is_string() && tp[1].is_number_unsigned())
          out.push_back({tp[0].get<std::string>(), tp[1].get<std::uint32_t>()});
    return out;
  }

  Status on_revoke(const std::vector<TopicPartition>& tps) {
    std::vector<std::pair<TopicPartition, std::uint64_t>> offs;
    for (const auto& a : assigned)
      if (std::find(tps.begin(), tps.end(), a.tp) != tps.end()) offs.push_back({a.tp, a.next_offset()});
    if (config.enable_auto_commit && !offs.empty()) (void)commit_offsets(offs, true);
    if (config.on_revoked) config.on_revoked(tps);
    for (const auto& tp : tps) drop(tp);
    proto::json arr = proto::json::array();
    for (const auto& tp : tps) arr.push_back({tp.topic, tp.partition});
    if (group->conn) (void)group->conn->send({{"op", "revoked"}, {"group", group->name}, {"partitions", arr}});
    return {};
  }

  Status on_assign(std::uint64_t generation, const std::vector<TopicPartition>& tps) {
    group->generation = generation;
    group->assigned_once = true;
    std::vector<TopicPartition> gone, added;
    for (const auto& a : assigned)
      if (std::find(tps.begin(), tps.end(), a.tp) == tps.end()) gone.push_back(a.tp);
    for (const auto& tp : tps)
      if (!find(tp)) added.push_back(tp);
    if (!gone.empty()) {
      if (config.on_revoked) config.on_revoked(gone);
      for (const auto& tp : gone) drop(tp);
    }
    if (added.empty()) return {};
    auto committed = fetch_committed(added);
    auto give_back = [&](const Error& e) -> Status {
      // Never guess a start: without the committed offsets (or a gate), leave the group
      // and join again, so that busd gives these partitions to someone who can take them.
      for (const auto& tp : added) drop(tp);
      group->conn.reset();
      group->slot = nullptr;
      return make_error(e.code, fmt::format("group '{}': could not take partitions ({}); joining again", group->name, e.message));
    };
    if (!committed) return give_back(committed.error());
    for (std::size_t i = 0; i < added.size(); ++i) {
      std::optional<std::uint64_t> start = i < committed->size() ? (*committed)[i] : std::nullopt;
      auto a = make_assigned(added[i], start);
      if (!a) return give_back(a.error());
      if (start) group->last_committed[{added[i].topic, added[i].partition}] = *start;
      assigned.push_back(std::move(*a));
      if (auto ok = arm(assigned.back()); !ok) return give_back(ok.error());
    }
    if (config.on_assigned) config.on_assigned(added);
    return {};
  }

  Status process_pushes() {
    auto& q = group->conn->pushes();
    while (!q.empty()) {
      proto::json m = std::move(q.front());
      q.pop_front();
      const std::string kind = m.value("push", "");
      if (kind == "revoke") {
        if (auto ok = on_revoke(parse_tps(m["partitions"])); !ok) return ok;
      } else if (kind == "assign") {
        if (auto ok = on_assign(m.value("generation", 0ull), parse_tps(m["partitions"])); !ok) return ok;
      } else if (kind == "evicted") {
        // Our partitions may already be someone else's: stop, and join again as new.
        std::vector<TopicPartition> all;
        for (const auto& a : assigned) all.push_back(a.tp);
        if (config.on_revoked && !all.empty()) config.on_revoked(all);
        release_gates();
        assigned.clear();
        group->member_id.clear();
        group->conn.reset();
        group->slot = nullptr;  // busd freed it; it may be another member's now
        return {};
      }
    }
    return {};
  }

  // Called on every poll: one load of the notice word; the rest every 8th poll.
  Status group_tick() {
    if (!group) return {};
    bool check = group->slot && group->conn &&
                 group->slot->notice.load(std::memory_order_acquire) != group->seen_notice;  // SYNC POINT: busd's release bump
    // The clock every 8th poll: a member busy with large batches still heartbeats in time.
    if ((++group->polls & 7) != 0 && !check) return {};
    const std::uint64_t now = shm::monotonic_ns();
    if (group->slot && now - group->last_heartbeat >= 100'000'000) {
      group->slot->heartbeat_ns.store(now, std::memory_order_relaxed);
      group->last_heartbeat = now;
    }
    if (!group->conn) {
      // busd went away (or evicted us): consume on, and join again every 100 ms, saying
      // what we still own so that the group re-forms without moving a partition.
      if (now - group->last_reconnect < group->reconnect_backoff) return {};
      group->last_reconnect = now;
      if (join(true)) {
        group->last_check = 0;
        group->reconnect_backoff = 100'000'000;
      } else {
        group->reconnect_backoff = std::min<std::uint64_t>(group->reconnect_backoff * 2, 5'000'000'000);
      }
      return {};
    }
    if (check || now - group->last_check >= 100'000'000) {
      group->last_check = now;
      group->seen_notice = group->slot->notice.load(std::memory_order_acquire);
      if (!group->conn->pump()) {
        group->conn.reset();
        group->slot = nullptr;
        return {};
      }
      if (auto ok = process_pushes(); !ok) return ok;
    }
    if (config.enable_auto_commit && group->conn && now - group->last_commit >= static_cast<std::uint64_t>(config.auto_commit_interval.count()) * 1'000'000) {
      group->last_commit = now;
      // Asynchronous: not marked as committed (busd may refuse it, e.g. in a rebalance), so
      // idle partitions are sent again next time and close() commits for sure.
      auto offs = positions(true);
      if (!offs.empty()) (void)commit_offsets(offs, false);
    }
    return {};
  }

  void release_gates() {
    if (shm::self_process().pid != pid) return;
    for (auto& a : assigned) release_slots(a);
  }

  Assigned* find(const TopicPartition& tp) {
    for (auto& a : assigned)
      if (a.tp == tp) return &a;
    return nullptr;
  }

  Result<Assigned*> require(const TopicPartition& tp) {
    if (Assigned* a = find(tp)) return a;
    return make_error(Errc::kInvalidArgument, fmt::format("{}-{} is not assigned to this consumer", tp.topic, tp.partition));
  }

  void set_gate(Assigned& a) {
    // Store only when it moved: a store pulls the line back from a producer that read it.
    if (!a.gate || a.gate_position == a.reader.position()) return;
    const bool back = a.reader.position() < a.gate_position;
    a.gate_position = a.reader.position();
    a.gate->position.store(a.gate_position, std::memory_order_release);
    // Moving back (seek) is like a new gate: a producer may already have reclaimed past it.
    if (back && a.reader.ring().bump_gate_generation() > a.gate_position) {
      a.reader.seek_earliest();
      a.gate_position = a.reader.position();
      a.gate->position.store(a.gate_position, std::memory_order_release);
    }
  }

  Status take_gate(Assigned& a) {
    a.gate = shm::take_process_gate(a.reader.ring(), a.lock, a.reader);
    if (!a.gate)
      return make_error(Errc::kTooManyClients, fmt::format("partition {}-{} has no free gate slot ({} in use)", a.tp.topic,
                                                           a.tp.partition, shm::kGateSlots));
    a.gate_position = a.gate->position.load(std::memory_order_relaxed);
    return {};
  }

  // The oldest record: on disk for a spilled topic, else the ring's start.
  void seek_beginning(Assigned& a) {
    a.disk_next = Assigned::kFromRing;
    a.skip_below = 0;
    a.reader.seek_earliest();
    if (a.topic->config().spill.enabled) {
      const auto& st = a.reader.ring().ctl()->stats;
      const std::uint64_t start = st.spill_start.load(std::memory_order_acquire);
      if (start < a.reader.offset()) (void)to_disk(a, start);
    }
  }

  // Reads on from the disk log at `offset`, if the topic spills and its log has it.
  bool to_disk(Assigned& a, std::uint64_t offset) {
    if (!a.topic->config().spill.enabled) return false;
    const auto& st = a.reader.ring().ctl()->stats;
    const std::uint64_t start = st.spill_start.load(std::memory_order_acquire), end = st.spill_end.load(std::memory_order_acquire);
    if (end <= start || offset >= end) return false;
    if (offset < start) {  // gone to retention too
      lost += start - offset;
      offset = start;
    }
    if (!a.disk)
      a.disk = std::make_unique<disklog::LogReader>(disklog::partition_dir(bus_paths(bus->name()).state_dir, a.tp.topic, a.tp.partition));
    a.disk_next = offset;
    a.skip_below = 0;
    a.reader.seek_earliest();  // where the disk will hand over; a gate waits here
    return true;
  }

  // Up to `limit` records of a partition read from its disk log, into the arena.
  Status fetch_disk(std::size_t idx, std::size_t limit) {
    Assigned& a = assigned[idx];
    const shm::Ring& ring = a.reader.ring();
    const std::uint64_t end = ring.ctl()->stats.spill_end.load(std::memory_order_acquire);
    const std::uint64_t disk_start = ring.ctl()->stats.spill_start.load(std::memory_order_acquire);
    const std::size_t first = batch.size();
    std::uint64_t at = a.disk_next;  // the next offset not accounted for
    auto next = a.disk->read(a.disk_next, end, 4u << 20, [&](const disklog::FrameView& v) {
      // Retention removed the segment we were reading: what it held is lost to us.
      if (v.header.offset > at && at < disk_start) lost += std::min(v.header.offset, disk_start) - at;
      at = disklog::frame_last(v.header) + 1;
      if (v.header.attributes == disklog::kAttrLost) {  // overwritten before busd spilled it
        lost += disklog::frame_last(v.header) + 1 - std::max(v.header.offset, a.disk_next);
        return true;
      }
      if (v.header.attributes != 0) return true;  // aborted offsets: never records
      const std::size_t at = arena_used;
      std::byte* rec = arena_take(shm::kRecordHeaderSize + v.payload.size());
      shm::RecordHeader h{};
      h.length = static_cast<std::uint32_t>(shm::kRecordHeaderSize + v.payload.size());
      h.timestamp_ns = v.header.timestamp_ns;
      h.key_len = v.header.key_len;  // kNullKeyLen == kNullKey
      h.headers_len = v.header.headers_len;
      h.value_len = v.header.value_len;
      std::memcpy(static_cast<void*>(rec), &h, sizeof h);
      if (!v.payload.empty()) std::memcpy(rec + shm::kRecordHeaderSize, v.payload.data(), v.payload.size());
      take_copied(a, v.header.offset, at);
      return batch.size() - first < limit;
    });
    if (!next)
      return make_error(next.error().code, fmt::format("{}-{}: reading offset {} from disk: {}", a.tp.topic, a.tp.partition,
                                                       a.disk_next, next.error().message));
    if (*next == a.disk_next && a.disk_next < end) {
      // Nothing on disk between here and the spill position, which busd publishes only
      // after writing (a log of an older version without gap frames, or damaged by hand):
      // those offsets are gone.
      lost += end - a.disk_next;
      *next = end;
    }
    a.disk_next = std::max(a.disk_next, *next);
    if (batch.size() > first || a.disk_next < end) return {};
    // The disk has nothing more: on to the ring (and its log file closed, so that
    // retention can free it).
    if (seek_ring(a, a.disk_next)) {
      a.disk_next = Assigned::kFromRing;
      a.disk.reset();
    } else if (a.disk_next < ring.start_offset()) {
      // Overwritten before busd spilled it (an overwrite topic whose spiller fell behind).
      const std::uint64_t was = a.disk_next;
      a.disk_next = Assigned::kFromRing;
      a.disk.reset();
      a.reader.seek_earliest();
      lost += a.reader.offset() - was;
    }
    return {};
  }

  Status reset(Assigned& a) {
    const std::uint64_t was = a.reader.offset();
    // Overwritten before we read it: a spilled topic still has it on disk.
    if (to_disk(a, was)) return {};
    a.skip_below = 0;
    switch (config.auto_offset_reset) {
      case OffsetReset::kEarliest: a.reader.seek_earliest(); break;
      case OffsetReset::kLatest: a.reader.seek_latest(); break;
      case OffsetReset::kError:
        return make_error(Errc::kOffsetOutOfRange,
                          fmt::format("{}-{}: offset {} was overwritten before it was read; the oldest is now {} "
                                      "(auto.offset.reset=error)",
                                      a.tp.topic, a.tp.partition, was, a.reader.ring().start_offset()));
    }
    if (a.reader.offset() > was) lost += a.reader.offset() - was;
    set_gate(a);
    return {};
  }

  // Every 256th empty look at a partition: lapped? a claim stuck, aborted, or committed
  // before its first word was stored? These read lines that producers write, which a
  // spinning reader must not pull on every look. `moved`: the reader can read on.
  Status check_stall(Assigned& a, bool& moved) {
    moved = false;
    if ((++a.empty_polls & 255) != 0) return {};
    if (a.reader.lapped()) return reset(a);
    switch (a.reader.unstick(a.lock.valid() ? &a.lock : nullptr, shm::monotonic_ns())) {
      case shm::ReadStatus::kRecord:
        moved = true;
        a.empty_polls = 0;
        return {};
      case shm::ReadStatus::kLapped: return reset(a);
      case shm::ReadStatus::kCorrupt: return corrupt(a);
      default: return {};
    }
  }

  [[gnu::cold]] Status corrupt(const Assigned& a) const {
    return make_error(Errc::kBadSegment, fmt::format("{}-{}: at offset {} (position {}) in {}: {}", a.tp.topic, a.tp.partition,
                                                     a.reader.offset(), a.reader.position(),
                                                     shm::Segment::path_of(a.topic->segment(a.tp.partition).name()),
                                                     a.reader.problem()));
  }

  // Reads up to `limit` records of one partition into the batch.
  Status fetch_one(std::size_t idx, std::size_t limit) {
    Assigned& a = assigned[idx];
    if (a.reader.ring().closed())
      return make_error(Errc::kTopicDeleted, fmt::format("topic '{}' was deleted", a.tp.topic));
    if (a.disk_next != Assigned::kFromRing) {
      if (auto ok = fetch_disk(idx, limit); !ok || a.disk_next != Assigned::kFromRing) return ok;
    }
    const std::uint64_t start = a.reader.position();
    const std::size_t first = batch.size();
    const std::size_t first_arena = arena_used;
    while (batch.size() - first < limit) {
      const shm::RecordHeader* h = nullptr;
      std::uint32_t len = 0;  // checked by next(): never read the header's length again
      const shm::ReadStatus st = a.reader.next(h, len);
      if (st == shm::ReadStatus::kRecord) {
        if (a.reader.offset() < a.skip_below) [[unlikely]] {  // before the offset sought
          a.reader.advance(len);
          continue;
        }
        if (a.zero_copy) {
          // Held back by our gate, the record cannot change under us: decode it in place.
          ConsumedRecord& r = batch.emplace_back();
          r.topic = a.tp.topic;
          r.partition = a.tp.partition;
          r.offset = a.reader.offset();
          if (!decode(reinterpret_cast<const std::byte*>(h), r)) [[unlikely]] {
            // The records before it are returned now; the next poll reports this one once
            // and steps over it (a gate left on it would hold producers back for good).
            Status bad = bad_lengths(r);
            batch.pop_back();
            if (batch.size() > first) break;
            a.reader.advance(len);
            return bad;
          }
        } else {
          const std::size_t at = arena_used;
          shm::racy_copy(arena_take(len), h, len);
          take_copied(a, a.reader.offset(), at, a.reader.position(), len);
        }
        a.reader.advance(len);
        a.empty_polls = 0;
        continue;
      }
      if (st == shm::ReadStatus::kNone) {
        if (batch.size() > first) break;
        bool moved = false;
        if (auto ok = check_stall(a, moved); !ok || !moved) return ok;
        continue;  // stepped over an aborted claim, or found a committed one: read on
      }
      if (st == shm::ReadStatus::kCorrupt) return corrupt(a);
      // Lapped before we got to the next record. What we copied so far is returned if it
      // is intact; the next poll resets the position.
      if (batch.size() > first) break;
      return reset(a);
    }
    if (!a.zero_copy && batch.size() > first && !a.reader.intact_from(start)) {
      // A producer overwrote part of what we copied: none of it may be returned.
      a.reader.rewind(batch[first].offset, start);
      arena_used = first_arena;
      batch.resize(first);
      while (!arena_records.empty() && arena_records.back().index >= first) arena_records.pop_back();
      return reset(a);
    }
    if (!a.zero_copy && batch.size() > first) return check_copied_lengths(a, first);
    return {};
  }

  // The intact copies of one partition's records (from batch index `first`), judged now: a
  // torn copy could have looked malformed. As the in-place reader does, the records before
  // a bad one are returned now, and the next poll reports it once and steps over it.
  Status check_copied_lengths(Assigned& a, std::size_t first) {
    std::size_t ar = arena_records.size();
    while (ar > 0 && arena_records[ar - 1].index >= first) --ar;
    for (; ar < arena_records.size(); ++ar) {
      const ArenaRecord c = arena_records[ar];
      shm::RecordHeader h;
      std::memcpy(static_cast<void*>(&h), arena.get() + c.arena_at, sizeof h);
      if (lengths_fit(h)) continue;
      Status bad = bad_lengths(batch[c.index]);
      const std::uint64_t offset = batch[c.index].offset;
      const bool alone = c.index == first;
      if (alone) a.reader.rewind(offset + 1, c.pos + c.len);  // stepped over, reported now
      else a.reader.rewind(offset, c.pos);                     // read again by the next poll
      arena_used = c.arena_at;
      batch.resize(c.index);
      arena_records.resize(ar);
      return alone ? bad : Status{};
    }
    return {};
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

  [[gnu::cold, gnu::noinline]] static Status bad_lengths(const ConsumedRecord& r) {
    return make_error(Errc::kBadSegment, fmt::format("{}-{}: record at offset {} has lengths that do not fit its size",
                                                     r.topic, r.partition, r.offset));
  }

  Status fetch() {
    batch.clear();
    arena_records.clear();
    arena_used = 0;
    const std::size_t n = assigned.size();
    // Round robin without a division (two of them were a tenth of a poll's instructions).
    // The assignment may have shrunk since rr was last moved (an eviction clears it).
    if (rr >= n) rr = 0;
    std::size_t idx = rr;
    for (std::size_t k = 0; k < n && batch.size() < config.max_poll_records; ++k) {
      if (auto ok = fetch_one(idx, config.max_poll_records - batch.size()); !ok) {
        // Other partitions' records already read are returned first; the error is the
        // next poll's (their readers have moved past them).
        if (batch.empty()) return ok;
        deferred = ok.error();
        break;
      }
      if (++idx == n) idx = 0;
    }
    if (n && ++rr >= n) rr = 0;
    return {};
  }

  // The copied records' fields, now that the arena no longer moves.
  Status finish_batch() {
    for (const ArenaRecord& c : arena_records) {
      ConsumedRecord& r = batch[c.index];
      if (!decode(arena.get() + c.arena_at, r)) [[unlikely]] return bad_lengths(r);
    }
    return {};
  }

  bool has_data() {
    for (auto& a : assigned) {
      if (a.disk_next != Assigned::kFromRing) return true;
      const shm::RecordHeader* h = nullptr;
      if (a.reader.next(h) != shm::ReadStatus::kNone || a.reader.lapped()) return true;
      if (a.reader.ring().closed()) return true;
    }
    return false;
  }

  // Eventcount, consumer side: register, look again, sleep. Pairs with the load of
  // `waiters` right after a producer's claim (RingWriter::claim).
  void block(std::int64_t max_ns) {
    shm::FutexWaitItem items[128];  // futex_waitv takes at most 128 words
    const std::size_t n = std::min<std::size_t>(assigned.size(), 127);
    bool in_flight = false, unregistered = false;
    for (std::size_t i = 0; i < n; ++i) {
      auto& ctl = *assigned[i].reader.ring().ctl();
      // SYNC POINT: seq_cst RMW, then the seq_cst load of the tail below.
      if (assigned[i].waiter >= 0) ctl.notify.waiters.fetch_or(std::uint64_t{1} << assigned[i].waiter, std::memory_order_seq_cst);
      else unregistered = true;  // no waiter slot: no producer wakes us, so sleep briefly
      items[i] = {&ctl.notify.seq, ctl.notify.seq.load(std::memory_order_acquire)};
    }
    for (std::size_t i = 0; i < n; ++i) {
      const auto& r = assigned[i].reader;
      in_flight |= r.ring().tail_position_seq_cst() > r.position();
    }
    std::size_t waits = n;
    if (group && group->slot) items[waits++] = {&group->slot->notice, group->seen_notice};
    if (in_flight) {
      // A claim made before we registered may not wake us: its commit is imminent (or its
      // writer is dead or stopped, which the stall check finds), so do not sleep on it.
      sched_yield();
    } else if (!has_data()) {
      const std::int64_t cap = unregistered ? 1'000'000 : 100'000'000;
      shm::futex_wait_any(std::span<const shm::FutexWaitItem>(items, waits), std::min<std::int64_t>(max_ns, cap));
    }
    for (std::size_t i = 0; i < n; ++i)
      if (assigned[i].waiter >= 0)
        assigned[i].reader.ring().ctl()->notify.waiters.fetch_and(~(std::uint64_t{1} << assigned[i].waiter),
                                                                  std::memory_order_relaxed);
    // Before sleeping again, look at what the spinning path looks at only now and then.
    for (auto& a : assigned) a.empty_polls = 255;
  }
};

Consumer::Consumer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Consumer::Consumer(Consumer&&) noexcept = default;
Consumer& Consumer::operator=(Consumer&& o) noexcept {
  if (this != &o) {
    if (impl_) (void)close();
    impl_ = std::move(o.impl_);
  }
  return *this;
}
Consumer::~Consumer() {
  if (impl_) (void)close();
}

Result<Consumer> Consumer::create(std::shared_ptr<Bus> bus, ConsumerConfig config) {
  if (!bus) return make_error(Errc::kInvalidArgument, "consumer needs a bus");
  if (config.max_poll_records == 0) return make_error(Errc::kInvalidArgument, "max_poll_records must be at least 1");
  auto impl = std::make_unique<Impl>();
  impl->bus = std::move(bus);
  impl->config = config;
  return Consumer(std::move(impl));
}

Status Consumer::assign(const std::vector<TopicPartition>& partitions) {
  if (impl_->group) return make_error(Errc::kInvalidArgument, "this consumer is subscribed to a group: assign() and subscribe() do not mix");
  std::vector<Assigned> next;
  for (const auto& tp : partitions) {
    auto a = impl_->make_assigned(tp, std::nullopt);
    if (!a) return tl::unexpected(a.error());
    next.push_back(std::move(*a));
  }
  impl_->release_gates();
  impl_->assigned = std::move(next);
  impl_->rr = 0;
  for (auto& a : impl_->assigned) {
    if (auto ok = impl_->arm(a); !ok) {
      impl_->release_gates();
      impl_->assigned.clear();
      return ok;
    }
  }
  return {};
}

Status Consumer::subscribe(const std::vector<std::string>& topics, const std::string& group) {
  if (impl_->group) return make_error(Errc::kInvalidArgument, fmt::format("already subscribed to group '{}'", impl_->group->name));
  if (!impl_->assigned.empty()) return make_error(Errc::kInvalidArgument, "this consumer has a manual assignment: assign() and subscribe() do not mix");
  if (topics.empty()) return make_error(Errc::kInvalidArgument, "subscribe needs at least one topic");
  if (auto ok = validate_name("group", group); !ok) return ok;
  for (const auto& t : topics) {
    auto topic = impl_->bus->topic(t);
    if (!topic) return tl::unexpected(topic.error());
  }
  impl_->group.emplace();
  impl_->group->name = group;
  impl_->group->topics = topics;
  if (auto ok = impl_->join(false); !ok) {
    impl_->group.reset();
    return ok;
  }
  // Wait for the first assignment (it may wait on other members giving partitions up).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (!impl_->group->assigned_once) {
    if (std::chrono::steady_clock::now() > deadline) {
      impl_->group.reset();
      return make_error(Errc::kTimedOut, fmt::format("group '{}': no assignment from busd within 15 s", group));
    }
    if (!impl_->group->conn || !impl_->group->conn->pump()) {
      impl_->group.reset();
      return make_error(Errc::kSystem, fmt::format("group '{}': busd closed the connection while joining", group));
    }
    if (auto ok = impl_->process_pushes(); !ok) return ok;
    if (!impl_->group->assigned_once) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return {};
}

Status Consumer::commit() { return impl_->commit_offsets(impl_->positions(false), true); }

Status Consumer::commit_async() { return impl_->commit_offsets(impl_->positions(false), false); }

Status Consumer::commit(const std::vector<std::pair<TopicPartition, std::uint64_t>>& offsets) {
  return impl_->commit_offsets(offsets, true);
}

Result<std::vector<std::optional<std::uint64_t>>> Consumer::committed(const std::vector<TopicPartition>& partitions) {
  return impl_->fetch_committed(partitions);
}

Status Consumer::close() {
  if (!impl_->group) return {};
  Status result;
  if (impl_->group->conn) {
    if (impl_->config.enable_auto_commit) {
      auto offs = impl_->positions(true);
      if (!offs.empty()) result = impl_->commit_offsets(offs, true);
    }
  }
  // As Kafka's close(): the partitions are revoked before the member leaves.
  std::vector<TopicPartition> all;
  for (const auto& a : impl_->assigned) all.push_back(a.tp);
  if (impl_->config.on_revoked && !all.empty()) impl_->config.on_revoked(all);
  if (impl_->group->conn)
    (void)impl_->group->conn->request({{"op", "leave"}, {"group", impl_->group->name}}, std::chrono::seconds(2));
  impl_->release_gates();
  impl_->assigned.clear();
  impl_->group.reset();
  return result;
}

std::string Consumer::member_id() const { return impl_->group ? impl_->group->member_id : std::string(); }

std::uint64_t Consumer::generation() const { return impl_->group ? impl_->group->generation : 0; }

std::vector<TopicPartition> Consumer::assignment() const {
  std::vector<TopicPartition> out;
  for (const auto& a : impl_->assigned) out.push_back(a.tp);
  return out;
}

Status Consumer::seek(const TopicPartition& tp, std::uint64_t offset) {
  auto a = impl_->require(tp);
  if (!a) return tl::unexpected(a.error());
  (*a)->disk_next = Assigned::kFromRing;
  if (!Impl::seek_ring(**a, offset)) {
    if (offset < (*a)->reader.ring().start_offset() && impl_->to_disk(**a, offset)) {
      impl_->set_gate(**a);
      return {};
    }
    const auto& st = (*a)->reader.ring().ctl()->stats;
    const std::string disk = (*a)->topic->config().spill.enabled
                                 ? fmt::format(", its disk log {}..{}", st.spill_start.load(std::memory_order_relaxed),
                                               st.spill_end.load(std::memory_order_relaxed))
                                 : std::string();
    return make_error(Errc::kOffsetOutOfRange, fmt::format("{}-{}: offset {} is not in the ring (it holds {}..{}{})", tp.topic,
                                                           tp.partition, offset, (*a)->reader.ring().start_offset(),
                                                           (*a)->reader.ring().end_offset(), disk));
  }
  impl_->set_gate(**a);
  return {};
}

Status Consumer::seek_to_beginning(const TopicPartition& tp) {
  auto a = impl_->require(tp);
  if (!a) return tl::unexpected(a.error());
  impl_->seek_beginning(**a);
  impl_->set_gate(**a);
  return {};
}

Status Consumer::seek_to_end(const TopicPartition& tp) {
  auto a = impl_->require(tp);
  if (!a) return tl::unexpected(a.error());
  (*a)->disk_next = Assigned::kFromRing;
  (*a)->skip_below = 0;
  (*a)->reader.seek_latest();
  impl_->set_gate(**a);
  return {};
}

Result<std::uint64_t> Consumer::position(const TopicPartition& tp) const {
  auto a = impl_->require(tp);
  if (!a) return tl::unexpected(a.error());
  return (*a)->next_offset();
}

std::uint64_t Consumer::lost() const noexcept { return impl_->lost; }

std::uint64_t Consumer::aborted() const noexcept {
  std::uint64_t n = 0;
  for (const auto& a : impl_->assigned) n += a.reader.aborted_skipped();
  return n;
}

Result<std::span<const ConsumedRecord>> Consumer::poll(std::chrono::nanoseconds timeout) {
  Impl& im = *impl_;
  if (shm::self_process().pid != im.pid) [[unlikely]]
    return make_error(Errc::kInvalidArgument,
                      fmt::format("this consumer was made by process {}; a forked child must create its own", im.pid));
  // Records returned by the previous poll are released now: producers may pass them.
  for (auto& a : im.assigned) im.set_gate(a);
  if (auto ok = im.group_tick(); !ok) return tl::unexpected(ok.error());
  if (im.deferred) {
    Error e = std::move(*im.deferred);
    im.deferred.reset();
    im.batch.clear();
    return tl::unexpected(std::move(e));
  }
  const std::int64_t limit = timeout.count();
  // The clock is read only once the first look found nothing: a poll that finds records
  // at once (the common case under load) pays for no clock read.
  std::uint64_t start = 0, now = 0;
  for (std::uint64_t iter = 0;; ++iter) {
    if (auto ok = im.fetch(); !ok) return tl::unexpected(ok.error());
    if (!im.batch.empty()) {
      if (auto ok = im.finish_batch(); !ok) return tl::unexpected(ok.error());
      return std::span<const ConsumedRecord>(im.batch);
    }
    if (limit <= 0 || im.assigned.empty()) {
      if (im.assigned.empty() && limit > 0) std::this_thread::sleep_for(timeout);
      im.batch.clear();
      return std::span<const ConsumedRecord>(im.batch);
    }
    if (im.group && iter > 0)
      if (auto ok = im.group_tick(); !ok) return tl::unexpected(ok.error());
    if (iter == 0) start = now = shm::monotonic_ns();
    else if (im.config.wait != WaitStrategy::kSpin || (iter & 63) == 0) now = shm::monotonic_ns();
    const std::int64_t elapsed = static_cast<std::int64_t>(now - start);
    if (elapsed >= limit) {
      im.batch.clear();
      return std::span<const ConsumedRecord>(im.batch);
    }
    switch (im.config.wait) {
      case WaitStrategy::kSpin: cpu_relax(); break;
      case WaitStrategy::kYield: sched_yield(); break;
      case WaitStrategy::kBlock:
        if (elapsed < im.config.spin.count() / 25) cpu_relax();  // a couple of microseconds
        else im.block(limit - elapsed);
        break;
      case WaitStrategy::kAdaptive:
        if (elapsed < im.config.spin.count()) cpu_relax();
        else if (elapsed < im.config.spin.count() + im.config.yield.count()) sched_yield();
        else im.block(limit - elapsed);
        break;
    }
  }
}

}  // namespace shmbus
