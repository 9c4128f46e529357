// busctl doctor's checks: finds (and with --fix mends) stale or broken segments of the buses on
// this machine (run_doctor, doctor.h). The command itself is in doctor.cpp.
#include "tools/busctl/doctor.h"


#include <dirent.h>
#include <sys/file.h>

#include <optional>
#include <thread>

#include <map>
#include <set>

#include <fmt/format.h>

#include "bus/busd_layout.h"
#include "bus/names.h"
#include "bus/registry_layout.h"
#include "shm/process.h"
#include "shm/ring.h"
#include "shm/segment.h"
#include "shmbus/bus.h"

namespace shmbus {
namespace {

using shm::Segment;

std::vector<std::string> shm_files() {
  std::vector<std::string> out;
  if (DIR* d = ::opendir(shm::kShmDir)) {
    while (dirent* e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (n.rfind("shmbus.", 0) == 0) out.push_back(n);
    }
    ::closedir(d);
  }
  return out;
}

// "shmbus.<bus>~rest" -> bus, rest
std::pair<std::string, std::string> split_name(const std::string& file) {
  const auto tilde = file.find('~');
  if (tilde == std::string::npos) return {file.substr(7), ""};
  return {file.substr(7, tilde - 7), file.substr(tilde + 1)};
}

bool all_of(std::string_view s, bool (*pred)(char)) {
  if (s.empty()) return false;
  for (char c : s)
    if (!pred(c)) return false;
  return true;
}

// "<registry|busd|partition>.tmp.<pid>.<hex>" -> pid; -1 for anything else.
int temporary_segment_pid(std::string_view last) {
  const auto at = last.find(".tmp.");
  if (at == std::string_view::npos) return -1;
  const std::string_view what = last.substr(0, at), rest = last.substr(at + 5);
  const auto dot = rest.find('.');
  if (dot == std::string_view::npos) return -1;
  const std::string_view pid = rest.substr(0, dot), hex = rest.substr(dot + 1);
  auto digit = +[](char c) { return c >= '0' && c <= '9'; };
  auto hexdigit = +[](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); };
  if (!(what == "registry" || what == "busd" || all_of(what, digit)) || !all_of(pid, digit) || pid.size() > 9 ||
      !all_of(hex, hexdigit))
    return -1;
  return std::atoi(std::string(pid).c_str());
}

}  // namespace

namespace {

bool remove_file(const std::string& f) { return static_cast<bool>(Segment::remove(f)); }

// One run of the doctor: what it found so far, and whether it mends.
struct Doctor {
  bool fix;
  std::vector<Finding> out;
  std::optional<Segment> busd_seg;       // of the bus being checked, for the group name table
  const GroupNameSlot* names = nullptr;

