// busctl topic (create, alter, list, describe, delete) and busctl bus delete.
#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bus/group_client.h"
#include "bus/names.h"
#include "bus/paths.h"
#include "shm/segment.h"
#include "tools/busctl/command.h"
#include "tools/busctl/top.h"
#include "tools/busctl/units.h"

namespace shmbus::busctl {
namespace {

using json = nlohmann::json;

Status apply_spill_options(SpillConfig& c, const std::string& ret_bytes, const std::string& ret_ms, const std::string& segment,
                           const std::string& fsync, const std::string& interval) {
  if (!ret_bytes.empty()) {
    auto v = parse_size(ret_bytes);
    if (!v) return tl::unexpected(v.error());
    c.retention_bytes = *v;
  }
  if (!ret_ms.empty()) {
    auto v = parse_count("--retention-ms", ret_ms);
    if (!v) return tl::unexpected(v.error());
    if (*v > static_cast<std::uint64_t>(INT64_MAX / 1'000'000)) return make_error(Errc::kInvalidArgument, "--retention-ms is too large");
    c.retention_ms = static_cast<std::int64_t>(*v);
  }
  if (!segment.empty()) {
    auto v = parse_size(segment);
    if (!v) return tl::unexpected(v.error());
    c.segment_bytes = *v;
  }
  if (!interval.empty()) {
    auto v = parse_count("--fsync-interval-ms", interval);
    if (!v) return tl::unexpected(v.error());
    if (*v > UINT32_MAX) return make_error(Errc::kInvalidArgument, "--fsync-interval-ms is too large");
    c.fsync_interval_ms = static_cast<std::uint32_t>(*v);
  }
  if (!fsync.empty()) {
    if (fsync != "never" && fsync != "interval" && fsync != "always")
      return make_error(Errc::kInvalidArgument, fmt::format("--fsync '{}': use never, interval or always", fsync));
    c.fsync = fsync == "never" ? FsyncPolicy::kNever : fsync == "always" ? FsyncPolicy::kAlways : FsyncPolicy::kInterval;
  }
  return {};
}

class TopicCommands final : public Command {
 public:
  explicit TopicCommands(CLI::App& app) {
    topic = sub(&app, "topic", "create, list, describe, delete topics");
    topic->require_subcommand(1);
    t_create = sub(topic, "create", "create a topic");
    t_create->add_option("name", t_name, "topic name")->required();
    t_create->add_option("--partitions", partitions_s, "number of partitions (default 1)");
    t_create->add_option("--capacity", capacity_s, "ring bytes per partition, a power of two (default 1MiB)");
    t_create->add_option("--max-record", max_record_s, "largest key+headers+value (default: capacity/4)");
    t_create->add_option("--retention", retention_s, "overwrite | block (default overwrite)");
    t_create->add_option("--claim-timeout-ms", claim_timeout_s,
                         "a send unfinished this long (its producer stopped, slow or dead) is aborted (default 1000)");
    t_create->add_flag("--spill", t_spill, "busd appends every record to a disk log: replay from disk, restore after reboot");
    t_create->add_option("--retention-bytes", sp_ret_bytes, "spill: disk bytes kept per partition, whole segments (default 0: no limit)");
    t_create->add_option("--retention-ms", sp_ret_ms, "spill: segments older than this are deleted (default 0: no limit)");
    t_create->add_option("--segment-bytes", sp_segment, "spill: a segment file rolls past this size (default 64MiB)");
    t_create->add_option("--fsync", sp_fsync, "spill: never | interval | always (default interval)");
    t_create->add_option("--fsync-interval-ms", sp_interval, "spill: with --fsync interval (default 1000)");
    t_create->add_option("--group", t_unix_group, "a bus this creates is shared with this Unix group (mode 0660), else owner-only");
    t_create->footer("Examples:\n  busctl topic create orders --partitions 8 --capacity 4MiB --retention block\n"
                     "  busctl topic create audit --spill --retention-bytes 10GiB --fsync always");
    t_alter = sub(topic, "alter", "change a topic's spill settings, or turn spilling on");
    t_alter->add_option("name", t_name, "topic name")->required();
    t_alter->add_flag("--spill", a_spill, "turn spilling on (it cannot be turned off)");
    t_alter->add_option("--retention-bytes", a_ret_bytes, "disk bytes kept per partition (0: no limit)");
    t_alter->add_option("--retention-ms", a_ret_ms, "segments older than this are deleted (0: no limit)");
    t_alter->add_option("--segment-bytes", a_segment, "segment size, from the next segment on");
    t_alter->add_option("--fsync", a_fsync, "never | interval | always");
    t_alter->add_option("--fsync-interval-ms", a_interval, "with --fsync interval");
    t_alter->footer("Examples:\n  busctl topic alter audit --retention-bytes 1GiB --retention-ms 86400000\n  busctl topic alter orders --spill --fsync always");
    t_list = sub(topic, "list", "list topics");
    t_list->footer("Example:\n  busctl topic list --json");
    t_describe = sub(topic, "describe", "partitions, offsets and bytes of a topic");
    t_describe->add_option("name", t_name, "topic name")->required();
    t_describe->footer("Example:\n  busctl topic describe orders   # START/END offsets, bytes, writers, gates; DISK-* for spilled topics");
    t_delete = sub(topic, "delete", "delete a topic");
    t_delete->add_option("name", t_name, "topic name")->required();
    t_delete->footer("Example:\n  busctl topic delete orders     # its segments, and its disk log if it spills");
  }

