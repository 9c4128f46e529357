// The bus in one process: topics, produce/consume, bad input, bad segments.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <set>
#include <thread>

#include <csignal>
#include <sys/wait.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>

#include <fmt/format.h>

#include "bus/names.h"
#include "bus/offset_lookup.h"
#include "bus/partitioner.h"
#include "bus/topic.h"
#include "shm/ring.h"
#include "shm/segment.h"
#include "shmbus/consumer.h"
#include "shmbus/producer.h"
#include "test_util.h"

using namespace shmbus;
using namespace std::chrono_literals;

namespace {

TopicConfig small(std::uint32_t partitions = 1, std::uint64_t capacity = 65536,
                  RetentionMode r = RetentionMode::kOverwrite) {
  TopicConfig c;
  c.partitions = partitions;
  c.capacity = capacity;
  c.retention = r;
  return c;
}

Consumer consumer_at(std::shared_ptr<Bus> bus, std::vector<TopicPartition> tps, OffsetReset reset = OffsetReset::kEarliest,
                     bool hold_producers = false, std::uint32_t max_poll_records = 500) {
  ConsumerConfig cfg;
  cfg.auto_offset_reset = reset;
  cfg.hold_producers = hold_producers;
  cfg.max_poll_records = max_poll_records;
  auto c = Consumer::create(std::move(bus), cfg);
  EXPECT_TRUE(c);
  EXPECT_TRUE(c->assign(tps));
  return std::move(*c);
}

std::vector<std::string> drain(Consumer& c, std::size_t want, std::chrono::milliseconds limit = 5000ms) {
  std::vector<std::string> out;
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (out.size() < want && std::chrono::steady_clock::now() < deadline) {
    auto b = c.poll(50ms);
    EXPECT_TRUE(b);
    if (!b) break;
    for (const auto& r : *b) out.emplace_back(as_string(r.value));
  }
  return out;
}

}  // namespace

TEST(Bus, CreateListDescribeDelete) {
  test::TestBus bus("bus");
  ASSERT_TRUE(bus->create_topic("orders", small(3)));
  auto dup = bus->create_topic("orders", small(3));
  ASSERT_FALSE(dup);
  EXPECT_EQ(dup.error().code, Errc::kAlreadyExists);
  auto list = bus->list_topics();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].name, "orders");
  EXPECT_EQ(list[0].config.partitions, 3u);
  auto d = bus->describe_topic("orders");
  ASSERT_TRUE(d);
  ASSERT_EQ(d->partitions.size(), 3u);
  EXPECT_EQ(d->partitions[2].capacity, 65536u);
  EXPECT_TRUE(shm::Segment::exists(partition_segment_name(bus.name(), "orders", 2)));
  ASSERT_TRUE(bus->delete_topic("orders"));
  EXPECT_FALSE(shm::Segment::exists(partition_segment_name(bus.name(), "orders", 2)));
  EXPECT_TRUE(bus->list_topics().empty());
  EXPECT_EQ(bus->delete_topic("orders").error().code, Errc::kNotFound);
}

