// The consumer's public API: creating it, assigning and seeking partitions, and the poll
// loop that reads (bus/consumer_ring.cpp, bus/consumer_disk.cpp) and waits. Group
// membership is in bus/consumer_group.cpp.
#include "bus/consumer_impl.h"

#include <sched.h>

#include <chrono>
#include <thread>

#include <fmt/format.h>

#include "bus/offset_lookup.h"
#include "bus/paths.h"

namespace shmbus {

std::optional<Header> HeaderIterator::next() noexcept {
  if (raw_.size() < 8) return std::nullopt;
  std::uint32_t kl, vl;
  std::memcpy(&kl, raw_.data(), 4);
  std::memcpy(&vl, raw_.data() + 4, 4);
  const bool null_value = vl == shm::kNullHeaderValue;
  if (null_value) vl = 0;
  if (raw_.size() - 8 < static_cast<std::uint64_t>(kl) + vl) return std::nullopt;
  Header h{std::string_view(reinterpret_cast<const char*>(raw_.data() + 8), kl), raw_.subspan(8 + kl, vl), null_value};
  raw_ = raw_.subspan(8 + kl + vl);
  return h;
}

namespace {

inline void cpu_relax() noexcept { __builtin_ia32_pause(); }

}  // namespace

// The topic of a partition that exists.
Result<std::shared_ptr<Topic>> Consumer::Impl::topic_of(const TopicPartition& tp) const {
  auto t = bus->topic(tp.topic);
  if (!t) return tl::unexpected(t.error());
  if (tp.partition >= (*t)->partitions())
    return make_error(Errc::kInvalidArgument, fmt::format("topic '{}' has {} partitions, no partition {}", tp.topic,
                                                          (*t)->partitions(), tp.partition));
  return t;
}

Result<Assigned> Consumer::Impl::make_assigned(const TopicPartition& tp, std::optional<std::uint64_t> start) {
  auto t = topic_of(tp);
  if (!t) return tl::unexpected(t.error());
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
      if (a.next_offset() > *start) add_lost(a, a.next_offset() - *start);
    }
  }
  return a;
}

// Holds producers back where the topic asks for it: always for group members of block
// topics (what they have not committed must survive them), else on request.
Status Consumer::Impl::arm(Assigned& a) {
  const bool block = a.reader.ring().retention() == shm::Retention::kBlock;
  if (block && (config.hold_producers || group) && !bus->read_only()) {
    if (auto ok = take_gate(a); !ok) return ok;
    a.zero_copy = true;
  }
  return {};
}

void Consumer::Impl::drop(const TopicPartition& tp) {
  for (auto it = assigned.begin(); it != assigned.end(); ++it)
    if (it->tp == tp) {
      release_slots(*it);
      assigned.erase(it);
      break;
    }
  rr = 0;
}

void Consumer::Impl::release_slots(Assigned& a) {
  shm::release_process_gate(a.reader.ring(), a.lock, a.gate);
  a.gate = nullptr;
  shm::release_waiter_slot(a.reader.ring(), a.lock, a.waiter);
  a.waiter = -1;
}

void Consumer::Impl::release_gates() {
  if (shm::self_process().pid != pid) return;
  for (auto& a : assigned) release_slots(a);
}

Assigned* Consumer::Impl::find(const TopicPartition& tp) {
  for (auto& a : assigned)
    if (a.tp == tp) return &a;
  return nullptr;
}

Result<Assigned*> Consumer::Impl::require(const TopicPartition& tp) {
  if (Assigned* a = find(tp)) return a;
  return make_error(Errc::kInvalidArgument, fmt::format("{}-{} is not assigned to this consumer", tp.topic, tp.partition));
}

