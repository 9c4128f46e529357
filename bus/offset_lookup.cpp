// Offsets by position or time across a partition's disk log and ring (offset_lookup.h).
#include "bus/offset_lookup.h"

#include <algorithm>
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

// ---- the disk log ----

struct Found {
  std::optional<TimeMatch> match;            // the first record at or after the time
  std::optional<std::int64_t> first_ts;      // the first record's timestamp seen
  std::optional<std::uint64_t> first_frame;  // the first frame's offset seen (a gap's too)
};

// Reads records of the log in [from, limit) until one has timestamp >= ts_ns, or for the
// first record only (`first_only`).
Result<Found> scan_log(disklog::LogReader& r, std::uint64_t from, std::uint64_t limit, std::int64_t ts_ns, bool first_only) {
  Found f;
  for (std::uint64_t at = from; at < limit && !f.match && !(first_only && f.first_ts);) {
    auto next = r.read(at, limit, 1u << 20, [&](const disklog::FrameView& v) {
      if (!f.first_frame) f.first_frame = v.header.offset;
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

// The first record at or after ts_ns among offsets [base, end) of segment `base`. Through its
// time index: from the last entry whose largest timestamp before it is older than the time
// (every record before that entry is older) to the next entry (whose largest timestamp before
// it is not older: the record is before it), one index interval. The entries are believed
// only as far as read_time_index() checks them and the records agree: a frame must start at
// the entry's offset, and a record at or after the time must turn up before the next entry.
// Otherwise (and without a time index: a log written before it) the segment is scanned from
// its start.
Result<std::optional<TimeMatch>> search_segment(disklog::LogReader& r, const std::string& dir, std::uint64_t base,
                                                std::uint64_t end, std::int64_t ts_ns, LookupStats* stats) {
  const std::vector<disklog::TimeIndexEntry> idx = disklog::read_time_index(dir, base, end);
  if (!idx.empty()) {
    auto after = std::partition_point(idx.begin(), idx.end(), [&](const disklog::TimeIndexEntry& e) { return e.max_before < ts_ns; });
    if (after == idx.begin()) ++after;  // ts_ns is the smallest time there is: the first record
    const std::uint64_t from = base + std::prev(after)->relative_offset;
    const std::uint64_t until = after == idx.end() ? end : base + after->relative_offset;
    auto f = scan_log(r, from, until, ts_ns, false);
    if (!f) return tl::unexpected(f.error());
    if (f->first_frame == from && (f->match || until == end)) return f->match;
  }
  if (stats) ++stats->disk_full_scans;
  auto f = scan_log(r, base, end, ts_ns, false);
  if (!f) return tl::unexpected(f.error());
  return f->match;
}

Result<std::optional<TimeMatch>> search_disk(disklog::LogReader& r, const std::string& dir, std::uint64_t limit,
                                             std::int64_t ts_ns, LookupStats* stats) {
  auto segs = disklog::list_segments(dir);
  if (!segs) return tl::unexpected(segs.error());
  if (segs->empty()) return std::optional<TimeMatch>{};
  // The last file whose first record is before the time: the record is in it or after it.
  std::size_t lo = 0, hi = segs->size();
  while (hi - lo > 1) {
    const std::size_t mid = (lo + hi) / 2;
    auto f = scan_log(r, (*segs)[mid], limit, ts_ns, true);
    if (!f) return tl::unexpected(f.error());
    if (f->first_ts && *f->first_ts < ts_ns) lo = mid;
    else hi = mid;
  }
  // Its time index; where every record of a file is older, the next file's.
  for (std::size_t i = lo; i < segs->size() && (*segs)[i] < limit; ++i) {
    const std::uint64_t end = i + 1 < segs->size() ? std::min((*segs)[i + 1], limit) : limit;
    auto m = search_segment(r, dir, (*segs)[i], end, ts_ns, stats);
    if (!m || *m) return m;
  }
  return std::optional<TimeMatch>{};
}

// ---- the ring ----

enum class Probe { kRecord, kNone, kLapped };

struct Probed {
  Probe what = Probe::kNone;
  std::uint64_t pos = 0;
  std::int64_t ts = 0;
};

// The timestamp of the record at `offset`, read through the ring's offset index and
// validated as RingReader::seek() validates a hit: the word at the indexed position names
// that offset, committed (words are stored only after their claim committed, and name their
// own offset); nothing from there on was reclaimed by the time the timestamp was copied.
// kNone: the index does not lead to a record (an aborted or unfinished claim, a record read
// by its claim entry, an entry overwritten by a newer offset, or forged bytes).
Probed probe(const shm::Ring& ring, std::uint64_t offset) noexcept {
  if (offset < ring.start_offset()) return {Probe::kLapped};
  const std::uint64_t p = ring.index_at(offset).load(std::memory_order_relaxed);
  if ((p & 7) != 0 || (p & ring.mask()) + shm::kRecordHeaderSize > ring.capacity() || p < ring.reclaim_position() ||
      p >= ring.tail_position() || ring.word_at(p) != shm::Ring::decoded(offset, shm::RecordState::kCommitted))
    return {Probe::kNone};
  std::int64_t ts;
  shm::racy_copy(&ts, &ring.header_at(p)->timestamp_ns, sizeof ts);
  shm::seqlock_read_fence();
  if (ring.reclaim_position() > p) return {Probe::kLapped};
  return {Probe::kRecord, p, ts};
}

struct RingFound {
  enum { kMatch, kNone, kLapped, kCorrupt } what;
  std::optional<TimeMatch> match;
};

// Reads the ring in order from the reader's cursor until a record at or after the time, the
// end, a claim in flight (it and what follows are the newest: timestamp -1), or damage.
// Bounded: a few times what the ring can hold.
RingFound scan_ring(shm::RingReader& r, std::int64_t ts_ns, std::uint64_t& corrupt_at, LookupStats* stats) {
  const shm::Ring& ring = r.ring();
  const std::uint64_t max_steps = 4 * (ring.capacity() / shm::kRecordHeaderSize + 1);
  for (std::uint64_t steps = 0; steps < max_steps; ++steps) {
    const shm::RecordHeader* h;
    std::uint32_t len;
    switch (r.next(h, len)) {
      case shm::ReadStatus::kRecord: {
        std::int64_t ts;
        shm::racy_copy(&ts, &h->timestamp_ns, sizeof ts);
        if (!r.intact_from(r.position())) return {RingFound::kLapped, {}};
        if (stats) ++stats->ring_records;
        if (ts >= ts_ns) return {RingFound::kMatch, TimeMatch{r.offset(), ts}};
        r.advance(len);
        continue;
      }
      case shm::ReadStatus::kNone:
        if (r.offset() >= ring.end_offset()) return {RingFound::kNone, {}};
        if (r.lapped()) return {RingFound::kLapped, {}};
        if (r.unstick(nullptr, shm::monotonic_ns()) == shm::ReadStatus::kRecord) continue;
        return {RingFound::kMatch, TimeMatch{r.offset(), -1}};  // a claim in flight: it and what follows are the newest
      case shm::ReadStatus::kLapped:
        return {RingFound::kLapped, {}};
      case shm::ReadStatus::kCorrupt:
        corrupt_at = r.offset();
        return {RingFound::kCorrupt, {}};
    }
  }
  return {RingFound::kNone, {}};
}

// The ring from `from` on: a binary search over the offsets it holds, probing records through
// the offset index, down to the last record probed older than the time and the first one
// probed at or after it; then the records between them in order (none when the two are next
// to each other). Where a probe and the few offsets after it lead to no record, the search
// stops there and reads what is left in order. Lapped by producers while it looks (a probe
// below the new start, a record overwritten), it starts again on what the ring holds then,
// eight times at most.
Result<std::optional<TimeMatch>> search_ring(const shm::Ring& ring, std::uint64_t from, std::int64_t ts_ns, LookupStats* stats) {
  constexpr int kAttempts = 8;
  constexpr std::uint64_t kProbeSpan = 8;  // offsets tried from a probe that finds no record
  for (int attempt = 0; attempt < kAttempts; ++attempt) {
    if (attempt > 0 && stats) ++stats->ring_restarts;
    std::uint64_t hi = ring.end_offset();
    std::uint64_t lo = std::min(std::max(from, ring.start_offset()), hi);
    std::optional<std::pair<std::uint64_t, std::uint64_t>> below;  // (offset, position) of the last probe older than the time
    std::optional<TimeMatch> above;                                 // the last probe at or after it: at `hi`
    bool lapped = false, stuck = false;
    // Each round halves [lo, hi) or stops: 64 rounds are more than any range needs.
    for (int round = 0; round < 64 && lo < hi && !lapped && !stuck; ++round) {
      const std::uint64_t mid = lo + (hi - lo) / 2;
      Probed pr;
      std::uint64_t o = mid;
      for (; o < hi && o < mid + kProbeSpan; ++o) {
        pr = probe(ring, o);
        if (stats) {
          ++stats->ring_probes;
          if (stats->after_probe) stats->after_probe();
        }
        if (pr.what != Probe::kNone) break;
      }
      if (pr.what == Probe::kLapped) lapped = true;
      else if (pr.what == Probe::kNone) stuck = true;
      else if (pr.ts < ts_ns) {
        lo = o + 1;
        below = {o, pr.pos};
      } else {
        hi = o;
        above = TimeMatch{o, pr.ts};
      }
    }
    if (lapped) continue;
    if (!stuck && lo == hi && above) return above;
    // In order from the last record probed older than the time, or from `lo`.
    shm::RingReader r(ring);
    if (below) {
      r.rewind(below->first, below->second);
    } else if (const auto st = r.seek(lo); st == shm::ReadStatus::kLapped && lo < ring.end_offset()) {
      continue;
    } else if (st != shm::ReadStatus::kRecord) {
      r.seek_earliest();
    }
    std::uint64_t corrupt_at = 0;
    const RingFound f = scan_ring(r, ts_ns, corrupt_at, stats);
    switch (f.what) {
      case RingFound::kMatch:
        return f.match;
      case RingFound::kNone:
        return std::optional<TimeMatch>{};
      case RingFound::kLapped:
        continue;
      case RingFound::kCorrupt:
        return make_error(Errc::kBadSegment, fmt::format("partition {}: a damaged record at offset {} while looking for a timestamp",
                                                         ring.partition(), corrupt_at));
    }
  }
  return make_error(Errc::kTimedOut, fmt::format("partition {}: producers overwrote the ring {} times while it was searched "
                                                 "by time; try again",
                                                 ring.partition(), kAttempts));
}

}  // namespace

Result<std::optional<TimeMatch>> find_in_disk_log(const std::string& dir, std::uint64_t limit, std::int64_t ts_ns, LookupStats* stats) {
  disklog::LogReader r(dir);
  auto m = search_disk(r, dir, limit, ts_ns, stats);
  if (stats) stats->disk_frames += r.frames_read();
  return m;
}

Result<std::uint64_t> offset_for_time(const std::string& log_dir, const shm::Ring& ring, std::int64_t ts_ns) {
  auto m = find_offset_for_time(log_dir, ring, ts_ns);
  if (!m) return tl::unexpected(m.error());
  return *m ? (*m)->offset : ring.end_offset();
}

Result<std::optional<TimeMatch>> find_offset_for_time(const std::string& log_dir, const shm::Ring& ring, std::int64_t ts_ns,
                                                      LookupStats* stats) {
  std::uint64_t from = ring.start_offset();
  if (!log_dir.empty()) {
    const auto& st = ring.ctl()->stats;
    const std::uint64_t disk_start = st.spill_start.load(std::memory_order_acquire);
    const std::uint64_t disk_end = st.spill_end.load(std::memory_order_acquire);
    if (disk_end > disk_start && disk_start < from) {
      auto d = find_in_disk_log(log_dir, disk_end, ts_ns, stats);
      if (!d) return tl::unexpected(d.error());
      if (*d) return *d;
      from = std::max(from, disk_end);
    }
  }
  return search_ring(ring, from, ts_ns, stats);
}

}  // namespace shmbus
