#include "shmbus/bus.h"

#include <cerrno>
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bus/disk_log.h"
#include "bus/names.h"
#include "bus/offset_lookup.h"
#include "bus/paths.h"
#include "bus/registry_layout.h"
#include "bus/topic.h"
#include "shm/futex.h"
#include "shm/process.h"
#include "shm/ring.h"
#include "shm/segment.h"

namespace shmbus {

using shm::Segment;

const char* errc_name(Errc c) noexcept {
  switch (c) {
    case Errc::kOk: return "ok";
    case Errc::kInvalidArgument: return "invalid_argument";
    case Errc::kNotFound: return "not_found";
    case Errc::kAlreadyExists: return "already_exists";
    case Errc::kRecordTooLarge: return "record_too_large";
    case Errc::kBadSegment: return "bad_segment";
    case Errc::kNoSpace: return "no_space";
    case Errc::kPermission: return "permission";
    case Errc::kTimedOut: return "timed_out";
    case Errc::kOffsetOutOfRange: return "offset_out_of_range";
    case Errc::kTopicDeleted: return "topic_deleted";
    case Errc::kTooManyClients: return "too_many_clients";
    case Errc::kSystem: return "system";
  }
  return "unknown";
}

namespace {

constexpr std::uint32_t kMaxPartitions = 1024;
constexpr std::uint64_t kMaxCapacity = std::uint64_t{1} << 32;

struct SlotCopy {
  TopicState state;
  std::string name;
  TopicConfig config;
  std::uint64_t epoch;
  std::int64_t created_ns;
};

// Whole-record bytes in the ring for a payload limit: at least a cache line, since producers
// pad a record to one by default (ProducerConfig::record_alignment), whatever its payload; a
// smaller limit made readers call such records damaged. The capacity is 4096 or more, so a
// line is within the ring's quarter.
std::uint32_t ring_max_record(std::uint32_t payload) {
  return static_cast<std::uint32_t>(std::max<std::uint64_t>(shm::align8(shm::kRecordHeaderSize + payload), shm::kCacheLine));
}

// Registry lock: flock(2) on the registry file. The kernel drops it when the holder dies.
class RegistryLock {
 public:
  static Result<RegistryLock> take(const Segment& reg) {
    for (int i = 0; i < 5000; ++i) {
      if (::flock(reg.fd(), LOCK_EX | LOCK_NB) == 0) return RegistryLock(reg.fd());
      if (errno != EWOULDBLOCK && errno != EINTR)
        return make_error(Errc::kSystem, fmt::format("flock {}: {}", Segment::path_of(reg.name()), std::strerror(errno)));
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return make_error(Errc::kTimedOut, fmt::format("the registry {} stayed locked by another process for 5 s",
                                                   Segment::path_of(reg.name())));
  }
  RegistryLock(RegistryLock&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  RegistryLock& operator=(RegistryLock&&) = delete;
  ~RegistryLock() {
    if (fd_ >= 0) ::flock(fd_, LOCK_UN);
  }

 private:
  explicit RegistryLock(int fd) : fd_(fd) {}
  int fd_;
};

Result<unsigned> group_id(const std::string& group) {
  std::vector<char> buf(16384);
  struct group g{}, *res = nullptr;
  if (::getgrnam_r(group.c_str(), &g, buf.data(), buf.size(), &res) != 0 || res == nullptr)
    return make_error(Errc::kInvalidArgument, fmt::format("no such Unix group '{}'", group));
  return static_cast<unsigned>(g.gr_gid);
}

Status validate_config(const std::string& topic, const TopicConfig& c) {
  if (c.partitions == 0 || c.partitions > kMaxPartitions)
    return make_error(Errc::kInvalidArgument, fmt::format("topic '{}': {} partitions, allowed 1..{}", topic, c.partitions, kMaxPartitions));
  if (c.capacity < 4096 || c.capacity > kMaxCapacity || !std::has_single_bit(c.capacity))
    return make_error(Errc::kInvalidArgument,
                      fmt::format("topic '{}': capacity {} must be a power of two from 4096 to {} (nearest: {})", topic,
                                  c.capacity, kMaxCapacity,
                                  std::clamp<std::uint64_t>(std::bit_floor(std::max<std::uint64_t>(c.capacity, 1)), 4096, kMaxCapacity)));
  const std::uint64_t limit = c.capacity / 4 - shm::kRecordHeaderSize;
  if (c.max_record > limit)
    return make_error(Errc::kInvalidArgument, fmt::format("topic '{}': max record {} bytes is over a quarter of the capacity "
                                                          "({} bytes with the header); raise --capacity", topic, c.max_record, limit));
  if (c.claim_timeout_ms == 0 || c.claim_timeout_ms > 3'600'000)
    return make_error(Errc::kInvalidArgument,
                      fmt::format("topic '{}': claim timeout {} ms must be from 1 ms to 3600000 ms", topic, c.claim_timeout_ms));
  if (c.spill.enabled) {
    if (c.spill.segment_bytes < 4096 || c.spill.segment_bytes > (std::uint64_t{1} << 31))
      return make_error(Errc::kInvalidArgument, fmt::format("topic '{}': segment bytes {} must be from 4 KiB to 2 GiB", topic,
                                                            c.spill.segment_bytes));
    if (c.spill.retention_ms < 0)
      return make_error(Errc::kInvalidArgument, fmt::format("topic '{}': retention ms {} is negative", topic, c.spill.retention_ms));
    if (c.spill.fsync_interval_ms == 0 && c.spill.fsync == FsyncPolicy::kInterval)
      return make_error(Errc::kInvalidArgument, fmt::format("topic '{}': an fsync interval of 0 ms; use --fsync always", topic));
  }
  return {};
}

// ---- topic configs on disk: how spilled topics come back after a reboot ----


// `epoch`: the topic's creation (TopicSlot::epoch), kept across restores so that its groups'
// committed offsets stay its own; a config without it (older) gets a new one.
nlohmann::json config_json(const TopicConfig& c, std::uint64_t epoch) {
  return {{"version", 1},
          {"epoch", epoch},
          {"partitions", c.partitions},
          {"capacity", c.capacity},
          {"max_record", c.max_record},
          {"retention", c.retention == RetentionMode::kBlock ? "block" : "overwrite"},
          {"claim_timeout_ms", c.claim_timeout_ms},
          {"spill",
           {{"retention_bytes", c.spill.retention_bytes},
            {"retention_ms", c.spill.retention_ms},
            {"segment_bytes", c.spill.segment_bytes},
            {"fsync", c.spill.fsync == FsyncPolicy::kNever ? "never" : c.spill.fsync == FsyncPolicy::kAlways ? "always" : "interval"},
            {"fsync_interval_ms", c.spill.fsync_interval_ms}}}};
}

Result<TopicConfig> load_topic_config(const std::string& path, std::uint64_t& epoch) {
  std::ifstream in(path);
  if (!in) return make_error(Errc::kNotFound, fmt::format("cannot read {}", path));
  try {
    const auto j = nlohmann::json::parse(in);
    if (j.value("version", 0) != 1) return make_error(Errc::kBadSegment, fmt::format("{}: unknown version", path));
    TopicConfig c;
    c.partitions = j.at("partitions").get<std::uint32_t>();
    c.capacity = j.at("capacity").get<std::uint64_t>();
    c.max_record = j.at("max_record").get<std::uint32_t>();
    c.retention = j.at("retention").get<std::string>() == "block" ? RetentionMode::kBlock : RetentionMode::kOverwrite;
    c.claim_timeout_ms = j.value("claim_timeout_ms", 1000u);
    epoch = j.value("epoch", std::uint64_t{0});
    const auto& sp = j.at("spill");
    c.spill.enabled = true;
    c.spill.retention_bytes = sp.at("retention_bytes").get<std::uint64_t>();
    c.spill.retention_ms = sp.at("retention_ms").get<std::int64_t>();
    c.spill.segment_bytes = sp.at("segment_bytes").get<std::uint64_t>();
    const std::string f = sp.at("fsync").get<std::string>();
    c.spill.fsync = f == "never" ? FsyncPolicy::kNever : f == "always" ? FsyncPolicy::kAlways : FsyncPolicy::kInterval;
    c.spill.fsync_interval_ms = sp.at("fsync_interval_ms").get<std::uint32_t>();
    return c;
  } catch (const std::exception& e) {
    return make_error(Errc::kBadSegment, fmt::format("{}: not a topic config ({})", path, e.what()));
  }
}

// Written whole (temporary file, fsync, rename, directory fsync): never half a config.
Status save_topic_config(const std::string& bus, const std::string& topic, const TopicConfig& c, std::uint64_t epoch,
                         unsigned mode, std::int64_t gid) {  // -1: no group
  const std::string dir = topics_dir(bus);
  if (auto ok = secure_bases(bus_paths(bus)); !ok) return ok;
  if (auto ok = make_dirs(dir, (mode & 0060) ? 0770 : 0700, gid >= 0 ? std::optional<unsigned>(static_cast<unsigned>(gid)) : std::nullopt); !ok) return ok;
  const std::string path = topic_config_path(bus, topic), tmp = path + ".tmp";
  const std::string body = config_json(c, epoch).dump(2) + "\n";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return make_error(Errc::kSystem, fmt::format("cannot write {}: {}", tmp, std::strerror(errno)));
  if (gid >= 0) (void)!::fchown(fd, static_cast<uid_t>(-1), static_cast<gid_t>(gid));
  const bool ok = ::write(fd, body.data(), body.size()) == static_cast<ssize_t>(body.size()) && ::fsync(fd) == 0;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    return make_error(Errc::kSystem, fmt::format("cannot write {}: {}", path, std::strerror(errno)));
  }
  if (const int d = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); d >= 0) {
    (void)::fsync(d);
    ::close(d);
  }
  return {};
}

bool has_topic_configs(const std::string& bus) {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(topics_dir(bus), ec))
    if (e.path().extension() == ".json") return true;
  return false;
}

void remove_topic_files(const std::string& bus, const std::string& topic, std::uint32_t partitions) {
  const std::string state = bus_paths(bus).state_dir;
  std::error_code ec;
  for (std::uint32_t p = 0; p < partitions; ++p) std::filesystem::remove_all(disklog::partition_dir(state, topic, p), ec);
}

}  // namespace

