// Bytes only: busd's segment, shmbus.<bus>~busd. Group members read it in their poll loop,
// so a new assignment is noticed without a system call. Behaviour: busd.cpp, consumer.cpp.
//
//   0       SegmentHeader (128 B)
//   128     BusdControl (64 B)
//   192     MemberSlot[kMemberSlots], 64 B each (one cache line per member)
//
// busd bumps a member's `notice` (and futex-wakes it) whenever it queues a message for that
// member on its socket; the member compares it with the last value it saw. The member
// stores `heartbeat_ns` (CLOCK_MONOTONIC) from its poll loop; busd evicts a member whose
// heartbeat is older than its session timeout.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace shmbus {

inline constexpr std::uint16_t kBusdLayoutMajor = 1;
inline constexpr std::uint16_t kBusdLayoutMinor = 0;
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
  std::atomic<std::uint64_t> heartbeat_ns;   // stored by the member
  std::uint8_t reserved[48];
};
static_assert(sizeof(MemberSlot) == 64, "one member per cache line: bump kBusdLayoutMajor");
static_assert(offsetof(MemberSlot, heartbeat_ns) == 8, "bump kBusdLayoutMajor");

inline constexpr std::size_t kBusdControlOffset = 128;
inline constexpr std::size_t kMemberSlotsOffset = 192;
inline constexpr std::size_t kBusdSegmentSize = kMemberSlotsOffset + kMemberSlots * sizeof(MemberSlot);

}  // namespace shmbus
