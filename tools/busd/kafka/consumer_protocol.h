// Kafka's ConsumerProtocol: the bytes a consumer puts in JoinGroup's protocol metadata (its
// Subscription) and gets back in SyncGroup (its Assignment). The broker never reads them in
// Kafka; busd does, because it assigns partitions itself (a virtual leader, docs/kafka.md).
// Classic (non-flexible) encoding, ConsumerProtocolSubscription.json / ...Assignment.json.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <tl/expected.hpp>

namespace shmbus::kafka {

using TopicPartitionList = std::vector<std::pair<std::string, std::vector<std::int32_t>>>;

struct ConsumerSubscription {
  std::int16_t version = 0;
  std::vector<std::string> topics;
  std::optional<std::string> user_data;
  TopicPartitionList owned_partitions;  // v1+
};

// Reads versions 0-3 (a later version is read as far as version 3's fields, as Kafka's own
// parsers do: fields are only ever appended). Any truncation is an error naming the field.
tl::expected<ConsumerSubscription, std::string> decode_subscription(const std::string& bytes);
// Version 0, no user data: what busd shows for a native member in DescribeGroups.
std::string encode_subscription(const std::vector<std::string>& topics);

// Version 0, user_data null: `0000 00000000 ffffffff` when empty (kafka-python refuses
// zero bytes, KAFKA.md §3).
std::string encode_assignment(const TopicPartitionList& partitions);
tl::expected<TopicPartitionList, std::string> decode_assignment(const std::string& bytes);

}  // namespace shmbus::kafka