TEST(Bus, SegmentsAreOwnerOnly) {
  test::TestBus bus("perm");
  ASSERT_TRUE(bus->create_topic("t", small()));
  struct stat st{};
  ASSERT_EQ(::stat(shm::Segment::path_of(registry_segment_name(bus.name())).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat(shm::Segment::path_of(partition_segment_name(bus.name(), "t", 0)).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(Bus, BadConfigsAreRefusedAndChangeNothing) {
  test::TestBus bus("badcfg");
  EXPECT_EQ(bus->create_topic("bad name", small()).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(bus->create_topic("t", small(0)).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(bus->create_topic("t", small(1, 5000)).error().code, Errc::kInvalidArgument);
  EXPECT_EQ(bus->create_topic("t", small(1, 1024)).error().code, Errc::kInvalidArgument);
  TopicConfig c = small();
  c.max_record = 65536;
  auto e = bus->create_topic("t", c);
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message.find("max record"), std::string::npos);
  c = small(1, std::uint64_t{1} << 32);
  c.partitions = 1024;  // 4 TiB of shared memory: refused before anything is created
  auto nospace = bus->create_topic("huge", c);
  ASSERT_FALSE(nospace);
  EXPECT_EQ(nospace.error().code, Errc::kNoSpace);
  EXPECT_NE(nospace.error().message.find("--capacity"), std::string::npos);
  EXPECT_TRUE(bus->list_topics().empty());
  EXPECT_FALSE(shm::Segment::exists(partition_segment_name(bus.name(), "huge", 0)));
}

TEST(Bus, KeyedRecordsGoToTheKafkaPartitionAndKeepTheirFields) {
  test::TestBus bus("keys");
  ASSERT_TRUE(bus->create_topic("t", small(4)));
  auto p = Producer::create(bus.get());
  ASSERT_TRUE(p);
  Header hs[] = {{"trace", as_bytes("abc")}, {"empty", {}}};
  Message m;
  m.key = as_bytes("kafka");
  m.value = as_bytes("hello");
  m.headers = hs;
  m.timestamp_ns = 1234567;
  auto md = p->send("t", m);
  ASSERT_TRUE(md);
  EXPECT_EQ(md->partition, (0xd067cf64u & 0x7fffffffu) % 4);
  EXPECT_EQ(md->offset, 0u);
  auto c = consumer_at(bus.get(), {{"t", md->partition}});
  auto b = c.poll(1s);
  ASSERT_TRUE(b);
  ASSERT_EQ(b->size(), 1u);
  const auto& r = (*b)[0];
  EXPECT_EQ(as_string(*r.key), "kafka");
  EXPECT_EQ(as_string(r.value), "hello");
  EXPECT_EQ(r.timestamp_ns, 1234567);
  EXPECT_EQ(r.topic, "t");
  auto it = r.headers();
  auto h1 = it.next();
  ASSERT_TRUE(h1);
  EXPECT_EQ(h1->key, "trace");
  EXPECT_EQ(as_string(h1->value), "abc");
  auto h2 = it.next();
  ASSERT_TRUE(h2);
  EXPECT_EQ(h2->key, "empty");
  EXPECT_TRUE(h2->value.empty());
  EXPECT_FALSE(it.next());
}

TEST(Bus, NullValueIsToldApartFromAnEmptyOneInCopiesAndInRingViews) {
  test::TestBus bus("tombstone");
  ASSERT_TRUE(bus->create_topic("t", small()));
  auto p = Producer::create(bus.get());
  ASSERT_TRUE(p);
  Message tombstone{as_bytes("k"), {}};
  tombstone.null_value = true;
  ASSERT_TRUE(p->send("t", tombstone));
  ASSERT_TRUE(p->send("t", Message{as_bytes("k"), {}}));  // empty, not null
  std::vector<Message> batch(2, tombstone);
  batch[1].null_value = false;
  ASSERT_TRUE(p->send_batch("t", batch));
  Message misuse{as_bytes("k"), as_bytes("x")};  // null with bytes: read back as the bytes
  misuse.null_value = true;
  ASSERT_TRUE(p->send("t", misuse));
  for (bool hold : {false, true}) {
    auto c = consumer_at(bus.get(), {{"t", 0}}, OffsetReset::kEarliest, hold);
    std::vector<bool> nulls;
    for (int i = 0; i < 50 && nulls.size() < 5; ++i) {
      auto b = c.poll(50ms);
      ASSERT_TRUE(b);
      for (const auto& r : *b) {
        EXPECT_EQ(as_string(r.value), nulls.size() == 4 ? "x" : "");
        nulls.push_back(r.null_value);
      }
    }
    EXPECT_EQ(nulls, (std::vector<bool>{true, false, true, false, false})) << "hold_producers " << hold;
  }
}

// A topic whose records are tiny: the producer pads a record to a cache line (64 bytes,
// the default alignment), which is more than a 16-byte payload limit's record of 56 bytes.
// The ring's limit must take that line, or readers call the record damaged.
TEST(Bus, RecordsOfATopicWithATinyMaxRecordAreReadBack) {
  test::TestBus bus("tinyrec");
  for (std::uint32_t max_record : {1u, 8u, 16u, 24u}) {
    const std::string topic = "t" + std::to_string(max_record);
    TopicConfig c = small();
    c.max_record = max_record;
    ASSERT_TRUE(bus->create_topic(topic, c));
    for (bool exclusive : {false, true}) {
      ProducerConfig pc;
      pc.exclusive = exclusive;
      auto p = Producer::create(bus.get(), pc);
      ASSERT_TRUE(p);
      ASSERT_TRUE(p->send(topic, Message{std::nullopt, as_bytes("x")}, 0));
      std::vector<Message> two(2, Message{std::nullopt, as_bytes("y")});
      ASSERT_TRUE(p->send_batch(topic, two, 0));
    }
    auto c2 = consumer_at(bus.get(), {{topic, 0}}, OffsetReset::kEarliest, false);
    std::string got;
    for (int i = 0; i < 50 && got.size() < 6; ++i) {
      auto b = c2.poll(50ms);
      ASSERT_TRUE(b) << "max_record " << max_record << ": " << b.error().message;
      for (const auto& r : *b) got += as_string(r.value);
    }
    EXPECT_EQ(got, "xyyxyy") << "max_record " << max_record;
  }
}

// "k=v;" per header, "k=(null);" for a null header value.
std::string header_list(const ConsumedRecord& r) {
  std::string out;
  for (auto it = r.headers(); auto h = it.next();)
    out += std::string(h->key) + "=" + (h->null_value ? std::string("(null)") : "'" + std::string(as_string(h->value)) + "'") + ";";
  return out;
}

TEST(Bus, NullHeaderValueIsToldApartFromAnEmptyOneInCopiesAndInRingViews) {
  test::TestBus bus("nullheader");
  ASSERT_TRUE(bus->create_topic("t", small()));
  auto p = Producer::create(bus.get());
  ASSERT_TRUE(p);
  const Header hs[] = {{"n", {}, /*null_value=*/true}, {"e", {}}, {"v", as_bytes("x")}, {"misuse", as_bytes("y"), true}, {"n2", {}, true}};
  Message m{as_bytes("k"), as_bytes("value"), hs};
  ASSERT_TRUE(p->send("t", m));
  std::vector<Message> batch(2, m);
  batch[1].headers = std::span(hs, 2);
  ASSERT_TRUE(p->send_batch("t", batch));
  // A null header value takes no bytes: the record is as large as with an empty one.
  TopicConfig exact = small();
  exact.max_record = 1 + 5 + (8 + 1) + (8 + 1);  // key, value, "n" and "e" headers
  ASSERT_TRUE(bus->create_topic("exact", exact));
  Message fits{as_bytes("k"), as_bytes("value"), std::span(hs, 2)};
  ASSERT_TRUE(p->send("exact", fits));
  const std::string all = "n=(null);e='';v='x';misuse='y';n2=(null);";
  for (bool hold : {false, true}) {
    auto c = consumer_at(bus.get(), {{"t", 0}, {"exact", 0}}, OffsetReset::kEarliest, hold);
    std::vector<std::string> seen;
    for (int i = 0; i < 50 && seen.size() < 4; ++i) {
      auto b = c.poll(50ms);
      ASSERT_TRUE(b);
      for (const auto& r : *b) {
        EXPECT_EQ(as_string(r.value), "value");
        seen.push_back(std::string(r.topic) + ":" + header_list(r));
      }
    }
    std::sort(seen.begin(), seen.end());
    EXPECT_EQ(seen, (std::vector<std::string>{"exact:n=(null);e='';", "t:n=(null);e='';", "t:" + all, "t:" + all}))
        << "hold_producers " << hold;
  }
}

TEST(Bus, OffsetsForTimesFindTheFirstRecordAtOrAfterEachTime) {
  test::TestBus bus("fortimes");
  ASSERT_TRUE(bus->create_topic("t", small(2)));
  auto p = Producer::create(bus.get());
  ASSERT_TRUE(p);
  const std::int64_t base = 1'700'000'000'000'000'000;
  // Partition 0: 100, 200, 200, 300 (ns after base); partition 1: one record at 50.
  for (std::int64_t ts : {100, 200, 200, 300}) {
    Message m{std::nullopt, as_bytes("v")};
    m.timestamp_ns = base + ts;
    ASSERT_TRUE(p->send("t", m, 0u));
  }
  Message one{std::nullopt, as_bytes("w")};
  one.timestamp_ns = base + 50;
  ASSERT_TRUE(p->send("t", one, 1u));
  auto c = Consumer::create(bus.get());
  ASSERT_TRUE(c);
  // Not assigned: a lookup needs no assignment.
  auto r = c->offsets_for_times({{{"t", 0}, base + 150}, {{"t", 0}, base + 200}, {{"t", 0}, 0}, {{"t", 0}, base + 300},
                                 {{"t", 0}, base + 301}, {{"t", 1}, base + 51}, {{"t", 1}, base + 50}});
  ASSERT_TRUE(r) << r.error().message;
  ASSERT_EQ(r->size(), 7u);
  auto at = [&](std::size_t i) { return (*r)[i] ? std::make_pair((*r)[i]->offset, (*r)[i]->timestamp_ns - base) : std::make_pair(~std::uint64_t{0}, std::int64_t{-1}); };
  EXPECT_EQ(at(0), std::make_pair(std::uint64_t{1}, 200l));
  EXPECT_EQ(at(1), std::make_pair(std::uint64_t{1}, 200l)) << "at the time itself: the first record of it";
  EXPECT_EQ(at(2), std::make_pair(std::uint64_t{0}, 100l));
  EXPECT_EQ(at(3), std::make_pair(std::uint64_t{3}, 300l));
  EXPECT_FALSE((*r)[4]) << "every record is older: none (Kafka's null)";
  EXPECT_FALSE((*r)[5]);
  EXPECT_EQ(at(6), std::make_pair(std::uint64_t{0}, 50l));
  // An overwritten ring: a time before everything is the oldest record still there.
  ASSERT_TRUE(bus->create_topic("small", small(1, 4096)));
  for (int i = 0; i < 200; ++i) {
    Message m{std::nullopt, as_bytes("0123456789abcdef")};
    m.timestamp_ns = base + i;
    ASSERT_TRUE(p->send("small", m));
  }
  auto info = bus->describe_topic("small");
  ASSERT_TRUE(info);
  const std::uint64_t start = info->partitions[0].start_offset;
  ASSERT_GT(start, 0u);
  auto old = c->offsets_for_times({{{"small", 0}, 0}, {{"small", 0}, base + 199}});
  ASSERT_TRUE(old) << old.error().message;
  ASSERT_TRUE((*old)[0] && (*old)[1]);
  EXPECT_EQ((*old)[0]->offset, start);
  EXPECT_EQ((*old)[0]->timestamp_ns, base + static_cast<std::int64_t>(start));
  EXPECT_EQ((*old)[1]->offset, 199u);
  // Unknown topics and partitions fail the call, naming them.
  auto bad = c->offsets_for_times({{{"t", 0}, 0}, {{"t", 2}, 0}});
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, Errc::kInvalidArgument);
  EXPECT_NE(bad.error().message.find("no partition 2"), std::string::npos) << bad.error().message;
  EXPECT_EQ(c->offsets_for_times({{{"nope", 0}, 0}}).error().code, Errc::kNotFound);
}

// Sends one record a timestamp of `ts` to partition 0 of `topic`, values of `value_len` bytes.
void send_stamped(Producer& p, const char* topic, const std::vector<std::int64_t>& ts, std::size_t value_len) {
  const std::string v(value_len, 'v');
  for (std::int64_t t : ts) {
    Message m{std::nullopt, as_bytes(v)};
    m.timestamp_ns = t;
    ASSERT_TRUE(p.send(topic, m, 0u));
  }
}

TEST(Bus, OffsetsForTimesFindARingRecordByABinarySearchThroughTheOffsetIndex) {
  test::TestBus bus("ringtime");
  ASSERT_TRUE(bus->create_topic("t", small(1, 1 << 20)));
  auto p = Producer::create(bus.get());
  ASSERT_TRUE(p);
  const std::int64_t base = 1'700'000'000'000'000'000;
  std::vector<std::int64_t> ts(4000);
  for (std::size_t i = 0; i < ts.size(); ++i) ts[i] = base + static_cast<std::int64_t>(i) * 10;
  send_stamped(*p, "t", ts, 24);  // 64-byte records: the offset index holds every one
  const shm::Ring ring = bus->topic("t").value()->ring(0);
  for (std::int64_t t : {std::int64_t{0}, ts[0], ts[0] + 1, ts[1234] - 3, ts[2000], ts[3998] + 9, ts[3999], ts[3999] + 1}) {
    LookupStats st;
    auto m = find_offset_for_time("", ring, t, &st);
    ASSERT_TRUE(m) << m.error().message;
    const auto want = std::find_if(ts.begin(), ts.end(), [&](std::int64_t x) { return x >= t; });
    if (want == ts.end()) {
      EXPECT_FALSE(*m) << t - base;
    } else {
      ASSERT_TRUE(*m) << t - base;
      EXPECT_EQ((*m)->offset, static_cast<std::uint64_t>(want - ts.begin())) << t - base;
      EXPECT_EQ((*m)->timestamp_ns, *want);
    }
    EXPECT_LE(st.ring_probes, 13u) << "log2(4000) = 12: " << t - base;  // every probe finds its record
    EXPECT_LE(st.ring_records, 2u) << "read in order after the probes: " << t - base;
    EXPECT_EQ(st.ring_restarts, 0u);
  }
  // Timestamps that go backwards (a sawtooth: each run of 100 starts 500 ns before the last
  // one ended): the answer is a record at or after the time whose previous record is older.
  ASSERT_TRUE(bus->create_topic("saw", small(1, 1 << 20)));
  std::vector<std::int64_t> saw(3000);
  for (std::size_t i = 0; i < saw.size(); ++i)
    saw[i] = base + static_cast<std::int64_t>(i % 100) * 10 + static_cast<std::int64_t>(i / 100) * 500;
  send_stamped(*p, "saw", saw, 24);
  const shm::Ring saw_ring = bus->topic("saw").value()->ring(0);
  std::mt19937_64 rng(5);
  for (int i = 0; i < 200; ++i) {
    const std::int64_t t = base + static_cast<std::int64_t>(rng() % 16000);
    LookupStats st;
    auto m = find_offset_for_time("", saw_ring, t, &st);
    ASSERT_TRUE(m) << m.error().message;
    if (!*m) {
      EXPECT_LT(saw.back(), t) << "none: the newest record is older";
      continue;
    }
    const std::uint64_t o = (*m)->offset;
    ASSERT_LT(o, saw.size());
    EXPECT_GE(saw[o], t);
    if (o > 0) {
      EXPECT_LT(saw[o - 1], t) << "offset " << o << " for time " << t - base;
    }
    EXPECT_LE(st.ring_probes + st.ring_records, 15u);
  }
}

TEST(Bus, OffsetsForTimesLappedByProducersDuringTheLookupSearchTheNewRing) {
  test::TestBus bus("ringlap");
  ASSERT_TRUE(bus->create_topic("t", small(1, 4096)));  // 64 records of 64 bytes
  auto p = Producer::create(bus.get());
  ASSERT_TRUE(p);
  const std::int64_t base = 1'700'000'000'000'000'000;
  auto stamps = [&](std::int64_t from, std::int64_t to) {
    std::vector<std::int64_t> v;
    for (std::int64_t i = from; i < to; ++i) v.push_back(base + i * 10);
    return v;
  };
  send_stamped(*p, "t", stamps(0, 40), 24);
  const shm::Ring ring = bus->topic("t").value()->ring(0);
  std::int64_t next = 40;
  // Times before everything, and in the records the producers write during the lookup.
  for (std::int64_t ahead : {-1000, 60, 79}) {
    const std::int64_t target = std::max<std::int64_t>(0, next + ahead);
    // After the lookup's first probe, producers write 80 records, more than the ring holds:
    // everything it read is gone.
    LookupStats st;
    int laps = 0;
    st.after_probe = [&] {
      if (laps++ > 0) return;
      send_stamped(*p, "t", stamps(next, next + 80), 24);
      next += 80;
    };
    auto m = find_offset_for_time("", ring, base + target * 10, &st);
    ASSERT_TRUE(m) << m.error().message;
    ASSERT_GT(laps, 0) << "the binary search probes";
    EXPECT_GE(st.ring_restarts, 1u) << target;
    const std::uint64_t start = ring.start_offset();
    ASSERT_TRUE(*m) << target;
    // The time is older than everything left: the ring's start; else the record itself.
    const std::uint64_t want = std::max<std::uint64_t>(start, static_cast<std::uint64_t>(target));
    EXPECT_EQ((*m)->offset, want) << target;
    EXPECT_EQ((*m)->timestamp_ns, base + static_cast<std::int64_t>(want) * 10) << target;
  }
}

// The partitions of `n` records without a key sent to a new 4-partition topic.
static std::vector<std::uint32_t> null_key_partitions(const char* tag, std::uint32_t sticky_bytes, int n, std::size_t size) {
  test::TestBus bus(tag);
  std::vector<std::uint32_t> parts;
  EXPECT_TRUE(bus->create_topic("t", small(4)));
  ProducerConfig pc;
  pc.sticky_bytes = sticky_bytes;
  auto p = Producer::create(bus.get(), pc);
  EXPECT_TRUE(p);
  for (int i = 0; p && i < n; ++i) {
    auto md = p->send("t", std::nullopt, std::string(size, 'x'));
    EXPECT_TRUE(md) << md.error().message;
    if (md) parts.push_back(md->partition);
  }
  return parts;
}

TEST(Bus, NullKeysStickToOnePartitionThenMoveOn) {
  const auto parts = null_key_partitions("sticky", 1000, 40, 100);
  ASSERT_EQ(parts.size(), 40u);
  // 1000 sticky bytes / ~144-byte records: runs of about 7, visiting every partition.
  EXPECT_EQ(parts[0], parts[5]);
  std::set<std::uint32_t> seen(parts.begin(), parts.end());
  EXPECT_EQ(seen.size(), 4u);
}

TEST(Bus, OversizeRecordIsRefusedAndNothingIsWritten) {
  test::TestBus bus("big");
  TopicConfig c = small();
  c.max_record = 100;
  ASSERT_TRUE(bus->create_topic("t", c));
  auto p = Producer::create(bus.get());
  auto r = p->send("t", std::nullopt, std::string(101, 'x'));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kRecordTooLarge);
  EXPECT_NE(r.error().message.find("101"), std::string::npos);
  EXPECT_NE(r.error().message.find("100"), std::string::npos);
  EXPECT_EQ(bus->describe_topic("t")->partitions[0].end_offset, 0u);
  EXPECT_TRUE(p->send("t", std::nullopt, std::string(100, 'x')));
  EXPECT_EQ(p->send("t", Message{std::nullopt, as_bytes("x")}, 7).error().code, Errc::kInvalidArgument) << "no partition 7";
}

TEST(Bus, RecordAtTheTopicsLimitIsReadableWhateverTheAlignment) {
  test::TestBus bus("limit");
  TopicConfig c = small(1, 4096);
  c.max_record = 100;  // 140 bytes with the header; 64-byte alignment would make it 192
  ASSERT_TRUE(bus->create_topic("t", c));
  auto p = Producer::create(bus.get());
  auto cons = consumer_at(bus.get(), {{"t", 0}});
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(p->send("t", std::nullopt, std::string(100, static_cast<char>('a' + i % 26))));
    auto got = drain(cons, 1);
    ASSERT_EQ(got.size(), 1u) << "record " << i;
    EXPECT_EQ(got[0], std::string(100, static_cast<char>('a' + i % 26)));
  }
}

TEST(Bus, EverySendStartsOnTheAlignmentAndABatchIsPackedInside) {
  test::TestBus bus("align");
  ASSERT_TRUE(bus->create_topic("t", small(1, 1 << 16)));
  ProducerConfig pc;
  pc.record_alignment = 64;
  auto p = Producer::create(bus.get(), pc);
  auto cons = consumer_at(bus.get(), {{"t", 0}});
  const std::string v(64, 'v');  // 104-byte records: 40 of header, 64 of value
  std::vector<Message> three(3, Message{std::nullopt, as_bytes(v)});
  for (int round = 0; round < 200; ++round) {  // 384 bytes a round: wraps the 64 KiB ring once
    ASSERT_TRUE(p->send_batch("t", three, 0));
    ASSERT_TRUE(p->send("t", std::nullopt, "single"));
    auto got = drain(cons, 4);
    ASSERT_EQ(got.size(), 4u);
    EXPECT_EQ(got[0], v);
    EXPECT_EQ(got[2], v);
    EXPECT_EQ(got[3], "single");
  }
  // Where the records lie: a batch's records 8-byte packed, each send's start 64-aligned.
  const shm::Ring ring = bus->topic("t").value()->ring(0);
  shm::RingReader r(ring);
  ASSERT_EQ(r.seek(ring.end_offset() - 8), shm::ReadStatus::kRecord);
  std::vector<std::uint64_t> at;
  const shm::RecordHeader* h = nullptr;
  std::uint32_t len = 0;
  while (r.next(h, len) == shm::ReadStatus::kRecord) {
    at.push_back(r.position());
    r.advance(len);
  }
  ASSERT_EQ(at.size(), 8u);
  for (std::size_t i = 0; i < 8; i += 4) {
    EXPECT_EQ(at[i] % 64, 0u) << "a batch starts aligned";
    EXPECT_EQ(at[i + 1] - at[i], 104u) << "records inside a batch are packed";
    EXPECT_EQ(at[i + 2] - at[i + 1], 104u);
    EXPECT_EQ(at[i + 3] % 64, 0u) << "the single send after it starts aligned";
  }
  // Tiny records are not packed under a cache line: the offset index (one entry per 64
  // ring bytes) must keep finding every offset without walking the ring.
  std::vector<Message> tiny(5, Message{std::nullopt, as_bytes(std::string_view("x"))});
  auto md = p->send_batch("t", tiny, 0);
  ASSERT_TRUE(md);
  std::uint64_t prev = 0;
  for (std::uint64_t o = md->offset; o < md->offset + 5; ++o) {
    const std::uint64_t pos = ring.index_at(o).load();
    if (o > md->offset) {
      EXPECT_EQ(pos - prev, 64u) << "offset " << o;
    }
    prev = pos;
  }
}

// Both readers: in place (a block topic, holding producers back) and copying.
class BadLengths : public ::testing::TestWithParam<bool> {
 protected:
  // Topic "t" with `partitions` partitions, and a reader of all of them from the start.
  void make_reader(test::TestBus& bus, std::uint32_t partitions, std::optional<Consumer>& out) {
    const bool in_place = GetParam();
    ASSERT_TRUE(bus->create_topic("t", small(partitions, 65536, in_place ? RetentionMode::kBlock : RetentionMode::kOverwrite)));
    ConsumerConfig cfg;
    cfg.auto_offset_reset = OffsetReset::kEarliest;
    cfg.hold_producers = in_place;
    auto c = Consumer::create(bus.get(), cfg);
    ASSERT_TRUE(c);
    std::vector<TopicPartition> all;
    for (std::uint32_t p = 0; p < partitions; ++p) all.push_back({"t", p});
    ASSERT_TRUE(c->assign(all));
    out.emplace(std::move(*c));
  }
  // The record at `offset` of `partition` claims a value longer than itself (a damaged
  // segment, or a writer that is not ours).
  static void overstate_value(test::TestBus& bus, std::uint32_t partition, std::uint64_t offset) {
    const shm::Ring ring = bus->topic("t").value()->ring(partition);
    ring.header_at(ring.index_at(offset).load())->value_len = 1u << 20;
  }
};

TEST_P(BadLengths, RecordWhoseLengthsDoNotFitIsReportedOnceAndSteppedOver) {
  test::TestBus bus("badlen");
  std::optional<Consumer> c;
  ASSERT_NO_FATAL_FAILURE(make_reader(bus, 1, c));
  auto p = Producer::create(bus.get());
  for (const char* v : {"a", "b", "c"}) ASSERT_TRUE(p->send("t", std::nullopt, v));
  overstate_value(bus, 0, 1);
  auto first = c->poll(1s);
  ASSERT_TRUE(first) << first.error().message;
  ASSERT_EQ(first->size(), 1u) << "what comes before the bad record is returned";
  EXPECT_EQ(as_string((*first)[0].value), "a");
  auto bad = c->poll(1s);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, Errc::kBadSegment);
  EXPECT_NE(bad.error().message.find("offset 1"), std::string::npos) << bad.error().message;
  auto rest = c->poll(1s);
  ASSERT_TRUE(rest) << rest.error().message;
  ASSERT_EQ(rest->size(), 1u) << "the reader stepped over it";
  EXPECT_EQ(as_string((*rest)[0].value), "c");
  EXPECT_EQ((*rest)[0].offset, 2u);
}
// The bad record is the first of the second partition polled: the first partition's
// records, already read in the same poll, are returned before the error.
TEST_P(BadLengths, RecordsOfOtherPartitionsReadInTheSamePollAreNotLost) {
  test::TestBus bus("badlen2");
  std::optional<Consumer> c;
  ASSERT_NO_FATAL_FAILURE(make_reader(bus, 2, c));
  auto p = Producer::create(bus.get());
  ASSERT_TRUE(p->send("t", Message{std::nullopt, as_bytes(std::string_view("p0-a"))}, 0));
  ASSERT_TRUE(p->send("t", Message{std::nullopt, as_bytes(std::string_view("p0-b"))}, 0));
  ASSERT_TRUE(p->send("t", Message{std::nullopt, as_bytes(std::string_view("p1-bad"))}, 1));
  ASSERT_TRUE(p->send("t", Message{std::nullopt, as_bytes(std::string_view("p1-ok"))}, 1));
  overstate_value(bus, 1, 0);
  std::vector<std::string> got;
  bool reported = false;
  for (int i = 0; i < 6 && got.size() < 3; ++i) {
    auto b = c->poll(100ms);
    if (!b) {
      EXPECT_FALSE(reported) << "reported once";
      EXPECT_NE(b.error().message.find("t-1: record at offset 0"), std::string::npos) << b.error().message;
      reported = true;
      continue;
    }
    for (const auto& r : *b) got.emplace_back(as_string(r.value));
  }
  EXPECT_TRUE(reported);
  EXPECT_EQ(got, (std::vector<std::string>{"p0-a", "p0-b", "p1-ok"}));
}

INSTANTIATE_TEST_SUITE_P(Bus, BadLengths, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "InPlace" : "Copying"; });

