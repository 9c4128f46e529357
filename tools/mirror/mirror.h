// The mirror: runs each configured mirror (tools/mirror/config.h) in a thread of its own,
// restarting a failed session from its last commit, and publishes each one's status file
// (tools/mirror/status.h). docs/mirror.md describes the guarantees.
#pragma once

#include <atomic>
#include <functional>
#include <iosfwd>
#include <memory>
#include <mutex>
#include <string>

#include "shmbus/bus.h"
#include "tools/mirror/config.h"
#include "tools/mirror/status.h"

namespace shmbus::mirror {

// What a mirror thread reports; the runner reads it under `mu` to write the status file.
struct Live {
  std::mutex mu;
  MirrorStatus status;
  void error(const std::string& message);
  void set_state(const char* state);
};

// How a session of one mirror ended, when it did not fail (a failure is retried).
enum class Outcome {
  kStopped,  // the runner asked it to stop
  kHalted,   // it may not go on (on_record_error=stop, a setting the bus refuses): it stays stopped
};

// One session of a mirror: its own librdkafka handle and bus client, from the last commit
// on. Defined in out.cpp and in.cpp.
Result<Outcome> run_out_session(const MirrorSpec& spec, const std::shared_ptr<Bus>& bus, Live& live,
                                const std::atomic<bool>& stop);
Result<Outcome> run_in_session(const MirrorSpec& spec, const std::shared_ptr<Bus>& bus, Live& live,
                               const std::atomic<bool>& stop);

// Runs every mirror of `cfg` on `bus_name` until `should_stop()` (asked on the calling
// thread, every 50 ms) says so; then each mirror delivers what it has in flight (up to
// 10 s), commits and stops. Lines of progress and errors go to `log`.
Status run_mirrors(const MirrorConfig& cfg, const std::string& bus_name, const std::function<bool()>& should_stop,
                   std::ostream& log);

}  // namespace shmbus::mirror
