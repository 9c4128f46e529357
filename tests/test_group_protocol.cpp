// Consumer groups as Kafka's group protocol has them: a heartbeat apart from poll() (a
// member busy between polls stays), session timeout and max poll interval as two settings,
// on_lost apart from on_revoked, commits of assign()ed consumers, asynchronous commits
// with a completion callback.
#include <gtest/gtest.h>

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "busd_fixture.h"
#include "shmbus/consumer.h"
#include "shmbus/producer.h"
#include "test_util.h"

using namespace shmbus;
using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

class GroupProtocol : public test::BusdFixture {
 protected:
  void make_topic(std::uint32_t partitions) {
    TopicConfig cfg;
    cfg.partitions = partitions;
    cfg.capacity = 1 << 16;
    ASSERT_TRUE((*bus_)->create_topic("t", cfg));
  }
  // From the earliest record, committing only when told.
  static ConsumerConfig by_hand() {
    ConsumerConfig cc;
    cc.auto_offset_reset = OffsetReset::kEarliest;
    cc.enable_auto_commit = false;
    return cc;
  }
  void produce(std::uint32_t partition, int n) {
    auto p = Producer::create(bus_->get());
    for (int i = 0; i < n; ++i) ASSERT_TRUE(p->send("t", Message{std::nullopt, as_bytes("x")}, partition));
  }
  // Polls until `n` records came (or 100 polls); how many came.
  static std::size_t read(Consumer& c, std::size_t n) {
    std::size_t got = 0;
    for (int i = 0; i < 100 && got < n; ++i) got += c.poll(10ms)->size();
    return got;
  }
  // The ids of the group's members, as busd has them now.
  std::vector<std::string> members(const std::string& group) {
    std::vector<std::string> ids;
    json d = describe(group);
    if (d.contains("members"))
      for (const auto& m : d["members"]) ids.push_back(m["member_id"]);
    return ids;
  }
};

// Kafka's consumer heartbeats from a thread of its own: processing a batch for longer than
// the session timeout (but within max.poll.interval.ms) costs the member nothing.
TEST_F(GroupProtocol, MemberBusyLongerThanItsSessionTimeoutButWithinMaxPollIntervalKeepsItsPartitions) {
  make_topic(2);
  int revoked = 0;
  ConsumerConfig cc;
  cc.enable_auto_commit = false;
  cc.session_timeout = 1s;
  cc.heartbeat_interval = 200ms;
  cc.max_poll_interval = 5s;
  cc.on_revoked = [&](const std::vector<TopicPartition>&) { ++revoked; };
  auto a = Consumer::create(bus_->get(), cc);
  ASSERT_TRUE(a);
  ASSERT_TRUE(a->subscribe({"t"}, "g"));
  ASSERT_EQ(a->assignment().size(), 2u);
  const std::string id = a->member_id();
  const std::uint64_t gen = a->generation();
  ASSERT_TRUE(a->poll(0ns));
  std::this_thread::sleep_for(2500ms);  // processing a batch: no poll() for 2.5 session timeouts
  EXPECT_EQ(members("g"), std::vector<std::string>{id}) << "busd kept the busy member";
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(a->poll(1ms));
  EXPECT_EQ(a->assignment().size(), 2u);
  EXPECT_EQ(a->member_id(), id);
  EXPECT_EQ(a->generation(), gen);
  EXPECT_EQ(revoked, 0);
}

// Kafka: a member that does not poll within max.poll.interval.ms leaves the group, though
// its heartbeats go on; its next poll() joins again.
TEST_F(GroupProtocol, MemberThatDoesNotPollWithinMaxPollIntervalLeavesAndJoinsAgainAtItsNextPoll) {
  make_topic(2);
  ConsumerConfig cc;
  cc.enable_auto_commit = false;
  cc.session_timeout = 10s;  // far away: what removes it here is the max poll interval
  cc.heartbeat_interval = 200ms;
  cc.max_poll_interval = 1s;
  auto a = Consumer::create(bus_->get(), cc);
  ASSERT_TRUE(a->subscribe({"t"}, "g"));
  const std::string id = a->member_id();
  ASSERT_TRUE(a->poll(0ns));
  const auto t0 = std::chrono::steady_clock::now();
  const auto deadline = t0 + 8s;
  while (!members("g").empty() && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(50ms);
  ASSERT_TRUE(members("g").empty()) << "busd removed the member that stopped polling";
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 900ms) << "not before its max poll interval";
  EXPECT_EQ(a->assignment().size(), 2u) << "it does not know yet";
  // Its next poll learns it, drops its partitions, and joins again.
  ASSERT_TRUE(a->poll(0ns));
  EXPECT_TRUE(a->assignment().empty());
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (a->assignment().size() != 2 && std::chrono::steady_clock::now() < until) ASSERT_TRUE(a->poll(10ms));
  EXPECT_EQ(a->assignment().size(), 2u);
  EXPECT_NE(a->member_id(), id) << "a new member";
  EXPECT_EQ(members("g"), std::vector<std::string>{a->member_id()});
}

