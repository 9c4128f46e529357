// busd's spiller: tails spilled topics' rings and appends their records to the disk log.
#include "tools/busd/spiller.h"

#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include <concurrentqueue/blockingconcurrentqueue.h>
#include <concurrentqueue/concurrentqueue.h>
#include <fmt/format.h>

#include "bus/disk_log.h"
#include "tools/busd/log_writer.h"
#include "bus/topic.h"
#include "shm/futex.h"
#include "shm/process.h"
#include "shm/ring.h"

namespace shmbus {

namespace {

constexpr std::size_t kChunkBytes = 1 << 20;  // a tailer hand-off: up to this many frame bytes
constexpr std::size_t kMaxChunks = 32;        // in flight at once: the spiller's memory bound

// One spilled partition, shared by the two threads. Each field says who writes it.
struct Part {
  std::string topic;
  std::uint32_t partition = 0;
  std::uint64_t epoch = 0;
  std::shared_ptr<Topic> t;  // keeps the mapping
  shm::Ring ring;
  shm::SegmentLock lock;          // our open file description: liveness tests, gate set-up (shm/ofd_lock.h)
  shm::GateSlot* gate = nullptr;  // block topics: set up by the tailer before the writer sees the part
  SpillConfig config;
  std::atomic<bool> failed{false};  // either thread; the tailer stops reading it
  std::atomic<std::uint64_t> failed_since{0};  // monotonic ns; the tailer retries after a while
  std::uint64_t initial_lost = 0;   // tailer: offsets lost before it started, for a gap frame
  SpillConfig seen_config;          // tailer: the config the writer was last given
  // Tailer only:
  shm::RingReader reader;
  std::uint64_t empty_looks = 0;
  std::uint64_t sync_asked = 0;     // the sync_wanted the writer was last nudged for
};

struct Chunk {
  disklog::FrameBuffer frames;  // grows without zeroing what the frames overwrite
  std::uint64_t next_offset = 0;   // the reader's offset after these records
  std::uint64_t end_position = 0;  // and its ring position
  std::uint64_t lost = 0;          // overwritten before they were read (overwrite topics)
};

struct Msg {
  // kSync: a producer waits for an fdatasync (acks=fsynced); the writer wakes and syncs.
  enum Kind { kOpen, kData, kClose, kStop, kConfig, kSync } kind = kData;
  std::shared_ptr<Part> part;
  std::unique_ptr<disklog::LogWriter> writer;
  std::unique_ptr<Chunk> chunk;
  SpillConfig config;  // kConfig
};

void set_state(const Part& p, shm::SpillState s) {
  p.ring.ctl()->stats.spill_state.store(static_cast<std::uint32_t>(s), std::memory_order_release);
}

}  // namespace

struct Spiller::Impl {
  std::shared_ptr<Bus> bus;
  std::string state_dir;
  unsigned file_mode;
  std::function<void(const std::string&)> log;
  std::function<void()> on_durable;
  std::atomic<bool> stopping{false};
  std::thread tailer, writer;
  moodycamel::BlockingConcurrentQueue<Msg> work;     // tailer -> writer
  moodycamel::ConcurrentQueue<std::unique_ptr<Chunk>> free_chunks;  // writer -> tailer
  std::size_t chunks_made = 0;                        // tailer only

  // Counters for stats(): the writer (and the tailer's open errors) add, busd's loop reads.
  mutable std::mutex counters_mu;
  std::map<std::pair<std::string, std::uint32_t>, PartitionStats> counters;
  void count(const std::string& topic, std::uint32_t p, std::uint64_t bytes, std::uint64_t fsyncs, std::uint64_t errors) {
    std::lock_guard lk(counters_mu);
    PartitionStats& c = counters[{topic, p}];
    c.bytes_written += bytes;
    c.fsyncs += fsyncs;
    c.errors += errors;
  }

