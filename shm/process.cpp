#include "shm/process.h"

#include "shm/atomic128.h"

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <cpuid.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <x86intrin.h>

#include <atomic>
#include <mutex>
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

namespace {

// getpid() is a system call (glibc stopped caching it), far too slow for a send path: the
// identity is computed once and again in the child after fork().
ProcessId g_self;
std::atomic<bool> g_self_valid{false};

void invalidate_self() noexcept {
  g_self_valid.store(false, std::memory_order_relaxed);
  g_fork_generation.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace

const ProcessId& self_process() noexcept {
  if (!g_self_valid.load(std::memory_order_acquire)) {
    static std::once_flag atfork_once;
    std::call_once(atfork_once, [] { ::pthread_atfork(nullptr, nullptr, invalidate_self); });
    static std::mutex mu;
    std::lock_guard lock(mu);
    if (!g_self_valid.load(std::memory_order_relaxed)) {
      g_self.pid = ::getpid();
      g_self.start_ticks = process_start_ticks(g_self.pid);
      g_self_valid.store(true, std::memory_order_release);
    }
  }
  return g_self;
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

namespace {

// The re-anchoring half of fast_realtime_ns() (shm/process.h): the first anchor, and the
// rate and anchor moved every 10 ms.
struct TscState {
  std::uint64_t first_tsc = 0;
  std::int64_t first_ns = 0;
  std::mutex mu;
};

TscState& tsc_state() {
  static TscState s;
  return s;
}

bool invariant_tsc() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0x80000007, &a, &b, &c, &d)) return false;
  return (d & (1u << 8)) != 0;  // CPUID.80000007H:EDX[8], invariant TSC
}

}  // namespace

std::int64_t fast_realtime_ns_slow(std::uint64_t t) noexcept {
  static const bool ok = invariant_tsc();
  if (!ok) return realtime_ns();
  if (t == 0) t = __rdtsc();
  TscState& c = tsc_state();
  TscAnchor& anchor = g_tsc_anchor;
  // Re-anchor (one thread at a time; the others use the system clock meanwhile).
  std::unique_lock lock(c.mu, std::try_to_lock);
  const std::int64_t now = realtime_ns();
  if (!lock.owns_lock()) return now;
  const std::uint64_t t2 = __rdtsc();
  const std::uint64_t mid = t + (t2 - t) / 2;
  if (c.first_tsc == 0) {
    c.first_tsc = mid;
    c.first_ns = now;
    return now;
  }
  // Re-anchored by another thread less than 1 ms ago (our reading raced with it): keep it.
  // (We hold the mutex: nobody else writes the anchor now.)
  const std::uint32_t seq = anchor.seq.load(std::memory_order_relaxed);
  if (seq != 0 && now - anchor.ns.load(std::memory_order_relaxed) < 1'000'000) return now;
  if (mid > c.first_tsc && now - c.first_ns >= 1'000'000) {
    // The sequence lock's writer (TscAnchor): odd, the fields, even again (never 0, which
    // means not usable).
    anchor.seq.store(seq | 1, std::memory_order_relaxed);
    seqlock_write_fence();
    anchor.ns_per_tick.store(static_cast<double>(now - c.first_ns) / static_cast<double>(mid - c.first_tsc), std::memory_order_relaxed);
    anchor.tsc.store(mid, std::memory_order_relaxed);
    if (test_hooks::mid_reanchor) test_hooks::mid_reanchor();
    anchor.ns.store(now, std::memory_order_relaxed);
    anchor.seq.store((seq | 1) + 1 == 0 ? 2 : (seq | 1) + 1, std::memory_order_release);
  }
  return now;
}

namespace test_hooks {
void (*mid_reanchor)() = nullptr;
}

bool register_light_fence() noexcept {
  // Asked each time (a writer's open, not a send): it is idempotent, and a forked child
  // must not trust what its parent registered.
  const long cmds = ::syscall(SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
  if (cmds < 0 || !(cmds & MEMBARRIER_CMD_GLOBAL_EXPEDITED)) return false;
  return ::syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0, 0) == 0;
}

bool heavy_fence() noexcept { return ::syscall(SYS_membarrier, MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0, 0) == 0; }

bool plain_store128_is_atomic() noexcept {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
  char vendor[13] = {};
  std::memcpy(vendor, &b, 4);
  std::memcpy(vendor + 4, &d, 4);
  std::memcpy(vendor + 8, &c, 4);
  // Only these vendors document the guarantee.
  if (std::strcmp(vendor, "GenuineIntel") != 0 && std::strcmp(vendor, "AuthenticAMD") != 0 &&
      std::strcmp(vendor, "HygonGenuine") != 0)
    return false;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  return (c & (1u << 28)) != 0;  // CPUID.01H:ECX[28], AVX
}

const bool g_plain_store128 = plain_store128_is_atomic();

}  // namespace shmbus::shm
