// The assignors on Kafka's classic cases (see Kafka's RangeAssignorTest,
// RoundRobinAssignorTest and StickyAssignorTest for the cases these mirror).
#include <gtest/gtest.h>

#include <set>

#include "tools/busd/assignor.h"

using namespace shmbus;

namespace {

std::vector<TopicPartition> tps(std::initializer_list<std::pair<const char*, std::uint32_t>> l) {
  std::vector<TopicPartition> out;
  for (auto [t, p] : l) out.push_back({t, p});
  return out;
}

// Every subscribed partition to exactly one member that subscribes to its topic.
void expect_complete(const Assignment& a, const TopicPartitionCounts& topics, const std::vector<MemberSubscription>& members) {
  std::set<std::pair<std::string, std::uint32_t>> seen;
  for (const auto& [id, list] : a) {
    const auto& m = *std::find_if(members.begin(), members.end(), [&](const auto& x) { return x.member_id == id; });
    for (const auto& tp : list) {
      EXPECT_TRUE(seen.insert({tp.topic, tp.partition}).second) << tp.topic << "-" << tp.partition << " assigned twice";
      EXPECT_NE(std::find(m.topics.begin(), m.topics.end(), tp.topic), m.topics.end()) << id << " does not subscribe to " << tp.topic;
    }
  }
  for (const auto& [t, n] : topics) {
    bool wanted = false;
    for (const auto& m : members) wanted |= std::find(m.topics.begin(), m.topics.end(), t) != m.topics.end();
    if (!wanted) continue;
    for (std::uint32_t p = 0; p < n; ++p) EXPECT_TRUE(seen.count({t, p})) << t << "-" << p << " unassigned";
  }
}

}  // namespace

TEST(RangeAssignor, OneConsumerGetsEverything) {
  auto a = assign_range({{"t", 3}}, {{"c1", {"t"}, {}}});
  EXPECT_EQ(a["c1"], tps({{"t", 0}, {"t", 1}, {"t", 2}}));
}

TEST(RangeAssignor, UnevenPartitionsGoToTheFirstMembersPerTopic) {
  // Kafka's testTwoConsumersTwoTopicsSixPartitions: 3 partitions each, c0 gets 0,1 of both.
  std::vector<MemberSubscription> m = {{"c0", {"t1", "t2"}, {}}, {"c1", {"t1", "t2"}, {}}};
  auto a = assign_range({{"t1", 3}, {"t2", 3}}, m);
  EXPECT_EQ(a["c0"], tps({{"t1", 0}, {"t1", 1}, {"t2", 0}, {"t2", 1}}));
  EXPECT_EQ(a["c1"], tps({{"t1", 2}, {"t2", 2}}));
  expect_complete(a, {{"t1", 3}, {"t2", 3}}, m);
}

TEST(RangeAssignor, MembersSubscribedToDifferentTopics) {
  std::vector<MemberSubscription> m = {{"c0", {"t1"}, {}}, {"c1", {"t1", "t2"}, {}}, {"c2", {"t1"}, {}}};
  auto a = assign_range({{"t1", 3}, {"t2", 2}}, m);
  EXPECT_EQ(a["c0"], tps({{"t1", 0}}));
  EXPECT_EQ(a["c1"], tps({{"t1", 1}, {"t2", 0}, {"t2", 1}}));
  EXPECT_EQ(a["c2"], tps({{"t1", 2}}));
  expect_complete(a, {{"t1", 3}, {"t2", 2}}, m);
}

TEST(RangeAssignor, MoreMembersThanPartitions) {
  std::vector<MemberSubscription> m = {{"a", {"t"}, {}}, {"b", {"t"}, {}}, {"c", {"t"}, {}}};
  auto a = assign_range({{"t", 2}}, m);
  EXPECT_EQ(a["a"].size(), 1u);
  EXPECT_EQ(a["b"].size(), 1u);
  EXPECT_TRUE(a["c"].empty());
}

TEST(RoundRobinAssignor, InterleavesAcrossTopics) {
  // Kafka's testTwoConsumersTwoTopicsSixPartitions for round robin.
  std::vector<MemberSubscription> m = {{"c0", {"t1", "t2"}, {}}, {"c1", {"t1", "t2"}, {}}};
  auto a = assign_roundrobin({{"t1", 3}, {"t2", 3}}, m);
  EXPECT_EQ(a["c0"], tps({{"t1", 0}, {"t1", 2}, {"t2", 1}}));
  EXPECT_EQ(a["c1"], tps({{"t1", 1}, {"t2", 0}, {"t2", 2}}));
}

