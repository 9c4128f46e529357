// The Kafka listener in busd's event loop (gateway.h): connections, frames, per-connection
// FIFO answers, parked requests (long polls, JoinGroups, acks=all Produces).
#include "tools/busd/kafka/gateway.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "shm/process.h"

namespace shmbus::kafka {

namespace {

// The address the client connected to (getsockname of its socket): host without brackets.
ClientEnd local_end(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ClientEnd e{"127.0.0.1", 0};
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return e;
  char host[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
    e.port = ntohs(in6->sin6_port);
  } else {
    const auto* in4 = reinterpret_cast<const sockaddr_in*>(&ss);
    ::inet_ntop(AF_INET, &in4->sin_addr, host, sizeof host);
    e.port = ntohs(in4->sin_port);
  }
  e.host = host;
  return e;
}

std::span<const std::uint8_t> bytes_of(const std::string& s, std::size_t from) {
  return std::span(reinterpret_cast<const std::uint8_t*>(s.data()) + from, s.size() - from);
}

}  // namespace

Result<std::unique_ptr<Gateway>> Gateway::open(const daemon::ListenerSpec& spec, int epoll_fd,
                                               std::unique_ptr<Handlers> handlers, Handlers::Log log,
                                               daemon::DurableBell* durable) {
  auto fd = daemon::listen_tcp(spec);
  if (!fd) return tl::unexpected(fd.error());
  const int tfd = ::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (tfd < 0) {
    ::close(*fd);
    return make_error(Errc::kSystem, fmt::format("timerfd_create: {}", std::strerror(errno)));
  }
  auto bell = Doorbell::open(handlers->bus());
  if (!bell) {
    ::close(*fd);
    ::close(tfd);
    return tl::unexpected(bell.error());
  }
  const int bfd = (*bell)->fd();
  std::unique_ptr<Gateway> g(new Gateway(*fd, tfd, epoll_fd, std::move(handlers), std::move(log), std::move(*bell), durable));
  for (int f : {*fd, tfd, bfd, durable ? durable->fd() : -1}) {
    if (f < 0) continue;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = f;
    if (::epoll_ctl(epoll_fd, EPOLL_CTL_ADD, f, &ev) != 0)
      return make_error(Errc::kSystem, fmt::format("epoll_ctl: {}", std::strerror(errno)));
  }
  return g;
}

Gateway::Gateway(int listen_fd, int timer_fd, int epoll_fd, std::unique_ptr<Handlers> handlers, Handlers::Log log,
                 std::unique_ptr<Doorbell> doorbell, daemon::DurableBell* durable)
    : listen_fd_(listen_fd), timer_fd_(timer_fd), epoll_fd_(epoll_fd), address_(daemon::bound_address(listen_fd)),
      handlers_(std::move(handlers)), log_(std::move(log)), doorbell_(std::move(doorbell)), durable_(durable) {}

Gateway::~Gateway() {
  while (!conns_.empty()) close_conn(conns_.begin()->first, "");
  for (int fd : {listen_fd_, timer_fd_}) {
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
    ::close(fd);
  }
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, doorbell_->fd(), nullptr);  // the doorbell closes it
  if (durable_) {  // busd's, for the next Kafka listener
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, durable_->fd(), nullptr);
    durable_->want(false);
    durable_->heard();
  }
}

void Gateway::waiting_for_disk(int delta) {
  const std::size_t before = waiting_for_disk_;
  waiting_for_disk_ = static_cast<std::size_t>(static_cast<std::ptrdiff_t>(waiting_for_disk_) + delta);
  if (durable_ && (before == 0) != (waiting_for_disk_ == 0)) durable_->want(waiting_for_disk_ > 0);
}

void Gateway::on_event(int fd, std::uint32_t events) {
  if (fd == listen_fd_) return accept_all();
  if (fd == timer_fd_) {
    std::uint64_t expirations;
    (void)!::read(timer_fd_, &expirations, sizeof expirations);
    (void)poll_parked();
    // Stopped here only, not when the last parked request is answered: a long poll answered
    // and parked again every record would otherwise cost two timerfd_settime calls a record.
    if (parked_ == 0) arm_timer(false);
    return;
  }
  if (fd == doorbell_->fd()) {
    doorbell_->heard();
    (void)poll_parked(true);
    return;
  }
  if (durable_ && fd == durable_->fd()) {
    durable_->heard();
    (void)poll_parked();
    return;
  }
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  if (events & EPOLLOUT) {
    write_out(fd, it->second);
    it = conns_.find(fd);
    if (it == conns_.end()) return;
  }
  if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
    Conn& c = it->second;
    if (c.parked && !(events & (EPOLLHUP | EPOLLERR))) {
      // The client closed: nobody reads the answer, and its parked Fetch would hold the
      // doorbell's watch until its max_wait.
      char b;
      if (::recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0) return close_conn(fd, "");
      // More requests behind a parked one: they wait in the kernel's buffers, unheard until
      // it is answered. Only now is its read interest dropped (a long poll's connection
      // seldom asks more meanwhile: no epoll_ctl a park).
      c.input_held = true;
      return update_interest(fd, c);
    }
    read_in(fd);
  }
}

