// busd's writer of the spill log (format and reader: bus/disk_log.h). Only busd appends.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "bus/disk_log.h"

namespace shmbus::disklog {

// Records that a partition's log is on disk up to `bytes` of segment `base` ({base, bytes}).
void write_watermark(const std::string& dir, std::pair<std::uint64_t, std::uint64_t> synced, unsigned mode = 0600);

// Appends a partition's records; busd's spiller owns one per spilled partition.
class LogWriter {
 public:
  // Opens (creating `dir`), recovering the last segment: a torn tail is truncated to the
  // last whole record and reported through `report`; a corrupt last segment is an error.
  static Result<LogWriter> open(const std::string& dir, const SpillConfig& config, unsigned file_mode,
                                const std::function<void(const std::string&)>& report);
  LogWriter(LogWriter&&) noexcept;
  LogWriter& operator=(LogWriter&&) noexcept;
  ~LogWriter();

  std::optional<std::uint64_t> next_offset() const noexcept { return next_; }
  std::optional<std::uint64_t> start_offset() const noexcept;
  std::uint64_t bytes() const noexcept;
  const std::string& dir() const noexcept { return dir_; }

  // Whole frames with ascending offsets above next_offset(). Rolls segments on the way.
  Status append(std::span<const std::byte> frames);
  // fdatasync of the open segment and its indexes.
  Status sync();
  // New retention / segment size / fsync settings (busctl topic alter): from the next append.
  void set_config(const SpillConfig& config) noexcept { config_ = config; }
  // Deletes whole segments (never the open one) past the retention limits; returns how many.
  std::size_t enforce_retention(std::int64_t now_ns);

 private:
  LogWriter() = default;
  struct Segment {
    std::uint64_t base;
    std::uint64_t bytes;
  };
  Status roll(std::uint64_t base);
  Status flush_index();
  void close_files() noexcept;

  std::string dir_;
  SpillConfig config_;
  unsigned mode_ = 0600;
  std::vector<Segment> segments_;   // the last one is open
  int log_fd_ = -1, index_fd_ = -1, time_index_fd_ = -1;
  std::uint64_t since_index_ = 0;   // log bytes since the last index entry
  std::vector<IndexEntry> pending_index_;
  std::vector<TimeIndexEntry> pending_time_index_;
  std::int64_t max_timestamp_ = kNoTimestamp;  // of the open segment's records so far
  std::optional<std::uint64_t> next_;
  std::uint64_t writeback_from_ = 0;  // open segment: bytes before it were handed to writeback
  std::vector<int> unsynced_;         // sealed segments' descriptors, synced by the next sync()
};

}  // namespace shmbus::disklog
