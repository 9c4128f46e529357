// The ring's protocol, one edge or failure class per test: states forged in raw bytes, and
// writer processes killed or stopped at each step of a claim (test hooks in shm/ring.h).
#include <gtest/gtest.h>

#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "shm/process.h"
#include "shm/ring.h"
#include "shm/segment.h"
#include "ring_fixture.h"
#include "test_util.h"

using namespace shmbus;
using namespace shmbus::shm;
using namespace std::chrono_literals;
using test::ForgedRing;

namespace {

// What a writer child does when it reaches the hooked step.
enum class Fate { kDie, kStop };
Fate g_fate;
void at_hook() {
  if (g_fate == Fate::kDie) ::_exit(9);
  ::raise(SIGSTOP);
}

enum class Step { kAfterEntryClaim, kAfterClaim, kBeforeCommit, kAfterCommit };

// A child process that claims records of these sizes and, at `step`, dies or stops itself.
// A stopped child, once continued, finishes: exit 0 when its commit went through, 7 when it
// was refused with an error naming the claim timeout, 8 when refused otherwise. Returns the
// child's pid once it is dead (and reaped) or stopped.
pid_t writer_child(ForgedRing& f, std::vector<std::uint32_t> sizes, Step step, Fate fate, bool exclusive = false) {
  pid_t child = ::fork();
  if (child == 0) {
    RingWriter w(f.ring);
    if (!w.open(f.seg, exclusive)) ::_exit(3);
    g_fate = fate;
    switch (step) {
      case Step::kAfterEntryClaim: test_hooks::after_entry_claim = at_hook; break;
      case Step::kAfterClaim: test_hooks::after_claim = at_hook; break;
      case Step::kBeforeCommit: test_hooks::before_commit = at_hook; break;
      case Step::kAfterCommit: test_hooks::after_commit = at_hook; break;
    }
    auto c = w.claim(sizes, 0);
    if (!c) ::_exit(4);
    std::uint64_t cur = c->position;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      const std::uint64_t at = f.ring.place(cur, sizes[i]);
      if (at != cur && i > 0) w.publish_padding(cur, c->offset + i);
      RecordHeader* h = f.ring.header_at(at);
      h->length.store(i + 1 == sizes.size() ? static_cast<std::uint32_t>(c->end - at) : sizes[i]);
      h->key_len = kNullKey;
      h->headers_len = 0;
      h->value_len = 8;
      std::memset(reinterpret_cast<std::byte*>(h) + kRecordHeaderSize, 0x5a, 8);
      cur = at + sizes[i];
    }
    if (auto ok = w.commit(*c); !ok) {
      // Refused: it must say that the claim timeout aborted it, and how long that is.
      const std::string& m = ok.error().message;
      const std::string timeout = "longer than the claim timeout (" + std::to_string(f.ring.claim_timeout_ns() / 1'000'000) + " ms)";
      ::_exit(ok.error().code == Errc::kTimedOut && m.find(timeout) != std::string::npos ? 7 : 8);
    }
    cur = c->first_at + sizes[0];
    for (std::size_t i = 1; i < sizes.size(); ++i) {
      const std::uint64_t at = f.ring.place(cur, sizes[i]);
      w.publish(at, c->offset + i);
      cur = at + sizes[i];
    }
    w.finish(*c);
    ::_exit(0);
  }
  int status = 0;
  EXPECT_EQ(::waitpid(child, &status, WUNTRACED), child);
  if (fate == Fate::kDie) EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 9) << status;
  else EXPECT_TRUE(WIFSTOPPED(status)) << status;
  return child;
}

int continue_and_reap(pid_t child) {
  ::kill(child, SIGCONT);
  int status = 0;
  EXPECT_EQ(::waitpid(child, &status, 0), child);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

// ---- the ordinary edges ----

TEST(Ring, CommittedRecordIsReadInOrder) {
  ForgedRing f;
  RingWriter w = f.writer();
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
  RingWriter w = f.writer();
  const std::uint32_t two[] = {104, 104};
  auto c = w.claim(two, 0, 64);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->position, 0u);
  EXPECT_EQ(c->end, 256u) << "208 bytes rounded up to 64: the last record takes 48 more";
  w.abort(*c);
  auto next = w.claim_one(48, 0, 64);
  ASSERT_TRUE(next);
  EXPECT_EQ(next->position, 256u) << "the next claim starts aligned";
  EXPECT_EQ(next->end, 320u);
  w.abort(*next);
  auto packed = w.claim_one(48, 0, 8);
  ASSERT_TRUE(packed);
  EXPECT_EQ(packed->end, 368u) << "end_align 8: nothing added";
  w.abort(*packed);
  // 1016 + 56 bytes of slack would be over the ring's max record of 1024: left unaligned.
  auto big = w.claim_one(1016, 0, 64);
  ASSERT_TRUE(big);
  EXPECT_EQ(big->end - big->position, 1016u);
  w.abort(*big);
}

TEST(Ring, ClaimEndIsNotRoundedPastHalfTheRing) {
  ForgedRing f;  // capacity 4096, max_record 1024
  RingWriter w = f.writer();
  auto first = w.claim_one(48, 0, 8);  // leaves the tail off a 64-byte boundary
  ASSERT_TRUE(first);
  w.abort(*first);
  const std::uint32_t sizes[] = {1024, 984, 40};
  auto c = w.claim(sizes, 0, 64);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->position, 48u);
  EXPECT_EQ(c->end - c->position, 2048u);
  w.abort(*c);
}

TEST(Ring, ClaimedRecordIsNotReturnedUntilCommittedAndALiveWriterKeepsIt) {
  ForgedRing f;
  RingWriter w = f.writer();
  auto c = w.claim_one(64, 0);
  ASSERT_TRUE(c);
  f.write(*c, 24, 7);
  RingReader r(f.ring);
  r.seek_earliest();
  const RecordHeader* out = nullptr;
  EXPECT_EQ(r.next(out), ReadStatus::kNone);
  EXPECT_TRUE(r.claim_in_flight());
  // Its writer holds its slot lock: the claim is not taken from it before the timeout.
  EXPECT_EQ(r.unstick(&f.lock, monotonic_ns()), ReadStatus::kNone);
  EXPECT_EQ(r.unstick(&f.lock, monotonic_ns() + kDefaultClaimTimeoutNs / 2), ReadStatus::kNone);
  ASSERT_TRUE(w.commit(*c));
  EXPECT_EQ(r.next(out), ReadStatus::kNone) << "committed, first word not stored yet";
  w.finish(*c);
  EXPECT_EQ(r.next(out), ReadStatus::kRecord);
}

