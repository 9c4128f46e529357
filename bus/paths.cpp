#include "bus/paths.h"

#include <grp.h>
#include <pwd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <fmt/format.h>
#include <xxhash.h>

#include "bus/names.h"
#include "shm/segment.h"

namespace shmbus {
namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : std::string();
}

// A directory only we should use inside a world-writable one (sticky /tmp, /var/tmp).
std::string per_uid(std::string_view parent) { return fmt::format("{}/shmbus-{}", parent, ::geteuid()); }

// A service account's $HOME is often unset, /nonexistent, or / (root's): only a directory
// of our own is a home to keep state in.
bool own_directory(const std::string& path) {
  struct stat st {};
  return !path.empty() && ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode) && st.st_uid == ::geteuid();
}

std::string group_name(unsigned gid) {
  struct group gr{}, *res = nullptr;
  std::vector<char> buf(16384);
  if (::getgrgid_r(gid, &gr, buf.data(), buf.size(), &res) == 0 && res) return fmt::format("'{}' ({})", gr.gr_name, gid);
  return std::to_string(gid);
}

}  // namespace

std::optional<unsigned> bus_group(const std::string& bus) {
  struct stat st {};
  if (::stat(shm::Segment::path_of(registry_segment_name(bus)).c_str(), &st) != 0 || (st.st_mode & 0060) == 0)
    return std::nullopt;
  return static_cast<unsigned>(st.st_gid);
}

void share_with_group(int fd, unsigned gid) {
  struct stat st {};
  if (::fstat(fd, &st) != 0 || (st.st_uid != ::geteuid() && ::geteuid() != 0)) return;
  (void)!::fchown(fd, static_cast<uid_t>(-1), gid);
  (void)::fchmod(fd, 0660);
}

bool uid_in_group(unsigned uid, unsigned gid) {
  std::vector<char> buf(16384);
  struct passwd pw{}, *pres = nullptr;
  if (::getpwuid_r(uid, &pw, buf.data(), buf.size(), &pres) != 0 || !pres) return false;
  if (pw.pw_gid == gid) return true;
  const std::string user = pw.pw_name;
  struct group gr{}, *gres = nullptr;
  if (::getgrgid_r(gid, &gr, buf.data(), buf.size(), &gres) != 0 || !gres) return false;
  for (char** m = gr.gr_mem; m && *m; ++m)
    if (user == *m) return true;
  return false;
}

