// The Kafka gateway's request handlers: what busd answers to each decoded request (the codec
// is messages.h, the sockets gateway.h). They run on busd's one thread and never wait: a
// Fetch that finds too little asks the gateway to park it (Answer::kPark) and is handled
// again when its partitions grow or its max_wait passes; a Produce with acks=all to a
// spilled block topic is parked appended (ProduceWait) until busd's spiller has its records
// on disk or its timeout_ms passes. docs/kafka.md.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "shmbus/bus.h"
#include "shmbus/consumer.h"
#include "shmbus/producer.h"
#include "shm/ring.h"
#include "tools/busd/kafka/group_coordinator.h"
#include "tools/busd/kafka/messages.h"

namespace shmbus {
class Topic;
}

namespace shmbus::kafka {

struct RecordBatch;

// The address a client connected to: what Metadata and FindCoordinator advertise, so that
// the client comes back the way it came.
struct ClientEnd {
  std::string host;
  std::int32_t port = 0;
};

// A Produce with acks=all whose records are appended and whose answer waits until busd's
// spiller has them on disk (a spilled `block` topic): the answer made so far and, per
// partition still waiting, how far the disk log must reach.
struct ProduceWait {
  struct Target {
    std::shared_ptr<Topic> topic;
    std::uint32_t partition = 0;
    std::size_t topic_index = 0, partition_index = 0;  // in `response`
    std::uint64_t end = 0;                              // last offset appended + 1
    bool synced = false;                                // fsync=always: synced_end, else spill_end
    bool done = false;
  };
  RequestHeader header;
  ProduceResponse response;
  std::vector<Target> targets;
  std::uint64_t deadline_ns = 0;  // the request's timeout_ms from its arrival
};

// Where a parked Fetch could read no further in one partition: the first offset not readable
// when it was looked at, and the partition's end offset then. The end moves when a record is
// claimed, before its bytes are committed, so the two can differ (a claim in flight, or one
// whose writer is stopped). The doorbell rings at the first record readable from `offset`;
// the gateway's timer looks again at once when the end moved, and now and then while the
// offset is short of it (Handlers::moved).
struct FetchStop {
  std::string topic;
  std::uint64_t epoch = 0;  // of the topic's creation (a topic made again is looked at again)
  std::uint32_t partition = 0;
  std::uint64_t offset = 0;
  std::uint64_t end = 0;
  bool operator==(const FetchStop&) const = default;
};

struct Answer {
  enum class Kind {
    kRespond,  // send `frame`
    kNothing,  // acks=0: no response at all
    kPark,     // hold the request (and the connection's later ones) until it may be answered, or `deadline_ns`
    kClose,    // drop the connection (`why`)
  };
  Kind kind = Kind::kRespond;
  std::string frame;
  std::uint64_t deadline_ns = 0;  // kPark: monotonic
  std::vector<FetchStop> stops;   // kPark of a Fetch: where each of its partitions could be read no further
  std::optional<Request> park_as;  // kPark: the request to hold instead (a JoinGroup with the member id busd gave it)
  std::shared_ptr<ProduceWait> wait;  // kPark: a Produce waiting for the disk, answered by Handlers::resume()
  std::string why;
};

class Handlers {
 public:
  using Log = std::function<void(const std::string&)>;
  // state_dir: the bus's, where spilled topics' disk logs are (ListOffsets by time);
  // groups: busd's coordinator, which outlives the Handlers; default_partitions: those of a
  // topic created without a count (Metadata's auto-creation, CreateTopics with -1), Kafka's
  // num.partitions.
  Handlers(std::shared_ptr<Bus> bus, std::string state_dir, GroupCoordinator& groups, Log log,
           std::uint32_t default_partitions = 1);
  ~Handlers();

  // `final`: a parked request's last try (its max_wait passed): answer whatever there is.
  Answer handle(const Request& req, const ClientEnd& end, std::uint64_t now_ns, bool final = false);
  // A number that changes when a parked JoinGroup may be answered (0 for other requests).
  std::uint64_t progress(const Request& req);
  // Whether a parked Fetch is worth looking at again: kGrew when a partition's end moved
  // since (or its topic was deleted or made again), kShort when one stopped short of its
  // end (a claim in flight: the doorbell rings at its commit, the timer looks now and then).
  enum class Moved { kNo, kShort, kGrew };
  Moved moved(const std::vector<FetchStop>& stops);
  const std::shared_ptr<Bus>& bus() const noexcept { return bus_; }
  // How many times a Produce appended records (a run of a partition's batches each): the
  // gateway looks at its parked Fetches when this moved while it served a connection.
  std::uint64_t appends() const noexcept { return appends_; }
  // A parked Produce looked at again: its answer once every partition is on disk (or failed,
  // or, when `now_ns` passed its deadline, REQUEST_TIMED_OUT for those not there); else kPark.
  Answer resume(ProduceWait& w, std::uint64_t now_ns);

