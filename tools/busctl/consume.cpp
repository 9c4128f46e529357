// busctl consume: prints records of topics' partitions (named, or matching a pattern), or
// as a member of a group; can stop at the end that was there when it started (-e).
#include <regex.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "shmbus/consumer.h"
#include "tools/busctl/command.h"
#include "tools/busctl/record_format.h"
#include "tools/busctl/units.h"
#include "tools/time_text.h"

namespace shmbus::busctl {
namespace {

using json = nlohmann::json;
using Offsets = std::vector<std::pair<TopicPartition, std::uint64_t>>;

// Where each partition starts: --from earliest | latest | OFFSET | -N | @MS | @DATETIME.
struct From {
  enum { kEarliest, kLatest, kOffset, kBeforeEnd, kTime } kind = kEarliest;
  std::uint64_t n = 0;
  std::int64_t time_ns = 0;  // kTime
};

Result<From> parse_from(const std::string& text) {
  if (text == "earliest") return From{};
  if (text == "latest") return From{From::kLatest, 0};
  if (text.starts_with("@")) {  // kcat's -o s@MS; or a datetime as reset-offsets --to-datetime takes it
    const std::string when = text.substr(1);
    if (!when.empty() && when.find_first_not_of("0123456789") == std::string::npos) {
      auto ms = parse_count("--from", when);
      if (!ms || *ms > static_cast<std::uint64_t>(INT64_MAX / 1'000'000))
        return tl::unexpected(usage(fmt::format("--from '{}': milliseconds since the epoch out of range", text)));
      return From{From::kTime, 0, static_cast<std::int64_t>(*ms) * 1'000'000};
    }
    auto ns = timetext::parse_datetime_ns(when);
    if (!ns)
      return tl::unexpected(usage(fmt::format("--from '{}': after @, milliseconds since the epoch or a datetime "
                                              "(2026-11-30T23:05:00, with .sss and Z or +hh:mm): {}", text, ns.error().message)));
    return From{From::kTime, 0, *ns};
  }
  const bool relative = !text.empty() && text[0] == '-';
  auto n = parse_count("--from", relative ? text.substr(1) : text);
  if (!n)
    return tl::unexpected(usage(fmt::format("--from '{}': use earliest, latest, an offset, -N (N before the end) or @MS / @DATETIME "
                                            "(the first record at or after that time)", text)));
  return From{relative ? From::kBeforeEnd : From::kOffset, *n};
}

// The offset N records before the end of a partition, or its first readable one (the disk
// log's first for a spilled topic).
std::uint64_t before_end(const TopicInfo& t, const PartitionInfo& p, std::uint64_t n) {
  std::uint64_t first = p.start_offset;
  if (t.config.spill.enabled && p.disk_end_offset > p.disk_start_offset) first = std::min(first, p.disk_start_offset);
  return p.end_offset - std::min(p.end_offset - first, n);
}

bool same(const TopicPartition& tp, const ConsumedRecord& r) { return tp.partition == r.partition && tp.topic == r.topic; }

class ConsumeCommand final : public Command {
 public:
  explicit ConsumeCommand(CLI::App& app) {
    consume = sub(&app, "consume", "print records");
    consume->add_option("topics", c_topics, "topic(s)");
    consume->add_option("--pattern", c_pattern, "every topic whose name matches this regex (POSIX extended; anchor it: '^orders-')");
    consume->add_option("--partition,-p", c_partition, "partition (default: all; with one topic)");
    consume->add_option("--from,-o", c_from, "earliest | latest | OFFSET | -N: N records before the end, per partition | @MS or @DATETIME: the "
                                              "first record at or after that time (default earliest)");
    consume->add_option("--count,-c", c_count, "stop after N records");
    consume->add_flag("--exit-at-end,-e", c_exit_at_end, "stop once every partition's end at the start was reached");
    consume->add_option("--timeout-ms", c_timeout, "stop after MS without a record (default: wait)");
    consume->add_option("--format,-f", c_format, "kcat-like: %t %p %o %k %v %T %K %S %h %%, \\n \\t (default '%v\\n'); "
                                                 "%K %S: key, value size (-1 null)");
    consume->add_option("--encode", c_encode, "raw | hex | base64: how --format prints keys, values, header values (default raw)");
    consume->add_option("--group", c_group, "consume as a member of this group (busd assigns partitions; what was printed is committed, "
                                            "a partition's before it is given up in a rebalance; a refused commit is said on stderr, exit 1)");
    consume->footer("Examples:\n  busctl consume orders --from earliest --count 10 --format '%t/%p@%o %k=%v\\n'\n"
                    "  busctl consume orders --from -5 -e --encode hex --format '%p %o %k %v\\n'\n"
                    "  busctl consume orders --from @2026-11-30T23:05:00 -e --format '%T %k %v\\n'\n"
                    "  busctl consume --pattern '^orders-' -e --json\n"
                    "  busctl consume orders --group billing --timeout-ms 500 --json");
  }

  bool parsed() const override { return consume->parsed(); }

