// The ring's state machine, one edge per test, with states forged in raw bytes:
// part-written records, padding at the wrap, a dead writer's claim, a lapped reader.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "shm/process.h"
#include "shm/ring.h"
#include "shm/segment.h"
#include "test_util.h"

using namespace shmbus;
using namespace shmbus::shm;

namespace {

// A private partition segment, not registered on any bus.
struct ForgedRing {
  explicit ForgedRing(std::uint64_t capacity = 4096, Retention retention = Retention::kOverwrite) {
    name = test::unique_bus("ring") + "~forged~0";
    RingParams p;
    p.capacity = capacity;
    p.retention = retention;
    const RingGeometry g = ring_geometry(capacity);
    auto s = Segment::create(SegmentSpec{name, SegmentKind::kPartition, kPartitionLayoutMajor, kPartitionLayoutMinor,
                                         g.segment_size, 0600, std::nullopt, false},
                             [&](std::byte* base) { ring_init(base, p); });
    EXPECT_TRUE(s) << s.error().message;
    seg = std::move(*s);
    ring = Ring(seg.data());
  }
  ~ForgedRing() { (void)Segment::remove(name); }

  // Writes a committed record of `value` bytes through the real writer.
  std::uint64_t produce(RingWriter& w, std::uint32_t value_len, std::uint8_t fill) {
    const std::uint32_t bytes = static_cast<std::uint32_t>(align8(kRecordHeaderSize + value_len));
    auto c = w.claim_one(bytes, 0);
    EXPECT_TRUE(c);
    const std::uint64_t at = ring.place(c->position, bytes);
    if (at != c->position)
      ring.header_at(c->position)->word.store(encode_word(c->offset, RecordState::kPadding, ring.salt()));
    RecordHeader* h = ring.header_at(at);
    h->length = bytes;
    h->key_len = kNullKey;
    h->headers_len = 0;
    h->value_len = value_len;
    std::memset(reinterpret_cast<std::byte*>(h) + kRecordHeaderSize, fill, value_len);
    w.publish(at, c->offset);
    return c->offset;
  }

  std::string name;
  Segment seg;
  Ring ring;
};

// A child process that claims records of these sizes and dies right after the claim CAS,
// before writing a byte. Returns once it is dead and reaped.
void claim_and_die(const Ring& ring, std::vector<std::uint32_t> sizes) {
  pid_t child = ::fork();
  if (child == 0) {
    RingWriter dead(ring);
    if (!dead.open()) ::_exit(3);
    test_hooks::after_claim = [] { ::_exit(9); };
    (void)dead.claim(sizes, 0);
    ::_exit(4);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_EQ(WEXITSTATUS(status), 9);
}

}  // namespace

TEST(Ring, CommittedRecordIsReadInOrder) {
  ForgedRing f;
  RingWriter w(f.ring);
  ASSERT_TRUE(w.open());
  EXPECT_EQ(f.produce(w, 10, 1), 0u);
  EXPECT_EQ(f.produce(w, 20, 2), 1u);
  RingReader r(f.ring);
  r.seek_earliest();
  const RecordHeader* h = nullptr;
  ASSERT_EQ(r.next(h), ReadStatus::kRecord);
  EXPECT_EQ(h->value_len, 10u);
  r.advance(h->length);
  ASSERT_EQ(r.next(h), ReadStatus::kRecord);
  EXPECT_EQ(h->value_len, 20u);
  EXPECT_EQ(r.offset(), 1u);
  r.advance(h->length);
  EXPECT_EQ(r.next(h), ReadStatus::kNone);
}

TEST(Ring, ClaimEndIsRoundedUpByItsLastRecordUnlessThatWouldPassTheLimit) {
  ForgedRing f;  // max_record = 1024
  RingWriter w(f.ring);
  ASSERT_TRUE(w.open());
  const std::uint32_t two[] = {104, 104};
  auto c = w.claim(two, 0, 64);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->position, 0u);
  EXPECT_EQ(c->end, 256u) << "208 bytes rounded up to 64: the last record takes 48 more";
  w.clear_intent();
  auto next = w.claim_one(48, 0, 64);
  ASSERT_TRUE(next);
  EXPECT_EQ(next->position, 256u) << "the next claim starts aligned";
  EXPECT_EQ(next->end, 320u);
  w.clear_intent();
  auto packed = w.claim_one(48, 0, 8);
  ASSERT_TRUE(packed);
  EXPECT_EQ(packed->end, 368u) << "end_align 8: nothing added";
  w.clear_intent();
  // 1016 + 56 bytes of slack would be over the ring's max record of 1024: left unaligned.
  auto big = w.claim_one(1016, 0, 64);
  ASSERT_TRUE(big);
  EXPECT_EQ(big->end - big->position, 1016u);
  w.clear_intent();
}

