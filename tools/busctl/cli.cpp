// busctl's command tree and its commands.
#include "tools/busctl/cli.h"

#include <unistd.h>

#include <csignal>
#include <thread>
#include <cstring>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bus/disk_log.h"
#include "tools/busctl/doctor.h"
#include "bus/group_client.h"
#include "bus/names.h"
#include "bus/paths.h"
#include "tools/busctl/top.h"
#include "shm/segment.h"
#include "tools/busctl/units.h"
#include "shmbus/bus.h"
#include "shmbus/consumer.h"
#include "shmbus/producer.h"

namespace shmbus {
namespace {

using json = nlohmann::json;

constexpr int kOk = 0, kRuntime = 1, kUsage = 2;

volatile std::sig_atomic_t g_stop = 0;
extern "C" void on_signal(int) { g_stop = 1; }

struct Globals {
  std::string bus;
  bool json = false;
};

int fail(std::ostream& err, const Error& e) {
  err << "busctl: " << e.message << "\n";
  return e.code == Errc::kInvalidArgument ? kUsage : kRuntime;
}


Result<std::shared_ptr<Bus>> attach(const Globals& g, bool create, const std::string& unix_group = "") {
  BusOptions o;
  o.name = g.bus;
  o.create = create;
  if (!unix_group.empty()) o.group = unix_group;
  return Bus::attach(o);
}

// Spill options as typed; an empty string leaves the setting as it is.
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

// kcat-like format: %t topic, %p partition, %o offset, %k key, %v value, %T timestamp (ms),
// %h headers (k=v,...), \n \t \\ escapes.
std::string render(const std::string& fmt_str, const ConsumedRecord& r) {
  std::string out;
  for (std::size_t i = 0; i < fmt_str.size(); ++i) {
    const char c = fmt_str[i];
    if (c == '\\' && i + 1 < fmt_str.size()) {
      const char n = fmt_str[++i];
      out += n == 'n' ? '\n' : n == 't' ? '\t' : n;
      continue;
    }
    if (c != '%' || i + 1 == fmt_str.size()) {
      out += c;
      continue;
    }
    switch (fmt_str[++i]) {
      case 't': out += r.topic; break;
      case 'p': out += std::to_string(r.partition); break;
      case 'o': out += std::to_string(r.offset); break;
      case 'k': if (r.key) out += as_string(*r.key); break;
      case 'v': out += as_string(r.value); break;
      case 'T': out += std::to_string(r.timestamp_ns / 1'000'000); break;
      case 'h': {
        auto it = r.headers();
        bool first = true;
        while (auto h = it.next()) {
          if (!first) out += ',';
          first = false;
          out += fmt::format("{}={}", h->key, as_string(h->value));
        }
        break;
      }
      case '%': out += '%'; break;
      default: out += '%'; out += fmt_str[i];
    }
  }
  return out;
}

// shmbus_bench beside busctl (installed), in the build tree's bench/, or $SHMBUS_BENCH_BIN.
std::string bench_binary() {
  if (const char* e = std::getenv("SHMBUS_BENCH_BIN"); e && *e) return e;
  auto beside = executable_beside_self({"shmbus_bench", "bench/shmbus_bench"});
  return beside.empty() ? std::string("shmbus_bench") : beside;
}

// docs/busctl.md and the bash completion are generated from the command tree below, so
// they cannot drift from it (a test compares the file with `busctl help-markdown`).
void markdown(const CLI::App& app, const std::string& path, std::string& out) {
  if (!path.empty()) {
    out += fmt::format("\n## `busctl {}`\n\n{}\n", path, app.get_description());
    std::string opts;
    for (const CLI::Option* o : app.get_options()) {
      if (o->get_name() == "--help" || o->get_name() == "--bus" || o->get_name() == "--json") continue;
      std::string desc = o->get_description();
      for (std::size_t at = desc.find('|'); at != std::string::npos; at = desc.find('|', at + 2)) desc.replace(at, 1, "\\|");
      opts += fmt::format("| `{}` | {} |\n", o->get_positional() ? o->get_name() : o->get_name(false, true), desc);
    }
    if (!opts.empty()) out += "\n| argument | meaning |\n| --- | --- |\n" + opts;
    if (!app.get_footer().empty()) out += "\n```\n" + app.get_footer() + "\n```\n";
  }
  for (const CLI::App* sub : app.get_subcommands({})) markdown(*sub, path.empty() ? sub->get_name() : path + " " + sub->get_name(), out);
}

void completion_cases(const CLI::App& app, const std::string& path, std::string& out) {
  std::string words;
  for (const CLI::App* sub : app.get_subcommands({})) words += sub->get_name() + " ";
  for (const CLI::Option* o : app.get_options())
    if (!o->get_positional()) words += o->get_name(false, true) + " ";
  out += fmt::format("    \"{}\") words=\"{}\" ;;\n", path, words);
  for (const CLI::App* sub : app.get_subcommands({})) completion_cases(*sub, path.empty() ? sub->get_name() : path + " " + sub->get_name(), out);
}

std::string bash_completion(const CLI::App& app) {
  std::string cases;
  completion_cases(app, "", cases);
  return "# bash completion for busctl: source it, or put it in /etc/bash_completion.d/busctl\n"
         "# (generated by `busctl completion bash`)\n"
         "_busctl() {\n"
         "  local cur=${COMP_WORDS[COMP_CWORD]} path=\"\" w words\n"
         "  for w in \"${COMP_WORDS[@]:1:COMP_CWORD-1}\"; do\n"
         "    case \"$w\" in -*) ;; *) if [ -z \"$path\" ]; then path=$w; else path=\"$path $w\"; fi ;; esac\n"
         "  done\n"
         "  case \"$path\" in\n" + cases +
         "    *) words=\"--json --bus --help\" ;;\n"
         "  esac\n"
         "  COMPREPLY=($(compgen -W \"$words --json --bus --help\" -- \"$cur\"))\n"
         "}\n"
         "complete -o default -F _busctl busctl\n";
}

}  // namespace

namespace {

int busctl_run(int argc, const char* const* argv, std::istream& in, std::ostream& out, std::ostream& err) {
  CLI::App app{"busctl: inspect and operate a shmbus bus"};
  app.require_subcommand(1);
  Globals g;
  app.add_option("--bus", g.bus, "bus name (default: $SHMBUS_BUS or 'default')");
  app.add_flag("--json", g.json, "machine-readable output");
  auto sub = [&](CLI::App* parent, const char* name, const char* desc) {
    CLI::App* s = parent->add_subcommand(name, desc);
    s->fallthrough();  // --bus / --json after the command, like kubectl
    return s;
  };

  CLI::App* topic = sub(&app, "topic", "create, list, describe, delete topics");
  topic->require_subcommand(1);
  std::string t_name, partitions_s = "1", capacity_s = "1MiB", max_record_s = "0", retention_s = "overwrite";
  CLI::App* t_create = sub(topic, "create", "create a topic");
  t_create->add_option("name", t_name, "topic name")->required();
  t_create->add_option("--partitions", partitions_s, "number of partitions (default 1)");
  t_create->add_option("--capacity", capacity_s, "ring bytes per partition, a power of two (default 1MiB)");
  t_create->add_option("--max-record", max_record_s, "largest key+headers+value (default: capacity/4)");
  t_create->add_option("--retention", retention_s, "overwrite | block (default overwrite)");
  std::string claim_timeout_s = "1000";
  t_create->add_option("--claim-timeout-ms", claim_timeout_s,
                       "a send unfinished this long (its producer stopped, slow or dead) is aborted (default 1000)");
  bool t_spill = false;
  std::string sp_ret_bytes = "0", sp_ret_ms = "0", sp_segment = "64MiB", sp_fsync = "interval", sp_interval = "1000";
  t_create->add_flag("--spill", t_spill, "busd appends every record to a disk log: replay from disk, restore after reboot");
  t_create->add_option("--retention-bytes", sp_ret_bytes, "spill: disk bytes kept per partition, whole segments (default 0: no limit)");
  t_create->add_option("--retention-ms", sp_ret_ms, "spill: segments older than this are deleted (default 0: no limit)");
  t_create->add_option("--segment-bytes", sp_segment, "spill: a segment file rolls past this size (default 64MiB)");
  t_create->add_option("--fsync", sp_fsync, "spill: never | interval | always (default interval)");
  t_create->add_option("--fsync-interval-ms", sp_interval, "spill: with --fsync interval (default 1000)");
  std::string t_unix_group;
  t_create->add_option("--group", t_unix_group, "a bus this creates is shared with this Unix group (mode 0660), else owner-only");
  t_create->footer("Examples:\n  busctl topic create orders --partitions 8 --capacity 4MiB --retention block\n"
                   "  busctl topic create audit --spill --retention-bytes 10GiB --fsync always");
  CLI::App* t_alter = sub(topic, "alter", "change a topic's spill settings, or turn spilling on");
  t_alter->add_option("name", t_name, "topic name")->required();
  bool a_spill = false;
  std::string a_ret_bytes, a_ret_ms, a_segment, a_fsync, a_interval;
  t_alter->add_flag("--spill", a_spill, "turn spilling on (it cannot be turned off)");
  t_alter->add_option("--retention-bytes", a_ret_bytes, "disk bytes kept per partition (0: no limit)");
  t_alter->add_option("--retention-ms", a_ret_ms, "segments older than this are deleted (0: no limit)");
  t_alter->add_option("--segment-bytes", a_segment, "segment size, from the next segment on");
  t_alter->add_option("--fsync", a_fsync, "never | interval | always");
  t_alter->add_option("--fsync-interval-ms", a_interval, "with --fsync interval");
  t_alter->footer("Examples:\n  busctl topic alter audit --retention-bytes 1GiB --retention-ms 86400000\n  busctl topic alter orders --spill --fsync always");
  CLI::App* t_list = sub(topic, "list", "list topics");
  t_list->footer("Example:\n  busctl topic list --json");
  CLI::App* t_describe = sub(topic, "describe", "partitions, offsets and bytes of a topic");
  t_describe->add_option("name", t_name, "topic name")->required();
  t_describe->footer("Example:\n  busctl topic describe orders   # START/END offsets, bytes, writers, gates; DISK-* for spilled topics");
  CLI::App* t_delete = sub(topic, "delete", "delete a topic");
  t_delete->add_option("name", t_name, "topic name")->required();
  t_delete->footer("Example:\n  busctl topic delete orders     # its segments, and its disk log if it spills");

  std::string p_topic, p_sep, p_partition;
  bool p_have_sep = false;
  CLI::App* produce = sub(&app, "produce", "send one record per line of stdin");
  produce->add_option("topic", p_topic, "topic")->required();
  produce->add_option("--partition", p_partition, "partition (default: by key, else sticky)");
  produce->add_option("--key-separator", p_sep, "split each line into key<SEP>value")->each([&](const std::string&) { p_have_sep = true; });
  produce->footer("Examples:\n  printf 'k1:v1\\nk2:v2\\n' | busctl produce orders --key-separator :\n  seq 1 1000 | busctl produce orders --partition 0");

  std::string c_topic, c_partition, c_from = "earliest", c_count, c_timeout, c_format = "%v\\n";
  CLI::App* consume = sub(&app, "consume", "print records");
  consume->add_option("topic", c_topic, "topic")->required();
  consume->add_option("--partition", c_partition, "partition (default: all)");
  consume->add_option("--from", c_from, "earliest | latest | OFFSET (default earliest)");
  consume->add_option("--count", c_count, "stop after N records");
  consume->add_option("--timeout-ms", c_timeout, "stop after MS without a record (default: wait)");
  consume->add_option("--format", c_format, "kcat-like: %t %p %o %k %v %T %h, \\n \\t (default '%v\\n')");
  std::string c_group;
  consume->add_option("--group", c_group, "consume as a member of this group (busd assigns partitions, offsets are committed)");
  consume->footer("Examples:\n  busctl consume orders --from earliest --count 10 --format '%t/%p@%o %k=%v\\n'\n"
                  "  busctl consume orders --group billing --timeout-ms 500 --json");

  CLI::App* status = sub(&app, "status", "busd: pid, uptime, version, socket, state dir (does not start it)");
  status->footer("Example:\n  busctl status --json");
  CLI::App* group_cmd = sub(&app, "group", "consumer groups (starts busd if it is not running)");
  group_cmd->require_subcommand(1);
  std::string g_name, g_topic, g_to;
  CLI::App* g_list = sub(group_cmd, "list", "list groups");
  g_list->footer("Example:\n  busctl group list");
  CLI::App* g_describe = sub(group_cmd, "describe", "members, assignment, committed offsets and lag");
  g_describe->add_option("name", g_name, "group")->required();
  g_describe->footer("Example:\n  busctl group describe billing   # members, partitions, committed offsets, lag");
  CLI::App* g_reset = sub(group_cmd, "reset-offsets", "set a group's committed offsets (refused while it has live members)");
  g_reset->add_option("name", g_name, "group")->required();
  g_reset->add_option("--topic", g_topic, "topic")->required();
  g_reset->add_option("--to", g_to, "earliest | latest | OFFSET")->required();
  g_reset->footer("Example:\n  busctl group reset-offsets billing --topic orders --to earliest");

  CLI::App* bench = app.add_subcommand("bench", "latency / throughput / idle benchmarks (runs shmbus_bench; see its --help)");
  bench->prefix_command();  // everything after `bench` goes to shmbus_bench as it is

  bool d_fix = false, d_all = false;
  CLI::App* doctor = sub(&app, "doctor", "find stale or broken segments, dead consumers holding producers, a full /dev/shm");
  doctor->add_flag("--fix", d_fix, "repair or remove what can be, saying what it did");
  doctor->add_flag("--all", d_all, "every bus on the machine, not only --bus");
  doctor->footer("Examples:\n  busctl doctor --all\n  busctl doctor --fix");

  CLI::App* bus_cmd = sub(&app, "bus", "the bus itself");
  bus_cmd->require_subcommand(1);
  CLI::App* bus_delete = sub(bus_cmd, "delete", "remove every segment of the bus (attached processes keep their mappings)");
  bool b_purge = false;
  bus_delete->add_flag("--purge", b_purge, "also remove its state dir: disk logs of spilled topics and committed offsets");
  bus_delete->footer("Example:\n  busctl --bus test bus delete --purge");

  bool top_once = false;
  std::uint64_t top_interval = 1000;
  CLI::App* top = sub(&app, "top", "live view: topics, partitions, produce/consume rates, lag, spill, busd health");
  top->add_flag("--once", top_once, "print one frame (two looks --interval-ms apart) and exit");
  top->add_option("--interval-ms", top_interval, "time between looks (default 1000)");
  top->footer("Examples:\n  busctl top\n  busctl top --once --json | jq '.groups[].lag'");

  CLI::App* completion = sub(&app, "completion", "print a shell completion script");
  std::string shell = "bash";
  completion->add_option("shell", shell, "bash");
  completion->footer("Example:\n  busctl completion bash > /etc/bash_completion.d/busctl");
  CLI::App* help_md = app.add_subcommand("help-markdown", "print the command reference (docs/busctl.md) in Markdown");
  help_md->group("");  // hidden

  CLI::App* log_cmd = sub(&app, "log", "spilled topics' disk logs");
  log_cmd->require_subcommand(1);
  std::string l_file;
  bool l_quiet = false;
  CLI::App* log_dump = sub(log_cmd, "dump", "print a segment file's records and validate it (exit 1 if it is damaged)");
  log_dump->add_option("file", l_file, "a segment file: <state dir>/<topic>-<partition>/<base offset>.log")->required();
  log_dump->add_flag("--summary", l_quiet, "only the summary line");
  log_dump->footer("Example:\n  busctl log dump ~/.local/state/shmbus/default/orders-0/00000000000000000000.log");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    out << app.help();
    return kOk;
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) {
      out << app.help();
      return kOk;
    }
    err << "busctl: " << e.what() << "\n";
    return kUsage;
  }

