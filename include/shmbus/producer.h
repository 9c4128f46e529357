// Producer: send records to topics. Keys choose partitions as in Kafka.
//
// Thread safety: a Producer belongs to one thread at a time (it owns one writer slot per
// partition it writes); give each thread its own Producer. Any number of producers, in any
// number of processes, may write to the same partition at once, unless one of them is
// exclusive (ProducerConfig::exclusive).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "shmbus/bus.h"
#include "shmbus/error.h"
#include "shmbus/record.h"

namespace shmbus {

// How durable a record is when send() returns: Kafka's `acks`, for one machine. The loss
// window of each: docs/reliability.md, "Durable acknowledgements"; their cost:
// docs/performance.md, "Durable acknowledgements".
enum class Acks : std::uint8_t {
  // Committed in the partition's ring (shared memory). Survives the death of any process,
  // but not the loss of the shared memory (reboot, busctl bus delete) before busd spilled it.
  kMemory,
  // busd's spiller has written it to the partition's disk log (write(2): the page cache).
  // Survives the loss of the shared memory and a crash of busd; not a power loss or a
  // kernel crash before the next fsync.
  kSpilled,
  // And fdatasync'ed: survives a power loss. busd syncs at once for a waiting producer,
  // whatever the topic's fsync policy; one fdatasync covers every producer then waiting.
  kFsynced,
};

struct ProducerConfig {
  std::int64_t max_block_ms = 60'000;  // block topics: how long a send waits for room
  std::uint32_t sticky_bytes = 16384;  // null keys stay on one partition for this many bytes
  // Each send (one record, or a whole batch) starts on this boundary in the ring (8, 16, 32
  // or 64): its last record is padded up to it. 64 gives every send its own cache lines, so
  // a consumer reading one send does not pull the line a producer is writing the next one
  // into; the records inside a batch are packed 8-byte aligned (none under 64 bytes with
  // the default, which keeps seek's offset index exact).
  // docs/performance.md measures both.
  std::uint32_t record_alignment = 64;
  // The only producer of every partition it writes (Aeron's exclusive publication): sends
  // need no locked instruction (docs/ring.md, "Exclusive writers"). Opening a partition
  // fails (too_many_clients) while another producer has it open, and other producers are
  // refused until this one is destroyed or its process dies. Its claims are never timed
  // out: a stopped exclusive producer holds its partitions until it runs again or dies.
  bool exclusive = false;
  // kSpilled and kFsynced: send() (and Reservation::commit()) return only once busd has
  // written (and synced) the record, waiting up to ack_timeout_ms; busd is started again
  // meanwhile if it is gone. Only for topics that spill (--spill) with retention block:
  // the first send to another topic fails (invalid_argument, naming the topic), since there
  // a record may be overwritten before busd spills it.
  Acks acks = Acks::kMemory;
  std::int64_t ack_timeout_ms = 30'000;

  // Statistics (librdkafka's statistics.interval.ms and stats_cb): every statistics_interval
  // (0, the default: never) statistics_cb gets a JSON object. It is called from this
  // producer's own send(), send_batch(), flush() and Reservation::commit()/abort(), on the
  // calling thread, once the interval has passed: a producer that calls none reports nothing.
  // It must not throw (an exception is dropped) nor use this producer. Fields, with
  // librdkafka's names where the meaning is the same:
  //   name ("shmbus#producer-N"), client_id (the process name), type ("producer"),
  //   ts (monotonic clock, us), time (wall clock, s), age (us since create()),
  //   msg_cnt, msg_size (always 0: nothing is queued; a send returns with its records in the ring),
  //   txmsgs, txmsg_bytes (records sent and their key + headers + value bytes),
  //   aborted (records of this producer's claims that ended aborted: a commit too late, a
  //   reservation given up), waits (claims that waited for room: gates, a stuck claim),
  //   topics: { NAME: { topic, partitions: { "P": { partition, txmsgs, txbytes, msgq_cnt (0),
  //   lo_offset, hi_offset (the ring's oldest and next offsets), aborted, waits } } } }.
  // Counters start at create(); partitions appear once sent to.
  std::chrono::milliseconds statistics_interval{0};
  std::function<void(const std::string& json)> statistics_cb{};
};

class Reservation;
class PartitionWriter;

class Producer {
 public:
  static Result<Producer> create(std::shared_ptr<Bus> bus, ProducerConfig config = {});
  Producer(Producer&&) noexcept;
  Producer& operator=(Producer&&) noexcept;
  ~Producer();

  // Appends one record. Partition: the given one, else the key's, else the sticky one.
  [[nodiscard]] Result<RecordMetadata> send(std::string_view topic, const Message& message,
                                            std::optional<std::uint32_t> partition = std::nullopt) noexcept;
  [[nodiscard]] Result<RecordMetadata> send(std::string_view topic, std::optional<std::string_view> key,
                                            std::string_view value) noexcept;

