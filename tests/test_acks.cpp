// Durable acknowledgements (ProducerConfig::acks, Producer::flush) against a real busd:
// sends return only once busd has written / synced the record, topics that cannot honour
// them are refused by name, a missing busd is a timeout naming it, forged offsets are not
// believed, and busd SIGKILLed while sends wait loses nothing that was acknowledged.
#include <gtest/gtest.h>

#include <signal.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "bus/disk_log.h"
#include "bus/group_client.h"
#include "bus/paths.h"
#include "bus/topic.h"
#include "shm/ring.h"
#include "shmbus/producer.h"
#include "busd_fixture.h"
#include "disk_log_util.h"
#include "cli_util.h"
#include "test_util.h"

using namespace shmbus;
using namespace std::chrono_literals;

namespace {

// BusdFixture's SHMBUS_DIR, bus and busd clean-up, with the disk log's view.
class DurableAcks : public test::BusdFixture {
 protected:
  void TearDown() override {
    ::unsetenv("SHMBUS_NO_AUTOSTART");
    BusdFixture::TearDown();
  }
  // busd's pid while it runs, else 0.
  pid_t busd() {
    const pid_t pid = busd_pid();
    return pid > 0 && ::kill(pid, 0) == 0 ? pid : 0;
  }
  Producer producer(shmbus::Acks acks, std::int64_t timeout_ms = 30'000) {
    ProducerConfig c;
    c.acks = acks;
    c.ack_timeout_ms = timeout_ms;
    auto p = Producer::create(bus_->get(), c);
    EXPECT_TRUE(p) << p.error().message;
    return std::move(*p);
  }
  shm::Ring ring(const std::string& topic, std::uint32_t p) { return (*(*bus_)->topic(topic))->ring(p); }
  std::string log_dir(const std::string& topic, std::uint32_t p) {
    return disklog::partition_dir(bus_paths(bus_->name()).state_dir, topic, p);
  }
  // offset -> value of every record in the partition's disk log (gaps left out).
  std::map<std::uint64_t, std::string> on_disk(const std::string& topic, std::uint32_t p) {
    return test::disk_values(log_dir(topic, p));
  }
};

}  // namespace

TEST_F(DurableAcks, TopicsThatCannotHonourThemAreRefusedByName) {
  TopicConfig plain;
  plain.partitions = 1;
  plain.retention = RetentionMode::kBlock;
  ASSERT_TRUE((*bus_)->create_topic("plain", plain));
  ASSERT_TRUE((*bus_)->create_topic("ow", test::spilled_topic(1, 1 << 20, RetentionMode::kOverwrite)));
  Producer p = producer(shmbus::Acks::kSpilled);
  auto r = p.send("plain", std::nullopt, "x");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
  EXPECT_NE(r.error().message.find("topic 'plain' does not spill"), std::string::npos) << r.error().message;
  r = p.send("ow", std::nullopt, "x");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("topic 'ow' has retention overwrite"), std::string::npos) << r.error().message;
  EXPECT_EQ((*bus_)->describe_topic("plain")->partitions[0].end_offset, 0u) << "nothing was written";
  // acks=memory sends anywhere; a flush asking for more names the topic it cannot honour.
  Producer m = producer(shmbus::Acks::kMemory);
  ASSERT_TRUE(m.send("plain", std::nullopt, "x"));
  EXPECT_TRUE(m.flush(1s));
  auto f = m.flush(1s, shmbus::Acks::kFsynced);
  ASSERT_FALSE(f);
  EXPECT_NE(f.error().message.find("'plain'"), std::string::npos) << f.error().message;
}

