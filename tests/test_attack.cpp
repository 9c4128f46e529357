// Hostile review of Ring v3: each test is a sequence that breaks a promise of the protocol
// (docs/ring.md). Every test here FAILS on commit a5d7a8c.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <thread>

#include "shm/process.h"
#include "shm/ring.h"
#include "shm/segment.h"
#include "shmbus/consumer.h"
#include "shmbus/producer.h"
#include "ring_fixture.h"
#include "test_util.h"

using namespace shmbus;
using namespace shmbus::shm;
using namespace std::chrono_literals;

namespace {

using AttackRing = test::ForgedRing;

}  // namespace

// ---- 1. The reader's stall clock runs from before the claim existed ----
//
// RingReader::unstick starts its stall clock the first time it is called at an offset
// (stall_offset_ != offset_) and never restarts it while the offset stays the same. A
// consumer idle at the tail calls unstick() over and over at the tail offset while nothing is
// claimed there, so its clock starts then. The first claim made at that offset after more
// than claim_timeout of idleness is found CLAIMED with stalled_ns >= claim_timeout at the
// very first look and aborted as "timed out" microseconds after it was made: the producer's
// commit fails (its send returns timed_out) although it never was slow.
TEST(Attack, IdleReaderAbortsAFreshClaimAsTimedOut) {
  AttackRing f(4096, Retention::kOverwrite, 50'000'000);  // claim timeout 50 ms
  RingWriter w = f.writer();
  RingReader r(f.ring);
  r.seek_earliest();
  const RecordHeader* h = nullptr;
  ASSERT_EQ(r.next(h), ReadStatus::kNone);
  EXPECT_EQ(r.unstick(&f.lock, monotonic_ns()), ReadStatus::kNone) << "nothing claimed yet";
  std::this_thread::sleep_for(100ms);  // an idle topic, longer than the claim timeout
  auto c = w.claim_one(64, 0);
  ASSERT_TRUE(c);
  f.write(*c, 24, 1);
  EXPECT_EQ(r.unstick(&f.lock, monotonic_ns()), ReadStatus::kNone) << "a claim made just now was aborted as timed out";
  EXPECT_TRUE(w.commit(*c)) << "the producer was never slow, yet its commit is refused";
  EXPECT_EQ(f.ring.ctl()->claim_stats.claims_timed_out.load(), 0u);
}

// The same through the public API: a consumer polls an idle topic for longer than the claim
// timeout; a producer reserves a record and commits it at once (well within the timeout), but
// a poll() made between reserve() and commit() aborts the claim.
TEST(Attack, ConsumerIdleLongerThanTheClaimTimeoutAbortsTheNextReservation) {
  test::TestBus bus("atk_idle");
  TopicConfig tc;
  tc.capacity = 65536;
  tc.claim_timeout_ms = 50;
  ASSERT_TRUE(bus->create_topic("t", tc));
  ConsumerConfig cc;
  cc.auto_offset_reset = OffsetReset::kEarliest;
  auto c = Consumer::create(bus.get(), cc);
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->assign({{"t", 0}}));
  auto idle = c->poll(150ms);  // nothing there: the consumer waits (and looks at the tail now and then)
  ASSERT_TRUE(idle);
  ASSERT_TRUE(idle->empty());
  auto p = Producer::create(bus.get());
  ASSERT_TRUE(p);
  auto res = p->reserve("t", std::nullopt, 5, 0);
  ASSERT_TRUE(res);
  std::memcpy(res->value().data(), "hello", 5);
  auto during = c->poll(5ms);  // the record is being written: nothing to return yet
  ASSERT_TRUE(during);
  auto st = res->commit();  // a few milliseconds after reserve(), far under 50 ms
  EXPECT_TRUE(st) << st.error().message;
}

