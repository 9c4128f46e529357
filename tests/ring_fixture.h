// A partition segment of the tests' own, on no bus, with the real writer's helpers: the
// fixture of the ring's protocol tests (test_ring.cpp, test_attack.cpp).
#pragma once

#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "shm/process.h"
#include "shm/ring.h"
#include "shm/segment.h"
#include "test_util.h"

namespace shmbus::test {

using namespace shmbus::shm;
using namespace std::chrono_literals;

// A private partition segment, not registered on any bus.
struct ForgedRing {
  explicit ForgedRing(std::uint64_t capacity = 4096, Retention retention = Retention::kOverwrite,
                      std::uint64_t claim_timeout_ns = kDefaultClaimTimeoutNs) {
    name = test::unique_bus("ring") + "~forged~0";
    RingParams p;
    p.capacity = capacity;
    p.retention = retention;
    p.claim_timeout_ns = claim_timeout_ns;
    const RingGeometry g = ring_geometry(capacity);
    auto s = Segment::create(SegmentSpec{name, SegmentKind::kPartition, kPartitionLayoutMajor, kPartitionLayoutMinor,
                                         g.segment_size, 0600, std::nullopt, false},
                             [&](std::byte* base) { ring_init(base, p); });
    EXPECT_TRUE(s) << s.error().message;
    seg = std::move(*s);
    ring = Ring(seg.data());
    auto l = SegmentLock::open(seg);
    EXPECT_TRUE(l);
    lock = std::move(*l);
  }
  ~ForgedRing() { (void)Segment::remove(name); }

  RingWriter writer() {
    RingWriter w(ring);
    EXPECT_TRUE(w.open(seg));
    return w;
  }

  // A record of `value_len` bytes of `fill`, at its place in the claim (headers only).
  void write(const Claim& c, std::uint32_t value_len, std::uint8_t fill) {
    RecordHeader* h = ring.header_at(c.first_at);
    h->length.store(static_cast<std::uint32_t>(c.end - c.first_at));
    h->key_len = kNullKey;
    h->headers_len = 0;
    h->value_len = value_len;
    std::memset(reinterpret_cast<std::byte*>(h) + kRecordHeaderSize, fill, value_len);
  }

  // A committed record through the real writer.
  std::uint64_t produce(RingWriter& w, std::uint32_t value_len, std::uint8_t fill) {
    auto c = w.claim_one(static_cast<std::uint32_t>(align8(kRecordHeaderSize + value_len)), 1'000'000'000);
    EXPECT_TRUE(c) << c.error().message;
    write(*c, value_len, fill);
    EXPECT_TRUE(w.commit(*c));
    w.finish(*c);
    return c->offset;
  }

  // Produces 112-byte records until a gate holds the writer back (20 ms each), at most
  // `max`; returns how many went in.
  int produce_until_held(RingWriter& w, int max = 100) {
    int n = 0;
    for (; n < max; ++n) {
      auto c = w.claim_one(112, 20'000'000);
      if (!c) break;
      write(*c, 16, 9);
      EXPECT_TRUE(w.commit(*c));
      w.finish(*c);
    }
    return n;
  }

  // Reads on until `n` records came or nothing moves; the reader unsticks as a consumer does.
  std::vector<std::uint64_t> read(RingReader& r, std::size_t n, bool with_lock = true) {
    std::vector<std::uint64_t> offsets;
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (offsets.size() < n && std::chrono::steady_clock::now() < deadline) {
      const RecordHeader* h = nullptr;
      std::uint32_t len = 0;
      const ReadStatus st = r.next(h, len);
      if (st == ReadStatus::kRecord) {
        offsets.push_back(r.offset());
        r.advance(len);
        continue;
      }
      if (st != ReadStatus::kNone) break;
      if (r.unstick(with_lock ? &lock : nullptr, monotonic_ns()) == ReadStatus::kNone) std::this_thread::sleep_for(1ms);
    }
    return offsets;
  }

  const ClaimStatsLine& stats() const { return ring.ctl()->claim_stats; }

  std::string name;
  Segment seg;
  Ring ring;
  SegmentLock lock;  // the reader's own description, as a consumer has
};

}  // namespace shmbus::test
