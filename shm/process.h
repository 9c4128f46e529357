// Process identity that survives pid reuse: (pid, start time in clock ticks since boot).
// A writer or gate owner is "provably dead" only when its pid is gone or the process now
// carrying that pid started at another time.
#pragma once

#include <atomic>
#include <cstdint>
#include <sys/types.h>

namespace shmbus::shm {

struct ProcessId {
  std::int32_t pid = 0;
  std::uint64_t start_ticks = 0;
};

// This process, computed once.
const ProcessId& self_process() noexcept;

// Moves in every forked child (the atfork handler self_process() registers): an object that
// noted it when made, after a first self_process(), is still in the process that made it
// while the two are equal. One load, for the hot paths that must refuse a forked child.
inline std::atomic<std::uint32_t> g_fork_generation{0};
inline std::uint32_t fork_generation() noexcept { return g_fork_generation.load(std::memory_order_relaxed); }

// Start time of `pid` from /proc/<pid>/stat (field 22), 0 if there is no such process.
std::uint64_t process_start_ticks(pid_t pid) noexcept;

// True unless the owner is provably dead. Slow (reads /proc): never on a hot path.
bool process_alive(std::int32_t pid, std::uint64_t start_ticks) noexcept;

// Monotonic nanoseconds (CLOCK_MONOTONIC) and wall-clock nanoseconds (CLOCK_REALTIME).
std::uint64_t monotonic_ns() noexcept;
std::int64_t realtime_ns() noexcept;

// The load-load barrier of a seqlock read (the ring's, docs/ring.md, and the clock anchor's
// below): orders the racy reads before the check that validates them. GCC's TSan cannot
// model thread fences (-Wtsan); on x86 an acquire fence is only a compiler barrier, which is
// what TSan builds get instead, and the reads it orders are atomic or hidden from TSan
// (SHMBUS_RACY, ring.h).
inline void seqlock_read_fence() noexcept {
#if defined(__SANITIZE_THREAD__)
  std::atomic_signal_fence(std::memory_order_acquire);
#else
  std::atomic_thread_fence(std::memory_order_acquire);
#endif
}

// The store-store barrier of a seqlock write: the odd sequence number before the bytes it
// guards. A release fence; TSan builds get a compiler barrier, as above (x86 keeps stores in
// order).
inline void seqlock_write_fence() noexcept {
#if defined(__SANITIZE_THREAD__)
  std::atomic_signal_fence(std::memory_order_release);
#else
  std::atomic_thread_fence(std::memory_order_release);
#endif
}

// CLOCK_REALTIME from the TSC, for record timestamps on the send path: about 12 ns instead
// of about 28 for the vDSO here. It re-anchors to clock_gettime every 10 ms and refines the
// TSC rate from the first anchor, so it follows NTP within a microsecond; until two anchors
// 1 ms apart exist (and on machines without an invariant TSC) it is realtime_ns() itself.
// Inline: the anchor's reading here, the re-anchoring in fast_realtime_ns_slow().
// The anchor is a sequence lock: a thread that re-anchors makes `seq` odd, stores the
// fields, then makes it even again; a reader that saw `seq` odd or changed takes the slow
// path. A reader in another thread could otherwise pair one anchor's TSC with another's
// time, and stamp a record up to the anchors' distance (10 ms and more) off.
struct TscAnchor {
  std::atomic<std::uint32_t> seq{0};  // 0: not usable (no invariant TSC, or before two anchors); odd: being re-anchored
  std::atomic<std::uint64_t> tsc{0};
  std::atomic<std::int64_t> ns{0};
  std::atomic<double> ns_per_tick{0};
};
inline TscAnchor g_tsc_anchor;
// `tsc`: the TSC as read by the caller, 0: not read (the TSC is read only once it is known
// to be invariant: never where it is not, or where a process made rdtsc fault).
std::int64_t fast_realtime_ns_slow(std::uint64_t tsc) noexcept;
[[gnu::always_inline]] inline std::int64_t fast_realtime_ns() noexcept {
  const std::uint32_t seq = g_tsc_anchor.seq.load(std::memory_order_acquire);
  if (seq != 0) [[likely]] {
    const std::uint64_t t = __builtin_ia32_rdtsc();
    const std::uint64_t at = g_tsc_anchor.tsc.load(std::memory_order_relaxed);
    const double since = static_cast<double>(t - at) * g_tsc_anchor.ns_per_tick.load(std::memory_order_relaxed);
    const std::int64_t base = g_tsc_anchor.ns.load(std::memory_order_relaxed);
    seqlock_read_fence();
    if (t >= at && since < 10e6 && g_tsc_anchor.seq.load(std::memory_order_relaxed) == seq && (seq & 1) == 0) [[likely]]
      return base + static_cast<std::int64_t>(since);
    return fast_realtime_ns_slow(t);
  }
  return fast_realtime_ns_slow(0);
}
namespace test_hooks {
extern void (*mid_reanchor)();  // fast_realtime_ns_slow() is storing a new anchor (seq odd)
}

// The asymmetric fence between processes (membarrier(2), MEMBARRIER_CMD_GLOBAL_EXPEDITED):
// a process that registers pays nothing on its fast path, and a heavy_fence() in another
// process acts as a full barrier on every CPU running a registered one. Registration is once
// per process; false where the kernel or a seccomp filter refuses it.
bool register_light_fence() noexcept;
// False when the call failed: the caller cannot rely on it.
bool heavy_fence() noexcept;

}  // namespace shmbus::shm