TEST_F(DurableAcks, SendsReturnOnlyOnceTheRecordIsWrittenOrSyncedEvenWithFsyncNever) {
  TopicConfig cfg = test::spilled_topic(1, 1 << 20);
  cfg.spill.fsync = FsyncPolicy::kNever;  // busd syncs only because a producer waits for it
  ASSERT_TRUE((*bus_)->create_topic("d", cfg));
  Producer spilled = producer(shmbus::Acks::kSpilled, 20'000);
  auto a = spilled.send("d", std::nullopt, "a");
  ASSERT_TRUE(a) << a.error().message;
  EXPECT_EQ(on_disk("d", 0)[a->offset], "a") << "acks=spilled: in the disk log when send returns";
  EXPECT_FALSE(std::filesystem::exists(log_dir("d", 0) + "/synced")) << "fsync=never: nothing synced yet";
  Producer fsynced = producer(shmbus::Acks::kFsynced, 20'000);
  auto b = fsynced.send("d", std::nullopt, "b");
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_EQ(on_disk("d", 0)[b->offset], "b");
  EXPECT_GE(ring("d", 0).durable_end(true).value_or(0), b->offset + 1);
  EXPECT_TRUE(std::filesystem::exists(log_dir("d", 0) + "/synced")) << "busd synced for the waiting producer";
  // A reservation's commit waits as a send does.
  auto res = fsynced.reserve("d", std::nullopt, 1);
  ASSERT_TRUE(res);
  res->value()[0] = std::byte{'c'};
  ASSERT_TRUE(res->commit());
  EXPECT_GE(ring("d", 0).durable_end(true).value_or(0), res->metadata().offset + 1);
  EXPECT_EQ(on_disk("d", 0)[res->metadata().offset], "c");
  // acks=memory, then one flush for all of them.
  Producer m = producer(shmbus::Acks::kMemory);
  std::uint64_t last = 0;
  for (int i = 0; i < 200; ++i) last = m.send("d", std::nullopt, "m" + std::to_string(i))->offset;
  ASSERT_TRUE(m.flush(20s, shmbus::Acks::kFsynced));
  EXPECT_GE(ring("d", 0).durable_end(true).value_or(0), last + 1);
  EXPECT_EQ(on_disk("d", 0)[last], "m199");
}

TEST_F(DurableAcks, WithoutBusdASendTimesOutNamingItAndFlushWaitsAgain) {
  ::setenv("SHMBUS_NO_AUTOSTART", "1", 1);
  ASSERT_TRUE((*bus_)->create_topic("n", test::spilled_topic(1, 1 << 20)));
  ASSERT_EQ(busd(), 0);
  Producer p = producer(shmbus::Acks::kSpilled, 300);
  auto r = p.send("n", std::nullopt, "v");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kTimedOut);
  EXPECT_NE(r.error().message.find("offset 0 of topic 'n' partition 0 is not written on disk: busd"), std::string::npos)
      << r.error().message;
  EXPECT_FALSE(p.flush(200ms));
  // Allowed to start busd again: flush starts it and returns once the record is on disk.
  ::unsetenv("SHMBUS_NO_AUTOSTART");
  auto f = p.flush(20s);
  EXPECT_TRUE(f) << f.error().message;
  EXPECT_EQ(on_disk("n", 0)[0], "v");
}

TEST_F(DurableAcks, ForgedOffsetPastTheRingsEndIsNotBelieved) {
  ::setenv("SHMBUS_NO_AUTOSTART", "1", 1);
  ASSERT_TRUE((*bus_)->create_topic("f", test::spilled_topic(1, 1 << 20)));
  auto& stats = ring("f", 0).ctl()->stats;
  stats.spill_end.store(std::uint64_t{1} << 40);
  stats.synced_end.store(std::uint64_t{1} << 40);
  for (auto acks : {shmbus::Acks::kSpilled, shmbus::Acks::kFsynced}) {
    Producer p = producer(acks, 300);
    auto r = p.send("f", std::nullopt, "v");
    ASSERT_FALSE(r) << "no busd ran: nothing can be on disk";
    EXPECT_NE(r.error().message.find("past the ring's end"), std::string::npos) << r.error().message;
  }
}

// The soak, bounded: busd SIGKILLed again and again while acks=fsynced sends wait
// for it (the producer starts a new one each time); afterwards every acknowledged record is
// in the disk log with its value. (A SIGKILL keeps the page cache: this tests the protocol,
// that no send is acknowledged before busd has the record, not a power loss.)
TEST_F(DurableAcks, BusdSigkilledWhileFsyncedSendsWaitLosesNothingAcknowledged) {
  ASSERT_TRUE((*bus_)->create_topic("k", test::spilled_topic(1, 64 << 10)));
  constexpr int kSends = 400, kKills = 6;
  std::atomic<int> sending{-1};  // the send in progress, -1 between sends
  std::atomic<bool> done{false};
  std::mutex m;
  std::map<std::uint64_t, std::string> acked;  // under m
  std::vector<std::string> errors;
  std::thread t([&] {
    Producer p = producer(shmbus::Acks::kFsynced, 60'000);
    for (int i = 0; i < kSends; ++i) {
      const std::string v = "value-" + std::to_string(i);
      sending = i;
      auto r = p.send("k", std::nullopt, v);
      sending = -1;
      std::lock_guard<std::mutex> l(m);
      if (r) acked[r->offset] = v;
      else errors.push_back(r.error().message);
    }
    done = true;
  });
  std::mt19937 rng(12345);
  int kills = 0;
  // offset, value of acknowledged records not in the log (read while busd is dead)
  std::map<std::uint64_t, std::string> missing;
  auto check = [&] {
    std::map<std::uint64_t, std::string> now;
    {
      std::lock_guard<std::mutex> l(m);
      now = acked;
    }
    const auto disk = on_disk("k", 0);
    for (const auto& [offset, v] : now)
      if (auto it = disk.find(offset); it == disk.end() || it->second != v) missing[offset] = v;
  };
  const auto deadline = std::chrono::steady_clock::now() + 120s;
  while (!done && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 20000));
    if (kills >= kKills) continue;
    const int before = sending.load();
    if (before < 0 || !kill_busd(SIGKILL)) continue;
    // Counted when, with busd dead, that same send still waits for a record busd had not
    // synced: busd died under a waiting send.
    const shm::Ring r = ring("k", 0);
    if (sending.load() == before && r.durable_end(true).value_or(0) < r.end_offset()) ++kills;
    check();  // busd is dead: what was acknowledged must already be in the log
  }
  t.join();
  ASSERT_TRUE(done) << "the producer did not finish in time";
  EXPECT_TRUE(errors.empty()) << errors.front();
  EXPECT_GE(kills, kKills) << "busd was not killed often enough while sends waited";
  kill_busd(SIGKILL);  // whatever ran last: the log is read as busd left it
  check();
  EXPECT_EQ(acked.size(), static_cast<std::size_t>(kSends));
  EXPECT_TRUE(missing.empty()) << missing.size() << " acknowledged records not in the log, the first at offset "
                               << missing.begin()->first;
  std::cout << "busd SIGKILLed " << kills << " times under waiting sends; " << acked.size() - missing.size() << "/"
            << acked.size() << " acknowledged records in the disk log\n";
}

