// Bytes only: the registry segment of a bus, shmbus.<bus>~registry. Behaviour: bus.cpp.
//
//   0       SegmentHeader (128 B)
//   128     RegistryControl (64 B)
//   192     TopicSlot[kMaxTopics], 512 B each
//
// Topic slots change only under an exclusive flock(2) on the registry file, so a writer that
// dies releases the lock with its last descriptor and never wedges the bus. Readers take no
// lock: each slot is a seqlock (`seq` odd while it changes).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace shmbus {

inline constexpr std::uint16_t kRegistryLayoutMajor = 1;
inline constexpr std::uint16_t kRegistryLayoutMinor = 2;  // 1: spill config in TopicSlot; 2: claim timeout
inline constexpr std::uint32_t kMaxTopics = 256;

enum class TopicState : std::uint32_t { kFree = 0, kCreating = 1, kReady = 2, kDeleting = 3 };

struct alignas(64) RegistryControl {
  std::uint32_t max_topics;
  std::uint32_t mode;                 // file mode of the bus's segments (0600 or 0660)
  std::int64_t gid;                   // group owner, -1 when the bus is private
  std::atomic<std::uint64_t> changes; // bumped on every topic create/delete
  std::uint8_t reserved[40];
};
static_assert(sizeof(RegistryControl) == 64, "bump kRegistryLayoutMajor");
static_assert(offsetof(RegistryControl, changes) == 16, "bump kRegistryLayoutMajor");

struct alignas(64) TopicSlot {
  std::atomic<std::uint32_t> seq;  // seqlock: odd while the slot changes
  std::uint32_t state;             // TopicState
  std::uint32_t partitions;
  std::uint32_t retention;         // shm::Retention
  std::uint64_t capacity;          // data bytes per partition
  std::uint32_t max_record;        // largest value+key+headers a producer may send
  std::uint32_t name_len;
  std::uint64_t epoch;             // random per creation; partition segments carry it
  std::int64_t created_ns;
  std::int32_t creator_pid;
  std::uint32_t flags;
  char name[208];                  // not NUL-terminated past name_len
  // Minor 1: the disk log (SpillConfig); all zero in slots of minor 0 (no spill).
  std::uint32_t spill;             // 1: spilled
  std::uint32_t spill_fsync;       // FsyncPolicy
  std::uint64_t spill_retention_bytes;
  std::int64_t spill_retention_ms;
  std::uint64_t spill_segment_bytes;
  std::uint32_t spill_fsync_interval_ms;
  std::uint32_t claim_timeout_ms;  // minor 2; 0 in older slots: the default, 1000
  std::uint8_t reserved[208];
};
static_assert(sizeof(TopicSlot) == 512, "bump kRegistryLayoutMajor");
static_assert(offsetof(TopicSlot, capacity) == 16, "bump kRegistryLayoutMajor");
static_assert(offsetof(TopicSlot, epoch) == 32, "bump kRegistryLayoutMajor");
static_assert(offsetof(TopicSlot, name) == 56, "bump kRegistryLayoutMajor");
static_assert(offsetof(TopicSlot, spill) == 264 && offsetof(TopicSlot, spill_fsync_interval_ms) == 296, "bump kRegistryLayoutMajor");
static_assert(std::is_standard_layout_v<TopicSlot>, "slots are read by other processes");

inline constexpr std::size_t kRegistryControlOffset = 128;
inline constexpr std::size_t kTopicSlotsOffset = 192;
inline constexpr std::size_t kRegistrySize = kTopicSlotsOffset + kMaxTopics * sizeof(TopicSlot);

}  // namespace shmbus
