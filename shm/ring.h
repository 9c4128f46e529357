// The partition ring: multi-producer claims won in a claim table (one 16-byte CAS on the
// claim's entry, then the tail), commit and abort by CAS on that entry, readers at their
// own positions, and recovery of claims whose writer died or stalled. Protocol: docs/ring.md.
//
// Thread safety: a Ring is a view and may be shared. A RingWriter and a RingReader belong to
// one thread at a time (one writer slot / one cursor each); use one per thread.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>

#include "shmbus/error.h"
#include "shm/ofd_lock.h"
#include "shm/process.h"
#include "shm/ring_layout.h"
#include "shm/segment.h"

namespace shmbus::shm {

// Reads of record bytes that a lapping writer may be overwriting at the same moment. Their
// result is used only after the seqlock check (RingReader::intact_from), so the race is
// benign by protocol; TSan cannot see that and is told to skip this function
// (docs/ring.md, "torn reads"). Words and lengths are relaxed atomic loads instead.
#if defined(__SANITIZE_THREAD__) && defined(__clang__)
#define SHMBUS_RACY __attribute__((no_sanitize("thread"), noinline))
#elif defined(__SANITIZE_THREAD__)
// noipa, not just noinline: GCC's IPA-SRA would otherwise move the load into the
// (instrumented) caller and pass the value instead of the pointer.
#define SHMBUS_RACY __attribute__((no_sanitize("thread"), noipa))
#else
#define SHMBUS_RACY
#endif

SHMBUS_RACY inline void racy_copy(void* dst, const void* src, std::size_t n) noexcept {
#if defined(__SANITIZE_THREAD__)
  const auto* s = static_cast<const unsigned char*>(src);
  auto* d = static_cast<unsigned char*>(dst);
  for (std::size_t i = 0; i < n; ++i) d[i] = s[i];  // TSan intercepts memcpy itself
#else
  std::memcpy(dst, src, n);
#endif
}

// True when the CPU reports PREFETCHW (CPUID 0x80000001, ECX bit 8), read when the library
// is loaded (false until then: the read prefetch below is used).
extern const bool g_cpu_prefetchw;

// Asks for the line at `p` in the exclusive state, as a store would, but without waiting and
// without a store. GCC's __builtin_prefetch(p, 1) is a read prefetch (prefetcht0) unless the
// whole build targets -mprfchw, and a line a consumer reads then needs a second trip to be
// written (docs/performance.md, "Asking for the next record's lines").
inline void prefetch_for_write(const void* p) noexcept {
  if (g_cpu_prefetchw) [[likely]] {
    __asm__ __volatile__("prefetchw %0" : : "m"(*static_cast<const char*>(p)));
  } else {
    __builtin_prefetch(p, 1, 3);
  }
}

struct RingParams {
  std::uint64_t capacity = 1 << 20;  // power of two
  std::uint32_t max_record = 0;      // whole record, header included; 0: capacity / 4
  Retention retention = Retention::kOverwrite;
  std::uint32_t partition = 0;
  std::uint64_t topic_epoch = 0;
  std::uint64_t base_offset = 0;     // first offset (a topic restored from disk continues)
  std::uint64_t claim_timeout_ns = kDefaultClaimTimeoutNs;
  // A topic with a disk log: block topics start with the spiller's durable gate at the
  // first position, so nothing is overwritten before busd has spilled it, even before busd
  // runs. The disk log's range is published for consumers from the start.
  bool spill = false;
  std::uint64_t spill_start = 0;
  std::uint64_t spill_bytes = 0;
};

struct RingGeometry {
  std::uint64_t index_capacity;
  std::size_t index_offset;
  std::size_t claims_offset;
  std::size_t data_offset;
  std::size_t segment_size;
};

RingGeometry ring_geometry(std::uint64_t capacity);
// Fills a fresh segment's bytes after the SegmentHeader.
void ring_init(std::byte* segment_base, const RingParams& params);
// Checks the config of a mapped partition segment against its size; names the file.
Status ring_validate(const Segment& seg);

// Hooks for tests that must stop a writer at an exact step (nullptr in production).
namespace test_hooks {
extern void (*after_entry_claim)();  // the claim entry is ours, the tail not moved yet
extern void (*after_claim)();        // the tail moved, nothing written yet
extern void (*before_commit)();      // every record written, the entry not committed yet
extern void (*after_commit)();       // the entry committed, the first word not stored yet
extern void (*before_reclaim_cas)(); // make_room scanned the gates and walked; its CAS on reclaim comes next
}

// Lock bytes of the slots in the segment file (ofd_lock.h).
constexpr std::size_t writer_lock_byte(std::uint32_t i) { return kWriterSlotsOffset + i * sizeof(WriterSlot); }
constexpr std::size_t gate_lock_byte(std::uint32_t i) { return kGateSlotsOffset + i * sizeof(GateSlot); }
constexpr std::size_t waiter_lock_byte(std::uint32_t i) { return kWaiterSlotsOffset + i * sizeof(WaiterSlot); }
// The partition's write side: every shared writer holds a shared lock on it, an exclusive
// writer the exclusive lock (the limits line's first byte; no slot lives there).
constexpr std::size_t write_side_lock_byte() { return kControlOffset + offsetof(PartitionControl, limits); }

// What a reader or reclaimer stuck at (offset, position) learns from the claim table.
struct Unstuck {
  enum Kind {
    kWait,       // nothing claimed here yet (or the entry changed meanwhile): look again later
    kInFlight,   // a claim in flight whose writer may finish it: look again later
    kSkip,       // an aborted claim: step over `bytes` and `count` offsets
    kCommitted,  // a committed claim whose first word is not stored yet: its record is at `at`
    kLate,       // a claim aborted or finished by others while its writer may still write it
    kCorrupt,    // the entry or the ring contradicts the protocol (forged or damaged bytes)
  } kind = kWait;
  std::uint64_t bytes = 0;
  std::uint32_t count = 0;
  std::uint64_t at = 0;
  std::uint32_t slot = 0;
  ClaimWhy why = ClaimWhy::kOwner;
  const char* problem = nullptr;  // kCorrupt: which check failed
};

class Ring {
 public:
  Ring() = default;
  explicit Ring(std::byte* segment_base) noexcept;