TEST(Ring, StaleBytesOfAnOldLapAreNeverAHeader) {
  ForgedRing f;
  // Without the salt, these bytes would read as "offset 0, committed".
  auto* h = f.ring.header_at(0);
  h->word.store((0u << 8) | 2u);
  h->length.store(48);
  RingReader r(f.ring);
  r.seek_earliest();
  const RecordHeader* out = nullptr;
  EXPECT_EQ(r.next(out), ReadStatus::kNone);
}

// Found by fuzz_segment: a start cursor off the 8-byte grid made next() read a header at an
// odd address (UBSan: misaligned member access).
TEST(Ring, CursorsOffTheRecordGridAreRefusedAtOpenAndNeverReadFrom) {
  ForgedRing f;
  RingWriter w = f.writer();
  f.produce(w, 10, 1);
  ASSERT_TRUE(ring_validate(f.seg));
  f.ring.ctl()->reclaim.second = 0x6b;
  auto bad = ring_validate(f.seg);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("off the 8-byte record grid (start byte 107"), std::string::npos) << bad.error().message;
  // Forged after a reader opened the ring: its cursor still stands on the grid.
  RingReader r(f.ring);
  r.seek_earliest();
  EXPECT_EQ(r.position() & 7, 0u);
  f.ring.ctl()->tail.second = 0x6b + 4096;
  r.seek_latest();
  EXPECT_EQ(r.position() & 7, 0u);
  f.ring.ctl()->reclaim.second = 4096;  // start past the end
  f.ring.ctl()->tail.second = 64;
  bad = ring_validate(f.seg);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("is past its end"), std::string::npos) << bad.error().message;
}

TEST(Ring, RecordThatWouldCrossTheEndIsPrecededByPadding) {
  ForgedRing f(4096);
  RingWriter w = f.writer();
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
  EXPECT_EQ(f.ring.word_at(4000), Ring::decoded(4, RecordState::kPadding)) << "padding word with the next offset";
  ASSERT_EQ(r.next(h), ReadStatus::kRecord);
  EXPECT_EQ(r.position(), 4096u) << "the reader skipped the padding to the next lap";
  EXPECT_EQ(r.offset(), 4u);
  EXPECT_EQ(h->value_len, 200 - kRecordHeaderSize);
}

TEST(Ring, LappedReaderIsTold) {
  ForgedRing f(4096);
  RingWriter w = f.writer();
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
  RingWriter w = f.writer();
  f.produce(w, 100, 7);
  RingReader r(f.ring);
  r.seek_earliest();
  const RecordHeader* h = nullptr;
  ASSERT_EQ(r.next(h), ReadStatus::kRecord);
  const std::uint64_t start = r.position();
  EXPECT_TRUE(r.intact_from(start));
  for (int i = 0; i < 100; ++i) f.produce(w, 100, 8);  // "during the copy", a lap goes by
  EXPECT_FALSE(r.intact_from(start));
}

TEST(Ring, SeekFindsOffsetsThroughTheIndexAndRefusesGoneOnes) {
  ForgedRing f(4096);
  RingWriter w = f.writer();
  for (int i = 0; i < 100; ++i) f.produce(w, 60, static_cast<std::uint8_t>(i));
  RingReader r(f.ring);
  const std::uint64_t start = f.ring.start_offset(), end = f.ring.end_offset();
  EXPECT_EQ(end, 100u);
  for (std::uint64_t o = start; o < end; ++o) {
    ASSERT_EQ(r.seek(o), ReadStatus::kRecord) << o;
    const RecordHeader* h = nullptr;
    ASSERT_EQ(r.next(h), ReadStatus::kRecord);
    EXPECT_EQ(r.offset(), o);
    EXPECT_EQ(reinterpret_cast<const std::uint8_t*>(h)[kRecordHeaderSize], o);
  }
  EXPECT_EQ(r.seek(end), ReadStatus::kRecord);
  EXPECT_EQ(r.seek(end + 1), ReadStatus::kLapped);
  ASSERT_GT(start, 0u);
  EXPECT_EQ(r.seek(start - 1), ReadStatus::kLapped);
}

TEST(Ring, SeekPastAnUnfinishedClaimIsPendingNotAWrongPosition) {
  ForgedRing f(8192);
  RingWriter a = f.writer(), b = f.writer();
  auto open = a.claim_one(64, 0);  // offset 0, unfinished
  ASSERT_TRUE(open);
  f.write(*open, 24, 1);
  f.produce(b, 24, 2);  // offset 1
  f.produce(b, 24, 3);  // offset 2
  f.ring.index_at(2).store(~0ull);  // the index misses (as with records under 64 bytes)
  RingReader r(f.ring);
  EXPECT_EQ(r.seek(2), ReadStatus::kNone) << "where offset 2 lies is not known before offset 0 is finished";
  ASSERT_TRUE(a.commit(*open));
  a.finish(*open);
  ASSERT_EQ(r.seek(2), ReadStatus::kRecord);
  EXPECT_EQ(r.offset(), 2u);
  const RecordHeader* h = nullptr;
  ASSERT_EQ(r.next(h), ReadStatus::kRecord);
  EXPECT_EQ(reinterpret_cast<const std::uint8_t*>(h)[kRecordHeaderSize], 3);
}

TEST(Ring, SeekIntoAnAbortedClaimLandsAfterIt) {
  ForgedRing f(8192);
  RingWriter w = f.writer();
  const std::uint32_t three[] = {64, 64, 64};
  auto c = w.claim(three, 0);
  ASSERT_TRUE(c);
  w.abort(*c);
  f.produce(w, 24, 9);  // offset 3
  RingReader r(f.ring);
  ASSERT_EQ(r.seek(1), ReadStatus::kRecord);
  EXPECT_EQ(r.offset(), 3u) << "offsets 0..2 were aborted: the next record is 3";
}

// ---- gates ----