struct Bus::Impl {
  Segment registry;
  RegistryControl* control = nullptr;
  TopicSlot* slots = nullptr;
  std::mutex mu;  // serialises this process's threads; flock serialises processes
  std::map<std::string, std::shared_ptr<Topic>, std::less<>> topics;

  bool read_slot(std::uint32_t i, SlotCopy& out) const {
    const TopicSlot& s = slots[i];
    for (int attempt = 0; attempt < 1000; ++attempt) {
      const std::uint32_t s1 = s.seq.load(std::memory_order_acquire);
      if (s1 & 1) {
        std::this_thread::yield();
        continue;
      }
      TopicSlot copy;
      shm::racy_copy(&copy, &s, sizeof copy);  // seqlock read: validated below
      shm::seqlock_read_fence();
      if (s.seq.load(std::memory_order_relaxed) != s1) continue;
      out.state = static_cast<TopicState>(copy.state);
      out.name.assign(copy.name, std::min<std::size_t>(copy.name_len, sizeof copy.name));
      // A slot that does not hold a valid topic is corrupt: never act on it (its name
      // becomes a file name to remove; its partition count a loop bound).
      if (out.state != TopicState::kFree &&
          (copy.state > static_cast<std::uint32_t>(TopicState::kDeleting) || !validate_name("topic", out.name) ||
           copy.partitions == 0 || copy.partitions > kMaxPartitions || copy.capacity < 4096 ||
           copy.capacity > kMaxCapacity || !std::has_single_bit(copy.capacity)))
        return false;
      out.config.partitions = copy.partitions;
      out.config.capacity = copy.capacity;
      out.config.max_record = copy.max_record;
      out.config.retention = static_cast<RetentionMode>(copy.retention);
      out.config.claim_timeout_ms = copy.claim_timeout_ms ? copy.claim_timeout_ms : 1000;
      out.config.spill.enabled = copy.spill == 1;
      if (out.config.spill.enabled) {
        out.config.spill.fsync = static_cast<FsyncPolicy>(std::min<std::uint32_t>(copy.spill_fsync, 2));
        out.config.spill.retention_bytes = copy.spill_retention_bytes;
        out.config.spill.retention_ms = copy.spill_retention_ms;
        out.config.spill.segment_bytes = copy.spill_segment_bytes;
        out.config.spill.fsync_interval_ms = copy.spill_fsync_interval_ms;
      }
      out.epoch = copy.epoch;
      out.created_ns = copy.created_ns;
      return true;
    }
    return false;
  }

