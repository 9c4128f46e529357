#include "iceoryx_peer.h"

#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <fmt/format.h>

#include "iceoryx_hoofs/log/logmanager.hpp"
#include "iceoryx_posh/popo/untyped_publisher.hpp"
#include "iceoryx_posh/popo/untyped_subscriber.hpp"
#include "iceoryx_posh/runtime/posh_runtime.hpp"

#ifndef SHMBUS_IOX_ROUDI
#define SHMBUS_IOX_ROUDI "/usr/bin/iox-roudi"
#endif

namespace shmbus::bench::iceoryx {

namespace {

using Clock = std::chrono::steady_clock;

// What a run leaves if RouDi or an app dies before it tidies up, as fixed buffers so that a
// signal handler can unlink them. RouDi's own names are fixed by iceoryx 2.0: its
// management segment, the data segment named after its group, its socket and locks.
constexpr std::size_t kMaxFiles = 12;
constexpr std::size_t kPathMax = 160;
char g_files[kMaxFiles][kPathMax];
std::atomic<std::size_t> g_nfiles{0};
std::atomic<pid_t> g_roudi{0};
std::atomic<bool> g_roudi_ready{false};
char g_dir[kPathMax];  // the run's config and log directory

void remember(const std::string& path) {
  const std::size_t i = g_nfiles.load();
  if (i >= kMaxFiles || path.size() >= kPathMax) return;
  std::memcpy(g_files[i], path.c_str(), path.size() + 1);
  g_nfiles.store(i + 1);
}

void unlink_remembered() noexcept {
  const std::size_t n = g_nfiles.load();
  for (std::size_t i = 0; i < n; ++i) ::unlink(g_files[i]);
}

// The config directory: its two files, then itself (with fixed-size buffers: signal-safe).
void remove_dir(const char* dir) noexcept {
  if (!dir[0]) return;
  char path[kPathMax + 16];
  for (const char* f : {"/roudi.toml", "/roudi.log"}) {
    std::size_t n = std::strlen(dir);
    std::memcpy(path, dir, n);
    std::memcpy(path + n, f, std::strlen(f) + 1);
    ::unlink(path);
  }
  ::rmdir(dir);
}

std::string read_all(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// True when some RouDi holds the machine-wide lock that iceoryx 2.0 takes with flock().
bool other_roudi_running() {
  const int fd = ::open("/tmp/iox-unique-roudi.lock", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool held = ::flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK;
  ::close(fd);
  return held;
}

bool wait_child(pid_t pid, std::chrono::milliseconds limit) {
  const auto until = Clock::now() + limit;
  while (Clock::now() < until) {
    if (::waitpid(pid, nullptr, WNOHANG) == pid) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return false;
}

// Memory pools: payload + iceoryx's 40-byte chunk header, 8-byte multiples, up to 64 KiB
// payloads. ~25 MB of data segment instead of the default configuration's ~150 MB.
constexpr const char* kConfig = R"([general]
version = 1

[[segment]]

[[segment.mempool]]
size = 128
count = 1024

[[segment.mempool]]
size = 1088
count = 1024

[[segment.mempool]]
size = 4160
count = 512

[[segment.mempool]]
size = 16448
count = 256

[[segment.mempool]]
size = 65600
count = 256
)";

}  // namespace

std::unique_ptr<Roudi> Roudi::start(std::string& why_not) {
  if (::access(SHMBUS_IOX_ROUDI, X_OK) != 0) {
    why_not = fmt::format("{} is not installed (Debian package iceoryx)", SHMBUS_IOX_ROUDI);
    return nullptr;
  }
  if (other_roudi_running()) {
    why_not = "another iox-roudi runs on this machine; the benchmark starts its own and leaves others alone";
    return nullptr;
  }
  std::unique_ptr<Roudi> r(new Roudi());
  r->owner_ = ::getpid();
  char dir[] = "/tmp/shmbus_bench_iox_XXXXXX";
  if (!::mkdtemp(dir)) {
    why_not = fmt::format("cannot make a directory for RouDi's config: {}", std::strerror(errno));
    return nullptr;
  }
  r->dir_ = dir;
  const std::string config = r->dir_ + "/roudi.toml", log = r->dir_ + "/roudi.log";
  std::ofstream(config) << kConfig;
  g_nfiles.store(0);
  std::memcpy(g_dir, dir, sizeof dir);
  for (const char* role : {"ping", "pong"}) {
    remember("/tmp/" + r->app_name(role));
    remember("/tmp/" + r->app_name(role) + ".lock");
  }
  std::fflush(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setpgid(0, 0);                      // a terminal's Ctrl-C reaches us, not RouDi first
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);   // its tidy shutdown if we die
    if (::getppid() != parent) ::_exit(1);
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd >= 0) {
      ::dup2(fd, 1);
      ::dup2(fd, 2);
    }
    // -k 2: on shutdown, apps still registered get 2 s (not 45) before RouDi kills them.
    ::execl(SHMBUS_IOX_ROUDI, "iox-roudi", "-c", config.c_str(), "-l", "warning", "-k", "2", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  if (pid < 0) {
    why_not = fmt::format("fork: {}", std::strerror(errno));
    return nullptr;
  }
  r->pid_ = pid;
  g_roudi.store(pid);
  const auto until = Clock::now() + std::chrono::seconds(10);
  while (Clock::now() < until) {
    if (read_all(log).find("RouDi is ready for clients") != std::string::npos) {
      // From now on RouDi's machine-wide files are ours: it holds the lock no other RouDi
      // can take. Before, they may belong to another RouDi that won a race for the lock.
      for (const char* f : {"/dev/shm/iceoryx_mgmt", "/tmp/roudi", "/tmp/roudi.lock", "/tmp/iox-unique-roudi.lock"})
        remember(f);
      if (const group* g = ::getgrgid(::getegid())) remember(std::string("/dev/shm/") + g->gr_name);
      g_roudi_ready.store(true);
      return r;
    }
    if (::waitpid(pid, nullptr, WNOHANG) == pid) {
      r->pid_ = 0;
      g_roudi.store(0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  why_not = fmt::format("iox-roudi did not become ready: {}", read_all(log));
  return nullptr;  // the destructor stops it and removes what it left
}

std::string Roudi::app_name(const char* role) const {
  return fmt::format("shmbus_bench_iox_{}_{}", role, owner_);
}

void Roudi::stop() {
  // Ctrl-C waits until RouDi is reaped and forgotten: emergency_stop() must never signal a
  // pid that is no longer RouDi's. Bounded: 12 s at worst, a few ms as a rule.
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  ::pthread_sigmask(SIG_BLOCK, &block, &old);
  if (pid_ > 0) {
    // A tidy shutdown removes RouDi's files; one that fails (RouDi 2.0 aborts when an app
    // it still lists died) or hangs is cut short, and the files go below.
    ::kill(pid_, SIGTERM);
    if (!wait_child(pid_, std::chrono::seconds(10))) {
      ::kill(pid_, SIGKILL);
      wait_child(pid_, std::chrono::seconds(2));
    }
    pid_ = 0;
    g_roudi.store(0);
    g_roudi_ready.store(false);
  }
  // Only with no RouDi of ours alive: whatever is left is ours (another RouDi would have
  // kept us from starting).
  unlink_remembered();
  g_nfiles.store(0);
  if (!dir_.empty()) {
    remove_dir(dir_.c_str());
    dir_.clear();
    g_dir[0] = 0;
  }
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
}

Roudi::~Roudi() { stop(); }

void Roudi::emergency_stop() noexcept {
  if (const pid_t pid = g_roudi.exchange(0); pid > 0) {
    bool reaped = false;
    if (!g_roudi_ready.load()) {
      // Still starting, no app registered: its own shutdown is quick and tidy, and the
      // files it may have made are not yet known to be ours.
      ::kill(pid, SIGTERM);
      for (int i = 0; i < 400 && !(reaped = ::waitpid(pid, nullptr, WNOHANG) == pid); ++i) {
        const timespec five_ms{0, 5'000'000};
        ::nanosleep(&five_ms, nullptr);
      }
    }
    // Ready: apps were registered and are being killed with us, and RouDi 2.0's shutdown
    // aborts on a dead app, leaving its files; so it is killed and its files removed.
    if (!reaped) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
    unlink_remembered();
  }
  remove_dir(g_dir);
}

struct Endpoint::Ports {
  std::optional<iox::popo::UntypedPublisher> pub;
  std::optional<iox::popo::UntypedSubscriber> sub;
};

namespace {
iox::capro::ServiceDescription service(const char* name) {
  return iox::capro::ServiceDescription{"shmbus_bench", iox::capro::IdString_t(iox::cxx::TruncateToCapacity, name), "data"};
}
}  // namespace

Endpoint::Endpoint(const std::string& app, const char* out, const char* in, std::size_t size, bool lossless)
    : ports_(new Ports), size_(size) {
  iox::log::LogManager::GetLogManager().SetDefaultLogLevel(iox::log::LogLevel::kWarn, iox::log::LogLevelOutput::kHideLogLevel);
  iox::runtime::PoshRuntime::initRuntime(iox::RuntimeName_t(iox::cxx::TruncateToCapacity, app.c_str()));
  iox::popo::PublisherOptions po;
  po.historyCapacity = 0;
  iox::popo::SubscriberOptions so;
  so.queueCapacity = lossless ? 256 : 16;  // 256: iceoryx's largest queue
  so.historyRequest = 0;
  if (lossless) {
    po.subscriberTooSlowPolicy = iox::popo::ConsumerTooSlowPolicy::WAIT_FOR_CONSUMER;
    so.queueFullPolicy = iox::popo::QueueFullPolicy::BLOCK_PRODUCER;
  }
  if (out) ports_->pub.emplace(service(out), po);
  if (in) ports_->sub.emplace(service(in), so);
  const auto until = Clock::now() + std::chrono::seconds(10);
  while (!((!ports_->pub || ports_->pub->hasSubscribers()) &&
           (!ports_->sub || ports_->sub->getSubscriptionState() == iox::SubscribeState::SUBSCRIBED))) {
    if (Clock::now() > until) throw std::runtime_error(fmt::format("iceoryx: {} not connected after 10 s", app));
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

Endpoint::~Endpoint() = default;

bool Endpoint::send(const void* data) {
  auto loan = ports_->pub->loan(static_cast<std::uint32_t>(size_), 8);
  if (loan.has_error()) return false;
  void* chunk = loan.value();
  std::memcpy(chunk, data, size_);
  ports_->pub->publish(chunk);
  return true;
}

bool Endpoint::receive(void* into) {
  std::uint32_t spins = 0;
  const auto give_up = Clock::now() + std::chrono::seconds(10);
  for (;;) {
    auto got = ports_->sub->take();
    if (!got.has_error()) {
      const void* chunk = got.value();
      std::memcpy(into, chunk, size_);
      ports_->sub->release(chunk);
      return true;
    }
    if (got.get_error() != iox::popo::ChunkReceiveResult::NO_CHUNK_AVAILABLE) return false;
    if ((++spins & 4095u) == 0 && Clock::now() > give_up) return false;
    __builtin_ia32_pause();
  }
}

void exit_process(int code) { std::exit(code); }

}  // namespace shmbus::bench::iceoryx
