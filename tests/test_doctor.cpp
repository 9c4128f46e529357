// busctl doctor finds what crashes leave behind, and --fix mends it.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "bus/names.h"
#include "bus/registry_layout.h"
#include "shm/ring.h"
#include "shm/segment.h"
#include "test_util.h"

using namespace shmbus;
using json = nlohmann::json;

using test::busctl;

namespace {

pid_t dead_pid() {
  const pid_t p = ::fork();
  if (p == 0) ::_exit(0);
  int st;
  ::waitpid(p, &st, 0);
  return p;
}

}  // namespace

TEST(Doctor, HealthyBusIsOk) {
  test::TestBus bus("doc");
  ASSERT_TRUE(bus->create_topic("t", TopicConfig{}));
  auto r = busctl({"doctor", "--bus", bus.name()});
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("checked"), std::string::npos);
}

TEST(Doctor, FindsAndFixesWhatCrashesLeaveBehind) {
  test::TestBus bus("doc");
  TopicConfig block;
  block.retention = RetentionMode::kBlock;
  ASSERT_TRUE(bus->create_topic("t", block));
  ASSERT_TRUE(bus->create_topic("half", TopicConfig{}));
  const pid_t dead = dead_pid();
  const std::string shm = shm::kShmDir;
  // A creator that died before linking its segment.
  const std::string tmp = partition_segment_name(bus.name(), "x", 0) + ".tmp." + std::to_string(dead) + ".abc";
  std::ofstream(shm + "/" + tmp) << "partial";
  // A partition file no topic owns.
  const std::string ghost = partition_segment_name(bus.name(), "ghost", 0);
  std::filesystem::copy_file(shm + "/" + partition_segment_name(bus.name(), "t", 0), shm + "/" + ghost);
  // A topic left half-created by a dead process.
  {
    auto reg = shm::Segment::open(registry_segment_name(bus.name()), shm::SegmentKind::kRegistry, kRegistryLayoutMajor, true);
    ASSERT_TRUE(reg);
    auto* slots = reg->at<TopicSlot>(kTopicSlotsOffset);
    for (std::uint32_t i = 0; i < kMaxTopics; ++i)
      if (std::string(slots[i].name, slots[i].name_len) == "half") {
        slots[i].state = static_cast<std::uint32_t>(TopicState::kCreating);
        slots[i].creator_pid = dead;
      }
  }
  // A dead consumer's gate holding producers of the block topic back.
  {
    auto part = shm::Segment::open(partition_segment_name(bus.name(), "t", 0), shm::SegmentKind::kPartition, shm::kPartitionLayoutMajor, true);
    ASSERT_TRUE(part);
    shm::Ring ring(part->data());
    ring.gate(3)->kind.store(static_cast<std::uint32_t>(shm::GateKind::kProcess));
    ring.gate(3)->owner_pid.store(dead);
  }
  auto r = busctl({"doctor", "--json", "--bus", bus.name()});
  EXPECT_EQ(r.code, 1) << "problems found, not fixed";
  auto j = json::parse(r.out);
  std::string all = j.dump();
  EXPECT_NE(all.find("half-created segment of pid " + std::to_string(dead)), std::string::npos) << all;
  EXPECT_NE(all.find("no topic owns"), std::string::npos) << all;
  EXPECT_NE(all.find("'half' was left half-created"), std::string::npos) << all;
  EXPECT_NE(all.find("gates of dead consumers"), std::string::npos) << all;
  EXPECT_TRUE(shm::Segment::exists(tmp)) << "without --fix nothing changes";

  auto fixed = busctl({"doctor", "--fix", "--bus", bus.name()});
  EXPECT_EQ(fixed.code, 0) << fixed.out;
  EXPECT_FALSE(shm::Segment::exists(tmp));
  EXPECT_FALSE(shm::Segment::exists(ghost));
  EXPECT_FALSE(shm::Segment::exists(partition_segment_name(bus.name(), "half", 0)));
  auto again = busctl({"doctor", "--bus", bus.name()});
  EXPECT_EQ(again.code, 0) << again.out;
  // The bus works as before: the name of the half-created topic is free again.
  EXPECT_TRUE(bus->create_topic("half", TopicConfig{}));
}
