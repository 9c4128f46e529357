// Liveness held by the kernel: open-file-description locks (fcntl F_OFD_SETLK) on single
// bytes of a shared-memory segment's file. A lock belongs to the open file description that
// took it and is dropped when the last descriptor of it closes, so a process that dies, of
// any cause, releases what it held; pid reuse, zombie leaders and pid namespaces do not
// matter. The shared state each byte guards is described in ring_layout.h.
//
// Thread safety: a SegmentLock may be used by one thread at a time. Descriptors are closed in
// the child after fork(): a child never inherits its parent's ownership (a forked child
// holding the description would keep a dead parent's slots "alive").
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "shmbus/error.h"
#include "shm/segment.h"

namespace shmbus::shm {

// Hook for a test that forks at the exact step (nullptr in production): the descriptor is
// open, not yet registered for closing in forked children.
namespace test_hooks {
extern void (*after_lock_fd_open)();
}

class SegmentLock {
 public:
  SegmentLock() = default;
  SegmentLock(SegmentLock&&) noexcept;
  SegmentLock& operator=(SegmentLock&&) noexcept;
  SegmentLock(const SegmentLock&) = delete;
  SegmentLock& operator=(const SegmentLock&) = delete;
  ~SegmentLock();

  // A new open file description of `seg`'s file. Refuses a file that is no longer the mapped
  // segment (the topic was deleted and made again under the same name).
  static Result<SegmentLock> open(const Segment& seg);

  bool valid() const noexcept;
  // Takes the lock on `byte` without waiting. False when another description holds it (or
  // this one was closed by fork()).
  [[nodiscard]] bool try_lock(std::size_t byte) noexcept;
  // A shared (read) lock: any number of descriptors may hold one; it excludes try_lock().
  // Needs only a readable descriptor.
  [[nodiscard]] bool try_lock_shared(std::size_t byte) noexcept;
  void unlock(std::size_t byte) noexcept;
  // True when a description other than this one holds a lock on `byte`. A failed test
  // answers true: a lock we cannot see is treated as held (the safe side).
  bool held_by_other(std::size_t byte) const noexcept;
  // True when a description other than this one holds the exclusive lock on `byte` (a
  // shared lock does not count). A failed test answers false.
  bool held_exclusively_by_other(std::size_t byte) const noexcept;

  struct Fd;  // a registered descriptor (closed in forked children)

 private:
  std::shared_ptr<Fd> fd_;
};

}  // namespace shmbus::shm
