// busd's TCP listeners: addresses (loopback unless allowed), listening sockets, the
// `listeners` file that keeps which ones run across restarts (tools/busd/listeners.h), and
// busd's side: opening them by kind, listener_start / listener_stop.
#include "tools/busd/listeners.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tools/busd/daemon.h"
#include "tools/busd/kafka/gateway.h"
#include "tools/busd/metrics.h"

namespace shmbus::daemon {

namespace {

Error bad(const std::string& listen, const std::string& why) {
  return Error{Errc::kInvalidArgument, fmt::format("listen address '{}': {}", listen, why)};
}

}  // namespace

Result<TcpAddress> parse_listen(const ListenerSpec& spec) {
  const std::string& s = spec.listen;
  const auto colon = s.rfind(':');
  if (colon == std::string::npos) return tl::unexpected(bad(s, "expected HOST:PORT, e.g. 127.0.0.1:9464"));
  std::string host = s.substr(0, colon);
  const std::string port_text = s.substr(colon + 1);
  unsigned port = 0;
  const auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || ec != std::errc() || end != port_text.data() + port_text.size() || port > 65535)
    return tl::unexpected(bad(s, fmt::format("port '{}' is not a number from 0 to 65535", port_text)));
  if (host == "localhost") host = "127.0.0.1";
  TcpAddress a;
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    auto* in6 = reinterpret_cast<sockaddr_in6*>(&a.addr);
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(static_cast<std::uint16_t>(port));
    if (::inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &in6->sin6_addr) != 1)
      return tl::unexpected(bad(s, fmt::format("'{}' is not an IPv6 address", host)));
    a.len = sizeof(sockaddr_in6);
    a.loopback = IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
  } else {
    auto* in4 = reinterpret_cast<sockaddr_in*>(&a.addr);
    in4->sin_family = AF_INET;
    in4->sin_port = htons(static_cast<std::uint16_t>(port));
    if (::inet_pton(AF_INET, host.c_str(), &in4->sin_addr) != 1)
      return tl::unexpected(bad(s, fmt::format("'{}' is not an IPv4 address, [IPv6] address or localhost", host)));
    a.len = sizeof(sockaddr_in);
    a.loopback = (ntohl(in4->sin_addr.s_addr) >> 24) == 127;
  }
  if (!a.loopback && !spec.allow_remote)
    return tl::unexpected(bad(s, "not a loopback address; allow other machines explicitly (--allow-remote)"));
  return a;
}

std::string bound_address(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
  char host[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&ss);
    ::inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
    return fmt::format("[{}]:{}", host, ntohs(in6->sin6_port));
  }
  const auto* in4 = reinterpret_cast<const sockaddr_in*>(&ss);
  ::inet_ntop(AF_INET, &in4->sin_addr, host, sizeof host);
  return fmt::format("{}:{}", host, ntohs(in4->sin_port));
}

Result<int> listen_tcp(const ListenerSpec& spec) {
  auto a = parse_listen(spec);
  if (!a) return tl::unexpected(a.error());
  const int fd = ::socket(a->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_error(Errc::kSystem, fmt::format("socket: {}", std::strerror(errno)));
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&a->addr), a->len) != 0 || ::listen(fd, 64) != 0) {
    const int e = errno;
    ::close(fd);
    return make_error(Errc::kSystem, fmt::format("cannot listen on {}: {}", spec.listen, std::strerror(e)));
  }
  return fd;
}

std::string listeners_path(const std::string& state_dir) { return state_dir + "/listeners"; }

Result<std::map<std::string, ListenerSpec>> load_listeners(const std::string& state_dir) {
  const std::string path = listeners_path(state_dir);
  std::map<std::string, ListenerSpec> out;
  std::ifstream f(path);
  if (!f) return out;  // none configured
  std::stringstream text;
  text << f.rdbuf();
  const auto j = nlohmann::json::parse(text.str(), nullptr, false);
  if (!j.is_object()) return make_error(Errc::kInvalidArgument, fmt::format("{}: not a JSON object", path));
  for (const auto& [kind, v] : j.items()) {
    if (!v.is_object() || !v.contains("listen") || !v["listen"].is_string() ||
        (v.contains("allow_remote") && !v["allow_remote"].is_boolean()))
      return make_error(Errc::kInvalidArgument,
                        fmt::format("{}: listener '{}' needs {{\"listen\": \"HOST:PORT\", \"allow_remote\": false}}", path, kind));
    out[kind] = ListenerSpec{v["listen"].get<std::string>(), v.value("allow_remote", false)};
  }
  return out;
}

Status save_listeners(const std::string& state_dir, const std::map<std::string, ListenerSpec>& all, unsigned mode) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [kind, spec] : all) j[kind] = {{"listen", spec.listen}, {"allow_remote", spec.allow_remote}};
  return write_file_whole(listeners_path(state_dir), j.dump(2) + "\n", mode, true);
}

Status write_file_whole(const std::string& path, const std::string& text, unsigned mode, bool sync) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return make_error(Errc::kSystem, fmt::format("cannot write {}: {}", tmp, std::strerror(errno)));
  ::fchmod(fd, mode);
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) && (!sync || ::fsync(fd) == 0);
  const int e = errno;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return make_error(Errc::kSystem, fmt::format("cannot write {}: {}", path, std::strerror(ok ? errno : e)));
  }
  return {};
}

// ---- busd's side ----