// The heartbeat comes from a thread of the process: a process that stops (SIGSTOP) stops
// heartbeating, and busd gives its partitions to the others after its session timeout.
TEST_F(GroupProtocol, StoppedProcessIsEvictedAfterItsSessionTimeout) {
  make_topic(2);
  std::string out;
  test::Child w = test::spawn({SHMBUS_WORKER_PATH, "group-consume", bus_->name(), "t", "g", member_log(0), "sticky", "1000"});
  ASSERT_TRUE(test::wait_line(w, out, "ready"));
  ConsumerConfig cc;
  cc.enable_auto_commit = false;
  auto b = Consumer::create(bus_->get(), cc);
  ASSERT_TRUE(b->subscribe({"t"}, "g"));
  EXPECT_EQ(b->assignment().size(), 1u);
  ASSERT_EQ(::kill(w.pid, SIGSTOP), 0);
  const auto t0 = std::chrono::steady_clock::now();
  const auto deadline = t0 + 10s;
  while (b->assignment().size() != 2 && std::chrono::steady_clock::now() < deadline) ASSERT_TRUE(b->poll(10ms));
  EXPECT_EQ(b->assignment().size(), 2u) << "the stopped member's partition came to b";
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 900ms) << "not before the session timeout";
  ::kill(w.pid, SIGKILL);
  test::finish(w, out);
}

// Kafka's onPartitionsRevoked (a rebalance: positions committed first) and
// onPartitionsLost (removed from the group: nothing committed, the partitions are gone).
TEST_F(GroupProtocol, RebalanceCallsOnRevokedWithACommitAndRemovalCallsOnLostWithout) {
  make_topic(2);
  produce(0, 10);
  produce(1, 10);
  std::vector<TopicPartition> revoked, lost;
  ConsumerConfig cc;
  cc.auto_offset_reset = OffsetReset::kEarliest;
  cc.auto_commit_interval = std::chrono::hours(1);  // commits only when giving partitions up
  cc.session_timeout = 10s;
  cc.heartbeat_interval = 200ms;
  cc.max_poll_interval = 1s;
  cc.on_revoked = [&](const std::vector<TopicPartition>& tps) { revoked.insert(revoked.end(), tps.begin(), tps.end()); };
  cc.on_lost = [&](const std::vector<TopicPartition>& tps) { lost.insert(lost.end(), tps.begin(), tps.end()); };
  auto a = Consumer::create(bus_->get(), cc);
  ASSERT_TRUE(a->subscribe({"t"}, "g"));
  ASSERT_EQ(read(*a, 20), 20u);
  // b joins (from another thread: its subscribe waits for a to give a partition up).
  ConsumerConfig bc;
  bc.enable_auto_commit = false;
  auto b = Consumer::create(bus_->get(), bc);
  std::thread joiner([&] { ASSERT_TRUE(b->subscribe({"t"}, "g")); });
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (revoked.empty() && std::chrono::steady_clock::now() < deadline) ASSERT_TRUE(a->poll(10ms));
  joiner.join();
  ASSERT_EQ(revoked.size(), 1u);
  EXPECT_TRUE(lost.empty());
  auto committed = b->committed({revoked[0]});
  ASSERT_TRUE(committed);
  EXPECT_EQ((*committed)[0], std::optional<std::uint64_t>(10)) << "committed before it was revoked";
  ASSERT_EQ(a->assignment().size(), 1u);
  const TopicPartition kept = a->assignment()[0];
  // a stops polling: it leaves the group after its max poll interval. b heartbeats on.
  const auto until = std::chrono::steady_clock::now() + 8s;
  while (members("g").size() != 1 && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(50ms);
  ASSERT_EQ(members("g"), std::vector<std::string>{b->member_id()});
  ASSERT_TRUE(a->poll(0ns));
  EXPECT_EQ(lost, std::vector<TopicPartition>{kept}) << "lost, not revoked";
  EXPECT_EQ(revoked.size(), 1u);
  auto refused = a->commit();
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("no poll() for"), std::string::npos) << refused.error().message;
  committed = b->committed({kept});
  ASSERT_TRUE(committed);
  EXPECT_NE((*committed)[0], std::optional<std::uint64_t>(10)) << "nothing committed for a lost partition";
}