  // ---- tailer ----
  std::map<std::pair<std::string, std::uint32_t>, std::shared_ptr<Part>> parts;  // tailer only
  // name -> (epoch, when) of a topic whose log could not be opened; tried again later.
  std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> failed_topics;
  static constexpr std::uint64_t kRetryNs = 10'000'000'000;

  void tail_loop() {
    std::uint64_t last_scan = 0;
    disklog::FrameBuffer stage;  // copies of overwrite topics' records
    std::vector<shm::FutexWaitItem> bells;
    while (!stopping.load(std::memory_order_acquire)) {
      const std::uint64_t now = shm::monotonic_ns();
      if (now - last_scan >= 200'000'000) {
        scan_topics();
        last_scan = now;
      }
      // The ack bells, read before the rings: a producer that rings after this wakes the wait below.
      bells.clear();
      for (auto& [key, p] : parts)
        if (!p->failed.load(std::memory_order_relaxed))
          bells.push_back({&p->ring.ctl()->limits.ack_bell, p->ring.ctl()->limits.ack_bell.load(std::memory_order_seq_cst)});
      bool busy = false;
      for (auto& [key, p] : parts)
        if (!p->failed.load(std::memory_order_relaxed)) {
          busy |= pump(p, stage);
          nudge_sync(p);
        }
      // Idle: look again in 500 µs, or at once when a producer waiting for a durable ack
      // rings a partition's bell (futex_waitv: up to 128 partitions; beyond, only the first
      // one's bell is heard). Never registered as a sleeper on the ring itself: that would
      // make every producer's claim pay for a futex wake; only producers that wait for the
      // disk ring the bell.
      if (!busy) {
        if (bells.empty()) std::this_thread::sleep_for(std::chrono::microseconds(500));
        else (void)shm::futex_wait_any(bells, 500'000);
      }
    }
  }

  void scan_topics() {
    std::map<std::pair<std::string, std::uint32_t>, bool> seen;
    for (const TopicInfo& info : bus->list_topics()) {
      if (!info.config.spill.enabled) continue;
      if (auto f = failed_topics.find(info.name); f != failed_topics.end() && f->second.first == info.epoch) {
        for (std::uint32_t p = 0; p < info.config.partitions; ++p) seen[{info.name, p}] = true;
        continue;
      }
      auto t = bus->topic(info.name);
      if (!t || (*t)->epoch() != info.epoch) continue;  // changing under us: next scan
      for (std::uint32_t p = 0; p < (*t)->partitions(); ++p) {
        seen[{info.name, p}] = true;
        auto it = parts.find({info.name, p});
        if (it != parts.end() && it->second->epoch == info.epoch && !(*t)->deleted()) {
          // busctl topic alter: the writer, who reads the config, takes the new one.
          if (it->second->seen_config != info.config.spill) {
            it->second->seen_config = info.config.spill;
            work.enqueue(Msg{Msg::kConfig, it->second, nullptr, nullptr, info.config.spill});
          }
          continue;
        }
        if (it != parts.end()) close_part(it);
        if (auto part = open_part(*t, p, info.config.spill)) parts[{info.name, p}] = std::move(part);
      }
    }
    const std::uint64_t now = shm::monotonic_ns();
    for (auto it = parts.begin(); it != parts.end();) {
      auto next = std::next(it);
      // A partition that failed (disk full, an I/O error) is closed and, at the next scan,
      // opened again: recovery truncates what was half written, and spilling resumes.
      const Part& p = *it->second;
      const bool retry = p.failed.load(std::memory_order_acquire) && now - p.failed_since.load(std::memory_order_relaxed) > kRetryNs;
      if (!seen.count(it->first) || p.t->deleted() || retry) close_part(it);
      it = next;
    }
    for (auto it = failed_topics.begin(); it != failed_topics.end();) {
      auto next = std::next(it);
      if (now - it->second.second > kRetryNs) failed_topics.erase(it);
      it = next;
    }
  }

  void close_part(std::map<std::pair<std::string, std::uint32_t>, std::shared_ptr<Part>>::iterator it) {
    work.enqueue(Msg{Msg::kClose, it->second, nullptr, nullptr, {}});
    parts.erase(it);
  }

  std::shared_ptr<Part> open_part(const std::shared_ptr<Topic>& t, std::uint32_t p, const SpillConfig& config) {
    auto part = std::make_shared<Part>();
    part->topic = t->name();
    part->partition = p;
    part->epoch = t->epoch();
    part->t = t;
    part->ring = t->ring(p);
    part->config = config;
    part->seen_config = config;
    part->reader = shm::RingReader(part->ring);
    if (auto l = shm::SegmentLock::open(t->segment(p)); l) {
      part->lock = std::move(*l);
    } else {
      log(fmt::format("spill {}-{}: {}", t->name(), p, l.error().message));
      count(t->name(), p, 0, 0, 1);
      return nullptr;
    }
    const std::string dir = disklog::partition_dir(state_dir, t->name(), p);
    auto w = disklog::LogWriter::open(dir, config, file_mode, log);
    if (!w) {
      log(fmt::format("spill {}-{}: {}", t->name(), p, w.error().message));
      count(t->name(), p, 0, 0, 1);
      stop_spilling(*part);
      part->failed = true;
      failed_topics[t->name()] = {t->epoch(), shm::monotonic_ns()};
      return nullptr;
    }
    auto& stats = part->ring.ctl()->stats;
    std::uint64_t lost = 0;
    if (auto next = w->next_offset()) {
      if (part->reader.seek(*next) != shm::ReadStatus::kRecord) {
        if (*next < part->ring.start_offset()) {
          lost = part->ring.start_offset() - *next;
          part->reader.seek_earliest();
        } else {
          log(fmt::format("spill {}-{}: the disk log ends at offset {} but the ring only at {}: not spilling this "
                          "partition (its log belongs to another incarnation of the topic?)",
                          t->name(), p, *next, part->ring.end_offset()));
          stop_spilling(*part);
          failed_topics[t->name()] = {t->epoch(), shm::monotonic_ns()};
          return nullptr;
        }
      }
    } else {
      part->reader.seek_earliest();
    }
    if (part->ring.retention() == shm::Retention::kBlock && !take_gate(*part)) {
      log(fmt::format("spill {}-{}: no free gate slot; records may be overwritten before they are spilled", t->name(), p));
    }
    if (lost) log(fmt::format("spill {}-{}: offsets {}..{} were overwritten before they could be spilled", t->name(), p,
                              part->reader.offset() - lost, part->reader.offset() - 1));
    stats.spill_lost.fetch_add(lost, std::memory_order_relaxed);
    part->initial_lost = lost;  // written down as a gap frame with the first chunk
    stats.spill_start.store(w->start_offset().value_or(part->reader.offset()), std::memory_order_relaxed);
    stats.spill_bytes.store(w->bytes(), std::memory_order_relaxed);
    stats.spill_end.store(part->reader.offset(), std::memory_order_release);
    set_state(*part, shm::SpillState::kRunning);
    work.enqueue(Msg{Msg::kOpen, part, std::make_unique<disklog::LogWriter>(std::move(*w)), nullptr, {}});
    return part;
  }

  // A producer with acks=fsynced raised sync_wanted: wake the writer, which syncs whatever
  // the topic's fsync policy (the records themselves reach it through pump()).
  void nudge_sync(const std::shared_ptr<Part>& part) {
    Part& p = *part;
    const std::uint64_t wanted = p.ring.ctl()->limits.sync_wanted.load(std::memory_order_acquire);
    if (wanted <= p.sync_asked || wanted <= p.ring.ctl()->stats.synced_end.load(std::memory_order_acquire)) return;
    p.sync_asked = wanted;
    work.enqueue(Msg{Msg::kSync, part, nullptr, nullptr, {}});
  }

  // The spiller's durable gate at the reader's position: the one created with the topic,
  // or one left by an earlier busd, or a free slot.
  bool take_gate(Part& part) {
    const std::uint64_t was = part.reader.offset();
    part.gate = shm::hold_durable_gate(part.ring, part.lock, shm::kSpillGateKey, part.reader);
    // Producers reclaimed past us before the gate went up: those offsets are lost.
    if (part.reader.offset() > was)
      part.ring.ctl()->stats.spill_lost.fetch_add(part.reader.offset() - was, std::memory_order_relaxed);
    return part.gate != nullptr;
  }

  std::unique_ptr<Chunk> take_chunk() {
    std::unique_ptr<Chunk> c;
    if (free_chunks.try_dequeue(c)) return c;
    if (chunks_made >= kMaxChunks) return nullptr;  // the writer is behind: wait for it
    ++chunks_made;
    c = std::make_unique<Chunk>();
    c->frames.reserve(kChunkBytes + (1 << 16));
    return c;
  }

  // Reads what the partition has into one chunk for the writer. True if it found any.
  bool pump(const std::shared_ptr<Part>& part, disklog::FrameBuffer& stage) {
    Part& p = *part;
    shm::RingReader& r = p.reader;
    if (p.ring.closed()) return false;
    const std::uint64_t first_offset = r.offset(), first_pos = r.position();
    const bool block = p.ring.retention() == shm::Retention::kBlock && p.gate;  // gated: nothing laps us
    // Overwrite topics: copy out first (a lapping producer may overwrite what we copy:
    // checked below), then frame. Gated block topics: framed from the ring itself, where our
    // gate keeps every record we read until the writer has written it (one pass less over
    // every spilled byte).
    stage.clear();
    struct Taken {
      std::uint64_t offset;
      const std::byte* in_ring;  // block topics; else the record is at `in_stage`
      std::size_t in_stage;
      std::uint32_t len;  // as the reader checked it: what we may read, whatever its header says
    };
    std::vector<Taken> at;
    std::uint64_t lost = 0, taken = 0;
    while (taken < kChunkBytes) {
      const shm::RecordHeader* h = nullptr;
      std::uint32_t len = 0;
      const shm::ReadStatus st = r.next(h, len);
      if (st == shm::ReadStatus::kRecord) {
        if (block) {
          at.push_back({r.offset(), reinterpret_cast<const std::byte*>(h), 0, len});
        } else {
          at.push_back({r.offset(), nullptr, stage.size(), len});
          stage.resize(stage.size() + len);
          shm::racy_copy(stage.data() + at.back().in_stage, h, len);
        }
        taken += len;
        r.advance(len);
        continue;
      }
      // Nothing at the cursor: not written yet, or overwritten (the spiller looks only every
      // 500 µs when idle, so it can afford to read the reclaim line each time).
      if (st == shm::ReadStatus::kNone && !(at.empty() && r.lapped())) {
        if (at.empty() && check_stall(p)) continue;  // stepped over an aborted claim: read on
        break;
      }
      if (st == shm::ReadStatus::kCorrupt) {
        log(fmt::format("spill {}-{}: corrupt record at offset {} in the ring; spilling of this partition stopped", p.topic,
                        p.partition, r.offset()));
        stop_spilling(p);
        p.failed_since = shm::monotonic_ns();
        p.failed = true;
        return false;
      }
      if (!at.empty()) break;  // lapped: keep what we have if it is intact, the next pump resets
      const std::uint64_t was = r.offset();
      r.seek_earliest();
      lost = r.offset() - was;
      break;
    }
    if (!block && !at.empty() && !r.intact_from(first_pos)) {
      // Overwritten while we copied: none of it can be trusted; start again at the ring's start.
      r.seek_earliest();
      lost = r.offset() > first_offset ? r.offset() - first_offset : 0;
      at.clear();
    }
    if (at.empty() && lost == 0 && p.initial_lost == 0 && r.offset() == first_offset) return false;
    auto chunk = take_chunk();
    if (!chunk) {
      r.rewind(first_offset, first_pos);  // the writer is behind: read again later
      return false;
    }
    chunk->frames.clear();
    // Every offset below the spill position gets a frame: a record, or a gap frame saying
    // why it is not one (lost to a lapping producer, or aborted), so that readers of the log
    // account for each offset as a reader of the ring would.
    if (p.initial_lost) {  // lost while no busd spilled: between the log's end and the ring's start
      disklog::append_gap(chunk->frames, first_offset - p.initial_lost, p.initial_lost, disklog::kAttrLost);
      p.initial_lost = 0;
    }
    if (lost) disklog::append_gap(chunk->frames, first_offset, lost, disklog::kAttrLost);
    std::uint64_t expect = first_offset + lost;
    for (const Taken& t : at) {
      const std::uint64_t offset = t.offset;
      const std::byte* rec = t.in_ring ? t.in_ring : stage.data() + t.in_stage;
      shm::RecordHeader h;
      shm::racy_copy(&h, rec, sizeof h);  // in the ring: a claim read by its entry may get its word meanwhile
      const std::uint64_t klen = h.key_len == shm::kNullKey ? 0 : h.key_len;
      if (shm::kRecordHeaderSize + klen + h.headers_len + h.value_len > std::min<std::uint64_t>(h.length, t.len)) {
        log(fmt::format("spill {}-{}: record at offset {} has lengths that do not fit its size; skipped", p.topic, p.partition, offset));
        continue;  // covered by the gap frame before the next record
      }
      if (offset > expect) disklog::append_gap(chunk->frames, expect, offset - expect, disklog::kAttrAborted);
      const std::uint32_t null_value = (h.flags & shm::kRecordNullValue) && h.value_len == 0 ? disklog::kAttrNullValue : 0;
      disklog::append_frame(chunk->frames, offset, h.timestamp_ns, h.key_len, h.headers_len, h.value_len,
                            rec + shm::kRecordHeaderSize, null_value);
      expect = offset + 1;
    }
    if (r.offset() > expect) disklog::append_gap(chunk->frames, expect, r.offset() - expect, disklog::kAttrAborted);
    chunk->next_offset = r.offset();
    chunk->end_position = r.position();
    chunk->lost = lost;
    work.enqueue(Msg{Msg::kData, part, nullptr, std::move(chunk), {}});
    return true;
  }

  // No record at the cursor for a while: an aborted claim to step over, a committed one to
  // read by its entry, or a dead or stalled writer's claim to finish (as consumers do).
  // True when the reader moved.
  bool check_stall(Part& p) {
    if ((++p.empty_looks & 255) != 0) return false;
    if (p.reader.unstick(&p.lock, shm::monotonic_ns()) != shm::ReadStatus::kRecord) return false;
    p.empty_looks = 0;
    return true;
  }

  // ---- writer ----
  struct Open {
    std::shared_ptr<Part> part;
    std::unique_ptr<disklog::LogWriter> log;
    std::uint64_t last_sync = 0;
    std::uint64_t last_retention = 0;
    bool dirty = false;  // appended since the last fdatasync
    // Written but not yet published (group commit: one fsync for everything dequeued).
    bool pending = false;
    std::uint64_t next_offset = 0, end_position = 0, lost = 0;
  };

  void write_loop() {
    std::map<Part*, Open> open;
    constexpr std::size_t kBulk = 64;
    std::vector<Msg> msgs(kBulk);
    bool stop = false;
    while (!stop) {
      const std::size_t n = work.wait_dequeue_bulk_timed(msgs.begin(), kBulk, std::chrono::milliseconds(50));
      for (std::size_t i = 0; i < n; ++i) {
        Msg& m = msgs[i];
        if (m.kind == Msg::kStop) {
          stop = true;
        } else if (m.kind == Msg::kOpen) {
          const std::uint64_t now = shm::monotonic_ns();
          Open& o = open[m.part.get()] = Open{m.part, std::move(m.writer), now, now};
          open_synced(o);
        } else if (m.kind == Msg::kSync) {
          // Nothing to do here: publish() below syncs while a producer wants it.
        } else if (m.kind == Msg::kConfig) {
          if (auto it = open.find(m.part.get()); it != open.end()) {
            it->second.part->config = m.config;
            it->second.log->set_config(m.config);
            log(fmt::format("spill {}-{}: new settings (retention {} bytes, {} ms; segment {} bytes)", m.part->topic,
                            m.part->partition, m.config.retention_bytes, m.config.retention_ms, m.config.segment_bytes));
            retention(it->second, shm::monotonic_ns());
          }
        } else if (m.kind == Msg::kClose) {
          if (auto it = open.find(m.part.get()); it != open.end()) {
            publish(it->second, shm::monotonic_ns(), true);
            open.erase(it);
          }
        } else if (m.chunk) {
          if (auto it = open.find(m.part.get()); it != open.end()) append(it->second, *m.chunk);
          m.chunk->frames.clear();
          free_chunks.enqueue(std::move(m.chunk));
        }
        m = Msg{};
      }
      const std::uint64_t now = shm::monotonic_ns();
      for (auto& [raw, o] : open) {
        publish(o, now, stop);
        if (o.part->config.retention_ms > 0 && now - o.last_retention >= 1'000'000'000) retention(o, now);
      }
    }
  }

  // What an earlier busd wrote may not have been synced: sync it once, so that synced_end
  // can start at the log's end (producers with acks=fsynced wait on it).
  void open_synced(Open& o) {
    Part& part = *o.part;
    const std::uint64_t end = part.ring.ctl()->stats.spill_end.load(std::memory_order_acquire);
    if (auto ok = o.log->sync(); !ok) {
      log(fmt::format("spill {}-{}: {}; not acknowledging fsynced records until a sync succeeds", part.topic, part.partition,
                      ok.error().message));
      o.dirty = true;
      return;
    }
    o.next_offset = end;
    publish_end(part.ring, true, end);
  }

  // Stores a durable offset and wakes the producers waiting on it (acks=spilled / fsynced),
  // and busd's loop (on_durable: a Kafka Produce with acks=all): a futex wake per publish,
  // which comes at most once per chunk or writer round.
  void publish_end(const shm::Ring& ring, bool synced, std::uint64_t value) {
    auto& end = synced ? ring.ctl()->stats.synced_end : ring.ctl()->stats.spill_end;
    if (end.load(std::memory_order_relaxed) == value) return;
    end.store(value, std::memory_order_release);
    shm::futex_wake_all(ring.durable_word(synced));
    if (on_durable) on_durable();
  }

  // A partition's spilling stopped on an error: its state says so, and whoever waits for
  // its disk hears at once (a Kafka Produce with acks=all: KAFKA_STORAGE_ERROR).
  void stop_spilling(const Part& p) {
    set_state(p, shm::SpillState::kError);
    if (on_durable) on_durable();
  }

  void append(Open& o, const Chunk& c) {
    Part& part = *o.part;
    if (part.failed.load(std::memory_order_relaxed)) return;
    if (!c.frames.empty()) {
      if (auto ok = o.log->append(c.frames); !ok) {
        log(fmt::format("spill {}-{}: {}; spilling of this partition stopped", part.topic, part.partition, ok.error().message));
        count(part.topic, part.partition, 0, 0, 1);
        stop_spilling(part);
        part.failed_since = shm::monotonic_ns();
        part.failed = true;
        return;
      }
      count(part.topic, part.partition, c.frames.size(), 0, 0);
      o.dirty = true;
    }
    o.pending = true;
    o.next_offset = c.next_offset;
    o.end_position = c.end_position;
    o.lost += c.lost;
  }

  // Syncs as the topic asks, then lets producers past what is on disk (in the page cache,
  // or synced with fsync=always) and tells consumers how far the log goes.
  void publish(Open& o, std::uint64_t now, bool final) {
    Part& part = *o.part;
    const auto& cfg = part.config;
    auto& stats = part.ring.ctl()->stats;
    // A producer with acks=fsynced waits: sync now, whatever the policy (one fdatasync covers
    // every producer waiting on this partition: group commit).
    const bool wanted = part.ring.ctl()->limits.sync_wanted.load(std::memory_order_acquire) >
                        stats.synced_end.load(std::memory_order_relaxed);
    const bool due = cfg.fsync == FsyncPolicy::kAlways || wanted ||
                     (cfg.fsync == FsyncPolicy::kInterval && now - o.last_sync >= std::uint64_t{cfg.fsync_interval_ms} * 1'000'000) ||
                     (final && cfg.fsync != FsyncPolicy::kNever);
    if (o.dirty && due && !part.failed.load(std::memory_order_relaxed)) {
      if (auto ok = o.log->sync(); !ok) {
        // Not on disk: producers must not pass it. The partition is retried later.
        log(fmt::format("spill {}-{}: {}; spilling of this partition stopped", part.topic, part.partition, ok.error().message));
        count(part.topic, part.partition, 0, 0, 1);
        stop_spilling(part);
        part.failed_since = now;
        part.failed = true;
        return;
      }
      count(part.topic, part.partition, 0, 1, 0);
      o.last_sync = now;
      o.dirty = false;
    }
    if (part.failed.load(std::memory_order_relaxed)) return;
    // Everything appended so far is synced: producers with acks=fsynced may go (published
    // after spill_end, so that synced_end is never ahead of it).
    const bool synced = !o.dirty && o.next_offset > stats.synced_end.load(std::memory_order_relaxed);
    const bool pending = std::exchange(o.pending, false);
    if (!pending && !synced) return;
    if (o.lost) stats.spill_lost.fetch_add(o.lost, std::memory_order_relaxed);
    o.lost = 0;
    stats.spill_bytes.store(o.log->bytes(), std::memory_order_relaxed);
    if (auto s = o.log->start_offset()) stats.spill_start.store(*s, std::memory_order_relaxed);
    publish_end(part.ring, false, o.next_offset);
    if (synced) publish_end(part.ring, true, o.next_offset);
    if (part.gate && pending) part.gate->position.store(o.end_position, std::memory_order_release);
    if (cfg.retention_bytes && o.log->bytes() > cfg.retention_bytes) retention(o, now);
  }

  void retention(Open& o, std::uint64_t now) {
    o.last_retention = now;
    if (o.log->enforce_retention(shm::realtime_ns()) == 0) return;
    auto& stats = o.part->ring.ctl()->stats;
    if (auto s = o.log->start_offset()) stats.spill_start.store(*s, std::memory_order_release);
    stats.spill_bytes.store(o.log->bytes(), std::memory_order_relaxed);
  }
};

Spiller::Spiller(std::shared_ptr<Bus> bus, std::string state_dir, unsigned file_mode, std::function<void(const std::string&)> log,
                 std::function<void()> on_durable)
    : impl_(std::make_unique<Impl>()) {
  impl_->bus = std::move(bus);
  impl_->state_dir = std::move(state_dir);
  impl_->file_mode = file_mode;
  impl_->log = std::move(log);
  impl_->on_durable = std::move(on_durable);
}

Spiller::~Spiller() { stop(); }

void Spiller::start() {
  impl_->tailer = std::thread([this] { impl_->tail_loop(); });
  impl_->writer = std::thread([this] { impl_->write_loop(); });
}

std::vector<Spiller::PartitionStats> Spiller::stats() const {
  std::lock_guard lk(impl_->counters_mu);
  std::vector<PartitionStats> out;
  for (const auto& [key, c] : impl_->counters) {
    out.push_back(c);
    out.back().topic = key.first;
    out.back().partition = key.second;
  }
  return out;
}

void Spiller::stop() {
  if (!impl_->tailer.joinable()) return;
  impl_->stopping.store(true, std::memory_order_release);
  impl_->tailer.join();
  impl_->work.enqueue(Msg{Msg::kStop, nullptr, nullptr, nullptr, {}});
  impl_->writer.join();
}

}  // namespace shmbus
