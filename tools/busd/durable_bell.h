// busd's spiller telling busd's loop that a durable offset moved (a partition's spill_end or
// synced_end) or that a partition's spilling stopped: an eventfd in the loop's epoll, written
// only while the loop wants it (a Kafka Produce with acks=all parked until its records are on
// disk, docs/kafka.md). Without it such a Produce waits for the loop's 2 ms timer.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "shmbus/error.h"

namespace shmbus::daemon {

class DurableBell {
 public:
  static Result<std::unique_ptr<DurableBell>> open();
  ~DurableBell();
  DurableBell(const DurableBell&) = delete;
  DurableBell& operator=(const DurableBell&) = delete;

  int fd() const noexcept { return fd_; }
  // The loop thread: from want(true) to want(false), ring() writes the eventfd. want(true)
  // writes it once itself, so that a publish just before it is looked at too.
  void want(bool on) noexcept;
  // Any thread (the spiller's): after it published a durable offset or stopped a partition.
  void ring() noexcept;
  // The loop thread: reads the eventfd.
  void heard() noexcept;
  // How often ring() wrote (busctl status: listeners.kafka.acks_all_wakeups).
  std::uint64_t rings() const noexcept { return rings_.load(std::memory_order_relaxed); }

 private:
  explicit DurableBell(int fd) : fd_(fd) {}
  void write_one() noexcept;

  int fd_ = -1;
  std::atomic<std::uint32_t> wanted_{0};  // a word, for ring()'s fetch_add
  std::atomic<std::uint64_t> rings_{0};
};

}  // namespace shmbus::daemon
