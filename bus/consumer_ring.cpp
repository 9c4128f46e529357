// The consumer reading rings: a partition's records into the poll's batch, in place or
// copied, with the checks for laps, stuck claims and torn copies; waiting for producers.
#include "bus/consumer_impl.h"

#include <sched.h>

#include <chrono>
#include <thread>

#include <fmt/format.h>

#include "bus/gate_names.h"
#include "shm/futex.h"
#include "shm/process.h"

namespace shmbus {

using consumer_detail::decode;
using consumer_detail::lengths_fit;

// Positions the ring reader at `offset`; false when the ring no longer (or not yet) holds
// it. Past a claim still unfinished, the reader waits at that claim and the records
// below `offset` are dropped as they arrive (the claim may still commit or abort).
bool Consumer::Impl::seek_ring(Assigned& a, std::uint64_t offset) {
  a.skip_below = 0;
  const shm::ReadStatus st = a.reader.seek(offset);
  if (st == shm::ReadStatus::kNone) a.skip_below = offset;
  return st == shm::ReadStatus::kRecord || st == shm::ReadStatus::kNone;
}

Status Consumer::Impl::take_gate(Assigned& a) {
  a.gate = shm::take_process_gate(a.reader.ring(), a.lock, a.reader, group ? group_gate_key(group->name) : 0);
  if (!a.gate)
    return make_error(Errc::kTooManyClients, fmt::format("partition {}-{} has no free gate slot ({} in use)", a.tp.topic,
                                                         a.tp.partition, shm::kGateSlots));
  a.gate_position = a.gate->position.load(std::memory_order_relaxed);
  return {};
}

Status Consumer::Impl::reset(Assigned& a) {
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
  if (a.reader.offset() > was) add_lost(a, a.reader.offset() - was);
  set_gate(a);
  return {};
}

// Every 256th empty look at a partition: lapped? a claim stuck, aborted, or committed
// before its first word was stored? These read lines that producers write, which a
// spinning reader must not pull on every look. `moved`: the reader can read on.
Status Consumer::Impl::check_stall(Assigned& a, bool& moved) {
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

Result<bool> ConsumerInternals::look_past_stall(Consumer& c, const TopicPartition& tp) {
  auto a = c.impl_->require(tp);
  if (!a) return tl::unexpected(a.error());
  if ((*a)->disk_next != consumer_detail::Assigned::kFromRing) return false;  // the disk log has no claims
  (*a)->empty_polls |= 255;  // check_stall()'s count reaches a multiple of 256: it looks
  bool moved = false;
  if (auto ok = c.impl_->check_stall(**a, moved); !ok) return tl::unexpected(ok.error());
  return moved;
}

[[gnu::cold]] Status Consumer::Impl::corrupt(const Assigned& a) const {
  return make_error(Errc::kBadSegment, fmt::format("{}-{}: at offset {} (position {}) in {}: {}", a.tp.topic, a.tp.partition,
                                                   a.reader.offset(), a.reader.position(),
                                                   shm::Segment::path_of(a.topic->segment(a.tp.partition).name()),
                                                   a.reader.problem()));
}

// Reads up to `limit` records of one partition into the batch.
Status Consumer::Impl::fetch_one(std::size_t idx, std::size_t limit) {
  Assigned& a = assigned[idx];
  if (a.reader.ring().closed()) {
    if (group) return {};  // a member drops it (drop_deleted) and goes on; busd rebalances
    return make_error(Errc::kTopicDeleted, fmt::format("topic '{}' was deleted", a.tp.topic));
  }
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
      if (a.skip_below) [[unlikely]] {
        if (a.reader.offset() < a.skip_below) {  // before the offset sought
          a.reader.advance(len);
          continue;
        }
        a.skip_below = 0;  // passed: poll()'s fast path may serve again
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
    if (st == shm::ReadStatus::kCorrupt) {
      // The copies before it are judged first (below): a lap may have torn them too. The
      // next poll meets the damage again and reports it.
      if (batch.size() > first) break;
      return corrupt(a);
    }
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
Status Consumer::Impl::check_copied_lengths(Assigned& a, std::size_t first) {
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

[[gnu::cold, gnu::noinline]] Status Consumer::Impl::bad_lengths(const ConsumedRecord& r) {
  return make_error(Errc::kBadSegment, fmt::format("{}-{}: record at offset {} has lengths that do not fit its size",
                                                   r.topic, r.partition, r.offset));
}

Status Consumer::Impl::fetch() {
  batch.clear();
  arena_records.clear();
  arena_used = 0;
  const std::size_t n = assigned.size();
  // Round robin without a division (two of them were a tenth of a poll's instructions).
  // The assignment may have shrunk since rr was last moved (an eviction clears it).
  if (rr >= n) rr = 0;
  std::size_t idx = rr;
  for (std::size_t k = 0; k < n && batch.size() < config.max_poll_records; ++k) {
    if (assigned[idx].paused) [[unlikely]] {
      if (++idx == n) idx = 0;
      continue;
    }
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
Status Consumer::Impl::finish_batch() {
  for (const ArenaRecord& c : arena_records) {
    ConsumedRecord& r = batch[c.index];
    if (!decode(arena.get() + c.arena_at, r)) [[unlikely]] return bad_lengths(r);
  }
  return {};
}

bool Consumer::Impl::has_data() {
  for (auto& a : assigned) {
    if (a.paused) continue;
    if (a.disk_next != Assigned::kFromRing) return true;
    const shm::RecordHeader* h = nullptr;
    if (a.reader.next(h) != shm::ReadStatus::kNone || a.reader.lapped()) return true;
    if (a.reader.ring().closed()) return true;
  }
  return false;
}

// Eventcount, consumer side: register, look again, sleep. Pairs with the load of
// `waiters` right after a producer's claim (RingWriter::claim).
void Consumer::Impl::block(std::int64_t max_ns) {
  shm::FutexWaitItem items[128];  // futex_waitv takes at most 128 words
  const std::size_t n = std::min<std::size_t>(assigned.size(), 127);
  bool in_flight = false, unregistered = false;
  for (std::size_t i = 0; i < n; ++i) {
    auto& ctl = *assigned[i].reader.ring().ctl();
    if (assigned[i].paused) {  // not registered: its producers need not wake us
      items[i] = {&ctl.notify.seq, ctl.notify.seq.load(std::memory_order_acquire)};
      continue;
    }
    // SYNC POINT: seq_cst RMW, then the seq_cst load of the tail below.
    if (assigned[i].waiter >= 0) ctl.notify.waiters.fetch_or(std::uint64_t{1} << assigned[i].waiter, std::memory_order_seq_cst);
    else unregistered = true;  // no waiter slot: no producer wakes us, so sleep briefly
    items[i] = {&ctl.notify.seq, ctl.notify.seq.load(std::memory_order_acquire)};
  }
  auto claim_in_flight = [&] {
    for (std::size_t i = 0; i < n; ++i) {
      const auto& r = assigned[i].reader;
      if (assigned[i].paused) continue;
      if (r.ring().tail_position_seq_cst() > r.position()) return true;
    }
    return false;
  };
  in_flight = claim_in_flight();
  if (!in_flight) {
    // An exclusive writer reads `waiters` after its tail store with no fence between: our
    // heavy fence stands in for it (membarrier), and the tails are read again after it.
    // Its flag was published before its first claim, with a fence, so a flag we miss here
    // means its claims see our bit. Only on the way to sleep: it interrupts CPUs.
    bool light = false;
    for (std::size_t i = 0; i < n; ++i)
      light |= assigned[i].reader.ring().ctl()->notify.light_fence.load(std::memory_order_acquire) != 0;
    if (light) {
      if (!shm::heavy_fence()) unregistered = true;  // refused here: sleep in short slices
      in_flight = claim_in_flight();
    }
  }
  if (!in_flight) in_flight_waits = 0;
  std::size_t waits = n;
  if (group && group->slot) items[waits++] = {&group->slot->notice, group->seen_notice};
  if (waits == 0) {
    // Nothing to wait on (a group member with no partition, away from busd): a short sleep.
    std::this_thread::sleep_for(std::chrono::nanoseconds(std::min<std::int64_t>(max_ns, 10'000'000)));
    return;
  }
  if (in_flight) {
    // A claim made before we registered may not wake us: its commit is imminent, so do not
    // sleep on it, at first. Its writer may be stopped (an exclusive writer's claim waits
    // for it however long): after a while, sleep in 1 ms slices instead of spinning.
    if (++in_flight_waits < 64) sched_yield();
    else shm::futex_wait_any(std::span<const shm::FutexWaitItem>(items, waits), std::min<std::int64_t>(max_ns, 1'000'000));
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

}  // namespace shmbus
