// shmbus_bench: cross-process latency and throughput, with reference rows measured in the
// same run on the same CPUs. See docs/performance.md for how to read the output.
//
//   shmbus_bench latency    [--samples N] [--warmup N] [--size B] [--cpus A,B] [--wait W] [--rate R] [--json]
//   shmbus_bench throughput [--records N] [--size B] [--batch K] [--cpus A,B] [--json]
//   shmbus_bench acks       [--samples N] [--size B] [--fsync P] [--json]
//   shmbus_bench kafka      [--records N] [--pings N] [--rate R] [--json]   (kafka_bench.cpp)
//
// What a latency sample is. Every row is a ping-pong between two processes pinned to two
// CPUs, driven by the same code (measure()): the measuring process stamps message i into
// its payload, sends it, waits for the echo and reads the echo's every byte (a checksum);
// the echoing process reads every byte of what it receives (a checksum) and sends it back.
// A sample is that round trip, timed with the TSC (harness.h: lfence-ordered rdtsc before
// the send, rdtscp after the echo is read), minus the clock's own cost measured at start,
// halved: "one-way" below means round trip / 2, reads on both sides included.
// With --rate R the pings start at fixed intended times (R per second) and a sample is
// (end of the round trip - intended start) / 2, so a late ping's wait is in its sample and
// nothing is omitted; the warm-up round trips run back to back.
// Both sides' checksum sums are checked against what was sent; a row that did not deliver
// every message intact fails the run (exit status 1), it is never printed as a result.
//
// Reference rows: "cache-line" bounces one fixed 64-byte line (a sequence word, no payload):
// what no ring can reach, since a ring writes a new line per message. "ring of lines" is
// the floor for any ring: a new slot of 64-byte lines per message, payload first, the
// sequence word in the slot's first line released last, the reader spinning on it.
//
// What a throughput row is: records sent back to back by one process, read (every byte,
// checksummed and checked) by another; records/s over the whole run from the consumer's
// first to its last record, so clock reads are not per record.
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
#include "kafka_bench.h"
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
  std::atomic<std::uint64_t> sum{0};  // the consumer's checksum of what it read
  std::atomic<int> failed{0};
};

struct Options {
  std::uint64_t samples = 100'000;
  std::uint64_t warmup = 10'000;
  std::size_t size = 64;
  int cpu_a = 0, cpu_b = 1;
  std::string wait = "spin";
  double rate = 0;           // > 0: pings start at this rate; (end - intended start) / 2
  std::string csv, plot;     // output files
  std::string rows = "all";  // comma list: cacheline,lines,spsc,shmbus,unix,pipe,mq,zmq,iceoryx
  std::uint64_t records = 10'000'000;
  std::uint32_t batch = 64;
  std::uint64_t capacity = 1 << 20;
  bool json = false;
  bool spill = false;        // latency: shmbus rows on spilled topics (busd running)
};

// Added to every expected checksum by the hidden --test-expect-skew: how the bench's tests
// see that a row which read the wrong bytes fails the run instead of printing numbers.
std::uint64_t g_expect_skew = 0;

struct Row {
  std::string name;
  std::string error;  // not empty: the row failed (its numbers are not a result)
  Percentiles p;      // one-way ns
  double cpu_a = 0;   // % of one CPU, measuring process
  double cpu_b = 0;   // % of one CPU, echoing process
  std::size_t size = 0;
  std::vector<std::uint64_t> samples;  // kept for the plot
};


