// Attacks on ring v2 (issue 11): a liveness lock a forked child keeps alive, and forged
// cursors that sent a producer's make_room round for ever. Each test failed before its fix.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "ring_fixture.h"
#include "shm/ofd_lock.h"
#include "shm/process.h"
#include "shm/ring.h"

using namespace shmbus;
using namespace shmbus::shm;
using namespace std::chrono_literals;
using test::ForgedRing;

namespace {

// Waits for `pid` at most `limit`; false (and the child killed) if it did not end by then.
bool wait_child(pid_t pid, int& status, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (::waitpid(pid, &status, WNOHANG) == pid) return true;
    std::this_thread::sleep_for(2ms);
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &status, 0);
  return false;
}

// True once every writer of `fd`'s pipe closed it (they exited), within `limit`.
bool eof_within(int fd, std::chrono::milliseconds limit) {
  pollfd p{fd, POLLIN, 0};
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (::poll(&p, 1, 10) == 1) {
      char b[16];
      if (::read(fd, b, sizeof b) == 0) return true;
    }
  }
  return false;
}

// ---- a fork in another thread while a writer opens its lock descriptor ----

std::atomic<int> g_fork_phase{0};  // 1: the writer's descriptor is open, fork now; 2: forked

void fork_now_and_wait() {
  g_fork_phase.store(1);
  // Until the other thread forked, or (when fork() waits for the open to finish) a while.
  const auto deadline = std::chrono::steady_clock::now() + 1s;
  while (g_fork_phase.load() != 2 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
}

}  // namespace

// A multi-threaded producer process forks (another thread: a worker pool, a subprocess
// spawner) at the instant one thread opens a RingWriter, between the open() of the lock
// descriptor and its registration for closing in forked children. The child inherits the
// descriptor and keeps the open file description alive; the writer slot's lock is taken on
// that description a moment later. When the producer then dies inside a claim, its slot's
// lock stays held by the child for as long as the child lives: the claim is not judged dead
// (only timed out after claim_timeout), the slot is never free again, and the reclaim walk
// takes the timed-out claim for one whose writer is still inside (quarantine): every
// producer that comes round to it waits max_block_ms and fails, for good.
TEST(RingAttack, ForkWhileAWriterOpensItsLockDoesNotKeepADeadWritersClaimAlive) {
  ForgedRing f;
  int pid_pipe[2], hold_pipe[2];
  ASSERT_EQ(::pipe2(pid_pipe, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(hold_pipe, O_CLOEXEC), 0);
  const pid_t producer = ::fork();
  ASSERT_GE(producer, 0);
  if (producer == 0) {
    ::close(pid_pipe[0]);
    ::close(hold_pipe[1]);
    std::thread spawner([&] {
      while (g_fork_phase.load() != 1) std::this_thread::sleep_for(100us);
      const pid_t child = ::fork();
      if (child == 0) {  // holds whatever it inherited until the test lets it go
        char b;
        (void)!::read(hold_pipe[0], &b, 1);
        ::_exit(0);
      }
      (void)!::write(pid_pipe[1], &child, sizeof child);
      g_fork_phase.store(2);
    });
    test_hooks::after_lock_fd_open = fork_now_and_wait;
    RingWriter w(f.ring);
    const bool opened = static_cast<bool>(w.open(f.seg));
    test_hooks::after_lock_fd_open = nullptr;
    spawner.join();
    if (!opened) ::_exit(3);
    test_hooks::after_claim = [] { ::raise(SIGKILL); };
    (void)w.claim_one(64, 0);
    ::_exit(4);  // not reached: killed inside the claim
  }
  ::close(pid_pipe[1]);
  ::close(hold_pipe[0]);
  pid_t child = -1;
  ASSERT_EQ(::read(pid_pipe[0], &child, sizeof child), static_cast<ssize_t>(sizeof child)) << "the fork was not reached";
  int status = 0;
  ASSERT_TRUE(wait_child(producer, status, 10s));
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "the producer did not die inside its claim: " << status;
  ASSERT_EQ(f.ring.end_offset(), 1u) << "the dead producer's claim is at offset 0";

  // The producer is dead; its forked child lives on (its fd closed, or not).
  const bool slot_free = !f.lock.held_by_other(writer_lock_byte(0));
  RingReader r(f.ring);
  r.seek_earliest();
  ReadStatus st = ReadStatus::kNone;
  for (int i = 0; i < 20 && st == ReadStatus::kNone; ++i) st = r.unstick(&f.lock, monotonic_ns());
  ::close(hold_pipe[1]);  // the child may go now; it is gone when the last copy of pid_pipe's writing end is
  EXPECT_TRUE(eof_within(pid_pipe[0], 10s)) << "the forked child (pid " << child << ") did not exit";
  ::close(pid_pipe[0]);
  EXPECT_TRUE(slot_free) << "a forked child holds the dead producer's writer slot";
  EXPECT_EQ(st, ReadStatus::kRecord) << "the dead producer's claim is taken for a live one";
  EXPECT_EQ(f.ring.ctl()->stats.dead_claims_reclaimed.load(), 1u);
  EXPECT_EQ(f.stats().claims_timed_out.load(), 0u);
}

// ---- forged cursors: every wait in make_room ends ----

// The start of the ring forged to stand at the tail's position with an offset more than a
// claim table behind the tail's (ring_validate only checks start <= end). A producer that
// needs the claim table's entry reclaimed walks from there: the walk cannot take a step (it
// is at the tail), nothing is in flight and no gate holds it, so the wait had no deadline
// (max_block_ms covers gates and claims only): the send hung for ever.
TEST(RingAttack, ForgedStartOffsetBehindTheTailAtItsPositionIsCorruptNotAHang) {
  ForgedRing f;  // 4096 bytes: 64 claim-table entries
  {
    RingWriter w = f.writer();
    for (int i = 0; i < 70; ++i) f.produce(w, 16, 1);
  }
  const Pair64 t = snapshot128(&f.ring.ctl()->tail);
  ASSERT_EQ(t.first, 70u);
  const Pair64 r = snapshot128(&f.ring.ctl()->reclaim);
  // Start: offset 6 (< 70 - 64 + 1, so the claim at 70 must reclaim past it), byte = tail.
  store128(&f.ring.ctl()->reclaim, Pair64{(r.first & ~kReclaimOffsetMask) | 6, t.second});
  ASSERT_TRUE(ring_validate(f.seg)) << "the forgery passes the open-time checks";

  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    RingWriter w(f.ring);
    if (!w.open(f.seg)) ::_exit(3);
    auto c = w.claim_one(64, 200'000'000);  // 200 ms max block
    if (c) ::_exit(1);
    ::_exit(c.error().code == Errc::kBadSegment && c.error().message.find("partition 0") != std::string::npos ? 0 : 2);
  }
  int status = 0;
  ASSERT_TRUE(wait_child(child, status, 5s)) << "the producer hangs on a forged start offset";
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: claimed over a forged ring, 2: another error, 3: open failed";
  EXPECT_GE(f.stats().corrupt_seen.load(), 1u);
}

