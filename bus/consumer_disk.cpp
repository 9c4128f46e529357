// The consumer reading a spilled topic's disk log: offsets older than the ring, handed
// over to the ring reader without a gap.
#include "bus/consumer_impl.h"

#include <fmt/format.h>

#include "bus/paths.h"

namespace shmbus {

// The oldest record: on disk for a spilled topic, else the ring's start.
void Consumer::Impl::seek_beginning(Assigned& a) {
  a.disk_next = Assigned::kFromRing;
  a.skip_below = 0;
  a.reader.seek_earliest();
  if (a.topic->config().spill.enabled) {
    const auto& st = a.reader.ring().ctl()->stats;
    const std::uint64_t start = st.spill_start.load(std::memory_order_acquire);
    if (start < a.reader.offset()) (void)to_disk(a, start);
  }
}

// Reads on from the disk log at `offset`, if the topic spills and its log has it.
bool Consumer::Impl::to_disk(Assigned& a, std::uint64_t offset) {
  if (!a.topic->config().spill.enabled) return false;
  const auto& st = a.reader.ring().ctl()->stats;
  const std::uint64_t start = st.spill_start.load(std::memory_order_acquire), end = st.spill_end.load(std::memory_order_acquire);
  if (end <= start || offset >= end) return false;
  if (offset < start) {  // gone to retention too
    add_lost(a, start - offset);
    offset = start;
  }
  if (!a.disk)
    a.disk = std::make_unique<disklog::LogReader>(disklog::partition_dir(bus_paths(bus->name()).state_dir, a.tp.topic, a.tp.partition));
  a.disk_next = offset;
  a.skip_below = 0;
  a.reader.seek_earliest();  // where the disk will hand over; a gate waits here
  return true;
}

// Up to `limit` records of a partition read from its disk log, into the arena.
Status Consumer::Impl::fetch_disk(std::size_t idx, std::size_t limit) {
  Assigned& a = assigned[idx];
  const shm::Ring& ring = a.reader.ring();
  const std::uint64_t end = ring.ctl()->stats.spill_end.load(std::memory_order_acquire);
  const std::uint64_t disk_start = ring.ctl()->stats.spill_start.load(std::memory_order_acquire);
  const std::size_t first = batch.size();
  std::uint64_t at = a.disk_next;  // the next offset not accounted for
  auto next = a.disk->read(a.disk_next, end, 4u << 20, [&](const disklog::FrameView& v) {
    // Retention removed the segment we were reading: what it held is lost to us.
    if (v.header.offset > at && at < disk_start) add_lost(a, std::min(v.header.offset, disk_start) - at);
    at = disklog::frame_last(v.header) + 1;
    if (v.header.attributes == disklog::kAttrLost) {  // overwritten before busd spilled it
      add_lost(a, disklog::frame_last(v.header) + 1 - std::max(v.header.offset, a.disk_next));
      return true;
    }
    if (disklog::is_gap(v.header)) return true;  // aborted offsets: never records
    const std::size_t at = arena_used;
    std::byte* rec = arena_take(shm::kRecordHeaderSize + v.payload.size());
    shm::RecordHeader h{};
    h.length = static_cast<std::uint32_t>(shm::kRecordHeaderSize + v.payload.size());
    h.timestamp_ns = v.header.timestamp_ns;
    h.key_len = v.header.key_len;  // kNullKeyLen == kNullKey
    h.headers_len = v.header.headers_len;
    h.value_len = v.header.value_len;
    h.flags = v.header.attributes == disklog::kAttrNullValue ? shm::kRecordNullValue : 0;
    std::memcpy(static_cast<void*>(rec), &h, sizeof h);
    if (!v.payload.empty()) std::memcpy(rec + shm::kRecordHeaderSize, v.payload.data(), v.payload.size());
    take_copied(a, v.header.offset, at);
    return batch.size() - first < limit;
  });
  if (!next)
    return make_error(next.error().code, fmt::format("{}-{}: reading offset {} from disk: {}", a.tp.topic, a.tp.partition,
                                                     a.disk_next, next.error().message));
  if (*next == a.disk_next && a.disk_next < end) {
    // Nothing on disk between here and the spill position, which busd publishes only
    // after writing (a log of an older version without gap frames, or damaged by hand):
    // those offsets are gone.
    add_lost(a, end - a.disk_next);
    *next = end;
  }
  a.disk_next = std::max(a.disk_next, *next);
  if (batch.size() > first || a.disk_next < end) return {};
  // The disk has nothing more: on to the ring (and its log file closed, so that
  // retention can free it).
  if (seek_ring(a, a.disk_next)) {
    a.disk_next = Assigned::kFromRing;
    a.disk.reset();
  } else if (a.disk_next < ring.start_offset()) {
    // Overwritten before busd spilled it (an overwrite topic whose spiller fell behind).
    const std::uint64_t was = a.disk_next;
    a.disk_next = Assigned::kFromRing;
    a.disk.reset();
    a.reader.seek_earliest();
    add_lost(a, a.reader.offset() - was);
  }
  return {};
}

}  // namespace shmbus
