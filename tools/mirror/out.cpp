// The `out` direction: a bus consumer-group member produces every record to Kafka with an
// idempotent producer (acks=all) and commits a bus offset only once librdkafka's delivery
// reports say every record before it is in (docs/mirror.md, "Guarantees").
#include <algorithm>
#include <deque>
#include <map>
#include <optional>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "shmbus/consumer.h"
#include "tools/mirror/kafka.h"
#include "tools/mirror/mirror.h"
#include "tools/mirror/session.h"

namespace shmbus::mirror {
namespace {

// A delivery report names its record by a tag: bus partition (16 bits), the partition's
// assignment epoch (8 bits: reports of a partition given away and back are told apart) and
// the record's sequence number in this session (40 bits).
constexpr int kSeqBits = 40;
constexpr std::uint64_t kSeqMask = (std::uint64_t{1} << kSeqBits) - 1;

struct InFlight {
  std::uint64_t offset;
  std::int64_t timestamp_ns;
  bool done = false;
};

// One bus partition of the assignment: its records in flight, oldest first.
struct Track {
  bool assigned = false;
  std::uint8_t epoch = 0;
  std::uint64_t base_seq = 0;  // sequence number of q.front()
  std::uint64_t next_seq = 0;
  std::deque<InFlight> q;
  std::optional<std::uint64_t> deliverable;  // every offset below it is in Kafka (or skipped)
  std::optional<std::uint64_t> committed;
  std::int64_t last_timestamp_ns = 0;  // of the newest record delivered
};

class OutSession final : public Session {
 public:
  using Session::Session;

  ~OutSession() {
    if (rkt_) rd_kafka_topic_destroy(rkt_);
  }