// Kafka's simple consumer group: assign() with a group id commits (generation -1) while the
// group has no live member, starts where the group committed, and is refused while the group
// has members.
TEST_F(GroupProtocol, AssignedConsumerWithAGroupIdCommitsWhileTheGroupHasNoLiveMember) {
  make_topic(2);
  produce(0, 10);
  const TopicPartition tp{"t", 0};
  ConsumerConfig cc = by_hand();
  cc.group_id = "s";
  auto c1 = Consumer::create(bus_->get(), cc);
  ASSERT_TRUE(c1->assign({tp}));
  ASSERT_EQ(read(*c1, 10), 10u);
  auto ok = c1->commit();
  ASSERT_TRUE(ok) << ok.error().message;
  auto committed = c1->committed({tp});
  ASSERT_TRUE(committed) << committed.error().message;
  EXPECT_EQ((*committed)[0], std::optional<std::uint64_t>(10));
  // A second consumer of the group starts where the first committed.
  auto c2 = Consumer::create(bus_->get(), cc);
  ASSERT_TRUE(c2->assign({tp}));
  EXPECT_EQ(*c2->position(tp), 10u);
  ASSERT_TRUE(c2->commit({{tp, 7}}));
  EXPECT_EQ((*c1->committed({tp}))[0], std::optional<std::uint64_t>(7));
  // Once the group has a live member, its offsets are the members' to commit.
  ConsumerConfig mc;
  mc.enable_auto_commit = false;
  auto m = Consumer::create(bus_->get(), mc);
  ASSERT_TRUE(m->subscribe({"t"}, "s"));
  EXPECT_EQ(*m->position(tp), 7u) << "the member starts at the committed offset too";
  auto refused = c1->commit();
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("group 's' has 1 live members"), std::string::npos) << refused.error().message;
  EXPECT_EQ((*c1->committed({tp}))[0], std::optional<std::uint64_t>(7)) << "the refused commit changed nothing";
  // Without a group id, commits are refused and assign() needs no busd.
  ConsumerConfig plain;
  auto c3 = Consumer::create(bus_->get(), plain);
  ASSERT_TRUE(c3->assign({tp}));
  auto none = c3->commit();
  ASSERT_FALSE(none);
  EXPECT_NE(none.error().message.find("group_id"), std::string::npos) << none.error().message;
  // subscribe() to another group than group_id is refused.
  auto c4 = Consumer::create(bus_->get(), cc);
  auto other = c4->subscribe({"t"}, "other");
  ASSERT_FALSE(other);
  EXPECT_NE(other.error().message.find("group_id is 's'"), std::string::npos) << other.error().message;
}

// A commit of generation -1 with no member id, sent by hand: the wrong generation and an
// unknown partition are refused, saying which.
TEST_F(GroupProtocol, UnownedCommitsOfAnotherGenerationOrAnUnknownPartitionAreRefused) {
  make_topic(2);
  auto conn = BusdConnection::connect(bus_->name(), 5s);
  ASSERT_TRUE(conn) << conn.error().message;
  auto gen = (*conn)->request({{"op", "commit"}, {"group", "s"}, {"member_id", ""}, {"generation", 3}, {"offsets", {{"t", 0, 1}}}}, 5s);
  ASSERT_FALSE(gen);
  EXPECT_NE(gen.error().message.find("generation -1, not 3"), std::string::npos) << gen.error().message;
  auto part = (*conn)->request({{"op", "commit"}, {"group", "s"}, {"member_id", ""}, {"generation", -1}, {"offsets", {{"t", 9, 1}}}}, 5s);
  ASSERT_FALSE(part);
  EXPECT_NE(part.error().message.find("no partition 9"), std::string::npos) << part.error().message;
  auto good = (*conn)->request({{"op", "commit"}, {"group", "s"}, {"member_id", ""}, {"generation", -1}, {"offsets", {{"t", 1, 4}}}}, 5s);
  EXPECT_TRUE(good) << good.error().message;
}

