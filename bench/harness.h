// Cross-process benchmark plumbing: a child process on its own CPU, shared scratch memory,
// percentiles. Every row of a run goes through the same code, so rows compare as ratios.
#pragma once

#include <sched.h>
#include <x86intrin.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <csignal>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace shmbus::bench {

inline std::uint64_t now_ns() noexcept {
  return static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
}

// The time-stamp counter as the samples' clock. steady_clock costs 22-29 ns a read on the
// VMs we measure on, inside every sample; an lfence-ordered rdtsc costs less, and what it
// does cost is measured once (TscClock::overhead_ticks) and taken off every sample. The
// counter is invariant (constant_tsc, nonstop_tsc) and shared by all CPUs, so a stamp taken
// in one process compares with one taken in another.
//
// tsc_begin: the lfence before keeps earlier loads from running after the read, the one
// after keeps the measured code from starting before it. tsc_end: rdtscp waits for every
// earlier instruction; the lfence after keeps later code from running before it.
inline std::uint64_t tsc_begin() noexcept {
  _mm_lfence();
  const std::uint64_t t = __rdtsc();
  _mm_lfence();
  return t;
}
inline std::uint64_t tsc_end() noexcept {
  unsigned aux;
  const std::uint64_t t = __rdtscp(&aux);
  _mm_lfence();
  return t;
}

struct TscClock {
  double ns_per_tick = 1;
  std::uint64_t overhead_ticks = 0;  // median of tsc_end() - tsc_begin() with nothing between

  std::uint64_t ticks(double ns) const noexcept { return static_cast<std::uint64_t>(ns / ns_per_tick); }
  // ns in a sample of `t` ticks, the clock's own cost taken off (never below 0).
  double sample_ns(std::uint64_t t) const noexcept {
    return t > overhead_ticks ? static_cast<double>(t - overhead_ticks) * ns_per_tick : 0.0;
  }

  // Against steady_clock over ~50 ms of spinning (rate to ~1e-4), then the read cost.
  static TscClock calibrate() {
    using clk = std::chrono::steady_clock;
    TscClock c;
    const auto s0 = clk::now();
    const std::uint64_t t0 = tsc_begin();
    while (clk::now() - s0 < std::chrono::milliseconds(50)) {
    }
    const std::uint64_t t1 = tsc_end();
    const auto s1 = clk::now();
    c.ns_per_tick = static_cast<double>(std::chrono::duration_cast<std::chrono::nanoseconds>(s1 - s0).count()) /
                    static_cast<double>(t1 - t0);
    std::vector<std::uint64_t> cost(20'001);
    for (auto& x : cost) {
      const std::uint64_t a = tsc_begin();
      x = tsc_end() - a;
    }
    std::nth_element(cost.begin(), cost.begin() + cost.size() / 2, cost.end());
    c.overhead_ticks = cost[cost.size() / 2];
    return c;
  }
};

// Calibrated once by main() before any process is forked; the children inherit it.
inline TscClock g_tsc;

// What every consumer of every row does with what it receives: reads each byte once. Not a
// hash worth the name; a sum of rotated 8-byte words that a dropped, stale or torn payload
// changes, cheap enough (about a cycle a word) not to hide the transport's cost.
inline std::uint64_t checksum(const std::byte* p, std::size_t n) noexcept {
  std::uint64_t h = n;
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, p + i, 8);
    h = ((h << 5) | (h >> 59)) + w;
  }
  for (; i < n; ++i) h = ((h << 5) | (h >> 59)) + static_cast<std::uint64_t>(p[i]);
  return h;
}

// The payload of message i of a ping-pong: its index in the first 8 bytes (so a stale or
// repeated message checks wrong), a fixed pattern after. size >= 8.
inline void fill_payload(std::byte* p, std::size_t size, std::uint64_t i) noexcept {
  std::memcpy(p, &i, 8);
  for (std::size_t k = 8; k < size; ++k) p[k] = static_cast<std::byte>(0x5a ^ k);
}

// Message i's index into a payload filled by fill_payload: all the sender writes per message.
inline void stamp_payload(std::byte* p, std::uint64_t i) noexcept { std::memcpy(p, &i, 8); }