  Result<Outcome> run() {
    auto info = bus_->describe_topic(spec_.bus_topic);
    if (!info) return tl::unexpected(info.error());
    tracks_.resize(info->config.partitions);

    std::map<std::string, std::string> fixed = {{"enable.idempotence", "true"}, {"acks", "all"}};
    auto make = [&] {
      return make_kafka(spec_, RD_KAFKA_PRODUCER, fixed,
                        // A mirror never gives up on a record: it waits for the cluster (and
                        // says so in its status) rather than leave a gap.
                        {{"message.timeout.ms", "0"}, {"partitioner", "murmur2_random"}, {"linger.ms", "5"}},
                        static_cast<Session*>(this), [](rd_kafka_conf_t* c) {
                          rd_kafka_conf_set_dr_msg_cb(c, &OutSession::on_delivery);
                          rd_kafka_conf_set_error_cb(c, &Session::on_error);
                        });
    };
    auto rk = make();
    if (!rk) return tl::unexpected(rk.error());
    kafka_.rk = *rk;
    auto kparts = kafka_partitions(kafka_.rk, spec_.kafka_topic, std::chrono::seconds(10));
    if (!kparts) return tl::unexpected(kparts.error());
    // The far side refuses a batch with a record over the topic's max.message.bytes whole:
    // every record of it would seem refused, and `skip` would skip them all. With
    // librdkafka's message.max.bytes no larger, librdkafka refuses just that record before
    // sending it (and keeps its batches under the limit).
    if (auto limit = kafka_max_message_bytes(kafka_.rk, spec_.kafka_topic, std::chrono::seconds(5));
        limit && *limit < kafka_property(kafka_.rk, "message.max.bytes")) {
      far_limit_ = *limit;
      fixed["message.max.bytes"] = std::to_string(std::max<std::int64_t>(*limit, 1000));  // librdkafka's least
      rd_kafka_destroy(kafka_.rk);
      kafka_.rk = nullptr;
      auto again = make();
      if (!again) return tl::unexpected(again.error());
      kafka_.rk = *again;
    }
    const std::uint32_t bparts = info->config.partitions;
    if (spec_.partitioning == Partitioning::kSame && *kparts != bparts)
      return halt(fmt::format("partitioning \"same\": bus topic '{}' has {} partitions, Kafka topic '{}' {}", spec_.bus_topic,
                              bparts, spec_.kafka_topic, *kparts));
    same_partition_ = spec_.partitioning != Partitioning::kKey && *kparts == bparts;
    rkt_ = rd_kafka_topic_new(kafka_.rk, spec_.kafka_topic.c_str(), nullptr);

    ConsumerConfig cc;
    cc.auto_offset_reset = OffsetReset::kEarliest;
    cc.enable_auto_commit = false;
    cc.hold_producers = spec_.hold_producers.value_or(info->config.retention == RetentionMode::kBlock);
    cc.client_name = "mirror:" + spec_.name;
    cc.on_assigned = [this](const std::vector<TopicPartition>& tps) { assigned(tps); };
    cc.on_revoked = [this](const std::vector<TopicPartition>& tps) { revoked(tps, true); };
    cc.on_lost = [this](const std::vector<TopicPartition>& tps) { revoked(tps, false); };
    auto consumer = Consumer::create(bus_, cc);
    if (!consumer) return tl::unexpected(consumer.error());
    consumer_.emplace(std::move(*consumer));
    if (auto st = consumer_->subscribe({spec_.bus_topic}, spec_.group); !st) return tl::unexpected(st.error());
    live_.set_state("running");

    while (running()) {
      rd_kafka_poll(kafka_.rk, 0);
      auto batch = consumer_->poll(std::chrono::milliseconds(50));
      if (!batch) return tl::unexpected(batch.error());
      for (const ConsumedRecord& r : *batch) {
        if (!produce(r)) break;
      }
      rd_kafka_poll(kafka_.rk, 0);
      if (commit_due()) commit();
      if (report_due()) report();
    }
    // Whatever is in flight gets its delivery report (or 10 s pass), then the delivered
    // prefix is committed.
    rd_kafka_flush(kafka_.rk, 10'000);
    commit();
    report();
    (void)consumer_->close();
    return outcome();
  }

 private:
  // Hands one record to librdkafka; false when the session must stop producing.
  bool produce(const ConsumedRecord& r) {
    if (r.partition >= tracks_.size() || !tracks_[r.partition].assigned) return true;  // given away meanwhile
    Track& t = tracks_[r.partition];
    const std::uint64_t seq = t.next_seq;
    const std::uint64_t tag = (std::uint64_t{r.partition} << 48) | (std::uint64_t{t.epoch} << kSeqBits) | (seq & kSeqMask);
    // An empty key, value or header value is a non-null pointer of length 0; null is a null pointer.
    static const char kEmpty[1] = {0};
    rd_kafka_headers_t* hdrs = nullptr;
    if (!r.raw_headers.empty()) {
      hdrs = rd_kafka_headers_new(4);
      HeaderIterator it = r.headers();
      while (auto h = it.next()) {
        const void* hv = h->null_value ? nullptr : (h->value.empty() ? kEmpty : static_cast<const void*>(h->value.data()));
        rd_kafka_header_add(hdrs, h->key.data(), static_cast<ssize_t>(h->key.size()), hv, static_cast<ssize_t>(h->value.size()));
      }
    }
    const void* key = r.key ? (r.key->empty() ? kEmpty : static_cast<const void*>(r.key->data())) : nullptr;
    const std::size_t key_len = r.key ? r.key->size() : 0;
    const void* value = r.null_value ? nullptr : (r.value.empty() ? kEmpty : static_cast<const void*>(r.value.data()));
    const std::int32_t partition = same_partition_ ? static_cast<std::int32_t>(r.partition) : RD_KAFKA_PARTITION_UA;
    for (;;) {
      // librdkafka's RD_KAFKA_V_* macros type-check with GNU statement expressions.
#if defined(__clang__)
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wgnu-statement-expression"
#endif
      const rd_kafka_resp_err_t err = rd_kafka_producev(
          kafka_.rk, RD_KAFKA_V_RKT(rkt_), RD_KAFKA_V_PARTITION(partition), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
          RD_KAFKA_V_KEY(key, key_len), RD_KAFKA_V_VALUE(const_cast<void*>(value), r.value.size()),
          RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_TIMESTAMP(r.timestamp_ns / 1'000'000),
          RD_KAFKA_V_OPAQUE(reinterpret_cast<void*>(tag)), RD_KAFKA_V_END);
#if defined(__clang__)
#pragma clang diagnostic pop
#endif
      if (err == RD_KAFKA_RESP_ERR_NO_ERROR) break;
      if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
        // Back-pressure: the cluster is slow or away. Serve delivery reports and wait;
        // local producers of an overwrite topic go on regardless (this consumer holds
        // nobody back there), block topics wait for this member as for any durable one.
        rd_kafka_poll(kafka_.rk, 100);
        if (!stalled_since_) stalled_since_ = std::chrono::steady_clock::now();
        if (commit_due()) commit();
        if (report_due()) report();
        if (stop_.load(std::memory_order_relaxed) || failure_) {
          if (hdrs) rd_kafka_headers_destroy(hdrs);
          return false;
        }
        continue;
      }
      if (hdrs) rd_kafka_headers_destroy(hdrs);
      // Refused before it was queued: as if its delivery report had said so.
      t.q.push_back({r.offset, r.timestamp_ns, false});
      ++t.next_seq;
      settle(r.partition, t, seq, err, rd_kafka_err2str(err));
      return !failure_ && !halted_;
    }
    stalled_since_.reset();
    if (in_flight_ == 0) progress_ = std::chrono::steady_clock::now();  // a wait for the cluster starts
    ++in_flight_;
    t.q.push_back({r.offset, r.timestamp_ns, false});
    ++t.next_seq;
    return true;
  }

