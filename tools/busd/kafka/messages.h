// The Kafka requests and responses busd's gateway understands, as plain structs, and the
// codec between them and frames. Which versions: kApis (docs/kafka.md, KAFKA.md §1.1). Field
// names follow Kafka's message schemas in snake_case; a field a version does not carry keeps
// its default. Decoding checks every length and count; encoding is total.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include <tl/expected.hpp>

#include "tools/busd/kafka/wire.h"

namespace shmbus::kafka {

// ---- The APIs and versions we support ----
enum ApiKey : std::int16_t {
  kProduce = 0, kFetch = 1, kListOffsets = 2, kMetadata = 3, kOffsetCommit = 8, kOffsetFetch = 9,
  kFindCoordinator = 10, kJoinGroup = 11, kHeartbeat = 12, kLeaveGroup = 13, kSyncGroup = 14,
  kDescribeGroups = 15, kListGroups = 16, kApiVersions = 18, kCreateTopics = 19, kDeleteTopics = 20,
  kInitProducerId = 22, kDescribeConfigs = 32,
};

struct ApiInfo {
  std::int16_t key;
  const char* name;
  std::int16_t min_version;
  std::int16_t max_version;
  std::int16_t flexible_from;  // Kafka's first flexible version of the API (may be > max)
};
// What the codec decodes and what ApiVersions advertises, ordered by key.
extern const std::span<const ApiInfo> kApis;
const ApiInfo* find_api(std::int16_t key);
// The flexible-version rule: a version at or above the API's first flexible one uses compact
// strings/arrays and tagged fields, request header v2 and response header v1 (but an
// ApiVersions response always has header v0, KIP-511).
bool is_flexible(std::int16_t key, std::int16_t version);

// Kafka error codes the gateway uses.
enum ErrorCode : std::int16_t {
  kNone = 0, kOffsetOutOfRange = 1, kCorruptMessage = 2, kUnknownTopicOrPartition = 3,
  kCoordinatorNotAvailable = 15, kNotCoordinator = 16, kInvalidTopic = 17, kIllegalGeneration = 22,
  kInconsistentGroupProtocol = 23, kUnknownMemberId = 25, kInvalidSessionTimeout = 26,
  kRebalanceInProgress = 27, kUnsupportedVersion = 35, kTopicAlreadyExists = 36, kInvalidRequest = 42,
  kUnsupportedCompressionType = 76, kMemberIdRequired = 79,
};

// The per-topic level most messages share: a name and that message's partitions.
template <class Partition>
struct TopicOf {
  std::string name;
  std::vector<Partition> partitions;
};

// ---- Headers ----
struct RequestHeader {
  std::int16_t api_key = 0;
  std::int16_t api_version = 0;
  std::int32_t correlation_id = 0;
  std::optional<std::string> client_id;  // int16 length even in header v2
};

// ---- ApiVersions (18), v0-3 ----
struct ApiVersionsRequest {
  static constexpr std::int16_t kKey = kApiVersions;
  std::string client_software_name;     // v3+
  std::string client_software_version;  // v3+
};
struct ApiVersionsResponse {
  static constexpr std::int16_t kKey = kApiVersions;
  struct Api {
    std::int16_t api_key = 0, min_version = 0, max_version = 0;
  };
  std::int16_t error_code = 0;
  std::vector<Api> api_keys;
  std::int32_t throttle_time_ms = 0;  // v1+
};
// Our answer: every entry of kApis.
ApiVersionsResponse supported_api_versions();

// ---- Metadata (3), v0-4 ----
struct MetadataRequest {
  static constexpr std::int16_t kKey = kMetadata;
  // v0: empty = all topics (never null); v1+: null = all, empty = none.
  std::optional<std::vector<std::string>> topics;
  bool allow_auto_topic_creation = true;  // v4+
};
struct MetadataResponse {
  static constexpr std::int16_t kKey = kMetadata;
  struct Broker {
    std::int32_t node_id = 0;
    std::string host;
    std::int32_t port = 0;
    std::optional<std::string> rack;  // v1+
  };
  struct Partition {
    std::int16_t error_code = 0;
    std::int32_t partition_index = 0;
    std::int32_t leader_id = 0;
    std::vector<std::int32_t> replica_nodes;
    std::vector<std::int32_t> isr_nodes;
  };
  struct Topic {
    std::int16_t error_code = 0;
    std::string name;
    bool is_internal = false;  // v1+
    std::vector<Partition> partitions;
  };
  std::int32_t throttle_time_ms = 0;  // v3+
  std::vector<Broker> brokers;
  std::optional<std::string> cluster_id;  // v2+
  std::int32_t controller_id = -1;        // v1+
  std::vector<Topic> topics;
};

// ---- Produce (0), v0-7 (v0-2 carry message sets of magic 0/1, which we refuse) ----
struct ProduceRequest {
  static constexpr std::int16_t kKey = kProduce;
  struct Partition {
    std::int32_t index = 0;
    std::optional<std::string> records;  // RecordBatch v2 bytes (record_batch.h)
  };
  using Topic = TopicOf<Partition>;
  std::optional<std::string> transactional_id;  // v3+
  std::int16_t acks = -1;
  std::int32_t timeout_ms = 0;
  std::vector<Topic> topics;
};
struct ProduceResponse {
  static constexpr std::int16_t kKey = kProduce;
  struct Partition {
    std::int32_t index = 0;
    std::int16_t error_code = 0;
    std::int64_t base_offset = -1;
    std::int64_t log_append_time_ms = -1;  // v2+
    std::int64_t log_start_offset = -1;    // v5+
  };
  using Topic = TopicOf<Partition>;
  std::vector<Topic> responses;
  std::int32_t throttle_time_ms = 0;  // v1+, last, unlike Fetch
};

// ---- Fetch (1), v4-11 ----
struct FetchRequest {
  static constexpr std::int16_t kKey = kFetch;
  struct Partition {
    std::int32_t partition = 0;
    std::int32_t current_leader_epoch = -1;  // v9+
    std::int64_t fetch_offset = 0;
    std::int64_t log_start_offset = -1;  // v5+
    std::int32_t partition_max_bytes = 0;
  };
  struct Topic {
    std::string topic;
    std::vector<Partition> partitions;
  };
  struct Forgotten {
    std::string topic;
    std::vector<std::int32_t> partitions;
  };
  std::int32_t replica_id = -1;
  std::int32_t max_wait_ms = 0;
  std::int32_t min_bytes = 0;
  std::int32_t max_bytes = 0x7fffffff;
  std::int8_t isolation_level = 0;
  std::int32_t session_id = 0;        // v7+
  std::int32_t session_epoch = -1;    // v7+
  std::vector<Topic> topics;
  std::vector<Forgotten> forgotten_topics_data;  // v7+
  std::string rack_id;                           // v11+
};
struct FetchResponse {
  static constexpr std::int16_t kKey = kFetch;
  struct Aborted {
    std::int64_t producer_id = 0;
    std::int64_t first_offset = 0;
  };
  struct Partition {
    std::int32_t partition_index = 0;
    std::int16_t error_code = 0;
    std::int64_t high_watermark = 0;
    std::int64_t last_stable_offset = -1;  // v4+
    std::int64_t log_start_offset = -1;    // v5+
    std::optional<std::vector<Aborted>> aborted_transactions;  // v4+
    std::int32_t preferred_read_replica = -1;                  // v11+
    std::optional<std::string> records;
  };
  struct Topic {
    std::string topic;
    std::vector<Partition> partitions;
  };
  std::int32_t throttle_time_ms = 0;
  std::int16_t error_code = 0;  // v7+
  std::int32_t session_id = 0;  // v7+
  std::vector<Topic> responses;
};

// ---- ListOffsets (2), v1-2 ----
struct ListOffsetsRequest {
  static constexpr std::int16_t kKey = kListOffsets;
  struct Partition {
    std::int32_t partition_index = 0;
    std::int64_t timestamp = 0;  // -1 latest, -2 earliest
  };
  using Topic = TopicOf<Partition>;
  std::int32_t replica_id = -1;
  std::int8_t isolation_level = 0;  // v2+
  std::vector<Topic> topics;
};
struct ListOffsetsResponse {
  static constexpr std::int16_t kKey = kListOffsets;
  struct Partition {
    std::int32_t partition_index = 0;
    std::int16_t error_code = 0;
    std::int64_t timestamp = -1;
    std::int64_t offset = -1;
  };
  using Topic = TopicOf<Partition>;
  std::int32_t throttle_time_ms = 0;  // v2+
  std::vector<Topic> topics;
};

// ---- FindCoordinator (10), v0-2 ----
struct FindCoordinatorRequest {
  static constexpr std::int16_t kKey = kFindCoordinator;
  std::string key;
  std::int8_t key_type = 0;  // v1+: 0 group, 1 transaction
};
struct FindCoordinatorResponse {
  static constexpr std::int16_t kKey = kFindCoordinator;
  std::int32_t throttle_time_ms = 0;  // v1+
  std::int16_t error_code = 0;
  std::optional<std::string> error_message;  // v1+
  std::int32_t node_id = 0;
  std::string host;
  std::int32_t port = 0;
};

// ---- JoinGroup (11), v0-5 ----
struct JoinGroupRequest {
  static constexpr std::int16_t kKey = kJoinGroup;
  struct Protocol {
    std::string name;
    std::string metadata;
  };
  std::string group_id;
  std::int32_t session_timeout_ms = 0;
  std::int32_t rebalance_timeout_ms = -1;  // v1+ (v0: use session_timeout_ms)
  std::string member_id;
  std::optional<std::string> group_instance_id;  // v5+
  std::string protocol_type;
  std::vector<Protocol> protocols;
};
struct JoinGroupResponse {
  static constexpr std::int16_t kKey = kJoinGroup;
  struct Member {
    std::string member_id;
    std::optional<std::string> group_instance_id;  // v5+
    std::string metadata;
  };
  std::int32_t throttle_time_ms = 0;  // v2+
  std::int16_t error_code = 0;
  std::int32_t generation_id = -1;
  std::string protocol_name;
  std::string leader;
  std::string member_id;
  std::vector<Member> members;
};

// ---- SyncGroup (14), v0-3 ----
struct SyncGroupRequest {
  static constexpr std::int16_t kKey = kSyncGroup;
  struct Assignment {
    std::string member_id;
    std::string assignment;
  };
  std::string group_id;
  std::int32_t generation_id = 0;
  std::string member_id;
  std::optional<std::string> group_instance_id;  // v3+
  std::vector<Assignment> assignments;
};
struct SyncGroupResponse {
  static constexpr std::int16_t kKey = kSyncGroup;
  std::int32_t throttle_time_ms = 0;  // v1+
  std::int16_t error_code = 0;
  std::string assignment;
};

// ---- Heartbeat (12), v0-3 ----
struct HeartbeatRequest {
  static constexpr std::int16_t kKey = kHeartbeat;
  std::string group_id;
  std::int32_t generation_id = 0;
  std::string member_id;
  std::optional<std::string> group_instance_id;  // v3+
};
struct HeartbeatResponse {
  static constexpr std::int16_t kKey = kHeartbeat;
  std::int32_t throttle_time_ms = 0;  // v1+
  std::int16_t error_code = 0;
};

// ---- LeaveGroup (13), v0-1 ----
struct LeaveGroupRequest {
  static constexpr std::int16_t kKey = kLeaveGroup;
  std::string group_id;
  std::string member_id;
};
struct LeaveGroupResponse {
  static constexpr std::int16_t kKey = kLeaveGroup;
  std::int32_t throttle_time_ms = 0;  // v1+
  std::int16_t error_code = 0;
};

// ---- OffsetCommit (8), v2-7 ----
struct OffsetCommitRequest {
  static constexpr std::int16_t kKey = kOffsetCommit;
  struct Partition {
    std::int32_t partition_index = 0;
    std::int64_t committed_offset = 0;
    std::int32_t committed_leader_epoch = -1;  // v6+
    std::optional<std::string> committed_metadata;
  };
  using Topic = TopicOf<Partition>;
  std::string group_id;
  std::int32_t generation_id = -1;
  std::string member_id;
  std::optional<std::string> group_instance_id;  // v7+
  std::int64_t retention_time_ms = -1;           // v2-4
  std::vector<Topic> topics;
};
struct OffsetCommitResponse {
  static constexpr std::int16_t kKey = kOffsetCommit;
  struct Partition {
    std::int32_t partition_index = 0;
    std::int16_t error_code = 0;
  };
  using Topic = TopicOf<Partition>;
  std::int32_t throttle_time_ms = 0;  // v3+
  std::vector<Topic> topics;
};

// ---- OffsetFetch (9), v1-5 ----
struct OffsetFetchRequest {
  static constexpr std::int16_t kKey = kOffsetFetch;
  struct Topic {
    std::string name;
    std::vector<std::int32_t> partition_indexes;
  };
  std::string group_id;
  std::optional<std::vector<Topic>> topics;  // v2+: null = all
};
struct OffsetFetchResponse {
  static constexpr std::int16_t kKey = kOffsetFetch;
  struct Partition {
    std::int32_t partition_index = 0;
    std::int64_t committed_offset = -1;
    std::int32_t committed_leader_epoch = -1;  // v5+
    std::optional<std::string> metadata;
    std::int16_t error_code = 0;
  };
  using Topic = TopicOf<Partition>;
  std::int32_t throttle_time_ms = 0;  // v3+
  std::vector<Topic> topics;
  std::int16_t error_code = 0;  // v2+
};

// ---- CreateTopics (19), v0-4 ----
struct CreateTopicsRequest {
  static constexpr std::int16_t kKey = kCreateTopics;
  struct Assignment {
    std::int32_t partition_index = 0;
    std::vector<std::int32_t> broker_ids;
  };
  struct Config {
    std::string name;
    std::optional<std::string> value;
  };
  struct Topic {
    std::string name;
    std::int32_t num_partitions = -1;
    std::int16_t replication_factor = -1;
    std::vector<Assignment> assignments;
    std::vector<Config> configs;
  };
  std::vector<Topic> topics;
  std::int32_t timeout_ms = 60000;
  bool validate_only = false;  // v1+
};
struct CreateTopicsResponse {
  static constexpr std::int16_t kKey = kCreateTopics;
  struct Topic {
    std::string name;
    std::int16_t error_code = 0;
    std::optional<std::string> error_message;  // v1+
  };
  std::int32_t throttle_time_ms = 0;  // v2+
  std::vector<Topic> topics;
};

// ---- DeleteTopics (20), v0-3 ----
struct DeleteTopicsRequest {
  static constexpr std::int16_t kKey = kDeleteTopics;
  std::vector<std::string> topic_names;
  std::int32_t timeout_ms = 0;
};
struct DeleteTopicsResponse {
  static constexpr std::int16_t kKey = kDeleteTopics;
  struct Result {
    std::string name;
    std::int16_t error_code = 0;
  };
  std::int32_t throttle_time_ms = 0;  // v1+
  std::vector<Result> responses;
};

// ---- DescribeGroups (15), v0-4 ----
struct DescribeGroupsRequest {
  static constexpr std::int16_t kKey = kDescribeGroups;
  std::vector<std::string> groups;
  bool include_authorized_operations = false;  // v3+
};
struct DescribeGroupsResponse {
  static constexpr std::int16_t kKey = kDescribeGroups;
  struct Member {
    std::string member_id;
    std::optional<std::string> group_instance_id;  // v4+
    std::string client_id;
    std::string client_host;
    std::string member_metadata;
    std::string member_assignment;
  };
  struct Group {
    std::int16_t error_code = 0;
    std::string group_id;
    std::string group_state;
    std::string protocol_type;
    std::string protocol_data;
    std::vector<Member> members;
    std::int32_t authorized_operations = INT32_MIN;  // v3+
  };
  std::int32_t throttle_time_ms = 0;  // v1+
  std::vector<Group> groups;
};

// ---- ListGroups (16), v0-2 ----
struct ListGroupsRequest {
  static constexpr std::int16_t kKey = kListGroups;
};
struct ListGroupsResponse {
  static constexpr std::int16_t kKey = kListGroups;
  struct Group {
    std::string group_id;
    std::string protocol_type;
  };
  std::int32_t throttle_time_ms = 0;  // v1+
  std::int16_t error_code = 0;
  std::vector<Group> groups;
};

// ---- DescribeConfigs (32), v0-1 ----
struct DescribeConfigsRequest {
  static constexpr std::int16_t kKey = kDescribeConfigs;
  struct Resource {
    std::int8_t resource_type = 0;  // 2 topic, 4 broker
    std::string resource_name;
    std::optional<std::vector<std::string>> configuration_keys;  // null = all
  };
  std::vector<Resource> resources;
  bool include_synonyms = false;  // v1+
};
struct DescribeConfigsResponse {
  static constexpr std::int16_t kKey = kDescribeConfigs;
  struct Synonym {
    std::string name;
    std::optional<std::string> value;
    std::int8_t source = 0;
  };
  struct Config {
    std::string name;
    std::optional<std::string> value;
    bool read_only = false;
    bool is_default = false;     // v0
    std::int8_t config_source = -1;  // v1+
    bool is_sensitive = false;
    std::vector<Synonym> synonyms;  // v1+
  };
  struct Result {
    std::int16_t error_code = 0;
    std::optional<std::string> error_message;
    std::int8_t resource_type = 0;
    std::string resource_name;
    std::vector<Config> configs;
  };
  std::int32_t throttle_time_ms = 0;
  std::vector<Result> results;
};

// ---- InitProducerId (22), v0-1: a producer id for librdkafka's idempotent producer ----
struct InitProducerIdRequest {
  static constexpr std::int16_t kKey = kInitProducerId;
  std::optional<std::string> transactional_id;  // null: idempotence only (no transactions here)
  std::int32_t transaction_timeout_ms = 0;
};
struct InitProducerIdResponse {
  static constexpr std::int16_t kKey = kInitProducerId;
  std::int32_t throttle_time_ms = 0;
  std::int16_t error_code = 0;
  std::int64_t producer_id = -1;
  std::int16_t producer_epoch = -1;
};

using RequestBody =
    std::variant<ProduceRequest, FetchRequest, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest,
                 OffsetFetchRequest, FindCoordinatorRequest, JoinGroupRequest, HeartbeatRequest, LeaveGroupRequest,
                 SyncGroupRequest, DescribeGroupsRequest, ListGroupsRequest, ApiVersionsRequest,
                 CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest, InitProducerIdRequest>;
using ResponseBody =
    std::variant<ProduceResponse, FetchResponse, ListOffsetsResponse, MetadataResponse, OffsetCommitResponse,
                 OffsetFetchResponse, FindCoordinatorResponse, JoinGroupResponse, HeartbeatResponse,
                 LeaveGroupResponse, SyncGroupResponse, DescribeGroupsResponse, ListGroupsResponse,
                 ApiVersionsResponse, CreateTopicsResponse, DeleteTopicsResponse, DescribeConfigsResponse,
                 InitProducerIdResponse>;

struct Request {
  RequestHeader header;
  RequestBody body;
};

struct DecodeError {
  enum class Kind {
    kMalformed,           // close the connection: the framing can no longer be trusted
    kUnsupportedApi,      // an API key we do not serve
    kUnsupportedVersion,  // a version outside kApis; for ApiVersions answer with
                          // encode_api_versions_fallback()
  };
  Kind kind = Kind::kMalformed;
  std::string message;
  std::optional<RequestHeader> header;  // when the header itself was readable
};

// The largest frame the gateway reads (the 4-byte size excluded); a bigger size prefix is an
// error before anything is allocated.
inline constexpr std::int32_t kMaxFrameSize = 100 << 20;

// Looks at the start of a byte stream: the size of the first frame's body when it is whole,
// nullopt when more bytes are needed, an error for a negative or oversized size prefix.
tl::expected<std::optional<std::size_t>, std::string> frame_size(std::span<const std::uint8_t> in,
                                                                 std::int32_t max_frame = kMaxFrameSize);

// `frame`: one request without its 4-byte size prefix. Trailing bytes after the body are an
// error (a frame holds one request).
tl::expected<Request, DecodeError> decode_request(std::span<const std::uint8_t> frame);
// With the size prefix. For tests, fuzzing and clients of ours (a bridge).
std::string encode_request(const RequestHeader& h, const RequestBody& body);

// A whole response frame (size prefix, header, body) for `version` of the body's API.
std::string encode_response(std::int32_t correlation_id, std::int16_t version, const ResponseBody& body);
// The reply to an ApiVersions request of a version we do not support: a v0 body carrying
// UNSUPPORTED_VERSION and our key list, so the client retries with one we list.
std::string encode_api_versions_fallback(std::int32_t correlation_id);
// Every field `version` of the API carries set to a distinct value (nullables alternate
// between null and a value, arrays hold two elements): for round-trip tests and fuzz seeds.
RequestBody sample_request(std::int16_t key, std::int16_t version);
ResponseBody sample_response(std::int16_t key, std::int16_t version);
// `frame` without the size prefix; checks the correlation id's presence only.
tl::expected<std::pair<std::int32_t, ResponseBody>, std::string> decode_response(
    std::int16_t api_key, std::int16_t version, std::span<const std::uint8_t> frame);

}  // namespace shmbus::kafka
