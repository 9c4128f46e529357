#include "shmbus/consumer.h"

#include <sched.h>

#include <algorithm>
#include <cstring>
#include <thread>

#include <fmt/format.h>

#include "bus/topic.h"
#include "shm/futex.h"
#include "shm/process.h"
#include "shm/ring.h"

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
  shm::GateSlot* gate = nullptr;  // when holding producers back
  std::uint64_t gate_position = ~0ull;
  bool zero_copy = false;
  std::uint64_t empty_polls = 0;
  std::uint64_t stall_offset = ~0ull;
  std::uint64_t stall_since = 0;
};

// A record in the batch before the arena stops growing: offsets into the arena.
struct Pending {
  std::size_t assigned;
  std::uint64_t offset;
  const std::byte* ring_at;  // zero-copy: the record in the ring
  std::size_t arena_at;      // copy: the record in the arena
};

}  // namespace

struct Consumer::Impl {
  std::shared_ptr<Bus> bus;
  ConsumerConfig config;
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
  std::vector<Pending> pending;
  std::vector<ConsumedRecord> batch;
  std::size_t rr = 0;
  std::uint64_t lost = 0;
  std::uint64_t aborted_base = 0;

  ~Impl() { release_gates(); }

  void release_gates() {
    for (auto& a : assigned) {
      if (a.gate) a.gate->owner_pid.store(0, std::memory_order_release);
      a.gate = nullptr;
    }
  }

  Assigned* find(const TopicPartition& tp) {
    for (auto& a : assigned)
      if (a.tp == tp) return &a;
    return nullptr;
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
    const shm::Ring& ring = a.reader.ring();
    const shm::ProcessId& me = shm::self_process();
    for (std::uint32_t i = 0; i < shm::kGateSlots; ++i) {
      shm::GateSlot* g = ring.gate(i);
      std::int32_t pid = g->owner_pid.load(std::memory_order_acquire);
      if (pid != 0 && shm::process_alive(pid, g->owner_start_ticks.load(std::memory_order_relaxed))) continue;
      // Publish a position before the owner, so producers never see an owner at position 0.
      g->position.store(a.reader.position(), std::memory_order_release);
      if (!g->owner_pid.compare_exchange_strong(pid, me.pid, std::memory_order_acq_rel)) continue;
      g->owner_start_ticks.store(me.start_ticks, std::memory_order_relaxed);
      g->kind = 1;
      g->position.store(a.reader.position(), std::memory_order_release);
      a.gate = g;
      a.gate_position = a.reader.position();
      // A producer that looked at the gates before ours went up may have reclaimed past
      // us: the generation bump makes any such reclaim still in flight fail, and tells us
      // where the ring starts now.
      if (ring.bump_gate_generation() > a.reader.position()) {
        a.reader.seek_earliest();
        a.gate_position = a.reader.position();
        g->position.store(a.gate_position, std::memory_order_release);
      }
      return {};
    }
    return make_error(Errc::kTooManyClients, fmt::format("partition {}-{} has no free gate slot ({} in use)", a.tp.topic,
                                                         a.tp.partition, shm::kGateSlots));
  }

