// busd's loop: the socket, the group coordinator, busd's status segment, and the spiller beside them.
#include "tools/busd/busd.h"

#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cerrno>
#include <cstring>
#include <iostream>
#include <map>
#include <set>

#include <fmt/format.h>

#include "tools/busd/assignor.h"
#include "bus/busd_layout.h"
#include "tools/busd/spiller.h"
#include "bus/group_client.h"
#include "bus/names.h"
#include "tools/busd/offset_store.h"
#include "bus/paths.h"
#include "bus/protocol.h"
#include "bus/topic.h"
#include "shm/futex.h"
#include "shm/process.h"
#include "shm/ring.h"
#include "shm/segment.h"

namespace shmbus {
namespace {

using proto::json;


json tps_json(const std::vector<TopicPartition>& tps) {
  json a = json::array();
  for (const auto& tp : tps) a.push_back({tp.topic, tp.partition});
  return a;
}

struct Conn {
  int fd = -1;
  uid_t uid = 0;
  pid_t pid = 0;
  std::string in, out;
  std::string group, member_id;  // when this connection is a group member
};

struct Member {
  std::string id;
  int fd = -1;
  std::vector<std::string> topics;
  std::vector<TopicPartition> owned;  // what it consumes now (confirmed)
  std::int32_t pid = 0;
  std::string name;
  std::uint32_t slot = 0;
  std::int64_t session_timeout_ms = 10'000;
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
};

class Daemon {
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
  void send(int fd, const json& m);
  void flush_out(Conn& c);
  void reply(Conn& c, const json& req, json body);
  void reply_error(Conn& c, const json& req, Errc code, const std::string& msg);
  void handle(Conn& c, const json& req);
  void tick();

  // Groups.
  void rebalance(Group& g);
  void finalize(Group& g);
  void remove_member(Group& g, const std::string& id, const std::string& why);
  void notify_member(const Member& m);
  TopicPartitionCounts counts_for(const Group& g);
  void update_gate(const std::string& group, const TopicPartition& tp);

  void op_join(Conn& c, const json& req);
  void op_commit(Conn& c, const json& req);
  json describe_group(const std::string& name);

