// The partition ring: multi-producer claim by one 16-byte CAS, commit by a release store,
// readers at their own positions, reclaim of dead writers' claims. Protocols: docs/ring.md.
//
// Thread safety: a Ring is a view and may be shared. A RingWriter and a RingReader belong to
// one thread at a time (one writer slot / one cursor each); use one per thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <span>

#include "shmbus/error.h"
#include "shm/ring_layout.h"
#include "shm/segment.h"

namespace shmbus::shm {

// Reads of record bytes that a lapping writer may be overwriting at the same moment. Their
// result is used only after the seqlock check (RingReader::intact_from), so the race is
// benign by protocol; TSan cannot see that and is told to skip these two functions
// (docs/ring.md, "torn reads").
#if defined(__SANITIZE_THREAD__) && defined(__clang__)
#define SHMBUS_RACY __attribute__((no_sanitize("thread"), noinline))
#elif defined(__SANITIZE_THREAD__)
// noipa, not just noinline: GCC's IPA-SRA would otherwise move the load into the
// (instrumented) caller and pass the value instead of the pointer.
#define SHMBUS_RACY __attribute__((no_sanitize("thread"), noipa))
#else
#define SHMBUS_RACY
#endif

// The load-load barrier of a seqlock read: orders the racy reads before the check that
// validates them (docs/ring.md). GCC's TSan cannot model thread fences (-Wtsan); on x86 an
// acquire fence is only a compiler barrier, which is what TSan builds get instead, and the
// reads it orders are the ones hidden from TSan above.
inline void seqlock_read_fence() noexcept {
#if defined(__SANITIZE_THREAD__)
  std::atomic_signal_fence(std::memory_order_acquire);
#else
  std::atomic_thread_fence(std::memory_order_acquire);
#endif
}

SHMBUS_RACY inline std::uint32_t racy_u32(const std::uint32_t* p) noexcept { return *p; }

SHMBUS_RACY inline void racy_copy(void* dst, const void* src, std::size_t n) noexcept {
#if defined(__SANITIZE_THREAD__)
  const auto* s = static_cast<const unsigned char*>(src);
  auto* d = static_cast<unsigned char*>(dst);
  for (std::size_t i = 0; i < n; ++i) d[i] = s[i];  // TSan intercepts memcpy itself
#else
  std::memcpy(dst, src, n);
#endif
}

struct RingParams {
  std::uint64_t capacity = 1 << 20;  // power of two
  std::uint32_t max_record = 0;      // whole record, header included; 0: capacity / 4
  Retention retention = Retention::kOverwrite;
  std::uint32_t partition = 0;
  std::uint64_t topic_epoch = 0;
  std::uint64_t base_offset = 0;     // first offset (a topic restored from disk continues)
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
  std::size_t data_offset;
  std::size_t segment_size;
};

RingGeometry ring_geometry(std::uint64_t capacity);
// Fills a fresh segment's bytes after the SegmentHeader.
void ring_init(std::byte* segment_base, const RingParams& params);
// Checks the config of a mapped partition segment against its size; names the file.
Status ring_validate(const Segment& seg);

// Hooks for tests that must stop a writer at an exact instruction (nullptr in production).
namespace test_hooks {
extern void (*after_claim)();
}

class Ring {
 public:
  Ring() = default;
  explicit Ring(std::byte* segment_base) noexcept;

  PartitionControl* ctl() const noexcept { return ctl_; }
  std::uint64_t capacity() const noexcept { return cap_; }
  std::uint64_t mask() const noexcept { return mask_; }
  std::uint64_t salt() const noexcept { return salt_; }
  std::uint32_t max_record() const noexcept { return ctl_->config.max_record; }
  Retention retention() const noexcept { return static_cast<Retention>(ctl_->config.retention); }
  WriterSlot* writer_slot(std::uint32_t i) const noexcept { return writers_ + i; }
  GateSlot* gate(std::uint32_t i) const noexcept { return gates_ + i; }

  RecordHeader* header_at(std::uint64_t pos) const noexcept {
    return reinterpret_cast<RecordHeader*>(data_ + (pos & mask_));
  }
  std::atomic<std::uint64_t>& index_at(std::uint64_t offset) const noexcept { return index_[offset & imask_]; }
  std::uint64_t next_lap(std::uint64_t pos) const noexcept { return (pos | mask_) + 1; }