TEST(Ring, ClaimEndIsNotRoundedPastHalfTheRing) {
  ForgedRing f;  // capacity 4096, max_record 1024
  RingWriter w(f.ring);
  ASSERT_TRUE(w.open());
  ASSERT_TRUE(w.claim_one(48, 0, 8));  // leaves the tail off a 64-byte boundary
  w.clear_intent();
  // 2048 bytes from 48: rounding to 2112 would make the claim 2064 bytes, more than half
  // the ring, which is what a dead writer's claim may become as one ABORTED record.
  const std::uint32_t sizes[] = {1024, 984, 40};
  auto c = w.claim(sizes, 0, 64);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->position, 48u);
  EXPECT_EQ(c->end - c->position, 2048u);
  w.clear_intent();
}

TEST(Ring, PartWrittenRecordIsNotReturnedUntilCommitted) {
  ForgedRing f;
  RingWriter w(f.ring);
  ASSERT_TRUE(w.open());
  auto c = w.claim_one(64, 0);
  ASSERT_TRUE(c);
  RecordHeader* h = f.ring.header_at(c->position);
  // Forge a half-written record: claimed word, length set, payload partly there.
  h->word.store(encode_word(0, RecordState::kClaimed, f.ring.salt()));
  h->length = 64;
  RingReader r(f.ring);
  r.seek_earliest();
  const RecordHeader* out = nullptr;
  EXPECT_EQ(r.next(out), ReadStatus::kNone);
  EXPECT_TRUE(r.claim_in_flight());
  // Our own process is alive: the claim is not taken away from it.
  EXPECT_FALSE(f.ring.resolve_stall(0, c->position));
  h->key_len = kNullKey;
  h->value_len = 24;
  w.publish(c->position, 0);
  EXPECT_EQ(r.next(out), ReadStatus::kRecord);
}

TEST(Ring, StaleBytesOfAnOldLapAreNeverAHeader) {
  ForgedRing f;
  // Without the salt, these bytes would read as "offset 0, committed".
  auto* h = f.ring.header_at(0);
  h->word.store((0u << 8) | 2u);
  h->length = 48;
  RingReader r(f.ring);
  r.seek_earliest();
  const RecordHeader* out = nullptr;
  EXPECT_EQ(r.next(out), ReadStatus::kNone);
}

TEST(Ring, RecordThatWouldCrossTheEndIsPrecededByPadding) {
  ForgedRing f(4096);
  RingWriter w(f.ring);
  ASSERT_TRUE(w.open());
  // 4096 = 4 x 1000 + 96: four 1000-byte records, then a 200-byte one must wrap.
  RingReader r(f.ring);
  r.seek_earliest();
  const RecordHeader* h = nullptr;
  for (int i = 0; i < 4; ++i) {
    f.produce(w, 1000 - kRecordHeaderSize, 1);
    ASSERT_EQ(r.next(h), ReadStatus::kRecord);
    r.advance(h->length);
  }
  f.produce(w, 200 - kRecordHeaderSize, 2);
  EXPECT_EQ(f.ring.header_at(4000)->word.load() ^ f.ring.salt(), (4u << 8) | 3u) << "padding word with the next offset";
  ASSERT_EQ(r.next(h), ReadStatus::kRecord);
  EXPECT_EQ(r.position(), 4096u) << "the reader skipped the padding to the next lap";
  EXPECT_EQ(r.offset(), 4u);
  EXPECT_EQ(h->value_len, 200 - kRecordHeaderSize);
}

