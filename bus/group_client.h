// A connection to busd: requests with replies, pushes queued, busd started on demand.
#pragma once

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "bus/protocol.h"
#include "shmbus/error.h"

namespace shmbus {

std::string busd_segment_name(const std::string& bus);

// Where the busd binary is: $SHMBUS_BUSD if set (nothing else is tried); else, for a
// program inside the build tree this library was built in, the busd of that build; else the
// installed one (<prefix>/libexec/shmbus/busd); else `busd` or `../libexec/shmbus/busd`
// beside the running executable; else `busd` on PATH. `path` is empty if none was found, and
// `tried` lists every place looked at, for the error message.
struct BusdSearch {
  std::string path;
  std::vector<std::string> tried;
};
BusdSearch find_busd();
std::string busd_binary();  // find_busd().path

class BusdConnection {
 public:
  // Connects to the bus's busd. If none answers and autostart is allowed (not
  // SHMBUS_NO_AUTOSTART=1), starts one in the background and waits for it.
  static Result<std::unique_ptr<BusdConnection>> connect(const std::string& bus, std::chrono::milliseconds timeout,
                                                         bool autostart = true);
  ~BusdConnection();

  // Sends and waits for the reply; pushes that arrive meanwhile are queued.
  Result<proto::json> request(proto::json req, std::chrono::milliseconds timeout);
  // Sends without waiting; the reply is dropped when it arrives.
  Status send(proto::json req);
  // Sends without waiting and keeps the reply: take_reply(id) hands it over once pump() (or
  // any read) has it; an error reply comes as an Error, as from request().
  Result<std::uint64_t> send_tracked(proto::json req);
  std::optional<Result<proto::json>> take_reply(std::uint64_t id);
  // Reads what is there without blocking. False once busd is gone.
  bool pump();
  std::deque<proto::json>& pushes() { return pushes_; }
  int fd() const { return fd_; }

 private:
  bool read_some(int timeout_ms);
  int fd_ = -1;
  std::string in_;
  std::uint64_t next_id_ = 1;
  std::deque<proto::json> pushes_;
  std::map<std::uint64_t, proto::json> replies_;
  std::set<std::uint64_t> tracked_;  // send_tracked's ids whose replies pump() keeps
  bool dead_ = false;
};

}  // namespace shmbus
