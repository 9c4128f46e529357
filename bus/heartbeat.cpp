// The heartbeat thread of a group member (bus/heartbeat.h).
#include "bus/heartbeat.h"

#include "shm/process.h"

namespace shmbus {

void Heartbeat::beat(MemberSlot* slot, std::uint32_t lease) noexcept {
  // The lease check and the store are two steps: busd may hand the slot to a new member
  // between them, and that member then gets one beat of ours, which busd stored for it too
  // when it joined. What the check prevents is a lost member beating for a new one forever.
  if (slot && slot->lease.load(std::memory_order_acquire) == lease)  // SYNC POINT: busd's release bump at join
    slot->heartbeat_ns.store(shm::monotonic_ns(), std::memory_order_relaxed);
}

void Heartbeat::set(MemberSlot* slot, std::uint32_t lease, std::chrono::milliseconds interval) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    slot_ = slot;
    lease_ = lease;
    interval_ = interval;
    beat(slot_, lease_);
  }
  if (!thread_.joinable()) {
    stopping_ = false;
    owner_pid_ = shm::self_process().pid;
    thread_ = std::thread([this] { run(); });
  } else {
    cv_.notify_one();
  }
}

void Heartbeat::stop() {
  if (!thread_.joinable()) return;
  if (shm::self_process().pid != owner_pid_) {
    thread_.detach();  // a forked child: the thread is the parent's
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    slot_ = nullptr;
  }
  cv_.notify_one();
  thread_.join();
}

void Heartbeat::run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    cv_.wait_for(lock, interval_);
    if (!stopping_) beat(slot_, lease_);
  }
}

}  // namespace shmbus
