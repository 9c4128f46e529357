// Statistics of producers and consumers (ProducerConfig::statistics_cb, ConsumerConfig::
// statistics_cb): plain counters kept by the object itself, and the JSON in the shape of
// librdkafka's STATISTICS.md handed to the callback from the object's own calls once the
// interval has passed. No thread, no atomics: a producer or consumer has one thread at a
// time. Internal; the fields are listed in include/shmbus/producer.h and consumer.h.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "shmbus/error.h"
#include "shmbus/record.h"

namespace shmbus {

class Topic;
namespace shm { class RingWriter; }

namespace stats {

using Callback = std::function<void(const std::string& json)>;

// librdkafka's RD_KAFKA_OFFSET_INVALID: an offset that is not known.
inline constexpr std::int64_t kInvalidOffset = -1001;

// Refuses an interval below 0, or one above 0 without a callback, naming the config.
Status check(const char* config, std::chrono::milliseconds interval, const Callback& cb);

// The report's schedule and its common top-level fields (name, client_id, type, ts, time, age).
class Reporter {
 public:
  Reporter(const char* type, std::chrono::milliseconds interval, Callback cb, std::string client_id);
  // True once the interval has passed since the last report (or the start).
  bool due();
  // Hands `body`, with the common fields added, to the callback. An exception the callback
  // throws is swallowed: it is called from noexcept sends.
  void emit(nlohmann::json body);

 private:
  const char* type_;
  std::string name_, client_id_;
  std::uint64_t interval_ns_, created_ns_, next_ns_;
  Callback cb_;
};

// The bytes of a record's key, headers (as stored: with their lengths) and value; a
// consumer counts the same for what it receives.
std::uint64_t payload_bytes(const Message& m) noexcept;

struct PartitionCounters {
  std::uint64_t msgs = 0, bytes = 0, aborted = 0, waits = 0, lost = 0;
};

class ProducerStats {
 public:
  ProducerStats(std::chrono::milliseconds interval, Callback cb)
      : reporter_("producer", interval, std::move(cb), std::string()) {}
  // After a send to partition `p` of `topic` through `w`.
  void sent(const std::shared_ptr<Topic>& topic, std::uint32_t p, std::span<const Message> messages,
            const shm::RingWriter& w);
  void sent(const std::shared_ptr<Topic>& topic, std::uint32_t p, std::uint64_t records, std::uint64_t bytes,
            const shm::RingWriter& w);
  // A claim of ours found aborted by others (commit failed), or a reservation given up.
  void aborted(const std::shared_ptr<Topic>& topic, std::uint32_t p, std::uint64_t records);
  // Reports if due.
  void tick();

 private:
  struct TopicEntry {
    std::shared_ptr<Topic> topic;
    std::vector<PartitionCounters> parts;
  };
  TopicEntry& entry(const std::shared_ptr<Topic>& topic);
  Reporter reporter_;
  std::map<std::string, TopicEntry> topics_;
  std::uint64_t txmsgs_ = 0, txbytes_ = 0, aborted_ = 0;
};

// The consumer's counters; the report, which reads the consumer's partitions, is
// Consumer::Impl::statistics_tick() (bus/consumer_stats.cpp).
struct ConsumerStats {
  ConsumerStats(std::chrono::milliseconds interval, Callback cb, std::string client_id)
      : reporter("consumer", interval, std::move(cb), std::move(client_id)) {}
  // The records a poll returns.
  void received(std::span<const ConsumedRecord> batch);
  PartitionCounters& part(const TopicPartition& tp) { return parts[tp]; }

  Reporter reporter;
  std::map<TopicPartition, PartitionCounters> parts;  // every partition ever assigned
  std::uint64_t rxmsgs = 0, rxbytes = 0, lost = 0, aborted = 0, waits = 0;
  std::uint64_t generation = 0, rebalances = 0;  // group generations seen
};

}  // namespace stats
}  // namespace shmbus
