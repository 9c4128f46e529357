// busd's group coordinator: members join and leave, partitions are assigned and revoked
// (assignor.h), committed offsets kept (offset_store.h), block topics' gates moved to them.
#include <algorithm>
#include <charconv>
#include <set>

#include <unistd.h>

#include "bus/gate_names.h"
#include "bus/group_client.h"
#include "bus/names.h"
#include "bus/topic.h"
#include "shm/futex.h"
#include "shm/process.h"
#include "shm/ring.h"
#include "tools/busd/daemon.h"

namespace shmbus::daemon {

json tps_json(const std::vector<TopicPartition>& tps) {
  json a = json::array();
  for (const auto& tp : tps) a.push_back({tp.topic, tp.partition});
  return a;
}

TopicPartitionCounts Daemon::counts_for(const Group& g) {
  TopicPartitionCounts counts;
  for (const auto& [id, m] : g.members)
    for (const auto& t : m.topics)
      if (!counts.count(t))
        if (auto topic = bus_->topic(t)) counts[t] = (*topic)->partitions();
  return counts;
}

void Daemon::notify_member(const Member& m) {
  if (m.kafka) return;  // no slot: it learns by its next Heartbeat
  MemberSlot& s = slots_[m.slot];
  s.notice.fetch_add(1, std::memory_order_release);  // SYNC POINT: the member acquires it in poll
  shm::futex_wake_all(&s.notice);
}

void Daemon::rebalance(Group& g) {
  if (g.members.empty()) return;
  std::vector<MemberSubscription> subs;
  // A Kafka member joining again gave everything up (eager); the assignor still sees what
  // it had, so that what can stay with it does.
  for (const auto& [id, m] : g.members)
    subs.push_back({id, m.topics, m.kafka && m.kafka->state == KafkaMember::State::kJoining ? m.kafka->previous : m.owned});
  Assignment target = assign(g.assignor, counts_for(g), subs);
  if (shm::monotonic_ns() < grace_until_ns_) {
    // Just started: members of the previous busd are still coming back, each with the
    // partitions it consumes. Until they had the time to, hand out nothing new (it may be
    // theirs), and take nothing away. tick() rebalances when the grace ends.
    for (auto& [id, m] : g.members) target[id] = m.owned;
    g.pending_grace = true;
  }
  bool waiting = false;
  for (auto& [id, m] : g.members) {
    if (m.revoking) {
      waiting = true;
      continue;
    }
    const auto& want = target.at(id);
    if (m.kafka) {
      // A Kafka member learns its partitions only by joining again: asked to whenever they
      // change (it gives them all up then); joining now, it has nothing to give up.
      if (m.kafka->state == KafkaMember::State::kJoining) continue;
      std::vector<TopicPartition> have = m.owned;
      std::sort(have.begin(), have.end());
      if (have != want || !m.reissue.empty()) {
        ask_to_rejoin(m);
        waiting = true;
      }
      continue;
    }
    // What it must give up: what it is not to keep, and what it reads of a topic that was
    // deleted and created again (the same names, another topic: assigned afresh after).
    // (`reissue` by reference: clang 14 cannot capture a structured binding.)
    const auto& reissue = m.reissue;
    const auto keeps = [&](const TopicPartition& tp) {
      return std::find(want.begin(), want.end(), tp) != want.end() && !reissue.count(tp.topic);
    };
    if (m.absent()) {
      // An absent static member consumes nothing: what it gives up is free at once.
      std::erase_if(m.owned, [&](const TopicPartition& tp) { return !keeps(tp); });
      m.reissue.clear();
      continue;
    }
    std::vector<TopicPartition> give_up;
    for (const auto& tp : m.owned)
      if (!keeps(tp)) give_up.push_back(tp);
    if (give_up.empty()) continue;
    // A partition moves only once its owner has stopped with it: never two owners at once.
    m.revoking = true;
    m.revoke_deadline_ns = shm::monotonic_ns() + static_cast<std::uint64_t>(revoke_timeout_ms(m)) * 1'000'000ull;
    waiting = true;
    send(m.fd, json{{"push", "revoke"}, {"group", g.name}, {"generation", g.generation}, {"partitions", tps_json(give_up)}});
    notify_member(m);
  }
  g.revoke_deadline_ns = waiting ? 1 : 0;  // "rebalancing", for describe
  if (waiting) return;
  ++g.generation;
  ++g.rebalances;
  for (auto& [id, m] : g.members) {
    std::map<TopicPartition, std::uint64_t> since;
    for (const auto& tp : target.at(id)) {
      auto kept = m.owned_since.find(tp);
      since[tp] = kept != m.owned_since.end() ? kept->second : g.generation;
    }
    m.owned_since = std::move(since);
    m.owned = target.at(id);
    if (m.kafka) {
      // Its JoinGroup is answered (the gateway asks again: join_progress moves) and its
      // SyncGroup then carries these. The others keep theirs and their generation.
      if (m.kafka->state == KafkaMember::State::kJoining) {
        m.kafka->state = KafkaMember::State::kJoined;
        m.kafka->generation = static_cast<std::int64_t>(g.generation);
        m.kafka->seen_ns = shm::monotonic_ns();  // its session runs again from now
        m.kafka->epochs.clear();
        for (const auto& tp : m.owned)
          if (auto t = bus_->topic(tp.topic)) m.kafka->epochs[tp.topic] = (*t)->epoch();
        ++kafka_progress_;
      }
      for (const auto& tp : m.owned) update_gate(g.name, tp);
      continue;
    }
    if (m.absent()) continue;  // it gets them when it comes back
    send(m.fd, json{{"push", "assign"}, {"group", g.name}, {"generation", g.generation}, {"partitions", tps_json(m.owned)}});
    notify_member(m);
    for (const auto& tp : m.owned) update_gate(g.name, tp);
  }
  g.kafka_protocol = choose_protocol(g);
  note_kafka_members_changed(g);
  log(fmt::format("group '{}' generation {}: {} members", g.name, g.generation, g.members.size()));
}

void Daemon::remove_member(Group& g, const std::string& id, const std::string& why) {
  auto it = g.members.find(id);
  if (it == g.members.end()) return;
  const std::uint32_t slot = it->second.slot;
  const int fd = it->second.fd;
  log(fmt::format("group '{}': member {} (pid {}) left: {}", g.name, id, it->second.pid, why));
  // An absent one's slot was freed when it went; a Kafka member never had one.
  const bool had_slot = !it->second.absent() && !it->second.kafka;
  // A Kafka member's gates (update_gate) stay for the next owner; with none left, they
  // stand only where the group committed.
  const bool it_was_kafka = it->second.kafka.has_value();
  const std::vector<TopicPartition> kafka_owned = it_was_kafka ? it->second.owned : std::vector<TopicPartition>{};
  g.members.erase(it);
  ++kafka_progress_;  // a parked JoinGroup of it is answered UNKNOWN_MEMBER_ID
  group_changed(g);
  if (had_slot) slots_[slot].pid.store(0, std::memory_order_release);
  auto c = conns_.find(fd);
  if (c != conns_.end()) c->second.member_id.clear();
  // Its partitions are free at once (the process is gone or gave them up by leaving).
  rebalance(g);
  if (g.members.empty())
    for (const auto& tp : kafka_owned) update_gate(g.name, tp);
  if (!kafka_owned.empty() || it_was_kafka) note_kafka_members_changed(g);
}

void Daemon::update_gate(const std::string& group, const TopicPartition& tp) {
  // In a `block` topic the group's committed offset holds producers back even while the
  // group has no live member: a durable gate, owned by busd and never reaped by producers.
  auto t = bus_->topic(tp.topic);
  if (!t || tp.partition >= (*t)->partitions()) return;
  const shm::Ring& ring = (*t)->ring(tp.partition);
  if (ring.retention() != shm::Retention::kBlock) return;
  auto committed = offsets_.get({group, tp.topic, tp.partition}, (*t)->epoch());
  // A Kafka member reads through busd and holds no gate of its own (a native member holds
  // its process's): until its group's first commit, the gate stands at the ring's start,
  // where a client with auto.offset.reset=earliest begins. Without a commit and without a
  // Kafka owner, the group holds nothing (a gate left from a Kafka owner goes).
  const bool kafka_owner = [&] {
    auto g = groups_.find(group);
    if (g == groups_.end()) return false;
    return std::any_of(g->second.members.begin(), g->second.members.end(), [&](const auto& m) {
      return m.second.kafka && std::find(m.second.owned.begin(), m.second.owned.end(), tp) != m.second.owned.end();
    });
  }();
  if (!committed && !kafka_owner) {
    (void)shm::release_durable_gate(ring, group_gate_key(group));
    return;
  }
  auto lock = shm::SegmentLock::open((*t)->segment(tp.partition));
  if (!lock) return;
  shm::RingReader reader(ring);
  if (!committed || reader.seek(*committed) == shm::ReadStatus::kLapped) reader.seek_earliest();
  note_gate(group, tp, shm::hold_durable_gate(ring, *lock, group_gate_key(group), reader) != nullptr);
}

void Daemon::drop_stale_offsets() {
  // A topic deleted (and perhaps created again) takes its groups' offsets with it, as in
  // Kafka. A missing topic that has a config on disk is a spilled one whose restore failed:
  // its offsets wait for it.
  std::set<std::string> topics;
  for (const auto& [k, o] : offsets_.all()) topics.insert(k.topic);
  for (const auto& name : topics) {
    auto t = bus_->topic(name);
    std::size_t dropped = 0;
    if (t) dropped = offsets_.drop_topic(name, (*t)->epoch());
    else if (t.error().code == Errc::kNotFound && ::access(topic_config_path(bus_->name(), name).c_str(), F_OK) != 0) dropped = offsets_.drop_topic(name, 0);
    if (dropped) log(fmt::format("dropped {} committed offsets of topic '{}': it was deleted{}", dropped, name,
                                 t ? " and created again" : ""));
  }
}

void Daemon::op_join(Conn& c, const json& req) {
  const std::string group = req.value("group", "");
  if (auto ok = validate_name("group", group); !ok) return reply_error(c, req, ok.error().code, ok.error().message);
  if (!req.contains("topics") || !req["topics"].is_array() || req["topics"].empty())
    return reply_error(c, req, Errc::kInvalidArgument, "join needs a non-empty list of topics");
  std::vector<std::string> subscription;
  for (const auto& t : req["topics"]) {
    if (!t.is_string()) return reply_error(c, req, Errc::kInvalidArgument, "topic names are strings");
    subscription.push_back(t.get<std::string>());
  }
  if (auto ok = check_subscription(subscription, *bus_); !ok) return reply_error(c, req, ok.error().code, ok.error().message);
  const std::vector<std::string> topics = resolve_subscription(subscription, listed_topics());
  auto kind = parse_assignor(req.value("assignor", "sticky"));
  if (!kind) return reply_error(c, req, kind.error().code, kind.error().message);
  if (!c.member_id.empty()) return reply_error(c, req, Errc::kInvalidArgument, "this connection is already a group member");
  Group& g = groups_[group];
  g.name = group;
  if (g.members.empty()) g.assignor = *kind;
  std::string id = req.value("member_id", "");
  // Not one that is taken, nor one handed to a Kafka client (KIP-394) that has not used it yet.
  if (id.empty() || g.members.count(id) || kafka_pending_.count({group, id}))
    id = fmt::format("{}-{}-{:06x}", req.value("name", "member"), c.pid, shm::random_u64() & 0xffffff);
  const std::string instance = req.value("group_instance_id", "");
  if (!instance.empty())
    if (auto ok = validate_name("group_instance_id", instance); !ok) return reply_error(c, req, ok.error().code, ok.error().message);
  auto returning = claim_instance(g, instance);  // before a slot is taken: it may refuse
  if (!returning) return reply_error(c, req, returning.error().code, returning.error().message);
  std::optional<std::uint32_t> slot;
  for (std::uint32_t i = 0; i < kMemberSlots && !slot; ++i) {
    std::int32_t zero = 0;
    if (slots_[i].pid.compare_exchange_strong(zero, c.pid > 0 ? c.pid : -1)) slot = i;
  }
  if (!slot) return reply_error(c, req, Errc::kTooManyClients, fmt::format("busd has no free member slot ({})", kMemberSlots));
  Member m;
  m.id = id;
  m.fd = c.fd;
  m.subscription = subscription;
  m.topics = topics;
  m.pid = c.pid;
  m.name = req.value("name", "");
  m.slot = *slot;
  m.instance_id = instance;
  note_liveness(m, req);
  // A member that rejoins (busd restarted) says what it still consumes; it keeps what
  // nobody else owns, so the group re-forms without moving a partition.
  std::set<std::pair<std::string, std::uint32_t>> taken;
  for (const auto& [oid, om] : g.members)
    for (const auto& tp : om.owned) taken.insert({tp.topic, tp.partition});
  if (req.contains("owned") && req["owned"].is_array())
    for (const auto& tp : req["owned"])
      if (tp.is_array() && tp.size() == 2 && tp[0].is_string() && tp[1].is_number_unsigned() &&
          !taken.count({tp[0].get<std::string>(), tp[1].get<std::uint32_t>()}))
        m.owned.push_back({tp[0].get<std::string>(), tp[1].get<std::uint32_t>()});
  if (*returning) m.owned = **returning;  // a static member back within its session timeout
  for (const auto& tp : m.owned) m.owned_since[tp] = g.generation;  // its commits count from now
  g.members[id] = m;
  group_changed(g);
  c.group = group;
  c.member_id = id;
  if (returning_.erase(c.pid) && returning_.empty()) grace_until_ns_ = 0;  // all are back
  reply(c, req, json{{"ok", true}, {"member_id", id}, {"slot", *slot}, {"lease", slots_[*slot].lease.load(std::memory_order_relaxed)},
                     {"segment", busd_segment_name(bus_->name())},
                     {"generation", g.generation}, {"owned", tps_json(m.owned)}});
  log(fmt::format("group '{}': member {} (pid {}) joined, topics {}", group, id, c.pid, json(subscription).dump()));
  if (*returning && !g.revoke_deadline_ns) {
    // No rebalance (Kafka's static membership): it gets back what it had, same generation.
    Member& back = g.members.at(id);
    send(back.fd, json{{"push", "assign"}, {"group", g.name}, {"generation", g.generation}, {"partitions", tps_json(back.owned)}});
    notify_member(back);
    return;
  }
  rebalance(g);
}

void Daemon::op_commit(Conn& c, const json& req) {
  const std::string group = req.value("group", "");
  const std::string id = req.value("member_id", "");
  if (id.empty()) return op_commit_unowned(c, req);
  auto g = groups_.find(group);
  if (g == groups_.end() || !g->second.members.count(id))
    return reply_error(c, req, Errc::kInvalidArgument,
                       fmt::format("commit refused: {} is not a member of group '{}' (evicted or stale)", id, group));
  const Member& m = g->second.members.at(id);
  const std::uint64_t gen = req.value("generation", ~0ull), now = g->second.generation;
  if (gen > now)
    return reply_error(c, req, Errc::kInvalidArgument,
                       fmt::format("commit refused: stale generation {} (group '{}' is at generation {})", gen, group, now));
  auto all = parse_offsets(req);
  if (!all) return reply_error(c, req, all.error().code, all.error().message);
  // As Kafka's OffsetCommit, each partition is answered alone: those the member holds are
  // committed, the others refused and named. A member holds a partition for a commit of
  // generation `gen` if it has held it without a break since then: a commit sent before
  // the member learnt of a rebalance that left it the partition still counts; one of a
  // partition it has given up since (or got back since) does not.
  std::vector<OffsetCommit> todo;
  std::string refused;
  for (const auto& e : *all) {
    const TopicPartition& tp = e.tp;
    auto since = m.owned_since.find(tp);
    if (std::find(m.owned.begin(), m.owned.end(), tp) == m.owned.end() || since == m.owned_since.end())
      refused += fmt::format("; {}-{} is not assigned to {} in generation {}", tp.topic, tp.partition, id, now);
    else if (since->second > gen)
      refused += fmt::format("; {}-{}: stale generation {} (held by {} since generation {})", tp.topic, tp.partition, gen, id,
                             since->second);
    else
      todo.push_back(e);
  }
  store_offsets(c, req, group, todo, refused);
}

Result<std::vector<OffsetCommit>> Daemon::parse_offsets(const json& req) {
  if (!req.contains("offsets") || !req["offsets"].is_array()) return make_error(Errc::kInvalidArgument, "commit needs offsets");
  std::vector<OffsetCommit> todo;
  for (const auto& e : req["offsets"]) {
    if (!e.is_array() || e.size() < 3 || e.size() > 4 || !e[0].is_string() || !e[1].is_number_unsigned() ||
        !e[2].is_number_unsigned() || (e.size() == 4 && !e[3].is_number_unsigned()))
      return make_error(Errc::kInvalidArgument, "offsets are [topic, partition, offset] or [topic, partition, offset, topic epoch]");
    OffsetCommit c{TopicPartition{e[0].get<std::string>(), e[1].get<std::uint32_t>()}, e[2].get<std::uint64_t>(), std::nullopt, {}};
    if (e.size() == 4) c.epoch = e[3].get<std::uint64_t>();
    todo.push_back(std::move(c));
  }
  return todo;
}

std::vector<std::string> Daemon::put_offsets(const std::string& group, const std::vector<OffsetCommit>& todo) {
  std::vector<std::string> out;
  for (const auto& e : todo) {
    auto t = bus_->topic(e.tp.topic);
    if (!t) {  // deleted since it was assigned: its offsets went with it
      out.push_back(fmt::format("{}-{}: the topic is gone", e.tp.topic, e.tp.partition));
      continue;
    }
    // Read from an earlier creation of the topic (deleted, created again since): its offset
    // means nothing in this one (Kafka drops a deleted topic's offsets).
    if (e.epoch && *e.epoch != (*t)->epoch()) {
      out.push_back(fmt::format("{}-{}: read from an earlier creation of the topic (epoch {}; topic '{}' was deleted and "
                                "created again, epoch {})", e.tp.topic, e.tp.partition, *e.epoch, e.tp.topic, (*t)->epoch()));
      continue;
    }
    offsets_.put({group, e.tp.topic, e.tp.partition}, e.offset, (*t)->epoch(), e.metadata);
    dirty_gates_.insert({group, e.tp});
    out.emplace_back();
  }
  return out;
}

void Daemon::store_offsets(Conn& c, const json& req, const std::string& group, const std::vector<OffsetCommit>& todo,
                           std::string refused) {
  std::size_t stored = 0;
  const auto results = put_offsets(group, todo);
  for (std::size_t i = 0; i < todo.size(); ++i) {
    const bool gone = !bus_->topic(todo[i].tp.topic);  // its offsets went with it: not a refusal
    if (results[i].empty()) ++stored;
    else if (!gone) refused += "; " + results[i];
  }
  const bool sync = req.contains("sync") && req["sync"].is_boolean() && req["sync"].get<bool>();
  if (sync) {
    if (auto ok = flush_offsets(); !ok) return reply_error(c, req, ok.error().code, ok.error().message);
    for (const auto& e : todo)
      if (auto why = gate_error(group, e.tp)) return reply_error(c, req, Errc::kTooManyClients, *why);
  }
  if (!refused.empty())
    return reply_error(c, req, Errc::kInvalidArgument,
                       fmt::format("commit refused: {}{}", refused.substr(2), stored ? " (the other partitions were committed)" : ""));
  // Asynchronous and answered (a commit callback waits): by the next flush (the tick's,
  // within 20 ms, or an earlier one).
  if (sync || stored == 0 || !req.contains("id")) return reply(c, req, json{{"ok", true}});
  unflushed_replies_.emplace_back(c.fd, json{{"ok", true}, {"re", req["id"]}});
}

Status Daemon::flush_offsets() {
  auto ok = offsets_.flush();
  if (ok) {
    for (const auto& [grp, tp] : dirty_gates_) update_gate(grp, tp);
    dirty_gates_.clear();
  }
  auto waiting = std::move(unflushed_replies_);
  unflushed_replies_.clear();
  for (auto& [fd, body] : waiting) {
    if (!ok) {
      json err{{"error", errc_name(ok.error().code)}, {"message", fmt::format("commit not written: {}", ok.error().message)}};
      if (body.contains("re")) err["re"] = body["re"];
      body = std::move(err);
    }
    send(fd, body);
  }
  return ok;
}

json Daemon::describe_group(const std::string& name) {
  // What busd shows as committed is on disk first: a SIGKILL right after cannot take back an
  // offset someone has seen (the next busd reads offsets.log).
  if (auto ok = flush_offsets(); !ok) log(fmt::format("describe group '{}': {}", name, ok.error().message));
  json out = {{"group", name}, {"members", json::array()}, {"partitions", json::array()}};
  std::map<std::pair<std::string, std::uint32_t>, std::string> owner;
  std::set<std::string> topics;
  auto g = groups_.find(name);
  if (g != groups_.end()) {
    out["generation"] = g->second.generation;
    out["assignor"] = assignor_name(g->second.assignor);
    out["state"] = g->second.members.empty() ? "empty" : (g->second.revoke_deadline_ns ? "rebalancing" : "stable");
    if (!g->second.kafka_protocol.empty()) out["kafka_protocol"] = g->second.kafka_protocol;
    for (const auto& [id, m] : g->second.members) {
      json row = {{"member_id", id}, {"pid", m.pid}, {"name", m.name}, {"subscription", m.subscription},
                  {"topics", m.topics}, {"partitions", tps_json(m.owned)}, {"group_instance_id", m.instance_id},
                  {"absent", m.absent()}, {"kind", m.kafka ? "kafka" : "native"}};
      if (m.kafka) {
        row["client_id"] = m.kafka->client_id;
        row["client_host"] = m.kafka->client_host;
        row["generation"] = m.kafka->generation;
      }
      out["members"].push_back(std::move(row));
      for (const auto& tp : m.owned) owner[{tp.topic, tp.partition}] = id;
      for (const auto& t : m.topics) topics.insert(t);
    }
  } else {
    out["state"] = "empty";
    out["generation"] = 0;
  }
  for (const auto& [k, o] : offsets_.all())
    if (k.group == name) topics.insert(k.topic);
  for (const auto& t : topics) {
    auto topic = bus_->topic(t);
    if (!topic) continue;
    for (std::uint32_t p = 0; p < (*topic)->partitions(); ++p) {
      const auto committed = offsets_.get({name, t, p}, (*topic)->epoch());
      const std::uint64_t end = (*topic)->ring(p).end_offset();
      json row = {{"topic", t}, {"partition", p}, {"end_offset", end}, {"committed", nullptr}, {"lag", nullptr}};
      if (committed) {
        row["committed"] = *committed;
        row["lag"] = end > *committed ? end - *committed : 0;
      }
      auto o = owner.find({t, p});
      row["member_id"] = o == owner.end() ? json(nullptr) : json(o->second);
      out["partitions"].push_back(row);
    }
  }
  annotate_gates(out);
  return out;
}

void Daemon::op_leave(Conn& c, const json& req) {
  auto g = groups_.find(c.group);
  if (g != groups_.end() && !c.member_id.empty()) remove_member(g->second, c.member_id, "left the group");
  c.member_id.clear();
  return reply(c, req, json{{"ok", true}});
}

void Daemon::op_revoked(Conn& c, const json& req) {
  auto g = groups_.find(c.group);
  if (g == groups_.end() || !g->second.members.count(c.member_id))
    return reply_error(c, req, Errc::kInvalidArgument, "not a group member");
  Member& m = g->second.members.at(c.member_id);
  std::vector<TopicPartition> gone;
  if (req.contains("partitions") && req["partitions"].is_array())
    for (const auto& tp : req["partitions"])
      if (tp.is_array() && tp.size() == 2 && tp[0].is_string() && tp[1].is_number_unsigned())
        gone.push_back({tp[0].get<std::string>(), tp[1].get<std::uint32_t>()});
  std::erase_if(m.owned, [&](const TopicPartition& tp) { return std::find(gone.begin(), gone.end(), tp) != gone.end(); });
  for (const auto& tp : gone) m.owned_since.erase(tp);
  std::erase_if(m.reissue, [&](const std::string& t) {
    return std::none_of(m.owned.begin(), m.owned.end(), [&](const TopicPartition& tp) { return tp.topic == t; });
  });
  m.revoking = false;
  reply(c, req, json{{"ok", true}});
  bool still = false;
  for (const auto& [id, mm] : g->second.members) still |= mm.revoking;
  if (!still) {
    g->second.revoke_deadline_ns = 0;
    rebalance(g->second);
  }
}

void Daemon::op_committed(Conn& c, const json& req) {
  const std::string group = req.value("group", "");
  if (auto ok = flush_offsets(); !ok) return reply_error(c, req, ok.error().code, ok.error().message);
  json offs = json::array();
  if (req.contains("partitions") && req["partitions"].is_array())
    for (const auto& tp : req["partitions"])
      if (tp.is_array() && tp.size() == 2 && tp[0].is_string() && tp[1].is_number_unsigned()) {
        // An offset of an earlier topic of the same name (deleted, created again) is none.
        auto t = bus_->topic(tp[0].get<std::string>());
        auto o = t ? offsets_.get({group, tp[0].get<std::string>(), tp[1].get<std::uint32_t>()}, (*t)->epoch()) : std::nullopt;
        offs.push_back(o ? json(*o) : json(nullptr));
      }
  return reply(c, req, json{{"ok", true}, {"offsets", offs}});
}

void Daemon::op_group_list(Conn& c, const json& req) {
  std::set<std::string> names;
  for (const auto& [n, g] : groups_) names.insert(n);
  for (const auto& [k, o] : offsets_.all()) names.insert(k.group);
  json arr = json::array();
  for (const auto& n : names) {
    json d = describe_group(n);
    arr.push_back({{"group", n}, {"state", d["state"]}, {"members", d["members"].size()}, {"generation", d["generation"]}});
  }
  return reply(c, req, json{{"ok", true}, {"groups", arr}});
}

void Daemon::op_group_describe(Conn& c, const json& req) {
  const std::string group = req.value("group", "");
  if (auto ok = validate_name("group", group); !ok) return reply_error(c, req, ok.error().code, ok.error().message);
  bool known = groups_.count(group) > 0;
  for (const auto& [k, o] : offsets_.all()) known |= k.group == group;
  if (!known) return reply_error(c, req, Errc::kNotFound, fmt::format("group '{}' does not exist on bus '{}'", group, bus_->name()));
  json d = describe_group(group);
  d["ok"] = true;
  return reply(c, req, d);
}

}  // namespace shmbus::daemon
