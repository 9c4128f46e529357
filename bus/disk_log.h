// The spill log on disk: per partition, Kafka-like segment files
// <state dir>/<topic>-<partition>/<base offset, 20 digits>.log with a sparse .index and a
// sparse .timeindex beside each. Format and recovery rules: docs/spill.md.
//
//   .log    FileHeader (32 B), then frames back to back:
//           0   u32 size       whole frame, header included
//           4   u32 crc        CRC32C (Castagnoli) of bytes 8 .. size
//           8   u64 offset     ascending; gaps where records were aborted or lost
//           16  i64 timestamp  ns since the epoch
//           24  u32 key length (0xffffffff: null key)
//           28  u32 headers length
//           32  u32 value length
//           36  u32 attributes (0 or kAttrNullValue: a record; kAttrLost/kAttrAborted: a gap frame)
//           40  key | headers | value (headers as in the ring: shm/ring_layout.h, a value
//               length of 0xffffffff a null header value)
//   .index  {u32 offset - base, u32 byte position} every kIndexInterval bytes of log
//   .timeindex  {i64 largest timestamp before, u32 offset - base, u32 CRC32C} beside each
//           .index entry (TimeIndexEntry)
//
// This header and bus/disk_log.cpp are the format and its reader (libshmbus); busd's writer
// is tools/busd/log_writer.h.
//
// Thread safety: a LogReader or LogWriter belongs to one thread at a time. Files are shared
// between processes: one writer (busd) appends, readers (consumers, busctl) read what is
// there; a frame that is not complete yet looks like a torn tail and ends a read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <span>
#include <utility>
#include <string>
#include <vector>

#include "shmbus/bus.h"
#include "shmbus/error.h"
#include "shmbus/record.h"

