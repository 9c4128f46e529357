// shmbus.AdminClient: confluent-kafka's AdminClient over the bus (create, delete, list
// topics) and busd's control protocol (list and describe groups, as `busctl group` asks).
// Results come as concurrent.futures.Future objects, already resolved: every operation is
// done before the call returns.
#include <fmt/format.h>

#include <pybind11/eval.h>

#include "bus/group_client.h"
#include "module.h"

namespace shmbus::py {

namespace {

// Plain Python classes with confluent-kafka's attribute names.
constexpr const char* kMetadataClasses = R"py(
class ClusterMetadata:
    """The bus as confluent-kafka's ClusterMetadata: cluster_id is the bus name, brokers is empty."""
    def __init__(self):
        self.cluster_id = None
        self.controller_id = -1
        self.brokers = {}
        self.topics = {}
        self.orig_broker_id = -1
        self.orig_broker_name = None
    def __repr__(self):
        return "ClusterMetadata({})".format(self.cluster_id)

class TopicMetadata:
    """A topic: partitions maps partition id to PartitionMetadata; config is its shmbus TopicConfig."""
    def __init__(self, topic):
        self.topic = topic
        self.partitions = {}
        self.error = None
        self.config = {}
    def __repr__(self):
        return "TopicMetadata({}, {} partitions)".format(self.topic, len(self.partitions))

class PartitionMetadata:
    """A partition; low and high are its watermark offsets (no leaders or replicas on shared memory)."""
    def __init__(self, id, low, high):
        self.id = id
        self.leader = -1
        self.replicas = []
        self.isrs = []
        self.error = None
        self.low = low
        self.high = high
    def __repr__(self):
        return "PartitionMetadata({})".format(self.id)

class GroupMember:
    """A group member: id is its member id, client_id its name, client_host 'pid N'."""
    def __init__(self, id, client_id, client_host, assignment):
        self.id = id
        self.client_id = client_id
        self.client_host = client_host
        self.metadata = b""
        self.assignment = assignment

class GroupMetadata:
    """A consumer group as busd keeps it; partitions lists TopicPartitions at their committed offsets."""
    def __init__(self, id, state, protocol, generation, members, partitions):
        self.broker = None
        self.id = id
        self.error = None
        self.state = state
        self.protocol_type = "consumer"
        self.protocol = protocol
        self.generation = generation
        self.members = members
        self.partitions = partitions
    def __repr__(self):
        return "GroupMetadata({}, {})".format(self.id, self.state)

class NewTopic:
    """NewTopic(topic, num_partitions=-1, replication_factor=-1, replica_assignment=None, config=None):
    num_partitions -1 is 1; replication_factor must be -1 or 1; config keys: shmbus.config_keys() ('topic')."""
    def __init__(self, topic, num_partitions=-1, replication_factor=-1, replica_assignment=None, config=None):
        self.topic = topic
        self.num_partitions = num_partitions
        self.replication_factor = replication_factor
        self.replica_assignment = replica_assignment
        self.config = dict(config or {})
    def __repr__(self):
        return "NewTopic({}, {})".format(self.topic, self.num_partitions)
)py";

// Never destroyed: a static Python object would be released after the interpreter.
pb::module_& mod() {
  static auto* m = new pb::module_(pb::module_::import("shmbus"));
  return *m;
}

pb::object resolved(const pb::object& result) {
  pb::object f = pb::module_::import("concurrent.futures").attr("Future")();
  f.attr("set_result")(result);
  return f;
}

pb::object failed(const Error& e) {
  pb::object f = pb::module_::import("concurrent.futures").attr("Future")();
  f.attr("set_exception")(kafka_exception(static_cast<int>(e.code), e.message));
  return f;
}

TopicConfig topic_config(const pb::object& new_topic) {
  TopicConfig cfg;
  const std::int64_t parts = new_topic.attr("num_partitions").cast<std::int64_t>();
  if (parts == 0 || parts < -1 || parts > 65536) raise(kErrInvalidArg, fmt::format("num_partitions {}: 1..65536, or -1", parts));
  cfg.partitions = parts == -1 ? 1 : static_cast<std::uint32_t>(parts);
  const std::int64_t rf = new_topic.attr("replication_factor").cast<std::int64_t>();
  if (rf != -1 && rf != 1) raise(kErrInvalidArg, fmt::format("replication_factor {}: one machine holds one copy (-1 or 1)", rf));
  if (!new_topic.attr("replica_assignment").is_none()) raise(kErrInvalidArg, "replica_assignment: there are no replicas");
  Conf c(new_topic.attr("config").cast<pb::dict>(), Client::kTopic);
  cfg.capacity = static_cast<std::uint64_t>(c.integer("shmbus.capacity", static_cast<std::int64_t>(cfg.capacity)));
  cfg.max_record = static_cast<std::uint32_t>(c.integer("max.message.bytes", 0));
  const std::string ret = c.str("shmbus.retention", "overwrite");
  if (ret == "block") cfg.retention = RetentionMode::kBlock;
  else if (ret != "overwrite") raise(kErrInvalidArg, fmt::format("topic config 'shmbus.retention' = '{}': overwrite or block", ret));
  cfg.claim_timeout_ms = static_cast<std::uint32_t>(c.integer("shmbus.claim.timeout.ms", cfg.claim_timeout_ms));
  cfg.spill.enabled = c.boolean("shmbus.spill", false);
  cfg.spill.retention_bytes = static_cast<std::uint64_t>(c.integer("retention.bytes", 0));
  cfg.spill.retention_ms = c.integer("retention.ms", 0);
  cfg.spill.segment_bytes = static_cast<std::uint64_t>(c.integer("segment.bytes", static_cast<std::int64_t>(cfg.spill.segment_bytes)));
  const std::string fs = c.str("shmbus.fsync", "interval");
  if (fs == "never") cfg.spill.fsync = FsyncPolicy::kNever;
  else if (fs == "always") cfg.spill.fsync = FsyncPolicy::kAlways;
  else if (fs != "interval") raise(kErrInvalidArg, fmt::format("topic config 'shmbus.fsync' = '{}': never, interval or always", fs));
  return cfg;
}

pb::object group_metadata(const std::string& id, const proto::json& d) {
  pb::list members, partitions;
  for (const auto& m : d.value("members", proto::json::array())) {
    pb::list assignment;
    for (const auto& tp : m.value("partitions", proto::json::array()))
      assignment.append(PyTopicPartition{tp[0].get<std::string>(), tp[1].get<std::int32_t>(), kOffsetInvalid, pb::none()});
    members.append(mod().attr("GroupMember")(m.value("member_id", ""), m.value("name", ""),
                                             fmt::format("pid {}", m.value("pid", 0)), assignment));
  }
  for (const auto& p : d.value("partitions", proto::json::array())) {
    const std::int64_t committed = p["committed"].is_null() ? kOffsetInvalid : p["committed"].get<std::int64_t>();
    partitions.append(PyTopicPartition{p["topic"].get<std::string>(), p["partition"].get<std::int32_t>(), committed, pb::none()});
  }
  return mod().attr("GroupMetadata")(id, d.value("state", ""), d.value("assignor", ""), d.value("generation", 0), members,
                                     partitions);
}

class PyAdmin {
 public:
  explicit PyAdmin(const pb::dict& conf) {
    Conf c(conf, Client::kAdmin);
    bus_ = c.attach_bus();
  }

