// Open-file-description locks on segment bytes, and closing them in forked children.
#include "shm/ofd_lock.h"

#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>
#include <unordered_set>

#include <fmt/format.h>

namespace shmbus::shm {

namespace test_hooks {
void (*after_lock_fd_open)() = nullptr;
}

struct SegmentLock::Fd {
  int fd = -1;
  ~Fd();
};

namespace {

// Every descriptor a SegmentLock holds, so that a forked child can close its copies.
struct Registry {
  std::mutex mu;
  std::unordered_set<SegmentLock::Fd*>* fds = nullptr;  // leaked on purpose: used at exit and in atfork
};

Registry& registry() {
  static Registry r;
  return r;
}

void before_fork() noexcept { registry().mu.lock(); }
void after_fork_parent() noexcept { registry().mu.unlock(); }

}  // namespace

// The child's copies share the parent's open file descriptions: closing them drops only the
// child's references, and the parent's locks stay as they are.
void close_lock_fds_in_child() noexcept;

namespace {
void after_fork_child() noexcept { close_lock_fds_in_child(); }

// The registry, with the fork handlers installed. Its lock is held while a descriptor is
// opened and registered, and while one is unregistered and closed: fork() takes it first
// (before_fork), so a fork in another thread never copies a descriptor that is open but not
// registered. The child would keep that description, and every lock taken on it later,
// alive: a parent dead inside a claim would look alive, its slot never free again.
Registry& registry_for_fds() {
  static std::once_flag once;
  std::call_once(once, [] { ::pthread_atfork(before_fork, after_fork_parent, after_fork_child); });
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  if (!r.fds) r.fds = new std::unordered_set<SegmentLock::Fd*>();
  return r;
}
}  // namespace

void close_lock_fds_in_child() noexcept {
  Registry& r = registry();
  if (r.fds)
    for (SegmentLock::Fd* f : *r.fds) {
      if (f->fd >= 0) ::close(f->fd);
      f->fd = -1;
    }
  r.mu.unlock();
}

SegmentLock::Fd::~Fd() {
  Registry& r = registry();
  std::lock_guard lock(r.mu);  // closed under it too: see registry_for_fds()
  if (r.fds) r.fds->erase(this);
  if (fd >= 0) ::close(fd);
}

SegmentLock::SegmentLock(SegmentLock&&) noexcept = default;
SegmentLock& SegmentLock::operator=(SegmentLock&&) noexcept = default;
SegmentLock::~SegmentLock() = default;

Result<SegmentLock> SegmentLock::open(const Segment& seg) {
  const std::string path = Segment::path_of(seg.name());
  SegmentLock l;
  l.fd_ = std::make_shared<Fd>();
  int err = 0;
  bool same = false;
  {
    Registry& r = registry_for_fds();
    std::lock_guard lock(r.mu);  // until registered: see registry_for_fds()
    const int fd = ::open(path.c_str(), (seg.writable() ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
      err = errno;
    } else {
      if (test_hooks::after_lock_fd_open) test_hooks::after_lock_fd_open();
      // Same file as the mapping? The epoch is random per creation of the name.
      SegmentHeader h{};
      same = ::pread(fd, static_cast<void*>(&h), sizeof h, 0) == static_cast<ssize_t>(sizeof h) &&
             h.epoch == seg.header().epoch;
      if (same) {
        l.fd_->fd = fd;
        r.fds->insert(l.fd_.get());
      } else {
        ::close(fd);
      }
    }
  }
  if (err != 0)
    return make_error(err == ENOENT ? Errc::kTopicDeleted : Errc::kSystem,
                      fmt::format("{}: cannot open for locks: {}", path, std::strerror(err)));
  if (!same) return make_error(Errc::kTopicDeleted, fmt::format("{} was removed and made again since it was mapped", path));
  return l;
}

bool SegmentLock::valid() const noexcept { return fd_ && fd_->fd >= 0; }

namespace {
struct flock byte_lock(short type, std::size_t byte) {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = static_cast<off_t>(byte);
  fl.l_len = 1;
  fl.l_pid = 0;  // must be 0 for OFD locks
  return fl;
}
}  // namespace

bool SegmentLock::try_lock(std::size_t byte) noexcept {
  if (!valid()) return false;
  // Exclusive: only a write lock excludes other holders, and it needs a descriptor opened
  // for writing (a read-only attacher takes no slot).
  struct flock fl = byte_lock(F_WRLCK, byte);
  return ::fcntl(fd_->fd, F_OFD_SETLK, &fl) == 0;
}

bool SegmentLock::try_lock_shared(std::size_t byte) noexcept {
  if (!valid()) return false;
  struct flock fl = byte_lock(F_RDLCK, byte);
  return ::fcntl(fd_->fd, F_OFD_SETLK, &fl) == 0;
}

void SegmentLock::unlock(std::size_t byte) noexcept {
  if (!valid()) return;
  struct flock fl = byte_lock(F_UNLCK, byte);
  (void)::fcntl(fd_->fd, F_OFD_SETLK, &fl);
}

bool SegmentLock::held_exclusively_by_other(std::size_t byte) const noexcept {
  if (!valid()) return false;
  struct flock fl = byte_lock(F_RDLCK, byte);  // conflicts with write locks only
  if (::fcntl(fd_->fd, F_OFD_GETLK, &fl) != 0) return false;
  return fl.l_type == F_WRLCK;
}

bool SegmentLock::held_by_other(std::size_t byte) const noexcept {
  if (!valid()) return true;
  struct flock fl = byte_lock(F_WRLCK, byte);
  if (::fcntl(fd_->fd, F_OFD_GETLK, &fl) != 0) return true;
  return fl.l_type != F_UNLCK;
}

}  // namespace shmbus::shm
