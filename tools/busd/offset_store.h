// Committed offsets of consumer groups, persisted in the bus's state dir as an append-only
// log that is compacted when it grows. Each line: "<crc32c> <group> <topic> <partition>
// <offset> <topic epoch, hex>[ <metadata, hex>]\n" (the metadata a Kafka client committed
// with the offset, when not empty; older readers ignore it). A torn or corrupt line (a crash mid-append) is skipped and
// reported; the last good line for a key wins. The topic epoch names the creation of the
// topic the offset was committed for (a deleted and re-created topic has another): an
// offset of another creation is none. Lines without it (written before it was kept) read
// as epoch 0, taken as the current creation's.
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

struct CommittedOffset {
  std::uint64_t offset = 0;
  std::uint64_t topic_epoch = 0;  // 0: unknown (an old line)
  std::string metadata;           // Kafka's commit metadata (OffsetCommit), "" for native commits
  bool operator==(const CommittedOffset&) const = default;
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

  const std::map<OffsetKey, CommittedOffset>& all() const { return offsets_; }
  bool has_group(const std::string& group) const;  // any offset of it (a look-up, not a scan)
  // The offset committed for `k` in the creation `topic_epoch` of its topic (or in an
  // unknown one: epoch 0), else none.
  std::optional<std::uint64_t> get(const OffsetKey& k, std::uint64_t topic_epoch) const;
  const CommittedOffset* find(const OffsetKey& k, std::uint64_t topic_epoch) const;  // get() with the metadata
  // Appends (buffered); flush() writes and fdatasyncs.
  void put(const OffsetKey& k, std::uint64_t offset, std::uint64_t topic_epoch, const std::string& metadata = {});
  // Forgets every group's offsets of `topic` that were committed for another creation than
  // `keep_epoch` (0: all of them; epoch-0 lines are kept otherwise). Returns how many went.
  std::size_t drop_topic(const std::string& topic, std::uint64_t keep_epoch);
  void erase_group_topic(const std::string& group, const std::string& topic);
  void erase_group(const std::string& group);  // every offset of it, compacted to disk at once
  Status flush();
  std::uint64_t skipped_lines() const { return skipped_; }
  const std::string& path() const { return path_; }

 private:
  Status compact();
  std::string path_;
  std::optional<unsigned> gid_;  // a shared bus's: compaction's new file is the group's too
  int fd_ = -1;
  std::map<OffsetKey, CommittedOffset> offsets_;
  std::string pending_;
  std::uint64_t lines_ = 0;
  std::uint64_t skipped_ = 0;
};

}  // namespace shmbus
