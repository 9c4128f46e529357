// The demo: producer processes and consumer processes on one topic, each consumer with its
// share of the partitions; every record carries the time it was meant to be sent, so the
// consumers measure produce->consume latency at a fixed rate (no coordinated omission).
//
//   shmbus_demo --bus B --topic T [--producers 2] [--consumers 2] [--rate 20000] [--seconds 3]
#include <sys/wait.h>
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
  std::uint32_t producer;
  std::uint32_t seq;
};

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

int produce(const std::string& bus, const std::string& topic, std::uint32_t id, double rate, double seconds, Shared* sh) {
  auto p = Producer::create(attach(bus));
  if (!p) return 1;
  const std::uint64_t n = static_cast<std::uint64_t>(rate * seconds);
  const double interval = 1e9 / rate;
  const std::uint64_t start = now_ns() + 1'000'000;
  std::vector<std::byte> value(64);
  for (std::uint64_t i = 0; i < n; ++i) {
    const std::uint64_t at = start + static_cast<std::uint64_t>(static_cast<double>(i) * interval);
    while (now_ns() < at) {
      if (at - now_ns() > 50'000) std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    Stamp s{at, id, static_cast<std::uint32_t>(i)};
    std::memcpy(value.data(), &s, sizeof s);
    const std::string key = fmt::format("customer-{}", i % 1000);
    Message m{as_bytes(key), Bytes(value)};
    if (!p->send(topic, m)) return 1;
  }
  sh->produced.fetch_add(n);
  sh->producers_done.fetch_add(1);
  return 0;
}

int consume(const std::string& bus, const std::string& topic, std::uint32_t index, Shared* sh, int producers) {
  auto b = attach(bus);
  ConsumerConfig cc;
  cc.auto_offset_reset = OffsetReset::kLatest;
  cc.client_name = fmt::format("demo-consumer-{}", index);
  auto c = Consumer::create(b, cc);
  if (!c) return 1;
  // A consumer group: busd (started on demand) shares the partitions among the members.
  if (auto ok = c->subscribe({topic}, "demo"); !ok) {
    std::cerr << "demo: subscribe: " << ok.error().message << "\n";
    return 1;
  }
  sh->consumers_ready.fetch_add(1);
  std::vector<std::uint64_t> lat;
  std::uint64_t idle_since = 0;
  for (;;) {
    auto batch = c->poll(std::chrono::milliseconds(20));
    if (!batch) return 1;
    const std::uint64_t now = now_ns();
    for (const auto& r : *batch) {
      Stamp s;
      std::memcpy(&s, r.value.data(), sizeof s);
      lat.push_back(now - s.intended_ns);
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
  const Percentiles p = percentiles(std::move(lat));
  std::cout << fmt::format("consumer {} (pid {}, partitions {}): {:>6} records  p50 {:>6.1f} us  p90 {:>6.1f}  p99 {:>7.1f}  "
                           "p99.9 {:>7.1f}  max {:>8.1f}\n",
                           index, ::getpid(), parts, p.samples, p.p50 / 1e3, p.p90 / 1e3, p.p99 / 1e3, p.p999 / 1e3,
                           p.max / 1e3)
            << std::flush;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"shmbus_demo: producers and consumers in separate processes, latency at a fixed rate"};
  std::string bus, topic;
  int producers = 2, consumers = 2;
  double rate = 20000, seconds = 3;
  app.add_option("--bus", bus)->required();
  app.add_option("--topic", topic)->required();
  app.add_option("--producers", producers, "producer processes");
  app.add_option("--consumers", consumers, "consumer processes");
  app.add_option("--rate", rate, "records per second per producer");
  app.add_option("--seconds", seconds, "how long producers send");
  CLI11_PARSE(app, argc, argv);
  auto* sh = shared_scratch<Shared>();
  const pid_t self = ::getpid();
  std::vector<pid_t> kids;
  for (int i = 0; i < consumers; ++i) {
    pid_t pid = ::fork();
    if (pid == 0) die_with_parent(self);
    if (pid == 0) ::_exit(consume(bus, topic, static_cast<std::uint32_t>(i), sh, producers));
    kids.push_back(pid);
  }
  while (sh->consumers_ready.load() < consumers) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  std::cout << fmt::format("{} producer processes x {:.0f} records/s for {:.0f} s, keyed, 64-byte values; "
                           "{} consumer processes in group 'demo' share the partitions; latency from the intended send time:\n",
                           producers, rate, seconds, consumers)
            << std::flush;
  for (int i = 0; i < producers; ++i) {
    pid_t pid = ::fork();
    if (pid == 0) die_with_parent(self);
    if (pid == 0) ::_exit(produce(bus, topic, static_cast<std::uint32_t>(i), rate, seconds, sh));
    kids.push_back(pid);
  }
  const int failed = wait_all(kids);
  std::cout << fmt::format("produced {} records in all\n", sh->produced.load());
  free_scratch(sh);
  return failed ? 1 : 0;
}
