// busctl's parsing of sizes and counts as operators type them.
#include "tools/busctl/units.h"

#include <cctype>
#include <charconv>
#include <string>

#include <fmt/format.h>

namespace shmbus {

Result<std::uint64_t> parse_size(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) ++i;
  if (i == 0)
    return make_error(Errc::kInvalidArgument, fmt::format("size '{}' must start with a whole number (e.g. 1048576, 64KiB, 1MiB)", text));
  std::uint64_t n = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + i, n);
  if (ec != std::errc()) return make_error(Errc::kInvalidArgument, fmt::format("size '{}' is too large", text));
  std::string unit(text.substr(i));
  for (auto& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  std::uint64_t mult = 0;
  if (unit.empty() || unit == "b") mult = 1;
  else if (unit == "k" || unit == "kib") mult = 1ull << 10;
  else if (unit == "m" || unit == "mib") mult = 1ull << 20;
  else if (unit == "g" || unit == "gib") mult = 1ull << 30;
  else if (unit == "kb") mult = 1000;
  else if (unit == "mb") mult = 1000'000;
  else if (unit == "gb") mult = 1000'000'000;
  else
    return make_error(Errc::kInvalidArgument,
                      fmt::format("size '{}' has an unknown unit '{}' (use B, KiB, MiB, GiB, KB, MB, GB)", text, text.substr(i)));
  if (n > UINT64_MAX / mult) return make_error(Errc::kInvalidArgument, fmt::format("size '{}' is too large", text));
  return n * mult;
}

Result<std::uint64_t> parse_count(std::string_view what, std::string_view text) {
  std::uint64_t n = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (text.empty() || ec != std::errc() || p != text.data() + text.size())
    return make_error(Errc::kInvalidArgument, fmt::format("{} '{}' is not a whole number >= 0", what, text));
  return n;
}

}  // namespace shmbus
