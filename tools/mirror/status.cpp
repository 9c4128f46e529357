// The mirrors' status files (tools/mirror/status.h).
#include "tools/mirror/status.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "bus/paths.h"

namespace shmbus::mirror {

using json = nlohmann::json;

json to_json(const MirrorStatus& s) {
  return json{{"name", s.name},       {"direction", s.direction},       {"bus_topic", s.bus_topic},
              {"kafka_topic", s.kafka_topic}, {"state", s.state},       {"pid", s.pid},
              {"updated_ms", s.updated_ms},   {"interval_ms", s.interval_ms}, {"records", s.records},
              {"records_per_s", s.records_per_s}, {"lag_records", s.lag_records}, {"lag_seconds", s.lag_seconds},
              {"skipped", s.skipped},     {"lost", s.lost},                 {"last_error", s.last_error},
              {"last_error_ms", s.last_error_ms}};
}

MirrorStatus status_from_json(const json& j) {
  MirrorStatus s;
  s.name = j.value("name", "");
  s.direction = j.value("direction", "");
  s.bus_topic = j.value("bus_topic", "");
  s.kafka_topic = j.value("kafka_topic", "");
  s.state = j.value("state", "");
  s.pid = j.value("pid", std::int64_t{0});
  s.updated_ms = j.value("updated_ms", std::int64_t{0});
  s.interval_ms = j.value("interval_ms", std::int64_t{1000});
  s.records = j.value("records", std::uint64_t{0});
  s.records_per_s = j.value("records_per_s", 0.0);
  s.lag_records = j.value("lag_records", std::int64_t{-1});
  s.lag_seconds = j.value("lag_seconds", 0.0);
  s.skipped = j.value("skipped", std::uint64_t{0});
  s.lost = j.value("lost", std::uint64_t{0});
  s.last_error = j.value("last_error", "");
  s.last_error_ms = j.value("last_error_ms", std::int64_t{0});
  return s;
}

std::string status_dir(const std::string& bus) { return bus_paths(bus).state_dir + "/mirrors"; }

Status write_status(const std::string& bus, const MirrorStatus& s) {
  const BusPaths p = bus_paths(bus);
  if (auto st = secure_bases(p); !st) return st;
  const std::string dir = status_dir(bus);
  if (auto st = make_dirs(dir, 0700); !st) return st;
  const std::string path = dir + "/" + s.name + ".json";
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return make_error(Errc::kSystem, fmt::format("cannot write {}: {}", tmp, std::strerror(errno)));
  const std::string text = to_json(s).dump() + "\n";
  const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return make_error(Errc::kSystem, fmt::format("cannot write {}: {}", path, std::strerror(errno)));
  }
  return {};
}

Result<std::vector<MirrorStatus>> read_statuses(const std::string& bus) {
  std::vector<MirrorStatus> out;
  const std::string dir = status_dir(bus);
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return out;
  const std::int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                  std::chrono::system_clock::now().time_since_epoch()).count();
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (e.path().extension() != ".json" || !e.is_regular_file()) continue;
    std::ifstream f(e.path());
    std::stringstream text;
    text << f.rdbuf();
    json j = json::parse(text.str(), nullptr, false);
    if (!j.is_object()) {
      MirrorStatus bad;
      bad.name = e.path().stem().string();
      bad.state = "unreadable";
      bad.last_error = "status file " + e.path().string() + " is not a JSON object";
      out.push_back(bad);
      continue;
    }
    MirrorStatus s = status_from_json(j);
    const std::int64_t stale_after = std::max<std::int64_t>(3 * s.interval_ms, 5000);
    if (s.state != "stopped" && now_ms - s.updated_ms > stale_after) s.state = "stale";
    out.push_back(std::move(s));
  }
  std::sort(out.begin(), out.end(), [](const MirrorStatus& a, const MirrorStatus& b) { return a.name < b.name; });
  return out;
}

}  // namespace shmbus::mirror
