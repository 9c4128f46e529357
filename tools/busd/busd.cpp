// busd's loop: start-up, the event loop, connections and requests; the group coordinator
// (coordinator.cpp) and the spiller (spiller.cpp) run inside it.
#include "tools/busd/daemon.h"

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
namespace daemon {

Daemon::~Daemon() {
  if (spiller_) spiller_->stop();  // its last writes and syncs happen while we hold the lock
  services_.clear();  // they leave the epoll set before it is closed
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
  for (const auto& listen : {opts_.metrics_listen, opts_.kafka_listen})  // a bad address is refused before anything is touched
    if (listen)
      if (auto a = parse_listen(ListenerSpec{*listen, opts_.allow_remote}); !a) return tl::unexpected(a.error());

  BusOptions bo;
  bo.name = opts_.bus;
  bo.group = opts_.group;
  bo.create = !opts_.existing_only;
  if (opts_.existing_only) {
    const std::string name = bo.name.empty() ? default_bus_name() : bo.name;
    if (auto ok = validate_name("bus", name); !ok) return ok;
    if (!shm::Segment::exists(registry_segment_name(name)))
      return make_error(Errc::kNotFound, fmt::format("bus '{}' does not exist (deleted?): busd --existing does not make it", name));
  }
  auto bus = Bus::attach(bo);
  if (!bus) return tl::unexpected(bus.error());
  bus_ = *bus;
  paths_ = bus_paths(bus_->name());
  if (auto ok = join_unix_group(); !ok) return ok;
  const unsigned dir_mode = gid_ ? 0770 : 0700;
  if (auto ok = secure_bases(paths_); !ok) return ok;  // the offset store and spiller's too
  if (auto ok = make_dirs(paths_.runtime_dir, dir_mode, gid_); !ok) return ok;
  if (auto ok = take_lock(); !ok) return ok;

  auto store = OffsetStore::open(paths_.state_dir, gid_);
  if (!store) return tl::unexpected(store.error());
  offsets_ = std::move(*store);
  if (offsets_.skipped_lines())
    log(fmt::format("{}: skipped {} torn or corrupt lines", offsets_.path(), offsets_.skipped_lines()));

  drop_stale_offsets();  // a topic deleted while no busd ran (or lost with /dev/shm)
  note_returning_members();
  restore_kafka_members();
  if (auto ok = create_segment(); !ok) return ok;
  if (auto ok = listen_socket(); !ok) return ok;
  watch_events();
  auto bell = DurableBell::open();
  if (!bell) return tl::unexpected(bell.error());
  durable_bell_ = std::move(*bell);
  if (auto ok = start_listeners(); !ok) return ok;
  // Spilled topics whose shared memory is gone came back with Bus::attach; say what did not.
  if (auto r = bus_->restore_spilled_topics(); !r) log(fmt::format("a spilled topic could not be restored: {}", r.error().message));
  spiller_ = std::make_unique<Spiller>(bus_, paths_.state_dir, gid_ ? 0660u : 0600u, [this](const std::string& m) { log(m); },
                                       [bell = durable_bell_.get()] { bell->ring(); });
  spiller_->start();
  watch_topics();  // what there is now; changes from here on rebalance the groups
  log(fmt::format("bus '{}' ready: socket {}, state {}", bus_->name(), paths_.socket, paths_.state_dir));
  return {};
}

Status Daemon::join_unix_group() {
  // The bus's group, from its registry, whoever started us: every member finds us then.
  gid_ = paths_.gid;
  if (!opts_.group) return {};
  struct group gr{}, *res = nullptr;
  std::vector<char> buf(16384);
  if (::getgrnam_r(opts_.group->c_str(), &gr, buf.data(), buf.size(), &res) != 0 || !res)
    return make_error(Errc::kInvalidArgument, fmt::format("no such Unix group '{}'", *opts_.group));
  if (gid_ != static_cast<unsigned>(gr.gr_gid))
    return make_error(Errc::kInvalidArgument,
                      fmt::format("bus '{}' is {}, not with Unix group '{}' ({}): --group only chooses the group of a bus "
                                  "that busd creates",
                                  bus_->name(), gid_ ? fmt::format("shared with gid {}", *gid_) : "owner-only",
                                  *opts_.group, gr.gr_gid));
  return {};
}

Status Daemon::take_lock() {
  // One busd per bus: an exclusive flock that the kernel drops when we die.
  // A shared bus's lock is the group's: a busd any member starts must find ours.
  lock_fd_ = ::open(paths_.lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, gid_ ? 0660 : 0600);
  if (lock_fd_ < 0) return make_error(Errc::kSystem, fmt::format("cannot open {}: {}", paths_.lock, std::strerror(errno)));
  if (gid_) share_with_group(lock_fd_, *gid_);
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    char buf[32] = {};
    (void)!::pread(lock_fd_, buf, sizeof buf - 1, 0);
    return make_error(Errc::kAlreadyExists, fmt::format("busd is already running for bus '{}' (pid {}, lock {})",
                                                        bus_->name(), std::atoi(buf), paths_.lock));
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  (void)!::ftruncate(lock_fd_, 0);
  (void)!::pwrite(lock_fd_, pid.data(), pid.size(), 0);
  return {};
}

void Daemon::note_returning_members() {
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
}

Status Daemon::create_segment() {
  // Our segment: member notices and heartbeats. Replaced whole: a previous busd's members
  // reconnect and get slots in this one.
  shm::SegmentSpec spec{busd_segment_name(bus_->name()), shm::SegmentKind::kBusd, kBusdLayoutMajor, kBusdLayoutMinor,
                        kBusdSegmentSize, gid_ ? 0660u : 0600u, gid_, /*replace=*/true};
  const auto init = [&](std::byte* base) {
    auto* c = new (base + kBusdControlOffset) BusdControl{};
    c->pid = ::getpid();
    c->member_slots = kMemberSlots;
    c->started_ns = started_ns_;
    for (std::uint32_t i = 0; i < kMemberSlots; ++i) new (base + kMemberSlotsOffset + i * sizeof(MemberSlot)) MemberSlot{};
    for (std::uint32_t i = 0; i < kGroupNameSlots; ++i)
      new (base + kGroupNamesOffset + i * sizeof(GroupNameSlot)) GroupNameSlot{};
  };
  auto seg = shm::Segment::create(spec, init);
  if (!seg && gid_ && seg.error().code == Errc::kPermission) {
    // A shared bus whose previous busd was another member's: /dev/shm is sticky, so its
    // segment cannot be replaced by us, but it is the group's (0660): made anew in place.
    // The previous busd's members lost their connection with it and join us again.
    auto old = shm::Segment::open(spec.name, shm::SegmentKind::kBusd, kBusdLayoutMajor, true);
    if (old && old->size() >= kBusdSegmentSize) {
      log(fmt::format("{} is another user's: made anew in place", shm::Segment::path_of(spec.name)));
      init(old->data());
      seg = std::move(*old);
    }
  }
  if (!seg) return tl::unexpected(seg.error());
  seg_ = std::move(*seg);
  slots_ = seg_.at<MemberSlot>(kMemberSlotsOffset);
  names_ = seg_.at<GroupNameSlot>(kGroupNamesOffset);
  publish_known_groups();
  return {};
}

Status Daemon::listen_socket() {
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
  return {};
}

void Daemon::watch_events() {
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
      } else if (TcpService* service = service_for(fd)) {
        service->on_event(fd, events[i].events);
      } else {
        if (events[i].events & EPOLLOUT) {
          auto it = conns_.find(fd);
          if (it != conns_.end()) flush_out(it->second);
        }
        if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(fd);
      }
      close_marked();
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
    const bool allowed = cred.uid == ::geteuid() || cred.uid == 0 ||
                         (gid_ && (cred.gid == *gid_ || uid_in_group(cred.uid, *gid_)));
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
  to_close_.erase(fd);  // its fd may be reused: a mark must not close the next connection
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
  ::close(fd);
  conns_.erase(it);
  // Its fd may be reused by the next connection: nothing waiting for a flush goes there.
  std::erase_if(unflushed_replies_, [fd](const auto& r) { return r.first == fd; });
  if (!member.empty()) {
    auto g = groups_.find(group);
    if (g != groups_.end() && g->second.members.count(member) && !keep_absent(g->second, member, why))
      remove_member(g->second, member, why);
  }
}

