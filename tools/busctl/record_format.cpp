// How busctl consume prints a record (tools/busctl/record_format.h).
#include "tools/busctl/record_format.h"

#include <fmt/format.h>

#include "tools/busctl/command.h"

namespace shmbus::busctl {

namespace {
constexpr std::string_view kEscapes = "tpokvTKSh%";
}  // namespace

Result<RecordFormat> RecordFormat::compile(std::string_view text, Encoding encoding) {
  RecordFormat f;
  f.encoding_ = encoding;
  std::string literal;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\\' && i + 1 < text.size()) {
      const char n = text[++i];
      literal += n == 'n' ? '\n' : n == 't' ? '\t' : n == 'r' ? '\r' : n == '0' ? '\0' : n;
      continue;
    }
    if (c != '%') {
      literal += c;
      continue;
    }
    if (i + 1 == text.size()) return tl::unexpected(usage("--format ends with a lone '%' (%% prints a %)"));
    const char e = text[++i];
    if (kEscapes.find(e) == std::string_view::npos)
      return tl::unexpected(usage(fmt::format("--format: unknown escape '%{}' (known: %t %p %o %k %v %T %K %S %h %%)", e)));
    if (e == '%') {
      literal += '%';
      continue;
    }
    if (!literal.empty()) f.pieces_.push_back({0, std::move(literal)});
    literal.clear();
    f.pieces_.push_back({e, {}});
  }
  if (!literal.empty()) f.pieces_.push_back({0, std::move(literal)});
  return f;
}

std::string RecordFormat::render(const ConsumedRecord& r) const {
  std::string out;
  for (const auto& p : pieces_) {
    switch (p.escape) {
      case 0: out += p.literal; break;
      case 't': out += r.topic; break;
      case 'p': out += std::to_string(r.partition); break;
      case 'o': out += std::to_string(r.offset); break;
      case 'k': if (r.key) out += encode(encoding_, as_string(*r.key)); break;
      case 'v': out += encode(encoding_, as_string(r.value)); break;
      case 'T': out += std::to_string(r.timestamp_ns / 1'000'000); break;
      case 'K': out += r.key ? std::to_string(r.key->size()) : "-1"; break;  // as kcat: -1 for null
      case 'S': out += r.null_value ? "-1" : std::to_string(r.value.size()); break;
      case 'h': {
        auto it = r.headers();
        bool first = true;
        while (auto h = it.next()) {
          if (!first) out += ',';
          first = false;
          out += h->key;  // a null value: the name alone (an empty one: "name=")
          if (!h->null_value) out += "=" + encode(encoding_, as_string(h->value));
        }
        break;
      }
    }
  }
  return out;
}

nlohmann::json record_json(const ConsumedRecord& r) {
  nlohmann::json j = {{"topic", r.topic}, {"partition", r.partition}, {"offset", r.offset}};
  put_bytes(j, "key", r.key);
  put_bytes(j, "value", r.null_value ? std::nullopt : std::optional<Bytes>(r.value));
  j["timestamp"] = r.timestamp_ns / 1'000'000;
  j["timestamp_ns"] = r.timestamp_ns;
  nlohmann::json hs = nlohmann::json::array();
  auto it = r.headers();
  while (auto h = it.next()) {
    nlohmann::json o = nlohmann::json::object();
    put_bytes(o, "key", as_bytes(h->key));
    put_bytes(o, "value", h->null_value ? std::nullopt : std::optional<Bytes>(h->value));
    hs.push_back(std::move(o));
  }
  j["headers"] = std::move(hs);
  return j;
}

}  // namespace shmbus::busctl
