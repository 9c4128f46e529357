// The partition ring's protocol (docs/ring.md): claims, commits, aborts, recovery, gates
// and waiter registrations.
#include "shm/ring.h"

#include <cpuid.h>
#include <sched.h>

#include <algorithm>
#include <bit>
#include <cstdio>
#include <thread>

#include <fmt/format.h>

#include "shm/futex.h"
#include "shm/process.h"

namespace shmbus::shm {

namespace {
bool cpu_prefetchw() noexcept {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(0x80000001, &a, &b, &c, &d) && (c & (1u << 8)) != 0;
}
}  // namespace

const bool g_cpu_prefetchw = cpu_prefetchw();

namespace test_hooks {
void (*after_entry_claim)() = nullptr;
void (*after_claim)() = nullptr;
void (*before_commit)() = nullptr;
void (*after_commit)() = nullptr;
void (*before_reclaim_cas)() = nullptr;
}  // namespace test_hooks

namespace {

constexpr std::size_t kPage = 4096;
// A reclaim walk steps over at most this many records or claims per look: a producer makes
// its room in several looks rather than walking without bound.
constexpr std::uint32_t kMaxWalkSteps = 1u << 16;
// Consecutive wake-ups that found nobody asleep before a producer looks for dead waiters.
constexpr std::uint32_t kFutileWakesBeforeReap = 64;

constexpr std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }

inline void cpu_relax() noexcept { __builtin_ia32_pause(); }

// A full barrier. GCC's TSan rejects thread fences (-Wtsan): there, a seq_cst RMW, which
// on x86 is the same full barrier (a locked instruction).
inline void full_fence() noexcept {
#if defined(__SANITIZE_THREAD__)
  static std::atomic<std::uint32_t> word{0};
  word.fetch_add(0, std::memory_order_seq_cst);
#else
  std::atomic_thread_fence(std::memory_order_seq_cst);
#endif
}

// Backoff for slow-path waits: spin, then yield, then short sleeps.
void backoff(unsigned& round) noexcept {
  if (round < 64) {
    cpu_relax();
  } else if (round < 256) {
    sched_yield();
  } else {
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
  ++round;
}

// A consistent view of a claim entry without writing (readers may map read-only). Every CAS
// on an entry changes its tag (state or offset), so a tag seen twice around the info read
// proves the pair. Bounded: a writer that keeps changing it makes us answer "unchanged
// tag never seen", which callers treat as "look again later".
bool snapshot_entry(const ClaimEntry* e, Pair64& out) noexcept {
  for (int i = 0; i < 4; ++i) {
    const std::uint64_t t1 = __atomic_load_n(&e->tag, __ATOMIC_ACQUIRE);
    const std::uint64_t info = __atomic_load_n(&e->info, __ATOMIC_ACQUIRE);
    if (__atomic_load_n(&e->tag, __ATOMIC_ACQUIRE) == t1) {
      out = Pair64{t1, info};
      return true;
    }
  }
  return false;
}

// A claim entry's size and count as a claim can have them: at least a header per record,
// 8-aligned, at most half the ring. Checked before anyone moves by them.
bool entry_sizes_possible(std::uint32_t bytes, std::uint32_t count, std::uint64_t capacity) noexcept {
  return bytes >= kRecordHeaderSize && bytes <= capacity / 2 && (bytes & 7) == 0 && count != 0 &&
         std::uint64_t{count} * kRecordHeaderSize <= bytes;
}

std::string claim_name(const Ring& r, std::uint64_t offset, std::uint64_t pos) {
  return fmt::format("partition {}: claim at offset {} (position {})", r.partition(), offset, pos);
}

}  // namespace

RingGeometry ring_geometry(std::uint64_t capacity) {
  RingGeometry g{};
  // One index entry (and one claim-table entry) per 64 data bytes: enough while records
  // average >= 64 bytes; for smaller ones seek() falls back to a walk from the start of the
  // ring, and a claim waits until the claim that last used its table entry is reclaimed.
  g.index_capacity = std::max<std::uint64_t>(64, capacity / 64);
  g.index_offset = round_up(kSlotsEnd, kPage);
  g.claims_offset = round_up(g.index_offset + g.index_capacity * sizeof(std::uint64_t), kPage);
  g.data_offset = round_up(g.claims_offset + g.index_capacity * sizeof(ClaimEntry), kPage);
  g.segment_size = g.data_offset + capacity;
  return g;
}

void ring_init(std::byte* base, const RingParams& p) {
  const RingGeometry g = ring_geometry(p.capacity);
  auto* ctl = new (base + kControlOffset) PartitionControl{};
  ctl->config.capacity = p.capacity;
  ctl->config.index_capacity = g.index_capacity;
  ctl->config.salt = random_u64();
  ctl->config.topic_epoch = p.topic_epoch;
  ctl->config.index_offset = g.index_offset;
  ctl->config.data_offset = g.data_offset;
  ctl->config.max_record = p.max_record ? p.max_record : static_cast<std::uint32_t>(p.capacity / 4);
  ctl->config.retention = static_cast<std::uint32_t>(p.retention);
  ctl->config.partition = p.partition;
  // Reclaiming ahead in chunks keeps the reclaim line (which readers check) quiet.
  ctl->config.reclaim_chunk = static_cast<std::uint32_t>(std::min<std::uint64_t>(p.capacity / 32, 4096));
  ctl->limits.claims_offset = g.claims_offset;
  ctl->limits.claim_timeout_ns = p.claim_timeout_ns ? p.claim_timeout_ns : kDefaultClaimTimeoutNs;
  ctl->tail = Pair64{p.base_offset, 0};
  ctl->reclaim = Pair64{p.base_offset, 0};
  for (std::uint32_t i = 0; i < kWriterSlots; ++i) {
    auto* s = new (base + kWriterSlotsOffset + i * sizeof(WriterSlot)) WriterSlot{};
    s->claim_position.store(kNoClaim, std::memory_order_relaxed);
    s->reclaim_view.store(kNoClaim, std::memory_order_relaxed);
  }
  for (std::uint32_t i = 0; i < kGateSlots; ++i) new (base + kGateSlotsOffset + i * sizeof(GateSlot)) GateSlot{};
  for (std::uint32_t i = 0; i < kWaiterSlots; ++i) new (base + kWaiterSlotsOffset + i * sizeof(WaiterSlot)) WaiterSlot{};
  // Every entry starts older than any claim (offset -1, finished).
  auto* claims = reinterpret_cast<ClaimEntry*>(base + g.claims_offset);
  for (std::uint64_t i = 0; i < g.index_capacity; ++i)
    claims[i] = ClaimEntry{kInitialTagDecoded ^ ctl->config.salt, 0};
  if (p.spill) {
    ctl->stats.spill_start.store(p.spill_start, std::memory_order_relaxed);
    ctl->stats.spill_end.store(p.base_offset, std::memory_order_relaxed);
    ctl->stats.synced_end.store(p.base_offset, std::memory_order_relaxed);  // what is below came back from the disk
    ctl->stats.spill_bytes.store(p.spill_bytes, std::memory_order_relaxed);
    if (p.retention == Retention::kBlock) {
      // The spiller's gate: durable (never reaped), found again by busd through its key.
      auto* gs = reinterpret_cast<GateSlot*>(base + kGateSlotsOffset);
      gs->owner_key.store(kSpillGateKey, std::memory_order_relaxed);
      gs->position.store(0, std::memory_order_relaxed);
      gs->owner_pid.store(self_process().pid, std::memory_order_relaxed);
      gs->kind.store(static_cast<std::uint32_t>(GateKind::kDurable), std::memory_order_relaxed);
    }
  }
  // posix_fallocate zeroed the index and the data; zero decodes to noise under the salt.
}

Status ring_validate(const Segment& seg) {
  const std::string path = Segment::path_of(seg.name());
  if (seg.size() < kSlotsEnd) return make_error(Errc::kBadSegment, fmt::format("{} is too small for a partition ({} bytes)", path, seg.size()));
  const auto* ctl = seg.at<const PartitionControl>(kControlOffset);
  const auto& c = ctl->config;
  // Up to 4 GiB: a claim (at most half the ring) fits the 32 bits of its entry's size.
  if (c.capacity < 4096 || !std::has_single_bit(c.capacity) || c.capacity > (std::uint64_t{1} << 32))
    return make_error(Errc::kBadSegment, fmt::format("{}: capacity {} is not a power of two in [4096, 2^32]", path, c.capacity));
  const RingGeometry g = ring_geometry(c.capacity);
  if (c.index_capacity != g.index_capacity || c.index_offset != g.index_offset || c.data_offset != g.data_offset ||
      ctl->limits.claims_offset != g.claims_offset || g.segment_size != seg.size())
    return make_error(Errc::kBadSegment, fmt::format("{}: layout does not match its capacity {} (segment {} bytes, expected {})",
                                                     path, c.capacity, seg.size(), g.segment_size));
  if (c.max_record < kRecordHeaderSize || c.max_record > c.capacity / 4 || (c.max_record & 7) != 0)
    return make_error(Errc::kBadSegment, fmt::format("{}: max record {} out of range", path, c.max_record));
  if (c.retention > 1) return make_error(Errc::kBadSegment, fmt::format("{}: unknown retention {}", path, c.retention));
  if (ctl->limits.claim_timeout_ns == 0 || ctl->limits.claim_timeout_ns > 3'600'000'000'000ull)
    return make_error(Errc::kBadSegment, fmt::format("{}: claim timeout {} ns out of range", path, ctl->limits.claim_timeout_ns));
  // The two cursors every reader starts from: records stand on 8-byte boundaries, and the
  // start never passes the end. The start is read first: producers only move both forward,
  // so a live ring passes however it moves meanwhile.
  const Pair64 r = snapshot128(&ctl->reclaim);
  const Pair64 t = snapshot128(&ctl->tail);
  if ((r.second & 7) != 0 || (t.second & 7) != 0)
    return make_error(Errc::kBadSegment, fmt::format("{}: a ring cursor is off the 8-byte record grid (start byte {}, end byte {})",
                                                     path, r.second, t.second));
  if ((r.first & kReclaimOffsetMask) > t.first || r.second > t.second)
    return make_error(Errc::kBadSegment, fmt::format("{}: the ring's start (offset {}, byte {}) is past its end (offset {}, byte {})",
                                                     path, r.first & kReclaimOffsetMask, r.second, t.first, t.second));
  return {};
}

Ring::Ring(std::byte* base) noexcept {
  ctl_ = reinterpret_cast<PartitionControl*>(base + kControlOffset);
  writers_ = reinterpret_cast<WriterSlot*>(base + kWriterSlotsOffset);
  gates_ = reinterpret_cast<GateSlot*>(base + kGateSlotsOffset);
  waiters_ = reinterpret_cast<WaiterSlot*>(base + kWaiterSlotsOffset);
  index_ = reinterpret_cast<std::atomic<std::uint64_t>*>(base + ctl_->config.index_offset);
  claims_ = reinterpret_cast<ClaimEntry*>(base + ctl_->limits.claims_offset);
  data_ = base + ctl_->config.data_offset;
  cap_ = ctl_->config.capacity;
  mask_ = cap_ - 1;
  imask_ = ctl_->config.index_capacity - 1;
  salt_ = ctl_->config.salt;
}

int Ring::notify(bool wake) const noexcept {
  if (!wake) return 0;
  ctl_->notify.seq.fetch_add(1, std::memory_order_release);
  return futex_wake_all(&ctl_->notify.seq);
}

bool Ring::help_tail(Pair64 seen) const noexcept {
  Pair64 e;
  if (!snapshot_entry(entry(seen.first), e)) return false;
  const std::uint64_t d = e.first ^ salt_;
  if ((d >> 8) != seen.first + 1) return false;
  const std::uint32_t bytes = info_bytes(e.second), count = info_count(e.second);
  if (!entry_sizes_possible(bytes, count, cap_)) return false;
  Pair64 expect = seen;
  // Fails when the claimant (or another helper) moved it first: the same move.
  (void)cas128(&ctl_->tail, expect, Pair64{seen.first + count, seen.second + bytes});
  return true;
}

Unstuck Ring::abort_claim(std::uint64_t offset, Pair64 seen, ClaimWhy why) const noexcept {
  Pair64 expect = seen;
  const Pair64 aborted{encode_tag(offset, ClaimState::kAborted, salt_), with_why(seen.second, why)};
  // SYNC POINT: the CAS that takes the claim from its writer; its commit CAS then fails.
  if (!cas128(as_pair(entry(offset)), expect, aborted)) return Unstuck{};  // changed meanwhile: look again
  if (why == ClaimWhy::kDead) ctl_->stats.dead_claims_reclaimed.fetch_add(1, std::memory_order_relaxed);
  if (why == ClaimWhy::kTimedOut) ctl_->claim_stats.claims_timed_out.fetch_add(1, std::memory_order_relaxed);
  return Unstuck{Unstuck::kSkip, info_bytes(seen.second), info_count(seen.second), 0, info_slot(seen.second), why};
}

namespace {
Unstuck corrupt(const char* what) {
  Unstuck u{Unstuck::kCorrupt};
  u.problem = what;
  return u;
}
}  // namespace

Unstuck Ring::unstick(std::uint64_t offset, std::uint64_t pos, const SegmentLock* lock, std::uint64_t stalled_ns) const noexcept {
  // `stalled_ns`: how long the caller has seen this very claim in flight (its own clock,
  // started when it first saw the claim: a reader that waited at an unclaimed offset has
  // not waited on the claim that comes there later).
  // The tail first: a claim wins its entry before it moves the tail, so an entry read after
  // a tail that is past `offset` names the claim at `offset` (SYNC POINT: the acquire of the
  // tail pairs with the release of the tail CAS, which follows the entry CAS).
  const Pair64 t0 = snapshot128(&ctl_->tail);
  Pair64 e;
  if (!snapshot_entry(entry(offset), e)) return Unstuck{};
  const std::uint64_t d = e.first ^ salt_;
  const std::uint64_t named = d >> 8;  // offset + 1 of the claim the entry is about
  if (named < offset + 1) {
    // Nothing claimed at this offset yet, unless the tail says otherwise.
    if (t0.first <= offset) return Unstuck{};
    return reclaim_position() > pos ? Unstuck{} : corrupt("no claim names this offset, yet the tail is past it");
  }
  if (named > offset + 1) return reclaim_position() > pos ? Unstuck{} : corrupt("the claim table names a later offset here");
  const auto state = static_cast<ClaimState>(d & 0xff);
  const std::uint32_t bytes = info_bytes(e.second), count = info_count(e.second), slot = info_slot(e.second);
  // Checked against the ring before any use: a forged entry cannot send anyone past the tail.
  if (!entry_sizes_possible(bytes, count, cap_) || (pos & 7) != 0)
    return corrupt("its claim-table entry has an impossible size or count (fewer than a header's bytes per record)");
  Pair64 t = snapshot128(&ctl_->tail);
  if (t.first == offset && t.second == pos) {
    // The claimant won the entry but has not moved the tail (dead or stopped in between).
    if (!lock) return Unstuck{};  // a read-only view cannot help
    (void)help_tail(t);
    t = snapshot128(&ctl_->tail);
  }
  if (t.first < offset + count || t.second < pos + bytes) return corrupt("its claim reaches past the tail");
  switch (state) {
    case ClaimState::kAborted:
      return Unstuck{Unstuck::kSkip, bytes, count, 0, slot, info_why(e.second)};
    case ClaimState::kCommitted: {
      // Its writer committed the entry and has not stored the first word yet (or died).
      const std::uint64_t at = info_lead_padding(e.second) ? next_lap(pos) : pos;
      if (at != pos && ((pos & mask_) == 0 || at >= pos + bytes)) return corrupt("its claim's padding does not fit");
      if (lock) ctl_->claim_stats.commits_by_entry.fetch_add(1, std::memory_order_relaxed);
      return Unstuck{Unstuck::kCommitted, bytes, count, at, slot, info_why(e.second)};
    }
    case ClaimState::kClaimed:
      if (lock && !lock->held_by_other(writer_lock_byte(slot))) return abort_claim(offset, e, ClaimWhy::kDead);
      // An exclusive writer's claim waits for its writer however long it is stopped: it is
      // the partition's only writer, and its commit is a plain store that an abort would race.
      // Only while that is so: an exclusive writer holds the write side and is inside this
      // claim. A forged or stale `exclusive` mark is timed out like any claim.
      if (lock && stalled_ns >= claim_timeout_ns() &&
          !(info_why(e.second) == ClaimWhy::kExclusive && exclusive_writer_inside(*lock, slot, pos))) {
        // Its writer may have died since the first look (a stopped writer SIGKILLed now:
        // its locks went between the two looks): then the claim is a dead one, not late.
        // Seen twice in 28,907 kills of the 10-minute exclusive_block soak, counted as
        // "a live exclusive writer's claim timed out".
        const bool alive = lock->held_by_other(writer_lock_byte(slot));
        return abort_claim(offset, e, alive ? ClaimWhy::kTimedOut : ClaimWhy::kDead);
      }
      return Unstuck{Unstuck::kInFlight};
    default:
      return corrupt("its claim-table entry has an unknown state");
  }
}

bool Ring::exclusive_writer_inside(const SegmentLock& lock, std::uint32_t slot, std::uint64_t pos) const noexcept {
  return slot < kWriterSlots && writers_[slot].claim_position.load(std::memory_order_acquire) == pos &&
         lock.held_exclusively_by_other(write_side_lock_byte()) && lock.held_by_other(writer_lock_byte(slot));
}

bool Ring::writer_inside(const SegmentLock& lock, std::uint32_t slot, std::uint64_t pos) const noexcept {
  if (slot >= kWriterSlots) return false;
  if (writers_[slot].claim_position.load(std::memory_order_acquire) != pos) return false;
  return lock.held_by_other(writer_lock_byte(slot));
}

std::uint64_t Ring::gate_min(const SegmentLock* lock, std::uint64_t reap_dead_below) const noexcept {
  std::uint64_t m = UINT64_MAX;
  for (std::uint32_t i = 0; i < kGateSlots; ++i) {
    GateSlot& g = gates_[i];
    // SYNC POINT: acquire; pairs with the release of `kind` when a gate is set up. seq_cst:
    // the producer's half of the Dekker in bump_gate_generation (plain loads on x86).
    const std::uint32_t kind = g.kind.load(std::memory_order_seq_cst);
    if (kind == static_cast<std::uint32_t>(GateKind::kFree)) continue;
    const std::uint64_t p = g.position.load(std::memory_order_seq_cst);
    if (lock && p < reap_dead_below && kind == static_cast<std::uint32_t>(GateKind::kProcess) &&
        const_cast<SegmentLock*>(lock)->try_lock(gate_lock_byte(i))) {
      // We hold its lock, so its owner is gone: nobody else can be setting it up either.
      std::uint32_t expect = kind;
      if (g.kind.compare_exchange_strong(expect, static_cast<std::uint32_t>(GateKind::kFree), std::memory_order_acq_rel))
        ctl_->claim_stats.gates_reaped.fetch_add(1, std::memory_order_relaxed);
      const_cast<SegmentLock*>(lock)->unlock(gate_lock_byte(i));
      continue;
    }
    m = std::min(m, p);
  }
  return m;
}

void Ring::reap_waiters(const SegmentLock& lock) const noexcept {
  std::uint64_t bits = ctl_->notify.waiters.load(std::memory_order_acquire);
  while (bits) {
    const int i = std::countr_zero(bits);
    bits &= bits - 1;
    auto& l = const_cast<SegmentLock&>(lock);
    if (!l.try_lock(waiter_lock_byte(static_cast<std::uint32_t>(i)))) continue;  // a live consumer
    if (ctl_->notify.waiters.fetch_and(~(std::uint64_t{1} << i), std::memory_order_acq_rel) & (std::uint64_t{1} << i))
      ctl_->claim_stats.waiters_reaped.fetch_add(1, std::memory_order_relaxed);
    l.unlock(waiter_lock_byte(static_cast<std::uint32_t>(i)));
  }
}

std::optional<std::uint64_t> Ring::durable_end(bool synced) const noexcept {
  const auto& w = synced ? ctl_->stats.synced_end : ctl_->stats.spill_end;
  const std::uint64_t v = w.load(std::memory_order_acquire);
  if (v > end_offset()) return std::nullopt;  // busd never publishes past what was claimed
  return v;
}

std::atomic<std::uint32_t>* Ring::durable_word(bool synced) const noexcept {
  static_assert(std::endian::native == std::endian::little, "the futex word is the offset's low half");
  auto& w = synced ? ctl_->stats.synced_end : ctl_->stats.spill_end;
  return reinterpret_cast<std::atomic<std::uint32_t>*>(&w);
}

void Ring::want_durable(std::uint64_t end, bool synced) const noexcept {
  auto& limits = ctl_->limits;
  if (synced) {
    std::uint64_t w = limits.sync_wanted.load(std::memory_order_relaxed);
    while (w < end && !limits.sync_wanted.compare_exchange_weak(w, end)) {
    }
  }
  if (durable_end(synced).value_or(0) < end) {  // wake the spiller's tailer if it idles
    limits.ack_bell.fetch_add(1, std::memory_order_seq_cst);
    futex_wake_all(&limits.ack_bell);
  }
}

bool Ring::reclaim_view_held(std::uint64_t first) const noexcept {
  for (std::uint32_t i = 0; i < kWriterSlots; ++i)
    // SYNC POINT: seq_cst; with the caller's seq_cst store of its gate before, Dekker with the
    // producer's seq_cst store of its view before its seq_cst loads of the gates (make_room).
    if (writers_[i].reclaim_view.load(std::memory_order_seq_cst) == first) return true;
  return false;
}

std::uint64_t Ring::bump_gate_generation() const noexcept {
  Pair64 r = load128(&ctl_->reclaim);
  for (;;) {
    // The 8 bits wrap: a producer stopped inside its reclaim since 256 bumps ago would find
    // `reclaim` as it read it and pass the gates that came meanwhile. So the next generation
    // is one no producer's announced view holds at this offset (64 slots, 255 choices).
    const std::uint64_t off = r.first & kReclaimOffsetMask;
    std::uint64_t gen = r.first & ~kReclaimOffsetMask;
    for (std::uint32_t i = 0; i <= kWriterSlots; ++i) {
      gen += kGateGenOne;  // the top 8 bits; the carry falls off
      if (!reclaim_view_held(gen | off)) break;
    }
    if (cas128(&ctl_->reclaim, r, Pair64{gen | off, r.second})) return r.second;
  }
}

// ---- writers ----

RingWriter::RingWriter(RingWriter&& o) noexcept { *this = std::move(o); }

RingWriter& RingWriter::operator=(RingWriter&& o) noexcept {
  if (this != &o) {
    release();
    ring_ = o.ring_;
    lock_ = std::move(o.lock_);
    slot_ = std::exchange(o.slot_, nullptr);
    slot_index_ = o.slot_index_;
    owner_pid_ = o.owner_pid_;
    owner_fork_gen_ = o.owner_fork_gen_;
    cached_tail_ = o.cached_tail_;
    cached_reclaim_ = o.cached_reclaim_;
    cached_reclaim_offset_ = o.cached_reclaim_offset_;
    futile_wakes_ = o.futile_wakes_;
    waits_ = o.waits_;
    last_claim_ns_ = o.last_claim_ns_;
    exclusive_ = o.exclusive_;
    light_fence_ = o.light_fence_;
  }
  return *this;
}

RingWriter::~RingWriter() { release(); }

void RingWriter::release() noexcept {
  // In a forked child the slot is the parent's: leave it alone.
  if (!slot_ || self_process().pid != owner_pid_) return;
  slot_->claim_position.store(kNoClaim, std::memory_order_release);
  slot_->owner_pid.store(0, std::memory_order_relaxed);
  lock_.unlock(writer_lock_byte(slot_index_));
  if (exclusive_) {
    ring_.ctl()->notify.light_fence.store(0, std::memory_order_relaxed);
    ring_.ctl()->notify.exclusive_pid.store(0, std::memory_order_release);
  }
  lock_.unlock(write_side_lock_byte());
  slot_ = nullptr;
}

Status RingWriter::take_write_side(bool exclusive) noexcept {
  const std::size_t byte = write_side_lock_byte();
  if (exclusive ? lock_.try_lock(byte) : lock_.try_lock_shared(byte)) return {};
  const std::int32_t owner = ring_.ctl()->notify.exclusive_pid.load(std::memory_order_acquire);
  if (exclusive)
    return make_error(Errc::kTooManyClients,
                      fmt::format("partition {} has other producers open: an exclusive producer must be its only one{}",
                                  ring_.partition(), owner ? fmt::format(" (pid {} holds it exclusively)", owner) : ""));
  return make_error(Errc::kTooManyClients, fmt::format("partition {} is written by an exclusive producer{}: no other "
                                                       "producer may open it until that one closes or dies",
                                                       ring_.partition(), owner ? fmt::format(" (pid {})", owner) : ""));
}

// An exclusive writer starts at the tail. A claim won at the tail whose writer never moved
// the tail is a dead writer's (no other writer is open): move the tail past it, so that no
// reader helps it there while we claim the same entry (readers abort it as dead).
void RingWriter::settle_tail() noexcept {
  for (int i = 0; i < 64; ++i) {
    const Pair64 t = snapshot128(&ring_.ctl()->tail);
    Pair64 e;
    if (!snapshot_entry(ring_.entry(t.first), e)) continue;
    if (((e.first ^ ring_.salt()) >> 8) != t.first + 1 || !ring_.help_tail(t)) break;
  }
  cached_tail_ = snapshot128(&ring_.ctl()->tail);
}

Status RingWriter::open(const Segment& seg, bool exclusive) {
  auto l = SegmentLock::open(seg);
  if (!l) return tl::unexpected(l.error());
  lock_ = std::move(*l);
  if (auto ok = take_write_side(exclusive); !ok) {
    lock_ = SegmentLock{};
    return ok;
  }
  for (std::uint32_t i = 0; i < kWriterSlots; ++i) {
    if (!lock_.try_lock(writer_lock_byte(i))) continue;
    WriterSlot& s = *ring_.writer_slot(i);
    // A slot whose lock was free: its last owner closed it, or died. A dead owner may have
    // left a claim that readers would now take for ours (the lock is held again): abort it.
    const std::uint64_t cp = s.claim_position.load(std::memory_order_acquire);
    if (cp != kNoClaim) {
      const std::uint64_t co = s.claim_offset.load(std::memory_order_relaxed);
      Pair64 e;
      if (snapshot_entry(ring_.entry(co), e)) {
        const std::uint64_t d = e.first ^ ring_.salt();
        if ((d >> 8) == co + 1 && static_cast<ClaimState>(d & 0xff) == ClaimState::kClaimed && info_slot(e.second) == i) {
          Pair64 expect = e;
          if (cas128(as_pair(ring_.entry(co)), expect,
                     Pair64{encode_tag(co, ClaimState::kAborted, ring_.salt()), with_why(e.second, ClaimWhy::kDead)}))
            ring_.ctl()->stats.dead_claims_reclaimed.fetch_add(1, std::memory_order_relaxed);
        }
      }
      ring_.ctl()->claim_stats.slots_recovered.fetch_add(1, std::memory_order_relaxed);
    }
    s.claim_position.store(kNoClaim, std::memory_order_relaxed);
    s.reclaim_view.store(kNoClaim, std::memory_order_relaxed);  // a dead owner's, stopped inside a reclaim
    s.owner_pid.store(self_process().pid, std::memory_order_relaxed);
    owner_pid_ = self_process().pid;
    owner_fork_gen_ = fork_generation();  // after self_process(): its atfork handler moves it
    slot_ = &s;
    slot_index_ = i;
    cached_tail_ = snapshot128(&ring_.ctl()->tail);
    const Pair64 r = snapshot128(&ring_.ctl()->reclaim);
    cached_reclaim_ = r.second;
    cached_reclaim_offset_ = r.first & kReclaimOffsetMask;
    exclusive_ = exclusive;
    if (!exclusive) {
      // Our shared lock proves no exclusive writer lives: clear what a killed one left, or
      // every sleeper would go on fencing for it.
      ring_.ctl()->notify.light_fence.store(0, std::memory_order_relaxed);
      ring_.ctl()->notify.exclusive_pid.store(0, std::memory_order_relaxed);
    } else {
      // Sleepers fence for us if the kernel lets us register; else we fence before reading
      // `waiters` (docs/ring.md, "Exclusive writers"). Published before our first claim,
      // and the full fence orders it before our first read of `waiters`.
      light_fence_ = register_light_fence();
      ring_.ctl()->notify.light_fence.store(light_fence_ ? 1 : 0, std::memory_order_relaxed);
      ring_.ctl()->notify.exclusive_pid.store(owner_pid_, std::memory_order_release);
      full_fence();
      settle_tail();
    }
    return {};
  }
  lock_.unlock(write_side_lock_byte());
  return make_error(Errc::kTooManyClients, fmt::format("partition {} has no free writer slot ({} producers attached)",
                                                       ring_.partition(), kWriterSlots));
}

Status RingWriter::claim_into(Claim& out, std::span<const std::uint32_t> sizes, std::int64_t block_timeout_ns,
                              std::uint32_t end_align) noexcept {
  if (!slot_) return make_error(Errc::kInvalidArgument, "writer is not open");
  if (self_process().pid != owner_pid_) [[unlikely]]
    return make_error(Errc::kInvalidArgument,
                      fmt::format("partition {}: this producer was opened by process {}; a forked child must create its own",
                                  ring_.partition(), owner_pid_));
  if (sizes.empty() || sizes.size() > kMaxClaimCount)
    return make_error(Errc::kInvalidArgument, fmt::format("a claim holds 1 to {} records, not {}", kMaxClaimCount, sizes.size()));
  const std::uint64_t cap = ring_.capacity();
  const auto n = static_cast<std::uint32_t>(sizes.size());
  Pair64 cur = cached_tail_;
  for (;;) {
    std::uint64_t end = cur.second, last = cur.second, first_at = 0;
    for (std::uint32_t s : sizes) {
      last = ring_.place(end, s);
      if (end == cur.second) first_at = last;
      end = last + s;
    }
    end = aligned_end(cur.second, last, end, end_align);
    if (!room_known(cur.first, end)) {
      if (auto st = make_room(end > cap ? end - cap : 0, min_offset_for(cur.first), block_timeout_ns); !st) {
        slot_->claim_position.store(kNoClaim, std::memory_order_release);
        return tl::unexpected(st.error());
      }
    }
    // Named before the entry is won, so that a takeover of this slot after our death can
    // find the claim, and a reclaimer can tell whether we may still be writing it.
    slot_->claim_offset.store(cur.first, std::memory_order_relaxed);
    slot_->claim_position.store(cur.second, std::memory_order_release);
    ClaimEntry* e = ring_.entry(cur.first);
    // Two plain loads: the CAS below compares both halves, so a torn pair only fails it.
    Pair64 seen{__atomic_load_n(&e->tag, __ATOMIC_ACQUIRE), __atomic_load_n(&e->info, __ATOMIC_RELAXED)};
    const std::uint64_t named = (seen.first ^ ring_.salt()) >> 8;
    if (exclusive_ && named < cur.first + 1) [[likely]] {
      claim_exclusive(out, e, cur.first, cur.second, end, n, first_at);
      return {};
    }
    if (named >= cur.first + 1) {
      // (An exclusive writer meets this only through a dead predecessor's claim left at the
      // tail, or forged bytes: it helps and reads the tail again as anyone would.)
      // Won by someone else: our tail was stale. Move the tail past their claim if they
      // have not, then lay out again from the tail.
      if (named == cur.first + 1) (void)ring_.help_tail(cur);
      const Pair64 t = snapshot128(&ring_.ctl()->tail);
      if (t.first == cur.first && t.second == cur.second) {
        // The tail stays where the entry says a claim was won: only damaged or forged bytes
        // do that (a won entry moves the tail, and a later offset's entry cannot be reused
        // before the tail passed it).
        slot_->claim_position.store(kNoClaim, std::memory_order_release);
        ring_.ctl()->claim_stats.corrupt_seen.fetch_add(1, std::memory_order_relaxed);
        return make_error(Errc::kBadSegment,
                          fmt::format("{}: its claim-table entry names offset {} with {} bytes: damaged or forged",
                                      claim_name(ring_, cur.first, cur.second), named - 1, info_bytes(seen.second)));
      }
      cur = t;
      continue;
    }
    const Pair64 mine{encode_tag(cur.first, ClaimState::kClaimed, ring_.salt()),
                      encode_info(static_cast<std::uint32_t>(end - cur.second), n, first_at != cur.second, slot_index_,
                                  ClaimWhy::kOwner)};
    // SYNC POINT: the claim. Tags only grow, so a CAS expecting an older tag cannot succeed
    // late (a writer stalled for laps fails here instead of writing).
    if (!cas128(as_pair(e), seen, mine)) {
      cur = snapshot128(&ring_.ctl()->tail);
      continue;
    }
    if (test_hooks::after_entry_claim) test_hooks::after_entry_claim();
    const Pair64 next{cur.first + n, end};
    Pair64 expect = cur;
    // Fails only when a helper moved it for us (Ring::help_tail), to the same place.
    (void)cas128(&ring_.ctl()->tail, expect, next);
    cached_tail_ = next;
    if (test_hooks::after_claim) test_hooks::after_claim();
    // SYNC POINT: seq_cst RMWs above (entry, tail), then this seq_cst load: Dekker with the
    // sleeper's seq_cst fetch_or of its waiter bit followed by its seq_cst load of the tail
    // (docs/ring.md, "Waiting").
    const bool wake = ring_.ctl()->notify.waiters.load(std::memory_order_seq_cst) != 0;
    out = Claim{cur.first, cur.second, end, n, first_at, wake};
    return {};
  }
}

void RingWriter::fence_for_sleepers() noexcept { full_fence(); }

// The entry of our claim `c` as we won it: what commit() and abort() expect to find there.
Pair64 RingWriter::claimed_entry(const Claim& c) const noexcept {
  return Pair64{encode_tag(c.offset, ClaimState::kClaimed, ring_.salt()),
                encode_info(static_cast<std::uint32_t>(c.end - c.position), c.count, c.first_at != c.position, slot_index_,
                            exclusive_ ? ClaimWhy::kExclusive : ClaimWhy::kOwner)};
}

Status RingWriter::commit_shared_or_refused(const Claim& c) noexcept {
  ClaimEntry* e = ring_.entry(c.offset);
  Pair64 expect = claimed_entry(c);
  if (exclusive_) {
    // commit() found a tag that is not ours: forged (nobody aborts a live exclusive writer).
    expect.second = __atomic_load_n(&e->info, __ATOMIC_RELAXED);
  } else {
    if (test_hooks::before_commit) test_hooks::before_commit();
    const Pair64 committed{encode_tag(c.offset, ClaimState::kCommitted, ring_.salt()), expect.second};
    if (cas128(as_pair(e), expect, committed)) {
      // SYNC POINT (the CAS): release (full barrier); every byte of the claim is written
      // before it. Pairs with readers' acquire of the entry (Ring::unstick) and of the words
      // after it.
      if (test_hooks::after_commit) test_hooks::after_commit();
      return {};
    }
  }
  ring_.ctl()->claim_stats.late_commits_refused.fetch_add(1, std::memory_order_relaxed);
  slot_->claim_position.store(kNoClaim, std::memory_order_release);
  const auto why = info_why(expect.second);
  return make_error(Errc::kTimedOut,
                    why == ClaimWhy::kTimedOut
                        ? fmt::format("{}: not committed: it was unfinished for longer than the claim timeout ({} ms) and "
                                      "another process aborted it; nothing of it is read",
                                      claim_name(ring_, c.offset, c.position), ring_.claim_timeout_ns() / 1'000'000)
                        : fmt::format("{}: not committed: another process aborted it (its writer was taken for dead); "
                                      "nothing of it is read",
                                      claim_name(ring_, c.offset, c.position)));
}

// finish() of a claim that starts with a padding word (the rest of a lap): the record's
// index entry and word, then the padding word.
void RingWriter::finish_after_padding(const Claim& c) noexcept {
  ring_.index_at(c.offset).store(c.first_at, std::memory_order_relaxed);
  publish(c.first_at, c.offset);
  publish_padding(c.position, c.offset);
}

void RingWriter::abort(const Claim& c) noexcept {
  Pair64 expect = claimed_entry(c);
  if (exclusive_) {
    if (__atomic_load_n(&ring_.entry(c.offset)->tag, __ATOMIC_RELAXED) == expect.first)
      store128(as_pair(ring_.entry(c.offset)), Pair64{encode_tag(c.offset, ClaimState::kAborted, ring_.salt()),
                                                      with_why(expect.second, ClaimWhy::kOwner)});
    slot_->claim_position.store(kNoClaim, std::memory_order_release);
    return;
  }
  (void)cas128(as_pair(ring_.entry(c.offset)), expect, Pair64{encode_tag(c.offset, ClaimState::kAborted, ring_.salt()), expect.second});
  slot_->claim_position.store(kNoClaim, std::memory_order_release);
}

void RingWriter::wake_sleepers() noexcept {
  if (ring_.notify(true) > 0) {
    futile_wakes_ = 0;
  } else if (++futile_wakes_ >= kFutileWakesBeforeReap) {
    // A consumer killed while registered to sleep leaves its bit set: every send would pay
    // a wake-up for good. Its waiter slot's lock is free now; clear its bit.
    futile_wakes_ = 0;
    ring_.reap_waiters(lock_);
  }
}

Status RingWriter::make_room(std::uint64_t target, std::uint64_t min_offset, std::int64_t block_timeout_ns) noexcept {
  const bool block = ring_.retention() == Retention::kBlock;
  const std::uint64_t chunk = ring_.ctl()->config.reclaim_chunk;
  std::uint64_t waited_since = 0, stall_offset = kNoClaim, stall_since = 0;
  unsigned round = 0;
  gated_timeout_ = false;
  // Our view of `reclaim` is announced while we may CAS on it, and withdrawn on every return.
  struct Withdraw {
    WriterSlot* s;
    ~Withdraw() { s->reclaim_view.store(kNoClaim, std::memory_order_relaxed); }
  } withdraw{slot_};
  for (;;) {
    // A snapshot, not a locked read: a locked instruction is a full barrier that would wait
    // for the whole previous batch's stores to drain, and the CAS below checks it anyway.
    Pair64 r = snapshot128(&ring_.ctl()->reclaim);
    const std::uint64_t gen = r.first & ~kReclaimOffsetMask;
    std::uint64_t off = r.first & kReclaimOffsetMask, p = r.second;
    if (p >= target && off >= min_offset) {
      cached_reclaim_ = p;
      cached_reclaim_offset_ = off;
      return {};
    }
    const std::uint64_t goal = std::max(target, p + chunk);
    std::uint64_t limit = ring_.tail_position();
    bool gated = false;
    if (block) {
      // SYNC POINT: seq_cst store, then the seq_cst loads of the gates (Ring::gate_min): a
      // consumer whose gate we miss sees our view and never makes `reclaim` it again, however
      // often the generation wraps (Ring::bump_gate_generation).
      slot_->reclaim_view.store(r.first, std::memory_order_seq_cst);
      // Scanned anew every time: a minimum kept from an earlier scan would be trusted on
      // the gate generation alone, whose 8 bits wrap (docs/ring.md, "Gates").
      const std::uint64_t g = ring_.gate_min(&lock_, waited_since ? target : 0);
      if (g < target || (g <= p && off < min_offset)) gated = true;
      limit = std::min(limit, g);
    }
    enum { kFree, kInFlight, kLate } stuck = kFree;
    std::uint32_t stuck_slot = 0;
    for (std::uint32_t steps = 0; (p < goal || off < min_offset) && p < limit && steps < kMaxWalkSteps; ++steps) {
      const std::uint64_t w = ring_.word_at(p);
      if (w == Ring::decoded(off, RecordState::kCommitted)) {
        // If our view of `reclaim` is stale, another producer may already be writing the
        // next lap here: what we read only counts if our CAS on `reclaim` below succeeds.
        const std::uint32_t len = ring_.header_at(p)->length.load(std::memory_order_relaxed);
        if (len < kRecordHeaderSize || len > ring_.max_record() || (len & 7) != 0 || (p & ring_.mask()) + len > ring_.capacity()) {
          if (ring_.reclaim_position() != r.second) break;  // stale view: look again
          ring_.ctl()->claim_stats.corrupt_seen.fetch_add(1, std::memory_order_relaxed);
          return make_error(Errc::kBadSegment, fmt::format("partition {}: record at offset {} (position {}) has a bad length {}",
                                                           ring_.partition(), off, p, len));
        }
        p += len;
        ++off;
        continue;
      }
      // A padding word where none can stand is not jumped on: the entry tells (unstick).
      if (w == Ring::decoded(off, RecordState::kPadding) && ring_.padding_may_stand(p)) {
        p = ring_.next_lap(p);
        continue;
      }
      const std::uint64_t now = monotonic_ns();
      const Unstuck u = ring_.unstick(off, p, &lock_, stall_offset == off ? now - stall_since : 0);
      if (u.kind == Unstuck::kInFlight && stall_offset != off) {  // its clock starts now
        stall_offset = off;
        stall_since = now;
      }
      if (u.kind == Unstuck::kSkip || u.kind == Unstuck::kCommitted) {
        // A claim finished by others (aborted, or read by its entry) while its writer may
        // still be writing it: its bytes are not ours to reuse until it leaves or dies.
        if ((u.kind == Unstuck::kCommitted || u.why == ClaimWhy::kTimedOut) && ring_.writer_inside(lock_, u.slot, p)) {
          stuck = kLate;
          stuck_slot = u.slot;
          break;
        }
        // Stepped over whole: a gate inside it (a reader reading a committed claim by its
        // entry stops between its records) holds the reclaim at the claim's start.
        if (p + u.bytes > limit) {
          gated = true;  // waits for that reader like any gate, with the same timeout
          break;
        }
        p += u.bytes;
        off += u.count;
        continue;
      }
      if (u.kind == Unstuck::kCorrupt) {
        if (ring_.reclaim_position() != r.second) break;
        ring_.ctl()->claim_stats.corrupt_seen.fetch_add(1, std::memory_order_relaxed);
        return make_error(Errc::kBadSegment, fmt::format("{}: {} (damaged or forged bytes)", claim_name(ring_, off, p), u.problem));
      }
      stuck = kInFlight;  // an unfinished claim one lap behind: its writer finishes, or unstick() will
      break;
    }
    if (stuck == kFree && !gated && p == r.second) {
      // Not one step, and neither a claim nor a gate holds the start back: the walk stands at
      // the end (the tail's position), yet the start's offset is below what the claim needs.
      // No ring gets there (the start reaches the tail's position with the tail's offset), and
      // no wait would ever end: forged or damaged cursors, unless they moved meanwhile.
      const Pair64 again = snapshot128(&ring_.ctl()->reclaim);
      if (again.first != r.first || again.second != r.second) continue;
      ring_.ctl()->claim_stats.corrupt_seen.fetch_add(1, std::memory_order_relaxed);
      return make_error(Errc::kBadSegment,
                        fmt::format("partition {}: the ring's start (offset {}, position {}) cannot move: it is at the "
                                    "end (position {}), yet a claim needs it at offset {} and position {} (damaged or "
                                    "forged bytes)",
                                    ring_.partition(), off, p, limit, min_offset, target));
    }
    if (p > r.second) {
      if (test_hooks::before_reclaim_cas) test_hooks::before_reclaim_cas();
      // Fails if another producer moved it, or a gate came (generation): look again.
      if (!cas128(&ring_.ctl()->reclaim, r, Pair64{off | gen, p})) continue;
      if (p >= target && off >= min_offset) {
        cached_reclaim_ = p;
        cached_reclaim_offset_ = off;
        return {};
      }
    }
    const std::uint64_t now = monotonic_ns();
    if (waited_since == 0) {
      waited_since = now;
      ++waits_;
      if (stuck == kLate) ring_.ctl()->claim_stats.quarantine_waits.fetch_add(1, std::memory_order_relaxed);
    }
    if (block_timeout_ns >= 0 && now - waited_since > static_cast<std::uint64_t>(block_timeout_ns) &&
        (gated || stuck != kFree)) {
      ring_.ctl()->stats.producer_blocked_ns.fetch_add(now - waited_since, std::memory_order_relaxed);
      const std::uint64_t ms = static_cast<std::uint64_t>(block_timeout_ns) / 1'000'000;
      if (stuck == kLate)
        return make_error(Errc::kTimedOut,
                          fmt::format("partition {} is full: a producer (pid {}) is stopped inside its claim at offset {}, "
                                      "which was aborted; its bytes cannot be reused until it runs or dies (waited {} ms)",
                                      ring_.partition(), ring_.writer_slot(stuck_slot)->owner_pid.load(std::memory_order_relaxed),
                                      off, ms));
      if (stuck == kInFlight)
        return make_error(Errc::kTimedOut, fmt::format("partition {} is full: the {} is unfinished (waited {} ms; it is "
                                                       "aborted after the claim timeout of {} ms)",
                                                       ring_.partition(), claim_name(ring_, off, p), ms,
                                                       ring_.claim_timeout_ns() / 1'000'000));
      gated_timeout_ = true;
      return make_error(Errc::kTimedOut,
                        fmt::format("partition {} is full: a consumer holding it has not moved for {} ms (retention=block)",
                                    ring_.partition(), ms));
    }
    backoff(round);
  }
}

// ---- readers ----

ReadStatus RingReader::unstick(const SegmentLock* lock, std::uint64_t now_ns) noexcept {
  const bool timing = stall_offset_ == offset_ && lock;
  const Unstuck u = ring_.unstick(offset_, pos_, lock, timing ? now_ns - stall_since_ : 0);
  // The clock runs from the first look that saw this claim in flight, with a lock (a seek's
  // walk has none, and no time).
  if (u.kind == Unstuck::kInFlight && lock) {
    if (!timing) {
      stall_offset_ = offset_;
      stall_since_ = now_ns;
    }
  } else {
    stall_offset_ = kNoClaim;
  }
  switch (u.kind) {
    case Unstuck::kSkip:
      pos_ += u.bytes;
      offset_ += u.count;
      aborted_ += u.count;
      return ReadStatus::kRecord;
    case Unstuck::kCommitted:
      committed_from_ = pos_;
      committed_until_ = pos_ + u.bytes;
      pos_ = u.at;
      return ReadStatus::kRecord;
    case Unstuck::kCorrupt:
      if (lapped()) return ReadStatus::kLapped;
      problem_ = u.problem;
      if (lock) ring_.ctl()->claim_stats.corrupt_seen.fetch_add(1, std::memory_order_relaxed);
      return ReadStatus::kCorrupt;
    default:
      return ReadStatus::kNone;
  }
}

void RingReader::describe_insane(Insane what, std::uint64_t word, std::uint32_t length) noexcept {
  const std::uint64_t lap_at = pos_ & ring_.mask();
  const bool by_entry = pos_ < committed_until_ && pos_ >= committed_from_;
  switch (what) {
    case Insane::kLength:
      std::snprintf(problem_text_, sizeof problem_text_,
                    "%s record has a length of %u bytes (at byte %llu of the lap; word %s offset %llu, state %u; "
                    "max record %u)",
                    by_entry ? "a committed claim read by its entry: its" : "a committed", length,
                    static_cast<unsigned long long>(lap_at), by_entry ? "names" : "says",
                    static_cast<unsigned long long>(word >> 8), static_cast<unsigned>(word & 0xff), ring_.max_record());
      break;
    case Insane::kPadding:
      std::snprintf(problem_text_, sizeof problem_text_,
                    "a padding word where no padding can stand (byte %llu of the lap; a record of max %u bytes "
                    "would still fit)%s",
                    static_cast<unsigned long long>(lap_at), ring_.max_record(), by_entry ? ", inside a claim read by its entry" : "");
      break;
    case Insane::kTwoPaddings:
      std::snprintf(problem_text_, sizeof problem_text_, "a padding word at the start of a lap (after a padding jump)");
      break;
  }
  problem_ = problem_text_;
}

void RingReader::seek_earliest() noexcept {
  const Pair64 r = snapshot128(&ring_.ctl()->reclaim);
  offset_ = r.first & kReclaimOffsetMask;
  pos_ = r.second & ~std::uint64_t{7};  // on the record grid even if forged after ring_validate()
  committed_until_ = 0;
  stall_offset_ = kNoClaim;
}

void RingReader::seek_latest() noexcept {
  const Pair64 t = snapshot128(&ring_.ctl()->tail);
  offset_ = t.first;
  pos_ = t.second & ~std::uint64_t{7};
  committed_until_ = 0;
  stall_offset_ = kNoClaim;
}

ReadStatus RingReader::seek(std::uint64_t offset) noexcept {
  for (int attempt = 0; attempt < 8; ++attempt) {
    Pair64 r = snapshot128(&ring_.ctl()->reclaim);
    r.first &= kReclaimOffsetMask;
    const Pair64 t = snapshot128(&ring_.ctl()->tail);
    if (offset < r.first || offset > t.first) return ReadStatus::kLapped;
    committed_until_ = 0;
    if (offset == t.first) {
      offset_ = t.first;
      pos_ = t.second & ~std::uint64_t{7};
      return ReadStatus::kRecord;
    }
    // Fast: the index; a hit is proved by the word, which names its own offset (words are
    // stored only once their claim committed).
    const std::uint64_t p = ring_.index_at(offset).load(std::memory_order_relaxed);
    if (p >= r.second && p < t.second && (p & 7) == 0 &&
        ring_.word_at(p) == Ring::decoded(offset, RecordState::kCommitted) && ring_.reclaim_position() <= p) {
      offset_ = offset;
      pos_ = p;
      return ReadStatus::kRecord;
    }
    // Slow: walk from the start of the ring (tiny records overran the index, or the offset
    // lies inside an aborted claim, or after an unfinished one). Bounded by the ring.
    offset_ = r.first;
    pos_ = r.second & ~std::uint64_t{7};
    const RecordHeader* h = nullptr;
    std::uint32_t len = 0;
    bool again = false;
    for (std::uint64_t steps = 0; offset_ < offset && !again; ++steps) {
      if (steps > ring_.capacity() / 8) return ReadStatus::kCorrupt;
      ReadStatus st = next(h, len);
      if (st == ReadStatus::kRecord) {
        advance(len);
        continue;
      }
      if (st == ReadStatus::kNone) {
        st = unstick(nullptr, 0);
        if (st == ReadStatus::kRecord) continue;
        // An unfinished claim before the target: where the target lies is not known yet.
        if (st == ReadStatus::kNone) {
          stall_offset_ = kNoClaim;
          return ReadStatus::kNone;
        }
      }
      again = true;  // lapped while walking (or damaged): start over from the new start
    }
    if (!again) {
      stall_offset_ = kNoClaim;
      return ReadStatus::kRecord;  // at the target, or just past it (it was aborted)
    }
  }
  stall_offset_ = kNoClaim;
  return ReadStatus::kLapped;
}

// ---- gates and waiter registrations ----

namespace {

// Sets up gate `g` (its lock held by the caller) at `reader`'s position and publishes it.
void publish_gate(const Ring& ring, GateSlot* g, GateKind kind, std::uint64_t key, RingReader& reader) {
  g->owner_key.store(key, std::memory_order_relaxed);
  g->owner_pid.store(self_process().pid, std::memory_order_relaxed);
  g->position.store(reader.position(), std::memory_order_relaxed);
  // SYNC POINT: release; pairs with the acquire of `kind` in Ring::gate_min. seq_cst: the
  // consumer's half of the Dekker in bump_gate_generation.
  g->kind.store(static_cast<std::uint32_t>(kind), std::memory_order_seq_cst);
  // A producer that looked at the gates before ours went up may have reclaimed past us:
  // the generation bump makes any such reclaim still in flight fail, and tells us where
  // the ring starts now.
  if (ring.bump_gate_generation() > reader.position()) {
    reader.seek_earliest();
    g->position.store(reader.position(), std::memory_order_release);
  }
}

}  // namespace

GateSlot* take_process_gate(const Ring& ring, SegmentLock& lock, RingReader& reader, std::uint64_t key) noexcept {
  for (std::uint32_t i = 0; i < kGateSlots; ++i) {
    GateSlot* g = ring.gate(i);
    if (g->kind.load(std::memory_order_acquire) == static_cast<std::uint32_t>(GateKind::kDurable)) continue;
    if (!lock.try_lock(gate_lock_byte(i))) continue;  // a live consumer's
    const std::uint32_t kind = g->kind.load(std::memory_order_acquire);
    if (kind == static_cast<std::uint32_t>(GateKind::kDurable)) {
      lock.unlock(gate_lock_byte(i));
      continue;
    }
    if (kind == static_cast<std::uint32_t>(GateKind::kProcess))  // its owner died holding it
      ring.ctl()->claim_stats.gates_reaped.fetch_add(1, std::memory_order_relaxed);
    publish_gate(ring, g, GateKind::kProcess, key, reader);
    return g;
  }
  return nullptr;
}

void release_process_gate(const Ring& ring, SegmentLock& lock, GateSlot* gate) noexcept {
  if (!gate) return;
  gate->kind.store(static_cast<std::uint32_t>(GateKind::kFree), std::memory_order_release);
  lock.unlock(gate_lock_byte(static_cast<std::uint32_t>(gate - ring.gate(0))));
}

GateSlot* hold_durable_gate(const Ring& ring, const SegmentLock& lock_in, std::uint64_t key, RingReader& reader) noexcept {
  constexpr auto kDurable = static_cast<std::uint32_t>(GateKind::kDurable);
  for (std::uint32_t i = 0; i < kGateSlots; ++i) {
    GateSlot* g = ring.gate(i);
    if (g->kind.load(std::memory_order_acquire) == kDurable && g->owner_key.load(std::memory_order_relaxed) == key) {
      const bool back = reader.position() < g->position.load(std::memory_order_relaxed);
      g->position.store(reader.position(), back ? std::memory_order_seq_cst : std::memory_order_release);
      if (back && ring.bump_gate_generation() > reader.position()) {
        reader.seek_earliest();
        g->position.store(reader.position(), std::memory_order_release);
      }
      return g;
    }
  }
  auto& lock = const_cast<SegmentLock&>(lock_in);
  for (std::uint32_t i = 0; i < kGateSlots; ++i) {
    GateSlot* g = ring.gate(i);
    if (g->kind.load(std::memory_order_acquire) == kDurable) continue;
    // Held only while we set it up: a durable gate outlives its maker, busd.
    if (!lock.try_lock(gate_lock_byte(i))) continue;
    const std::uint32_t kind = g->kind.load(std::memory_order_acquire);
    if (kind != kDurable) {
      if (kind == static_cast<std::uint32_t>(GateKind::kProcess))
        ring.ctl()->claim_stats.gates_reaped.fetch_add(1, std::memory_order_relaxed);
      publish_gate(ring, g, GateKind::kDurable, key, reader);
      lock.unlock(gate_lock_byte(i));
      return g;
    }
    lock.unlock(gate_lock_byte(i));
  }
  return nullptr;
}

bool release_durable_gate(const Ring& ring, std::uint64_t key) noexcept {
  constexpr auto kDurable = static_cast<std::uint32_t>(GateKind::kDurable);
  bool found = false;
  for (std::uint32_t i = 0; i < kGateSlots; ++i) {
    GateSlot* g = ring.gate(i);
    if (g->kind.load(std::memory_order_acquire) != kDurable || g->owner_key.load(std::memory_order_relaxed) != key) continue;
    // Only more room for producers: no reclaim decided earlier can be wrong for it.
    std::uint32_t expect = kDurable;
    found |= g->kind.compare_exchange_strong(expect, static_cast<std::uint32_t>(GateKind::kFree), std::memory_order_acq_rel);
  }
  return found;
}

int take_waiter_slot(const Ring& ring, SegmentLock& lock) noexcept {
  for (std::uint32_t i = 0; i < kWaiterSlots; ++i) {
    if (!lock.try_lock(waiter_lock_byte(i))) continue;
    // A bit left by a consumer that died asleep: ours now, and clear.
    if (ring.ctl()->notify.waiters.fetch_and(~(std::uint64_t{1} << i), std::memory_order_acq_rel) & (std::uint64_t{1} << i))
      ring.ctl()->claim_stats.waiters_reaped.fetch_add(1, std::memory_order_relaxed);
    ring.waiter_slot(i)->owner_pid.store(self_process().pid, std::memory_order_relaxed);
    return static_cast<int>(i);
  }
  return -1;
}

void release_waiter_slot(const Ring& ring, SegmentLock& lock, int slot) noexcept {
  if (slot < 0) return;
  ring.ctl()->notify.waiters.fetch_and(~(std::uint64_t{1} << slot), std::memory_order_acq_rel);
  ring.waiter_slot(static_cast<std::uint32_t>(slot))->owner_pid.store(0, std::memory_order_relaxed);
  lock.unlock(waiter_lock_byte(static_cast<std::uint32_t>(slot)));
}

}  // namespace shmbus::shm
