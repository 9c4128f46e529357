// shmbus_bench kafka (bench/kafka_bench.h): busd's Kafka listener driven by librdkafka, the
// mirror (tools/mirror/) in this process, the native Producer and Consumer, and one-way
// latency through the listener beside the native ring and a Unix socket. docs/performance.md,
// "Kafka listener and mirror", reads the figures.
//
// Throughput rows move 100-byte values (the record's index in the first 8 bytes, a fixed
// pattern after) through partition 0 of a topic of their own, sized to keep every record;
// every consumer reads every value and its checksum is checked. Latency rows: the sending
// process sends at a fixed rate, each value carrying the TSC read (harness.h: tsc_begin)
// just before its send call; the receiving process, another process, reads the TSC
// (tsc_end) when the value is in its hands. The sample is the difference less the cost of
// the two clock reads (TscClock::overhead_ticks), as in the latency subcommand.
#include "kafka_bench.h"

#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>

#include <atomic>
#include <bit>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <librdkafka/rdkafka.h>
#include <nlohmann/json.hpp>

#include "bus/group_client.h"
#include "bus/topic.h"
#include "harness.h"
#include "shmbus/bus.h"
#include "shmbus/consumer.h"
#include "shmbus/producer.h"
#include "tools/mirror/config.h"
#include "tools/mirror/mirror.h"

