#include "shm/ring.h"

#include <sched.h>

#include <algorithm>
#include <bit>
#include <thread>

#include <fmt/format.h>

#include "shm/futex.h"
#include "shm/process.h"

namespace shmbus::shm {

namespace test_hooks {
void (*after_claim)() = nullptr;
}

namespace {

constexpr std::uint64_t kNoIntent = ~std::uint64_t{0};
constexpr std::size_t kPage = 4096;
constexpr std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }

inline void cpu_relax() noexcept { __builtin_ia32_pause(); }

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

}  // namespace

RingGeometry ring_geometry(std::uint64_t capacity) {
  RingGeometry g{};
  // One index entry per 64 data bytes: enough while records average >= 64 bytes; for
  // smaller ones seek() falls back to a walk from the start of the ring.
  g.index_capacity = std::max<std::uint64_t>(64, capacity / 64);
  g.index_offset = round_up(kSlotsEnd, kPage);
  g.data_offset = round_up(g.index_offset + g.index_capacity * sizeof(std::uint64_t), kPage);
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
  ctl->tail = Pair64{p.base_offset, 0};
  ctl->reclaim = Pair64{p.base_offset, 0};
  for (std::uint32_t i = 0; i < kWriterSlots; ++i) {
    auto* s = new (base + kWriterSlotsOffset + i * sizeof(WriterSlot)) WriterSlot{};
    s->intent_offset.store(kNoIntent, std::memory_order_relaxed);
  }
  for (std::uint32_t i = 0; i < kGateSlots; ++i) new (base + kGateSlotsOffset + i * sizeof(GateSlot)) GateSlot{};
  if (p.spill) {
    ctl->stats.spill_start.store(p.spill_start, std::memory_order_relaxed);
    ctl->stats.spill_end.store(p.base_offset, std::memory_order_relaxed);
    ctl->stats.spill_bytes.store(p.spill_bytes, std::memory_order_relaxed);
    if (p.retention == Retention::kBlock) {
      // The spiller's gate: durable (never reaped), found again by busd through its key.
      auto* g = reinterpret_cast<GateSlot*>(base + kGateSlotsOffset);
      g->kind.store(static_cast<std::uint32_t>(GateKind::kDurable), std::memory_order_relaxed);
      g->owner_key.store(kSpillGateKey, std::memory_order_relaxed);
      g->position.store(0, std::memory_order_relaxed);
      g->owner_start_ticks.store(self_process().start_ticks, std::memory_order_relaxed);
      g->owner_pid.store(self_process().pid, std::memory_order_relaxed);
    }
  }
  // posix_fallocate zeroed the index and the data; zero decodes to noise under the salt.
}

Status ring_validate(const Segment& seg) {
  const auto* ctl = seg.at<const PartitionControl>(kControlOffset);
  const auto& c = ctl->config;
  const std::string path = Segment::path_of(seg.name());
  if (seg.size() < kSlotsEnd) return make_error(Errc::kBadSegment, fmt::format("{} is too small for a partition ({} bytes)", path, seg.size()));
  if (c.capacity < 4096 || !std::has_single_bit(c.capacity))
    return make_error(Errc::kBadSegment, fmt::format("{}: capacity {} is not a power of two >= 4096", path, c.capacity));
  const RingGeometry g = ring_geometry(c.capacity);
  if (c.index_capacity != g.index_capacity || c.index_offset != g.index_offset || c.data_offset != g.data_offset ||
      g.segment_size != seg.size())
    return make_error(Errc::kBadSegment, fmt::format("{}: layout does not match its capacity {} (segment {} bytes, expected {})",
                                                     path, c.capacity, seg.size(), g.segment_size));
  if (c.max_record < kRecordHeaderSize || c.max_record > c.capacity / 4 || (c.max_record & 7) != 0)
    return make_error(Errc::kBadSegment, fmt::format("{}: max record {} out of range", path, c.max_record));
  if (c.retention > 1) return make_error(Errc::kBadSegment, fmt::format("{}: unknown retention {}", path, c.retention));
  return {};
}

