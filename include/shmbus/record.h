// What producers send and consumers receive.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

namespace shmbus {

using Bytes = std::span<const std::byte>;

inline Bytes as_bytes(std::string_view s) noexcept { return std::as_bytes(std::span<const char>(s.data(), s.size())); }
inline std::string_view as_string(Bytes b) noexcept {
  return std::string_view(reinterpret_cast<const char*>(b.data()), b.size());
}

// A record header. A null value (Kafka's null header value) is told apart from an empty one,
// as Message::null_value is: `value` must then be empty (a header with value bytes is never
// read back as null).
struct Header {
  std::string_view key;
  Bytes value;
  bool null_value = false;
};

// A record to send. A null key (std::nullopt) uses the sticky partitioner.
struct Message {
  std::optional<Bytes> key;
  Bytes value;
  std::span<const Header> headers = {};
  std::int64_t timestamp_ns = 0;  // 0: the producer stamps CLOCK_REALTIME
  // A null value (Kafka's tombstone), told apart from an empty one; `value` must be empty
  // (a record with value bytes is never read back as null).
  bool null_value = false;
};

struct TopicPartition {
  std::string topic;
  std::uint32_t partition = 0;
  auto operator<=>(const TopicPartition&) const = default;
};

struct RecordMetadata {
  std::uint32_t partition;
  std::uint64_t offset;
};

// Headers as stored: u32 key length, u32 value length, key bytes, value bytes, repeated.
class HeaderIterator {
 public:
  explicit HeaderIterator(Bytes raw) noexcept : raw_(raw) {}
  // Next header, or nullopt at the end (or on a malformed block).
  std::optional<Header> next() noexcept;

 private:
  Bytes raw_;
};

// One consumed record. Its spans point into the consumer's buffer or, for a consumer that
// holds producers back (ConsumerConfig::hold_producers), into the ring: valid until the
// next poll() of the same consumer.
struct ConsumedRecord {
  std::string_view topic;
  std::uint32_t partition;
  std::uint64_t offset;
  std::int64_t timestamp_ns;
  std::optional<Bytes> key;
  Bytes value;
  Bytes raw_headers;
  bool null_value = false;  // a null value (a tombstone): `value` is empty
  HeaderIterator headers() const noexcept { return HeaderIterator(raw_headers); }
};

}  // namespace shmbus