 private:
  Answer produce(const RequestHeader& h, const ProduceRequest& r, std::uint64_t now_ns);
  // Appends one partition's batches; returns the partition's error code, and in `end` the
  // last offset of its records + 1 (0: none).
  std::int16_t produce_partition(const RequestHeader& h, const std::string& name, const std::shared_ptr<Topic>& topic,
                                 const ProduceRequest::Partition& p, ProduceResponse::Partition& rp, std::uint64_t& end);
  // Keeps an idempotent producer's appended batch for the retry check.
  void remember_batch(const std::tuple<std::int64_t, std::string, std::uint32_t>& key, const RecordBatch& b,
                      std::int64_t base_offset, std::uint64_t end);
  Answer fetch(const RequestHeader& h, const FetchRequest& r, std::uint64_t now_ns, bool final);
  ResponseBody metadata(const RequestHeader& h, const MetadataRequest& r, const ClientEnd& end);
  ResponseBody list_offsets(const ListOffsetsRequest& r);
  ResponseBody create_topics(const CreateTopicsRequest& r);
  ResponseBody delete_topics(const DeleteTopicsRequest& r);
  ResponseBody describe_configs(const DescribeConfigsRequest& r);
  ResponseBody init_producer_id(const InitProducerIdRequest& r);
  Answer join_group(const RequestHeader& h, const JoinGroupRequest& r, const ClientEnd& end, std::uint64_t now_ns,
                    bool final);

  // The encoded records of one partition from `offset`, up to about `max_bytes` (at least
  // one record); appends to `out`, returns the bytes added. `stop`: the first offset it could
  // not read (past the records taken and any gaps behind them), or UINT64_MAX when it stopped
  // at `max_bytes`.
  // `error`: a Kafka error code when the reader failed before it took any record (a corrupt
  // record: CORRUPT_MESSAGE).
  std::size_t read_records(const std::shared_ptr<Topic>& t, std::uint32_t partition, std::uint64_t offset,
                           std::size_t max_bytes, std::string& out, std::uint64_t& stop, std::int16_t& error);
  // Claims a read steps over at most (read_records); more wait for the Fetch's next look.
  static constexpr int kMaxStallLooks = 1024;

  struct Reader;
  // The partition's reader, positioned at `offset`; nullptr (logged) when none can be made.
  Reader* reader(const std::shared_ptr<Topic>& t, std::uint32_t partition, std::uint64_t offset);

  std::shared_ptr<Bus> bus_;
  std::string state_dir_;
  GroupCoordinator& groups_;
  Log log_;
  std::uint32_t default_partitions_;
  std::optional<Producer> producer_;
  std::uint64_t appends_ = 0;
  // Readers by (topic, its epoch, partition), each assigned that one partition, and the
  // offset its next poll returns (a fetch at another offset seeks first).
  struct Reader {
    std::optional<Consumer> consumer;
    std::uint64_t next = UINT64_MAX;
  };
  std::map<std::tuple<std::string, std::uint64_t, std::uint32_t>, Reader> readers_;

  // Idempotent producers (InitProducerId): the next id to give, and per (producer id,
  // topic, partition) the last batches appended, so that a retried batch (same epoch, base
  // sequence and count) is answered with its first offset instead of being appended again.
  // Least recently used entries go beyond kMaxSequenceEntries.
  struct SentBatch {
    std::int32_t base_sequence = 0;
    std::int32_t count = 0;
    std::int64_t base_offset = 0;
    std::uint64_t end = 0;  // its last offset + 1
  };
  struct Sequences {
    std::int16_t epoch = 0;
    std::vector<SentBatch> last;  // oldest first, at most kBatchesKept
    std::uint64_t used = 0;
  };
  static constexpr std::size_t kBatchesKept = 5;  // Kafka's: librdkafka keeps up to 5 requests in flight
  static constexpr std::size_t kMaxSequenceEntries = 4096;
  std::int64_t next_producer_id_ = 0;
  std::uint64_t sequence_uses_ = 0;
  std::map<std::tuple<std::int64_t, std::string, std::uint32_t>, Sequences> sequences_;
};

}  // namespace shmbus::kafka