TEST(Bus, SendsAreRefusedWhileAReservationIsOpen) {
  test::TestBus bus("resopen");
  ASSERT_TRUE(bus->create_topic("t", small()));
  auto p = Producer::create(bus.get());
  auto r = p->reserve("t", std::nullopt, 8, 0);
  ASSERT_TRUE(r);
  auto s = p->send("t", std::nullopt, "x");
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message.find("reservation"), std::string::npos);
  EXPECT_FALSE(p->reserve("t", std::nullopt, 8, 0));
  ASSERT_TRUE(r->commit());
  EXPECT_TRUE(p->send("t", std::nullopt, "x"));
}

TEST(Bus, BatchSendGetsConsecutiveOffsetsAndWrapsWithPadding) {
  test::TestBus bus("batch");
  ASSERT_TRUE(bus->create_topic("t", small(1, 4096)));
  auto p = Producer::create(bus.get());
  auto c = consumer_at(bus.get(), {{"t", 0}});
  std::vector<std::string> values;
  std::uint64_t next = 0;
  for (int round = 0; round < 50; ++round) {
    std::vector<std::string> vs;
    std::vector<Message> ms;
    for (int i = 0; i < 5; ++i) vs.push_back(fmt::format("r{}-{}-{}", round, i, std::string(round % 37, 'p')));
    for (auto& v : vs) ms.push_back(Message{std::nullopt, as_bytes(v)});
    auto md = p->send_batch("t", ms, 0);
    ASSERT_TRUE(md) << md.error().message;
    EXPECT_EQ(md->offset, next);
    next += 5;
    auto got = drain(c, 5);
    EXPECT_EQ(got, vs);
  }
}

