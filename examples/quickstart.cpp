// README.md's first snippet ("Using it") as a program: a producer and a consumer on the bus
// named by $SHMBUS_BUS. The lines between the README markers are what README.md shows, and
// tests/readme_snippets.sh checks that they agree; the test suite builds this with
// -Wall -Wextra -Werror, under ASan too, and runs it (exit 0: the record came back).
#include <chrono>
#include <cstdio>

// README:begin
#include <shmbus/bus.h>
#include <shmbus/producer.h>
#include <shmbus/consumer.h>

// README:end
int main() {
  // README:begin
  auto bus = shmbus::Bus::attach().value();                 // $SHMBUS_BUS, else the bus "default"
  bus->create_topic("orders", {.partitions = 4});           // once; AlreadyExists after

  auto producer = shmbus::Producer::create(bus).value();
  auto md = producer.send("orders", "customer-42", "{\"total\": 12}").value();  // key -> partition

  auto consumer = shmbus::Consumer::create(bus, {.auto_offset_reset = shmbus::OffsetReset::kEarliest}).value();
  consumer.assign({{"orders", md.partition}});
  auto batch = consumer.poll(std::chrono::milliseconds(100));  // records valid until the next poll
  for (const auto& r : batch.value())                          // (not poll(...).value(): a temporary)
    std::printf("%lu %.*s\n", r.offset, int(r.value.size()), (const char*)r.value.data());
  // README:end
  return batch && !batch->empty() ? 0 : 1;
}