Result<std::string> Daemon::open_listener(const std::string& kind, const ListenerSpec& spec) {
  // One branch a kind (another listener, e.g. a Kafka one, adds its own).
  Result<std::unique_ptr<TcpService>> service = make_error(
      Errc::kInvalidArgument, fmt::format("unknown listener kind '{}' (busd knows: metrics, kafka)", kind));
  if (kind == "metrics") {
    auto m = MetricsServer::open(spec, epoll_fd_, [this] { return metrics_text(); });
    if (m) service = std::unique_ptr<TcpService>(std::move(*m));
    else service = tl::unexpected(m.error());
  } else if (kind == "kafka") {
    auto logger = [this](const std::string& m) { log(m); };
    auto handlers = std::make_unique<kafka::Handlers>(bus_, paths_.state_dir, static_cast<kafka::GroupCoordinator&>(*this),
                                                      logger, opts_.kafka_partitions);
    auto k = kafka::Gateway::open(spec, epoll_fd_, std::move(handlers), logger, durable_bell_.get());
    if (k) service = std::unique_ptr<TcpService>(std::move(*k));
    else service = tl::unexpected(k.error());
  }
  if (!service) return tl::unexpected(service.error());
  const std::string address = (*service)->address();
  services_[kind] = std::move(*service);
  listener_specs_[kind] = spec;
  log(fmt::format("{}: listening on {}{}", kind, address, kind == "metrics" ? " (GET /metrics)" : " (Kafka protocol)"));
  return address;
}

Status Daemon::start_listeners() {
  // The listeners file's: one that cannot start now (its port taken) is said and skipped,
  // busd's groups matter more. The command line's must start.
  auto saved = load_listeners(paths_.state_dir);
  if (!saved) log(fmt::format("listeners not started: {}", saved.error().message));
  else
    for (const auto& [kind, spec] : *saved)
      if (auto ok = open_listener(kind, spec); !ok) log(fmt::format("{} listener not started: {}", kind, ok.error().message));
  for (const auto& [kind, listen] : {std::pair{"metrics", opts_.metrics_listen}, std::pair{"kafka", opts_.kafka_listen}}) {
    if (!listen) continue;
    services_.erase(kind);
    auto ok = open_listener(kind, ListenerSpec{*listen, opts_.allow_remote});
    if (!ok) return tl::unexpected(ok.error());
  }
  return {};
}

TcpService* Daemon::service_for(int fd) {
  for (auto& [kind, s] : services_)
    if (s->owns(fd)) return s.get();
  return nullptr;
}

json Daemon::listeners_json() const {
  json out = json::object();
  for (const auto& [kind, s] : services_) {
    const ListenerSpec& spec = listener_specs_.at(kind);
    out[kind] = {{"address", s->address()}, {"listen", spec.listen}, {"allow_remote", spec.allow_remote},
                 {"connections", s->connections()}, {"long_poll_wakeups", s->wakeups()},
                 {"long_poll_answered_by_produce", s->answered_by_produce()},
                 {"acks_all_wakeups", s->durable_wakeups()}, {"long_poll_looks", s->parked_looks()}};
  }
  return out;
}

void Daemon::op_listener_start(Conn& c, const json& req) {
  const std::string kind = req.at("kind").get<std::string>();
  ListenerSpec spec{req.at("listen").get<std::string>(), req.value("allow_remote", false)};
  if (auto a = parse_listen(spec); !a) return reply_error(c, req, a.error().code, a.error().message);
  std::optional<ListenerSpec> before;
  if (auto it = listener_specs_.find(kind); it != listener_specs_.end() && services_.count(kind)) before = it->second;
  services_.erase(kind);  // its port may be the one asked for
  auto address = open_listener(kind, spec);
  if (!address) {
    if (before) (void)open_listener(kind, *before);
    return reply_error(c, req, address.error().code, address.error().message);
  }
  // Persisted with the port it got: a restarted busd listens where scrapers look.
  auto saved = load_listeners(paths_.state_dir);
  std::map<std::string, ListenerSpec> all = saved ? *saved : std::map<std::string, ListenerSpec>{};
  all[kind] = ListenerSpec{*address, spec.allow_remote};
  if (auto ok = save_listeners(paths_.state_dir, all, gid_ ? 0660u : 0600u); !ok)
    return reply_error(c, req, ok.error().code, fmt::format("listening on {}, but not kept for restarts: {}", *address, ok.error().message));
  reply(c, req, json{{"ok", true}, {"kind", kind}, {"address", *address}});
}

void Daemon::op_listener_stop(Conn& c, const json& req) {
  const std::string kind = req.at("kind").get<std::string>();
  const bool was_running = services_.erase(kind) > 0;
  listener_specs_.erase(kind);
  auto saved = load_listeners(paths_.state_dir);
  std::map<std::string, ListenerSpec> all = saved ? *saved : std::map<std::string, ListenerSpec>{};
  if (all.erase(kind))
    if (auto ok = save_listeners(paths_.state_dir, all, gid_ ? 0660u : 0600u); !ok)
      return reply_error(c, req, ok.error().code, ok.error().message);
  if (was_running) log(fmt::format("{}: stopped listening", kind));
  reply(c, req, json{{"ok", true}, {"kind", kind}, {"was_running", was_running}});
}

SendResult send_pending(int fd, std::string& out) {
  while (!out.empty()) {
    const ssize_t n = ::send(fd, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      out.erase(0, static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return SendResult::kWouldBlock;
    return SendResult::kClosed;
  }
  return SendResult::kDrained;
}

}  // namespace shmbus::daemon
