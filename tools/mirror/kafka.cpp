// librdkafka handles and metadata for both directions of the mirror (tools/mirror/kafka.h).
#include "tools/mirror/kafka.h"

#include <cstdlib>
#include <string_view>

#include <fmt/format.h>

namespace shmbus::mirror {

Result<rd_kafka_t*> make_kafka(const MirrorSpec& spec, rd_kafka_type_t type, const std::map<std::string, std::string>& fixed,
                               const std::map<std::string, std::string>& defaults, void* opaque,
                               void (*setup)(rd_kafka_conf_t*)) {
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  char errstr[512];
  std::map<std::string, std::string> props = defaults;
  for (const auto& [k, v] : spec.kafka) props[k] = v;
  for (const auto& [k, v] : fixed) props[k] = v;
  props.emplace("client.id", "shmbus-mirror-" + spec.name);
  for (const auto& [k, v] : props) {
    if (rd_kafka_conf_set(conf, k.c_str(), v.c_str(), errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
      rd_kafka_conf_destroy(conf);
      return make_error(Errc::kInvalidArgument, fmt::format("mirror {}: librdkafka property {}: {}", spec.name, k, errstr));
    }
  }
  rd_kafka_conf_set_opaque(conf, opaque);
  setup(conf);
  rd_kafka_t* rk = rd_kafka_new(type, conf, errstr, sizeof errstr);  // takes conf on success
  if (!rk) {
    rd_kafka_conf_destroy(conf);
    return make_error(Errc::kInvalidArgument, fmt::format("mirror {}: librdkafka: {}", spec.name, errstr));
  }
  return rk;
}

Result<std::uint32_t> kafka_partitions(rd_kafka_t* rk, const std::string& topic, std::chrono::milliseconds timeout) {
  rd_kafka_topic_t* rkt = rd_kafka_topic_new(rk, topic.c_str(), nullptr);
  const rd_kafka_metadata_t* md = nullptr;
  const rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, rkt, &md, static_cast<int>(timeout.count()));
  rd_kafka_topic_destroy(rkt);
  if (err) return make_error(Errc::kTimedOut, fmt::format("metadata of Kafka topic '{}': {}", topic, rd_kafka_err2str(err)));
  Result<std::uint32_t> out = make_error(Errc::kNotFound, fmt::format("Kafka topic '{}' is not in the cluster's metadata", topic));
  for (int i = 0; i < md->topic_cnt; ++i) {
    const auto& t = md->topics[i];
    if (topic != t.topic) continue;
    if (t.err)
      out = make_error(Errc::kNotFound, fmt::format("Kafka topic '{}': {} (the mirror creates no topics)", topic, rd_kafka_err2str(t.err)));
    else if (t.partition_cnt <= 0)
      out = make_error(Errc::kNotFound, fmt::format("Kafka topic '{}' has no partitions", topic));
    else
      out = static_cast<std::uint32_t>(t.partition_cnt);
  }
  rd_kafka_metadata_destroy(md);
  return out;
}

std::optional<std::int64_t> kafka_max_message_bytes(rd_kafka_t* rk, const std::string& topic, std::chrono::milliseconds timeout) {
  const int ms = static_cast<int>(timeout.count());
  rd_kafka_ConfigResource_t* res = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topic.c_str());
  rd_kafka_AdminOptions_t* opts = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS);
  char errstr[256];
  rd_kafka_AdminOptions_set_request_timeout(opts, ms, errstr, sizeof errstr);
  rd_kafka_queue_t* q = rd_kafka_queue_new(rk);
  rd_kafka_DescribeConfigs(rk, &res, 1, opts, q);
  rd_kafka_event_t* ev = rd_kafka_queue_poll(q, ms + 1000);
  std::optional<std::int64_t> out;
  if (ev && rd_kafka_event_type(ev) == RD_KAFKA_EVENT_DESCRIBECONFIGS_RESULT && !rd_kafka_event_error(ev)) {
    std::size_t n = 0;
    const rd_kafka_ConfigResource_t** rs = rd_kafka_DescribeConfigs_result_resources(rd_kafka_event_DescribeConfigs_result(ev), &n);
    for (std::size_t i = 0; i < n; ++i) {
      if (rd_kafka_ConfigResource_error(rs[i])) continue;
      std::size_t entries = 0;
      const rd_kafka_ConfigEntry_t** es = rd_kafka_ConfigResource_configs(rs[i], &entries);
      for (std::size_t k = 0; k < entries; ++k) {
        const char* value = rd_kafka_ConfigEntry_value(es[k]);
        if (value && std::string_view(rd_kafka_ConfigEntry_name(es[k])) == "max.message.bytes") out = std::atoll(value);
      }
    }
  }
  if (ev) rd_kafka_event_destroy(ev);
  rd_kafka_queue_destroy(q);
  rd_kafka_AdminOptions_destroy(opts);
  rd_kafka_ConfigResource_destroy(res);
  if (out && *out <= 0) out.reset();
  return out;
}

std::int64_t kafka_property(rd_kafka_t* rk, const char* name) {
  char value[64];
  std::size_t size = sizeof value;
  if (rd_kafka_conf_get(rd_kafka_conf(rk), name, value, &size) != RD_KAFKA_CONF_OK) return 0;
  return std::atoll(value);
}

bool is_record_error(rd_kafka_resp_err_t err) noexcept {
  switch (err) {
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
    case RD_KAFKA_RESP_ERR_INVALID_MSG:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_TIMESTAMP:
      return true;
    default:
      return false;
  }
}

}  // namespace shmbus::mirror
