// Statistics of producers and consumers: the schedule, the common fields and the producer's
// report (bus/statistics.h). The consumer's report is in bus/consumer_stats.cpp.
#include "bus/statistics.h"

#include <atomic>
#include <fstream>

#include <fmt/format.h>

#include "bus/topic.h"
#include "shm/process.h"
#include "shm/ring.h"

namespace shmbus::stats {

namespace {

using json = nlohmann::json;

std::string process_name() {
  std::ifstream comm("/proc/self/comm");  // as ps shows it
  std::string name;
  std::getline(comm, name);
  return name;
}

}  // namespace

Status check(const char* config, std::chrono::milliseconds interval, const Callback& cb) {
  if (interval.count() < 0)
    return make_error(Errc::kInvalidArgument, fmt::format("{}.statistics_interval is {} ms: 0 (off) or more", config, interval.count()));
  if (interval.count() > 0 && !cb)
    return make_error(Errc::kInvalidArgument,
                      fmt::format("{}.statistics_interval is {} ms but statistics_cb is not set", config, interval.count()));
  return {};
}

Reporter::Reporter(const char* type, std::chrono::milliseconds interval, Callback cb, std::string client_id)
    : type_(type),
      client_id_(client_id.empty() ? process_name() : std::move(client_id)),
      interval_ns_(static_cast<std::uint64_t>(interval.count()) * 1'000'000),
      created_ns_(shm::monotonic_ns()),
      next_ns_(created_ns_ + interval_ns_),
      cb_(std::move(cb)) {
  // librdkafka's handle names: rdkafka#producer-1, one sequence per process.
  static std::atomic<std::uint64_t> seq{0};
  name_ = fmt::format("shmbus#{}-{}", type_, seq.fetch_add(1, std::memory_order_relaxed) + 1);
}

bool Reporter::due() {
  const std::uint64_t now = shm::monotonic_ns();
  if (now < next_ns_) return false;
  // The next one an interval from now: a producer idle for an hour reports once, not 3600 times.
  next_ns_ = now + interval_ns_;
  return true;
}

void Reporter::emit(json body) {
  const std::uint64_t now = shm::monotonic_ns();
  body["name"] = name_;
  body["client_id"] = client_id_;
  body["type"] = type_;
  body["ts"] = now / 1000;                                  // monotonic clock, microseconds
  body["time"] = shm::realtime_ns() / 1'000'000'000;         // wall clock, seconds
  body["age"] = (now - created_ns_) / 1000;                  // since the producer or consumer was made, microseconds
  try {
    cb_(body.dump());
  } catch (...) {
    // Documented: the callback must not throw. Sends are noexcept; its exception ends here.
  }
}

std::uint64_t payload_bytes(const Message& m) noexcept {
  std::uint64_t n = m.value.size() + (m.key ? m.key->size() : 0);
  for (const auto& h : m.headers) n += 8 + h.key.size() + h.value.size();  // as stored, lengths included
  return n;
}

ProducerStats::TopicEntry& ProducerStats::entry(const std::shared_ptr<Topic>& topic) {
  TopicEntry& e = topics_[topic->name()];
  if (e.topic != topic) {  // first use, or the topic was deleted and made again: a new one
    e.topic = topic;
    e.parts.assign(topic->partitions(), PartitionCounters{});
  }
  return e;
}

void ProducerStats::sent(const std::shared_ptr<Topic>& topic, std::uint32_t p, std::span<const Message> messages,
                         const shm::RingWriter& w) {
  std::uint64_t bytes = 0;
  for (const auto& m : messages) bytes += payload_bytes(m);
  sent(topic, p, messages.size(), bytes, w);
}

void ProducerStats::sent(const std::shared_ptr<Topic>& topic, std::uint32_t p, std::uint64_t records, std::uint64_t bytes,
                         const shm::RingWriter& w) {
  PartitionCounters& c = entry(topic).parts[p];
  c.msgs += records;
  c.bytes += bytes;
  c.waits = w.waits();
  txmsgs_ += records;
  txbytes_ += bytes;
  tick();
}

void ProducerStats::aborted(const std::shared_ptr<Topic>& topic, std::uint32_t p, std::uint64_t records) {
  entry(topic).parts[p].aborted += records;
  aborted_ += records;
  tick();
}

void ProducerStats::tick() {
  if (!reporter_.due()) return;
  json topics = json::object();
  std::uint64_t waits = 0;
  for (const auto& [name, e] : topics_) {
    json parts = json::object();
    for (std::uint32_t p = 0; p < e.parts.size(); ++p) {
      const PartitionCounters& c = e.parts[p];
      const shm::Ring& ring = e.topic->ring(p);
      waits += c.waits;
      parts[std::to_string(p)] = json{{"partition", p},           {"txmsgs", c.msgs},
                                      {"txbytes", c.bytes},        {"msgq_cnt", 0},
                                      {"lo_offset", ring.start_offset()}, {"hi_offset", ring.end_offset()},
                                      {"aborted", c.aborted},      {"waits", c.waits}};
    }
    topics[name] = json{{"topic", name}, {"partitions", std::move(parts)}};
  }
  // msg_cnt / msg_size: nothing waits in a queue here; a send returns with its records in the ring.
  reporter_.emit(json{{"msg_cnt", 0}, {"msg_size", 0}, {"txmsgs", txmsgs_}, {"txmsg_bytes", txbytes_},
                      {"aborted", aborted_}, {"waits", waits}, {"topics", std::move(topics)}});
}

void ConsumerStats::received(std::span<const ConsumedRecord> batch) {
  // A poll's records come a partition at a time: one lookup a run.
  PartitionCounters* c = nullptr;
  std::string_view topic;
  std::uint32_t partition = 0;
  for (const auto& r : batch) {
    if (!c || r.partition != partition || r.topic != topic) {
      topic = r.topic;
      partition = r.partition;
      c = &part(TopicPartition{std::string(topic), partition});
    }
    const std::uint64_t bytes = r.value.size() + (r.key ? r.key->size() : 0) + r.raw_headers.size();
    ++c->msgs;
    c->bytes += bytes;
    rxbytes += bytes;
  }
  rxmsgs += batch.size();
}

}  // namespace shmbus::stats
