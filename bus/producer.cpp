#include "shmbus/producer.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <map>
#include <unistd.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "bus/gate_names.h"
#include "bus/group_client.h"
#include "bus/partitioner.h"
#include "bus/statistics.h"
#include "bus/topic.h"
#include "shm/futex.h"
#include "shm/process.h"
#include "shm/ring.h"

namespace shmbus {

namespace {

struct Layout {
  std::uint32_t key_len;      // kNullKey for none
  std::uint32_t headers_len;
  std::uint32_t value_len;
  std::uint32_t payload;      // key + headers + value bytes
  std::uint32_t bytes;        // whole record in the ring, 8-byte aligned (the last of a send
                              // may be longer: RingWriter::claim's end_align)
};

// A null header value takes no bytes (it is never given any: Header::null_value).
std::uint64_t headers_size(std::span<const Header> headers) {
  std::uint64_t n = 0;
  for (const auto& h : headers) n += 8 + h.key.size() + h.value.size();
  return n;
}

// Copies a small payload without a library call: two overlapping fixed-size moves cover
// every length from 16 to 64 bytes, which the compiler emits as vector loads and stores.
[[gnu::always_inline]] inline void copy_payload(std::byte* d, const std::byte* s, std::size_t n) noexcept {
  if (n >= 32 && n <= 64) {
    std::memcpy(d, s, 32);
    std::memcpy(d + n - 32, s + n - 32, 32);
  } else if (n >= 16 && n < 32) {
    std::memcpy(d, s, 16);
    std::memcpy(d + n - 16, s + n - 16, 16);
  } else if (n) {
    std::memcpy(d, s, n);
  }
}

// Writes header fields and payload; the word is published separately. Inlined into the
// batch loop: a call per record with the message spread over the stack cost more than the
// copy of a 64-byte value (measured: docs/performance.md).
[[gnu::always_inline]] inline void write_record(std::byte* at, const Layout& l, std::uint32_t length, const Message& m,
                                                std::int64_t ts) noexcept {
  // The header after its word (RecordHeader's fields at 8..40: length, reserved, timestamp,
  // key, headers and value lengths, flags) as four 8-byte words put together in registers.
  // Not a struct built on the stack and copied: its copy loaded 16 bytes of fields stored 4
  // and 8 at a time, which no store forwards, so each send waited for the store buffer (the
  // last record's lines) to drain.
  static_assert(shm::kRecordHeaderSize == 40 && std::endian::native == std::endian::little);
  const std::uint64_t w1 = length, w2 = static_cast<std::uint64_t>(ts), w3 = l.key_len | std::uint64_t{l.headers_len} << 32,
                      w4 = l.value_len | std::uint64_t{m.null_value ? shm::kRecordNullValue : 0u} << 32;
  // The length (with the reserved word after it) is read by other producers' reclaim while we
  // may already be writing the next lap here (they check their view afterwards): a relaxed
  // atomic store, the same one instruction as a plain store on x86 (TSan flagged the plain one).
  __atomic_store_n(reinterpret_cast<std::uint64_t*>(at + 8), w1, __ATOMIC_RELAXED);
  std::memcpy(at + 16, &w2, 8);
  std::memcpy(at + 24, &w3, 8);
  std::memcpy(at + 32, &w4, 8);
  // A payload that ends inside an 8-byte slot would leave the rest of the slot as an older
  // lap wrote it: there, maybe the high bytes of an older record's word, which records of
  // one block of 256 offsets share. With the right last bytes (one value in 65536) the slot
  // then reads as the word of a record not written yet, to a reader waiting there a lap
  // later (docs/ring.md, "Words"). Zeroed first, the slot never holds a word's high bytes.
  if (const std::uint32_t partial = (shm::kRecordHeaderSize + l.payload) & 7) {
    const std::uint64_t zero = 0;
    std::memcpy(at + shm::kRecordHeaderSize + l.payload - partial, &zero, sizeof zero);
  }
  std::byte* p = at + shm::kRecordHeaderSize;
  if (m.key && !m.key->empty()) {
    copy_payload(p, m.key->data(), m.key->size());
    p += m.key->size();
  }
  for (const auto& hd : m.headers) {
    const auto kl = static_cast<std::uint32_t>(hd.key.size()), vl = static_cast<std::uint32_t>(hd.value.size());
    const std::uint32_t stored_vl = hd.null_value && vl == 0 ? shm::kNullHeaderValue : vl;  // bytes win over the flag
    std::memcpy(p, &kl, 4);
    std::memcpy(p + 4, &stored_vl, 4);
    std::memcpy(p + 8, hd.key.data(), kl);
    if (vl) std::memcpy(p + 8 + kl, hd.value.data(), vl);
    p += 8 + kl + vl;
  }
  copy_payload(p, m.value.data(), m.value.size());
}

// The records of one claim and their layouts (inline up to 64, so that the batches of the
// hot path never allocate). Points into itself: not movable.
struct Batch {
  static constexpr std::size_t kInline = 64;
  std::span<const Message> messages;
  Layout inline_layouts[kInline];
  std::uint32_t inline_sizes[kInline];
  std::vector<Layout> heap_layouts;
  std::vector<std::uint32_t> heap_sizes;
  Layout* layouts = inline_layouts;
  std::uint32_t* sizes = inline_sizes;
  std::uint64_t total = 0;

