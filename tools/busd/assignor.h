// Partition assignors, as Kafka's: range, roundrobin and sticky. Pure functions: busd calls
// them on every rebalance, and the unit tests run Kafka's classic cases on them.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "shmbus/error.h"
#include "shmbus/record.h"

namespace shmbus {

struct MemberSubscription {
  std::string member_id;
  std::vector<std::string> topics;
  std::vector<TopicPartition> owned;  // its assignment in the previous generation (sticky)
};

// member id -> its partitions, each list sorted by (topic, partition).
using Assignment = std::map<std::string, std::vector<TopicPartition>>;
// topic -> number of partitions; topics missing here have no partitions to give.
using TopicPartitionCounts = std::map<std::string, std::uint32_t>;

enum class AssignorKind { kRange, kRoundRobin, kSticky };

Result<AssignorKind> parse_assignor(std::string_view name);
const char* assignor_name(AssignorKind k);

Assignment assign_range(const TopicPartitionCounts& topics, const std::vector<MemberSubscription>& members);
Assignment assign_roundrobin(const TopicPartitionCounts& topics, const std::vector<MemberSubscription>& members);
Assignment assign_sticky(const TopicPartitionCounts& topics, const std::vector<MemberSubscription>& members);
Assignment assign(AssignorKind kind, const TopicPartitionCounts& topics, const std::vector<MemberSubscription>& members);

}  // namespace shmbus