void Gateway::accept_all() {
  for (;;) {
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    if (conns_.size() >= kMaxConns) {
      ::close(fd);
      continue;
    }
    const int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    Conn& c = conns_[fd];
    c.end = local_end(fd);
    c.events = EPOLLIN;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
  }
}

void Gateway::read_in(int fd) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  Conn& c = it->second;
  char buf[65536];
  // At most a few buffers a turn: one busy client does not starve the others.
  for (int turn = 0; turn < 16; ++turn) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      c.in.append(buf, static_cast<std::size_t>(n));
      continue;
    }
    if (n == 0) {
      // What was asked before the close is still answered if it can be at once.
      (void)serve(fd, c);
      return close_conn(fd, "");
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    return close_conn(fd, fmt::format("recv: {}", std::strerror(errno)));
  }
  const std::uint64_t appends = handlers_->appends();
  const bool held = parked_ > 0;
  if (held) doorbell_->hold();
  if (!serve(fd, c)) {
    if (held && doorbell_->release()) (void)poll_parked(true);
    return;
  }
  // This connection's Produce appended records: the parked Fetches they answer go out now,
  // ahead of the Produce's own answer, instead of a loop turn later through the doorbell
  // (its thread's futex wake, the eventfd, epoll), which stays quiet meanwhile. Native
  // producers still ring it.
  if (parked_ > 0 && handlers_->appends() != appends) {
    answered_by_produce_ += poll_parked();  // its rewatch() releases the doorbell
    it = conns_.find(fd);
    if (it == conns_.end()) return;
  } else if (held && doorbell_->release()) {  // a native record came while we served
    (void)poll_parked(true);
    it = conns_.find(fd);
    if (it == conns_.end()) return;
  }
  write_out(fd, it->second);
}

bool Gateway::serve(int fd, Conn& c) {
  while (!c.parked && c.out.size() < kOutHighWater) {
    auto size = frame_size(bytes_of(c.in, c.in_used));
    if (!size) {
      close_conn(fd, size.error());
      return false;
    }
    if (!*size) break;
    auto frame = bytes_of(c.in, c.in_used + 4).first(**size);
    c.in_used += 4 + **size;
    auto req = decode_request(frame);
    if (!req) {
      const DecodeError& e = req.error();
      if (e.kind == DecodeError::Kind::kUnsupportedVersion && e.header && e.header->api_key == kApiVersions) {
        c.out += encode_api_versions_fallback(e.header->correlation_id);
        continue;
      }
      close_conn(fd, e.message);
      return false;
    }
    Answer a = handlers_->handle(*req, c.end, shm::monotonic_ns());
    if (!apply(fd, c, *req, std::move(a))) return false;
  }
  // Handled bytes are dropped once they are most of the buffer (not a copy a frame).
  if (c.in_used == c.in.size()) {
    c.in.clear();
    c.in_used = 0;
  } else if (c.in_used > (1u << 20) && c.in_used * 2 > c.in.size()) {
    c.in.erase(0, c.in_used);
    c.in_used = 0;
  }
  return true;
}

bool Gateway::apply(int fd, Conn& c, const Request& req, Answer a) {
  switch (a.kind) {
    case Answer::Kind::kRespond: c.out += a.frame; return true;
    case Answer::Kind::kNothing: return true;
    case Answer::Kind::kClose: close_conn(fd, a.why); return false;
    case Answer::Kind::kPark:
      if (!c.parked) {
        c.parked.emplace(Parked{a.park_as ? std::move(*a.park_as) : req, a.deadline_ns, handlers_->progress(req),
                                std::move(a.stops), shm::monotonic_ns(), std::move(a.wait)});
        if (c.parked->wait) waiting_for_disk(+1);
        if (++parked_ == 1) arm_timer(true);
        rewatch();
      }
      return true;
  }
  return true;
}