  explicit Batch(std::span<const Message> m) : messages(m) {
    if (m.size() > kInline) {
      heap_layouts.resize(m.size());
      heap_sizes.resize(m.size());
      layouts = heap_layouts.data();
      sizes = heap_sizes.data();
    }
  }
  Batch(const Batch&) = delete;
  Batch& operator=(const Batch&) = delete;
};

const char* acks_name(Acks a) {
  return a == Acks::kMemory ? "memory" : a == Acks::kSpilled ? "spilled" : "fsynced";
}

// Durable acks need busd to spill every record: a topic with a disk log whose producers
// cannot overwrite what busd has not spilled yet.
Status durable_acks_ok(const Topic& t, Acks acks) {
  if (acks == Acks::kMemory) return {};
  if (!t.config().spill.enabled)
    return make_error(Errc::kInvalidArgument, fmt::format("topic '{}' does not spill to disk: acks={} needs a topic created with --spill",
                                                          t.name(), acks_name(acks)));
  if (t.config().retention != RetentionMode::kBlock)
    return make_error(Errc::kInvalidArgument,
                      fmt::format("topic '{}' has retention overwrite: its producers may overwrite a record before busd "
                                  "spills it; acks={} needs --retention block",
                                  t.name(), acks_name(acks)));
  return {};
}

}  // namespace

struct Producer::Impl {
  struct TopicState {
    std::shared_ptr<Topic> topic;
    std::vector<std::unique_ptr<shm::RingWriter>> writers;  // opened on first use
    std::uint32_t sticky = 0;
    std::uint64_t sticky_bytes = 0;
    std::vector<std::uint64_t> sent_end;  // per partition: our last sent offset + 1 (0: none)
  };

  std::shared_ptr<Bus> bus;
  ProducerConfig config;
  // Shared with the PartitionWriters made from it: a deleted topic's state stays theirs
  // (their sends fail, naming the deletion) after a send by name replaced it here.
  std::map<std::string, std::shared_ptr<TopicState>, std::less<>> topics;
  TopicState* last = nullptr;
  std::string last_name;
  bool reservation_open = false;
  std::unique_ptr<stats::ProducerStats> stats;  // statistics_interval > 0 only
  std::shared_ptr<Topic> reserved_topic;         // with stats: the open reservation's topic
  std::uint64_t reserved_bytes = 0;              // and its key, headers and value bytes

  // The open reservation ended: committed (counted as sent) or aborted.
  void reservation_done(const Reservation& r, const shm::RingWriter& w, bool committed) {
    if (committed) stats->sent(reserved_topic, r.metadata().partition, 1, reserved_bytes, w);
    else stats->aborted(reserved_topic, r.metadata().partition, 1);
    reserved_topic.reset();
  }

  Result<TopicState*> topic(std::string_view name) {
    if (last && name == last_name && !last->topic->deleted()) return last;
    auto it = topics.find(name);
    if (it == topics.end() || it->second->topic->deleted()) {
      if (it != topics.end()) {
        if (reservation_open) return make_error(Errc::kTopicDeleted, fmt::format("topic '{}' was deleted", name));
        if (last == it->second.get()) last = nullptr;
        topics.erase(it);
      }
      auto t = bus->topic(std::string(name));
      if (!t) return tl::unexpected(t.error());
      if (auto ok = durable_acks_ok(**t, config.acks); !ok) return tl::unexpected(ok.error());
      // A spilled topic needs busd: it spills, and in a block topic its gate holds us back
      // until it has. Start one if none runs (SHMBUS_NO_AUTOSTART=1 opts out).
      if ((*t)->config().spill.enabled) (void)BusdConnection::connect(bus->name(), std::chrono::seconds(2));
      auto st = std::make_shared<TopicState>();
      st->topic = *t;
      st->writers.resize((*t)->partitions());
      st->sent_end.resize((*t)->partitions());
      st->sticky = static_cast<std::uint32_t>(shm::random_u64() % (*t)->partitions());
      it = topics.insert_or_assign(std::string(name), std::move(st)).first;
    }
    last = it->second.get();
    last_name.assign(name);
    return last;
  }

  Result<std::uint32_t> choose(TopicState& t, std::optional<Bytes> key, std::optional<std::uint32_t> partition,
                               std::uint64_t bytes) {
    const std::uint32_t n = t.topic->partitions();
    if (partition) {
      if (*partition >= n)
        return make_error(Errc::kInvalidArgument,
                          fmt::format("topic '{}' has {} partitions, no partition {}", t.topic->name(), n, *partition));
      return *partition;
    }
    if (key) return partition_for_key(*key, n);
    const std::uint32_t s = sticky(t);
    t.sticky_bytes += bytes;
    return s;
  }

  // The partition of null keys now. Sticky: stay on one partition for sticky_bytes, then
  // move on (Kafka's KIP-480 idea); the sends count their bytes into sticky_bytes.
  std::uint32_t sticky(TopicState& t) const {
    if (t.sticky_bytes >= config.sticky_bytes) {
      t.sticky = (t.sticky + 1) % t.topic->partitions();
      t.sticky_bytes = 0;
    }
    return t.sticky;
  }

  // A record's partition in a batch sent without one: its key's, else the sticky one.
  [[gnu::always_inline]] std::uint32_t partition_of(TopicState& t, const Message& m) const {
    return m.key ? partition_for_key(*m.key, t.topic->partitions()) : sticky(t);
  }