  // Under the registry lock only.
  template <class F>
  void write_slot(std::uint32_t i, F&& fill) {
    TopicSlot& s = slots[i];
    s.seq.fetch_add(1, std::memory_order_acq_rel);  // odd: readers retry; the acquire keeps fill() after it
    fill(s);
    s.seq.fetch_add(1, std::memory_order_release);  // SYNC POINT: pairs with read_slot's acquire
    control->changes.fetch_add(1, std::memory_order_release);
  }

  // Under the registry lock only: a slot left creating or deleting belongs to a process
  // that is gone (it would hold the lock otherwise). Its partitions go, the slot is free.
  void finish_half_done(const std::string& bus, std::uint32_t i, const SlotCopy& cur) {
    for (std::uint32_t p = 0; p < cur.config.partitions && p < kMaxPartitions; ++p)
      (void)Segment::remove(partition_segment_name(bus, cur.name, p));
    write_slot(i, [](TopicSlot& s) { s.state = static_cast<std::uint32_t>(TopicState::kFree); });
  }

  // Runs `f(slot, topic)` on the ready topic `name` under the registry lock.
  template <class F>
  Status with_ready_topic(const std::string& bus, const std::string& name, bool read_only, F&& f) {
    if (read_only) return make_error(Errc::kPermission, "bus attached read-only");
    if (auto ok = validate_name("topic", name); !ok) return ok;
    std::lock_guard guard(mu);
    auto lock = RegistryLock::take(registry);
    if (!lock) return tl::unexpected(lock.error());
    SlotCopy cur;
    auto slot = find_ready(bus, name, cur);
    if (!slot) return tl::unexpected(slot.error());
    return f(*slot, cur);
  }

