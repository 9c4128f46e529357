// Bytes only: the header every shmbus shared-memory segment starts with.
//
//   0               8       12      16              24      28      32
//   +---------------+-------+-------+---------------+-------+-------+
//   | magic         |version| kind  | size          | pid   |hdr_sz |
//   +---------------+-------+-------+---------------+-------+-------+
//   32              40              48                            128
//   +---------------+---------------+-------------------------------+
//   | epoch         | created_ns    | reserved (zero)               |
//   +---------------+---------------+-------------------------------+
//
// `version` = major << 16 | minor, stored last with release order by the creator; 0 means
// "not initialised yet". An attacher refuses another major, or a segment whose file is
// smaller than `size`. Bump kSegmentHeaderMajor on any change to this struct.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace shmbus::shm {

inline constexpr std::uint64_t kSegmentMagic = 0x3130'5355'424d'4853ull;  // "SHMBUS01" little-endian
inline constexpr std::uint16_t kSegmentHeaderMajor = 1;

enum class SegmentKind : std::uint32_t {
  kRegistry = 1,
  kPartition = 2,
  kBusd = 3,  // busd's member notices (bus/busd_layout.h)
};

struct SegmentHeader {
  std::uint64_t magic;
  std::atomic<std::uint32_t> version;  // release-stored last by the creator; attach acquires it
  std::uint32_t kind;                  // SegmentKind
  std::uint64_t size;                  // bytes of the whole segment, header included
  std::int32_t creator_pid;
  std::uint32_t header_size;           // sizeof(SegmentHeader) as the creator knew it
  std::uint64_t epoch;                 // random, nonzero: tells re-creations of one name apart
  std::int64_t created_ns;             // CLOCK_REALTIME
  std::uint8_t reserved[80];
};

static_assert(std::atomic<std::uint32_t>::is_always_lock_free, "shared atomics must be lock-free");
static_assert(std::is_standard_layout_v<SegmentHeader>, "segment header is shared between processes and compilers");
static_assert(sizeof(SegmentHeader) == 128, "segment header is two cache lines: bump kSegmentHeaderMajor if it changes");
static_assert(offsetof(SegmentHeader, version) == 8, "bump kSegmentHeaderMajor");
static_assert(offsetof(SegmentHeader, kind) == 12, "bump kSegmentHeaderMajor");
static_assert(offsetof(SegmentHeader, size) == 16, "bump kSegmentHeaderMajor");
static_assert(offsetof(SegmentHeader, creator_pid) == 24, "bump kSegmentHeaderMajor");
static_assert(offsetof(SegmentHeader, header_size) == 28, "bump kSegmentHeaderMajor");
static_assert(offsetof(SegmentHeader, epoch) == 32, "bump kSegmentHeaderMajor");
static_assert(offsetof(SegmentHeader, created_ns) == 40, "bump kSegmentHeaderMajor");

constexpr std::uint32_t make_version(std::uint16_t major, std::uint16_t minor) {
  return (static_cast<std::uint32_t>(major) << 16) | minor;
}

}  // namespace shmbus::shm
