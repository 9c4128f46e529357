// Binary compatibility: every shared-memory layout restated byte by byte. If one of these
// fails, you changed a layout that other processes (other builds) read: bump its major
// version (kSegmentHeaderMajor, kPartitionLayoutMajor, kRegistryLayoutMajor) and then
// update the numbers here.
#include <gtest/gtest.h>

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

TEST(Layout, PartitionV1) {
  EXPECT_EQ(kPartitionLayoutMajor, 2) << "bump the version: update this test with the new layout";
  EXPECT_EQ(kReclaimOffsetMask, (std::uint64_t{1} << 56) - 1) << "reclaim.first: offset in 56 bits, gate generation in 8";
  EXPECT_EQ(sizeof(RecordHeader), 40u);
  EXPECT_EQ(offsetof(RecordHeader, word), 0u);
  EXPECT_EQ(offsetof(RecordHeader, length), 8u);
  EXPECT_EQ(offsetof(RecordHeader, writer_pid), 12u);
  EXPECT_EQ(offsetof(RecordHeader, timestamp_ns), 16u);
  EXPECT_EQ(offsetof(RecordHeader, key_len), 24u);
  EXPECT_EQ(offsetof(RecordHeader, headers_len), 28u);
  EXPECT_EQ(offsetof(RecordHeader, value_len), 32u);
  EXPECT_EQ(offsetof(RecordHeader, flags), 36u);
  EXPECT_EQ(sizeof(PartitionControl), 320u);
  EXPECT_EQ(offsetof(PartitionControl, config), 0u);
  EXPECT_EQ(offsetof(PartitionControl, tail), 64u);
  EXPECT_EQ(offsetof(PartitionControl, reclaim), 128u);
  EXPECT_EQ(offsetof(PartitionControl, notify), 192u);
  EXPECT_EQ(offsetof(PartitionControl, stats), 256u);
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
  EXPECT_EQ(offsetof(NotifyLine, seq), 0u);
  EXPECT_EQ(offsetof(NotifyLine, waiters), 4u);
  EXPECT_EQ(offsetof(NotifyLine, closed), 8u);
  EXPECT_EQ(sizeof(WriterSlot), 64u);
  EXPECT_EQ(offsetof(WriterSlot, owner_pid), 0u);
  EXPECT_EQ(offsetof(WriterSlot, owner_start_ticks), 8u);
  EXPECT_EQ(offsetof(WriterSlot, intent_offset), 16u);
  EXPECT_EQ(offsetof(WriterSlot, intent_position), 24u);
  EXPECT_EQ(offsetof(WriterSlot, intent_bytes), 32u);
  EXPECT_EQ(offsetof(WriterSlot, intent_count), 36u);
  EXPECT_EQ(sizeof(GateSlot), 64u);
  EXPECT_EQ(offsetof(GateSlot, kind), 4u);
  EXPECT_EQ(offsetof(GateSlot, position), 16u);
  EXPECT_EQ(offsetof(GateSlot, owner_key), 24u);
  EXPECT_EQ(kWriterSlots, 64u);
  EXPECT_EQ(kGateSlots, 32u);
  EXPECT_EQ(kWriterSlotsOffset, 448u);
  EXPECT_EQ(kGateSlotsOffset, 4544u);
  EXPECT_EQ(static_cast<int>(RecordState::kClaimed), 1);
  EXPECT_EQ(static_cast<int>(RecordState::kCommitted), 2);
  EXPECT_EQ(static_cast<int>(RecordState::kPadding), 3);
  EXPECT_EQ(static_cast<int>(RecordState::kAborted), 4);
  EXPECT_EQ(encode_word(5, RecordState::kCommitted, 0), (5u << 8) | 2u);
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