  Result<shm::RingWriter*> writer(TopicState& t, std::uint32_t p) {
    if (t.topic->ring(p).closed())
      return make_error(Errc::kTopicDeleted, fmt::format("topic '{}' was deleted", t.topic->name()));
    auto& w = t.writers[p];
    if (!w) {
      auto nw = std::make_unique<shm::RingWriter>(t.topic->ring(p));
      if (auto ok = nw->open(t.topic->segment(p), config.exclusive); !ok) return tl::unexpected(ok.error());
      w = std::move(nw);
    }
    return w.get();
  }

  [[gnu::cold, gnu::noinline]] static Error too_large(const TopicState& t, std::uint64_t payload) {
    return Error{Errc::kRecordTooLarge,
                 fmt::format("record of {} bytes (key+headers+value) is over topic '{}''s max record size of {} bytes",
                             payload, t.topic->name(), t.topic->config().max_record)};
  }

  // False when the record is over the topic's limit (`payload_out` says by how much: too_large()).
  [[gnu::always_inline]] bool layout(const TopicState& t, const std::optional<Bytes>& key, std::span<const Header> headers,
                                     std::uint64_t value_size, Layout& l, std::uint64_t& payload_out) const {
    const std::uint64_t hl = headers.empty() ? 0 : headers_size(headers);
    const std::uint64_t payload = (key ? key->size() : 0) + hl + value_size;
    payload_out = payload;
    if (payload > t.topic->config().max_record) return false;
    l.key_len = key ? static_cast<std::uint32_t>(key->size()) : shm::kNullKey;
    l.headers_len = static_cast<std::uint32_t>(hl);
    l.value_len = static_cast<std::uint32_t>(value_size);
    l.payload = static_cast<std::uint32_t>(payload);
    // Packed at 8 bytes inside a send, but with the default alignment never under a cache
    // line: the offset index has one entry per 64 ring bytes, and smaller records would
    // overrun it (seek() then walks the ring).
    l.bytes = static_cast<std::uint32_t>(std::max<std::uint64_t>(shm::align8(shm::kRecordHeaderSize + payload),
                                                                 std::min<std::uint32_t>(config.record_alignment, 64)));
    return true;
  }

  Result<Layout> layout(const TopicState& t, const std::optional<Bytes>& key, std::span<const Header> headers,
                        std::uint64_t value_size) const {
    Layout l;
    std::uint64_t payload = 0;
    if (!layout(t, key, headers, value_size, l, payload)) return tl::unexpected(too_large(t, payload));
    return l;
  }

  // Sent: note it for flush(), then wait for busd as the producer's acks say.
  [[gnu::always_inline]] Status sent(TopicState& ts, std::uint32_t p, std::uint64_t end) {
    ts.sent_end[p] = std::max(ts.sent_end[p], end);
    if (config.acks == Acks::kMemory) [[likely]]
      return {};
    return wait_sent(ts, p, end);
  }
  [[gnu::noinline]] Status wait_sent(TopicState& ts, std::uint32_t p, std::uint64_t end) {
    const std::int64_t now = static_cast<std::int64_t>(shm::monotonic_ns());
    return wait_durable(ts, p, end, config.acks, config.ack_timeout_ms < 0 ? -1 : now + config.ack_timeout_ms * 1'000'000);
  }

  // Waits until busd's spiller has published partition p of `ts` as written (kSpilled) or
  // synced (kFsynced) up to `end`, or the deadline (monotonic ns; < 0: none). It rings the
  // partition's ack bell (busd's idle tailer sleeps on it), then sleeps on the published
  // offset's futex word, which busd wakes; no spinning: the spiller's round trip (tailer,
  // writer, write(2), fdatasync) takes tens of microseconds at least. Every 500 ms without
  // the offset it makes sure a busd runs (one killed is started again, unless
  // SHMBUS_NO_AUTOSTART=1).
  Status wait_durable(const TopicState& ts, std::uint32_t p, std::uint64_t end, Acks acks, std::int64_t deadline) {
    if (acks == Acks::kMemory) return {};
    const shm::Ring& ring = ts.topic->ring(p);
    const bool synced = acks == Acks::kFsynced;
    ring.want_durable(end, synced);  // fsynced: busd syncs up to `end` now, whatever the topic's policy
    std::atomic<std::uint32_t>* word = ring.durable_word(synced);
    constexpr std::int64_t kSlice = 500'000'000;
    std::int64_t next_check = static_cast<std::int64_t>(shm::monotonic_ns()) + kSlice;
    for (;;) {
      const std::uint32_t seen = word->load(std::memory_order_acquire);  // before the check: a publish after it wakes us
      const auto durable = ring.durable_end(synced);
      if (durable && *durable >= end) return {};
      if (ring.closed())
        return make_error(Errc::kTopicDeleted, fmt::format("topic '{}' was deleted before offset {} of partition {} was {}",
                                                           ts.topic->name(), end - 1, p, acks_name(acks)));
      const auto now = static_cast<std::int64_t>(shm::monotonic_ns());
      if (deadline >= 0 && now >= deadline) return tl::unexpected(not_durable(ts, p, end, acks, durable.has_value()));
      if (now >= next_check) {
        (void)BusdConnection::connect(bus->name(), std::chrono::seconds(2));
        next_check = static_cast<std::int64_t>(shm::monotonic_ns()) + kSlice;
        continue;
      }
      const std::int64_t until = deadline < 0 ? next_check : std::min(next_check, deadline);
      (void)shm::futex_wait(word, seen, until - now);
    }
  }