double cpu_seconds(const rusage& r) {
  return static_cast<double>(r.ru_utime.tv_sec + r.ru_stime.tv_sec) + (r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}

// Measures round trips in the parent. `ping(i)` sends message i, waits for the echo and
// returns the checksum of what came back; `child(sum)` echoes every message, adding up the
// checksums of what it received, and returns its exit status. Each side's sum over all
// warmup + samples messages must equal what `expect()` returns (measuring side, echoing
// side), asked after the run.
template <class Expect, class Setup, class Ping, class Child>
Row measure(const std::string& name, const Options& o, Expect&& expect, Setup&& setup_parent, Ping&& ping, Child&& child) {
  struct Result {
    std::uint64_t child_sum = 0;  // written by the echo process only, read after it exits
  };
  auto* res = shared_scratch<Result>();
  std::vector<std::uint64_t> ticks(o.samples);
  std::uint64_t parent_sum = 0;
  rusage before{}, after{}, kid_before{}, kid{};
  ::getrusage(RUSAGE_CHILDREN, &kid_before);
  double wall = 0;
  const std::uint64_t pair_start = now_ns();
  const int st = run_pair(o.cpu_a, o.cpu_b,
                          [&] {
                            setup_parent();
                            for (std::uint64_t i = 0; i < o.warmup; ++i) parent_sum += ping(i);
                            ::getrusage(RUSAGE_SELF, &before);
                            const std::uint64_t t_start = now_ns();
                            if (o.rate > 0) {
                              const double interval = 1e9 / o.rate / g_tsc.ns_per_tick;
                              const std::uint64_t t0 = tsc_begin() + g_tsc.ticks(1e6);
                              for (std::uint64_t i = 0; i < o.samples; ++i) {
                                const std::uint64_t at = t0 + static_cast<std::uint64_t>(static_cast<double>(i) * interval);
                                while (tsc_begin() < at) __builtin_ia32_pause();
                                parent_sum += ping(o.warmup + i);
                                ticks[i] = tsc_end() - at;
                              }
                            } else {
                              for (std::uint64_t i = 0; i < o.samples; ++i) {
                                const std::uint64_t t0 = tsc_begin();
                                parent_sum += ping(o.warmup + i);
                                ticks[i] = tsc_end() - t0;
                              }
                            }
                            wall = static_cast<double>(now_ns() - t_start) / 1e9;
                            ::getrusage(RUSAGE_SELF, &after);
                          },
                          [&]() -> int { return child(res->child_sum); });
  ::getrusage(RUSAGE_CHILDREN, &kid);
  const double pair_wall = static_cast<double>(now_ns() - pair_start) / 1e9;
  std::vector<std::uint64_t> one_way(o.samples);
  for (std::size_t k = 0; k < ticks.size(); ++k)
    one_way[k] = static_cast<std::uint64_t>(g_tsc.sample_ns(ticks[k]) / 2 + 0.5);  // round trip / 2
  Row row{o.rate > 0 ? fmt::format("{} at {:.0f}/s", name, o.rate) : name, "", percentiles(one_way), 0, 0, o.size,
          std::move(one_way)};
  const auto [parent_expect, child_expect] = expect();
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    row.error = fmt::format("echo process failed (wait status {})", st);
  else if (res->child_sum != child_expect + g_expect_skew)
    row.error = fmt::format("the echoing side read checksum {:#x}, expected {:#x}", res->child_sum, child_expect + g_expect_skew);
  else if (parent_sum != parent_expect + g_expect_skew)
    row.error = fmt::format("the measuring side read checksum {:#x}, expected {:#x}", parent_sum, parent_expect + g_expect_skew);
  free_scratch(res);
  row.cpu_a = 100.0 * (cpu_seconds(after) - cpu_seconds(before)) / wall;
  // The echo process over its whole life (attach, warm-up, measurement).
  row.cpu_b = 100.0 * (cpu_seconds(kid) - cpu_seconds(kid_before)) / std::max(pair_wall, 1e-9);
  return row;
}

// A throughput row's consumer-side checksum against what was sent: a mismatch fails the row.
void check_sum(json& row, std::uint64_t got, std::uint64_t expect) {
  row["checksum"] = got;
  expect += g_expect_skew;
  if (got != expect) {
    row["failed"] = true;
    row["error"] = fmt::format("consumer read checksum {:#x}, expected {:#x}", got, expect);
  }
}

// The same expected sum on both sides: the payloads of messages [0, warmup + samples).
template <class Setup, class Ping, class Child>
Row measure_payload(const std::string& name, const Options& o, Setup&& setup_parent, Ping&& ping, Child&& child) {
  auto expect = [&] {
    const std::uint64_t e = expected_checksum(o.size, o.warmup + o.samples);
    return std::pair(e, e);
  };
  return measure(name, o, expect, setup_parent, ping, child);
}

Row cacheline(const Options& o) {
  auto* line = shared_scratch<Line>();
  const std::uint64_t total = o.warmup + o.samples;
  // What each side reads is the sequence word: the measurer reads 2i+2, the echoer 2i+1.
  auto expect = [&] {
    std::uint64_t parent = 0, child = 0;
    for (std::uint64_t i = 0; i < total; ++i) {
      parent += 2 * i + 2;
      child += 2 * i + 1;
    }
    return std::pair(parent, child);
  };
  Row r = measure(
      "cache-line ping-pong", o, expect, [] {},
      [&](std::uint64_t i) -> std::uint64_t {
        line->v.store(2 * i + 1, std::memory_order_release);
        std::uint64_t v;
        while ((v = line->v.load(std::memory_order_acquire)) != 2 * i + 2) __builtin_ia32_pause();
        return v;
      },
      [&](std::uint64_t& sum) {
        for (std::uint64_t i = 0; i < total; ++i) {
          std::uint64_t v;
          while ((v = line->v.load(std::memory_order_acquire)) != 2 * i + 1) __builtin_ia32_pause();
          sum += v;
          line->v.store(2 * i + 2, std::memory_order_release);
        }
        return 0;
      });
  free_scratch(line);
  return r;
}

// A ring of slots of 64-byte lines in shared memory, one slot per message: the payload at
// byte 8, then the sequence word (message index + 1) at byte 0 stored last. No shared
// index: the reader spins on the next slot's sequence word. One line per message up to
// 56-byte payloads; a 64-byte payload takes two (the row's name says how many).
class RingOfLines {
 public:
  static_assert(std::atomic_ref<std::uint64_t>::is_always_lock_free, "the sequence word is read by another process");

  // `slots`: a power of two.
  RingOfLines(std::size_t payload, std::size_t slots) : payload_(payload), slot_((8 + payload + 63) / 64 * 64), slots_(slots) {
    mem_ = static_cast<std::byte*>(::mmap(nullptr, bytes(), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
    if (mem_ == MAP_FAILED) throw std::runtime_error("mmap ring of lines");
  }
  ~RingOfLines() { ::munmap(mem_, bytes()); }
  RingOfLines(const RingOfLines&) = delete;
  RingOfLines& operator=(const RingOfLines&) = delete;

  std::size_t lines_per_message() const noexcept { return slot_ / 64; }
  std::size_t slots() const noexcept { return slots_; }
  std::string name() const {
    return fmt::format("ring of lines ({} line{}/msg)", lines_per_message(), lines_per_message() > 1 ? "s" : "");
  }

  void publish(std::uint64_t i, const std::byte* payload) noexcept {
    std::byte* s = slot(i);
    std::memcpy(s + 8, payload, payload_);
    // SYNC POINT: pairs with the acquire in wait(); the payload above is visible after it.
    seq(s).store(i + 1, std::memory_order_release);
  }
  // Waits for message i; its payload, valid until the writer comes round the ring again.
  const std::byte* wait(std::uint64_t i) noexcept {
    std::byte* s = slot(i);
    // SYNC POINT: pairs with the release in publish().
    while (seq(s).load(std::memory_order_acquire) != i + 1) __builtin_ia32_pause();
    return s + 8;
  }

 private:
  std::size_t bytes() const noexcept { return slots_ * slot_; }
  std::byte* slot(std::uint64_t i) const noexcept { return mem_ + (i & (slots_ - 1)) * slot_; }
  static std::atomic_ref<std::uint64_t> seq(std::byte* s) noexcept {
    return std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(s));
  }
  std::size_t payload_, slot_, slots_;
  std::byte* mem_;
};

Row ring_of_lines(const Options& o) {
  RingOfLines ab(o.size, 1024), ba(o.size, 1024);
  const std::uint64_t total = o.warmup + o.samples;
  std::vector<std::byte> buf(o.size);
  fill_payload(buf.data(), buf.size(), 0);
  return measure_payload(
      "ring of lines ping-pong" + ab.name().substr(std::string_view("ring of lines").size()), o, [] {},
      [&](std::uint64_t i) {
        stamp_payload(buf.data(), i);
        ab.publish(i, buf.data());
        return checksum(ba.wait(i), o.size);
      },
      [&](std::uint64_t& sum) {
        for (std::uint64_t i = 0; i < total; ++i) {
          const std::byte* in = ab.wait(i);
          sum += checksum(in, o.size);
          ba.publish(i, in);
        }
        return 0;
      });
}

std::byte* bytes_of(std::vector<char>& v) { return reinterpret_cast<std::byte*>(v.data()); }

Row unix_socket(const Options& o) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) throw std::runtime_error("socketpair");
  const std::uint64_t total = o.warmup + o.samples;
  std::vector<char> buf(o.size);
  fill_payload(bytes_of(buf), buf.size(), 0);
  Row r = measure_payload(
      "unix socket ping-pong", o, [&] { ::close(sv[1]); },
      [&](std::uint64_t i) {
        stamp_payload(bytes_of(buf), i);
        full(sv[0], buf.data(), buf.size(), false);
        full(sv[0], buf.data(), buf.size(), true);
        return checksum(bytes_of(buf), buf.size());
      },
      [&](std::uint64_t& sum) {
        ::close(sv[0]);
        for (std::uint64_t i = 0; i < total; ++i) {
          if (!full(sv[1], buf.data(), buf.size(), true)) return 1;
          sum += checksum(bytes_of(buf), buf.size());
          if (!full(sv[1], buf.data(), buf.size(), false)) return 1;
        }
        return 0;
      });
  ::close(sv[0]);
  return r;
}

