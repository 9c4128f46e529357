// Topic patterns (bus/topic_pattern.h) on POSIX regcomp, not std::regex: GCC 12's <regex>
// warns (maybe-uninitialized) under ASan.
#include "bus/topic_pattern.h"

#include <regex.h>

#include <fmt/format.h>

namespace shmbus {

struct TopicPattern::Compiled {
  regex_t re{};
  bool compiled = false;  // regfree only what regcomp made
  ~Compiled() {
    if (compiled) ::regfree(&re);
  }
};

Result<TopicPattern> TopicPattern::compile(const std::string& pattern) {
  auto c = std::make_shared<Compiled>();
  if (const int rc = ::regcomp(&c->re, pattern.c_str(), REG_EXTENDED | REG_NOSUB); rc != 0) {
    char why[256];
    ::regerror(rc, &c->re, why, sizeof why);
    return make_error(Errc::kInvalidArgument, fmt::format("topic pattern '{}' is not a regex: {}", pattern, why));
  }
  c->compiled = true;
  TopicPattern p;
  p.re_ = std::move(c);
  p.source_ = pattern;
  return p;
}

bool TopicPattern::matches(const std::string& topic) const { return re_ && ::regexec(&re_->re, topic.c_str(), 0, nullptr, 0) == 0; }

}  // namespace shmbus
