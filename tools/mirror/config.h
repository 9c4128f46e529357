// The mirror's configuration file (docs/mirror.md): which bus topics go out to which Kafka
// topics and which Kafka topics come in, with the librdkafka properties passed through.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "shmbus/error.h"
#include "shmbus/producer.h"

namespace shmbus::mirror {

enum class Direction { kOut, kIn };                     // out: bus -> Kafka; in: Kafka -> bus
enum class Partitioning { kAuto, kSame, kKey };         // auto: same when the counts match, else key
enum class OnRecordError { kStop, kSkip };              // a record the far side refuses (too large)

struct MirrorSpec {
  std::string name;
  Direction direction = Direction::kOut;
  std::string bus_topic;
  std::string kafka_topic;  // default: bus_topic
  Partitioning partitioning = Partitioning::kAuto;
  // librdkafka properties: the file's top-level "kafka" object, then this mirror's, then
  // "bootstrap.servers" from bootstrap_servers if given.
  std::map<std::string, std::string> kafka;
  std::string group;  // out: the bus group; in: Kafka's group.id. Default "mirror.<name>"
  OnRecordError on_record_error = OnRecordError::kStop;
  // A commit at least this often and every commit_records records (docs/mirror.md: the
  // duplicate window after a crash is bounded by both).
  std::chrono::milliseconds commit_interval{200};
  std::uint64_t commit_records = 10'000;
  std::optional<Acks> acks;             // in: default spilled when the bus topic spills with retention block
  std::optional<bool> hold_producers;   // out: default true for a block topic
};

struct MirrorConfig {
  std::string bus;  // empty: --bus, else SHMBUS_BUS, else "default"
  std::chrono::milliseconds status_interval{1000};
  std::vector<MirrorSpec> mirrors;
};

// Parses the JSON text of a configuration; `origin` (the file's name) starts every error,
// which names the field, e.g. "mirror.json: mirrors[1].direction: must be "out" or "in"".
// Unknown fields are refused (a misspelt one would otherwise be silently ignored), and so
// are librdkafka properties librdkafka does not know or refuses.
Result<MirrorConfig> parse_config(std::string_view text, const std::string& origin);
Result<MirrorConfig> load_config(const std::string& path);

const char* direction_name(Direction d) noexcept;

}  // namespace shmbus::mirror
