#include "bus/protocol.h"

#include <cerrno>
#include <cstring>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

namespace shmbus::proto {

void encode(const json& message, std::string& out) {
  const std::string body = message.dump(-1, ' ', false, json::error_handler_t::replace);
  const auto n = static_cast<std::uint32_t>(body.size());
  const char len[4] = {static_cast<char>(n & 0xff), static_cast<char>((n >> 8) & 0xff), static_cast<char>((n >> 16) & 0xff),
                       static_cast<char>((n >> 24) & 0xff)};
  out.append(len, 4);
  out.append(body);
}

Result<std::optional<json>> decode(std::string& in) {
  if (in.size() < 4) return std::optional<json>{};
  const auto* b = reinterpret_cast<const unsigned char*>(in.data());
  const std::uint32_t n = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<std::uint32_t>(b[3]) << 24);
  if (n > kMaxFrame) return make_error(Errc::kInvalidArgument, fmt::format("control frame of {} bytes is over the {}-byte limit", n, kMaxFrame));
  if (in.size() < 4 + static_cast<std::size_t>(n)) return std::optional<json>{};
  json j = json::parse(in.begin() + 4, in.begin() + 4 + n, nullptr, false);
  in.erase(0, 4 + static_cast<std::size_t>(n));
  if (j.is_discarded() || !j.is_object()) return make_error(Errc::kInvalidArgument, "control frame is not a JSON object");
  return std::optional<json>(std::move(j));
}

Status write_all(int fd, const std::string& bytes) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::send(fd, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return make_error(Errc::kSystem, fmt::format("busd connection: {}", std::strerror(errno)));
    done += static_cast<std::size_t>(n);
  }
  return {};
}

Result<std::string> check_request(const json& m) {
  if (!m.contains("v") || !m["v"].is_number_integer())
    return make_error(Errc::kInvalidArgument, "request without a protocol version \"v\"");
  if (m["v"].get<int>() != kProtocolVersion)
    return make_error(Errc::kInvalidArgument, fmt::format("protocol version {} is not spoken here (busd speaks {})",
                                                          m["v"].dump(), kProtocolVersion));
  if (!m.contains("op") || !m["op"].is_string()) return make_error(Errc::kInvalidArgument, "request without \"op\"");
  return m["op"].get<std::string>();
}

}  // namespace shmbus::proto
