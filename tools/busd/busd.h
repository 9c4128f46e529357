// busd: one per bus. Consumer groups (join, leave, revoke, assign), committed offsets,
// member liveness. Off the data path: producers and manually assigned consumers never
// talk to it. tools/busd/main.cpp only parses arguments and calls run_busd().
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "shmbus/error.h"

namespace shmbus {

struct BusdOptions {
  std::string bus;                       // empty: SHMBUS_BUS or "default"
  std::optional<std::string> group;      // share the bus (0660) with this Unix group
  int rebalance_timeout_ms = 5000;       // a member that does not give up revoked partitions
                                         // by then is evicted; only for members that sent no
                                         // max_poll_interval_ms (which is their own deadline)
  // Committed offsets of a group with no live member expire this long after it became
  // empty (Kafka's offsets.retention.minutes, 7 days); its gates are released with them.
  std::int64_t offsets_retention_ms = 7 * 24 * 3600 * 1000ll;
  bool quiet = false;
  // --existing: exit if the bus does not exist, never make it. How a group consumer starts
  // busd: a bus deleted under it must stay deleted.
  bool existing_only = false;
  // --metrics-listen HOST:PORT: serve Prometheus metrics there for this run (the listeners
  // file in the state dir, which `busctl metrics start` writes, is left as it is).
  std::optional<std::string> metrics_listen;
  // --kafka-listen HOST:PORT: the Kafka protocol gateway (docs/kafka.md) there for this run,
  // as --metrics-listen (`busctl kafka start` writes the listeners file).
  std::optional<std::string> kafka_listen;
  // --kafka-partitions N: the partitions of a topic the Kafka gateway creates without a count
  // (Metadata's auto-creation, CreateTopics with -1), as Kafka's num.partitions. 1..4096.
  std::uint32_t kafka_partitions = 1;
  bool allow_remote = false;  // listeners may bind addresses other than loopback
};

// Runs until SIGTERM/SIGINT. Fails at once (and changes nothing) when another busd holds
// the bus's lock, naming its pid and the lock file.
Status run_busd(const BusdOptions& options);

inline constexpr const char* kBusdVersion = "0.1.0";

}  // namespace shmbus
