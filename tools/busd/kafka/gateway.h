// The Kafka listener inside busd's event loop (a TcpService, listeners.h, of kind "kafka"):
// accepts loopback connections, reads size-prefixed frames up to kMaxFrameSize, hands each
// decoded request to the Handlers and writes the answers back in request order. Every socket
// is non-blocking; a connection whose answers are not read stops being read (its requests
// wait in the kernel's buffers), so a slow or stalled client holds up only itself. A Fetch
// that waits for records (long poll), a JoinGroup waiting for its generation and a Produce
// with acks=all waiting for busd's spiller are parked (the connection's later requests
// behind them) and looked at again until they can be answered or their deadline passes:
// when a Produce here appends, when the doorbell rings (a record from elsewhere on a
// partition a parked Fetch waits on), when busd's spiller moves a durable offset (its
// DurableBell), and every 2 ms. docs/kafka.md.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "shmbus/error.h"
#include "tools/busd/durable_bell.h"
#include "tools/busd/kafka/doorbell.h"
#include "tools/busd/kafka/handlers.h"
#include "tools/busd/kafka/messages.h"
#include "tools/busd/listeners.h"

namespace shmbus::kafka {

class Gateway final : public daemon::TcpService {
 public:
  // durable (optional, outlives the Gateway): rung by busd's spiller; a parked acks=all
  // Produce is looked at when it rings.
  static Result<std::unique_ptr<Gateway>> open(const daemon::ListenerSpec& spec, int epoll_fd,
                                               std::unique_ptr<Handlers> handlers, Handlers::Log log,
                                               daemon::DurableBell* durable = nullptr);
  ~Gateway() override;

  bool owns(int fd) const override {
    return fd == listen_fd_ || fd == timer_fd_ || fd == doorbell_->fd() || (durable_ && fd == durable_->fd()) ||
           conns_.count(fd) != 0;
  }
  std::uint64_t wakeups() const override { return doorbell_->rings(); }
  std::uint64_t answered_by_produce() const override { return answered_by_produce_; }
  std::uint64_t durable_wakeups() const override { return durable_ ? durable_->rings() : 0; }
  std::uint64_t parked_looks() const override { return looks_; }
  void on_event(int fd, std::uint32_t events) override;
  void tick(std::uint64_t now_ns) override;
  const std::string& address() const override { return address_; }
  std::size_t connections() const override { return conns_.size(); }

  static constexpr std::size_t kMaxConns = 1024;
  // Answers queued beyond this: the connection's requests are not read until they drain.
  static constexpr std::size_t kOutHighWater = 4u << 20;
  // Parked requests are looked at when the doorbell rings (a record on a partition a parked
  // Fetch waits on) and on this timer (deadlines, group joins, what the doorbell missed).
  static constexpr std::uint64_t kParkedPollNs = 2'000'000;
  // A parked Fetch stopped short of a partition's end (a claim in flight there) is looked at
  // again this often, besides the doorbell's ring at the claim's commit: a writer stopped
  // inside its claim costs busd a look this often, not every timer tick.
  static constexpr std::uint64_t kShortLookNs = 50'000'000;

 private:
  struct Parked {
    Request request;
    std::uint64_t deadline_ns = 0;
    std::uint64_t progress = 0;     // a JoinGroup's: Handlers::progress() when it was looked at
    std::vector<FetchStop> stops;   // a Fetch's: where it could read no further
    std::uint64_t looked_ns = 0;    // when it was last looked at (monotonic)
    std::shared_ptr<ProduceWait> wait;  // a Produce waiting for the disk (acks=all): looked at every poll
  };
  struct Conn {
    std::string in;
    std::size_t in_used = 0;  // bytes of `in` already handled
    std::string out;
    ClientEnd end;
    std::optional<Parked> parked;
    bool input_held = false;  // parked, and more requests came: not read until it is answered
    std::uint32_t events = 0;  // the epoll interest set now
  };
  Gateway(int listen_fd, int timer_fd, int epoll_fd, std::unique_ptr<Handlers> handlers, Handlers::Log log,
          std::unique_ptr<Doorbell> doorbell, daemon::DurableBell* durable);
  // A parked acks=all Produce more (+1) or fewer (-1): the durable bell is wanted while any.
  void waiting_for_disk(int delta);
  void accept_all();
  void read_in(int fd);
  // Handles the whole frames read, in order, until one parks or answers pile up. False: closed.
  bool serve(int fd, Conn& c);
  bool apply(int fd, Conn& c, const Request& req, Answer a);
  void write_out(int fd, Conn& c);
  void update_interest(int fd, Conn& c);
  void close_conn(int fd, const std::string& why);
  // Answers the parked requests that can be answered now; how many were. `rung`: the doorbell
  // rang (a record readable at a parked Fetch's stop).
  std::size_t poll_parked(bool rung = false);
  void arm_timer(bool on);
  void rewatch();  // tells the doorbell the partitions parked Fetches wait on

  int listen_fd_ = -1, timer_fd_ = -1, epoll_fd_ = -1;
  std::string address_;
  std::unique_ptr<Handlers> handlers_;
  Handlers::Log log_;
  std::unique_ptr<Doorbell> doorbell_;
  daemon::DurableBell* durable_ = nullptr;
  std::size_t waiting_for_disk_ = 0;  // parked acks=all Produces
  std::map<int, Conn> conns_;
  std::size_t parked_ = 0;
  std::uint64_t answered_by_produce_ = 0;  // parked requests answered in the turn of a Produce here
  std::uint64_t looks_ = 0;                // parked requests handled anew (poll_parked)
  bool timer_on_ = false;
};

}  // namespace shmbus::kafka
