// What busctl produce reads (tools/busctl/produce_input.h).
#include "tools/busctl/produce_input.h"

#include <istream>
#include <limits>
#include <streambuf>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tools/busctl/bytes.h"
#include "tools/busctl/command.h"

namespace shmbus::busctl {
namespace {

using json = nlohmann::json;

// Byte by byte through the stream's buffer: a record is sent as soon as its delimiter is
// read, so that a producer fed by a slow pipe sends each record when it comes.
bool read_until(std::streambuf& sb, const std::string& delimiter, std::string& out) {
  bool any = false;
  for (int c; (c = sb.sbumpc()) != std::char_traits<char>::eof();) {
    any = true;
    out += static_cast<char>(c);
    if (out.size() >= delimiter.size() && out.compare(out.size() - delimiter.size(), delimiter.size(), delimiter) == 0) {
      out.resize(out.size() - delimiter.size());
      return true;
    }
  }
  return any;
}

Result<std::uint64_t> json_uint(const json& j, const char* field, const std::string& where) {
  if (!j.is_number_unsigned())
    return tl::unexpected(usage(fmt::format("{}: \"{}\" must be a number from 0 up", where, field)));
  return j.get<std::uint64_t>();
}

Status json_headers(const json& hs, const std::string& where, InputRecord& r) {
  if (hs.is_object()) {  // {"name": "value", ...}
    for (const auto& [k, v] : hs.items()) {
      if (!v.is_string() && !v.is_null())
        return tl::unexpected(usage(fmt::format("{}: header \"{}\" must be a string or null", where, k)));
      r.headers.emplace_back(k, v.is_null() ? std::nullopt : std::optional<std::string>(v.get<std::string>()));
    }
    return {};
  }
  if (!hs.is_array()) return tl::unexpected(usage(fmt::format("{}: \"headers\" must be an array or an object", where)));
  for (const auto& h : hs) {  // [{"key": ..., "value": ...}] (value null: a null value), as consume --json prints them
    if (!h.is_object()) return tl::unexpected(usage(fmt::format("{}: each header must be an object with key and value", where)));
    auto k = get_bytes(h, "key", where + " header", true);
    if (!k) return tl::unexpected(k.error());
    auto v = get_bytes(h, "value", where + " header", true);
    if (!v) return tl::unexpected(v.error());
    if (!*k) return tl::unexpected(usage(fmt::format("{}: a header's key must not be null", where)));
    r.headers.emplace_back(std::move(**k), std::move(*v));
  }
  return {};
}

Status json_numbers(const json& j, const std::string& where, InputRecord& r) {
  if (auto p = j.find("partition"); p != j.end() && !p->is_null()) {
    auto n = json_uint(*p, "partition", where);
    if (!n) return tl::unexpected(n.error());
    if (*n > std::numeric_limits<std::uint32_t>::max()) return tl::unexpected(usage(fmt::format("{}: partition {} is out of range", where, *n)));
    r.partition = static_cast<std::uint32_t>(*n);
  }
  constexpr std::uint64_t kMaxMs = std::numeric_limits<std::int64_t>::max() / 1'000'000;
  if (auto t = j.find("timestamp_ns"); t != j.end()) {
    auto n = json_uint(*t, "timestamp_ns", where);
    if (!n) return tl::unexpected(n.error());
    if (*n > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
      return tl::unexpected(usage(fmt::format("{}: timestamp_ns {} is out of range", where, *n)));
    r.timestamp_ns = static_cast<std::int64_t>(*n);
  } else if (auto ms = j.find("timestamp"); ms != j.end()) {
    auto n = json_uint(*ms, "timestamp", where);
    if (!n) return tl::unexpected(n.error());
    if (*n > kMaxMs) return tl::unexpected(usage(fmt::format("{}: timestamp {} ms is out of range", where, *n)));
    r.timestamp_ns = static_cast<std::int64_t>(*n) * 1'000'000;
  }
  return {};
}

Result<InputRecord> parse_json(const std::string& chunk, const std::string& where) {
  json j = json::parse(chunk, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return tl::unexpected(usage(fmt::format("{}: not a JSON object", where)));
  for (const auto& [k, v] : j.items()) {
    static const char* const kKnown[] = {"key", "key_b64", "value", "value_b64", "headers", "partition", "timestamp",
                                         "timestamp_ns", "topic", "offset"};  // topic, offset: consume --json's, ignored
    bool known = false;
    for (const char* f : kKnown) known = known || k == f;
    if (!known) return tl::unexpected(usage(fmt::format("{}: unknown field \"{}\"", where, k)));
  }
  InputRecord r;
  auto key = get_bytes(j, "key", where, false);
  if (!key) return tl::unexpected(key.error());
  r.key = std::move(*key);
  auto value = get_bytes(j, "value", where, true);
  if (!value) return tl::unexpected(value.error());
  r.value = std::move(*value);
  if (auto hs = j.find("headers"); hs != j.end() && !hs->is_null())
    if (auto ok = json_headers(*hs, where, r); !ok) return tl::unexpected(ok.error());
  if (auto ok = json_numbers(j, where, r); !ok) return tl::unexpected(ok.error());
  return r;
}

}  // namespace

bool next_chunk(std::istream& in, const std::string& delimiter, std::string& out) {
  out.clear();
  std::streambuf* sb = in.rdbuf();
  return sb != nullptr && read_until(*sb, delimiter, out);
}

Result<InputRecord> parse_record(const InputFormat& f, std::string chunk, const std::string& where) {
  if (f.json) return parse_json(chunk, where);
  InputRecord r;
  if (f.key_delimiter) {
    const auto at = chunk.find(*f.key_delimiter);
    if (at == std::string::npos) return tl::unexpected(usage(fmt::format("{} has no key separator '{}'", where, *f.key_delimiter)));
    r.key = chunk.substr(0, at);
    chunk.erase(0, at + f.key_delimiter->size());
  }
  r.value = std::move(chunk);
  if (f.null_empty) {
    if (r.key && r.key->empty()) r.key.reset();
    if (r.value->empty()) r.value.reset();
  }
  return r;
}

}  // namespace shmbus::busctl