  Status reset(Assigned& a) {
    const std::uint64_t was = a.reader.offset();
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

  // Every 256th empty look at a partition: lapped? a claim stuck? Both read lines that
  // producers write, which a spinning reader must not pull on every look.
  Status check_stall(Assigned& a) {
    if ((++a.empty_polls & 255) != 0) return {};
    if (a.reader.lapped()) return reset(a);
    if (!a.reader.claim_in_flight()) {
      a.stall_offset = ~0ull;
      return {};
    }
    const std::uint64_t now = shm::monotonic_ns();
    if (a.stall_offset != a.reader.offset()) {
      a.stall_offset = a.reader.offset();
      a.stall_since = now;
    } else if (now - a.stall_since >= static_cast<std::uint64_t>(config.stall.count())) {
      a.reader.ring().resolve_stall(a.reader.offset(), a.reader.position());
      a.stall_since = now;
    }
    return {};
  }

  // Reads up to `limit` records of one partition into `pending`.
  Status fetch_one(std::size_t idx, std::size_t limit) {
    Assigned& a = assigned[idx];
    if (a.reader.ring().closed())
      return make_error(Errc::kTopicDeleted, fmt::format("topic '{}' was deleted", a.tp.topic));
    const std::uint64_t start = a.reader.position();
    const std::size_t first = pending.size();
    while (pending.size() - first < limit) {
      const shm::RecordHeader* h = nullptr;
      const shm::ReadStatus st = a.reader.next(h);
      if (st == shm::ReadStatus::kRecord) {
        const std::uint32_t len = shm::racy_u32(&h->length);
        Pending p{idx, a.reader.offset(), nullptr, 0};
        if (a.zero_copy) {
          p.ring_at = reinterpret_cast<const std::byte*>(h);
        } else {
          p.arena_at = arena_used;
          shm::racy_copy(arena_take(len), h, len);
        }
        pending.push_back(p);
        a.reader.advance(len);
        a.empty_polls = 0;
        continue;
      }
      if (st == shm::ReadStatus::kNone) {
        if (pending.size() == first) return check_stall(a);
        break;
      }
      if (st == shm::ReadStatus::kCorrupt)
        return make_error(Errc::kBadSegment, fmt::format("{}-{}: corrupt record at offset {} (position {}) in {}", a.tp.topic,
                                                         a.tp.partition, a.reader.offset(), a.reader.position(),
                                                         shm::Segment::path_of(a.topic->segment(a.tp.partition).name())));
      // Lapped before we got to the next record. What we copied so far is returned if it
      // is intact; the next poll resets the position.
      if (pending.size() > first) break;
      return reset(a);
    }
    if (!a.zero_copy && pending.size() > first && !a.reader.intact_from(start)) {
      // A producer overwrote part of what we copied: none of it may be returned.
      a.reader.rewind(pending[first].offset, start);
      arena_used = pending[first].arena_at;
      pending.resize(first);
      return reset(a);
    }
    return {};
  }

  Status fetch() {
    pending.clear();
    arena_used = 0;
    const std::size_t n = assigned.size();
    for (std::size_t k = 0; k < n && pending.size() < config.max_poll_records; ++k) {
      const std::size_t idx = (rr + k) % n;
      if (auto ok = fetch_one(idx, config.max_poll_records - pending.size()); !ok) return ok;
    }
    if (n) rr = (rr + 1) % n;
    return {};
  }

  Status build_batch() {
    batch.clear();
    for (const Pending& p : pending) {
      const Assigned& a = assigned[p.assigned];
      const std::byte* rec = p.ring_at ? p.ring_at : arena.get() + p.arena_at;
      shm::RecordHeader h;
      std::memcpy(static_cast<void*>(&h), rec, sizeof h);
      const std::uint64_t klen = h.key_len == shm::kNullKey ? 0 : h.key_len;
      if (shm::kRecordHeaderSize + klen + h.headers_len + h.value_len > h.length)
        return make_error(Errc::kBadSegment, fmt::format("{}-{}: record at offset {} has lengths that do not fit its size",
                                                         a.tp.topic, a.tp.partition, p.offset));
      const std::byte* payload = rec + shm::kRecordHeaderSize;
      ConsumedRecord r;
      r.topic = a.tp.topic;
      r.partition = a.tp.partition;
      r.offset = p.offset;
      r.timestamp_ns = h.timestamp_ns;
      if (h.key_len != shm::kNullKey) r.key = Bytes(payload, klen);
      r.raw_headers = Bytes(payload + klen, h.headers_len);
      r.value = Bytes(payload + klen + h.headers_len, h.value_len);
      batch.push_back(r);
    }
    return {};
  }

  bool has_data() {
    for (auto& a : assigned) {
      const shm::RecordHeader* h = nullptr;
      if (a.reader.next(h) != shm::ReadStatus::kNone || a.reader.lapped()) return true;
      if (a.reader.ring().closed()) return true;
    }
    return false;
  }

  // Eventcount, consumer side: register, look again, sleep. Pairs with the load of
  // `waiters` right after a producer's claim CAS (RingWriter::claim).
  void block(std::int64_t max_ns) {
    shm::FutexWaitItem items[64];
    const std::size_t n = std::min<std::size_t>(assigned.size(), 64);
    bool in_flight = false;
    for (std::size_t i = 0; i < n; ++i) {
      auto& ctl = *assigned[i].reader.ring().ctl();
      // SYNC POINT: seq_cst RMW, then the seq_cst load of the tail below.
      ctl.notify.waiters.fetch_add(1, std::memory_order_seq_cst);
      items[i] = {&ctl.notify.seq, ctl.notify.seq.load(std::memory_order_acquire)};
    }
    for (std::size_t i = 0; i < n; ++i) {
      const auto& r = assigned[i].reader;
      in_flight |= r.ring().tail_position_seq_cst() > r.position();
    }
    if (in_flight) {
      // A claim made before we registered may not wake us: its commit is imminent (or its
      // writer is dead, which the stall check finds), so do not sleep on it.
      sched_yield();
    } else if (!has_data()) {
      shm::futex_wait_any(std::span<const shm::FutexWaitItem>(items, n), std::min<std::int64_t>(max_ns, 100'000'000));
    }
    for (std::size_t i = 0; i < n; ++i)
      assigned[i].reader.ring().ctl()->notify.waiters.fetch_sub(1, std::memory_order_relaxed);
    // Before sleeping again, look at what the spinning path looks at only now and then.
    for (auto& a : assigned) a.empty_polls = 255;
  }
};

Consumer::Consumer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Consumer::Consumer(Consumer&&) noexcept = default;
Consumer& Consumer::operator=(Consumer&&) noexcept = default;
Consumer::~Consumer() = default;

Result<Consumer> Consumer::create(std::shared_ptr<Bus> bus, ConsumerConfig config) {
  if (!bus) return make_error(Errc::kInvalidArgument, "consumer needs a bus");
  if (config.max_poll_records == 0) return make_error(Errc::kInvalidArgument, "max_poll_records must be at least 1");
  auto impl = std::make_unique<Impl>();
  impl->bus = std::move(bus);
  impl->config = config;
  return Consumer(std::move(impl));
}

Status Consumer::assign(const std::vector<TopicPartition>& partitions) {
  std::vector<Assigned> next;
  for (const auto& tp : partitions) {
    auto t = impl_->bus->topic(tp.topic);
    if (!t) return tl::unexpected(t.error());
    if (tp.partition >= (*t)->partitions())
      return make_error(Errc::kInvalidArgument, fmt::format("topic '{}' has {} partitions, no partition {}", tp.topic,
                                                            (*t)->partitions(), tp.partition));
    Assigned a;
    a.tp = tp;
    a.topic = *t;
    a.reader = shm::RingReader((*t)->ring(tp.partition));
    if (impl_->config.auto_offset_reset == OffsetReset::kEarliest) a.reader.seek_earliest();
    else a.reader.seek_latest();
    next.push_back(std::move(a));
  }
  impl_->release_gates();
  impl_->assigned = std::move(next);
  impl_->rr = 0;
  for (auto& a : impl_->assigned) {
    const bool block = a.reader.ring().retention() == shm::Retention::kBlock;
    if (impl_->config.hold_producers && block && !impl_->bus->read_only()) {
      if (auto ok = impl_->take_gate(a); !ok) {
        impl_->release_gates();
        impl_->assigned.clear();
        return ok;
      }
      a.zero_copy = true;
    }
  }
  return {};
}

std::vector<TopicPartition> Consumer::assignment() const {
  std::vector<TopicPartition> out;
  for (const auto& a : impl_->assigned) out.push_back(a.tp);
  return out;
}

Status Consumer::seek(const TopicPartition& tp, std::uint64_t offset) {
  Assigned* a = impl_->find(tp);
  if (!a) return make_error(Errc::kInvalidArgument, fmt::format("{}-{} is not assigned to this consumer", tp.topic, tp.partition));
  if (!a->reader.seek(offset))
    return make_error(Errc::kOffsetOutOfRange, fmt::format("{}-{}: offset {} is not in the ring (it holds {}..{})", tp.topic,
                                                           tp.partition, offset, a->reader.ring().start_offset(),
                                                           a->reader.ring().end_offset()));
  impl_->set_gate(*a);
  return {};
}

Status Consumer::seek_to_beginning(const TopicPartition& tp) {
  Assigned* a = impl_->find(tp);
  if (!a) return make_error(Errc::kInvalidArgument, fmt::format("{}-{} is not assigned to this consumer", tp.topic, tp.partition));
  a->reader.seek_earliest();
  impl_->set_gate(*a);
  return {};
}

Status Consumer::seek_to_end(const TopicPartition& tp) {
  Assigned* a = impl_->find(tp);
  if (!a) return make_error(Errc::kInvalidArgument, fmt::format("{}-{} is not assigned to this consumer", tp.topic, tp.partition));
  a->reader.seek_latest();
  impl_->set_gate(*a);
  return {};
}

Result<std::uint64_t> Consumer::position(const TopicPartition& tp) const {
  Assigned* a = impl_->find(tp);
  if (!a) return make_error(Errc::kInvalidArgument, fmt::format("{}-{} is not assigned to this consumer", tp.topic, tp.partition));
  return a->reader.offset();
}

std::uint64_t Consumer::lost() const noexcept { return impl_->lost; }

std::uint64_t Consumer::aborted() const noexcept {
  std::uint64_t n = 0;
  for (const auto& a : impl_->assigned) n += a.reader.aborted_skipped();
  return n;
}

Result<std::span<const ConsumedRecord>> Consumer::poll(std::chrono::nanoseconds timeout) {
  Impl& im = *impl_;
  // Records returned by the previous poll are released now: producers may pass them.
  for (auto& a : im.assigned) im.set_gate(a);
  const std::int64_t limit = timeout.count();
  // The clock is read only once the first look found nothing: a poll that finds records
  // at once (the common case under load) pays for no clock read.
  std::uint64_t start = 0, now = 0;
  for (std::uint64_t iter = 0;; ++iter) {
    if (auto ok = im.fetch(); !ok) return tl::unexpected(ok.error());
    if (!im.pending.empty()) {
      if (auto ok = im.build_batch(); !ok) return tl::unexpected(ok.error());
      return std::span<const ConsumedRecord>(im.batch);
    }
    if (limit <= 0 || im.assigned.empty()) {
      if (im.assigned.empty() && limit > 0) std::this_thread::sleep_for(timeout);
      im.batch.clear();
      return std::span<const ConsumedRecord>(im.batch);
    }
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
