// Offsets of a partition by position or time, the disk log of a spilled topic included: the
// oldest readable offset, and the first offset whose record is at or after a timestamp
// (Consumer::offsets_for_times, busctl consume --from @MS, busctl group reset-offsets
// --to-datetime / --by-duration, the Kafka gateway's ListOffsets).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "shm/ring.h"
#include "shmbus/error.h"

namespace shmbus {

// The oldest offset a consumer can read: on disk for a spilled topic whose log holds
// records, else the ring's start.
std::uint64_t earliest_offset(const shm::Ring& ring, bool spilled) noexcept;

// The offset of the first record whose timestamp is >= ts_ns, looked for in the disk log in
// `log_dir` (a spilled topic; empty: none) and then in the ring; the end offset when there is
// none. Timestamps are the producers' (CLOCK_REALTIME at send unless the producer set one).
//
// Disk: a binary search over the segment files by each one's first timestamp, then the
// file's time index (.timeindex, docs/spill.md): its entries hold the largest timestamp of
// the segment's records before them, so the search reads one index interval (about 4 KiB of
// log) from the last entry older than the time, and is exact within a segment even where
// timestamps go backwards: the first record at or after ts_ns in offset order. Across files
// it relies on their first timestamps (exact when those do not go backwards). A file without
// a time index, or whose index does not hold or agree with its records, is scanned from its
// start: a damaged or stale index costs a scan, never a record before the time.
//
// Ring: a binary search over the offsets it holds, reading each probed record's timestamp
// through the offset index (O(log n) probes), then the records between the last probe older
// than the time and the first probe at or after it. The answer is a record at or after ts_ns
// whose previous record (in offset order) is older than ts_ns, or the first record: the
// first record at or after ts_ns whenever timestamps do not decrease along offsets (records
// stamped at send by one producer, or by producers whose sends do not overlap); where they go
// backwards, one of the places where they cross ts_ns. None: the newest record is older.
// Bounded: 8 attempts (producers lapping the search start it again), 64 halvings of 8 probes
// at most, a window read in order of at most a few times the ring. docs/ring.md.
Result<std::uint64_t> offset_for_time(const std::string& log_dir, const shm::Ring& ring, std::int64_t ts_ns);

// The same lookup, telling "none" apart (Consumer::offsets_for_times, Kafka's
// offsetsForTimes): the first record at or after ts_ns, with its timestamp, or nullopt when
// every record is older. Its timestamp is -1 when it was still being written (a claim in
// flight at the ring's end: it and what follows are the newest records).
struct TimeMatch {
  std::uint64_t offset;
  std::int64_t timestamp_ns;
};

// What a lookup read, for tests that hold it to its bounds.
struct LookupStats {
  std::uint64_t disk_frames = 0;      // frames of the disk log read
  std::uint64_t disk_full_scans = 0;  // segment files searched from their start (no valid time index)
  std::uint64_t ring_probes = 0;      // ring records read through the offset index
  std::uint64_t ring_records = 0;     // ring records read in order (the window after the probes)
  std::uint64_t ring_restarts = 0;    // searches of the ring started again: producers lapped them
  std::function<void()> after_probe;  // tests: runs after each probe of the ring (to lap it)
};

Result<std::optional<TimeMatch>> find_offset_for_time(const std::string& log_dir, const shm::Ring& ring, std::int64_t ts_ns,
                                                      LookupStats* stats = nullptr);

// The disk log alone: the first record at or after ts_ns among offsets below `limit`.
Result<std::optional<TimeMatch>> find_in_disk_log(const std::string& dir, std::uint64_t limit, std::int64_t ts_ns,
                                                  LookupStats* stats = nullptr);

}  // namespace shmbus
