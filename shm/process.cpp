#include "shm/process.h"

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <unistd.h>

namespace shmbus::shm {

std::uint64_t process_start_ticks(pid_t pid) noexcept {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(pid));
  int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[1024];
  ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return 0;
  buf[n] = '\0';
  // The command name (field 2) may hold spaces and ')': fields resume after the last ')'.
  const char* p = std::strrchr(buf, ')');
  if (!p) return 0;
  ++p;
  // Field 3 is the state: a zombie (Z) or dead (X) process holds nothing any more.
  if (p[0] == ' ' && (p[1] == 'Z' || p[1] == 'X')) return 0;
  // Fields 3..22 follow; start time is field 22, i.e. the 20th after ')'.
  for (int field = 3; field < 22; ++field) {
    p = std::strchr(p + 1, ' ');
    if (!p) return 0;
  }
  return std::strtoull(p + 1, nullptr, 10);
}

const ProcessId& self_process() noexcept {
  // Recomputed after fork: the cached pid is compared with getpid().
  thread_local ProcessId cached;
  const pid_t now = ::getpid();
  if (cached.pid != now) {
    cached.pid = now;
    cached.start_ticks = process_start_ticks(now);
  }
  return cached;
}

bool process_alive(std::int32_t pid, std::uint64_t start_ticks) noexcept {
  if (pid <= 0) return false;
  if (::kill(pid, 0) != 0 && errno == ESRCH) return false;
  const std::uint64_t now = process_start_ticks(pid);
  if (now == 0) return false;  // gone between the two checks, or a zombie reaped
  return start_ticks == 0 || now == start_ticks;
}

std::uint64_t monotonic_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

std::int64_t realtime_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000ll + ts.tv_nsec;
}

}  // namespace shmbus::shm