  // The slot of the ready topic `name`, or NotFound.
  Result<std::uint32_t> find_ready(const std::string& bus, const std::string& name, SlotCopy& out) const {
    auto slot = find(name, out);
    if (!slot || out.state != TopicState::kReady)
      return make_error(Errc::kNotFound, fmt::format("topic '{}' does not exist on bus '{}'", name, bus));
    return *slot;
  }

  std::optional<std::uint32_t> find(std::string_view name, SlotCopy& out) const {
    for (std::uint32_t i = 0; i < kMaxTopics; ++i) {
      if (slots[i].seq.load(std::memory_order_relaxed) == 0) continue;  // never used
      if (read_slot(i, out) && out.state != TopicState::kFree && out.name == name) return i;
    }
    return std::nullopt;
  }
};

Bus::Bus() : impl_(std::make_unique<Impl>()) {}
Bus::~Bus() = default;

Result<std::shared_ptr<Bus>> Bus::attach(BusOptions options) {
  std::string name = options.name.empty() ? default_bus_name() : options.name;
  if (auto ok = validate_name("bus", name); !ok) return tl::unexpected(ok.error());
  std::optional<unsigned> gid;
  if (options.group) {
    auto g = group_id(*options.group);
    if (!g) return tl::unexpected(g.error());
    gid = *g;
  }
  const std::string reg = registry_segment_name(name);
  std::shared_ptr<Bus> bus(new Bus());
  bus->name_ = name;
  bus->read_only_ = options.read_only;
  for (int attempt = 0; attempt < 3; ++attempt) {
    auto seg = Segment::open(reg, shm::SegmentKind::kRegistry, kRegistryLayoutMajor, !options.read_only);
    // A bus with spilled topics exists as long as their logs do: after a reboot, the
    // first attach brings it back (below), even one that would not create a bus.
    const bool on_disk = !seg && seg.error().code == Errc::kNotFound && !options.read_only && has_topic_configs(name);
    if (!seg && seg.error().code == Errc::kNotFound && (options.create || on_disk) && !options.read_only) {
      shm::SegmentSpec spec{reg, shm::SegmentKind::kRegistry, kRegistryLayoutMajor, kRegistryLayoutMinor, kRegistrySize,
                            gid ? 0660u : 0600u, gid, false};
      seg = Segment::create(spec, [&](std::byte* base) {
        auto* c = new (base + kRegistryControlOffset) RegistryControl{};
        c->max_topics = kMaxTopics;
        c->mode = spec.mode;
        c->gid = gid ? static_cast<std::int64_t>(*gid) : -1;
        for (std::uint32_t i = 0; i < kMaxTopics; ++i) new (base + kTopicSlotsOffset + i * sizeof(TopicSlot)) TopicSlot{};
      });
      if (!seg && seg.error().code == Errc::kAlreadyExists) continue;  // another process won the race
    }
    if (!seg) {
      if (seg.error().code == Errc::kNotFound)
        return make_error(Errc::kNotFound, fmt::format("bus '{}' does not exist ({} is missing)", name, Segment::path_of(reg)));
      return tl::unexpected(seg.error());
    }
    if (seg->size() != kRegistrySize)
      return make_error(Errc::kBadSegment, fmt::format("{} is {} bytes, a registry is {} bytes", Segment::path_of(reg),
                                                       seg->size(), kRegistrySize));
    bus->impl_->registry = std::move(*seg);
    bus->impl_->control = bus->impl_->registry.at<RegistryControl>(kRegistryControlOffset);
    bus->impl_->slots = bus->impl_->registry.at<TopicSlot>(kTopicSlotsOffset);
    if (bus->impl_->control->max_topics != kMaxTopics)
      return make_error(Errc::kBadSegment, fmt::format("{}: {} topic slots, this build expects {}", Segment::path_of(reg),
                                                       bus->impl_->control->max_topics, kMaxTopics));
    // Spilled topics whose shared memory is gone (a reboot) come back from their logs. A
    // log that cannot be continued is reported by busd and `busctl topic list`, not here.
    if (!options.read_only) (void)bus->restore_spilled_topics();
    return bus;
  }
  return make_error(Errc::kSystem, fmt::format("could not create or open {}", Segment::path_of(reg)));
}

Status Bus::create_topic(const std::string& name, const TopicConfig& in) { return create_topic_impl(name, in, false, 0); }

