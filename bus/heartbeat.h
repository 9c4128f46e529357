// A group member's heartbeat, from a thread of its own (Kafka's heartbeat thread): a
// consumer busy between two poll() calls stays in its group for as long as its process
// runs, and busd evicts it only when the process hangs or stops (session timeout).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

#include "bus/busd_layout.h"

namespace shmbus {

// Thread safety: every method is called by the consumer's thread; the heartbeat thread
// touches nothing but the atomics of the slot it was given, under `mu_`. The consumer's
// thread changes or clears the slot (set()) before it unmaps the slot's segment, and stop()
// joins the thread: so the thread never stores into a mapping that is gone.
class Heartbeat {
 public:
  Heartbeat() = default;
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;
  ~Heartbeat() { stop(); }

  // Beats into `slot` (nullptr: none) while its lease is `lease`; starts the thread the
  // first time. A beat is stored at once.
  void set(MemberSlot* slot, std::uint32_t lease, std::chrono::milliseconds interval);
  // Stops and joins the thread. In a forked child, which has no copy of the thread, it only
  // forgets it.
  void stop();

  // One beat into `slot` if `lease` still holds it. Called by the thread, and by join().
  static void beat(MemberSlot* slot, std::uint32_t lease) noexcept;

 private:
  void run();
  std::mutex mu_;
  std::condition_variable cv_;
  MemberSlot* slot_ = nullptr;
  std::uint32_t lease_ = 0;
  std::chrono::milliseconds interval_{3000};
  bool stopping_ = false;
  std::thread thread_;
  std::int32_t owner_pid_ = 0;  // the process that started the thread
};

}  // namespace shmbus
