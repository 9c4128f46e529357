#include "bus/group_client.h"

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join

#include "bus/names.h"
#include "bus/paths.h"

extern char** environ;

namespace shmbus {

using proto::json;

std::string busd_segment_name(const std::string& bus) { return bus_segment_prefix(bus) + "busd"; }

namespace {

int try_connect(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return fd;
  const int err = errno;
  ::close(fd);
  errno = err;
  return -1;
}

Status spawn_busd(const std::string& bus) {
  const BusdSearch found = find_busd();
  if (found.path.empty())
    return make_error(Errc::kNotFound, fmt::format("busd is not running for bus '{}' and no busd binary was found; "
                                                   "looked at: {} (set SHMBUS_BUSD, or start `busd --bus {}`)",
                                                   bus, fmt::join(found.tried, ", "), bus));
  const std::string& bin = found.path;
  const BusPaths paths = bus_paths(bus);
  if (auto ok = secure_bases(paths); !ok) return ok;
  if (auto ok = make_dirs(paths.runtime_dir, paths.gid ? 0770 : 0700, paths.gid); !ok) return ok;
  // busd's log; a shared bus's is the group's, for the busd another member may start later.
  const std::string log = paths.runtime_dir + "/busd.log";
  const int log_fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, paths.gid ? 0660 : 0600);
  if (log_fd < 0) return make_error(Errc::kSystem, fmt::format("cannot open {}: {}", log, std::strerror(errno)));
  if (paths.gid) share_with_group(log_fd, *paths.gid);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, log_fd, 1);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawn_file_actions_addclosefrom_np(&fa, 3);  // none of our descriptors outlive us in busd
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID);  // its own session: outlives us
  // --existing: a consumer of a bus that was deleted meanwhile must not bring it back.
  std::vector<std::string> args = {bin, "--bus", bus, "--existing"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, bin.c_str(), &fa, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  ::close(log_fd);
  if (rc != 0) return make_error(Errc::kSystem, fmt::format("cannot start {}: {}", bin, std::strerror(rc)));
  // Reap it if it exits at once (a second busd); a long-lived one is reparented when we go.
  std::thread([pid] {
    int st;
    ::waitpid(pid, &st, 0);
  }).detach();
  return {};
}

}  // namespace

Result<std::unique_ptr<BusdConnection>> BusdConnection::connect(const std::string& bus, std::chrono::milliseconds timeout,
                                                                bool autostart) {
  const BusPaths paths = bus_paths(bus);
  const char* no_auto = std::getenv("SHMBUS_NO_AUTOSTART");
  autostart = autostart && !(no_auto && std::string(no_auto) == "1");
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  bool spawned = false;
  for (;;) {
    const int fd = try_connect(paths.socket);
    if (fd >= 0) {
      auto c = std::unique_ptr<BusdConnection>(new BusdConnection());
      c->fd_ = fd;
      auto hello = c->request(json{{"v", proto::kProtocolVersion}, {"op", "hello"}}, timeout);
      if (!hello) return tl::unexpected(hello.error());
      return c;
    }
    const int err = errno;
    if (err == EACCES || err == EPERM)
      return make_error(Errc::kPermission, fmt::format("busd socket {}: {}", paths.socket, std::strerror(err)));
    if (!autostart)
      return make_error(Errc::kNotFound, fmt::format("busd is not running for bus '{}' ({}: {}; autostart is off)", bus,
                                                     paths.socket, std::strerror(err)));
    if (!spawned) {
      if (auto ok = spawn_busd(bus); !ok) return tl::unexpected(ok.error());
      spawned = true;
    }
    if (std::chrono::steady_clock::now() > deadline)
      return make_error(Errc::kTimedOut, fmt::format("busd for bus '{}' did not come up within {} ms (see {}/busd.log)", bus,
                                                     timeout.count(), paths.runtime_dir));
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

BusdConnection::~BusdConnection() {
  if (fd_ >= 0) ::close(fd_);
}

Status BusdConnection::send(json req) {
  if (dead_) return make_error(Errc::kSystem, "busd connection is closed");
  req["v"] = proto::kProtocolVersion;
  std::string out;
  proto::encode(req, out);
  if (auto ok = proto::write_all(fd_, out); !ok) {
    dead_ = true;
    return ok;
  }
  return {};
}

bool BusdConnection::read_some(int timeout_ms) {
  if (dead_) return false;
  pollfd p{fd_, POLLIN, 0};
  if (::poll(&p, 1, timeout_ms) <= 0) return true;
  char buf[65536];
  const ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
  if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
    dead_ = true;
    return false;
  }
  if (n > 0) in_.append(buf, static_cast<std::size_t>(n));
  for (;;) {
    auto m = proto::decode(in_);
    if (!m) {
      dead_ = true;
      return false;
    }
    if (!*m) break;
    json& j = **m;
    if (j.contains("re") && j["re"].is_number_unsigned()) {
      const auto id = j["re"].get<std::uint64_t>();  // before the move: `a = b` evaluates b first
      replies_[id] = std::move(j);
    }
    else if (j.contains("push")) pushes_.push_back(std::move(j));
    else if (j.contains("error")) pushes_.push_back(std::move(j));  // refused at accept
  }
  return true;
}

bool BusdConnection::pump() {
  while (!dead_) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, 0) <= 0) break;
    if (!read_some(0)) break;
  }
  // Replies to fire-and-forget requests are not wanted.
  std::erase_if(replies_, [&](const auto& r) { return !tracked_.count(r.first); });
  return !dead_;
}

