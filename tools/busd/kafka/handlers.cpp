// The Kafka gateway's request handlers (handlers.h): ApiVersions, Metadata (with
// auto-creation), Produce through the library's Producer, Fetch through its Consumer (ring
// and disk log), ListOffsets (by position and by time), CreateTopics, DeleteTopics,
// DescribeConfigs, InitProducerId (with a retried idempotent batch answered, not appended
// twice); the group APIs go to busd's coordinator (group_coordinator.h), a JoinGroup
// parked until its generation forms. docs/kafka.md.
#include "tools/busd/kafka/handlers.h"

#include <algorithm>
#include <chrono>
#include <type_traits>
#include <variant>

#include <fmt/format.h>

#include "bus/consumer_impl.h"
#include "bus/disk_log.h"
#include "bus/names.h"
#include "bus/offset_lookup.h"
#include "bus/topic.h"
#include "tools/busd/kafka/record_batch.h"

namespace shmbus::kafka {

namespace {

constexpr std::int32_t kNodeId = 0;
// Error codes not in messages.h's list.
constexpr std::int16_t kUnknownServerError = -1;
constexpr std::int16_t kRequestTimedOut = 7;
constexpr std::int16_t kMessageTooLarge = 10;
constexpr std::int16_t kInvalidPartitions = 37;
constexpr std::int16_t kInvalidReplicationFactor = 38;
constexpr std::int16_t kUnsupportedForMessageFormat = 43;
constexpr std::int16_t kKafkaStorageError = 56;

Answer respond(const RequestHeader& h, const ResponseBody& body) {
  Answer a;
  a.frame = encode_response(h.correlation_id, h.api_version, body);
  return a;
}

std::int16_t kafka_error(const Error& e) {
  switch (e.code) {
    case Errc::kNotFound:
    case Errc::kTopicDeleted: return kUnknownTopicOrPartition;
    case Errc::kRecordTooLarge: return kMessageTooLarge;
    case Errc::kBadSegment: return kCorruptMessage;  // a record a reader cannot take
    case Errc::kTimedOut: return kRequestTimedOut;  // a full block topic: retriable
    default: return kUnknownServerError;
  }
}

// Ring bytes a record takes, roughly (its header and alignment included): what keeps one
// send of a Produce's records well inside the ring.
std::size_t ring_bytes(const Record& r) {
  std::size_t n = 64 + (r.key ? r.key->size() : 0) + (r.value ? r.value->size() : 0);
  for (const auto& h : r.headers) n += 8 + h.key.size() + (h.value ? h.value->size() : 0);
  return n;
}

// The bytes a record takes against the topic's max record: key, value and headers, 8 bytes
// a header besides, none for a null header value (the library's count, bus/producer.cpp).
std::uint64_t payload_bytes(const Message& m) {
  std::uint64_t n = (m.key ? m.key->size() : 0) + m.value.size();
  for (const auto& h : m.headers) n += 8 + h.key.size() + h.value.size();
  return n;
}

}  // namespace

Handlers::Handlers(std::shared_ptr<Bus> bus, std::string state_dir, GroupCoordinator& groups, Log log,
                   std::uint32_t default_partitions)
    : bus_(std::move(bus)),
      state_dir_(std::move(state_dir)),
      groups_(groups),
      log_(std::move(log)),
      default_partitions_(default_partitions) {}

Handlers::~Handlers() = default;

Answer Handlers::handle(const Request& req, const ClientEnd& end, std::uint64_t now_ns, bool final) {
  const RequestHeader& h = req.header;
  return std::visit(
      [&](const auto& body) -> Answer {
        using T = std::decay_t<decltype(body)>;
        if constexpr (std::is_same_v<T, ApiVersionsRequest>) return respond(h, supported_api_versions());
        else if constexpr (std::is_same_v<T, MetadataRequest>) return respond(h, metadata(h, body, end));
        else if constexpr (std::is_same_v<T, ProduceRequest>) return produce(h, body, now_ns);
        else if constexpr (std::is_same_v<T, FetchRequest>) return fetch(h, body, now_ns, final);
        else if constexpr (std::is_same_v<T, ListOffsetsRequest>) return respond(h, list_offsets(body));
        else if constexpr (std::is_same_v<T, CreateTopicsRequest>) return respond(h, create_topics(body));
        else if constexpr (std::is_same_v<T, DeleteTopicsRequest>) return respond(h, delete_topics(body));
        else if constexpr (std::is_same_v<T, DescribeConfigsRequest>) return respond(h, describe_configs(body));
        else if constexpr (std::is_same_v<T, InitProducerIdRequest>) return respond(h, init_producer_id(body));
        else if constexpr (std::is_same_v<T, FindCoordinatorRequest>) {
          FindCoordinatorResponse r;
          if (body.key_type != 0) {  // transactions: none here
            r.error_code = kCoordinatorNotAvailable;
            r.error_message = "busd coordinates consumer groups only (key type 0), not transactions";
            r.node_id = -1;
            r.port = -1;
          } else {
            r.node_id = kNodeId;  // busd itself, as Metadata names it
            r.host = end.host;
            r.port = end.port;
          }
          return respond(h, r);
        } else if constexpr (std::is_same_v<T, JoinGroupRequest>) return join_group(h, body, end, now_ns, final);
        else if constexpr (std::is_same_v<T, SyncGroupRequest>) return respond(h, groups_.sync_group(body));
        else if constexpr (std::is_same_v<T, HeartbeatRequest>) return respond(h, groups_.heartbeat(body));
        else if constexpr (std::is_same_v<T, LeaveGroupRequest>) return respond(h, groups_.leave_group(body));
        else if constexpr (std::is_same_v<T, OffsetCommitRequest>) return respond(h, groups_.offset_commit(body));
        else if constexpr (std::is_same_v<T, OffsetFetchRequest>) return respond(h, groups_.offset_fetch(body));
        else if constexpr (std::is_same_v<T, DescribeGroupsRequest>) return respond(h, groups_.describe_groups(body));
        else if constexpr (std::is_same_v<T, ListGroupsRequest>) return respond(h, groups_.list_groups());
        else static_assert(sizeof(T) == 0, "a request type without a handler");
      },
      req.body);
}

// ---- Metadata ----

ResponseBody Handlers::metadata(const RequestHeader& h, const MetadataRequest& r, const ClientEnd& end) {
  MetadataResponse out;
  out.brokers.push_back({kNodeId, end.host, end.port, std::nullopt});
  out.cluster_id = "shmbus-" + bus_->name();
  out.controller_id = kNodeId;
  auto describe = [&](const std::string& name, std::uint32_t partitions) {
    MetadataResponse::Topic t;
    t.name = name;
    for (std::uint32_t p = 0; p < partitions; ++p)
      t.partitions.push_back({kNone, static_cast<std::int32_t>(p), kNodeId, {kNodeId}, {kNodeId}});
    out.topics.push_back(std::move(t));
  };
  // v0: an empty list is every topic; v1+: null is every topic, empty none.
  const bool all = !r.topics || (h.api_version == 0 && r.topics->empty());
  if (all) {
    for (const TopicInfo& t : bus_->list_topics()) describe(t.name, t.config.partitions);
    return out;
  }
  for (const std::string& name : *r.topics) {
    if (auto t = bus_->topic(name)) {
      describe(name, (*t)->partitions());
      continue;
    }
    MetadataResponse::Topic t;
    t.name = name;
    if (!validate_name("topic", name)) {
      t.error_code = kInvalidTopic;
    } else if (!r.allow_auto_topic_creation) {  // before v4 the broker's policy: create
      t.error_code = kUnknownTopicOrPartition;
    } else if (auto ok = bus_->create_topic(name, TopicConfig{.partitions = default_partitions_, .spill = {}});
               !ok && ok.error().code != Errc::kAlreadyExists) {
      log_(fmt::format("kafka: topic '{}' not auto-created: {}", name, ok.error().message));
      t.error_code = kUnknownTopicOrPartition;
    } else {
      if (ok) log_(fmt::format("kafka: topic '{}' auto-created", name));
      auto made = bus_->topic(name);
      describe(name, made ? (*made)->partitions() : 0);
      continue;
    }
    out.topics.push_back(std::move(t));
  }
  return out;
}

// ---- Produce ----

ResponseBody Handlers::init_producer_id(const InitProducerIdRequest& r) {
  InitProducerIdResponse out;
  if (r.transactional_id) {  // a transactional producer: FindCoordinator(key type 1) already said no
    out.error_code = kCoordinatorNotAvailable;
    return out;
  }
  // Ids from the wall clock's milliseconds on: a restarted busd (which forgot the
  // sequences) gives ids no earlier busd gave.
  if (next_producer_id_ == 0) {
    const auto since_epoch = std::chrono::system_clock::now().time_since_epoch();
    next_producer_id_ = std::chrono::duration_cast<std::chrono::milliseconds>(since_epoch).count();
  }
  out.producer_id = next_producer_id_++;
  out.producer_epoch = 0;
  return out;
}

Answer Handlers::produce(const RequestHeader& h, const ProduceRequest& r, std::uint64_t now_ns) {
  if (!producer_) {
    ProducerConfig pc;
    pc.max_block_ms = 0;  // busd's loop never waits for room: a full block topic is REQUEST_TIMED_OUT
    auto p = Producer::create(bus_, pc);
    if (!p) log_(fmt::format("kafka: no producer: {}", p.error().message));
    else producer_.emplace(std::move(*p));
  }
  auto w = std::make_shared<ProduceWait>();
  w->header = h;
  ProduceResponse& out = w->response;
  for (const auto& t : r.topics) {
    ProduceResponse::Topic rt{t.name, {}};
    auto topic = bus_->topic(t.name);
    for (const auto& p : t.partitions) {
      ProduceResponse::Partition rp;
      rp.index = p.index;
      std::uint64_t end = 0;
      rp.error_code = produce_partition(h, t.name, topic ? *topic : nullptr, p, rp, end);
      // acks=all: the topic's durable mode, where a native producer's acks=spilled could be
      // honoured (a spilled block topic; fsync=always: synced). Elsewhere, as acks=1.
      if (r.acks == -1 && rp.error_code == kNone && end > 0 && (*topic)->config().spill.enabled &&
          (*topic)->config().retention == RetentionMode::kBlock) {
        const bool synced = (*topic)->config().spill.fsync == FsyncPolicy::kAlways;
        const auto part = static_cast<std::uint32_t>(p.index);
        (*topic)->ring(part).want_durable(end, synced);
        w->targets.push_back({*topic, part, out.responses.size(), rt.partitions.size(), end, synced, false});
      }
      rt.partitions.push_back(rp);
    }
    out.responses.push_back(std::move(rt));
  }
  if (r.acks == 0) {
    Answer none;
    none.kind = Answer::Kind::kNothing;
    return none;
  }
  if (w->targets.empty()) return respond(h, out);
  w->deadline_ns = now_ns + static_cast<std::uint64_t>(std::max(r.timeout_ms, 0)) * 1'000'000;
  Answer a = resume(*w, now_ns);
  if (a.kind == Answer::Kind::kPark) a.wait = std::move(w);
  return a;
}

Answer Handlers::resume(ProduceWait& w, std::uint64_t now_ns) {
  bool waiting = false;
  for (ProduceWait::Target& t : w.targets) {
    if (t.done) continue;
    const shm::Ring& ring = t.topic->ring(t.partition);
    ProduceResponse::Partition& rp = w.response.responses[t.topic_index].partitions[t.partition_index];
    auto fail = [&](std::int16_t code, const std::string& why) {
      log_(fmt::format("kafka: produce (acks=all) to {}-{} offsets {}..{}: {}", t.topic->name(), t.partition, rp.base_offset,
                       t.end - 1, why));
      rp.error_code = code;
      rp.base_offset = -1;
      t.done = true;
    };
    if (ring.durable_end(t.synced).value_or(0) >= t.end) t.done = true;
    else if (ring.closed()) fail(kUnknownTopicOrPartition, "the topic was deleted before they were on disk");
    else if (ring.ctl()->stats.spill_state.load(std::memory_order_acquire) == static_cast<std::uint32_t>(shm::SpillState::kError))
      fail(kKafkaStorageError, "busd's spilling of this partition failed (busctl topic describe: SPILL error; busd.log says "
                               "why); the records stay appended in the ring");
    else if (now_ns >= w.deadline_ns)
      fail(kRequestTimedOut, fmt::format("not {} on disk within the request's timeout_ms; the records stay appended in the "
                                         "ring (busd spills them later)",
                                         t.synced ? "synced" : "written"));
    else waiting = true;
  }
  if (!waiting) return respond(w.header, w.response);
  Answer a;
  a.kind = Answer::Kind::kPark;
  a.deadline_ns = w.deadline_ns;
  return a;
}

std::int16_t Handlers::produce_partition(const RequestHeader& h, const std::string& name,
                                         const std::shared_ptr<Topic>& topic, const ProduceRequest::Partition& p,
                                         ProduceResponse::Partition& rp, std::uint64_t& end) {
  if (h.api_version < 3) return kUnsupportedForMessageFormat;  // message sets of magic 0/1
  if (!topic || p.index < 0 || static_cast<std::uint32_t>(p.index) >= topic->partitions()) return kUnknownTopicOrPartition;
  if (!producer_) return kUnknownServerError;
  const auto part = static_cast<std::uint32_t>(p.index);
  rp.log_start_offset = static_cast<std::int64_t>(earliest_offset(topic->ring(part), topic->config().spill.enabled));
  if (!p.records) return kCorruptMessage;
  auto batches = decode_record_batches(
      std::span(reinterpret_cast<const std::uint8_t*>(p.records->data()), p.records->size()));
  if (!batches) {
    log_(fmt::format("kafka: produce to {}-{} refused: {}", name, part, batches.error()));
    return kCorruptMessage;
  }
  // An idempotent producer's batch (librdkafka sends one a partition) that was appended
  // already (a retry after a lost answer): answered with its first offset, not appended again.
  const RecordBatch* idem = batches->size() == 1 && (*batches)[0].producer_id >= 0 && (*batches)[0].base_sequence >= 0 &&
                                    !(*batches)[0].is_control() && !(*batches)[0].records.empty()
                                ? &(*batches)[0]
                                : nullptr;
  const auto seq_key = std::make_tuple(idem ? idem->producer_id : -1, name, part);
  if (idem) {
    auto it = sequences_.find(seq_key);
    if (it != sequences_.end() && it->second.epoch == idem->producer_epoch)
      for (const SentBatch& sb : it->second.last)
        if (sb.base_sequence == idem->base_sequence && sb.count == static_cast<std::int32_t>(idem->records.size())) {
          it->second.used = ++sequence_uses_;
          rp.base_offset = sb.base_offset;
          end = sb.end;  // acks=all: answered once the first append is on disk
          return kNone;
        }
  }
  // The records as the library's Messages; their bytes stay in `batches`. A header's null
  // value (length -1) stays null (Header::null_value), an empty one empty.
  std::vector<Message> msgs;
  std::vector<std::vector<Header>> headers;
  std::vector<std::size_t> sizes;
  for (const auto& b : *batches) {
    if (b.is_control()) continue;
    const bool log_append = (b.attributes & 0x8) != 0;
    for (const auto& rec : b.records) {
      std::vector<Header> hs;
      for (const auto& hd : rec.headers)
        hs.push_back(Header{hd.key, hd.value ? as_bytes(*hd.value) : Bytes{}, !hd.value});
      headers.push_back(std::move(hs));
      Message m;
      if (rec.key) m.key = as_bytes(*rec.key);
      if (rec.value) m.value = as_bytes(*rec.value);
      m.null_value = !rec.value;
      const std::int64_t ms = b.base_timestamp + rec.timestamp_delta;
      m.timestamp_ns = !log_append && ms > 0 && ms < INT64_MAX / 1'000'000 ? ms * 1'000'000 : 0;
      msgs.push_back(m);
      sizes.push_back(ring_bytes(rec));
    }
  }
  for (std::size_t i = 0; i < msgs.size(); ++i) msgs[i].headers = headers[i];
  // A record over the topic's max refuses the whole batch before any of it is appended, as
  // Kafka does: the client is told every record of it failed, so none may be in the topic.
  for (std::size_t i = 0; i < msgs.size(); ++i)
    if (const std::uint64_t n = payload_bytes(msgs[i]); n > topic->config().max_record) {
      log_(fmt::format("kafka: produce to {}-{} refused: record {} of the batch has {} bytes (key+headers+value), over the "
                       "topic's max record of {}", name, part, i, n, topic->config().max_record));
      return kMessageTooLarge;
    }
  // Sent in runs of at most a quarter of the ring each (a send may not take over half).
  const std::size_t budget = std::max<std::size_t>(topic->ring(part).capacity() / 4, 1);
  std::size_t i = 0;
  while (i < msgs.size()) {
    std::size_t j = i, bytes = 0;
    while (j < msgs.size() && (j == i || bytes + sizes[j] <= budget)) bytes += sizes[j++];
    auto sent = producer_->send_batch(name, std::span(msgs).subspan(i, j - i), part);
    if (!sent) {
      log_(fmt::format("kafka: produce to {}-{}: {}", name, part, sent.error().message));
      return kafka_error(sent.error());
    }
    ++appends_;
    if (i == 0) rp.base_offset = static_cast<std::int64_t>(sent->offset);
    end = sent->offset + (j - i);  // a run is one claim: consecutive offsets
    i = j;
  }
  if (msgs.empty()) rp.base_offset = static_cast<std::int64_t>(topic->ring(part).end_offset());
  if (idem) remember_batch(seq_key, *idem, rp.base_offset, end);
  return kNone;
}

void Handlers::remember_batch(const std::tuple<std::int64_t, std::string, std::uint32_t>& key, const RecordBatch& b,
                              std::int64_t base_offset, std::uint64_t end) {
  Sequences& s = sequences_[key];
  if (s.epoch != b.producer_epoch) {
    s.epoch = b.producer_epoch;
    s.last.clear();
  }
  s.last.push_back({b.base_sequence, static_cast<std::int32_t>(b.records.size()), base_offset, end});
  if (s.last.size() > kBatchesKept) s.last.erase(s.last.begin());
  s.used = ++sequence_uses_;
  if (sequences_.size() > kMaxSequenceEntries)
    sequences_.erase(std::min_element(sequences_.begin(), sequences_.end(),
                                      [](const auto& x, const auto& y) { return x.second.used < y.second.used; }));
}

// ---- Fetch ----

std::uint64_t Handlers::progress(const Request& req) {
  return std::holds_alternative<JoinGroupRequest>(req.body) ? groups_.join_progress() : 0;
}

Handlers::Moved Handlers::moved(const std::vector<FetchStop>& stops) {
  Moved m = Moved::kNo;
  for (const FetchStop& s : stops) {
    auto topic = bus_->topic(s.topic);
    if (!topic || (*topic)->epoch() != s.epoch || s.partition >= (*topic)->partitions() ||
        (*topic)->ring(s.partition).end_offset() != s.end)
      return Moved::kGrew;
    if (s.offset != s.end) m = Moved::kShort;
  }
  return m;
}

Answer Handlers::fetch(const RequestHeader& h, const FetchRequest& r, std::uint64_t now_ns, bool final) {
  FetchResponse out;
  const std::size_t max_total = r.max_bytes > 0 ? static_cast<std::size_t>(r.max_bytes) : 0;
  std::size_t total = 0;
  bool error = false;  // a partition in error: answered at once, as Kafka does (waiting will not mend it)
  std::vector<FetchStop> stops;
  for (const auto& t : r.topics) {
    FetchResponse::Topic rt{t.topic, {}};
    auto topic = bus_->topic(t.topic);
    for (const auto& p : t.partitions) {
      FetchResponse::Partition rp;
      rp.partition_index = p.partition;
      rp.aborted_transactions.emplace();
      rp.records.emplace();
      if (!topic || p.partition < 0 || static_cast<std::uint32_t>(p.partition) >= (*topic)->partitions()) {
        rp.error_code = kUnknownTopicOrPartition;
        rp.high_watermark = rp.last_stable_offset = -1;
        rt.partitions.push_back(std::move(rp));
        error = true;
        continue;
      }
      const auto part = static_cast<std::uint32_t>(p.partition);
      const shm::Ring& ring = (*topic)->ring(part);
      const std::uint64_t end = ring.end_offset(), first = earliest_offset(ring, (*topic)->config().spill.enabled);
      rp.high_watermark = rp.last_stable_offset = static_cast<std::int64_t>(end);
      rp.log_start_offset = static_cast<std::int64_t>(first);
      if (p.fetch_offset < static_cast<std::int64_t>(first) || p.fetch_offset > static_cast<std::int64_t>(end)) {
        rp.error_code = kOffsetOutOfRange;
        error = true;
      } else {
        // Not read (the answer is full): looked at again when the partition grows.
        std::uint64_t stop = end;
        if (static_cast<std::uint64_t>(p.fetch_offset) < end && (total == 0 || total < max_total)) {
          // KIP-74: the first partition with records gets at least one, whatever the limits.
          std::size_t limit = p.partition_max_bytes > 0 ? static_cast<std::size_t>(p.partition_max_bytes) : 1;
          if (total > 0) limit = std::min(limit, max_total - total);
          total += read_records(*topic, part, static_cast<std::uint64_t>(p.fetch_offset), limit, *rp.records, stop,
                                rp.error_code);
          if (stop == UINT64_MAX) stop = end;  // took all it may from here: what comes after is news
          error |= rp.error_code != kNone;
        }
        stops.push_back({t.topic, (*topic)->epoch(), part, stop, end});
      }
      rt.partitions.push_back(std::move(rp));
    }
    out.responses.push_back(std::move(rt));
  }
  if (!final && !error && r.max_wait_ms > 0 && total < static_cast<std::size_t>(std::max(r.min_bytes, 1))) {
    Answer a;
    a.kind = Answer::Kind::kPark;
    a.deadline_ns = now_ns + static_cast<std::uint64_t>(r.max_wait_ms) * 1'000'000;
    a.stops = std::move(stops);
    return a;
  }
  return respond(h, out);
}

Handlers::Reader* Handlers::reader(const std::shared_ptr<Topic>& t, std::uint32_t partition, std::uint64_t offset) {
  const auto key = std::make_tuple(t->name(), t->epoch(), partition);
  auto it = readers_.find(key);
  if (it == readers_.end()) {
    // Readers of an earlier creation of the topic are of no more use.
    std::erase_if(readers_, [&](const auto& kv) { return std::get<0>(kv.first) == t->name() && std::get<1>(kv.first) != t->epoch(); });
    ConsumerConfig cc;
    cc.auto_offset_reset = OffsetReset::kEarliest;
    cc.enable_auto_commit = false;
    cc.max_poll_records = 1000;
    auto c = Consumer::create(bus_, cc);
    if (!c) {
      log_(fmt::format("kafka: no reader for {}-{}: {}", t->name(), partition, c.error().message));
      return nullptr;
    }
    if (auto ok = c->assign({{t->name(), partition}}); !ok) {
      log_(fmt::format("kafka: no reader for {}-{}: {}", t->name(), partition, ok.error().message));
      return nullptr;
    }
    it = readers_.emplace(key, Reader{}).first;
    it->second.consumer.emplace(std::move(*c));
  }
  Reader& rd = it->second;
  if (rd.next != offset) {
    if (auto ok = rd.consumer->seek({t->name(), partition}, offset); !ok) {
      log_(fmt::format("kafka: seek {}-{} to {}: {}", t->name(), partition, offset, ok.error().message));
      readers_.erase(it);
      return nullptr;
    }
    rd.next = offset;
  }
  return &rd;
}

std::size_t Handlers::read_records(const std::shared_ptr<Topic>& t, std::uint32_t partition, std::uint64_t offset,
                                   std::size_t max_bytes, std::string& out, std::uint64_t& stop,
                                   std::int16_t& error) {
  stop = offset;
  error = kNone;
  Reader* rd = reader(t, partition, offset);
  if (!rd) return 0;
  const TopicPartition tp{t->name(), partition};
  RecordBatch b;
  std::size_t bytes = 0;
  std::int64_t max_ts = -1;
  bool full = false;
  // The reader failed, or found itself lapped and moved on to the oldest record: what it
  // stepped over is not covered (a client is told OFFSET_OUT_OF_RANGE or the error at its
  // next Fetch from there), and the reader is sought again then, to meet it again (it
  // reports an error once and steps over).
  bool broken = false;
  const std::uint64_t lost_before = rd->consumer->lost();
  // Bounded: a look past a stall steps over a claim (or a lap), or the loop ends.
  for (int stall_looks = 0; !full;) {
    auto recs = rd->consumer->poll(std::chrono::nanoseconds(0));
    if (!recs || rd->consumer->lost() != lost_before) {
      // The records before go out now; with none, the error, or the lap's out of range.
      if (b.records.empty()) error = recs ? std::int16_t{kOffsetOutOfRange} : kafka_error(recs.error());
      broken = true;
      break;
    }
    if (recs->empty()) {
      // Short of the claimed end: a claim in flight, an aborted one or a dead writer's. The
      // reader is sought back to each Fetch's offset, so its own look at such a spot (every
      // 256th empty poll) would never come: look now, or the doorbell (whose reader does step
      // over it) rings for a record this one cannot reach, again and again.
      auto pos = rd->consumer->position(tp);
      if (!pos || *pos >= t->ring(partition).end_offset() || ++stall_looks > kMaxStallLooks) break;
      auto moved = ConsumerInternals::look_past_stall(*rd->consumer, tp);
      if (!moved || rd->consumer->lost() != lost_before) {
        if (b.records.empty()) error = moved ? std::int16_t{kOffsetOutOfRange} : kafka_error(moved.error());
        broken = true;
        break;
      }
      if (!*moved) break;
      continue;
    }
    for (const ConsumedRecord& c : *recs) {
      if (b.records.empty()) {
        b.base_offset = static_cast<std::int64_t>(c.offset);
        b.base_timestamp = c.timestamp_ns / 1'000'000;
      }
      Record rec;
      rec.offset_delta = static_cast<std::int32_t>(c.offset - static_cast<std::uint64_t>(b.base_offset));
      const std::int64_t ms = c.timestamp_ns / 1'000'000;
      rec.timestamp_delta = ms - b.base_timestamp;
      max_ts = std::max(max_ts, ms);
      if (c.key) rec.key = std::string(as_string(*c.key));
      if (!c.null_value) rec.value = std::string(as_string(c.value));
      for (auto hi = c.headers(); auto hd = hi.next();)
        rec.headers.push_back(
            RecordHeader{std::string(hd->key), hd->null_value ? std::nullopt : std::optional<std::string>(as_string(hd->value))});
      bytes += ring_bytes(rec);
      b.records.push_back(std::move(rec));
      rd->next = c.offset + 1;
      if (bytes >= max_bytes) {
        full = true;
        if (&c != &recs->back()) rd->next = UINT64_MAX;  // the consumer read past what we took
        break;
      }
    }
  }
  // The batch covers the offsets below this: to its last record, and (below) what follows.
  std::uint64_t covered =
      b.records.empty() ? offset : static_cast<std::uint64_t>(b.base_offset) + b.records.back().offset_delta + 1;
  if (broken) rd->next = UINT64_MAX;
  if (full || broken) {
    stop = UINT64_MAX;
  } else {  // read all there was: the reader's position is past what it stepped over too
    auto pos = rd->consumer->position(tp);
    stop = pos ? std::max(*pos, rd->next) : rd->next;
    // Offsets stepped over at the end (aborted claims: a reservation given up, a dead
    // writer's) are covered by the batch's last offset delta, with no record of their own,
    // as compaction leaves a Kafka batch: a client's next fetch starts past them. Else a
    // gap at the end held clients below the high watermark for good (lag 1, no EOF).
    if (stop != UINT64_MAX) covered = std::max(covered, stop);
  }
  if (b.records.empty()) {
    if (covered <= offset) return 0;
    b.base_offset = static_cast<std::int64_t>(offset);  // an empty batch: offsets, no records
  }
  b.last_offset_delta = static_cast<std::int32_t>(covered - 1 - static_cast<std::uint64_t>(b.base_offset));
  b.max_timestamp = max_ts;
  const std::string batch = encode_record_batch(b);
  out += batch;
  return batch.size();
}

// ---- ListOffsets ----

ResponseBody Handlers::list_offsets(const ListOffsetsRequest& r) {
  ListOffsetsResponse out;
  for (const auto& t : r.topics) {
    ListOffsetsResponse::Topic rt{t.name, {}};
    auto topic = bus_->topic(t.name);
    for (const auto& p : t.partitions) {
      ListOffsetsResponse::Partition rp;
      rp.partition_index = p.partition_index;
      if (!topic || p.partition_index < 0 || static_cast<std::uint32_t>(p.partition_index) >= (*topic)->partitions()) {
        rp.error_code = kUnknownTopicOrPartition;
        rt.partitions.push_back(rp);
        continue;
      }
      const auto part = static_cast<std::uint32_t>(p.partition_index);
      const shm::Ring& ring = (*topic)->ring(part);
      const bool spilled = (*topic)->config().spill.enabled;
      const std::uint64_t end = ring.end_offset();
      if (p.timestamp == -1) {
        rp.offset = static_cast<std::int64_t>(end);
      } else if (p.timestamp == -2) {
        rp.offset = static_cast<std::int64_t>(earliest_offset(ring, spilled));
      } else if (p.timestamp < 0 || p.timestamp > INT64_MAX / 1'000'000) {
        rp.error_code = kInvalidRequest;
      } else {
        auto at = find_offset_for_time(spilled ? disklog::partition_dir(state_dir_, t.name, part) : std::string(),
                                       ring, p.timestamp * 1'000'000);
        if (!at) {
          log_(fmt::format("kafka: offset of {}-{} at {} ms: {}", t.name, part, p.timestamp, at.error().message));
          rp.error_code = kUnknownServerError;
        } else if (*at) {  // else no record at or after it: offset -1, as Kafka
          rp.offset = static_cast<std::int64_t>((*at)->offset);
          rp.timestamp = (*at)->timestamp_ns < 0 ? -1 : (*at)->timestamp_ns / 1'000'000;
        }
      }
      rt.partitions.push_back(rp);
    }
    out.topics.push_back(std::move(rt));
  }
  return out;
}

// ---- Topics ----

ResponseBody Handlers::create_topics(const CreateTopicsRequest& r) {
  CreateTopicsResponse out;
  for (const auto& t : r.topics) {
    CreateTopicsResponse::Topic rt;
    rt.name = t.name;
    auto fail = [&](std::int16_t code, std::string why) {
      rt.error_code = code;
      rt.error_message = std::move(why);
    };
    TopicConfig cfg;
    if (auto ok = validate_name("topic", t.name); !ok) fail(kInvalidTopic, ok.error().message);
    else if (t.num_partitions == 0 || t.num_partitions < -1 || t.num_partitions > 4096)
      fail(kInvalidPartitions,
           fmt::format("{} partitions: give 1 to 4096, or -1 for {}", t.num_partitions, default_partitions_));
    else if (t.replication_factor != -1 && t.replication_factor != 1)
      fail(kInvalidReplicationFactor, fmt::format("replication factor {}: this bus is one broker (give 1 or -1)", t.replication_factor));
    else if (!t.assignments.empty()) fail(kInvalidRequest, "manual replica assignments are not supported");
    else {
      cfg.partitions = t.num_partitions == -1 ? default_partitions_ : static_cast<std::uint32_t>(t.num_partitions);
      if (bus_->topic(t.name)) fail(kTopicAlreadyExists, fmt::format("topic '{}' already exists", t.name));
      else if (!r.validate_only) {
        if (auto ok = bus_->create_topic(t.name, cfg); !ok)
          fail(ok.error().code == Errc::kAlreadyExists ? kTopicAlreadyExists : kInvalidRequest, ok.error().message);
        else log_(fmt::format("kafka: topic '{}' created ({} partitions)", t.name, cfg.partitions));
      }
    }
    out.topics.push_back(std::move(rt));
  }
  return out;
}

ResponseBody Handlers::delete_topics(const DeleteTopicsRequest& r) {
  DeleteTopicsResponse out;
  for (const auto& name : r.topic_names) {
    DeleteTopicsResponse::Result rr{name, kNone};
    if (auto ok = bus_->delete_topic(name); !ok) rr.error_code = kafka_error(ok.error());
    else log_(fmt::format("kafka: topic '{}' deleted", name));
    out.responses.push_back(rr);
  }
  return out;
}

ResponseBody Handlers::describe_configs(const DescribeConfigsRequest& r) {
  DescribeConfigsResponse out;
  for (const auto& res : r.resources) {
    DescribeConfigsResponse::Result rr;
    rr.resource_type = res.resource_type;
    rr.resource_name = res.resource_name;
    if (res.resource_type == 2) {  // a topic
      auto info = bus_->describe_topic(res.resource_name);
      if (!info) {
        rr.error_code = kUnknownTopicOrPartition;
        rr.error_message = info.error().message;
      } else {
        const TopicConfig& c = info->config;
        const std::uint64_t max_record = c.max_record ? c.max_record : c.capacity / 4 - 64;
        const std::vector<std::pair<std::string, std::string>> all = {
            {"cleanup.policy", "delete"},
            {"max.message.bytes", std::to_string(max_record)},
            {"retention.bytes", c.spill.enabled && c.spill.retention_bytes ? std::to_string(c.spill.retention_bytes) : "-1"},
            {"retention.ms", c.spill.enabled && c.spill.retention_ms ? std::to_string(c.spill.retention_ms) : "-1"},
            {"segment.bytes", std::to_string(c.spill.segment_bytes)},
        };
        for (const auto& [k, v] : all) {
          if (res.configuration_keys && std::find(res.configuration_keys->begin(), res.configuration_keys->end(), k) ==
                                             res.configuration_keys->end())
            continue;
          DescribeConfigsResponse::Config cfg;
          cfg.name = k;
          cfg.value = v;
          cfg.read_only = true;
          cfg.config_source = 5;  // DEFAULT_CONFIG
          rr.configs.push_back(std::move(cfg));
        }
      }
    } else if (res.resource_type != 4) {  // a broker: nothing to say
      rr.error_code = kInvalidRequest;
      rr.error_message = fmt::format("resource type {}: only topics (2) and brokers (4)", res.resource_type);
    }
    out.results.push_back(std::move(rr));
  }
  return out;
}

// ---- Groups ----

Answer Handlers::join_group(const RequestHeader& h, const JoinGroupRequest& r, const ClientEnd& end, std::uint64_t now_ns,
                            bool final) {
  std::string id = r.member_id;
  auto out = groups_.join_group(r, h.api_version, GroupClient{h.client_id.value_or(""), "/" + end.host}, final, id);
  if (out) return respond(h, *out);
  // Parked (the connection's later requests wait behind it, as in Kafka) until the
  // generation forms; the coordinator removes members that do not rejoin in time, so the
  // deadline is a last resort: the longer of the member's two timeouts, and a margin.
  Answer a;
  a.kind = Answer::Kind::kPark;
  const std::int64_t wait_ms = std::max<std::int64_t>({r.rebalance_timeout_ms, r.session_timeout_ms, 0}) + 5'000;
  a.deadline_ns = now_ns + static_cast<std::uint64_t>(wait_ms) * 1'000'000;
  if (id != r.member_id) {  // asked again, it is that member's (not another new one)
    JoinGroupRequest again = r;
    again.member_id = id;
    a.park_as = Request{h, std::move(again)};
  }
  return a;
}

}  // namespace shmbus::kafka