  if (help_md->parsed()) {
    std::string md =
        "# busctl\n\n"
        "Generated by `busctl help-markdown` from busctl's own command tree (tests/test_cli.cpp checks that this\n"
        "file matches). Every command takes `--bus NAME` (default `$SHMBUS_BUS` or `default`) and `--json`\n"
        "(machine-readable output) before or after it, and `--help`. Exit codes: 0 ok, 1 runtime error,\n"
        "2 usage error.\n";
    markdown(app, "", md);
    md += R"(
## JSON output

With `--json` every command prints JSON on stdout (one object or array; `consume` and
`top` print one object per line), and errors still go to stderr with the exit code.

- `topic create | describe`, `topic list` (an array of these): `name`, `partitions`,
  `capacity` (ring bytes per partition), `max_record`, `retention` (`overwrite`|`block`),
  `claim_timeout_ms`, `shm_bytes`, `created_ns`, `spill` (null, or `retention_bytes`, `retention_ms`,
  `segment_bytes`, `fsync`, `fsync_interval_ms`), and with describe `partition_info`: per
  partition `partition`, `start_offset` (oldest in the ring), `end_offset` (next to be
  written), `bytes_used`, `capacity`, `writers`, `gates`, `dead_claims_reclaimed`,
  `claims_timed_out`, `late_commits_refused`, `waiters_reaped`, `gates_reaped`, and for
  spilled topics `disk`: `start_offset`, `end_offset` (everything below is on disk),
  `bytes`, `lag` (end_offset minus disk end), `lost`, `state` (`waiting`|`spilling`|`error`).
- `topic delete`: `deleted`. `bus delete`: `deleted_bus`. `produce`: `topic`, `records`.
- `consume`: per record `topic`, `partition`, `offset`, `key` (null for none), `value`,
  `timestamp` (ms), `timestamp_ns`, `headers` (array of `key`, `value`).
- `status`: `running`, and when it runs `pid`, `version`, `protocol`, `uptime_ms`, `bus`,
  `socket`, `state_dir`, `groups`, `members`.
- `group list`: array of `group`, `state`, `members`, `generation`. `group describe`:
  `state`, `generation`, `assignor`, `members` (`member_id`, `pid`, `name`, `partitions`),
  `partitions` (`topic`, `partition`, `committed`, `end_offset`, `lag`, `member_id`).
  `group reset-offsets`: `partitions` (`topic`, `partition`, `committed`).
- `top`: `bus`, `interval_ms`, `busd` (as `status`, or `running: false` and `problem`),
  `topics` (as `topic describe`, plus `produce_rate` per topic and per partition,
  records/s, and `fill_pct` per partition), `groups` (`group`, `state`, `generation`,
  `members` (count), `lag`, `consume_rate` (records/s, from committed offsets), and
  `partitions` as in `group describe` plus `consume_rate`).
- `doctor`: array of `severity` (`ok`|`warning`|`problem`), `bus`, `file`, `problem`, `fix`,
  `fixed`.
- `log dump`: `file`, `base_offset`, `bytes`, `valid_bytes`, `records` (frames), `first_offset`,
  `last_offset`, `status` (`ok`|`torn-tail`|`corrupt`), `problem`, and unless `--summary`
  `records_list`: `offset`, `position`, `size`, `timestamp_ns`, `key`, `headers_bytes`,
  `value_bytes`, `value` (first 64 bytes), or for gap frames `offset`, `position`, `gap`
  (`lost`|`aborted`), `count`.
)";
    out << md;
    return kOk;
  }
  if (completion->parsed()) {
    if (shell != "bash") return fail(err, Error{Errc::kInvalidArgument, fmt::format("completion for '{}': only bash", shell)});
    out << bash_completion(app);
    return kOk;
  }
  if (top->parsed()) {
    if (top_interval < 10 || top_interval > 3'600'000)
      return fail(err, Error{Errc::kInvalidArgument, "--interval-ms must be from 10 to 3600000"});
    auto bus = attach(g, false);
    if (!bus) return fail(err, bus.error());
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    TopSample before = top_sample(**bus);
    for (bool first = true; !g_stop; first = false) {
      for (std::uint64_t slept = 0; slept < top_interval && !g_stop; slept += 10) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      if (g_stop && !first) break;
      TopSample after = top_sample(**bus);
      json frame = top_frame(before, after);
      frame["bus"] = (*bus)->name();
      if (g.json) out << frame.dump() << "\n";
      else out << (top_once ? "" : "\x1b[H\x1b[2J") << fmt::format("bus {}\n", (*bus)->name()) << top_render(frame);
      out.flush();
      if (top_once || !out) break;
      before = std::move(after);
    }
    return kOk;
  }
  if (doctor->parsed()) {
    std::optional<std::string> only;
    if (!d_all) {
      only = g.bus.empty() ? default_bus_name() : g.bus;
      if (auto ok = validate_name("bus", *only); !ok) return fail(err, ok.error());
    }
    const auto findings = run_doctor(only, d_fix);
    bool unfixed = false;
    json arr = json::array();
    for (const auto& f : findings) {
      unfixed |= f.severity == "problem" && !f.fixed;
      arr.push_back({{"severity", f.severity}, {"bus", f.bus}, {"file", f.file}, {"problem", f.problem}, {"fix", f.fix}, {"fixed", f.fixed}});
      if (g.json) continue;
      if (f.severity == "ok") out << fmt::format("ok       {}\n", f.problem);
      else
        out << fmt::format("{:<8} {}{}\n         {}: {}\n", f.severity, f.problem, f.file.empty() ? "" : fmt::format(" ({})", f.file),
                           f.fixed ? "fixed" : (d_fix ? "not fixed" : "fix"), f.fix);
    }
    if (g.json) out << arr.dump() << "\n";
    return unfixed ? kRuntime : kOk;
  }
  if (bench->parsed()) {
    const std::string bin = bench_binary();
    std::vector<std::string> args = {bin};
    for (const auto& a : bench->remaining()) args.push_back(a);
    if (args.size() == 1) args.push_back("--help");
    std::vector<char*> argv2;
    for (auto& a : args) argv2.push_back(a.data());
    argv2.push_back(nullptr);
    out.flush();
    ::execv(bin.c_str(), argv2.data());
    err << fmt::format("busctl: cannot run {}: {} (set SHMBUS_BENCH_BIN)\n", bin, std::strerror(errno));
    return kRuntime;
  }
  if (status->parsed() || group_cmd->parsed()) {
    auto bus = attach(g, false);
    if (!bus) return fail(err, bus.error());
    auto conn = BusdConnection::connect((*bus)->name(), std::chrono::seconds(5), /*autostart=*/!status->parsed());
    if (!conn) {
      if (status->parsed() && conn.error().code == Errc::kNotFound) {
        if (g.json) out << json{{"running", false}, {"bus", (*bus)->name()}}.dump() << "\n";
        else out << fmt::format("busd is not running for bus {}\n", (*bus)->name());
        return kRuntime;
      }
      return fail(err, conn.error());
    }
    json req;
    if (status->parsed()) req = {{"op", "status"}};
    else if (g_list->parsed()) req = {{"op", "group_list"}};
    else if (g_describe->parsed()) req = {{"op", "group_describe"}, {"group", g_name}};
    else req = {{"op", "reset_offsets"}, {"group", g_name}, {"topic", g_topic}, {"to", g_to}};
    auto r = (*conn)->request(req, std::chrono::seconds(5));
    if (!r) return fail(err, r.error());
    json j = *r;
    j.erase("re");
    j.erase("ok");
    if (g.json) {
      if (status->parsed()) j["running"] = true;
      out << (g_list->parsed() ? j["groups"] : j).dump() << "\n";
      return kOk;
    }
    if (status->parsed()) {
      out << fmt::format("busd pid {}  version {}  protocol {}  uptime {:.1f} s\nbus {}  socket {}\nstate dir {}\ngroups {}  members {}\n",
                         j["pid"].get<int>(), j["version"].get<std::string>(), j["protocol"].get<int>(),
                         j["uptime_ms"].get<double>() / 1000, j["bus"].get<std::string>(), j["socket"].get<std::string>(),
                         j["state_dir"].get<std::string>(), j["groups"].get<int>(), j["members"].get<int>());
    } else if (g_list->parsed()) {
      out << fmt::format("{:<32} {:>12} {:>8} {:>10}\n", "GROUP", "STATE", "MEMBERS", "GENERATION");
      for (const auto& row : j["groups"])
        out << fmt::format("{:<32} {:>12} {:>8} {:>10}\n", row["group"].get<std::string>(), row["state"].get<std::string>(),
                           row["members"].get<int>(), row["generation"].get<std::uint64_t>());
    } else if (g_describe->parsed()) {
      out << fmt::format("group {}  state {}  generation {}  assignor {}\n", g_name, j["state"].get<std::string>(),
                         j["generation"].get<std::uint64_t>(), j.value("assignor", "-"));
      out << fmt::format("{:<36} {:>8} {:<16} {}\n", "MEMBER", "PID", "NAME", "PARTITIONS");
      for (const auto& m : j["members"]) {
        std::string parts;
        for (const auto& tp : m["partitions"]) parts += fmt::format("{}{}-{}", parts.empty() ? "" : ",", tp[0].get<std::string>(), tp[1].get<int>());
        out << fmt::format("{:<36} {:>8} {:<16} {}\n", m["member_id"].get<std::string>(), m["pid"].get<int>(),
                           m["name"].get<std::string>(), parts);
      }
      out << fmt::format("{:<24} {:>9} {:>12} {:>12} {:>10}  {}\n", "TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "MEMBER");
      for (const auto& p : j["partitions"])
        out << fmt::format("{:<24} {:>9} {:>12} {:>12} {:>10}  {}\n", p["topic"].get<std::string>(), p["partition"].get<int>(),
                           p["committed"].is_null() ? "-" : p["committed"].dump(), p["end_offset"].get<std::uint64_t>(),
                           p["lag"].is_null() ? "-" : p["lag"].dump(), p["member_id"].is_null() ? "-" : p["member_id"].get<std::string>());
    } else {
      for (const auto& p : j["partitions"])
        out << fmt::format("{} {}-{} committed offset now {}\n", g_name, p["topic"].get<std::string>(), p["partition"].get<int>(),
                           p["committed"].get<std::uint64_t>());
    }
    return kOk;
  }
  if (bus_delete->parsed()) {
    // No attach: a bus whose registry is corrupt or of another version must be deletable.
    const std::string name = g.bus.empty() ? default_bus_name() : g.bus;
    if (auto ok = validate_name("bus", name); !ok) return fail(err, ok.error());
    if (!shm::Segment::exists(registry_segment_name(name)))
      return fail(err, Error{Errc::kNotFound, fmt::format("bus '{}' does not exist", name)});
    // Stop its busd first (committed offsets stay in the state dir).
    if (auto conn = BusdConnection::connect(name, std::chrono::seconds(2), /*autostart=*/false))
      (void)(*conn)->request({{"op", "shutdown"}}, std::chrono::seconds(2));
    if (auto ok = Bus::destroy(name, b_purge); !ok) return fail(err, ok.error());
    if (g.json) out << json{{"deleted_bus", name}}.dump() << "\n";
    else out << fmt::format("deleted bus {}\n", name);
    return kOk;
  }
  if (t_create->parsed()) {
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
  if (t_alter->parsed()) {
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
  if (t_list->parsed() || t_describe->parsed() || t_delete->parsed()) {
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

  if (log_dump->parsed()) {
    json records = json::array();
    auto r = disklog::scan_segment(l_file, [&](const disklog::FrameView& v) {
      if (l_quiet) return;
      const auto& h = v.header;
      if (h.attributes != 0) {  // a gap frame: offsets that are not records, and why
        const char* why = h.attributes == disklog::kAttrLost ? "lost" : "aborted";
        if (g.json)
          records.push_back({{"offset", h.offset}, {"position", v.position}, {"gap", why}, {"count", disklog::frame_last(h) - h.offset + 1}});
        else
          out << fmt::format("offsets {:>12}..{}  position {:>10}  {} ({})\n", h.offset, disklog::frame_last(h), v.position, why,
                             h.attributes == disklog::kAttrLost ? "overwritten in the ring before busd spilled them" : "never records");
        return;
      }
      const std::uint64_t klen = h.key_len == disklog::kNullKeyLen ? 0 : h.key_len;
      const std::string_view key(reinterpret_cast<const char*>(v.payload.data()), klen);
      const std::string_view value(reinterpret_cast<const char*>(v.payload.data()) + klen + h.headers_len, h.value_len);
      if (g.json) {
        records.push_back({{"offset", h.offset}, {"position", v.position}, {"size", h.size}, {"timestamp_ns", h.timestamp_ns},
                           {"key", h.key_len == disklog::kNullKeyLen ? json(nullptr) : json(std::string(key))},
                           {"headers_bytes", h.headers_len}, {"value_bytes", h.value_len},
                           {"value", std::string(value.substr(0, 64))}});
      } else {
        std::string shown(value.substr(0, 48));
        for (char& c : shown)
          if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '.';
        out << fmt::format("offset {:>12}  position {:>10}  size {:>7}  ts {}  key {}  value {}{}\n", h.offset, v.position, h.size,
                           h.timestamp_ns, h.key_len == disklog::kNullKeyLen ? std::string("(null)") : fmt::format("'{}'", key),
                           shown, value.size() > 48 ? "..." : "");
      }
    });
    if (!r) return fail(err, r.error());
    const bool ok = r->end == disklog::ScanEnd::kClean;
    const char* verdict = r->end == disklog::ScanEnd::kClean ? "ok" : r->end == disklog::ScanEnd::kTornTail ? "torn-tail" : "corrupt";
    if (g.json) {
      json j = {{"file", l_file}, {"base_offset", r->base_offset}, {"bytes", r->file_size}, {"valid_bytes", r->valid_bytes},
                {"records", r->records}, {"first_offset", r->first_offset ? json(*r->first_offset) : json(nullptr)},
                {"last_offset", r->last_offset ? json(*r->last_offset) : json(nullptr)}, {"status", verdict},
                {"problem", r->problem.empty() ? json(nullptr) : json(r->problem)}};
      if (!l_quiet) j["records_list"] = records;
      out << j.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
    } else {
      out << fmt::format("{}: base offset {}, {} records ({}..{}), {} bytes, {} valid: {}\n", l_file, r->base_offset, r->records,
                         r->first_offset ? std::to_string(*r->first_offset) : "-", r->last_offset ? std::to_string(*r->last_offset) : "-",
                         r->file_size, r->valid_bytes, verdict);
    }
    if (!ok) err << "busctl: " << r->problem << "\n";
    return ok ? kOk : kRuntime;
  }

  if (produce->parsed()) {
    std::optional<std::uint32_t> partition;
    if (!p_partition.empty()) {
      auto p = parse_count("--partition", p_partition);
      if (!p) return fail(err, p.error());
      if (*p > UINT32_MAX) return fail(err, Error{Errc::kInvalidArgument, fmt::format("--partition {} is out of range", *p)});
      partition = static_cast<std::uint32_t>(*p);
    }
    if (p_have_sep && p_sep.empty()) return fail(err, Error{Errc::kInvalidArgument, "--key-separator must not be empty"});
    auto bus = attach(g, false);
    if (!bus) return fail(err, bus.error());
    auto producer = Producer::create(*bus);
    if (!producer) return fail(err, producer.error());
    std::string line;
    std::uint64_t n = 0, lineno = 0;
    while (std::getline(in, line)) {
      ++lineno;
      Message m;
      std::string_view v = line;
      if (p_have_sep) {
        const auto at = line.find(p_sep);
        if (at == std::string::npos) {
          err << fmt::format("busctl: line {} has no key separator '{}'; {} records were sent before it\n", lineno, p_sep, n);
          return kRuntime;
        }
        m.key = as_bytes(std::string_view(line).substr(0, at));
        v = std::string_view(line).substr(at + p_sep.size());
      }
      m.value = as_bytes(v);
      auto r = producer->send(p_topic, m, partition);
      if (!r) {
        err << fmt::format("busctl: line {}: {}; {} records were sent before it\n", lineno, r.error().message, n);
        return r.error().code == Errc::kInvalidArgument ? kUsage : kRuntime;
      }
      ++n;
    }
    if (g.json) out << json{{"topic", p_topic}, {"records", n}}.dump() << "\n";
    return kOk;
  }

  if (consume->parsed()) {
    std::optional<std::uint64_t> count, from_offset;
    std::int64_t timeout_ms = -1;
    if (!c_count.empty()) {
      auto c = parse_count("--count", c_count);
      if (!c) return fail(err, c.error());
      count = *c;
    }
    if (!c_timeout.empty()) {
      auto t = parse_count("--timeout-ms", c_timeout);
      if (!t) return fail(err, t.error());
      if (*t > 86'400'000'000ull) return fail(err, Error{Errc::kInvalidArgument, "--timeout-ms is over a thousand days"});
      timeout_ms = static_cast<std::int64_t>(*t);
    }
    if (c_from != "earliest" && c_from != "latest") {
      auto o = parse_count("--from", c_from);
      if (!o) return fail(err, Error{Errc::kInvalidArgument, fmt::format("--from '{}': use earliest, latest or an offset", c_from)});
      from_offset = *o;
    }
    auto bus = attach(g, false);
    if (!bus) return fail(err, bus.error());
    auto t = (*bus)->describe_topic(c_topic);
    if (!t) return fail(err, t.error());
    std::vector<TopicPartition> tps;
    if (!c_group.empty() && (!c_partition.empty() || from_offset))
      return fail(err, Error{Errc::kInvalidArgument, "--group takes partitions and offsets from the group: no --partition or --from OFFSET with it"});
    if (!c_partition.empty()) {
      auto p = parse_count("--partition", c_partition);
      if (!p) return fail(err, p.error());
      if (*p >= t->config.partitions)
        return fail(err, Error{Errc::kInvalidArgument, fmt::format("topic '{}' has {} partitions, no partition {}", c_topic,
                                                                   t->config.partitions, *p)});
      tps.push_back({c_topic, static_cast<std::uint32_t>(*p)});
    } else {
      for (std::uint32_t p = 0; p < t->config.partitions; ++p) tps.push_back({c_topic, p});
    }
    ConsumerConfig cc;
    cc.auto_offset_reset = c_from == "latest" ? OffsetReset::kLatest : OffsetReset::kEarliest;
    cc.enable_auto_commit = false;  // we commit what we printed, no more
    cc.client_name = "busctl";
    auto consumer = Consumer::create(*bus, cc);
    if (!consumer) return fail(err, consumer.error());
    if (!c_group.empty()) {
      if (auto ok = consumer->subscribe({c_topic}, c_group); !ok) return fail(err, ok.error());
    } else if (auto ok = consumer->assign(tps); !ok) {
      return fail(err, ok.error());
    }
    if (from_offset)
      for (const auto& tp : tps)
        if (auto ok = consumer->seek(tp, *from_offset); !ok) return fail(err, ok.error());
    std::signal(SIGINT, on_signal);
    std::signal(SIGTERM, on_signal);
    std::signal(SIGPIPE, SIG_IGN);
    std::uint64_t seen = 0;
    std::vector<std::pair<TopicPartition, std::uint64_t>> printed_next;
    const auto slice = std::chrono::milliseconds(100);
    std::int64_t idle_ms = 0;
    while (!g_stop && (!count || seen < *count)) {
      auto batch = consumer->poll(timeout_ms >= 0 ? std::min<std::chrono::milliseconds>(slice, std::chrono::milliseconds(timeout_ms - idle_ms)) : slice);
      if (!batch) return fail(err, batch.error());
      if (batch->empty()) {
        idle_ms += 100;
        if (timeout_ms >= 0 && idle_ms >= timeout_ms) break;
        continue;
      }
      idle_ms = 0;
      for (const auto& r : *batch) {
        if (count && seen >= *count) break;
        if (g.json) {
          json j = {{"topic", r.topic},         {"partition", r.partition}, {"offset", r.offset},
                    {"key", nullptr},           {"value", std::string(as_string(r.value))},
                    {"timestamp", r.timestamp_ns / 1'000'000}, {"timestamp_ns", r.timestamp_ns}};
          if (r.key) j["key"] = std::string(as_string(*r.key));
          json hs = json::array();
          auto it = r.headers();
          while (auto h = it.next()) hs.push_back({{"key", std::string(h->key)}, {"value", std::string(as_string(h->value))}});
          j["headers"] = hs;
          out << j.dump(-1, ' ', false, json::error_handler_t::replace) << "\n";
        } else {
          out << render(c_format, r);
        }
        ++seen;
        bool found = false;
        for (auto& [tp, o] : printed_next)
          if (tp.topic == r.topic && tp.partition == r.partition) {
            o = r.offset + 1;
            found = true;
          }
        if (!found) printed_next.push_back({TopicPartition{std::string(r.topic), r.partition}, r.offset + 1});
      }
      out.flush();
      if (!out) return kRuntime;
      if (!c_group.empty() && !printed_next.empty()) (void)consumer->commit(printed_next);
    }
    if (!c_group.empty()) {
      // Commit exactly what was printed: positions may be past records left in the batch.
      if (auto ok = consumer->commit(printed_next); !ok) return fail(err, ok.error());
      (void)consumer->close();
    }
    if (consumer->lost() > 0)
      err << fmt::format("busctl: {} records were overwritten before they could be read\n", consumer->lost());
    return kOk;
  }
  return kUsage;
}

}  // namespace

int busctl_main(int argc, const char* const* argv, std::istream& in, std::ostream& out, std::ostream& err) {
  try {
    return busctl_run(argc, argv, in, out, err);
  } catch (const std::exception& e) {
    // A reply of an unexpected shape (another busd version?) is an error, not an abort.
    err << "busctl: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace shmbus