Ring::Ring(std::byte* base) noexcept {
  ctl_ = reinterpret_cast<PartitionControl*>(base + kControlOffset);
  writers_ = reinterpret_cast<WriterSlot*>(base + kWriterSlotsOffset);
  gates_ = reinterpret_cast<GateSlot*>(base + kGateSlotsOffset);
  index_ = reinterpret_cast<std::atomic<std::uint64_t>*>(base + ctl_->config.index_offset);
  data_ = base + ctl_->config.data_offset;
  cap_ = ctl_->config.capacity;
  mask_ = cap_ - 1;
  imask_ = ctl_->config.index_capacity - 1;
  salt_ = ctl_->config.salt;
}

void Ring::notify(bool wake) const noexcept {
  if (wake) {
    ctl_->notify.seq.fetch_add(1, std::memory_order_release);
    futex_wake_all(&ctl_->notify.seq);
  }
}

void Ring::finalize_claim(std::uint64_t offset, std::uint64_t pos, std::uint64_t bytes, std::uint32_t count,
                          std::int32_t pid) const noexcept {
  std::uint64_t cur = pos, off = offset;
  const std::uint64_t end = pos + bytes, last = offset + count;
  while (cur < end && off < last) {
    RecordHeader* h = header_at(cur);
    const std::uint64_t w = h->word.load(std::memory_order_acquire) ^ salt_;
    if ((w >> 8) == off) {
      const auto st = static_cast<RecordState>(w & 0xff);
      if (st == RecordState::kPadding) {
        cur = next_lap(cur);
        continue;
      }
      if (st == RecordState::kCommitted) {
        cur += h->length;
        ++off;
        continue;
      }
      if (st == RecordState::kAborted) {
        cur += h->length;
        off += h->key_len;
        continue;
      }
    }
    // The first unfinished record: everything from here to the end of the claim goes.
    if ((cur & mask_) + (end - cur) > cap_) {
      h->word.store(encode_word(off, RecordState::kPadding, salt_), std::memory_order_release);
      cur = next_lap(cur);
      h = header_at(cur);
    }
    h->length = static_cast<std::uint32_t>(end - cur);
    h->writer_pid = pid;
    h->timestamp_ns = 0;
    h->key_len = static_cast<std::uint32_t>(last - off);
    h->headers_len = 0;
    h->value_len = 0;
    h->flags = 0;
    // SYNC POINT: release; readers acquire the word, then read length and count.
    h->word.store(encode_word(off, RecordState::kAborted, salt_), std::memory_order_release);
    return;
  }
}

bool Ring::resolve_stall(std::uint64_t offset, std::uint64_t pos) const noexcept {
  const ProcessId& me = self_process();
  // First pass: is the claim a live writer's? Then wait, whatever other slots say.
  WriterSlot* dead = nullptr;
  std::int32_t dead_pid = 0;
  for (std::uint32_t i = 0; i < kWriterSlots; ++i) {
    WriterSlot& s = writers_[i];
    const std::int32_t pid = s.owner_pid.load(std::memory_order_acquire);
    if (pid == 0) continue;
    if (pid < 0) return false;  // a slot changing hands: look again later
    const std::uint64_t io = s.intent_offset.load(std::memory_order_acquire);
    if (io == kNoIntent) continue;
    const std::uint64_t ipos = s.intent_position.load(std::memory_order_relaxed);
    const std::uint64_t ibytes = s.intent_bytes.load(std::memory_order_relaxed);
    const std::uint32_t icount = s.intent_count.load(std::memory_order_relaxed);
    if (offset < io || offset >= io + icount || pos < ipos || pos >= ipos + ibytes) continue;
    if (process_alive(pid, s.owner_start_ticks.load(std::memory_order_relaxed))) return false;
    if (!dead) {
      dead = &s;
      dead_pid = pid;
    }
  }
  if (!dead) return false;
  // Take the dead writer's slot over so that exactly one process finishes its claim; if we
  // die while doing it, our own pid is dead next time and somebody else takes over.
  std::int32_t expect = dead_pid;
  if (!dead->owner_pid.compare_exchange_strong(expect, -1, std::memory_order_acq_rel)) return false;
  dead->owner_start_ticks.store(me.start_ticks, std::memory_order_relaxed);
  dead->owner_pid.store(me.pid, std::memory_order_release);
  const std::uint64_t io = dead->intent_offset.load(std::memory_order_acquire);
  if (io != kNoIntent && reclaim_position() <= pos) {
    finalize_claim(io, dead->intent_position.load(std::memory_order_relaxed), dead->intent_bytes.load(std::memory_order_relaxed),
                   dead->intent_count.load(std::memory_order_relaxed), dead_pid);
    ctl_->stats.dead_claims_reclaimed.fetch_add(1, std::memory_order_relaxed);
  }
  dead->intent_offset.store(kNoIntent, std::memory_order_relaxed);
  dead->owner_pid.store(0, std::memory_order_release);
  return true;
}

