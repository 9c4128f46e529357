// Committed offsets of consumer groups, persisted in the bus's state dir as an append-only
// log that is compacted when it grows. Each line: "<crc32c> <group> <topic> <partition>
// <offset>\n". A torn or corrupt line (a crash mid-append) is skipped and reported; the
// last good line for a key wins.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "shmbus/error.h"

namespace shmbus {

struct OffsetKey {
  std::string group;
  std::string topic;
  std::uint32_t partition;
  auto operator<=>(const OffsetKey&) const = default;
};

class OffsetStore {
 public:
  // Loads `dir`/offsets.log (creating the directory). `skipped` counts bad lines.
  // With `gid` (a bus shared with a Unix group): the directory and file are the group's,
  // so that a busd of another member continues them.
  static Result<OffsetStore> open(const std::string& dir, std::optional<unsigned> gid = std::nullopt);
  OffsetStore() = default;
  OffsetStore(OffsetStore&&) noexcept;
  OffsetStore& operator=(OffsetStore&&) noexcept;
  ~OffsetStore();

  const std::map<OffsetKey, std::uint64_t>& all() const { return offsets_; }
  std::optional<std::uint64_t> get(const OffsetKey& k) const;
  // Appends (buffered); flush() writes and fdatasyncs.
  void put(const OffsetKey& k, std::uint64_t offset);
  void erase_group_topic(const std::string& group, const std::string& topic);
  void erase_group(const std::string& group);  // every offset of it, compacted to disk at once
  Status flush();
  std::uint64_t skipped_lines() const { return skipped_; }
  const std::string& path() const { return path_; }

 private:
  Status compact();
  std::string path_;
  int fd_ = -1;
  std::map<OffsetKey, std::uint64_t> offsets_;
  std::string pending_;
  std::uint64_t lines_ = 0;
  std::uint64_t skipped_ = 0;
};

}  // namespace shmbus
