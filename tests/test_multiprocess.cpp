// The ring's invariants across real processes (posix_spawn of tests/worker.cpp): order,
// no torn reads, many producers, crash-safe producers, retention modes.
#include <gtest/gtest.h>

#include <signal.h>

#include <sstream>

#include <nlohmann/json.hpp>

#include "shmbus/consumer.h"
#include "shmbus/producer.h"
#include "test_util.h"

using namespace shmbus;
using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

const std::string kWorker = SHMBUS_WORKER_PATH;

json last_json_line(const std::string& out) {
  std::istringstream lines(out);
  json last = json::object();
  for (std::string l; std::getline(lines, l);)
    if (!l.empty() && l[0] == '{') last = json::parse(l, nullptr, false);
  return last;
}

std::string parts_list(std::uint32_t from, std::uint32_t to) {
  std::string s;
  // Appended piecewise: `"," + std::to_string(p)` trips GCC 12's -Wrestrict false positive at -O3.
  for (std::uint32_t p = from; p < to; ++p) {
    if (!s.empty()) s += ',';
    s += std::to_string(p);
  }
  return s;
}

struct Run {
  std::uint32_t partitions;
  std::uint32_t producers;
  std::uint64_t per_producer;
  std::string mode;  // p0 | keyed | batch16
};

// N producer processes, 2 consumer processes; block retention with consumers that hold the
// producers back, so nothing may be lost. Each consumer checks checksums (no torn reads),
// dense offsets and per-producer order, and counts records per producer.
void stress(const Run& run) {
  test::TestBus bus("mp");
  TopicConfig cfg;
  cfg.partitions = run.partitions;
  cfg.capacity = 1 << 18;
  cfg.retention = RetentionMode::kBlock;
  ASSERT_TRUE(bus->create_topic("t", cfg));
  const std::uint64_t total = run.producers * run.per_producer;
  // One partition: both consumers read everything. Several: they split the partitions.
  std::vector<std::string> consumer_parts;
  if (run.partitions == 1) {
    consumer_parts = {"0", "0"};
  } else {
    consumer_parts = {parts_list(0, run.partitions / 2), parts_list(run.partitions / 2, run.partitions)};
  }
  std::vector<test::Child> consumers;
  std::vector<std::string> outs(2);
  for (int i = 0; i < 2; ++i) {
    // Keyed records split unevenly: each consumer reads until the producers are done
    // (SIGUSR1) and it has reached the end offsets of its partitions.
    consumers.push_back(test::spawn({kWorker, "consume", bus.name(), "t", consumer_parts[i], "0", "120000", "hold"}));
    ASSERT_TRUE(test::wait_line(consumers.back(), outs[i], "ready"));
  }
  std::vector<test::Child> producers;
  for (std::uint32_t i = 0; i < run.producers; ++i)
    producers.push_back(test::spawn({kWorker, "produce", bus.name(), "t", std::to_string(i), std::to_string(run.per_producer), run.mode}));
  for (auto& p : producers) {
    std::string out;
    int st = test::finish(p, out);
    ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "producer status " << st;
  }
  for (auto& c : consumers) ::kill(c.pid, SIGUSR1);
  std::uint64_t seen = 0;
  std::map<std::string, std::uint64_t> per_producer;
  for (int i = 0; i < 2; ++i) {
    test::finish(consumers[i], outs[i], 60s);
    json j = last_json_line(outs[i]);
    ASSERT_TRUE(j.is_object() && j.contains("records")) << outs[i];
    EXPECT_EQ(j["torn"], 0) << "consumer " << i;
    EXPECT_EQ(j["order_violations"], 0) << "consumer " << i;
    EXPECT_EQ(j["offset_gaps"], 0) << "consumer " << i;
    EXPECT_EQ(j["lost"], 0) << "consumer " << i;
    EXPECT_EQ(j["aborted"], 0) << "consumer " << i;
    seen += j["records"].get<std::uint64_t>();
    for (auto& [id, n] : j["per_producer"].items()) per_producer[id] += n.get<std::uint64_t>();
    if (run.partitions == 1) {
      EXPECT_EQ(j["records"].get<std::uint64_t>(), total) << "each consumer of the one partition sees every record";
      for (auto& [id, n] : j["per_producer"].items()) EXPECT_EQ(n.get<std::uint64_t>(), run.per_producer) << id;
    }
  }
  if (run.partitions > 1) {
    EXPECT_EQ(seen, total) << "the two consumers together see every record exactly once";
    for (auto& [id, n] : per_producer) EXPECT_EQ(n, run.per_producer) << "producer " << id;
  }
  auto info = bus->describe_topic("t");
  std::uint64_t end_sum = 0;
  for (const auto& p : info->partitions) end_sum += p.end_offset;
  EXPECT_EQ(end_sum, total) << "offsets are dense: the end offsets add up to the records sent";
}

}  // namespace