  [[gnu::cold]] static Error not_durable(const TopicState& ts, std::uint32_t p, std::uint64_t end, Acks acks, bool believable) {
    const shm::Ring& ring = ts.topic->ring(p);
    std::string why = "busd writes it to the disk log and has not (is it running? busctl status, busd.log)";
    if (!believable)
      why = "the offset published in the partition segment is past the ring's end (forged or damaged bytes; busctl doctor)";
    else if (ring.ctl()->stats.spill_state.load(std::memory_order_relaxed) == static_cast<std::uint32_t>(shm::SpillState::kError))
      why = "busd's spilling of this partition failed (busctl topic describe: SPILL error; busd.log says why)";
    return Error{Errc::kTimedOut, fmt::format("offset {} of topic '{}' partition {} is not {} on disk: {}; the record is in "
                                              "the ring, flush() waits for it again",
                                              end - 1, ts.topic->name(), p, acks == Acks::kFsynced ? "synced" : "written", why)};
  }

  std::int64_t block_ns() const { return config.max_block_ms < 0 ? -1 : config.max_block_ms * 1'000'000; }

  // A claim that needs claim() below: a spilled block topic, whose room comes from busd.
  bool slow_claim(const TopicState& ts, const shm::RingWriter& w) const {
    return ts.topic->config().spill.enabled && w.ring().retention() == shm::Retention::kBlock;
  }

  // A claim that timed out behind gates says whose they are (a group by name, a pid).
  Status name_holders(const shm::RingWriter& w, Status st) const {
    if (st || st.error().code != Errc::kTimedOut || !w.gated_timeout()) return st;
    return make_error(Errc::kTimedOut, fmt::format("{}; held by {}", st.error().message, gate_holders(bus->name(), w.ring())));
  }

  // A claim into `out`, waiting for room up to max_block_ms in a block topic. In a spilled
  // block topic the room comes from busd's spiller: wait in slices, and between them make
  // sure a busd runs (one killed is started again), so a dead busd never wedges producers for
  // good. The claim is written where the caller keeps it, not returned: see
  // RingWriter::claim_into.
  [[gnu::always_inline]] Status claim(const TopicState& ts, shm::RingWriter& w, std::span<const std::uint32_t> sizes,
                                      shm::Claim& out) {
    if (!slow_claim(ts, w)) [[likely]] {
      Status st = w.claim_into(out, sizes, block_ns(), config.record_alignment);
      if (!st) [[unlikely]] return name_holders(w, std::move(st));
      return st;
    }
    return claim_slowly(ts, w, sizes, out);
  }

  [[gnu::noinline]] Status claim_slowly(const TopicState& ts, shm::RingWriter& w, std::span<const std::uint32_t> sizes,
                                        shm::Claim& out) {
    const std::int64_t total = block_ns();
    const std::uint32_t align = config.record_alignment;
    constexpr std::int64_t kSlice = 500'000'000;
    for (std::int64_t waited = 0;;) {
      const std::int64_t slice = total < 0 ? kSlice : std::min(kSlice, total - waited);
      Status st = w.claim_into(out, sizes, slice, align);
      if (st || st.error().code != Errc::kTimedOut) return st;
      if (w.gated_timeout() && total >= 0 && waited + slice >= total) return name_holders(w, std::move(st));
      waited += slice;
      if (total >= 0 && waited >= total)
        return make_error(Errc::kTimedOut, fmt::format("topic '{}' partition {} is full for {} ms: busd spills it to disk and has "
                                                       "not caught up (is it running? busctl status, busd.log)",
                                                       ts.topic->name(), w.ring().ctl()->config.partition, total / 1'000'000));
      (void)BusdConnection::connect(bus->name(), std::chrono::seconds(2));
    }
  }

  // The layouts of a batch's records, checked against the topic's limits.
  [[gnu::always_inline]] Status prepare(const TopicState& ts, Batch& b) const {
    for (std::size_t i = 0; i < b.messages.size(); ++i) {
      const Message& m = b.messages[i];
      std::uint64_t payload = 0;
      if (!layout(ts, m.key, m.headers, m.value.size(), b.layouts[i], payload)) [[unlikely]]
        return tl::unexpected(too_large(ts, payload));
      b.sizes[i] = b.layouts[i].bytes;
      b.total += b.layouts[i].bytes;
    }
    const shm::Ring& ring0 = ts.topic->ring(0);
    if (b.total > ring0.capacity() / 2)
      return make_error(Errc::kRecordTooLarge, fmt::format("batch of {} bytes is over half of topic '{}''s ring ({} bytes)",
                                                           b.total, ts.topic->name(), ring0.capacity()));
    return {};
  }

