// Binary compatibility: every shared-memory layout restated byte by byte. If one of these
// fails, you changed a layout that other processes (other builds) read: bump its major
// version (kSegmentHeaderMajor, kPartitionLayoutMajor, kRegistryLayoutMajor, kBusdLayoutMajor) and then
// update the numbers here.
#include <gtest/gtest.h>

#include "bus/busd_layout.h"
#include "bus/registry_layout.h"
#include "shm/ring_layout.h"
#include "shm/segment_layout.h"

using namespace shmbus;
using namespace shmbus::shm;

TEST(Layout, SegmentHeaderV1) {
  EXPECT_EQ(kSegmentHeaderMajor, 1) << "bump the version: update this test with the new layout";
  EXPECT_EQ(sizeof(SegmentHeader), 128u);
  EXPECT_EQ(offsetof(SegmentHeader, magic), 0u);
  EXPECT_EQ(offsetof(SegmentHeader, version), 8u);
  EXPECT_EQ(offsetof(SegmentHeader, kind), 12u);
  EXPECT_EQ(offsetof(SegmentHeader, size), 16u);
  EXPECT_EQ(offsetof(SegmentHeader, creator_pid), 24u);
  EXPECT_EQ(offsetof(SegmentHeader, header_size), 28u);
  EXPECT_EQ(offsetof(SegmentHeader, epoch), 32u);
  EXPECT_EQ(offsetof(SegmentHeader, created_ns), 40u);
  EXPECT_EQ(kSegmentMagic, 0x3130'5355'424d'4853ull);
}

TEST(Layout, PartitionV4) {
  EXPECT_EQ(kPartitionLayoutMajor, 4) << "bump the version: update this test with the new layout";
  EXPECT_EQ(kReclaimOffsetMask, (std::uint64_t{1} << 56) - 1) << "reclaim.first: offset in 56 bits, gate generation in 8";
  EXPECT_EQ(sizeof(RecordHeader), 40u);
  EXPECT_EQ(offsetof(RecordHeader, word), 0u);
  EXPECT_EQ(offsetof(RecordHeader, length), 8u);
  EXPECT_EQ(offsetof(RecordHeader, reserved), 12u);
  EXPECT_EQ(offsetof(RecordHeader, timestamp_ns), 16u);
  EXPECT_EQ(offsetof(RecordHeader, key_len), 24u);
  EXPECT_EQ(offsetof(RecordHeader, headers_len), 28u);
  EXPECT_EQ(offsetof(RecordHeader, value_len), 32u);
  EXPECT_EQ(offsetof(RecordHeader, flags), 36u);
  EXPECT_EQ(kPartitionLayoutMinor, 2) << "minor 1: synced_end, sync_wanted (durable acks); 2: WriterSlot::reclaim_view; "
                                        "bump it for an addition";
  EXPECT_EQ(kRecordNullValue, 1u) << "the null-value flag is in every ring: bump the version to move it";
  EXPECT_EQ(sizeof(ClaimEntry), 16u);
  EXPECT_EQ(offsetof(ClaimEntry, tag), 0u);
  EXPECT_EQ(offsetof(ClaimEntry, info), 8u);
  EXPECT_EQ(sizeof(PartitionControl), 448u);
  EXPECT_EQ(offsetof(PartitionControl, config), 0u);
  EXPECT_EQ(offsetof(PartitionControl, limits), 64u);
  EXPECT_EQ(offsetof(PartitionControl, tail), 128u);
  EXPECT_EQ(offsetof(PartitionControl, reclaim), 192u);
  EXPECT_EQ(offsetof(PartitionControl, notify), 256u);
  EXPECT_EQ(offsetof(PartitionControl, stats), 320u);
  EXPECT_EQ(offsetof(PartitionControl, claim_stats), 384u);
  EXPECT_EQ(offsetof(PartitionConfig, capacity), 0u);
  EXPECT_EQ(offsetof(PartitionConfig, index_capacity), 8u);
  EXPECT_EQ(offsetof(PartitionConfig, salt), 16u);
  EXPECT_EQ(offsetof(PartitionConfig, topic_epoch), 24u);
  EXPECT_EQ(offsetof(PartitionConfig, index_offset), 32u);
  EXPECT_EQ(offsetof(PartitionConfig, data_offset), 40u);
  EXPECT_EQ(offsetof(PartitionConfig, max_record), 48u);
  EXPECT_EQ(offsetof(PartitionConfig, retention), 52u);
  EXPECT_EQ(offsetof(PartitionConfig, partition), 56u);
  EXPECT_EQ(offsetof(PartitionConfig, reclaim_chunk), 60u);
  EXPECT_EQ(offsetof(LimitsLine, claims_offset), 0u);
  EXPECT_EQ(offsetof(LimitsLine, claim_timeout_ns), 8u);
  EXPECT_EQ(offsetof(LimitsLine, sync_wanted), 16u);
  EXPECT_EQ(offsetof(LimitsLine, ack_bell), 24u);
  EXPECT_EQ(offsetof(StatsLine, spill_end), 16u);
  EXPECT_EQ(offsetof(StatsLine, spill_state), 48u);
  EXPECT_EQ(offsetof(StatsLine, synced_end), 56u);
  EXPECT_EQ(offsetof(NotifyLine, seq), 0u);
  EXPECT_EQ(offsetof(NotifyLine, closed), 4u);
  EXPECT_EQ(offsetof(NotifyLine, waiters), 8u);
  EXPECT_EQ(offsetof(NotifyLine, exclusive_pid), 16u);
  EXPECT_EQ(offsetof(NotifyLine, light_fence), 20u);
  EXPECT_EQ(offsetof(ClaimStatsLine, claims_timed_out), 0u);
  EXPECT_EQ(offsetof(ClaimStatsLine, corrupt_seen), 56u);
  EXPECT_EQ(sizeof(WriterSlot), 64u);
  EXPECT_EQ(offsetof(WriterSlot, owner_pid), 0u);
  EXPECT_EQ(offsetof(WriterSlot, claim_position), 8u);
  EXPECT_EQ(offsetof(WriterSlot, claim_offset), 16u);
  EXPECT_EQ(offsetof(WriterSlot, reclaim_view), 24u);
  EXPECT_EQ(sizeof(GateSlot), 64u);
  EXPECT_EQ(offsetof(GateSlot, kind), 0u);
  EXPECT_EQ(offsetof(GateSlot, owner_pid), 4u);
  EXPECT_EQ(offsetof(GateSlot, position), 8u);
  EXPECT_EQ(offsetof(GateSlot, owner_key), 16u);
  EXPECT_EQ(sizeof(WaiterSlot), 64u);
  EXPECT_EQ(kWriterSlots, 64u);
  EXPECT_EQ(kGateSlots, 32u);
  EXPECT_EQ(kWaiterSlots, 64u);
  EXPECT_EQ(kWriterSlotsOffset, 576u);
  EXPECT_EQ(kGateSlotsOffset, 4672u);
  EXPECT_EQ(kWaiterSlotsOffset, 6720u);
  EXPECT_EQ(static_cast<int>(RecordState::kCommitted), 2);
  EXPECT_EQ(static_cast<int>(RecordState::kPadding), 3);
  EXPECT_EQ(static_cast<int>(ClaimState::kClaimed), 1);
  EXPECT_EQ(static_cast<int>(ClaimState::kCommitted), 2);
  EXPECT_EQ(static_cast<int>(ClaimState::kAborted), 3);
  EXPECT_EQ(encode_word(5, RecordState::kCommitted, 0), (5u << 8) | 2u);
  EXPECT_EQ(encode_tag(5, ClaimState::kClaimed, 0), (6u << 8) | 1u) << "a tag holds offset + 1";
  EXPECT_EQ(encode_info(4096, 3, true, 7, ClaimWhy::kTimedOut),
            4096u | (std::uint64_t{3} << 32) | (std::uint64_t{1} << 55) | (std::uint64_t{7} << 56) | (std::uint64_t{2} << 62));
}

TEST(Layout, RegistryV1) {
  EXPECT_EQ(kRegistryLayoutMajor, 1) << "bump the version: update this test with the new layout";
  EXPECT_EQ(sizeof(RegistryControl), 64u);
  EXPECT_EQ(offsetof(RegistryControl, max_topics), 0u);
  EXPECT_EQ(offsetof(RegistryControl, mode), 4u);
  EXPECT_EQ(offsetof(RegistryControl, gid), 8u);
  EXPECT_EQ(offsetof(RegistryControl, changes), 16u);
  EXPECT_EQ(sizeof(TopicSlot), 512u);
  EXPECT_EQ(offsetof(TopicSlot, seq), 0u);
  EXPECT_EQ(offsetof(TopicSlot, state), 4u);
  EXPECT_EQ(offsetof(TopicSlot, partitions), 8u);
  EXPECT_EQ(offsetof(TopicSlot, retention), 12u);
  EXPECT_EQ(offsetof(TopicSlot, capacity), 16u);
  EXPECT_EQ(offsetof(TopicSlot, max_record), 24u);
  EXPECT_EQ(offsetof(TopicSlot, name_len), 28u);
  EXPECT_EQ(offsetof(TopicSlot, epoch), 32u);
  EXPECT_EQ(offsetof(TopicSlot, created_ns), 40u);
  EXPECT_EQ(offsetof(TopicSlot, creator_pid), 48u);
  EXPECT_EQ(offsetof(TopicSlot, name), 56u);
  EXPECT_EQ(kTopicSlotsOffset, 192u);
  EXPECT_EQ(kMaxTopics, 256u);
}

TEST(Layout, BusdV1) {
  EXPECT_EQ(kBusdLayoutMajor, 1) << "bump the version: update this test with the new layout";
  EXPECT_EQ(kBusdLayoutMinor, 2) << "minor 1: the group name table; 2: MemberSlot's polls and lease (in reserved bytes)";
  EXPECT_EQ(sizeof(BusdControl), 64u);
  EXPECT_EQ(offsetof(BusdControl, pid), 0u);
  EXPECT_EQ(offsetof(BusdControl, member_slots), 4u);
  EXPECT_EQ(offsetof(BusdControl, started_ns), 8u);
  EXPECT_EQ(sizeof(MemberSlot), 64u);
  EXPECT_EQ(offsetof(MemberSlot, notice), 0u);
  EXPECT_EQ(offsetof(MemberSlot, pid), 4u);
  EXPECT_EQ(offsetof(MemberSlot, heartbeat_ns), 8u);
  EXPECT_EQ(offsetof(MemberSlot, polls), 16u);
  EXPECT_EQ(offsetof(MemberSlot, lease), 24u);
  EXPECT_EQ(kBusdControlOffset, 128u);
  EXPECT_EQ(kMemberSlotsOffset, 192u);
  EXPECT_EQ(kMemberSlots, 256u);
  EXPECT_EQ(kGroupNamesOffset, 16576u);
  EXPECT_EQ(sizeof(GroupNameSlot), 256u);
  EXPECT_EQ(offsetof(GroupNameSlot, name), 48u);
}