  pb::dict create_topics(const pb::list& new_topics, const pb::object&, const pb::object&, bool validate_only) {
    Bus& bus = open();
    std::vector<std::pair<std::string, TopicConfig>> todo;
    for (auto t : new_topics) {
      if (!pb::isinstance(t, mod().attr("NewTopic"))) throw pb::type_error("create_topics() takes a list of NewTopic");
      todo.emplace_back(t.attr("topic").cast<std::string>(), topic_config(pb::reinterpret_borrow<pb::object>(t)));
    }
    pb::dict out;
    for (const auto& [name, cfg] : todo) {
      Status s;
      if (!validate_only) {
        pb::gil_scoped_release nogil;  // the registry lock
        s = bus.create_topic(name, cfg);
      }
      out[pb::str(name)] = s ? resolved(pb::none()) : failed(s.error());
    }
    return out;
  }

  pb::dict delete_topics(const std::vector<std::string>& topics, const pb::object&, const pb::object&) {
    Bus& bus = open();
    pb::dict out;
    for (const auto& name : topics) {
      Status s;
      {
        pb::gil_scoped_release nogil;
        s = bus.delete_topic(name);
      }
      out[pb::str(name)] = s ? resolved(pb::none()) : failed(s.error());
    }
    return out;
  }

  pb::object list_topics(const pb::object& topic, const pb::object&) { return cluster_metadata(open(), topic); }

  pb::list list_groups(const pb::object& group, const pb::object&) {
    open();
    pb::list out;
    auto conn = connect();
    if (!conn) {
      if (conn.error().code == Errc::kNotFound) return out;  // no busd: no groups
      raise(conn.error());
    }
    std::vector<std::string> names;
    if (!group.is_none()) names.push_back(group.cast<std::string>());
    else
      for (const auto& g : request(**conn, {{"op", "group_list"}}).value("groups", proto::json::array()))
        names.push_back(g.value("group", ""));
    for (const auto& n : names) {
      auto d = try_request(**conn, {{"op", "group_describe"}, {"group", n}});
      if (d) out.append(group_metadata(n, *d));
      else if (group.is_none() || d.error().code != Errc::kNotFound) raise(d.error());
    }
    return out;
  }