Status Consumer::Impl::set_paused(const std::vector<TopicPartition>& tps, bool paused) {
  for (const auto& tp : tps)
    if (auto a = require(tp); !a) return tl::unexpected(a.error());
  for (const auto& tp : tps) find(tp)->paused = paused;
  return {};
}

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
  if (config.heartbeat_interval.count() <= 0 || config.heartbeat_interval >= config.session_timeout)
    return make_error(Errc::kInvalidArgument,
                      fmt::format("heartbeat_interval ({} ms) must be above 0 and below session_timeout ({} ms)",
                                  config.heartbeat_interval.count(), config.session_timeout.count()));
  if (config.max_poll_interval.count() <= 0)
    return make_error(Errc::kInvalidArgument, fmt::format("max_poll_interval ({} ms) must be above 0", config.max_poll_interval.count()));
  if (auto ok = stats::check("ConsumerConfig", config.statistics_interval, config.statistics_cb); !ok)
    return tl::unexpected(ok.error());
  auto impl = std::make_unique<Impl>();
  impl->bus = std::move(bus);
  impl->config = std::move(config);
  if (impl->config.statistics_interval.count() > 0)
    impl->stats = std::make_unique<stats::ConsumerStats>(impl->config.statistics_interval, impl->config.statistics_cb,
                                                         impl->config.client_name);
  return Consumer(std::move(impl));
}

