// A program outside shmbus's tree, as a user writes it: creates a bus of its own, a topic,
// produces, consumes as a group member (so busd has to be found and started), deletes the
// bus. tests/consumer/run.sh builds it three ways (find_package, add_subdirectory,
// pkg-config). Exits 0 only if every record came back.
#include <unistd.h>

#include <chrono>
#include <memory>
#include <cstdio>
#include <set>
#include <string>

#include <shmbus/bus.h>
#include <shmbus/consumer.h>
#include <shmbus/producer.h>

namespace {

int fail(const char* what, const shmbus::Error& e) {
  std::fprintf(stderr, "consumer: %s: %s (%s)\n", what, e.message.c_str(), shmbus::errc_name(e.code));
  return 1;
}

int run(const std::shared_ptr<shmbus::Bus>& bus) {
  constexpr int kRecords = 100;
  if (auto ok = bus->create_topic("orders", {.partitions = 2}); !ok) return fail("create_topic", ok.error());

  auto producer = shmbus::Producer::create(bus);
  if (!producer) return fail("Producer::create", producer.error());
  for (int i = 0; i < kRecords; ++i) {
    std::string key = "customer-", value = "order ";
    key.append(std::to_string(i));
    value.append(std::to_string(i));
    if (auto md = producer->send("orders", key, value); !md) return fail("send", md.error());
  }

  auto consumer = shmbus::Consumer::create(bus, {.auto_offset_reset = shmbus::OffsetReset::kEarliest});
  if (!consumer) return fail("Consumer::create", consumer.error());
  if (auto ok = consumer->subscribe({"orders"}, "billing"); !ok) return fail("subscribe (busd)", ok.error());
  std::set<std::string> seen;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (seen.size() < kRecords && std::chrono::steady_clock::now() < deadline) {
    auto records = consumer->poll(std::chrono::milliseconds(100));  // valid until the next poll
    if (!records) return fail("poll", records.error());
    for (const auto& r : *records) seen.insert(std::string(shmbus::as_string(r.value)));
  }
  if (auto ok = consumer->close(); !ok) return fail("close", ok.error());
  std::printf("consumer: %zu of %d records through group 'billing'\n", seen.size(), kRecords);
  return seen.size() == kRecords ? 0 : 1;
}

}  // namespace

int main() {
  std::string name = "consumer_check_";
  name.append(std::to_string(::getpid()));
  auto attached = shmbus::Bus::attach({.name = name});
  if (!attached) return fail("Bus::attach", attached.error());
  std::shared_ptr<shmbus::Bus> bus = std::move(*attached);
  const int rc = run(bus);
  bus.reset();
  // busd notices its bus is gone and exits; purge: no state directory left behind.
  if (auto ok = shmbus::Bus::destroy(name, /*purge_disk=*/true); !ok) return fail("Bus::destroy", ok.error());
  return rc;
}
