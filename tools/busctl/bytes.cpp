// Bytes as an operator types and reads them (tools/busctl/bytes.h).
#include "tools/busctl/bytes.h"

#include <array>
#include <cstdint>

#include <fmt/format.h>

#include "tools/busctl/command.h"

namespace shmbus::busctl {
namespace {

constexpr std::string_view kBase64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int hex_digit(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

Result<std::string> unescape(std::string_view what, std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '\\') {
      out += text[i];
      continue;
    }
    if (i + 1 == text.size()) return tl::unexpected(usage(fmt::format("{} '{}' ends with a lone backslash", what, text)));
    switch (const char c = text[++i]) {
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case '0': out += '\0'; break;
      case '\\': out += '\\'; break;
      case 'x': {
        const int hi = i + 1 < text.size() ? hex_digit(text[i + 1]) : -1, lo = i + 2 < text.size() ? hex_digit(text[i + 2]) : -1;
        if (hi < 0 || lo < 0) return tl::unexpected(usage(fmt::format("{} '{}': \\x takes two hex digits", what, text)));
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
        break;
      }
      default:
        return tl::unexpected(usage(fmt::format("{} '{}': unknown escape '\\{}' (known: \\n \\r \\t \\0 \\\\ \\xHH)", what, text, c)));
    }
  }
  return out;
}

bool is_utf8(std::string_view s) noexcept {
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    // Lead byte: how many continuation bytes follow, and its bits of the code point.
    std::size_t n = 0;
    std::uint32_t cp = 0;
    if (c >= 0xc2 && c <= 0xdf) { n = 1; cp = c & 0x1fu; }
    else if (c >= 0xe0 && c <= 0xef) { n = 2; cp = c & 0x0fu; }
    else if (c >= 0xf0 && c <= 0xf4) { n = 3; cp = c & 0x07u; }
    else return false;
    if (i + n >= s.size()) return false;
    for (std::size_t k = 1; k <= n; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3f);
    }
    // Overlong forms, UTF-16 surrogates and code points past U+10FFFF are not UTF-8.
    if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    i += n + 1;
  }
  return true;
}

std::string to_base64(std::string_view s) {
  std::string out;
  out.reserve((s.size() + 2) / 3 * 4);
  for (std::size_t i = 0; i < s.size(); i += 3) {
    const std::size_t n = std::min<std::size_t>(3, s.size() - i);
    std::uint32_t v = 0;
    for (std::size_t k = 0; k < 3; ++k) v = (v << 8) | (k < n ? static_cast<unsigned char>(s[i + k]) : 0u);
    for (std::size_t k = 0; k < 4; ++k) out += k <= n ? kBase64[(v >> (18 - 6 * k)) & 0x3f] : '=';
  }
  return out;
}

Result<std::string> from_base64(std::string_view what, std::string_view s) {
  if (s.size() % 4 != 0) return tl::unexpected(usage(fmt::format("{}: base64 of {} characters (a multiple of 4 is needed)", what, s.size())));
  std::string out;
  for (std::size_t i = 0; i < s.size(); i += 4) {
    std::uint32_t v = 0;
    std::size_t pad = 0;
    for (std::size_t k = 0; k < 4; ++k) {
      const char c = s[i + k];
      const auto at = kBase64.find(c);
      if (c == '=' && i + 4 == s.size() && k >= 2) ++pad;
      else if (at == std::string_view::npos || pad) return tl::unexpected(usage(fmt::format("{}: '{}' is not base64", what, s)));
      v = (v << 6) | (c == '=' ? 0u : static_cast<std::uint32_t>(at));
    }
    for (std::size_t k = 0; k < 3 - pad; ++k) out += static_cast<char>((v >> (16 - 8 * k)) & 0xff);
  }
  return out;
}

std::string to_hex(std::string_view s) {
  std::string out;
  out.reserve(s.size() * 2);
  for (const char c : s) out += fmt::format("{:02x}", static_cast<unsigned char>(c));
  return out;
}

Result<Encoding> parse_encoding(std::string_view text) {
  if (text == "raw") return Encoding::kRaw;
  if (text == "hex") return Encoding::kHex;
  if (text == "base64") return Encoding::kBase64;
  return tl::unexpected(usage(fmt::format("--encode '{}': use raw, hex or base64", text)));
}

std::string encode(Encoding e, std::string_view s) {
  switch (e) {
    case Encoding::kHex: return to_hex(s);
    case Encoding::kBase64: return to_base64(s);
    case Encoding::kRaw: break;
  }
  return std::string(s);
}

void put_bytes(nlohmann::json& obj, const std::string& name, std::optional<Bytes> b) {
  if (!b) {
    obj[name] = nullptr;
    return;
  }
  const std::string_view s = as_string(*b);
  if (is_utf8(s)) obj[name] = std::string(s);
  else obj[name + "_b64"] = to_base64(s);
}

Result<std::optional<std::string>> get_bytes(const nlohmann::json& obj, const std::string& name, std::string_view where,
                                             bool required) {
  const auto text = obj.find(name), b64 = obj.find(name + "_b64");
  if (text != obj.end() && b64 != obj.end())
    return tl::unexpected(usage(fmt::format("{}: both \"{}\" and \"{}_b64\"", where, name, name)));
  if (b64 != obj.end()) {
    if (!b64->is_string()) return tl::unexpected(usage(fmt::format("{}: \"{}_b64\" must be a string", where, name)));
    auto bytes = from_base64(fmt::format("{}: \"{}_b64\"", where, name), b64->get_ref<const std::string&>());
    if (!bytes) return tl::unexpected(bytes.error());
    return std::optional<std::string>(std::move(*bytes));
  }
  if (text == obj.end()) {
    if (required) return tl::unexpected(usage(fmt::format("{}: no \"{}\" (or \"{}_b64\"; null for none)", where, name, name)));
    return std::optional<std::string>();
  }
  if (text->is_null()) return std::optional<std::string>();
  if (!text->is_string()) return tl::unexpected(usage(fmt::format("{}: \"{}\" must be a string or null", where, name)));
  return std::optional<std::string>(text->get<std::string>());
}

}  // namespace shmbus::busctl
