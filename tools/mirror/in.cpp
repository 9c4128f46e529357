// The `in` direction: a Kafka consumer-group member sends every record into the bus and
// commits a Kafka offset only once the records before it are in the bus, acknowledged as
// the mirror's acks say (docs/mirror.md, "Guarantees").
#include <algorithm>
#include <map>
#include <optional>
#include <vector>

#include <fmt/format.h>

#include "shmbus/producer.h"
#include "tools/mirror/kafka.h"
#include "tools/mirror/mirror.h"
#include "tools/mirror/session.h"

namespace shmbus::mirror {
namespace {

// A Kafka record as the bus takes it; its spans point into the librdkafka message.
struct Converted {
  Message msg;
  std::vector<Header> headers;
};

class InSession final : public Session {
 public:
  using Session::Session;

  Result<Outcome> run() {
    auto info = bus_->describe_topic(spec_.bus_topic);
    if (!info) return make_error(info.error().code, info.error().message + " (the mirror creates no bus topics: busctl topic create)");
    const TopicConfig& tc = info->config;
    const bool spills_blocking = tc.spill.enabled && tc.retention == RetentionMode::kBlock;
    const Acks acks = spec_.acks.value_or(spills_blocking ? Acks::kSpilled : Acks::kMemory);
    if (acks != Acks::kMemory && !spills_blocking)
      return halt(fmt::format("acks \"{}\" needs bus topic '{}' to spill with retention block",
                              acks == Acks::kSpilled ? "spilled" : "fsynced", spec_.bus_topic));
    bus_partitions_ = tc.partitions;
    // A send claims at most half a ring: batches stay well under it.
    max_batch_bytes_ = tc.capacity / 4;

    ProducerConfig pc;
    pc.acks = acks;
    auto producer = Producer::create(bus_, pc);
    if (!producer) return tl::unexpected(producer.error());
    producer_.emplace(std::move(*producer));

    auto rk = make_kafka(spec_, RD_KAFKA_CONSUMER,
                         {{"group.id", spec_.group}, {"enable.auto.commit", "false"}, {"enable.auto.offset.store", "false"}},
                         {{"auto.offset.reset", "earliest"}, {"enable.partition.eof", "false"}}, this,
                         [](rd_kafka_conf_t* c) {
                           rd_kafka_conf_set_rebalance_cb(c, &InSession::on_rebalance);
                           rd_kafka_conf_set_offset_commit_cb(c, &InSession::on_commit);
                           rd_kafka_conf_set_error_cb(c, &Session::on_error);
                         });
    if (!rk) return tl::unexpected(rk.error());
    kafka_.rk = *rk;
    rd_kafka_poll_set_consumer(kafka_.rk);
    auto kparts = kafka_partitions(kafka_.rk, spec_.kafka_topic, std::chrono::seconds(10));
    if (!kparts) return tl::unexpected(kparts.error());
    if (spec_.partitioning == Partitioning::kSame && *kparts != bus_partitions_)
      return halt(fmt::format("partitioning \"same\": Kafka topic '{}' has {} partitions, bus topic '{}' {}", spec_.kafka_topic,
                              *kparts, spec_.bus_topic, bus_partitions_));
    same_partition_ = spec_.partitioning != Partitioning::kKey && *kparts == bus_partitions_;

    rd_kafka_topic_partition_list_t* topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, spec_.kafka_topic.c_str(), RD_KAFKA_PARTITION_UA);
    const rd_kafka_resp_err_t serr = rd_kafka_subscribe(kafka_.rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (serr) return make_error(Errc::kSystem, fmt::format("subscribe to Kafka topic '{}': {}", spec_.kafka_topic, rd_kafka_err2str(serr)));
    live_.set_state("running");

    std::vector<rd_kafka_message_t*> batch;
    while (running()) {
      batch.clear();
      for (int timeout = 100; batch.size() < 2000; timeout = 0) {
        rd_kafka_message_t* m = rd_kafka_consumer_poll(kafka_.rk, timeout);
        if (!m) break;
        if (m->err) {
          if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) live_.error(fmt::format("Kafka: {}", rd_kafka_message_errstr(m)));
          rd_kafka_message_destroy(m);
          continue;
        }
        batch.push_back(m);
      }
      deliver(batch);
      for (auto* m : batch) rd_kafka_message_destroy(m);
      if (commit_due()) commit(false);
      if (report_due()) report();
    }
    commit(true);
    report();
    rd_kafka_consumer_close(kafka_.rk);
    return outcome();
  }