std::uint64_t Ring::gate_min(std::uint64_t reap_dead_below) const noexcept {
  std::uint64_t m = UINT64_MAX;
  for (std::uint32_t i = 0; i < kGateSlots; ++i) {
    GateSlot& g = gates_[i];
    std::int32_t pid = g.owner_pid.load(std::memory_order_acquire);
    if (pid <= 0) continue;  // free, or being taken (its taker bumps the gate generation after)
    const std::uint64_t p = g.position.load(std::memory_order_acquire);
    if (p < reap_dead_below && g.kind.load(std::memory_order_relaxed) != static_cast<std::uint32_t>(GateKind::kDurable) &&
        !process_alive(pid, g.owner_start_ticks.load(std::memory_order_relaxed))) {
      g.owner_pid.compare_exchange_strong(pid, 0, std::memory_order_acq_rel);
      continue;
    }
    m = std::min(m, p);
  }
  return m;
}

RingWriter::RingWriter(RingWriter&& o) noexcept { *this = std::move(o); }

RingWriter& RingWriter::operator=(RingWriter&& o) noexcept {
  if (this != &o) {
    if (slot_) slot_->owner_pid.store(0, std::memory_order_release);
    ring_ = o.ring_;
    slot_ = std::exchange(o.slot_, nullptr);
    cached_tail_ = o.cached_tail_;
    cached_reclaim_ = o.cached_reclaim_;
  }
  return *this;
}

RingWriter::~RingWriter() {
  if (slot_) {
    slot_->intent_offset.store(kNoIntent, std::memory_order_relaxed);
    slot_->owner_pid.store(0, std::memory_order_release);
  }
}

Status RingWriter::open() {
  const ProcessId& me = self_process();
  for (int pass = 0; pass < 2; ++pass) {
    for (std::uint32_t i = 0; i < kWriterSlots; ++i) {
      WriterSlot& s = *ring_.writer_slot(i);
      std::int32_t pid = s.owner_pid.load(std::memory_order_acquire);
      if (pid < 0) continue;  // changing hands
      if (pid != 0) {
        // Second pass only: a dead owner's slot, once its claim (if any) is finished.
        if (pass == 0 || process_alive(pid, s.owner_start_ticks.load(std::memory_order_relaxed))) continue;
      }
      // -1 while the slot changes hands: reclaimers wait, nobody judges its liveness.
      const std::int32_t was = pid;
      if (!s.owner_pid.compare_exchange_strong(pid, -1, std::memory_order_acq_rel)) continue;
      if (was != 0) {
        const std::uint64_t io = s.intent_offset.load(std::memory_order_acquire);
        const std::uint64_t ipos = s.intent_position.load(std::memory_order_relaxed);
        if (io != kNoIntent && ring_.reclaim_position() <= ipos)
          ring_.finalize_claim(io, ipos, s.intent_bytes.load(std::memory_order_relaxed),
                               s.intent_count.load(std::memory_order_relaxed), was);
      }
      s.intent_offset.store(kNoIntent, std::memory_order_release);
      s.owner_start_ticks.store(me.start_ticks, std::memory_order_relaxed);
      s.owner_pid.store(me.pid, std::memory_order_release);
      slot_ = &s;
      cached_tail_ = load128(&ring_.ctl()->tail);
      cached_reclaim_ = ring_.reclaim_position();
      return {};
    }
  }
  return make_error(Errc::kTooManyClients,
                    fmt::format("partition {} has no free writer slot ({} producers attached)",
                                ring_.ctl()->config.partition, kWriterSlots));
}