  // Appends a prepared batch to partition `p` with one claim. `sticky`: it holds null keys, whose
  // bytes count toward moving the sticky partition on.
  [[gnu::always_inline]] Result<RecordMetadata> append(TopicState& ts, std::uint32_t p, Batch& b, bool sticky) {
    if (sticky) ts.sticky_bytes += b.total;
    auto w = writer(ts, p);
    if (!w) return tl::unexpected(w.error());
    (*w)->prefetch_claim(b.total);
    shm::RingWriter& writer = **w;
    const std::span<const Message> messages = b.messages;
    const std::uint32_t* sizes = b.sizes;
    shm::Claim c;
    if (auto ok = this->claim(ts, writer, std::span<const std::uint32_t>(sizes, messages.size()), c); !ok)
      return tl::unexpected(ok.error());
    const shm::Ring& ring = writer.ring();
    std::int64_t now = 0;
    std::uint64_t cur = c.position;
    for (std::size_t i = 0; i < messages.size(); ++i) {
      const std::uint64_t at = ring.place(cur, sizes[i]);
      // The rest of the lap is padding; its offset is the next record's. One at the claim's
      // start is stored by finish(), with the first record's word.
      if (at != cur && i > 0) writer.publish_padding(cur, c.offset + i);
      std::int64_t ts_ns = messages[i].timestamp_ns;
      if (ts_ns == 0) ts_ns = now ? now : (now = shm::fast_realtime_ns());
      // The last record ends where the claim does (it takes the alignment's slack).
      const auto length = static_cast<std::uint32_t>(i + 1 == messages.size() ? c.end - at : sizes[i]);
      write_record(reinterpret_cast<std::byte*>(ring.header_at(at)), b.layouts[i], length, messages[i], ts_ns);
      cur = at + sizes[i];
    }
    if (auto ok = writer.commit(c); !ok) {
      if (stats) [[unlikely]] stats->aborted(ts.topic, p, messages.size());
      return tl::unexpected(ok.error());
    }
    // Committed: the words, the first one last (docs/ring.md, "Producing").
    cur = c.first_at + sizes[0];
    for (std::size_t i = 1; i < messages.size(); ++i) {
      const std::uint64_t at = ring.place(cur, sizes[i]);
      writer.publish(at, c.offset + i);
      cur = at + sizes[i];
    }
    writer.finish(c);
    writer.notify(c);
    writer.prefetch_if_streaming(now, static_cast<std::uint32_t>(messages.size()), b.total);
    ts.sent_end[p] = std::max(ts.sent_end[p], c.offset + messages.size());  // for flush()
    if (stats) [[unlikely]] stats->sent(ts.topic, p, messages, writer);
    return RecordMetadata{p, c.offset};
  }

  [[gnu::always_inline]] Result<RecordMetadata> send_one_claim(TopicState& ts, std::uint32_t p,
                                                             std::span<const Message> messages, bool sticky) {
    Batch b(messages);
    if (auto ok = prepare(ts, b); !ok) [[unlikely]]
      return tl::unexpected(ok.error());
    auto md = append(ts, p, b, sticky);
    if (!md) return md;
    if (auto ok = sent(ts, p, md->offset + messages.size()); !ok) return tl::unexpected(ok.error());
    return md;
  }

  // Sends are refused while a reservation is open: one claim per writer slot at a time
  // (docs/ring.md, "Dead writers").
  Status no_open_reservation() const {
    if (!reservation_open) return {};
    return make_error(Errc::kInvalidArgument, "a reservation of this producer is open: commit() or abort() it first");
  }

  // One record to partition p of `ts` through writer `w`: the path of send() and of
  // PartitionWriter::send(), which most sends take. append() for one record, without the
  // Batch and the loops over it (docs/performance.md, "The single-record path"). An
  // exclusive writer without statistics sends it in one inline piece
  // (RingWriter::append_one_exclusive); anything else takes append_one_general() (inline
  // too: out of line it cost shared writers 20 instructions a send).
  [[gnu::always_inline]] Result<std::uint64_t> append_one(TopicState& ts, std::uint32_t p, shm::RingWriter& w,
                                                           const Message& m, bool sticky) {
    Layout l;
    std::uint64_t payload = 0;
    // The topic's max_record is at most a quarter of its ring: no half-ring check as for batches.
    if (!layout(ts, m.key, m.headers, m.value.size(), l, payload)) [[unlikely]]
      return tl::unexpected(too_large(ts, payload));
    if (sticky) ts.sticky_bytes += l.bytes;
    if (!stats) [[likely]] {
      std::uint64_t offset = 0;
      const auto done = w.append_one_exclusive(l.bytes, config.record_alignment, offset, [&](std::byte* at, std::uint32_t length) __attribute__((always_inline)) {
        const std::int64_t ts_ns = m.timestamp_ns ? m.timestamp_ns : shm::fast_realtime_ns();
        write_record(at, l, length, m, ts_ns);
        return m.timestamp_ns ? std::int64_t{0} : ts_ns;  // the prefetch's streaming guess needs our own clock
      });
      if (done == shm::RingWriter::Append::kDone) [[likely]]
        return offset;
      if (done == shm::RingWriter::Append::kRefused) return refused(w);
    }
    return append_one_general(ts, p, w, m, l);
  }

  [[gnu::cold, gnu::noinline]] static Result<std::uint64_t> refused(shm::RingWriter& w) { return tl::unexpected(w.take_refusal()); }

