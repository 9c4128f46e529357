// The fields of each supported request and response, version by version, written once as a
// serde() over the Reader or the Writer (wire.h), and the framing around them. Learned from
// Kafka's message schemas (clients/src/main/resources/common/message/*.json); when a version
// is added, its fields go here and its range into kApis.
#include "tools/busd/kafka/messages.h"

#include <algorithm>
#include <type_traits>

namespace shmbus::kafka {

namespace {

constexpr ApiInfo kApiTable[] = {
    // 0-7, not KAFKA.md's 3-7: librdkafka 2.0.2 compresses with gzip, snappy or lz4 only when
    // the broker's Produce range holds v0, and sends those batches uncompressed otherwise
    // ("Broker does not support compression type gzip: not compressing batch", observed;
    // docs/kafka.md). v0-2 requests carry old message sets, which the handler refuses.
    {kProduce, "Produce", 0, 7, 9},
    {kFetch, "Fetch", 4, 11, 12},
    {kListOffsets, "ListOffsets", 1, 2, 6},
    {kMetadata, "Metadata", 0, 4, 9},
    {kOffsetCommit, "OffsetCommit", 2, 7, 8},
    {kOffsetFetch, "OffsetFetch", 1, 5, 6},
    {kFindCoordinator, "FindCoordinator", 0, 2, 3},
    {kJoinGroup, "JoinGroup", 0, 5, 6},
    {kHeartbeat, "Heartbeat", 0, 3, 4},
    {kLeaveGroup, "LeaveGroup", 0, 1, 4},
    {kSyncGroup, "SyncGroup", 0, 3, 4},
    {kDescribeGroups, "DescribeGroups", 0, 4, 5},
    {kListGroups, "ListGroups", 0, 2, 3},
    {kApiVersions, "ApiVersions", 0, 3, 3},
    {kCreateTopics, "CreateTopics", 0, 4, 5},
    {kDeleteTopics, "DeleteTopics", 0, 3, 4},
    {kInitProducerId, "InitProducerId", 0, 1, 2},
    {kDescribeConfigs, "DescribeConfigs", 0, 1, 4},
};

// The reference type of a message for Io: mutable when reading, const when writing.
template <class T, class Io>
using Ref = std::conditional_t<Io::kReading, T&, const T&>;

// ---- One serde per message: the fields in wire order, with the versions that carry them ----

template <class Io>
void serde(Io& io, Ref<ApiVersionsRequest, Io> m, int v) {
  if (v >= 3) {
    io.string(m.client_software_name, "client_software_name");
    io.string(m.client_software_version, "client_software_version");
  }
}

template <class Io>
void serde(Io& io, Ref<ApiVersionsResponse, Io> m, int v) {
  io.i16(m.error_code, "error_code");
  io.array(m.api_keys, "api_keys", io.flexible() ? 7 : 6, [&](auto& a) {
    io.i16(a.api_key, "api_key");
    io.i16(a.min_version, "min_version");
    io.i16(a.max_version, "max_version");
    io.tags();
  });
  if (v >= 1) io.i32(m.throttle_time_ms, "throttle_time_ms");
}

template <class Io>
void serde(Io& io, Ref<MetadataRequest, Io> m, int v) {
  if (v == 0) {  // an array, never null; empty means all topics
    if constexpr (Io::kReading) {
      io.string_array(m.topics.emplace(), "topics");
    } else {
      io.string_array(m.topics ? *m.topics : std::vector<std::string>{}, "topics");
    }
  } else {
    io.nullable_array(m.topics, "topics", 2, [&](auto& t) { io.string(t, "name"); });
  }
  if (v >= 4) io.boolean(m.allow_auto_topic_creation, "allow_auto_topic_creation");
}

template <class Io>
void serde(Io& io, Ref<MetadataResponse, Io> m, int v) {
  if (v >= 3) io.i32(m.throttle_time_ms, "throttle_time_ms");
  io.array(m.brokers, "brokers", 10, [&](auto& b) {
    io.i32(b.node_id, "node_id");
    io.string(b.host, "host");
    io.i32(b.port, "port");
    if (v >= 1) io.nullable_string(b.rack, "rack");
  });
  if (v >= 2) io.nullable_string(m.cluster_id, "cluster_id");
  if (v >= 1) io.i32(m.controller_id, "controller_id");
  io.array(m.topics, "topics", 8, [&](auto& t) {
    io.i16(t.error_code, "error_code");
    io.string(t.name, "name");
    if (v >= 1) io.boolean(t.is_internal, "is_internal");
    io.array(t.partitions, "partitions", 18, [&](auto& p) {
      io.i16(p.error_code, "error_code");
      io.i32(p.partition_index, "partition_index");
      io.i32(p.leader_id, "leader_id");
      io.int32_array(p.replica_nodes, "replica_nodes");
      io.int32_array(p.isr_nodes, "isr_nodes");
    });
  });
}

template <class Io>
void serde(Io& io, Ref<ProduceRequest, Io> m, int v) {
  if (v >= 3) io.nullable_string(m.transactional_id, "transactional_id");
  io.i16(m.acks, "acks");
  io.i32(m.timeout_ms, "timeout_ms");
  io.array(m.topics, "topics", 6, [&](auto& t) {
    io.string(t.name, "name");
    io.array(t.partitions, "partitions", 8, [&](auto& p) {
      io.i32(p.index, "index");
      io.nullable_bytes(p.records, "records");
    });
  });
}

template <class Io>
void serde(Io& io, Ref<ProduceResponse, Io> m, int v) {
  io.array(m.responses, "responses", 6, [&](auto& t) {
    io.string(t.name, "name");
    io.array(t.partitions, "partitions", 14, [&](auto& p) {
      io.i32(p.index, "index");
      io.i16(p.error_code, "error_code");
      io.i64(p.base_offset, "base_offset");
      if (v >= 2) io.i64(p.log_append_time_ms, "log_append_time_ms");
      if (v >= 5) io.i64(p.log_start_offset, "log_start_offset");
    });
  });
  if (v >= 1) io.i32(m.throttle_time_ms, "throttle_time_ms");
}

template <class Io>
void serde(Io& io, Ref<FetchRequest, Io> m, int v) {
  io.i32(m.replica_id, "replica_id");
  io.i32(m.max_wait_ms, "max_wait_ms");
  io.i32(m.min_bytes, "min_bytes");
  io.i32(m.max_bytes, "max_bytes");
  io.i8(m.isolation_level, "isolation_level");
  if (v >= 7) {
    io.i32(m.session_id, "session_id");
    io.i32(m.session_epoch, "session_epoch");
  }
  io.array(m.topics, "topics", 6, [&](auto& t) {
    io.string(t.topic, "topic");
    io.array(t.partitions, "partitions", 16, [&](auto& p) {
      io.i32(p.partition, "partition");
      if (v >= 9) io.i32(p.current_leader_epoch, "current_leader_epoch");
      io.i64(p.fetch_offset, "fetch_offset");
      if (v >= 5) io.i64(p.log_start_offset, "log_start_offset");
      io.i32(p.partition_max_bytes, "partition_max_bytes");
    });
  });
  if (v >= 7) {
    io.array(m.forgotten_topics_data, "forgotten_topics_data", 6, [&](auto& f) {
      io.string(f.topic, "topic");
      io.int32_array(f.partitions, "partitions");
    });
  }
  if (v >= 11) io.string(m.rack_id, "rack_id");
}

template <class Io>
void serde(Io& io, Ref<FetchResponse, Io> m, int v) {
  io.i32(m.throttle_time_ms, "throttle_time_ms");
  if (v >= 7) {
    io.i16(m.error_code, "error_code");
    io.i32(m.session_id, "session_id");
  }
  io.array(m.responses, "responses", 6, [&](auto& t) {
    io.string(t.topic, "topic");
    io.array(t.partitions, "partitions", 30, [&](auto& p) {
      io.i32(p.partition_index, "partition_index");
      io.i16(p.error_code, "error_code");
      io.i64(p.high_watermark, "high_watermark");
      io.i64(p.last_stable_offset, "last_stable_offset");
      if (v >= 5) io.i64(p.log_start_offset, "log_start_offset");
      io.nullable_array(p.aborted_transactions, "aborted_transactions", 16, [&](auto& a) {
        io.i64(a.producer_id, "producer_id");
        io.i64(a.first_offset, "first_offset");
      });
      if (v >= 11) io.i32(p.preferred_read_replica, "preferred_read_replica");
      io.nullable_bytes(p.records, "records");
    });
  });
}

template <class Io>
void serde(Io& io, Ref<ListOffsetsRequest, Io> m, int v) {
  io.i32(m.replica_id, "replica_id");
  if (v >= 2) io.i8(m.isolation_level, "isolation_level");
  io.array(m.topics, "topics", 6, [&](auto& t) {
    io.string(t.name, "name");
    io.array(t.partitions, "partitions", 12, [&](auto& p) {
      io.i32(p.partition_index, "partition_index");
      io.i64(p.timestamp, "timestamp");
    });
  });
}

template <class Io>
void serde(Io& io, Ref<ListOffsetsResponse, Io> m, int v) {
  if (v >= 2) io.i32(m.throttle_time_ms, "throttle_time_ms");
  io.array(m.topics, "topics", 6, [&](auto& t) {
    io.string(t.name, "name");
    io.array(t.partitions, "partitions", 22, [&](auto& p) {
      io.i32(p.partition_index, "partition_index");
      io.i16(p.error_code, "error_code");
      io.i64(p.timestamp, "timestamp");
      io.i64(p.offset, "offset");
    });
  });
}

template <class Io>
void serde(Io& io, Ref<FindCoordinatorRequest, Io> m, int v) {
  io.string(m.key, "key");
  if (v >= 1) io.i8(m.key_type, "key_type");
}

template <class Io>
void serde(Io& io, Ref<FindCoordinatorResponse, Io> m, int v) {
  if (v >= 1) io.i32(m.throttle_time_ms, "throttle_time_ms");
  io.i16(m.error_code, "error_code");
  if (v >= 1) io.nullable_string(m.error_message, "error_message");
  io.i32(m.node_id, "node_id");
  io.string(m.host, "host");
  io.i32(m.port, "port");
}

template <class Io>
void serde(Io& io, Ref<JoinGroupRequest, Io> m, int v) {
  io.string(m.group_id, "group_id");
  io.i32(m.session_timeout_ms, "session_timeout_ms");
  if (v >= 1) io.i32(m.rebalance_timeout_ms, "rebalance_timeout_ms");
  io.string(m.member_id, "member_id");
  if (v >= 5) io.nullable_string(m.group_instance_id, "group_instance_id");
  io.string(m.protocol_type, "protocol_type");
  io.array(m.protocols, "protocols", 6, [&](auto& p) {
    io.string(p.name, "name");
    io.bytes(p.metadata, "metadata");
  });
}

template <class Io>
void serde(Io& io, Ref<JoinGroupResponse, Io> m, int v) {
  if (v >= 2) io.i32(m.throttle_time_ms, "throttle_time_ms");
  io.i16(m.error_code, "error_code");
  io.i32(m.generation_id, "generation_id");
  io.string(m.protocol_name, "protocol_name");
  io.string(m.leader, "leader");
  io.string(m.member_id, "member_id");
  io.array(m.members, "members", 6, [&](auto& mem) {
    io.string(mem.member_id, "member_id");
    if (v >= 5) io.nullable_string(mem.group_instance_id, "group_instance_id");
    io.bytes(mem.metadata, "metadata");
  });
}

template <class Io>
void serde(Io& io, Ref<SyncGroupRequest, Io> m, int v) {
  io.string(m.group_id, "group_id");
  io.i32(m.generation_id, "generation_id");
  io.string(m.member_id, "member_id");
  if (v >= 3) io.nullable_string(m.group_instance_id, "group_instance_id");
  io.array(m.assignments, "assignments", 6, [&](auto& a) {
    io.string(a.member_id, "member_id");
    io.bytes(a.assignment, "assignment");
  });
}

template <class Io>
void serde(Io& io, Ref<SyncGroupResponse, Io> m, int v) {
  if (v >= 1) io.i32(m.throttle_time_ms, "throttle_time_ms");
  io.i16(m.error_code, "error_code");
  io.bytes(m.assignment, "assignment");
}

template <class Io>
void serde(Io& io, Ref<HeartbeatRequest, Io> m, int v) {
  io.string(m.group_id, "group_id");
  io.i32(m.generation_id, "generation_id");
  io.string(m.member_id, "member_id");
  if (v >= 3) io.nullable_string(m.group_instance_id, "group_instance_id");
}

template <class Io>
void serde(Io& io, Ref<HeartbeatResponse, Io> m, int v) {
  if (v >= 1) io.i32(m.throttle_time_ms, "throttle_time_ms");
  io.i16(m.error_code, "error_code");
}

template <class Io>
void serde(Io& io, Ref<InitProducerIdRequest, Io> m, int) {
  io.nullable_string(m.transactional_id, "transactional_id");
  io.i32(m.transaction_timeout_ms, "transaction_timeout_ms");
}

template <class Io>
void serde(Io& io, Ref<InitProducerIdResponse, Io> m, int) {
  io.i32(m.throttle_time_ms, "throttle_time_ms");
  io.i16(m.error_code, "error_code");
  io.i64(m.producer_id, "producer_id");
  io.i16(m.producer_epoch, "producer_epoch");
}

template <class Io>
void serde(Io& io, Ref<LeaveGroupRequest, Io> m, int) {
  io.string(m.group_id, "group_id");
  io.string(m.member_id, "member_id");
}

template <class Io>
void serde(Io& io, Ref<LeaveGroupResponse, Io> m, int v) {
  if (v >= 1) io.i32(m.throttle_time_ms, "throttle_time_ms");
  io.i16(m.error_code, "error_code");
}

template <class Io>
void serde(Io& io, Ref<OffsetCommitRequest, Io> m, int v) {
  io.string(m.group_id, "group_id");
  io.i32(m.generation_id, "generation_id");
  io.string(m.member_id, "member_id");
  if (v >= 7) io.nullable_string(m.group_instance_id, "group_instance_id");
  if (v <= 4) io.i64(m.retention_time_ms, "retention_time_ms");
  io.array(m.topics, "topics", 6, [&](auto& t) {
    io.string(t.name, "name");
    io.array(t.partitions, "partitions", 14, [&](auto& p) {
      io.i32(p.partition_index, "partition_index");
      io.i64(p.committed_offset, "committed_offset");
      if (v >= 6) io.i32(p.committed_leader_epoch, "committed_leader_epoch");
      io.nullable_string(p.committed_metadata, "committed_metadata");
    });
  });
}

template <class Io>
void serde(Io& io, Ref<OffsetCommitResponse, Io> m, int v) {
  if (v >= 3) io.i32(m.throttle_time_ms, "throttle_time_ms");
  io.array(m.topics, "topics", 6, [&](auto& t) {
    io.string(t.name, "name");
    io.array(t.partitions, "partitions", 6, [&](auto& p) {
      io.i32(p.partition_index, "partition_index");
      io.i16(p.error_code, "error_code");
    });
  });
}

template <class Io>
void serde(Io& io, Ref<OffsetFetchRequest, Io> m, int v) {
  io.string(m.group_id, "group_id");
  auto topic = [&](auto& t) {
    io.string(t.name, "name");
    io.int32_array(t.partition_indexes, "partition_indexes");
  };
  if (v >= 2) {
    io.nullable_array(m.topics, "topics", 6, topic);
  } else if constexpr (Io::kReading) {
    io.array(m.topics.emplace(), "topics", 6, topic);
  } else {
    io.array(m.topics ? *m.topics : std::vector<OffsetFetchRequest::Topic>{}, "topics", 6, topic);
  }
}

template <class Io>
void serde(Io& io, Ref<OffsetFetchResponse, Io> m, int v) {
  if (v >= 3) io.i32(m.throttle_time_ms, "throttle_time_ms");
  io.array(m.topics, "topics", 6, [&](auto& t) {
    io.string(t.name, "name");
    io.array(t.partitions, "partitions", 16, [&](auto& p) {
      io.i32(p.partition_index, "partition_index");
      io.i64(p.committed_offset, "committed_offset");
      if (v >= 5) io.i32(p.committed_leader_epoch, "committed_leader_epoch");
      io.nullable_string(p.metadata, "metadata");
      io.i16(p.error_code, "error_code");
    });
  });
  if (v >= 2) io.i16(m.error_code, "error_code");
}

template <class Io>
void serde(Io& io, Ref<CreateTopicsRequest, Io> m, int v) {
  io.array(m.topics, "topics", 16, [&](auto& t) {
    io.string(t.name, "name");
    io.i32(t.num_partitions, "num_partitions");
    io.i16(t.replication_factor, "replication_factor");
    io.array(t.assignments, "assignments", 8, [&](auto& a) {
      io.i32(a.partition_index, "partition_index");
      io.int32_array(a.broker_ids, "broker_ids");
    });
    io.array(t.configs, "configs", 4, [&](auto& c) {
      io.string(c.name, "name");
      io.nullable_string(c.value, "value");
    });
  });
  io.i32(m.timeout_ms, "timeout_ms");
  if (v >= 1) io.boolean(m.validate_only, "validate_only");
}

template <class Io>
void serde(Io& io, Ref<CreateTopicsResponse, Io> m, int v) {
  if (v >= 2) io.i32(m.throttle_time_ms, "throttle_time_ms");
  io.array(m.topics, "topics", 4, [&](auto& t) {
    io.string(t.name, "name");
    io.i16(t.error_code, "error_code");
    if (v >= 1) io.nullable_string(t.error_message, "error_message");
  });
}

template <class Io>
void serde(Io& io, Ref<DeleteTopicsRequest, Io> m, int) {
  io.string_array(m.topic_names, "topic_names");
  io.i32(m.timeout_ms, "timeout_ms");
}

template <class Io>
void serde(Io& io, Ref<DeleteTopicsResponse, Io> m, int v) {
  if (v >= 1) io.i32(m.throttle_time_ms, "throttle_time_ms");
  io.array(m.responses, "responses", 4, [&](auto& r) {
    io.string(r.name, "name");
    io.i16(r.error_code, "error_code");
  });
}

template <class Io>
void serde(Io& io, Ref<DescribeGroupsRequest, Io> m, int v) {
  io.string_array(m.groups, "groups");
  if (v >= 3) io.boolean(m.include_authorized_operations, "include_authorized_operations");
}

template <class Io>
void serde(Io& io, Ref<DescribeGroupsResponse, Io> m, int v) {
  if (v >= 1) io.i32(m.throttle_time_ms, "throttle_time_ms");
  io.array(m.groups, "groups", 14, [&](auto& g) {
    io.i16(g.error_code, "error_code");
    io.string(g.group_id, "group_id");
    io.string(g.group_state, "group_state");
    io.string(g.protocol_type, "protocol_type");
    io.string(g.protocol_data, "protocol_data");
    io.array(g.members, "members", 14, [&](auto& mem) {
      io.string(mem.member_id, "member_id");
      if (v >= 4) io.nullable_string(mem.group_instance_id, "group_instance_id");
      io.string(mem.client_id, "client_id");
      io.string(mem.client_host, "client_host");
      io.bytes(mem.member_metadata, "member_metadata");
      io.bytes(mem.member_assignment, "member_assignment");
    });
    if (v >= 3) io.i32(g.authorized_operations, "authorized_operations");
  });
}

template <class Io>
void serde(Io&, Ref<ListGroupsRequest, Io>, int) {}

template <class Io>
void serde(Io& io, Ref<ListGroupsResponse, Io> m, int v) {
  if (v >= 1) io.i32(m.throttle_time_ms, "throttle_time_ms");
  io.i16(m.error_code, "error_code");
  io.array(m.groups, "groups", 4, [&](auto& g) {
    io.string(g.group_id, "group_id");
    io.string(g.protocol_type, "protocol_type");
  });
}

template <class Io>
void serde(Io& io, Ref<DescribeConfigsRequest, Io> m, int v) {
  io.array(m.resources, "resources", 7, [&](auto& r) {
    io.i8(r.resource_type, "resource_type");
    io.string(r.resource_name, "resource_name");
    io.nullable_array(r.configuration_keys, "configuration_keys", 2, [&](auto& k) { io.string(k, "configuration_keys"); });
  });
  if (v >= 1) io.boolean(m.include_synonyms, "include_synonyms");
}

template <class Io>
void serde(Io& io, Ref<DescribeConfigsResponse, Io> m, int v) {
  io.i32(m.throttle_time_ms, "throttle_time_ms");
  io.array(m.results, "results", 13, [&](auto& r) {
    io.i16(r.error_code, "error_code");
    io.nullable_string(r.error_message, "error_message");
    io.i8(r.resource_type, "resource_type");
    io.string(r.resource_name, "resource_name");
    io.array(r.configs, "configs", 7, [&](auto& c) {
      io.string(c.name, "name");
      io.nullable_string(c.value, "value");
      io.boolean(c.read_only, "read_only");
      if (v == 0) io.boolean(c.is_default, "is_default");
      if (v >= 1) io.i8(c.config_source, "config_source");
      io.boolean(c.is_sensitive, "is_sensitive");
      if (v >= 1) {
        io.array(c.synonyms, "synonyms", 5, [&](auto& s) {
          io.string(s.name, "name");
          io.nullable_string(s.value, "value");
          io.i8(s.source, "source");
        });
      }
    });
  });
}

// ---- Framing ----

void write_header(Writer& w, const RequestHeader& h) {
  w.i16(h.api_key, "api_key");
  w.i16(h.api_version, "api_version");
  w.i32(h.correlation_id, "correlation_id");
  bool flexible = w.flexible();
  w.set_flexible(false);  // client_id keeps its int16 length in header v2
  w.nullable_string(h.client_id, "client_id");
  w.set_flexible(flexible);
  w.tags();
}

void patch_size(std::string& out) {
  auto n = static_cast<std::uint32_t>(out.size() - 4);
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>(n >> (8 * (3 - i)));
}

// Runs serde over the variant alternative whose API key is `key` (made the active one).
template <class Variant, class Io, std::size_t I = 0>
bool serde_by_key(Io& io, Variant& out, std::int16_t key, int v) {
  if constexpr (I == std::variant_size_v<Variant>) {
    return false;
  } else {
    using T = std::variant_alternative_t<I, Variant>;
    if (T::kKey == key) {
      serde<Io>(io, out.template emplace<I>(), v);
      return true;
    }
    return serde_by_key<Variant, Io, I + 1>(io, out, key, v);
  }
}

// Fills every field a version carries with a distinct value (nullables alternate between
// null and a value, arrays get two elements): sample_request()/sample_response().
class Filler {
 public:
  static constexpr bool kReading = true;
  explicit Filler(bool flexible) : flexible_(flexible) {}
  bool ok() const { return true; }
  bool flexible() const { return flexible_; }
  void i8(std::int8_t& v, const char*) { v = static_cast<std::int8_t>(next() % 100); }
  void i16(std::int16_t& v, const char*) { v = static_cast<std::int16_t>(next()); }
  void i32(std::int32_t& v, const char*) { v = static_cast<std::int32_t>(next() * 1000003); }
  void i64(std::int64_t& v, const char*) { v = static_cast<std::int64_t>(next()) << 40 | 7; }
  void boolean(bool& v, const char*) { v = (next() & 1) != 0; }
  void string(std::string& v, const char* f) { v = std::string(f) + "-" + std::to_string(next()); }
  void bytes(std::string& v, const char* f) {
    string(v, f);
    v.push_back(0);
  }
  void nullable_string(std::optional<std::string>& v, const char* f) {
    if (next() % 3 == 0) v.reset();
    else string(v.emplace(), f);
  }
  void nullable_bytes(std::optional<std::string>& v, const char* f) {
    if (next() % 3 == 0) v.reset();
    else bytes(v.emplace(), f);
  }
  void tags(const char* = nullptr) {}
  template <class T, class Each>
  void array(std::vector<T>& v, const char*, std::size_t, Each&& each) {
    v.resize(2);
    for (auto& e : v) each(e);
  }
  template <class T, class Each>
  void nullable_array(std::optional<std::vector<T>>& v, const char* f, std::size_t m, Each&& each) {
    if (next() % 3 == 0) v.reset();
    else array(v.emplace(), f, m, each);
  }
  void int32_array(std::vector<std::int32_t>& v, const char* f) {
    array(v, f, 4, [&](std::int32_t& x) { i32(x, f); });
  }
  void string_array(std::vector<std::string>& v, const char* f) {
    array(v, f, 2, [&](std::string& x) { string(x, f); });
  }

