// Kafka-protocol members of busd's groups: the gateway's group APIs (JoinGroup, SyncGroup,
// Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch, DescribeGroups, ListGroups) on the same
// Group, Member, rebalance() and offset store as native members. busd is every generation's
// leader (a virtual one: kafka::kVirtualLeader), so every Kafka client is a follower and its
// SyncGroup answer carries busd's assignment. How Kafka's eager rebalance meets the native
// revoke handshake: docs/kafka.md, "Consumer groups".
#include <algorithm>
#include <set>

#include "bus/names.h"
#include "bus/topic.h"
#include "shm/process.h"
#include "tools/busd/daemon.h"
#include "tools/busd/kafka/consumer_protocol.h"

namespace shmbus::daemon {

namespace {

namespace k = kafka;
using State = KafkaMember::State;

constexpr std::int16_t kUnknownServerError = -1;
constexpr std::int16_t kOffsetMetadataTooLarge = 12;
constexpr std::int16_t kInvalidGroupId = 24;
constexpr std::int32_t kMinSessionTimeoutMs = 6'000;  // Kafka's group.min/max.session.timeout.ms
constexpr std::int32_t kMaxSessionTimeoutMs = 1'800'000;
constexpr std::size_t kMaxCommitMetadata = 4096;  // Kafka's offset.metadata.max.bytes
// KIP-394 member ids handed out and not used yet, all groups together (docs/kafka.md).
constexpr std::size_t kMaxPendingMemberIds = 4096;
// A Kafka member's protocols' metadata (subscriptions), all together; members of a group
// (all kinds) a Kafka JoinGroup may make; group names one DescribeGroups may name.
constexpr std::size_t kMaxProtocolMetadata = 1 << 20;
constexpr std::size_t kMaxGroupMembers = 1000;
constexpr std::size_t kMaxDescribedGroups = 10'000;
constexpr std::int16_t kGroupMaxSizeReached = 81;

std::string new_member_id(const std::string& client_id) {
  const std::uint64_t a = shm::random_u64(), b = shm::random_u64();
  return fmt::format("{}-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", client_id.empty() ? "kafka" : client_id, a >> 32,
                     (a >> 16) & 0xffff, a & 0xffff, b >> 48, b & 0xffffffffffffull);
}

k::TopicPartitionList partition_list(const std::vector<TopicPartition>& tps) {
  k::TopicPartitionList out;
  for (const auto& tp : tps) {
    if (out.empty() || out.back().first != tp.topic) out.push_back({tp.topic, {}});
    out.back().second.push_back(static_cast<std::int32_t>(tp.partition));
  }
  return out;
}

// KIP-429's incremental protocols: Java's and librdkafka's "cooperative-sticky", and any
// other that says so by name.
bool is_cooperative(const std::string& protocol) { return protocol.find("cooperative") != std::string::npos; }

// The protocol names every member of `members` lists (all of them when `members` is empty).
std::set<std::string> common_protocols(const std::vector<const KafkaMember*>& members) {
  std::set<std::string> common;
  bool first = true;
  for (const KafkaMember* m : members) {
    std::set<std::string> names;
    for (const auto& [name, meta] : m->protocols) names.insert(name);
    if (first) common = std::move(names);
    else std::erase_if(common, [&](const std::string& n) { return !names.count(n); });
    first = false;
  }
  return common;
}

}  // namespace

Member* Daemon::kafka_member(const std::string& group, const std::string& id) {
  auto g = groups_.find(group);
  if (g == groups_.end()) return nullptr;
  auto m = g->second.members.find(id);
  if (m == g->second.members.end() || !m->second.kafka) return nullptr;
  return &m->second;
}

void Daemon::ask_to_rejoin(Member& m) {
  if (m.revoking) return;
  m.revoking = true;
  m.revoke_deadline_ns = shm::monotonic_ns() + static_cast<std::uint64_t>(revoke_timeout_ms(m)) * 1'000'000ull;
}

std::string Daemon::choose_protocol(const Group& g) const {
  // Kafka's vote (ClassicGroup.selectProtocol): each member's most preferred of the
  // protocols all list; the most votes win, ties to the first in the first member's order.
  std::vector<const KafkaMember*> all;
  for (const auto& [id, m] : g.members)
    if (m.kafka) all.push_back(&*m.kafka);
  if (all.empty()) return "";
  const std::set<std::string> common = common_protocols(all);
  std::map<std::string, int> votes;
  for (const KafkaMember* m : all)
    for (const auto& [name, meta] : m->protocols)
      if (common.count(name)) {
        ++votes[name];
        break;
      }
  std::string best;
  for (const auto& [name, meta] : all.front()->protocols)
    if (votes.count(name) && (best.empty() || votes[name] > votes[best])) best = name;
  return best;
}

std::string Daemon::group_state(const Group& g) const {
  if (g.members.empty()) return "Empty";
  bool syncing = false;
  for (const auto& [id, m] : g.members) {
    if (m.revoking || (m.kafka && m.kafka->state == State::kJoining)) return "PreparingRebalance";
    syncing |= m.kafka && m.kafka->state != State::kStable;
  }
  if (g.revoke_deadline_ns) return "PreparingRebalance";
  return syncing ? "CompletingRebalance" : "Stable";
}

// ---- JoinGroup ----

std::optional<k::JoinGroupResponse> Daemon::join_group(const k::JoinGroupRequest& r, std::int16_t version,
                                                       const k::GroupClient& who, bool final, std::string& member_id) {
  k::JoinGroupResponse out;
  out.member_id = r.member_id;
  auto fail = [&](std::int16_t code, const std::string& why) {
    if (!why.empty()) log(fmt::format("kafka: JoinGroup of group '{}' by '{}' refused: {}", r.group_id, who.client_id, why));
    out.error_code = code;
    return out;
  };
  if (auto ok = validate_name("group", r.group_id); !ok) return fail(kInvalidGroupId, ok.error().message);
  if (r.session_timeout_ms < kMinSessionTimeoutMs || r.session_timeout_ms > kMaxSessionTimeoutMs)
    return fail(k::kInvalidSessionTimeout, fmt::format("session timeout {} ms outside {}..{}", r.session_timeout_ms,
                                                       kMinSessionTimeoutMs, kMaxSessionTimeoutMs));
  // busd computes the assignment, so it must read the subscription: consumers only.
  if (r.protocol_type != "consumer" || r.protocols.empty())
    return fail(k::kInconsistentGroupProtocol,
                fmt::format("protocol type '{}' with {} protocols: busd assigns for 'consumer' groups", r.protocol_type,
                            r.protocols.size()));
  // busd serves the eager protocol only: a cooperative client (KIP-429) keeps consuming
  // what it had while it joins again, so handing those partitions to another member would
  // give them two owners. Its cooperative protocols are left out; none other: refused.
  std::vector<k::JoinGroupRequest::Protocol> eager;
  for (const auto& p : r.protocols)
    if (!is_cooperative(p.name)) eager.push_back(p);
  if (eager.empty())
    return fail(k::kInconsistentGroupProtocol,
                fmt::format("only cooperative protocols ('{}'): busd serves eager ones (range, roundrobin, sticky)",
                            r.protocols.front().name));
  std::size_t metadata = 0;
  for (const auto& p : r.protocols) metadata += p.name.size() + p.metadata.size();
  if (metadata > kMaxProtocolMetadata)
    return fail(k::kInconsistentGroupProtocol, fmt::format("{} bytes of protocol metadata (at most {})", metadata,
                                                           kMaxProtocolMetadata));
  auto sub = k::decode_subscription(eager.front().metadata);
  if (!sub) return fail(k::kInconsistentGroupProtocol, sub.error());
  const std::uint64_t now = shm::monotonic_ns();
  auto git = groups_.find(r.group_id);
  std::string id = r.member_id;
  if (id.empty()) {
    id = new_member_id(who.client_id);
    if (version >= 4) {  // KIP-394: the client asks again with this id
      // Bounded: ids asked for and never used lapse only after a session timeout.
      if (kafka_pending_.size() >= kMaxPendingMemberIds)
        return fail(k::kCoordinatorNotAvailable,
                    fmt::format("{} member ids handed out and not used yet: try again later", kafka_pending_.size()));
      kafka_pending_[{r.group_id, id}] = now + static_cast<std::uint64_t>(r.session_timeout_ms) * 1'000'000ull;
      out.member_id = id;
      return fail(k::kMemberIdRequired, "");
    }
  } else {
    const bool pending = kafka_pending_.count({r.group_id, id}) > 0;
    const bool native = git != groups_.end() && git->second.members.count(id) && !git->second.members.at(id).kafka;
    if (native) return fail(k::kUnknownMemberId, fmt::format("member id '{}' is a native member's", id));
    if (!pending && !kafka_member(r.group_id, id)) return fail(k::kUnknownMemberId, "");
  }
  Group& g = groups_[r.group_id];
  g.name = r.group_id;
  kafka_pending_.erase({r.group_id, id});
  member_id = id;
  // A protocol all Kafka members list (the assignor name each client looks up).
  std::vector<const KafkaMember*> others;
  for (const auto& [oid, om] : g.members)
    if (om.kafka && oid != id) others.push_back(&*om.kafka);
  if (!others.empty()) {
    const std::set<std::string> common = common_protocols(others);
    if (std::none_of(eager.begin(), eager.end(), [&](const auto& p) { return common.count(p.name) > 0; }))
      return fail(k::kInconsistentGroupProtocol, "none of its protocols is listed by every other Kafka member");
  }
  // The answer once the generation formed; nullopt (parked) while it forms.
  auto answer = [&](Member& m) -> std::optional<k::JoinGroupResponse> {
    if (m.kafka->state == State::kJoining) return final ? std::optional(fail(k::kRebalanceInProgress, "")) : std::nullopt;
    m.kafka->state = State::kAwaitingSync;
    m.kafka->seen_ns = now;
    out.generation_id = static_cast<std::int32_t>(m.kafka->generation);
    out.protocol_name = g.kafka_protocol;
    out.leader = k::kVirtualLeader;
    out.member_id = id;
    return out;
  };
  auto mit = g.members.find(id);
  // Asked again (by the gateway, for a parked one) while the generation forms, or when it has.
  if (mit != g.members.end() &&
      (mit->second.kafka->state == State::kJoining || mit->second.kafka->state == State::kJoined))
    return answer(mit->second);
  // A new member, or one joining again: with Kafka's eager protocol it has given up
  // everything it had (its client revoked it all and committed before sending this).
  if (mit == g.members.end() && g.members.size() >= kMaxGroupMembers)
    return fail(kGroupMaxSizeReached, fmt::format("the group has {} members (at most {})", g.members.size(), kMaxGroupMembers));
  Member fresh;
  Member& m = mit != g.members.end() ? mit->second : fresh;
  if (!m.kafka) {
    m.id = id;
    m.kafka.emplace();
    m.name = who.client_id;
  }
  m.kafka->state = State::kJoining;
  m.kafka->client_id = who.client_id;
  m.kafka->client_host = who.host;
  m.kafka->protocols.clear();
  for (const auto& p : eager) m.kafka->protocols.emplace_back(p.name, p.metadata);
  m.kafka->seen_ns = now;
  m.kafka->previous = std::move(m.owned);
  m.owned.clear();
  m.owned_since.clear();
  m.reissue.clear();
  m.revoking = false;
  m.subscription.clear();
  for (const auto& t : sub->topics)
    if (validate_name("topic", t)) m.subscription.push_back(t);  // a Kafka client resolves patterns itself
  m.topics = resolve_subscription(m.subscription, {});
  m.session_timeout_ms = r.session_timeout_ms;
  m.max_poll_interval_ms = r.rebalance_timeout_ms > 0 ? r.rebalance_timeout_ms : r.session_timeout_ms;  // its revoke deadline
  if (mit == g.members.end()) {
    if (g.members.empty()) {  // it founds the group: the assignor its first protocol names, if busd has it
      auto kind = parse_assignor(eager.front().name);
      g.assignor = kind ? *kind : AssignorKind::kSticky;
    }
    log(fmt::format("group '{}': Kafka member {} ({}) joined, topics {}", g.name, id, who.client_id, json(m.subscription).dump()));
    g.members[id] = std::move(fresh);
    group_changed(g);
  }
  rebalance(g);
  return answer(g.members.at(id));  // at once if the generation formed at once
}

// ---- SyncGroup, Heartbeat, LeaveGroup ----

Member* Daemon::kafka_member_of(const std::string& group, const std::string& id, std::int32_t generation,
                                std::int16_t& error) {
  Member* m = kafka_member(group, id);
  if (!m) {
    error = k::kUnknownMemberId;
    return nullptr;
  }
  m->kafka->seen_ns = shm::monotonic_ns();  // a sign of life, whatever the answer
  if (generation != m->kafka->generation) error = k::kIllegalGeneration;
  else if (m->revoking || m->kafka->state == State::kJoining) error = k::kRebalanceInProgress;
  else error = k::kNone;
  return m;
}

k::SyncGroupResponse Daemon::sync_group(const k::SyncGroupRequest& r) {
  k::SyncGroupResponse out;
  Member* m = kafka_member_of(r.group_id, r.member_id, r.generation_id, out.error_code);
  if (out.error_code != k::kNone) return out;
  // What a client sends as the leader is ignored: it never is the leader.
  m->kafka->state = State::kStable;
  out.assignment = k::encode_assignment(partition_list(m->owned));
  return out;
}

k::HeartbeatResponse Daemon::heartbeat(const k::HeartbeatRequest& r) {
  k::HeartbeatResponse out;
  (void)kafka_member_of(r.group_id, r.member_id, r.generation_id, out.error_code);
  return out;
}

k::LeaveGroupResponse Daemon::leave_group(const k::LeaveGroupRequest& r) {
  k::LeaveGroupResponse out;
  if (!kafka_member(r.group_id, r.member_id)) {
    out.error_code = k::kUnknownMemberId;
    return out;
  }
  remove_member(groups_.at(r.group_id), r.member_id, "left the group (Kafka LeaveGroup)");
  return out;
}

// ---- Offsets ----

k::OffsetCommitResponse Daemon::offset_commit(const k::OffsetCommitRequest& r) {
  k::OffsetCommitResponse out;
  // One error for the whole request (each partition answers it), as Kafka's group checks.
  std::int16_t all = k::kNone;
  const Member* m = nullptr;
  auto g = groups_.find(r.group_id);
  const bool live = g != groups_.end() && !g->second.members.empty();
  if (!validate_name("group", r.group_id)) {
    all = kInvalidGroupId;
  } else if (r.generation_id < 0 && r.member_id.empty()) {
    // A consumer of assign() (Kafka's simple group): only while the group has no member.
    if (live) all = k::kUnknownMemberId;
  } else if (!(m = kafka_member(r.group_id, r.member_id))) {
    all = k::kUnknownMemberId;
  } else if (r.generation_id != m->kafka->generation) {
    all = k::kIllegalGeneration;
  } else if (m->kafka->state != State::kStable) {
    all = k::kRebalanceInProgress;  // between its JoinGroup and its SyncGroup, or joining again
  } else {
    groups_.at(r.group_id).members.at(r.member_id).kafka->seen_ns = shm::monotonic_ns();
  }
  std::vector<OffsetCommit> todo;
  std::vector<std::int16_t*> slot_of;  // each of todo's answer
  for (const auto& t : r.topics) {
    k::OffsetCommitResponse::Topic rt{t.name, {}};
    auto topic = bus_->topic(t.name);
    for (const auto& p : t.partitions) rt.partitions.push_back({p.partition_index, all});
    if (all == k::kNone)
      for (std::size_t i = 0; i < t.partitions.size(); ++i) {
        const auto& p = t.partitions[i];
        std::int16_t& code = rt.partitions[i].error_code;
        const TopicPartition tp{t.name, static_cast<std::uint32_t>(p.partition_index)};
        if (!topic || p.partition_index < 0 || tp.partition >= (*topic)->partitions()) code = k::kUnknownTopicOrPartition;
        else if (p.committed_offset < 0) code = k::kInvalidRequest;
        else if (p.committed_metadata && p.committed_metadata->size() > kMaxCommitMetadata) code = kOffsetMetadataTooLarge;
        // A member commits what it owns: a partition moved on is the new owner's.
        else if (m && std::find(m->owned.begin(), m->owned.end(), tp) == m->owned.end()) code = k::kIllegalGeneration;
        // Assigned from a topic since deleted and created again: what it read is the old one's
        // (an eager client commits on revoke); it joins again and gets the new one.
        else if (m && m->kafka->epochs.count(t.name) && m->kafka->epochs.at(t.name) != (*topic)->epoch()) code = k::kRebalanceInProgress;
        else todo.push_back({tp, static_cast<std::uint64_t>(p.committed_offset), (*topic)->epoch(), p.committed_metadata.value_or("")});
      }
    out.topics.push_back(std::move(rt));
  }
  // The answers of what was put, in todo's order.
  for (auto& t : out.topics)
    for (auto& p : t.partitions)
      if (p.error_code == k::kNone) slot_of.push_back(&p.error_code);
  const auto results = put_offsets(r.group_id, todo);
  // As a native sync commit: on disk, and the block topics' gates moved, before the answer.
  const auto flushed = flush_offsets();
  if (!flushed) log(fmt::format("kafka: OffsetCommit of group '{}': {}", r.group_id, flushed.error().message));
  for (std::size_t i = 0; i < todo.size(); ++i) {
    if (!results[i].empty()) *slot_of[i] = k::kUnknownTopicOrPartition;
    else if (!flushed) *slot_of[i] = kUnknownServerError;
    else if (auto why = gate_error(r.group_id, todo[i].tp)) {
      log(fmt::format("kafka: OffsetCommit of group '{}': {}", r.group_id, *why));
      *slot_of[i] = kUnknownServerError;
    }
  }
  return out;
}

k::OffsetFetchResponse Daemon::offset_fetch(const k::OffsetFetchRequest& r) {
  k::OffsetFetchResponse out;
  if (!validate_name("group", r.group_id)) {
    out.error_code = kInvalidGroupId;
    return out;
  }
  // Nothing shown that a busd SIGKILL could take back: native asynchronous commits first
  // reach offsets.log (as `committed` and group describe do).
  if (auto ok = flush_offsets(); !ok) {
    log(fmt::format("kafka: OffsetFetch of group '{}': {}", r.group_id, ok.error().message));
    out.error_code = kUnknownServerError;
    return out;
  }
  auto add = [&](const std::string& topic, std::int32_t partition) {
    if (out.topics.empty() || out.topics.back().name != topic) out.topics.push_back({topic, {}});
    k::OffsetFetchResponse::Partition p;
    p.partition_index = partition;
    p.metadata = "";
    auto t = bus_->topic(topic);
    if (t && partition >= 0)
      if (const CommittedOffset* c = offsets_.find({r.group_id, topic, static_cast<std::uint32_t>(partition)}, (*t)->epoch())) {
        p.committed_offset = static_cast<std::int64_t>(c->offset);
        p.metadata = c->metadata;
      }
    out.topics.back().partitions.push_back(std::move(p));
  };
  if (r.topics) {
    for (const auto& t : *r.topics)
      for (std::int32_t p : t.partition_indexes) add(t.name, p);
    return out;
  }
  for (const auto& [key, c] : offsets_.all())  // null (v2+): every offset the group has
    if (key.group == r.group_id)
      if (auto t = bus_->topic(key.topic); t && offsets_.find(key, (*t)->epoch())) add(key.topic, static_cast<std::int32_t>(key.partition));
  return out;
}

// ---- DescribeGroups, ListGroups ----

k::DescribeGroupsResponse Daemon::describe_groups(const k::DescribeGroupsRequest& r) {
  k::DescribeGroupsResponse out;
  if (r.groups.size() > kMaxDescribedGroups) {  // refused whole, looked up not at all
    log(fmt::format("kafka: DescribeGroups of {} groups refused (at most {} a request)", r.groups.size(), kMaxDescribedGroups));
    for (const auto& name : r.groups) {
      k::DescribeGroupsResponse::Group rg;
      rg.error_code = k::kInvalidRequest;
      rg.group_id = name;
      out.groups.push_back(std::move(rg));
    }
    return out;
  }
  for (const auto& name : r.groups) {
    k::DescribeGroupsResponse::Group rg;
    rg.group_id = name;
    auto g = groups_.find(name);
    const bool has_offsets = offsets_.has_group(name);
    if (g == groups_.end() || g->second.members.empty()) {
      rg.group_state = has_offsets || g != groups_.end() ? "Empty" : "Dead";
      rg.protocol_type = has_offsets ? "consumer" : "";
      out.groups.push_back(std::move(rg));
      continue;
    }
    rg.group_state = group_state(g->second);
    rg.protocol_type = "consumer";
    rg.protocol_data = g->second.kafka_protocol.empty() ? assignor_name(g->second.assignor) : g->second.kafka_protocol;
    for (const auto& [id, m] : g->second.members) {
      k::DescribeGroupsResponse::Member rm;
      rm.member_id = id;
      rm.member_assignment = k::encode_assignment(partition_list(m.owned));
      if (m.kafka) {
        rm.client_id = m.kafka->client_id;
        rm.client_host = m.kafka->client_host;
        for (const auto& [pname, meta] : m.kafka->protocols)
          if (pname == rg.protocol_data || rm.member_metadata.empty()) rm.member_metadata = meta;
      } else {  // a native member: its subscription in the consumer protocol's terms
        rm.client_id = m.name.empty() ? "shmbus" : m.name;
        rm.client_host = fmt::format("pid {}", m.pid);
        rm.member_metadata = k::encode_subscription(m.topics);
        if (!m.instance_id.empty()) rm.group_instance_id = m.instance_id;
      }
      rg.members.push_back(std::move(rm));
    }
    out.groups.push_back(std::move(rg));
  }
  return out;
}

k::ListGroupsResponse Daemon::list_groups() {
  std::set<std::string> names;
  for (const auto& [n, g] : groups_)
    if (!g.members.empty()) names.insert(n);
  for (const auto& [key, c] : offsets_.all()) names.insert(key.group);
  k::ListGroupsResponse out;
  for (const auto& n : names) out.groups.push_back({n, "consumer"});
  return out;
}

}  // namespace shmbus::daemon
