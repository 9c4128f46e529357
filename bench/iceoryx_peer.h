// Eclipse iceoryx (Debian 12: iceoryx, libiceoryx-posh-dev) as a peer row of the latency
// benchmark: a private RouDi daemon for the run, and one publisher/subscriber pair in
// each process of the ping-pong. Built only when CMake finds iceoryx_posh.
//
// iceoryx's runtime is a process-wide static that registers with RouDi and deregisters
// only when the process exits through exit(); RouDi, stopped, sends SIGTERM to every app
// still registered. So both sides of the ping-pong run in forked processes that leave
// through exit_process(), and RouDi is stopped only after they are gone.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <memory>
#include <string>

namespace shmbus::bench::iceoryx {

// The RouDi this run started. stop() (or the destructor) shuts it down and removes what
// it and the apps left in /dev/shm and /tmp.
class Roudi {
 public:
  // Starts iox-roudi with memory pools for payloads up to 64 KiB. Fails with a reason when
  // it is not installed, another RouDi already runs on this machine (we never touch one we
  // did not start), or it does not become ready within 10 s.
  static std::unique_ptr<Roudi> start(std::string& why_not);
  ~Roudi();
  Roudi(const Roudi&) = delete;
  Roudi& operator=(const Roudi&) = delete;
  void stop();

  // The name of an app runtime of this run, the same in every process it forks (its /tmp
  // files are removed by stop()).
  std::string app_name(const char* role) const;

  // For a SIGINT/SIGTERM handler: kills the running RouDi and unlinks the files it and the
  // apps of this run leave; async-signal-safe.
  static void emergency_stop() noexcept;

 private:
  Roudi() = default;
  pid_t pid_ = 0;
  pid_t owner_ = 0;  // the process that started RouDi: names the apps
  std::string dir_;  // config and log
};

// One side of a ping-pong or a stream: publishes `size`-byte samples on service `out`,
// takes them from `in` (either may be null: that port is not made). The constructor
// registers this process's runtime under `app` and waits until its ports are connected
// (RouDi's discovery runs every 100 ms). `lossless`: a publisher waits for a full
// subscriber queue instead of dropping its oldest sample (throughput runs).
class Endpoint {
 public:
  Endpoint(const std::string& app, const char* out, const char* in, std::size_t size, bool lossless = false);
  ~Endpoint();
  Endpoint(const Endpoint&) = delete;
  Endpoint& operator=(const Endpoint&) = delete;

  // Loans a chunk, copies `data` into it, publishes it.
  bool send(const void* data);
  // Busy-polls take() (no system call), copies the sample out, releases the chunk. False
  // after 10 s with nothing.
  bool receive(void* into);

 private:
  struct Ports;
  std::unique_ptr<Ports> ports_;
  std::size_t size_;
};

// Leaves the process through exit(), so that its runtime deregisters from RouDi. Output
// buffers inherited from the parent must have been flushed before the fork.
[[noreturn]] void exit_process(int code);

}  // namespace shmbus::bench::iceoryx