 private:
  std::uint32_t next() { return ++n_; }
  bool flexible_;
  std::uint32_t n_ = 0;
};

}  // namespace

const std::span<const ApiInfo> kApis(kApiTable);

const ApiInfo* find_api(std::int16_t key) {
  for (const auto& a : kApiTable)
    if (a.key == key) return &a;
  return nullptr;
}

bool is_flexible(std::int16_t key, std::int16_t version) {
  auto* a = find_api(key);
  return a && version >= a->flexible_from;
}

ApiVersionsResponse supported_api_versions() {
  ApiVersionsResponse r;
  for (const auto& a : kApiTable) r.api_keys.push_back({a.key, a.min_version, a.max_version});
  return r;
}

tl::expected<std::optional<std::size_t>, std::string> frame_size(std::span<const std::uint8_t> in,
                                                                 std::int32_t max_frame) {
  if (in.size() < 4) return std::nullopt;
  std::int32_t n;
  Reader r(in.first(4));
  r.i32(n, "size");
  if (n < 0) return tl::unexpected("kafka frame: negative size " + std::to_string(n));
  if (n > max_frame) {
    return tl::unexpected("kafka frame: size " + std::to_string(n) + " exceeds the limit of " +
                          std::to_string(max_frame) + " bytes");
  }
  if (in.size() - 4 < static_cast<std::size_t>(n)) return std::nullopt;
  return static_cast<std::size_t>(n);
}

tl::expected<Request, DecodeError> decode_request(std::span<const std::uint8_t> frame) {
  Request req;
  auto& h = req.header;
  Reader r(frame);
  r.i16(h.api_key, "api_key");
  r.i16(h.api_version, "api_version");
  r.i32(h.correlation_id, "correlation_id");
  r.nullable_string(h.client_id, "client_id");
  if (!r.ok()) return tl::unexpected(DecodeError{DecodeError::Kind::kMalformed, "kafka request header: " + r.error(), {}});
  auto* api = find_api(h.api_key);
  if (!api) {
    return tl::unexpected(DecodeError{DecodeError::Kind::kUnsupportedApi,
                                      "kafka request: unsupported API key " + std::to_string(h.api_key), h});
  }
  auto name = std::string("kafka ") + api->name + " v" + std::to_string(h.api_version);
  if (h.api_version < api->min_version || h.api_version > api->max_version) {
    return tl::unexpected(DecodeError{DecodeError::Kind::kUnsupportedVersion,
                                      name + ": unsupported version (we support " + std::to_string(api->min_version) +
                                          "-" + std::to_string(api->max_version) + ")",
                                      h});
  }
  r.set_flexible(is_flexible(h.api_key, h.api_version));
  r.tags("header tagged_fields");
  serde_by_key(r, req.body, h.api_key, h.api_version);
  r.tags();
  if (r.ok() && r.remaining() != 0) {
    r.fail("end of request", std::to_string(r.remaining()) + " bytes after the last field");
  }
  if (!r.ok()) return tl::unexpected(DecodeError{DecodeError::Kind::kMalformed, name + ": " + r.error(), h});
  return req;
}

std::string encode_request(const RequestHeader& h, const RequestBody& body) {
  std::string out(4, '\0');
  Writer w(out, is_flexible(h.api_key, h.api_version));
  write_header(w, h);
  std::visit([&](const auto& m) { serde<Writer>(w, m, h.api_version); }, body);
  w.tags();
  patch_size(out);
  return out;
}

std::string encode_response(std::int32_t correlation_id, std::int16_t version, const ResponseBody& body) {
  std::string out(4, '\0');
  std::visit(
      [&](const auto& m) {
        constexpr auto key = std::decay_t<decltype(m)>::kKey;
        Writer w(out, is_flexible(key, version));
        w.i32(correlation_id, "correlation_id");
        if (key != kApiVersions) w.tags();  // response header v1; ApiVersions keeps v0 (KIP-511)
        serde<Writer>(w, m, version);
        w.tags();
      },
      body);
  patch_size(out);
  return out;
}

RequestBody sample_request(std::int16_t key, std::int16_t version) {
  RequestBody b;
  Filler f(is_flexible(key, version));
  serde_by_key(f, b, key, version);
  return b;
}

ResponseBody sample_response(std::int16_t key, std::int16_t version) {
  ResponseBody b;
  Filler f(is_flexible(key, version));
  serde_by_key(f, b, key, version);
  return b;
}

std::string encode_api_versions_fallback(std::int32_t correlation_id) {
  auto r = supported_api_versions();
  r.error_code = kUnsupportedVersion;
  return encode_response(correlation_id, 0, r);
}

tl::expected<std::pair<std::int32_t, ResponseBody>, std::string> decode_response(
    std::int16_t api_key, std::int16_t version, std::span<const std::uint8_t> frame) {
  std::pair<std::int32_t, ResponseBody> out;
  bool flexible = is_flexible(api_key, version);
  Reader r(frame, flexible);
  r.i32(out.first, "correlation_id");
  if (api_key != kApiVersions) r.tags("header tagged_fields");
  if (!serde_by_key(r, out.second, api_key, version)) {
    return tl::unexpected("kafka response: unsupported API key " + std::to_string(api_key));
  }
  r.tags();
  if (r.ok() && r.remaining() != 0) r.fail("end of response", std::to_string(r.remaining()) + " bytes after the last field");
  if (!r.ok()) return tl::unexpected("kafka response " + std::to_string(api_key) + " v" + std::to_string(version) + ": " + r.error());
  return out;
}

}  // namespace shmbus::kafka