namespace shmbus::bench {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;
using Value = std::span<const std::byte>;

constexpr std::size_t kValueBytes = 100;
constexpr std::uint64_t kWarmupPings = 500;  // sent before the measured ones, not sampled

// One row of the table: a throughput (records in seconds) or a latency (one-way ns).
struct KRow {
  KRow(std::string m, std::string what) : mechanism(std::move(m)), measures(std::move(what)) {}
  std::string mechanism;
  std::string measures;
  std::string error;  // not empty: the row failed, its numbers are no result
  std::uint64_t records = 0;
  double seconds = 0;
  double records_per_s = 0;
  std::optional<Percentiles> ns;
  int compare_to = 0;  // the row (1-based) a mirror row is read against
};

// Runs `f(row)`; an exception is the row's error.
template <class F>
KRow guarded(KRow row, F&& f) {
  try {
    f(row);
  } catch (const std::exception& e) {
    row.error = e.what();
  }
  return row;
}

void timed(KRow& r, std::uint64_t records, std::uint64_t start_ns, std::uint64_t end_ns) {
  r.records = records;
  r.seconds = static_cast<double>(end_ns - start_ns) / 1e9;
  r.records_per_s = r.seconds > 0 ? static_cast<double>(records) / r.seconds : 0;
}

// How long a throughput row may take before it counts as failed.
Clock::time_point row_deadline(std::uint64_t n) { return Clock::now() + std::chrono::seconds(60 + n / 10'000); }

// The value of record i.
void value_of(std::vector<std::byte>& v, std::uint64_t i) {
  if (v.size() != kValueBytes) {
    v.resize(kValueBytes);
    fill_payload(v.data(), v.size(), 0);
  }
  stamp_payload(v.data(), i);
}

// ---- the run's busd ----

// A busd for the bench's bus listening for Kafka on 127.0.0.1:0 (the kernel picks a free
// port; busd's status names it). Killed with the bench (PR_SET_PDEATHSIG, and the Ctrl-C
// handler: g_started_busd); stop() shuts it down and reaps it.
class ListenerBusd {
 public:
  explicit ListenerBusd(const std::string& bus) : bus_(bus) {
    const std::string path = busd_binary();
    if (path.empty()) throw std::runtime_error("busd not found (set SHMBUS_BUSD)");
    const pid_t self = ::getpid();
    std::cout.flush();
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork for busd failed");
    if (pid_ == 0) {
      die_with_parent(self);
      ::execl(path.c_str(), path.c_str(), "--bus", bus.c_str(), "--kafka-listen", "127.0.0.1:0", "--quiet",
              static_cast<char*>(nullptr));
      ::_exit(127);
    }
    g_started_busd.store(pid_);
    const auto deadline = Clock::now() + std::chrono::seconds(20);
    while (address_.empty() && Clock::now() < deadline) {
      int st = 0;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        g_started_busd.store(0);
        throw std::runtime_error(fmt::format("busd ({}) exited at start, wait status {}", path, st));
      }
      if (auto c = BusdConnection::connect(bus_, std::chrono::seconds(1), /*autostart=*/false))
        if (auto s = (*c)->request({{"op", "status"}}, std::chrono::seconds(5));
            s && s->contains("listeners") && (*s)["listeners"].contains("kafka"))
          address_ = (*s)["listeners"]["kafka"]["address"].get<std::string>();
      if (address_.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (address_.empty()) {
      stop();
      throw std::runtime_error("busd's Kafka listener did not answer within 20 s");
    }
  }
  ~ListenerBusd() { stop(); }
  ListenerBusd(const ListenerBusd&) = delete;
  ListenerBusd& operator=(const ListenerBusd&) = delete;

  const std::string& address() const noexcept { return address_; }

  // Asks busd to shut down and reaps it; SIGKILL when it is still there after 10 s.
  void stop() {
    if (pid_ <= 0) return;
    if (auto c = BusdConnection::connect(bus_, std::chrono::seconds(1), false))
      (void)(*c)->request({{"op", "shutdown"}}, std::chrono::seconds(2));
    int st = 0;
    bool gone = false;
    for (int i = 0; i < 1000 && !gone; ++i) {
      gone = ::waitpid(pid_, &st, WNOHANG) == pid_;
      if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!gone) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &st, 0);
    }
    g_started_busd.store(0);
    pid_ = -1;
  }

 private:
  std::string bus_, address_;
  pid_t pid_ = -1;
};

// ---- librdkafka ----

// A librdkafka handle that destroys itself; a producer's queue is flushed first (10 s at most).
struct Kafka {
  rd_kafka_t* rk = nullptr;
  explicit Kafka(rd_kafka_t* h) : rk(h) {}
  Kafka(const Kafka&) = delete;
  Kafka& operator=(const Kafka&) = delete;
  ~Kafka() {
    if (rd_kafka_type(rk) == RD_KAFKA_PRODUCER) rd_kafka_flush(rk, 10'000);
    else rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
  }
};

struct KafkaTopic {
  rd_kafka_topic_t* rkt;
  KafkaTopic(rd_kafka_t* rk, const std::string& name) : rkt(rd_kafka_topic_new(rk, name.c_str(), nullptr)) {}
  KafkaTopic(const KafkaTopic&) = delete;
  KafkaTopic& operator=(const KafkaTopic&) = delete;
  ~KafkaTopic() { rd_kafka_topic_destroy(rkt); }
};

// A client of the listener at `addr`: `props` over librdkafka's defaults; `setup` adds callbacks.
std::unique_ptr<Kafka> kafka_client(rd_kafka_type_t type, const std::string& addr, std::map<std::string, std::string> props,
                                    void* opaque = nullptr, void (*setup)(rd_kafka_conf_t*) = nullptr) {
  props["bootstrap.servers"] = addr;
  props.emplace("client.id", "shmbus-bench");
  if (type == RD_KAFKA_CONSUMER) {
    props.emplace("group.id", fmt::format("shmbus-bench-{}", ::getpid()));  // no subscribe: no group joined
    props.emplace("enable.auto.commit", "false");
  }
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  char err[512];
  for (const auto& [k, v] : props)
    if (rd_kafka_conf_set(conf, k.c_str(), v.c_str(), err, sizeof err) != RD_KAFKA_CONF_OK) {
      rd_kafka_conf_destroy(conf);
      throw std::runtime_error(fmt::format("librdkafka property {}: {}", k, err));
    }
  if (opaque) rd_kafka_conf_set_opaque(conf, opaque);
  if (setup) setup(conf);
  rd_kafka_t* rk = rd_kafka_new(type, conf, err, sizeof err);  // takes conf on success
  if (!rk) {
    rd_kafka_conf_destroy(conf);
    throw std::runtime_error(fmt::format("librdkafka: {}", err));
  }
  if (type == RD_KAFKA_CONSUMER) rd_kafka_poll_set_consumer(rk);
  return std::make_unique<Kafka>(rk);
}

// The topic's metadata from the listener: the connection is up and partition 0's leader known
// before a clock starts.
void connect_to(rd_kafka_t* rk, const std::string& topic) {
  KafkaTopic t(rk, topic);
  const rd_kafka_metadata_t* md = nullptr;
  const rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, t.rkt, &md, 10'000);
  if (err) throw std::runtime_error(fmt::format("metadata of '{}' from the listener: {}", topic, rd_kafka_err2str(err)));
  rd_kafka_metadata_destroy(md);
}

// Partition 0 of `topic`, from `offset`.
void assign_partition0(rd_kafka_t* rk, const std::string& topic, std::int64_t offset) {
  rd_kafka_topic_partition_list_t* l = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(l, topic.c_str(), 0)->offset = offset;
  const rd_kafka_resp_err_t err = rd_kafka_assign(rk, l);
  rd_kafka_topic_partition_list_destroy(l);
  if (err) throw std::runtime_error(fmt::format("assign {}/0: {}", topic, rd_kafka_err2str(err)));
}

// The next record of a consumer, or null after `timeout_ms`; an error record throws.
struct Polled {
  rd_kafka_message_t* m;
  explicit Polled(rd_kafka_t* rk, int timeout_ms) : m(rd_kafka_consumer_poll(rk, timeout_ms)) {
    if (m && m->err) {
      const std::string why = rd_kafka_message_errstr(m);
      rd_kafka_message_destroy(m);
      throw std::runtime_error("librdkafka consumer: " + why);
    }
  }
  Polled(const Polled&) = delete;
  Polled& operator=(const Polled&) = delete;
  ~Polled() {
    if (m) rd_kafka_message_destroy(m);
  }
  Value value() const { return Value(static_cast<const std::byte*>(m->payload), m->len); }
};

struct Deliveries {
  std::uint64_t expected = 0, ok = 0, failed = 0, last_ns = 0;
  std::string first_error;
};

void on_delivery(rd_kafka_t*, const rd_kafka_message_t* m, void* opaque) {
  auto* d = static_cast<Deliveries*>(opaque);
  if (m->err && d->failed++ == 0) d->first_error = rd_kafka_err2str(m->err);
  if (!m->err) ++d->ok;
  if (d->ok + d->failed == d->expected) d->last_ns = now_ns();
}

// Row 1, 2: n records produced to partition 0 of `topic` through the listener.
KRow kafka_produce(const std::string& addr, const std::string& topic, std::uint64_t n, int linger_ms) {
  KRow row{fmt::format("librdkafka producer -> gateway, linger.ms={}", linger_ms),
           fmt::format("records/s from the first produce() to the last delivery report, {} records one produce() each; "
                       "librdkafka's defaults otherwise (acks=all, batch.num.messages 10000)",
                       n)};
  return guarded(std::move(row), [&](KRow& r) {
    Deliveries d;
    d.expected = n;
    auto k = kafka_client(RD_KAFKA_PRODUCER, addr, {{"linger.ms", std::to_string(linger_ms)}}, &d,
                          [](rd_kafka_conf_t* c) { rd_kafka_conf_set_dr_msg_cb(c, on_delivery); });
    connect_to(k->rk, topic);
    KafkaTopic t(k->rk, topic);
    std::vector<std::byte> value;
    const std::uint64_t start = now_ns();
    for (std::uint64_t i = 0; i < n; ++i) {
      value_of(value, i);
      while (rd_kafka_produce(t.rkt, 0, RD_KAFKA_MSG_F_COPY, value.data(), value.size(), nullptr, 0, nullptr) != 0) {
        if (rd_kafka_last_error() != RD_KAFKA_RESP_ERR__QUEUE_FULL)
          throw std::runtime_error(fmt::format("produce: {}", rd_kafka_err2str(rd_kafka_last_error())));
        rd_kafka_poll(k->rk, 1);  // librdkafka's queue is full: serve delivery reports
      }
      if ((i & 1023) == 1023) rd_kafka_poll(k->rk, 0);
    }
    const auto deadline = row_deadline(n);
    while (d.ok + d.failed < n && Clock::now() < deadline) rd_kafka_poll(k->rk, 50);
    if (d.failed > 0) throw std::runtime_error(fmt::format("{} of {} records failed: {}", d.failed, n, d.first_error));
    if (d.ok < n) throw std::runtime_error(fmt::format("{} of {} delivery reports in time", d.ok, n));
    timed(r, n, start, d.last_ns);
  });
}

// A row reading what `source` wrote does not run when that one failed.
void needs(const KRow& source) {
  if (!source.error.empty()) throw std::runtime_error(fmt::format("not run: it reads what '{}' wrote, which failed", source.mechanism));
}

// What a consumer row read: every value of records [0, n) once.
void check_read(std::uint64_t got, std::uint64_t sum, std::uint64_t n) {
  if (got < n) throw std::runtime_error(fmt::format("{} of {} records read in time", got, n));
  if (sum != expected_checksum(kValueBytes, n))
    throw std::runtime_error(fmt::format("read checksum {:#x}, expected {:#x}", sum, expected_checksum(kValueBytes, n)));
}

// Row 3: the n records of `topic` read through the listener.
KRow kafka_consume(const std::string& addr, const std::string& topic, std::uint64_t n, const KRow& source) {
  KRow row{"librdkafka consumer <- gateway",
           "records/s from assign() (partition 0, offset 0) to the last of the records of row 1 polled, every value read; "
           "librdkafka's fetch defaults"};
  return guarded(std::move(row), [&](KRow& r) {
    needs(source);
    auto k = kafka_client(RD_KAFKA_CONSUMER, addr, {{"enable.partition.eof", "false"}});
    connect_to(k->rk, topic);
    std::uint64_t got = 0, sum = 0;
    const std::uint64_t start = now_ns();
    assign_partition0(k->rk, topic, 0);
    const auto deadline = row_deadline(n);
    while (got < n && Clock::now() < deadline) {
      Polled p(k->rk, 200);
      if (!p.m) continue;
      sum += checksum(p.value().data(), p.value().size());
      ++got;
    }
    const std::uint64_t end = now_ns();
    check_read(got, sum, n);
    timed(r, n, start, end);
  });
}

// ---- native ----

// Reads records [0, n) of partition 0 of `topic` (every value); their count and checksum.
std::pair<std::uint64_t, std::uint64_t> read_native(const std::shared_ptr<Bus>& bus, const std::string& topic, std::uint64_t n) {
  ConsumerConfig cc;
  cc.auto_offset_reset = OffsetReset::kEarliest;
  auto c = Consumer::create(bus, cc);
  if (!c) throw std::runtime_error(c.error().message);
  if (auto st = c->assign({{topic, 0}}); !st) throw std::runtime_error(st.error().message);
  std::uint64_t got = 0, sum = 0;
  const auto deadline = row_deadline(n);
  while (got < n && Clock::now() < deadline) {
    auto b = c->poll(std::chrono::milliseconds(200));
    if (!b) throw std::runtime_error(b.error().message);
    for (const ConsumedRecord& rec : *b) {
      sum += checksum(rec.value.data(), rec.value.size());
      ++got;
    }
  }
  return {got, sum};
}

// Row 4: the same records into a ring with Producer::send, one at a time.
KRow native_produce(const std::shared_ptr<Bus>& bus, const std::string& topic, std::uint64_t n) {
  KRow row{"shmbus Producer -> ring (reference)",
           "records/s of Producer::send, one record a call, acks=memory (in the ring when it returns)"};
  return guarded(std::move(row), [&](KRow& r) {
    auto p = Producer::create(bus);
    if (!p) throw std::runtime_error(p.error().message);
    std::vector<std::byte> value;
    const std::uint64_t start = now_ns();
    for (std::uint64_t i = 0; i < n; ++i) {
      value_of(value, i);
      if (auto m = p->send(topic, Message{std::nullopt, Value(value)}, 0); !m) throw std::runtime_error(m.error().message);
    }
    timed(r, n, start, now_ns());
  });
}

// Row 4: those records read back.
KRow native_consume(const std::shared_ptr<Bus>& bus, const std::string& topic, std::uint64_t n, const KRow& source) {
  KRow row{"shmbus Consumer <- ring (reference)",
           "records/s from assign() (partition 0, from the start) to the last record of the row above, every value read"};
  return guarded(std::move(row), [&](KRow& r) {
    needs(source);
    const std::uint64_t start = now_ns();
    const auto [got, sum] = read_native(bus, topic, n);
    const std::uint64_t end = now_ns();
    check_read(got, sum, n);
    timed(r, n, start, end);
  });
}

// ---- the mirror ----

// Row 5: one mirror run in this process (mirror::run_mirrors, as `busctl mirror run` does)
// until bus topic `dst` holds the n records. Timed from the first look at `dst` that finds a
// record there to the one that finds all n (looks every 200 us): the mirror's start and its
// group's join are outside; records/s counts those that arrived in between.
KRow mirror_row(const std::string& bus_name, const std::shared_ptr<Bus>& bus, const std::string& addr, const std::string& direction,
                const std::string& bus_topic, const std::string& kafka_topic, std::uint64_t n, const KRow& source, int compare_to) {
  const bool out = direction == "out";
  const std::string dst = out ? kafka_topic : bus_topic;
  KRow row{out ? "mirror out: bus topic -> gateway (same busd)" : "mirror in: gateway -> bus topic (same busd)",
           out ? "records/s arriving in the listener's topic (its end offset), from the first to the last, the mirror's "
                 "group consumer reading row 4's records and its idempotent librdkafka producer (acks=all, linger.ms=5) sending them"
               : "records/s arriving in the bus topic (its end offset), from the first to the last, the mirror's librdkafka "
                 "group consumer reading row 1's records through the listener and its Producer sending them"};
  row.compare_to = compare_to;
  return guarded(std::move(row), [&](KRow& r) {
    needs(source);
    const json cfg = {{"bootstrap_servers", addr},
                      {"mirrors", {{{"name", direction}, {"direction", direction}, {"bus_topic", bus_topic}, {"kafka_topic", kafka_topic}}}}};
    auto c = mirror::parse_config(cfg.dump(), "shmbus_bench");
    if (!c) throw std::runtime_error(c.error().message);
    auto t = bus->topic(dst);
    if (!t) throw std::runtime_error(t.error().message);
    const shm::Ring& ring = (*t)->ring(0);
    std::atomic<bool> stop{false};
    std::ostringstream log;
    Status ran;
    const std::uint64_t started = now_ns();
    std::thread mirror([&] { ran = mirror::run_mirrors(*c, bus_name, [&] { return stop.load(); }, log); });
    std::uint64_t first_ns = 0, first_end = 0, last_ns = 0;
    const auto deadline = row_deadline(n);
    while (last_ns == 0 && Clock::now() < deadline) {
      const std::uint64_t end = ring.end_offset(), at = now_ns();
      if (end > 0 && first_ns == 0) {
        first_ns = at;
        first_end = end;
      }
      if (end >= n) last_ns = at;
      else std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    stop = true;
    mirror.join();
    if (!ran) throw std::runtime_error("mirror: " + ran.error().message);
    if (last_ns == 0) throw std::runtime_error(fmt::format("{} of {} records arrived in time; mirror log:\n{}", ring.end_offset(), n, log.str()));
    if (ring.end_offset() != n) throw std::runtime_error(fmt::format("{} records arrived, {} sent", ring.end_offset(), n));
    const auto [got, sum] = read_native(bus, dst, n);
    check_read(got, sum, n);
    if (first_end < n) {
      timed(r, n - first_end, first_ns, last_ns);
      r.records = n;
    } else {  // all there at the first look (a short run): from the mirror's start
      timed(r, n, started, first_ns);
      r.measures += "; here all arrived before the first look: timed from the mirror's start";
    }
  });
}

// ---- one-way latency ----

struct OneWayShared {
  std::atomic<int> ready{0};           // the receiver can receive
  std::atomic<int> sender_failed{0};
};

// The values arriving in the receiving process: each one's one-way time in ticks.
class Receipts {
 public:
  Receipts(std::uint64_t* samples, std::uint64_t pings) : samples_(samples), pings_(pings) {}
  // False when the value is not the next one sent (lost, repeated, reordered or torn).
  bool take(Value v) noexcept {
    const std::uint64_t t = tsc_end();
    std::uint64_t i = 0, stamp = 0;
    if (v.size() != kValueBytes) return false;
    std::memcpy(&i, v.data(), 8);
    std::memcpy(&stamp, v.data() + 8, 8);
    if (i != next_) return false;
    if (i >= kWarmupPings) samples_[i - kWarmupPings] = t - stamp;
    ++next_;
    return true;
  }
  bool done() const noexcept { return next_ == kWarmupPings + pings_; }

 private:
  std::uint64_t* samples_;
  std::uint64_t pings_;
  std::uint64_t next_ = 0;
};

// Sleeps until the TSC reaches `at`, without spinning: the sender stamps its value after it
// wakes, so a late wake-up delays the send, not the sample. (It used to spin the last 50-60
// us of each gap, a quarter of a vCPU at 5,000 sends/s, taken from busd and the clients'
// threads whose hand-offs the rows measure.)
void wait_until(std::uint64_t at) {
  for (;;) {
    const std::uint64_t now = tsc_begin();
    if (now >= at) return;
    const auto left_ns = static_cast<long long>(static_cast<double>(at - now) * g_tsc.ns_per_tick) + 1;
    const timespec ts{static_cast<time_t>(left_ns / 1'000'000'000), static_cast<long>(left_ns % 1'000'000'000)};
    ::nanosleep(&ts, nullptr);
  }
}

using Send = std::function<bool(Value)>;
// Receives into the Receipts until done() or give_up(); false when something went wrong.
using Receive = std::function<bool(Receipts&, std::atomic<int>& ready, const std::function<bool()>& give_up)>;

// A latency row: `open()` (in this process) gives the send call, `receive` runs in a forked
// process. kWarmupPings values, then o.pings measured ones, one every 1/o.rate s from fixed
// intended times; each value's stamp is taken just before its send call.
KRow one_way(KRow row, const KafkaBenchOptions& o, const std::function<Send()>& open, const Receive& receive) {
  auto* sh = shared_scratch<OneWayShared>();
  const std::size_t bytes = o.pings * sizeof(std::uint64_t);
  auto* samples = static_cast<std::uint64_t*>(::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  const std::uint64_t total = kWarmupPings + o.pings;
  const auto limit = std::chrono::seconds(30) + std::chrono::milliseconds(static_cast<std::int64_t>(1e3 * static_cast<double>(total) / o.rate));
  std::string sender_error;
  const int st = run_pair(
      -1, -1,  // not pinned: busd and librdkafka's threads need the CPUs too
      [&] {
        try {
          const Send send = open();
          const unsigned long slack = static_cast<unsigned long>(::prctl(PR_GET_TIMERSLACK));
          ::prctl(PR_SET_TIMERSLACK, 1UL);  // sleeps end on time (this thread only)
          const auto deadline = Clock::now() + std::chrono::seconds(30);
          while (sh->ready.load() == 0 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(1));
          if (sh->ready.load() == 0) throw std::runtime_error("the receiving process was not ready within 30 s");
          std::vector<std::byte> value;
          const double interval = 1e9 / o.rate / g_tsc.ns_per_tick;
          const std::uint64_t t0 = tsc_begin() + g_tsc.ticks(1e6);
          for (std::uint64_t i = 0; i < total; ++i) {
            value_of(value, i);
            wait_until(t0 + static_cast<std::uint64_t>(static_cast<double>(i) * interval));
            const std::uint64_t stamp = tsc_begin();
            std::memcpy(value.data() + 8, &stamp, 8);
            if (!send(Value(value))) throw std::runtime_error(fmt::format("send of value {} failed", i));
          }
          ::prctl(PR_SET_TIMERSLACK, slack);
        } catch (const std::exception& e) {
          sender_error = e.what();
          sh->sender_failed = 1;
        }
      },
      [&]() -> int {
        try {
          Receipts r(samples, o.pings);
          const auto deadline = Clock::now() + limit;
          const bool ok = receive(r, sh->ready, [&] { return sh->sender_failed.load() != 0 || Clock::now() > deadline; });
          return ok && r.done() ? 0 : 1;
        } catch (const std::exception& e) {
          std::cerr << "shmbus_bench: " << row.mechanism << ": receiving process: " << e.what() << "\n";
          return 1;
        }
      });
  if (!sender_error.empty()) row.error = "sending process: " + sender_error;
  else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    row.error = fmt::format("the receiving process did not get every value in order (wait status {})", st);
  if (row.error.empty()) {
    std::vector<std::uint64_t> ns(o.pings);
    for (std::uint64_t k = 0; k < o.pings; ++k) ns[k] = static_cast<std::uint64_t>(g_tsc.sample_ns(samples[k]) + 0.5);
    row.ns = percentiles(std::move(ns));
    row.records = o.pings;
  }
  ::munmap(samples, bytes);
  free_scratch(sh);
  return row;
}

std::string latency_measures(const KafkaBenchOptions& o, const std::string& how) {
  return fmt::format("one-way us, {} values at {:.0f}/s after {} warm-up: {}; TSC read before the send call, in the other "
                     "process on receipt, the clock's cost taken off",
                     o.pings, o.rate, kWarmupPings, how);
}

// Row 8: librdkafka producer (linger.ms=0) here, librdkafka consumer in another process.
// Row 11 (nagle_off): the same with socket.nagle.disable=true on both clients, what a
// latency-minded user sets (librdkafka's default leaves Nagle's algorithm on; busd sets
// TCP_NODELAY on its side of every connection).
KRow kafka_latency(const std::string& addr, const KafkaBenchOptions& o, const std::string& topic, bool nagle_off = false) {
  KRow row{nagle_off ? "the same, both clients socket.nagle.disable=true" : "librdkafka producer -> gateway -> librdkafka consumer",
           latency_measures(o, std::string("producer linger.ms=0, consumer assign()ed with fetch.min.bytes=1 and the default "
                                           "fetch.wait.max.ms (500: the fetch is a long poll)") +
                                   (nagle_off ? "; socket.nagle.disable=true on both (librdkafka's default: false)" : ""))};
  std::map<std::string, std::string> extra;
  if (nagle_off) extra["socket.nagle.disable"] = "true";
  return one_way(
      std::move(row), o,
      [&]() -> Send {
        auto props = extra;
        props["linger.ms"] = "0";
        std::shared_ptr<Kafka> k = kafka_client(RD_KAFKA_PRODUCER, addr, props);
        connect_to(k->rk, topic);
        auto t = std::make_shared<KafkaTopic>(k->rk, topic);
        return [k, t](Value v) {
          return rd_kafka_produce(t->rkt, 0, RD_KAFKA_MSG_F_COPY, const_cast<std::byte*>(v.data()), v.size(), nullptr, 0, nullptr) == 0;
        };
      },
      [&](Receipts& r, std::atomic<int>& ready, const std::function<bool()>& give_up) {
        auto props = extra;
        props["fetch.min.bytes"] = "1";
        props["enable.partition.eof"] = "false";
        auto k = kafka_client(RD_KAFKA_CONSUMER, addr, props);
        connect_to(k->rk, topic);
        assign_partition0(k->rk, topic, 0);
        ready = 1;
        while (!r.done() && !give_up()) {
          Polled p(k->rk, 100);
          if (p.m && !r.take(p.value())) return false;
        }
        return true;
      });
}

// Row 9: the native Producer here, a Consumer (default wait: adaptive) in another process.
KRow native_latency(const std::string& bus_name, const KafkaBenchOptions& o, const std::string& topic) {
  KRow row{"shmbus Producer -> ring -> Consumer (reference)", latency_measures(o, "Producer::send, Consumer::poll with the default wait (adaptive)")};
  BusOptions bo;
  bo.name = bus_name;
  return one_way(
      std::move(row), o,
      [&]() -> Send {
        auto bus = Bus::attach(bo);
        if (!bus) throw std::runtime_error(bus.error().message);
        auto p = Producer::create(*bus);
        if (!p) throw std::runtime_error(p.error().message);
        auto prod = std::make_shared<Producer>(std::move(*p));
        return [prod, topic](Value v) { return static_cast<bool>(prod->send(topic, Message{std::nullopt, v}, 0)); };
      },
      [&](Receipts& r, std::atomic<int>& ready, const std::function<bool()>& give_up) {
        auto bus = Bus::attach(bo);
        if (!bus) throw std::runtime_error(bus.error().message);
        ConsumerConfig cc;
        cc.auto_offset_reset = OffsetReset::kEarliest;
        auto c = Consumer::create(*bus, cc);
        if (!c || !c->assign({{topic, 0}})) return false;
        ready = 1;
        while (!r.done() && !give_up()) {
          auto b = c->poll(std::chrono::milliseconds(100));
          if (!b) return false;
          for (const ConsumedRecord& rec : *b)
            if (!r.take(rec.value)) return false;
        }
        return true;
      });
}

// A file descriptor closed with its last owner.
struct Fd {
  int fd;
  ~Fd() { ::close(fd); }
};

// Row 10: a Unix stream socket between the two processes.
KRow unix_latency(const KafkaBenchOptions& o) {
  KRow row{"unix socket (reference)", latency_measures(o, "write() of the value, blocking read() of it")};
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) throw std::runtime_error("socketpair failed");
  auto tx = std::make_shared<Fd>(sv[0]), rx = std::make_shared<Fd>(sv[1]);
  return one_way(
      std::move(row), o,
      [&]() -> Send {
        rx.reset();  // the receiving end is the other process's
        return [fd = std::move(tx)](Value v) { return full(fd->fd, reinterpret_cast<char*>(const_cast<std::byte*>(v.data())), v.size(), false); };
      },
      [&](Receipts& r, std::atomic<int>& ready, const std::function<bool()>& give_up) {
        tx.reset();  // so that the sender's close ends our read
        std::vector<std::byte> buf(kValueBytes);
        ready = 1;
        while (!r.done() && !give_up()) {
          if (!full(rx->fd, reinterpret_cast<char*>(buf.data()), buf.size(), true) || !r.take(Value(buf))) return false;
        }
        return true;
      });
}

// ---- the table ----

std::string cell(double v) { return v > 0 ? fmt::format("{:.0f}", v) : "-"; }

void print_table(const std::vector<KRow>& rows, const KafkaBenchOptions& o, const std::string& addr, const std::string& bus) {
  std::cout << fmt::format("busd's Kafka listener at {} (bus {}, its own busd) and the mirror; {}-byte values, partition 0 "
                           "of a 1-partition topic; {} records a throughput row; latency: {} values at {:.0f}/s\n",
                           addr, bus, kValueBytes, o.records, o.pings, o.rate);
  std::cout << fmt::format("{:>2}  {:<52} {:>9} {:>11} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}\n", "#", "mechanism", "records",
                           "records/s", "vs row", "p50 us", "p90 us", "p99 us", "p99.9 us", "max us");
  for (std::size_t k = 0; k < rows.size(); ++k) {
    const KRow& r = rows[k];
    if (!r.error.empty()) {
      std::cout << fmt::format("{:>2}  {:<52} FAILED (stderr says why)\n", k + 1, r.mechanism);
      continue;
    }
    std::string vs = "-";
    if (r.compare_to > 0 && rows[r.compare_to - 1].records_per_s > 0)
      vs = fmt::format("{}: {:.2f}x", r.compare_to, r.records_per_s / rows[r.compare_to - 1].records_per_s);
    const auto us = [&](double Percentiles::*f) { return r.ns ? fmt::format("{:.1f}", (*r.ns).*f / 1e3) : std::string("-"); };
    std::cout << fmt::format("{:>2}  {:<52} {:>9} {:>11} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}\n", k + 1, r.mechanism, r.records,
                             cell(r.records_per_s), vs, us(&Percentiles::p50), us(&Percentiles::p90), us(&Percentiles::p99),
                             us(&Percentiles::p999), us(&Percentiles::max));
  }
  std::cout << "vs row: records/s as a ratio to that row's. What each row measures:\n";
  for (std::size_t k = 0; k < rows.size(); ++k) std::cout << fmt::format("{:>2}  {}\n", k + 1, rows[k].measures);
}

json rows_json(const std::vector<KRow>& rows, const std::string& addr) {
  json arr = json::array();
  for (std::size_t k = 0; k < rows.size(); ++k) {
    const KRow& r = rows[k];
    json j = {{"row", k + 1}, {"mechanism", r.mechanism}, {"measures", r.measures}, {"listener", addr}, {"value_bytes", kValueBytes}};
    if (!r.error.empty()) {  // no numbers: they are no result
      j["failed"] = true;
      j["error"] = r.error;
    } else if (r.ns) {
      j["samples"] = r.ns->samples;
      const std::pair<const char*, double> stats[] = {{"p50_us", r.ns->p50}, {"p90_us", r.ns->p90}, {"p99_us", r.ns->p99},
                                                      {"p99_9_us", r.ns->p999}, {"max_us", r.ns->max}, {"mean_us", r.ns->mean}};
      for (const auto& [name, v] : stats) j[name] = v / 1e3;
    } else {
      j["records"] = r.records;
      j["seconds"] = r.seconds;
      j["records_per_s"] = r.records_per_s;
      if (r.compare_to > 0 && rows[r.compare_to - 1].records_per_s > 0) {
        j["compared_to_row"] = r.compare_to;
        j["ratio"] = r.records_per_s / rows[r.compare_to - 1].records_per_s;
      }
    }
    arr.push_back(std::move(j));
  }
  return arr;
}

// Removes the bus's segments, state dir and runtime dir however the run ends.
struct BusRemover {
  std::string name;
  ~BusRemover() { (void)Bus::destroy(name, /*purge_disk=*/true); }
};

}  // namespace

int run_kafka_bench(const KafkaBenchOptions& o, const std::string& bus_name) {
  if (o.records == 0 || o.pings == 0 || !(o.rate > 0)) throw std::runtime_error("--records and --pings must be over 0, --rate over 0");
  BusRemover remover{bus_name};
  std::vector<KRow> rows;
  std::string addr;
  {
    BusOptions bo;
    bo.name = bus_name;
    auto attached = Bus::attach(bo);
    if (!attached) throw std::runtime_error(attached.error().message);
    std::shared_ptr<Bus> bus = *attached;
    // A ring per topic that keeps every record (a record of a 100-byte value takes 192 bytes).
    const auto make = [&](const std::string& topic, std::uint64_t records) {
      TopicConfig tc;
      tc.capacity = std::bit_ceil(std::max<std::uint64_t>(records * 256, 1 << 20));
      if (auto st = bus->create_topic(topic, tc); !st) throw std::runtime_error(st.error().message);
    };
    for (const char* t : {"k_linger5", "k_linger0", "native", "mirror_out", "mirror_in"}) make(t, o.records);
    for (const char* t : {"lat_kafka", "lat_native", "lat_kafka_nodelay"}) make(t, kWarmupPings + o.pings);
    ListenerBusd busd(bus_name);
    addr = busd.address();

    rows.push_back(kafka_produce(addr, "k_linger5", o.records, 5));
    rows.push_back(kafka_produce(addr, "k_linger0", o.records, 0));
    rows.push_back(kafka_consume(addr, "k_linger5", o.records, rows[0]));
    rows.push_back(native_produce(bus, "native", o.records));
    rows.push_back(native_consume(bus, "native", o.records, rows[3]));
    rows.push_back(mirror_row(bus_name, bus, addr, "out", "native", "mirror_out", o.records, rows[3], 1));
    rows.push_back(mirror_row(bus_name, bus, addr, "in", "mirror_in", "k_linger5", o.records, rows[0], 3));
    // Every librdkafka handle (the mirror's too) gone before the latency rows fork.
    rd_kafka_wait_destroyed(10'000);
    rows.push_back(kafka_latency(addr, o, "lat_kafka"));
    rows.push_back(native_latency(bus_name, o, "lat_native"));
    rows.push_back(unix_latency(o));
    rows.push_back(kafka_latency(addr, o, "lat_kafka_nodelay", /*nagle_off=*/true));  // last: rows 1-10 keep their numbers
    busd.stop();
  }
  int failed = 0;
  for (const auto& r : rows) {
    if (r.error.empty()) continue;
    std::cerr << fmt::format("shmbus_bench: row '{}' FAILED: {}\n", r.mechanism, r.error);
    ++failed;
  }
  if (o.json) std::cout << rows_json(rows, addr).dump(2) << "\n";
  else print_table(rows, o, addr, bus_name);
  return failed > 0 ? 1 : 0;
}

}  // namespace shmbus::bench