// Every record of a batch goes where send() would put it: a keyed one on its murmur2
// partition, null keys on the sticky one, each partition's records in send order.
TEST(Bus, BatchWithKeysOfSeveralPartitionsPutsEachOnItsKafkaPartition) {
  test::TestBus bus("batchkeys");
  constexpr std::uint32_t kParts = 4;
  ASSERT_TRUE(bus->create_topic("t", small(kParts)));
  auto p = Producer::create(bus.get());
  ASSERT_TRUE(p);
  std::vector<std::string> keys;
  for (int i = 0; i < 40; ++i) keys.push_back(fmt::format("key-{}", i));
  std::vector<Message> ms;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    ms.push_back(Message{as_bytes(keys[i]), as_bytes(keys[i])});
    if (i % 10 == 5) ms.push_back(Message{std::nullopt, as_bytes("null")});
  }
  std::set<std::uint32_t> used;
  for (const auto& k : keys) used.insert(partition_for_key(as_bytes(k), kParts));
  ASSERT_GT(used.size(), 1u) << "the keys must map to several partitions";
  auto md = p->send_batch("t", ms);
  ASSERT_TRUE(md) << md.error().message;
  EXPECT_EQ(md->partition, partition_for_key(as_bytes(keys[0]), kParts)) << "the first record's partition";
  EXPECT_EQ(md->offset, 0u);
  std::vector<TopicPartition> tps;
  for (std::uint32_t part = 0; part < kParts; ++part) tps.push_back({"t", part});
  auto c = consumer_at(bus.get(), tps);
  std::vector<std::vector<std::string>> got(kParts);  // keyed values per partition, as read
  std::set<std::uint32_t> null_parts;
  std::size_t read = 0, nulls = 0;
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (read < ms.size() && std::chrono::steady_clock::now() < deadline) {
    auto b = c.poll(50ms);
    ASSERT_TRUE(b);
    for (const auto& r : *b) {
      ++read;
      if (!r.key) {
        null_parts.insert(r.partition);
        ++nulls;
        continue;
      }
      EXPECT_EQ(partition_for_key(*r.key, kParts), r.partition) << "key " << as_string(*r.key) << " off its partition";
      got[r.partition].emplace_back(as_string(r.value));
    }
  }
  std::size_t keyed = 0;
  for (std::uint32_t part = 0; part < kParts; ++part) {
    std::vector<std::string> expected;  // this partition's keyed records, in send order
    for (const auto& m : ms)
      if (m.key && partition_for_key(*m.key, kParts) == part) expected.emplace_back(as_string(m.value));
    EXPECT_EQ(got[part], expected) << "partition " << part;
    keyed += got[part].size();
  }
  EXPECT_EQ(keyed, keys.size());
  EXPECT_EQ(nulls, 4u);
  EXPECT_EQ(null_parts.size(), 1u) << "null keys of one batch stay on the sticky partition";
  // A partition given for the batch still takes every record, whatever its key.
  auto all = p->send_batch("t", ms, 3);
  ASSERT_TRUE(all) << all.error().message;
  auto c3 = consumer_at(bus.get(), {{"t", 3}}, OffsetReset::kEarliest);
  ASSERT_TRUE(c3.seek({"t", 3}, all->offset));
  EXPECT_EQ(drain(c3, ms.size()).size(), ms.size());
}

// A batch split over partitions whose later partition cannot take its records: the earlier
// partitions' records are appended, the error says how many, nothing of the failed run is.
TEST(Bus, BatchWhoseLaterPartitionIsFullReportsWhatWasAppended) {
  test::TestBus bus("batchfull");
  ASSERT_TRUE(bus->create_topic("t", small(2, 4096, RetentionMode::kBlock)));
  std::string k0, k1;
  for (int i = 0; k0.empty() || k1.empty(); ++i) {
    auto k = fmt::format("k{}", i);
    (partition_for_key(as_bytes(k), 2) == 0 ? k0 : k1) = k;
  }
  ConsumerConfig cc;
  cc.auto_offset_reset = OffsetReset::kEarliest;
  cc.hold_producers = true;  // never polls: holds partition 1 back
  auto holder = Consumer::create(bus.get(), cc);
  ASSERT_TRUE(holder);
  ASSERT_TRUE(holder->assign({{"t", 1}}));
  ProducerConfig pc;
  pc.max_block_ms = 0;
  auto p = Producer::create(bus.get(), pc);
  ASSERT_TRUE(p);
  int filled = 0;
  while (p->send("t", Message{std::nullopt, as_bytes("fill")}, 1)) ASSERT_LT(++filled, 1000);
  std::vector<Message> ms{{as_bytes(k0), as_bytes("to-0")}, {as_bytes(k1), as_bytes("to-1")}};
  auto md = p->send_batch("t", ms);
  ASSERT_FALSE(md);
  EXPECT_EQ(md.error().code, Errc::kTimedOut) << md.error().message;
  EXPECT_NE(md.error().message.find("1 of the batch's 2 records"), std::string::npos) << md.error().message;
  auto c0 = consumer_at(bus.get(), {{"t", 0}});
  EXPECT_EQ(drain(c0, 1), (std::vector<std::string>{"to-0"}));
}

TEST(Bus, ZeroCopyReserveCommitAndAbort) {
  test::TestBus bus("reserve");
  ASSERT_TRUE(bus->create_topic("t", small()));
  auto p = Producer::create(bus.get());
  auto c = consumer_at(bus.get(), {{"t", 0}});
  {
    auto r = p->reserve("t", as_bytes("k"), 5, 0);
    ASSERT_TRUE(r);
    std::memcpy(r->value().data(), "abcde", 5);
    ASSERT_TRUE(r->commit());
  }
  {
    auto r = p->reserve("t", std::nullopt, 5, 0);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->metadata().offset, 1u);
    // Dropped without commit: aborted, the offset is skipped.
  }
  ASSERT_TRUE(p->send("t", std::nullopt, "after"));
  auto got = drain(c, 2);
  EXPECT_EQ(got, (std::vector<std::string>{"abcde", "after"}));
  EXPECT_EQ(c.aborted(), 1u);
  EXPECT_EQ(*c.position({"t", 0}), 3u);
}

TEST(Bus, LappedConsumerAppliesAutoOffsetReset) {
  test::TestBus bus("lap");
  ASSERT_TRUE(bus->create_topic("t", small(1, 4096)));
  auto p = Producer::create(bus.get());
  auto earliest = consumer_at(bus.get(), {{"t", 0}}, OffsetReset::kEarliest);
  auto latest = consumer_at(bus.get(), {{"t", 0}}, OffsetReset::kEarliest);
  auto error = consumer_at(bus.get(), {{"t", 0}}, OffsetReset::kEarliest);
  // Re-create with the policies under test; all start at offset 0.
  ConsumerConfig lc;
  lc.auto_offset_reset = OffsetReset::kLatest;
  latest = std::move(*Consumer::create(bus.get(), lc));
  ASSERT_TRUE(latest.assign({{"t", 0}}));
  ASSERT_TRUE(latest.seek_to_beginning({"t", 0}));
  ConsumerConfig ec;
  ec.auto_offset_reset = OffsetReset::kError;
  error = std::move(*Consumer::create(bus.get(), ec));
  ASSERT_TRUE(error.assign({{"t", 0}}));
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(p->send("t", std::nullopt, fmt::format("{:08}", i)));
  const auto info = *bus->describe_topic("t");
  const std::uint64_t start = info.partitions[0].start_offset;
  ASSERT_GT(start, 0u);

  auto b = earliest.poll(100ms);
  ASSERT_TRUE(b);
  auto again = drain(earliest, 1000 - start - b->size());
  EXPECT_GT(earliest.lost(), 0u);
  EXPECT_GE(*earliest.position({"t", 0}), start);
  EXPECT_EQ(*earliest.position({"t", 0}), 1000u) << "caught up after the reset";

  auto l = latest.poll(100ms);
  ASSERT_TRUE(l);
  EXPECT_TRUE(l->empty());
  EXPECT_EQ(*latest.position({"t", 0}), 1000u);
  EXPECT_EQ(latest.lost(), 1000u);

  auto e = error.poll(100ms);
  ASSERT_FALSE(e);
  EXPECT_EQ(e.error().code, Errc::kOffsetOutOfRange);
  EXPECT_NE(e.error().message.find("overwritten"), std::string::npos);
}

TEST(Bus, RecordsAfterALapAreDenseFromTheNewStart) {
  test::TestBus bus("lap2");
  ASSERT_TRUE(bus->create_topic("t", small(1, 4096)));
  auto p = Producer::create(bus.get());
  auto c = consumer_at(bus.get(), {{"t", 0}}, OffsetReset::kEarliest);
  for (int i = 0; i < 500; ++i) ASSERT_TRUE(p->send("t", std::nullopt, fmt::format("{:08}", i)));
  std::uint64_t expect = ~0ull;
  for (int i = 0; i < 20; ++i) {
    auto b = c.poll(10ms);
    ASSERT_TRUE(b);
    for (const auto& r : *b) {
      if (expect != ~0ull) {
        EXPECT_EQ(r.offset, expect);
      }
      EXPECT_EQ(as_string(r.value), fmt::format("{:08}", r.offset));
      expect = r.offset + 1;
    }
  }
  EXPECT_EQ(expect, 500u);
}

// Topic "t" of one partition, and a producer that packs records at 8 bytes: where each
// record stands is then known to the byte.
Producer packed_producer(test::TestBus& bus, std::uint64_t capacity) {
  EXPECT_TRUE(bus->create_topic("t", small(1, capacity)));
  ProducerConfig pc;
  pc.record_alignment = 8;
  auto p = Producer::create(bus.get(), pc);
  EXPECT_TRUE(p);
  return std::move(*p);
}

// Every record's bytes past its payload, up to its 8-byte end, are zero: none of an older
// lap's bytes is left in a record's last slot (sends, batches with keys, reservations).
TEST(Bus, RecordsLeaveNoOlderBytesInTheirLastSlot) {
  test::TestBus bus("slot");
  auto p = packed_producer(bus, 65536);
  const shm::Ring ring = bus->topic("t").value()->ring(0);
  std::memset(reinterpret_cast<unsigned char*>(ring.header_at(0)), 0xff, 8192);  // an older lap's bytes, all ones
  std::vector<std::pair<std::uint64_t, std::uint32_t>> records;  // offset, payload bytes
  for (std::uint32_t n = 1; n <= 17; ++n) {
    auto md = p.send("t", Message{std::nullopt, as_bytes(std::string(n, 'v'))}, 0);
    ASSERT_TRUE(md) << md.error().message;
    records.emplace_back(md->offset, n);
  }
  const std::string key = "key";
  std::vector<std::string> values;  // outlive the batch's views of them
  for (std::uint32_t n = 1; n <= 9; ++n) values.emplace_back(n, 'b');
  std::vector<Message> batch;
  for (const auto& v : values) batch.push_back(Message{as_bytes(key), as_bytes(v)});
  auto b = p.send_batch("t", batch, 0);
  ASSERT_TRUE(b) << b.error().message;
  for (std::uint32_t n = 1; n <= 9; ++n) records.emplace_back(b->offset + n - 1, 3 + n);
  for (std::uint32_t n = 1; n <= 7; ++n) {
    auto r = p.reserve("t", std::nullopt, n, 0);
    ASSERT_TRUE(r) << r.error().message;
    std::memset(r->value().data(), 'r', n);
    records.emplace_back(r->metadata().offset, n);
    ASSERT_TRUE(r->commit());
  }
  for (const auto& [offset, payload] : records) {
    const std::uint64_t pos = ring.index_at(offset).load();
    const auto* rec = reinterpret_cast<const unsigned char*>(ring.header_at(pos));
    for (std::uint32_t i = shm::kRecordHeaderSize + payload; i % 8 != 0; ++i)
      EXPECT_EQ(rec[i], 0) << "offset " << offset << ", byte " << i << " of a record of " << payload << " payload bytes";
  }
}