  BusdOptions opts_;
  BusPaths paths_;
  int lock_fd_ = -1, listen_fd_ = -1, epoll_fd_ = -1, timer_fd_ = -1, signal_fd_ = -1;
  std::shared_ptr<Bus> bus_;
  shm::Segment seg_;
  MemberSlot* slots_ = nullptr;
  OffsetStore offsets_;
  std::map<int, Conn> conns_;
  std::map<std::string, Group> groups_;
  std::int64_t started_ns_ = 0;
  std::uint64_t started_mono_ = 0;
  std::optional<unsigned> gid_;
  bool stopping_ = false;
  std::uint64_t ticks_ = 0;
  std::uint64_t grace_until_ns_ = 0;
  std::set<std::int32_t> returning_;  // pids of the previous busd's live members
  std::set<std::pair<std::string, TopicPartition>> dirty_gates_;  // move after the next flush
  std::unique_ptr<Spiller> spiller_;  // declared last: stopped first
};

Daemon::~Daemon() {
  if (spiller_) spiller_->stop();  // its last writes and syncs happen while we hold the lock
  for (auto& [fd, c] : conns_) ::close(fd);
  if (listen_fd_ >= 0) {
    ::close(listen_fd_);
    ::unlink(paths_.socket.c_str());
  }
  for (int fd : {epoll_fd_, timer_fd_, signal_fd_})
    if (fd >= 0) ::close(fd);
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the lock last
}

Status Daemon::start() {
  started_ns_ = shm::realtime_ns();
  started_mono_ = shm::monotonic_ns();

  BusOptions bo;
  bo.name = opts_.bus;
  bo.group = opts_.group;
  auto bus = Bus::attach(bo);
  if (!bus) return tl::unexpected(bus.error());
  bus_ = *bus;
  paths_ = bus_paths(bus_->name());
  if (opts_.group) {
    struct group gr{}, *res = nullptr;
    std::vector<char> buf(16384);
    if (::getgrnam_r(opts_.group->c_str(), &gr, buf.data(), buf.size(), &res) != 0 || !res)
      return make_error(Errc::kInvalidArgument, fmt::format("no such Unix group '{}'", *opts_.group));
    gid_ = gr.gr_gid;
  }
  const unsigned dir_mode = gid_ ? 0770 : 0700;
  if (auto ok = make_dirs(paths_.runtime_dir, dir_mode); !ok) return ok;
  // One busd per bus: an exclusive flock that the kernel drops when we die.
  lock_fd_ = ::open(paths_.lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd_ < 0) return make_error(Errc::kSystem, fmt::format("cannot open {}: {}", paths_.lock, std::strerror(errno)));
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    char buf[32] = {};
    (void)!::pread(lock_fd_, buf, sizeof buf - 1, 0);
    return make_error(Errc::kAlreadyExists, fmt::format("busd is already running for bus '{}' (pid {}, lock {})",
                                                        bus_->name(), std::atoi(buf), paths_.lock));
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  (void)!::ftruncate(lock_fd_, 0);
  (void)!::pwrite(lock_fd_, pid.data(), pid.size(), 0);

  auto store = OffsetStore::open(paths_.state_dir);
  if (!store) return tl::unexpected(store.error());
  offsets_ = std::move(*store);
  if (offsets_.skipped_lines())
    log(fmt::format("{}: skipped {} torn or corrupt lines", offsets_.path(), offsets_.skipped_lines()));

  // A previous busd's members that are still alive will come back (they look every 100 ms)
  // with the partitions they consume: until they have, or for a second at most, hand out
  // no partition that may be theirs.
  if (auto old = shm::Segment::open(busd_segment_name(bus_->name()), shm::SegmentKind::kBusd, kBusdLayoutMajor, false)) {
    const auto* old_slots = old->at<const MemberSlot>(kMemberSlotsOffset);
    for (std::uint32_t i = 0; i < kMemberSlots; ++i) {
      const std::int32_t pid = old_slots[i].pid.load(std::memory_order_relaxed);
      if (pid > 0 && shm::process_alive(pid, 0)) returning_.insert(pid);
    }
  }
  if (!returning_.empty()) {
    grace_until_ns_ = started_mono_ + 1'000'000'000;
    log(fmt::format("{} members of the previous busd are alive: waiting up to 1 s for them to rejoin", returning_.size()));
  }
  // Our segment: member notices and heartbeats. Replaced whole: a previous busd's members
  // reconnect and get slots in this one.
  shm::SegmentSpec spec{busd_segment_name(bus_->name()), shm::SegmentKind::kBusd, kBusdLayoutMajor, kBusdLayoutMinor,
                        kBusdSegmentSize, gid_ ? 0660u : 0600u, gid_, /*replace=*/true};
  auto seg = shm::Segment::create(spec, [&](std::byte* base) {
    auto* c = new (base + kBusdControlOffset) BusdControl{};
    c->pid = ::getpid();
    c->member_slots = kMemberSlots;
    c->started_ns = started_ns_;
    for (std::uint32_t i = 0; i < kMemberSlots; ++i) new (base + kMemberSlotsOffset + i * sizeof(MemberSlot)) MemberSlot{};
  });
  if (!seg) return tl::unexpected(seg.error());
  seg_ = std::move(*seg);
  slots_ = seg_.at<MemberSlot>(kMemberSlotsOffset);

  // The socket. A stale one (busd killed) is ours to remove: we hold the lock.
  ::unlink(paths_.socket.c_str());
  listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", paths_.socket.c_str());
  const mode_t old = ::umask(gid_ ? 0007 : 0077);
  const int rc = ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  ::umask(old);
  if (rc != 0) return make_error(Errc::kSystem, fmt::format("cannot bind {}: {}", paths_.socket, std::strerror(errno)));
  if (gid_) {
    (void)!::chown(paths_.socket.c_str(), static_cast<uid_t>(-1), *gid_);
    ::chmod(paths_.socket.c_str(), 0660);
  } else {
    ::chmod(paths_.socket.c_str(), 0600);
  }
  if (::listen(listen_fd_, 128) != 0) return make_error(Errc::kSystem, fmt::format("listen: {}", std::strerror(errno)));

  epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  timer_fd_ = ::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  itimerspec its{{0, 20'000'000}, {0, 20'000'000}};
  ::timerfd_settime(timer_fd_, 0, &its, nullptr);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  ::sigprocmask(SIG_BLOCK, &mask, nullptr);
  signal_fd_ = ::signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
  ::signal(SIGPIPE, SIG_IGN);
  for (int fd : {listen_fd_, timer_fd_, signal_fd_}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
  }
  // Spilled topics whose shared memory is gone came back with Bus::attach; say what did not.
  if (auto r = bus_->restore_spilled_topics(); !r) log(fmt::format("a spilled topic could not be restored: {}", r.error().message));
  spiller_ = std::make_unique<Spiller>(bus_, paths_.state_dir, gid_ ? 0660u : 0600u, [this](const std::string& m) { log(m); });
  spiller_->start();
  log(fmt::format("bus '{}' ready: socket {}, state {}", bus_->name(), paths_.socket, paths_.state_dir));
  return {};
}

Status Daemon::loop() {
  epoll_event events[64];
  for (;;) {
    const int n = ::epoll_wait(epoll_fd_, events, 64, 1000);
    if (n < 0 && errno != EINTR) return make_error(Errc::kSystem, fmt::format("epoll_wait: {}", std::strerror(errno)));
    if (stopping_) {
      (void)offsets_.flush();
      return {};
    }
    for (int i = 0; i < n; ++i) {
      const int fd = events[i].data.fd;
      if (fd == listen_fd_) {
        accept_clients();
      } else if (fd == timer_fd_) {
        std::uint64_t expirations;
        (void)!::read(timer_fd_, &expirations, sizeof expirations);
        tick();
      } else if (fd == signal_fd_) {
        signalfd_siginfo si{};
        (void)!::read(signal_fd_, &si, sizeof si);
        log(fmt::format("signal {}: flushing offsets and exiting", si.ssi_signo));
        (void)offsets_.flush();
        return {};
      } else {
        if (events[i].events & EPOLLOUT) {
          auto it = conns_.find(fd);
          if (it != conns_.end()) flush_out(it->second);
        }
        if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(fd);
      }
    }
    if (stopping_) {
      (void)offsets_.flush();
      return {};
    }
  }
}

void Daemon::accept_clients() {
  for (;;) {
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
      ::close(fd);
      continue;
    }
    // The socket's mode already keeps others out; SO_PEERCRED is the second lock, for a
    // socket file whose mode someone widened.
    const bool allowed = cred.uid == ::geteuid() || cred.uid == 0 || (gid_ && cred.gid == *gid_);
    if (!allowed) {
      std::string out;
      proto::encode(json{{"error", "permission"},
                         {"message", fmt::format("uid {} may not use bus '{}' (owner uid {}{})", cred.uid, bus_->name(),
                                                 ::geteuid(), gid_ ? fmt::format(", group {}", *gid_) : "")}},
                    out);
      (void)!::send(fd, out.data(), out.size(), MSG_NOSIGNAL);
      ::close(fd);
      log(fmt::format("refused a client of uid {} (pid {})", cred.uid, cred.pid));
      continue;
    }
    Conn c;
    c.fd = fd;
    c.uid = cred.uid;
    c.pid = cred.pid;
    conns_[fd] = std::move(c);
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
  }
}

void Daemon::on_readable(int fd) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      it->second.in.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    if (n == 0) {
      close_conn(fd, "connection closed");
      return;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    if (errno == EINTR) continue;
    close_conn(fd, fmt::format("recv: {}", std::strerror(errno)));
    return;
  }
  for (;;) {
    auto c = conns_.find(fd);
    if (c == conns_.end()) return;
    auto m = proto::decode(c->second.in);
    if (!m) {
      close_conn(fd, m.error().message);
      return;
    }
    if (!*m) return;
    try {
      handle(c->second, **m);
    } catch (const std::exception& e) {
      // A field of the wrong type in a well-framed message: refuse it, drop the client,
      // never the daemon.
      const json& req = **m;
      if (conns_.count(fd)) {
        reply_error(conns_.at(fd), req, Errc::kInvalidArgument, fmt::format("malformed request: {}", e.what()));
        close_conn(fd, fmt::format("malformed request: {}", e.what()));
      }
      return;
    }
  }
}

