// shmbus_bench: cross-process latency and throughput, with reference rows measured in the
// same run on the same CPUs. See docs/performance.md for how to read the output.
//
//   shmbus_bench latency    [--samples N] [--warmup N] [--size B] [--cpus A,B] [--wait W] [--json]
//   shmbus_bench throughput [--records N] [--size B] [--batch K] [--cpus A,B] [--json]
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>
#include <optional>

#include <boost/interprocess/ipc/message_queue.hpp>
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#ifdef SHMBUS_HAVE_ZMQ
#include <zmq.h>
#endif
#ifdef SHMBUS_HAVE_ICEORYX
#include "iceoryx_peer.h"
#endif

#include <fcntl.h>
#include <unistd.h>

#include "bus/group_client.h"
#include "bus/paths.h"
#include "harness.h"
#include "shmbus/bus.h"
#include "shmbus/consumer.h"
#include "shmbus/producer.h"

using namespace shmbus;
using namespace shmbus::bench;
using json = nlohmann::json;

namespace {

struct alignas(64) Line {
  std::atomic<std::uint64_t> v{0};
};

struct Barrier {
  std::atomic<int> ready{0};
  std::atomic<std::uint64_t> end_ns{0};
  std::atomic<std::uint64_t> count{0};
  std::atomic<int> failed{0};
};

struct Options {
  std::uint64_t samples = 100'000;
  std::uint64_t warmup = 10'000;
  std::size_t size = 64;
  int cpu_a = 0, cpu_b = 1;
  std::string wait = "spin";
  double rate = 0;           // > 0: fixed-rate mode, one-way from the intended send time
  std::string csv, plot;     // output files
  std::string rows = "all";  // comma list: cacheline,spsc,shmbus,unix,pipe,mq,zmq,iceoryx
  std::uint64_t records = 10'000'000;
  std::uint32_t batch = 64;
  std::uint64_t capacity = 1 << 20;
  bool json = false;
  bool spill = false;        // latency: shmbus rows on spilled topics (busd running)
};

struct Row {
  std::string name;
  Percentiles p;      // one-way ns
  double cpu_a = 0;   // % of one CPU, measuring process
  double cpu_b = 0;   // % of one CPU, echoing process
  std::size_t size = 0;
  std::vector<std::uint64_t> samples;  // kept for the plot
};


double cpu_seconds(const rusage& r) {
  return static_cast<double>(r.ru_utime.tv_sec + r.ru_stime.tv_sec) + (r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}

// Measures round trips in the parent; `ping` sends and waits for the echo.
Row measure(const std::string& name, const Options& o, const std::function<void()>& setup_parent,
            const std::function<void(std::uint64_t)>& ping, const std::function<int()>& child) {
  std::vector<std::uint64_t> rtt;
  rtt.reserve(o.samples);
  rusage before{}, after{}, kid_before{}, kid{};
  ::getrusage(RUSAGE_CHILDREN, &kid_before);
  double wall = 0;
  const std::uint64_t pair_start = now_ns();
  const int st = run_pair(o.cpu_a, o.cpu_b,
                          [&] {
                            setup_parent();
                            for (std::uint64_t i = 0; i < o.warmup; ++i) ping(i);
                            ::getrusage(RUSAGE_SELF, &before);
                            const std::uint64_t t_start = now_ns();
                            for (std::uint64_t i = 0; i < o.samples; ++i) {
                              const std::uint64_t t0 = now_ns();
                              ping(o.warmup + i);
                              rtt.push_back(now_ns() - t0);
                            }
                            wall = static_cast<double>(now_ns() - t_start) / 1e9;
                            ::getrusage(RUSAGE_SELF, &after);
                          },
                          child);
  ::getrusage(RUSAGE_CHILDREN, &kid);
  const double pair_wall = static_cast<double>(now_ns() - pair_start) / 1e9;
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) std::cerr << name << ": echo process failed (status " << st << ")\n";
  for (auto& r : rtt) r /= 2;  // one-way = round trip / 2
  Row row{name, percentiles(rtt), 0, 0, o.size, std::move(rtt)};
  row.cpu_a = 100.0 * (cpu_seconds(after) - cpu_seconds(before)) / wall;
  // The echo process over its whole life (attach, warm-up, measurement).
  row.cpu_b = 100.0 * (cpu_seconds(kid) - cpu_seconds(kid_before)) / std::max(pair_wall, 1e-9);
  return row;
}

Row cacheline(const Options& o) {
  auto* line = shared_scratch<Line>();
  const std::uint64_t total = o.warmup + o.samples;
  Row r = measure(
      "cache-line ping-pong", o, [] {},
      [&](std::uint64_t i) {
        line->v.store(2 * i + 1, std::memory_order_release);
        while (line->v.load(std::memory_order_acquire) != 2 * i + 2) __builtin_ia32_pause();
      },
      [&] {
        for (std::uint64_t i = 0; i < total; ++i) {
          while (line->v.load(std::memory_order_acquire) != 2 * i + 1) __builtin_ia32_pause();
          line->v.store(2 * i + 2, std::memory_order_release);
        }
        return 0;
      });
  free_scratch(line);
  return r;
}

// Reads or writes all of n bytes (a stream socket or a pipe may move fewer at a time).
bool full(int fd, char* p, std::size_t n, bool rd) {
  while (n) {
    const ssize_t k = rd ? ::read(fd, p, n) : ::write(fd, p, n);
    if (k <= 0) return false;
    p += k;
    n -= static_cast<std::size_t>(k);
  }
  return true;
}

Row unix_socket(const Options& o) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) throw std::runtime_error("socketpair");
  const std::uint64_t total = o.warmup + o.samples;
  std::vector<char> buf(o.size, 'x');
  Row r = measure(
      "unix socket ping-pong", o, [&] { ::close(sv[1]); },
      [&](std::uint64_t) {
        full(sv[0], buf.data(), buf.size(), false);
        full(sv[0], buf.data(), buf.size(), true);
      },
      [&] {
        ::close(sv[0]);
        for (std::uint64_t i = 0; i < total; ++i)
          if (!full(sv[1], buf.data(), buf.size(), true) || !full(sv[1], buf.data(), buf.size(), false)) return 1;
        return 0;
      });
  ::close(sv[0]);
  return r;
}

Row pipe_row(const Options& o) {
  int ab[2], ba[2];
  if (::pipe(ab) != 0 || ::pipe(ba) != 0) throw std::runtime_error("pipe");
  const std::uint64_t total = o.warmup + o.samples;
  std::vector<char> buf(o.size, 'x');
  Row r = measure(
      "pipe ping-pong", o, [] {},
      [&](std::uint64_t) {
        full(ab[1], buf.data(), buf.size(), false);
        full(ba[0], buf.data(), buf.size(), true);
      },
      [&] {
        for (std::uint64_t i = 0; i < total; ++i)
          if (!full(ab[0], buf.data(), buf.size(), true) || !full(ba[1], buf.data(), buf.size(), false)) return 1;
        return 0;
      });
  for (int fd : {ab[0], ab[1], ba[0], ba[1]}) ::close(fd);
  return r;
}