// Seen in the kill-stress test (seed 2988449799133206661), made exact: a reader waits at
// byte 64 of a lap for offset 129. There, two laps ago, stood the word of offset 1; the
// lap between put a 26-byte value's last two bytes into the low bytes of that slot. Its
// high six bytes are those of every word of offsets 0..255, so with these two value bytes
// the slot was, to the byte, the word "offset 129, committed": the reader took the next
// bytes for its header and returned an error, or garbage as a record.
TEST(Bus, AValuesLastSlotNeverKeepsAnOlderLapsBytes) {
  test::TestBus bus("torn");
  auto p = packed_producer(bus, 4096);
  const shm::Ring ring = bus->topic("t").value()->ring(0);
  auto send = [&](const std::string& v) {
    auto md = p.send("t", Message{std::nullopt, as_bytes(v)}, 0);
    EXPECT_TRUE(md) << md.error().message;
    return md ? md->offset : ~0ull;
  };
  const std::string v24(24, 'a');  // 64-byte records
  for (int i = 0; i < 64; ++i) send(v24);  // lap 0: offsets 0..63 at 0, 64, ..., 4032
  ASSERT_EQ(ring.index_at(1).load(), 64u);
  const std::uint64_t word = shm::Ring::decoded(129, shm::RecordState::kCommitted) ^ ring.salt();
  std::string v26(26, 'b');
  v26[24] = static_cast<char>(word & 0xff);
  v26[25] = static_cast<char>((word >> 8) & 0xff);
  ASSERT_EQ(send(v26), 64u);  // lap 1: a 72-byte record at 4096, its value ends at 4096 + 66
  for (int i = 0; i < 62; ++i) send(v24);
  send(std::string(16, 'c'));  // a 56-byte record: the lap ends at 8192 exactly
  ASSERT_EQ(send(v24), 128u);
  ASSERT_EQ(ring.index_at(128).load(), 8192u) << "offset 129 would stand at byte 64 of lap 2";
  auto c = consumer_at(bus.get(), {{"t", 0}});
  ASSERT_TRUE(c.seek({"t", 0}, 128));
  auto got = c.poll(200ms);
  ASSERT_TRUE(got) << got.error().message;
  ASSERT_EQ(got->size(), 1u);
  EXPECT_EQ((*got)[0].offset, 128u);
  auto none = c.poll(50ms);
  ASSERT_TRUE(none) << "offset 129 is not written yet: " << none.error().message;
  EXPECT_TRUE(none->empty()) << "a record at offset 129 before it was sent";
  ASSERT_EQ(send("real"), 129u);
  auto real = c.poll(200ms);
  ASSERT_TRUE(real) << real.error().message;
  ASSERT_EQ(real->size(), 1u);
  EXPECT_EQ(as_string((*real)[0].value), "real");
}

// Copies read before a damaged record are judged like any: a producer that lapped the
// reader meanwhile tore them, and they are not returned (they were, before the damage).
TEST(Bus, CopiesReadBeforeADamagedRecordAreCheckedForALap) {
  test::TestBus bus("tornbefore");
  auto p = packed_producer(bus, 4096);
  auto c = consumer_at(bus.get(), {{"t", 0}});
  ASSERT_TRUE(c.seek({"t", 0}, 0));
  const std::string v24(24, 'a');
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(p.send("t", Message{std::nullopt, as_bytes(v24)}, 0));
  const shm::Ring ring = bus->topic("t").value()->ring(0);
  // Offset 3's place (byte 192): a padding word, where no padding can stand. And producers
  // have reclaimed offset 0 (as a lap does) while the reader copied it.
  ring.header_at(192)->word.store(shm::Ring::decoded(3, shm::RecordState::kPadding) ^ ring.salt());
  ring.ctl()->tail.first = 4;
  ring.ctl()->tail.second = 256;
  ring.ctl()->reclaim.first = 1;
  ring.ctl()->reclaim.second = 64;
  auto got = c.poll(100ms);
  if (got) {
    for (const auto& r : *got) EXPECT_NE(r.offset, 0u) << "a copy of offset 0, which producers reclaimed while it was read";
  }
}

TEST(Bus, SeekAndPosition) {
  test::TestBus bus("seek");
  ASSERT_TRUE(bus->create_topic("t", small()));
  auto p = Producer::create(bus.get());
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(p->send("t", std::nullopt, std::to_string(i)));
  auto c = consumer_at(bus.get(), {{"t", 0}}, OffsetReset::kLatest);
  EXPECT_EQ(*c.position({"t", 0}), 10u);
  ASSERT_TRUE(c.seek({"t", 0}, 7));
  EXPECT_EQ(drain(c, 3), (std::vector<std::string>{"7", "8", "9"}));
  auto bad = c.seek({"t", 0}, 11);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, Errc::kOffsetOutOfRange);
  EXPECT_FALSE(c.seek({"t", 1}, 0)) << "not assigned";
  EXPECT_FALSE(c.assign({{"t", 1}})) << "no partition 1";
  EXPECT_FALSE(c.assign({{"nope", 0}}));
}

TEST(Bus, PausedPartitionsAreSkippedByPollUntilResumed) {
  test::TestBus bus("pause");
  auto cfg = small();
  cfg.partitions = 2;
  ASSERT_TRUE(bus->create_topic("t", cfg));
  auto p = Producer::create(bus.get());
  for (std::uint32_t part = 0; part < 2; ++part)
    for (int i = 0; i < 3; ++i) {
      const std::string v = std::string(1, static_cast<char>('a' + part)) + std::to_string(i);
      ASSERT_TRUE(p->send("t", Message{.key = std::nullopt, .value = as_bytes(v)}, part));
    }
  auto c = consumer_at(bus.get(), {{"t", 0}, {"t", 1}}, OffsetReset::kEarliest);
  ASSERT_TRUE(c.pause({{"t", 0}}));
  EXPECT_EQ(c.paused(), (std::vector<TopicPartition>{{"t", 0}}));
  EXPECT_EQ(drain(c, 3), (std::vector<std::string>{"b0", "b1", "b2"}));
  auto none = c.poll(std::chrono::milliseconds(20));
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->empty()) << "a paused partition's records are not returned";
  EXPECT_EQ(*c.position({"t", 0}), 0u);
  ASSERT_TRUE(c.resume({{"t", 0}}));
  EXPECT_TRUE(c.paused().empty());
  EXPECT_EQ(drain(c, 3), (std::vector<std::string>{"a0", "a1", "a2"}));
  auto bad = c.pause({{"t", 5}});
  ASSERT_FALSE(bad) << "not assigned";
  EXPECT_EQ(bad.error().code, Errc::kInvalidArgument);
  ASSERT_TRUE(c.pause({{"t", 1}}));
  ASSERT_TRUE(c.assign({{"t", 1}}));
  EXPECT_TRUE(c.paused().empty()) << "a new assignment starts unpaused";
}

TEST(Bus, DeletedTopicIsReportedToAttachedClients) {
  test::TestBus bus("del");
  ASSERT_TRUE(bus->create_topic("t", small()));
  auto p = Producer::create(bus.get());
  ASSERT_TRUE(p->send("t", std::nullopt, "x"));
  auto c = consumer_at(bus.get(), {{"t", 0}});
  ASSERT_EQ(drain(c, 1).size(), 1u);
  // Another process would see the same: the partition's closed flag is shared.
  BusOptions o;
  o.name = bus.name();
  auto other = Bus::attach(o);
  ASSERT_TRUE(other);
  ASSERT_TRUE((*other)->delete_topic("t"));
  auto r = p->send("t", std::nullopt, "y");
  ASSERT_FALSE(r);
  EXPECT_TRUE(r.error().code == Errc::kTopicDeleted || r.error().code == Errc::kNotFound);
  auto b = c.poll(10ms);
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code, Errc::kTopicDeleted);
  // The name can be used again at once, with fresh offsets.
  ASSERT_TRUE(bus->create_topic("t", small()));
  auto md = p->send("t", std::nullopt, "z");
  ASSERT_TRUE(md) << md.error().message;
  EXPECT_EQ(md->offset, 0u);
}

// Producer::partition_writer: one partition resolved once; its sends are send(topic, m, p)'s.
TEST(Bus, PartitionWriterSendsToItsPartitionWithTheFieldsOfSend) {
  test::TestBus bus("pw");
  ASSERT_TRUE(bus->create_topic("t", small(3)));
  auto p = Producer::create(bus.get());
  auto w = p->partition_writer("t", 2);
  ASSERT_TRUE(w) << w.error().message;
  EXPECT_EQ(w->partition(), 2u);
  EXPECT_EQ(w->topic(), "t");
  const std::string hv = "hv";
  const Header h{"h", as_bytes(hv)};
  for (int i = 0; i < 5; ++i) {
    const std::string v = "v" + std::to_string(i);
    Message m{as_bytes("key"), as_bytes(v)};  // a key that would choose another partition is ignored
    m.headers = std::span<const Header>(&h, 1);
    m.timestamp_ns = 1'000'000'000 + i;
    auto off = w->send(m);
    ASSERT_TRUE(off) << off.error().message;
    EXPECT_EQ(*off, static_cast<std::uint64_t>(i));
  }
  // Interleaved with sends by name to the same partition: one sequence of offsets.
  auto md = p->send("t", Message{std::nullopt, as_bytes("by name")}, 2u);
  ASSERT_TRUE(md);
  EXPECT_EQ(md->offset, 5u);
  auto off = w->send(Message{std::nullopt, as_bytes("")});
  ASSERT_TRUE(off);
  EXPECT_EQ(*off, 6u);
  auto c = consumer_at(bus.get(), {{"t", 2}});
  std::vector<ConsumedRecord> got;
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (got.size() < 7 && std::chrono::steady_clock::now() < deadline) {
    auto b = c.poll(50ms);
    ASSERT_TRUE(b);
    for (const auto& r : *b) got.push_back(r);
  }
  ASSERT_EQ(got.size(), 7u);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(got[i].offset, static_cast<std::uint64_t>(i));
    EXPECT_EQ(got[i].partition, 2u);
    ASSERT_TRUE(got[i].key);
    EXPECT_EQ(as_string(*got[i].key), "key");
    EXPECT_EQ(as_string(got[i].value), "v" + std::to_string(i));
    EXPECT_EQ(got[i].timestamp_ns, 1'000'000'000 + i);
    auto hs = got[i].headers();
    auto h0 = hs.next();
    ASSERT_TRUE(h0);
    EXPECT_EQ(h0->key, "h");
    EXPECT_EQ(as_string(h0->value), "hv");
    EXPECT_FALSE(hs.next());
  }
  EXPECT_EQ(as_string(got[5].value), "by name");
  EXPECT_FALSE(got[6].key);
  EXPECT_GT(got[6].timestamp_ns, 0);  // stamped at the send
}

