// busctl produce: records from stdin, split by a delimiter (one per line by default) or
// one JSON object per line; headers, timestamps, null keys and values as kcat sends them.
#include <cstdint>
#include <istream>
#include <limits>
#include <optional>
#include <ostream>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "shmbus/producer.h"
#include "tools/busctl/bytes.h"
#include "tools/busctl/command.h"
#include "tools/busctl/produce_input.h"
#include "tools/busctl/units.h"

namespace shmbus::busctl {
namespace {

using json = nlohmann::json;

class ProduceCommand final : public Command {
 public:
  explicit ProduceCommand(CLI::App& app) {
    produce = sub(&app, "produce", "send records read from stdin: one a line, split by -D, or JSON objects");
    produce->add_option("topic", p_topic, "topic")->required();
    produce->add_option("--partition,-p", p_partition, "partition (default: by key, else sticky); checked before any input is read");
    produce->add_option("--key-separator,-K", p_key_sep, "split each record into key<SEP>value (escapes as for -D)")
        ->each([&](const std::string&) { p_have_key_sep = true; });
    produce->add_option("--delimiter,-D", p_delim, "record delimiter (default \\n); escapes \\n \\r \\t \\0 \\\\ \\xHH");
    produce->add_option("--header,-H", p_headers, "header NAME=VALUE on every record (repeatable)");
    produce->add_option("--timestamp", p_timestamp, "timestamp of every record, ms since the epoch (default: now)");
    produce->add_flag("--null-empty,-Z", p_null_empty, "send an empty key or value as null (a null value is a tombstone)");
    produce->add_option("--acks", p_acks, "memory | spilled | fsynced (default memory): each record is sent only once the one "
                                          "before is in shared memory, written to the disk log by busd, or synced too; "
                                          "spilled and fsynced need a topic with --spill and retention block");
    produce->add_option("--input", p_input, "text | json (default text): json is one object a line with key, value, headers, "
                                            "partition, timestamp; key_b64 / value_b64 for bytes");
    produce->footer(
        "Examples:\n  printf 'k1:v1\\nk2:v2\\n' | busctl produce orders -K :\n  seq 1 1000 | busctl produce orders --partition 0\n"
        "  printf 'k\\0v\\0' | busctl produce orders -D '\\0' -K '\\x01' -H trace=abc --timestamp 1700000000000\n"
        "  echo '{\"key\":\"k1\",\"value\":null}' | busctl produce orders --input json     # a tombstone\n"
        "  seq 1 10 | busctl produce payments --acks fsynced     # each on disk, synced, before the next\n"
        "  busctl consume orders --json -e | busctl produce orders-copy --input json");
  }

  bool parsed() const override { return produce->parsed(); }

  int run(const Context& ctx) override {
    InputFormat f;
    if (auto ok = options(f); !ok) return fail(ctx.err, ok.error());
    auto bus = attach(ctx.g, false);
    if (!bus) return fail(ctx.err, bus.error());
    auto t = (*bus)->describe_topic(p_topic);
    if (!t) return fail(ctx.err, t.error());
    if (!p_partition.empty()) {  // before any input is read: nothing is sent to a wrong partition
      auto p = parse_partition(p_partition, p_topic, t->config.partitions);
      if (!p) return fail(ctx.err, p.error());
      partition = *p;
    }
    ProducerConfig pc;
    pc.acks = acks;
    auto producer = Producer::create(*bus, pc);
    if (!producer) return fail(ctx.err, producer.error());
    std::uint64_t sent = 0;
    const int code = send_all(ctx, f, *producer, sent);
    if (code == kOk && ctx.g.json) ctx.out << json{{"topic", p_topic}, {"records", sent}}.dump() << "\n";
    return code;
  }

