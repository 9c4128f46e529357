// README.md's disk-log snippet as a program: a topic that spills to disk, on the bus named
// by $SHMBUS_BUS (its files go to the bus's state dir: set SHMBUS_DIR to keep them out of
// yours). It then sends one record, which starts busd. tests/readme_snippets.sh checks the
// README text and runs this.
#include <shmbus/bus.h>
#include <shmbus/producer.h>

int main() {
  auto bus = shmbus::Bus::attach().value();
  // README:begin
  shmbus::TopicConfig audit{.partitions = 2, .retention = shmbus::RetentionMode::kBlock};
  audit.spill = {.enabled = true, .retention_bytes = 10ull << 30, .fsync = shmbus::FsyncPolicy::kAlways};
  bus->create_topic("audit", audit);                       // producers start busd if none runs
  // README:end
  auto producer = shmbus::Producer::create(bus).value();
  return producer.send("audit", "k", "v") && bus->describe_topic("audit") ? 0 : 1;
}