  // Appends records, each where send() would put it. With `partition`, all go there with
  // one claim, at consecutive offsets from the returned one. Without, a keyed record goes to
  // its key's partition and a null key to the sticky one; records that all land on one
  // partition (any batch of a single-partition topic) take one claim, at consecutive
  // offsets, without allocating. Otherwise the batch is split: one claim per partition for
  // its records in send order, partitions in the order of their first record; the returned
  // metadata is the first record's. Everything checked before a claim (record sizes, each
  // partition's share over half its ring, opening the partitions) fails the whole batch
  // with nothing appended. A claim that fails later (a full block topic after max_block_ms,
  // a deleted topic) leaves the partitions before it appended and none from it on: the
  // error keeps that claim's code, and its message says how many of the batch's records
  // were appended and to which partitions. No batch is atomic across partitions. With
  // acks spilled or fsynced, it returns once every partition's records are acknowledged;
  // an ack that times out is that error, with all the batch's records in the rings.
  [[nodiscard]] Result<RecordMetadata> send_batch(std::string_view topic, std::span<const Message> messages,
                                                  std::optional<std::uint32_t> partition = std::nullopt) noexcept;

  // One partition of a topic, resolved once (Aeron's publication): its send() skips the
  // topic lookup and the partitioner that send() by name makes each time, and behaves as
  // send(topic, message, partition) otherwise (acks, statistics, errors). Opens the
  // partition's write side now, so its errors (no such topic or partition, an exclusive
  // producer elsewhere, no free writer slot) come here. It must not outlive this Producer,
  // and belongs to the Producer's thread.
  [[nodiscard]] Result<PartitionWriter> partition_writer(std::string_view topic, std::uint32_t partition) noexcept;

  // Zero-copy: claims room for a record whose value the caller writes in place, then
  // commit()s. One open reservation per producer at a time (sends are refused meanwhile);
  // a Reservation must not outlive its Producer. Commit within the topic's claim timeout
  // (1 s by default): a claim left open longer is aborted by the consumers waiting on it.
  [[nodiscard]] Result<Reservation> reserve(std::string_view topic, std::optional<Bytes> key, std::size_t value_size,
                                            std::optional<std::uint32_t> partition = std::nullopt,
                                            std::span<const Header> headers = {}) noexcept;

  // Waits until every record this producer sent is acknowledged as `acks` (default: the
  // producer's own) says, at most `timeout`. With acks=memory every sent record already is
  // (sends commit before they return). Useful after a send whose wait for busd timed out
  // (its record is in the ring and may still reach the disk), and to send many records with
  // acks=memory, then wait once for all of them with flush(t, Acks::kFsynced) (one fsync).
  // Fails with timed_out naming the first partition still waiting and busd.
  [[nodiscard]] Status flush(std::chrono::milliseconds timeout, std::optional<Acks> acks = std::nullopt) noexcept;

  struct Impl;

 private:
  explicit Producer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  friend class Reservation;
  friend class PartitionWriter;
};

// Producer::partition_writer(): sends to one partition of one topic.
class PartitionWriter {
 public:
  PartitionWriter() = default;
  PartitionWriter(PartitionWriter&&) noexcept = default;
  PartitionWriter& operator=(PartitionWriter&&) noexcept = default;

  // Appends one record to the partition; returns its offset. As Producer::send(): the
  // producer's acks are waited for; a record over the topic's max record size is refused
  // (record_too_large); a deleted topic fails (topic_deleted) for good: take a new
  // PartitionWriter once the topic is created again.
  [[nodiscard]] Result<std::uint64_t> send(const Message& message) noexcept;

  std::uint32_t partition() const noexcept { return partition_; }
  const std::string& topic() const noexcept;

 private:
  friend class Producer;
  Producer::Impl* producer_ = nullptr;
  std::shared_ptr<void> state_;  // the producer's state of the topic (kept if the topic is replaced)
  void* writer_ = nullptr;       // shm::RingWriter*, owned by that state
  std::uint32_t partition_ = 0;
};

class Reservation {
 public:
  Reservation(Reservation&&) noexcept;
  Reservation& operator=(Reservation&&) = delete;
  ~Reservation();  // aborts if neither committed nor aborted

  std::span<std::byte> value() const noexcept { return value_; }
  RecordMetadata metadata() const noexcept { return meta_; }
  // Publishes the record. Fails (timed_out) when it was open longer than the topic's claim
  // timeout and consumers aborted it: the record is then never read. With acks spilled or
  // fsynced it then waits as send() does (timed_out then: published, not yet acknowledged).
  [[nodiscard]] Status commit() noexcept;
  void abort() noexcept;

 private:
  friend class Producer;
  Reservation() = default;
  void* writer_ = nullptr;  // shm::RingWriter*
  std::uint64_t position_ = 0, end_ = 0, first_at_ = 0;
  std::span<std::byte> value_;
  RecordMetadata meta_{};
  bool wake_ = false;
  bool open_ = false;
  Producer::Impl* producer_ = nullptr;
  void* topic_ = nullptr;  // the producer's state of the topic (acks, flush)
};

}  // namespace shmbus