Status Consumer::assign(const std::vector<TopicPartition>& partitions) {
  if (impl_->group) return make_error(Errc::kInvalidArgument, "this consumer is subscribed to a group: assign() and subscribe() do not mix");
  auto starts = impl_->simple_starts(partitions);
  if (!starts) return tl::unexpected(starts.error());
  std::vector<Assigned> next;
  for (std::size_t i = 0; i < partitions.size(); ++i) {
    const TopicPartition& tp = partitions[i];
    auto a = impl_->make_assigned(tp, (*starts)[i]);
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

Result<std::vector<std::optional<Consumer::OffsetAndTimestamp>>> Consumer::offsets_for_times(
    const std::vector<std::pair<TopicPartition, std::int64_t>>& times) const {
  std::vector<std::optional<OffsetAndTimestamp>> out;
  out.reserve(times.size());
  for (const auto& [tp, ts_ns] : times) {
    auto t = impl_->topic_of(tp);
    if (!t) return tl::unexpected(t.error());
    const std::string log_dir = (*t)->config().spill.enabled
                                    ? disklog::partition_dir(bus_paths(impl_->bus->name()).state_dir, tp.topic, tp.partition)
                                    : std::string();
    auto m = find_offset_for_time(log_dir, (*t)->ring(tp.partition), ts_ns);
    if (!m) return tl::unexpected(Error{m.error().code, fmt::format("{}-{}: {}", tp.topic, tp.partition, m.error().message)});
    out.push_back(*m ? std::optional<OffsetAndTimestamp>(OffsetAndTimestamp{(*m)->offset, (*m)->timestamp_ns}) : std::nullopt);
  }
  return out;
}

Status Consumer::pause(const std::vector<TopicPartition>& partitions) { return impl_->set_paused(partitions, true); }

Status Consumer::resume(const std::vector<TopicPartition>& partitions) { return impl_->set_paused(partitions, false); }

std::vector<TopicPartition> Consumer::paused() const {
  std::vector<TopicPartition> out;
  for (const auto& a : impl_->assigned)
    if (a.paused) out.push_back(a.tp);
  return out;
}

std::uint64_t Consumer::lost() const noexcept { return impl_->lost; }

std::uint64_t Consumer::aborted() const noexcept {
  std::uint64_t n = 0;
  for (const auto& a : impl_->assigned) n += a.reader.aborted_skipped();
  return n;
}

// The one-partition case of a look at the ring, which a latency-bound consumer takes on
// every call and every spin: the records that are there, decoded where they lie (or copied
// first, without a gate), with nothing else in between. The caller checked fast_poll() and
// moved the gate.
// kEmpty: nothing yet, and no stall check due. kSlow: the slow look (fetch()) must run: a
// stall check is due, or it met anything unusual (a deleted topic, padding it must judge,
// a damaged record, a lap), which fetch_one() then meets again and handles.
[[gnu::always_inline]] inline Consumer::Impl::FastRead Consumer::Impl::read_fast() {
  Assigned& a = assigned[0];
  if (a.reader.ring().closed()) [[unlikely]] return FastRead::kSlow;
  batch.clear();
  arena_records.clear();
  arena_used = 0;
  const std::string_view topic = a.tp.topic;
  const std::uint32_t partition = a.tp.partition;
  const std::size_t limit = config.max_poll_records;
  // The record's fields from its bytes (in the ring, or our copy) into the batch; false
  // when its lengths do not fit its size (fetch_one() then reports it).
  auto take = [&](const std::byte* rec, std::uint64_t offset, std::uint32_t len) {
    const auto* h = reinterpret_cast<const shm::RecordHeader*>(rec);
    const std::uint32_t klen = h->key_len, hlen = h->headers_len, vlen = h->value_len, flags = h->flags;
    const std::uint64_t kbytes = klen == shm::kNullKey ? 0 : klen;
    if (shm::kRecordHeaderSize + kbytes + hlen + vlen > len) [[unlikely]] return false;
    const std::byte* payload = rec + shm::kRecordHeaderSize;
    std::optional<Bytes> key;
    if (klen != shm::kNullKey) key.emplace(payload, kbytes);
#if defined(__cpp_aggregate_paren_init)
    // Built in place (C++20's parenthesised aggregate initialisation): 7-10 instructions a
    // record fewer than building it first and copying it in.
    batch.emplace_back(topic, partition, offset, h->timestamp_ns, key, Bytes(payload + kbytes + hlen, vlen),
                       Bytes(payload + kbytes, hlen), (flags & shm::kRecordNullValue) != 0 && vlen == 0);
#else
    // clang before 16 has no parenthesised aggregate initialisation.
    batch.push_back(ConsumedRecord{topic, partition, offset, h->timestamp_ns, key, Bytes(payload + kbytes + hlen, vlen),
                                   Bytes(payload + kbytes, hlen), (flags & shm::kRecordNullValue) != 0 && vlen == 0});
#endif
    return true;
  };
  std::size_t n = 0;
  shm::ReadStatus st;
  if (a.zero_copy) {
    do {
      const shm::RecordHeader* h = nullptr;
      std::uint32_t len = 0;
      if ((st = a.reader.next(h, len)) != shm::ReadStatus::kRecord) break;
      // Held back by our gate, the record cannot change under us: decoded in place.
      if (!take(reinterpret_cast<const std::byte*>(h), a.reader.offset(), len)) [[unlikely]] {
        st = shm::ReadStatus::kCorrupt;
        break;
      }
      a.reader.advance(len);
    } while (++n < limit);
  } else {
    // Copied (a producer may overwrite the ring's bytes at any time), then judged as a whole:
    // a copy torn by a lap, or one whose lengths do not fit, sends the reader back to where
    // this look started and the slow look reads it all again and handles it.
    const std::uint64_t start_pos = a.reader.position(), start_offset = a.reader.offset();
    do {
      const shm::RecordHeader* h = nullptr;
      std::uint32_t len = 0;
      if ((st = a.reader.next(h, len)) != shm::ReadStatus::kRecord) break;
      const std::size_t at = arena_used;
      shm::racy_copy(arena_take(len), h, len);
      arena_records.push_back(ArenaRecord{n, at, 0, len});
      a.reader.advance(len);
    } while (++n < limit);
    if (n) {
      bool whole = a.reader.intact_from(start_pos);
      for (std::size_t i = 0; whole && i < n; ++i)
        whole = take(arena.get() + arena_records[i].arena_at, start_offset + i, arena_records[i].len);
      arena_records.clear();
      if (!whole) [[unlikely]] {
        a.reader.rewind(start_offset, start_pos);
        batch.clear();
        arena_used = 0;
        a.empty_polls = 255;  // a lap: the slow look's first kNone asks lapped() at once
        return FastRead::kSlow;
      }
    }
  }
  if (n) [[likely]] {
    a.empty_polls = 0;
    return FastRead::kGot;
  }
  // As fetch_one() counts empty looks (check_stall): every 256th is the slow look's.
  if (st != shm::ReadStatus::kNone || ((a.empty_polls + 1) & 255) == 0) return FastRead::kSlow;
  ++a.empty_polls;
  return FastRead::kEmpty;
}

Result<std::span<const ConsumedRecord>> Consumer::poll(std::chrono::nanoseconds timeout) {
  Impl& im = *impl_;
  if (im.fast_poll()) [[likely]] {
    // The prologue below for one partition read in place; a tick that did more than count
    // may have changed the assignment, so it is asked again.
    im.set_gate(im.assigned[0]);
    if (im.group || im.simple_conn) {
      if (auto ok = im.group_tick(); !ok) return tl::unexpected(ok.error());
      if (!im.fast_poll()) return im.poll_loop(timeout, /*look=*/true);
    }
    const Impl::FastRead r = im.read_fast();
    if (r == Impl::FastRead::kGot) [[likely]] return std::span<const ConsumedRecord>(im.batch);
    return im.poll_loop(timeout, /*look=*/r == Impl::FastRead::kSlow);
  }
  if (shm::self_process().pid != im.pid) [[unlikely]]
    return make_error(Errc::kInvalidArgument,
                      fmt::format("this consumer was made by process {}; a forked child must create its own", im.pid));
  // Records returned by the previous poll are released now: producers may pass them.
  for (auto& a : im.assigned) im.set_gate(a);
  if (im.stats) [[unlikely]] im.statistics_tick();  // before group_tick(): it may revoke partitions
  if (auto ok = im.group_tick(); !ok) return tl::unexpected(ok.error());
  return im.poll_loop(timeout, /*look=*/true);
}

// poll() after its prologue (gates, statistics, tick): reads, and waits up to `timeout`.
// `look`: the first look is fetch()'s (else the fast path just looked and found nothing).
Result<std::span<const ConsumedRecord>> Consumer::Impl::poll_loop(std::chrono::nanoseconds timeout, bool look) {
  Impl& im = *this;
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
    if (iter > 0) {
      // The spinning look: the fast one while it may serve, else fetch()'s.
      const FastRead r = im.fast_poll() ? im.read_fast() : FastRead::kSlow;
      if (r == FastRead::kGot) return std::span<const ConsumedRecord>(im.batch);
      look = r == FastRead::kSlow;
    }
    if (look) {
      if (auto ok = im.fetch(); !ok) return tl::unexpected(ok.error());
    }
    if (!im.batch.empty()) {
      if (auto ok = im.finish_batch(); !ok) return tl::unexpected(ok.error());
      if (im.stats) [[unlikely]] im.stats->received(im.batch);
      return std::span<const ConsumedRecord>(im.batch);
    }
    // A group member with nothing assigned waits on its notice word instead (in block()),
    // so that what busd sends it meanwhile is taken within the poll.
    if (limit <= 0 || (im.assigned.empty() && !im.group)) {
      if (im.assigned.empty() && limit > 0) std::this_thread::sleep_for(timeout);
      im.batch.clear();
      return std::span<const ConsumedRecord>(im.batch);
    }
    if (im.group && iter > 0)
      if (auto ok = im.group_tick(); !ok) return tl::unexpected(ok.error());
    if (iter == 0) {
      start = now = shm::monotonic_ns();
      if (im.stats) [[unlikely]] ++im.stats->waits;
    }
    else if (im.config.wait != WaitStrategy::kSpin || (iter & 63) == 0) now = shm::monotonic_ns();
    const std::int64_t elapsed = static_cast<std::int64_t>(now - start);
    if (elapsed >= limit) {
      im.batch.clear();
      return std::span<const ConsumedRecord>(im.batch);
    }
    if (im.assigned.empty()) {
      im.block(limit - elapsed);
      continue;
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