Result<Claim> RingWriter::claim(std::span<const std::uint32_t> sizes, std::int64_t block_timeout_ns,
                                std::uint32_t end_align) noexcept {
  const std::uint64_t cap = ring_.capacity();
  const std::uint64_t align_mask = std::uint64_t{end_align} - 1;
  Pair64 cur = cached_tail_;
  for (;;) {
    std::uint64_t end = cur.second, last = cur.second;
    for (std::uint32_t s : sizes) {
      last = ring_.place(end, s);
      end = last + s;
    }
    // The capacity is a multiple of 64, so the rounded end never crosses the end of a lap.
    // Neither the last record nor the whole claim may grow past what readers accept: a
    // record over max_record, or a claim over half the ring (what a dead writer's claim
    // becomes: one ABORTED record).
    if (const std::uint64_t aligned = (end + align_mask) & ~align_mask;
        aligned - last <= ring_.max_record() && aligned - cur.second <= cap / 2)
      end = aligned;
    // Bytes [end - cap, ...) of the previous lap must be reclaimed before we may write.
    if (end > cached_reclaim_ + cap) {
      if (auto st = make_room(end - cap, block_timeout_ns); !st) return tl::unexpected(st.error());
    }
    // The intent must be complete before the CAS makes the claim real (docs/ring.md).
    // Release on each store keeps "none" ahead of the fields (plain moves on x86).
    slot_->intent_offset.store(kNoIntent, std::memory_order_relaxed);
    slot_->intent_position.store(cur.second, std::memory_order_release);
    slot_->intent_bytes.store(static_cast<std::uint32_t>(end - cur.second), std::memory_order_release);
    slot_->intent_count.store(static_cast<std::uint32_t>(sizes.size()), std::memory_order_release);
    slot_->intent_offset.store(cur.first, std::memory_order_release);
    const Pair64 next{cur.first + sizes.size(), end};
    if (cas128(&ring_.ctl()->tail, cur, next)) {
      cached_tail_ = next;
      if (test_hooks::after_claim) test_hooks::after_claim();
      // SYNC POINT: seq_cst CAS above, then this seq_cst load: Dekker with the sleeper's
      // seq_cst waiters++ followed by its seq_cst load of the tail (Consumer::Impl::block).
      // Either we see its registration and wake it after the commit, or it sees our claim
      // and does not sleep. No fence on the commit path (docs/ring.md, "Waiting").
      const bool wake = ring_.ctl()->notify.waiters.load(std::memory_order_seq_cst) != 0;
      return Claim{cur.first, cur.second, end, static_cast<std::uint32_t>(sizes.size()), wake};
    }
    // cur now holds the current tail; lay the batch out again from there. The intent we
    // published names an offset that is now someone else's: withdraw it before waiting.
    slot_->intent_offset.store(kNoIntent, std::memory_order_release);
  }
}

