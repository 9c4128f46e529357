// Cross-process futex calls on 32-bit words in shared memory (never FUTEX_PRIVATE).
#pragma once

#include <atomic>
#include <cstdint>
#include <span>

namespace shmbus::shm {

// Sleeps while *word == expected, at most timeout_ns (< 0: no limit). Returns false on timeout.
bool futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected, std::int64_t timeout_ns) noexcept;

// Wakes every waiter on `word`; returns how many were asleep on it.
int futex_wake_all(std::atomic<std::uint32_t>* word) noexcept;

struct FutexWaitItem {
  std::atomic<std::uint32_t>* word;
  std::uint32_t expected;
};

// Sleeps until any word differs from its expected value (futex_waitv, Linux >= 5.16), or the
// timeout. On older kernels it waits on the first word with a short timeout, so a wake on
// another word is seen within a millisecond.
bool futex_wait_any(std::span<const FutexWaitItem> items, std::int64_t timeout_ns) noexcept;

}  // namespace shmbus::shm
