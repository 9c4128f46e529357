// The kill-stress test of issue 11 (ctest labels `stress`, 30 s a mode, and `soak`, 10 min):
// unpaced producer processes on one small ring, SIGKILLed or SIGSTOPped at random every
// 10-30 ms, one consumer checking every record. It fails on a corrupt record, a producer's
// records out of order, offsets going back, 5 s without progress (the wedge), and on a run
// that never reclaimed a dead claim (which would prove nothing about recovery).
//
// The binary is its own producer: `shmbus_stress_tests produce BUS TOPIC ID SEED` (below).
//
// Environment: SHMBUS_STRESS_SECONDS (30), SHMBUS_STRESS_SEED (random, printed),
// SHMBUS_STRESS_RING_BYTES (8192), SHMBUS_STRESS_PRODUCERS (3), SHMBUS_STRESS_KILL_PERCENT (50: of
// the chaos events, the rest being stops; 0 or 100 tells which of the two a failure needs).
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <future>
#include <iostream>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <xxhash.h>

#include "shmbus/bus.h"
#include "shmbus/consumer.h"
#include "shmbus/producer.h"
#include "test_util.h"

using namespace shmbus;

namespace {
// A retention mode, and the claim timeout: `timeout` aborts the claims of producers stopped
// for more than 5 ms, so that late commits and the quarantine of their bytes run too.
// `exclusive*`: the producers are exclusive (ProducerConfig::exclusive): one owns the
// partition, the others retry until it is killed and one of them takes over; a stopped
// owner's claims must never be timed out, whatever the claim timeout.
struct Mode {
  RetentionMode retention;
  std::uint32_t claim_timeout_ms;
  const char* name;
  bool exclusive = false;
};
// gtest prints the parameter in ctest's test list; bytes would say nothing.
[[maybe_unused]] void PrintTo(const Mode& m, std::ostream* os) { *os << m.name; }
}  // namespace
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

const char* const kTopic = "stress";
std::string g_self;  // this binary, exec'ed as the producer

// A value: producer id, its length, sequence, then the checksum of every other byte of the
// value (the length is inside it, so a record cut short or run long does not pass).
struct Payload {
  std::uint32_t id;
  std::uint32_t len;
  std::uint64_t seq;
  std::uint64_t sum;
};
static_assert(sizeof(Payload) == 24);
constexpr std::size_t kMinValue = 24, kMaxValue = 400;

std::uint64_t checksum(const std::byte* v, std::size_t n) {
  XXH64_state_t* st = XXH64_createState();
  XXH64_reset(st, 0x5eed);
  XXH64_update(st, v, offsetof(Payload, sum));
  XXH64_update(st, v + sizeof(Payload), n - sizeof(Payload));
  const std::uint64_t h = XXH64_digest(st);
  XXH64_freeState(st);
  return h;
}

std::uint64_t env_u64(const char* name, std::uint64_t dflt) {
  const char* v = std::getenv(name);
  return v && *v ? std::strtoull(v, nullptr, 0) : dflt;
}

// --- the producer process -------------------------------------------------------------

