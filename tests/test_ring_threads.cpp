// Threads of one process on one ring: the TSan build runs this. Many producers, a reader
// that checks every record's checksum, and a small ring that laps the reader on purpose.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>

#include <xxhash.h>

#include "shmbus/consumer.h"
#include "shmbus/producer.h"
#include "shm/process.h"
#include "test_util.h"

using namespace shmbus;
using namespace std::chrono_literals;

namespace {

struct Rec {
  std::uint32_t producer;
  std::uint32_t pad;
  std::uint64_t seq;
  std::uint64_t sum;
  char filler[40];
};

void run(RetentionMode mode, bool hold, std::uint64_t capacity, std::uint64_t per_producer) {
  test::TestBus bus("thr");
  TopicConfig cfg;
  cfg.capacity = capacity;
  cfg.retention = mode;
  ASSERT_TRUE(bus->create_topic("t", cfg));
  ConsumerConfig cc;
  cc.auto_offset_reset = OffsetReset::kEarliest;
  cc.hold_producers = hold;
  auto c = Consumer::create(bus.get(), cc);
  ASSERT_TRUE(c->assign({{"t", 0}}));
  constexpr int kProducers = 3;
  std::atomic<int> done{0};
  std::vector<std::thread> threads;
  for (int id = 0; id < kProducers; ++id)
    threads.emplace_back([&, id] {
      auto p = Producer::create(bus.get());
      for (std::uint64_t s = 0; s < per_producer; ++s) {
        Rec r{static_cast<std::uint32_t>(id), 0, s, 0, {}};
        std::memset(r.filler, static_cast<int>(s & 0xff), sizeof r.filler);
        r.sum = XXH64(r.filler, sizeof r.filler, s ^ static_cast<std::uint64_t>(id));
        auto md = p->send("t", Message{std::nullopt, std::as_bytes(std::span(&r, 1))});
        ASSERT_TRUE(md) << md.error().message;
      }
      done.fetch_add(1);
    });
  std::uint64_t seen = 0, torn = 0, order = 0;
  std::int64_t last[kProducers] = {-1, -1, -1};
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  // Overwrite: start reading only once two rings' worth was sent, so the reader is lapped
  // for sure (the test is about what a lapped reader returns).
  while (!hold && done.load() < kProducers && std::chrono::steady_clock::now() < deadline &&
         bus->describe_topic("t")->partitions[0].end_offset < 2 * capacity / 64)
    std::this_thread::sleep_for(1ms);
  while (std::chrono::steady_clock::now() < deadline) {
    auto b = c->poll(1ms);
    ASSERT_TRUE(b);
    for (const auto& rec : *b) {
      Rec r;
      if (rec.value.size() != sizeof r) { ++torn; continue; }
      std::memcpy(&r, rec.value.data(), sizeof r);
      if (r.producer >= kProducers || XXH64(r.filler, sizeof r.filler, r.seq ^ r.producer) != r.sum) { ++torn; continue; }
      if (static_cast<std::int64_t>(r.seq) <= last[r.producer]) ++order;
      last[r.producer] = static_cast<std::int64_t>(r.seq);
      ++seen;
    }
    if (done.load() == kProducers && *c->position({"t", 0}) == bus->describe_topic("t")->partitions[0].end_offset) break;
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(torn, 0u);
  EXPECT_EQ(order, 0u);
  if (hold) {
    EXPECT_EQ(seen, kProducers * per_producer) << "block + hold: nothing lost";
  } else {
    EXPECT_EQ(seen + c->lost(), kProducers * per_producer);
    EXPECT_GT(c->lost(), 0u) << "the reader was never lapped: the test did not reach its path";
  }
}

}  // namespace

TEST(RingThreads, OverwriteSmallRingLapsTheReaderWithoutTornRecords) {
  run(RetentionMode::kOverwrite, false, 8192, 20'000);
}

TEST(RingThreads, BlockRetentionWithAHoldingConsumerLosesNothing) {
  run(RetentionMode::kBlock, true, 8192, 20'000);
}

// Record timestamps come from the TSC anchor (shm::fast_realtime_ns). A thread that reads it
// while another re-anchors must never pair the new anchor's TSC with the old anchor's time:
// before the anchor was a sequence lock, such a reader stamped its record with the old
// anchor's time, 20 ms in the past here. The re-anchoring thread stops half-way (a test hook)
// while the other reads.
namespace clock_race {
std::atomic<int> phase{0};  // 1: the anchor is half stored; 2: the reader has read
std::atomic<int> hook_calls{0};
std::atomic<bool> reader_late{false};
void hold_mid_reanchor() {
  hook_calls.fetch_add(1);
  phase.store(1);
  const auto give_up = std::chrono::steady_clock::now() + 10s;
  while (phase.load() != 2)
    if (std::chrono::steady_clock::now() > give_up) {
      reader_late.store(true);
      return;
    } else {
      std::this_thread::yield();
    }
}
}  // namespace clock_race

TEST(Clock, AReaderDuringAReanchorNeverPairsTwoAnchors) {
  using namespace clock_race;
  phase.store(0);
  hook_calls.store(0);
  reader_late.store(false);
  // Two anchors at least 1 ms apart make the TSC usable.
  (void)shm::fast_realtime_ns();
  std::this_thread::sleep_for(2ms);
  (void)shm::fast_realtime_ns();
  if (shm::g_tsc_anchor.seq.load() == 0) GTEST_SKIP() << "no invariant TSC here: the clock is clock_gettime itself";
  std::int64_t before = 0, seen = 0, after = 0;
  std::thread reader([&] {
    while (phase.load() != 1) std::this_thread::yield();
    before = shm::realtime_ns();
    seen = shm::fast_realtime_ns();
    after = shm::realtime_ns();
    phase.store(2);
  });
  // Past the anchor's 10 ms: the next reading re-anchors, and stops in the hook.
  std::this_thread::sleep_for(20ms);
  shm::test_hooks::mid_reanchor = hold_mid_reanchor;
  (void)shm::fast_realtime_ns();
  shm::test_hooks::mid_reanchor = nullptr;
  if (phase.load() != 2) phase.store(1);  // the hook never ran: let the reader go
  reader.join();
  ASSERT_EQ(hook_calls.load(), 1) << "no re-anchoring stopped half-way: the test did not reach its path";
  ASSERT_FALSE(reader_late.load()) << "the reader did not read while the re-anchoring was held (10 s)";
  EXPECT_GE(seen, before - 1'000'000) << "stamped " << (before - seen) / 1000 << " us before the clock";
  EXPECT_LE(seen, after + 1'000'000) << "stamped " << (seen - after) / 1000 << " us after the clock";
}