  int run(const Context& ctx) override {
    if (auto ok = options(); !ok) return fail(ctx.err, ok.error());
    auto bus = attach(ctx.g, false);
    if (!bus) return fail(ctx.err, bus.error());
    auto topics = resolve(**bus);
    if (!topics) return fail(ctx.err, topics.error());
    ConsumerConfig cc;
    cc.auto_offset_reset = from.kind == From::kLatest ? OffsetReset::kLatest : OffsetReset::kEarliest;
    cc.enable_auto_commit = false;  // we commit what we printed, no more
    cc.client_name = "busctl";
    // A partition taken away: what we printed of it is committed first, so that its next
    // owner starts after it (and it is never committed again: it is not ours any more).
    cc.on_revoked = [this, &ctx](const std::vector<TopicPartition>& tps) { commit_printed(ctx, &tps, false); };
    auto consumer = Consumer::create(*bus, cc);
    if (!consumer) return fail(ctx.err, consumer.error());
    self = &*consumer;
    if (auto ok = start(*consumer, *topics); !ok) return fail(ctx.err, ok.error());
    catch_stop_signals();
    std::signal(SIGPIPE, SIG_IGN);
    return poll_loop(ctx, *consumer);
  }

 private:
  Status options() {
    auto c = parse_optional_count("--count", c_count);
    if (!c) return tl::unexpected(c.error());
    count = *c;
    auto t = parse_optional_count("--timeout-ms", c_timeout);
    if (!t) return tl::unexpected(t.error());
    if (*t && **t > 86'400'000'000ull) return tl::unexpected(usage("--timeout-ms is over a thousand days"));
    timeout_ms = *t ? static_cast<std::int64_t>(**t) : -1;
    auto f = parse_from(c_from);
    if (!f) return tl::unexpected(f.error());
    from = *f;
    auto e = parse_encoding(c_encode);
    if (!e) return tl::unexpected(e.error());
    auto rf = RecordFormat::compile(c_format, *e);
    if (!rf) return tl::unexpected(rf.error());
    format = std::move(*rf);
    if (c_topics.empty() == c_pattern.empty()) return tl::unexpected(usage("give topics or --pattern REGEX (one of the two)"));
    if (!c_partition.empty() && c_topics.size() != 1) return tl::unexpected(usage("--partition needs exactly one topic"));
    if (!c_group.empty() && (!c_partition.empty() || from.kind == From::kOffset || from.kind == From::kBeforeEnd ||
                             from.kind == From::kTime || c_exit_at_end))
      return tl::unexpected(usage("--group takes partitions and offsets from the group: no --partition, --from OFFSET | -N | @TIME "
                                  "or -e with it"));
    return {};
  }

  // The topics named, or those matching --pattern now (topics created later are not picked up).
  Result<std::vector<TopicInfo>> resolve(Bus& bus) {
    std::vector<TopicInfo> out;
    if (c_pattern.empty()) {
      for (const auto& name : c_topics) {
        auto t = bus.describe_topic(name);
        if (!t) return tl::unexpected(t.error());
        out.push_back(std::move(*t));
      }
      return out;
    }
    // POSIX regcomp, not std::regex: GCC 12's <regex> warns (maybe-uninitialized) under ASan.
    regex_t re;
    if (const int rc = ::regcomp(&re, c_pattern.c_str(), REG_EXTENDED | REG_NOSUB); rc != 0) {
      char why[256];
      ::regerror(rc, &re, why, sizeof why);
      return tl::unexpected(usage(fmt::format("--pattern '{}' is not a regex: {}", c_pattern, why)));
    }
    std::vector<std::string> matched;
    for (const auto& listed : bus.list_topics())
      if (::regexec(&re, listed.name.c_str(), 0, nullptr, 0) == 0) matched.push_back(listed.name);
    ::regfree(&re);
    for (const auto& name : matched) {
      auto t = bus.describe_topic(name);  // with its partitions' offsets
      if (t) out.push_back(std::move(*t));  // else deleted since it was listed
    }
    if (out.empty()) return make_error(Errc::kNotFound, fmt::format("no topic matches --pattern '{}'", c_pattern));
    return out;
  }

  // Assigns (or joins the group), moves to --from, and notes the ends for -e.
  Status start(Consumer& consumer, const std::vector<TopicInfo>& topics) {
    std::vector<std::string> names;
    std::vector<TopicPartition> tps;
    for (const auto& t : topics) {
      names.push_back(t.name);
      for (std::uint32_t p = 0; p < t.config.partitions; ++p) tps.push_back({t.name, p});
    }
    if (!c_partition.empty()) {
      auto p = parse_partition(c_partition, topics[0].name, topics[0].config.partitions);
      if (!p) return tl::unexpected(p.error());
      tps = {{topics[0].name, *p}};
    }
    if (!c_group.empty()) return consumer.subscribe(names, c_group);
    if (auto ok = consumer.assign(tps); !ok) return ok;
    std::vector<std::optional<Consumer::OffsetAndTimestamp>> at_time;
    if (from.kind == From::kTime) {
      std::vector<std::pair<TopicPartition, std::int64_t>> times;
      for (const auto& tp : tps) times.push_back({tp, from.time_ns});
      auto found = consumer.offsets_for_times(times);
      if (!found) return tl::unexpected(found.error());
      at_time = std::move(*found);
    }
    for (std::size_t i = 0; i < tps.size(); ++i) {
      const TopicPartition& tp = tps[i];
      const TopicInfo& t = *std::find_if(topics.begin(), topics.end(), [&](const TopicInfo& i) { return i.name == tp.topic; });
      const PartitionInfo& p = t.partitions.at(tp.partition);
      if (from.kind == From::kOffset || from.kind == From::kBeforeEnd)
        if (auto ok = consumer.seek(tp, from.kind == From::kOffset ? from.n : before_end(t, p, from.n)); !ok) return ok;
      if (from.kind == From::kTime)  // none at or after the time: from the end
        if (auto ok = at_time[i] ? consumer.seek(tp, at_time[i]->offset) : consumer.seek_to_end(tp); !ok) return ok;
      if (c_exit_at_end) ends.push_back({tp, p.end_offset});
    }
    return {};
  }

  // -e: true once every partition's position reached the end noted at the start.
  bool at_end(const Consumer& consumer) {
    std::erase_if(ends, [&](const auto& e) {
      auto pos = consumer.position(e.first);
      return !pos || *pos >= e.second;
    });
    return ends.empty();
  }

  // Commits the next offset after what was printed of `only` (or of every partition) and
  // forgets it. A failure is said on stderr and makes the exit status 1 (the records may be
  // printed again by the partition's next owner), except one that `retry` leaves for the
  // next commit: busd not reachable (restarting) while the partitions are still ours.
  void commit_printed(const Context& ctx, const std::vector<TopicPartition>* only, bool retry) {
    Offsets todo;
    std::erase_if(printed_next, [&](const auto& e) {
      if (only && std::find(only->begin(), only->end(), e.first) == only->end()) return false;
      todo.push_back(e);
      return true;
    });
    if (todo.empty() || !self) return;
    auto ok = self->commit(todo);
    if (ok) return;
    if (retry && ok.error().code != Errc::kInvalidArgument) {
      for (auto& e : todo) printed_next.push_back(std::move(e));  // again next time
      return;
    }
    ctx.err << fmt::format("busctl: {}; records printed after the committed offsets may be printed again by another member\n",
                           ok.error().message);
    commit_failed = true;
  }

  // Prints until --count, -e, --timeout-ms or a signal; as a group member, commits what it printed.
  int poll_loop(const Context& ctx, Consumer& consumer) {
    std::uint64_t seen = 0;
    const auto slice = std::chrono::milliseconds(100);
    std::int64_t idle_ms = 0;
    while (!g_stop && (!count || seen < *count) && !(c_exit_at_end && at_end(consumer))) {
      auto batch = consumer.poll(timeout_ms >= 0 ? std::min<std::chrono::milliseconds>(slice, std::chrono::milliseconds(timeout_ms - idle_ms)) : slice);
      if (!batch) return fail(ctx.err, batch.error());
      if (batch->empty()) {
        idle_ms += 100;
        if (timeout_ms >= 0 && idle_ms >= timeout_ms) break;
        continue;
      }
      idle_ms = 0;
      for (const auto& r : *batch) {
        if (count && seen >= *count) break;
        ctx.out << (ctx.g.json ? record_json(r).dump() + "\n" : format.render(r));
        ++seen;
        auto at = std::find_if(printed_next.begin(), printed_next.end(), [&](const auto& e) { return same(e.first, r); });
        if (at == printed_next.end()) printed_next.push_back({TopicPartition{std::string(r.topic), r.partition}, r.offset + 1});
        else at->second = r.offset + 1;
      }
      ctx.out.flush();
      if (!ctx.out) return kRuntime;
      if (!c_group.empty()) commit_printed(ctx, nullptr, true);
    }
    if (!c_group.empty()) {
      // Commit exactly what was printed: positions may be past records left in the batch.
      commit_printed(ctx, nullptr, false);
      (void)consumer.close();
    }
    if (consumer.lost() > 0)
      ctx.err << fmt::format("busctl: {} records were overwritten before they could be read\n", consumer.lost());
    return commit_failed ? kRuntime : kOk;
  }

  CLI::App* consume;
  std::vector<std::string> c_topics;
  std::string c_pattern, c_partition, c_from = "earliest", c_count, c_timeout, c_format = "%v\\n", c_encode = "raw", c_group;
  bool c_exit_at_end = false;
  std::optional<std::uint64_t> count;
  std::int64_t timeout_ms = -1;
  From from;
  RecordFormat format;
  Offsets ends;  // -e: partitions not yet at their end, and that end
  // --group: the offset after the last record printed of each partition we own, not yet committed.
  Offsets printed_next;
  Consumer* self = nullptr;
  bool commit_failed = false;
};

}  // namespace

std::unique_ptr<Command> consume_command(CLI::App& app) { return std::make_unique<ConsumeCommand>(app); }

}  // namespace shmbus::busctl
