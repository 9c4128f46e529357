// busd's Prometheus endpoint: the exposition format, the HTTP server in busd's event loop,
// and the metrics of topics, partitions, groups, spilling and busd itself (metrics.h).
#include "tools/busd/metrics.h"

#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "bus/topic.h"
#include "shm/process.h"
#include "shm/ring.h"
#include "tools/busd/daemon.h"

namespace shmbus::daemon {

// ---- the exposition format ----

std::string Exposition::escape_label(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char ch : v) {
    if (ch == '\\') out += "\\\\";
    else if (ch == '"') out += "\\\"";
    else if (ch == '\n') out += "\\n";
    else out += ch;
  }
  return out;
}

std::string Exposition::escape_help(std::string_view v) {
  std::string out;
  for (char ch : v) {
    if (ch == '\\') out += "\\\\";
    else if (ch == '\n') out += "\\n";
    else out += ch;
  }
  return out;
}

void Exposition::family(const std::string& name, std::string_view type, std::string_view help) {
  if (index_.count(name)) return;
  index_[name] = families_.size();
  families_.push_back(Family{fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, escape_help(help), name, type), {}});
}

void Exposition::add(const std::string& name, const Labels& labels, const std::string& value) {
  auto it = index_.find(name);
  if (it == index_.end()) {  // undeclared: untyped, still valid
    family(name, "untyped", name);
    it = index_.find(name);
  }
  std::string& out = families_[it->second].lines;
  out += name;
  if (!labels.empty()) {
    out += '{';
    for (std::size_t i = 0; i < labels.size(); ++i) {
      if (i) out += ',';
      out += labels[i].first;
      out += "=\"";
      out += escape_label(labels[i].second);
      out += '"';
    }
    out += '}';
  }
  out += ' ';
  out += value;
  out += '\n';
}

void Exposition::sample(const std::string& name, const Labels& labels, std::uint64_t value) {
  add(name, labels, std::to_string(value));
}
void Exposition::sample(const std::string& name, const Labels& labels, std::int64_t value) {
  add(name, labels, std::to_string(value));
}
void Exposition::sample(const std::string& name, const Labels& labels, double value) {
  add(name, labels, std::isnan(value) ? "NaN" : std::isinf(value) ? (value > 0 ? "+Inf" : "-Inf") : fmt::format("{}", value));
}

std::string Exposition::text() const {
  std::string out;
  for (const auto& f : families_) {
    out += f.head;
    out += f.lines;
  }
  return out;
}

// ---- HTTP ----

namespace {

bool valid_request_line(std::string_view line, std::string_view& method, std::string_view& target) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  const auto sp1 = line.find(' ');
  if (sp1 == std::string_view::npos) return false;
  const auto sp2 = line.find(' ', sp1 + 1);
  if (sp2 == std::string_view::npos || line.find(' ', sp2 + 1) != std::string_view::npos) return false;
  method = line.substr(0, sp1);
  target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  const std::string_view version = line.substr(sp2 + 1);
  if (method.empty() || method.size() > 16 || !std::all_of(method.begin(), method.end(), [](char ch) { return ch >= 'A' && ch <= 'Z'; }))
    return false;
  if (target.empty() || target[0] != '/' ||
      !std::all_of(target.begin(), target.end(), [](char ch) { return ch > ' ' && ch < 0x7f; }))
    return false;
  return version == "HTTP/1.1" || version == "HTTP/1.0";
}

}  // namespace