// Boost.Interprocess message_queue: a mutex and condition variables in shared memory,
// blocking send and receive, as it is normally used.
Row message_queue_row(const Options& o) {
  namespace bip = boost::interprocess;
  const std::string a = fmt::format("shmbus_bench_mq_a_{}", ::getpid()), b = fmt::format("shmbus_bench_mq_b_{}", ::getpid());
  bip::message_queue::remove(a.c_str());
  bip::message_queue::remove(b.c_str());
  bip::message_queue qa(bip::create_only, a.c_str(), 64, o.size), qb(bip::create_only, b.c_str(), 64, o.size);
  const std::uint64_t total = o.warmup + o.samples;
  std::vector<char> buf(o.size, 'x');
  Row r = measure(
      "Boost message_queue ping-pong", o, [] {},
      [&](std::uint64_t) {
        bip::message_queue::size_type got;
        unsigned prio;
        qa.send(buf.data(), buf.size(), 0);
        qb.receive(buf.data(), buf.size(), got, prio);
      },
      [&] {
        bip::message_queue ca(bip::open_only, a.c_str()), cb(bip::open_only, b.c_str());
        std::vector<char> in(o.size);
        for (std::uint64_t i = 0; i < total; ++i) {
          bip::message_queue::size_type got;
          unsigned prio;
          ca.receive(in.data(), in.size(), got, prio);
          cb.send(in.data(), got, 0);
        }
        return 0;
      });
  bip::message_queue::remove(a.c_str());
  bip::message_queue::remove(b.c_str());
  return r;
}

#ifdef SHMBUS_HAVE_ZMQ
// ZeroMQ PAIR sockets over ipc:// (a Unix socket underneath, with ZeroMQ's I/O threads).
Row zmq_row(const Options& o) {
  const std::string ep = fmt::format("ipc:///tmp/shmbus_bench_zmq_{}", ::getpid());
  const std::uint64_t total = o.warmup + o.samples;
  void* ctx = nullptr;
  void* sock = nullptr;
  std::vector<char> buf(o.size, 'x');
  Row r = measure(
      "ZeroMQ ipc ping-pong", o,
      [&] {
        ctx = zmq_ctx_new();
        sock = zmq_socket(ctx, ZMQ_PAIR);
        zmq_bind(sock, ep.c_str());
      },
      [&](std::uint64_t) {
        zmq_send(sock, buf.data(), buf.size(), 0);
        zmq_recv(sock, buf.data(), buf.size(), 0);
      },
      [&] {
        void* c = zmq_ctx_new();
        void* s = zmq_socket(c, ZMQ_PAIR);
        zmq_connect(s, ep.c_str());
        std::vector<char> in(o.size);
        for (std::uint64_t i = 0; i < total; ++i) {
          if (zmq_recv(s, in.data(), in.size(), 0) < 0) return 1;
          zmq_send(s, in.data(), in.size(), 0);
        }
        zmq_close(s);
        zmq_ctx_term(c);
        return 0;
      });
  zmq_close(sock);
  zmq_ctx_term(ctx);
  ::unlink(ep.substr(6).c_str());
  return r;
}
#endif

#ifdef SHMBUS_HAVE_ICEORYX
// Runs `body` in a forked process while a RouDi started for it runs, then stops RouDi.
// Both ends of an iceoryx row live in forked processes (iceoryx_peer.h says why); `body`
// returns the process's exit status. False, with the reason on stderr, when RouDi cannot
// be started; `status` is the forked process's wait status.
bool with_roudi(const std::function<int(const iceoryx::Roudi&)>& body, int& status) {
  std::string why;
  auto roudi = iceoryx::Roudi::start(why);
  if (!roudi) {
    std::cerr << "shmbus_bench: iceoryx row skipped: " << why << "\n";
    return false;
  }
  std::fflush(nullptr);
  std::cout.flush();
  const pid_t self = ::getpid();
  const pid_t measurer = ::fork();
  if (measurer == 0) {
    die_with_parent(self);
    int rc = 1;
    try {
      rc = body(*roudi);
    } catch (const std::exception& e) {
      std::cerr << e.what() << "\n";
    }
    iceoryx::exit_process(rc);  // never unwinds to `roudi`'s destructor here
  }
  g_running_child.store(measurer);
  ::waitpid(measurer, &status, 0);
  g_running_child.store(0);
  roudi->stop();
  return true;
}

