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
#include <iostream>
#include <optional>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

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
  std::uint64_t records = 10'000'000;
  std::uint32_t batch = 64;
  std::uint64_t capacity = 1 << 20;
  bool json = false;
};

struct Row {
  std::string name;
  Percentiles p;      // one-way ns
  double cpu_a = 0;   // % of one CPU, parent
  double cpu_b = 0;   // % of one CPU, child
};

double cpu_seconds(const rusage& r) {
  return static_cast<double>(r.ru_utime.tv_sec + r.ru_stime.tv_sec) + (r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
}

// Measures round trips in the parent; `ping` sends and waits for the echo.
Row measure(const std::string& name, const Options& o, const std::function<void()>& setup_parent,
            const std::function<void(std::uint64_t)>& ping, const std::function<int()>& child) {
  std::vector<std::uint64_t> rtt;
  rtt.reserve(o.samples);
  rusage before{}, after{}, kid{};
  double wall = 0;
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
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) std::cerr << name << ": echo process failed (status " << st << ")\n";
  for (auto& r : rtt) r /= 2;  // one-way = round trip / 2
  Row row{name, percentiles(std::move(rtt)), 0, 0};
  row.cpu_a = 100.0 * (cpu_seconds(after) - cpu_seconds(before)) / wall;
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

Row unix_socket(const Options& o) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) throw std::runtime_error("socketpair");
  const std::uint64_t total = o.warmup + o.samples;
  std::vector<char> buf(o.size, 'x');
  auto full = [](int fd, char* p, std::size_t n, bool rd) {
    while (n) {
      ssize_t k = rd ? ::read(fd, p, n) : ::write(fd, p, n);
      if (k <= 0) return false;
      p += k;
      n -= static_cast<std::size_t>(k);
    }
    return true;
  };
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
  if (!g_bus_to_remove.empty()) (void)Bus::destroy(g_bus_to_remove);
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