BusPaths bus_paths(const std::string& bus) {
  BusPaths p;
  p.gid = bus_group(bus);
  std::string run_base, state_base;
  if (auto dir = env("SHMBUS_DIR"); !dir.empty()) {
    run_base = state_base = dir;
  } else if (p.gid) {
    // One busd per shared bus, whoever starts it: the same places for every member.
    run_base = fmt::format("/tmp/shmbus-g{}", *p.gid);
    state_base = fmt::format("/var/tmp/shmbus-g{}", *p.gid);
    p.shared_bases = {run_base, state_base};
  } else if (::geteuid() == 0) {
    run_base = "/run/shmbus";
    state_base = "/var/lib/shmbus";
  } else {
    run_base = env("XDG_RUNTIME_DIR");
    if (run_base.empty()) {
      run_base = per_uid("/tmp");
      p.private_bases.push_back(run_base);
    } else {
      run_base += "/shmbus";
    }
    // State outlives a reboot (offsets, spilled logs): on disk, never in a tmpfs.
    state_base = env("XDG_STATE_HOME");
    if (const std::string home = env("HOME"); !state_base.empty()) {
      state_base += "/shmbus";
    } else if (own_directory(home)) {
      state_base = home + "/.local/state/shmbus";
    } else {
      state_base = per_uid("/var/tmp");
      p.private_bases.push_back(state_base);
    }
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

Status private_dir(const std::string& dir, bool create) {
  if (create && ::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
    return make_error(errno == EACCES ? Errc::kPermission : Errc::kSystem,
                      fmt::format("cannot create directory {}: {}", dir, std::strerror(errno)));
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0)
    return make_error(Errc::kSystem, fmt::format("cannot stat {}: {}", dir, std::strerror(errno)));
  const auto refuse = [&dir](std::string_view why) {
    return make_error(Errc::kPermission, fmt::format("refusing to use {}: {}; remove it, or set SHMBUS_DIR or "
                                                     "XDG_RUNTIME_DIR to a directory of your own (docs/naming.md)",
                                                     dir, why));
  };
  if (S_ISLNK(st.st_mode)) return refuse("it is a symbolic link");
  if (!S_ISDIR(st.st_mode)) return refuse("it is not a directory");
  if (st.st_uid != ::geteuid())
    return refuse(fmt::format("it belongs to uid {}, not to us (uid {})", st.st_uid, ::geteuid()));
  if ((st.st_mode & 077) != 0) return refuse(fmt::format("its mode is {:04o}, not 0700", st.st_mode & 07777));
  return {};
}

Status shared_dir(const std::string& dir, unsigned gid, bool create) {
  if (create && ::mkdir(dir.c_str(), 0700) == 0) {
    // Ours and closed until it is the group's.
    if (::chown(dir.c_str(), static_cast<uid_t>(-1), gid) != 0 || ::chmod(dir.c_str(), 02770) != 0)
      return make_error(Errc::kPermission, fmt::format("cannot give {} to group {}: {}", dir, group_name(gid), std::strerror(errno)));
  } else if (create && errno != EEXIST) {
    return make_error(errno == EACCES ? Errc::kPermission : Errc::kSystem,
                      fmt::format("cannot create directory {}: {}", dir, std::strerror(errno)));
  }
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0)
    return make_error(Errc::kSystem, fmt::format("cannot stat {}: {}", dir, std::strerror(errno)));
  const auto refuse = [&](std::string_view why) {
    return make_error(Errc::kPermission,
                      fmt::format("refusing to use {} for a bus shared with group {}: {}; remove it, or have every "
                                  "member set SHMBUS_DIR to one directory of the group (docs/naming.md)",
                                  dir, group_name(gid), why));
  };
  if (S_ISLNK(st.st_mode)) return refuse("it is a symbolic link");
  if (!S_ISDIR(st.st_mode)) return refuse("it is not a directory");
  if (st.st_gid != gid) return refuse(fmt::format("its group is {}", group_name(st.st_gid)));
  if ((st.st_mode & 0777) != 0770) return refuse(fmt::format("its mode is {:04o}, not 2770", st.st_mode & 07777));
  if (st.st_uid != 0 && st.st_uid != ::geteuid() && !uid_in_group(st.st_uid, gid))
    return refuse(fmt::format("it belongs to uid {}, neither root nor a member of the group", st.st_uid));
  return {};
}

Status secure_bases(const BusPaths& p) {
  for (const auto& dir : p.private_bases)
    if (auto ok = private_dir(dir); !ok) return ok;
  for (const auto& dir : p.shared_bases)
    if (auto ok = shared_dir(dir, *p.gid); !ok) return ok;
  return {};
}

Status make_dirs(const std::string& path, unsigned mode, std::optional<unsigned> gid) {
  std::string cur;
  std::size_t at = 0;
  while (at != std::string::npos) {
    at = path.find('/', at + 1);
    cur = path.substr(0, at);
    if (cur.empty()) continue;
    if (::mkdir(cur.c_str(), mode) == 0) {
      if (gid) (void)!::chown(cur.c_str(), static_cast<uid_t>(-1), *gid);
      // The umask may have taken the group's bits; keep a setgid it inherited.
      struct stat st {};
      if ((mode & 0070) && ::stat(cur.c_str(), &st) == 0)
        (void)::chmod(cur.c_str(), (mode & 0777) | ((gid || (st.st_mode & S_ISGID)) ? S_ISGID : 0));
    } else if (errno != EEXIST) {
      return make_error(errno == EACCES ? Errc::kPermission : Errc::kSystem,
                        fmt::format("cannot create directory {}: {}", cur, std::strerror(errno)));
    }
  }
  return {};
}

}  // namespace shmbus
