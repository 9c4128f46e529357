// Bytes only: the partition segment, one lock-free ring of records. Behaviour: ring.h.
//
// Partition segment
//   0       SegmentHeader (128 B, segment_layout.h)
//   128     PartitionControl (5 cache lines, below)
//   448     WriterSlot[kWriterSlots]     one line each: who may be writing what
//   4544    GateSlot[kGateSlots]         one line each: consumers that hold producers back
//   6592..  pad to 4096, then index: u64[index_capacity]  offset -> position (offset & imask)
//   ...     pad to 4096, then data: capacity bytes (a power of two)
//
// Positions are monotonically increasing 64-bit byte counts; the byte of position p is
// data[p & (capacity - 1)]. Offsets are dense 0, 1, 2, ... per partition.
//
// PartitionControl, one concern per cache line:
//   line 0  config   (immutable after creation)
//   line 1  tail     {next_offset, position}   16-byte CAS by producers: one claim
//   line 2  reclaim  {gate_gen:8|offset:56,    16-byte CAS: records before it may be
//                     position}                overwritten; it is also the partition's start.
//                                              gate_gen changes when a gate is added or moved
//                                              back, so a reclaim that did not see it fails
//   line 3  notify   seq (futex word), waiters, closed
//   line 4  stats
//
// Record (8-byte aligned, never crosses the end of the data area)
//   0       +-------------------------------------------------------------+
//           | word: ((offset << 8) | state) XOR salt          (u64 atomic)|
//   8       +------------------------------+------------------------------+
//           | length: whole record, bytes  | writer pid                   |
//   16      +------------------------------+------------------------------+
//           | timestamp, ns since the epoch (CLOCK_REALTIME)              |
//   24      +------------------------------+------------------------------+
//           | key length (kNullKey: none;  | headers length               |
//           |  ABORTED: offsets covered)   |                              |
//   32      +------------------------------+------------------------------+
//           | value length                 | flags (0)                    |
//   40      +------------------------------+------------------------------+
//           | key | headers | value | pad to 8                            |
//           +-------------------------------------------------------------+
//
// A PADDING record is its word only: it covers the rest of the data area, and its offset is
// the one of the record that follows at position 0 of the next lap. The salt is random per
// segment, so stale bytes of an old lap are never mistaken for a header.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "shm/atomic128.h"