int produce(const std::string& bus_name, const std::string& topic, std::uint32_t id, std::uint64_t seed, bool exclusive) {
  BusOptions o;
  o.name = bus_name;
  o.create = false;
  auto bus = Bus::attach(o);
  if (!bus) {
    std::cerr << "stress producer " << id << ": attach: " << bus.error().message << "\n";
    return 3;
  }
  ProducerConfig pc;
  // A wedged block topic should show as send errors that the loop retries, not as a
  // producer sitting a minute in one send.
  pc.max_block_ms = 1000;
  pc.exclusive = exclusive;
  auto producer = Producer::create(*bus, pc);
  if (!producer) {
    std::cerr << "stress producer " << id << ": create: " << producer.error().message << "\n";
    return 3;
  }
  std::mt19937_64 rng(seed ^ (std::uint64_t{id} * 0x9e3779b97f4a7c15ull));
  std::vector<std::vector<std::byte>> values(4, std::vector<std::byte>(kMaxValue));
  std::vector<Message> msgs;
  std::uint64_t seq = 0;
  int errors_said = 0;
  for (;;) {
    const std::size_t n = 1 + rng() % 4;
    msgs.clear();
    for (std::size_t k = 0; k < n; ++k) {
      auto& v = values[k];
      const std::size_t len = kMinValue + rng() % (kMaxValue - kMinValue + 1);
      for (std::size_t i = sizeof(Payload); i < len; ++i) v[i] = static_cast<std::byte>(rng());
      Payload p{id, static_cast<std::uint32_t>(len), seq + k, 0};
      std::memcpy(v.data(), &p, sizeof p);
      p.sum = checksum(v.data(), len);
      std::memcpy(v.data(), &p, sizeof p);
      msgs.push_back(Message{std::nullopt, Bytes(v.data(), len)});
    }
    // Unpaced, and a failed send is sent again: the partition must take it eventually.
    // The same seqs go again, so a batch that did land after all shows up as an order error.
    for (;;) {
      // One record goes through send(), whose path is its own (the exclusive writer's
      // inline claim: RingWriter::try_claim_one_exclusive); more through send_batch().
      auto r = n == 1 ? producer->send(topic, msgs[0], 0u) : producer->send_batch(topic, msgs, 0u);
      if (r) break;
      // A standby exclusive producer: refused while the owner lives, quietly.
      if (exclusive && r.error().code == Errc::kTooManyClients) {
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        continue;
      }
      if (errors_said < 3) {
        ++errors_said;
        std::cerr << "stress producer " << id << ": send: " << errc_name(r.error().code) << ": " << r.error().message
                  << " (retrying)\n";
      }
    }
    seq += n;
  }
}

// --- the test process: consumer and chaos driver ---------------------------------------

struct Verdict {
  std::mutex mu;
  std::vector<std::string> failures;  // the first few, printed in full
  std::uint64_t failure_count = 0;
  std::uint64_t corrupt = 0, order = 0, offset_back = 0, poll_errors = 0;
  std::uint64_t records = 0, last_offset = 0, lost = 0, aborted = 0;
  std::uint64_t owners = 0, owner_back = 0;  // exclusive: producers seen in turn, and an old one seen again
  bool wedged = false;
  double wedged_at_s = 0;  // the last progress before the wedge
  std::int64_t end_moved = -1;  // offsets the partition's end moved by in 1 s of the wedge

  // Counts under `counter` too, when given.
  void fail(std::string what, std::uint64_t Verdict::*counter = nullptr) {
    std::lock_guard lk(mu);
    if (counter) ++(this->*counter);
    ++failure_count;
    if (failures.size() < 20) failures.push_back(std::move(what));
  }
};

std::string hex(Bytes b, std::size_t max = 96) {
  std::string s;
  for (std::size_t i = 0; i < b.size() && i < max; ++i) s += fmt::format("{:02x}{}", static_cast<unsigned>(b[i]), i % 8 == 7 ? " " : "");
  if (b.size() > max) s += "...";
  return s;
}

struct Chaos {
  std::uint64_t kills = 0, stops = 0, restarts = 0, exits = 0;
  std::vector<double> kill_times, stop_times;  // seconds into the run: how many came before a wedge
  static std::size_t before(const std::vector<double>& times, double t) {
    return static_cast<std::size_t>(std::upper_bound(times.begin(), times.end(), t) - times.begin());
  }
};

class Stress : public ::testing::TestWithParam<Mode> {};