 private:
  static Converted convert(const rd_kafka_message_t* m) {
    Converted c;
    if (m->key) c.msg.key = Bytes(static_cast<const std::byte*>(m->key), m->key_len);
    if (m->payload) c.msg.value = Bytes(static_cast<const std::byte*>(m->payload), m->len);
    else c.msg.null_value = true;
    rd_kafka_timestamp_type_t type;
    const std::int64_t ms = rd_kafka_message_timestamp(m, &type);
    c.msg.timestamp_ns = ms > 0 ? ms * 1'000'000 : 0;  // none: the bus stamps it
    rd_kafka_headers_t* hdrs = nullptr;
    if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR && hdrs) {
      const char* name;
      const void* value;
      std::size_t size;
      for (std::size_t i = 0; rd_kafka_header_get_all(hdrs, i, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR; ++i)
        c.headers.push_back({name, value ? Bytes(static_cast<const std::byte*>(value), size) : Bytes(), value == nullptr});
    }
    return c;
  }

  static std::size_t size_of(const rd_kafka_message_t* m) { return m->len + m->key_len + 64; }

  // Sends the batch into the bus in order; each record's Kafka offset becomes committable
  // once it (and every record before it of its partition) is in.
  void deliver(const std::vector<rd_kafka_message_t*>& batch) {
    std::size_t i = 0;
    std::vector<Converted> conv;
    std::vector<Message> msgs;
    while (i < batch.size() && running()) {
      if (!same_partition_) {
        send_one(batch[i]);
        ++i;
        continue;
      }
      // A run of records of one Kafka partition, one claim in the same bus partition.
      std::size_t j = i, bytes = 0;
      while (j < batch.size() && batch[j]->partition == batch[i]->partition &&
             (j == i || bytes + size_of(batch[j]) <= max_batch_bytes_)) {
        bytes += size_of(batch[j]);
        ++j;
      }
      if (j - i == 1) {
        send_one(batch[i]);
        ++i;
        continue;
      }
      conv.clear();
      msgs.clear();
      for (std::size_t k = i; k < j; ++k) conv.push_back(convert(batch[k]));
      for (auto& c : conv) {
        c.msg.headers = c.headers;
        msgs.push_back(c.msg);
      }
      auto r = producer_->send_batch(spec_.bus_topic, msgs, static_cast<std::uint32_t>(batch[i]->partition));
      if (!r && r.error().code == Errc::kRecordTooLarge) {
        for (std::size_t k = i; k < j && !failure_ && !halted_; ++k) send_one(batch[k]);  // find which one
      } else if (!r) {
        failure_ = Error{r.error().code, "send into bus topic '" + spec_.bus_topic + "': " + r.error().message};
      } else {
        for (std::size_t k = i; k < j; ++k) done(batch[k]);
      }
      i = j;
    }
  }

  void send_one(const rd_kafka_message_t* m) {
    Converted c = convert(m);
    c.msg.headers = c.headers;
    std::optional<std::uint32_t> partition;
    if (same_partition_) partition = static_cast<std::uint32_t>(m->partition);
    auto r = producer_->send(spec_.bus_topic, c.msg, partition);
    if (r) {
      done(m);
      return;
    }
    if (r.error().code != Errc::kRecordTooLarge) {
      failure_ = Error{r.error().code, "send into bus topic '" + spec_.bus_topic + "': " + r.error().message};
      return;
    }
    live_.error(fmt::format("record {}/{} offset {} refused by bus topic '{}': {}", spec_.kafka_topic, m->partition, m->offset,
                            spec_.bus_topic, r.error().message));
    if (spec_.on_record_error == OnRecordError::kStop) {
      halted_ = true;
      return;
    }
    ++skipped_;
    --delivered_;  // done() counts it
    done(m);
  }

  void done(const rd_kafka_message_t* m) {
    pending_[m->partition] = m->offset + 1;
    rd_kafka_timestamp_type_t type;
    last_timestamp_ms_ = rd_kafka_message_timestamp(m, &type);
    ++delivered_;
  }