  bool parsed() const override { return topic->parsed(); }

  int run(const Context& ctx) override {
    if (t_create->parsed()) return create(ctx);
    if (t_alter->parsed()) return alter(ctx);
    return list_describe_delete(ctx);
  }

 private:
  int create(const Context& ctx) {
    const Globals& g = ctx.g;
    std::ostream& out = ctx.out;
    std::ostream& err = ctx.err;
    TopicConfig cfg;
    auto parts = parse_count("--partitions", partitions_s);
    if (!parts) return fail(err, parts.error());
    auto cap = parse_size(capacity_s);
    if (!cap) return fail(err, cap.error());
    auto maxr = parse_size(max_record_s);
    if (!maxr) return fail(err, maxr.error());
    if (retention_s != "overwrite" && retention_s != "block")
      return fail(err, Error{Errc::kInvalidArgument, fmt::format("--retention '{}': use overwrite or block", retention_s)});
    if (*parts > UINT32_MAX || *maxr > UINT32_MAX)
      return fail(err, Error{Errc::kInvalidArgument, "--partitions or --max-record is too large"});
    cfg.partitions = static_cast<std::uint32_t>(*parts);
    cfg.capacity = *cap;
    cfg.max_record = static_cast<std::uint32_t>(*maxr);
    cfg.retention = retention_s == "block" ? RetentionMode::kBlock : RetentionMode::kOverwrite;
    auto claim_timeout = parse_count("--claim-timeout-ms", claim_timeout_s);
    if (!claim_timeout) return fail(err, claim_timeout.error());
    if (*claim_timeout == 0 || *claim_timeout > 3'600'000)
      return fail(err, Error{Errc::kInvalidArgument,
                             fmt::format("--claim-timeout-ms {}: use 1 to 3600000", *claim_timeout)});
    cfg.claim_timeout_ms = static_cast<std::uint32_t>(*claim_timeout);
    const bool spill_opts = sp_ret_bytes != "0" || sp_ret_ms != "0" || sp_segment != "64MiB" || sp_fsync != "interval" || sp_interval != "1000";
    if (spill_opts && !t_spill)
      return fail(err, Error{Errc::kInvalidArgument, "--retention-bytes, --retention-ms, --segment-bytes and --fsync need --spill"});
    if (t_spill) {
      cfg.spill.enabled = true;
      if (auto ok = apply_spill_options(cfg.spill, sp_ret_bytes, sp_ret_ms, sp_segment, sp_fsync, sp_interval); !ok)
        return fail(err, ok.error());
    }
    auto bus = attach(g, true, t_unix_group);
    if (!bus) return fail(err, bus.error());
    if (auto ok = (*bus)->create_topic(t_name, cfg); !ok) return fail(err, ok.error());
    auto info = (*bus)->describe_topic(t_name);
    if (!info) return fail(err, info.error());
    if (t_spill) {
      // busd does the spilling: make sure one runs (SHMBUS_NO_AUTOSTART=1 leaves it to you).
      if (auto conn = BusdConnection::connect((*bus)->name(), std::chrono::seconds(5)); !conn)
        err << fmt::format("busctl: warning: busd is not running ({}); topic {} is spilled once it runs\n", conn.error().message, t_name);
    }
    if (g.json) out << topic_json(*info).dump() << "\n";
    else out << fmt::format("created topic {} on bus {}: {} partitions x {} bytes, {} retention\n", t_name, (*bus)->name(),
                            info->config.partitions, info->config.capacity, retention_name(info->config.retention));
    return kOk;
  }

