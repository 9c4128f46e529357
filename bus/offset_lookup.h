// Offsets of a partition by position or time, the disk log of a spilled topic included: the
// oldest readable offset, and the first offset whose record is at or after a timestamp
// (busctl group reset-offsets --to-datetime / --by-duration, via busd).
#pragma once

#include <cstdint>
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
// none. The disk log is searched by the first timestamp of each segment file (a binary search
// over the files, then a scan of at most what lies from one file's start to the record), the
// ring by a scan of what it holds (bounded by its capacity). Timestamps are the producers'
// (CLOCK_REALTIME at send unless the producer set one): where they go backwards, the answer
// is the first record at or after ts_ns in that order.
Result<std::uint64_t> offset_for_time(const std::string& log_dir, const shm::Ring& ring, std::int64_t ts_ns);

// The same lookup, telling "none" apart (Consumer::offsets_for_times, Kafka's
// offsetsForTimes): the first record at or after ts_ns, with its timestamp, or nullopt when
// every record is older. Its timestamp is -1 when it was still being written (a claim in
// flight at the ring's end: it and what follows are the newest records).
struct TimeMatch {
  std::uint64_t offset;
  std::int64_t timestamp_ns;
};
Result<std::optional<TimeMatch>> find_offset_for_time(const std::string& log_dir, const shm::Ring& ring, std::int64_t ts_ns);

}  // namespace shmbus