TEST(Bus, PartitionWriterRefusesWhatSendRefusesNamingIt) {
  test::TestBus bus("pwbad");
  ASSERT_TRUE(bus->create_topic("t", small(2)));
  auto p = Producer::create(bus.get());
  auto none = p->partition_writer("nope", 0);
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().code, Errc::kNotFound);
  auto out = p->partition_writer("t", 2);
  ASSERT_FALSE(out);
  EXPECT_EQ(out.error().code, Errc::kInvalidArgument);
  EXPECT_NE(out.error().message.find("no partition 2"), std::string::npos) << out.error().message;
  auto w = p->partition_writer("t", 1);
  ASSERT_TRUE(w);
  // Over the topic's max record size: refused, nothing written.
  const std::string big(70000, 'b');
  auto r = w->send(Message{std::nullopt, as_bytes(big)});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kRecordTooLarge);
  // While a reservation of its producer is open.
  auto res = p->reserve("t", std::nullopt, 8, 0u);
  ASSERT_TRUE(res);
  auto r2 = w->send(Message{std::nullopt, as_bytes("x")});
  ASSERT_FALSE(r2);
  EXPECT_EQ(r2.error().code, Errc::kInvalidArgument);
  ASSERT_TRUE(res->commit());
  ASSERT_TRUE(w->send(Message{std::nullopt, as_bytes("x")}));
  // Moved from: empty, an error, not a crash.
  PartitionWriter moved = std::move(*w);
  auto r3 = w->send(Message{std::nullopt, as_bytes("x")});
  ASSERT_FALSE(r3);
  EXPECT_EQ(r3.error().code, Errc::kInvalidArgument);
  auto off = moved.send(Message{std::nullopt, as_bytes("y")});
  ASSERT_TRUE(off);
  EXPECT_EQ(*off, 1u);
  EXPECT_EQ(p->partition_writer("t", 1)->send(Message{std::nullopt, as_bytes("z")}).value_or(99), 2u);
}

// The producer's state of a deleted topic is replaced at the next send by name; a
// PartitionWriter made before keeps the old one (shared), and fails for good, naming the
// deletion (under ASan a freed state would be a use after free here).
TEST(Bus, PartitionWriterOfADeletedTopicFailsEvenAfterTheTopicIsCreatedAgain) {
  test::TestBus bus("pwdel");
  ASSERT_TRUE(bus->create_topic("t", small()));
  auto p = Producer::create(bus.get());
  auto w = p->partition_writer("t", 0);
  ASSERT_TRUE(w);
  ASSERT_TRUE(w->send(Message{std::nullopt, as_bytes("a")}));
  ASSERT_TRUE(bus->delete_topic("t"));
  ASSERT_TRUE(bus->create_topic("t", small()));
  auto md = p->send("t", std::nullopt, "b");  // replaces the producer's state of "t"
  ASSERT_TRUE(md) << md.error().message;
  EXPECT_EQ(md->offset, 0u);
  auto r = w->send(Message{std::nullopt, as_bytes("c")});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kTopicDeleted);
  EXPECT_NE(r.error().message.find("topic 't' was deleted"), std::string::npos) << r.error().message;
  auto fresh = p->partition_writer("t", 0);
  ASSERT_TRUE(fresh);
  auto off = fresh->send(Message{std::nullopt, as_bytes("d")});
  ASSERT_TRUE(off);
  EXPECT_EQ(*off, 1u);
}

TEST(Bus, ExclusivePartitionWriterIsOpenedAtOnceAndKeepsOthersOut) {
  test::TestBus bus("pwex");
  ASSERT_TRUE(bus->create_topic("t", small()));
  ProducerConfig ex;
  ex.exclusive = true;
  auto owner = Producer::create(bus.get(), ex);
  auto w = owner->partition_writer("t", 0);
  ASSERT_TRUE(w) << w.error().message;
  // Before its first send, the partition is already ours: another writer is refused.
  auto other = Producer::create(bus.get());
  auto refused = other->partition_writer("t", 0);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, Errc::kTooManyClients);
  for (int i = 0; i < 3000; ++i) ASSERT_TRUE(w->send(Message{std::nullopt, as_bytes("exclusive record")}));  // laps the 64 KiB ring
  auto c = consumer_at(bus.get(), {{"t", 0}}, OffsetReset::kLatest);
  ASSERT_TRUE(w->send(Message{std::nullopt, as_bytes("last")}));
  auto got = drain(c, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0], "last");
}

TEST(Bus, ExclusiveProducerIsItsPartitionsOnlyWriter) {
  test::TestBus bus("excl");
  ASSERT_TRUE(bus->create_topic("t", small(2)));
  ProducerConfig ex;
  ex.exclusive = true;
  auto owner = Producer::create(bus.get(), ex);
  ASSERT_TRUE(owner->send("t", Message{std::nullopt, as_bytes("a")}, 0u));
  auto shared = Producer::create(bus.get());
  auto r = shared->send("t", Message{std::nullopt, as_bytes("b")}, 0u);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, Errc::kTooManyClients);
  EXPECT_NE(r.error().message.find("exclusive producer (pid " + std::to_string(::getpid())), std::string::npos)
      << r.error().message;
  // Exclusive per partition it opens: partition 1 is free, and then held by a shared writer.
  ASSERT_TRUE(shared->send("t", Message{std::nullopt, as_bytes("c")}, 1u));
  auto second = Producer::create(bus.get(), ex);
  auto r2 = second->send("t", Message{std::nullopt, as_bytes("d")}, 1u);
  ASSERT_FALSE(r2);
  EXPECT_EQ(r2.error().code, Errc::kTooManyClients);
  // The owner gone, the partition is anybody's again.
  owner = Producer::create(bus.get());
  ASSERT_TRUE(shared->send("t", Message{std::nullopt, as_bytes("e")}, 0u));
  auto c = consumer_at(bus.get(), {{"t", 0}});
  auto got = drain(c, 2);
  ASSERT_EQ(got.size(), 2u);
}

// The exclusive path has no fence between its tail store and its look at `waiters`; a
// sleeping consumer's membarrier stands in for it. A lost wake-up would show as a record
// waiting out the consumer's 100 ms sleep slice.
TEST(Bus, ConsumerAsleepIsWokenByAnExclusiveProducer) {
  test::TestBus bus("exclwake");
  ASSERT_TRUE(bus->create_topic("t", small()));
  ProducerConfig ex;
  ex.exclusive = true;
  auto p = Producer::create(bus.get(), ex);
  ASSERT_TRUE(p->send("t", Message{std::nullopt, as_bytes("open")}, 0u));  // opens the partition
  ConsumerConfig cfg;
  cfg.auto_offset_reset = OffsetReset::kLatest;
  cfg.wait = WaitStrategy::kBlock;
  auto c = Consumer::create(bus.get(), cfg);
  ASSERT_TRUE(c->assign({{"t", 0}}));
  constexpr int kRecords = 40;
  std::atomic<int> received{0};
  std::atomic<std::int64_t> worst_ns{0};
  std::thread reader([&] {
    while (received.load() < kRecords) {
      auto b = c->poll(2s);
      if (!b) break;
      const auto now = std::chrono::system_clock::now().time_since_epoch().count();
      for (const auto& rec : *b) {
        worst_ns = std::max<std::int64_t>(worst_ns.load(), now - rec.timestamp_ns);
        ++received;
      }
    }
  });
  for (int i = 0; i < kRecords; ++i) {
    std::this_thread::sleep_for(5ms);  // the consumer is asleep in futex_waitv by now
    ASSERT_TRUE(p->send("t", Message{std::nullopt, as_bytes("x")}, 0u));
  }
  reader.join();
  EXPECT_EQ(received.load(), kRecords);
  EXPECT_LT(worst_ns.load(), 90'000'000) << "a record waited out a sleep slice: a wake-up was lost";
}

// A stopped exclusive producer's claim is never timed out; the consumer waiting on it must
// sleep, not spin (found by attacking the exclusive path: it yielded in a loop, with a
// membarrier each time, for as long as the producer was stopped).
TEST(Bus, ConsumerWaitingOnAStoppedExclusiveProducersClaimSleeps) {
  test::TestBus bus("exclstop");
  ASSERT_TRUE(bus->create_topic("t", small()));
  ConsumerConfig cfg;
  cfg.auto_offset_reset = OffsetReset::kEarliest;
  cfg.wait = WaitStrategy::kBlock;
  auto c = Consumer::create(bus.get(), cfg);
  ASSERT_TRUE(c->assign({{"t", 0}}));
  const pid_t child = ::fork();
  if (child == 0) {
    BusOptions o;
    o.name = bus.name();
    auto b = Bus::attach(o);
    ProducerConfig ex;
    ex.exclusive = true;
    auto p = Producer::create(*b, ex);
    shm::test_hooks::before_commit = [] { ::raise(SIGSTOP); };
    ::_exit(p && p->send("t", Message{std::nullopt, as_bytes("late")}, 0u) ? 0 : 1);
  }
  int st = 0;
  ASSERT_EQ(::waitpid(child, &st, WUNTRACED), child);
  ASSERT_TRUE(WIFSTOPPED(st));
  timespec c0{}, c1{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
  auto b = c->poll(400ms);
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_TRUE(b->empty());
  const double cpu_ms = (c1.tv_sec - c0.tv_sec) * 1e3 + (c1.tv_nsec - c0.tv_nsec) / 1e6;
  EXPECT_LT(cpu_ms, 200.0) << "the consumer spun while the claim stayed open";
  ::kill(child, SIGCONT);
  ASSERT_EQ(::waitpid(child, &st, 0), child);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  auto got = drain(*c, 1);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0], "late");
}

TEST(Bus, MissingBusIsNotCreatedWhenAskedNotTo) {
  BusOptions o;
  o.name = test::unique_bus("missing");
  o.create = false;
  auto b = Bus::attach(o);
  ASSERT_FALSE(b);
  EXPECT_EQ(b.error().code, Errc::kNotFound);
  EXPECT_NE(b.error().message.find(o.name), std::string::npos);
  o.name = "bad/bus";
  EXPECT_EQ(Bus::attach(o).error().code, Errc::kInvalidArgument);
}

