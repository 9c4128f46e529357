// busd's Prometheus endpoint: the text exposition format (version 0.0.4), a small HTTP/1.1
// server inside busd's event loop (GET /metrics, one request a connection), and the
// metrics themselves (Daemon::metrics_text in metrics.cpp). docs/busd.md, "Metrics".
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "shmbus/error.h"
#include "tools/busd/listeners.h"

namespace shmbus::daemon {

// The text exposition format: families in the order first named, each with its # HELP and
// # TYPE lines and then its samples, wherever in the caller's loops they were added.
class Exposition {
 public:
  using Labels = std::vector<std::pair<std::string_view, std::string_view>>;
  // type: counter or gauge. Declares the family (once; later calls add nothing).
  void family(const std::string& name, std::string_view type, std::string_view help);
  void sample(const std::string& name, const Labels& labels, std::uint64_t value);
  void sample(const std::string& name, const Labels& labels, std::int64_t value);
  void sample(const std::string& name, const Labels& labels, double value);
  std::string text() const;

  // A label value with \, " and newline escaped as the format asks.
  static std::string escape_label(std::string_view v);
  // HELP text: \ and newline escaped.
  static std::string escape_help(std::string_view v);

 private:
  void add(const std::string& name, const Labels& labels, const std::string& value);
  struct Family {
    std::string head;   // # HELP and # TYPE
    std::string lines;  // samples
  };
  std::vector<Family> families_;
  std::map<std::string, std::size_t, std::less<>> index_;
};

// What a request asks, once its head is in. kIncomplete: read on.
enum class HttpAsk { kIncomplete, kMetrics, kNotFound, kBadMethod, kBad, kTooLarge };
inline constexpr std::size_t kMaxHttpRequest = 8192;  // request line and headers
HttpAsk parse_http_request(std::string_view in, bool* head_only = nullptr);

// The endpoint: accepts, reads one request (up to kMaxHttpRequest bytes, for up to 5 s),
// answers it and closes. Never blocks busd's loop: every socket is non-blocking, and a
// response that does not fit the socket buffer is written as it drains.
class MetricsServer final : public TcpService {
 public:
  using Render = std::function<std::string()>;
  static Result<std::unique_ptr<MetricsServer>> open(const ListenerSpec& spec, int epoll_fd, Render render);
  ~MetricsServer() override;

  bool owns(int fd) const override { return fd == listen_fd_ || conns_.count(fd) != 0; }
  void on_event(int fd, std::uint32_t events) override;
  void tick(std::uint64_t now_ns) override;
  const std::string& address() const override { return address_; }

 private:
  struct Conn {
    std::string in, out;
    std::uint64_t deadline_ns = 0;
    bool answered = false;
  };
  MetricsServer(int listen_fd, int epoll_fd, Render render);
  void accept_all();
  void read_request(int fd, Conn& c);
  void answer(int fd, Conn& c, int status, std::string_view reason, const std::string& body, bool head_only);
  void write_out(int fd, Conn& c);
  void close_conn(int fd);

  static constexpr std::size_t kMaxConns = 32;
  static constexpr std::uint64_t kTimeoutNs = 5'000'000'000;
  int listen_fd_ = -1, epoll_fd_ = -1;
  std::string address_;
  Render render_;
  std::map<int, Conn> conns_;
};

}  // namespace shmbus::daemon
