// busctl log dump: a spilled topic's segment file, record by record, and whether it is whole.
#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bus/disk_log.h"
#include "tools/busctl/bytes.h"
#include "tools/busctl/command.h"

namespace shmbus::busctl {
namespace {

using json = nlohmann::json;

class LogCommands final : public Command {
 public:
  explicit LogCommands(CLI::App& app) {
    log_cmd = sub(&app, "log", "spilled topics' disk logs");
    log_cmd->require_subcommand(1);
    log_dump = sub(log_cmd, "dump", "print a segment file's records and validate it (exit 1 if it is damaged)");
    log_dump->add_option("file", l_file, "a segment file: <state dir>/<topic>-<partition>/<base offset>.log")->required();
    log_dump->add_flag("--summary", l_quiet, "only the summary line");
    log_dump->footer("Example:\n  busctl log dump ~/.local/state/shmbus/default/orders-0/00000000000000000000.log");
  }

  bool parsed() const override { return log_cmd->parsed(); }

  int run(const Context& ctx) override {
    const Globals& g = ctx.g;
    std::ostream& out = ctx.out;
    std::ostream& err = ctx.err;
    json records = json::array();
    auto r = disklog::scan_segment(l_file, [&](const disklog::FrameView& v) {
      if (l_quiet) return;
      const auto& h = v.header;
      if (disklog::is_gap(h)) {  // offsets that are not records, and why
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
      const bool null_value = h.attributes == disklog::kAttrNullValue;
      if (g.json) {
        json rec = {{"offset", h.offset},           {"position", v.position},       {"size", h.size},
                    {"timestamp_ns", h.timestamp_ns}, {"headers_bytes", h.headers_len}, {"value_bytes", h.value_len}};
        // Bytes as consume --json gives them: a string when UTF-8, else *_b64.
        put_bytes(rec, "key", h.key_len == disklog::kNullKeyLen ? std::nullopt : std::optional<Bytes>(as_bytes(key)));
        put_bytes(rec, "value", null_value ? std::nullopt : std::optional<Bytes>(as_bytes(value.substr(0, 64))));
        records.push_back(std::move(rec));
      } else {
        std::string shown(null_value ? "(null)" : value.substr(0, 48));
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

 private:
  CLI::App *log_cmd, *log_dump;
  std::string l_file;
  bool l_quiet = false;
};

}  // namespace

std::unique_ptr<Command> log_commands(CLI::App& app) { return std::make_unique<LogCommands>(app); }

}  // namespace shmbus::busctl
