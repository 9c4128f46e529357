#include "shm/futex.h"

#include <cerrno>
#include <climits>
#include <ctime>
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

namespace shmbus::shm {
namespace {

static_assert(std::atomic<std::uint32_t>::is_always_lock_free, "futex words must be plain 32-bit words");
static_assert(sizeof(std::atomic<std::uint32_t>) == 4, "futex words must be plain 32-bit words");

timespec to_timespec(std::int64_t ns) {
  return timespec{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
}

}  // namespace

bool futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected, std::int64_t timeout_ns) noexcept {
  timespec ts = to_timespec(std::max<std::int64_t>(timeout_ns, 0));
  long rc = ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT, expected,
                      timeout_ns < 0 ? nullptr : &ts, nullptr, 0);
  return !(rc != 0 && errno == ETIMEDOUT);
}

int futex_wake_all(std::atomic<std::uint32_t>* word) noexcept {
  const long n = ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
  return n > 0 ? static_cast<int>(n) : 0;
}

bool futex_wait_any(std::span<const FutexWaitItem> items, std::int64_t timeout_ns) noexcept {
  if (items.empty()) return false;
  if (items.size() == 1) return futex_wait(items[0].word, items[0].expected, timeout_ns);
#ifdef SYS_futex_waitv
  static std::atomic<bool> unsupported{false};
  if (!unsupported.load(std::memory_order_relaxed) && items.size() <= FUTEX_WAITV_MAX) {
    futex_waitv vec[FUTEX_WAITV_MAX] = {};
    for (std::size_t i = 0; i < items.size(); ++i) {
      vec[i].val = items[i].expected;
      vec[i].uaddr = reinterpret_cast<std::uintptr_t>(items[i].word);
      vec[i].flags = FUTEX_32;
    }
    // futex_waitv takes an absolute CLOCK_MONOTONIC deadline.
    timespec deadline{};
    if (timeout_ns >= 0) {
      ::clock_gettime(CLOCK_MONOTONIC, &deadline);
      std::int64_t ns = deadline.tv_nsec + timeout_ns;
      deadline.tv_sec += static_cast<time_t>(ns / 1'000'000'000);
      deadline.tv_nsec = static_cast<long>(ns % 1'000'000'000);
    }
    long rc = ::syscall(SYS_futex_waitv, vec, static_cast<unsigned>(items.size()), 0u,
                        timeout_ns < 0 ? nullptr : &deadline, CLOCK_MONOTONIC);
    if (rc >= 0) return true;
    if (errno == ETIMEDOUT) return false;
    if (errno != ENOSYS) return true;  // EAGAIN: a word already changed; EINTR: caller rechecks
    unsupported.store(true, std::memory_order_relaxed);
  }
#endif
  const std::int64_t slice = 1'000'000;
  return futex_wait(items[0].word, items[0].expected, timeout_ns < 0 ? slice : std::min(timeout_ns, slice));
}

}  // namespace shmbus::shm
