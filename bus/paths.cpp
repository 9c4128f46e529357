#include "bus/paths.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <fmt/format.h>
#include <xxhash.h>

namespace shmbus {
namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : std::string();
}

}  // namespace

BusPaths bus_paths(const std::string& bus) {
  BusPaths p;
  std::string run_base, state_base;
  if (auto dir = env("SHMBUS_DIR"); !dir.empty()) {
    run_base = state_base = dir;
  } else if (::geteuid() == 0) {
    run_base = "/run/shmbus";
    state_base = "/var/lib/shmbus";
  } else {
    run_base = env("XDG_RUNTIME_DIR");
    run_base = run_base.empty() ? fmt::format("/tmp/shmbus-{}", ::geteuid()) : run_base + "/shmbus";
    state_base = env("XDG_STATE_HOME");
    if (state_base.empty()) state_base = env("HOME") + "/.local/state";
    state_base += "/shmbus";
  }
  p.runtime_dir = run_base + "/" + bus;
  p.state_dir = state_base + "/" + bus;
  p.socket = p.runtime_dir + "/busd.sock";
  if (p.socket.size() >= sizeof(sockaddr_un{}.sun_path)) {
    const auto h = XXH64(bus.data(), bus.size(), 0);
    p.runtime_dir = fmt::format("{}/{}#{:016x}", run_base, bus.substr(0, 8), h);
    p.socket = p.runtime_dir + "/busd.sock";
  }
  p.lock = p.runtime_dir + "/busd.lock";
  return p;
}

std::string executable_beside_self(std::initializer_list<std::string_view> relative) {
  char self[4096] = {};
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return {};
  std::string dir(self, static_cast<std::size_t>(n));
  dir = dir.substr(0, dir.rfind('/'));
  for (std::string_view rel : relative) {
    const std::string cand = dir + "/" + std::string(rel);
    if (::access(cand.c_str(), X_OK) == 0) return cand;
  }
  return {};
}

Status make_dirs(const std::string& path, unsigned mode) {
  std::string cur;
  std::size_t at = 0;
  while (at != std::string::npos) {
    at = path.find('/', at + 1);
    cur = path.substr(0, at);
    if (cur.empty()) continue;
    if (::mkdir(cur.c_str(), mode) != 0 && errno != EEXIST)
      return make_error(errno == EACCES ? Errc::kPermission : Errc::kSystem,
                        fmt::format("cannot create directory {}: {}", cur, std::strerror(errno)));
  }
  return {};
}

}  // namespace shmbus