  int alter(const Context& ctx) {
    const Globals& g = ctx.g;
    std::ostream& out = ctx.out;
    std::ostream& err = ctx.err;
    auto bus = attach(g, false);
    if (!bus) return fail(err, bus.error());
    auto info = (*bus)->describe_topic(t_name);
    if (!info) return fail(err, info.error());
    SpillConfig spill = info->config.spill;
    const bool any = !a_ret_bytes.empty() || !a_ret_ms.empty() || !a_segment.empty() || !a_fsync.empty() || !a_interval.empty();
    if (!a_spill && !any) return fail(err, Error{Errc::kInvalidArgument, "nothing to alter: give --spill or a spill setting"});
    if (!spill.enabled && !a_spill)
      return fail(err, Error{Errc::kInvalidArgument, fmt::format("topic '{}' does not spill: add --spill to turn it on", t_name)});
    spill.enabled = true;
    if (auto ok = apply_spill_options(spill, a_ret_bytes, a_ret_ms, a_segment, a_fsync, a_interval); !ok) return fail(err, ok.error());
    if (auto ok = (*bus)->alter_topic(t_name, spill); !ok) return fail(err, ok.error());
    if (auto conn = BusdConnection::connect((*bus)->name(), std::chrono::seconds(5)); !conn)
      err << fmt::format("busctl: warning: busd is not running ({}); the new settings apply once it runs\n", conn.error().message);
    auto now = (*bus)->describe_topic(t_name);
    if (!now) return fail(err, now.error());
    if (g.json) out << topic_json(*now).dump() << "\n";
    else out << fmt::format("altered topic {}: spill retention {} bytes, {} ms, segment {} bytes, fsync {}\n", t_name,
                            spill.retention_bytes, spill.retention_ms, spill.segment_bytes, fsync_name(spill.fsync));
    return kOk;
  }

  int list_describe_delete(const Context& ctx) {
    const Globals& g = ctx.g;
    std::ostream& out = ctx.out;
    std::ostream& err = ctx.err;
    auto bus = attach(g, false);
    if (!bus) return fail(err, bus.error());
    if (t_list->parsed()) {
      auto topics = (*bus)->list_topics();
      if (g.json) {
        json arr = json::array();
        for (const auto& t : topics) arr.push_back(topic_json(t));
        out << arr.dump() << "\n";
      } else {
        out << fmt::format("{:<32} {:>10} {:>12} {:>10}\n", "TOPIC", "PARTITIONS", "CAPACITY", "RETENTION");
        for (const auto& t : topics)
          out << fmt::format("{:<32} {:>10} {:>12} {:>10}\n", t.name, t.config.partitions, t.config.capacity,
                             retention_name(t.config.retention));
      }
      return kOk;
    }
    if (t_describe->parsed()) {
      auto info = (*bus)->describe_topic(t_name);
      if (!info) return fail(err, info.error());
      if (g.json) {
        out << topic_json(*info).dump() << "\n";
      } else {
        out << fmt::format("topic {}  partitions {}  capacity {}  max record {}  retention {}  shared memory {} bytes\n",
                           info->name, info->config.partitions, info->config.capacity, info->config.max_record,
                           retention_name(info->config.retention), info->shm_bytes);
        const auto& sp = info->config.spill;
        if (sp.enabled)
          out << fmt::format("spill: segment {} bytes  retention {} bytes, {} ms (0: none)  fsync {}{}  dir {}\n",
                             sp.segment_bytes, sp.retention_bytes, sp.retention_ms, fsync_name(sp.fsync),
                             sp.fsync == FsyncPolicy::kInterval ? fmt::format(" every {} ms", sp.fsync_interval_ms) : "",
                             fmt::format("{}/{}-<partition>", bus_paths((*bus)->name()).state_dir, info->name));
        out << fmt::format("{:>9} {:>14} {:>14} {:>12} {:>12} {:>8} {:>6}", "PARTITION", "START", "END", "BYTES",
                           "CAPACITY", "WRITERS", "GATES");
        if (sp.enabled) out << fmt::format(" {:>14} {:>14} {:>10} {:>8} {:>9}", "DISK-START", "DISK-BYTES", "SPILL-LAG", "LOST", "SPILL");
        out << "\n";
        for (const auto& p : info->partitions) {
          out << fmt::format("{:>9} {:>14} {:>14} {:>12} {:>12} {:>8} {:>6}", p.partition, p.start_offset, p.end_offset,
                             p.bytes_used, p.capacity, p.writers, p.gates);
          if (sp.enabled)
            out << fmt::format(" {:>14} {:>14} {:>10} {:>8} {:>9}", p.disk_start_offset, p.disk_bytes,
                               p.end_offset > p.disk_end_offset ? p.end_offset - p.disk_end_offset : 0, p.spill_lost,
                               spill_state_name(p.spill_state));
          out << "\n";
        }
      }
      return kOk;
    }
    if (auto ok = (*bus)->delete_topic(t_name); !ok) return fail(err, ok.error());
    if (g.json) out << json{{"deleted", t_name}}.dump() << "\n";
    else out << fmt::format("deleted topic {}\n", t_name);
    return kOk;
  }

