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

enum class FsyncPolicy : std::uint32_t { kNever = 0, kInterval = 1, kAlways = 2 };

// The disk log of a topic (docs/spill.md): busd appends every partition's records to
// <state dir>/<topic>-<partition>/<base offset>.log, and consumers read offsets older than
// the ring from there.
struct SpillConfig {
  bool enabled = false;
  std::uint64_t retention_bytes = 0;           // per partition; 0: no limit
  std::int64_t retention_ms = 0;               // 0: no limit
  std::uint64_t segment_bytes = 64ull << 20;   // a segment file rolls past this size
  FsyncPolicy fsync = FsyncPolicy::kInterval;
  std::uint32_t fsync_interval_ms = 1000;      // kInterval
  bool operator==(const SpillConfig&) const = default;
};

struct TopicConfig {
  std::uint32_t partitions = 1;
  std::uint64_t capacity = 1 << 20;  // ring bytes per partition, a power of two >= 4096
  std::uint32_t max_record = 0;      // largest key+value+headers; 0: capacity / 4 minus the header
  RetentionMode retention = RetentionMode::kOverwrite;
  SpillConfig spill{};  // `{}` on members without one: designated initializers that leave them out
                        // compile under -Wextra (-Wmissing-field-initializers), as README.md's do
  // A claim (a send in progress, or an open Reservation) unfinished this long is aborted by
  // the consumers and producers waiting on it, whether its producer is stopped, slow or
  // dead; the producer's late commit then fails with timed_out. 1..3600000.
  std::uint32_t claim_timeout_ms = 1000;
};

struct PartitionInfo {
  std::uint32_t partition;
  std::uint64_t start_offset;  // oldest offset still in the ring
  std::uint64_t end_offset;    // next offset to be written
  std::uint64_t bytes_used;    // ring bytes between start and end
  std::uint64_t capacity;
  std::uint64_t dead_claims_reclaimed;  // claims of dead producers aborted
  std::uint64_t claims_timed_out;       // claims of live producers aborted after the claim timeout
  std::uint64_t late_commits_refused;   // commits that found their claim aborted (the send failed)
  std::uint64_t waiters_reaped;         // sleep registrations of dead consumers cleared
  std::uint64_t gates_reaped;           // gates of dead consumers released
  std::uint32_t writers;       // producers attached
  std::uint32_t gates;         // consumers holding producers back
  // Spilled topics (what busd published in the partition segment):
  std::uint64_t disk_start_offset = 0;  // oldest offset on disk
  std::uint64_t disk_end_offset = 0;    // every offset below it is on disk (or was lost)
  std::uint64_t disk_bytes = 0;
  std::uint64_t spill_lost = 0;         // overwrite topics: records overwritten before busd spilled them
  std::uint32_t spill_state = 0;        // 0 not spilling, 1 spilling, 2 stopped on an error
  // The oldest offset a consumer can read: disk_start_offset for a spilled topic whose log
  // holds records, else start_offset (what --from earliest and reset-offsets --to-earliest use).
  std::uint64_t earliest_offset = 0;
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
  std::string name{};                  // empty: SHMBUS_BUS, else "default"
  std::optional<std::string> group{};  // share the bus with this Unix group (mode 0660)
  bool create = true;                  // create the bus if it does not exist
  bool read_only = false;              // map read-only (inspection)
};

class Bus : public std::enable_shared_from_this<Bus> {
 public:
  static Result<std::shared_ptr<Bus>> attach(BusOptions options = {});
  ~Bus();

  const std::string& name() const noexcept { return name_; }
  bool read_only() const noexcept { return read_only_; }

  Status create_topic(const std::string& name, const TopicConfig& config);
  Status delete_topic(const std::string& name);
  // Changes what can change safely while the topic is in use: its spill settings (retention,
  // segment size, fsync), or turning spilling on. Spilling cannot be turned off (its log
  // would be orphaned), nor the partitions, capacity or retention mode changed.
  Status alter_topic(const std::string& name, const SpillConfig& spill);
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
  // The disk logs of spilled topics stay (they are how topics come back after a reboot)
  // unless `purge_disk` is set.
  static Status destroy(const std::string& bus_name, bool purge_disk = false);

  // Topics with a disk log but no shared memory (after a reboot, or a bus delete) are
  // created again from their logs, offsets continuing; attach() does this. Returns them.
  Result<std::vector<std::string>> restore_spilled_topics();

  struct Impl;

 private:
  Bus();
  Status create_topic_impl(const std::string& name, const TopicConfig& config, bool restoring);
  std::string name_;
  bool read_only_ = false;
  std::unique_ptr<Impl> impl_;
};

}  // namespace shmbus