  // Where a record of `bytes` goes when the free space starts at `cur`: cur itself, or the
  // start of the next lap when it would cross the end (a PADDING word then covers the rest).
  std::uint64_t place(std::uint64_t cur, std::uint32_t bytes) const noexcept {
    return ((cur & mask_) + bytes > cap_) ? next_lap(cur) : cur;
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
  bool closed() const noexcept { return ctl_->notify.closed.load(std::memory_order_acquire) != 0; }

  // A record that should have been written at (offset, pos) is not: if the claim belongs to
  // a dead writer, turn it into ABORTED and return true. Slow path (reads /proc).
  bool resolve_stall(std::uint64_t offset, std::uint64_t pos) const noexcept;

  // Finishes a claim whose writer will never finish it: committed records stay, the rest
  // becomes one ABORTED record (after a PADDING word where it crosses the end).
  void finalize_claim(std::uint64_t offset, std::uint64_t pos, std::uint64_t bytes, std::uint32_t count,
                      std::int32_t pid) const noexcept;

  // The lowest position a live gate holds, UINT64_MAX if none. Releases dead gates when
  // `reap_dead_below` is above their position.
  std::uint64_t gate_min(std::uint64_t reap_dead_below = 0) const noexcept;

  // Eventcount, producer side: wakes the sleepers a claim saw (Claim::wake).
  void notify(bool wake) const noexcept;

 private:
  PartitionControl* ctl_ = nullptr;
  WriterSlot* writers_ = nullptr;
  GateSlot* gates_ = nullptr;
  std::atomic<std::uint64_t>* index_ = nullptr;
  std::byte* data_ = nullptr;
  std::uint64_t cap_ = 0, mask_ = 0, imask_ = 0, salt_ = 0;
};

struct Claim {
  std::uint64_t offset;    // first offset
  std::uint64_t position;  // first byte (a PADDING word may stand here)
  std::uint64_t end;       // one past the last byte
  std::uint32_t count;     // records
  bool wake = false;       // a consumer was registered to sleep when we claimed
};

class RingWriter {
 public:
  RingWriter() = default;
  explicit RingWriter(Ring ring) noexcept : ring_(ring) {}
  RingWriter(RingWriter&&) noexcept;
  RingWriter& operator=(RingWriter&&) noexcept;
  ~RingWriter();

  // Takes a writer slot (reclaiming a dead owner's, after finishing its claim).
  Status open();
  const Ring& ring() const noexcept { return ring_; }

  // Claims `count` records of the given whole sizes (each align8'ed, <= max_record), laid out
  // with Ring::place(). In a block topic waits up to block_timeout_ns for room.
  // `end_align` (8..64, a power of two): the claim's end is rounded up to it, the last
  // record taking the slack (its length is then Claim::end minus its position), unless
  // that would make it longer than max_record or the claim longer than half the ring.
  // Claims that all end aligned all start aligned.
  Result<Claim> claim(std::span<const std::uint32_t> sizes, std::int64_t block_timeout_ns,
                      std::uint32_t end_align = 8) noexcept;
  Result<Claim> claim_one(std::uint32_t bytes, std::int64_t block_timeout_ns, std::uint32_t end_align = 8) noexcept {
    return claim(std::span<const std::uint32_t>(&bytes, 1), block_timeout_ns, end_align);
  }

  // Publishes one record: index entry, then the word with release order.
  void publish(std::uint64_t pos, std::uint64_t offset) const noexcept {
    ring_.index_at(offset).store(pos, std::memory_order_relaxed);
    // SYNC POINT: release; pairs with the acquire load of the word in RingReader::next().
    ring_.header_at(pos)->word.store(encode_word(offset, RecordState::kCommitted, ring_.salt()),
                                     std::memory_order_release);
  }

  // Turns an unfinished claim of ours into ABORTED records (a reservation given up).
  void abort(const Claim& c) const noexcept;

  // The claim is finished (every record published or aborted): no intent stays behind for
  // a reclaimer to match against someone else's claim at the same place.
  void clear_intent() const noexcept;

 private:
  Status make_room(std::uint64_t target, std::int64_t block_timeout_ns) noexcept;

