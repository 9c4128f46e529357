// Kafka's ConsumerProtocol subscription and assignment bytes (consumer_protocol.h).
#include "tools/busd/kafka/consumer_protocol.h"

#include "tools/busd/kafka/wire.h"

namespace shmbus::kafka {

namespace {

template <class Io, class List>
void partition_list(Io& io, List& v, const char* f) {
  io.array(v, f, 6, [&](auto& tp) {
    io.string(tp.first, "topic");
    io.int32_array(tp.second, "partitions");
  });
}

}  // namespace

tl::expected<ConsumerSubscription, std::string> decode_subscription(const std::string& bytes) {
  Reader r(bytes);
  ConsumerSubscription s;
  r.i16(s.version, "version");
  r.string_array(s.topics, "topics");
  r.nullable_bytes(s.user_data, "user_data");
  if (s.version >= 1 && r.ok()) partition_list(r, s.owned_partitions, "owned_partitions");
  if (!r.ok()) return tl::unexpected("consumer subscription: " + r.error());
  if (s.version < 0) return tl::unexpected("consumer subscription: version " + std::to_string(s.version));
  return s;
}

std::string encode_subscription(const std::vector<std::string>& topics) {
  std::string out;
  Writer w(out);
  w.i16(0, "version");
  w.string_array(topics, "topics");
  w.nullable_bytes(std::nullopt, "user_data");
  return out;
}

std::string encode_assignment(const TopicPartitionList& partitions) {
  std::string out;
  Writer w(out);
  w.i16(0, "version");
  partition_list(w, partitions, "assigned_partitions");
  w.nullable_bytes(std::nullopt, "user_data");
  return out;
}

tl::expected<TopicPartitionList, std::string> decode_assignment(const std::string& bytes) {
  Reader r(bytes);
  std::int16_t version = 0;
  TopicPartitionList out;
  std::optional<std::string> user_data;
  r.i16(version, "version");
  partition_list(r, out, "assigned_partitions");
  r.nullable_bytes(user_data, "user_data");
  if (!r.ok()) return tl::unexpected("consumer assignment: " + r.error());
  return out;
}

}  // namespace shmbus::kafka