  PartitionControl* ctl() const noexcept { return ctl_; }
  std::uint64_t capacity() const noexcept { return cap_; }
  std::uint64_t mask() const noexcept { return mask_; }
  std::uint64_t salt() const noexcept { return salt_; }
  std::uint64_t index_capacity() const noexcept { return imask_ + 1; }
  std::uint32_t max_record() const noexcept { return ctl_->config.max_record; }
  std::uint32_t partition() const noexcept { return ctl_->config.partition; }
  std::uint64_t claim_timeout_ns() const noexcept { return ctl_->limits.claim_timeout_ns; }
  Retention retention() const noexcept { return static_cast<Retention>(ctl_->config.retention); }
  WriterSlot* writer_slot(std::uint32_t i) const noexcept { return writers_ + i; }
  GateSlot* gate(std::uint32_t i) const noexcept { return gates_ + i; }
  WaiterSlot* waiter_slot(std::uint32_t i) const noexcept { return waiters_ + i; }

  RecordHeader* header_at(std::uint64_t pos) const noexcept {
    return reinterpret_cast<RecordHeader*>(data_ + (pos & mask_));
  }
  std::atomic<std::uint64_t>& index_at(std::uint64_t offset) const noexcept { return index_[offset & imask_]; }
  ClaimEntry* entry(std::uint64_t offset) const noexcept { return claims_ + (offset & imask_); }
  std::uint64_t next_lap(std::uint64_t pos) const noexcept { return (pos | mask_) + 1; }

  // Where a record of `bytes` goes when the free space starts at `cur`: cur itself, or the
  // start of the next lap when it would cross the end (a PADDING word then covers the rest).
  std::uint64_t place(std::uint64_t cur, std::uint32_t bytes) const noexcept {
    return ((cur & mask_) + bytes > cap_) ? next_lap(cur) : cur;
  }
  // Where place() can have put padding: never at a lap's first byte (a word there would
  // send a walker round for ever), only where a record of max_record bytes would not fit.
  // A padding word anywhere else is forged or stale; readers and reclaimers never jump on it.
  bool padding_may_stand(std::uint64_t pos) const noexcept {
    return (pos & mask_) != 0 && (pos & mask_) + max_record() > cap_;
  }

  // The word at `pos` decoded (salt removed): (offset << 8) | state.
  std::uint64_t word_at(std::uint64_t pos, std::memory_order order = std::memory_order_acquire) const noexcept {
    return header_at(pos)->word.load(order) ^ salt_;
  }
  static constexpr std::uint64_t decoded(std::uint64_t offset, RecordState s) noexcept {
    return (offset << 8) | static_cast<std::uint64_t>(s);
  }

  // Snapshots for readers and inspectors; each half alone is atomic, the pair is not.
  std::uint64_t tail_position() const noexcept { return __atomic_load_n(&ctl_->tail.second, __ATOMIC_ACQUIRE); }
  // The tail with seq_cst order: the sleeper's half of the wake-up Dekker.
  std::uint64_t tail_position_seq_cst() const noexcept { return __atomic_load_n(&ctl_->tail.second, __ATOMIC_SEQ_CST); }
  std::uint64_t end_offset() const noexcept { return __atomic_load_n(&ctl_->tail.first, __ATOMIC_ACQUIRE); }
  std::uint64_t reclaim_position() const noexcept { return __atomic_load_n(&ctl_->reclaim.second, __ATOMIC_ACQUIRE); }
  std::uint64_t start_offset() const noexcept {
    return __atomic_load_n(&ctl_->reclaim.first, __ATOMIC_ACQUIRE) & kReclaimOffsetMask;
  }