TEST(Ring, BlockRetentionWaitsForAGateAndTimesOut) {
  ForgedRing f(4096, Retention::kBlock);
  RingWriter w = f.writer();
  RingReader gate_reader(f.ring);
  gate_reader.seek_earliest();
  GateSlot* g = take_process_gate(f.ring, f.lock, gate_reader);
  ASSERT_NE(g, nullptr);
  std::uint64_t produced = 0;
  for (;;) {
    auto c = w.claim_one(112, 20'000'000);
    if (!c) {
      EXPECT_EQ(c.error().code, Errc::kTimedOut);
      EXPECT_NE(c.error().message.find("retention=block"), std::string::npos) << c.error().message;
      break;
    }
    f.write(*c, 16, 1);
    ASSERT_TRUE(w.commit(*c));
    w.finish(*c);
    ++produced;
    ASSERT_LT(produced, 100u) << "the gate did not hold the producer back";
  }
  EXPECT_EQ(produced, 4096u / 112u) << "exactly one ring of records, nothing overwritten";
  release_process_gate(f.ring, f.lock, g);
}

TEST(Ring, GateAddedDuringAReclaimMakesThatReclaimFail) {
  ForgedRing f(4096, Retention::kBlock);
  Pair64 seen = load128(&f.ring.ctl()->reclaim);  // a reclaim decided before the gate
  const std::uint64_t start = f.ring.bump_gate_generation();
  EXPECT_EQ(start, 0u) << "nothing reclaimed yet: the gate at 0 is safe";
  Pair64 stale = seen;
  EXPECT_FALSE(cas128(&f.ring.ctl()->reclaim, stale, Pair64{seen.first + 1, 64}));
  EXPECT_EQ(f.ring.start_offset(), 0u) << "the generation is not part of the offset";
}

TEST(Ring, GateBelowAReclaimThatAlreadyHappenedIsTold) {
  ForgedRing f(4096, Retention::kBlock);
  RingWriter w = f.writer();
  for (int i = 0; i < 200; ++i) f.produce(w, 100, 1);  // no gate yet: laps freely
  ASSERT_GT(f.ring.reclaim_position(), 0u);
  EXPECT_GT(f.ring.bump_gate_generation(), 0u) << "a gate at 0 now would be below the ring's start";
}

