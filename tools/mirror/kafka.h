// What both directions share of librdkafka: a handle made from a mirror's properties plus
// the ones the guarantees need, the far side's partition count and record limit, and the time.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include <librdkafka/rdkafka.h>

#include "shmbus/error.h"
#include "tools/mirror/config.h"

namespace shmbus::mirror {

// An rd_kafka_t that destroys itself.
struct KafkaHandle {
  rd_kafka_t* rk = nullptr;
  KafkaHandle() = default;
  explicit KafkaHandle(rd_kafka_t* h) : rk(h) {}
  KafkaHandle(const KafkaHandle&) = delete;
  KafkaHandle& operator=(const KafkaHandle&) = delete;
  ~KafkaHandle() {
    if (rk) rd_kafka_destroy(rk);
  }
};

// The mirror's properties, then `fixed` (what the guarantees need: they win), then
// `defaults` where the mirror's properties do not set them. `opaque` reaches the callbacks
// set by `setup`.
Result<rd_kafka_t*> make_kafka(const MirrorSpec& spec, rd_kafka_type_t type, const std::map<std::string, std::string>& fixed,
                               const std::map<std::string, std::string>& defaults, void* opaque,
                               void (*setup)(rd_kafka_conf_t*));

// The partition count of `topic` on the cluster (an error naming the topic if it is not there).
Result<std::uint32_t> kafka_partitions(rd_kafka_t* rk, const std::string& topic, std::chrono::milliseconds timeout);

// The Kafka topic's max.message.bytes (DescribeConfigs), or nothing when the cluster does not
// say within `timeout` (an old broker, a denying ACL, a cluster away).
std::optional<std::int64_t> kafka_max_message_bytes(rd_kafka_t* rk, const std::string& topic, std::chrono::milliseconds timeout);

// A property of a librdkafka handle as a number (message.max.bytes, ...); 0 if unset.
std::int64_t kafka_property(rd_kafka_t* rk, const char* name);

// Whether a refused record is the record's own fault (too large, invalid): the
// on_record_error setting decides; any other error fails the session.
bool is_record_error(rd_kafka_resp_err_t err) noexcept;

inline std::int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace shmbus::mirror