// ---- the gate generation wraps while a producer is stopped inside its reclaim ----

namespace {
ForgedRing* g_gated_ring = nullptr;
RingReader* g_gated_reader = nullptr;
GateSlot* g_gate = nullptr;
int g_bumps = 0;

// What consumers do while the producer is stopped between its look at the gates and its CAS
// on `reclaim`: one takes a gate at the ring's start, then consumers seek back (or take and
// drop gates) 255 times. Each bumps the 8-bit gate generation once: 256 in all.
void consumers_meanwhile() {
  test_hooks::before_reclaim_cas = nullptr;
  ForgedRing& f = *g_gated_ring;
  g_gated_reader->seek_earliest();
  g_gate = take_process_gate(f.ring, f.lock, *g_gated_reader);
  auto others = SegmentLock::open(f.seg);  // other consumers: their own descriptions
  ASSERT_TRUE(others);
  for (g_bumps = 1; g_bumps < 256; ++g_bumps) {
    RingReader other(f.ring);
    other.seek_earliest();
    GateSlot* g = take_process_gate(f.ring, *others, other);
    ASSERT_NE(g, g_gate);
    release_process_gate(f.ring, *others, g);
  }
}
}  // namespace

// A producer of a block topic scans the gates (none), walks the records it will reclaim, and
// is stopped (SIGSTOP, a debugger, preemption) before its CAS on `reclaim`. Meanwhile a
// consumer takes a gate at the ring's start, and consumers' gate changes bump the gate
// generation 256 times: its 8 bits are back where the producer read them, and `reclaim`
// {generation | offset, position} is bit for bit what the producer expects. Its CAS then
// succeeds on its stale view of the gates and moves the start past the new gate: the
// producers overwrite records the gated consumer reads in place.
TEST(RingAttack, GateGenerationWrappingWhileAProducerIsStoppedInItsReclaimDoesNotPassTheGate) {
  ForgedRing f(4096, Retention::kBlock);
  RingWriter w = f.writer();
  for (int i = 0; i < 73; ++i) f.produce(w, 16, 1);  // 56-byte records: 4088 bytes, the ring full
  RingReader reader(f.ring);
  g_gated_ring = &f;
  g_gated_reader = &reader;
  test_hooks::before_reclaim_cas = consumers_meanwhile;
  auto c = w.claim_one(56, 20'000'000);  // needs room: reclaims, meets the hook
  test_hooks::before_reclaim_cas = nullptr;
  ASSERT_NE(g_gate, nullptr) << "the producer never reclaimed";
  EXPECT_EQ(g_bumps, 256);
  EXPECT_EQ(g_gate->kind.load(), static_cast<std::uint32_t>(GateKind::kProcess));
  const std::uint64_t gate_at = g_gate->position.load();
  EXPECT_LE(f.ring.reclaim_position(), gate_at) << "the start moved past a live gate";
  EXPECT_FALSE(c) << "claimed over records a gate holds";
  release_process_gate(f.ring, f.lock, g_gate);
  g_gate = nullptr;
}