// The checksums of payloads [0, n) summed: what each side of a ping-pong must have read.
inline std::uint64_t expected_checksum(std::size_t size, std::uint64_t n) {
  std::vector<std::byte> buf(size);
  fill_payload(buf.data(), size, 0);
  std::uint64_t sum = 0;
  for (std::uint64_t i = 0; i < n; ++i) {
    stamp_payload(buf.data(), i);
    sum += checksum(buf.data(), size);
  }
  return sum;
}

// Pins the calling process to `cpu`; a negative cpu lets it run on every online CPU again.
inline void pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (cpu >= 0) {
    CPU_SET(cpu, &set);
  } else {
    const long n = ::sysconf(_SC_NPROCESSORS_ONLN);
    for (long c = 0; c < n && c < CPU_SETSIZE; ++c) CPU_SET(static_cast<int>(c), &set);
  }
  (void)sched_setaffinity(0, sizeof set, &set);
}

// Anonymous shared memory that survives fork(): for barriers and results, not the data path.
template <class T>
T* shared_scratch() {
  void* p = ::mmap(nullptr, sizeof(T), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  return new (p) T{};
}
template <class T>
void free_scratch(T* p) {
  p->~T();
  ::munmap(p, sizeof(T));
}

// In a forked child: die when the parent dies (Ctrl-C, kill -9), whatever the child is
// doing, so a benchmark never leaves a process spinning behind it.
inline void die_with_parent(pid_t parent) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(1);  // it died before the line above
}

// The child of the pair now running, for a Ctrl-C handler to take down with us.
inline std::atomic<pid_t> g_running_child{0};

// Runs `child` in a forked process pinned to cpu_b while `parent` runs here pinned to
// cpu_a; returns the child's exit status. The child never returns into the caller.
inline int run_pair(int cpu_a, int cpu_b, const std::function<void()>& parent, const std::function<int()>& child) {
  const pid_t parent_pid = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {
    die_with_parent(parent_pid);
    pin(cpu_b);
    ::_exit(child());
  }
  g_running_child.store(pid);
  pin(cpu_a);
  parent();
  int status = 0;
  ::waitpid(pid, &status, 0);
  g_running_child.store(0);
  pin(-1);
  return status;
}

// Reads or writes all of n bytes (a stream socket or a pipe may move fewer at a time).
inline bool full(int fd, char* p, std::size_t n, bool rd) {
  while (n) {
    const ssize_t k = rd ? ::read(fd, p, n) : ::write(fd, p, n);
    if (k <= 0) return false;
    p += k;
    n -= static_cast<std::size_t>(k);
  }
  return true;
}

// The busd a run started itself (shmbus_bench kafka), for a Ctrl-C handler to take down.
inline std::atomic<pid_t> g_started_busd{0};

// Waits for every process; returns how many did not exit with status 0.
inline int wait_all(const std::vector<pid_t>& pids) {
  int failed = 0;
  for (pid_t p : pids) {
    int st = 0;
    ::waitpid(p, &st, 0);
    failed += !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  }
  return failed;
}

struct Percentiles {
  std::uint64_t samples = 0;
  double p50 = 0, p90 = 0, p99 = 0, p999 = 0, p9999 = 0, max = 0, mean = 0;
};

inline Percentiles percentiles(std::vector<std::uint64_t> v) {
  Percentiles p;
  if (v.empty()) return p;
  std::sort(v.begin(), v.end());
  auto at = [&](double q) { return static_cast<double>(v[std::min(v.size() - 1, static_cast<std::size_t>(q * static_cast<double>(v.size())))]); };
  p.samples = v.size();
  p.p50 = at(0.50);
  p.p90 = at(0.90);
  p.p99 = at(0.99);
  p.p999 = at(0.999);
  p.p9999 = at(0.9999);
  p.max = static_cast<double>(v.back());
  double sum = 0;
  for (auto x : v) sum += static_cast<double>(x);
  p.mean = sum / static_cast<double>(v.size());
  return p;
}

}  // namespace shmbus::bench
