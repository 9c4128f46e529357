// A bus: a registry of topics in shared memory, attached by name. No daemon is needed to
// create, list, produce or consume with manual assignment.
//
// Thread safety: a Bus may be shared by threads; its methods are thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "shmbus/error.h"

namespace shmbus {

namespace shm { class Segment; }
class Topic;

enum class RetentionMode : std::uint32_t { kOverwrite = 0, kBlock = 1 };

struct TopicConfig {
  std::uint32_t partitions = 1;
  std::uint64_t capacity = 1 << 20;  // ring bytes per partition, a power of two >= 4096
  std::uint32_t max_record = 0;      // largest key+value+headers; 0: capacity / 4 minus the header
  RetentionMode retention = RetentionMode::kOverwrite;
};

struct PartitionInfo {
  std::uint32_t partition;
  std::uint64_t start_offset;  // oldest offset still in the ring
  std::uint64_t end_offset;    // next offset to be written
  std::uint64_t bytes_used;    // ring bytes between start and end
  std::uint64_t capacity;
  std::uint64_t dead_claims_reclaimed;
  std::uint32_t writers;       // producers attached
  std::uint32_t gates;         // consumers holding producers back
};

struct TopicInfo {
  std::string name;
  TopicConfig config;
  std::uint64_t epoch = 0;
  std::int64_t created_ns = 0;
  std::uint64_t shm_bytes = 0;  // all partition segments
  std::vector<PartitionInfo> partitions;
};

struct BusOptions {
  std::string name;                  // empty: SHMBUS_BUS, else "default"
  std::optional<std::string> group;  // share the bus with this Unix group (mode 0660)
  bool create = true;                // create the bus if it does not exist
  bool read_only = false;            // map read-only (inspection)
};

class Bus : public std::enable_shared_from_this<Bus> {
 public:
  static Result<std::shared_ptr<Bus>> attach(BusOptions options = {});
  ~Bus();

  const std::string& name() const noexcept { return name_; }
  bool read_only() const noexcept { return read_only_; }

  Status create_topic(const std::string& name, const TopicConfig& config);
  Status delete_topic(const std::string& name);
  std::vector<TopicInfo> list_topics();
  Result<TopicInfo> describe_topic(const std::string& name);

  // The mapped topic, opened once per Bus and shared by its producers and consumers.
  Result<std::shared_ptr<Topic>> topic(const std::string& name);

  // False once the bus's registry file has been removed (bus deleted, or removed by hand):
  // this Bus then talks to a bus that no longer exists.
  bool still_exists() const;

  // Finishes topic creations and deletions that a dead process left half done (under the
  // registry lock). Returns the topics it finished. busctl doctor --fix calls it.
  Result<std::vector<std::string>> repair();

  // Removes every segment of the bus (registry included). Attached processes keep their
  // mappings; new attaches start from an empty bus.
  static Status destroy(const std::string& bus_name);

  struct Impl;

 private:
  Bus();
  std::string name_;
  bool read_only_ = false;
  std::unique_ptr<Impl> impl_;
};

}  // namespace shmbus