// Foreign and corrupt segments: a clear error naming the file, no crash, nothing changed.
class BadSegment : public ::testing::Test {
 protected:
  void SetUp() override {
    bus_ = test::unique_bus("badseg");
    path_ = shm::Segment::path_of(registry_segment_name(bus_));
  }
  void TearDown() override { (void)Bus::destroy(bus_); }
  void write_file(const std::string& bytes) {
    std::ofstream f(path_, std::ios::binary);
    f << bytes;
  }
  Error attach_error() {
    BusOptions o;
    o.name = bus_;
    auto b = Bus::attach(o);
    EXPECT_FALSE(b);
    return b ? Error{} : b.error();
  }
  std::string valid_registry() {
    {
      BusOptions o;
      o.name = bus_;
      EXPECT_TRUE(Bus::attach(o));
    }
    std::ifstream f(path_, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
  }
  std::string bus_, path_;
};

TEST_F(BadSegment, TruncatedFileIsRefused) {
  write_file(std::string(10, 'x'));
  Error e = attach_error();
  EXPECT_EQ(e.code, Errc::kBadSegment);
  EXPECT_NE(e.message.find(path_), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("too small"), std::string::npos) << e.message;
}

TEST_F(BadSegment, ForeignMagicIsRefused) {
  write_file(std::string(200000, 'z'));
  Error e = attach_error();
  EXPECT_EQ(e.code, Errc::kBadSegment);
  EXPECT_NE(e.message.find("not a shmbus segment"), std::string::npos) << e.message;
  EXPECT_EQ(std::ifstream(path_, std::ios::ate | std::ios::binary).tellg(), 200000) << "file left as it was";
}

TEST_F(BadSegment, WrongVersionIsRefusedNamingBoth) {
  std::string bytes = valid_registry();
  const std::uint32_t v = (7u << 16) | 3u;
  std::memcpy(bytes.data() + 8, &v, 4);
  write_file(bytes);
  Error e = attach_error();
  EXPECT_EQ(e.code, Errc::kBadSegment);
  EXPECT_NE(e.message.find("7.3"), std::string::npos) << e.message;
  EXPECT_NE(e.message.find("version 1"), std::string::npos) << e.message;
}

TEST_F(BadSegment, CutShortAfterTheHeaderIsRefused) {
  std::string bytes = valid_registry();
  write_file(bytes.substr(0, 4096));
  Error e = attach_error();
  EXPECT_EQ(e.code, Errc::kBadSegment);
  EXPECT_NE(e.message.find("truncated"), std::string::npos) << e.message;
}

TEST_F(BadSegment, CorruptPartitionSegmentIsRefusedWhenTheTopicIsOpened) {
  BusOptions o;
  o.name = bus_;
  auto bus = Bus::attach(o);
  ASSERT_TRUE(bus);
  ASSERT_TRUE((*bus)->create_topic("t", small()));
  const std::string part = shm::Segment::path_of(partition_segment_name(bus_, "t", 0));
  {
    std::fstream f(part, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(128);  // PartitionConfig.capacity
    const std::uint64_t bad = 12345;
    f.write(reinterpret_cast<const char*>(&bad), 8);
  }
  auto again = Bus::attach(o);
  ASSERT_TRUE(again);
  auto t = (*again)->topic("t");
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().code, Errc::kBadSegment);
  EXPECT_NE(t.error().message.find(part), std::string::npos) << t.error().message;
}

// Found by fuzz_segment: readers snapshotted the ring's offset/position pairs with
// cmpxchg16b, which writes, and died of SIGSEGV on a read-only mapping.
TEST(Bus, AConsumerOnAReadOnlyMappingReadsWithoutWriting) {
  test::TestBus bus("ro");
  ASSERT_TRUE(bus->create_topic("t", TopicConfig{}));
  auto p = Producer::create(bus.get());
  ASSERT_TRUE(p);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(p->send("t", Message{std::nullopt, as_bytes(std::to_string(i))}));
  BusOptions o;
  o.name = bus.name();
  o.read_only = true;
  auto ro = Bus::attach(o);
  ASSERT_TRUE(ro);
  ConsumerConfig cc;
  cc.auto_offset_reset = OffsetReset::kEarliest;
  auto c = Consumer::create(*ro, cc);
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->assign({{"t", 0}}));
  auto b = c->poll(std::chrono::milliseconds(100));
  ASSERT_TRUE(b) << b.error().message;
  EXPECT_EQ(b->size(), 10u);
  ASSERT_TRUE(c->seek({"t", 0}, 5));
  ASSERT_TRUE(c->seek_to_end({"t", 0}));
  EXPECT_EQ(*c->position({"t", 0}), 10u);
}

namespace {

// What a poll returned, as text: each record's offset, key (or null), value (or null) and
// header count, or the error's code and message.
std::string describe_poll(const Result<std::span<const ConsumedRecord>>& b) {
  if (!b) return fmt::format("error {} {}", static_cast<int>(b.error().code), b.error().message);
  std::string out;
  for (const auto& r : *b) {
    std::size_t headers = 0;
    for (auto it = r.headers(); it.next();) ++headers;
    out += fmt::format("[{}-{}@{} k={} v={} h={}]", r.topic, r.partition, r.offset,
                       r.key ? fmt::format("'{}'", as_string(*r.key)) : "null",
                       r.null_value ? "null" : fmt::format("'{}'", as_string(r.value)), headers);
  }
  return out.empty() ? "none" : out;
}

// One scripted run through what changes a consumer's state between polls, as text: on a
// block topic read in place, or on an overwrite topic read by copies (which also laps the
// reader). With `slow`, statistics are on: every poll then takes the general path
// (Consumer::Impl::fast_poll() refuses), so the two runs compare the fast path with it.
std::vector<std::string> poll_script(bool slow, bool in_place) {
  test::TestBus bus(slow ? "pollslow" : "pollfast");
  std::vector<std::string> trace;
  auto cfg = small(2, 65536, in_place ? RetentionMode::kBlock : RetentionMode::kOverwrite);
  cfg.max_record = 4096;
  EXPECT_TRUE(bus->create_topic("t", cfg));
  ConsumerConfig cc;
  cc.auto_offset_reset = OffsetReset::kEarliest;
  cc.hold_producers = in_place;
  cc.max_poll_records = 3;
  if (slow) {
    cc.statistics_interval = std::chrono::milliseconds(3'600'000);
    cc.statistics_cb = [](const std::string&) {};
  }
  auto c = Consumer::create(bus.get(), cc);
  EXPECT_TRUE(c);
  EXPECT_TRUE(c->assign({{"t", 0}}));
  auto p = Producer::create(bus.get());
  const Header hd[2] = {{"h1", as_bytes(std::string_view("x"))}, {"h2", {}, true}};
  auto send = [&](std::optional<std::string_view> key, std::optional<std::string_view> value, std::uint32_t part,
                  bool headers = false) {
    Message m{key ? std::optional<Bytes>(as_bytes(*key)) : std::nullopt, value ? as_bytes(*value) : Bytes{}};
    m.null_value = !value;
    if (headers) m.headers = hd;
    EXPECT_TRUE(p->send("t", m, part));
  };
  auto poll = [&](const char* step, std::chrono::milliseconds t = 0ms) {
    auto b = c->poll(t);
    trace.push_back(fmt::format("{}: {} pos={} lost={}", step, describe_poll(b), *c->position({"t", 0}), c->lost()));
  };
  poll("empty");
  send(std::nullopt, "v0", 0);
  send("", "v1", 0, true);
  send("k2", std::nullopt, 0);
  send("k3", "", 0);
  send(std::nullopt, "v4", 0);
  poll("three of five");
  poll("two left");
  poll("none left");
  for (int i = 5; i < 8; ++i) send(std::nullopt, fmt::format("v{}", i), 0);
  EXPECT_TRUE(c->pause({{"t", 0}}));
  poll("paused");
  EXPECT_TRUE(c->resume({{"t", 0}}));
  poll("resumed", 100ms);
  EXPECT_TRUE(c->seek({"t", 0}, 1));
  poll("seek back to 1");
  EXPECT_TRUE(c->seek_to_end({"t", 0}));
  poll("at the end");
  send(std::nullopt, "p1-a", 1);
  EXPECT_TRUE(c->assign({{"t", 0}, {"t", 1}}));
  send(std::nullopt, "v8", 0);
  poll("two partitions", 100ms);
  poll("two partitions again", 100ms);
  EXPECT_TRUE(c->assign({{"t", 0}}));
  EXPECT_TRUE(c->seek({"t", 0}, 9));
  send(std::nullopt, "v9", 0);
  send(std::nullopt, "v10-bad", 0);
  send(std::nullopt, "v11", 0);
  {  // the middle one claims a value longer than itself
    const shm::Ring ring = bus->topic("t").value()->ring(0);
    ring.header_at(ring.index_at(10).load())->value_len = 1u << 20;
  }
  poll("before the bad one");
  poll("the bad one");
  poll("after the bad one");
  poll("nothing more", 20ms);
  // Records of the last poll are released by the next: the gate moved with the reader.
  for (int i = 0; i < 3; ++i) send(std::nullopt, fmt::format("w{}", i), 0);
  poll("last");
  if (!in_place) {  // producers lap the reader: it starts again at the ring's start
    for (int i = 0; i < 2000; ++i) send(std::nullopt, fmt::format("{:0>100}", i), 0);
    poll("lapped", 100ms);
    poll("after the lap");
  }
  EXPECT_TRUE(bus->delete_topic("t"));
  poll("deleted");
  return trace;
}

}  // namespace

class PollPaths : public ::testing::TestWithParam<bool> {};

// Consumer::poll's fast path (one partition) returns what the general path returns, poll for
// poll, through pauses, seeks, a second partition, a damaged record, an empty ring, a lap
// and a deleted topic.
TEST_P(PollPaths, FastAndSlowPollsReturnTheSameRecordsThroughEveryStateChange) {
  const auto fast = poll_script(false, GetParam()), slow = poll_script(true, GetParam());
  ASSERT_EQ(fast.size(), slow.size());
  for (std::size_t i = 0; i < fast.size(); ++i) EXPECT_EQ(fast[i], slow[i]);
  if (std::getenv("SHMBUS_TEST_TRACE"))
    for (const auto& line : slow) std::fprintf(stderr, "%s\n", line.c_str());
  // And what the general path returns is what the script sent.
  ASSERT_GE(slow.size(), 3u);
  EXPECT_EQ(slow[1], "three of five: [t-0@0 k=null v='v0' h=0][t-0@1 k='' v='v1' h=2][t-0@2 k='k2' v=null h=0] pos=3 lost=0");
  EXPECT_EQ(slow[2], "two left: [t-0@3 k='k3' v='' h=0][t-0@4 k=null v='v4' h=0] pos=5 lost=0");
  if (!GetParam()) {
    ASSERT_GE(slow.size(), 3u);
    EXPECT_EQ(slow[slow.size() - 3].find("lapped: [t-0@"), 0u) << slow[slow.size() - 3];
    EXPECT_EQ(slow[slow.size() - 3].find("lost=0"), std::string::npos) << "the lap was taken";
  }
}
INSTANTIATE_TEST_SUITE_P(Bus, PollPaths, ::testing::Values(true, false),
                         [](const auto& info) { return info.param ? "InPlace" : "Copying"; });

