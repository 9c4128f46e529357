// What a partition's disk log holds, read as a consumer would: offset -> value of every
// record (gaps left out), up to the end or a torn tail (what a SIGKILLed busd leaves).
// Used by the durable-acks tests and the group soak.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "bus/disk_log.h"

namespace shmbus::test {

inline std::map<std::uint64_t, std::string> disk_values(const std::string& partition_dir) {
  std::map<std::uint64_t, std::string> got;
  disklog::LogReader r(partition_dir);
  for (std::uint64_t from = 0;;) {
    auto next = r.read(from, ~0ull, 1 << 20, [&](const disklog::FrameView& v) {
      if (v.header.attributes == 0) {
        const auto* b = reinterpret_cast<const char*>(v.payload.data());
        got[v.header.offset] = std::string(b + v.payload.size() - v.header.value_len, v.header.value_len);
      }
      return true;
    });
    if (!next || *next == from) break;  // a torn tail left by a SIGKILL ends the log too
    from = *next;
  }
  return got;
}

}  // namespace shmbus::test
