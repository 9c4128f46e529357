// Groups and the topics they subscribe to (issue 14): subscriptions by regular expression
// (a name starting with '^', as librdkafka has them) that take topics created later, topic
// creation and deletion rebalancing the groups subscribed, commits of an earlier creation
// of a topic refused, and the revoke deadline of a rebalance being the member's own
// max_poll_interval (Kafka's rebalance timeout).
#include <gtest/gtest.h>

#include <signal.h>

#include <algorithm>
#include <chrono>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "bus/topic.h"
#include "busd_fixture.h"
#include "cli_util.h"
#include "shmbus/consumer.h"
#include "shmbus/producer.h"
#include "test_util.h"

using namespace shmbus;
using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

class GroupTopics : public test::BusdFixture {
 protected:
  void make_topic(const std::string& name, std::uint32_t partitions) {
    TopicConfig cfg;
    cfg.partitions = partitions;
    cfg.capacity = 1 << 16;
    ASSERT_TRUE((*bus_)->create_topic(name, cfg));
  }
  void produce(const std::string& topic, std::uint32_t partition, int n) {
    auto p = Producer::create(bus_->get());
    for (int i = 0; i < n; ++i) ASSERT_TRUE(p->send(topic, Message{std::nullopt, as_bytes("x")}, partition));
  }
  static ConsumerConfig by_hand() {
    ConsumerConfig cc;
    cc.auto_offset_reset = OffsetReset::kEarliest;
    cc.enable_auto_commit = false;
    return cc;
  }
  // The topics of c's assignment, sorted, one entry a partition ("t-0").
  static std::vector<std::string> owned(const Consumer& c) {
    std::vector<std::string> out;
    for (const auto& tp : c.assignment()) out.push_back(fmt::format("{}-{}", tp.topic, tp.partition));
    std::sort(out.begin(), out.end());
    return out;
  }
  // Polls c until its assignment is `want` (or 10 s passed); records polled meanwhile are dropped.
  static bool poll_until(Consumer& c, const std::vector<std::string>& want) {
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (owned(c) != want && std::chrono::steady_clock::now() < deadline)
      if (!c.poll(10ms)) return false;
    return owned(c) == want;
  }
};

// A subscription by pattern takes the topics that match now, and those created later
// (Kafka's metadata refresh; here busd sees the bus's topics change).
TEST_F(GroupTopics, PatternSubscriptionTakesMatchingTopicsAndThoseCreatedLater) {
  make_topic("orders-eu", 2);
  make_topic("payments", 1);
  std::vector<TopicPartition> assigned;
  ConsumerConfig cc = by_hand();
  cc.on_assigned = [&](const std::vector<TopicPartition>& tps) { assigned.insert(assigned.end(), tps.begin(), tps.end()); };
  auto c = Consumer::create(bus_->get(), cc);
  ASSERT_TRUE(c);
  auto ok = c->subscribe({"^orders-.*"}, "g");
  ASSERT_TRUE(ok) << ok.error().message;
  EXPECT_EQ(owned(*c), (std::vector<std::string>{"orders-eu-0", "orders-eu-1"}));
  // Created after the subscription: it joins it, and its records come.
  make_topic("orders-us", 1);
  ASSERT_TRUE(poll_until(*c, {"orders-eu-0", "orders-eu-1", "orders-us-0"})) << fmt::format("{}", fmt::join(owned(*c), ","));
  produce("orders-us", 0, 3);
  EXPECT_EQ(assigned.back(), (TopicPartition{"orders-us", 0}));
  std::size_t got = 0;
  for (int i = 0; i < 100 && got < 3; ++i) got += c->poll(10ms)->size();
  EXPECT_EQ(got, 3u);
  // busd shows the subscription and what it matched.
  const json d = describe("g");
  ASSERT_EQ(d["members"].size(), 1u) << d.dump();
  EXPECT_EQ(d["members"][0]["subscription"], json({"^orders-.*"})) << d.dump();
  EXPECT_EQ(d["members"][0]["topics"], json({"orders-eu", "orders-us"})) << d.dump();
  // A topic that does not match is not taken.
  make_topic("payments-2", 1);
  for (int i = 0; i < 30; ++i) ASSERT_TRUE(c->poll(10ms));
  EXPECT_EQ(owned(*c), (std::vector<std::string>{"orders-eu-0", "orders-eu-1", "orders-us-0"}));
  // A bad pattern is refused by name, and changes nothing.
  auto bad = Consumer::create(bus_->get(), by_hand());
  auto refused = bad->subscribe({"^orders-("}, "g");
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("'^orders-('"), std::string::npos) << refused.error().message;
  EXPECT_EQ(describe("g")["members"].size(), 1u);
}

