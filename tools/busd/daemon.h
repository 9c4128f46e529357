// busd's inside, shared by its rooms: tools/busd/busd.cpp (start-up, the event loop,
// connections, requests) and tools/busd/coordinator.cpp (groups: join, rebalance, commits,
// offsets). Internal to busd.
#pragma once

#include <sys/types.h>
#include <unistd.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "bus/busd_layout.h"
#include "bus/paths.h"
#include "bus/protocol.h"
#include "shm/segment.h"
#include "shmbus/bus.h"
#include "tools/busd/assignor.h"
#include "tools/busd/busd.h"
#include "tools/busd/durable_bell.h"
#include "tools/busd/kafka/group_coordinator.h"
#include "tools/busd/listeners.h"
#include "tools/busd/offset_store.h"
#include "tools/busd/spiller.h"

namespace shmbus::daemon {

using proto::json;

json tps_json(const std::vector<TopicPartition>& tps);

// One partition's offset in a commit, and the epoch of the topic it was read from (clients
// since issue 14 send it; none: the topic as it is now).
struct OffsetCommit {
  TopicPartition tp;
  std::uint64_t offset = 0;
  std::optional<std::uint64_t> epoch;
  std::string metadata;  // Kafka's commit metadata, returned as given by OffsetFetch
};

struct Conn {
  int fd = -1;
  uid_t uid = 0;
  pid_t pid = 0;
  std::string in, out;
  std::string group, member_id;  // when this connection is a group member
};

// What a member that speaks the Kafka protocol (through the gateway, tools/busd/kafka/) has
// beside a native one: it holds no member slot and no Unix connection; it lives by its
// heartbeats, and it learns of a new generation only by joining again (the classic, eager
// protocol: a JoinGroup gives up all it had). tools/busd/kafka_members.cpp, docs/kafka.md.
struct KafkaMember {
  enum class State {
    kJoining,       // its JoinGroup waits for the generation to form (it owns nothing)
    kJoined,        // the generation formed; its JoinGroup answer is not taken yet
    kAwaitingSync,  // answered; its SyncGroup fetches the assignment
    kStable,        // has its assignment
  };
  State state = State::kJoining;
  std::string client_id, client_host;
  std::vector<std::pair<std::string, std::string>> protocols;  // name, metadata; most preferred first
  std::int64_t generation = -1;  // the generation its JoinGroup answer gave
  std::uint64_t seen_ns = 0;     // its last JoinGroup, SyncGroup, Heartbeat or OffsetCommit
  std::vector<TopicPartition> previous;  // what it had before it joined again (the assignor keeps it)
  // The epoch of each topic it was assigned, at the assignment: a commit of a topic since
  // deleted and created again is of the old one (refused).
  std::map<std::string, std::uint64_t> epochs;
};

struct Member {
  std::string id;
  std::optional<KafkaMember> kafka;  // set: a Kafka-protocol member
  int fd = -1;
  // What it subscribed to: topic names and patterns ('^...', bus/topic_pattern.h); and the
  // topics that stand for now (the names, and the bus's topics the patterns match).
  std::vector<std::string> subscription;
  std::vector<std::string> topics;
  std::vector<TopicPartition> owned;  // what it consumes now (confirmed)
  // Topics deleted and created again under it: what it owns of them is revoked (it reads
  // the old topic) and then assigned afresh.
  std::set<std::string> reissue;
  std::map<TopicPartition, std::uint64_t> owned_since;  // the generation from which it has held each
  std::int32_t pid = 0;
  std::string name;
  std::uint32_t slot = 0;
  std::int64_t session_timeout_ms = 45'000;
  std::int64_t max_poll_interval_ms = 0;  // 0: not watched (a client of layout minor 0)
  std::uint64_t seen_polls = 0;           // its slot's poll count when last seen moving
  std::uint64_t polled_ns = 0;            // when busd last saw the count move
  // Static membership (Kafka's group.instance.id): a member whose connection closes stays,
  // absent (fd -1, no slot), with its partitions, for its session timeout.
  std::string instance_id;
  std::uint64_t absent_since_ns = 0;
  bool absent() const { return fd < 0 && !kafka; }
  bool revoking = false;  // asked to give partitions up, not answered yet
  std::uint64_t revoke_deadline_ns = 0;  // evicted if still revoking then
};

struct Group {
  std::string name;
  std::uint64_t generation = 0;
  AssignorKind assignor = AssignorKind::kSticky;
  std::map<std::string, Member> members;
  std::uint64_t revoke_deadline_ns = 0;
  bool pending_grace = false;  // rebalanced during the start-up grace: do it again after
  std::uint64_t rebalances = 0;  // generations this busd made (metrics)
  // Kafka's side: the protocol (assignor name) its Kafka members were last answered with.
  std::string kafka_protocol;
};

class Daemon final : private kafka::GroupCoordinator {
 public:
  explicit Daemon(BusdOptions o) : opts_(std::move(o)) {}
  ~Daemon();
  Status start();
  Status loop();