HttpAsk parse_http_request(std::string_view in, bool* head_only) {
  // Garbage is refused without waiting for more: the method (A-Z, up to 16) as it comes in,
  // the whole first line once it is in.
  const std::size_t method_end = std::min(in.find(' '), in.size());
  if (method_end > 16 || !std::all_of(in.begin(), in.begin() + static_cast<std::ptrdiff_t>(method_end), [](char ch) { return ch >= 'A' && ch <= 'Z'; }))
    return HttpAsk::kBad;
  const auto eol = in.find('\n');
  if (eol == std::string_view::npos) return in.size() > kMaxHttpRequest ? HttpAsk::kTooLarge : HttpAsk::kIncomplete;
  std::string_view method, target;
  if (!valid_request_line(in.substr(0, eol), method, target)) return HttpAsk::kBad;
  auto end = in.find("\r\n\r\n");
  std::size_t head_len = end == std::string_view::npos ? 0 : end + 4;
  if (end == std::string_view::npos && (end = in.find("\n\n")) != std::string_view::npos) head_len = end + 2;
  if (head_len == 0 || head_len > kMaxHttpRequest)
    return in.size() > kMaxHttpRequest ? HttpAsk::kTooLarge : HttpAsk::kIncomplete;
  // Header lines: NAME: value, printable.
  std::string_view rest = in.substr(eol + 1, head_len - eol - 1);
  while (!rest.empty()) {
    const auto nl = rest.find('\n');
    std::string_view line = rest.substr(0, nl);
    rest.remove_prefix(nl == std::string_view::npos ? rest.size() : nl + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    const auto colon = line.find(':');
    if (colon == 0 || colon == std::string_view::npos) return HttpAsk::kBad;
    if (!std::all_of(line.begin(), line.end(), [](char ch) { return ch == '\t' || (ch >= ' ' && ch < 0x7f); }))
      return HttpAsk::kBad;
  }
  if (head_only) *head_only = method == "HEAD";
  if (method != "GET" && method != "HEAD") return HttpAsk::kBadMethod;
  const std::string_view path = target.substr(0, target.find('?'));
  return path == "/metrics" ? HttpAsk::kMetrics : HttpAsk::kNotFound;
}

Result<std::unique_ptr<MetricsServer>> MetricsServer::open(const ListenerSpec& spec, int epoll_fd, Render render) {
  auto fd = listen_tcp(spec);
  if (!fd) return tl::unexpected(fd.error());
  std::unique_ptr<MetricsServer> s(new MetricsServer(*fd, epoll_fd, std::move(render)));
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.fd = *fd;
  if (::epoll_ctl(epoll_fd, EPOLL_CTL_ADD, *fd, &ev) != 0)
    return make_error(Errc::kSystem, fmt::format("epoll_ctl: {}", std::strerror(errno)));
  return s;
}

MetricsServer::MetricsServer(int listen_fd, int epoll_fd, Render render)
    : listen_fd_(listen_fd), epoll_fd_(epoll_fd), address_(bound_address(listen_fd)), render_(std::move(render)) {}

MetricsServer::~MetricsServer() {
  while (!conns_.empty()) close_conn(conns_.begin()->first);
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, listen_fd_, nullptr);
  ::close(listen_fd_);
}

void MetricsServer::on_event(int fd, std::uint32_t events) {
  if (fd == listen_fd_) return accept_all();
  auto it = conns_.find(fd);
  if (it == conns_.end()) return;
  if (it->second.answered) {
    if (events & (EPOLLERR | EPOLLHUP)) return close_conn(fd);
    return write_out(fd, it->second);
  }
  read_request(fd, it->second);
}

void MetricsServer::accept_all() {
  for (;;) {
    const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) return;
    if (conns_.size() >= kMaxConns) {  // a scraper needs one; more is someone else
      ::close(fd);
      continue;
    }
    conns_[fd].deadline_ns = shm::monotonic_ns() + kTimeoutNs;
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev);
  }
}

void MetricsServer::read_request(int fd, Conn& c) {
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n > 0) {
      c.in.append(buf, static_cast<std::size_t>(n));
      if (c.in.size() > kMaxHttpRequest) break;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    return close_conn(fd);  // closed before asking, or an error
  }
  bool head_only = false;
  switch (parse_http_request(c.in, &head_only)) {
    case HttpAsk::kIncomplete: return;
    case HttpAsk::kMetrics: return answer(fd, c, 200, "OK", render_(), head_only);
    case HttpAsk::kNotFound: return answer(fd, c, 404, "Not Found", "not found: busd serves /metrics\n", head_only);
    case HttpAsk::kBadMethod: return answer(fd, c, 405, "Method Not Allowed", "only GET and HEAD\n", false);
    case HttpAsk::kTooLarge: return answer(fd, c, 431, "Request Header Fields Too Large", "request over 8192 bytes\n", false);
    case HttpAsk::kBad: return answer(fd, c, 400, "Bad Request", "not an HTTP/1.x request\n", false);
  }
}

void MetricsServer::answer(int fd, Conn& c, int status, std::string_view reason, const std::string& body, bool head_only) {
  const char* type = status == 200 ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain; charset=utf-8";
  c.out = fmt::format("HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n", status,
                      reason, type, body.size(), status == 405 ? "Allow: GET, HEAD\r\n" : "");
  if (!head_only) c.out += body;
  c.in.clear();
  c.answered = true;
  write_out(fd, c);
}