Status RingWriter::make_room(std::uint64_t target, std::int64_t block_timeout_ns) noexcept {
  const bool block = ring_.retention() == Retention::kBlock;
  const std::uint64_t chunk = ring_.ctl()->config.reclaim_chunk;
  std::uint64_t waited_since = 0;
  unsigned round = 0;
  for (;;) {
    // A snapshot, not a locked read: a locked instruction is a full barrier that would wait
    // for the whole previous batch's stores to drain, and the CAS below checks it anyway.
    Pair64 r = snapshot128(&ring_.ctl()->reclaim);
    const std::uint64_t gen = r.first & ~kReclaimOffsetMask;
    if (r.second >= target) {
      cached_reclaim_ = r.second;
      return {};
    }
    std::uint64_t goal = std::max(target, r.second + chunk);
    std::uint64_t limit = ring_.tail_position();
    bool gated = false;
    if (block) {
      // Scanned anew every time: a minimum kept from an earlier scan would be trusted on
      // the gate generation alone, whose 8 bits wrap (docs/ring.md, "Gates").
      const std::uint64_t g = ring_.gate_min(waited_since ? target : 0);
      if (g < target) gated = true;
      limit = std::min(limit, g);
    }
    std::uint64_t p = r.second, off = r.first & kReclaimOffsetMask;
    bool writer_in_flight = false;
    while (p < goal && p < limit) {
      const RecordHeader* h = ring_.header_at(p);
      const std::uint64_t w = h->word.load(std::memory_order_acquire) ^ ring_.salt();
      if ((w >> 8) == off) {
        const auto st = static_cast<RecordState>(w & 0xff);
        if (st == RecordState::kPadding) {
          p = ring_.next_lap(p);
          continue;
        }
        // If our view of `reclaim` is stale, another producer may already be writing the
        // next lap here: these reads can race with it (racy_u32), and what they return only
        // counts if our CAS on `reclaim` below succeeds, which it then cannot.
        const std::uint32_t len = racy_u32(&h->length), count = racy_u32(&h->key_len);
        const std::uint64_t limit_len = st == RecordState::kAborted ? ring_.capacity() / 2 : ring_.max_record();
        const bool sane = len >= kRecordHeaderSize && len <= limit_len && (len & 7) == 0 &&
                          (p & ring_.mask()) + len <= ring_.capacity();
        if ((st == RecordState::kCommitted || st == RecordState::kAborted) && !sane) {
          if (ring_.reclaim_position() != r.second) break;  // stale view: start again
          return make_error(Errc::kBadSegment, fmt::format("partition {}: record at offset {} (position {}) has a bad length {}",
                                                           ring_.ctl()->config.partition, off, p, len));
        }
        if (st == RecordState::kCommitted) {
          p += len;
          ++off;
          continue;
        }
        if (st == RecordState::kAborted && count > 0) {
          p += len;
          off += count;
          continue;
        }
      }
      // An unfinished claim one lap behind us: wait for its writer, or finish it if dead.
      if (p < target) writer_in_flight = true;
      break;
    }
    if (p > r.second) {
      // Fails if another producer moved it, or a gate came (generation): look again.
      if (!cas128(&ring_.ctl()->reclaim, r, Pair64{off | gen, p})) continue;
      if (p >= target) {
        cached_reclaim_ = p;
        return {};
      }
    }
    const std::uint64_t now = monotonic_ns();
    if (waited_since == 0) waited_since = now;
    if (writer_in_flight && now - waited_since > 1'000'000) ring_.resolve_stall(off, p);
    if (gated && block_timeout_ns >= 0 && now - waited_since > static_cast<std::uint64_t>(block_timeout_ns)) {
      ring_.ctl()->stats.producer_blocked_ns.fetch_add(now - waited_since, std::memory_order_relaxed);
      return make_error(Errc::kTimedOut,
                        fmt::format("partition {} is full: a consumer holding it has not moved for {} ms "
                                    "(retention=block)",
                                    ring_.ctl()->config.partition, block_timeout_ns / 1'000'000));
    }
    backoff(round);
  }
}

void RingWriter::abort(const Claim& c) const noexcept {
  ring_.finalize_claim(c.offset, c.position, c.end - c.position, c.count, self_process().pid);
  clear_intent();
}

void RingWriter::clear_intent() const noexcept {
  if (slot_) slot_->intent_offset.store(kNoIntent, std::memory_order_release);
}

void RingReader::seek_earliest() noexcept {
  const Pair64 r = snapshot128(&ring_.ctl()->reclaim);
  offset_ = r.first & kReclaimOffsetMask;
  pos_ = r.second;
}

