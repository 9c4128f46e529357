// What a session of either direction shares: its mirror, the bus, the status it reports,
// how it ends (stopped, halted, failed), its counters and its commit cadence.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include <fmt/format.h>
#include <librdkafka/rdkafka.h>

#include "tools/mirror/mirror.h"

namespace shmbus::mirror {

class Session {
 public:
  Session(const MirrorSpec& spec, std::shared_ptr<Bus> bus, Live& live, const std::atomic<bool>& stop)
      : spec_(spec), bus_(std::move(bus)), live_(live), stop_(stop) {}

  // Counters of earlier sessions of the same mirror, so that the status counts from start.
  void carry(const MirrorStatus& s) {
    base_records_ = s.records;
    base_skipped_ = s.skipped;
    base_lost_ = s.lost;
  }

  // librdkafka's error callback; `opaque` is the Session. A fatal error ends the session.
  static void on_error(rd_kafka_t* rk, int err, const char* reason, void* opaque) {
    auto* self = static_cast<Session*>(opaque);
    self->live_.error(fmt::format("Kafka: {}", reason));
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
      char why[512];
      rd_kafka_fatal_error(rk, why, sizeof why);
      self->failure_ = Error{Errc::kSystem, fmt::format("librdkafka failed for good: {}", why)};
    }
  }

 protected:
  Result<Outcome> halt(const std::string& why) {
    live_.error(why);
    return Outcome::kHalted;
  }

  bool running() const { return !stop_.load(std::memory_order_relaxed) && !failure_ && !halted_; }

  // A commit is due every commit_interval and every commit_records records.
  bool commit_due() {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_commit_ < spec_.commit_interval && delivered_ - delivered_at_commit_ < spec_.commit_records) return false;
    last_commit_ = now;
    delivered_at_commit_ = delivered_;
    return true;
  }

  bool report_due() {
    const auto now = std::chrono::steady_clock::now();
    if (now - last_report_ < std::chrono::milliseconds(100)) return false;
    last_report_ = now;
    return true;
  }

  Result<Outcome> outcome() const {
    if (failure_) return tl::unexpected(*failure_);
    return halted_ ? Outcome::kHalted : Outcome::kStopped;
  }

  const MirrorSpec& spec_;
  std::shared_ptr<Bus> bus_;
  Live& live_;
  const std::atomic<bool>& stop_;
  std::optional<Error> failure_;
  bool halted_ = false;
  std::uint64_t delivered_ = 0, skipped_ = 0, delivered_at_commit_ = 0;
  std::uint64_t base_records_ = 0, base_skipped_ = 0, base_lost_ = 0;
  std::chrono::steady_clock::time_point last_commit_ = std::chrono::steady_clock::now(), last_report_ = last_commit_;
};

// Runs one session of `S` (OutSession, InSession), counting on from the earlier ones.
template <class S>
Result<Outcome> run_session(const MirrorSpec& spec, const std::shared_ptr<Bus>& bus, Live& live, const std::atomic<bool>& stop) {
  S s(spec, bus, live, stop);
  {
    std::lock_guard lock(live.mu);
    s.carry(live.status);
  }
  return s.run();
}

}  // namespace shmbus::mirror
