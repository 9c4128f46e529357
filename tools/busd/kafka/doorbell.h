// Wakes the Kafka listener's loop when records arrive on a partition a parked Fetch waits on:
// a thread asleep on the rings' futexes (a shmbus Consumer's poll) rings an eventfd in epoll.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <utility>

#include "shmbus/bus.h"
#include "shmbus/error.h"

namespace shmbus::kafka {

class Doorbell {
 public:
  // (topic, its creation's epoch, partition) -> the first offset a parked Fetch could not
  // read: the bell rings once a record at or past it can be read (committed, not merely
  // claimed). A topic made again under its name is a new key: its partitions are assigned
  // again (the old rings are closed).
  using Watch = std::map<std::tuple<std::string, std::uint64_t, std::uint32_t>, std::uint64_t>;

  static Result<std::unique_ptr<Doorbell>> open(std::shared_ptr<Bus> bus);
  ~Doorbell();  // stops the thread (within one poll slice) and joins it
  Doorbell(const Doorbell&) = delete;
  Doorbell& operator=(const Doorbell&) = delete;

  int fd() const noexcept { return fd_; }
  // The loop thread: what to wait for now (empty: nothing). A new watch re-arms the bell
  // after it rang; the same one does not (the loop looked, and the stops did not move: what
  // rang is nothing the loop can read yet).
  void watch(Watch w);
  // The loop thread: reads the eventfd; the bell stays quiet until the next watch().
  void heard();
  // The loop thread, around serving a connection whose Produce may append to a watched
  // partition (it then looks at the parked requests itself, in the same turn): the bell
  // stays quiet from hold() until release() or the next watch(). release() says whether a
  // record came meanwhile, which the loop must then look at.
  void hold();
  bool release();
  std::uint64_t rings() const;  // how often it rang (tests)

  static constexpr std::int64_t kSliceNs = 10'000'000;  // a new watch is taken up within this

 private:
  Doorbell(std::shared_ptr<Bus> bus, int fd);
  void run();

  std::shared_ptr<Bus> bus_;
  int fd_ = -1;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  Watch want_;
  std::uint64_t generation_ = 0;  // of want_
  bool rung_ = false;             // rang: quiet until a different watch()
  bool held_ = false;             // hold() until release() or watch()
  bool skipped_ = false;          // a record came while held
  bool stop_ = false;
  std::uint64_t rings_ = 0;
  std::thread thread_;
};

}  // namespace shmbus::kafka