TEST(Ring, GateOfADeadConsumerIsReleasedByTheProducerItBlocks) {
  ForgedRing f(4096, Retention::kBlock);
  pid_t child = ::fork();
  if (child == 0) {
    auto l = SegmentLock::open(f.seg);
    RingReader r(f.ring);
    r.seek_earliest();
    ::_exit(l && take_process_gate(f.ring, *l, r) ? 0 : 1);  // dies holding its gate
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_EQ(WEXITSTATUS(status), 0);
  RingWriter w = f.writer();
  for (int i = 0; i < 100; ++i) ASSERT_NE(f.produce(w, 100, 1), ~0ull);  // laps: the dead gate went away
  EXPECT_GT(f.ring.start_offset(), 0u);
  EXPECT_EQ(f.stats().gates_reaped.load(), 1u);
}

// A reader reading a committed claim by its entry (its writer died before storing the words)
// may stop between two of its records; its gate then stands inside the claim. The reclaim
// walk steps over such a claim whole: it must not step past the gate (it did: producers
// reclaimed past the reader and overwrote the rest of the claim under it).
TEST(Ring, ReclaimDoesNotStepOverAClaimWithAGateInsideIt) {
  ForgedRing f(4096, Retention::kBlock);
  RingReader r(f.ring);
  r.seek_earliest();
  GateSlot* g = take_process_gate(f.ring, f.lock, r);
  ASSERT_NE(g, nullptr);
  writer_child(f, {256, 256, 256, 256}, Step::kAfterCommit, Fate::kDie);  // committed, no words
  const RecordHeader* h = nullptr;
  std::uint32_t len = 0;
  ASSERT_EQ(r.next(h, len), ReadStatus::kNone);
  ASSERT_EQ(r.unstick(&f.lock, monotonic_ns()), ReadStatus::kRecord) << "read by its entry";
  ASSERT_EQ(r.next(h, len), ReadStatus::kRecord);
  r.advance(len);  // offset 0 read; the reader (and its gate) now stand at offset 1, inside the claim
  ASSERT_EQ(r.offset(), 1u);
  g->position.store(r.position(), std::memory_order_release);
  RingWriter w = f.writer();
  EXPECT_LT(f.produce_until_held(w), 100) << "the gate did not hold the producer back";
  EXPECT_LE(f.ring.reclaim_position(), r.position()) << "producers reclaimed past a gate";
  EXPECT_FALSE(r.lapped());
  for (std::uint64_t o = 1; o < 4; ++o) {
    ASSERT_EQ(r.next(h, len), ReadStatus::kRecord) << "offset " << o;
    EXPECT_EQ(r.offset(), o);
    EXPECT_EQ(h->value_len, 8u) << "offset " << o << " was overwritten";
    r.advance(len);
  }
  release_process_gate(f.ring, f.lock, g);
}

// ---- producers killed or stopped at each step of a claim ----

TEST(Ring, WriterKilledBetweenItsEntryAndTheTailIsAbortedAndTheTailMoved) {
  ForgedRing f;
  RingWriter w = f.writer();
  f.produce(w, 16, 1);  // offset 0
  writer_child(f, {64, 64}, Step::kAfterEntryClaim, Fate::kDie);  // offsets 1, 2: the tail still says 1
  EXPECT_EQ(f.ring.end_offset(), 1u);
  f.produce(w, 16, 3);  // the producer helps the tail past the dead claim: offset 3
  EXPECT_EQ(f.ring.end_offset(), 4u);
  RingReader r(f.ring);
  r.seek_earliest();
  EXPECT_EQ(f.read(r, 2), (std::vector<std::uint64_t>{0, 3}));
  EXPECT_EQ(r.aborted_skipped(), 2u);
  EXPECT_EQ(f.ring.ctl()->stats.dead_claims_reclaimed.load(), 1u);
}

TEST(Ring, WriterKilledRightAfterItsClaimIsAbortedAtOnce) {
  ForgedRing f;
  RingWriter w = f.writer();
  f.produce(w, 16, 1);
  writer_child(f, {64}, Step::kAfterClaim, Fate::kDie);
  f.produce(w, 16, 3);
  RingReader r(f.ring);
  r.seek_earliest();
  EXPECT_EQ(f.read(r, 2), (std::vector<std::uint64_t>{0, 2}));
  EXPECT_EQ(r.aborted_skipped(), 1u);
  EXPECT_EQ(f.ring.ctl()->stats.dead_claims_reclaimed.load(), 1u);
}

TEST(Ring, WriterKilledWithEveryByteWrittenButNotCommittedIsAborted) {
  ForgedRing f(8192);  // max record 2048: a batch of 3000 bytes is fine
  RingWriter w = f.writer();
  writer_child(f, {1000, 1000, 1000}, Step::kBeforeCommit, Fate::kDie);
  f.produce(w, 16, 5);  // offset 3, after the dead batch
  RingReader r(f.ring);
  r.seek_earliest();
  EXPECT_EQ(f.read(r, 1), (std::vector<std::uint64_t>{3})) << "a 3000-byte aborted claim is skipped whole";
  EXPECT_EQ(r.aborted_skipped(), 3u);
}

TEST(Ring, WriterKilledAfterItsCommitLosesNothingItCommitted) {
  ForgedRing f(8192);
  RingWriter w = f.writer();
  writer_child(f, {64, 64, 64}, Step::kAfterCommit, Fate::kDie);  // committed, no word stored
  f.produce(w, 16, 5);  // offset 3
  RingReader r(f.ring);
  r.seek_earliest();
  EXPECT_EQ(f.read(r, 4), (std::vector<std::uint64_t>{0, 1, 2, 3})) << "the committed batch is read by its entry";
  EXPECT_EQ(r.aborted_skipped(), 0u);
  // A reader on a read-only view reads it too (it needs no lock for this).
  RingReader ro(f.ring);
  ro.seek_earliest();
  EXPECT_EQ(f.read(ro, 4, false).size(), 4u);
  // And producers go round the ring past it.
  for (int i = 0; i < 200; ++i) f.produce(w, 100, 6);
  EXPECT_GT(f.ring.start_offset(), 3u);
}

TEST(Ring, WriterKilledAfterCommittingAClaimThatStartsWithPaddingLosesNothing) {
  ForgedRing f(4096);
  RingWriter w = f.writer();
  for (int i = 0; i < 4; ++i) f.produce(w, 1000 - kRecordHeaderSize, 1);  // up to 4000
  writer_child(f, {200}, Step::kAfterCommit, Fate::kDie);                 // at 4096, padding at 4000
  RingReader r(f.ring);
  r.seek_earliest();
  EXPECT_EQ(f.read(r, 4), (std::vector<std::uint64_t>{1, 2, 3, 4})) << "offset 0 made room for the claim";
  EXPECT_EQ(r.position(), 4096u + 200u);
}

TEST(Ring, StoppedWriterIsTimedOutItsLateCommitFailsAndItsBytesWaitForIt) {
  ForgedRing f(4096, Retention::kOverwrite, 50'000'000);  // claim timeout 50 ms
  RingWriter w = f.writer();
  f.produce(w, 16, 1);  // offset 0
  const pid_t child = writer_child(f, {512}, Step::kBeforeCommit, Fate::kStop);  // offset 1, stopped
  f.produce(w, 16, 2);  // offset 2
  RingReader r(f.ring);
  r.seek_earliest();
  // Readers are held for the claim timeout, not for as long as the writer is stopped.
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(f.read(r, 2), (std::vector<std::uint64_t>{0, 2}));
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 50ms);
  EXPECT_EQ(f.stats().claims_timed_out.load(), 1u);
  // A lap later, its bytes are not reused while it may still write them: producers wait
  // (here up to 100 ms) and say who holds them.
  std::string error;
  for (int i = 0; i < 100 && error.empty(); ++i) {
    auto c = w.claim_one(256, 100'000'000);
    if (!c) {
      error = c.error().message;
      break;
    }
    f.write(*c, 16, 3);
    ASSERT_TRUE(w.commit(*c));
    w.finish(*c);
  }
  EXPECT_NE(error.find("pid " + std::to_string(child)), std::string::npos) << error;
  EXPECT_NE(error.find("stopped inside its claim"), std::string::npos) << error;
  EXPECT_GE(f.stats().quarantine_waits.load(), 1u);
  // Continued, the writer learns that it lost, and its bytes are free.
  EXPECT_EQ(continue_and_reap(child), 7) << "its commit was refused";
  EXPECT_EQ(f.stats().late_commits_refused.load(), 1u);
  for (int i = 0; i < 100; ++i) f.produce(w, 100, 4);
  RingReader fresh(f.ring);
  fresh.seek_earliest();
  EXPECT_FALSE(f.read(fresh, 10).empty());
}

TEST(Ring, WriterStoppedBetweenEntryAndTailDoesNotStopOthers) {
  ForgedRing f(4096, Retention::kOverwrite, 50'000'000);
  RingWriter w = f.writer();
  const pid_t child = writer_child(f, {64}, Step::kAfterEntryClaim, Fate::kStop);
  f.produce(w, 16, 2);  // helps the tail past the stopped claim: offset 1
  RingReader r(f.ring);
  r.seek_earliest();
  EXPECT_EQ(f.read(r, 1), (std::vector<std::uint64_t>{1}));
  EXPECT_EQ(f.stats().claims_timed_out.load(), 1u);
  EXPECT_EQ(continue_and_reap(child), 7);
}

TEST(Ring, WriterStoppedBrieflyKeepsItsClaim) {
  ForgedRing f;  // claim timeout 1 s
  RingWriter w = f.writer();
  const pid_t child = writer_child(f, {64}, Step::kBeforeCommit, Fate::kStop);
  RingReader r(f.ring);
  r.seek_earliest();
  const RecordHeader* h = nullptr;
  EXPECT_EQ(r.next(h), ReadStatus::kNone);
  EXPECT_EQ(r.unstick(&f.lock, monotonic_ns()), ReadStatus::kNone) << "alive (lock held): not aborted";
  EXPECT_EQ(continue_and_reap(child), 0) << "its commit went through";
  EXPECT_EQ(f.read(r, 1), (std::vector<std::uint64_t>{0}));
}