Row pipe_row(const Options& o) {
  int ab[2], ba[2];
  if (::pipe(ab) != 0 || ::pipe(ba) != 0) throw std::runtime_error("pipe");
  const std::uint64_t total = o.warmup + o.samples;
  std::vector<char> buf(o.size);
  fill_payload(bytes_of(buf), buf.size(), 0);
  Row r = measure_payload(
      "pipe ping-pong", o, [] {},
      [&](std::uint64_t i) {
        stamp_payload(bytes_of(buf), i);
        full(ab[1], buf.data(), buf.size(), false);
        full(ba[0], buf.data(), buf.size(), true);
        return checksum(bytes_of(buf), buf.size());
      },
      [&](std::uint64_t& sum) {
        for (std::uint64_t i = 0; i < total; ++i) {
          if (!full(ab[0], buf.data(), buf.size(), true)) return 1;
          sum += checksum(bytes_of(buf), buf.size());
          if (!full(ba[1], buf.data(), buf.size(), false)) return 1;
        }
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
  std::vector<char> buf(o.size);
  fill_payload(bytes_of(buf), buf.size(), 0);
  Row r = measure_payload(
      "Boost message_queue ping-pong", o, [] {},
      [&](std::uint64_t i) {
        bip::message_queue::size_type got;
        unsigned prio;
        stamp_payload(bytes_of(buf), i);
        qa.send(buf.data(), buf.size(), 0);
        qb.receive(buf.data(), buf.size(), got, prio);
        return checksum(bytes_of(buf), got);
      },
      [&](std::uint64_t& sum) {
        bip::message_queue ca(bip::open_only, a.c_str()), cb(bip::open_only, b.c_str());
        std::vector<char> in(o.size);
        for (std::uint64_t i = 0; i < total; ++i) {
          bip::message_queue::size_type got;
          unsigned prio;
          ca.receive(in.data(), in.size(), got, prio);
          sum += checksum(bytes_of(in), got);
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
  std::vector<char> buf(o.size);
  fill_payload(bytes_of(buf), buf.size(), 0);
  Row r = measure_payload(
      "ZeroMQ ipc ping-pong", o,
      [&] {
        ctx = zmq_ctx_new();
        sock = zmq_socket(ctx, ZMQ_PAIR);
        zmq_bind(sock, ep.c_str());
      },
      [&](std::uint64_t i) {
        stamp_payload(bytes_of(buf), i);
        zmq_send(sock, buf.data(), buf.size(), 0);
        const int got = zmq_recv(sock, buf.data(), buf.size(), 0);
        return got < 0 ? 0 : checksum(bytes_of(buf), static_cast<std::size_t>(got));
      },
      [&](std::uint64_t& sum) {
        void* c = zmq_ctx_new();
        void* s = zmq_socket(c, ZMQ_PAIR);
        zmq_connect(s, ep.c_str());
        std::vector<char> in(o.size);
        for (std::uint64_t i = 0; i < total; ++i) {
          const int got = zmq_recv(s, in.data(), in.size(), 0);
          if (got < 0) return 1;
          sum += checksum(bytes_of(in), static_cast<std::size_t>(got));
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
        std::vector<std::byte> buf(o.size);
        fill_payload(buf.data(), buf.size(), 0);
        std::atomic<bool> failed{false};
        Row r = measure_payload(
            name, o, [&] { ep = std::make_unique<iceoryx::Endpoint>(ping_app, "ping", "pong", o.size); },
            [&](std::uint64_t i) {
              stamp_payload(buf.data(), i);
              if (!ep->send(buf.data()) || !ep->receive(buf.data())) failed = true;
              return checksum(buf.data(), buf.size());
            },
            [&](std::uint64_t& sum) -> int {
              int echo_rc = 1;
              try {
                iceoryx::Endpoint e(pong_app, "pong", "ping", o.size);
                std::vector<std::byte> in(o.size);
                std::uint64_t i = 0;
                for (; i < total && e.receive(in.data()); ++i) {
                  sum += checksum(in.data(), in.size());
                  if (!e.send(in.data())) break;
                }
                echo_rc = i == total ? 0 : 1;
              } catch (const std::exception& e) {
                std::cerr << e.what() << "\n";
              }
              iceoryx::exit_process(echo_rc);
            });
        if (!r.error.empty()) std::cerr << name << ": " << r.error << "\n";
        if (failed || !r.error.empty() || r.samples.size() != o.samples) return 1;
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
    row = Row{o.rate > 0 ? fmt::format("{} at {:.0f}/s", name, o.rate) : name, "", percentiles(v), out->cpu_a, out->cpu_b,
              o.size, std::move(v)};
  } else if (ran) {
    row = Row{name, fmt::format("failed (wait status {})", st), {}, 0, 0, o.size, {}};
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
    std::atomic<std::uint64_t> start{0}, end{0}, got{0}, sum{0};
  };
  auto* out = shared_scratch<Out>();
  std::vector<std::byte> value(o.size, std::byte{1});
  const std::uint64_t expect = n * checksum(value.data(), value.size());
  int st = 0;
  const bool ran = with_roudi(
      [&](const iceoryx::Roudi& roudi) {
        const std::string tx = roudi.app_name("ping"), rx = roudi.app_name("pong");
        const int pair = run_pair(
            o.cpu_a, o.cpu_b,
            [&] {
              iceoryx::Endpoint e(tx, "stream", nullptr, o.size, /*lossless=*/true);
              out->ready.fetch_add(1);
              while (out->ready.load() < 2) __builtin_ia32_pause();
              out->start.store(now_ns());
              for (std::uint64_t i = 0; i < n && e.send(value.data()); ++i) {
              }
              // The publisher stays until its last samples are taken.
              while (out->end.load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
            },
            [&]() -> int {
              std::uint64_t got = 0, sum = 0;
              try {
                iceoryx::Endpoint e(rx, nullptr, "stream", o.size, /*lossless=*/true);
                std::vector<std::byte> in(o.size);
                out->ready.fetch_add(1);
                for (; got < n && e.receive(in.data()); ++got) sum += checksum(in.data(), in.size());
              } catch (const std::exception& e) {
                std::cerr << e.what() << "\n";
              }
              out->sum.store(sum);
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
    check_sum(*row, out->sum.load(), expect);
  } else if (ran) {
    row = json{{"mechanism", "Eclipse iceoryx 1->1, publish per record"}, {"size", o.size}, {"records", n},
               {"failed", true},
               {"error", fmt::format("wait status {}, {} of {} records", st, out->got.load(), n)}};
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
  std::vector<std::byte> buf(o.size);
  fill_payload(buf.data(), buf.size(), 0);
  // As in the ring-of-lines row: each side reads the payload in place, the echo copies it
  // from one ring to the other.
  Row r = measure_payload(
      "plain SPSC ring ping-pong", o, [] {},
      [&](std::uint64_t i) {
        stamp_payload(buf.data(), i);
        std::memcpy(ring_ab + (i % kSlots) * slot, buf.data(), buf.size());
        sh->ab.tail.store(i + 1, std::memory_order_release);
        while (sh->ba.tail.load(std::memory_order_acquire) < i + 1) __builtin_ia32_pause();
        return checksum(ring_ba + (i % kSlots) * slot, buf.size());
      },
      [&](std::uint64_t& sum) {
        for (std::uint64_t i = 0; i < total; ++i) {
          while (sh->ab.tail.load(std::memory_order_acquire) < i + 1) __builtin_ia32_pause();
          const std::byte* in = ring_ab + (i % kSlots) * slot;
          sum += checksum(in, o.size);
          std::memcpy(ring_ba + (i % kSlots) * slot, in, o.size);
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
  if (const pid_t busd = g_started_busd.load(); busd > 0) {  // before its bus goes: it would write there
    ::kill(busd, SIGKILL);
    ::waitpid(busd, nullptr, 0);
  }
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

// `exclusive`: each side is its topic's only producer (ProducerConfig::exclusive).
Row shmbus_row(const Options& o, RetentionMode mode, bool hold, bool exclusive = false) {
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
  std::vector<std::byte> value(o.size);
  fill_payload(value.data(), value.size(), 0);
  auto* ready = shared_scratch<Barrier>();
  std::optional<Producer> prod;
  std::optional<Consumer> cons;
  auto attach = [&](const char* in, const char* out) {
    BusOptions bo;
    bo.name = bus_name;
    auto bus = Bus::attach(bo);
    ProducerConfig pc;
    pc.exclusive = exclusive;
    prod.emplace(std::move(*Producer::create(*bus, pc)));
    cons.emplace(std::move(*Consumer::create(*bus, cc)));
    (void)cons->assign({{in, 0}});
    // Open the writer and the topic mapping before the clock runs.
    (void)out;
  };
  const std::string name = fmt::format("shmbus {} ({}{}{}{})", o.wait, mode == RetentionMode::kBlock ? "block" : "overwrite",
                                       hold ? ", zero-copy" : "", exclusive ? ", exclusive" : "", o.spill ? ", spilled" : "");
  if (o.spill) {
    // busd spills these topics: have it running (and spilling) before the clock starts.
    auto c = BusdConnection::connect(bus_name, std::chrono::seconds(5));
    if (!c) throw std::runtime_error("spilled rows need busd: " + c.error().message);
  }
  // Each side reads what it polls (key and value, in place) before anything else; the echo
  // sends back the value it received.
  auto read = [](const ConsumedRecord& r) {
    return checksum(r.value.data(), r.value.size()) + (r.key ? checksum(r.key->data(), r.key->size()) : 0);
  };
  Row r = measure_payload(
      name, o,
      [&] {
        attach("pong", "ping");
        ready->ready.fetch_add(1);
        while (ready->ready.load() < 2) __builtin_ia32_pause();
      },
      [&](std::uint64_t i) -> std::uint64_t {
        stamp_payload(value.data(), i);
        Message m{std::nullopt, Bytes(value)};
        if (!prod->send("ping", m, 0)) ready->failed = 1;
        auto b = cons->poll(std::chrono::seconds(5));
        if (!b || b->size() != 1) {
          ready->failed = 1;
          return 0;
        }
        return read((*b)[0]);
      },
      [&](std::uint64_t& sum) {
        attach("ping", "pong");
        ready->ready.fetch_add(1);
        while (ready->ready.load() < 2) __builtin_ia32_pause();
        for (std::uint64_t i = 0; i < total;) {
          auto b = cons->poll(std::chrono::seconds(5));
          if (!b || b->empty()) return 1;
          for (std::size_t k = 0; k < b->size(); ++k, ++i) {
            sum += read((*b)[k]);
            Message m{std::nullopt, (*b)[k].value};
            if (!prod->send("pong", m, 0)) return 1;
          }
        }
        return 0;
      });
  prod.reset();
  cons.reset();
  if (ready->failed && r.error.empty()) r.error = "a send or a poll failed";
  free_scratch(ready);
  remove_bench_bus(bus_name);
  return r;
}

// The p50 of the reference row named `prefix` with this size (rate runs add " at N/s"),
// 0 when it did not run: then no ratio is printed, rather than one to some other row.
double ref_p50(const std::vector<Row>& rows, std::size_t size, std::string_view prefix) {
  for (const auto& r : rows)
    if (r.error.empty() && r.name.starts_with(prefix) && r.size == size) return r.p.p50;
  return 0;
}
constexpr std::string_view kCacheLineRow = "cache-line ping-pong", kRingOfLinesRow = "ring of lines ping-pong";

json ratio_json(double p50, double ref) { return ref > 0 ? json(p50 / ref) : json(nullptr); }
std::string ratio_text(double p50, double ref) { return ref > 0 ? fmt::format("{:.2f}x", p50 / ref) : "-"; }

bool plot_rows(const std::vector<Row>& rows, const std::string& file);

// Prints the rows that delivered every message; those that did not go to stderr. Returns
// how many failed.
int print_rows(const std::vector<Row>& all, const Options& o) {
  std::vector<Row> rows;
  int failed = 0;
  for (const auto& r : all) {
    if (r.error.empty() && r.p.samples == o.samples) {
      rows.push_back(r);
    } else {
      std::cerr << fmt::format("shmbus_bench: row '{}' ({} B) FAILED: {}\n", r.name, r.size,
                               r.error.empty() ? fmt::format("{} of {} samples", r.p.samples, o.samples) : r.error);
      ++failed;
    }
  }
  if (o.json) {
    json arr = json::array();
    for (const auto& r : rows)
      arr.push_back({{"mechanism", r.name}, {"samples", r.p.samples}, {"size", r.size}, {"p50_ns", r.p.p50},
                     {"p90_ns", r.p.p90}, {"p99_ns", r.p.p99}, {"p99_9_ns", r.p.p999}, {"p99_99_ns", r.p.p9999},
                     {"max_ns", r.p.max}, {"mean_ns", r.p.mean},
                     {"p50_ratio_to_cacheline", ratio_json(r.p.p50, ref_p50(rows, r.size, kCacheLineRow))},
                     {"p50_ratio_to_ring_of_lines", ratio_json(r.p.p50, ref_p50(rows, r.size, kRingOfLinesRow))},
                     {"cpu_percent_a", r.cpu_a}, {"cpu_percent_b", r.cpu_b}});
    std::cout << arr.dump(2) << "\n";
  } else {
    std::cout << fmt::format(
        "one-way latency, ns ({}; TSC-timed, clock cost {:.1f} ns taken off each sample), {} samples after {} warm-up, cpus {},{}\n",
        o.rate > 0 ? fmt::format("round trip from the intended start at {:.0f}/s, / 2", o.rate) : "round trip / 2",
        static_cast<double>(g_tsc.overhead_ticks) * g_tsc.ns_per_tick, o.samples, o.warmup, o.cpu_a, o.cpu_b);
    std::cout << fmt::format("{:<56} {:>6} {:>7} {:>7} {:>7} {:>8} {:>8} {:>9} {:>7} {:>8} {:>8} {:>6} {:>6}\n", "mechanism",
                             "size B", "p50", "p90", "p99", "p99.9", "p99.99", "max", "mean", "p50/line", "p50/ring",
                             "cpuA%", "cpuB%");
    for (const auto& r : rows)
      std::cout << fmt::format("{:<56} {:>6} {:>7.0f} {:>7.0f} {:>7.0f} {:>8.0f} {:>8.0f} {:>9.0f} {:>7.0f} {:>8} {:>8} {:>6.0f} {:>6.0f}\n",
                               r.name, r.size, r.p.p50, r.p.p90, r.p.p99, r.p.p999, r.p.p9999, r.p.max, r.p.mean,
                               ratio_text(r.p.p50, ref_p50(rows, r.size, kCacheLineRow)),
                               ratio_text(r.p.p50, ref_p50(rows, r.size, kRingOfLinesRow)), r.cpu_a, r.cpu_b);
    std::cout << "p50/line: to the cache-line row (one fixed line); p50/ring: to the ring-of-lines row (a new line per message)\n";
  }
  if (!o.csv.empty()) {
    std::ofstream f(o.csv);
    f << "mechanism,size,samples,p50_ns,p90_ns,p99_ns,p99_9_ns,p99_99_ns,max_ns,mean_ns,p50_ratio_to_cacheline,"
         "p50_ratio_to_ring_of_lines,cpu_a_percent,cpu_b_percent\n";
    for (const auto& r : rows) {
      const double line = ref_p50(rows, r.size, kCacheLineRow), ring = ref_p50(rows, r.size, kRingOfLinesRow);
      f << fmt::format("\"{}\",{},{},{},{},{},{},{},{},{:.1f},{},{},{:.1f},{:.1f}\n", r.name, r.size, r.p.samples, r.p.p50,
                       r.p.p90, r.p.p99, r.p.p999, r.p.p9999, r.p.max, r.p.mean,
                       line > 0 ? fmt::format("{:.3f}", r.p.p50 / line) : "", ring > 0 ? fmt::format("{:.3f}", r.p.p50 / ring) : "",
                       r.cpu_a, r.cpu_b);
    }
  }
  if (!o.plot.empty() && plot_rows(rows, o.plot) && !o.json) std::cout << "plot: " << o.plot << "\n";
  return failed;
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
json throughput(const Options& o, bool batched, std::uint32_t alignment, bool exclusive = false) {
  const BusOptions bo = bench_bus_with_block_topic("tp", o.capacity);
  const std::string bus_name = bo.name;
  auto* sh = shared_scratch<Barrier>();
  std::uint64_t start = 0;
  const std::uint64_t n = o.records;
  rusage kid{};
  const std::vector<std::byte> sent(o.size, std::byte{1});
  const int st = run_pair(
      o.cpu_a, o.cpu_b,
      [&] {
        auto bus = Bus::attach(bo);
        ProducerConfig pc;
        pc.record_alignment = alignment;
        pc.exclusive = exclusive;
        auto p = Producer::create(*bus, pc);
        std::vector<std::byte> value(o.size, std::byte{1});
        std::vector<Message> batch(batched ? o.batch : 1, Message{std::nullopt, Bytes(value)});
        while (sh->ready.load() < 1) __builtin_ia32_pause();
        start = now_ns();
        // "single" sends with send(), the call users make for one record (its own path in
        // the producer: Producer::Impl::append_one), not send_batch() of one.
        for (std::uint64_t i = 0; !batched && i < n; ++i)
          if (!p->send("tp", batch[0], 0)) {
            sh->failed = 1;
            break;
          }
        for (std::uint64_t i = 0; batched && i < n;) {
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
        std::uint64_t got = 0, bytes = 0, sum = 0;
        while (got < n) {
          auto b = c->poll(std::chrono::seconds(5));
          if (!b || b->empty()) return 1;
          got += b->size();
          for (const auto& r : *b) {
            sum += checksum(r.value.data(), r.value.size()) + (r.key ? checksum(r.key->data(), r.key->size()) : 0);
            bytes += r.value.size();
          }
        }
        sh->end_ns.store(now_ns());
        sh->count.store(bytes);
        sh->sum.store(sum);
        return 0;
      });
  ::getrusage(RUSAGE_CHILDREN, &kid);
  const double secs = static_cast<double>(sh->end_ns.load() - start) / 1e9;
  json j = {{"mechanism", fmt::format("shmbus 1->1 {}, align {}{}", batched ? fmt::format("batch {}", o.batch) : "single",
                                      alignment, exclusive ? ", exclusive" : "")},
            {"size", o.size},
            {"records", n},
            {"seconds", secs},
            {"records_per_s", static_cast<double>(n) / secs},
            {"mb_per_s", static_cast<double>(sh->count.load()) / secs / 1e6},
            {"failed", sh->failed.load() != 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0}};
  check_sum(j, sh->sum.load(), n * checksum(sent.data(), sent.size()));
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
    std::atomic<std::uint64_t> sum{0};  // all consumers' checksums of what they read
  };
  auto* sh = shared_scratch<Sh>();
  const std::vector<std::byte> value(o.size, std::byte{1});
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
      std::uint64_t got = 0, sum = 0;
      while (got < n) {
        auto b = con->poll(std::chrono::seconds(10));
        if (!b || b->empty()) ::_exit(1);
        got += b->size();
        for (const auto& r : *b)
          sum += checksum(r.value.data(), r.value.size()) + (r.key ? checksum(r.key->data(), r.key->size()) : 0);
      }
      sh->sum.fetch_add(sum);
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
  check_sum(j, sh->sum.load(), n * consumers * checksum(value.data(), value.size()));
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
const char* fsync_name(FsyncPolicy f) {
  return f == FsyncPolicy::kNever ? "never" : f == FsyncPolicy::kAlways ? "always" : "interval";
}

// A --fsync list item: never, interval or always.
FsyncPolicy fsync_policy(const std::string& f) {
  if (f != "never" && f != "interval" && f != "always") throw std::runtime_error("--fsync takes never, interval, always");
  return f == "never" ? FsyncPolicy::kNever : f == "always" ? FsyncPolicy::kAlways : FsyncPolicy::kInterval;
}

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
  const char* f = fsync_name(fsync);
  json row = {{"mechanism", fmt::format("shmbus spill, fsync {}", f)}, {"records", records}, {"bytes", disk}, {"seconds", secs},
              {"mb_per_s", static_cast<double>(disk) / 1e6 / secs},
              {"producer_mb_per_s", static_cast<double>(sent) / 1e6 / (static_cast<double>(t_sent - t0) / 1e9)}};
  bus->reset();
  remove_bench_bus(bus_name);
  return row;
}

// Durable acknowledgements: one producer, one record a send, each send waiting for its ack
// (ProducerConfig::acks) before the next; a sample is one send, from the call to its return.
// Last row: `batch` sends with acks=memory, then one flush(fsynced), per record. busd runs
// (started by the first send) with nothing else to do; the topic's fsync policy is `fsync`.
json acks_latency(const Options& o, FsyncPolicy fsync) {
  const std::string bus_name = bench_bus();
  std::optional<std::shared_ptr<Bus>> bus = new_bench_bus();
  TopicConfig tc;
  tc.capacity = 1 << 20;
  tc.retention = RetentionMode::kBlock;
  tc.spill.enabled = true;
  tc.spill.fsync = fsync;
  if (auto ok = (*bus)->create_topic("acks", tc); !ok) throw std::runtime_error(ok.error().message);
  std::vector<std::byte> value(o.size, std::byte{0x42});
  const Message m{std::nullopt, Bytes(value)};
  json rows = json::array();
  auto add = [&](const std::string& name, std::vector<std::uint64_t> v) {
    const Percentiles p = percentiles(std::move(v));
    rows.push_back({{"mechanism", name}, {"samples", p.samples}, {"p50_ns", p.p50}, {"p90_ns", p.p90}, {"p99_ns", p.p99},
                    {"p999_ns", p.p999}, {"max_ns", p.max}, {"mean_ns", p.mean}});
  };
  const char* f = fsync_name(fsync);
  for (Acks a : {Acks::kMemory, Acks::kSpilled, Acks::kFsynced}) {
    ProducerConfig pc;
    pc.acks = a;
    auto prod = Producer::create(*bus, pc);
    if (!prod) throw std::runtime_error(prod.error().message);
    std::vector<std::uint64_t> v;
    v.reserve(o.samples);
    for (std::uint64_t i = 0; i < o.warmup + o.samples; ++i) {
      const std::uint64_t t0 = now_ns();
      if (auto r = prod->send("acks", m, 0); !r) throw std::runtime_error(r.error().message);
      if (i >= o.warmup) v.push_back(now_ns() - t0);
    }
    const char* n = a == Acks::kMemory ? "memory" : a == Acks::kSpilled ? "spilled" : "fsynced";
    add(fmt::format("send, acks={} (fsync {})", n, f), std::move(v));
  }
  {
    auto prod = Producer::create(*bus);
    if (!prod) throw std::runtime_error(prod.error().message);
    std::vector<std::uint64_t> v;
    for (std::uint64_t i = 0; i < (o.warmup + o.samples) / o.batch + 1; ++i) {
      const std::uint64_t t0 = now_ns();
      for (std::uint32_t k = 0; k < o.batch; ++k)
        if (auto r = prod->send("acks", m, 0); !r) throw std::runtime_error(r.error().message);
      if (auto ok = prod->flush(std::chrono::seconds(30), Acks::kFsynced); !ok) throw std::runtime_error(ok.error().message);
      if (i >= o.warmup / o.batch) v.push_back((now_ns() - t0) / o.batch);
    }
    add(fmt::format("{} sends + flush(fsynced), per record (fsync {})", o.batch, f), std::move(v));
  }
  bus->reset();
  remove_bench_bus(bus_name);
  return rows;
}

// A reference row streaming o.records 64-byte-filled records back to back: `write(i)` in
// one process, `read(i)` (the checksum of record i, read in place) in the other; records/s
// from the writer's start to the reader's last record.
template <class Write, class Read>
json reference_stream(const Options& o, const std::string& name, Write&& write, Read&& read) {
  struct Result {
    std::atomic<int> ready{0};
    std::atomic<std::uint64_t> end_ns{0}, sum{0};
  };
  auto* res = shared_scratch<Result>();
  const std::uint64_t n = o.records;
  std::uint64_t start = 0;
  const int st = run_pair(
      o.cpu_a, o.cpu_b,
      [&] {
        while (res->ready.load() < 1) __builtin_ia32_pause();
        start = now_ns();
        for (std::uint64_t i = 0; i < n; ++i) write(i);
      },
      [&] {
        std::uint64_t sum = 0;
        res->ready.store(1);
        for (std::uint64_t i = 0; i < n; ++i) sum += read(i);
        res->end_ns.store(now_ns());
        res->sum.store(sum);
        return 0;
      });
  const double secs = static_cast<double>(res->end_ns.load() - start) / 1e9;
  json j = {{"mechanism", name}, {"size", o.size}, {"records", n}, {"seconds", secs},
            {"records_per_s", static_cast<double>(n) / secs}, {"mb_per_s", static_cast<double>(n * o.size) / secs / 1e6},
            {"failed", !WIFEXITED(st) || WEXITSTATUS(st) != 0}};
  const std::vector<std::byte> value(o.size, std::byte{1});
  check_sum(j, res->sum.load(), n * checksum(value.data(), value.size()));
  free_scratch(res);
  return j;
}

// Reference: a plain single-producer single-consumer ring of fixed slots, a shared tail
// index, cached indexes on both sides; the reader reads in place, as the shmbus rows do.
json spsc_reference(const Options& o) {
  constexpr std::size_t kSlots = 1 << 14;
  const std::size_t slot = std::max<std::size_t>(64, (o.size + 63) / 64 * 64);
  struct alignas(64) Control {
    std::atomic<std::uint64_t> head{0};
    char pad1[56];
    std::atomic<std::uint64_t> tail{0};
    char pad2[56];
  };
  auto* ctl = shared_scratch<Control>();
  auto* data = static_cast<std::byte*>(::mmap(nullptr, kSlots * slot, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  const std::vector<std::byte> value(o.size, std::byte{1});
  std::uint64_t cached_head = 0, cached_tail = 0;  // each used in one of the two processes
  json j = reference_stream(
      o, "plain SPSC ring (reference)",
      [&](std::uint64_t i) {
        while (i - cached_head >= kSlots) cached_head = ctl->head.load(std::memory_order_acquire);
        std::memcpy(data + (i % kSlots) * slot, value.data(), value.size());
        ctl->tail.store(i + 1, std::memory_order_release);
      },
      [&](std::uint64_t i) {
        while (i >= cached_tail) cached_tail = ctl->tail.load(std::memory_order_acquire);
        const std::uint64_t sum = checksum(data + (i % kSlots) * slot, o.size);
        ctl->head.store(i + 1, std::memory_order_release);
        return sum;
      });
  ::munmap(data, kSlots * slot);
  free_scratch(ctl);
  return j;
}

// Reference: the ring of lines streaming, no shared tail index: the writer fills the next
// slot and releases its sequence word, the reader spins on that word. The reader's position
// goes back on its own line for the writer's flow control, read only when its cached copy
// says the ring is full.
json ring_of_lines_reference(const Options& o) {
  RingOfLines ring(o.size, 1 << 14);
  struct alignas(64) Control {
    std::atomic<std::uint64_t> head{0};
  };
  auto* ctl = shared_scratch<Control>();
  const std::vector<std::byte> value(o.size, std::byte{1});
  std::uint64_t cached_head = 0;
  json j = reference_stream(
      o, ring.name() + " (reference)",
      [&](std::uint64_t i) {
        // SYNC POINT: pairs with the reader's release of head: the slot is free to reuse.
        while (i - cached_head >= ring.slots()) cached_head = ctl->head.load(std::memory_order_acquire);
        ring.publish(i, value.data());
      },
      [&](std::uint64_t i) {
        const std::uint64_t sum = checksum(ring.wait(i), o.size);
        ctl->head.store(i + 1, std::memory_order_release);
        return sum;
      });
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
  lat->add_option("--rate", o.rate, "fixed rate, round trips/s, every row: (round trip from its intended start) / 2");
  lat->add_option("--rows", o.rows, "cacheline,lines,spsc,shmbus,unix,pipe,mq,zmq,iceoryx (default all; zmq and iceoryx when built with them)");
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
  thr->add_option("--rows", o.rows, "spsc,lines,single,batch,fan,iceoryx (default all; iceoryx when built with it)");
  std::uint32_t fan_n = 2;
  thr->add_option("--fan", fan_n, "also N producers -> 1 consumer and 1 producer -> N consumers (default 2; 1: off)");
  for (CLI::App* s : {lat, thr}) s->add_option("--test-expect-skew", g_expect_skew)->group("");  // hidden: tests only
  CLI::App* ack = app.add_subcommand("acks", "latency of a send waiting for its durable ack: acks=memory, spilled, fsynced");
  std::string ack_fsync = "interval";
  ack->add_option("--samples", o.samples, "sends a row (default 2000)");
  ack->add_option("--size", o.size, "record bytes (default 64)");
  ack->add_option("--batch", o.batch, "sends before one flush in the last row (default 64)");
  ack->add_option("--fsync", ack_fsync, "the topic's fsync policies, a list of never,interval,always (default interval)");
  ack->add_flag("--json", o.json, "JSON output");
  CLI::App* kaf = app.add_subcommand("kafka", "busd's Kafka listener with librdkafka (produce, consume, one-way latency) "
                                     "and the mirror, beside the native rows, on a busd of the run's own");
  KafkaBenchOptions ko;
  kaf->add_option("--records", ko.records, "records in each throughput row (default 200000)");
  kaf->add_option("--pings", ko.pings, "measured values in each latency row (default 20000)");
  kaf->add_option("--rate", ko.rate, "latency rows: values sent per second (default 5000: one every 200 us)");
  kaf->add_flag("--json", ko.json, "JSON output");
  CLI11_PARSE(app, argc, argv);
  if (ack->parsed()) {
    if (ack->count("--samples") == 0) o.samples = 2000;
    o.warmup = std::min<std::uint64_t>(o.samples / 10, 200);
  }
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
  g_tsc = TscClock::calibrate();
  try {
    if (kaf->parsed()) {
      g_bus_to_remove = bench_bus();
      const int rc = run_kafka_bench(ko, g_bus_to_remove);
      g_bus_to_remove.clear();
      return rc;
    }
    if (ack->parsed()) {
      if (o.size < 16 || o.size > 65536 || o.batch == 0) throw std::runtime_error("--size must be from 16 to 65536 bytes, --batch over 0");
      json rows = json::array();
      for (const auto& f : split(ack_fsync)) {
        for (auto& r : acks_latency(o, fsync_policy(f))) rows.push_back(std::move(r));
      }
      (void)Bus::destroy(bench_bus(), true);
      if (o.json) {
        std::cout << rows.dump(2) << "\n";
      } else {
        std::cout << fmt::format("durable acks, {}-byte records, one send at a time, state dir {}\n", o.size,
                                 bus_paths(bench_bus()).state_dir);
        std::cout << fmt::format("{:<50} {:>8} {:>10} {:>10} {:>10} {:>10}\n", "mechanism", "samples", "p50 us", "p99 us",
                                 "p99.9 us", "max us");
        for (const auto& r : rows)
          std::cout << fmt::format("{:<50} {:>8} {:>10.1f} {:>10.1f} {:>10.1f} {:>10.1f}\n", r["mechanism"].get<std::string>(),
                                   r["samples"].get<std::uint64_t>(), r["p50_ns"].get<double>() / 1e3,
                                   r["p99_ns"].get<double>() / 1e3, r["p999_ns"].get<double>() / 1e3,
                                   r["max_ns"].get<double>() / 1e3);
      }
    } else if (idle->parsed()) {
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
        rows.push_back(spill_throughput(o, fsync_policy(f), bytes));
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
      const RowFilter on(o.rows, with_peers({"cacheline", "lines", "spsc", "shmbus", "unix", "pipe", "mq"}, /*zmq=*/true));
      for (const auto& size : split(sizes)) {
        o.size = std::stoul(size);
        if (o.size < 16 || o.size > 65536) throw std::runtime_error("--size must be from 16 to 65536 bytes");
        if (on("cacheline")) rows.push_back(cacheline(o));
        if (on("lines")) rows.push_back(ring_of_lines(o));
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
              rows.push_back(shmbus_row(o, RetentionMode::kOverwrite, false, /*exclusive=*/true));
              rows.push_back(shmbus_row(o, RetentionMode::kBlock, true));
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
      if (print_rows(rows, o) > 0) return 1;
    } else {
      json all = json::array();
      const RowFilter on(o.rows, with_peers({"spsc", "lines", "single", "batch", "fan"}, /*zmq=*/false));
      if (on("spsc")) all.push_back(spsc_reference(o));
      if (on("lines")) all.push_back(ring_of_lines_reference(o));
      for (std::uint32_t align : {8u, 64u}) {
        if (on("single")) all.push_back(throughput(o, false, align));
        if (on("batch")) all.push_back(throughput(o, true, align));
      }
      // The partition's only producer (ProducerConfig::exclusive), with the default alignment.
      if (on("single")) all.push_back(throughput(o, false, 64, true));
      if (on("batch")) all.push_back(throughput(o, true, 64, true));
#ifdef SHMBUS_HAVE_ICEORYX
      if (on("iceoryx"))
        if (auto r = iceoryx_throughput(o)) all.push_back(std::move(*r));
#endif
      if (fan_n > 1 && on("fan")) {
        all.push_back(fan(o, fan_n, 1));
        all.push_back(fan(o, 1, fan_n));
      }
      // A row that lost, or misread, a record is not a result: on stderr, and the run fails.
      json rows = json::array();
      int failed = 0;
      for (auto& r : all) {
        if (r.value("failed", false)) {
          std::cerr << fmt::format("shmbus_bench: row '{}' FAILED: {}\n", r["mechanism"].get<std::string>(),
                                   r.value("error", std::string("a process failed")));
          ++failed;
        } else {
          rows.push_back(std::move(r));
        }
      }
      // Every row also as a ratio to the reference rows of the same run, when they ran.
      double spsc = 0, lines = 0;
      for (const auto& r : rows) {
        if (r["mechanism"] == "plain SPSC ring (reference)") spsc = r["records_per_s"].get<double>();
        if (r["mechanism"].get<std::string>().starts_with("ring of lines")) lines = r["records_per_s"].get<double>();
      }
      for (auto& r : rows) {
        if (spsc > 0) r["ratio_to_spsc"] = r["records_per_s"].get<double>() / spsc;
        if (lines > 0) r["ratio_to_ring_of_lines"] = r["records_per_s"].get<double>() / lines;
      }
      if (o.json) {
        std::cout << rows.dump(2) << "\n";
      } else {
        std::cout << fmt::format("throughput, 1 producer process -> 1 consumer process, {}-byte records, cpus {},{}; "
                                 "every consumer reads every byte (checksum checked)\n",
                                 o.size, o.cpu_a, o.cpu_b);
        std::cout << fmt::format("{:<42} {:>12} {:>14} {:>10} {:>9} {:>9}\n", "mechanism", "records", "records/s", "MB/s",
                                 "vs SPSC", "vs lines");
        auto ratio = [](const json& r, const char* k) { return r.contains(k) ? fmt::format("{:.2f}x", r[k].get<double>()) : "-"; };
        for (const auto& r : rows)
          std::cout << fmt::format("{:<42} {:>12} {:>14.0f} {:>10.0f} {:>9} {:>9}\n", r["mechanism"].get<std::string>(),
                                   r["records"].get<std::uint64_t>(), r["records_per_s"].get<double>(),
                                   r["mb_per_s"].get<double>(), ratio(r, "ratio_to_spsc"), ratio(r, "ratio_to_ring_of_lines"));
      }
      if (failed > 0) return 1;
    }
  } catch (const std::exception& e) {
    std::cerr << "shmbus_bench: " << e.what() << "\n";
    if (!g_bus_to_remove.empty()) (void)Bus::destroy(g_bus_to_remove);
    return 1;
  }
  return 0;
}
