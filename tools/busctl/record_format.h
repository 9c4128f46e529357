// How busctl consume prints a record: a kcat-like --format, or a JSON object whose bytes
// are never altered (valid UTF-8 as a string, other bytes as base64 in "<field>_b64").
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "shmbus/error.h"
#include "shmbus/record.h"
#include "tools/busctl/bytes.h"

namespace shmbus::busctl {

class RecordFormat {
 public:
  // Refuses an unknown % escape (or a lone % at the end), naming it.
  static Result<RecordFormat> compile(std::string_view text, Encoding encoding);
  std::string render(const ConsumedRecord& r) const;

 private:
  struct Piece {
    char escape;  // 0: `literal`
    std::string literal;
  };
  std::vector<Piece> pieces_;
  Encoding encoding_ = Encoding::kRaw;
};

// topic, partition, offset, key | key_b64, value | value_b64 (null: a tombstone),
// timestamp (ms), timestamp_ns, headers: [{key | key_b64, value | value_b64}].
nlohmann::json record_json(const ConsumedRecord& r);

}  // namespace shmbus::busctl
