// Bytes only: busd's segment, shmbus.<bus>~busd. Group members read it in their poll loop,
// so a new assignment is noticed without a system call. Behaviour: busd.cpp, consumer.cpp.
//
//   0       SegmentHeader (128 B)
//   128     BusdControl (64 B)
//   192     MemberSlot[kMemberSlots], 64 B each (one cache line per member)
//
// busd bumps a member's `notice` (and futex-wakes it) whenever it queues a message for that
// member on its socket; the member compares it with the last value it saw. busd hands a slot
// out with a new `lease` (join's reply says which); the member stores into the slot only
// while the lease is still its own. The member's heartbeat thread stores `heartbeat_ns`
// (CLOCK_MONOTONIC) every heartbeat interval; busd evicts a member whose heartbeat is older
// than its session timeout. poll() stores its count of calls in `polls`; busd removes a
// member whose count has not moved for its max poll interval.
//
//   MemberSlot: 0 notice | 4 pid | 8 heartbeat_ns | 16 polls | 24 lease | 28 reserved
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace shmbus {

inline constexpr std::uint16_t kBusdLayoutMajor = 1;
// Minor 1 added `polls` and `lease` in what were reserved bytes: a busd of minor 0 ignores
// them, and busd checks `polls` only for members that said their max poll interval.
inline constexpr std::uint16_t kBusdLayoutMinor = 1;
inline constexpr std::uint32_t kMemberSlots = 256;

struct alignas(64) BusdControl {
  std::int32_t pid;
  std::uint32_t member_slots;
  std::int64_t started_ns;  // CLOCK_REALTIME
  std::uint8_t reserved[48];
};
static_assert(sizeof(BusdControl) == 64, "bump kBusdLayoutMajor");

struct alignas(64) MemberSlot {
  std::atomic<std::uint32_t> notice;         // futex word, bumped by busd
  std::atomic<std::int32_t> pid;             // 0: free
  std::atomic<std::uint64_t> heartbeat_ns;   // stored by the member's heartbeat thread
  std::atomic<std::uint64_t> polls;          // stored by the member's poll()
  std::atomic<std::uint32_t> lease;          // bumped by busd each time it hands the slot out
  std::uint8_t reserved[36];
};
static_assert(sizeof(MemberSlot) == 64, "one member per cache line: bump kBusdLayoutMajor");
static_assert(offsetof(MemberSlot, heartbeat_ns) == 8, "bump kBusdLayoutMajor");
static_assert(offsetof(MemberSlot, polls) == 16 && offsetof(MemberSlot, lease) == 24, "bump kBusdLayoutMajor");
static_assert(std::atomic<std::uint64_t>::is_always_lock_free && std::atomic<std::uint32_t>::is_always_lock_free,
              "shared between processes: must be lock-free");

inline constexpr std::size_t kBusdControlOffset = 128;
inline constexpr std::size_t kMemberSlotsOffset = 192;
inline constexpr std::size_t kBusdSegmentSize = kMemberSlotsOffset + kMemberSlots * sizeof(MemberSlot);

}  // namespace shmbus