GateSlot* hold_durable_gate(const Ring& ring, std::uint64_t key, RingReader& reader) noexcept {
  constexpr auto kDurable = static_cast<std::uint32_t>(GateKind::kDurable);
  GateSlot* gate = nullptr;
  GateSlot* free_slot = nullptr;
  for (std::uint32_t i = 0; i < kGateSlots && !gate; ++i) {
    GateSlot* g = ring.gate(i);
    const std::int32_t pid = g->owner_pid.load(std::memory_order_acquire);
    if (pid > 0 && g->kind.load(std::memory_order_relaxed) == kDurable && g->owner_key.load(std::memory_order_relaxed) == key)
      gate = g;
    else if (!free_slot && pid == 0)
      free_slot = g;
  }
  bool back = true;  // a new gate is like one moved back: a reclaim may already have passed it
  if (gate) {
    back = reader.position() < gate->position.load(std::memory_order_relaxed);
    gate->position.store(reader.position(), std::memory_order_release);
  } else {
    if (!free_slot) return nullptr;
    // Taken first (-1: producers skip it), filled in, then published under our pid.
    std::int32_t zero = 0;
    if (!free_slot->owner_pid.compare_exchange_strong(zero, -1, std::memory_order_acq_rel)) return nullptr;
    free_slot->kind.store(kDurable, std::memory_order_relaxed);
    free_slot->owner_key.store(key, std::memory_order_relaxed);
    free_slot->owner_start_ticks.store(self_process().start_ticks, std::memory_order_relaxed);
    free_slot->position.store(reader.position(), std::memory_order_release);
    free_slot->owner_pid.store(self_process().pid, std::memory_order_release);
    gate = free_slot;
  }
  if (back && ring.bump_gate_generation() > reader.position()) {
    reader.seek_earliest();
    gate->position.store(reader.position(), std::memory_order_release);
  }
  return gate;
}

std::uint64_t Ring::bump_gate_generation() const noexcept {
  Pair64 r = load128(&ctl_->reclaim);
  while (!cas128(&ctl_->reclaim, r, Pair64{r.first + kGateGenOne, r.second})) {
  }
  return r.second;
}

void RingReader::seek_latest() noexcept {
  const Pair64 t = snapshot128(&ring_.ctl()->tail);
  offset_ = t.first;
  pos_ = t.second;
}

bool RingReader::seek(std::uint64_t offset) noexcept {
  for (int attempt = 0; attempt < 8; ++attempt) {
    Pair64 r = snapshot128(&ring_.ctl()->reclaim);
    r.first &= kReclaimOffsetMask;
    const Pair64 t = snapshot128(&ring_.ctl()->tail);
    if (offset < r.first || offset > t.first) return false;
    if (offset == t.first) {
      offset_ = t.first;
      pos_ = t.second;
      return true;
    }
    // Fast: the index; a hit is proved by the word, which names its own offset.
    const std::uint64_t p = ring_.index_at(offset).load(std::memory_order_relaxed);
    if (p >= r.second && p < t.second) {
      const std::uint64_t w = ring_.header_at(p)->word.load(std::memory_order_acquire) ^ ring_.salt();
      if (w == ((offset << 8) | static_cast<std::uint64_t>(RecordState::kCommitted)) && ring_.reclaim_position() <= p) {
        offset_ = offset;
        pos_ = p;
        return true;
      }
    }
    // Slow: walk from the start of the ring (tiny records overran the index, or the offset
    // lies inside an aborted range or an unfinished claim).
    offset_ = r.first;
    pos_ = r.second;
    const RecordHeader* h = nullptr;
    std::uint32_t len = 0;
    bool lapped = false;
    while (offset_ < offset) {
      ReadStatus st = next(h, len);
      if (st == ReadStatus::kRecord) {
        advance(len);
        continue;
      }
      if (st == ReadStatus::kNone && offset_ >= offset) break;
      if (st == ReadStatus::kNone) {  // an unfinished claim before the target: stop there
        return true;
      }
      lapped = true;
      break;
    }
    if (!lapped) return true;
  }
  return false;
}

}  // namespace shmbus::shm
