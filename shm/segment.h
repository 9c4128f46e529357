// A named shared-memory segment: created whole or not at all, validated on attach.
//
// Creation maps a private temporary name, checks the room in /dev/shm (posix_fallocate, so
// a full tmpfs is an error now and never a SIGBUS later), initialises the contents, publishes
// the header's version, and only then links the file under its real name. An attacher
// therefore never sees a half-made segment; a creator that dies leaves only a temporary file
// whose name carries its pid (busctl doctor removes those).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shmbus/error.h"
#include "shm/segment_layout.h"

namespace shmbus::shm {

// Where POSIX shared memory lives on Linux; shm_open(name) is this directory's file `name`.
inline constexpr const char* kShmDir = "/dev/shm";

struct SegmentSpec {
  std::string name;              // file name under /dev/shm, no '/'
  SegmentKind kind;
  std::uint16_t major;           // layout version of what follows the header
  std::uint16_t minor;
  std::size_t size;              // whole segment, header included
  unsigned mode = 0600;          // 0660 when the bus is shared with a group
  std::optional<unsigned> gid;   // group owner when shared
  bool replace = false;          // replace an existing file of that name atomically
};

class Segment {
 public:
  Segment() = default;
  Segment(Segment&&) noexcept;
  Segment& operator=(Segment&&) noexcept;
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;
  ~Segment();

  // `init` fills the bytes after the header while the segment is still private.
  static Result<Segment> create(const SegmentSpec& spec, const std::function<void(std::byte*)>& init);

  // Maps an existing segment and validates its header. `writable` false maps read-only.
  static Result<Segment> open(const std::string& name, SegmentKind kind, std::uint16_t major, bool writable);

  static bool exists(const std::string& name);
  static Status remove(const std::string& name);
  static std::string path_of(const std::string& name);
  // Free bytes in /dev/shm.
  static std::uint64_t shm_free_bytes();

  std::byte* data() const noexcept { return base_; }
  std::size_t size() const noexcept { return size_; }
  const std::string& name() const noexcept { return name_; }
  bool writable() const noexcept { return writable_; }
  const SegmentHeader& header() const noexcept { return *reinterpret_cast<const SegmentHeader*>(base_); }
  std::uint16_t minor() const noexcept { return static_cast<std::uint16_t>(header().version.load(std::memory_order_acquire)); }
  int fd() const noexcept { return fd_; }
  // Closes the descriptor; the mapping stays. For segments that need no flock or fstat
  // later (partitions): a topic of 1024 partitions must not cost 1024 descriptors.
  void drop_fd() noexcept;

  template <class T>
  T* at(std::size_t offset) const noexcept { return reinterpret_cast<T*>(base_ + offset); }

 private:
  void reset() noexcept;

  std::string name_;
  std::byte* base_ = nullptr;
  std::size_t size_ = 0;
  int fd_ = -1;
  bool writable_ = false;
};

// Validates a header already in memory: returns what is wrong, naming `name`.
Status validate_header(const std::string& name, const SegmentHeader& h, std::size_t file_size, SegmentKind kind,
                       std::uint16_t major);

std::uint64_t random_u64() noexcept;

}  // namespace shmbus::shm
