// Bytes only: the partition segment, one lock-free ring of records. Behaviour: ring.h,
// protocol: docs/ring.md.
//
// Partition segment (major 4)
//   0       SegmentHeader (128 B, segment_layout.h)
//   128     PartitionControl (7 cache lines, below)
//   576     WriterSlot[kWriterSlots]     one line each: a producer and the claim it is making
//   4672    GateSlot[kGateSlots]         one line each: consumers that hold producers back
//   6720    WaiterSlot[kWaiterSlots]     one line each: consumers that may sleep on `seq`
//   10816.. pad to 4096, then the offset index: u64[index_capacity]  offset -> position
//   ...     pad to 4096, then the claim table: ClaimEntry[index_capacity] (16 B each)
//   ...     pad to 4096, then data: capacity bytes (a power of two)
//
// Every slot (writer, gate, waiter) is owned through an open-file-description lock
// (fcntl F_OFD_SETLK) on the slot's first byte of the segment file: the kernel drops it when
// its holder dies, so "is the owner alive" is a lock test, never a guess from pids.
//
// Positions are monotonically increasing 64-bit byte counts; the byte of position p is
// data[p & (capacity - 1)]. Offsets are dense 0, 1, 2, ... per partition.
//
// PartitionControl, one concern per cache line:
//   line 0  config   (immutable after creation)
//   line 1  limits   (immutable after creation), and sync_wanted, ack_bell (minor 1: producers
//                    waiting for durable acks call busd's spiller; rarely written)
//   line 2  tail     {next_offset, position}   16-byte CAS; moved after a claim entry is won
//   line 3  reclaim  {gate_gen:8|offset:56,    16-byte CAS: records before it may be
//                     position}                overwritten; it is also the partition's start
//   line 4  notify   seq (futex word), closed, waiters (bit per WaiterSlot)
//   line 5  stats    (counters)
//   line 6  stats    (counters of the claim protocol)
//
// Claim entry (16 B, 16-byte aligned; entry of the claim whose first offset is o: o & imask)
//   0       +-------------------------------------------------------------+
//           | tag: ((o << 8) | ClaimState) XOR salt                 (u64) |
//   8       +------------------------------+--------------+------+-------+
//           | claim bytes (u32)            |count 23|pad 1|slot 6| why 2 |
//           +------------------------------+--------------+------+-------+
// `pad`: the claim starts with a PADDING word (its first record is at the next lap).
// Both words change together, by one 16-byte CAS. A tag only ever names a larger offset
// than before, so a CAS that expects an older tag can never succeed late (no ABA).
//
// Record (8-byte aligned, never crosses the end of the data area)
//   0       +-------------------------------------------------------------+
//           | word: ((offset << 8) | state) XOR salt          (u64 atomic)|
//   8       +------------------------------+------------------------------+
//           | length: whole record, bytes  | reserved (0)                 |
//   16      +------------------------------+------------------------------+
//           | timestamp, ns since the epoch (CLOCK_REALTIME)              |
//   24      +------------------------------+------------------------------+
//           | key length (kNullKey: none)  | headers length               |
//   32      +------------------------------+------------------------------+
//           | value length                 | flags (kRecordNullValue)     |
//   40      +------------------------------+------------------------------+
//           | key | headers | value | pad to 8                            |
//           +-------------------------------------------------------------+
//
// Headers, per header: u32 key length, u32 value length (kNullHeaderValue: null), key
// bytes, value bytes. The disk log keeps this block as it is.
//
// The ring holds only COMMITTED and PADDING words. A PADDING word covers the rest of the
// data area; its offset is the one of the record that follows at position 0 of the next
// lap. A claim that never commits leaves the ring's bytes as they were: its entry in the
// claim table says ABORTED, and readers and reclaimers step over its bytes and offsets from
// there. The salt is random per segment, so stale bytes of an old lap are never mistaken
// for a word.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "shm/atomic128.h"