  static void on_delivery(rd_kafka_t*, const rd_kafka_message_t* m, void* opaque) {
    auto* self = static_cast<OutSession*>(static_cast<Session*>(opaque));
    const auto tag = reinterpret_cast<std::uint64_t>(m->_private);
    const auto partition = static_cast<std::uint32_t>(tag >> 48);
    const auto epoch = static_cast<std::uint8_t>(tag >> kSeqBits);
    if (partition >= self->tracks_.size()) return;
    Track& t = self->tracks_[partition];
    if (!t.assigned || t.epoch != epoch) return;  // the partition was given away since
    self->settle(partition, t, tag & kSeqMask, m->err, m->err ? rd_kafka_err2str(m->err) : "");
  }

  // Marks the record of sequence number `seq` delivered or refused, and moves the
  // partition's deliverable offset over the delivered prefix.
  void settle(std::uint32_t partition, Track& t, std::uint64_t seq, rd_kafka_resp_err_t err, const char* why) {
    const std::uint64_t index = (seq - t.base_seq) & kSeqMask;
    if (index >= t.q.size()) return;
    InFlight& f = t.q[index];
    if (err) {
      std::string what = fmt::format("record {}/{} offset {} refused by Kafka topic '{}': {}", spec_.bus_topic, partition,
                                     f.offset, spec_.kafka_topic, why);
      if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE && far_limit_)
        what += fmt::format(" (its max.message.bytes is {})", *far_limit_);
      if (!is_record_error(err)) {
        failure_ = Error{Errc::kSystem, what};
        return;
      }
      live_.error(what);
      if (spec_.on_record_error == OnRecordError::kStop) {
        halted_ = true;
        return;
      }
      ++skipped_;
    }
    f.done = true;
    while (!t.q.empty() && t.q.front().done) {
      t.deliverable = t.q.front().offset + 1;
      t.last_timestamp_ns = t.q.front().timestamp_ns;
      t.q.pop_front();
      ++t.base_seq;
      ++delivered_;
      --in_flight_;
      progress_ = std::chrono::steady_clock::now();
    }
  }

  void assigned(const std::vector<TopicPartition>& tps) {
    for (const auto& tp : tps) {
      if (tp.partition >= tracks_.size()) continue;
      Track& t = tracks_[tp.partition];
      const std::uint8_t epoch = static_cast<std::uint8_t>(t.epoch + 1);
      t = Track{};
      t.assigned = true;
      t.epoch = epoch;
    }
  }