// Eclipse iceoryx: untyped publisher/subscriber pairs through a RouDi started for the row,
// each side copying the sample in and out as the other rows do; the samples come back
// through shared memory.
std::optional<Row> iceoryx_row(const Options& o) {
  const std::uint64_t total = o.warmup + o.samples;
  struct Out {
    std::atomic<int> ok{0};
    double cpu_a = 0, cpu_b = 0;
    std::uint64_t n = 0;
  };
  auto* out = shared_scratch<Out>();
  auto* samples = static_cast<std::uint64_t*>(
      ::mmap(nullptr, o.samples * sizeof(std::uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  const std::string name = "Eclipse iceoryx ping-pong";
  int st = 0;
  const bool ran = with_roudi(
      [&](const iceoryx::Roudi& roudi) {
        const std::string ping_app = roudi.app_name("ping"), pong_app = roudi.app_name("pong");
        std::unique_ptr<iceoryx::Endpoint> ep;
        std::vector<std::byte> buf(o.size, std::byte{0x5a});
        std::atomic<bool> failed{false};
        Row r = measure(
            name, o, [&] { ep = std::make_unique<iceoryx::Endpoint>(ping_app, "ping", "pong", o.size); },
            [&](std::uint64_t) {
              if (!ep->send(buf.data()) || !ep->receive(buf.data())) failed = true;
            },
            [&]() -> int {
              int echo_rc = 1;
              try {
                iceoryx::Endpoint e(pong_app, "pong", "ping", o.size);
                std::vector<std::byte> in(o.size);
                std::uint64_t i = 0;
                while (i < total && e.receive(in.data()) && e.send(in.data())) ++i;
                echo_rc = i == total ? 0 : 1;
              } catch (const std::exception& e) {
                std::cerr << e.what() << "\n";
              }
              iceoryx::exit_process(echo_rc);
            });
        if (failed || r.samples.size() != o.samples) return 1;
        std::copy(r.samples.begin(), r.samples.end(), samples);
        out->n = r.samples.size();
        out->cpu_a = r.cpu_a;
        out->cpu_b = r.cpu_b;
        out->ok = 1;
        return 0;
      },
      st);
  std::optional<Row> row;
  if (out->ok.load()) {
    std::vector<std::uint64_t> v(samples, samples + out->n);
    row = Row{name, percentiles(v), out->cpu_a, out->cpu_b, o.size, std::move(v)};
  } else if (ran) {
    std::cerr << "shmbus_bench: iceoryx row failed (status " << st << ")\n";
  }
  ::munmap(samples, o.samples * sizeof(std::uint64_t));
  free_scratch(out);
  return row;
}

// Eclipse iceoryx throughput, 1 publisher process -> 1 subscriber process: lossless
// (the publisher waits for a full subscriber queue), one loan and publish per record,
// each side copying as the shmbus rows' producer does. At most 2M records (it is slow).
std::optional<json> iceoryx_throughput(const Options& o) {
  const std::uint64_t n = std::min<std::uint64_t>(o.records, 2'000'000);
  struct Out {
    std::atomic<int> ready{0};
    std::atomic<std::uint64_t> start{0}, end{0}, got{0};
  };
  auto* out = shared_scratch<Out>();
  int st = 0;
  const bool ran = with_roudi(
      [&](const iceoryx::Roudi& roudi) {
        const std::string tx = roudi.app_name("ping"), rx = roudi.app_name("pong");
        const int pair = run_pair(
            o.cpu_a, o.cpu_b,
            [&] {
              iceoryx::Endpoint e(tx, "stream", nullptr, o.size, /*lossless=*/true);
              std::vector<std::byte> buf(o.size, std::byte{1});
              out->ready.fetch_add(1);
              while (out->ready.load() < 2) __builtin_ia32_pause();
              out->start.store(now_ns());
              for (std::uint64_t i = 0; i < n && e.send(buf.data()); ++i) {
              }
              // The publisher stays until its last samples are taken.
              while (out->end.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
            },
            [&]() -> int {
              std::uint64_t got = 0;
              try {
                iceoryx::Endpoint e(rx, nullptr, "stream", o.size, /*lossless=*/true);
                std::vector<std::byte> in(o.size);
                out->ready.fetch_add(1);
                while (got < n && e.receive(in.data())) ++got;
              } catch (const std::exception& e) {
                std::cerr << e.what() << "\n";
              }
              out->got.store(got);
              out->end.store(now_ns());
              iceoryx::exit_process(got == n ? 0 : 1);
            });
        return WIFEXITED(pair) && WEXITSTATUS(pair) == 0 ? 0 : 1;
      },
      st);
  std::optional<json> row;
  if (ran && WIFEXITED(st) && WEXITSTATUS(st) == 0 && out->got.load() == n) {
    const double secs = static_cast<double>(out->end.load() - out->start.load()) / 1e9;
    row = json{{"mechanism", "Eclipse iceoryx 1->1, publish per record"}, {"size", o.size}, {"records", n},
               {"seconds", secs}, {"records_per_s", static_cast<double>(n) / secs},
               {"mb_per_s", static_cast<double>(n * o.size) / secs / 1e6}};
  } else if (ran) {
    std::cerr << "shmbus_bench: iceoryx throughput row failed (status " << st << ", " << out->got.load() << " of " << n
              << " records)\n";
  }
  free_scratch(out);
  return row;
}
#endif

// A plain SPSC ring of 64-byte-multiple slots each way, spinning: what a single-purpose
// shared-memory queue costs, with nothing of a bus.
Row spsc_row(const Options& o) {
  constexpr std::size_t kSlots = 1024;
  const std::size_t slot = std::max<std::size_t>(64, (o.size + 63) / 64 * 64);
  struct alignas(64) Side {
    std::atomic<std::uint64_t> tail{0};
  };
  struct Shared {
    Side ab, ba;
  };
  auto* sh = shared_scratch<Shared>();
  auto* data = static_cast<std::byte*>(::mmap(nullptr, 2 * kSlots * slot, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  std::byte* ring_ab = data;
  std::byte* ring_ba = data + kSlots * slot;
  const std::uint64_t total = o.warmup + o.samples;
  std::vector<std::byte> buf(o.size, std::byte{1});
  Row r = measure(
      "plain SPSC ring ping-pong", o, [] {},
      [&](std::uint64_t i) {
        std::memcpy(ring_ab + (i % kSlots) * slot, buf.data(), buf.size());
        sh->ab.tail.store(i + 1, std::memory_order_release);
        while (sh->ba.tail.load(std::memory_order_acquire) < i + 1) __builtin_ia32_pause();
        std::memcpy(buf.data(), ring_ba + (i % kSlots) * slot, buf.size());
      },
      [&] {
        std::vector<std::byte> in(o.size);
        for (std::uint64_t i = 0; i < total; ++i) {
          while (sh->ab.tail.load(std::memory_order_acquire) < i + 1) __builtin_ia32_pause();
          std::memcpy(in.data(), ring_ab + (i % kSlots) * slot, in.size());
          std::memcpy(ring_ba + (i % kSlots) * slot, in.data(), in.size());
          sh->ba.tail.store(i + 1, std::memory_order_release);
        }
        return 0;
      });
  ::munmap(data, 2 * kSlots * slot);
  free_scratch(sh);
  return r;
}

WaitStrategy parse_wait(const std::string& w) {
  if (w == "spin") return WaitStrategy::kSpin;
  if (w == "yield") return WaitStrategy::kYield;
  if (w == "block") return WaitStrategy::kBlock;
  return WaitStrategy::kAdaptive;
}

std::string bench_bus() { return fmt::format("bench_{}", ::getpid()); }

// Removes the bench's segments however the run ends (also on Ctrl-C).
std::string g_bus_to_remove;
extern "C" void on_interrupt(int sig) {
  // Leave nothing behind: the other process of the pair, the bus, the message queues.
  if (const pid_t child = g_running_child.load(); child > 0) ::kill(child, SIGKILL);
#ifdef SHMBUS_HAVE_ICEORYX
  iceoryx::Roudi::emergency_stop();
#endif
  if (!g_bus_to_remove.empty()) (void)Bus::destroy(g_bus_to_remove, /*purge_disk=*/true);
  for (const char* q : {"a", "b"}) {
    char name[64];
    std::snprintf(name, sizeof name, "/dev/shm/shmbus_bench_mq_%s_%d", q, static_cast<int>(::getpid()));
    ::unlink(name);
  }
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

// The bench's bus is gone with its busd (spilled rows start one) and its disk logs.
void remove_bench_bus(const std::string& bus_name) {
  if (auto c = BusdConnection::connect(bus_name, std::chrono::seconds(1), /*autostart=*/false)) {
    (void)(*c)->request({{"op", "shutdown"}}, std::chrono::seconds(2));
    // Until it is gone: the next row's bus has the same name and must get a busd of its own.
    for (int i = 0; i < 400 && BusdConnection::connect(bus_name, std::chrono::milliseconds(100), false); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  (void)Bus::destroy(bus_name, /*purge_disk=*/true);
  g_bus_to_remove.clear();
}

// The bench's bus, created fresh and removed however the run ends.
std::shared_ptr<Bus> new_bench_bus() {
  BusOptions bo;
  bo.name = bench_bus();
  g_bus_to_remove = bo.name;
  auto bus = Bus::attach(bo);
  if (!bus) throw std::runtime_error(bus.error().message);
  return *bus;
}

Row shmbus_row(const Options& o, RetentionMode mode, bool hold) {
  const std::string bus_name = bench_bus();
  {
    auto bus = new_bench_bus();
    TopicConfig tc;
    tc.capacity = 1 << 20;
    tc.retention = mode;
    tc.spill.enabled = o.spill;
    tc.spill.fsync = FsyncPolicy::kInterval;
    for (const char* t : {"ping", "pong"})
      if (auto ok = bus->create_topic(t, tc); !ok) throw std::runtime_error(ok.error().message);
  }
  const std::uint64_t total = o.warmup + o.samples;
  ConsumerConfig cc;
  cc.auto_offset_reset = OffsetReset::kEarliest;
  cc.wait = parse_wait(o.wait);
  cc.hold_producers = hold;
  std::vector<std::byte> value(o.size, std::byte{0x5a});
  auto* ready = shared_scratch<Barrier>();
  std::optional<Producer> prod;
  std::optional<Consumer> cons;
  auto attach = [&](const char* in, const char* out) {
    BusOptions bo;
    bo.name = bus_name;
    auto bus = Bus::attach(bo);
    prod.emplace(std::move(*Producer::create(*bus)));
    cons.emplace(std::move(*Consumer::create(*bus, cc)));
    (void)cons->assign({{in, 0}});
    // Open the writer and the topic mapping before the clock runs.
    (void)out;
  };
  const std::string name = fmt::format("shmbus {} ({}{}{})", o.wait, mode == RetentionMode::kBlock ? "block" : "overwrite",
                                       hold ? ", zero-copy" : "", o.spill ? ", spilled" : "");
  if (o.spill) {
    // busd spills these topics: have it running (and spilling) before the clock starts.
    auto c = BusdConnection::connect(bus_name, std::chrono::seconds(5));
    if (!c) throw std::runtime_error("spilled rows need busd: " + c.error().message);
  }
  if (o.rate > 0) {
    // Fixed rate: one process sends at the intended times, the other measures
    // now - intended on the same monotonic clock. Queueing shows up; nothing is omitted.
    struct Out {
      std::atomic<int> ready{0};
      std::atomic<std::uint64_t> n{0};
    };
    auto* out = shared_scratch<Out>();
    const std::uint64_t total = o.warmup + o.samples;
    auto* lat = static_cast<std::uint64_t*>(::mmap(nullptr, total * 8, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
    rusage k0{}, k1{};
    ::getrusage(RUSAGE_CHILDREN, &k0);
    const std::uint64_t t_start = now_ns();
    run_pair(o.cpu_a, o.cpu_b,
             [&] {
               BusOptions bo;
               bo.name = bus_name;
               auto bus = Bus::attach(bo);
               auto p = Producer::create(*bus);
               while (out->ready.load() < 1) __builtin_ia32_pause();
               const std::uint64_t t0 = now_ns() + 1'000'000;
               std::vector<std::byte> v(std::max<std::size_t>(o.size, 8));
               for (std::uint64_t i = 0; i < total; ++i) {
                 const std::uint64_t at = t0 + static_cast<std::uint64_t>(static_cast<double>(i) * 1e9 / o.rate);
                 while (now_ns() < at) __builtin_ia32_pause();
                 std::memcpy(v.data(), &at, 8);
                 (void)p->send("ping", Message{std::nullopt, Bytes(v)}, 0);
               }
             },
             [&] {
               BusOptions bo;
               bo.name = bus_name;
               auto bus = Bus::attach(bo);
               auto c = Consumer::create(*bus, cc);
               (void)c->assign({{"ping", 0}});
               out->ready.store(1);
               std::uint64_t i = 0;
               while (i < total) {
                 auto b = c->poll(std::chrono::seconds(5));
                 if (!b || b->empty()) return 1;
                 const std::uint64_t now = now_ns();
                 for (const auto& r : *b) {
                   std::uint64_t at;
                   std::memcpy(&at, r.value.data(), 8);
                   lat[i++] = now - at;
                 }
               }
               return 0;
             });
    ::getrusage(RUSAGE_CHILDREN, &k1);
    const double wall = static_cast<double>(now_ns() - t_start) / 1e9;
    std::vector<std::uint64_t> v(lat + o.warmup, lat + total);
    ::munmap(lat, total * 8);
    free_scratch(out);
    remove_bench_bus(bus_name);
    Row r{fmt::format("{} at {:.0f}/s", name, o.rate), percentiles(v), 0, 0, o.size, std::move(v)};
    r.cpu_b = 100.0 * (cpu_seconds(k1) - cpu_seconds(k0)) / wall;
    return r;
  }
  Row r = measure(
      name, o,
      [&] {
        attach("pong", "ping");
        ready->ready.fetch_add(1);
        while (ready->ready.load() < 2) __builtin_ia32_pause();
      },
      [&](std::uint64_t) {
        Message m{std::nullopt, Bytes(value)};
        if (!prod->send("ping", m, 0)) ready->failed = 1;
        for (;;) {
          auto b = cons->poll(std::chrono::seconds(5));
          if (!b || b->empty()) {
            ready->failed = 1;
            return;
          }
          break;
        }
      },
      [&] {
        attach("ping", "pong");
        ready->ready.fetch_add(1);
        while (ready->ready.load() < 2) __builtin_ia32_pause();
        for (std::uint64_t i = 0; i < total;) {
          auto b = cons->poll(std::chrono::seconds(5));
          if (!b || b->empty()) return 1;
          for (std::size_t k = 0; k < b->size(); ++k, ++i) {
            Message m{std::nullopt, (*b)[k].value};
            if (!prod->send("pong", m, 0)) return 1;
          }
        }
        return 0;
      });
  prod.reset();
  cons.reset();
  if (ready->failed) std::cerr << name << ": a round trip failed\n";
  free_scratch(ready);
  remove_bench_bus(bus_name);
  return r;
}

double ref_p50(const std::vector<Row>& rows, std::size_t size) {
  for (const auto& r : rows)
    if (r.name == "cache-line ping-pong" && r.size == size) return r.p.p50;
  return rows.empty() ? 1 : rows[0].p.p50;
}

bool plot_rows(const std::vector<Row>& rows, const std::string& file);

void print_rows(const std::vector<Row>& rows, const Options& o) {
  if (o.json) {
    json arr = json::array();
    for (const auto& r : rows)
      arr.push_back({{"mechanism", r.name}, {"samples", r.p.samples}, {"size", r.size}, {"p50_ns", r.p.p50},
                     {"p90_ns", r.p.p90}, {"p99_ns", r.p.p99}, {"p99_9_ns", r.p.p999}, {"p99_99_ns", r.p.p9999},
                     {"max_ns", r.p.max}, {"mean_ns", r.p.mean}, {"p50_ratio_to_cacheline", r.p.p50 / ref_p50(rows, r.size)},
                     {"cpu_percent_a", r.cpu_a}, {"cpu_percent_b", r.cpu_b}});
    std::cout << arr.dump(2) << "\n";
  } else {
    std::cout << fmt::format("one-way latency, ns ({}), {} samples after {} warm-up, cpus {},{}\n",
                             o.rate > 0 ? "rows 'at N/s': from the intended send time at that rate; the others: round trip / 2"
                                        : "round trip / 2",
                             o.samples, o.warmup,
                             o.cpu_a, o.cpu_b);
    std::cout << fmt::format("{:<44} {:>6} {:>7} {:>7} {:>7} {:>8} {:>8} {:>9} {:>7} {:>8} {:>6} {:>6}\n", "mechanism", "size",
                             "p50", "p90", "p99", "p99.9", "p99.99", "max", "mean", "p50/ref", "cpuA%", "cpuB%");
    for (const auto& r : rows)
      std::cout << fmt::format("{:<44} {:>6} {:>7.0f} {:>7.0f} {:>7.0f} {:>8.0f} {:>8.0f} {:>9.0f} {:>7.0f} {:>7.2f}x {:>6.0f} {:>6.0f}\n",
                               r.name, r.size, r.p.p50, r.p.p90, r.p.p99, r.p.p999, r.p.p9999, r.p.max, r.p.mean,
                               r.p.p50 / ref_p50(rows, r.size), r.cpu_a, r.cpu_b);
  }
  if (!o.csv.empty()) {
    std::ofstream f(o.csv);
    f << "mechanism,size,samples,p50_ns,p90_ns,p99_ns,p99_9_ns,p99_99_ns,max_ns,mean_ns,p50_ratio,cpu_a_percent,cpu_b_percent\n";
    for (const auto& r : rows)
      f << fmt::format("\"{}\",{},{},{},{},{},{},{},{},{:.1f},{:.3f},{:.1f},{:.1f}\n", r.name, r.size, r.p.samples, r.p.p50, r.p.p90,
                       r.p.p99, r.p.p999, r.p.p9999, r.p.max, r.p.mean, r.p.p50 / ref_p50(rows, r.size), r.cpu_a, r.cpu_b);
  }
  if (!o.plot.empty() && plot_rows(rows, o.plot) && !o.json) std::cout << "plot: " << o.plot << "\n";
}

// Percentile curves drawn by gnuplot (x: percentile on a log "nines" axis, y: ns, log):
// one panel per record size, each mechanism in the same colour in every panel, the
// shmbus rows solid and the others dashed.
bool plot_rows(const std::vector<Row>& rows, const std::string& file) {
  char dir_tmpl[] = "/tmp/shmbus-plot.XXXXXX";
  const std::string dir = ::mkdtemp(dir_tmpl) ? dir_tmpl : "/tmp";
  std::vector<std::size_t> sizes;
  std::vector<std::string> names;
  for (const auto& r : rows) {
    if (std::find(sizes.begin(), sizes.end(), r.size) == sizes.end()) sizes.push_back(r.size);
    if (std::find(names.begin(), names.end(), r.name) == names.end()) names.push_back(r.name);
  }
  static constexpr const char* kColours[] = {"#000000", "#808080", "#d62728", "#ff7f0e", "#2ca02c", "#17becf",
                                             "#1f77b4", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#7f7f7f"};
  std::string script = fmt::format(
      "set terminal {} size 1300,{} noenhanced\nset output '{}'\nset multiplot layout {},1\nset logscale xy\n"
      "set xlabel 'percentile'\nset ylabel 'one-way latency, ns'\nset grid\nset key outside right top\n"
      "set xrange [1.6:1.6e6]\nset xtics ('50' 2, '90' 10, '99' 100, '99.9' 1000, '99.99' 10000, '99.999' 100000, 'max' 1e6)\n",
      file.ends_with(".png") ? "pngcairo" : "svg", 360 * sizes.size(), file, sizes.size());
  for (const std::size_t size : sizes) {
    script += fmt::format("set title '{}-byte records'\nplot ", size);
    bool first = true;
    for (std::size_t k = 0; k < rows.size(); ++k) {
      if (rows[k].size != size) continue;
      auto v = rows[k].samples;
      std::sort(v.begin(), v.end());
      const std::string data = fmt::format("{}/row{}.dat", dir, k);
      std::ofstream d(data);
      for (double q : {0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999}) {
        if (v.empty()) break;
        const std::size_t at = std::min(v.size() - 1, static_cast<std::size_t>(q * static_cast<double>(v.size())));
        d << 1.0 / (1.0 - q) << " " << std::max<std::uint64_t>(1, v[at]) << "\n";
      }
      if (!v.empty()) d << 1e6 << " " << std::max<std::uint64_t>(1, v.back()) << "\n";  // the max, at its own tic
      const std::size_t colour = static_cast<std::size_t>(std::find(names.begin(), names.end(), rows[k].name) - names.begin());
      script += fmt::format("{}'{}' using 1:2 with linespoints lw 1.5 lc rgb '{}' dt {} title '{}'", first ? "" : ", ", data,
                            kColours[colour % std::size(kColours)], rows[k].name.starts_with("shmbus") ? 1 : 2, rows[k].name);
      first = false;
    }
    script += "\n";
  }
  script += "unset multiplot\n";
  const std::string sp = dir + "/plot.gp";
  std::ofstream(sp) << script;
  const int rc = std::system(fmt::format("gnuplot '{}'", sp).c_str());
  std::filesystem::remove_all(dir);
  if (rc != 0) std::cerr << "shmbus_bench: gnuplot failed (is gnuplot installed?)\n";
  return rc == 0;
}

// A consumer with the given wait strategy on an idle topic: how much CPU does it burn?
double idle_cpu(const Options& o, double seconds) {
  const std::string bus_name = bench_bus();
  g_bus_to_remove = bus_name;
  BusOptions bo;
  bo.name = bus_name;
  {
    auto bus = Bus::attach(bo);
    if (auto ok = (*bus)->create_topic("idle", TopicConfig{}); !ok) throw std::runtime_error(ok.error().message);
  }
  auto bus = Bus::attach(bo);
  ConsumerConfig cc;
  cc.wait = parse_wait(o.wait);
  auto c = Consumer::create(*bus, cc);
  (void)c->assign({{"idle", 0}});
  rusage a{}, b{};
  ::getrusage(RUSAGE_SELF, &a);
  const std::uint64_t t0 = now_ns();
  while (static_cast<double>(now_ns() - t0) < seconds * 1e9) (void)c->poll(std::chrono::milliseconds(200));
  ::getrusage(RUSAGE_SELF, &b);
  const double wall = static_cast<double>(now_ns() - t0) / 1e9;
  c = Consumer::create(*bus, cc);
  bus->reset();
  (void)Bus::destroy(bus_name);
  g_bus_to_remove.clear();
  return 100.0 * (cpu_seconds(b) - cpu_seconds(a)) / wall;
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string x; std::getline(in, x, ',');)
    if (!x.empty()) out.push_back(x);
  return out;
}

// The rows `--rows` asks for ("all", or a comma list), checked against those this build has.
class RowFilter {
 public:
  RowFilter(const std::string& rows, std::vector<std::string> known) : all_(rows == "all"), want_(split(rows)) {
    for (const auto& r : want_)
      if (!all_ && std::find(known.begin(), known.end(), r) == known.end())
        throw std::runtime_error(fmt::format("--rows: no row '{}' in this build (rows: {})", r, fmt::join(known, ",")));
  }
  // Whether to run the row named `r`.
  bool operator()(const char* r) const { return all_ || std::find(want_.begin(), want_.end(), r) != want_.end(); }

 private:
  bool all_;
  std::vector<std::string> want_;
};

// Rows that exist only when the peer's library was found at build time.
std::vector<std::string> with_peers(std::vector<std::string> rows, bool zmq) {
#ifdef SHMBUS_HAVE_ZMQ
  if (zmq) rows.push_back("zmq");
#else
  (void)zmq;
#endif
#ifdef SHMBUS_HAVE_ICEORYX
  rows.push_back("iceoryx");
#endif
  return rows;
}

// A fresh bus for one throughput row, with one `block` topic; removed on Ctrl-C too.
BusOptions bench_bus_with_block_topic(const std::string& topic, std::uint64_t capacity) {
  BusOptions bo;
  bo.name = bench_bus();
  g_bus_to_remove = bo.name;
  auto bus = Bus::attach(bo);
  if (!bus) throw std::runtime_error(bus.error().message);
  TopicConfig tc;
  tc.capacity = capacity;
  tc.retention = RetentionMode::kBlock;
  if (auto ok = (*bus)->create_topic(topic, tc); !ok) throw std::runtime_error(ok.error().message);
  return bo;
}

// 1 producer process -> 1 consumer process. The consumer holds the producer back (block
// retention) so every record is delivered; it reads views in place.
json throughput(const Options& o, bool batched, std::uint32_t alignment) {
  const BusOptions bo = bench_bus_with_block_topic("tp", o.capacity);
  const std::string bus_name = bo.name;
  auto* sh = shared_scratch<Barrier>();
  std::uint64_t start = 0;
  const std::uint64_t n = o.records;
  rusage kid{};
  run_pair(
      o.cpu_a, o.cpu_b,
      [&] {
        auto bus = Bus::attach(bo);
        ProducerConfig pc;
        pc.record_alignment = alignment;
        auto p = Producer::create(*bus, pc);
        std::vector<std::byte> value(o.size, std::byte{1});
        std::vector<Message> batch(batched ? o.batch : 1, Message{std::nullopt, Bytes(value)});
        while (sh->ready.load() < 1) __builtin_ia32_pause();
        start = now_ns();
        for (std::uint64_t i = 0; i < n;) {
          const std::size_t k = std::min<std::uint64_t>(batch.size(), n - i);
          if (!p->send_batch("tp", std::span<const Message>(batch.data(), k), 0)) {
            sh->failed = 1;
            break;
          }
          i += k;
        }
      },
      [&] {
        auto bus = Bus::attach(bo);
        ConsumerConfig cc;
        cc.auto_offset_reset = OffsetReset::kEarliest;
        cc.wait = WaitStrategy::kSpin;
        cc.hold_producers = true;
        cc.max_poll_records = 4096;
        auto c = Consumer::create(*bus, cc);
        (void)c->assign({{"tp", 0}});
        sh->ready.store(1);
        std::uint64_t got = 0, bytes = 0;
        while (got < n) {
          auto b = c->poll(std::chrono::seconds(5));
          if (!b || b->empty()) return 1;
          got += b->size();
          for (const auto& r : *b) bytes += r.value.size();
        }
        sh->end_ns.store(now_ns());
        sh->count.store(bytes);
        return 0;
      });
  ::getrusage(RUSAGE_CHILDREN, &kid);
  const double secs = static_cast<double>(sh->end_ns.load() - start) / 1e9;
  json j = {{"mechanism", fmt::format("shmbus 1->1 {}, align {}", batched ? fmt::format("batch {}", o.batch) : "single", alignment)},
            {"size", o.size},
            {"records", n},
            {"seconds", secs},
            {"records_per_s", static_cast<double>(n) / secs},
            {"mb_per_s", static_cast<double>(sh->count.load()) / secs / 1e6},
            {"failed", sh->failed.load() != 0}};
  free_scratch(sh);
  (void)Bus::destroy(bus_name);
  g_bus_to_remove.clear();
  return j;
}

// N producer processes -> 1 consumer, or 1 producer -> N consumers each reading every
// record (fan-out). Consumers hold the producers back, so nothing is lost; more processes
// than CPUs share them, so consumers wait adaptively here.
json fan(const Options& o, std::uint32_t producers, std::uint32_t consumers) {
  const BusOptions bo = bench_bus_with_block_topic("fan", o.capacity);
  const std::string bus_name = bo.name;
  struct Sh {
    std::atomic<std::uint32_t> ready{0};
    std::atomic<std::uint64_t> start{0};
    std::atomic<std::uint64_t> end{0};
    std::atomic<int> failed{0};
  };
  auto* sh = shared_scratch<Sh>();
  const std::uint64_t per_producer = o.records / producers, n = per_producer * producers;
  const pid_t self = ::getpid();
  std::vector<pid_t> kids;
  for (std::uint32_t c = 0; c < consumers; ++c) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      die_with_parent(self);
      auto bus = Bus::attach(bo);
      ConsumerConfig cc;
      cc.auto_offset_reset = OffsetReset::kEarliest;
      cc.hold_producers = true;
      cc.max_poll_records = 4096;
      auto con = Consumer::create(*bus, cc);
      (void)con->assign({{"fan", 0}});
      sh->ready.fetch_add(1);
      std::uint64_t got = 0;
      while (got < n) {
        auto b = con->poll(std::chrono::seconds(10));
        if (!b || b->empty()) ::_exit(1);
        got += b->size();
      }
      std::uint64_t now = now_ns(), prev = sh->end.load();
      while (now > prev && !sh->end.compare_exchange_weak(prev, now)) {
      }
      ::_exit(0);
    }
    kids.push_back(pid);
  }
  while (sh->ready.load() < consumers) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  sh->start.store(now_ns());
  for (std::uint32_t p = 0; p < producers; ++p) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      die_with_parent(self);
      auto bus = Bus::attach(bo);
      auto prod = Producer::create(*bus);
      std::vector<std::byte> value(o.size, std::byte{1});
      std::vector<Message> batch(o.batch, Message{std::nullopt, Bytes(value)});
      for (std::uint64_t i = 0; i < per_producer;) {
        const std::size_t k = std::min<std::uint64_t>(batch.size(), per_producer - i);
        if (!prod->send_batch("fan", std::span<const Message>(batch.data(), k), 0)) ::_exit(1);
        i += k;
      }
      ::_exit(0);
    }
    kids.push_back(pid);
  }
  const int failed = wait_all(kids);
  const double secs = static_cast<double>(sh->end.load() - sh->start.load()) / 1e9;
  const double delivered = static_cast<double>(n) * consumers;
  json j = {{"mechanism", fmt::format("shmbus {}->{} batch {}", producers, consumers, o.batch)},
            {"size", o.size},
            {"records", n},
            {"seconds", secs},
            {"records_per_s", delivered / secs},
            {"mb_per_s", delivered * static_cast<double>(o.size) / secs / 1e6},
            {"failed", failed != 0}};
  free_scratch(sh);
  (void)Bus::destroy(bus_name);
  g_bus_to_remove.clear();
  return j;
}

// Reference: a plain single-producer single-consumer ring of fixed slots in shared memory,
// with cached indexes (the best case a general bus can be compared with).
// The disk's own sequential write speed, in the directory the spill logs go to: 1 MiB
// write(2)s, then one fdatasync. The reference row of `spill`.
// Two rows: the speed before the sync (what fsync=never compares with) and with it.
json raw_write(const std::string& dir, std::uint64_t bytes) {
  if (auto ok = make_dirs(dir, 0700); !ok) throw std::runtime_error(ok.error().message);
  const std::string path = dir + "/raw-write.bench";
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw std::runtime_error(fmt::format("cannot write {}: {}", path, std::strerror(errno)));
  std::vector<char> block(1 << 20, 'r');
  const std::uint64_t t0 = now_ns();
  for (std::uint64_t done = 0; done < bytes; done += block.size())
    if (::write(fd, block.data(), block.size()) != static_cast<ssize_t>(block.size())) {
      ::close(fd);
      ::unlink(path.c_str());
      throw std::runtime_error(fmt::format("write {}: {}", path, std::strerror(errno)));
    }
  const double cached = static_cast<double>(now_ns() - t0) / 1e9;
  ::fdatasync(fd);
  const double synced = static_cast<double>(now_ns() - t0) / 1e9;
  ::close(fd);
  ::unlink(path.c_str());
  return json::array({{{"mechanism", "raw write(2) 1 MiB blocks, no sync"}, {"bytes", bytes}, {"seconds", cached},
                       {"mb_per_s", static_cast<double>(bytes) / 1e6 / cached}},
                      {{"mechanism", "raw write(2) 1 MiB blocks + fdatasync"}, {"bytes", bytes}, {"seconds", synced},
                       {"mb_per_s", static_cast<double>(bytes) / 1e6 / synced}}});
}

// Spill throughput: one producer sends `bytes` of records into a spilled block topic; the
// clock stops when busd has every record in its log (the spill position reaches the end).
json spill_throughput(const Options& o, FsyncPolicy fsync, std::uint64_t bytes) {
  const std::string bus_name = bench_bus();
  std::optional<std::shared_ptr<Bus>> bus = new_bench_bus();
  TopicConfig tc;
  tc.capacity = o.capacity;
  tc.retention = RetentionMode::kBlock;
  tc.spill.enabled = true;
  tc.spill.fsync = fsync;
  if (auto ok = (*bus)->create_topic("spill", tc); !ok) throw std::runtime_error(ok.error().message);
  std::optional<Producer> prod;
  {
    auto p = Producer::create(*bus);
    if (!p) throw std::runtime_error(p.error().message);
    prod.emplace(std::move(*p));
  }
  std::vector<std::byte> value(o.size, std::byte{0x42});
  std::vector<Message> batch(o.batch, Message{std::nullopt, Bytes(value)});
  const std::uint64_t t0 = now_ns();
  std::uint64_t sent = 0, records = 0;
  while (sent < bytes) {
    auto r = prod->send_batch("spill", batch, 0);
    if (!r) throw std::runtime_error(r.error().message);
    sent += o.batch * o.size;
    records += o.batch;
  }
  const std::uint64_t t_sent = now_ns();
  std::uint64_t disk = 0;
  for (;;) {
    auto info = (*bus)->describe_topic("spill");
    if (!info) throw std::runtime_error(info.error().message);
    const auto& p = info->partitions[0];
    disk = p.disk_bytes;
    if (p.disk_end_offset >= p.end_offset) break;
    if (p.spill_state == 2) throw std::runtime_error("busd stopped spilling (see its log)");
    if (now_ns() - t0 > 600'000'000'000ull) throw std::runtime_error("spill did not finish in 10 minutes");
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  const double secs = static_cast<double>(now_ns() - t0) / 1e9;
  prod.reset();
  const char* f = fsync == FsyncPolicy::kNever ? "never" : fsync == FsyncPolicy::kAlways ? "always" : "interval";
  json row = {{"mechanism", fmt::format("shmbus spill, fsync {}", f)}, {"records", records}, {"bytes", disk}, {"seconds", secs},
              {"mb_per_s", static_cast<double>(disk) / 1e6 / secs},
              {"producer_mb_per_s", static_cast<double>(sent) / 1e6 / (static_cast<double>(t_sent - t0) / 1e9)}};
  bus->reset();
  remove_bench_bus(bus_name);
  return row;
}

json spsc_reference(const Options& o) {
  constexpr std::size_t kSlots = 1 << 14;
  const std::size_t slot = std::max<std::size_t>(64, (o.size + 63) / 64 * 64);
  struct alignas(64) Control {
    std::atomic<std::uint64_t> head{0};
    char pad1[56];
    std::atomic<std::uint64_t> tail{0};
    char pad2[56];
    std::atomic<std::uint64_t> end_ns{0};
    std::atomic<int> ready{0};
  };
  auto* ctl = shared_scratch<Control>();
  void* mem = ::mmap(nullptr, kSlots * slot, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  auto* data = static_cast<std::byte*>(mem);
  const std::uint64_t n = o.records;
  std::uint64_t start = 0;
  run_pair(
      o.cpu_a, o.cpu_b,
      [&] {
        std::vector<std::byte> value(o.size, std::byte{1});
        std::uint64_t cached_head = 0;
        while (ctl->ready.load() < 1) __builtin_ia32_pause();
        start = now_ns();
        for (std::uint64_t i = 0; i < n; ++i) {
          while (i - cached_head >= kSlots) cached_head = ctl->head.load(std::memory_order_acquire);
          std::memcpy(data + (i % kSlots) * slot, value.data(), value.size());
          ctl->tail.store(i + 1, std::memory_order_release);
        }
      },
      [&] {
        std::vector<std::byte> out(o.size);
        std::uint64_t cached_tail = 0;
        ctl->ready.store(1);
        for (std::uint64_t i = 0; i < n; ++i) {
          while (i >= cached_tail) cached_tail = ctl->tail.load(std::memory_order_acquire);
          std::memcpy(out.data(), data + (i % kSlots) * slot, out.size());
          ctl->head.store(i + 1, std::memory_order_release);
        }
        ctl->end_ns.store(now_ns());
        return 0;
      });
  const double secs = static_cast<double>(ctl->end_ns.load() - start) / 1e9;
  json j = {{"mechanism", "plain SPSC ring (reference)"}, {"size", o.size}, {"records", n}, {"seconds", secs},
            {"records_per_s", static_cast<double>(n) / secs}, {"mb_per_s", static_cast<double>(n * o.size) / secs / 1e6}};
  ::munmap(mem, kSlots * slot);
  free_scratch(ctl);
  return j;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"shmbus_bench: cross-process latency and throughput with reference rows"};
  app.require_subcommand(1);
  Options o;
  std::string cpus = "0,1";
  auto common = [&](CLI::App* s) {
    s->add_option("--size", o.size, "message bytes (default 64)");
    s->add_option("--cpus", cpus, "two CPUs A,B for the two processes (default 0,1)");
    s->add_flag("--json", o.json, "JSON output");
  };
  std::string sizes = "64";
  double idle_seconds = 2;
  CLI::App* lat = app.add_subcommand("latency", "one-way produce->consume latency, percentiles, with reference rows");
  lat->add_option("--size", sizes, "message bytes, or a list: 64,1024,4096 (default 64)");
  lat->add_option("--cpus", cpus, "two CPUs A,B for the two processes (default 0,1)");
  lat->add_flag("--json", o.json, "JSON output");
  lat->add_option("--samples", o.samples, "measured round trips (default 100000)");
  lat->add_option("--warmup", o.warmup, "round trips before measuring (default 10000)");
  lat->add_option("--wait", o.wait, "consumer wait, or a list: spin,yield,block,adaptive (default spin)");
  lat->add_option("--rate", o.rate, "fixed rate, messages/s: one-way latency from the intended send time");
  lat->add_option("--rows", o.rows, "cacheline,spsc,shmbus,unix,pipe,mq,zmq,iceoryx (default all; zmq and iceoryx when built with them)");
  lat->add_option("--csv", o.csv, "also write the table as CSV to this file");
  lat->add_option("--plot", o.plot, "also draw percentile curves with gnuplot (.svg or .png)");
  lat->add_flag("--spill", o.spill, "shmbus rows also on spilled topics (busd spilling to disk during the run)");
  CLI::App* sp = app.add_subcommand("spill", "spill-to-disk MB/s beside the disk's own sequential write speed");
  std::uint64_t spill_mb = 256;
  std::string spill_fsync = "never,interval,always";
  sp->add_option("--size", o.size, "record bytes (default 1024)");
  sp->add_option("--mb", spill_mb, "MB to write in each row (default 256)");
  sp->add_option("--fsync", spill_fsync, "fsync policies to measure (default never,interval,always)");
  sp->add_option("--capacity", o.capacity, "ring bytes (default 16 MiB)");
  sp->add_flag("--json", o.json, "JSON output");
  CLI::App* idle = app.add_subcommand("idle", "CPU used by a consumer waiting on an idle topic");
  idle->add_option("--wait", o.wait, "spin | yield | block | adaptive (default spin)");
  idle->add_option("--seconds", idle_seconds, "how long (default 2)");
  idle->add_flag("--json", o.json, "JSON output");
  CLI::App* thr = app.add_subcommand("throughput", "records/s and MB/s, 1 producer -> 1 consumer");
  common(thr);
  thr->add_option("--records", o.records, "records to send (default 10M)");
  thr->add_option("--batch", o.batch, "records per batched send (default 64)");
  thr->add_option("--capacity", o.capacity, "ring bytes (default 1 MiB)");
  thr->add_option("--rows", o.rows, "spsc,single,batch,fan,iceoryx (default all; iceoryx when built with it)");
  std::uint32_t fan_n = 2;
  thr->add_option("--fan", fan_n, "also N producers -> 1 consumer and 1 producer -> N consumers (default 2; 1: off)");
  CLI11_PARSE(app, argc, argv);
  if (sp->parsed()) {
    if (sp->count("--size") == 0) o.size = 1024;
    if (sp->count("--capacity") == 0) o.capacity = 16 << 20;
  }
  if (std::sscanf(cpus.c_str(), "%d,%d", &o.cpu_a, &o.cpu_b) != 2) {
    std::cerr << "shmbus_bench: --cpus takes two CPU numbers, e.g. 0,1\n";
    return 2;
  }
  if (thr->parsed() && (o.size < 16 || o.size > 65536)) {
    std::cerr << "shmbus_bench: --size must be from 16 to 65536 bytes\n";
    return 2;
  }
  std::signal(SIGINT, on_interrupt);
  std::signal(SIGTERM, on_interrupt);
  try {
    if (idle->parsed()) {
      const double pct = idle_cpu(o, idle_seconds);
      if (o.json) std::cout << json{{"wait", o.wait}, {"seconds", idle_seconds}, {"cpu_percent", pct}}.dump() << "\n";
      else std::cout << fmt::format("idle consumer, wait {}: {:.2f}% of one CPU over {:.1f} s\n", o.wait, pct, idle_seconds);
    } else if (sp->parsed()) {
      if (o.size < 16 || o.size > 65536) throw std::runtime_error("--size must be from 16 to 65536 bytes");
      const std::uint64_t bytes = spill_mb << 20;
      // The disk's speed drifts with its cache and writeback state: measured before and after
      // the spill rows, and the faster of the two is the reference (the harder comparison).
      json rows = raw_write(bus_paths(bench_bus()).state_dir, bytes);
      for (const auto& f : split(spill_fsync)) {
        if (f != "never" && f != "interval" && f != "always") throw std::runtime_error("--fsync takes never, interval, always");
        rows.push_back(spill_throughput(o, f == "never" ? FsyncPolicy::kNever : f == "always" ? FsyncPolicy::kAlways : FsyncPolicy::kInterval, bytes));
      }
      const json after = raw_write(bus_paths(bench_bus()).state_dir, bytes);
      for (std::size_t i = 0; i < 2; ++i)
        if (after[i]["mb_per_s"].get<double>() > rows[i]["mb_per_s"].get<double>()) rows[i] = after[i];
      (void)Bus::destroy(bench_bus(), true);
      // The disk's speed is the synced row; the unsynced one is the page cache's (a copy).
      const double raw_synced = rows[1]["mb_per_s"].get<double>();
      for (auto& r : rows) r["vs_raw"] = r["mb_per_s"].get<double>() / raw_synced;
      if (o.json) {
        std::cout << rows.dump(2) << "\n";
      } else {
        std::cout << fmt::format("spill to disk, {}-byte records, {} MB a row, state dir {}\n", o.size, bytes >> 20,
                                 bus_paths(bench_bus()).state_dir);
        std::cout << fmt::format("{:<42} {:>10} {:>10} {:>9}\n", "mechanism", "MB", "MB/s", "vs raw");
        for (const auto& r : rows)
          std::cout << fmt::format("{:<42} {:>10.0f} {:>10.0f} {:>8.2f}x\n", r["mechanism"].get<std::string>(),
                                   r["bytes"].get<double>() / 1e6, r["mb_per_s"].get<double>(), r["vs_raw"].get<double>());
      }
    } else if (lat->parsed()) {
      std::vector<Row> rows;
      const RowFilter on(o.rows, with_peers({"cacheline", "spsc", "shmbus", "unix", "pipe", "mq"}, /*zmq=*/true));
      for (const auto& size : split(sizes)) {
        o.size = std::stoul(size);
        if (o.size < 16 || o.size > 65536) throw std::runtime_error("--size must be from 16 to 65536 bytes");
        if (on("cacheline")) rows.push_back(cacheline(o));
        if (on("spsc")) rows.push_back(spsc_row(o));
        if (on("shmbus")) {
          const std::string waits = o.wait;
          const bool with_spill = o.spill;
          for (const auto& w : split(waits)) {
            o.wait = w;
            // --spill: each row twice, without and with busd spilling the topics to disk.
            for (int sp = 0; sp <= (with_spill ? 1 : 0); ++sp) {
              o.spill = sp == 1;
              rows.push_back(shmbus_row(o, RetentionMode::kOverwrite, false));
              if (o.rate <= 0) rows.push_back(shmbus_row(o, RetentionMode::kBlock, true));
            }
          }
          o.spill = with_spill;
          o.wait = waits;
        }
        if (on("unix")) rows.push_back(unix_socket(o));
        if (on("pipe")) rows.push_back(pipe_row(o));
        if (on("mq")) rows.push_back(message_queue_row(o));
#ifdef SHMBUS_HAVE_ZMQ
        if (on("zmq")) rows.push_back(zmq_row(o));
#endif
#ifdef SHMBUS_HAVE_ICEORYX
        if (on("iceoryx"))
          if (auto r = iceoryx_row(o)) rows.push_back(std::move(*r));
#endif
      }
      print_rows(rows, o);
    } else {
      json rows = json::array();
      const RowFilter on(o.rows, with_peers({"spsc", "single", "batch", "fan"}, /*zmq=*/false));
      if (on("spsc")) rows.push_back(spsc_reference(o));
      for (std::uint32_t align : {8u, 64u}) {
        if (on("single")) rows.push_back(throughput(o, false, align));
        if (on("batch")) rows.push_back(throughput(o, true, align));
      }
#ifdef SHMBUS_HAVE_ICEORYX
      if (on("iceoryx"))
        if (auto r = iceoryx_throughput(o)) rows.push_back(std::move(*r));
#endif
      if (fan_n > 1 && on("fan")) {
        rows.push_back(fan(o, fan_n, 1));
        rows.push_back(fan(o, 1, fan_n));
      }
      // Every row also as a ratio to the plain SPSC ring of the same run, when it ran.
      double spsc = 0;
      for (const auto& r : rows)
        if (r["mechanism"] == "plain SPSC ring (reference)") spsc = r["records_per_s"].get<double>();
      if (spsc > 0)
        for (auto& r : rows) r["ratio_to_spsc"] = r["records_per_s"].get<double>() / spsc;
      if (o.json) {
        std::cout << rows.dump(2) << "\n";
      } else {
        std::cout << fmt::format("throughput, 1 producer process -> 1 consumer process, {}-byte records, cpus {},{}\n", o.size,
                                 o.cpu_a, o.cpu_b);
        std::cout << fmt::format("{:<42} {:>12} {:>14} {:>10} {:>9}\n", "mechanism", "records", "records/s", "MB/s", "vs SPSC");
        for (const auto& r : rows)
          std::cout << fmt::format("{:<42} {:>12} {:>14.0f} {:>10.0f} {:>9}\n", r["mechanism"].get<std::string>(),
                                   r["records"].get<std::uint64_t>(), r["records_per_s"].get<double>(),
                                   r["mb_per_s"].get<double>(),
                                   r.contains("ratio_to_spsc") ? fmt::format("{:.2f}x", r["ratio_to_spsc"].get<double>()) : "");
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "shmbus_bench: " << e.what() << "\n";
    if (!g_bus_to_remove.empty()) (void)Bus::destroy(g_bus_to_remove);
    return 1;
  }
  return 0;
}