Result<std::uint64_t> BusdConnection::send_tracked(json req) {
  const std::uint64_t id = next_id_++;
  req["id"] = id;
  if (auto ok = send(std::move(req)); !ok) return tl::unexpected(ok.error());
  tracked_.insert(id);
  return id;
}

namespace {

// A reply as request() returns it: an error reply as an Error of its code.
Result<json> reply_result(json r) {
  if (!r.contains("error")) return r;
  const std::string code = r.value("error", "");
  Errc e = Errc::kSystem;
  for (Errc c : {Errc::kInvalidArgument, Errc::kNotFound, Errc::kAlreadyExists, Errc::kPermission, Errc::kTimedOut,
                 Errc::kTooManyClients})
    if (code == errc_name(c)) e = c;
  return make_error(e, r.value("message", code));
}

}  // namespace

std::optional<Result<json>> BusdConnection::take_reply(std::uint64_t id) {
  auto it = replies_.find(id);
  if (it == replies_.end()) return std::nullopt;
  json r = std::move(it->second);
  replies_.erase(it);
  tracked_.erase(id);
  return reply_result(std::move(r));
}

Result<json> BusdConnection::request(json req, std::chrono::milliseconds timeout) {
  const std::uint64_t id = next_id_++;
  req["id"] = id;
  if (auto ok = send(req); !ok) {
    // busd may have refused us and closed at once: its reason is waiting in the socket.
    dead_ = false;
    read_some(100);
    dead_ = true;
    for (const auto& p : pushes_)
      if (p.contains("error") && !p.contains("push")) return make_error(Errc::kPermission, p.value("message", "refused by busd"));
    return tl::unexpected(ok.error());
  }
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto it = replies_.find(id);
    if (it != replies_.end()) {
      json r = std::move(it->second);
      replies_.erase(it);
      return reply_result(std::move(r));
    }
    for (auto p = pushes_.begin(); p != pushes_.end(); ++p)
      if (p->contains("error") && !p->contains("push")) {
        const std::string msg = p->value("message", "refused by busd");
        pushes_.erase(p);
        return make_error(Errc::kPermission, msg);
      }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return make_error(Errc::kTimedOut, fmt::format("busd did not answer '{}' within {} ms", req.value("op", "?"), timeout.count()));
    if (!read_some(static_cast<int>(std::min<std::int64_t>(left.count(), 100))))
      return make_error(Errc::kSystem, "busd closed the connection");
  }
}

}  // namespace shmbus