void Daemon::close_conn(int fd, const std::string& why) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  const std::string group = it->second.group, member = it->second.member_id;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
  ::close(fd);
  conns_.erase(it);
  if (!member.empty()) {
    auto g = groups_.find(group);
    if (g != groups_.end() && g->second.members.count(member)) remove_member(g->second, member, why);
  }
}

void Daemon::send(int fd, const json& m) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  proto::encode(m, it->second.out);
  flush_out(it->second);
  // A client that does not read its socket does not get to grow busd's memory.
  if (it->second.out.size() > (16u << 20)) close_conn(fd, "not reading its replies");
}

void Daemon::flush_out(Conn& c) {
  while (!c.out.empty()) {
    const ssize_t n = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      c.out.erase(0, static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    return;  // the read side will see the error and close
  }
  epoll_event ev{};
  ev.events = EPOLLIN | (c.out.empty() ? 0u : static_cast<unsigned>(EPOLLOUT));
  ev.data.fd = c.fd;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, c.fd, &ev);
}

void Daemon::reply(Conn& c, const json& req, json body) {
  if (req.contains("id")) body["re"] = req["id"];
  send(c.fd, body);
}

void Daemon::reply_error(Conn& c, const json& req, Errc code, const std::string& msg) {
  reply(c, req, json{{"error", errc_name(code)}, {"message", msg}});
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
  MemberSlot& s = slots_[m.slot];
  s.notice.fetch_add(1, std::memory_order_release);  // SYNC POINT: the member acquires it in poll
  shm::futex_wake_all(&s.notice);
}

