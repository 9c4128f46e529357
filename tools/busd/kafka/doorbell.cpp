// The Kafka listener's doorbell (doorbell.h): a thread asleep in a Consumer's poll on the
// partitions parked Fetches wait on, ringing an eventfd when a record comes.
#include "tools/busd/kafka/doorbell.h"

#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <vector>

#include <fmt/format.h>

#include "shmbus/consumer.h"

namespace shmbus::kafka {

Result<std::unique_ptr<Doorbell>> Doorbell::open(std::shared_ptr<Bus> bus) {
  const int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) return make_error(Errc::kSystem, fmt::format("eventfd: {}", std::strerror(errno)));
  return std::unique_ptr<Doorbell>(new Doorbell(std::move(bus), fd));
}

Doorbell::Doorbell(std::shared_ptr<Bus> bus, int fd) : bus_(std::move(bus)), fd_(fd) {
  thread_ = std::thread([this] { run(); });
}

Doorbell::~Doorbell() {
  {
    std::lock_guard l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
  ::close(fd_);
}

void Doorbell::watch(Watch w) {
  {
    std::lock_guard l(mu_);
    // The same watch after a ring: the loop looked and can read nothing more at those stops
    // (a run of aborted claims longer than its reader steps over at a look): the bell stays
    // quiet, or it would ring again at once, in a loop. The loop's timer looks on.
    if (w != want_) {
      want_ = std::move(w);
      ++generation_;
      rung_ = false;
    }
    held_ = skipped_ = false;
  }
  cv_.notify_all();
}

void Doorbell::hold() {
  std::lock_guard l(mu_);
  held_ = true;
}

bool Doorbell::release() {
  std::lock_guard l(mu_);
  held_ = false;
  return std::exchange(skipped_, false);
}

void Doorbell::heard() {
  std::uint64_t n;
  (void)!::read(fd_, &n, sizeof n);
}

std::uint64_t Doorbell::rings() const {
  std::lock_guard l(mu_);
  return rings_;
}

void Doorbell::run() {
  // A record the gateway appended wakes us on the loop thread's CPU before the loop has
  // answered the Fetch itself: as SCHED_BATCH we never preempt it on wake-up (we run when
  // it sleeps, or on another CPU), and find the watch changed or held (no ring).
  const sched_param batch{};
  (void)pthread_setschedparam(pthread_self(), SCHED_BATCH, &batch);
  ConsumerConfig cc;
  cc.wait = WaitStrategy::kBlock;
  cc.spin = std::chrono::nanoseconds(0);  // asleep on the futexes at once: busd must not spin
  cc.max_poll_records = 1;
  cc.enable_auto_commit = false;
  std::optional<Consumer> consumer;
  std::uint64_t have = 0;  // the generation taken
  Watch watch;
  std::vector<Watch::key_type> assigned;
  for (;;) {
    {
      std::unique_lock l(mu_);
      cv_.wait(l, [&] { return stop_ || (!rung_ && !want_.empty()); });
      if (stop_) return;
      watch = want_;
      have = generation_;
    }
    if (!consumer) {
      auto c = Consumer::create(bus_, cc);
      if (!c) return;  // the bus is gone: the loop's timer still serves parked requests
      consumer.emplace(std::move(*c));
    }
    // Start each partition where the loop could read no further: a record there rings. The
    // partitions are assigned again only when they changed, a topic's epoch included (offsets
    // move far more often).
    std::vector<Watch::key_type> keys;
    std::vector<TopicPartition> tps;
    for (const auto& [key, from] : watch) {
      keys.push_back(key);
      tps.push_back({std::get<0>(key), std::get<2>(key)});
    }
    bool armed = true;
    if (keys != assigned) {
      armed = consumer->assign(tps).has_value();
      assigned = armed ? keys : std::vector<Watch::key_type>{};
    }
    for (std::size_t i = 0; i < tps.size(); ++i) armed = armed && consumer->seek(tps[i], watch.at(keys[i])).has_value();
    if (!armed) {  // a topic deleted meanwhile: wait for the next watch
      std::unique_lock l(mu_);
      cv_.wait_for(l, std::chrono::nanoseconds(kSliceNs), [&] { return stop_ || generation_ != have; });
      continue;
    }
    for (;;) {
      auto got = consumer->poll(std::chrono::nanoseconds(kSliceNs));
      std::lock_guard l(mu_);
      if (stop_ || generation_ != have) break;
      if (got && got->empty()) continue;  // the slice passed with nothing new
      if (got && held_) {  // the loop looks after serving its connection (release)
        skipped_ = true;
        continue;
      }
      // A record past the end seen, or an error (a lap, a deleted topic): the loop looks.
      rung_ = true;
      ++rings_;
      const std::uint64_t one = 1;
      (void)!::write(fd_, &one, sizeof one);
      break;
    }
  }
}

}  // namespace shmbus::kafka