  Ring ring_;
  WriterSlot* slot_ = nullptr;
  Pair64 cached_tail_{0, 0};
  std::uint64_t cached_reclaim_ = 0;
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
  void rewind(std::uint64_t offset, std::uint64_t pos) noexcept {
    offset_ = offset;
    pos_ = pos;
  }
  void seek_latest() noexcept;
  // False when the offset is no longer (or not yet) in the ring.
  bool seek(std::uint64_t offset) noexcept;

  // The record at the cursor, skipping PADDING and ABORTED. Does not move past it.
  // `length` is the record's length as read and checked once: use it, never re-read it
  // (a lapping producer may change the header between two reads).
  ReadStatus next(const RecordHeader*& out, std::uint32_t& length) noexcept {
    for (;;) {
      const RecordHeader* h = ring_.header_at(pos_);
      // SYNC POINT: acquire; pairs with the release in RingWriter::publish().
      const std::uint64_t w = h->word.load(std::memory_order_acquire) ^ ring_.salt();
      if ((w >> 8) == offset_) {
        const auto state = static_cast<RecordState>(w & 0xff);
        if (state == RecordState::kCommitted) {
          length = racy_u32(&h->length);
          if (!sane(length, ring_.max_record())) return insane();
          out = h;
          return ReadStatus::kRecord;
        }
        if (state == RecordState::kPadding) {
          pos_ = ring_.next_lap(pos_);
          continue;
        }
        if (state == RecordState::kAborted) {
          const std::uint32_t len = racy_u32(&h->length), count = racy_u32(&h->key_len);
          // A dead writer's batch becomes one ABORTED record: up to half the ring long.
          if (!sane(len, static_cast<std::uint32_t>(ring_.capacity() / 2)) || count == 0) return insane();
          pos_ += len;
          offset_ += count;
          aborted_ += count;
          continue;
        }
      }
      // Keep the record's second line fresh while we wait for its first: when the word
      // turns up, the rest of a small record is then already on its way (measured:
      // docs/performance.md).
      __builtin_prefetch(reinterpret_cast<const char*>(h) + kCacheLine);
      // Not written yet, or overwritten: telling the two apart needs the reclaim line,
      // which producers write. A spinning reader must not pull that line on every empty
      // look (it would slow the producer's reclaim CAS), so it asks lapped() now and then.
      return ReadStatus::kNone;
    }
  }

  // True when producers have overwritten the record at the cursor.
  bool lapped() const noexcept { return ring_.reclaim_position() > pos_; }

  // Moves past the record just returned by next(), whose length the caller has read.
  ReadStatus next(const RecordHeader*& out) noexcept {
    std::uint32_t ignored;
    return next(out, ignored);
  }

  void advance(std::uint32_t length) noexcept {
    pos_ += length;
    ++offset_;
  }

  // True while nothing at or after `pos` can have been overwritten: call after copying,
  // with the acquire fence of the seqlock protocol (docs/ring.md).
  bool intact_from(std::uint64_t pos) const noexcept {
    seqlock_read_fence();
    return ring_.reclaim_position() <= pos;
  }

  // A claim is in flight at the cursor (reserved, not yet published).
  bool claim_in_flight() const noexcept { return ring_.tail_position() > pos_; }
  std::uint64_t aborted_skipped() const noexcept { return aborted_; }

 private:
  bool sane(std::uint32_t len, std::uint32_t limit) const noexcept {
    return len >= kRecordHeaderSize && len <= limit && (len & 7) == 0 && (pos_ & ring_.mask()) + len <= ring_.capacity();
  }
  ReadStatus insane() const noexcept {
    return ring_.reclaim_position() > pos_ ? ReadStatus::kLapped : ReadStatus::kCorrupt;
  }

  Ring ring_;
  std::uint64_t pos_ = 0;
  std::uint64_t offset_ = 0;
  std::uint64_t aborted_ = 0;
};

// Holds producers back at `reader`'s position with this process's durable gate named `key`
// (GateKind::kDurable: never reaped; busd's group gates and its spiller's): the existing one
// is moved there, else a free slot is taken. Where producers had already reclaimed past
// that position, `reader` moves to the ring's start and the gate with it (the caller sees
// the offsets it lost in reader.offset()). nullptr when every gate slot is taken.
GateSlot* hold_durable_gate(const Ring& ring, std::uint64_t key, RingReader& reader) noexcept;

}  // namespace shmbus::shm