TEST(MultiProcess, FourProducersOnePartitionTwoConsumersMillionRecords) {
  stress({1, 4, 250'000, "p0"});
}

TEST(MultiProcess, FourProducersEightPartitionsKeyedMillionRecords) {
  stress({8, 4, 250'000, "keyed"});
}

TEST(MultiProcess, BatchedProducersKeepOrderAndDensity) {
  stress({1, 4, 100'000, "batch16"});
}

// A producer killed between reserve and commit (and one killed right after its claim CAS,
// before writing a byte) never wedges the partition; the hole is an aborted offset.
void killed_producer(const char* how) {
  test::TestBus bus("kill");
  TopicConfig cfg;
  cfg.capacity = 1 << 16;
  ASSERT_TRUE(bus->create_topic("t", cfg));
  ConsumerConfig cc;
  cc.auto_offset_reset = OffsetReset::kEarliest;
  cc.stall = 2ms;
  auto c = Consumer::create(bus.get(), cc);
  ASSERT_TRUE(c->assign({{"t", 0}}));
  auto victim = test::spawn({kWorker, how, bus.name(), "t", "0", "10"});
  std::string out;
  const int st = test::finish(victim, out);
  ASSERT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL) << "status " << st;
  auto p = Producer::create(bus.get());
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(p->send("t", std::nullopt, std::string(64, 'x')));
  std::uint64_t got = 0, expect_offset = 0;
  const auto start = std::chrono::steady_clock::now();
  while (got < 20 && std::chrono::steady_clock::now() - start < 10s) {
    auto b = c->poll(10ms);
    ASSERT_TRUE(b);
    for (const auto& r : *b) {
      if (expect_offset == 10) expect_offset = 11;  // the dead producer's aborted offset
      EXPECT_EQ(r.offset, expect_offset);
      expect_offset = r.offset + 1;
      ++got;
    }
  }
  EXPECT_EQ(got, 20u) << "the partition is not wedged";
  EXPECT_EQ(c->aborted(), 1u);
  EXPECT_EQ(bus->describe_topic("t")->partitions[0].end_offset, 21u) << "offsets stay dense";
  EXPECT_EQ(bus->describe_topic("t")->partitions[0].dead_claims_reclaimed, 1u);
}

TEST(MultiProcess, ProducerKilledBetweenReserveAndCommitDoesNotWedge) { killed_producer("die-in-reserve"); }

TEST(MultiProcess, ProducerKilledRightAfterItsClaimDoesNotWedge) { killed_producer("die-after-claim"); }

TEST(MultiProcess, OverwriteModeLappedConsumerResetsAndNeverReturnsTornRecords) {
  test::TestBus bus("lapmp");
  TopicConfig cfg;
  cfg.capacity = 1 << 14;  // small: a slow consumer gets lapped
  ASSERT_TRUE(bus->create_topic("t", cfg));
  auto consumer = test::spawn({kWorker, "consume", bus.name(), "t", "0", "400000", "4000"});
  std::string out;
  ASSERT_TRUE(test::wait_line(consumer, out, "ready"));
  std::vector<test::Child> producers;
  for (int i = 0; i < 2; ++i)
    producers.push_back(test::spawn({kWorker, "produce", bus.name(), "t", std::to_string(i), "200000", "p0", "200"}));
  for (auto& p : producers) {
    std::string o;
    EXPECT_EQ(test::finish(p, o), 0);
  }
  test::finish(consumer, out, 60s);
  json j = last_json_line(out);
  ASSERT_TRUE(j.contains("records")) << out;
  EXPECT_EQ(j["torn"], 0) << "a lapped copy is detected and dropped, never returned";
  EXPECT_EQ(j["order_violations"], 0);
  EXPECT_EQ(j["records"].get<std::uint64_t>() + j["lost"].get<std::uint64_t>(), 400000u)
      << "every record is either read or counted as lost";
  EXPECT_GT(j["lost"].get<std::uint64_t>(), 0u) << "the consumer was never lapped: the test did not reach its path";
}