Status Bus::create_topic_impl(const std::string& name, const TopicConfig& in, bool restoring, std::uint64_t restored_epoch) {
  if (read_only_) return make_error(Errc::kPermission, "bus attached read-only");
  if (auto ok = validate_name("topic", name); !ok) return ok;
  TopicConfig cfg = in;
  if (cfg.max_record == 0 && cfg.capacity >= 4096) cfg.max_record = static_cast<std::uint32_t>((cfg.capacity / 4 - shm::kRecordHeaderSize) & ~7ull);
  if (auto ok = validate_config(name, cfg); !ok) return ok;
  const shm::RingGeometry g = shm::ring_geometry(cfg.capacity);
  const std::uint64_t need = g.segment_size * cfg.partitions;
  if (const std::uint64_t room = Segment::shm_free_bytes(); room < need)
    return make_error(Errc::kNoSpace,
                      fmt::format("topic '{}' needs {} bytes of shared memory, {} has {} free: enlarge /dev/shm "
                                  "(docker --shm-size, mount -o remount,size=...) or use a smaller --capacity or fewer partitions",
                                  name, need, shm::kShmDir, room));
  std::lock_guard guard(impl_->mu);
  auto lock = RegistryLock::take(impl_->registry);
  if (!lock) return tl::unexpected(lock.error());
  // A restore races topic deletes: only a config still on disk (under the lock) comes back.
  if (restoring && ::access(topic_config_path(name_, name).c_str(), F_OK) != 0) return {};
  // A spilled topic continues its disk log's offsets (after a reboot: the restore).
  struct DiskState {
    std::uint64_t next = 0, start = 0, bytes = 0;
  };
  std::vector<DiskState> bases(cfg.partitions);
  if (cfg.spill.enabled) {
    const std::string state = bus_paths(name_).state_dir;
    for (std::uint32_t p = 0; p < cfg.partitions; ++p) {
      auto sum = disklog::summarize(disklog::partition_dir(state, name, p));
      if (!sum) return make_error(sum.error().code, fmt::format("topic '{}': its disk log cannot be continued: {}", name, sum.error().message));
      if (sum->next_offset) bases[p] = {*sum->next_offset, sum->start_offset.value_or(*sum->next_offset), sum->bytes};
    }
  }
  SlotCopy cur;
  std::optional<std::uint32_t> free_slot;
  for (std::uint32_t i = 0; i < kMaxTopics; ++i) {
    if (!impl_->read_slot(i, cur)) continue;
    if (cur.state == TopicState::kFree) {
      if (!free_slot) free_slot = i;
      continue;
    }
    if (cur.state == TopicState::kReady && cur.name == name)
      return make_error(Errc::kAlreadyExists, fmt::format("topic '{}' already exists on bus '{}'", name, name_));
    if (cur.state == TopicState::kCreating || cur.state == TopicState::kDeleting) {
      impl_->finish_half_done(name_, i, cur);
      if (!free_slot) free_slot = i;
    }
  }
  if (!free_slot) return make_error(Errc::kTooManyClients, fmt::format("bus '{}' already has {} topics", name_, kMaxTopics));
  // A new creation gets a new epoch (never 0: "unknown" to busd's offset store); a restored
  // spilled topic keeps the one of its config.
  std::uint64_t epoch = restored_epoch;
  while (epoch == 0) epoch = shm::random_u64();
  const std::uint32_t slot = *free_slot;
  impl_->write_slot(slot, [&](TopicSlot& s) {
    s.state = static_cast<std::uint32_t>(TopicState::kCreating);
    s.partitions = cfg.partitions;
    s.retention = static_cast<std::uint32_t>(cfg.retention);
    s.capacity = cfg.capacity;
    s.max_record = cfg.max_record;
    s.name_len = static_cast<std::uint32_t>(name.size());
    std::memset(s.name, 0, sizeof s.name);
    std::memcpy(s.name, name.data(), name.size());
    s.epoch = epoch;
    s.created_ns = shm::realtime_ns();
    s.creator_pid = ::getpid();
    s.spill = cfg.spill.enabled ? 1 : 0;
    s.spill_fsync = static_cast<std::uint32_t>(cfg.spill.fsync);
    s.spill_retention_bytes = cfg.spill.retention_bytes;
    s.spill_retention_ms = cfg.spill.retention_ms;
    s.spill_segment_bytes = cfg.spill.segment_bytes;
    s.spill_fsync_interval_ms = cfg.spill.fsync_interval_ms;
    s.claim_timeout_ms = cfg.claim_timeout_ms;
  });
  const auto mode = impl_->control->mode & 0660u;  // never wider than the group, whatever the file says
  const auto gid = impl_->control->gid >= 0 ? std::optional<unsigned>(static_cast<unsigned>(impl_->control->gid)) : std::nullopt;
  for (std::uint32_t p = 0; p < cfg.partitions; ++p) {
    shm::SegmentSpec spec{partition_segment_name(name_, name, p), shm::SegmentKind::kPartition, shm::kPartitionLayoutMajor,
                          shm::kPartitionLayoutMinor, g.segment_size, mode, gid, /*replace=*/true};
    shm::RingParams rp;
    rp.capacity = cfg.capacity;
    rp.max_record = ring_max_record(cfg.max_record);
    rp.retention = static_cast<shm::Retention>(cfg.retention);
    rp.claim_timeout_ns = std::uint64_t{cfg.claim_timeout_ms} * 1'000'000;
    rp.partition = p;
    rp.topic_epoch = epoch;
    rp.base_offset = bases[p].next;
    rp.spill = cfg.spill.enabled;
    rp.spill_start = bases[p].start;
    rp.spill_bytes = bases[p].bytes;
    auto seg = Segment::create(spec, [&](std::byte* base) { shm::ring_init(base, rp); });
    if (!seg) {
      for (std::uint32_t q = 0; q < p; ++q) (void)Segment::remove(partition_segment_name(name_, name, q));
      impl_->write_slot(slot, [](TopicSlot& s) { s.state = static_cast<std::uint32_t>(TopicState::kFree); });
      return tl::unexpected(seg.error());
    }
  }
  if (cfg.spill.enabled) {
    if (auto ok = save_topic_config(name_, name, cfg, epoch, mode, impl_->control->gid); !ok) {
      for (std::uint32_t q = 0; q < cfg.partitions; ++q) (void)Segment::remove(partition_segment_name(name_, name, q));
      impl_->write_slot(slot, [](TopicSlot& s) { s.state = static_cast<std::uint32_t>(TopicState::kFree); });
      return ok;
    }
  }
  impl_->write_slot(slot, [](TopicSlot& s) { s.state = static_cast<std::uint32_t>(TopicState::kReady); });
  return {};
}


