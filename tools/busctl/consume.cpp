// busctl consume: prints records of a topic's partitions, or as a member of a group.
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
#include "tools/busctl/units.h"

namespace shmbus::busctl {
namespace {

using json = nlohmann::json;

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

class ConsumeCommand final : public Command {
 public:
  explicit ConsumeCommand(CLI::App& app) {
    consume = sub(&app, "consume", "print records");
    consume->add_option("topic", c_topic, "topic")->required();
    consume->add_option("--partition", c_partition, "partition (default: all)");
    consume->add_option("--from", c_from, "earliest | latest | OFFSET (default earliest)");
    consume->add_option("--count", c_count, "stop after N records");
    consume->add_option("--timeout-ms", c_timeout, "stop after MS without a record (default: wait)");
    consume->add_option("--format", c_format, "kcat-like: %t %p %o %k %v %T %h, \\n \\t (default '%v\\n')");
    consume->add_option("--group", c_group, "consume as a member of this group (busd assigns partitions, offsets are committed)");
    consume->footer("Examples:\n  busctl consume orders --from earliest --count 10 --format '%t/%p@%o %k=%v\\n'\n"
                    "  busctl consume orders --group billing --timeout-ms 500 --json");
  }

  bool parsed() const override { return consume->parsed(); }

  int run(const Context& ctx) override {
    const Globals& g = ctx.g;
    std::ostream& err = ctx.err;
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
    catch_stop_signals();
    std::signal(SIGPIPE, SIG_IGN);
    return poll_loop(ctx, consumer, count, timeout_ms);
  }

 private:
  // Prints until --count, --timeout-ms or a signal; as a group member, commits what it printed.
  int poll_loop(const Context& ctx, Result<Consumer>& consumer, std::optional<std::uint64_t> count, std::int64_t timeout_ms) {
    std::ostream& out = ctx.out;
    std::ostream& err = ctx.err;
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
        print_record(ctx, r);
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

  void print_record(const Context& ctx, const ConsumedRecord& r) {
    const Globals& g = ctx.g;
    std::ostream& out = ctx.out;
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
  }

  CLI::App* consume;
  std::string c_topic, c_partition, c_from = "earliest", c_count, c_timeout, c_format = "%v\\n";
  std::string c_group;
};

}  // namespace

std::unique_ptr<Command> consume_command(CLI::App& app) { return std::make_unique<ConsumeCommand>(app); }

}  // namespace shmbus::busctl