  // A gate was added or moved back: bump the gate generation in `reclaim` so that any
  // reclaim decided on an older view of the gates fails its CAS, and return the reclaim
  // position after the bump. A gate at or above it is safe; below it, the consumer lost
  // what lies between (docs/ring.md, "Gates").
  std::uint64_t bump_gate_generation() const noexcept;
  // True when a producer inside a reclaim announced `first` (generation | offset) as its view.
  bool reclaim_view_held(std::uint64_t first) const noexcept;
  bool closed() const noexcept { return ctl_->notify.closed.load(std::memory_order_acquire) != 0; }

  // How far busd's spiller has written the partition's disk log (`synced`: and fdatasynced
  // it): every offset below is on disk (or was lost). A value past the ring's end is forged or
  // damaged and never trusted: nullopt then.
  std::optional<std::uint64_t> durable_end(bool synced) const noexcept;
  // Its futex word (the low half of the 64-bit offset): busd wakes it when the offset moves.
  std::atomic<std::uint32_t>* durable_word(bool synced) const noexcept;
  // Asks busd's spiller for durable_end(synced) >= end: with `synced` raises sync_wanted (it
  // then syncs whatever the topic's fsync policy), and rings the ack bell its idle tailer
  // sleeps on when the offset is not there yet. Producers with durable acks and the Kafka
  // gateway's acks=all call it before they wait.
  void want_durable(std::uint64_t end, bool synced) const noexcept;

  // A reader or reclaimer that finds no record at (offset, pos) asks the claim table why.
  // With `lock` (a writable attacher), it also finishes what it may: a claim whose writer is
  // dead is aborted at once, one unfinished for claim_timeout (`stalled_ns`, measured by the
  // caller) is aborted as timed out. Bounded: no loop over shared bytes.
  Unstuck unstick(std::uint64_t offset, std::uint64_t pos, const SegmentLock* lock, std::uint64_t stalled_ns) const noexcept;

  // Moves the tail past a claim whose entry is won but whose writer has not moved the tail
  // yet (it may be dead or stopped between the two CASes). True when it moved or had moved.
  bool help_tail(Pair64 seen) const noexcept;

  // True while the writer of the claim at `pos` (slot `slot`) may still write its bytes: its
  // slot lock is held and its slot still names that claim.
  bool writer_inside(const SegmentLock& lock, std::uint32_t slot, std::uint64_t pos) const noexcept;
  // The same, for an exclusive writer: it also holds the write side exclusively.
  bool exclusive_writer_inside(const SegmentLock& lock, std::uint32_t slot, std::uint64_t pos) const noexcept;

  // The lowest position a live gate holds, UINT64_MAX if none. With `lock`, releases gates
  // of dead consumers whose position is below `reap_dead_below`.
  std::uint64_t gate_min(const SegmentLock* lock = nullptr, std::uint64_t reap_dead_below = 0) const noexcept;

  // Clears the waiter bits of consumers that died while registered to sleep.
  void reap_waiters(const SegmentLock& lock) const noexcept;

  // Eventcount, producer side: wakes the sleepers a claim saw. Returns how many woke.
  int notify(bool wake) const noexcept;

 private:
  Unstuck abort_claim(std::uint64_t offset, Pair64 seen, ClaimWhy why) const noexcept;

  PartitionControl* ctl_ = nullptr;
  WriterSlot* writers_ = nullptr;
  GateSlot* gates_ = nullptr;
  WaiterSlot* waiters_ = nullptr;
  std::atomic<std::uint64_t>* index_ = nullptr;
  ClaimEntry* claims_ = nullptr;
  std::byte* data_ = nullptr;
  std::uint64_t cap_ = 0, mask_ = 0, imask_ = 0, salt_ = 0;
};

struct Claim {
  std::uint64_t offset;    // first offset
  std::uint64_t position;  // first byte (a PADDING word may stand here)
  std::uint64_t end;       // one past the last byte
  std::uint32_t count;     // records
  std::uint64_t first_at;  // where the first record is: `position`, or the next lap's start
  bool wake = false;       // a consumer was registered to sleep when we claimed
};

class RingWriter {
 public:
  RingWriter() = default;
  explicit RingWriter(Ring ring) noexcept : ring_(ring) {}
  // Not copyable; a forked child that inherits one cannot claim with it (claim() refuses:
  // its slot and liveness lock are the parent's).
  RingWriter(RingWriter&&) noexcept;
  RingWriter& operator=(RingWriter&&) noexcept;
  ~RingWriter();