  // Commits the next offsets of the records in the bus: async in the loop (a lost commit
  // only means duplicates), sync on revoke and at the end.
  void commit(bool sync, const rd_kafka_topic_partition_list_t* only = nullptr) {
    rd_kafka_topic_partition_list_t* list = rd_kafka_topic_partition_list_new(static_cast<int>(pending_.size()));
    for (const auto& [p, off] : pending_) {
      if (committed_[p] == off) continue;
      if (only && !rd_kafka_topic_partition_list_find(only, spec_.kafka_topic.c_str(), p)) continue;
      rd_kafka_topic_partition_list_add(list, spec_.kafka_topic.c_str(), p)->offset = off;
    }
    if (list->cnt > 0) {
      const rd_kafka_resp_err_t err = rd_kafka_commit(kafka_.rk, list, sync ? 0 : 1);
      if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET) live_.error(fmt::format("Kafka commit: {}", rd_kafka_err2str(err)));
      else
        for (int i = 0; i < list->cnt; ++i) committed_[list->elems[i].partition] = list->elems[i].offset;
    }
    rd_kafka_topic_partition_list_destroy(list);
  }

  static void on_rebalance(rd_kafka_t* rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* parts, void* opaque) {
    auto* self = static_cast<InSession*>(static_cast<Session*>(opaque));
    const bool cooperative = std::string_view(rd_kafka_rebalance_protocol(rk)) == "COOPERATIVE";
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
      if (cooperative) rd_kafka_error_destroy(rd_kafka_incremental_assign(rk, parts));
      else rd_kafka_assign(rk, parts);
      return;
    }
    // Revoked: every record polled so far is in the bus (sends are synchronous), so the
    // commit covers them all before the partitions go.
    if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS && !rd_kafka_assignment_lost(rk)) self->commit(true, parts);
    for (int i = 0; i < parts->cnt; ++i) {
      self->pending_.erase(parts->elems[i].partition);
      self->committed_.erase(parts->elems[i].partition);
    }
    if (cooperative) rd_kafka_error_destroy(rd_kafka_incremental_unassign(rk, parts));
    else rd_kafka_assign(rk, nullptr);
  }

  static void on_commit(rd_kafka_t*, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t*, void* opaque) {
    if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET)
      static_cast<InSession*>(static_cast<Session*>(opaque))->live_.error(fmt::format("Kafka commit: {}", rd_kafka_err2str(err)));
  }

  void report() {
    std::int64_t lag = 0;
    rd_kafka_topic_partition_list_t* parts = nullptr;
    if (rd_kafka_assignment(kafka_.rk, &parts) == RD_KAFKA_RESP_ERR_NO_ERROR && parts) {
      rd_kafka_position(kafka_.rk, parts);
      for (int i = 0; i < parts->cnt; ++i) {
        std::int64_t lo = -1, hi = -1;
        if (rd_kafka_get_watermark_offsets(kafka_.rk, spec_.kafka_topic.c_str(), parts->elems[i].partition, &lo, &hi) ||
            hi < 0)
          continue;
        auto it = pending_.find(parts->elems[i].partition);
        std::int64_t next = it != pending_.end() ? it->second : parts->elems[i].offset;
        if (next < 0) next = lo;
        if (hi > next) lag += hi - next;
      }
      rd_kafka_topic_partition_list_destroy(parts);
    }
    const std::int64_t since = last_timestamp_ms_ > 0 ? last_timestamp_ms_ : started_ms_;
    std::lock_guard lock(live_.mu);
    live_.status.records = base_records_ + delivered_;
    live_.status.skipped = base_skipped_ + skipped_;
    live_.status.lag_records = lag;
    live_.status.lag_seconds = lag > 0 ? static_cast<double>(now_ms() - since) / 1e3 : 0.0;
  }

  std::optional<Producer> producer_;
  std::uint32_t bus_partitions_ = 1;
  std::size_t max_batch_bytes_ = 1 << 16;
  bool same_partition_ = true;
  std::map<std::int32_t, std::int64_t> pending_;    // Kafka partition -> next offset, in the bus
  std::map<std::int32_t, std::int64_t> committed_;  // Kafka partition -> last committed
  std::int64_t last_timestamp_ms_ = 0;
  const std::int64_t started_ms_ = now_ms();
  KafkaHandle kafka_;  // last: destroyed first, before what its callbacks use
};

}  // namespace

Result<Outcome> run_in_session(const MirrorSpec& spec, const std::shared_ptr<Bus>& bus, Live& live,
                               const std::atomic<bool>& stop) {
  return run_session<InSession>(spec, bus, live, stop);
}

}  // namespace shmbus::mirror