TEST_P(Stress, RandomKillsAndStopsOfUnpacedBatchProducers) {
  const RetentionMode mode = GetParam().retention;
  const bool block = mode == RetentionMode::kBlock;
  const std::uint32_t claim_timeout_ms = GetParam().claim_timeout_ms;
  const std::uint64_t seconds = env_u64("SHMBUS_STRESS_SECONDS", 30);
  const std::uint64_t ring_bytes = env_u64("SHMBUS_STRESS_RING_BYTES", 8192);
  const bool exclusive = GetParam().exclusive;
  const std::uint64_t nproducers = env_u64("SHMBUS_STRESS_PRODUCERS", exclusive ? 2 : 3);
  const std::uint64_t kill_percent = env_u64("SHMBUS_STRESS_KILL_PERCENT", 50);  // the rest are stops
  const std::uint64_t seed = env_u64("SHMBUS_STRESS_SEED", std::random_device{}() | (std::uint64_t{std::random_device{}()} << 32));
  std::cout << fmt::format("stress: mode {}, {} s, ring {} bytes, {} producers, {}% kills, seed {} (SHMBUS_STRESS_SEED={} replays "
                           "the chaos schedule)\n",
                           GetParam().name, seconds, ring_bytes, nproducers, kill_percent, seed, seed)
            << std::flush;

  test::TestBus bus("stress");
  ASSERT_TRUE(bus.get());
  TopicConfig tc;
  tc.partitions = 1;
  tc.capacity = ring_bytes;
  tc.retention = mode;
  tc.claim_timeout_ms = claim_timeout_ms;
  ASSERT_TRUE(bus->create_topic(kTopic, tc));

  // The consumer is registered before any producer starts: in block mode its gate then
  // holds from offset 0 and it can never be lapped.
  ConsumerConfig cc;
  cc.auto_offset_reset = OffsetReset::kEarliest;
  cc.hold_producers = block;
  auto consumer = Consumer::create(bus.get(), cc);
  ASSERT_TRUE(consumer) << consumer.error().message;
  ASSERT_TRUE(consumer->assign({{kTopic, 0}}));

  Verdict v;
  std::atomic<bool> stop{false};
  std::atomic<std::int64_t> heartbeat_ns{0};  // the consumer thread's last return from poll
  std::atomic<std::uint64_t> lost_seen{0};     // the consumer's lost(), read by the driver
  const auto t0 = Clock::now();
  auto since_start = [&] { return std::chrono::duration<double>(Clock::now() - t0).count(); };

  auto consume = [&] {
    std::map<std::uint32_t, std::uint64_t> last_seq;  // producer id -> seq
    std::uint32_t owner = ~0u;  // exclusive: the producer whose records come now
    bool any = false;
    std::uint64_t last_offset = 0;
    auto progress = Clock::now();
    while (!stop.load()) {
      auto batch = consumer->poll(100ms);
      heartbeat_ns.store(Clock::now().time_since_epoch().count());
      lost_seen.store(consumer->lost());
      if (!batch) {
        v.fail(fmt::format("poll: {}: {}", errc_name(batch.error().code), batch.error().message), &Verdict::poll_errors);
        continue;
      }
      for (const auto& r : *batch) {
        if (any && r.offset <= last_offset) {
          v.fail(fmt::format("offset went back: {} after {}", r.offset, last_offset), &Verdict::offset_back);
        } else {
          progress = Clock::now();
        }
        any = true;
        last_offset = std::max(last_offset, r.offset);
        Payload p{};
        const bool fits = r.value.size() >= sizeof p;
        if (fits) std::memcpy(&p, r.value.data(), sizeof p);
        if (!fits || p.len != r.value.size() || checksum(r.value.data(), r.value.size()) != p.sum) {
          v.fail(fmt::format("corrupt record accepted as valid at offset {} ({:.1f} s): value {} bytes, says id {} len {} seq {} "
                             "sum {:016x}, computed {:016x}; value: {}",
                             r.offset, since_start(), r.value.size(), p.id, p.len, p.seq, p.sum,
                             fits ? checksum(r.value.data(), r.value.size()) : 0, hex(r.value)),
                 &Verdict::corrupt);
          continue;
        }
        if (exclusive && p.id != owner) {
          // One writer at a time: once another producer's records came, an earlier one's
          // never come again (it was killed before the next one could open the partition).
          if (last_seq.count(p.id))
            v.fail(fmt::format("exclusive: producer {} wrote again at offset {} after producer {} had taken over", p.id,
                               r.offset, owner),
                   &Verdict::owner_back);
          owner = p.id;
          std::lock_guard lk(v.mu);
          ++v.owners;
        }
        auto [it, fresh] = last_seq.try_emplace(p.id, p.seq);
        if (!fresh) {
          if (p.seq <= it->second)
            v.fail(fmt::format("producer {}: seq {} after seq {} (offset {})", p.id, p.seq, it->second, r.offset), &Verdict::order);
          it->second = std::max(it->second, p.seq);
        }
        std::lock_guard lk(v.mu);
        ++v.records;
      }
      if (Clock::now() - progress > 5s) {
        // Whose wedge: the partition's (no producer gets a claim through) or the reader's.
        auto a = bus->describe_topic(kTopic);
        std::this_thread::sleep_for(1s);
        auto b = bus->describe_topic(kTopic);
        std::lock_guard lk(v.mu);
        if (a && b)
          v.end_moved = static_cast<std::int64_t>(b->partitions[0].end_offset - a->partitions[0].end_offset);
        v.wedged = true;
        v.wedged_at_s = std::chrono::duration<double>(progress - t0).count();
        v.last_offset = last_offset;
        return;
      }
    }
    std::lock_guard lk(v.mu);
    v.last_offset = last_offset;
  };
  std::promise<void> consumer_done;
  auto consumer_finished = consumer_done.get_future();
  std::thread consumer_thread([&] {
    consume();
    consumer_done.set_value();
  });

  // Producers: one fresh process (and id) each start, so "per producer" is per process.
  struct Slot {
    test::Child child;
    bool stopped = false;
    Clock::time_point cont_at, next_event;
  };
  std::vector<Slot> slots(nproducers);
  std::uint32_t next_id = 0;
  // How long a process of this binary takes to start, measured once: a new producer's first
  // event comes that much later, so that it sends before it can be killed. Under ASan a start
  // took ~90 ms, longer than the 10-30 ms between events, and no kill landed in a claim.
  const auto startup = [] {
    const auto t = Clock::now();
    test::Child c = test::spawn({g_self, "--gtest_list_tests", "--gtest_filter=-*"});
    if (c.out_fd >= 0) ::close(c.out_fd);
    if (c.pid > 0) ::waitpid(c.pid, nullptr, 0);
    return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t);
  }();
  std::mt19937_64 rng(seed);
  auto gap = [&] { return std::chrono::milliseconds(10 + rng() % 21); };
  auto start_producer = [&](Slot& s) {
    s.child = test::spawn({g_self, "produce", bus.name(), kTopic, std::to_string(next_id++), std::to_string(seed),
                           exclusive ? "exclusive" : "shared"});
    if (s.child.out_fd >= 0) ::close(s.child.out_fd);  // producers say things on stderr only
    s.child.out_fd = -1;
    s.stopped = false;
    s.next_event = Clock::now() + startup + gap();
  };
  auto end_producers = [&] {
    for (auto& s : slots)
      if (s.child.pid > 0) ::kill(s.child.pid, SIGCONT);  // none left stopped, should a kill be refused
    for (auto& s : slots)
      if (s.child.pid > 0) {
        ::kill(s.child.pid, SIGKILL);
        ::waitpid(s.child.pid, nullptr, 0);
        s.child.pid = -1;
      }
  };
  for (auto& s : slots) start_producer(s);
  for (auto& s : slots) EXPECT_GT(s.child.pid, 0) << "could not start " << g_self;

  // The chaos driver, as in the run: each producer, every 10-30 ms, is SIGKILLed
  // (and started again) or SIGSTOPped for 1-20 ms. A 1 ms tick serves them all.
  Chaos chaos;
  const auto until = t0 + std::chrono::seconds(seconds);
  // The paths this test is for are reached by chance (a kill must land inside a claim): past
  // `until`, it runs on until they were, for at most as long again (60 s at most).
  const auto hard_until = until + std::chrono::seconds(std::min<std::uint64_t>(seconds, 60));
  auto reached = [&] {
    auto d = bus->describe_topic(kTopic);
    if (!d) return true;  // said by the checks below
    const PartitionInfo& q = d->partitions[0];
    bool ok = q.dead_claims_reclaimed > 0;
    if (exclusive) {
      std::lock_guard lk(v.mu);
      ok = ok && v.owners >= 3;
    } else if (claim_timeout_ms < 1000) {
      ok = ok && q.claims_timed_out > 0 && q.late_commits_refused > 0;
    }
    if (!block) ok = ok && lost_seen.load() > 0;
    return ok;
  };
  auto next_look = until;
  bool consumer_hung = false;
  for (;;) {
    if (const auto now = Clock::now(); now >= until) {
      if (now >= hard_until) break;
      if (now >= next_look) {
        if (reached()) break;
        next_look = now + 100ms;
      }
    }
    if (consumer_finished.wait_for(0s) == std::future_status::ready) break;  // wedged
    // A poll that never returns is a wedge too, and the thread cannot be joined then.
    const std::int64_t hb = heartbeat_ns.load();
    if (hb != 0 && Clock::now().time_since_epoch().count() - hb > 10'000'000'000) {
      consumer_hung = true;
      break;
    }
    std::this_thread::sleep_for(1ms);
    const auto now = Clock::now();
    for (auto& s : slots) {
      if (s.child.pid <= 0) {  // spawn failed: kill(-1) would signal every process we may signal
        start_producer(s);
        continue;
      }
      if (s.stopped && now >= s.cont_at) {
        ::kill(s.child.pid, SIGCONT);
        s.stopped = false;
      }
      // A producer loops for ever: any exit of its own is a crash or a refused start.
      int st = 0;
      if (::waitpid(s.child.pid, &st, WNOHANG) == s.child.pid) {
        ++chaos.exits;
        v.fail(fmt::format("producer pid {} exited by itself: {} {}", s.child.pid, WIFSIGNALED(st) ? "signal" : "status",
                           WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st)));
        start_producer(s);
        ++chaos.restarts;
        continue;
      }
      if (now < s.next_event) continue;
      s.next_event = now + gap();  // a killed one's is set again by start_producer()
      const bool kill = rng() % 100 < kill_percent;
      const auto pause = std::chrono::milliseconds(1 + rng() % 20);
      if (kill) {
        ::kill(s.child.pid, SIGKILL);  // also kills a stopped one
        ::waitpid(s.child.pid, nullptr, 0);
        ++chaos.kills;
        chaos.kill_times.push_back(since_start());
        start_producer(s);
        ++chaos.restarts;
      } else if (!s.stopped) {
        ::kill(s.child.pid, SIGSTOP);
        s.stopped = true;
        s.cont_at = now + pause;
        ++chaos.stops;
        chaos.stop_times.push_back(since_start());
      }
    }
  }
  const double ran_s = since_start();
  end_producers();
  stop.store(true);

  auto info = bus->describe_topic(kTopic);
  if (consumer_hung || consumer_finished.wait_for(15s) != std::future_status::ready) {
    // Nothing else to save: say what we know and leave no process or segment behind.
    std::cout << fmt::format("stress: the consumer's poll() has not returned for 10 s ({:.1f} s into the run, {} kills, {} stops); "
                             "giving up\n",
                             ran_s, chaos.kills, chaos.stops)
              << std::flush;
    (void)Bus::destroy(bus.name());
    std::_Exit(1);
  }
  consumer_thread.join();
  v.lost = consumer->lost();
  v.aborted = consumer->aborted();

  EXPECT_TRUE(info) << info.error().message;
  const PartitionInfo p = info ? info->partitions[0] : PartitionInfo{};
  std::lock_guard lk(v.mu);
  std::cout << fmt::format(
                   "stress: mode {}, seed {}: ran {:.1f} s; {} kills, {} stops, {} producer restarts, {} producer exits; "
                   "consumed {} records up to offset {}, lost {} (laps), skipped {} aborted; partition: start {} end {} "
                   "bytes_used {} writers {} gates {}; dead_claims_reclaimed {}, claims_timed_out {}, late_commits_refused {}; "
                   "corrupt {}, order {}, offsets back {}, poll errors {}\n",
                   GetParam().name, seed, ran_s, chaos.kills, chaos.stops, chaos.restarts, chaos.exits, v.records,
                   v.last_offset, v.lost, v.aborted, p.start_offset, p.end_offset, p.bytes_used, p.writers, p.gates,
                   p.dead_claims_reclaimed, p.claims_timed_out, p.late_commits_refused, v.corrupt, v.order, v.offset_back,
                   v.poll_errors)
            << std::flush;
  for (const auto& f : v.failures) ADD_FAILURE() << f;
  if (v.failure_count > v.failures.size()) ADD_FAILURE() << v.failure_count - v.failures.size() << " more failures";
  EXPECT_FALSE(v.wedged) << fmt::format("wedged: no new offset for 5 s from {:.1f} s into the run on, after {} kills and {} stops; "
                                        "consumer at offset {}, partition start {} end {}; in 1 s of the wedge the partition's end moved by {} "
                                        "offsets (0: no producer gets a claim through)",
                                        v.wedged_at_s, Chaos::before(chaos.kill_times, v.wedged_at_s),
                                        Chaos::before(chaos.stop_times, v.wedged_at_s), v.last_offset, p.start_offset,
                                        p.end_offset, v.end_moved);
  EXPECT_EQ(v.corrupt, 0u);
  EXPECT_EQ(v.order, 0u);
  EXPECT_EQ(v.offset_back, 0u);
  EXPECT_EQ(chaos.exits, 0u);
  EXPECT_GT(v.records, 0u);
  EXPECT_GT(chaos.kills, 0u);
  EXPECT_GT(chaos.stops, 0u);
  // Without these the run did not test what it is for.
  EXPECT_GT(p.dead_claims_reclaimed, 0u) << "no dead claim was reclaimed: recovery was never exercised";
  if (exclusive) {
    EXPECT_EQ(v.owner_back, 0u);
    EXPECT_GE(v.owners, 3u) << "the partition did not change hands: exclusive takeover was never exercised";
    EXPECT_EQ(p.claims_timed_out, 0u) << "a live exclusive producer's claim was timed out";
  } else if (claim_timeout_ms < 1000) {
    EXPECT_GT(p.claims_timed_out, 0u) << "no stopped producer's claim was timed out";
    EXPECT_GT(p.late_commits_refused, 0u) << "no late commit was refused: the late-writer path was never exercised";
  }
  if (block)
    EXPECT_EQ(v.lost, 0u) << "a consumer holding producers back was lapped";
  else
    EXPECT_GT(v.lost, 0u) << "the consumer was never lapped: overwrite was not exercised";
}

INSTANTIATE_TEST_SUITE_P(Ring, Stress,
                         ::testing::Values(Mode{RetentionMode::kOverwrite, 1000, "overwrite"},
                                           Mode{RetentionMode::kBlock, 1000, "block"},
                                           Mode{RetentionMode::kOverwrite, 5, "timeout"},
                                           Mode{RetentionMode::kOverwrite, 5, "exclusive", true},
                                           Mode{RetentionMode::kBlock, 5, "exclusive_block", true}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace

int main(int argc, char** argv) {
  g_self = "/proc/self/exe";
  if (argc == 7 && std::strcmp(argv[1], "produce") == 0)
    return produce(argv[2], argv[3], static_cast<std::uint32_t>(std::stoul(argv[4])), std::stoull(argv[5]),
                   std::strcmp(argv[6], "exclusive") == 0);
  // The children exec this file, not /proc/self/exe of whoever they are.
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n > 0) g_self.assign(buf, static_cast<std::size_t>(n));
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