  // Takes a free writer slot (its lock): one whose owner died is taken over, after aborting
  // the claim it may have left. `exclusive`: the partition's only writer for as long as it
  // is open (refused while other writers are open, and they are refused meanwhile): it
  // claims, commits and wakes with plain stores, no locked instruction (docs/ring.md,
  // "Exclusive writers"); its claims are never timed out, only aborted once it is dead.
  Status open(const Segment& seg, bool exclusive = false);
  bool exclusive() const noexcept { return exclusive_; }
  const Ring& ring() const noexcept { return ring_; }
  // The last claim timed out because gates held it back (retention=block): the caller may
  // name their holders (bus/gate_names.h).
  bool gated_timeout() const noexcept { return gated_timeout_; }
  std::uint32_t slot_index() const noexcept { return slot_index_; }
  // Asks for the lines of our next claim of `bytes` (at most 4 KiB of them) in the exclusive
  // state. Called before the claim, not after the last one: taken early, the line a caught-up
  // consumer is spinning on goes back and forth once more, which cost a ping-pong a third of
  // its latency (docs/performance.md). Where: an exclusive writer's own tail; a shared writer
  // reads the partition's (others may have claimed since its last claim: their lines are not
  // ours to take). Not at all when the room there is not known to be reclaimed: in a full ring
  // those lines hold the oldest records, which consumers are reading.
  void prefetch_claim(std::uint64_t bytes) const noexcept {
    bytes = std::min<std::uint64_t>(bytes, 4096);
    const std::uint64_t from = exclusive_ ? cached_tail_.second : ring_.tail_position();
    if (from + bytes > cached_reclaim_ + ring_.capacity()) return;
    for (std::uint64_t at = from, stop = from + bytes; at < stop; at += kCacheLine) prefetch_for_write(ring_.header_at(at));
  }
  // After a claim of `count` records whose clock read said `now_ns` (0: none was read): when
  // records come more often than one per kStreamingGapNs, ask for the next claim's lines now,
  // a whole turn of the caller earlier than prefetch_claim() will. Streaming sends wait for
  // those lines' ownership, sends far apart do not (and are the ones a pull of the line the
  // consumer spins on would slow down).
  static constexpr std::int64_t kStreamingGapNs = 200;
  void prefetch_if_streaming(std::int64_t now_ns, std::uint32_t count, std::uint64_t bytes) noexcept {
    if (now_ns == 0) return;
    // A wall clock: one stepped back gives a negative gap, which says nothing of the rate.
    const std::int64_t gap = now_ns - last_claim_ns_;
    const bool streaming = gap >= 0 && gap < kStreamingGapNs * static_cast<std::int64_t>(count);
    last_claim_ns_ = now_ns;
    if (streaming) prefetch_claim(bytes);
  }

  // Claims `count` records of the given whole sizes (each align8'ed, <= max_record), laid out
  // with Ring::place(). Waits up to block_timeout_ns for room (gates in a block topic, a
  // claim one lap behind whose writer has not finished).
  // `end_align` (8..64, a power of two): the claim's end is rounded up to
  // it, the last record taking the slack (its length is then Claim::end minus its position),
  // unless that would make it longer than max_record or the claim longer than half the ring.
  Result<Claim> claim(std::span<const std::uint32_t> sizes, std::int64_t block_timeout_ns,
                      std::uint32_t end_align = 8) noexcept {
    Claim c;
    if (auto ok = claim_into(c, sizes, block_timeout_ns, end_align); !ok) return tl::unexpected(ok.error());
    return c;
  }
  // claim() into `out`, for the producer's path: a Result<Claim> returned through a few calls
  // is copied with 16-byte loads of fields stored 8 bytes at a time, which no store forwards;
  // each such load waited for the store buffer (the last record's lines) to drain.
  Status claim_into(Claim& out, std::span<const std::uint32_t> sizes, std::int64_t block_timeout_ns,
                    std::uint32_t end_align = 8) noexcept;
  // claim_into() of one record of `bytes` by an exclusive writer when nothing stands in the
  // way (the record fits before the lap's end, its room is already reclaimed, its entry is
  // free): inline, the same stores in the same order. False when something does, having
  // stored nothing claim_into() does not store again: call it then. The single-record fast
  // path (docs/performance.md, "The fused single-record path").
  [[gnu::always_inline]] bool try_claim_one_exclusive(Claim& out, std::uint32_t bytes, std::uint32_t end_align) noexcept {
    // A forked child's claim goes to claim_into(), which refuses it (one load, not a call).
    if (!exclusive_ || !slot_ || fork_generation() != owner_fork_gen_) [[unlikely]]
      return false;
    const Pair64 cur = cached_tail_;
    const std::uint64_t cap = ring_.capacity();
    if ((cur.second & ring_.mask()) + bytes > cap) [[unlikely]]
      return false;  // the rest of the lap is padding first
    const std::uint64_t end = aligned_end(cur.second, cur.second, cur.second + bytes, end_align);
    if (!room_known(cur.first, end)) [[unlikely]]
      return false;  // make_room() first
    // As claim_into(): the claim is named in our slot before its entry is taken.
    slot_->claim_offset.store(cur.first, std::memory_order_relaxed);
    slot_->claim_position.store(cur.second, std::memory_order_release);
    ClaimEntry* e = ring_.entry(cur.first);
    if (((__atomic_load_n(&e->tag, __ATOMIC_ACQUIRE) ^ ring_.salt()) >> 8) >= cur.first + 1) [[unlikely]]
      return false;  // a dead predecessor's claim at the tail, or forged bytes: claim_into() helps or refuses
    claim_exclusive(out, e, cur.first, cur.second, end, 1, cur.second);
    return true;
  }