// A forked child cannot poll its parent's consumer, even one that polled through the fast
// path (which checks a fork generation, not the pid); the parent polls on undisturbed.
TEST(Bus, ForkedChildsPollIsRefusedAfterFastPolls) {
  test::TestBus bus("pollfork");
  ASSERT_TRUE(bus->create_topic("t", small(1, 65536, RetentionMode::kBlock)));
  auto c = consumer_at(bus.get(), {{"t", 0}}, OffsetReset::kEarliest, /*hold_producers=*/true, /*max_poll_records=*/1);
  auto p = Producer::create(bus.get());
  for (int i = 0; i < 12; ++i) ASSERT_TRUE(p->send("t", std::nullopt, std::to_string(i)));
  for (int i = 0; i < 10; ++i) {
    auto b = c.poll(0ms);
    ASSERT_TRUE(b && !b->empty());
  }
  const std::uint64_t at = *c.position({"t", 0});
  const pid_t child = ::fork();
  if (child == 0) {
    auto b = c.poll(0ms);
    const bool refused = !b && b.error().code == Errc::kInvalidArgument &&
                         b.error().message.find("forked child") != std::string::npos;
    ::_exit(refused && *c.position({"t", 0}) == at ? 0 : 1);
  }
  int st = 0;
  ASSERT_EQ(::waitpid(child, &st, 0), child);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "the child's poll was not refused";
  ASSERT_TRUE(p->send("t", std::nullopt, "after"));
  auto got = drain(c, 1);
  ASSERT_FALSE(got.empty());
}

// A one-record poll read in place holds its record (and the producers) until the next
// poll, which releases exactly what it returned before.
TEST(Bus, OneRecordPollHoldsItsRecordUntilTheNextPoll) {
  test::TestBus bus("pollhold");
  auto cfg = small(1, 4096, RetentionMode::kBlock);
  ASSERT_TRUE(bus->create_topic("t", cfg));
  auto c = consumer_at(bus.get(), {{"t", 0}}, OffsetReset::kEarliest, /*hold_producers=*/true, /*max_poll_records=*/1);
  ProducerConfig pc;
  pc.max_block_ms = 0;
  auto p = Producer::create(bus.get(), pc);
  const std::string value(200, 'a');
  std::uint64_t sent = 0;
  while (p->send("t", std::nullopt, value)) ++sent;
  ASSERT_GT(sent, 4u);
  auto first = c.poll(0ms);
  ASSERT_TRUE(first && first->size() == 1u);
  const std::string held(as_string((*first)[0].value));
  EXPECT_FALSE(p->send("t", std::nullopt, value)) << "the record just returned is still held";
  EXPECT_EQ(as_string((*first)[0].value), held);
  auto second = c.poll(0ms);
  ASSERT_TRUE(second && second->size() == 1u);
  EXPECT_EQ((*second)[0].offset, 1u);
  EXPECT_TRUE(p->send("t", std::nullopt, value)) << "the first record's room was given back";
  EXPECT_FALSE(p->send("t", std::nullopt, value)) << "and no more than that";
}

class FastPathWaits : public ::testing::TestWithParam<WaitStrategy> {};

// A claim committed in its entry whose first word was never stored (its writer stopped in
// between): only unstick(), which the wait runs every 256th empty look, finds the record.
// A one-partition consumer spins (or sleeps) through the fast path's looks and must still
// get there, in place and by copies.
TEST_P(FastPathWaits, FindsACommittedClaimWithoutItsFirstWord) {
  for (const bool in_place : {true, false}) {
    test::TestBus bus("pollword");
    ASSERT_TRUE(bus->create_topic("t", small(1, 65536, in_place ? RetentionMode::kBlock : RetentionMode::kOverwrite)));
    ConsumerConfig cc;
    cc.auto_offset_reset = OffsetReset::kEarliest;
    cc.hold_producers = in_place;
    cc.max_poll_records = 1;
    cc.wait = GetParam();
    cc.stall = 2ms;
    auto c = Consumer::create(bus.get(), cc);
    ASSERT_TRUE(c);
    ASSERT_TRUE(c->assign({{"t", 0}}));
    auto p = Producer::create(bus.get());
    ASSERT_TRUE(p->send("t", std::nullopt, "first"));
    auto first = c->poll(1s);
    ASSERT_TRUE(first && first->size() == 1u) << "the fast path's first record";
    const pid_t child = ::fork();
    if (child == 0) {
      BusOptions o;
      o.name = bus.name();
      auto b = Bus::attach(o);
      auto q = Producer::create(*b);
      shm::test_hooks::after_commit = [] { ::raise(SIGSTOP); };
      ::_exit(q && q->send("t", Message{std::nullopt, as_bytes("wordless")}, 0u) ? 0 : 1);
    }
    int st = 0;
    ASSERT_EQ(::waitpid(child, &st, WUNTRACED), child);
    ASSERT_TRUE(WIFSTOPPED(st));
    auto b = c->poll(2s);
    ::kill(child, SIGCONT);
    ASSERT_EQ(::waitpid(child, &st, 0), child);
    ASSERT_TRUE(b) << b.error().message;
    ASSERT_EQ(b->size(), 1u) << (in_place ? "in place" : "copying") << ": the committed record was not found";
    EXPECT_EQ(as_string((*b)[0].value), "wordless");
    EXPECT_EQ((*b)[0].offset, 1u);
  }
}
INSTANTIATE_TEST_SUITE_P(Bus, FastPathWaits,
                         ::testing::Values(WaitStrategy::kSpin, WaitStrategy::kBlock, WaitStrategy::kAdaptive),
                         [](const auto& info) {
                           return info.param == WaitStrategy::kSpin ? "Spin" : info.param == WaitStrategy::kBlock ? "Block" : "Adaptive";
                         });

// A forked child of a producer that sent through send()'s and PartitionWriter::send()'s
// fast paths cannot send under its parent's writer slot, exclusive or shared: the inline
// claim checks a fork generation and the general claim refuses, naming the fork.
TEST(Bus, ForkedChildOfAProducerIsRefusedAfterFastSends) {
  for (const bool exclusive : {true, false}) {
    test::TestBus bus("sendfork");
    ASSERT_TRUE(bus->create_topic("t", small()));
    ProducerConfig pc;
    pc.exclusive = exclusive;
    auto p = Producer::create(bus.get(), pc);
    ASSERT_TRUE(p);
    auto w = p->partition_writer("t", 0);
    ASSERT_TRUE(w);
    for (int i = 0; i < 10; ++i) {
      ASSERT_TRUE(p->send("t", Message{std::nullopt, as_bytes(std::string_view("by name"))}, 0u));
      ASSERT_TRUE(w->send(Message{std::nullopt, as_bytes(std::string_view("by writer"))}));
    }
    const pid_t child = ::fork();
    if (child == 0) {
      auto a = p->send("t", Message{std::nullopt, as_bytes(std::string_view("child"))}, 0u);
      auto b = w->send(Message{std::nullopt, as_bytes(std::string_view("child"))});
      const bool refused = !a && !b && a.error().message.find("forked child") != std::string::npos &&
                           b.error().message.find("forked child") != std::string::npos;
      ::_exit(refused ? 0 : 1);
    }
    int st = 0;
    ASSERT_EQ(::waitpid(child, &st, 0), child);
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << (exclusive ? "exclusive" : "shared") << ": the child sent";
    auto md = p->send("t", Message{std::nullopt, as_bytes(std::string_view("parent"))}, 0u);
    ASSERT_TRUE(md) << md.error().message;
    EXPECT_EQ(md->offset, 20u) << "the parent sends on, and the child appended nothing";
  }
}

// send() by name after sends that warmed its fast path still refuses what it refused before:
// a partition the topic does not have, a send while a reservation is open, a deleted topic;
// keys still choose their partitions.
TEST(Bus, SendsByNameAfterWarmSendsStillCheckEverything) {
  test::TestBus bus("sendwarm");
  ASSERT_TRUE(bus->create_topic("t", small(4)));
  auto p = Producer::create(bus.get());
  for (std::uint32_t part = 0; part < 4; ++part)
    ASSERT_TRUE(p->send("t", Message{std::nullopt, as_bytes(std::string_view("warm"))}, part));
  auto bad = p->send("t", Message{std::nullopt, as_bytes(std::string_view("x"))}, 4u);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, Errc::kInvalidArgument);
  EXPECT_NE(bad.error().message.find("no partition 4"), std::string::npos) << bad.error().message;
  for (const char* key : {"a", "b", "c", "d", "e"}) {
    auto md = p->send("t", Message{as_bytes(std::string_view(key)), as_bytes(std::string_view("v"))});
    ASSERT_TRUE(md);
    EXPECT_EQ(md->partition, partition_for_key(as_bytes(std::string_view(key)), 4)) << key;
  }
  auto r = p->reserve("t", std::nullopt, 8, 0);
  ASSERT_TRUE(r);
  auto refused = p->send("t", Message{std::nullopt, as_bytes(std::string_view("x"))}, 0u);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("reservation"), std::string::npos) << refused.error().message;
  ASSERT_TRUE(r->commit());
  BusOptions o;
  o.name = bus.name();
  auto other = Bus::attach(o);
  ASSERT_TRUE(other);
  ASSERT_TRUE((*other)->delete_topic("t"));
  auto gone = p->send("t", Message{std::nullopt, as_bytes(std::string_view("x"))}, 1u);
  ASSERT_FALSE(gone);
  EXPECT_TRUE(gone.error().code == Errc::kTopicDeleted || gone.error().code == Errc::kNotFound) << gone.error().message;
}

// sticky_bytes 0 moves on after every record: records without a key go round robin over
// every partition, also while the partitions' writers are opened one by one (the partition
// is chosen once per send, whichever way send() resolves it).
TEST(Bus, NullKeysWithStickyBytesZeroGoRoundRobinOverEveryPartition) {
  const auto parts = null_key_partitions("stickyzero", 0, 12, 1);
  ASSERT_EQ(parts.size(), 12u);
  EXPECT_EQ(std::set<std::uint32_t>(parts.begin(), parts.end()).size(), 4u);
  for (std::size_t i = 1; i < parts.size(); ++i) EXPECT_EQ(parts[i], (parts[i - 1] + 1) % 4) << "send " << i;
}
