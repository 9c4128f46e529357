// Bytes only: busd's segment, shmbus.<bus>~busd. Group members read it in their poll loop,
// so a new assignment is noticed without a system call. Behaviour: busd.cpp, consumer.cpp.
//
//   0       SegmentHeader (128 B)
//   128     BusdControl (64 B)
//   192     MemberSlot[kMemberSlots], 64 B each (one cache line per member)
//   16576   GroupNameSlot[kGroupNameSlots], 256 B each (minor 1): who a durable gate is
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
//
// Durable gates in a partition (shm/ring_layout.h GateSlot) carry only a key, the hash of
// their group's name. busd publishes each group it keeps offsets for in a GroupNameSlot, so
// that a producer held back by a gate, and busctl doctor, can name the group, say whether it
// has live members (and their pids) and since when it has none (bus/gate_names.h).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace shmbus {

inline constexpr std::uint16_t kBusdLayoutMajor = 1;
// Minor 1: the group name table. Minor 2: MemberSlot's `polls` and `lease`, in what were
// reserved bytes: a busd of an older minor ignores them, and busd checks `polls` only for
// members that said their max poll interval.
inline constexpr std::uint16_t kBusdLayoutMinor = 2;
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

inline constexpr std::uint32_t kGroupNameSlots = 256;
inline constexpr std::uint32_t kGroupNamePids = 4;

// Written by busd only, under a seqlock: `seq` is odd while it writes; a reader copies the
// slot and keeps the copy when `seq` was even and unchanged around it.
struct alignas(64) GroupNameSlot {
  std::atomic<std::uint32_t> seq;
  std::atomic<std::uint32_t> members;             // live members now
  std::atomic<std::uint64_t> key;                 // GateSlot::owner_key of its gates; 0: free slot
  std::atomic<std::int64_t> empty_since_ns;       // CLOCK_REALTIME: since when it has no member
  std::atomic<std::int32_t> pids[kGroupNamePids];  // the first members' pids
  std::atomic<std::uint32_t> name_len;
  std::uint32_t reserved;
  char name[208];
};
static_assert(sizeof(GroupNameSlot) == 256, "bump kBusdLayoutMajor");
static_assert(offsetof(GroupNameSlot, name) == 48, "bump kBusdLayoutMajor");

inline constexpr std::size_t kBusdControlOffset = 128;
inline constexpr std::size_t kMemberSlotsOffset = 192;
inline constexpr std::size_t kGroupNamesOffset = kMemberSlotsOffset + kMemberSlots * sizeof(MemberSlot);
inline constexpr std::size_t kBusdSegmentSize = kGroupNamesOffset + kGroupNameSlots * sizeof(GroupNameSlot);
static_assert(kGroupNamesOffset == 16576, "bump kBusdLayoutMajor");

}  // namespace shmbus