  // What append_one_exclusive() did.
  enum class Append {
    kNotTaken,  // nothing that claim_into() would not store again: the general path's turn
    kDone,      // claimed, filled, committed, published, finished: `offset` is the record's
    kRefused,   // the commit found the entry not ours (forged): take_refusal() says why
  };
  // An exclusive writer's whole single-record send, inline: prefetch_claim(),
  // try_claim_one_exclusive(), then `fill(at, length)` (writes the record's bytes but its
  // word at `at`, `length` bytes; returns the clock reading it stored, 0 if none, for the
  // prefetch), commit(), finish(), notify() and prefetch_if_streaming(). In one piece so that
  // the caller's general path, with its calls and error strings, can stay out of line
  // (docs/performance.md, "The exclusive send in one piece").
  template <class Fill>
  [[gnu::always_inline]] Append append_one_exclusive(std::uint32_t bytes, std::uint32_t end_align, std::uint64_t& offset_out,
                                                     Fill&& fill) noexcept {
    if (!exclusive_) return Append::kNotTaken;
    prefetch_claim(bytes);
    Claim c;
    if (!try_claim_one_exclusive(c, bytes, end_align)) [[unlikely]]
      return Append::kNotTaken;
    const std::int64_t now_ns = fill(reinterpret_cast<std::byte*>(ring_.header_at(c.position)),
                                     static_cast<std::uint32_t>(c.end - c.position));
    if (auto ok = commit(c); !ok) [[unlikely]] {
      refusal_ = std::move(ok);
      return Append::kRefused;
    }
    finish(c);
    notify(c);
    prefetch_if_streaming(now_ns, 1, bytes);
    offset_out = c.offset;
    return Append::kDone;
  }
  // The error of the last Append::kRefused.
  Error take_refusal() noexcept {
    if (refusal_) return Error{Errc::kSystem, "no refusal on record"};
    Error e = std::move(refusal_.error());
    refusal_ = {};
    return e;
  }

  Result<Claim> claim_one(std::uint32_t bytes, std::int64_t block_timeout_ns, std::uint32_t end_align = 8) noexcept {
    return claim(std::span<const std::uint32_t>(&bytes, 1), block_timeout_ns, end_align);
  }

  // Stores a record's index entry and word (release). After commit() succeeded only: words
  // of an uncommitted claim would be found by seek() through the index.
  void publish(std::uint64_t pos, std::uint64_t offset) const noexcept {
    ring_.index_at(offset).store(pos, std::memory_order_relaxed);
    // SYNC POINT: release; pairs with the acquire load of the word in RingReader::next().
    ring_.header_at(pos)->word.store(encode_word(offset, RecordState::kCommitted, ring_.salt()), std::memory_order_release);
  }
  // A PADDING word inside the claim (not at its start): before commit(), so that a reader
  // that reads a committed claim by its entry finds it (RingReader::unstick).
  void publish_padding(std::uint64_t pos, std::uint64_t offset) const noexcept {
    ring_.header_at(pos)->word.store(encode_word(offset, RecordState::kPadding, ring_.salt()), std::memory_order_release);
  }