void Daemon::rebalance(Group& g) {
  if (g.members.empty()) return;
  std::vector<MemberSubscription> subs;
  for (const auto& [id, m] : g.members) subs.push_back({id, m.topics, m.owned});
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
    std::vector<TopicPartition> give_up;
    for (const auto& tp : m.owned)
      if (std::find(want.begin(), want.end(), tp) == want.end()) give_up.push_back(tp);
    if (give_up.empty()) continue;
    // A partition moves only once its owner has stopped with it: never two owners at once.
    m.revoking = true;
    m.revoke_deadline_ns = shm::monotonic_ns() + opts_.rebalance_timeout_ms * 1'000'000ull;
    waiting = true;
    send(m.fd, json{{"push", "revoke"}, {"group", g.name}, {"generation", g.generation}, {"partitions", tps_json(give_up)}});
    notify_member(m);
  }
  g.revoke_deadline_ns = waiting ? 1 : 0;  // "rebalancing", for describe
  if (waiting) return;
  ++g.generation;
  for (auto& [id, m] : g.members) {
    m.owned = target.at(id);
    send(m.fd, json{{"push", "assign"}, {"group", g.name}, {"generation", g.generation}, {"partitions", tps_json(m.owned)}});
    notify_member(m);
    for (const auto& tp : m.owned) update_gate(g.name, tp);
  }
  log(fmt::format("group '{}' generation {}: {} members", g.name, g.generation, g.members.size()));
}

void Daemon::remove_member(Group& g, const std::string& id, const std::string& why) {
  auto it = g.members.find(id);
  if (it == g.members.end()) return;
  const std::uint32_t slot = it->second.slot;
  const int fd = it->second.fd;
  log(fmt::format("group '{}': member {} (pid {}) left: {}", g.name, id, it->second.pid, why));
  g.members.erase(it);
  slots_[slot].pid.store(0, std::memory_order_release);
  auto c = conns_.find(fd);
  if (c != conns_.end()) c->second.member_id.clear();
  // Its partitions are free at once (the process is gone or gave them up by leaving).
  rebalance(g);
}

void Daemon::update_gate(const std::string& group, const TopicPartition& tp) {
  // In a `block` topic the group's committed offset holds producers back even while the
  // group has no live member: a durable gate, owned by busd and never reaped by producers.
  auto t = bus_->topic(tp.topic);
  if (!t || tp.partition >= (*t)->partitions()) return;
  const shm::Ring& ring = (*t)->ring(tp.partition);
  if (ring.retention() != shm::Retention::kBlock) return;
  auto committed = offsets_.get({group, tp.topic, tp.partition});
  if (!committed) return;
  auto lock = shm::SegmentLock::open((*t)->segment(tp.partition));
  if (!lock) return;
  shm::RingReader reader(ring);
  if (reader.seek(*committed) == shm::ReadStatus::kLapped) reader.seek_earliest();
  (void)shm::hold_durable_gate(ring, *lock, std::hash<std::string>{}(group), reader);
}