TEST(Ring, DeadWritersClaimBecomesAbortedAndOffsetsStayDense) {
  ForgedRing f;
  RingWriter w(f.ring);
  ASSERT_TRUE(w.open());
  f.produce(w, 16, 1);  // offset 0
  // A child process claims offset 1 and dies before writing a byte of it.
  claim_and_die(f.ring, {64});
  f.produce(w, 16, 3);  // offset 2, after the hole
  RingReader r(f.ring);
  r.seek_earliest();
  const RecordHeader* h = nullptr;
  ASSERT_EQ(r.next(h), ReadStatus::kRecord);
  r.advance(h->length);
  EXPECT_EQ(r.next(h), ReadStatus::kNone) << "offset 1 is claimed, not written";
  EXPECT_TRUE(r.claim_in_flight());
  EXPECT_TRUE(f.ring.resolve_stall(r.offset(), r.position())) << "the claim's writer is dead";
  ASSERT_EQ(r.next(h), ReadStatus::kRecord) << "the aborted offset is skipped";
  EXPECT_EQ(r.offset(), 2u);
  EXPECT_EQ(r.aborted_skipped(), 1u);
  EXPECT_EQ(f.ring.ctl()->stats.dead_claims_reclaimed.load(), 1u);
}

TEST(Ring, DeadWritersSlotIsReusedAfterItsClaimIsFinished) {
  ForgedRing f;
  claim_and_die(f.ring, {64});
  // Fill every other slot, so that the only way in is the dead writer's slot.
  std::vector<RingWriter> writers;
  for (std::uint32_t i = 0; i + 1 < kWriterSlots; ++i) {
    writers.emplace_back(f.ring);
    ASSERT_TRUE(writers.back().open());
  }
  RingWriter last(f.ring);
  ASSERT_TRUE(last.open()) << "the dead writer's slot is taken over";
  RingReader r(f.ring);
  r.seek_earliest();
  const RecordHeader* h = nullptr;
  EXPECT_EQ(r.next(h), ReadStatus::kNone);
  EXPECT_EQ(r.offset(), 1u) << "its claim (offset 0) was finished as aborted";
  RingWriter one_too_many(f.ring);
  auto st = one_too_many.open();
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code, Errc::kTooManyClients);
}

TEST(Ring, LappedReaderIsTold) {
  ForgedRing f(4096);
  RingWriter w(f.ring);
  ASSERT_TRUE(w.open());
  RingReader r(f.ring);
  r.seek_earliest();
  for (int i = 0; i < 200; ++i) f.produce(w, 100, static_cast<std::uint8_t>(i));
  const RecordHeader* h = nullptr;
  EXPECT_EQ(r.next(h), ReadStatus::kNone) << "the word alone cannot tell";
  EXPECT_TRUE(r.lapped());
  EXPECT_GT(f.ring.start_offset(), 0u);
  r.seek_earliest();
  ASSERT_EQ(r.next(h), ReadStatus::kRecord);
  EXPECT_EQ(r.offset(), f.ring.start_offset());
}

TEST(Ring, CopyIsDetectedAsTornWhenTheWriterLapsDuringIt) {
  ForgedRing f(4096);
  RingWriter w(f.ring);
  ASSERT_TRUE(w.open());
  f.produce(w, 100, 7);
  RingReader r(f.ring);
  r.seek_earliest();
  const RecordHeader* h = nullptr;
  ASSERT_EQ(r.next(h), ReadStatus::kRecord);
  const std::uint64_t start = r.position();
  EXPECT_TRUE(r.intact_from(start));
  // "During the copy", the producers go round the ring.
  for (int i = 0; i < 100; ++i) f.produce(w, 100, 8);
  EXPECT_FALSE(r.intact_from(start));
}

TEST(Ring, SeekFindsOffsetsThroughTheIndexAndRefusesGoneOnes) {
  ForgedRing f(4096);
  RingWriter w(f.ring);
  ASSERT_TRUE(w.open());
  for (int i = 0; i < 100; ++i) f.produce(w, 60, static_cast<std::uint8_t>(i));
  RingReader r(f.ring);
  const std::uint64_t start = f.ring.start_offset(), end = f.ring.end_offset();
  EXPECT_EQ(end, 100u);
  for (std::uint64_t o = start; o < end; ++o) {
    ASSERT_TRUE(r.seek(o)) << o;
    const RecordHeader* h = nullptr;
    ASSERT_EQ(r.next(h), ReadStatus::kRecord);
    EXPECT_EQ(r.offset(), o);
    EXPECT_EQ(reinterpret_cast<const std::uint8_t*>(h)[kRecordHeaderSize], o);
  }
  EXPECT_TRUE(r.seek(end));
  EXPECT_FALSE(r.seek(end + 1));
  if (start > 0) {
    EXPECT_FALSE(r.seek(start - 1));
  }
}

