// Where busd is (find_busd). The only file compiled with the build's paths
// (SHMBUS_BUILD_ROOT, SHMBUS_BUSD_BUILD_PATH, SHMBUS_BUSD_INSTALL_PATH from CMakeLists.txt),
// so that another build directory or prefix recompiles nothing else.
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "bus/group_client.h"

namespace shmbus {

namespace {

bool executable(const std::string& p) { return !p.empty() && ::access(p.c_str(), X_OK) == 0; }

std::string self_dir() {
  char self[4096] = {};
  const ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) return {};
  std::string dir(self, static_cast<std::size_t>(n));
  return dir.substr(0, dir.rfind('/'));
}

// True if `path` (resolved) is the directory `root` or below it.
[[maybe_unused]] bool under(const std::string& path, const char* root) {
  char buf[PATH_MAX];
  if (path.empty() || !::realpath(root, buf)) return false;
  const std::string_view r = buf;
  return path.starts_with(r) && (path.size() == r.size() || path[r.size()] == '/');
}

}  // namespace

BusdSearch find_busd() {
  BusdSearch s;
  // Returns true (and records it) if `p` is an executable file.
  auto take = [&s](std::string p) {
    if (p.empty()) return false;
    s.tried.push_back(p);
    if (!executable(p)) return false;
    s.path = std::move(p);
    return true;
  };
  if (const char* e = std::getenv("SHMBUS_BUSD"); e && *e) {
    take(e);  // an override: nothing else is tried
    if (s.path.empty()) s.tried.back() = fmt::format("$SHMBUS_BUSD={}", e);
    return s;
  }
  const std::string dir = self_dir();
#if defined(SHMBUS_BUSD_BUILD_PATH) && defined(SHMBUS_BUILD_ROOT)
  // The busd of this very build, for programs in the same build tree (our tests, or a parent
  // project's programs when shmbus is its subdirectory). An installed program never runs
  // something out of a build directory.
  if (under(dir, SHMBUS_BUILD_ROOT) && take(SHMBUS_BUSD_BUILD_PATH)) return s;
#endif
#ifdef SHMBUS_BUSD_INSTALL_PATH
  if (take(SHMBUS_BUSD_INSTALL_PATH)) return s;
#endif
  if (!dir.empty()) {
    if (take(dir + "/busd") || take(dir + "/../libexec/shmbus/busd")) return s;
  }
  const char* path = std::getenv("PATH");
  const std::string_view dirs = path ? path : "";
  for (std::size_t at = 0; at <= dirs.size();) {
    std::size_t end = dirs.find(':', at);
    if (end == std::string_view::npos) end = dirs.size();
    const std::string_view d = dirs.substr(at, end - at);
    if (!d.empty() && executable(std::string(d) + "/busd")) {
      s.path = std::string(d) + "/busd";
      return s;
    }
    at = end + 1;
  }
  s.tried.push_back(fmt::format("busd on PATH ({})", dirs));
  return s;
}

std::string busd_binary() { return find_busd().path; }

}  // namespace shmbus