std::size_t Gateway::poll_parked(bool rung) {
  const std::uint64_t now = shm::monotonic_ns();
  std::size_t answered = 0;
  std::vector<int> ready;
  for (auto& [fd, c] : conns_) {
    if (!c.parked) continue;
    const Parked& p = *c.parked;
    bool look = p.wait || now >= p.deadline_ns;
    if (!look && p.stops.empty()) {
      look = handlers_->progress(p.request) != p.progress;
    } else if (!look) {
      const Handlers::Moved m = handlers_->moved(p.stops);
      // A ring is for a record at a stop, which a claim's commit does not show in the end.
      look = m == Handlers::Moved::kGrew || (m == Handlers::Moved::kShort && (rung || now - p.looked_ns >= kShortLookNs));
    }
    if (look) ready.push_back(fd);
  }
  for (int fd : ready) {
    auto it = conns_.find(fd);
    if (it == conns_.end()) continue;
    Conn& c = it->second;
    const bool final = now >= c.parked->deadline_ns;
    ++looks_;
    Parked p = std::move(*c.parked);
    c.parked.reset();
    --parked_;
    Answer a = p.wait ? handlers_->resume(*p.wait, now) : handlers_->handle(p.request, c.end, now, final);
    if (a.kind == Answer::Kind::kPark) {  // grew, but not enough yet (or not on disk yet): wait on, to the first deadline
      if (!p.wait) {
        p.progress = handlers_->progress(p.request);
        p.stops = std::move(a.stops);
        p.looked_ns = now;
      }
      c.parked.emplace(std::move(p));
      ++parked_;
      continue;
    }
    ++answered;
    c.input_held = false;
    if (p.wait) waiting_for_disk(-1);
    if (!apply(fd, c, p.request, std::move(a))) continue;
    if (serve(fd, c)) write_out(fd, c);
  }
  rewatch();
  return answered;
}

void Gateway::rewatch() {
  // Each partition from the first offset a parked Fetch could not read yet.
  Doorbell::Watch w;
  for (const auto& [fd, c] : conns_)
    if (c.parked)
      for (const FetchStop& s : c.parked->stops) {
        auto [it, added] = w.try_emplace({s.topic, s.epoch, s.partition}, s.offset);
        if (!added) it->second = std::min(it->second, s.offset);
      }
  doorbell_->watch(std::move(w));
}

void Gateway::arm_timer(bool on) {
  if (on == timer_on_) return;
  timer_on_ = on;
  const long ns = on ? static_cast<long>(kParkedPollNs) : 0;
  itimerspec its{{0, ns}, {0, ns}};
  ::timerfd_settime(timer_fd_, 0, &its, nullptr);
}

void Gateway::write_out(int fd, Conn& c) {
  if (daemon::send_pending(fd, c.out) == daemon::SendResult::kClosed)
    return close_conn(fd, "");  // the client went away
  // Drained below the mark: requests read meanwhile are served now.
  if (!c.parked && c.out.size() < kOutHighWater && c.in_used < c.in.size()) {
    if (!serve(fd, c)) return;
    if (!c.out.empty()) return write_out(fd, c);
  }
  update_interest(fd, c);
}

void Gateway::update_interest(int fd, Conn& c) {
  // Read while the connection may ask more: not while answers pile up unread, nor while a
  // request waits (parked) and more came behind it (on_event).
  const bool want_read = !(c.parked && c.input_held) && c.out.size() < kOutHighWater;
  const std::uint32_t events = (want_read ? EPOLLIN : 0u) | (c.out.empty() ? 0u : static_cast<std::uint32_t>(EPOLLOUT));
  if (events == c.events) return;
  c.events = events;
  epoll_event ev{};
  ev.events = events;
  ev.data.fd = fd;
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd, &ev);
}

void Gateway::close_conn(int fd, const std::string& why) {
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  if (!why.empty()) log_(fmt::format("kafka: connection closed: {}", why));
  const bool was_parked = it->second.parked.has_value();
  if (was_parked) {
    --parked_;
    if (it->second.parked->wait) waiting_for_disk(-1);
  }
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
  ::close(fd);
  conns_.erase(it);
  if (was_parked) rewatch();  // its Fetch's partitions are no more the doorbell's business
}

void Gateway::tick(std::uint64_t) {}

}  // namespace shmbus::kafka