void MetricsServer::write_out(int fd, Conn& c) {
  if (send_pending(fd, c.out) == SendResult::kWouldBlock) {
    epoll_event ev{};
    ev.events = EPOLLOUT;
    ev.data.fd = fd;
    ::epoll_ctl(epoll_fd_, EPOLL_CTL_MOD, fd, &ev);
    return;
  }
  close_conn(fd);  // sent, or the client went away: one request a connection (Connection: close)
}

void MetricsServer::close_conn(int fd) {
  ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, fd, nullptr);
  ::close(fd);
  conns_.erase(fd);
}

void MetricsServer::tick(std::uint64_t now_ns) {
  std::vector<int> late;
  for (const auto& [fd, c] : conns_)
    if (now_ns > c.deadline_ns) late.push_back(fd);
  for (int fd : late) close_conn(fd);  // too slow to ask, or to read the answer
}

// ---- the metrics ----

std::string Daemon::metrics_text() {
  Exposition e;
  using L = Exposition::Labels;
  e.family("shmbus_busd_up", "gauge", "1 while busd answers");
  e.sample("shmbus_busd_up", L{{"bus", bus_->name()}}, std::uint64_t{1});
  e.family("shmbus_busd_start_time_seconds", "gauge", "when busd started, seconds since the epoch");
  e.sample("shmbus_busd_start_time_seconds", L{{"bus", bus_->name()}}, static_cast<double>(started_ns_) / 1e9);
  e.family("shmbus_busd_clients", "gauge", "connections to busd's control socket");
  e.sample("shmbus_busd_clients", L{{"bus", bus_->name()}}, static_cast<std::uint64_t>(conns_.size()));

  e.family("shmbus_topic_info", "gauge", "a topic: its retention mode and whether it spills, as labels");
  e.family("shmbus_topic_partitions", "gauge", "partitions of the topic");
  e.family("shmbus_partition_start_offset", "gauge", "oldest offset still in the ring");
  e.family("shmbus_partition_end_offset", "gauge", "next offset to be written");
  e.family("shmbus_partition_records_written_total", "counter", "records (offsets) written to the partition: its end offset");
  e.family("shmbus_partition_capacity_bytes", "gauge", "ring bytes of the partition");
  e.family("shmbus_partition_used_bytes", "gauge", "ring bytes between the start and the end");
  e.family("shmbus_partition_writers", "gauge", "producers attached to the partition");
  e.family("shmbus_partition_gates", "gauge", "consumers holding producers back (block topics)");
  e.family("shmbus_partition_claims_timed_out_total", "counter", "claims of live producers aborted after the claim timeout");
  e.family("shmbus_partition_dead_claims_reclaimed_total", "counter", "claims of dead producers aborted");
  e.family("shmbus_partition_late_commits_refused_total", "counter", "commits that found their claim aborted (the send failed)");
  e.family("shmbus_partition_producer_blocked_seconds_total", "counter",
           "time producers waited for room before timing out (block topics)");
  std::map<std::pair<std::string, std::uint32_t>, std::uint64_t> end_offsets;
  std::vector<TopicInfo> spilled;
  for (const TopicInfo& listed : bus_->list_topics()) {
    auto info = bus_->describe_topic(listed.name);
    if (!info) continue;  // deleted meanwhile
    auto topic = bus_->topic(listed.name);
    const std::string& t = info->name;
    const bool block = info->config.retention == RetentionMode::kBlock;
    e.sample("shmbus_topic_info", L{{"topic", t}, {"retention", block ? "block" : "overwrite"}, {"spill", info->config.spill.enabled ? "true" : "false"}},
             std::uint64_t{1});
    e.sample("shmbus_topic_partitions", L{{"topic", t}}, std::uint64_t{info->config.partitions});
    for (const PartitionInfo& p : info->partitions) {
      const std::string part = std::to_string(p.partition);
      const L l{{"topic", t}, {"partition", part}};
      end_offsets[{t, p.partition}] = p.end_offset;
      e.sample("shmbus_partition_start_offset", l, p.start_offset);
      e.sample("shmbus_partition_end_offset", l, p.end_offset);
      e.sample("shmbus_partition_records_written_total", l, p.end_offset);
      e.sample("shmbus_partition_capacity_bytes", l, p.capacity);
      e.sample("shmbus_partition_used_bytes", l, p.bytes_used);
      e.sample("shmbus_partition_writers", l, std::uint64_t{p.writers});
      e.sample("shmbus_partition_gates", l, std::uint64_t{p.gates});
      e.sample("shmbus_partition_claims_timed_out_total", l, p.claims_timed_out);
      e.sample("shmbus_partition_dead_claims_reclaimed_total", l, p.dead_claims_reclaimed);
      e.sample("shmbus_partition_late_commits_refused_total", l, p.late_commits_refused);
      if (topic && p.partition < (*topic)->partitions()) {
        const auto ns = (*topic)->ring(p.partition).ctl()->stats.producer_blocked_ns.load(std::memory_order_relaxed);
        e.sample("shmbus_partition_producer_blocked_seconds_total", l, static_cast<double>(ns) / 1e9);
      }
    }
    if (info->config.spill.enabled) spilled.push_back(std::move(*info));
  }

  e.family("shmbus_group_members", "gauge", "live members of the group");
  e.family("shmbus_group_generation", "gauge", "the group's generation");
  e.family("shmbus_group_rebalances_total", "counter", "rebalances (new generations) since busd started");
  for (const auto& [name, g] : groups_) {
    const L l{{"group", name}};
    e.sample("shmbus_group_members", l, static_cast<std::uint64_t>(g.members.size()));
    e.sample("shmbus_group_generation", l, g.generation);
    e.sample("shmbus_group_rebalances_total", l, g.rebalances);
  }
  e.family("shmbus_group_committed_offset", "gauge", "the group's committed offset: the next offset it will read");
  e.family("shmbus_group_lag", "gauge", "records between the committed offset and the end offset");
  for (const auto& [k, c] : offsets_.all()) {
    // An offset of another creation of the topic counts as none (offset_store.h).
    auto t = bus_->topic(k.topic);
    if (!t || (c.topic_epoch != 0 && c.topic_epoch != (*t)->epoch())) continue;
    const std::uint64_t committed = c.offset;
    const std::string part = std::to_string(k.partition);
    const L l{{"group", k.group}, {"topic", k.topic}, {"partition", part}};
    e.sample("shmbus_group_committed_offset", l, committed);
    if (auto it = end_offsets.find({k.topic, k.partition}); it != end_offsets.end())
      e.sample("shmbus_group_lag", l, it->second > committed ? it->second - committed : std::uint64_t{0});
  }

  e.family("shmbus_spill_offset", "gauge", "every offset below it is on disk (or was lost before it was spilled)");
  e.family("shmbus_spill_start_offset", "gauge", "oldest offset on disk");
  e.family("shmbus_spill_disk_bytes", "gauge", "bytes of the partition's log files");
  e.family("shmbus_spill_lost_records_total", "counter", "records overwritten before busd spilled them (overwrite topics)");
  e.family("shmbus_spill_state", "gauge", "0 not spilling, 1 spilling, 2 stopped on an error");
  for (const TopicInfo& info : spilled)
    for (const PartitionInfo& p : info.partitions) {
      const std::string part = std::to_string(p.partition);
      const L l{{"topic", info.name}, {"partition", part}};
      e.sample("shmbus_spill_offset", l, p.disk_end_offset);
      e.sample("shmbus_spill_start_offset", l, p.disk_start_offset);
      e.sample("shmbus_spill_disk_bytes", l, p.disk_bytes);
      e.sample("shmbus_spill_lost_records_total", l, p.spill_lost);
      e.sample("shmbus_spill_state", l, std::uint64_t{p.spill_state});
    }
  e.family("shmbus_spill_written_bytes_total", "counter", "bytes busd appended to the partition's log since it started");
  e.family("shmbus_spill_fsyncs_total", "counter", "fsyncs of the partition's log since busd started");
  e.family("shmbus_spill_errors_total", "counter", "logs that could not be opened, written or synced since busd started");
  if (spiller_)
    for (const auto& s : spiller_->stats()) {
      const std::string part = std::to_string(s.partition);
      const L l{{"topic", s.topic}, {"partition", part}};
      e.sample("shmbus_spill_written_bytes_total", l, s.bytes_written);
      e.sample("shmbus_spill_fsyncs_total", l, s.fsyncs);
      e.sample("shmbus_spill_errors_total", l, s.errors);
    }
  return e.text();
}

}  // namespace shmbus::daemon
