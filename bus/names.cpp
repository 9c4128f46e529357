#include "bus/names.h"

#include <cstdlib>

#include <fmt/format.h>
#include <xxhash.h>

namespace shmbus {

Status validate_name(std::string_view what, std::string_view name) {
  if (name.empty()) return make_error(Errc::kInvalidArgument, fmt::format("{} name is empty", what));
  if (name.size() > kMaxNameLength)
    return make_error(Errc::kInvalidArgument, fmt::format("{} name is {} characters long, the limit is {}", what,
                                                          name.size(), kMaxNameLength));
  if (name == "." || name == "..")
    return make_error(Errc::kInvalidArgument, fmt::format("{} name '{}' is reserved", what, name));
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                    c == '_' || c == '-';
    if (!ok) {
      const auto printable = static_cast<unsigned char>(c) >= 0x20 && static_cast<unsigned char>(c) < 0x7f;
      return make_error(Errc::kInvalidArgument,
                        printable ? fmt::format("{} name '{}' has the character '{}': allowed are A-Z a-z 0-9 . _ -",
                                                what, name, c)
                                  : fmt::format("{} name has the byte {:#04x}: allowed are A-Z a-z 0-9 . _ -", what,
                                                static_cast<unsigned>(static_cast<unsigned char>(c))));
    }
  }
  return {};
}

std::string default_bus_name() {
  const char* env = std::getenv("SHMBUS_BUS");
  return env && *env ? std::string(env) : std::string("default");
}

std::string bus_segment_prefix(std::string_view bus) { return fmt::format("shmbus.{}~", bus); }

std::string registry_segment_name(std::string_view bus) { return bus_segment_prefix(bus) + "registry"; }

std::string partition_segment_name(std::string_view bus, std::string_view topic, std::uint32_t partition) {
  // NAME_MAX is 255, and a segment is first created as <name>.tmp.<pid>.<hex> (up to 20
  // more characters, shm/segment.cpp).
  constexpr std::size_t kNameMax = 255 - 20;
  std::string name = fmt::format("shmbus.{}~{}~{}", bus, topic, partition);
  if (name.size() <= kNameMax) return name;
  // '#' cannot occur in a topic name, so a shortened name never equals a real one.
  const auto hash = XXH64(topic.data(), topic.size(), 0);
  return fmt::format("shmbus.{}~{}#{:016x}~{}", bus, topic.substr(0, 16), hash, partition);
}

}  // namespace shmbus