Row shmbus_row(const Options& o, RetentionMode mode, bool hold) {
  const std::string bus_name = bench_bus();
  g_bus_to_remove = bus_name;
  {
    BusOptions bo;
    bo.name = bus_name;
    auto bus = Bus::attach(bo);
    if (!bus) throw std::runtime_error(bus.error().message);
    TopicConfig tc;
    tc.capacity = 1 << 20;
    tc.retention = mode;
    for (const char* t : {"ping", "pong"})
      if (auto ok = (*bus)->create_topic(t, tc); !ok) throw std::runtime_error(ok.error().message);
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
  const std::string name = fmt::format("shmbus {} ({}{})", o.wait, mode == RetentionMode::kBlock ? "block" : "overwrite",
                                       hold ? ", zero-copy" : "");
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
  (void)Bus::destroy(bus_name);
  g_bus_to_remove.clear();
  return r;
}

void print_rows(const std::vector<Row>& rows, const Options& o) {
  const double ref = rows.empty() ? 1 : rows[0].p.p50;
  if (o.json) {
    json arr = json::array();
    for (const auto& r : rows)
      arr.push_back({{"mechanism", r.name}, {"samples", r.p.samples}, {"size", o.size}, {"p50_ns", r.p.p50},
                     {"p90_ns", r.p.p90}, {"p99_ns", r.p.p99}, {"p99_9_ns", r.p.p999}, {"p99_99_ns", r.p.p9999},
                     {"max_ns", r.p.max}, {"mean_ns", r.p.mean}, {"p50_ratio_to_cacheline", r.p.p50 / ref},
                     {"cpu_percent_measuring_side", r.cpu_a}});
    std::cout << arr.dump(2) << "\n";
    return;
  }
  std::cout << fmt::format("one-way latency, ns (round trip / 2), {} samples after {} warm-up, {}-byte messages, cpus {},{}\n",
                           o.samples, o.warmup, o.size, o.cpu_a, o.cpu_b);
  std::cout << fmt::format("{:<40} {:>7} {:>7} {:>7} {:>8} {:>8} {:>9} {:>7} {:>9}\n", "mechanism", "p50", "p90", "p99",
                           "p99.9", "p99.99", "max", "mean", "p50/ref");
  for (const auto& r : rows)
    std::cout << fmt::format("{:<40} {:>7.0f} {:>7.0f} {:>7.0f} {:>8.0f} {:>8.0f} {:>9.0f} {:>7.0f} {:>8.2f}x\n", r.name, r.p.p50,
                             r.p.p90, r.p.p99, r.p.p999, r.p.p9999, r.p.max, r.p.mean, r.p.p50 / ref);
}

// 1 producer process -> 1 consumer process. The consumer holds the producer back (block
// retention) so every record is delivered; it reads views in place.
json throughput(const Options& o, bool batched, std::uint32_t alignment) {
  const std::string bus_name = bench_bus();
  g_bus_to_remove = bus_name;
  BusOptions bo;
  bo.name = bus_name;
  {
    auto bus = Bus::attach(bo);
    TopicConfig tc;
    tc.capacity = o.capacity;
    tc.retention = RetentionMode::kBlock;
    if (auto ok = (*bus)->create_topic("tp", tc); !ok) throw std::runtime_error(ok.error().message);
  }
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

// Reference: a plain single-producer single-consumer ring of fixed slots in shared memory,
// with cached indexes (the best case a general bus can be compared with).
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
  CLI::App* lat = app.add_subcommand("latency", "one-way produce->consume latency, percentiles");
  common(lat);
  lat->add_option("--samples", o.samples, "measured round trips (default 100000)");
  lat->add_option("--warmup", o.warmup, "round trips before measuring (default 10000)");
  lat->add_option("--wait", o.wait, "consumer wait: spin | yield | block | adaptive (default spin)");
  CLI::App* thr = app.add_subcommand("throughput", "records/s and MB/s, 1 producer -> 1 consumer");
  common(thr);
  thr->add_option("--records", o.records, "records to send (default 10M)");
  thr->add_option("--batch", o.batch, "records per batched send (default 64)");
  thr->add_option("--capacity", o.capacity, "ring bytes (default 1 MiB)");
  CLI11_PARSE(app, argc, argv);
  if (std::sscanf(cpus.c_str(), "%d,%d", &o.cpu_a, &o.cpu_b) != 2) {
    std::cerr << "shmbus_bench: --cpus takes two CPU numbers, e.g. 0,1\n";
    return 2;
  }
  if (o.size < 16 || o.size > 65536) {
    std::cerr << "shmbus_bench: --size must be from 16 to 65536 bytes\n";
    return 2;
  }
  std::signal(SIGINT, on_interrupt);
  std::signal(SIGTERM, on_interrupt);
  try {
    if (lat->parsed()) {
      std::vector<Row> rows;
      rows.push_back(cacheline(o));
      rows.push_back(shmbus_row(o, RetentionMode::kOverwrite, false));
      rows.push_back(shmbus_row(o, RetentionMode::kBlock, true));
      rows.push_back(unix_socket(o));
      print_rows(rows, o);
    } else {
      json rows = json::array();
      rows.push_back(spsc_reference(o));
      for (std::uint32_t align : {8u, 64u}) {
        rows.push_back(throughput(o, false, align));
        rows.push_back(throughput(o, true, align));
      }
      if (o.json) {
        std::cout << rows.dump(2) << "\n";
      } else {
        std::cout << fmt::format("throughput, 1 producer process -> 1 consumer process, {}-byte records, cpus {},{}\n", o.size,
                                 o.cpu_a, o.cpu_b);
        std::cout << fmt::format("{:<36} {:>12} {:>14} {:>10}\n", "mechanism", "records", "records/s", "MB/s");
        for (const auto& r : rows)
          std::cout << fmt::format("{:<36} {:>12} {:>14.0f} {:>10.0f}\n", r["mechanism"].get<std::string>(),
                                   r["records"].get<std::uint64_t>(), r["records_per_s"].get<double>(),
                                   r["mb_per_s"].get<double>());
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "shmbus_bench: " << e.what() << "\n";
    if (!g_bus_to_remove.empty()) (void)Bus::destroy(g_bus_to_remove);
    return 1;
  }
  return 0;
}