  [[gnu::always_inline]] Result<std::uint64_t> append_one_general(TopicState& ts, std::uint32_t p, shm::RingWriter& w,
                                                              const Message& m, Layout l) {
    w.prefetch_claim(l.bytes);
    // A copy for the claim's span: `l` itself then stays in registers (its fields stored 4
    // bytes at a time and read back 8 at a time stalled the send as in write_record()).
    const std::uint32_t bytes = l.bytes;
    shm::Claim claimed;
    if (!w.try_claim_one_exclusive(claimed, bytes, config.record_alignment)) [[unlikely]]
      if (auto ok = claim(ts, w, std::span<const std::uint32_t>(&bytes, 1), claimed); !ok) [[unlikely]]
        return tl::unexpected(ok.error());
    const shm::Claim* c = &claimed;
    const shm::Ring& ring = w.ring();
    const std::int64_t ts_ns = m.timestamp_ns ? m.timestamp_ns : shm::fast_realtime_ns();
    // A padding word before first_at is stored by finish(), with the record's word.
    write_record(reinterpret_cast<std::byte*>(ring.header_at(c->first_at)), l,
                 static_cast<std::uint32_t>(c->end - c->first_at), m, ts_ns);
    if (auto ok = w.commit(*c); !ok) [[unlikely]] {
      if (stats) stats->aborted(ts.topic, p, 1);
      return tl::unexpected(ok.error());
    }
    w.finish(*c);
    w.notify(*c);
    w.prefetch_if_streaming(m.timestamp_ns ? 0 : ts_ns, 1, l.bytes);
    if (stats) [[unlikely]] stats->sent(ts.topic, p, std::span<const Message>(&m, 1), w);
    return c->offset;
  }

  // append_one(), then what the producer's acks ask for (sent()).
  [[gnu::always_inline]] Result<std::uint64_t> send_one(TopicState& ts, std::uint32_t p, shm::RingWriter& w,
                                                         const Message& m, bool sticky) {
    auto offset = append_one(ts, p, w, m, sticky);
    if (!offset) [[unlikely]]
      return offset;
    if (auto ok = sent(ts, p, *offset + 1); !ok) return tl::unexpected(ok.error());
    return offset;
  }