 private:
  // The options as an input format, headers and timestamp; false (and why) when one is bad.
  Status options(InputFormat& f) {
    if (p_input != "text" && p_input != "json") return tl::unexpected(usage(fmt::format("--input '{}': use text or json", p_input)));
    f.json = p_input == "json";
    if (p_acks == "memory") acks = Acks::kMemory;
    else if (p_acks == "spilled") acks = Acks::kSpilled;
    else if (p_acks == "fsynced") acks = Acks::kFsynced;
    else return tl::unexpected(usage(fmt::format("--acks '{}': use memory, spilled or fsynced", p_acks)));
    auto delim = unescape("--delimiter", p_delim);
    if (!delim) return tl::unexpected(delim.error());
    if (delim->empty()) return tl::unexpected(usage("--delimiter must not be empty"));
    f.delimiter = *delim;
    if (p_have_key_sep) {
      auto k = unescape("--key-separator", p_key_sep);
      if (!k) return tl::unexpected(k.error());
      if (k->empty()) return tl::unexpected(usage("--key-separator must not be empty"));
      f.key_delimiter = *k;
    }
    f.null_empty = p_null_empty;
    if (f.json && (f.key_delimiter || p_null_empty || f.delimiter != "\n"))
      return tl::unexpected(usage("--input json reads one object a line: no -K, -D or -Z with it"));
    for (const auto& h : p_headers) {
      const auto eq = h.find('=');
      if (eq == std::string::npos || eq == 0) return tl::unexpected(usage(fmt::format("--header '{}': use NAME=VALUE", h)));
      headers.emplace_back(h.substr(0, eq), h.substr(eq + 1));
    }
    auto ts = parse_optional_count("--timestamp", p_timestamp);
    if (!ts) return tl::unexpected(ts.error());
    if (*ts && **ts > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max() / 1'000'000))
      return tl::unexpected(usage(fmt::format("--timestamp {} is out of range (ms since the epoch)", **ts)));
    if (*ts) timestamp_ns = static_cast<std::int64_t>(**ts) * 1'000'000;
    return {};
  }

  // Reads and sends until the input ends; a bad record stops it (exit 1), saying how many were sent.
  int send_all(const Context& ctx, const InputFormat& f, Producer& producer, std::uint64_t& sent) {
    const char* unit = f.delimiter == "\n" ? "line" : "record";
    std::string chunk;
    for (std::uint64_t n = 1; next_chunk(ctx.in, f.delimiter, chunk); ++n) {
      if (f.json && chunk.find_first_not_of(" \t\r") == std::string::npos) continue;  // blank lines
      const std::string where = fmt::format("{} {}", unit, n);
      auto r = parse_record(f, std::move(chunk), where);
      auto ok = r ? send(producer, *r) : Status(tl::unexpected(r.error()));
      if (!ok) {
        ctx.err << fmt::format("busctl: {}{}; {} records were sent before it\n", r ? where + ": " : "", ok.error().message, sent);
        return kRuntime;
      }
      ++sent;
    }
    return kOk;
  }

  Status send(Producer& producer, const InputRecord& r) {
    std::vector<Header> hs;
    for (const auto& [k, v] : headers) hs.push_back(Header{k, as_bytes(v)});
    for (const auto& [k, v] : r.headers) hs.push_back(Header{k, v ? as_bytes(*v) : Bytes{}, !v});
    Message m;
    if (r.key) m.key = as_bytes(*r.key);
    if (r.value) m.value = as_bytes(*r.value);
    m.null_value = !r.value;
    m.headers = hs;
    m.timestamp_ns = r.timestamp_ns ? r.timestamp_ns : timestamp_ns;
    auto md = producer.send(p_topic, m, r.partition ? r.partition : partition);
    if (!md) return tl::unexpected(md.error());
    return {};
  }

  CLI::App* produce;
  std::string p_topic, p_partition, p_delim = "\\n", p_timestamp, p_input = "text", p_key_sep, p_acks = "memory";
  Acks acks = Acks::kMemory;
  std::vector<std::string> p_headers;
  bool p_null_empty = false, p_have_key_sep = false;
  std::optional<std::uint32_t> partition;
  std::vector<std::pair<std::string, std::string>> headers;
  std::int64_t timestamp_ns = 0;
};

}  // namespace

std::unique_ptr<Command> produce_command(CLI::App& app) { return std::make_unique<ProduceCommand>(app); }

}  // namespace shmbus::busctl
