// Reads and checks the mirror's configuration file (tools/mirror/config.h, docs/mirror.md).
#include "tools/mirror/config.h"

#include <fstream>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <librdkafka/rdkafka.h>
#include <nlohmann/json.hpp>

#include "bus/names.h"

namespace shmbus::mirror {
namespace {

using json = nlohmann::json;

// Errors name the file and the field: "<origin>: <field>: <what>".
class Reader {
 public:
  explicit Reader(const std::string& origin) : origin_(origin) {}

  tl::unexpected<Error> bad(const std::string& field, const std::string& what) const {
    return make_error(Errc::kInvalidArgument, fmt::format("{}: {}: {}", origin_, field, what));
  }

  Status only_known(const json& obj, const std::string& where, std::initializer_list<const char*> known) const {
    for (auto it = obj.begin(); it != obj.end(); ++it) {
      bool ok = false;
      for (const char* k : known) ok = ok || it.key() == k;
      if (!ok) {
        std::string list;
        for (const char* k : known) list += (list.empty() ? "" : ", ") + std::string(k);
        return bad(where.empty() ? it.key() : where + "." + it.key(), "unknown field (known: " + list + ")");
      }
    }
    return {};
  }

  Result<std::string> string(const json& obj, const char* key, const std::string& field, bool required,
                             std::string fallback = {}) const {
    if (!obj.contains(key)) {
      if (required) return bad(field, "missing");
      return fallback;
    }
    if (!obj[key].is_string()) return bad(field, "must be a string");
    return obj[key].get<std::string>();
  }

  Result<std::int64_t> integer(const json& obj, const char* key, const std::string& field, std::int64_t lo,
                               std::int64_t hi, std::int64_t fallback) const {
    if (!obj.contains(key)) return fallback;
    if (!obj[key].is_number_integer()) return bad(field, "must be an integer");
    const auto v = obj[key].get<std::int64_t>();
    if (v < lo || v > hi) return bad(field, fmt::format("must be {}..{}, not {}", lo, hi, v));
    return v;
  }

  // A librdkafka property object: values are strings, numbers or booleans.
  Status properties(const json& obj, const std::string& field, std::map<std::string, std::string>& out) const {
    if (!obj.is_object()) return bad(field, "must be an object of librdkafka properties");
    for (auto it = obj.begin(); it != obj.end(); ++it) {
      const json& v = it.value();
      if (v.is_string()) out[it.key()] = v.get<std::string>();
      else if (v.is_boolean()) out[it.key()] = v.get<bool>() ? "true" : "false";
      else if (v.is_number_integer()) out[it.key()] = std::to_string(v.get<std::int64_t>());
      else if (v.is_number()) out[it.key()] = fmt::format("{}", v.get<double>());
      else return bad(field + "." + it.key(), "must be a string, number or boolean");
    }
    return {};
  }