// A deleted topic's partitions are revoked from the members that had them (on_revoked,
// nothing committed for them) and the others' assignment goes on; created again, the topic
// is assigned again, from its start.
TEST_F(GroupTopics, DeletedTopicIsRevokedAndCreatedAgainIsAssignedFromItsStart) {
  make_topic("a", 1);
  make_topic("b", 1);
  produce("b", 0, 5);
  std::vector<TopicPartition> revoked;
  ConsumerConfig cc = by_hand();
  cc.on_revoked = [&](const std::vector<TopicPartition>& tps) { revoked.insert(revoked.end(), tps.begin(), tps.end()); };
  auto c = Consumer::create(bus_->get(), cc);
  ASSERT_TRUE(c->subscribe({"a", "b"}, "g"));
  ASSERT_EQ(owned(*c), (std::vector<std::string>{"a-0", "b-0"}));
  std::size_t got = 0;
  for (int i = 0; i < 100 && got < 5; ++i) got += c->poll(10ms)->size();
  ASSERT_EQ(got, 5u);
  ASSERT_TRUE(c->commit());
  ASSERT_TRUE((*bus_)->delete_topic("b"));
  // poll() goes on without an error, and the partition goes.
  ASSERT_TRUE(poll_until(*c, {"a-0"})) << fmt::format("{}", fmt::join(owned(*c), ","));
  EXPECT_EQ(revoked, std::vector<TopicPartition>{(TopicPartition{"b", 0})});
  json d = describe("g");
  EXPECT_EQ(d["state"], "stable") << d.dump();
  // Created again: assigned again, from the start (the old offsets went with the old topic).
  make_topic("b", 1);
  ASSERT_TRUE(poll_until(*c, {"a-0", "b-0"})) << fmt::format("{}", fmt::join(owned(*c), ","));
  EXPECT_EQ(*c->position({"b", 0}), 0u);
  produce("b", 0, 2);
  got = 0;
  for (int i = 0; i < 100 && got < 2; ++i) got += c->poll(10ms)->size();
  EXPECT_EQ(got, 2u);
}

// With on_lost set, a deleted topic's partitions go to it, not to on_revoked (nothing can be
// committed for them); Kafka's consumer revokes them (docs/design-deviations.md).
TEST_F(GroupTopics, DeletedTopicsPartitionsGoToOnLostWhenItIsSet) {
  make_topic("a", 1);
  make_topic("b", 1);
  std::vector<TopicPartition> lost, revoked;
  ConsumerConfig cc = by_hand();
  cc.on_lost = [&](const std::vector<TopicPartition>& tps) { lost.insert(lost.end(), tps.begin(), tps.end()); };
  cc.on_revoked = [&](const std::vector<TopicPartition>& tps) { revoked.insert(revoked.end(), tps.begin(), tps.end()); };
  auto c = Consumer::create(bus_->get(), cc);
  ASSERT_TRUE(c->subscribe({"a", "b"}, "g"));
  ASSERT_EQ(owned(*c), (std::vector<std::string>{"a-0", "b-0"}));
  ASSERT_TRUE((*bus_)->delete_topic("b"));
  ASSERT_TRUE(poll_until(*c, {"a-0"})) << fmt::format("{}", fmt::join(owned(*c), ","));
  EXPECT_EQ(lost, std::vector<TopicPartition>{(TopicPartition{"b", 0})});
  EXPECT_TRUE(revoked.empty()) << revoked.size() << " partitions revoked";
}

// Deleted and created again between two looks of busd (the epoch changed, the name did
// not): the member gives the old topic's partition up and gets the new one's, from its start.
TEST_F(GroupTopics, TopicRecreatedUnderTheSameNameIsRevokedAndAssignedAnew) {
  make_topic("t", 1);
  produce("t", 0, 4);
  int revokes = 0;
  ConsumerConfig cc = by_hand();
  cc.on_revoked = [&](const std::vector<TopicPartition>&) { ++revokes; };
  auto c = Consumer::create(bus_->get(), cc);
  ASSERT_TRUE(c->subscribe({"t"}, "g"));
  std::size_t got = 0;
  for (int i = 0; i < 100 && got < 4; ++i) got += c->poll(10ms)->size();
  ASSERT_EQ(got, 4u);
  ASSERT_TRUE(c->commit());
  ASSERT_TRUE((*bus_)->delete_topic("t"));
  make_topic("t", 1);
  produce("t", 0, 2);
  std::vector<std::uint64_t> offsets;
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (offsets.size() < 2 && std::chrono::steady_clock::now() < deadline) {
    auto batch = c->poll(10ms);
    ASSERT_TRUE(batch) << batch.error().message;
    for (const auto& r : *batch) offsets.push_back(r.offset);
  }
  EXPECT_EQ(offsets, (std::vector<std::uint64_t>{0, 1})) << "the new topic read from its start";
  EXPECT_EQ(revokes, 1);
  EXPECT_EQ(owned(*c), std::vector<std::string>{"t-0"});
}