TEST(Ring, SlotOfADeadWriterIsTakenOverAndItsClaimAborted) {
  ForgedRing f;
  writer_child(f, {64}, Step::kAfterClaim, Fate::kDie);
  // Fill every other slot, so that the only way in is the dead writer's slot.
  std::vector<RingWriter> writers;
  for (std::uint32_t i = 0; i + 1 < kWriterSlots; ++i) writers.push_back(f.writer());
  RingWriter last(f.ring);
  ASSERT_TRUE(last.open(f.seg)) << "the dead writer's slot is taken over";
  EXPECT_EQ(f.stats().slots_recovered.load(), 1u);
  EXPECT_EQ(f.ring.ctl()->stats.dead_claims_reclaimed.load(), 1u) << "its claim was aborted, not left to look alive";
  f.produce(last, 16, 1);
  RingReader r(f.ring);
  r.seek_earliest();
  EXPECT_EQ(f.read(r, 1), (std::vector<std::uint64_t>{1}));
  RingWriter one_too_many(f.ring);
  auto st = one_too_many.open(f.seg);
  ASSERT_FALSE(st);
  EXPECT_EQ(st.error().code, Errc::kTooManyClients);
}

TEST(Ring, TakingOverADeadSlotNeverAbortsALiveWritersClaim) {
  ForgedRing f;
  RingWriter live = f.writer();  // slot 0
  // A writer (slot 1) dies after naming offset 0 in its slot, before it won the entry...
  pid_t child = ::fork();
  if (child == 0) {
    RingWriter dead(f.ring);
    if (!dead.open(f.seg) || dead.slot_index() == live.slot_index()) ::_exit(3);
    f.ring.writer_slot(dead.slot_index())->claim_offset.store(0);
    f.ring.writer_slot(dead.slot_index())->claim_position.store(0);
    ::_exit(9);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_EQ(WEXITSTATUS(status), 9);
  // ...and the live writer wins offset 0 at position 0.
  auto c = live.claim_one(64, 0);
  ASSERT_TRUE(c);
  ASSERT_EQ(c->offset, 0u);
  std::vector<RingWriter> others;
  for (std::uint32_t i = 0; i + 1 < kWriterSlots; ++i) others.push_back(f.writer());  // one takes the dead slot
  EXPECT_EQ(f.stats().slots_recovered.load(), 1u);
  EXPECT_EQ(f.ring.ctl()->stats.dead_claims_reclaimed.load(), 0u);
  f.write(*c, 24, 1);
  EXPECT_TRUE(live.commit(*c)) << "the live writer's claim was not taken for the dead one's";
}

TEST(Ring, ForkedChildDoesNotKeepItsParentsClaimAlive) {
  ForgedRing f;
  pid_t parent = ::fork();
  if (parent == 0) {
    RingWriter w(f.ring);
    if (!w.open(f.seg) || !w.claim_one(64, 0)) ::_exit(3);
    int ready[2];
    if (::pipe(ready) != 0) ::_exit(5);
    if (::fork() == 0) {  // the grandchild lives on, with copies of every descriptor
      ::close(STDOUT_FILENO);  // nor does it hold the test's output open
      ::close(STDERR_FILENO);
      (void)!::write(ready[1], "r", 1);  // running: its fork handlers have run
      ::sleep(2);
      ::_exit(0);
    }
    char c;
    (void)!::read(ready[0], &c, 1);
    ::_exit(9);  // dies inside its claim
  }
  int status = 0;
  ASSERT_EQ(::waitpid(parent, &status, 0), parent);
  ASSERT_EQ(WEXITSTATUS(status), 9);
  RingReader r(f.ring);
  r.seek_earliest();
  EXPECT_EQ(r.unstick(&f.lock, monotonic_ns()), ReadStatus::kRecord) << "aborted at once: its writer is dead";
  EXPECT_EQ(f.ring.ctl()->stats.dead_claims_reclaimed.load(), 1u);
}

TEST(Ring, WriterWhoseMainThreadExitedIsStillAlive) {
  ForgedRing f;
  pid_t child = ::fork();
  if (child == 0) {
    static ForgedRing* ring = &f;
    pthread_t t;
    ::pthread_create(&t, nullptr, [](void*) -> void* {
      RingWriter w(ring->ring);
      if (!w.open(ring->seg)) ::_exit(3);
      auto c = w.claim_one(64, 0);
      if (!c) ::_exit(4);
      ::usleep(300'000);  // a slow writer, its process a zombie leader meanwhile
      ring->write(*c, 24, 1);
      if (!w.commit(*c)) ::_exit(7);
      w.finish(*c);
      ::_exit(0);
    }, nullptr);
    // The main thread alone ends (the exit system call, not exit_group): the process is a
    // zombie leader whose other thread still writes. (pthread_exit would unwind through
    // gtest's handlers.)
    ::syscall(SYS_exit, 0);
  }
  RingReader r(f.ring);
  r.seek_earliest();
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(r.unstick(&f.lock, monotonic_ns()), ReadStatus::kNone) << "not judged dead";
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(f.read(r, 1), (std::vector<std::uint64_t>{0}));
  EXPECT_EQ(f.ring.ctl()->stats.dead_claims_reclaimed.load(), 0u);
}

// ---- consumers that die asleep ----

TEST(Ring, WaiterBitOfAConsumerKilledAsleepIsClearedByProducers) {
  ForgedRing f;
  pid_t child = ::fork();
  if (child == 0) {
    auto l = SegmentLock::open(f.seg);
    const int slot = l ? take_waiter_slot(f.ring, *l) : -1;
    if (slot < 0) ::_exit(1);
    f.ring.ctl()->notify.waiters.fetch_or(std::uint64_t{1} << slot);
    ::_exit(0);  // "killed while asleep in poll()"
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_EQ(WEXITSTATUS(status), 0);
  ASSERT_NE(f.ring.ctl()->notify.waiters.load(), 0u);
  RingWriter w = f.writer();
  for (int i = 0; i < 200; ++i) {
    auto c = w.claim_one(64, 0);
    ASSERT_TRUE(c);
    f.write(*c, 24, 1);
    ASSERT_TRUE(w.commit(*c));
    w.finish(*c);
    w.notify(*c);
  }
  EXPECT_EQ(f.ring.ctl()->notify.waiters.load(), 0u) << "sends stopped paying a futex wake-up";
  EXPECT_EQ(f.stats().waiters_reaped.load(), 1u);
}

TEST(Ring, WaiterSlotOfADeadConsumerIsCleanWhenTakenAgain) {
  ForgedRing f;
  pid_t child = ::fork();
  if (child == 0) {
    auto l = SegmentLock::open(f.seg);
    const int slot = l ? take_waiter_slot(f.ring, *l) : -1;
    if (slot != 0) ::_exit(1);
    f.ring.ctl()->notify.waiters.fetch_or(1);
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(take_waiter_slot(f.ring, f.lock), 0);
  EXPECT_EQ(f.ring.ctl()->notify.waiters.load(), 0u);
}

// ---- forged bytes: an error naming the place, never a hang or a wrong record ----

TEST(Ring, ForgedPaddingAtTheStartOfALapIsCorruptNotALoop) {
  ForgedRing f;
  f.ring.header_at(0)->word.store(encode_word(0, RecordState::kPadding, f.ring.salt()));
  f.ring.ctl()->tail = Pair64{2, 128};
  RingReader r(f.ring);
  r.seek_earliest();
  const RecordHeader* h = nullptr;
  EXPECT_EQ(r.next(h), ReadStatus::kCorrupt);
  EXPECT_EQ(r.next(h), ReadStatus::kCorrupt) << "and again: the reader does not move on it";
  EXPECT_STREQ(r.problem(), "a padding word where no padding can stand (byte 0 of the lap; a record of max 1024 bytes would "
                            "still fit)");
  EXPECT_NE(r.seek(1), ReadStatus::kRecord) << "a seek walking over it ends too";
}

// A padding word where no padding can stand (early in a lap: a record of max_record bytes
// would still fit) is forged or stale: the reader does not jump on it. If producers lapped
// the reader meanwhile, it is told so (the kill-stress test met this: a lapped reader jumped
// on such a word and then reported the next lap's record as corrupt).
TEST(Ring, PaddingWordWhereNoPaddingCanStandIsNotJumpedOn) {
  ForgedRing f;  // 4096 bytes
  RingWriter w = f.writer();
  f.produce(w, 40, 1);
  RingReader r(f.ring);
  r.seek_earliest();
  const RecordHeader* h = nullptr;
  std::uint32_t len = 0;
  ASSERT_EQ(r.next(h, len), ReadStatus::kRecord);
  r.advance(len);
  const std::uint64_t pos = r.position(), offset = r.offset();
  ASSERT_LT((pos & f.ring.mask()) + f.ring.max_record(), f.ring.capacity() + 1);
  f.ring.header_at(pos)->word.store(encode_word(offset, RecordState::kPadding, f.ring.salt()));
  EXPECT_EQ(r.next(h, len), ReadStatus::kCorrupt) << "a padding word early in a lap is not believed";
  EXPECT_EQ(r.position(), pos) << "and the reader did not jump to the next lap";
  // Producers lap the reader; a word of its offset left (or forged) at its place is no
  // reason to jump either: the reader is told it was lapped.
  for (int i = 0; i < 200; ++i) f.produce(w, 40, 2);
  ASSERT_TRUE(r.lapped());
  f.ring.header_at(pos)->word.store(encode_word(offset, RecordState::kPadding, f.ring.salt()));
  EXPECT_EQ(r.next(h, len), ReadStatus::kLapped);
  EXPECT_EQ(r.position(), pos);
}

// The reclaim walk's twin of the test above: it jumped to the next lap on such a word, past
// a gate standing later in the lap, and producers overwrote the records the gate held.
TEST(Ring, ReclaimWalkDoesNotJumpOnPaddingWhereNoPaddingCanStand) {
  ForgedRing f(4096, Retention::kBlock);
  RingReader r(f.ring);
  r.seek_earliest();
  GateSlot* g = take_process_gate(f.ring, f.lock, r);
  ASSERT_NE(g, nullptr);
  RingWriter w = f.writer();
  for (int i = 0; i < 6; ++i) f.produce(w, 40, static_cast<std::uint8_t>(i));
  const RecordHeader* h = nullptr;
  std::uint32_t len = 0;
  ASSERT_EQ(r.next(h, len), ReadStatus::kRecord);
  r.advance(len);
  const std::uint64_t p1 = r.position();
  ASSERT_EQ(r.next(h, len), ReadStatus::kRecord);
  r.advance(len);
  g->position.store(r.position(), std::memory_order_release);  // read 0 and 1; the gate at 2
  ASSERT_LT((p1 & f.ring.mask()) + f.ring.max_record(), f.ring.capacity() + 1);
  f.ring.header_at(p1)->word.store(encode_word(1, RecordState::kPadding, f.ring.salt()));
  EXPECT_LT(f.produce_until_held(w), 100) << "the gate did not hold the producer back";
  EXPECT_LE(f.ring.reclaim_position(), r.position()) << "the walk jumped past the gate";
  EXPECT_FALSE(r.lapped());
  for (std::uint64_t o = 2; o < 6; ++o) {
    ASSERT_EQ(r.next(h, len), ReadStatus::kRecord) << "offset " << o;
    EXPECT_EQ(r.offset(), o);
    EXPECT_EQ(reinterpret_cast<const std::uint8_t*>(h)[kRecordHeaderSize], o) << "offset " << o << " was overwritten";
    r.advance(len);
  }
  release_process_gate(f.ring, f.lock, g);
}

TEST(Ring, ForgedAbortedEntryCoveringNothingOrPastTheTailIsCorrupt) {
  ForgedRing f;
  RingWriter w = f.writer();
  auto c = w.claim_one(64, 0);
  ASSERT_TRUE(c);
  auto* e = reinterpret_cast<Pair64*>(f.ring.entry(0));
  const std::uint64_t aborted = encode_tag(0, ClaimState::kAborted, f.ring.salt());
  for (const std::uint64_t info : {encode_info(0, 1, false, 0, ClaimWhy::kDead),             // 0 bytes
                                   encode_info(64, 0, false, 0, ClaimWhy::kDead),            // 0 offsets
                                   encode_info(64, kMaxClaimCount, false, 0, ClaimWhy::kDead),  // past the tail
                                   encode_info(4096, 1, false, 0, ClaimWhy::kDead)}) {       // past the tail
    *e = Pair64{aborted, info};
    RingReader r(f.ring);
    r.seek_earliest();
    EXPECT_EQ(r.unstick(&f.lock, monotonic_ns()), ReadStatus::kCorrupt) << std::hex << info;
    EXPECT_EQ(r.offset(), 0u) << "nothing skipped";
  }
  auto w2 = f.writer();
  auto next = w2.claim_one(64, 0, 8);
  (void)next;  // whatever a producer does next, it does not hang (the entry names offset 0)
}

TEST(Ring, ForgedCommittedWordWithABadLengthIsCorrupt) {
  ForgedRing f;
  RingWriter w = f.writer();
  f.produce(w, 16, 1);
  f.ring.header_at(0)->length.store(3);
  RingReader r(f.ring);
  r.seek_earliest();
  const RecordHeader* h = nullptr;
  EXPECT_EQ(r.next(h), ReadStatus::kCorrupt);
  EXPECT_STREQ(r.problem(), "a committed record has a length of 3 bytes (at byte 0 of the lap; word says offset 0, state 2; "
                            "max record 1024)");
}

// ---- the stall clock ----

TEST(Ring, ReaderThatWaitedLongOnAnIdleTopicDoesNotAbortAClaimMadeNow) {
  ForgedRing f(4096, Retention::kOverwrite, 50'000'000);  // claim timeout 50 ms
  RingReader r(f.ring);
  r.seek_earliest();
  const std::uint64_t t0 = monotonic_ns();
  EXPECT_EQ(r.unstick(&f.lock, t0), ReadStatus::kNone) << "nothing claimed: the reader waits at offset 0";
  // 100 ms later (two timeouts) a producer claims offset 0 and is writing it.
  RingWriter w = f.writer();
  auto c = w.claim_one(64, 0);
  ASSERT_TRUE(c);
  EXPECT_EQ(r.unstick(&f.lock, t0 + 100'000'000), ReadStatus::kNone) << "the claim is new: its clock starts now";
  EXPECT_EQ(f.stats().claims_timed_out.load(), 0u);
  f.write(*c, 24, 1);
  EXPECT_TRUE(w.commit(*c));
  // The clock does run from the first look that saw the claim.
  auto c2 = w.claim_one(64, 0);
  ASSERT_TRUE(c2);
  w.finish(*c);
  const RecordHeader* h = nullptr;
  ASSERT_EQ(r.next(h), ReadStatus::kRecord);
  r.advance(h->length.load());
  EXPECT_EQ(r.unstick(&f.lock, t0 + 200'000'000), ReadStatus::kNone);
  EXPECT_EQ(r.unstick(&f.lock, t0 + 260'000'000), ReadStatus::kRecord) << "unfinished for 60 ms of its own: aborted";
  EXPECT_EQ(f.stats().claims_timed_out.load(), 1u);
}

// ---- exclusive writers (ProducerConfig::exclusive) ----

TEST(Ring, ExclusiveWriterIsTheOnlyWriterAndSaysWhoHoldsThePartition) {
  ForgedRing f;
  {
    RingWriter shared = f.writer();
    RingWriter ex(f.ring);
    auto st = ex.open(f.seg, true);
    ASSERT_FALSE(st);
    EXPECT_EQ(st.error().code, Errc::kTooManyClients);
    EXPECT_NE(st.error().message.find("other producers open"), std::string::npos) << st.error().message;
  }
  RingWriter ex(f.ring);
  ASSERT_TRUE(ex.open(f.seg, true));
  EXPECT_TRUE(ex.exclusive());
  EXPECT_EQ(f.ring.ctl()->notify.exclusive_pid.load(), ::getpid());
  for (bool exclusive : {false, true}) {
    RingWriter other(f.ring);
    auto st = other.open(f.seg, exclusive);
    ASSERT_FALSE(st);
    EXPECT_NE(st.error().message.find("pid " + std::to_string(::getpid())), std::string::npos) << st.error().message;
  }
  f.produce(ex, 16, 1);
  ex = RingWriter{};  // closed: others may write again
  EXPECT_EQ(f.ring.ctl()->notify.exclusive_pid.load(), 0);
  RingWriter shared = f.writer();
  f.produce(shared, 16, 2);
  RingReader r(f.ring);
  r.seek_earliest();
  EXPECT_EQ(f.read(r, 2), (std::vector<std::uint64_t>{0, 1}));
}

TEST(Ring, ExclusiveWriterKilledAtAnyStepIsReplacedAndNothingCommittedIsLost) {
  struct Case {
    Step step;
    std::vector<std::uint64_t> read;  // offsets a reader gets: the dead claim is 1..2
    std::uint64_t aborted;
  };
  for (const Case& c : {Case{Step::kAfterEntryClaim, {0, 3}, 2}, Case{Step::kAfterClaim, {0, 3}, 2},
                        Case{Step::kBeforeCommit, {0, 3}, 2}, Case{Step::kAfterCommit, {0, 1, 2, 3}, 0}}) {
    SCOPED_TRACE(static_cast<int>(c.step));
    ForgedRing f;
    {
      RingWriter first(f.ring);
      ASSERT_TRUE(first.open(f.seg, true));
      f.produce(first, 16, 1);  // offset 0
    }
    writer_child(f, {64, 64}, c.step, Fate::kDie, /*exclusive=*/true);
    // Its successor opens at once: the kernel dropped the dead one's lock.
    RingWriter next(f.ring);
    ASSERT_TRUE(next.open(f.seg, true));
    EXPECT_EQ(f.produce(next, 16, 3), 3u);
    RingReader r(f.ring);
    r.seek_earliest();
    EXPECT_EQ(f.read(r, c.read.size()), c.read);
    EXPECT_EQ(r.aborted_skipped(), c.aborted);
    EXPECT_EQ(f.ring.ctl()->stats.dead_claims_reclaimed.load(), c.aborted ? 1u : 0u);
    // And it goes on round the ring past the dead claim.
    for (int i = 0; i < 200; ++i) f.produce(next, 100, 4);
    EXPECT_GT(f.ring.start_offset(), 3u);
  }
}

TEST(Ring, StoppedExclusiveWritersClaimIsNeverTimedOut) {
  ForgedRing f(4096, Retention::kOverwrite, 20'000'000);  // claim timeout 20 ms
  const pid_t child = writer_child(f, {64}, Step::kBeforeCommit, Fate::kStop, /*exclusive=*/true);
  RingReader r(f.ring);
  r.seek_earliest();
  const std::uint64_t t0 = monotonic_ns();
  const RecordHeader* h = nullptr;
  while (monotonic_ns() - t0 < 100'000'000) {
    EXPECT_EQ(r.next(h), ReadStatus::kNone);
    EXPECT_EQ(r.unstick(&f.lock, monotonic_ns()), ReadStatus::kNone) << "a live exclusive writer's claim is not aborted";
    std::this_thread::sleep_for(5ms);
  }
  EXPECT_EQ(f.stats().claims_timed_out.load(), 0u);
  EXPECT_EQ(continue_and_reap(child), 0) << "its commit went through";
  EXPECT_EQ(f.read(r, 1), (std::vector<std::uint64_t>{0}));
}

// Nobody aborts a live exclusive writer's claim, so a tag that is not its own when it commits
// was forged (or written by a process that broke the protocol): the commit is refused, named,
// counted, and nothing of the claim is read. The exclusive commit is inline (shm/ring.h); this
// is its one way out of line.
TEST(Ring, AnExclusiveWritersCommitOverAForgedAbortIsRefusedAndNothingOfItIsRead) {
  ForgedRing f;
  {
    RingWriter first(f.ring);
    ASSERT_TRUE(first.open(f.seg, true));
    f.produce(first, 16, 1);  // offset 0
  }
  const pid_t child = writer_child(f, {64}, Step::kBeforeCommit, Fate::kStop, /*exclusive=*/true);
  // Its claim is offset 1; the entry is rewritten to ABORTED while it is stopped.
  auto* e = reinterpret_cast<Pair64*>(f.ring.entry(1));
  const Pair64 was = snapshot128(&f.ring.ctl()->tail);
  ASSERT_EQ(was.first, 2u) << "the stopped writer's claim is at offset 1";
  *e = Pair64{encode_tag(1, ClaimState::kAborted, f.ring.salt()), with_why(e->second, ClaimWhy::kTimedOut)};
  EXPECT_EQ(continue_and_reap(child), 7) << "its commit was refused";
  EXPECT_EQ(f.stats().late_commits_refused.load(), 1u);
  RingWriter next(f.ring);
  ASSERT_TRUE(next.open(f.seg, true));
  EXPECT_EQ(f.produce(next, 16, 2), 2u);
  RingReader r(f.ring);
  r.seek_earliest();
  EXPECT_EQ(f.read(r, 2), (std::vector<std::uint64_t>{0, 2})) << "nothing of the refused claim is read";
  EXPECT_EQ(r.aborted_skipped(), 1u);
}

// Found by attacking the exclusive path: the mark `exclusive` on a claim is shared bytes.
// Trusted alone, a forged or stale one would hold readers, then producers, for ever.
TEST(Ring, ForgedExclusiveMarkOnAShareWritersClaimIsStillTimedOut) {
  ForgedRing f(4096, Retention::kOverwrite, 20'000'000);
  RingWriter w = f.writer();
  f.produce(w, 16, 1);  // offset 0
  // A claim at offset 1 "by an exclusive writer" in slot w's (a live, idle writer's) slot.
  const Pair64 t = snapshot128(&f.ring.ctl()->tail);
  auto* e = reinterpret_cast<Pair64*>(f.ring.entry(t.first));
  *e = Pair64{encode_tag(t.first, ClaimState::kClaimed, f.ring.salt()), encode_info(64, 1, false, w.slot_index(), ClaimWhy::kExclusive)};
  f.ring.ctl()->tail = Pair64{t.first + 1, t.second + 64};
  f.produce(w, 16, 2);  // offset 2
  RingReader r(f.ring);
  r.seek_earliest();
  EXPECT_EQ(f.read(r, 2), (std::vector<std::uint64_t>{0, 2})) << "the forged claim was timed out";
  EXPECT_EQ(f.stats().claims_timed_out.load(), 1u);
  for (int i = 0; i < 100; ++i) f.produce(w, 100, 3);  // and producers lap it
  EXPECT_GT(f.ring.start_offset(), 2u);
}

TEST(Ring, ExclusiveWriterHelpsAClaimLeftAtTheTailInsteadOfFailingForEver) {
  ForgedRing f;
  RingWriter ex(f.ring);
  ASSERT_TRUE(ex.open(f.seg, true));
  f.produce(ex, 16, 1);  // offset 0
  // A claim won at the tail by a writer of slot 9 (nobody holds it: dead) that never moved
  // the tail; our cached tail is the one before it.
  const Pair64 t = snapshot128(&f.ring.ctl()->tail);
  *reinterpret_cast<Pair64*>(f.ring.entry(t.first)) =
      Pair64{encode_tag(t.first, ClaimState::kClaimed, f.ring.salt()), encode_info(64, 1, false, 9, ClaimWhy::kOwner)};
  EXPECT_EQ(f.produce(ex, 16, 2), 2u);
  EXPECT_EQ(f.produce(ex, 16, 3), 3u);
  RingReader r(f.ring);
  r.seek_earliest();
  EXPECT_EQ(f.read(r, 3), (std::vector<std::uint64_t>{0, 2, 3}));
  EXPECT_EQ(f.ring.ctl()->stats.dead_claims_reclaimed.load(), 1u);
}

TEST(Ring, SharedWriterClearsWhatAKilledExclusiveWriterLeftInTheNotifyLine) {
  ForgedRing f;
  writer_child(f, {64}, Step::kAfterCommit, Fate::kDie, /*exclusive=*/true);
  EXPECT_NE(f.ring.ctl()->notify.exclusive_pid.load(), 0);
  RingWriter w = f.writer();
  EXPECT_EQ(f.ring.ctl()->notify.exclusive_pid.load(), 0);
  EXPECT_EQ(f.ring.ctl()->notify.light_fence.load(), 0u) << "sleepers would fence for a dead writer for ever";
}

