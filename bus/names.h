// Names of buses, topics and groups, and the shared-memory file names derived from them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "shmbus/error.h"

namespace shmbus {

inline constexpr std::size_t kMaxNameLength = 200;

// [A-Za-z0-9._-]{1,200}, and not "." or "..". `what` names the kind in the message.
Status validate_name(std::string_view what, std::string_view name);

// The bus name from SHMBUS_BUS, else "default".
std::string default_bus_name();

// Files under /dev/shm. '~' cannot occur in a name, so it separates bus, topic and
// partition unambiguously (names may hold '.'): shmbus.<bus>~registry and
// shmbus.<bus>~<topic>~<partition>. A name that would pass NAME_MAX keeps a prefix of the
// topic and its 64-bit xxhash instead (docs/naming.md).
std::string registry_segment_name(std::string_view bus);
std::string partition_segment_name(std::string_view bus, std::string_view topic, std::uint32_t partition);
std::string bus_segment_prefix(std::string_view bus);

}  // namespace shmbus