TEST(RoundRobinAssignor, SkipsMembersNotSubscribed) {
  std::vector<MemberSubscription> m = {{"c0", {"t1"}, {}}, {"c1", {"t1", "t2"}, {}}, {"c2", {"t1"}, {}}};
  auto a = assign_roundrobin({{"t1", 3}, {"t2", 2}}, m);
  expect_complete(a, {{"t1", 3}, {"t2", 2}}, m);
  EXPECT_EQ(a["c1"].size(), 3u) << "t2's partitions can only go to c1";
}

TEST(StickyAssignor, BalancedFromScratch) {
  std::vector<MemberSubscription> m = {{"a", {"t"}, {}}, {"b", {"t"}, {}}, {"c", {"t"}, {}}};
  auto a = assign_sticky({{"t", 12}}, m);
  for (auto& [id, l] : a) EXPECT_EQ(l.size(), 4u) << id;
  expect_complete(a, {{"t", 12}}, m);
}

TEST(StickyAssignor, MemberDeathMovesOnlyItsPartitions) {
  std::vector<MemberSubscription> m = {{"a", {"t"}, {}}, {"b", {"t"}, {}}, {"c", {"t"}, {}}};
  auto first = assign_sticky({{"t", 12}}, m);
  // c dies: a and b keep everything they had and share c's four.
  std::vector<MemberSubscription> after = {{"a", {"t"}, first["a"]}, {"b", {"t"}, first["b"]}};
  auto second = assign_sticky({{"t", 12}}, after);
  for (const auto& tp : first["a"]) EXPECT_NE(std::find(second["a"].begin(), second["a"].end(), tp), second["a"].end());
  for (const auto& tp : first["b"]) EXPECT_NE(std::find(second["b"].begin(), second["b"].end(), tp), second["b"].end());
  EXPECT_EQ(second["a"].size(), 6u);
  EXPECT_EQ(second["b"].size(), 6u);
  expect_complete(second, {{"t", 12}}, after);
}

TEST(StickyAssignor, NewMemberTakesOnlyItsShare) {
  std::vector<MemberSubscription> m = {{"a", {"t"}, {}}, {"b", {"t"}, {}}};
  auto first = assign_sticky({{"t", 6}}, m);
  std::vector<MemberSubscription> after = {{"a", {"t"}, first["a"]}, {"b", {"t"}, first["b"]}, {"c", {"t"}, {}}};
  auto second = assign_sticky({{"t", 6}}, after);
  int moved = 0;
  for (const char* id : {"a", "b"})
    for (const auto& tp : first[id]) moved += std::find(second[id].begin(), second[id].end(), tp) == second[id].end();
  EXPECT_EQ(moved, 2) << "c takes exactly two partitions, one from each";
  EXPECT_EQ(second["c"].size(), 2u);
  expect_complete(second, {{"t", 6}}, after);
}

TEST(StickyAssignor, DropsPartitionsOfAnUnsubscribedTopic) {
  std::vector<MemberSubscription> m = {{"a", {"t1"}, tps({{"t1", 0}, {"t2", 0}})}};
  auto a = assign_sticky({{"t1", 2}, {"t2", 1}}, m);
  EXPECT_EQ(a["a"], tps({{"t1", 0}, {"t1", 1}}));
}

TEST(StickyAssignor, TwoMembersClaimingOnePartitionKeepItOnce) {
  std::vector<MemberSubscription> m = {{"a", {"t"}, tps({{"t", 0}})}, {"b", {"t"}, tps({{"t", 0}})}};
  auto a = assign_sticky({{"t", 2}}, m);
  expect_complete(a, {{"t", 2}}, m);
  EXPECT_EQ(a["a"], tps({{"t", 0}}));
}

TEST(Assignor, ParsesNamesAndRefusesOthers) {
  EXPECT_EQ(*parse_assignor("range"), AssignorKind::kRange);
  EXPECT_EQ(*parse_assignor("roundrobin"), AssignorKind::kRoundRobin);
  EXPECT_EQ(*parse_assignor("sticky"), AssignorKind::kSticky);
  EXPECT_FALSE(parse_assignor("random"));
}
