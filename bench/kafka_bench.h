// shmbus_bench kafka: busd's Kafka listener measured with librdkafka, and the mirror, beside
// the native Producer and Consumer, on a bus with a busd of the run's own.
#pragma once

#include <cstdint>
#include <string>

namespace shmbus::bench {

struct KafkaBenchOptions {
  std::uint64_t records = 200'000;  // each throughput row
  std::uint64_t pings = 20'000;     // measured samples of each latency row
  double rate = 5000;               // latency rows: values sent per second
  bool json = false;
};

// Creates `bus`, starts a busd for it listening for Kafka on a free loopback port, runs every
// row, prints one table (or JSON), then stops that busd and removes the bus's segments,
// state dir and runtime dir. Returns the exit status: 1 when a row failed (its numbers are
// not printed).
int run_kafka_bench(const KafkaBenchOptions& o, const std::string& bus);

}  // namespace shmbus::bench