// Kafka's commitAsync(callback): the callback comes from poll() once busd answered, in the
// order of the commits, with busd's refusal when it refused; close() waits for the rest.
TEST_F(GroupProtocol, CommitAsyncCallsItsCallbackFromPollInOrderWithBusdsAnswer) {
  make_topic(2);
  produce(0, 10);
  const TopicPartition tp{"t", 0};
  ConsumerConfig cc = by_hand();
  auto a = Consumer::create(bus_->get(), cc);
  ASSERT_TRUE(a->subscribe({"t"}, "g"));
  ASSERT_EQ(read(*a, 10), 10u);
  std::vector<std::string> calls;
  auto record = [&](const std::string& name) {
    return [&calls, name](const std::vector<std::pair<TopicPartition, std::uint64_t>>& offs, const Status& st) {
      calls.push_back(fmt::format("{} {} {}", name, offs.size(), st ? "ok" : st.error().message));
    };
  };
  ASSERT_TRUE(a->commit_async({{tp, 4}}, record("first")));
  ASSERT_TRUE(a->commit_async(record("second")));
  ASSERT_TRUE(a->commit_async({{TopicPartition{"t", 7}, 1}}, record("third")));  // not a's: refused
  EXPECT_TRUE(calls.empty()) << "called from poll(), not from commit_async()";
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (calls.size() < 3 && std::chrono::steady_clock::now() < deadline) ASSERT_TRUE(a->poll(1ms));
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[0], "first 1 ok");
  EXPECT_EQ(calls[1], "second 2 ok");
  EXPECT_NE(calls[2].find("third 1 commit refused: t-7 is not assigned"), std::string::npos) << calls[2];
  EXPECT_EQ((*a->committed({tp}))[0], std::optional<std::uint64_t>(10));
  // One still in flight when the consumer closes: close() waits for its answer.
  ASSERT_TRUE(a->commit_async({{tp, 9}}, record("last")));
  ASSERT_TRUE(a->close());
  ASSERT_EQ(calls.size(), 4u);
  EXPECT_EQ(calls[3], "last 1 ok");
}

// librdkafka's offset_commit_cb: every commit the consumer makes by itself reaches
// on_commit with busd's answer: the timer's (from a later poll), a revocation's, close()'s.
TEST_F(GroupProtocol, AutoCommitsReachOnCommitWithBusdsAnswer) {
  make_topic(2);
  produce(0, 10);
  produce(1, 5);
  std::vector<std::string> calls;
  ConsumerConfig cc;
  cc.auto_offset_reset = OffsetReset::kEarliest;
  cc.auto_commit_interval = 50ms;
  cc.on_commit = [&](const std::vector<std::pair<TopicPartition, std::uint64_t>>& offs, const Status& st) {
    std::string line = st ? "ok" : st.error().message;
    for (const auto& [tp, o] : offs) line += fmt::format(" {}:{}", tp.partition, o);
    calls.push_back(line);
  };
  auto a = Consumer::create(bus_->get(), cc);
  ASSERT_TRUE(a->subscribe({"t"}, "g"));
  ASSERT_EQ(read(*a, 15), 15u);
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (calls.empty() && std::chrono::steady_clock::now() < deadline) ASSERT_TRUE(a->poll(10ms));
  ASSERT_EQ(calls.size(), 1u) << "the timer's commit, answered from poll()";
  EXPECT_EQ(calls[0], "ok 0:10 1:5");
  EXPECT_EQ((*a->committed({{"t", 0}}))[0], std::optional<std::uint64_t>(10));
  // A second member takes a partition: the first commits it on revocation.
  produce(0, 2);
  produce(1, 2);
  ASSERT_EQ(read(*a, 4), 4u);
  auto b = Consumer::create(bus_->get(), by_hand());
  std::thread joiner([&] { ASSERT_TRUE(b->subscribe({"t"}, "g")); });  // waits for a to give one up
  const auto until = std::chrono::steady_clock::now() + 10s;
  while (calls.size() < 2 && std::chrono::steady_clock::now() < until) ASSERT_TRUE(a->poll(10ms));
  joiner.join();
  ASSERT_GE(calls.size(), 2u);
  EXPECT_EQ(calls[1].rfind("ok", 0), 0u) << calls[1];
  const std::size_t before_close = calls.size();
  produce(0, 1);
  produce(1, 1);
  ASSERT_EQ(read(*a, 1), 1u);
  ASSERT_TRUE(a->close());
  EXPECT_GT(calls.size(), before_close) << "what a read since was committed (by the timer or close()), and said so";
  EXPECT_EQ(calls.back().rfind("ok", 0), 0u) << calls.back();
}

