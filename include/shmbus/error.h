// Typed errors for every fallible shmbus call. Hot paths return tl::expected<T, Error>;
// the success path never allocates, the message is built only when something failed.
#pragma once

#include <string>
#include <utility>

#include <tl/expected.hpp>

namespace shmbus {

enum class Errc {
  kOk = 0,
  kInvalidArgument,    // malformed name, bad size, bad partition
  kNotFound,           // topic or segment does not exist
  kAlreadyExists,      // topic with that name exists
  kRecordTooLarge,     // record over the topic's max record size
  kBadSegment,         // foreign, corrupt, truncated or wrong-version segment
  kNoSpace,            // /dev/shm has no room for the segment
  kPermission,         // open/create refused by the OS
  kTimedOut,           // block-mode producer waited too long, registry lock busy
  kOffsetOutOfRange,   // auto.offset.reset=error and the offset is gone
  kTopicDeleted,       // topic deleted while attached
  kTooManyClients,     // no free writer slot / gate slot in a partition
  kSystem,             // an unexpected OS error (errno in the message)
};

const char* errc_name(Errc c) noexcept;

struct Error {
  Errc code = Errc::kOk;
  std::string message;

  Error() = default;
  Error(Errc c, std::string msg) : code(c), message(std::move(msg)) {}
};

template <class T>
using Result = tl::expected<T, Error>;
using Status = tl::expected<void, Error>;

inline tl::unexpected<Error> make_error(Errc c, std::string msg) {
  return tl::unexpected<Error>(Error{c, std::move(msg)});
}

}  // namespace shmbus