namespace shmbus::disklog {

// CRC32C with the SSE4.2 instruction where the CPU has it (three streams at once where it
// also has PCLMULQDQ), else Boost.CRC.
std::uint32_t crc32c(const void* data, std::size_t n) noexcept;
std::uint32_t crc32c_boost(const void* data, std::size_t n) noexcept;  // the portable path
std::uint32_t crc32c_one_stream(const void* data, std::size_t n) noexcept;  // without the three streams (tests)
bool crc32c_is_hardware() noexcept;

inline constexpr char kMagic[8] = {'S', 'H', 'M', 'B', 'L', 'O', 'G', '1'};
inline constexpr std::uint16_t kLogMajor = 1;
inline constexpr std::uint16_t kLogMinor = 1;  // 1: kAttrNullValue

struct FileHeader {
  char magic[8];
  std::uint16_t major;
  std::uint16_t minor;
  std::uint32_t header_size;  // 32
  std::uint64_t base_offset;  // as in the file name
  std::uint32_t reserved;
  std::uint32_t crc;          // CRC32C of the 28 bytes before it
};
static_assert(sizeof(FileHeader) == 32, "bump kLogMajor");

struct FrameHeader {
  std::uint32_t size;
  std::uint32_t crc;
  std::uint64_t offset;
  std::int64_t timestamp_ns;
  std::uint32_t key_len;
  std::uint32_t headers_len;
  std::uint32_t value_len;
  std::uint32_t attributes;
};
static_assert(sizeof(FrameHeader) == 40, "bump kLogMajor");
inline constexpr std::uint32_t kFrameHeaderSize = 40;

// Gap frames: offsets below the spill position that are not records, so that a reader of
// the log can tell what happened to every offset. No key, headers or value; the number of
// offsets covered is in the timestamp field.
inline constexpr std::uint32_t kAttrLost = 1;     // overwritten in the ring before busd spilled them
inline constexpr std::uint32_t kAttrAborted = 2;  // never records: claims of dead producers, aborted reservations
// A record whose value is null (a tombstone), not empty: value length 0. A reader of
// minor 0 takes such a frame for a damaged one.
inline constexpr std::uint32_t kAttrNullValue = 4;
inline bool is_gap(const FrameHeader& h) noexcept { return h.attributes == kAttrLost || h.attributes == kAttrAborted; }
// The last offset a frame covers.
inline std::uint64_t frame_last(const FrameHeader& h) noexcept {
  return is_gap(h) ? h.offset + static_cast<std::uint64_t>(h.timestamp_ns) - 1 : h.offset;
}
inline constexpr std::uint32_t kNullKeyLen = 0xffff'ffffu;
inline constexpr std::uint64_t kMaxFrame = std::uint64_t{1} << 31;

struct IndexEntry {
  std::uint32_t relative_offset;
  std::uint32_t position;
};
inline constexpr std::uint32_t kIndexInterval = 4096;

// One entry of a segment's time index, written with each .index entry (at the same offset):
// the largest timestamp among the segment's records before that offset (kNoTimestamp: none
// yet). Kafka's .timeindex idea: the largest so far, not the record's own, so that the
// entries never decrease and a search by time is exact even where timestamps go backwards
// (every record before the last entry older than a time is older than it).
struct TimeIndexEntry {
  std::int64_t max_before;
  std::uint32_t relative_offset;
  std::uint32_t crc;  // CRC32C of the 12 bytes before it
};
static_assert(sizeof(TimeIndexEntry) == 16, "the .timeindex format");
inline constexpr std::int64_t kNoTimestamp = std::numeric_limits<std::int64_t>::min();
TimeIndexEntry time_index_entry(std::int64_t max_before, std::uint32_t relative_offset) noexcept;

std::string partition_dir(const std::string& state_dir, const std::string& topic, std::uint32_t partition);
std::string segment_path(const std::string& dir, std::uint64_t base, const char* ext);
// Base offsets of the segment files in `dir`, ascending; empty when there is no such dir.
Result<std::vector<std::uint64_t>> list_segments(const std::string& dir);

// The time index of segment `base` in `dir`, as far as it can be believed: the longest run of
// entries from the first whose CRCs hold, that starts at {offset base, kNoTimestamp}, whose
// offsets grow and stay below `end_offset` (where the segment ends: the next one's base, or
// how far the log is known to go) and whose timestamps never decrease. Empty when there is no
// such file (a log written before the time index) or nothing in it holds.
std::vector<TimeIndexEntry> read_time_index(const std::string& dir, std::uint64_t base, std::uint64_t end_offset);

// A frame's whole size: its header, then key (none for kNullKeyLen), headers and value.
inline std::uint64_t frame_size(std::uint32_t key_len, std::uint32_t headers_len, std::uint32_t value_len) noexcept {
  return kFrameHeaderSize + (key_len == kNullKeyLen ? 0 : std::uint64_t{key_len}) + headers_len + value_len;
}

// Writes one frame at `at`, which has room for frame_size() bytes; `payload` is key | headers | value (key_len kNullKeyLen: no key; attributes 0 or
// kAttrNullValue).
void write_frame(std::byte* at, std::uint64_t offset, std::int64_t timestamp_ns, std::uint32_t key_len,
                 std::uint32_t headers_len, std::uint32_t value_len, const std::byte* payload, std::uint32_t attributes) noexcept;
// Writes a gap frame covering [offset, offset + count) at `at` (kFrameHeaderSize bytes).
void write_gap(std::byte* at, std::uint64_t offset, std::uint64_t count, std::uint32_t attr) noexcept;

// A vector of bytes whose growth leaves the new bytes as they are: resize() of a
// std::vector<std::byte> writes zeros first, one more pass over every byte the frames then
// overwrite (the spiller's chunks).
template <class T>
struct UninitAllocator : std::allocator<T> {
  template <class U>
  struct rebind {
    using other = UninitAllocator<U>;
  };
  UninitAllocator() = default;
  template <class U>
  UninitAllocator(const UninitAllocator<U>&) noexcept {}
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    if constexpr (sizeof...(Args) == 0) ::new (static_cast<void*>(p)) U;
    else ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};
using FrameBuffer = std::vector<std::byte, UninitAllocator<std::byte>>;

// Appends one frame (write_frame()) to `out`: a std::vector<std::byte> or a FrameBuffer.
template <class Buffer>
void append_frame(Buffer& out, std::uint64_t offset, std::int64_t timestamp_ns, std::uint32_t key_len, std::uint32_t headers_len,
                  std::uint32_t value_len, const std::byte* payload, std::uint32_t attributes = 0) {
  const std::size_t at = out.size();
  out.resize(at + frame_size(key_len, headers_len, value_len));
  write_frame(out.data() + at, offset, timestamp_ns, key_len, headers_len, value_len, payload, attributes);
}

// Appends a gap frame covering [offset, offset + count).
template <class Buffer>
void append_gap(Buffer& out, std::uint64_t offset, std::uint64_t count, std::uint32_t attr) {
  const std::size_t at = out.size();
  out.resize(at + kFrameHeaderSize);
  write_gap(out.data() + at, offset, count, attr);
}

// A frame as read: valid while the reader's buffer is not touched again.
struct FrameView {
  std::uint64_t position;  // byte position in its file
  FrameHeader header;
  Bytes payload;           // key | headers | value
};

enum class ScanEnd {
  kClean,     // every byte belongs to a whole, valid frame
  kTornTail,  // a partial or invalid frame with no valid frame after it: a write cut short
  kCorrupt,   // an invalid frame with valid frames after it (or a bad file header)
};

struct ScanResult {
  std::uint64_t base_offset = 0;
  std::uint64_t file_size = 0;
  std::uint64_t valid_bytes = 0;  // whole valid frames end here
  std::uint64_t records = 0;
  std::optional<std::uint64_t> first_offset, last_offset;
  ScanEnd end = ScanEnd::kClean;
  std::uint64_t bad_position = 0;  // kTornTail / kCorrupt
  std::string problem;             // names the file, the byte position and the offset expected
  std::vector<IndexEntry> index;   // as the writer would have written it
  std::vector<TimeIndexEntry> time_index;  // the same
  std::int64_t max_timestamp = kNoTimestamp;  // of its records (gap frames are none)
};

// Reads a whole segment file, checking every frame; `each` sees the valid ones in order.
// An error only when the file cannot be read at all.
Result<ScanResult> scan_segment(const std::string& path, const std::function<void(const FrameView&)>& each = {});

// What a partition's log holds, from the file names and a scan of the last segment.
struct LogSummary {
  std::vector<std::uint64_t> segments;
  std::optional<std::uint64_t> start_offset;  // first offset of the first segment
  std::optional<std::uint64_t> next_offset;   // last whole record's offset + 1
  std::uint64_t bytes = 0;
};
Result<LogSummary> summarize(const std::string& dir);

// Reads records of one partition's log by offset, for consumers and busctl.
class LogReader {
 public:
  explicit LogReader(std::string dir) : dir_(std::move(dir)) {}
  LogReader(LogReader&&) noexcept;
  LogReader& operator=(LogReader&&) noexcept;
  ~LogReader();

