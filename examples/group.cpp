// README.md's consumer-group snippet as a program: a member of group "billing" on the bus
// named by $SHMBUS_BUS, which starts busd. It sends one record first, so that it runs alone;
// `running` and `handle` are what the README leaves to the reader: here the loop ends at the
// first record handled, or after 10 s (exit 1). tests/readme_snippets.sh checks the README
// text and runs this.
#include <chrono>
#include <cstdio>

#include <shmbus/bus.h>
#include <shmbus/consumer.h>
#include <shmbus/producer.h>

namespace {

int handled = 0;

void handle(const shmbus::ConsumedRecord& r) {
  std::printf("%.*s/%u@%lu\n", int(r.topic.size()), r.topic.data(), r.partition, r.offset);
  ++handled;
}

struct Running {
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  explicit operator bool() const { return handled == 0 && std::chrono::steady_clock::now() < deadline; }
} running;

}  // namespace

int main() {
  auto bus = shmbus::Bus::attach().value();
  (void)bus->create_topic("orders", {.partitions = 4});
  auto producer = shmbus::Producer::create(bus).value();
  if (!producer.send("orders", "customer-7", "{\"total\": 3}")) return 1;

  // README:begin
  auto member = shmbus::Consumer::create(bus, {.auto_offset_reset = shmbus::OffsetReset::kEarliest}).value();
  member.subscribe({"orders"}, "billing");                  // busd assigns partitions
  while (running)
    if (auto batch = member.poll(std::chrono::milliseconds(100)); batch)
      for (const auto& r : *batch) handle(r);
  member.close();                                           // commits, leaves the group
  // README:end
  return handled > 0 ? 0 : 1;
}