namespace shmbus::shm {

inline constexpr std::uint16_t kPartitionLayoutMajor = 4;  // 4: exclusive writers, null values
inline constexpr std::uint16_t kPartitionLayoutMinor = 2;  // 1: synced_end, sync_wanted (durable acks); 2: WriterSlot::reclaim_view
inline constexpr std::size_t kCacheLine = 64;
inline constexpr std::uint32_t kWriterSlots = 64;
inline constexpr std::uint32_t kGateSlots = 32;
inline constexpr std::uint32_t kWaiterSlots = 64;
inline constexpr std::uint32_t kNullKey = 0xffff'ffffu;
// RecordHeader::flags: the value is null (a tombstone), not empty; value length is 0.
// Readers of minor 0 ignore flags and see an empty value.
inline constexpr std::uint32_t kRecordNullValue = 1u << 0;
// A header's value length that means a null value (not an empty one), with no value bytes.
// Never a length: a value that long is over any record's limit, so records written before
// null header values never hold it. Readers older than it stop at such a header (a
// malformed block to them) and see the headers before it only.
inline constexpr std::uint32_t kNullHeaderValue = 0xffff'ffffu;
inline constexpr std::uint32_t kMaxClaimCount = (1u << 23) - 1;
inline constexpr std::uint64_t kDefaultClaimTimeoutNs = 1'000'000'000;

enum class RecordState : std::uint8_t {
  kEmpty = 0,      // never a decoded state of a live word; zeroed memory decodes to noise
  kCommitted = 2,  // readable
  kPadding = 3,    // skip to the next lap
};

// The state of a claim, kept in its claim-table entry (not in the ring).
enum class ClaimState : std::uint8_t {
  kClaimed = 1,    // a writer owns [position, position + bytes) and offsets [o, o + count)
  kCommitted = 2,  // the writer published it; its words are in the ring (or being stored)
  kAborted = 3,    // skip `bytes` and `count` offsets: given up, its writer dead or too slow
};

// Why a claim is ABORTED, or how a COMMITTED one was finished (ClaimEntry `why`).
enum class ClaimWhy : std::uint8_t {
  kOwner = 0,     // its writer gave it up (Reservation::abort) or committed it itself
  kDead = 1,      // its writer's slot lock was free: the writer is dead
  kTimedOut = 2,  // unfinished for claim_timeout while its writer's lock was held (stopped or slow)
  kExclusive = 3, // CLAIMED by an exclusive writer: aborted only once it is dead, never timed out
};

enum class Retention : std::uint32_t { kOverwrite = 0, kBlock = 1 };

struct RecordHeader {
  std::atomic<std::uint64_t> word;
  std::atomic<std::uint32_t> length;
  std::uint32_t reserved;
  std::int64_t timestamp_ns;
  std::uint32_t key_len;
  std::uint32_t headers_len;
  std::uint32_t value_len;
  std::uint32_t flags;
};
inline constexpr std::uint32_t kRecordHeaderSize = 40;
static_assert(sizeof(RecordHeader) == kRecordHeaderSize, "record header: bump kPartitionLayoutMajor");
static_assert(offsetof(RecordHeader, length) == 8, "bump kPartitionLayoutMajor");
static_assert(offsetof(RecordHeader, timestamp_ns) == 16, "bump kPartitionLayoutMajor");
static_assert(offsetof(RecordHeader, key_len) == 24, "bump kPartitionLayoutMajor");
static_assert(offsetof(RecordHeader, headers_len) == 28, "bump kPartitionLayoutMajor");
static_assert(offsetof(RecordHeader, value_len) == 32, "bump kPartitionLayoutMajor");
static_assert(offsetof(RecordHeader, flags) == 36, "bump kPartitionLayoutMajor");
static_assert(std::is_standard_layout_v<RecordHeader>, "records are read by other processes");
static_assert(std::atomic<std::uint64_t>::is_always_lock_free && std::atomic<std::uint32_t>::is_always_lock_free,
              "record words are shared between processes");

// One claim's ownership: tag and info move together by cmpxchg16b.
struct alignas(16) ClaimEntry {
  std::uint64_t tag;   // ((first offset << 8) | ClaimState) ^ salt
  std::uint64_t info;  // bytes | count << 32 | lead padding << 55 | slot << 56 | why << 62
};
static_assert(sizeof(ClaimEntry) == 16 && sizeof(ClaimEntry) == sizeof(Pair64), "one cmpxchg16b: bump kPartitionLayoutMajor");
// The entry as the pair the 16-byte atomics take.
inline Pair64* as_pair(ClaimEntry* e) noexcept { return reinterpret_cast<Pair64*>(e); }

struct alignas(kCacheLine) PartitionConfig {
  std::uint64_t capacity;        // data bytes, power of two
  std::uint64_t index_capacity;  // entries of the offset index and of the claim table, power of two
  std::uint64_t salt;            // XOR for record words and claim tags
  std::uint64_t topic_epoch;     // the registry's epoch of the topic this partition belongs to
  std::uint64_t index_offset;    // from the segment start
  std::uint64_t data_offset;     // from the segment start
  std::uint32_t max_record;      // largest whole record (header included), <= capacity / 4
  std::uint32_t retention;       // Retention
  std::uint32_t partition;
  std::uint32_t reclaim_chunk;   // bytes a producer reclaims ahead at once
};
static_assert(sizeof(PartitionConfig) == 64, "config is one cache line: bump kPartitionLayoutMajor");

struct alignas(kCacheLine) LimitsLine {
  std::uint64_t claims_offset;     // the claim table, from the segment start
  std::uint64_t claim_timeout_ns;  // a claim unfinished this long is aborted by whoever waits on it
  // Minor 1: the largest offset + 1 that a producer with acks=fsynced waits to see synced;
  // busd's spiller fdatasyncs the partition's log while it is above synced_end, whatever the
  // topic's fsync policy (raised by producers, read by busd, never trusted past what busd wrote).
  std::atomic<std::uint64_t> sync_wanted;
  // Minor 1: a futex word busd's spiller sleeps on while idle; a producer about to wait for a
  // durable ack bumps and wakes it, so that the spiller reads its record at once.
  std::atomic<std::uint32_t> ack_bell;
  std::uint32_t reserved0;
  std::uint64_t reserved[4];
};
static_assert(sizeof(LimitsLine) == 64, "bump kPartitionLayoutMajor");

struct alignas(kCacheLine) NotifyLine {
  std::atomic<std::uint32_t> seq;      // futex word: bumped by a producer that saw waiters
  std::atomic<std::uint32_t> closed;   // 1 once the topic is deleted
  std::atomic<std::uint64_t> waiters;  // bit i: WaiterSlot i's consumer is about to sleep
  // An exclusive writer's pid (0: none), and 1 when it relies on sleepers' heavy fence
  // (membarrier) instead of a fence of its own before it reads `waiters`. Major 4: a binary
  // that knows neither must not attach (it would write beside an exclusive writer).
  std::atomic<std::int32_t> exclusive_pid;
  std::atomic<std::uint32_t> light_fence;
  std::uint64_t reserved[5];
};
static_assert(sizeof(NotifyLine) == 64 && offsetof(NotifyLine, waiters) == 8, "bump kPartitionLayoutMajor");
static_assert(kWaiterSlots == 64, "one bit of NotifyLine::waiters per waiter slot");

// Spill state of a partition whose topic has a disk log.
enum class SpillState : std::uint32_t { kOff = 0, kRunning = 1, kError = 2 };

struct alignas(kCacheLine) StatsLine {
  std::atomic<std::uint64_t> dead_claims_reclaimed;  // claims of dead writers aborted
  std::atomic<std::uint64_t> producer_blocked_ns;    // time producers waited for room (timed out)
  // Written by busd's spiller only:
  std::atomic<std::uint64_t> spill_end;    // every offset below it is on disk (or was lost)
  std::atomic<std::uint64_t> spill_start;  // the oldest offset on disk
  std::atomic<std::uint64_t> spill_bytes;  // bytes of the partition's log files
  std::atomic<std::uint64_t> spill_lost;   // overwrite topics: records lapped before they were spilled
  std::atomic<std::uint32_t> spill_state;  // SpillState
  std::uint32_t reserved0;
  // Minor 1: every offset below it is on disk after an fdatasync (or was lost). Producers with
  // acks=fsynced futex-wait on its low 32 bits (as acks=spilled ones on spill_end's); busd wakes them.
  std::atomic<std::uint64_t> synced_end;
};
static_assert(sizeof(StatsLine) == 64, "bump kPartitionLayoutMajor");
static_assert(offsetof(StatsLine, spill_end) == 16 && offsetof(StatsLine, spill_state) == 48, "bump kPartitionLayoutMajor");
static_assert(offsetof(StatsLine, synced_end) == 56 && offsetof(LimitsLine, sync_wanted) == 16 && offsetof(LimitsLine, ack_bell) == 24,
              "bump kPartitionLayoutMajor");

struct alignas(kCacheLine) ClaimStatsLine {
  std::atomic<std::uint64_t> claims_timed_out;     // live writers' claims aborted after claim_timeout
  std::atomic<std::uint64_t> late_commits_refused; // commits that found their claim aborted
  std::atomic<std::uint64_t> commits_by_entry;     // committed claims read before their first word was stored
  std::atomic<std::uint64_t> waiters_reaped;       // waiter bits of dead consumers cleared
  std::atomic<std::uint64_t> gates_reaped;         // gates of dead consumers released
  std::atomic<std::uint64_t> slots_recovered;      // writer slots of dead producers taken over
  std::atomic<std::uint64_t> quarantine_waits;     // reclaims that waited for a late writer to leave
  std::atomic<std::uint64_t> corrupt_seen;         // forged or damaged bytes refused
};
static_assert(sizeof(ClaimStatsLine) == 64, "bump kPartitionLayoutMajor");

struct alignas(kCacheLine) PartitionControl {
  PartitionConfig config;
  LimitsLine limits;
  Pair64 tail;                      // {next_offset, position}: 16-byte CAS
  std::uint8_t pad_tail[48];
  Pair64 reclaim;                   // {gate_gen | offset, position}: 16-byte CAS
  std::uint8_t pad_reclaim[48];
  NotifyLine notify;
  StatsLine stats;
  ClaimStatsLine claim_stats;
};
static_assert(sizeof(PartitionControl) == 7 * kCacheLine, "bump kPartitionLayoutMajor");
static_assert(offsetof(PartitionControl, limits) == 64, "bump kPartitionLayoutMajor");
static_assert(offsetof(PartitionControl, tail) == 128, "tail owns cache line 2: bump kPartitionLayoutMajor");
static_assert(offsetof(PartitionControl, reclaim) == 192, "reclaim owns cache line 3: bump kPartitionLayoutMajor");
static_assert(offsetof(PartitionControl, notify) == 256, "notify owns cache line 4: bump kPartitionLayoutMajor");
static_assert(offsetof(PartitionControl, stats) == 320, "stats own cache line 5: bump kPartitionLayoutMajor");
static_assert(offsetof(PartitionControl, claim_stats) == 384, "bump kPartitionLayoutMajor");

inline constexpr std::uint64_t kNoClaim = ~std::uint64_t{0};

// A producer. Owned by whoever holds the OFD lock on its first byte.
struct alignas(kCacheLine) WriterSlot {
  std::atomic<std::int32_t> owner_pid;         // for people (busctl, doctor); 0: never used
  std::uint32_t reserved0;
  std::atomic<std::uint64_t> claim_position;   // the claim being made or written; kNoClaim when idle
  std::atomic<std::uint64_t> claim_offset;     // its first offset (valid with claim_position)
  // Minor 2: `reclaim.first` (gate generation | offset) this producer read before it scanned
  // the gates for a reclaim it has not CASed yet; kNoClaim otherwise. A consumer bumping the
  // gate generation never makes one of these again (docs/ring.md, "Gates").
  std::atomic<std::uint64_t> reclaim_view;
  std::uint8_t reserved[32];
};
static_assert(sizeof(WriterSlot) == 64, "one writer slot per cache line: bump kPartitionLayoutMajor");
static_assert(offsetof(WriterSlot, claim_position) == 8 && offsetof(WriterSlot, claim_offset) == 16 &&
                  offsetof(WriterSlot, reclaim_view) == 24,
              "bump kPartitionLayoutMajor");

// A consumer that producers of a `block` topic may not lap.
enum class GateKind : std::uint32_t {
  kFree = 0,
  kProcess = 1,  // a live consumer: its holder keeps the slot's OFD lock; free again once it dies
  kDurable = 2,  // a consumer group's committed offset, or the spiller's; kept by busd; never reaped
};

// owner_key of the spiller's durable gate (group gates use a hash of the group name).
inline constexpr std::uint64_t kSpillGateKey = 0x7370696c6c676174ull;  // "spillgat"

struct alignas(kCacheLine) GateSlot {
  std::atomic<std::uint32_t> kind;      // GateKind, release-stored last when a gate is set up
  std::atomic<std::int32_t> owner_pid;  // for people
  std::atomic<std::uint64_t> position;  // everything before it is consumed
  std::atomic<std::uint64_t> owner_key; // hash of the group name: durable gates; a member's process gate (else 0)
  std::uint8_t reserved[40];
};
static_assert(sizeof(GateSlot) == 64, "one gate per cache line: bump kPartitionLayoutMajor");
static_assert(offsetof(GateSlot, position) == 8 && offsetof(GateSlot, owner_key) == 16, "bump kPartitionLayoutMajor");

// A consumer that may sleep on the partition; bit i of NotifyLine::waiters is its flag.
struct alignas(kCacheLine) WaiterSlot {
  std::atomic<std::int32_t> owner_pid;  // for people
  std::uint8_t reserved[60];
};
static_assert(sizeof(WaiterSlot) == 64, "bump kPartitionLayoutMajor");

inline constexpr std::size_t kControlOffset = 128;
inline constexpr std::size_t kWriterSlotsOffset = kControlOffset + sizeof(PartitionControl);
inline constexpr std::size_t kGateSlotsOffset = kWriterSlotsOffset + kWriterSlots * sizeof(WriterSlot);
inline constexpr std::size_t kWaiterSlotsOffset = kGateSlotsOffset + kGateSlots * sizeof(GateSlot);
inline constexpr std::size_t kSlotsEnd = kWaiterSlotsOffset + kWaiterSlots * sizeof(WaiterSlot);
static_assert(kWriterSlotsOffset == 576 && kGateSlotsOffset == 4672 && kWaiterSlotsOffset == 6720 && kSlotsEnd == 10816,
              "bump kPartitionLayoutMajor");

// reclaim.first: the offset in the low 56 bits, the gate generation in the high 8.
inline constexpr std::uint64_t kReclaimOffsetMask = (std::uint64_t{1} << 56) - 1;
inline constexpr std::uint64_t kGateGenOne = std::uint64_t{1} << 56;

constexpr std::uint64_t encode_word(std::uint64_t offset, RecordState s, std::uint64_t salt) {
  return ((offset << 8) | static_cast<std::uint64_t>(s)) ^ salt;
}
// A tag holds offset + 1, so that the table's initial tags (`salt`, offset -1) are older
// than any claim, whatever the partition's first offset.
constexpr std::uint64_t encode_tag(std::uint64_t offset, ClaimState s, std::uint64_t salt) {
  return (((offset + 1) << 8) | static_cast<std::uint64_t>(s)) ^ salt;
}
inline constexpr std::uint64_t kInitialTagDecoded = static_cast<std::uint64_t>(ClaimState::kCommitted);
constexpr std::uint64_t encode_info(std::uint32_t bytes, std::uint32_t count, bool lead_padding, std::uint32_t slot,
                                    ClaimWhy why) {
  return std::uint64_t{bytes} | (std::uint64_t{count & kMaxClaimCount} << 32) | (std::uint64_t{lead_padding} << 55) |
         (std::uint64_t{slot & 63} << 56) | (std::uint64_t{static_cast<std::uint8_t>(why)} << 62);
}
constexpr bool info_lead_padding(std::uint64_t info) { return ((info >> 55) & 1) != 0; }
constexpr std::uint32_t info_bytes(std::uint64_t info) { return static_cast<std::uint32_t>(info); }
constexpr std::uint32_t info_count(std::uint64_t info) { return static_cast<std::uint32_t>(info >> 32) & kMaxClaimCount; }
constexpr std::uint32_t info_slot(std::uint64_t info) { return static_cast<std::uint32_t>(info >> 56) & 63; }
constexpr ClaimWhy info_why(std::uint64_t info) { return static_cast<ClaimWhy>(info >> 62); }
constexpr std::uint64_t with_why(std::uint64_t info, ClaimWhy why) {
  return (info & ~(std::uint64_t{3} << 62)) | (std::uint64_t{static_cast<std::uint8_t>(why)} << 62);
}

constexpr std::uint64_t align8(std::uint64_t n) { return (n + 7) & ~std::uint64_t{7}; }

}  // namespace shmbus::shm