  void add(std::string sev, const std::string& bus, const std::string& file, std::string problem, std::string what_fix,
           bool (*do_fix)(const std::string&) = nullptr) {
    Finding fd{std::move(sev), bus, file.empty() ? "" : Segment::path_of(file), std::move(problem), std::move(what_fix)};
    if (fix && do_fix && do_fix(file)) fd.fixed = true;
    out.push_back(std::move(fd));
  }
  void check_bus(const std::string& bus, const std::vector<std::string>& files);
  void check_topics(const std::string& bus, const std::string& reg, const Segment& seg, std::set<std::string>& owned, bool& half_done);
  void check_partition(const std::string& bus, const std::string& topic, std::uint32_t p, const std::string& part);
  void check_room();
};

void Doctor::check_bus(const std::string& bus, const std::vector<std::string>& files) {
  // 1. Temporary segments: a creator that died between create and link.
  std::set<std::string> live_files;
  for (const auto& f : files) {
    // Names may contain ".tmp." themselves: only the part after the last '~' can be a
    // temporary suffix, "<registry|busd|partition>.tmp.<pid>.<hex>" (shm/segment.cpp).
    const int pid = temporary_segment_pid(f.substr(f.rfind('~') + 1));
    if (pid < 0) {
      live_files.insert(f);
      continue;
    }
    if (shm::process_alive(pid, 0)) continue;  // still being created
    add("problem", bus, f, fmt::format("half-created segment of pid {}, which is gone", pid), "remove it", remove_file);
  }
  // 2. The registry.
  const std::string reg = registry_segment_name(bus);
  auto seg = Segment::open(reg, shm::SegmentKind::kRegistry, kRegistryLayoutMajor, false);
  if (seg && seg->size() != kRegistrySize) {
    add("problem", bus, reg, fmt::format("registry is {} bytes, expected {}", seg->size(), kRegistrySize),
        "nothing: remove the bus by hand (busctl bus delete) once no process uses it");
    return;
  }
  // Hold the registry lock while we look: no topic is being created or deleted meanwhile,
  // so a slot left "creating" is a dead process's and no new partition file is missed.
  std::optional<int> locked;
  if (seg) {
    for (int i = 0; i < 5000 && !locked; ++i) {
      if (::flock(seg->fd(), LOCK_EX | LOCK_NB) == 0) locked = seg->fd();
      else std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    if (!locked) {
      add("warning", bus, reg, "the registry stayed locked for 5 s (a topic being created?): bus not checked", "run doctor again");
      return;
    }
  }
  std::set<std::string> owned;  // partition files that READY topics own
  owned.insert(reg);
  owned.insert(bus_segment_prefix(bus) + "busd");
  if (!seg) {
    if (seg.error().code == Errc::kNotFound) {
      for (const auto& f : live_files)
        add("problem", bus, f, "segment of a bus whose registry is gone", "remove it", remove_file);
    } else {
      add("problem", bus, reg, seg.error().message,
          "nothing: remove the bus by hand (busctl bus delete) once no process uses it");
    }
    return;
  }
  bool half_done = false;
  names = nullptr;
  busd_seg.reset();
  if (auto bs = Segment::open(bus_segment_prefix(bus) + "busd", shm::SegmentKind::kBusd, kBusdLayoutMajor, false); bs) {
    busd_seg = std::move(*bs);
    if (busd_seg->size() >= kBusdSegmentSize) names = busd_seg->at<const GroupNameSlot>(kGroupNamesOffset);
  }
  check_topics(bus, reg, *seg, owned, half_done);
  // 3. Files no topic owns (a crash in the middle of a delete, or a stale bus's leftovers).
  for (const auto& f : live_files)
    if (!owned.count(f)) add("problem", bus, f, "partition segment that no topic owns", "remove it", remove_file);
  if (locked) ::flock(*locked, LOCK_UN);
  if (half_done && fix) {
    BusOptions o;
    o.name = bus;
    o.create = false;
    if (auto b = Bus::attach(o)) {
      if (auto r = (*b)->repair(); r) {
        for (auto& f : out)
          if (f.bus == bus && f.problem.find("was left half-") != std::string::npos) f.fixed = true;
      } else {
        out.push_back({"problem", bus, "", fmt::format("repair failed: {}", r.error().message), "", false});
      }
    }
  }
  // 4. busd's segment without a busd: harmless, the next busd replaces it.
  if (live_files.count(bus_segment_prefix(bus) + "busd")) {
    auto bs = Segment::open(bus_segment_prefix(bus) + "busd", shm::SegmentKind::kBusd, kBusdLayoutMajor, false);
    if (bs && !shm::process_alive(bs->at<const BusdControl>(kBusdControlOffset)->pid, 0))
      add("warning", bus, bus_segment_prefix(bus) + "busd", "busd is not running (its segment is left from the last one)",
          "nothing needed: the next busd replaces it");
  }
  out.push_back({"ok", bus, Segment::path_of(reg), fmt::format("bus '{}' checked: {} segments", bus, live_files.size()), "", false});
}

void Doctor::check_topics(const std::string& bus, const std::string& reg, const Segment& seg, std::set<std::string>& owned, bool& half_done) {
  const auto* slots = seg.at<const TopicSlot>(kTopicSlotsOffset);
  for (std::uint32_t i = 0; i < kMaxTopics; ++i) {
    const TopicSlot& s = slots[i];
    const auto state = static_cast<TopicState>(s.state);
    if (state == TopicState::kFree) continue;
    const std::string topic(s.name, std::min<std::size_t>(s.name_len, sizeof s.name));
    if (s.state > static_cast<std::uint32_t>(TopicState::kDeleting) || !validate_name("topic", topic) || s.partitions == 0 ||
        s.partitions > 1024) {
      add("problem", bus, reg, fmt::format("topic slot {} is corrupt (state {}, {} partitions)", i, s.state, s.partitions),
          "nothing: the bus's registry is damaged; recreate the bus");
      continue;
    }
    if (state != TopicState::kReady) {
      if (!shm::process_alive(s.creator_pid, 0)) {
        half_done = true;
        add("problem", bus, "", fmt::format("topic '{}' was left half-{} by pid {}", topic,
                                            state == TopicState::kCreating ? "created" : "deleted", s.creator_pid),
            "finish it under the registry lock");
      }
      continue;
    }
    for (std::uint32_t p = 0; p < s.partitions; ++p) {
      const std::string part = partition_segment_name(bus, topic, p);
      owned.insert(part);
      check_partition(bus, topic, p, part);
    }
  }
}

void Doctor::check_partition(const std::string& bus, const std::string& topic, std::uint32_t p, const std::string& part) {
  auto ps = Segment::open(part, shm::SegmentKind::kPartition, shm::kPartitionLayoutMajor, fix);
  if (!ps) {
    add("problem", bus, part, fmt::format("topic '{}' partition {}: {}", topic, p, ps.error().message),
        "nothing: delete and re-create the topic");
    return;
  }
  if (auto ok = shm::ring_validate(*ps); !ok) {
    add("problem", bus, part, ok.error().message, "nothing: delete and re-create the topic");
    return;
  }
  shm::Ring ring(ps->data());
  std::uint32_t dead_writers = 0, dead_gates = 0;
  // Liveness is a lock test (shm/ofd_lock.h): a slot or gate whose lock is free has no
  // live owner, whatever pid it names.
  auto lock = shm::SegmentLock::open(*ps);
  if (!lock) {
    add("warning", bus, part, fmt::format("topic '{}' partition {}: {}", topic, p, lock.error().message), "nothing");
    return;
  }
  for (std::uint32_t w = 0; w < shm::kWriterSlots; ++w) {
    const auto* ws = ring.writer_slot(w);
    if (ws->claim_position.load(std::memory_order_relaxed) != shm::kNoClaim && !lock->held_by_other(shm::writer_lock_byte(w)))
      ++dead_writers;
  }
  for (std::uint32_t g = 0; g < shm::kGateSlots; ++g) {
    auto* gs = ring.gate(g);
    if (gs->kind.load(std::memory_order_acquire) != static_cast<std::uint32_t>(shm::GateKind::kProcess)) continue;
    if (lock->held_by_other(shm::gate_lock_byte(g))) continue;
    ++dead_gates;
    if (fix && lock->try_lock(shm::gate_lock_byte(g))) {
      std::uint32_t expect = static_cast<std::uint32_t>(shm::GateKind::kProcess);
      gs->kind.compare_exchange_strong(expect, static_cast<std::uint32_t>(shm::GateKind::kFree));
      lock->unlock(shm::gate_lock_byte(g));
    }
  }
  if (dead_writers)
    add("warning", bus, part, fmt::format("topic '{}' partition {}: {} writer slots of dead producers", topic, p, dead_writers),
        "nothing needed: the next reader or producer that meets their claims aborts them");
  if (dead_gates) {
    Finding fd{"problem", bus, Segment::path_of(part),
               fmt::format("topic '{}' partition {}: {} gates of dead consumers hold producers back", topic, p, dead_gates),
               "release them", fix};
    out.push_back(fd);
  }
  for (auto& f : group_gate_findings(bus, topic, p, Segment::path_of(part), ring, names)) out.push_back(std::move(f));
}

void Doctor::check_room() {
  // 5. Room in /dev/shm.
  const std::uint64_t free_bytes = Segment::shm_free_bytes();
  if (free_bytes < (64ull << 20))
    out.push_back({"warning", "", shm::kShmDir,
                   fmt::format("only {} bytes free in {}: new topics may not fit", free_bytes, shm::kShmDir),
                   "enlarge /dev/shm (docker --shm-size, mount -o remount,size=...)", false});
  else
    out.push_back({"ok", "", shm::kShmDir, fmt::format("{} MiB free in {}", free_bytes >> 20, shm::kShmDir), "", false});
}

}  // namespace

std::vector<Finding> run_doctor(const std::optional<std::string>& only_bus, bool fix) {
  std::map<std::string, std::vector<std::string>> by_bus;
  for (const auto& f : shm_files()) {
    if (f.find('~') == std::string::npos) continue;  // not one of ours: ours always have a '~'
    auto [bus, rest] = split_name(f);
    if (only_bus && bus != *only_bus) continue;
    by_bus[bus].push_back(f);
  }
  Doctor d{fix, {}, std::nullopt, nullptr};
  for (auto& [bus, files] : by_bus) d.check_bus(bus, files);
  d.check_room();
  return d.out;
}

}  // namespace shmbus