void Daemon::send(int fd, const json& m) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  if (to_close_.count(fd)) return;  // marked: it gets nothing more
  proto::encode(m, it->second.out);
  flush_out(it->second);
  // A client that does not read its socket does not get to grow busd's memory. Closed
  // after the current event or tick: closing removes its member, and our caller may be
  // walking the group's members (rebalance, expire_members).
  if (it->second.out.size() > (16u << 20)) to_close_.emplace(fd, "not reading its replies");
}

void Daemon::close_marked() {
  while (!to_close_.empty()) {
    auto [fd, why] = *to_close_.begin();
    close_conn(fd, why);  // may mark others (a rebalance's pushes): the loop takes them too
    to_close_.erase(fd);
  }
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
                      {"state_dir", paths_.state_dir}, {"groups", groups_.size()}, {"members", members},
                      {"listeners", listeners_json()}});
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
  if (*op == "leave") return op_leave(c, req);
  if (*op == "revoked") return op_revoked(c, req);
  if (*op == "committed") return op_committed(c, req);
  if (*op == "group_list") return op_group_list(c, req);
  if (*op == "group_describe") return op_group_describe(c, req);
  if (*op == "reset_offsets") return op_reset_offsets(c, req);
  if (*op == "listener_start") return op_listener_start(c, req);
  if (*op == "listener_stop") return op_listener_stop(c, req);
  if (*op == "group_delete") return op_group_delete(c, req);
  reply_error(c, req, Errc::kInvalidArgument, fmt::format("unknown operation '{}'", *op));
}

void Daemon::tick() {
  // Our bus was deleted (busctl bus delete, or its files removed by hand): nothing left to
  // coordinate, and staying would keep a dead bus's socket alive.
  if ((++ticks_ % 50) == 0) {
    if (!bus_->still_exists()) {
      log(fmt::format("bus '{}' was deleted: exiting", bus_->name()));
      // Ours may have been made after the delete removed the bus's segments (we started
      // while it ran): leave nothing of the bus behind.
      (void)shm::Segment::remove(busd_segment_name(bus_->name()));
      stopping_ = true;
      return;
    }
    drop_stale_offsets();
  }
  if ((ticks_ % 10) == 0) watch_topics();
  // Durable gates move, and asynchronous commits are answered, once offsets.log holds them.
  (void)flush_offsets();
  retry_failed_gates();
  expire_idle_groups();
  const std::uint64_t now = shm::monotonic_ns();
  for (auto& [kind, service] : services_) service->tick(now);
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
  expire_members(now);
}

}  // namespace daemon

Status run_busd(const BusdOptions& options) {
  daemon::Daemon d(options);
  if (auto ok = d.start(); !ok) return ok;
  return d.loop();
}

}  // namespace shmbus
