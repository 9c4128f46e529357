// busd's TCP listeners (the Prometheus metrics endpoint, the Kafka gateway): their addresses,
// the `listeners` file in the bus's state dir that keeps which ones run across restarts,
// and the interface through which busd's event loop drives one. Internal to busd.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <map>
#include <string>

#include "shmbus/error.h"

namespace shmbus::daemon {

// What a listener listens on: "HOST:PORT" as given (HOST an IPv4 or bracketed IPv6 literal,
// or localhost; PORT 0 picks a free one), and whether it may be off loopback.
struct ListenerSpec {
  std::string listen;
  bool allow_remote = false;
  bool operator==(const ListenerSpec&) const = default;
};

// A parsed address, ready for bind(2).
struct TcpAddress {
  sockaddr_storage addr{};
  socklen_t len = 0;
  bool loopback = false;
};

// Parses spec.listen; refuses (invalid_argument, naming it) a malformed one, and one that
// is not loopback unless spec.allow_remote.
Result<TcpAddress> parse_listen(const ListenerSpec& spec);
// "HOST:PORT" of a bound socket (the port it got).
std::string bound_address(int fd);
// A non-blocking, close-on-exec listening socket on `spec`.
Result<int> listen_tcp(const ListenerSpec& spec);
// Sends what `out` holds without blocking and erases what went: all of it (kDrained), part
// and the socket is full (kWouldBlock), or the peer went away (kClosed).
enum class SendResult { kDrained, kWouldBlock, kClosed };
SendResult send_pending(int fd, std::string& out);

// The listeners file: {"KIND": {"listen": "HOST:PORT", "allow_remote": false}, ...}.
// A missing file is no listener; a malformed one is an error naming the file.
Result<std::map<std::string, ListenerSpec>> load_listeners(const std::string& state_dir);
// `text` as the whole of `path` (a temporary file renamed over it), with `mode`; fsynced
// first when `sync`. A reader finds the old file or the new one, never a part.
Status write_file_whole(const std::string& path, const std::string& text, unsigned mode, bool sync);
// Written whole (write_file_whole, fsynced) with `mode`.
Status save_listeners(const std::string& state_dir, const std::map<std::string, ListenerSpec>& all, unsigned mode);
std::string listeners_path(const std::string& state_dir);

// A listener inside busd's event loop: busd hands it the events of the descriptors it
// added to the epoll set, and ticks it every 20 ms (timeouts).
class TcpService {
 public:
  virtual ~TcpService() = default;
  virtual bool owns(int fd) const = 0;
  virtual void on_event(int fd, std::uint32_t events) = 0;
  virtual void tick(std::uint64_t now_ns) = 0;
  virtual const std::string& address() const = 0;  // HOST:PORT bound
  virtual std::size_t connections() const { return 0; }  // open now (busctl status)
  virtual std::uint64_t wakeups() const { return 0; }    // parked requests woken by a record (busctl status)
  // Parked requests answered in the loop turn of a Produce through this service (busctl status).
  virtual std::uint64_t answered_by_produce() const { return 0; }
  // Parked requests looked at because busd's spiller moved a durable offset (busctl status).
  virtual std::uint64_t durable_wakeups() const { return 0; }
  // Parked requests looked at again (handled anew), for whatever reason (busctl status).
  virtual std::uint64_t parked_looks() const { return 0; }
};

}  // namespace shmbus::daemon