  // Commits the claim: CLAIMED -> COMMITTED on its entry. Fails (timed_out, naming the
  // claim) when others aborted it first: nothing it wrote is ever read. After it succeeded
  // the caller publishes the records but the first, then finish() stores the first word.
  // The exclusive writer's commit and the finish are inline: a call's register saves are
  // stores, which queue in the store buffer behind the record's (docs/performance.md, "Store
  // forwarding on the producer's path").
  [[gnu::always_inline]] Status commit(const Claim& c) noexcept {
    if (exclusive_) [[likely]] {
      if (test_hooks::before_commit) [[unlikely]]
        test_hooks::before_commit();
      // Nobody aborts a live exclusive writer's claim; a tag that is not ours is forged, and
      // commit_shared_or_refused() says so.
      std::uint64_t* tag = &ring_.entry(c.offset)->tag;
      if (__atomic_load_n(tag, __ATOMIC_RELAXED) == encode_tag(c.offset, ClaimState::kClaimed, ring_.salt())) [[likely]] {
        // SYNC POINT: release (a plain store on x86); every byte of the claim is stored before it.
        __atomic_store_n(tag, encode_tag(c.offset, ClaimState::kCommitted, ring_.salt()), __ATOMIC_RELEASE);
        if (test_hooks::after_commit) [[unlikely]]
          test_hooks::after_commit();
        return {};
      }
    }
    return commit_shared_or_refused(c);
  }
  void finish(const Claim& c) noexcept {
    if (c.first_at == c.position) [[likely]]
      publish(c.position, c.offset);
    else
      finish_after_padding(c);
    // SYNC POINT: release; a reclaimer that reads it (acquire) knows we no longer write here.
    slot_->claim_position.store(kNoClaim, std::memory_order_release);
  }
  // Wakes the consumers the claim saw registered; clears the bits of dead ones when wakes
  // keep finding nobody.
  void notify(const Claim& c) noexcept {
    if (c.wake) [[unlikely]]
      wake_sleepers();
  }
  // Gives the claim up: CLAIMED -> ABORTED on its entry (already aborted: nothing to do).
  void abort(const Claim& c) noexcept;
  // Claims that had to wait for room (a gate, a claim one lap behind): this writer's own
  // count, a plain counter (the producer's statistics read it).
  std::uint64_t waits() const noexcept { return waits_; }

 private:
  Status make_room(std::uint64_t target, std::uint64_t min_offset, std::int64_t block_timeout_ns) noexcept;
  Status take_write_side(bool exclusive) noexcept;
  Pair64 claimed_entry(const Claim& c) const noexcept;
  // A shared writer's commit (its CAS), or the refusal of an exclusive one whose tag is not
  // its own.
  [[gnu::noinline]] Status commit_shared_or_refused(const Claim& c) noexcept;
  [[gnu::noinline]] void finish_after_padding(const Claim& c) noexcept;
  [[gnu::noinline]] void wake_sleepers() noexcept;
  void settle_tail() noexcept;
  // The claim's offset and position come as two integers, not a Pair64: GCC built the pair's
  // copy in the Claim by two 8-byte stores and one 16-byte load, which no store forwards, so
  // the load waited for the whole store buffer (the last record's lines) to drain.
  [[gnu::always_inline]] void claim_exclusive(Claim& out, ClaimEntry* e, std::uint64_t offset, std::uint64_t position,
                                              std::uint64_t end, std::uint32_t n, std::uint64_t first_at) noexcept {
    // SYNC POINT: plain atomic stores, entry before tail (x86 keeps stores in order; store128
    // tells the compiler). Readers find the entry by the tail as with a CAS (Ring::unstick).
    store128(as_pair(e), Pair64{encode_tag(offset, ClaimState::kClaimed, ring_.salt()),
                                encode_info(static_cast<std::uint32_t>(end - position), n, first_at != position, slot_index_,
                                            ClaimWhy::kExclusive)});
    if (test_hooks::after_entry_claim) [[unlikely]]
      test_hooks::after_entry_claim();
    const Pair64 next{offset + n, end};
    store128(&ring_.ctl()->tail, next);
    cached_tail_ = next;
    if (test_hooks::after_claim) [[unlikely]]
      test_hooks::after_claim();
    // SYNC POINT: the waker's half of the wake-up Dekker. Without a fence here, the sleeper's
    // heavy fence (membarrier) orders our tail store before this load (Consumer::Impl::block).
    if (!light_fence_) [[unlikely]]
      fence_for_sleepers();
    const bool wake = ring_.ctl()->notify.waiters.load(std::memory_order_relaxed) != 0;
    out = Claim{offset, position, end, n, first_at, wake};
  }
  [[gnu::noinline]] static void fence_for_sleepers() noexcept;
  // A claim's layout and room, the same for claim_into() and try_claim_one_exclusive():
  // - its end rounded up to `end_align` (8..64), unless that makes its last record (at `last`)
  //   longer than max_record or the claim (from `start`) longer than half the ring: neither may
  //   grow past what readers accept;
  // - the oldest offset whose claim must be finished before a claim at `offset` takes its
  //   table entry (index_capacity offsets back);
  // - whether our view of `reclaim` already covers a claim at `offset` ending at `end` (bytes
  //   [end - capacity, ...) of the previous lap reclaimed, and that offset): no make_room().
  std::uint64_t aligned_end(std::uint64_t start, std::uint64_t last, std::uint64_t end, std::uint32_t end_align) const noexcept {
    const std::uint64_t mask = std::uint64_t{end_align > 8 ? end_align : 8} - 1;
    const std::uint64_t aligned = (end + mask) & ~mask;
    return aligned - last <= ring_.max_record() && aligned - start <= ring_.capacity() / 2 ? aligned : end;
  }
  std::uint64_t min_offset_for(std::uint64_t offset) const noexcept {
    const std::uint64_t icap = ring_.index_capacity();
    return offset >= icap ? offset - icap + 1 : 0;
  }
  bool room_known(std::uint64_t offset, std::uint64_t end) const noexcept {
    return end <= cached_reclaim_ + ring_.capacity() && min_offset_for(offset) <= cached_reclaim_offset_;
  }
  void release() noexcept;