// busctl produce --acks: each record is written (spilled) or synced (fsynced) by busd
// before the next is read, so every record sent is in the disk log when busctl exits; a
// topic that cannot honour them is refused by name before anything is sent.
TEST_F(DurableAcks, BusctlProduceWaitsForTheAcksItIsGiven) {
  TopicConfig cfg = test::spilled_topic(1, 1 << 20);
  cfg.spill.fsync = FsyncPolicy::kNever;  // only the producer's acks make busd sync
  ASSERT_TRUE((*bus_)->create_topic("d", cfg));
  auto r = test::busctl({"--bus", bus_->name(), "produce", "d", "--acks", "fsynced"}, "a\nb\nc\n");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(on_disk("d", 0), (std::map<std::uint64_t, std::string>{{0, "a"}, {1, "b"}, {2, "c"}}));
  EXPECT_GE(ring("d", 0).durable_end(true).value_or(0), 3u) << "synced before busctl returned";
  r = test::busctl({"--bus", bus_->name(), "produce", "d", "--acks", "spilled"}, "d\n");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(on_disk("d", 0)[3], "d");
  // Bad values and topics.
  r = test::busctl({"--bus", bus_->name(), "produce", "d", "--acks", "all"}, "x\n");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--acks 'all': use memory, spilled or fsynced"), std::string::npos) << r.err;
  TopicConfig plain;
  ASSERT_TRUE((*bus_)->create_topic("plain", plain));
  r = test::busctl({"--bus", bus_->name(), "produce", "plain", "--acks", "spilled"}, "x\n");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("topic 'plain' does not spill"), std::string::npos) << r.err;
  EXPECT_EQ((*bus_)->describe_topic("plain")->partitions[0].end_offset, 0u) << "nothing was sent";
  r = test::busctl({"--bus", bus_->name(), "produce", "plain", "--acks", "memory"}, "x\n");
  EXPECT_EQ(r.code, 0) << r.err;
}
