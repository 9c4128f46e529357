// busd's control protocol: frames of a 4-byte little-endian length and a JSON object.
// Every request carries "v" (protocol version, kProtocolVersion) and "op"; requests that
// want a reply carry "id", and the reply carries "re": id. busd also pushes messages with
// no "re" (revoke, assign) to group members. docs/busd.md lists the operations.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "shmbus/error.h"

namespace shmbus::proto {

inline constexpr int kProtocolVersion = 1;
inline constexpr std::uint32_t kMaxFrame = 1 << 20;

using json = nlohmann::json;

// Appends a frame to `out`.
void encode(const json& message, std::string& out);

// Takes one whole frame off the front of `in`, if there is one. A frame over kMaxFrame or
// bytes that are not a JSON object are an error (the peer is then disconnected).
Result<std::optional<json>> decode(std::string& in);

// Blocking helpers for clients on a blocking socket.
Status write_all(int fd, const std::string& bytes);

// Checks the version and the op of a request; returns the op.
Result<std::string> check_request(const json& m);

}  // namespace shmbus::proto