  Ring ring_;
  SegmentLock lock_;
  std::int32_t owner_pid_ = 0;  // the process that opened it
  std::uint32_t owner_fork_gen_ = 0;  // and its fork_generation() then
  WriterSlot* slot_ = nullptr;
  std::uint32_t slot_index_ = 0;
  Pair64 cached_tail_{0, 0};
  std::uint64_t cached_reclaim_ = 0;
  std::uint64_t cached_reclaim_offset_ = 0;
  std::uint32_t futile_wakes_ = 0;
  std::uint64_t waits_ = 0;
  std::int64_t last_claim_ns_ = 0;  // prefetch_if_streaming()
  bool exclusive_ = false;
  bool gated_timeout_ = false;
  bool light_fence_ = false;  // exclusive: sleepers fence for us (Ring::heavy fence, membarrier)
  Status refusal_;            // append_one_exclusive()'s last Append::kRefused
};

enum class ReadStatus { kRecord, kNone, kLapped, kCorrupt };

class RingReader {
 public:
  RingReader() = default;
  explicit RingReader(Ring ring) noexcept : ring_(ring) {}

  const Ring& ring() const noexcept { return ring_; }
  std::uint64_t offset() const noexcept { return offset_; }
  std::uint64_t position() const noexcept { return pos_; }

  void seek_earliest() noexcept;
  // Back to a place this reader has been (a copy that turned out torn is given back).
  // A claim read by its entry stays so (committed_from_.. committed_until_).
  void rewind(std::uint64_t offset, std::uint64_t pos) noexcept {
    offset_ = offset;
    pos_ = pos;
    stall_offset_ = kNoClaim;
  }
  void seek_latest() noexcept;
  // kRecord: the cursor is at `offset`. kNone: `offset` is past an unfinished claim, try
  // again. kLapped: no longer (or not yet) in the ring.
  ReadStatus seek(std::uint64_t offset) noexcept;

  // The record at the cursor, stepping over PADDING. Does not move past it. `length` is the
  // record's length as read and checked once: use it, never re-read it (a lapping producer
  // may change the header between two reads). Bounded: at most one padding step.
  [[gnu::always_inline]] ReadStatus next(const RecordHeader*& out, std::uint32_t& length) noexcept {
    for (int step = 0; step < 2; ++step) {
      const RecordHeader* h = ring_.header_at(pos_);
      // SYNC POINT: acquire; pairs with the release in RingWriter::publish() / commit().
      const std::uint64_t w = h->word.load(std::memory_order_acquire) ^ ring_.salt();
      if (w == Ring::decoded(offset_, RecordState::kCommitted) ||
          (pos_ < committed_until_ && pos_ >= committed_from_ && w != Ring::decoded(offset_, RecordState::kPadding)))
          [[likely]] {
        length = h->length.load(std::memory_order_relaxed);
        if (!sane(length)) [[unlikely]] return insane(Insane::kLength, w, length);
        out = h;
        return ReadStatus::kRecord;
      }
      if (w == Ring::decoded(offset_, RecordState::kPadding)) {
        // Padding is never the first byte of a lap (a forged one there would loop), and
        // only stands where a record of max_record bytes would not fit in the rest of the
        // lap (Ring::place): one earlier in the lap is forged or stale. And a word read from
        // bytes producers have reclaimed since says nothing: a reader lapped while it read
        // it must not jump on it (seen in the kill-stress test: a reader put back at the
        // reclaim point, lapped again, read a padding word of its offset mid-lap, jumped,
        // and reported the next lap's record as a contradiction).
        if (!ring_.padding_may_stand(pos_) || lapped()) [[unlikely]] return insane(Insane::kPadding, w, 0);
        pos_ = ring_.next_lap(pos_);
        continue;
      }
      // Keep the record's second line fresh while we wait for its first: when the word
      // turns up, the rest of a small record is then already on its way.
      __builtin_prefetch(reinterpret_cast<const char*>(h) + kCacheLine);
      // Not written yet, aborted, or overwritten: telling them apart needs lines that
      // producers write, which a spinning reader must not pull on every empty look; the
      // caller asks lapped() and unstick() now and then.
      return ReadStatus::kNone;
    }
    return insane(Insane::kTwoPaddings, 0, 0);
  }