Status Bus::alter_topic(const std::string& name, const SpillConfig& spill) {
  return impl_->with_ready_topic(name_, name, read_only_, [&](std::uint32_t slot, const SlotCopy& cur) -> Status {
    if (cur.config.spill.enabled && !spill.enabled)
      return make_error(Errc::kInvalidArgument, fmt::format("topic '{}' spills to disk: spilling cannot be turned off (delete "
                                                            "the topic to drop its log)", name));
    TopicConfig cfg = cur.config;
    cfg.spill = spill;
    if (auto ok = validate_config(name, cfg); !ok) return ok;
    const auto mode = impl_->control->mode & 0660u;
    if (spill.enabled)
      if (auto ok = save_topic_config(name_, name, cfg, cur.epoch, mode, impl_->control->gid); !ok) return ok;
    impl_->write_slot(slot, [&](TopicSlot& s) {
      s.spill = spill.enabled ? 1 : 0;
      s.spill_fsync = static_cast<std::uint32_t>(spill.fsync);
      s.spill_retention_bytes = spill.retention_bytes;
      s.spill_retention_ms = spill.retention_ms;
      s.spill_segment_bytes = spill.segment_bytes;
      s.spill_fsync_interval_ms = spill.fsync_interval_ms;
    });
    impl_->topics.erase(name);  // this process's handle re-reads the config
    return {};
  });
}

Result<std::vector<std::string>> Bus::restore_spilled_topics() {
  std::vector<std::string> restored;
  if (read_only_) return restored;
  const std::string dir = topics_dir(name_);
  std::error_code ec;
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string f = e.path().filename().string();
    if (f.size() > 5 && f.substr(f.size() - 5) == ".json") names.push_back(f.substr(0, f.size() - 5));
  }
  Status first_error;
  for (const auto& topic : names) {
    if (!validate_name("topic", topic)) continue;
    SlotCopy cur;
    std::uint64_t epoch = 0;
    auto cfg = load_topic_config(topic_config_path(name_, topic), epoch);
    if (impl_->find(topic, cur) && cur.state == TopicState::kReady) {
      // A config written before it kept the epoch gets it now, while the topic is there:
      // restored after a reboot, the topic is then the same one to its groups.
      if (cfg && epoch == 0)
        (void)impl_->with_ready_topic(name_, topic, false, [&](std::uint32_t, const SlotCopy& now) {
          return save_topic_config(name_, topic, now.config, now.epoch, impl_->control->mode & 0660u, impl_->control->gid);
        });
      continue;
    }
    if (!cfg) {
      if (first_error) first_error = tl::unexpected(cfg.error());
      continue;
    }
    auto ok = create_topic_impl(topic, *cfg, true, epoch);
    if (ok) restored.push_back(topic);
    else if (ok.error().code != Errc::kAlreadyExists && first_error) first_error = ok;
  }
  if (restored.empty() && !first_error) return tl::unexpected(first_error.error());
  return restored;
}