 private:
  // Called from the spiller's threads too: one write(2) a line.
  void log(const std::string& s) {
    if (opts_.quiet) return;
    const std::string line = fmt::format("busd[{}] {}\n", ::getpid(), s);
    (void)!::write(STDERR_FILENO, line.data(), line.size());
  }
  void accept_clients();
  void on_readable(int fd);
  void close_conn(int fd, const std::string& why);
  // Queues `m`; a connection that lets more than 16 MiB pile up unread is marked for closing
  // (to_close_), never closed here: send() is called while groups' members are iterated.
  void send(int fd, const json& m);
  void close_marked();  // closes what send() marked: after each event and each tick
  void flush_out(Conn& c);
  void reply(Conn& c, const json& req, json body);
  void reply_error(Conn& c, const json& req, Errc code, const std::string& msg);
  void handle(Conn& c, const json& req);
  // start()'s steps, in order.
  Status join_unix_group();
  Status take_lock();
  void note_returning_members();
  Status create_segment();
  Status listen_socket();
  void watch_events();
  void tick();

  // Groups.
  void rebalance(Group& g);
  void finalize(Group& g);
  void remove_member(Group& g, const std::string& id, const std::string& why);
  void notify_member(const Member& m);
  TopicPartitionCounts counts_for(const Group& g);
  void update_gate(const std::string& group, const TopicPartition& tp);
  void drop_stale_offsets();
  // Topics created and deleted (tools/busd/topic_watch.cpp): subscriptions resolved again,
  // and the groups they change rebalanced.
  static Status check_subscription(const std::vector<std::string>& subscription, Bus& bus);
  static std::vector<std::string> resolve_subscription(const std::vector<std::string>& subscription,
                                                       const std::vector<std::string>& listed);
  std::vector<std::string> listed_topics();
  void watch_topics();
  // tools/busd/liveness.cpp: session timeouts, max poll intervals, revoke deadlines.
  void expire_members(std::uint64_t now);
  void note_liveness(Member& m, const json& req);
  std::int64_t revoke_timeout_ms(const Member& m) const;  // how long it has to give partitions up
  // tools/busd/static_members.cpp
  Result<std::optional<std::vector<TopicPartition>>> claim_instance(Group& g, const std::string& instance);
  bool keep_absent(Group& g, const std::string& id, const std::string& why);

  // Kafka-protocol members (tools/busd/kafka_members.cpp): the gateway's group APIs.
  std::optional<kafka::JoinGroupResponse> join_group(const kafka::JoinGroupRequest& r, std::int16_t version,
                                                     const kafka::GroupClient& who, bool final, std::string& member_id) override;
  kafka::SyncGroupResponse sync_group(const kafka::SyncGroupRequest& r) override;
  kafka::HeartbeatResponse heartbeat(const kafka::HeartbeatRequest& r) override;
  kafka::LeaveGroupResponse leave_group(const kafka::LeaveGroupRequest& r) override;
  kafka::OffsetCommitResponse offset_commit(const kafka::OffsetCommitRequest& r) override;
  kafka::OffsetFetchResponse offset_fetch(const kafka::OffsetFetchRequest& r) override;
  kafka::DescribeGroupsResponse describe_groups(const kafka::DescribeGroupsRequest& r) override;
  kafka::ListGroupsResponse list_groups() override;
  std::uint64_t join_progress() const override { return kafka_progress_; }
  Member* kafka_member(const std::string& group, const std::string& id);
  // Kafka members across a restart (tools/busd/kafka_restore.cpp): the state dir's
  // kafka_members.json, written when a group's Kafka members change, read at start.
  void save_kafka_members();
  void note_kafka_members_changed(const Group& g);
  void restore_kafka_members();
  // The member a SyncGroup or Heartbeat names, and Kafka's error for it (`error`):
  // UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS or none.
  Member* kafka_member_of(const std::string& group, const std::string& id, std::int32_t generation, std::int16_t& error);
  void ask_to_rejoin(Member& m);  // its Heartbeat says REBALANCE_IN_PROGRESS until it joins again
  std::string choose_protocol(const Group& g) const;
  std::string group_state(const Group& g) const;  // Kafka's name of it: Empty, PreparingRebalance, ...