TEST(Ring, BlockRetentionWaitsForAGateAndTimesOut) {
  ForgedRing f(4096, Retention::kBlock);
  RingWriter w(f.ring);
  ASSERT_TRUE(w.open());
  // A gate at position 0, held by this (live) process.
  GateSlot* g = f.ring.gate(0);
  g->position.store(0);
  g->owner_start_ticks.store(self_process().start_ticks);
  g->owner_pid.store(self_process().pid);
  std::uint64_t produced = 0;
  for (;;) {
    const std::uint32_t bytes = 112;
    auto c = w.claim_one(bytes, 20'000'000);
    if (c) {
      RecordHeader* h = f.ring.header_at(c->position);
      h->length = bytes;
      h->key_len = kNullKey;
    }
    if (!c) {
      EXPECT_EQ(c.error().code, Errc::kTimedOut);
      EXPECT_NE(c.error().message.find("retention=block"), std::string::npos);
      break;
    }
    w.publish(c->position, c->offset);
    ++produced;
    ASSERT_LT(produced, 100u) << "the gate did not hold the producer back";
  }
  EXPECT_EQ(produced, 4096u / 112u) << "exactly one ring of records, nothing overwritten";
  g->owner_pid.store(0);
}

TEST(Ring, GateAddedDuringAReclaimMakesThatReclaimFail) {
  ForgedRing f(4096, Retention::kBlock);
  // A producer's reclaim decided on a view of the gates taken before this point...
  Pair64 seen = load128(&f.ring.ctl()->reclaim);
  // ...then a consumer puts up a gate and bumps the generation...
  const std::uint64_t start = f.ring.bump_gate_generation();
  EXPECT_EQ(start, 0u) << "nothing reclaimed yet: the gate at 0 is safe";
  // ...so that reclaim's CAS fails, and the producer looks at the gates again.
  Pair64 stale = seen;
  EXPECT_FALSE(cas128(&f.ring.ctl()->reclaim, stale, Pair64{seen.first + 1, 64}));
  EXPECT_EQ(f.ring.start_offset(), 0u) << "the generation is not part of the offset";
}

TEST(Ring, GateBelowAReclaimThatAlreadyHappenedIsTold) {
  ForgedRing f(4096, Retention::kBlock);
  RingWriter w(f.ring);
  ASSERT_TRUE(w.open());
  for (int i = 0; i < 200; ++i) f.produce(w, 100, 1);  // no gate yet: laps freely
  ASSERT_GT(f.ring.reclaim_position(), 0u);
  EXPECT_GT(f.ring.bump_gate_generation(), 0u) << "a gate at 0 now would be below the ring's start";
}

TEST(Ring, DeadWritersBatchLongerThanAnyRecordIsSkippedWhole) {
  ForgedRing f(8192);  // max record 2048, batches up to 4096
  RingWriter w(f.ring);
  ASSERT_TRUE(w.open());
  claim_and_die(f.ring, {1000, 1000, 1000});
  f.produce(w, 16, 5);  // offset 3, after the dead batch
  RingReader r(f.ring);
  r.seek_earliest();
  ASSERT_TRUE(f.ring.resolve_stall(0, 0));
  const RecordHeader* h = nullptr;
  ASSERT_EQ(r.next(h), ReadStatus::kRecord) << "a 3000-byte ABORTED record is not corrupt";
  EXPECT_EQ(r.offset(), 3u);
  EXPECT_EQ(r.aborted_skipped(), 3u);
}

TEST(Ring, FailedClaimLeavesNoIntentThatCouldMatchAnotherWritersClaim) {
  ForgedRing f;
  RingWriter a(f.ring), b(f.ring);
  ASSERT_TRUE(a.open());
  ASSERT_TRUE(b.open());
  // b claims offset 0 first; a, with a stale view of the tail, fails its CAS once and then
  // claims offset 1. No slot may still claim offset 0 but b's.
  auto cb = b.claim_one(64, 0);
  ASSERT_TRUE(cb);
  auto ca = a.claim_one(64, 0);
  ASSERT_TRUE(ca);
  EXPECT_EQ(ca->offset, 1u);
  std::uint32_t covering = 0;
  for (std::uint32_t i = 0; i < kWriterSlots; ++i) {
    const WriterSlot* s = f.ring.writer_slot(i);
    if (s->owner_pid.load() == 0 || s->intent_offset.load() == ~0ull) continue;
    covering += s->intent_offset.load() <= 0 && 0 < s->intent_offset.load() + s->intent_count.load();
  }
  EXPECT_EQ(covering, 1u);
}