// Kafka's static membership: a member with a group_instance_id that goes away (a restart)
// keeps its partitions for its session timeout; back within it, it gets them again with no
// rebalance (the others see nothing); gone for longer, the others take them.
TEST_F(GroupProtocol, StaticMemberBackWithinItsSessionTimeoutGetsItsPartitionsWithoutARebalance) {
  make_topic(4);
  ConsumerConfig sc = by_hand();
  sc.group_instance_id = "i1";
  sc.session_timeout = 2s;
  sc.heartbeat_interval = 200ms;
  int b_changes = 0;
  ConsumerConfig bc = by_hand();
  bc.on_assigned = [&](const std::vector<TopicPartition>&) { ++b_changes; };
  bc.on_revoked = [&](const std::vector<TopicPartition>&) { ++b_changes; };
  auto poll_b = [&](Consumer& b, std::chrono::milliseconds how_long) {
    const auto until = std::chrono::steady_clock::now() + how_long;
    while (std::chrono::steady_clock::now() < until) ASSERT_TRUE(b.poll(10ms));
  };
  std::optional<Consumer> a(std::move(*Consumer::create(bus_->get(), sc)));
  ASSERT_TRUE(a->subscribe({"t"}, "g"));
  auto b = Consumer::create(bus_->get(), bc);
  std::thread joiner([&] { ASSERT_TRUE(b->subscribe({"t"}, "g")); });
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (a->assignment().size() != 2 && std::chrono::steady_clock::now() < deadline) ASSERT_TRUE(a->poll(10ms));
  joiner.join();
  ASSERT_EQ(a->assignment().size(), 2u);
  ASSERT_EQ(b->assignment().size(), 2u);
  ASSERT_EQ(b_changes, 1);
  // The group's generation is b's (it joined into it); a hears of it at a later poll, after
  // it gave up its half. Taken before that, a's was a generation behind and a2's came out
  // "moved" without any rebalance (seen once under ASan).
  while (a->generation() != b->generation() && std::chrono::steady_clock::now() < deadline) ASSERT_TRUE(a->poll(10ms));
  ASSERT_EQ(a->generation(), b->generation());
  auto owned = a->assignment();
  std::sort(owned.begin(), owned.end());
  const std::uint64_t gen = a->generation();
  a.reset();  // its process restarts: close() does not leave
  poll_b(*b, 300ms);
  EXPECT_EQ(b->assignment().size(), 2u);
  EXPECT_EQ(b_changes, 1) << "no rebalance while the static member is away";
  json d = describe("g");
  ASSERT_EQ(d["members"].size(), 2u);
  int absent = 0;
  for (const auto& m : d["members"]) absent += m["absent"].get<bool>() && m["group_instance_id"] == "i1";
  EXPECT_EQ(absent, 1);
  // Back, as a new process with the same instance id.
  auto a2 = Consumer::create(bus_->get(), sc);
  ASSERT_TRUE(a2->subscribe({"t"}, "g"));
  auto again = a2->assignment();
  std::sort(again.begin(), again.end());
  EXPECT_EQ(again, owned);
  EXPECT_EQ(a2->generation(), gen) << "the same generation: no rebalance";
  poll_b(*b, 300ms);
  EXPECT_EQ(b_changes, 1);
  // A second live consumer of the same instance is refused.
  auto twin = Consumer::create(bus_->get(), sc);
  auto refused = twin->subscribe({"t"}, "g");
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("group_instance_id 'i1' is in use"), std::string::npos) << refused.error().message;
  // Away for longer than its session timeout: b takes its partitions.
  a2 = Consumer::create(bus_->get(), by_hand());  // the old one closes, without leaving
  const auto t0 = std::chrono::steady_clock::now();
  const auto until = t0 + 10s;
  while (b->assignment().size() != 4 && std::chrono::steady_clock::now() < until) ASSERT_TRUE(b->poll(10ms));
  EXPECT_EQ(b->assignment().size(), 4u);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 1900ms) << "not before the session timeout";
}

TEST(GroupConfig, HeartbeatIntervalMustBeBelowTheSessionTimeout) {
  test::TestBus bus("cfg");
  ConsumerConfig cc;
  cc.session_timeout = 1s;
  cc.heartbeat_interval = 1s;
  auto c = Consumer::create(bus.get(), cc);
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message.find("heartbeat_interval (1000 ms) must be above 0 and below session_timeout (1000 ms)"),
            std::string::npos)
      << c.error().message;
  cc.heartbeat_interval = 3s;
  cc.session_timeout = 45s;
  cc.max_poll_interval = 0ms;
  EXPECT_FALSE(Consumer::create(bus.get(), cc));
}

}  // namespace