  CLI::App *topic, *t_create, *t_alter, *t_list, *t_describe, *t_delete;
  std::string t_name, partitions_s = "1", capacity_s = "1MiB", max_record_s = "0", retention_s = "overwrite";
  std::string claim_timeout_s = "1000";
  bool t_spill = false;
  std::string sp_ret_bytes = "0", sp_ret_ms = "0", sp_segment = "64MiB", sp_fsync = "interval", sp_interval = "1000";
  std::string t_unix_group;
  bool a_spill = false;
  std::string a_ret_bytes, a_ret_ms, a_segment, a_fsync, a_interval;
};

// True once no busd holds the bus's lock (busd takes it for its whole life).
bool wait_busd_gone(const std::string& bus, std::chrono::milliseconds limit) {
  const std::string lock = bus_paths(bus).lock;
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    const int fd = ::open(lock.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return true;
    const bool free = ::flock(fd, LOCK_SH | LOCK_NB) == 0;
    ::close(fd);
    if (free) return true;
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

class BusCommands final : public Command {
 public:
  explicit BusCommands(CLI::App& app) {
    bus_cmd = sub(&app, "bus", "the bus itself");
    bus_cmd->require_subcommand(1);
    bus_delete = sub(bus_cmd, "delete", "stop the bus's busd, then remove every segment of the bus (attached processes keep their "
                                        "mappings; group consumers' poll fails: the bus was deleted)");
    bus_delete->add_flag("--purge", b_purge, "also remove its state dir: disk logs of spilled topics and committed offsets");
    bus_delete->footer("Example:\n  busctl --bus test bus delete --purge");
  }

  bool parsed() const override { return bus_cmd->parsed(); }

  int run(const Context& ctx) override {
    const Globals& g = ctx.g;
    std::ostream& out = ctx.out;
    std::ostream& err = ctx.err;
    // No attach: a bus whose registry is corrupt or of another version must be deletable.
    const std::string name = g.bus.empty() ? default_bus_name() : g.bus;
    if (auto ok = validate_name("bus", name); !ok) return fail(err, ok.error());
    if (!shm::Segment::exists(registry_segment_name(name)))
      return fail(err, Error{Errc::kNotFound, fmt::format("bus '{}' does not exist", name)});
    // Stop its busd first (committed offsets stay in the state dir), and wait until it is
    // gone: a busd still exiting would answer (and drop) a client of the next bus of the name.
    if (auto conn = BusdConnection::connect(name, std::chrono::seconds(2), /*autostart=*/false)) {
      (void)(*conn)->request({{"op", "shutdown"}}, std::chrono::seconds(2));
      if (!wait_busd_gone(name, std::chrono::seconds(5)))
        err << fmt::format("busctl: busd of bus '{}' did not exit within 5 s; deleting the bus anyway\n", name);
    }
    if (auto ok = Bus::destroy(name, b_purge); !ok) return fail(err, ok.error());
    if (g.json) out << json{{"deleted_bus", name}}.dump() << "\n";
    else out << fmt::format("deleted bus {}\n", name);
    return kOk;
  }

 private:
  CLI::App *bus_cmd, *bus_delete;
  bool b_purge = false;
};

}  // namespace

std::unique_ptr<Command> topic_commands(CLI::App& app) { return std::make_unique<TopicCommands>(app); }
std::unique_ptr<Command> bus_commands(CLI::App& app) { return std::make_unique<BusCommands>(app); }

}  // namespace shmbus::busctl
