// Durations and datetimes as operators type them, for busd's options and busctl's
// reset-offsets: "500ms", "30s", "5m", "2h", "7d", "1h30m", or Kafka's ISO-8601 "P7D",
// "PT1H30M", "P1DT2H"; datetimes "2026-11-30T23:05:00", with ".sss" and "Z" or "+hh:mm".
#pragma once

#include <cctype>
#include <cstdint>
#include <ctime>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "shmbus/error.h"

namespace shmbus::timetext {

namespace detail {

// Reads digits at `at`; false when there are none or they overflow.
inline bool number(std::string_view s, std::size_t& at, std::int64_t& out) {
  const std::size_t from = at;
  out = 0;
  while (at < s.size() && std::isdigit(static_cast<unsigned char>(s[at]))) {
    if (out > (INT64_MAX - 9) / 10) return false;
    out = out * 10 + (s[at++] - '0');
  }
  return at > from;
}

inline bool scaled(std::int64_t n, std::int64_t unit_ns, std::int64_t& total) {
  if (n > (INT64_MAX - total) / unit_ns) return false;
  total += n * unit_ns;
  return true;
}

}  // namespace detail

// Nanoseconds; refuses negatives, fractions, an empty text, unknown units and overflow.
inline Result<std::int64_t> parse_duration_ns(std::string_view s) {
  auto bad = [&] {
    return make_error(Errc::kInvalidArgument,
                      fmt::format("'{}' is not a duration: use e.g. 500ms, 30s, 5m, 2h, 7d, 1h30m or ISO-8601 PT1H30M, P7D", s));
  };
  constexpr std::int64_t kS = 1'000'000'000, kMin = 60 * kS, kH = 60 * kMin, kD = 24 * kH;
  std::int64_t total = 0;
  std::size_t at = 0;
  if (!s.empty() && (s[0] == 'P' || s[0] == 'p')) {  // ISO-8601: PnD, then T with nH nM nS
    ++at;
    bool time = false, any = false;
    while (at < s.size()) {
      if (s[at] == 'T' || s[at] == 't') {
        if (time) return bad();
        time = true;
        ++at;
        continue;
      }
      std::int64_t n;
      if (!detail::number(s, at, n) || at >= s.size()) return bad();
      const char u = static_cast<char>(std::toupper(static_cast<unsigned char>(s[at++])));
      const std::int64_t unit = !time && u == 'D' ? kD : time && u == 'H' ? kH : time && u == 'M' ? kMin : time && u == 'S' ? kS : 0;
      if (!unit || !detail::scaled(n, unit, total)) return bad();
      any = true;
    }
    if (!any) return bad();
    return total;
  }
  if (s.empty()) return bad();
  while (at < s.size()) {
    std::int64_t n;
    if (!detail::number(s, at, n)) return bad();
    const std::size_t u = at;
    while (at < s.size() && std::isalpha(static_cast<unsigned char>(s[at]))) ++at;
    const std::string_view unit = s.substr(u, at - u);
    const std::int64_t ns = unit == "ns" ? 1 : unit == "us" ? 1000 : unit == "ms" ? 1'000'000 : unit == "s" ? kS
                            : unit == "m" ? kMin : unit == "h" ? kH : unit == "d" ? kD : 0;
    if (!ns || !detail::scaled(n, ns, total)) return bad();
  }
  return total;
}

// Nanoseconds since the epoch. Without a zone, local time (as Kafka's --to-datetime).
inline Result<std::int64_t> parse_datetime_ns(std::string_view s) {
  auto bad = [&] {
    return make_error(Errc::kInvalidArgument,
                      fmt::format("'{}' is not a datetime: use YYYY-MM-DDTHH:MM:SS[.sss][Z|+hh:mm|-hh:mm]", s));
  };
  std::tm tm{};
  std::size_t at = 0;
  std::int64_t f[6];
  const char seps[6] = {'-', '-', 'T', ':', ':', 0};
  const std::size_t widths[6] = {4, 2, 2, 2, 2, 2};
  for (int i = 0; i < 6; ++i) {
    const std::size_t from = at;
    if (!detail::number(s, at, f[i]) || at - from != widths[i]) return bad();
    if (seps[i]) {
      if (at >= s.size() || (s[at] != seps[i] && !(seps[i] == 'T' && (s[at] == ' ' || s[at] == 't')))) return bad();
      ++at;
    }
  }
  std::int64_t frac_ns = 0;
  if (at < s.size() && s[at] == '.') {
    ++at;
    std::int64_t scale = 100'000'000;
    const std::size_t from = at;
    while (at < s.size() && std::isdigit(static_cast<unsigned char>(s[at]))) {
      frac_ns += (s[at++] - '0') * scale;
      scale /= 10;
    }
    if (at == from || at - from > 9) return bad();
  }
  tm.tm_year = static_cast<int>(f[0] - 1900);
  tm.tm_mon = static_cast<int>(f[1] - 1);
  tm.tm_mday = static_cast<int>(f[2]);
  tm.tm_hour = static_cast<int>(f[3]);
  tm.tm_min = static_cast<int>(f[4]);
  tm.tm_sec = static_cast<int>(f[5]);
  if (f[1] < 1 || f[1] > 12 || f[2] < 1 || f[2] > 31 || f[3] > 23 || f[4] > 59 || f[5] > 60) return bad();
  std::time_t secs;
  if (at == s.size()) {
    tm.tm_isdst = -1;
    secs = std::mktime(&tm);
  } else if ((s[at] == 'Z' || s[at] == 'z') && at + 1 == s.size()) {
    secs = ::timegm(&tm);
  } else if ((s[at] == '+' || s[at] == '-') && s.size() - at == 6 && s[at + 3] == ':') {
    const int sign = s[at] == '+' ? 1 : -1;
    std::size_t p = at + 1;
    std::int64_t hh, mm;
    if (!detail::number(s, p, hh) || p != at + 3) return bad();
    ++p;
    if (!detail::number(s, p, mm) || p != s.size() || hh > 23 || mm > 59) return bad();
    secs = ::timegm(&tm) - sign * (hh * 3600 + mm * 60);
  } else {
    return bad();
  }
  if (secs < 0) return bad();
  return static_cast<std::int64_t>(secs) * 1'000'000'000 + frac_ns;
}

}  // namespace shmbus::timetext