// ---- 2. seek() leaves the reader's stall clock at 0 ----
//
// RingReader::seek walks with unstick(nullptr, 0): at an unfinished claim it records
// stall_offset_ = that offset, stall_since_ = 0, and returns kNone with the cursor there. The
// next unstick() with a lock and the real clock at the same offset computes
// stalled_ns = now - 0 (the machine's uptime) and aborts the live writer's claim at once as
// timed out. Consumer::seek() to an offset past an in-flight claim takes this path (the
// index misses for an aborted or not-yet-published offset), so one seek() plus one poll()
// makes a healthy producer's send fail.
TEST(Attack, SeekPastAnUnfinishedClaimThenUnstickAbortsItAtOnce) {
  AttackRing f(8192);  // claim timeout 1 s
  RingWriter w = f.writer();
  const std::uint32_t two[] = {64, 64};
  auto c = w.claim(two, 0);  // offsets 0 and 1, being written
  ASSERT_TRUE(c);
  RingReader r(f.ring);
  ASSERT_EQ(r.seek(1), ReadStatus::kNone) << "where offset 1 lies is not known yet";
  EXPECT_EQ(r.unstick(&f.lock, monotonic_ns()), ReadStatus::kNone) << "a live writer's fresh claim was aborted";
  EXPECT_TRUE(w.commit(*c)) << "the claim was aborted as timed out microseconds after it was made";
  EXPECT_EQ(f.ring.ctl()->claim_stats.claims_timed_out.load(), 0u);
}

TEST(Attack, ConsumerSeekThenPollAbortsALiveReservationAtOnce) {
  test::TestBus bus("atk_seek");
  TopicConfig tc;
  tc.capacity = 65536;  // claim timeout: the default 1 s
  ASSERT_TRUE(bus->create_topic("t", tc));
  auto pa = Producer::create(bus.get());
  auto pb = Producer::create(bus.get());
  ASSERT_TRUE(pa && pb);
  auto open = pa->reserve("t", std::nullopt, 5, 0);  // offset 0: being written
  ASSERT_TRUE(open);
  ASSERT_EQ(open->metadata().offset, 0u);
  {
    auto gone = pb->reserve("t", std::nullopt, 5, 0);  // offset 1: given up
    ASSERT_TRUE(gone);
    gone->abort();
  }
  ASSERT_TRUE(pb->send("t", std::nullopt, "two"));  // offset 2
  auto c = Consumer::create(bus.get(), ConsumerConfig{});
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->assign({{"t", 0}}));
  ASSERT_TRUE(c->seek({"t", 0}, 1));  // offset 1 is not in the index: seek walks, stops at offset 0
  auto b = c->poll(5ms);
  ASSERT_TRUE(b);
  std::memcpy(open->value().data(), "hello", 5);
  auto st = open->commit();  // milliseconds after reserve(): the claim timeout is 1 s
  EXPECT_TRUE(st) << st.error().message;
}

// ---- 3. A forged claim-table tag naming a later offset spins every producer forever ----
//
// RingWriter::claim: when the entry of the tail offset names a later offset than the tail's
// (named > cur.first + 1), it re-reads the tail and tries again - with no bound, no timeout
// and no corruption check. Nothing ever changes the entry or the tail, so claim() never
// returns (whatever block_timeout_ns says). Readers call the same bytes corrupt at once.
TEST(Attack, ForgedTagNamingALaterOffsetHangsTheProducer) {
  AttackRing f;
  const std::uint64_t later = f.ring.index_capacity();  // entry 0's next user would be this offset
  *reinterpret_cast<Pair64*>(f.ring.entry(0)) =
      Pair64{encode_tag(later, ClaimState::kCommitted, f.ring.salt()), encode_info(64, 1, false, 0, ClaimWhy::kOwner)};
  RingReader r(f.ring);
  r.seek_earliest();
  EXPECT_EQ(r.unstick(&f.lock, monotonic_ns()), ReadStatus::kCorrupt) << "readers refuse it";
  const pid_t child = ::fork();
  if (child == 0) {
    RingWriter w(f.ring);
    if (!w.open(f.seg)) ::_exit(3);
    auto c = w.claim_one(64, 100'000'000);  // may wait 100 ms for room at most
    ::_exit(c ? 0 : 1);
  }
  int status = 0;
  pid_t done = 0;
  for (int i = 0; i < 300 && done == 0; ++i) {  // 3 s
    done = ::waitpid(child, &status, WNOHANG);
    if (done == 0) std::this_thread::sleep_for(10ms);
  }
  if (done == 0) {
    ::kill(child, SIGKILL);
    ::waitpid(child, &status, 0);
  }
  EXPECT_EQ(done, child) << "RingWriter::claim spun for 3 s on a forged entry (unbounded loop)";
}