  // A rebalance takes partitions: what is in flight is delivered first (up to 30 s), and
  // the delivered prefix committed, so that the next owner starts right after it.
  void revoked(const std::vector<TopicPartition>& tps, bool can_commit) {
    if (can_commit) {
      rd_kafka_flush(kafka_.rk, 30'000);
      commit();
    }
    for (const auto& tp : tps) {
      if (tp.partition >= tracks_.size()) continue;
      Track& t = tracks_[tp.partition];
      t.assigned = false;
      in_flight_ -= t.q.size();  // their reports, if they come, are ignored (epoch)
      t.q.clear();
    }
  }

  void commit() {
    std::vector<std::pair<TopicPartition, std::uint64_t>> offsets;
    for (std::uint32_t p = 0; p < tracks_.size(); ++p) {
      Track& t = tracks_[p];
      if (t.assigned && t.deliverable && t.deliverable != t.committed) offsets.push_back({{spec_.bus_topic, p}, *t.deliverable});
    }
    if (offsets.empty()) return;
    if (auto st = consumer_->commit(offsets); !st) {
      live_.error("commit to the bus: " + st.error().message);
      return;
    }
    for (const auto& [tp, off] : offsets) tracks_[tp.partition].committed = off;
  }

  void report() {
    auto now_info = bus_->describe_topic(spec_.bus_topic);
    std::int64_t lag = 0;
    double lag_s = 0;
    const std::int64_t now_ns = now_ms() * 1'000'000;
    std::uint64_t lapped = 0;
    for (std::uint32_t p = 0; p < tracks_.size(); ++p) {
      const Track& t = tracks_[p];
      if (!t.assigned || !now_info || p >= now_info->partitions.size()) continue;
      const PartitionInfo& info = now_info->partitions[p];
      const auto pos = consumer_->position({spec_.bus_topic, p});
      // Lost already, though not read yet: overwritten (and not on disk) below the next
      // offset to read. A mirror held up by the cluster reads nothing, and would otherwise
      // not say so until the cluster came back (the consumer counts them when it reads).
      if (pos) {
        std::uint64_t oldest = info.start_offset;
        if (info.disk_end_offset > 0) oldest = std::min(oldest, info.disk_start_offset);
        if (oldest > *pos) lapped += oldest - *pos;
      }
      std::uint64_t next;
      if (!t.q.empty()) next = t.q.front().offset;
      else if (pos) next = *pos;
      else continue;
      const std::uint64_t end = info.end_offset;
      if (end > next) {
        lag += static_cast<std::int64_t>(end - next);
        const std::int64_t since = t.last_timestamp_ns ? t.last_timestamp_ns : started_ns_;
        lag_s = std::max(lag_s, static_cast<double>(now_ns - since) / 1e9);
      }
    }
    std::lock_guard lock(live_.mu);
    live_.status.records = base_records_ + delivered_;
    live_.status.skipped = base_skipped_ + skipped_;
    live_.status.lost = base_lost_ + consumer_->lost() + lapped;
    live_.status.lag_records = lag;
    live_.status.lag_seconds = lag_s;
    // Stalled: librdkafka's queue is full, or records wait for the cluster with no delivery
    // for a second.
    const bool stalled =
        stalled_since_ || (in_flight_ > 0 && std::chrono::steady_clock::now() - progress_ > std::chrono::seconds(1));
    if (stalled && live_.status.state == std::string("running")) live_.status.state = "stalled";
    if (!stalled && live_.status.state == std::string("stalled")) live_.status.state = "running";
  }

  rd_kafka_topic_t* rkt_ = nullptr;
  std::optional<Consumer> consumer_;
  std::vector<Track> tracks_;
  bool same_partition_ = true;
  std::optional<std::int64_t> far_limit_;  // the Kafka topic's max.message.bytes, when below librdkafka's
  std::optional<std::chrono::steady_clock::time_point> stalled_since_;  // librdkafka's queue is full
  std::uint64_t in_flight_ = 0;                                          // records handed over, not yet settled
  std::chrono::steady_clock::time_point progress_;                       // the last delivery, or the start of a wait
  const std::int64_t started_ns_ = now_ms() * 1'000'000;
  KafkaHandle kafka_;  // last: destroyed first, before what its callbacks use
};

}  // namespace

Result<Outcome> run_out_session(const MirrorSpec& spec, const std::shared_ptr<Bus>& bus, Live& live,
                                const std::atomic<bool>& stop) {
  return run_session<OutSession>(spec, bus, live, stop);
}

}  // namespace shmbus::mirror
