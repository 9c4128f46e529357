// The demo: producer processes and consumer processes on one topic, each consumer with its
// share of the partitions; every record carries the time it was meant to be sent and the
// time send() was called, so the consumers measure produce->consume latency at a fixed
// rate from both (from the intended time: no coordinated omission).
//
// Two cases, run one after the other and labelled: "spinning" (producers spin to each send
// time, consumers poll with WaitStrategy::kSpin: every process busy) and "sleeping"
// (producers sleep to each send time, consumers block in poll). When the spinning case has
// more processes than this process may use CPUs, the demo says so: they then share CPUs
// by time slices and its latencies include waiting for a slice.
//
//   shmbus_demo --bus B --topic T [--producers 2] [--consumers 2] [--rate 20000] [--seconds 3] [--mode both]
#include <sched.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cstring>
#include <iostream>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "harness.h"
#include "shmbus/bus.h"
#include "shmbus/consumer.h"
#include "shmbus/producer.h"

using namespace shmbus;
using namespace shmbus::bench;

namespace {

struct Stamp {
  std::uint64_t intended_ns;  // steady clock: when the schedule said to send
  std::uint64_t sent_ns;      // steady clock: when send() was called
  std::uint32_t producer;
  std::uint32_t seq;
};

enum class Mode { kSpin, kSleep };

struct Shared {
  std::atomic<int> consumers_ready{0};
  std::atomic<int> producers_done{0};
  std::atomic<std::uint64_t> produced{0};
};

std::shared_ptr<Bus> attach(const std::string& name) {
  BusOptions o;
  o.name = name;
  o.create = false;
  auto b = Bus::attach(o);
  if (!b) {
    std::cerr << "demo: " << b.error().message << "\n";
    std::exit(1);
  }
  return *b;
}

int produce(const std::string& bus, const std::string& topic, std::uint32_t id, double rate, double seconds, Mode mode,
            Shared* sh) {
  auto p = Producer::create(attach(bus));
  if (!p) return 1;
  const std::uint64_t n = static_cast<std::uint64_t>(rate * seconds);
  const double interval = 1e9 / rate;
  // Wake at the time asked, not up to the default 50 us timer slack later.
  if (mode == Mode::kSleep) ::prctl(PR_SET_TIMERSLACK, 1UL);
  const std::uint64_t start = now_ns() + 1'000'000;
  std::vector<std::byte> value(64);
  for (std::uint64_t i = 0; i < n; ++i) {
    const std::uint64_t at = start + static_cast<std::uint64_t>(static_cast<double>(i) * interval);
    if (mode == Mode::kSleep) {
      // now_ns() is CLOCK_MONOTONIC (steady_clock on Linux): sleep to the absolute time.
      const timespec ts{static_cast<time_t>(at / 1'000'000'000), static_cast<long>(at % 1'000'000'000)};
      while (::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) == EINTR) {
      }
    } else {
      while (now_ns() < at) __builtin_ia32_pause();
    }
    Stamp s{at, now_ns(), id, static_cast<std::uint32_t>(i)};
    std::memcpy(value.data(), &s, sizeof s);
    const std::string key = fmt::format("customer-{}", i % 1000);
    Message m{as_bytes(key), Bytes(value)};
    if (!p->send(topic, m)) return 1;
  }
  sh->produced.fetch_add(n);
  sh->producers_done.fetch_add(1);
  return 0;
}

int consume(const std::string& bus, const std::string& topic, const std::string& group, std::uint32_t index, Mode mode,
            Shared* sh, int producers) {
  auto b = attach(bus);
  ConsumerConfig cc;
  cc.auto_offset_reset = OffsetReset::kLatest;
  cc.client_name = fmt::format("{}-consumer-{}", group, index);
  cc.wait = mode == Mode::kSpin ? WaitStrategy::kSpin : WaitStrategy::kBlock;
  auto c = Consumer::create(b, cc);
  if (!c) return 1;
  // A consumer group: busd (started on demand) shares the partitions among the members.
  if (auto ok = c->subscribe({topic}, group); !ok) {
    std::cerr << "demo: subscribe: " << ok.error().message << "\n";
    return 1;
  }
  sh->consumers_ready.fetch_add(1);
  std::vector<std::uint64_t> lat, from_send;  // ns from the intended send time, from send()
  std::uint64_t idle_since = 0;
  for (;;) {
    auto batch = c->poll(std::chrono::milliseconds(20));
    if (!batch) return 1;
    const std::uint64_t now = now_ns();
    for (const auto& r : *batch) {
      Stamp s;
      std::memcpy(&s, r.value.data(), sizeof s);
      lat.push_back(now - s.intended_ns);
      from_send.push_back(now - s.sent_ns);
    }
    if (batch->empty()) {
      if (sh->producers_done.load() == producers) {
        if (!idle_since) idle_since = now;
        if (now - idle_since > 200'000'000) break;
      }
    } else {
      idle_since = 0;
    }
  }
  std::string parts;
  for (const auto& tp : c->assignment()) parts += (parts.empty() ? "" : ",") + std::to_string(tp.partition);
  (void)c->commit();
  const Percentiles p = percentiles(std::move(lat)), q = percentiles(std::move(from_send));
  std::cout << fmt::format("  consumer {} (pid {}, partitions {}): {} records\n"
                           "    from intended send time: p50 {:.1f} us, p90 {:.1f} us, p99 {:.1f} us, p99.9 {:.1f} us, max {:.1f} us\n"
                           "    from the send() call:    p50 {:.1f} us, p90 {:.1f} us, p99 {:.1f} us, p99.9 {:.1f} us, max {:.1f} us\n",
                           index, ::getpid(), parts, p.samples, p.p50 / 1e3, p.p90 / 1e3, p.p99 / 1e3, p.p999 / 1e3, p.max / 1e3,
                           q.p50 / 1e3, q.p90 / 1e3, q.p99 / 1e3, q.p999 / 1e3, q.max / 1e3)
            << std::flush;
  return 0;
}

