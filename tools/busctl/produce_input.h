// What busctl produce reads: records split by a delimiter (binary-safe, kcat's -D and -K),
// or one JSON object per line (--input json). Formats: docs/busctl.md, "produce input".
#pragma once

#include <cstdint>
#include <iosfwd>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "shmbus/error.h"

namespace shmbus::busctl {

// One record to send, owning its bytes.
struct InputRecord {
  std::optional<std::string> key;    // nullopt: no key
  std::optional<std::string> value;  // nullopt: a null value (a tombstone)
  std::vector<std::pair<std::string, std::optional<std::string>>> headers;  // nullopt: a null value
  std::optional<std::uint32_t> partition;
  std::int64_t timestamp_ns = 0;  // 0: stamped when sent
};

struct InputFormat {
  bool json = false;
  std::string delimiter = "\n";
  std::optional<std::string> key_delimiter;
  bool null_empty = false;  // -Z: an empty key or value is sent as null
};

// The next chunk of `in` up to `delimiter` (not included) into `out`; false when the input
// has ended with nothing more. The last chunk needs no delimiter after it.
bool next_chunk(std::istream& in, const std::string& delimiter, std::string& out);

// A chunk as a record. `where` names it in errors ("line 3").
Result<InputRecord> parse_record(const InputFormat& f, std::string chunk, const std::string& where);

}  // namespace shmbus::busctl