// ---- 4. A forked child of a producer writes under its parent's slot ----
//
// fork() closes the child's copies of the lock descriptors, but nothing stops the child from
// using the RingWriter it inherited: it claims under the parent's writer slot, whose lock the
// parent still holds. Its claim is then judged by the parent's liveness and the parent's
// claim_position: stopped, it is aborted as timed out (correct), but the quarantine
// (writer_inside: slot lock held && slot claim_position == p) stops protecting its bytes as
// soon as the parent makes a claim of its own (claim_position is overwritten, then cleared).
// Producers then reuse the bytes; continued, the child writes its record over a committed
// record of a later lap, and readers return that record corrupted - the overwrite-mode
// seqlock check (reclaim <= start of copy) does not see it either.
// Fixed: a RingWriter remembers the process that opened it; claim() in another process is
// refused, and its destructor there leaves the parent's slot alone.
TEST(Attack, ForkedChildOfAProducerCannotClaimUnderItsParentsSlot) {
  AttackRing f(4096, Retention::kOverwrite, 50'000'000);  // claim timeout 50 ms
  RingWriter parent = f.writer();
  f.produce(parent, 8, 0x11);  // offset 0
  const pid_t child = ::fork();
  if (child == 0) {
    auto c = parent.claim_one(64, 0);
    if (c) ::_exit(0);
    const bool said = c.error().message.find("forked child") != std::string::npos;
    { RingWriter gone = std::move(parent); }  // its destructor runs in the child
    ::_exit(said ? 4 : 5);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_EQ(WEXITSTATUS(status), 4) << "the child's claim is refused, naming the fork";
  EXPECT_NE(f.ring.writer_slot(parent.slot_index())->owner_pid.load(), 0) << "the parent's slot is still the parent's";
  EXPECT_EQ(f.produce(parent, 8, 0x11), 1u) << "the parent sends on";
}

// ---- 5. rewind() into a claim read by its entry makes the reader call the ring corrupt ----
//
// A claim whose writer died after committing it (before storing its words) is read in
// "committed mode" (committed_until_). RingReader::rewind, documented as "back to a place
// this reader has been", clears that mode. Rewound to a record after the claim's first one
// (the spiller does this when its writer thread is behind: r.rewind(first_offset, first_pos)
// at the start of a pump that began mid-claim, a pump ending at kChunkBytes; the consumer in
// check_copied_lengths), the reader finds no word there, asks unstick(), whose entry lookup
// for a non-first offset says "no claim names this offset, yet the tail is past it": kCorrupt.
// The spiller then stops spilling the partition (and in a block topic its durable gate holds
// every producer); a consumer gets a BadSegment error on every poll - for committed records.
TEST(Attack, RewindIntoAClaimReadByItsEntryIsReportedCorrupt) {
  AttackRing f(8192);
  const pid_t child = ::fork();
  if (child == 0) {
    RingWriter w(f.ring);
    if (!w.open(f.seg)) ::_exit(3);
    const std::uint32_t three[] = {64, 64, 64};
    auto c = w.claim(three, 0);
    if (!c) ::_exit(4);
    for (std::uint32_t i = 0; i < 3; ++i) {
      RecordHeader* h = f.ring.header_at(c->position + 64 * i);
      h->length.store(64);
      h->key_len = kNullKey;
      h->headers_len = 0;
      h->value_len = 8;
    }
    if (!w.commit(*c)) ::_exit(7);
    ::_exit(9);  // dies committed, before any word is stored
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_EQ(WEXITSTATUS(status), 9);
  RingReader r(f.ring);
  r.seek_earliest();
  const RecordHeader* h = nullptr;
  ASSERT_EQ(r.next(h), ReadStatus::kNone);
  ASSERT_EQ(r.unstick(&f.lock, monotonic_ns()), ReadStatus::kRecord) << "read by its entry";
  ASSERT_EQ(r.next(h), ReadStatus::kRecord);
  r.advance(h->length);  // offset 0 returned (one poll / one chunk)
  const std::uint64_t off = r.offset(), pos = r.position();
  ASSERT_EQ(off, 1u);
  ASSERT_EQ(r.next(h), ReadStatus::kRecord);  // offset 1 read...
  r.advance(h->length);
  r.rewind(off, pos);  // ...and given back (a torn copy, or the spill writer is behind)
  ReadStatus st = r.next(h);
  if (st == ReadStatus::kNone) st = r.unstick(&f.lock, monotonic_ns());
  EXPECT_NE(st, ReadStatus::kCorrupt) << "committed records are reported as damaged bytes: " << r.problem();
  if (st == ReadStatus::kRecord && r.next(h) == ReadStatus::kRecord) {
    EXPECT_EQ(r.offset(), 1u);
  }
}