  void op_join(Conn& c, const json& req);
  void op_commit(Conn& c, const json& req);
  void op_commit_unowned(Conn& c, const json& req);  // tools/busd/simple_group.cpp
  static Result<std::vector<OffsetCommit>> parse_offsets(const json& req);
  // Stores `todo` and answers: ok, or the refused partitions (`refused`: "; "-separated
  // reasons, and those read from another creation of their topic than today's).
  void store_offsets(Conn& c, const json& req, const std::string& group, const std::vector<OffsetCommit>& todo,
                     std::string refused = {});
  // Puts each of `todo` in the offset store (its gate moves once on disk); one entry each:
  // "" stored, else why not (a topic gone, or read from an earlier creation of it).
  std::vector<std::string> put_offsets(const std::string& group, const std::vector<OffsetCommit>& todo);
  void op_leave(Conn& c, const json& req);
  void op_revoked(Conn& c, const json& req);
  void op_committed(Conn& c, const json& req);
  void op_group_list(Conn& c, const json& req);
  void op_group_describe(Conn& c, const json& req);
  void op_reset_offsets(Conn& c, const json& req);
  json describe_group(const std::string& name);
  // Writes offsets.log (fdatasync). On success the durable gates it stands for move and the
  // answers to asynchronous commits waiting for it are sent; on failure they get the error.
  Status flush_offsets();

  // TCP listeners by kind (listeners.cpp): the listeners file's at start, then the command
  // line's; listener_start / listener_stop (busctl metrics start|stop) persist the choice.
  Status start_listeners();
  Result<std::string> open_listener(const std::string& kind, const ListenerSpec& spec);
  TcpService* service_for(int fd);
  json listeners_json() const;
  void op_listener_start(Conn& c, const json& req);
  void op_listener_stop(Conn& c, const json& req);
  std::string metrics_text();  // metrics.cpp
  // Groups' lifetime and who their gates are (group_admin.cpp).
  void group_changed(const Group& g);  // a member joined or left: the name table, the idle clock
  void publish_group(const std::string& name);
  void publish_known_groups();
  void note_gate(const std::string& group, const TopicPartition& tp, bool held);
  std::optional<std::string> gate_error(const std::string& group, const TopicPartition& tp) const;
  void annotate_gates(json& described);
  void retry_failed_gates();
  void forget_group(const std::string& name, const std::string& why);
  void expire_idle_groups();
  void op_group_delete(Conn& c, const json& req);

  BusdOptions opts_;
  BusPaths paths_;
  int lock_fd_ = -1, listen_fd_ = -1, epoll_fd_ = -1, timer_fd_ = -1, signal_fd_ = -1;
  std::shared_ptr<Bus> bus_;
  shm::Segment seg_;
  MemberSlot* slots_ = nullptr;
  OffsetStore offsets_;
  std::map<int, Conn> conns_;
  std::map<int, std::string> to_close_;  // fd -> why: closed by close_marked(), never within a handler
  std::map<std::string, Group> groups_;
  std::set<std::string> kafka_saved_groups_;  // the groups kafka_members.json lists
  std::int64_t started_ns_ = 0;
  std::uint64_t started_mono_ = 0;
  std::optional<unsigned> gid_;
  bool stopping_ = false;
  std::uint64_t ticks_ = 0;
  std::uint64_t grace_until_ns_ = 0;
  std::set<std::int32_t> returning_;  // pids of the previous busd's live members
  std::map<std::string, std::uint64_t> topics_seen_;  // the bus's topics and their epochs, at the last look
  std::set<std::pair<std::string, TopicPartition>> dirty_gates_;  // move after the next flush
  // Answers to asynchronous commits, sent once offsets.log holds them (flush_offsets()): the
  // client's commit callback hears "committed" only for what a busd SIGKILL cannot take back.
  std::vector<std::pair<int, json>> unflushed_replies_;
  std::map<std::string, std::unique_ptr<TcpService>> services_;  // by kind
  std::map<std::string, ListenerSpec> listener_specs_;             // what each runs on
  GroupNameSlot* names_ = nullptr;  // in seg_: who each group's durable gates are
  std::map<std::string, std::int64_t> empty_since_ns_;  // CLOCK_REALTIME; groups with no member
  std::map<std::pair<std::string, TopicPartition>, std::string> gate_failures_;  // gates not held, why
  std::uint64_t kafka_progress_ = 0;  // moves when a parked Kafka JoinGroup may be answered
  // The member ids handed out by MEMBER_ID_REQUIRED (KIP-394) and not used yet, by (group,
  // id), with when they lapse: kept outside groups_, so that asking makes no group.
  std::map<std::pair<std::string, std::string>, std::uint64_t> kafka_pending_;
  std::unique_ptr<DurableBell> durable_bell_;  // the spiller rings it, the Kafka listener hears it
  std::unique_ptr<Spiller> spiller_;  // declared last: stopped first
};

}  // namespace shmbus::daemon