// ---- a forged claim-table entry whose count its bytes cannot hold ----

// Claim entries were checked for size, alignment and the tail, but not that `count` records
// fit in `bytes` (each is at least a header). An ABORTED entry forged at a record whose word
// is gone, covering that record's 56 bytes with a count of 5, sent the reader to offset 5 at
// the position of offset 1; the claim table's (real) entry of offset 5 then had it read the
// record of offset 1 by its entry, returned as offset 5.
TEST(RingAttack, ForgedEntryWithMoreRecordsThanItsBytesHoldIsCorrupt) {
  ForgedRing f;
  RingWriter w = f.writer();
  for (int i = 0; i < 10; ++i) f.produce(w, 16, static_cast<std::uint8_t>(i));  // 56 bytes each
  f.ring.header_at(0)->word.store(0);  // offset 0's word gone: the reader asks the claim table
  store128(as_pair(f.ring.entry(0)),
           Pair64{encode_tag(0, ClaimState::kAborted, f.ring.salt()), encode_info(56, 5, false, 0, ClaimWhy::kDead)});
  RingReader r(f.ring);
  r.seek_earliest();
  const RecordHeader* h = nullptr;
  ASSERT_EQ(r.next(h), ReadStatus::kNone);
  const ReadStatus st = r.unstick(&f.lock, monotonic_ns());
  EXPECT_EQ(st, ReadStatus::kCorrupt) << "5 records in 56 bytes were believed";
  if (st == ReadStatus::kRecord) {
    std::uint32_t len = 0;
    const bool read = r.next(h, len) == ReadStatus::kRecord ||
                      (r.unstick(&f.lock, monotonic_ns()) == ReadStatus::kRecord && r.next(h, len) == ReadStatus::kRecord);
    EXPECT_FALSE(read) << "returned offset " << r.offset() << " holding the value of offset 1";
  }
  EXPECT_GE(f.stats().corrupt_seen.load(), 1u);
}

// An exclusive writer's inline claim (RingWriter::try_claim_one_exclusive) names its claim in
// its slot before it looks at the entry. When the entry at the tail turns out to be won
// already, with sizes nobody can help the tail past (forged), it gives up and claim_into()
// refuses the claim as damaged bytes: the slot must not go on naming a claim that was never
// made (a takeover of the slot would then abort a stranger's entry).
TEST(RingAttack, InlineExclusiveClaimOverAForgedWonEntryLeavesNoIntentBehind) {
  ForgedRing f;
  RingWriter w(f.ring);
  ASSERT_TRUE(w.open(f.seg, /*exclusive=*/true));
  f.produce(w, 16, 1);  // offset 0; the tail is at offset 1
  const Pair64 tail = snapshot128(&f.ring.ctl()->tail);
  ASSERT_EQ(tail.first, 1u);
  store128(as_pair(f.ring.entry(1)),
           Pair64{encode_tag(1, ClaimState::kClaimed, f.ring.salt()), encode_info(0, 1, false, 5, ClaimWhy::kOwner)});
  WriterSlot* slot = f.ring.writer_slot(w.slot_index());
  Claim c;
  EXPECT_FALSE(w.try_claim_one_exclusive(c, 64, 64));
  EXPECT_EQ(slot->claim_position.load(), tail.second) << "the inline claim named it first";
  auto r = w.claim_one(64, 0, 64);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kBadSegment) << r.error().message;
  EXPECT_NE(r.error().message.find("damaged or forged"), std::string::npos) << r.error().message;
  EXPECT_EQ(slot->claim_position.load(), kNoClaim);
  EXPECT_GE(f.stats().corrupt_seen.load(), 1u);
}