  pb::dict describe_groups(const std::vector<std::string>& ids, const pb::object&) {
    open();
    pb::dict out;
    auto conn = connect();
    for (const auto& id : ids) {
      if (!conn) {
        Error e = conn.error();
        if (e.code == Errc::kNotFound) e.message = fmt::format("group '{}' does not exist (no busd runs for bus '{}')", id, bus_->name());
        out[pb::str(id)] = failed(e);
        continue;
      }
      auto d = try_request(**conn, {{"op", "group_describe"}, {"group", id}});
      out[pb::str(id)] = d ? resolved(group_metadata(id, *d)) : failed(d.error());
    }
    return out;
  }

  void close() { bus_.reset(); }

 private:
  Bus& open() {
    if (!bus_) raise_closed("AdminClient");
    return *bus_;
  }

  Result<std::unique_ptr<BusdConnection>> connect() {
    pb::gil_scoped_release nogil;
    return BusdConnection::connect(bus_->name(), std::chrono::seconds(5), /*autostart=*/false);
  }

  Result<proto::json> try_request(BusdConnection& conn, proto::json req) {
    pb::gil_scoped_release nogil;
    return conn.request(std::move(req), std::chrono::seconds(5));
  }

  proto::json request(BusdConnection& conn, proto::json req) { return take(try_request(conn, std::move(req))); }

  std::shared_ptr<Bus> bus_;
};

}  // namespace

pb::object cluster_metadata(Bus& bus, const pb::object& topic) {
  std::vector<TopicInfo> infos;
  if (!topic.is_none()) {
    Result<TopicInfo> one;
    const std::string name = topic.cast<std::string>();
    {
      pb::gil_scoped_release nogil;
      one = bus.describe_topic(name);
    }
    infos.push_back(take(std::move(one)));
  } else {
    pb::gil_scoped_release nogil;
    // list_topics() has no partitions: each is described (one deleted meanwhile is left out).
    for (const auto& t : bus.list_topics())
      if (auto d = bus.describe_topic(t.name)) infos.push_back(std::move(*d));
  }
  pb::object md = mod().attr("ClusterMetadata")();
  md.attr("cluster_id") = bus.name();
  md.attr("orig_broker_name") = fmt::format("shm:{}", bus.name());
  pb::dict topics;
  for (const auto& t : infos) {
    pb::object tm = mod().attr("TopicMetadata")(t.name);
    pb::dict parts;
    for (const auto& p : t.partitions) parts[pb::int_(p.partition)] = mod().attr("PartitionMetadata")(p.partition, p.start_offset, p.end_offset);
    tm.attr("partitions") = parts;
    pb::dict cfg;
    cfg["shmbus.capacity"] = t.config.capacity;
    cfg["max.message.bytes"] = t.config.max_record;
    cfg["shmbus.retention"] = t.config.retention == RetentionMode::kBlock ? "block" : "overwrite";
    cfg["shmbus.claim.timeout.ms"] = t.config.claim_timeout_ms;
    cfg["shmbus.spill"] = t.config.spill.enabled;
    tm.attr("config") = cfg;
    topics[pb::str(t.name)] = tm;
  }
  md.attr("topics") = topics;
  return md;
}

void bind_admin(pb::module_& m) {
  pb::exec(kMetadataClasses, m.attr("__dict__"));
  pb::class_<PyAdmin>(m, "AdminClient",
                      "AdminClient(conf): topics of the bus, and consumer groups as busd keeps them. Results are\n"
                      "dicts of concurrent.futures.Future, already resolved (every operation is done when the call\n"
                      "returns), as confluent-kafka's. conf: 'bus'.")
      .def(pb::init<const pb::dict&>(), pb::arg("conf") = pb::dict())
      .def("create_topics", &PyAdmin::create_topics, pb::arg("new_topics"), pb::arg("operation_timeout") = pb::none(),
           pb::arg("request_timeout") = pb::none(), pb::arg("validate_only") = false,
           "{topic: Future}: creates each NewTopic (shmbus topic config keys in NewTopic.config).")
      .def("delete_topics", &PyAdmin::delete_topics, pb::arg("topics"), pb::arg("operation_timeout") = pb::none(),
           pb::arg("request_timeout") = pb::none(), "{topic: Future}: deletes each topic.")
      .def("list_topics", &PyAdmin::list_topics, pb::arg("topic") = pb::none(), pb::arg("timeout") = -1,
           "ClusterMetadata: every topic (or one), with partitions and their watermarks.")
      .def("list_groups", &PyAdmin::list_groups, pb::arg("group") = pb::none(), pb::arg("timeout") = -1,
           "[GroupMetadata] of every group busd knows (none when no busd runs), or of one.")
      .def("describe_groups", &PyAdmin::describe_groups, pb::arg("group_ids"), pb::arg("request_timeout") = -1,
           "{group id: Future[GroupMetadata]} with members, assignments and committed offsets.")
      .def("close", &PyAdmin::close, "Detaches from the bus; later calls raise RuntimeError. Closing twice is allowed.");
}

}  // namespace shmbus::py