namespace shmbus::shm {

inline constexpr std::uint16_t kPartitionLayoutMajor = 2;
inline constexpr std::uint16_t kPartitionLayoutMinor = 1;  // 1: spill fields in StatsLine
inline constexpr std::size_t kCacheLine = 64;
inline constexpr std::uint32_t kWriterSlots = 64;
inline constexpr std::uint32_t kGateSlots = 32;
inline constexpr std::uint32_t kNullKey = 0xffff'ffffu;

enum class RecordState : std::uint8_t {
  kEmpty = 0,      // never a decoded state of a live header; zeroed memory decodes to noise
  kClaimed = 1,    // a writer owns the bytes and is filling them
  kCommitted = 2,  // readable
  kPadding = 3,    // skip to the next lap
  kAborted = 4,    // skip `key_len` offsets: a dead writer's claim, or an aborted reserve
};

enum class Retention : std::uint32_t { kOverwrite = 0, kBlock = 1 };

struct RecordHeader {
  std::atomic<std::uint64_t> word;
  std::uint32_t length;
  std::int32_t writer_pid;
  std::int64_t timestamp_ns;
  std::uint32_t key_len;
  std::uint32_t headers_len;
  std::uint32_t value_len;
  std::uint32_t flags;
};
inline constexpr std::uint32_t kRecordHeaderSize = 40;
static_assert(sizeof(RecordHeader) == kRecordHeaderSize, "record header: bump kPartitionLayoutMajor");
static_assert(offsetof(RecordHeader, length) == 8, "bump kPartitionLayoutMajor");
static_assert(offsetof(RecordHeader, writer_pid) == 12, "bump kPartitionLayoutMajor");
static_assert(offsetof(RecordHeader, timestamp_ns) == 16, "bump kPartitionLayoutMajor");
static_assert(offsetof(RecordHeader, key_len) == 24, "bump kPartitionLayoutMajor");
static_assert(offsetof(RecordHeader, headers_len) == 28, "bump kPartitionLayoutMajor");
static_assert(offsetof(RecordHeader, value_len) == 32, "bump kPartitionLayoutMajor");
static_assert(offsetof(RecordHeader, flags) == 36, "bump kPartitionLayoutMajor");
static_assert(std::is_standard_layout_v<RecordHeader>, "records are read by other processes");
static_assert(std::atomic<std::uint64_t>::is_always_lock_free, "record word is shared between processes");

struct alignas(kCacheLine) PartitionConfig {
  std::uint64_t capacity;        // data bytes, power of two
  std::uint64_t index_capacity;  // entries, power of two
  std::uint64_t salt;            // XOR for record words
  std::uint64_t topic_epoch;     // the registry's epoch of the topic this partition belongs to
  std::uint64_t index_offset;    // from the segment start
  std::uint64_t data_offset;     // from the segment start
  std::uint32_t max_record;      // largest whole record (header included), <= capacity / 4
  std::uint32_t retention;       // Retention
  std::uint32_t partition;
  std::uint32_t reclaim_chunk;   // bytes a producer reclaims ahead at once
};
static_assert(sizeof(PartitionConfig) == 64, "config is one cache line: bump kPartitionLayoutMajor");

struct alignas(kCacheLine) NotifyLine {
  std::atomic<std::uint32_t> seq;      // futex word: bumped by a producer that saw waiters
  std::atomic<std::uint32_t> waiters;  // consumers about to sleep (eventcount)
  std::atomic<std::uint32_t> closed;   // 1 once the topic is deleted
  std::uint32_t reserved[13];
};
static_assert(sizeof(NotifyLine) == 64, "bump kPartitionLayoutMajor");

// Spill state of a partition whose topic has a disk log.
enum class SpillState : std::uint32_t { kOff = 0, kRunning = 1, kError = 2 };

struct alignas(kCacheLine) StatsLine {
  std::atomic<std::uint64_t> dead_claims_reclaimed;  // claims of dead writers turned into ABORTED
  std::atomic<std::uint64_t> producer_blocked_ns;    // block mode: time producers waited for room
  // Written by busd's spiller only (minor 1; zero in segments of minor 0):
  std::atomic<std::uint64_t> spill_end;    // every offset below it is on disk (or was lost)
  std::atomic<std::uint64_t> spill_start;  // the oldest offset on disk
  std::atomic<std::uint64_t> spill_bytes;  // bytes of the partition's log files
  std::atomic<std::uint64_t> spill_lost;   // overwrite topics: records lapped before they were spilled
  std::atomic<std::uint32_t> spill_state;  // SpillState
  std::uint32_t reserved0;
  std::uint64_t reserved[1];
};
static_assert(sizeof(StatsLine) == 64, "bump kPartitionLayoutMajor");
static_assert(offsetof(StatsLine, spill_end) == 16 && offsetof(StatsLine, spill_state) == 48, "bump kPartitionLayoutMajor");

struct alignas(kCacheLine) PartitionControl {
  PartitionConfig config;
  Pair64 tail;                      // {next_offset, position}: 16-byte CAS
  std::uint8_t pad_tail[48];
  Pair64 reclaim;                   // {offset, position}: 16-byte CAS
  std::uint8_t pad_reclaim[48];
  NotifyLine notify;
  StatsLine stats;
};
static_assert(sizeof(PartitionControl) == 5 * kCacheLine, "bump kPartitionLayoutMajor");
static_assert(offsetof(PartitionControl, tail) == 64, "tail owns cache line 1: bump kPartitionLayoutMajor");
static_assert(offsetof(PartitionControl, reclaim) == 128, "reclaim owns cache line 2: bump kPartitionLayoutMajor");
static_assert(offsetof(PartitionControl, notify) == 192, "notify owns cache line 3: bump kPartitionLayoutMajor");
static_assert(offsetof(PartitionControl, stats) == 256, "stats own cache line 4: bump kPartitionLayoutMajor");

// A producer's claim in flight, published before its tail CAS so that a reader stuck on the
// claim can tell a slow writer from a dead one.
struct alignas(kCacheLine) WriterSlot {
  std::atomic<std::int32_t> owner_pid;      // 0: free
  std::uint32_t reserved0;
  std::atomic<std::uint64_t> owner_start_ticks;
  std::atomic<std::uint64_t> intent_offset;   // release-stored last, before the CAS
  std::atomic<std::uint64_t> intent_position;
  std::atomic<std::uint32_t> intent_bytes;
  std::atomic<std::uint32_t> intent_count;
  std::uint8_t reserved[24];
};
static_assert(sizeof(WriterSlot) == 64, "one writer slot per cache line: bump kPartitionLayoutMajor");
static_assert(offsetof(WriterSlot, intent_offset) == 16, "bump kPartitionLayoutMajor");

// A consumer that producers of a `block` topic may not lap.
enum class GateKind : std::uint32_t {
  kProcess = 1,  // a live consumer process; released by producers when it is dead
  kDurable = 2,  // a consumer group's committed offset, or the spiller's; kept by busd; never reaped
};

// owner_key of the spiller's durable gate (group gates use a hash of the group name).
inline constexpr std::uint64_t kSpillGateKey = 0x7370696c6c676174ull;  // "spillgat"

struct alignas(kCacheLine) GateSlot {
  std::atomic<std::int32_t> owner_pid;  // 0: free
  std::atomic<std::uint32_t> kind;      // GateKind, stored before owner_pid is taken
  std::atomic<std::uint64_t> owner_start_ticks;
  std::atomic<std::uint64_t> position;  // everything before it is consumed
  std::atomic<std::uint64_t> owner_key; // durable gates: hash of the group name
  std::uint8_t reserved[32];
};
static_assert(sizeof(GateSlot) == 64, "one gate per cache line: bump kPartitionLayoutMajor");
static_assert(offsetof(GateSlot, position) == 16 && offsetof(GateSlot, owner_key) == 24, "bump kPartitionLayoutMajor");

inline constexpr std::size_t kControlOffset = 128;
inline constexpr std::size_t kWriterSlotsOffset = kControlOffset + sizeof(PartitionControl);
inline constexpr std::size_t kGateSlotsOffset = kWriterSlotsOffset + kWriterSlots * sizeof(WriterSlot);
inline constexpr std::size_t kSlotsEnd = kGateSlotsOffset + kGateSlots * sizeof(GateSlot);
static_assert(kWriterSlotsOffset == 448 && kGateSlotsOffset == 4544 && kSlotsEnd == 6592, "bump kPartitionLayoutMajor");

// reclaim.first: the offset in the low 56 bits, the gate generation in the high 8.
inline constexpr std::uint64_t kReclaimOffsetMask = (std::uint64_t{1} << 56) - 1;
inline constexpr std::uint64_t kGateGenOne = std::uint64_t{1} << 56;

constexpr std::uint64_t encode_word(std::uint64_t offset, RecordState s, std::uint64_t salt) {
  return ((offset << 8) | static_cast<std::uint64_t>(s)) ^ salt;
}

constexpr std::uint64_t align8(std::uint64_t n) { return (n + 7) & ~std::uint64_t{7}; }

}  // namespace shmbus::shm
