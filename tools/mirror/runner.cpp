// Runs the configured mirrors, one thread each, restarting failed sessions with a growing
// pause, and writes their status files (tools/mirror/mirror.h).
#include <unistd.h>

#include <algorithm>
#include <ostream>
#include <thread>

#include <fmt/format.h>

#include "tools/mirror/kafka.h"
#include "tools/mirror/mirror.h"

namespace shmbus::mirror {

void Live::error(const std::string& message) {
  std::lock_guard lock(mu);
  status.last_error = message;
  status.last_error_ms = now_ms();
}

void Live::set_state(const char* state) {
  std::lock_guard lock(mu);
  status.state = state;
}

namespace {

// Sleeps up to `d`, waking early when asked to stop.
void pause_unless_stopped(std::chrono::milliseconds d, const std::atomic<bool>& stop) {
  const auto until = std::chrono::steady_clock::now() + d;
  while (!stop.load(std::memory_order_relaxed) && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
}

void run_one(const MirrorSpec& spec, const std::shared_ptr<Bus>& bus, Live& live, const std::atomic<bool>& stop,
             std::mutex& log_mu, std::ostream& log) {
  auto say = [&](const std::string& line) {
    std::lock_guard lock(log_mu);
    log << "mirror " << spec.name << ": " << line << std::endl;
  };
  std::chrono::milliseconds backoff{500};
  while (!stop.load(std::memory_order_relaxed)) {
    live.set_state("starting");
    const auto started = std::chrono::steady_clock::now();
    auto r = spec.direction == Direction::kOut ? run_out_session(spec, bus, live, stop) : run_in_session(spec, bus, live, stop);
    if (r && *r == Outcome::kStopped) break;
    if (r) {  // halted: stays stopped, its status says why
      live.set_state("stopped");
      {
        std::lock_guard lock(live.mu);
        say("stopped: " + live.status.last_error);
      }
      while (!stop.load(std::memory_order_relaxed)) pause_unless_stopped(std::chrono::seconds(1), stop);
      return;
    }
    if (std::chrono::steady_clock::now() - started > std::chrono::seconds(30)) backoff = std::chrono::milliseconds(500);
    live.error(r.error().message);
    live.set_state("retrying");
    say(fmt::format("{} (again in {} ms, from the last commit)", r.error().message, backoff.count()));
    pause_unless_stopped(backoff, stop);
    backoff = std::min<std::chrono::milliseconds>(backoff * 2, std::chrono::seconds(30));
  }
  live.set_state("stopped");
}

}  // namespace

Status run_mirrors(const MirrorConfig& cfg, const std::string& bus_name, const std::function<bool()>& should_stop,
                   std::ostream& log) {
  BusOptions o;
  o.name = bus_name;
  auto bus = Bus::attach(o);
  if (!bus) return tl::unexpected(bus.error());
  const std::string name = (*bus)->name();

  std::vector<std::unique_ptr<Live>> lives;
  for (const auto& m : cfg.mirrors) {
    auto l = std::make_unique<Live>();
    l->status.name = m.name;
    l->status.direction = direction_name(m.direction);
    l->status.bus_topic = m.bus_topic;
    l->status.kafka_topic = m.kafka_topic;
    l->status.pid = ::getpid();
    l->status.interval_ms = cfg.status_interval.count();
    lives.push_back(std::move(l));
  }
  std::atomic<bool> stop{false};
  std::mutex log_mu;
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < cfg.mirrors.size(); ++i)
    threads.emplace_back(run_one, std::cref(cfg.mirrors[i]), std::cref(*bus), std::ref(*lives[i]), std::cref(stop),
                         std::ref(log_mu), std::ref(log));
  {
    std::lock_guard lock(log_mu);
    log << fmt::format("mirror: running {} mirror(s) on bus {} (pid {})", cfg.mirrors.size(), name, ::getpid()) << std::endl;
  }

  std::vector<std::uint64_t> last_records(lives.size(), 0);
  auto last_write = std::chrono::steady_clock::now() - cfg.status_interval;
  auto publish = [&](bool final_write) {
    const auto now = std::chrono::steady_clock::now();
    const double secs = std::chrono::duration<double>(now - last_write).count();
    last_write = now;
    for (std::size_t i = 0; i < lives.size(); ++i) {
      MirrorStatus s;
      {
        std::lock_guard lock(lives[i]->mu);
        s = lives[i]->status;
      }
      s.records_per_s = secs > 0 && s.records >= last_records[i] ? static_cast<double>(s.records - last_records[i]) / secs : 0;
      last_records[i] = s.records;
      s.updated_ms = now_ms();
      if (final_write) s.state = "stopped";
      if (auto st = write_status(name, s); !st) {
        std::lock_guard lock(log_mu);
        log << "mirror: status: " << st.error().message << std::endl;
      }
    }
  };
  while (!should_stop()) {
    if (std::chrono::steady_clock::now() - last_write >= cfg.status_interval) publish(false);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  stop.store(true, std::memory_order_relaxed);
  for (auto& t : threads) t.join();
  publish(true);
  {
    std::lock_guard lock(log_mu);
    log << "mirror: stopped" << std::endl;
  }
  return {};
}

}  // namespace shmbus::mirror
