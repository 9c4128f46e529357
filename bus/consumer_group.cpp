// The consumer as a member of a group: joining through busd, taking and giving up
// partitions as busd pushes them, heartbeats, commits, rejoining after busd restarts.
#include "bus/consumer_impl.h"

#include <chrono>
#include <fstream>
#include <thread>

#include <fmt/format.h>

#include "bus/names.h"
#include "bus/topic_pattern.h"

namespace shmbus {

std::string Consumer::Impl::client_name() const {
  if (!config.client_name.empty()) return config.client_name;
  std::ifstream comm("/proc/self/comm");  // the process name, as ps shows it
  std::string name;
  std::getline(comm, name);
  return name.empty() ? std::string("consumer") : name;
}

proto::json Consumer::Impl::join_request(bool with_owned) const {
  proto::json owned = proto::json::array();
  if (with_owned)
    for (const auto& a : assigned) owned.push_back({a.tp.topic, a.tp.partition});
  return proto::json{{"op", "join"},
                     {"group", group->name},
                     {"topics", group->topics},
                     {"assignor", config.assignor},
                     {"session_timeout_ms", config.session_timeout.count()},
                     {"max_poll_interval_ms", config.max_poll_interval.count()},
                     {"group_instance_id", config.group_instance_id},
                     {"name", client_name()},
                     {"member_id", group->member_id},
                     {"owned", owned}};
}

Status Consumer::Impl::bus_alive() const {
  // `busctl bus delete` (or the segments removed by hand) unlinks the registry we mapped.
  if (bus->still_exists()) return {};
  return make_error(Errc::kNotFound, fmt::format("bus '{}' was deleted: group '{}' cannot go on", bus->name(), group->name));
}

Status Consumer::Impl::join(bool with_owned) {
  // Joining starts busd when none runs: never for a deleted bus (it would make it again).
  if (auto ok = bus_alive(); !ok) return ok;
  // From poll() (a rejoin) keep it short: the caller is waiting for records.
  auto conn = BusdConnection::connect(bus->name(), with_owned ? std::chrono::milliseconds(500) : std::chrono::milliseconds(5000));
  if (!conn) return tl::unexpected(conn.error());
  auto r = (*conn)->request(join_request(with_owned), std::chrono::seconds(5));
  if (!r) return tl::unexpected(r.error());
  auto seg = shm::Segment::open((*r).value("segment", ""), shm::SegmentKind::kBusd, kBusdLayoutMajor, true);
  if (!seg) return tl::unexpected(seg.error());
  const std::uint32_t slot = (*r).value("slot", 0u);
  if (slot >= kMemberSlots) return make_error(Errc::kBadSegment, "busd gave a member slot out of range");
  // The heartbeat thread moves to the new slot before the old segment is unmapped.
  MemberSlot* s = seg->at<MemberSlot>(kMemberSlotsOffset) + slot;
  group->lease = (*r).value("lease", 0u);
  group->heartbeat.set(s, group->lease, config.heartbeat_interval);
  group->segment = std::move(*seg);
  group->slot = s;
  group->seen_notice = group->slot->notice.load(std::memory_order_acquire);
  group->member_id = (*r).value("member_id", "");
  // The generation of this busd (one that restarted counts from 0 again): commits of the
  // partitions it let us keep are accepted in it until its next assignment.
  group->generation = (*r).value("generation", std::uint64_t{0});
  group->conn = std::move(*conn);
  ++conn_serial;
  if (with_owned && r->contains("owned")) {
    // What busd did not let us keep is someone else's now: stop with it at once.
    const auto kept = parse_tps((*r)["owned"]);
    std::vector<TopicPartition> gone;
    for (const auto& a : assigned)
      if (std::find(kept.begin(), kept.end(), a.tp) == kept.end()) gone.push_back(a.tp);
    on_lose(gone);
  }
  group->left_why.clear();
  // The auto-commit timer starts at the join, as Kafka's does.
  group->last_check = group->last_reconnect = group->last_commit = shm::monotonic_ns();
  return {};
}

Status Consumer::Impl::commit_offsets(const std::vector<std::pair<TopicPartition, std::uint64_t>>& all, bool sync,
                                      Consumer::CommitCallback done) {
  if (group && !group->conn && !group->left_why.empty())
    return make_error(Errc::kInvalidArgument, fmt::format("group '{}': commit refused: this member was removed from the group ({}); "
                                                          "its partitions went to others, and poll() joins again",
                                                          group->name, group->left_why));
  if (group && !group->conn) return make_error(Errc::kSystem, fmt::format("busd is not reachable; group '{}' cannot commit now", group->name));
  // A group member sends busd only the partitions it owns (busd would refuse the others):
  // one revoked in a rebalance is its new owner's to commit. The rest are committed, the
  // others named in the error. With a callback, busd answers for each partition instead
  // (the refusal reaches the callback, as Kafka's commitAsync reports it). A consumer of
  // assign() owns nothing busd knows of.
  std::vector<std::pair<TopicPartition, std::uint64_t>> offs;
  std::string not_ours, deleted;
  for (const auto& e : all) {
    const Assigned* a = find(e.first);
    if (a && a->reader.ring().closed())  // its offsets went with the topic
      deleted += fmt::format("{}{}-{}", deleted.empty() ? "" : ", ", e.first.topic, e.first.partition);
    else if (!group || done || a) offs.push_back(e);
    else not_ours += fmt::format("{}{}-{}", not_ours.empty() ? "" : ", ", e.first.topic, e.first.partition);
  }
  // What is sent is committed; what was not ours is the answer all the same.
  auto answer = [&]() -> Status {
    if (!deleted.empty())
      return make_error(Errc::kTopicDeleted, fmt::format("commit refused: {}: topic deleted since it was read; its offsets "
                                                         "went with it{}", deleted, offs.empty() ? "" : "; the others were committed"));
    if (not_ours.empty()) return {};
    return make_error(Errc::kInvalidArgument, fmt::format("commit refused: {} not assigned to this member of group '{}' "
                                                          "(revoked in a rebalance?){}", not_ours, group->name,
                                                          offs.empty() ? "" : "; the others were committed"));
  };
  // Nothing to commit: nothing sent, unless a callback waits for busd's answer from poll().
  if (offs.empty() && !done) return answer();
  proto::json arr = proto::json::array();
  // With the epoch of the topic each was read from: busd refuses an offset of a topic that
  // was deleted (and perhaps created again) since.
  for (const auto& [tp, o] : offs) {
    const Assigned* a = find(tp);
    if (a) arr.push_back({tp.topic, tp.partition, o, a->topic->epoch()});
    else arr.push_back({tp.topic, tp.partition, o});
  }
  proto::json req{{"op", "commit"}, {"offsets", arr}, {"sync", sync}};
  BusdConnection* conn = nullptr;
  if (group) {
    conn = group->conn.get();
    req["group"] = group->name;
    req["member_id"] = group->member_id;
    req["generation"] = group->generation;
  } else {
    // A consumer of assign(): Kafka's commit of generation -1, taken while the group is empty.
    auto c = simple_connection();
    if (!c) return tl::unexpected(c.error());
    conn = *c;
    req["group"] = config.group_id;
    req["member_id"] = "";
    req["generation"] = -1;
  }
  if (!sync && !done) {
    if (auto ok = conn->send(req); !ok) return ok;
    return answer();
  }
  if (!sync) {
    auto id = conn->send_tracked(req);
    if (!id) return tl::unexpected(id.error());
    pending_commits.push_back(PendingCommit{conn_serial, *id, offs, std::move(done)});
    return {};
  }
  auto r = conn->request(req, std::chrono::seconds(5));
  if (!r) return tl::unexpected(r.error());
  for (const auto& [tp, o] : offs) committed_by_us()[{tp.topic, tp.partition}] = o;
  return answer();
}

Status Consumer::Impl::auto_commit(const std::vector<std::pair<TopicPartition, std::uint64_t>>& offs, bool sync) {
  if (!config.on_commit) return commit_offsets(offs, sync);
  if (!sync) return commit_offsets(offs, false, config.on_commit);  // answered from a later poll()
  Status result = commit_offsets(offs, true);
  config.on_commit(offs, result);
  return result;
}

std::vector<std::pair<TopicPartition, std::uint64_t>> Consumer::Impl::positions(bool only_changed) {
  std::vector<std::pair<TopicPartition, std::uint64_t>> out;
  const auto& done = committed_by_us();
  for (const auto& a : assigned) {
    auto it = done.find(std::make_pair(a.tp.topic, a.tp.partition));
    if (only_changed && it != done.end() && it->second == a.next_offset()) continue;
    out.push_back({a.tp, a.next_offset()});
  }
  return out;
}

Result<std::vector<std::optional<std::uint64_t>>> Consumer::Impl::fetch_committed(const std::vector<TopicPartition>& tps) {
  BusdConnection* conn = group ? group->conn.get() : nullptr;
  if (group && !conn) return make_error(Errc::kInvalidArgument, "committed() needs a connected group");
  if (!group) {
    auto c = simple_connection();
    if (!c) return tl::unexpected(c.error());
    conn = *c;
  }
  proto::json arr = proto::json::array();
  for (const auto& tp : tps) arr.push_back({tp.topic, tp.partition});
  auto r = conn->request({{"op", "committed"}, {"group", group ? group->name : config.group_id}, {"partitions", arr}},
                         std::chrono::seconds(5));
  if (!r) return tl::unexpected(r.error());
  std::vector<std::optional<std::uint64_t>> out;
  for (const auto& o : (*r)["offsets"]) out.push_back(o.is_number_unsigned() ? std::optional(o.get<std::uint64_t>()) : std::nullopt);
  return out;
}

std::vector<TopicPartition> Consumer::Impl::parse_tps(const proto::json& j) {
  std::vector<TopicPartition> out;
  if (j.is_array())
    for (const auto& tp : j)
      if (tp.is_array() && tp.size() == 2 && tp[0].is_string() && tp[1].is_number_unsigned())
        out.push_back({tp[0].get<std::string>(), tp[1].get<std::uint32_t>()});
  return out;
}

Status Consumer::Impl::on_revoke(const std::vector<TopicPartition>& tps) {
  // Those of deleted topics are lost (nothing to commit) if this member has not seen it yet;
  // those it no longer holds (dropped when their topic went) need only the answer.
  drop_deleted();
  std::vector<std::pair<TopicPartition, std::uint64_t>> offs;
  std::vector<TopicPartition> held;
  for (const auto& a : assigned)
    if (std::find(tps.begin(), tps.end(), a.tp) != tps.end()) {
      offs.push_back({a.tp, a.next_offset()});
      held.push_back(a.tp);
    }
  if (config.enable_auto_commit && !offs.empty()) (void)auto_commit(offs, true);
  if (config.on_revoked && !held.empty()) config.on_revoked(held);
  for (const auto& tp : held) drop(tp);
  proto::json arr = proto::json::array();
  for (const auto& tp : tps) arr.push_back({tp.topic, tp.partition});
  if (group->conn) (void)group->conn->send({{"op", "revoked"}, {"group", group->name}, {"partitions", arr}});
  return {};
}

void Consumer::Impl::drop_deleted() {
  // A deleted topic's partitions are gone with it: given up at once, as lost (nothing can
  // be committed for them), before busd's rebalance revokes them. poll() then goes on with
  // the others instead of failing; a topic of the same name created again is another one,
  // which busd assigns afresh.
  std::vector<TopicPartition> gone;
  for (const auto& a : assigned)
    if (a.reader.ring().closed()) gone.push_back(a.tp);
  on_lose(gone);
}

void Consumer::Impl::on_lose(const std::vector<TopicPartition>& tps) {
  if (tps.empty()) return;
  if (config.on_lost) config.on_lost(tps);
  else if (config.on_revoked) config.on_revoked(tps);
  for (const auto& tp : tps) drop(tp);
}

Status Consumer::Impl::on_assign(std::uint64_t generation, const std::vector<TopicPartition>& tps) {
  group->generation = generation;
  group->assigned_once = true;
  std::vector<TopicPartition> gone, added;
  for (const auto& a : assigned)
    if (std::find(tps.begin(), tps.end(), a.tp) == tps.end()) gone.push_back(a.tp);
  for (const auto& tp : tps)
    if (!find(tp)) added.push_back(tp);
  if (!gone.empty()) {
    if (config.on_revoked) config.on_revoked(gone);
    for (const auto& tp : gone) drop(tp);
  }
  if (added.empty()) return {};
  auto committed = fetch_committed(added);
  auto give_back = [&](const Error& e) -> Status {
    // Never guess a start: without the committed offsets (or a gate), leave the group
    // and join again, so that busd gives these partitions to someone who can take them.
    for (const auto& tp : added) drop(tp);
    group->conn.reset();
    forget_slot();
    return make_error(e.code, fmt::format("group '{}': could not take partitions ({}); joining again", group->name, e.message));
  };
  if (!committed) return give_back(committed.error());
  for (std::size_t i = 0; i < added.size(); ++i) {
    std::optional<std::uint64_t> start = i < committed->size() ? (*committed)[i] : std::nullopt;
    auto a = make_assigned(added[i], start);
    if (!a) return give_back(a.error());
    if (start) committed_by_us()[{added[i].topic, added[i].partition}] = *start;
    assigned.push_back(std::move(*a));
    if (auto ok = arm(assigned.back()); !ok) return give_back(ok.error());
  }
  if (config.on_assigned) config.on_assigned(added);
  return {};
}

Status Consumer::Impl::process_pushes() {
  auto& q = group->conn->pushes();
  while (!q.empty()) {
    proto::json m = std::move(q.front());
    q.pop_front();
    const std::string kind = m.value("push", "");
    if (kind == "revoke") {
      if (auto ok = on_revoke(parse_tps(m["partitions"])); !ok) return ok;
    } else if (kind == "assign") {
      if (auto ok = on_assign(m.value("generation", 0ull), parse_tps(m["partitions"])); !ok) return ok;
    } else if (kind == "evicted") {
      // Our partitions may already be someone else's: stop, and join again as new.
      std::vector<TopicPartition> all;
      for (const auto& a : assigned) all.push_back(a.tp);
      on_lose(all);
      group->left_why = m.value("message", "evicted");
      group->member_id.clear();
      group->conn.reset();
      forget_slot();  // busd freed it; it may be another member's now
      return {};
    }
  }
  return {};
}

void Consumer::Impl::forget_slot() {
  group->heartbeat.set(nullptr, 0, config.heartbeat_interval);
  group->slot = nullptr;
}

// Called on every poll: one store of the poll count (busd's max poll interval watches it,
// so a poll pays for no clock read) and one load of the notice word; the rest every 8th poll.
// Every 8th poll, or when busd bumped our notice (group_tick(), consumer_impl.h).
Status Consumer::Impl::group_tick_slow(bool check) {
  const std::uint64_t now = shm::monotonic_ns();
  drop_deleted();
  if (!group->conn) {
    settle_commits(false);  // those waiting on the lost connection fail
    // busd went away (or evicted us): consume on, and join again every 100 ms, saying
    // what we still own so that the group re-forms without moving a partition.
    if (auto ok = bus_alive(); !ok) return ok;  // busd went away because the bus was deleted
    if (now - group->last_reconnect < group->reconnect_backoff) return {};
    group->last_reconnect = now;
    if (join(true)) {
      group->last_check = 0;
      group->reconnect_backoff = 100'000'000;
    } else {
      group->reconnect_backoff = std::min<std::uint64_t>(group->reconnect_backoff * 2, 5'000'000'000);
    }
    return {};
  }
  if (check || !pending_commits.empty() || now - group->last_check >= 100'000'000) {
    group->last_check = now;
    group->seen_notice = group->slot->notice.load(std::memory_order_acquire);
    if (!group->conn->pump()) {
      group->conn.reset();
      forget_slot();
      return {};
    }
    settle_commits(false);
    if (auto ok = process_pushes(); !ok) return ok;
  }
  if (config.enable_auto_commit && group->conn && now - group->last_commit >= static_cast<std::uint64_t>(config.auto_commit_interval.count()) * 1'000'000) {
    group->last_commit = now;
    // Asynchronous: not marked as committed (busd may refuse it, e.g. in a rebalance), so
    // idle partitions are sent again next time and close() commits for sure.
    auto offs = positions(true);
    if (!offs.empty()) (void)auto_commit(offs, false);
  }
  return {};
}

Status Consumer::subscribe(const std::vector<std::string>& topics, const std::string& group) {
  if (impl_->group) return make_error(Errc::kInvalidArgument, fmt::format("already subscribed to group '{}'", impl_->group->name));
  if (!impl_->config.group_id.empty() && impl_->config.group_id != group)
    return make_error(Errc::kInvalidArgument, fmt::format("subscribe to group '{}' by a consumer whose group_id is '{}'", group,
                                                          impl_->config.group_id));
  if (!impl_->assigned.empty()) return make_error(Errc::kInvalidArgument, "this consumer has a manual assignment: assign() and subscribe() do not mix");
  if (topics.empty()) return make_error(Errc::kInvalidArgument, "subscribe needs at least one topic");
  if (auto ok = validate_name("group", group); !ok) return ok;
  for (const auto& t : topics) {
    if (TopicPattern::is_pattern(t)) {  // busd resolves it now and as topics come and go
      if (auto p = TopicPattern::compile(t); !p) return tl::unexpected(p.error());
      continue;
    }
    auto topic = impl_->bus->topic(t);
    if (!topic) return tl::unexpected(topic.error());
  }
  impl_->group.emplace();
  impl_->group->name = group;
  impl_->group->topics = topics;
  if (auto ok = impl_->join(false); !ok) {
    impl_->group.reset();
    return ok;
  }
  // Wait for the first assignment (it may wait on other members giving partitions up).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (!impl_->group->assigned_once) {
    if (std::chrono::steady_clock::now() > deadline) {
      impl_->group.reset();
      return make_error(Errc::kTimedOut, fmt::format("group '{}': no assignment from busd within 15 s", group));
    }
    if (!impl_->group->conn || !impl_->group->conn->pump()) {
      impl_->group.reset();
      return make_error(Errc::kSystem, fmt::format("group '{}': busd closed the connection while joining", group));
    }
    if (auto ok = impl_->process_pushes(); !ok) return ok;
    if (!impl_->group->assigned_once) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return {};
}

Status Consumer::commit() { return impl_->commit_offsets(impl_->positions(false), true); }

Status Consumer::commit_async() { return impl_->commit_offsets(impl_->positions(false), false); }

Status Consumer::commit_async(CommitCallback done) {
  return impl_->commit_offsets(impl_->positions(false), false, std::move(done));
}

Status Consumer::commit_async(const std::vector<std::pair<TopicPartition, std::uint64_t>>& offsets, CommitCallback done) {
  return impl_->commit_offsets(offsets, false, std::move(done));
}

Status Consumer::commit(const std::vector<std::pair<TopicPartition, std::uint64_t>>& offsets) {
  return impl_->commit_offsets(offsets, true);
}

Result<std::vector<std::optional<std::uint64_t>>> Consumer::committed(const std::vector<TopicPartition>& partitions) {
  return impl_->fetch_committed(partitions);
}

Status Consumer::close() {
  if (!impl_->group) return impl_->simple_close();
  Status result;
  if (impl_->group->conn) {
    if (impl_->config.enable_auto_commit) {
      auto offs = impl_->positions(true);
      if (!offs.empty()) result = impl_->auto_commit(offs, true);
    }
  }
  // As Kafka's close(): the partitions are revoked before the member leaves.
  std::vector<TopicPartition> all;
  for (const auto& a : impl_->assigned) all.push_back(a.tp);
  if (impl_->config.on_revoked && !all.empty()) impl_->config.on_revoked(all);
  impl_->settle_commits(true);
  // A static member does not leave: busd keeps its partitions for its next process.
  if (impl_->group->conn && impl_->config.group_instance_id.empty())
    (void)impl_->group->conn->request({{"op", "leave"}, {"group", impl_->group->name}}, std::chrono::seconds(2));
  impl_->release_gates();
  impl_->assigned.clear();
  impl_->group.reset();
  return result;
}

std::string Consumer::member_id() const { return impl_->group ? impl_->group->member_id : std::string(); }

std::uint64_t Consumer::generation() const { return impl_->group ? impl_->group->generation : 0; }

}  // namespace shmbus