bool Bus::still_exists() const {
  struct stat st{};
  return ::fstat(impl_->registry.fd(), &st) == 0 && st.st_nlink > 0;
}

Result<std::vector<std::string>> Bus::repair() {
  if (read_only_) return make_error(Errc::kPermission, "bus attached read-only");
  std::lock_guard guard(impl_->mu);
  auto lock = RegistryLock::take(impl_->registry);
  if (!lock) return tl::unexpected(lock.error());
  std::vector<std::string> done;
  SlotCopy cur;
  for (std::uint32_t i = 0; i < kMaxTopics; ++i) {
    if (!impl_->read_slot(i, cur)) continue;
    if (cur.state != TopicState::kCreating && cur.state != TopicState::kDeleting) continue;
    impl_->finish_half_done(name_, i, cur);
    done.push_back(cur.name);
  }
  return done;
}

Status Bus::delete_topic(const std::string& name) {
  return impl_->with_ready_topic(name_, name, read_only_, [&](std::uint32_t slot, const SlotCopy& cur) -> Status {
    impl_->write_slot(slot, [](TopicSlot& s) { s.state = static_cast<std::uint32_t>(TopicState::kDeleting); });
    if (cur.config.spill.enabled) ::unlink(topic_config_path(name_, name).c_str());  // first: no restore after this
    for (std::uint32_t p = 0; p < cur.config.partitions; ++p) {
      const std::string seg_name = partition_segment_name(name_, name, p);
      // Tell attached producers and consumers before the name goes away.
      if (auto seg = Segment::open(seg_name, shm::SegmentKind::kPartition, shm::kPartitionLayoutMajor, true);
          seg && shm::ring_validate(*seg)) {
        shm::Ring ring(seg->data());
        ring.ctl()->notify.closed.store(1, std::memory_order_release);
        ring.ctl()->notify.seq.fetch_add(1, std::memory_order_release);
        shm::futex_wake_all(&ring.ctl()->notify.seq);
      }
      (void)Segment::remove(seg_name);
    }
    if (cur.config.spill.enabled) remove_topic_files(name_, name, cur.config.partitions);
    impl_->write_slot(slot, [](TopicSlot& s) { s.state = static_cast<std::uint32_t>(TopicState::kFree); });
    impl_->topics.erase(name);
    return {};
  });
}

Result<std::shared_ptr<Topic>> Bus::topic(const std::string& name) {
  std::lock_guard guard(impl_->mu);
  if (auto it = impl_->topics.find(name); it != impl_->topics.end()) {
    if (!it->second->deleted()) return it->second;
    impl_->topics.erase(it);
  }
  if (auto ok = validate_name("topic", name); !ok) return tl::unexpected(ok.error());
  for (int attempt = 0; attempt < 3; ++attempt) {
    SlotCopy cur;
    auto slot = impl_->find(name, cur);
    if (!slot || cur.state != TopicState::kReady)
      return make_error(Errc::kNotFound, fmt::format("topic '{}' does not exist on bus '{}'", name, name_));
    auto t = std::make_shared<Topic>(name, cur.config, cur.epoch);
    bool stale = false;
    for (std::uint32_t p = 0; p < cur.config.partitions; ++p) {
      auto seg = Segment::open(partition_segment_name(name_, name, p), shm::SegmentKind::kPartition,
                               shm::kPartitionLayoutMajor, !read_only_);
      if (!seg) {
        if (seg.error().code == Errc::kNotFound) { stale = true; break; }  // deleted meanwhile
        return tl::unexpected(seg.error());
      }
      if (auto ok = shm::ring_validate(*seg); !ok) return tl::unexpected(ok.error());
      shm::Ring ring(seg->data());
      if (ring.ctl()->config.topic_epoch != cur.epoch || ring.ctl()->config.partition != p) { stale = true; break; }
      seg->drop_fd();
      t->add(std::move(*seg));
    }
    if (stale) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      continue;
    }
    impl_->topics.emplace(name, t);
    return t;
  }
  return make_error(Errc::kNotFound, fmt::format("topic '{}' on bus '{}' changed while it was being opened", name, name_));
}

