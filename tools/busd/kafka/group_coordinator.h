// What the Kafka gateway's group APIs need from busd's one group coordinator (busd's Daemon
// implements it, tools/busd/kafka_members.cpp): Kafka-protocol members join the same groups as
// native ones, and commit to the same offset store. Called on busd's thread; nothing waits.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "tools/busd/kafka/messages.h"

namespace shmbus::kafka {

// Who sent a request: the header's client id and the client's address as Kafka shows it.
struct GroupClient {
  std::string client_id;
  std::string host;
};

// The member id busd names as every generation's leader: no client has it, so every Kafka
// client acts as a follower and takes the assignment busd computed (KAFKA.md §3).
inline constexpr const char* kVirtualLeader = "busd-assigns";

class GroupCoordinator {
 public:
  virtual ~GroupCoordinator() = default;
  // nullopt: the generation is not formed yet; ask again when join_progress() moves, and
  // with `final` at the request's deadline (then it is answered REBALANCE_IN_PROGRESS),
  // with `member_id` (the id it joined as: given by busd to a v0-3 request without one).
  virtual std::optional<JoinGroupResponse> join_group(const JoinGroupRequest& r, std::int16_t version,
                                                      const GroupClient& who, bool final, std::string& member_id) = 0;
  virtual SyncGroupResponse sync_group(const SyncGroupRequest& r) = 0;
  virtual HeartbeatResponse heartbeat(const HeartbeatRequest& r) = 0;
  virtual LeaveGroupResponse leave_group(const LeaveGroupRequest& r) = 0;
  virtual OffsetCommitResponse offset_commit(const OffsetCommitRequest& r) = 0;
  virtual OffsetFetchResponse offset_fetch(const OffsetFetchRequest& r) = 0;
  virtual DescribeGroupsResponse describe_groups(const DescribeGroupsRequest& r) = 0;
  virtual ListGroupsResponse list_groups() = 0;
  virtual std::uint64_t join_progress() const = 0;
};

}  // namespace shmbus::kafka
