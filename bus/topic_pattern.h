// Topic patterns: a regular expression over topic names (POSIX extended, searched in the
// name as regexec does, so anchor it). In a subscription, a name starting with '^' is one
// (librdkafka's rule); busctl consume --pattern takes one as it is. Internal.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "shmbus/error.h"

namespace shmbus {

class TopicPattern {
 public:
  // A subscription entry that is a pattern, not a topic name.
  static bool is_pattern(std::string_view entry) { return !entry.empty() && entry[0] == '^'; }
  // Fails (invalid_argument, naming the pattern and what is wrong) if it does not compile.
  static Result<TopicPattern> compile(const std::string& pattern);
  bool matches(const std::string& topic) const;
  const std::string& source() const { return source_; }

 private:
  struct Compiled;
  std::shared_ptr<const Compiled> re_;
  std::string source_;
};

}  // namespace shmbus
