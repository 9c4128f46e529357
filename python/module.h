// The Python module shmbus (pybind11): what its rooms share. Errors as confluent-kafka's
// (KafkaError inside a KafkaException), the one table of configuration keys, Message and
// TopicPartition. module.cpp defines these; producer.cpp, consumer.cpp and admin.cpp the
// clients. Nothing Python is ever put in shared memory.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shmbus/bus.h"
#include "shmbus/error.h"
#include "shmbus/record.h"

namespace shmbus::py {

namespace pb = pybind11;

// KafkaError codes that are not the bus's Errc (those keep their Errc number): librdkafka's
// negative "local" codes where one means the same.
inline constexpr int kErrNotImplemented = -170;  // librdkafka _NOT_IMPLEMENTED
inline constexpr int kErrState = -172;           // _STATE: the object is closed or busy
inline constexpr int kErrInvalidArg = -186;      // _INVALID_ARG: bad configuration

// A C++ exception carrying a KafkaError; translated into shmbus.KafkaException.
struct KafkaFailure {
  int code;
  std::string message;
};
[[noreturn]] void raise(int code, std::string message);
[[noreturn]] inline void raise(const Error& e) { raise(static_cast<int>(e.code), e.message); }
template <class T>
T take(Result<T> r) {
  if (!r) raise(r.error());
  return std::move(*r);
}
inline void check(const Status& s) {
  if (!s) raise(s.error());
}
// The KafkaError object for an error (for Message.error() and futures).
pb::object kafka_error(int code, const std::string& message);
pb::object kafka_exception(int code, const std::string& message);

// RuntimeError("<what> closed"), as confluent-kafka raises on closed clients.
[[noreturn]] void raise_closed(const char* what);

// ---- configuration: one table for every client (module.cpp, kConfigKeys) ----
enum class Client : unsigned { kProducer = 1, kConsumer = 2, kAdmin = 4, kTopic = 8 };  // kTopic: NewTopic(config=)
// kUsed: mapped onto the C++ config. kIgnored: accepted for confluent-kafka compatibility,
// meaningless on shared memory. kPending: the C++ library has no such feature yet; a value
// other than what the library does today raises _NOT_IMPLEMENTED naming the missing piece.
enum class Support { kUsed, kIgnored, kPending };
struct ConfigKey {
  const char* key;
  unsigned clients;  // Client bits
  Support support;
  const char* doc;   // what it maps to, or (kPending) what the library still lacks
};
const std::vector<ConfigKey>& config_keys();

// A conf dict checked against the table for one client: every key known, pending ones at
// today's behaviour. Values are kept as given (Python objects), read with the getters.
class Conf {
 public:
  Conf(const pb::dict& conf, Client client);
  bool has(const std::string& key) const { return values_.count(key) != 0; }
  std::string str(const std::string& key, const std::string& def) const;
  std::int64_t integer(const std::string& key, std::int64_t def) const;
  bool boolean(const std::string& key, bool def) const;
  pb::object object(const std::string& key) const;  // None when absent
  // The bus the client attaches to ("bus", else $SHMBUS_BUS, else "default").
  std::shared_ptr<Bus> attach_bus() const;

 private:
  std::map<std::string, pb::object> values_;
};

// Python bytes-like: str (UTF-8), bytes, or any buffer-protocol object, borrowed without
// copying for as long as this lives (the caller keeps the GIL or the object alive).
class BorrowedBytes {
 public:
  BorrowedBytes() = default;
  BorrowedBytes(pb::handle obj, const char* what);  // raises TypeError
  ~BorrowedBytes();
  BorrowedBytes(const BorrowedBytes&) = delete;
  BorrowedBytes& operator=(const BorrowedBytes&) = delete;
  Bytes bytes() const { return bytes_; }

 private:
  Py_buffer view_{};
  bool has_view_ = false;
  Bytes bytes_{};
};

// confluent-kafka's special offsets.
inline constexpr std::int64_t kOffsetBeginning = -2, kOffsetEnd = -1, kOffsetStored = -1000, kOffsetInvalid = -1001;

struct PyTopicPartition {
  std::string topic;
  std::int32_t partition = -1;
  std::int64_t offset = kOffsetInvalid;
  pb::object error = pb::none();
  TopicPartition tp() const;
};

// One consumed record (or a consumer error), as confluent-kafka's Message.
struct PyMessage {
  pb::object topic = pb::none();
  std::int32_t partition = -1;
  std::int64_t offset = kOffsetInvalid;
  std::int64_t timestamp_ms = 0;
  int timestamp_type = 0;  // TIMESTAMP_NOT_AVAILABLE
  pb::object key = pb::none(), value = pb::none(), headers = pb::none(), error = pb::none();
};

// admin.cpp: ClusterMetadata of the bus (all topics, or one), for AdminClient and Consumer.
pb::object cluster_metadata(Bus& bus, const pb::object& topic);

// A timeout in seconds as confluent-kafka takes it: None or negative waits forever.
std::optional<std::chrono::nanoseconds> to_timeout(const pb::object& seconds);

std::vector<TopicPartition> to_tps(const pb::handle& list, const char* what);

void bind_producer(pb::module_& m);
void bind_consumer(pb::module_& m);
void bind_admin(pb::module_& m);

}  // namespace shmbus::py