  // Calls `each` for records with from <= offset < limit, in order, until it returns
  // false, `max_bytes` of frames were read or the log ends. Returns the offset to read
  // next (past the last record seen, or past `limit`'s gap, or `from` when nothing was
  // there). A corrupt frame is an error naming the file and byte position.
  Result<std::uint64_t> read(std::uint64_t from, std::uint64_t limit, std::size_t max_bytes,
                             const std::function<bool(const FrameView&)>& each);

  // First offset on disk, if any (lists the directory).
  Result<std::optional<std::uint64_t>> start_offset();

  // Frames read so far (checked, whether shown or passed over on the way to `from`): what a
  // lookup cost (tests of the time index).
  std::uint64_t frames_read() const noexcept { return frames_read_; }

 private:
  Status open_segment(std::uint64_t base, std::uint64_t from);
  void close_segment();

  std::string dir_;
  std::vector<std::uint64_t> segments_;
  int fd_ = -1;
  std::uint64_t base_ = 0;      // of the open segment
  std::uint64_t pos_ = 0;       // next frame's byte position in it
  std::uint64_t next_ = 0;      // the offset a read starting at pos_ expects
  std::uint64_t frames_read_ = 0;
  std::vector<std::byte> buf_;
};

}  // namespace shmbus::disklog