  ReadStatus next(const RecordHeader*& out) noexcept {
    std::uint32_t ignored;
    return next(out, ignored);
  }

  // True when producers have overwritten the record at the cursor.
  bool lapped() const noexcept { return ring_.reclaim_position() > pos_; }

  // Moves past the record just returned by next(), whose length the caller has read.
  void advance(std::uint32_t length) noexcept {
    pos_ += length;
    ++offset_;
  }

  // Called after next() said kNone for a while (a few hundred empty looks): steps over an
  // aborted claim, reads a committed one whose first word is missing, and with `lock`
  // finishes a dead or timed-out writer's claim (the reader's own stall clock decides when).
  // Returns kRecord when the cursor can move on (next() again), kNone to keep waiting,
  // kCorrupt for bytes that contradict the protocol.
  ReadStatus unstick(const SegmentLock* lock, std::uint64_t now_ns) noexcept;

  // True while nothing at or after `pos` can have been overwritten: call after copying,
  // with the acquire fence of the seqlock protocol (docs/ring.md).
  bool intact_from(std::uint64_t pos) const noexcept {
    seqlock_read_fence();
    return ring_.reclaim_position() <= pos;
  }

  // A claim is in flight at the cursor (reserved, not yet published).
  bool claim_in_flight() const noexcept { return ring_.tail_position() > pos_; }
  std::uint64_t aborted_skipped() const noexcept { return aborted_; }
  // After kCorrupt: what was wrong, for the error message.
  const char* problem() const noexcept { return problem_; }

 private:
  bool sane(std::uint32_t len) const noexcept {
    return len >= kRecordHeaderSize && len <= ring_.max_record() && (len & 7) == 0 &&
           (pos_ & ring_.mask()) + len <= ring_.capacity();
  }
  // Lapped (what was read says nothing), or corrupt: then problem() says what was read.
  enum class Insane { kLength, kPadding, kTwoPaddings };
  ReadStatus insane(Insane what, std::uint64_t word, std::uint32_t length) noexcept {
    if (ring_.reclaim_position() > pos_) return ReadStatus::kLapped;
    describe_insane(what, word, length);
    return ReadStatus::kCorrupt;
  }
  [[gnu::cold, gnu::noinline]] void describe_insane(Insane what, std::uint64_t word, std::uint32_t length) noexcept;

  Ring ring_;
  std::uint64_t pos_ = 0;
  std::uint64_t offset_ = 0;
  std::uint64_t aborted_ = 0;
  // A claim the table says is committed, read by lengths (its words may be missing).
  std::uint64_t committed_from_ = 0, committed_until_ = 0;
  std::uint64_t stall_offset_ = kNoClaim;  // where unstick() started its stall clock
  std::uint64_t stall_since_ = 0;
  const char* problem_ = "a record's word or length is damaged";
  char problem_text_[200] = {};  // problem_ points here when next() described what it read
};

// Holds producers back at `reader`'s position with this process's durable gate named `key`
// (GateKind::kDurable: never reaped; busd's group gates and its spiller's): the existing one
// is moved there, else a free slot is taken (through `lock`). Where producers had already
// reclaimed past that position, `reader` moves to the ring's start and the gate with it (the
// caller sees the offsets it lost in reader.offset()). nullptr when every gate slot is taken.
GateSlot* hold_durable_gate(const Ring& ring, const SegmentLock& lock, std::uint64_t key, RingReader& reader) noexcept;

// Frees the durable gate named `key` (its group was deleted or expired). False if none.
bool release_durable_gate(const Ring& ring, std::uint64_t key) noexcept;

// A consumer's own gate (GateKind::kProcess), held through `lock` until release_process_gate.
// `key`: its group's (a member's gate; 0: none), so that a producer it holds back can name
// the group. Same reclaim rule as above. nullptr when every gate slot is taken.
GateSlot* take_process_gate(const Ring& ring, SegmentLock& lock, RingReader& reader, std::uint64_t key = 0) noexcept;
void release_process_gate(const Ring& ring, SegmentLock& lock, GateSlot* gate) noexcept;

// A consumer's waiter slot (its bit in NotifyLine::waiters), held through `lock`. -1 when
// every slot is taken (the consumer then sleeps in short slices instead).
int take_waiter_slot(const Ring& ring, SegmentLock& lock) noexcept;
void release_waiter_slot(const Ring& ring, SegmentLock& lock, int slot) noexcept;

}  // namespace shmbus::shm