namespace {

TopicInfo info_of(const SlotCopy& s, const Topic* t) {
  TopicInfo info;
  info.name = s.name;
  info.config = s.config;
  info.epoch = s.epoch;
  info.created_ns = s.created_ns;
  info.shm_bytes = shm::ring_geometry(s.config.capacity).segment_size * s.config.partitions;
  if (!t) return info;
  for (std::uint32_t p = 0; p < t->partitions(); ++p) {
    const shm::Ring& r = t->ring(p);
    PartitionInfo pi{};
    pi.partition = p;
    pi.start_offset = r.start_offset();
    pi.end_offset = r.end_offset();
    const std::uint64_t tail = r.tail_position(), rec = r.reclaim_position();
    pi.bytes_used = tail > rec ? tail - rec : 0;
    pi.capacity = r.capacity();
    pi.dead_claims_reclaimed = r.ctl()->stats.dead_claims_reclaimed.load(std::memory_order_relaxed);
    const auto& cs = r.ctl()->claim_stats;
    pi.claims_timed_out = cs.claims_timed_out.load(std::memory_order_relaxed);
    pi.late_commits_refused = cs.late_commits_refused.load(std::memory_order_relaxed);
    pi.waiters_reaped = cs.waiters_reaped.load(std::memory_order_relaxed);
    pi.gates_reaped = cs.gates_reaped.load(std::memory_order_relaxed);
    // A writer is attached while it holds its slot's lock (shm/ofd_lock.h).
    if (auto lock = shm::SegmentLock::open(t->segment(p)); lock)
      for (std::uint32_t i = 0; i < shm::kWriterSlots; ++i) pi.writers += lock->held_by_other(shm::writer_lock_byte(i));
    for (std::uint32_t i = 0; i < shm::kGateSlots; ++i)
      pi.gates += r.gate(i)->kind.load(std::memory_order_relaxed) != static_cast<std::uint32_t>(shm::GateKind::kFree);
    const auto& st = r.ctl()->stats;
    pi.disk_start_offset = st.spill_start.load(std::memory_order_relaxed);
    pi.disk_end_offset = st.spill_end.load(std::memory_order_acquire);
    pi.disk_bytes = st.spill_bytes.load(std::memory_order_relaxed);
    pi.spill_lost = st.spill_lost.load(std::memory_order_relaxed);
    pi.spill_state = st.spill_state.load(std::memory_order_relaxed);
    pi.earliest_offset = earliest_offset(r, s.config.spill.enabled);
    info.partitions.push_back(pi);
  }
  return info;
}

}  // namespace

std::vector<TopicInfo> Bus::list_topics() {
  std::vector<TopicInfo> out;
  SlotCopy cur;
  for (std::uint32_t i = 0; i < kMaxTopics; ++i) {
    if (impl_->slots[i].seq.load(std::memory_order_relaxed) == 0) continue;
    if (impl_->read_slot(i, cur) && cur.state == TopicState::kReady) out.push_back(info_of(cur, nullptr));
  }
  std::sort(out.begin(), out.end(), [](const TopicInfo& a, const TopicInfo& b) { return a.name < b.name; });
  return out;
}

Result<TopicInfo> Bus::describe_topic(const std::string& name) {
  auto t = topic(name);
  if (!t) return tl::unexpected(t.error());
  SlotCopy cur;
  if (!impl_->find(name, cur)) return make_error(Errc::kNotFound, fmt::format("topic '{}' does not exist on bus '{}'", name, name_));
  return info_of(cur, t->get());
}

Status Bus::destroy(const std::string& bus_name, bool purge_disk) {
  if (auto ok = validate_name("bus", bus_name); !ok) return ok;
  const std::string prefix = bus_segment_prefix(bus_name);
  const BusPaths paths = bus_paths(bus_name);  // before the registry, which tells a shared bus's, goes
  DIR* d = ::opendir(shm::kShmDir);
  if (!d) return make_error(Errc::kSystem, fmt::format("cannot list {}: {}", shm::kShmDir, std::strerror(errno)));
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string_view n(e->d_name);
    if (n.substr(0, prefix.size()) == prefix) names.emplace_back(n);
  }
  ::closedir(d);
  for (const auto& n : names)
    if (auto ok = Segment::remove(n); !ok) return ok;
  if (purge_disk) {
    for (const auto& dir : {paths.state_dir, paths.runtime_dir}) {
      // Never follow a planted /tmp/shmbus-<uid> (a link, or someone else's) to delete.
      const bool planted =
          std::any_of(paths.private_bases.begin(), paths.private_bases.end(),
                      [&dir](const std::string& b) { return dir.starts_with(b + "/") && !private_dir(b, /*create=*/false); }) ||
          std::any_of(paths.shared_bases.begin(), paths.shared_bases.end(), [&](const std::string& b) {
            return dir.starts_with(b + "/") && !shared_dir(b, *paths.gid, /*create=*/false);
          });
      if (planted) continue;
      std::error_code ec;
      // A busd that is exiting may still add its last log line: a second pass then finishes.
      for (int attempt = 0; attempt < 3 && (attempt == 0 || ec); ++attempt) {
        ec.clear();
        std::filesystem::remove_all(dir, ec);
      }
      if (ec) return make_error(Errc::kSystem, fmt::format("cannot remove {}: {}", dir, ec.message()));
    }
  }
  return {};
}

}  // namespace shmbus
