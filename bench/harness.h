// Cross-process benchmark plumbing: a child process on its own CPU, shared scratch memory,
// percentiles. Every row of a run goes through the same code, so rows compare as ratios.
#pragma once

#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <csignal>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace shmbus::bench {

inline std::uint64_t now_ns() noexcept {
  return static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
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
