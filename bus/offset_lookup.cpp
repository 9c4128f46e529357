// Offsets by position or time across a partition's disk log and ring (offset_lookup.h).
#include "bus/offset_lookup.h"

#include <optional>
#include <vector>

#include <fmt/format.h>

#include "bus/disk_log.h"
#include "shm/process.h"

namespace shmbus {

std::uint64_t earliest_offset(const shm::Ring& ring, bool spilled) noexcept {
  const std::uint64_t start = ring.start_offset();
  if (!spilled) return start;
  const auto& st = ring.ctl()->stats;
  const std::uint64_t disk_start = st.spill_start.load(std::memory_order_acquire);
  const std::uint64_t disk_end = st.spill_end.load(std::memory_order_acquire);
  return disk_end > disk_start ? std::min(start, disk_start) : start;
}

namespace {

struct Found {
  std::optional<TimeMatch> match;        // the first record at or after the time
  std::optional<std::int64_t> first_ts;  // the first record's timestamp seen
};

// Reads records of the log in [from, limit) until one has timestamp >= ts_ns, or for the
// first record only (`first_only`), at most `max_bytes` (0: no bound).
Result<Found> scan_log(disklog::LogReader& r, std::uint64_t from, std::uint64_t limit, std::int64_t ts_ns, bool first_only) {
  Found f;
  for (std::uint64_t at = from; at < limit && !f.match && !(first_only && f.first_ts);) {
    auto next = r.read(at, limit, 1u << 20, [&](const disklog::FrameView& v) {
      if (disklog::is_gap(v.header)) return true;
      if (!f.first_ts) f.first_ts = v.header.timestamp_ns;
      if (v.header.timestamp_ns >= ts_ns) f.match = TimeMatch{v.header.offset, v.header.timestamp_ns};
      return !f.match && !first_only;
    });
    if (!next) return tl::unexpected(next.error());
    if (*next <= at) break;  // nothing more there
    at = *next;
  }
  return f;
}

Result<std::optional<TimeMatch>> search_disk(const std::string& dir, std::uint64_t limit, std::int64_t ts_ns) {
  auto segs = disklog::list_segments(dir);
  if (!segs) return tl::unexpected(segs.error());
  if (segs->empty()) return std::optional<TimeMatch>{};
  disklog::LogReader r(dir);
  // The last file whose first record is before the time: the record is in it or after it.
  std::size_t lo = 0, hi = segs->size();
  while (hi - lo > 1) {
    const std::size_t mid = (lo + hi) / 2;
    auto f = scan_log(r, (*segs)[mid], limit, ts_ns, true);
    if (!f) return tl::unexpected(f.error());
    if (f->first_ts && *f->first_ts < ts_ns) lo = mid;
    else hi = mid;
  }
  auto f = scan_log(r, (*segs)[lo], limit, ts_ns, false);
  if (!f) return tl::unexpected(f.error());
  return f->match;
}

std::optional<TimeMatch> search_ring(const shm::Ring& ring, std::uint64_t from, std::int64_t ts_ns,
                                     std::uint64_t& corrupt_at) {
  shm::RingReader r(ring);
  if (r.seek(from) != shm::ReadStatus::kRecord) r.seek_earliest();
  // Lapped by producers: start again from the ring's new start, a few times at most.
  const std::uint64_t max_steps = 4 * (ring.capacity() / shm::kRecordHeaderSize + 1);
  for (std::uint64_t restarts = 0, steps = 0; restarts < 8 && steps < max_steps; ++steps) {
    const shm::RecordHeader* h;
    std::uint32_t len;
    switch (r.next(h, len)) {
      case shm::ReadStatus::kRecord: {
        std::int64_t ts;
        shm::racy_copy(&ts, &h->timestamp_ns, sizeof ts);
        if (!r.intact_from(r.position())) {
          r.seek_earliest();
          ++restarts;
          continue;
        }
        if (ts >= ts_ns) return TimeMatch{r.offset(), ts};
        r.advance(len);
        continue;
      }
      case shm::ReadStatus::kNone:
        if (r.offset() >= ring.end_offset()) return std::nullopt;
        if (r.lapped()) {
          r.seek_earliest();
          ++restarts;
          continue;
        }
        if (r.unstick(nullptr, shm::monotonic_ns()) == shm::ReadStatus::kRecord) continue;
        return TimeMatch{r.offset(), -1};  // a claim in flight: it and what follows are the newest
      case shm::ReadStatus::kLapped:
        r.seek_earliest();
        ++restarts;
        continue;
      case shm::ReadStatus::kCorrupt:
        corrupt_at = r.offset();
        return std::nullopt;
    }
  }
  return std::nullopt;
}

}  // namespace

Result<std::uint64_t> offset_for_time(const std::string& log_dir, const shm::Ring& ring, std::int64_t ts_ns) {
  auto m = find_offset_for_time(log_dir, ring, ts_ns);
  if (!m) return tl::unexpected(m.error());
  return *m ? (*m)->offset : ring.end_offset();
}

Result<std::optional<TimeMatch>> find_offset_for_time(const std::string& log_dir, const shm::Ring& ring, std::int64_t ts_ns) {
  std::uint64_t from = ring.start_offset();
  if (!log_dir.empty()) {
    const auto& st = ring.ctl()->stats;
    const std::uint64_t disk_start = st.spill_start.load(std::memory_order_acquire);
    const std::uint64_t disk_end = st.spill_end.load(std::memory_order_acquire);
    if (disk_end > disk_start && disk_start < from) {
      auto d = search_disk(log_dir, disk_end, ts_ns);
      if (!d) return tl::unexpected(d.error());
      if (*d) return *d;
      from = std::max(from, disk_end);
    }
  }
  std::uint64_t corrupt_at = ~0ull;
  auto o = search_ring(ring, from, ts_ns, corrupt_at);
  if (corrupt_at != ~0ull)
    return make_error(Errc::kBadSegment, fmt::format("partition {}: a damaged record at offset {} while looking for a timestamp",
                                                     ring.partition(), corrupt_at));
  return o;
}

}  // namespace shmbus