void Daemon::op_join(Conn& c, const json& req) {
  const std::string group = req.value("group", "");
  if (auto ok = validate_name("group", group); !ok) return reply_error(c, req, ok.error().code, ok.error().message);
  if (!req.contains("topics") || !req["topics"].is_array() || req["topics"].empty())
    return reply_error(c, req, Errc::kInvalidArgument, "join needs a non-empty list of topics");
  std::vector<std::string> topics;
  for (const auto& t : req["topics"]) {
    if (!t.is_string()) return reply_error(c, req, Errc::kInvalidArgument, "topic names are strings");
    auto topic = bus_->topic(t.get<std::string>());
    if (!topic) return reply_error(c, req, topic.error().code, topic.error().message);
    topics.push_back(t.get<std::string>());
  }
  auto kind = parse_assignor(req.value("assignor", "sticky"));
  if (!kind) return reply_error(c, req, kind.error().code, kind.error().message);
  if (!c.member_id.empty()) return reply_error(c, req, Errc::kInvalidArgument, "this connection is already a group member");
  Group& g = groups_[group];
  g.name = group;
  if (g.members.empty()) g.assignor = *kind;
  std::string id = req.value("member_id", "");
  if (id.empty() || g.members.count(id))
    id = fmt::format("{}-{}-{:06x}", req.value("name", "member"), c.pid, shm::random_u64() & 0xffffff);
  std::optional<std::uint32_t> slot;
  for (std::uint32_t i = 0; i < kMemberSlots && !slot; ++i) {
    std::int32_t zero = 0;
    if (slots_[i].pid.compare_exchange_strong(zero, c.pid > 0 ? c.pid : -1)) slot = i;
  }
  if (!slot) return reply_error(c, req, Errc::kTooManyClients, fmt::format("busd has no free member slot ({})", kMemberSlots));
  slots_[*slot].heartbeat_ns.store(shm::monotonic_ns(), std::memory_order_relaxed);
  Member m;
  m.id = id;
  m.fd = c.fd;
  m.topics = topics;
  m.pid = c.pid;
  m.name = req.value("name", "");
  m.slot = *slot;
  m.session_timeout_ms = std::max<std::int64_t>(100, req.value("session_timeout_ms", 10'000));
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
  g.members[id] = m;
  c.group = group;
  c.member_id = id;
  if (returning_.erase(c.pid) && returning_.empty()) grace_until_ns_ = 0;  // all are back
  reply(c, req, json{{"ok", true}, {"member_id", id}, {"slot", *slot}, {"segment", busd_segment_name(bus_->name())},
                     {"generation", g.generation}, {"owned", tps_json(m.owned)}});
  log(fmt::format("group '{}': member {} (pid {}) joined, topics {}", group, id, c.pid, json(topics).dump()));
  rebalance(g);
}

void Daemon::op_commit(Conn& c, const json& req) {
  const std::string group = req.value("group", "");
  auto g = groups_.find(group);
  const std::string id = req.value("member_id", "");
  if (g == groups_.end() || !g->second.members.count(id))
    return reply_error(c, req, Errc::kInvalidArgument,
                       fmt::format("commit refused: {} is not a member of group '{}' (evicted or stale)", id, group));
  const Member& m = g->second.members.at(id);
  const std::uint64_t gen = req.value("generation", ~0ull);
  if (gen != g->second.generation)
    return reply_error(c, req, Errc::kInvalidArgument,
                       fmt::format("commit refused: stale generation {} (group '{}' is at generation {})", gen, group,
                                   g->second.generation));
  if (!req.contains("offsets") || !req["offsets"].is_array())
    return reply_error(c, req, Errc::kInvalidArgument, "commit needs offsets");
  std::vector<std::pair<TopicPartition, std::uint64_t>> todo;
  for (const auto& e : req["offsets"]) {
    if (!e.is_array() || e.size() != 3 || !e[0].is_string() || !e[1].is_number_unsigned() || !e[2].is_number_unsigned())
      return reply_error(c, req, Errc::kInvalidArgument, "offsets are [topic, partition, offset]");
    TopicPartition tp{e[0].get<std::string>(), e[1].get<std::uint32_t>()};
    if (std::find(m.owned.begin(), m.owned.end(), tp) == m.owned.end())
      return reply_error(c, req, Errc::kInvalidArgument,
                         fmt::format("commit refused: {}-{} is not assigned to {} in generation {}", tp.topic, tp.partition,
                                     id, g->second.generation));
    todo.push_back({tp, e[2].get<std::uint64_t>()});
  }
  for (const auto& [tp, off] : todo) {
    offsets_.put({group, tp.topic, tp.partition}, off);
    dirty_gates_.insert({group, tp});
  }
  if (req.contains("sync") && req["sync"].is_boolean() && req["sync"].get<bool>()) {
    if (auto ok = offsets_.flush(); !ok) return reply_error(c, req, ok.error().code, ok.error().message);
    for (const auto& [grp, tp] : dirty_gates_) update_gate(grp, tp);
    dirty_gates_.clear();
  }
  reply(c, req, json{{"ok", true}});
}

json Daemon::describe_group(const std::string& name) {
  json out = {{"group", name}, {"members", json::array()}, {"partitions", json::array()}};
  std::map<std::pair<std::string, std::uint32_t>, std::string> owner;
  std::set<std::string> topics;
  auto g = groups_.find(name);
  if (g != groups_.end()) {
    out["generation"] = g->second.generation;
    out["assignor"] = assignor_name(g->second.assignor);
    out["state"] = g->second.members.empty() ? "empty" : (g->second.revoke_deadline_ns ? "rebalancing" : "stable");
    for (const auto& [id, m] : g->second.members) {
      out["members"].push_back({{"member_id", id}, {"pid", m.pid}, {"name", m.name}, {"topics", m.topics},
                                {"partitions", tps_json(m.owned)}});
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
      const auto committed = offsets_.get({name, t, p});
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
  return out;
}

void Daemon::handle(Conn& c, const json& req) {
  auto op = proto::check_request(req);
  if (!op) return reply_error(c, req, op.error().code, op.error().message);
  if (*op == "hello" || *op == "status") {
    std::size_t members = 0;
    for (const auto& [n, g] : groups_) members += g.members.size();
    return reply(c, req,
                 json{{"ok", true}, {"version", kBusdVersion}, {"protocol", proto::kProtocolVersion}, {"pid", ::getpid()},
                      {"bus", bus_->name()}, {"uptime_ms", (shm::monotonic_ns() - started_mono_) / 1'000'000},
                      {"started_ns", started_ns_}, {"socket", paths_.socket}, {"runtime_dir", paths_.runtime_dir},
                      {"state_dir", paths_.state_dir}, {"groups", groups_.size()}, {"members", members}});
  }
  if (*op == "shutdown") {
    reply(c, req, json{{"ok", true}});
    log(fmt::format("shutdown asked by pid {}", c.pid));
    stopping_ = true;
    return;
  }
  if (*op == "join") return op_join(c, req);
  if (*op == "commit") return op_commit(c, req);
  if (*op == "heartbeat") return reply(c, req, json{{"ok", true}});
  if (*op == "leave") {
    auto g = groups_.find(c.group);
    if (g != groups_.end() && !c.member_id.empty()) remove_member(g->second, c.member_id, "left the group");
    c.member_id.clear();
    return reply(c, req, json{{"ok", true}});
  }
  if (*op == "revoked") {
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
    m.revoking = false;
    reply(c, req, json{{"ok", true}});
    bool still = false;
    for (const auto& [id, mm] : g->second.members) still |= mm.revoking;
    if (!still) {
      g->second.revoke_deadline_ns = 0;
      rebalance(g->second);
    }
    return;
  }
  if (*op == "committed") {
    const std::string group = req.value("group", "");
    json offs = json::array();
    if (req.contains("partitions") && req["partitions"].is_array())
      for (const auto& tp : req["partitions"])
        if (tp.is_array() && tp.size() == 2 && tp[0].is_string() && tp[1].is_number_unsigned()) {
          auto o = offsets_.get({group, tp[0].get<std::string>(), tp[1].get<std::uint32_t>()});
          offs.push_back(o ? json(*o) : json(nullptr));
        }
    return reply(c, req, json{{"ok", true}, {"offsets", offs}});
  }
  if (*op == "group_list") {
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
  if (*op == "group_describe") {
    const std::string group = req.value("group", "");
    if (auto ok = validate_name("group", group); !ok) return reply_error(c, req, ok.error().code, ok.error().message);
    bool known = groups_.count(group) > 0;
    for (const auto& [k, o] : offsets_.all()) known |= k.group == group;
    if (!known) return reply_error(c, req, Errc::kNotFound, fmt::format("group '{}' does not exist on bus '{}'", group, bus_->name()));
    json d = describe_group(group);
    d["ok"] = true;
    return reply(c, req, d);
  }
  if (*op == "reset_offsets") {
    const std::string group = req.value("group", ""), topic = req.value("topic", "");
    if (auto ok = validate_name("group", group); !ok) return reply_error(c, req, ok.error().code, ok.error().message);
    auto g = groups_.find(group);
    if (g != groups_.end() && !g->second.members.empty())
      return reply_error(c, req, Errc::kInvalidArgument,
                         fmt::format("group '{}' has {} live members: stop them before resetting its offsets", group,
                                     g->second.members.size()));
    auto t = bus_->topic(topic);
    if (!t) return reply_error(c, req, t.error().code, t.error().message);
    const std::string to = req.value("to", "");
    json result = json::array();
    for (std::uint32_t p = 0; p < (*t)->partitions(); ++p) {
      const shm::Ring& ring = (*t)->ring(p);
      std::uint64_t off = 0;
      if (to == "earliest") off = ring.start_offset();
      else if (to == "latest") off = ring.end_offset();
      else if (auto [ptr, ec] = std::from_chars(to.data(), to.data() + to.size(), off); to.empty() || ec != std::errc() || ptr != to.data() + to.size())
        return reply_error(c, req, Errc::kInvalidArgument, fmt::format("--to '{}': use earliest, latest or an offset", to));
      offsets_.put({group, topic, p}, off);
      update_gate(group, {topic, p});
      result.push_back({{"topic", topic}, {"partition", p}, {"committed", off}});
    }
    (void)offsets_.flush();
    return reply(c, req, json{{"ok", true}, {"partitions", result}});
  }
  reply_error(c, req, Errc::kInvalidArgument, fmt::format("unknown operation '{}'", *op));
}

void Daemon::tick() {
  // Our bus was deleted (busctl bus delete, or its files removed by hand): nothing left to
  // coordinate, and staying would keep a dead bus's socket alive.
  if ((++ticks_ % 50) == 0 && !bus_->still_exists()) {
    log(fmt::format("bus '{}' was deleted: exiting", bus_->name()));
    stopping_ = true;
    return;
  }
  // Durable gates move only once the offset they stand for is on disk.
  if (offsets_.flush()) {
    for (const auto& [group, tp] : dirty_gates_) update_gate(group, tp);
    dirty_gates_.clear();
  }
  const std::uint64_t now = shm::monotonic_ns();
  if (grace_until_ns_ && now >= grace_until_ns_) {
    grace_until_ns_ = 0;
    returning_.clear();
  }
  if (!grace_until_ns_)
    for (auto& [name, g] : groups_)
      if (g.pending_grace) {
        g.pending_grace = false;
        rebalance(g);
      }
  for (auto& [name, g] : groups_) {
    std::vector<std::pair<std::string, std::string>> evict;
    for (const auto& [id, m] : g.members) {
      const std::uint64_t hb = slots_[m.slot].heartbeat_ns.load(std::memory_order_relaxed);
      if (now > hb && now - hb > static_cast<std::uint64_t>(m.session_timeout_ms) * 1'000'000ull)
        evict.push_back({id, fmt::format("no heartbeat for {} ms (session timeout)", (now - hb) / 1'000'000)});
      else if (m.revoking && now > m.revoke_deadline_ns)
        evict.push_back({id, "did not give up its revoked partitions in time"});
    }
    for (const auto& [id, why] : evict) {
      const int fd = g.members.count(id) ? g.members.at(id).fd : -1;
      auto c = conns_.find(fd);
      if (c != conns_.end()) {
        send(fd, json{{"push", "evicted"}, {"group", name}, {"message", why}});
        notify_member(g.members.at(id));  // so that it stops at its next poll
        c->second.member_id.clear();
      }
      remove_member(g, id, why);
    }
  }
}

}  // namespace

Status run_busd(const BusdOptions& options) {
  Daemon d(options);
  if (auto ok = d.start(); !ok) return ok;
  return d.loop();
}

}  // namespace shmbus