  // What librdkafka itself says of each property, on the configuration the mirror will use.
  Status check_with_librdkafka(const std::map<std::string, std::string>& props, const std::string& field) const {
    rd_kafka_conf_t* conf = rd_kafka_conf_new();
    char errstr[512];
    Status st;
    for (const auto& [k, v] : props) {
      if (rd_kafka_conf_set(conf, k.c_str(), v.c_str(), errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
        st = bad(field + "." + k, std::string("librdkafka: ") + errstr);
        break;
      }
    }
    rd_kafka_conf_destroy(conf);
    return st;
  }

 private:
  const std::string& origin_;
};

}  // namespace

const char* direction_name(Direction d) noexcept { return d == Direction::kOut ? "out" : "in"; }

Result<MirrorConfig> parse_config(std::string_view text, const std::string& origin) {
  const Reader r(origin);
  json doc = json::parse(text, nullptr, false);
  if (doc.is_discarded()) return make_error(Errc::kInvalidArgument, origin + ": not valid JSON");
  if (!doc.is_object()) return r.bad("(top level)", "must be a JSON object");
  if (auto st = r.only_known(doc, "", {"bus", "bootstrap_servers", "kafka", "status_interval_ms", "mirrors"}); !st)
    return tl::unexpected(st.error());

  MirrorConfig cfg;
  auto bus = r.string(doc, "bus", "bus", false);
  if (!bus) return tl::unexpected(bus.error());
  cfg.bus = *bus;
  if (!cfg.bus.empty()) {
    if (auto st = validate_name("bus", cfg.bus); !st) return r.bad("bus", st.error().message);
  }
  auto interval = r.integer(doc, "status_interval_ms", "status_interval_ms", 100, 60'000, 1000);
  if (!interval) return tl::unexpected(interval.error());
  cfg.status_interval = std::chrono::milliseconds(*interval);

  std::map<std::string, std::string> common;
  if (doc.contains("kafka")) {
    if (auto st = r.properties(doc["kafka"], "kafka", common); !st) return tl::unexpected(st.error());
  }
  auto servers = r.string(doc, "bootstrap_servers", "bootstrap_servers", false);
  if (!servers) return tl::unexpected(servers.error());

  if (!doc.contains("mirrors")) return r.bad("mirrors", "missing (a list of mirrors)");
  const json& list = doc["mirrors"];
  if (!list.is_array() || list.empty()) return r.bad("mirrors", "must be a non-empty list");
  std::set<std::string> names;
  for (std::size_t i = 0; i < list.size(); ++i) {
    const std::string at = fmt::format("mirrors[{}]", i);
    const json& m = list[i];
    if (!m.is_object()) return r.bad(at, "must be an object");
    if (auto st = r.only_known(m, at, {"name", "direction", "bus_topic", "kafka_topic", "partitioning", "bootstrap_servers",
                                       "kafka", "group", "on_record_error", "commit_interval_ms", "commit_records", "acks", "hold_producers"});
        !st)
      return tl::unexpected(st.error());
    MirrorSpec s;
    auto name = r.string(m, "name", at + ".name", true);
    if (!name) return tl::unexpected(name.error());
    s.name = *name;
    // The name becomes a group name ("mirror.<name>") and a file name.
    if (auto st = validate_name("mirror name", s.name); !st) return r.bad(at + ".name", st.error().message);
    if (s.name.size() > kMaxNameLength - 7) return r.bad(at + ".name", fmt::format("longer than {} characters", kMaxNameLength - 7));
    if (!names.insert(s.name).second) return r.bad(at + ".name", "'" + s.name + "' names two mirrors");

    auto dir = r.string(m, "direction", at + ".direction", true);
    if (!dir) return tl::unexpected(dir.error());
    if (*dir == "out") s.direction = Direction::kOut;
    else if (*dir == "in") s.direction = Direction::kIn;
    else return r.bad(at + ".direction", "must be \"out\" (bus -> Kafka) or \"in\" (Kafka -> bus), not \"" + *dir + "\"");

    auto bt = r.string(m, "bus_topic", at + ".bus_topic", true);
    if (!bt) return tl::unexpected(bt.error());
    s.bus_topic = *bt;
    if (auto st = validate_name("topic", s.bus_topic); !st) return r.bad(at + ".bus_topic", st.error().message);
    auto kt = r.string(m, "kafka_topic", at + ".kafka_topic", false, s.bus_topic);
    if (!kt) return tl::unexpected(kt.error());
    s.kafka_topic = *kt;
    // Kafka's own rule for topic names: [a-zA-Z0-9._-], at most 249.
    if (s.kafka_topic.empty() || s.kafka_topic.size() > 249 ||
        s.kafka_topic.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") != std::string::npos)
      return r.bad(at + ".kafka_topic", "'" + s.kafka_topic + "' is not a Kafka topic name ([a-zA-Z0-9._-]{1,249})");

    auto part = r.string(m, "partitioning", at + ".partitioning", false, "auto");
    if (!part) return tl::unexpected(part.error());
    if (*part == "auto") s.partitioning = Partitioning::kAuto;
    else if (*part == "same") s.partitioning = Partitioning::kSame;
    else if (*part == "key") s.partitioning = Partitioning::kKey;
    else return r.bad(at + ".partitioning", "must be \"auto\", \"same\" or \"key\", not \"" + *part + "\"");

    s.kafka = common;
    if (m.contains("kafka")) {
      if (auto st = r.properties(m["kafka"], at + ".kafka", s.kafka); !st) return tl::unexpected(st.error());
    }
    auto own_servers = r.string(m, "bootstrap_servers", at + ".bootstrap_servers", false, *servers);
    if (!own_servers) return tl::unexpected(own_servers.error());
    if (!own_servers->empty()) s.kafka["bootstrap.servers"] = *own_servers;
    if (s.kafka.count("bootstrap.servers") == 0 || s.kafka["bootstrap.servers"].empty())
      return r.bad(at + ".bootstrap_servers", "missing (here, at the top level, or as kafka.\"bootstrap.servers\")");
    // The mirror sets these itself: the guarantees depend on them.
    for (const char* fixed : {"enable.auto.commit", "enable.auto.offset.store", "enable.idempotence", "acks",
                              "request.required.acks", "group.id"}) {
      if (s.kafka.count(fixed))
        return r.bad(at + ".kafka." + fixed, "set by the mirror itself (docs/mirror.md, \"Guarantees\"); remove it");
    }
    if (auto st = r.check_with_librdkafka(s.kafka, at + ".kafka"); !st) return tl::unexpected(st.error());

    auto group = r.string(m, "group", at + ".group", false, "mirror." + s.name);
    if (!group) return tl::unexpected(group.error());
    s.group = *group;
    if (auto st = validate_name("group", s.group); !st) return r.bad(at + ".group", st.error().message);

    auto on_err = r.string(m, "on_record_error", at + ".on_record_error", false, "stop");
    if (!on_err) return tl::unexpected(on_err.error());
    if (*on_err == "stop") s.on_record_error = OnRecordError::kStop;
    else if (*on_err == "skip") s.on_record_error = OnRecordError::kSkip;
    else return r.bad(at + ".on_record_error", "must be \"stop\" or \"skip\", not \"" + *on_err + "\"");

    auto ci = r.integer(m, "commit_interval_ms", at + ".commit_interval_ms", 1, 60'000, 200);
    if (!ci) return tl::unexpected(ci.error());
    s.commit_interval = std::chrono::milliseconds(*ci);
    auto cr = r.integer(m, "commit_records", at + ".commit_records", 1, 10'000'000, 10'000);
    if (!cr) return tl::unexpected(cr.error());
    s.commit_records = static_cast<std::uint64_t>(*cr);

    if (m.contains("acks")) {
      if (s.direction != Direction::kIn) return r.bad(at + ".acks", "only for \"in\" mirrors (what a send into the bus waits for)");
      auto a = r.string(m, "acks", at + ".acks", true);
      if (!a) return tl::unexpected(a.error());
      if (*a == "memory") s.acks = Acks::kMemory;
      else if (*a == "spilled") s.acks = Acks::kSpilled;
      else if (*a == "fsynced") s.acks = Acks::kFsynced;
      else return r.bad(at + ".acks", "must be \"memory\", \"spilled\" or \"fsynced\", not \"" + *a + "\"");
    }
    if (m.contains("hold_producers")) {
      if (s.direction != Direction::kOut) return r.bad(at + ".hold_producers", "only for \"out\" mirrors");
      if (!m["hold_producers"].is_boolean()) return r.bad(at + ".hold_producers", "must be true or false");
      s.hold_producers = m["hold_producers"].get<bool>();
    }
    cfg.mirrors.push_back(std::move(s));
  }
  return cfg;
}

Result<MirrorConfig> load_config(const std::string& path) {
  std::ifstream f(path);
  if (!f) return make_error(Errc::kNotFound, "cannot read the mirror configuration " + path);
  std::ostringstream text;
  text << f.rdbuf();
  return parse_config(text.str(), path);
}

}  // namespace shmbus::mirror