// A commit carries the epoch of the topic its offsets were read from: the offsets of a
// deleted topic never land on a new topic of the same name.
TEST_F(GroupTopics, CommitForAnEarlierCreationOfTheTopicIsRefused) {
  make_topic("t", 1);
  produce("t", 0, 5);
  const TopicPartition tp{"t", 0};
  ConsumerConfig cc = by_hand();
  cc.group_id = "s";
  auto c = Consumer::create(bus_->get(), cc);
  ASSERT_TRUE(c->assign({tp}));
  std::size_t got = 0;
  for (int i = 0; i < 100 && got < 5; ++i) got += c->poll(10ms)->size();
  ASSERT_EQ(got, 5u);
  ASSERT_TRUE((*bus_)->delete_topic("t"));
  make_topic("t", 1);
  produce("t", 0, 1);
  auto refused = c->commit();
  ASSERT_FALSE(refused) << "offset 5 of the deleted topic was committed to the new one";
  EXPECT_EQ(refused.error().code, Errc::kTopicDeleted);
  EXPECT_NE(refused.error().message.find("t-0: topic deleted since it was read"), std::string::npos) << refused.error().message;
  auto other = Consumer::create(bus_->get(), cc);
  auto committed = other->committed({tp});
  ASSERT_TRUE(committed) << committed.error().message;
  EXPECT_EQ((*committed)[0], std::nullopt);
  // busd's protocol: an epoch that is not the topic's is refused, the current one taken.
  auto conn = BusdConnection::connect(bus_->name(), 5s);
  ASSERT_TRUE(conn);
  const std::uint64_t epoch = (*(*bus_)->topic("t"))->epoch();
  auto wrong = (*conn)->request({{"op", "commit"}, {"group", "s"}, {"member_id", ""}, {"generation", -1},
                                 {"offsets", {{"t", 0, 1, epoch - 1}}}}, 5s);
  ASSERT_FALSE(wrong);
  EXPECT_NE(wrong.error().message.find("t-0: read from an earlier creation of the topic"), std::string::npos)
      << wrong.error().message;
  EXPECT_EQ((*other->committed({tp}))[0], std::nullopt);
  auto right = (*conn)->request({{"op", "commit"}, {"group", "s"}, {"member_id", ""}, {"generation", -1},
                                 {"offsets", {{"t", 0, 1, epoch}}}}, 5s);
  EXPECT_TRUE(right) << right.error().message;
}

// Kafka's rebalance timeout is the member's max.poll.interval.ms: a member busy between two
// polls for longer than busd's --rebalance-timeout-ms, but within its own max poll
// interval, gives its partition up at its next poll and stays in the group.
TEST_F(GroupTopics, RevokeDeadlineIsTheMembersOwnMaxPollInterval) {
  make_topic("t", 2);
  test::Child busd = test::spawn({SHMBUS_BUSD_PATH, "--bus", bus_->name(), "--rebalance-timeout-ms", "300"});
  bool up = false;
  for (int i = 0; i < 500 && !up; ++i) {
    up = static_cast<bool>(BusdConnection::connect(bus_->name(), 100ms, /*autostart=*/false));
    if (!up) std::this_thread::sleep_for(10ms);
  }
  ASSERT_TRUE(up);
  std::vector<TopicPartition> lost;
  ConsumerConfig ac = by_hand();
  ac.session_timeout = 10s;
  ac.max_poll_interval = 20s;
  ac.on_lost = [&](const std::vector<TopicPartition>& tps) { lost.insert(lost.end(), tps.begin(), tps.end()); };
  auto a = Consumer::create(bus_->get(), ac);
  ASSERT_TRUE(a->subscribe({"t"}, "g"));
  ASSERT_EQ(a->assignment().size(), 2u);
  const std::string id = a->member_id();
  auto b = Consumer::create(bus_->get(), by_hand());
  std::thread joiner([&] { ASSERT_TRUE(b->subscribe({"t"}, "g")); });
  std::this_thread::sleep_for(1500ms);  // a processes a batch: no poll() for 5 rebalance timeouts
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (a->assignment().size() != 1 && std::chrono::steady_clock::now() < deadline) ASSERT_TRUE(a->poll(10ms));
  joiner.join();
  EXPECT_EQ(a->assignment().size(), 1u);
  EXPECT_EQ(b->assignment().size(), 1u);
  EXPECT_EQ(a->member_id(), id) << "a was not evicted";
  EXPECT_TRUE(lost.empty());
  ::kill(busd.pid, SIGKILL);  // ours: reaped here (the fixture would wait for a zombie)
  std::string out;
  test::finish(busd, out);
}

// busctl consume --group with a pattern subscribes by it: a topic created later is read too.
TEST_F(GroupTopics, BusctlConsumeGroupWithAPatternTakesTopicsCreatedLater) {
  make_topic("logs-a", 1);
  produce("logs-a", 0, 1);
  auto c = test::spawn({BUSCTL_PATH, "--bus", bus_->name(), "consume", "--pattern", "logs-", "--group", "g", "--format", "%t@%o\\n"});
  std::string out;
  ASSERT_TRUE(test::wait_line(c, out, "logs-a@0\n")) << out;
  make_topic("logs-b", 1);
  produce("logs-b", 0, 1);
  const bool seen = test::wait_line(c, out, "logs-b@0\n");
  ::kill(c.pid, SIGINT);
  test::finish(c, out, 30s);
  EXPECT_TRUE(seen) << out;
  const json d = describe("g");
  ASSERT_TRUE(d.contains("partitions")) << d.dump();
  for (const auto& row : d["partitions"]) EXPECT_EQ(row["committed"], 1) << d.dump();
}

}  // namespace