  // A batch whose records go to several partitions: one claim per partition, for its
  // records in send order, the partitions in the order of their first record. Whatever can
  // fail before a claim (sizes, writers) is checked for all of them first; a claim that
  // fails (a full block topic, a deleted topic) leaves the partitions before it appended.
  [[gnu::cold, gnu::noinline]] Result<RecordMetadata> send_split(TopicState& ts, std::span<const Message> messages) {
    const std::uint32_t n = ts.topic->partitions(), sticky_p = sticky(ts);
    std::vector<std::vector<Message>> by_partition(n);
    std::vector<std::uint32_t> order;  // partitions, by their first record
    bool sticky_used = false;
    for (const Message& m : messages) {
      const std::uint32_t p = m.key ? partition_for_key(*m.key, n) : sticky_p;
      sticky_used |= !m.key;
      if (by_partition[p].empty()) order.push_back(p);
      by_partition[p].push_back(m);
    }
    std::vector<std::unique_ptr<Batch>> runs;
    for (std::uint32_t p : order) {
      runs.push_back(std::make_unique<Batch>(by_partition[p]));
      if (auto ok = prepare(ts, *runs.back()); !ok) return tl::unexpected(ok.error());
      if (auto w = writer(ts, p); !w) return tl::unexpected(w.error());
    }
    RecordMetadata first{};
    std::vector<std::uint64_t> ends;  // each run's last offset + 1
    std::size_t appended = 0;
    for (std::size_t r = 0; r < order.size(); ++r) {
      auto md = append(ts, order[r], *runs[r], sticky_used && order[r] == sticky_p);
      if (!md) {
        if (appended == 0) return md;
        return make_error(md.error().code,
                          fmt::format("{}; {} of the batch's {} records were appended before (partitions {}), "
                                      "the partitions from {} on were not",
                                      md.error().message, appended, messages.size(),
                                      fmt::join(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(r), ", "),
                                      order[r]));
      }
      if (r == 0) first = *md;
      ends.push_back(md->offset + runs[r]->messages.size());
      appended += runs[r]->messages.size();
    }
    // All appended: now wait for the producer's acks, partition by partition.
    for (std::size_t r = 0; r < order.size(); ++r)
      if (auto ok = sent(ts, order[r], ends[r]); !ok) return tl::unexpected(ok.error());
    return first;
  }
};

Producer::Producer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Producer::Producer(Producer&&) noexcept = default;
Producer& Producer::operator=(Producer&&) noexcept = default;
Producer::~Producer() = default;

Result<Producer> Producer::create(std::shared_ptr<Bus> bus, ProducerConfig config) {
  if (!bus) return make_error(Errc::kInvalidArgument, "producer needs a bus");
  if (bus->read_only()) return make_error(Errc::kPermission, fmt::format("bus '{}' is attached read-only", bus->name()));
  if (config.record_alignment != 8 && config.record_alignment != 16 && config.record_alignment != 32 &&
      config.record_alignment != 64)
    return make_error(Errc::kInvalidArgument,
                      fmt::format("record_alignment {} must be 8, 16, 32 or 64", config.record_alignment));
  if (auto ok = stats::check("ProducerConfig", config.statistics_interval, config.statistics_cb); !ok)
    return tl::unexpected(ok.error());
  auto impl = std::make_unique<Impl>();
  impl->bus = std::move(bus);
  if (config.statistics_interval.count() > 0)
    impl->stats = std::make_unique<stats::ProducerStats>(config.statistics_interval, config.statistics_cb);
  impl->config = std::move(config);
  return Producer(std::move(impl));
}

Status Producer::flush(std::chrono::milliseconds timeout, std::optional<Acks> acks) noexcept {
  if (impl_->stats) [[unlikely]] impl_->stats->tick();  // reports if due, like a send
  const Acks mode = acks.value_or(impl_->config.acks);
  const std::int64_t deadline = static_cast<std::int64_t>(shm::monotonic_ns()) + timeout.count() * 1'000'000;
  for (auto& [name, state] : impl_->topics) {
    if (mode == Acks::kMemory) break;  // sends commit before they return
    Impl::TopicState& ts = *state;
    if (auto ok = durable_acks_ok(*ts.topic, mode); !ok) {
      if (std::all_of(ts.sent_end.begin(), ts.sent_end.end(), [](std::uint64_t e) { return e == 0; })) continue;
      return ok;
    }
    for (std::uint32_t p = 0; p < ts.sent_end.size(); ++p)
      if (ts.sent_end[p])
        if (auto ok = impl_->wait_durable(ts, p, ts.sent_end[p], mode, deadline); !ok) return ok;
  }
  return {};
}

Result<RecordMetadata> Producer::send(std::string_view topic, std::optional<std::string_view> key,
                                      std::string_view value) noexcept {
  Message m;
  if (key) m.key = as_bytes(*key);
  m.value = as_bytes(value);
  return send(topic, m);
}

Result<RecordMetadata> Producer::send(std::string_view topic, const Message& m,
                                      std::optional<std::uint32_t> partition) noexcept {
  Impl& im = *impl_;
  Impl::TopicState* ts = nullptr;
  shm::RingWriter* w = nullptr;
  std::uint32_t p = 0;
  // Most sends: the topic of the last send, to a partition whose writer is open. The checks
  // of the general resolution below, inline and without a Result for each step.
  Impl::TopicState* chose_in = nullptr;  // the topic whose partition p was chosen below
  if (im.last && !im.reservation_open && topic == im.last_name) [[likely]] {
    ts = im.last;
    p = partition ? *partition : ts->topic->partitions() > 1 ? im.partition_of(*ts, m) : 0;
    chose_in = ts;
    if (p < ts->writers.size()) w = ts->writers[p].get();
    if (w && (w->ring().closed() || ts->topic->deleted())) [[unlikely]] w = nullptr;
  }
  if (!w) [[unlikely]] {
    if (auto ok = im.no_open_reservation(); !ok) return tl::unexpected(ok.error());
    auto t = im.topic(topic);
    if (!t) return tl::unexpected(t.error());
    if (*t != chose_in) {
      // Chosen once per send: the sticky partitioner moves on each call (with sticky_bytes
      // 0, on every call), so the choice above stands when the topic is still the same.
      ts = *t;
      p = 0;
      if (!partition && ts->topic->partitions() > 1) p = im.partition_of(*ts, m);
    }
    if (partition) {
      auto given = im.choose(*ts, std::nullopt, partition, 0);  // checks it
      if (!given) return tl::unexpected(given.error());
      p = *given;
    }
    auto opened = im.writer(*ts, p);
    if (!opened) return tl::unexpected(opened.error());
    w = *opened;
  }
  auto offset = im.send_one(*ts, p, *w, m, !partition && !m.key);
  if (!offset) [[unlikely]]
    return tl::unexpected(offset.error());
  return RecordMetadata{p, *offset};
}

Result<PartitionWriter> Producer::partition_writer(std::string_view topic, std::uint32_t partition) noexcept {
  auto t = impl_->topic(topic);
  if (!t) return tl::unexpected(t.error());
  if (auto given = impl_->choose(**t, std::nullopt, partition, 0); !given) return tl::unexpected(given.error());
  auto w = impl_->writer(**t, partition);  // opened now: its errors (no free slot, exclusive) are the caller's here
  if (!w) return tl::unexpected(w.error());
  PartitionWriter pw;
  pw.producer_ = impl_.get();
  pw.state_ = impl_->topics.find(topic)->second;
  pw.writer_ = *w;
  pw.partition_ = partition;
  return pw;
}

const std::string& PartitionWriter::topic() const noexcept {
  return static_cast<const Producer::Impl::TopicState*>(state_.get())->topic->name();
}

namespace {
// PartitionWriter::send()'s refusals, out of line: built inline, their strings took
// registers and stack from the send's fast path.
enum class SendRefusal { kEmpty, kReservation, kDeleted };
[[gnu::cold, gnu::noinline]] Result<std::uint64_t> refuse_send(const Producer::Impl* producer, const PartitionWriter& pw,
                                                               SendRefusal why) {
  if (why == SendRefusal::kEmpty)
    return make_error(Errc::kInvalidArgument, "this PartitionWriter is empty (moved from, or default-constructed)");
  if (why == SendRefusal::kReservation) return tl::unexpected(producer->no_open_reservation().error());
  return make_error(Errc::kTopicDeleted, fmt::format("topic '{}' was deleted", pw.topic()));
}
}  // namespace

Result<std::uint64_t> PartitionWriter::send(const Message& m) noexcept {
  if (!state_) [[unlikely]]
    return refuse_send(producer_, *this, SendRefusal::kEmpty);
  if (producer_->reservation_open) [[unlikely]]
    return refuse_send(producer_, *this, SendRefusal::kReservation);
  auto& ts = *static_cast<Producer::Impl::TopicState*>(state_.get());
  auto& w = *static_cast<shm::RingWriter*>(writer_);
  if (w.ring().closed()) [[unlikely]]
    return refuse_send(producer_, *this, SendRefusal::kDeleted);
  return producer_->send_one(ts, partition_, w, m, false);
}

Result<RecordMetadata> Producer::send_batch(std::string_view topic, std::span<const Message> messages,
                                            std::optional<std::uint32_t> partition) noexcept {
  if (messages.empty()) return make_error(Errc::kInvalidArgument, "empty batch");
  if (auto ok = impl_->no_open_reservation(); !ok) [[unlikely]]
    return tl::unexpected(ok.error());
  auto t = impl_->topic(topic);
  if (!t) return tl::unexpected(t.error());
  Impl::TopicState& ts = **t;
  const std::uint32_t n = ts.topic->partitions();
  std::uint32_t p = 0;
  bool any_null = false;
  if (partition) {
    auto given = impl_->choose(ts, std::nullopt, partition, 0);  // checks it
    if (!given) return tl::unexpected(given.error());
    p = *given;
  } else {
    // Every record goes where send() would put it. The common case, all on the first one's
    // partition, is one claim without allocating; any other is split (send_split).
    any_null = !messages[0].key;
    if (n > 1) p = impl_->partition_of(ts, messages[0]);
    for (std::size_t i = 1; i < messages.size(); ++i) {
      any_null |= !messages[i].key;
      if (n > 1 && impl_->partition_of(ts, messages[i]) != p) [[unlikely]]
        return impl_->send_split(ts, messages);
    }
  }
  return impl_->send_one_claim(ts, p, messages, any_null);
}

Result<Reservation> Producer::reserve(std::string_view topic, std::optional<Bytes> key, std::size_t value_size,
                                      std::optional<std::uint32_t> partition, std::span<const Header> headers) noexcept {
  // One claim per writer slot at a time: a second one would replace the intent that lets
  // others finish this one if we die (docs/ring.md, "Dead writers").
  if (auto ok = impl_->no_open_reservation(); !ok) [[unlikely]]
    return tl::unexpected(ok.error());
  auto t = impl_->topic(topic);
  if (!t) return tl::unexpected(t.error());
  Impl::TopicState& ts = **t;
  auto l = impl_->layout(ts, key, headers, value_size);
  if (!l) return tl::unexpected(l.error());
  auto p = impl_->choose(ts, key, partition, l->bytes);
  if (!p) return tl::unexpected(p.error());
  auto w = impl_->writer(ts, *p);
  if (!w) return tl::unexpected(w.error());
  shm::Claim c;
  if (auto ok = impl_->claim(ts, **w, std::span<const std::uint32_t>(&l->bytes, 1), c); !ok) return tl::unexpected(ok.error());
  const shm::Ring& ring = (*w)->ring();
  const std::uint64_t at = c.first_at;  // a padding word before it is stored by finish()
  auto* rec = reinterpret_cast<std::byte*>(ring.header_at(at));
  Message m;
  m.key = key;
  m.headers = headers;
  write_record(rec, *l, static_cast<std::uint32_t>(c.end - at), m, shm::fast_realtime_ns());
  Reservation r;
  r.writer_ = *w;
  r.position_ = c.position;
  r.end_ = c.end;
  r.first_at_ = at;
  r.value_ = std::span<std::byte>(rec + shm::kRecordHeaderSize + (l->payload - l->value_len), value_size);
  r.meta_ = RecordMetadata{*p, c.offset};
  r.wake_ = c.wake;
  r.open_ = true;
  r.producer_ = impl_.get();
  r.topic_ = &ts;
  impl_->reservation_open = true;
  if (impl_->stats) [[unlikely]] {
    impl_->reserved_topic = ts.topic;
    impl_->reserved_bytes = l->payload;
  }
  return r;
}

Reservation::Reservation(Reservation&& o) noexcept
    : writer_(o.writer_),
      position_(o.position_),
      end_(o.end_),
      first_at_(o.first_at_),
      value_(o.value_),
      meta_(o.meta_),
      wake_(o.wake_),
      open_(std::exchange(o.open_, false)),
      producer_(o.producer_),
      topic_(o.topic_) {}

Reservation::~Reservation() { abort(); }

Status Reservation::commit() noexcept {
  if (!open_) return make_error(Errc::kInvalidArgument, "the reservation was already committed or aborted");
  auto* w = static_cast<shm::RingWriter*>(writer_);
  const shm::Claim c{meta_.offset, position_, end_, 1, first_at_, wake_};
  open_ = false;
  if (producer_) producer_->reservation_open = false;
  if (auto ok = w->commit(c); !ok) {
    if (producer_ && producer_->stats) producer_->reservation_done(*this, *w, false);
    return ok;
  }
  w->finish(c);
  w->notify(c);
  if (!producer_) return {};
  if (producer_->stats) producer_->reservation_done(*this, *w, true);
  return producer_->sent(*static_cast<Producer::Impl::TopicState*>(topic_), meta_.partition, meta_.offset + 1);
}

void Reservation::abort() noexcept {
  if (!open_) return;
  auto* w = static_cast<shm::RingWriter*>(writer_);
  w->abort(shm::Claim{meta_.offset, position_, end_, 1, first_at_, wake_});
  open_ = false;
  if (producer_) {
    producer_->reservation_open = false;
    if (producer_->stats) producer_->reservation_done(*this, *w, false);
  }
}

}  // namespace shmbus