// One case: consumers in `group` first, then producers, all in their own processes.
// Returns how many processes failed.
int run_case(const std::string& bus, const std::string& topic, const std::string& group, Mode mode, int producers,
             int consumers, double rate, double seconds) {
  auto* sh = shared_scratch<Shared>();
  const pid_t self = ::getpid();
  std::vector<pid_t> kids;
  std::cout << std::flush;  // or each child would print what is buffered here again
  for (int i = 0; i < consumers; ++i) {
    pid_t pid = ::fork();
    if (pid == 0) die_with_parent(self);
    if (pid == 0) ::_exit(consume(bus, topic, group, static_cast<std::uint32_t>(i), mode, sh, producers));
    kids.push_back(pid);
  }
  while (sh->consumers_ready.load() < consumers) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  const int cpus = ::sched_getaffinity(0, sizeof allowed, &allowed) == 0 ? CPU_COUNT(&allowed) : 1;
  const int procs = producers + consumers;
  if (mode == Mode::kSpin) {
    std::cout << fmt::format("-- spinning: producers spin to each send time, consumers poll spinning: {} busy processes on {} CPU{}\n",
                             procs, cpus, cpus == 1 ? "" : "s");
    if (procs > cpus)
      std::cout << fmt::format("   ({} busy processes > {} CPUs: they take turns on the CPUs, so these latencies include "
                               "waiting for a time slice; --producers 1 --consumers 1 on 2 CPUs measures without it)\n",
                               procs, cpus);
  } else {
    std::cout << fmt::format("-- sleeping: producers sleep to each send time, consumers block in poll: {} processes on {} CPU{}, "
                             "none busy while idle\n",
                             procs, cpus, cpus == 1 ? "" : "s");
  }
  std::cout << fmt::format("   {} producer process{} x {:.0f} records/s for {:.0f} s, keyed, 64-byte values; {} consumer "
                           "process{} in group '{}' share the partitions:\n",
                           producers, producers == 1 ? "" : "es", rate, seconds, consumers, consumers == 1 ? "" : "es", group)
            << "   (from the intended send time includes a producer's own lateness; from send() is the bus alone)\n"
            << std::flush;
  for (int i = 0; i < producers; ++i) {
    pid_t pid = ::fork();
    if (pid == 0) die_with_parent(self);
    if (pid == 0) ::_exit(produce(bus, topic, static_cast<std::uint32_t>(i), rate, seconds, mode, sh));
    kids.push_back(pid);
  }
  const int failed = wait_all(kids);
  std::cout << fmt::format("   produced {} records in all\n", sh->produced.load()) << std::flush;
  free_scratch(sh);
  return failed;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"shmbus_demo: producers and consumers in separate processes, latency at a fixed rate"};
  std::string bus, topic, mode = "both";
  int producers = 2, consumers = 2;
  double rate = 20000, seconds = 3;
  app.add_option("--bus", bus)->required();
  app.add_option("--topic", topic)->required();
  app.add_option("--producers", producers, "producer processes");
  app.add_option("--consumers", consumers, "consumer processes");
  app.add_option("--rate", rate, "records per second per producer");
  app.add_option("--seconds", seconds, "how long producers send, in each case");
  app.add_option("--mode", mode, "spin, sleep or both (default both, spinning first); groups demo-spin and demo")
      ->check(CLI::IsMember({"spin", "sleep", "both"}));
  CLI11_PARSE(app, argc, argv);
  int failed = 0;
  if (mode != "sleep") failed += run_case(bus, topic, "demo-spin", Mode::kSpin, producers, consumers, rate, seconds);
  if (mode != "spin") failed += run_case(bus, topic, "demo", Mode::kSleep, producers, consumers, rate, seconds);
  return failed ? 1 : 0;
}
