// The Kafka protocol codec of busd's gateway (tools/busd/kafka/): primitives, every request and
// response version, RecordBatch v2 with each codec, frames captured from kcat (librdkafka
// 2.0.2) and kafka-python 2.0.2 (tests/fuzz/corpus/kafka/), and bad input.
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>

#include <gtest/gtest.h>

#include "tools/busd/kafka/compression.h"
#include "tools/busd/kafka/consumer_protocol.h"
#include "tools/busd/kafka/messages.h"
#include "tools/busd/kafka/record_batch.h"
#include "tools/busd/kafka/wire.h"

using namespace shmbus::kafka;

namespace {

std::span<const std::uint8_t> bytes_of(const std::string& s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

std::string corpus(const std::string& name) {
  std::ifstream in(std::string(SHMBUS_SOURCE_DIR) + "/tests/fuzz/corpus/kafka/" + name, std::ios::binary);
  EXPECT_TRUE(in) << name;
  return {std::istreambuf_iterator<char>(in), {}};
}

// A whole frame (with its size prefix) to a decoded request.
tl::expected<Request, DecodeError> decode_frame(const std::string& frame) {
  auto n = frame_size(bytes_of(frame));
  EXPECT_TRUE(n && *n && **n == frame.size() - 4) << frame.size();
  return decode_request(bytes_of(frame).subspan(4));
}

std::string hex(const std::string& s) {
  static const char* d = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out += d[c >> 4];
    out += d[c & 15];
  }
  return out;
}

}  // namespace

// ---- Primitives ----

TEST(KafkaWire, IntegersAreBigEndianAndRoundTrip) {
  std::string out;
  Writer w(out);
  w.i8(-2, "a");
  w.i16(0x1234, "b");
  w.i32(-1, "c");
  w.i64(0x0102030405060708, "d");
  w.u32(0xE3069283, "e");
  w.boolean(true, "f");
  EXPECT_EQ(hex(out), "fe1234ffffffff0102030405060708e306928301");
  Reader r(out);
  std::int8_t a;
  std::int16_t b;
  std::int32_t c;
  std::int64_t d;
  std::uint32_t e;
  bool f;
  r.i8(a, "a"), r.i16(b, "b"), r.i32(c, "c"), r.i64(d, "d"), r.u32(e, "e"), r.boolean(f, "f");
  ASSERT_TRUE(r.ok()) << r.error();
  EXPECT_EQ(a, -2);
  EXPECT_EQ(b, 0x1234);
  EXPECT_EQ(c, -1);
  EXPECT_EQ(d, 0x0102030405060708);
  EXPECT_EQ(e, 0xE3069283u);
  EXPECT_TRUE(f);
  EXPECT_EQ(r.remaining(), 0u);
}

TEST(KafkaWire, VarintsAreZigzagAndRoundTrip) {
  // Known encodings (ByteUtils): 0 -> 00, -1 -> 01, 1 -> 02, 63 -> 7e, -64 -> 7f, 64 -> 8001,
  // 300 -> d804.
  const std::pair<std::int32_t, const char*> known[] = {
      {0, "00"}, {-1, "01"}, {1, "02"}, {63, "7e"}, {-64, "7f"}, {64, "8001"}, {300, "d804"}};
  for (auto [v, h] : known) {
    std::string out;
    Writer(out).varint(v, "v");
    EXPECT_EQ(hex(out), h) << v;
  }
  for (std::int32_t v : {0, 1, -1, 1000, -1000, std::numeric_limits<std::int32_t>::min(),
                         std::numeric_limits<std::int32_t>::max()}) {
    std::string out;
    Writer(out).varint(v, "v");
    Reader r(out);
    std::int32_t back;
    r.varint(back, "v");
    ASSERT_TRUE(r.ok()) << r.error();
    EXPECT_EQ(back, v);
    EXPECT_EQ(r.remaining(), 0u);
  }
  for (std::int64_t v : {std::int64_t{0}, std::int64_t{-1}, std::int64_t{1} << 40, std::numeric_limits<std::int64_t>::min(),
                         std::numeric_limits<std::int64_t>::max()}) {
    std::string out;
    Writer(out).varlong(v, "v");
    Reader r(out);
    std::int64_t back;
    r.varlong(back, "v");
    ASSERT_TRUE(r.ok()) << r.error();
    EXPECT_EQ(back, v);
  }
  std::string out;
  Writer(out).uvarint(0xffffffffu, "u");
  EXPECT_EQ(hex(out), "ffffffff0f");
  Reader r(out);
  EXPECT_EQ(r.uvarint("u"), 0xffffffffu);
}

TEST(KafkaWire, OverlongOrTruncatedVarintIsAnErrorNamingTheField) {
  std::string six("\x80\x80\x80\x80\x80\x01", 6);
  Reader r(six);
  std::int32_t v;
  r.varint(v, "offset_delta");
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.error().find("offset_delta"), std::string::npos) << r.error();
  std::string five_high("\xff\xff\xff\xff\x1f", 5);  // 35 bits
  Reader r2(five_high);
  r2.uvarint("count");
  EXPECT_NE(r2.error().find("longer than 32 bits"), std::string::npos) << r2.error();
  std::string cut("\x80", 1);
  Reader r3(cut);
  r3.varint(v, "length");
  EXPECT_EQ(r3.error(), "field length: truncated varint");
}

TEST(KafkaWire, StringsClassicAndCompactKeepNullDistinctFromEmpty) {
  for (bool flexible : {false, true}) {
    std::string out;
    Writer w(out, flexible);
    w.string("abc", "s");
    w.nullable_string(std::nullopt, "n");
    w.nullable_string(std::string(), "e");
    w.bytes("xy", "b");
    w.nullable_bytes(std::nullopt, "nb");
    w.nullable_bytes(std::string(), "eb");
    EXPECT_EQ(hex(out), flexible ? "04616263" "00" "01" "037879" "00" "01"
                                 : "0003616263" "ffff" "0000" "00000002" "7879" "ffffffff" "00000000");
    Reader r(out, flexible);
    std::string s, b;
    std::optional<std::string> n = "x", e, nb = "x", eb;
    r.string(s, "s"), r.nullable_string(n, "n"), r.nullable_string(e, "e");
    r.bytes(b, "b"), r.nullable_bytes(nb, "nb"), r.nullable_bytes(eb, "eb");
    ASSERT_TRUE(r.ok()) << r.error();
    EXPECT_EQ(s, "abc");
    EXPECT_FALSE(n);
    ASSERT_TRUE(e);
    EXPECT_EQ(*e, "");
    EXPECT_EQ(b, "xy");
    EXPECT_FALSE(nb);
    ASSERT_TRUE(eb);
    EXPECT_EQ(*eb, "");
    EXPECT_EQ(r.remaining(), 0u);
  }
}

TEST(KafkaWire, NullWhereAValueIsRequiredIsAnError) {
  std::string out("\xff\xff", 2);
  Reader r(out);
  std::string s;
  r.string(s, "group_id");
  EXPECT_EQ(r.error(), "field group_id: null where a value is required");
}

TEST(KafkaWire, NegativeLengthsAreErrorsNamingTheField) {
  std::string s16("\xff\xfe", 2);
  Reader r(s16);
  std::string s;
  r.string(s, "client_id");
  EXPECT_EQ(r.error(), "field client_id: negative length -2");
  std::string s32("\x80\x00\x00\x00", 4);
  Reader r2(s32);
  std::optional<std::string> b;
  r2.nullable_bytes(b, "records");
  EXPECT_EQ(r2.error(), "field records: negative length -2147483648");
  std::string v("\x03", 1);  // zigzag -2
  Reader r3(v);
  r3.varbytes(b, "key");
  EXPECT_EQ(r3.error(), "field key: negative length -2");
}

TEST(KafkaWire, LengthsPastTheEndAreErrors) {
  std::string s("\x00\x05" "ab", 4);
  Reader r(s);
  std::string out;
  r.string(out, "name");
  EXPECT_EQ(r.error(), "field name: length 5 exceeds the 2 bytes left");
}

TEST(KafkaWire, ArraysClassicCompactAndNullable) {
  for (bool flexible : {false, true}) {
    std::string out;
    Writer w(out, flexible);
    w.int32_array({1, 2, 3}, "a");
    w.nullable_array(std::optional<std::vector<std::string>>{}, "n", 2, [&](const std::string& x) { w.string(x, "n"); });
    w.string_array({"x", ""}, "s");
    Reader r(out, flexible);
    std::vector<std::int32_t> a;
    std::optional<std::vector<std::string>> n = std::vector<std::string>{"old"};
    std::vector<std::string> s;
    r.int32_array(a, "a");
    r.nullable_array(n, "n", 2, [&](std::string& x) { r.string(x, "n"); });
    r.string_array(s, "s");
    ASSERT_TRUE(r.ok()) << r.error();
    EXPECT_EQ(a, (std::vector<std::int32_t>{1, 2, 3}));
    EXPECT_FALSE(n);
    EXPECT_EQ(s, (std::vector<std::string>{"x", ""}));
    EXPECT_EQ(r.remaining(), 0u);
  }
}

TEST(KafkaWire, ForgedArrayCountIsRefusedBeforeAllocating) {
  // 2^31-1 elements of at least 4 bytes announced in a 12-byte input.
  std::string forged("\x7f\xff\xff\xff" "12345678", 12);
  Reader r(forged);
  std::vector<std::int32_t> v;
  r.int32_array(v, "replica_nodes");
  EXPECT_EQ(r.error(), "field replica_nodes: array count 2147483647 cannot fit in the 8 bytes left");
  EXPECT_EQ(v.capacity(), 0u);
  std::string negative("\xff\xff\xff\xfe", 4);
  Reader r2(negative);
  r2.int32_array(v, "isr_nodes");
  EXPECT_EQ(r2.error(), "field isr_nodes: negative array count -2");
  std::string compact("\xff\xff\xff\xff\x0f", 5);  // compact count 2^32-2
  Reader r3(compact, true);
  r3.int32_array(v, "api_keys");
  EXPECT_NE(r3.error().find("cannot fit"), std::string::npos) << r3.error();
}

TEST(KafkaWire, UuidRoundTrips) {
  Uuid u;
  for (std::size_t i = 0; i < u.size(); ++i) u[i] = static_cast<std::uint8_t>(i * 17);
  std::string out;
  Writer(out).uuid(u, "topic_id");
  Reader r(out);
  Uuid back;
  r.uuid(back, "topic_id");
  EXPECT_EQ(back, u);
  auto cut_in = out.substr(0, 15);
  Reader cut(cut_in);
  cut.uuid(back, "topic_id");
  EXPECT_EQ(cut.error(), "field topic_id: truncated (needs 16 bytes, 15 left)");
}

TEST(KafkaWire, UnknownTaggedFieldsAreSkipped) {
  // Two tags (0: 2 bytes, 5: 1 byte), then an int16.
  std::string in("\x02\x00\x02\xaa\xbb\x05\x01\xcc\x12\x34", 10);
  Reader r(in, true);
  r.tags();
  std::int16_t v;
  r.i16(v, "after");
  ASSERT_TRUE(r.ok()) << r.error();
  EXPECT_EQ(v, 0x1234);
  std::string unordered_in("\x02\x05\x00\x01\x00", 5);
  Reader unordered(unordered_in, true);
  unordered.tags();
  EXPECT_NE(unordered.error().find("out of order"), std::string::npos) << unordered.error();
  std::string oversize_in("\x01\x00\x09\xaa", 4);
  Reader oversize(oversize_in, true);
  oversize.tags();
  EXPECT_EQ(oversize.error(), "field tagged_fields: tag 0 size 9 exceeds the 1 bytes left");
  // Not flexible: no tag section at all.
  std::string classic_in("\x12\x34", 2);
  Reader classic(classic_in, false);
  classic.tags();
  classic.i16(v, "x");
  EXPECT_EQ(v, 0x1234);
}

TEST(KafkaWire, TruncatedReadNamesTheFieldAndStopsLaterReads) {
  std::string in("\x00\x01", 2);
  Reader r(in);
  std::int32_t v = 7;
  r.i32(v, "timeout_ms");
  EXPECT_EQ(r.error(), "field timeout_ms: truncated (needs 4 bytes, 2 left)");
  std::int16_t later = 5;
  r.i16(later, "acks");
  EXPECT_EQ(later, 0);
  EXPECT_EQ(r.error(), "field timeout_ms: truncated (needs 4 bytes, 2 left)");
}

// ---- Versions and headers ----

TEST(KafkaConsumerProtocol, AnEmptyAssignmentIsStillEncodedAndOthersRoundTrip) {
  // kafka-python refuses zero bytes: version 0, no partitions, null user data.
  EXPECT_EQ(encode_assignment({}), std::string("\0\0\0\0\0\0\xff\xff\xff\xff", 10));
  const TopicPartitionList tps = {{"a", {0, 2}}, {"b", {1}}};
  auto back = decode_assignment(encode_assignment(tps));
  ASSERT_TRUE(back) << back.error();
  EXPECT_EQ(*back, tps);
  const std::string sub = encode_subscription({"t1", "t2"});
  auto s = decode_subscription(sub);
  ASSERT_TRUE(s) << s.error();
  EXPECT_EQ(s->version, 0);
  EXPECT_EQ(s->topics, (std::vector<std::string>{"t1", "t2"}));
  EXPECT_FALSE(s->user_data);
}

TEST(KafkaConsumerProtocol, SubscriptionV1OwnedPartitionsAreReadAndTruncationNamed) {
  // librdkafka's v1: topics ["t"], user data "", owned [].
  const std::string v1("\0\x01\0\0\0\x01\0\x01t\0\0\0\0\0\0\0\0", 17);
  auto s = decode_subscription(v1);
  ASSERT_TRUE(s) << s.error();
  EXPECT_EQ(s->version, 1);
  EXPECT_EQ(s->topics, std::vector<std::string>{"t"});
  EXPECT_EQ(s->user_data, std::string());
  auto cut = decode_subscription(v1.substr(0, 8));
  ASSERT_FALSE(cut);
  EXPECT_NE(cut.error().find("topics"), std::string::npos) << cut.error();
}

TEST(KafkaMessages, AdvertisedVersionsAreKafkaMdsWithProduceFromZero) {
  auto r = supported_api_versions();
  auto range = [&](std::int16_t key) {
    for (const auto& a : r.api_keys)
      if (a.api_key == key) return std::pair<int, int>{a.min_version, a.max_version};
    return std::pair<int, int>{-1, -1};
  };
  EXPECT_EQ(range(kApiVersions), std::make_pair(0, 3));
  EXPECT_EQ(range(kMetadata), std::make_pair(0, 4));
  EXPECT_EQ(range(kProduce), std::make_pair(0, 7));  // see kApiTable: librdkafka's compression gate
  EXPECT_EQ(range(kFetch), std::make_pair(4, 11));
  EXPECT_EQ(range(kListOffsets), std::make_pair(1, 2));
  EXPECT_EQ(range(kFindCoordinator), std::make_pair(0, 2));
  EXPECT_EQ(range(kJoinGroup), std::make_pair(0, 5));
  EXPECT_EQ(range(kSyncGroup), std::make_pair(0, 3));
  EXPECT_EQ(range(kHeartbeat), std::make_pair(0, 3));
  EXPECT_EQ(range(kLeaveGroup), std::make_pair(0, 1));
  EXPECT_EQ(range(kOffsetCommit), std::make_pair(2, 7));
  EXPECT_EQ(range(kOffsetFetch), std::make_pair(1, 5));
  EXPECT_EQ(range(kCreateTopics), std::make_pair(0, 4));
  EXPECT_EQ(range(kDeleteTopics), std::make_pair(0, 3));
  EXPECT_EQ(range(kDescribeGroups), std::make_pair(0, 4));
  EXPECT_EQ(range(kListGroups), std::make_pair(0, 2));
  EXPECT_EQ(range(kDescribeConfigs), std::make_pair(0, 1));
  EXPECT_EQ(range(kInitProducerId), std::make_pair(0, 1));  // librdkafka's idempotent producer
  EXPECT_EQ(r.api_keys.size(), 18u);
  // Only ApiVersions v3 is flexible among them.
  for (const auto& a : kApis)
    for (int v = a.min_version; v <= a.max_version; ++v)
      EXPECT_EQ(is_flexible(a.key, static_cast<std::int16_t>(v)), a.key == kApiVersions && v == 3) << a.name << v;
}

TEST(KafkaMessages, EveryRequestVersionRoundTrips) {
  int n = 0;
  for (const auto& a : kApis) {
    for (int v = a.min_version; v <= a.max_version; ++v, ++n) {
      RequestHeader h{a.key, static_cast<std::int16_t>(v), 1000 + v, "client-" + std::to_string(v)};
      auto body = sample_request(a.key, h.api_version);
      auto frame = encode_request(h, body);
      auto req = decode_frame(frame);
      ASSERT_TRUE(req) << a.name << " v" << v << ": " << req.error().message;
      EXPECT_EQ(req->header.api_key, a.key);
      EXPECT_EQ(req->header.api_version, v);
      EXPECT_EQ(req->header.correlation_id, 1000 + v);
      EXPECT_EQ(req->header.client_id, h.client_id);
      EXPECT_EQ(req->body.index(), body.index());
      EXPECT_EQ(encode_request(req->header, req->body), frame) << a.name << " v" << v;
      // Every proper prefix is a malformed request, never a crash or a success.
      for (std::size_t cut = 4; cut < frame.size(); ++cut) {
        auto part = decode_request(bytes_of(frame).subspan(4, cut - 4));
        ASSERT_FALSE(part) << a.name << " v" << v << " cut at " << cut;
        EXPECT_FALSE(part.error().message.empty());
      }
    }
  }
  EXPECT_EQ(n, 78);
}

TEST(KafkaMessages, EveryResponseVersionRoundTrips) {
  for (const auto& a : kApis) {
    for (int v = a.min_version; v <= a.max_version; ++v) {
      auto body = sample_response(a.key, static_cast<std::int16_t>(v));
      auto frame = encode_response(77, static_cast<std::int16_t>(v), body);
      auto back = decode_response(a.key, static_cast<std::int16_t>(v), bytes_of(frame).subspan(4));
      ASSERT_TRUE(back) << a.name << " v" << v << ": " << back.error();
      EXPECT_EQ(back->first, 77);
      EXPECT_EQ(encode_response(77, static_cast<std::int16_t>(v), back->second), frame) << a.name << " v" << v;
    }
  }
}

TEST(KafkaMessages, ApiVersionsV3ResponseHasHeaderV0AndCompactBody) {
  ApiVersionsResponse r;
  r.api_keys = {{18, 0, 3}};
  auto frame = encode_response(0x01020304, 3, r);
  // size, correlation id (no header tags: KIP-511), error 0, compact array of 1 (02),
  // {key, min, max, tags 00}, throttle, tags 00.
  EXPECT_EQ(hex(frame), "00000013" "01020304" "0000" "02" "0012" "0000" "0003" "00" "00000000" "00");
  auto v0 = encode_response(5, 0, r);
  EXPECT_EQ(hex(v0), "00000010" "00000005" "0000" "00000001" "0012" "0000" "0003");
}

TEST(KafkaMessages, ApiVersionsOfAnUnsupportedVersionGetsTheV0Fallback) {
  // ApiVersions v4 from a newer client: header v2 (flexible), compact strings.
  RequestHeader h{kApiVersions, 4, 9, "new-client"};
  std::string frame = encode_request(h, ApiVersionsRequest{"x", "1"});
  auto req = decode_frame(frame);
  ASSERT_FALSE(req);
  EXPECT_EQ(req.error().kind, DecodeError::Kind::kUnsupportedVersion);
  ASSERT_TRUE(req.error().header);
  EXPECT_EQ(req.error().header->correlation_id, 9);
  EXPECT_EQ(req.error().message, "kafka ApiVersions v4: unsupported version (we support 0-3)");
  auto reply = encode_api_versions_fallback(9);
  auto back = decode_response(kApiVersions, 0, bytes_of(reply).subspan(4));
  ASSERT_TRUE(back) << back.error();
  EXPECT_EQ(back->first, 9);
  const auto& body = std::get<ApiVersionsResponse>(back->second);
  EXPECT_EQ(body.error_code, kUnsupportedVersion);
  EXPECT_EQ(body.api_keys.size(), kApis.size());
}

TEST(KafkaMessages, UnknownApiAndVersionOutsideTheRangeAreTypedErrors) {
  std::string frame(4, '\0');  // AddPartitionsToTxn v0: not served (no transactions)
  Writer w(frame);
  w.i16(24, ""), w.i16(0, ""), w.i32(1, ""), w.nullable_string(std::string("c"), "");
  auto r = decode_request(bytes_of(frame).subspan(4));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind, DecodeError::Kind::kUnsupportedApi);
  EXPECT_EQ(r.error().message, "kafka request: unsupported API key 24");
  auto fetch3 = encode_request({kFetch, 3, 2, "c"}, FetchRequest{});
  auto f = decode_frame(fetch3);
  ASSERT_FALSE(f);
  EXPECT_EQ(f.error().kind, DecodeError::Kind::kUnsupportedVersion);
  EXPECT_EQ(f.error().message, "kafka Fetch v3: unsupported version (we support 4-11)");
}

TEST(KafkaMessages, TrailingBytesAfterTheBodyAreMalformed) {
  auto frame = encode_request({kHeartbeat, 1, 3, "c"}, HeartbeatRequest{"g", 1, "m", {}});
  frame += "zz";
  auto r = decode_request(bytes_of(frame).subspan(4));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind, DecodeError::Kind::kMalformed);
  EXPECT_EQ(r.error().message, "kafka Heartbeat v1: field end of request: 2 bytes after the last field");
}

TEST(KafkaMessages, HeartbeatV0KnownBytes) {
  auto frame = encode_request({kHeartbeat, 0, 1, std::nullopt}, HeartbeatRequest{"g", 5, "m", {}});
  EXPECT_EQ(hex(frame), "00000014" "000c" "0000" "00000001" "ffff" "000167" "00000005" "00016d");
  auto r = decode_frame(frame);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_FALSE(r->header.client_id);
  auto& hb = std::get<HeartbeatRequest>(r->body);
  EXPECT_EQ(hb.group_id, "g");
  EXPECT_EQ(hb.generation_id, 5);
  EXPECT_EQ(hb.member_id, "m");
}

TEST(KafkaMessages, ProduceResponseV7PutsThrottleLastAndFetchV11PutsItFirst) {
  ProduceResponse p;
  p.responses = {{"t", {{0, 0, 42, -1, 0}}}};
  p.throttle_time_ms = 0x11223344;
  auto pf = encode_response(1, 7, p);
  EXPECT_EQ(hex(pf).substr(hex(pf).size() - 8), "11223344");
  FetchResponse f;
  f.throttle_time_ms = 0x55667788;
  f.responses = {{"t", {{0, 0, 10, 10, 0, std::nullopt, -1, std::string("rec")}}}};
  auto ff = encode_response(1, 11, f);
  // size, correlation id, then throttle.
  EXPECT_EQ(hex(ff).substr(16, 8), "55667788");
  auto back = decode_response(kFetch, 11, bytes_of(ff).subspan(4));
  ASSERT_TRUE(back) << back.error();
  const auto& part = std::get<FetchResponse>(back->second).responses.at(0).partitions.at(0);
  EXPECT_FALSE(part.aborted_transactions);
  EXPECT_EQ(part.preferred_read_replica, -1);
  EXPECT_EQ(part.records, std::optional<std::string>("rec"));
}

// A Fetch v4 partition is 30 bytes when it has no records and no aborted transactions (no
// log_start_offset before v5): the decoder's minimum element size must not be v5's.
TEST(KafkaMessages, FetchV4ResponseWithAnEmptyPartitionDecodes) {
  FetchResponse r;
  FetchResponse::Partition p;
  p.error_code = kUnknownTopicOrPartition;
  p.aborted_transactions.emplace();
  p.records.emplace();
  r.responses.push_back({"t", {p}});
  const std::string frame = encode_response(9, 4, r);
  auto back = decode_response(kFetch, 4, bytes_of(frame).subspan(4));
  ASSERT_TRUE(back) << back.error();
  EXPECT_EQ(std::get<FetchResponse>(back->second).responses.at(0).partitions.at(0).error_code, kUnknownTopicOrPartition);
}

TEST(KafkaMessages, MetadataV0EmptyMeansAllAndV1NullMeansAll) {
  auto v0 = decode_frame(encode_request({kMetadata, 0, 1, "c"}, MetadataRequest{std::nullopt, true}));
  ASSERT_TRUE(v0);
  auto& m0 = std::get<MetadataRequest>(v0->body);
  ASSERT_TRUE(m0.topics);  // v0 has no null: an empty array, meaning all topics
  EXPECT_TRUE(m0.topics->empty());
  auto v1 = decode_frame(encode_request({kMetadata, 1, 1, "c"}, MetadataRequest{std::nullopt, true}));
  ASSERT_TRUE(v1);
  EXPECT_FALSE(std::get<MetadataRequest>(v1->body).topics);
  auto v1e = decode_frame(encode_request({kMetadata, 1, 1, "c"}, MetadataRequest{std::vector<std::string>{}, true}));
  ASSERT_TRUE(v1e);
  ASSERT_TRUE(std::get<MetadataRequest>(v1e->body).topics);
  auto v4 = decode_frame(encode_request({kMetadata, 4, 1, "c"}, MetadataRequest{std::vector<std::string>{"a"}, false}));
  ASSERT_TRUE(v4);
  EXPECT_FALSE(std::get<MetadataRequest>(v4->body).allow_auto_topic_creation);
}

TEST(KafkaMessages, FrameSizeChecksTheSizePrefix) {
  EXPECT_EQ(frame_size(bytes_of(std::string("\x00\x00", 2))).value(), std::nullopt);
  EXPECT_EQ(frame_size(bytes_of(std::string("\x00\x00\x00\x05" "abc", 7))).value(), std::nullopt);
  EXPECT_EQ(frame_size(bytes_of(std::string("\x00\x00\x00\x02" "abc", 7))).value(), std::optional<std::size_t>(2));
  auto neg = frame_size(bytes_of(std::string("\xff\xff\xff\xff", 4)));
  ASSERT_FALSE(neg);
  EXPECT_EQ(neg.error(), "kafka frame: negative size -1");
  auto big = frame_size(bytes_of(std::string("\x7f\xff\xff\xff", 4)));
  ASSERT_FALSE(big);
  EXPECT_EQ(big.error(), "kafka frame: size 2147483647 exceeds the limit of 104857600 bytes");
}

TEST(KafkaMessages, ForgedCountInAProduceRequestNamesThePath) {
  ProduceRequest p;
  p.acks = 1;
  p.topics = {{"t", {{0, std::string("0123456789")}}}};
  auto frame = encode_request({kProduce, 7, 1, "c"}, p);
  // The records length: the last 14 bytes are length (4) + 10 record bytes.
  frame[frame.size() - 14] = '\x01';
  auto r = decode_frame(frame);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message,
            "kafka Produce v7: field topics[0].partitions[0].records: length 16777226 exceeds the 10 bytes left");
}

// ---- Frames the Debian clients sent (captured against a stub broker) ----

TEST(KafkaClientFrames, KcatApiVersionsV3AndV0) {
  auto v3 = decode_frame(corpus("kcat-apiversions-v3"));
  ASSERT_TRUE(v3) << v3.error().message;
  EXPECT_EQ(v3->header.api_key, kApiVersions);
  EXPECT_EQ(v3->header.api_version, 3);
  EXPECT_EQ(v3->header.client_id, std::optional<std::string>("rdkafka"));
  auto& a = std::get<ApiVersionsRequest>(v3->body);
  EXPECT_EQ(a.client_software_name, "librdkafka");
  EXPECT_EQ(a.client_software_version, "2.0.2");
  auto v0 = decode_frame(corpus("kcat-apiversions-v0"));
  ASSERT_TRUE(v0) << v0.error().message;
  EXPECT_EQ(v0->header.api_version, 0);
}

TEST(KafkaClientFrames, KcatMetadataV4BrokersOnlyThenAllTopics) {
  // kcat -L: first an empty topic list (brokers only), then null (all topics).
  auto first = decode_frame(corpus("kcat-metadata-v4"));
  ASSERT_TRUE(first) << first.error().message;
  EXPECT_EQ(first->header.api_version, 4);
  auto& m = std::get<MetadataRequest>(first->body);
  ASSERT_TRUE(m.topics);
  EXPECT_TRUE(m.topics->empty());
  auto all = decode_frame(corpus("kcat-metadata-v4-all"));
  ASSERT_TRUE(all) << all.error().message;
  auto& a = std::get<MetadataRequest>(all->body);
  EXPECT_FALSE(a.topics);
  EXPECT_TRUE(a.allow_auto_topic_creation);
}

TEST(KafkaClientFrames, KafkaPythonProbeFrames) {
  auto av = decode_frame(corpus("kafka-python-apiversions-v0"));
  ASSERT_TRUE(av) << av.error().message;
  EXPECT_EQ(av->header.api_version, 0);
  auto m0 = decode_frame(corpus("kafka-python-metadata-v0"));
  ASSERT_TRUE(m0) << m0.error().message;
  EXPECT_EQ(m0->header.api_version, 0);
  EXPECT_TRUE(std::get<MetadataRequest>(m0->body).topics->empty());
  auto m1 = decode_frame(corpus("kafka-python-metadata-v1"));
  ASSERT_TRUE(m1) << m1.error().message;
  EXPECT_EQ(m1->header.api_version, 1);
}

TEST(KafkaClientFrames, KcatFetchV11) {
  // kcat -C -p 0 -o 5: librdkafka's defaults (KAFKA.md §2: read_committed, no session).
  auto r = decode_frame(corpus("kcat-fetch-v11"));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->header.api_version, 11);
  auto& f = std::get<FetchRequest>(r->body);
  EXPECT_EQ(f.replica_id, -1);
  EXPECT_EQ(f.max_wait_ms, 500);
  EXPECT_EQ(f.min_bytes, 1);
  EXPECT_EQ(f.isolation_level, 1);
  EXPECT_EQ(f.session_id, 0);
  EXPECT_EQ(f.session_epoch, -1);
  ASSERT_EQ(f.topics.size(), 1u);
  EXPECT_EQ(f.topics[0].topic, "t");
  ASSERT_EQ(f.topics[0].partitions.size(), 1u);
  const auto& p = f.topics[0].partitions[0];
  EXPECT_EQ(p.partition, 0);
  EXPECT_EQ(p.current_leader_epoch, -1);
  EXPECT_EQ(p.fetch_offset, 5);
  EXPECT_EQ(p.log_start_offset, -1);
  EXPECT_GT(p.partition_max_bytes, 0);
  EXPECT_TRUE(f.forgotten_topics_data.empty());
  EXPECT_EQ(f.rack_id, "");
}

TEST(KafkaClientFrames, KafkaPythonFetchV4) {
  auto r = decode_frame(corpus("kafka-python-fetch-v4"));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->header.api_version, 4);
  auto& f = std::get<FetchRequest>(r->body);
  EXPECT_EQ(f.replica_id, -1);
  EXPECT_EQ(f.max_wait_ms, 500);
  EXPECT_EQ(f.isolation_level, 0);
  ASSERT_EQ(f.topics.size(), 1u);
  EXPECT_EQ(f.topics[0].partitions.at(0).fetch_offset, 5);
  EXPECT_EQ(f.topics[0].partitions.at(0).partition_max_bytes, 1048576);
}

TEST(KafkaClientFrames, GroupJoinOfKcatAndKafkaPython) {
  auto fc2 = decode_frame(corpus("kcat-findcoordinator-v2"));
  ASSERT_TRUE(fc2) << fc2.error().message;
  EXPECT_EQ(std::get<FindCoordinatorRequest>(fc2->body).key, "grp");
  EXPECT_EQ(std::get<FindCoordinatorRequest>(fc2->body).key_type, 0);
  auto fc0 = decode_frame(corpus("kafka-python-findcoordinator-v0"));
  ASSERT_TRUE(fc0) << fc0.error().message;
  EXPECT_EQ(fc0->header.api_version, 0);
  EXPECT_EQ(std::get<FindCoordinatorRequest>(fc0->body).key, "grp");

  // KAFKA.md §3: librdkafka session 45000, rebalance 300000, subscription v1;
  // kafka-python session 10000, rebalance 300000, subscription v0; both range, roundrobin.
  struct Want {
    const char* file;
    int version, session, subscription_version;
  };
  for (auto w : {Want{"kcat-joingroup-v5", 5, 45000, 1}, Want{"kafka-python-joingroup-v2", 2, 10000, 0}}) {
    auto r = decode_frame(corpus(w.file));
    ASSERT_TRUE(r) << w.file << ": " << r.error().message;
    EXPECT_EQ(r->header.api_version, w.version);
    auto& j = std::get<JoinGroupRequest>(r->body);
    EXPECT_EQ(j.group_id, "grp");
    EXPECT_EQ(j.session_timeout_ms, w.session) << w.file;
    EXPECT_EQ(j.rebalance_timeout_ms, 300000) << w.file;
    EXPECT_EQ(j.member_id, "");
    EXPECT_FALSE(j.group_instance_id);
    EXPECT_EQ(j.protocol_type, "consumer");
    ASSERT_EQ(j.protocols.size(), 2u);
    EXPECT_EQ(j.protocols[0].name, "range");
    EXPECT_EQ(j.protocols[1].name, "roundrobin");
    // The subscription: version i16, then topics ["t"].
    Reader sub(j.protocols[0].metadata);
    std::int16_t version;
    std::vector<std::string> topics;
    sub.i16(version, "version");
    sub.string_array(topics, "topics");
    ASSERT_TRUE(sub.ok()) << sub.error();
    EXPECT_EQ(version, w.subscription_version) << w.file;
    EXPECT_EQ(topics, std::vector<std::string>{"t"});
  }
}

namespace {

// The records of the one batch of a captured Produce v7 frame.
RecordBatch produced_batch(const std::string& name, Compression expected) {
  auto r = decode_frame(corpus(name));
  EXPECT_TRUE(r) << name << ": " << r.error().message;
  if (!r) return {};
  EXPECT_EQ(r->header.api_version, 7);
  auto& p = std::get<ProduceRequest>(r->body);
  EXPECT_FALSE(p.transactional_id);
  EXPECT_EQ(p.topics.size(), 1u);
  EXPECT_EQ(p.topics.at(0).name, "t");
  const auto& recs = p.topics.at(0).partitions.at(0).records;
  EXPECT_TRUE(recs);
  auto batches = decode_record_batches(bytes_of(*recs));
  EXPECT_TRUE(batches) << name << ": " << batches.error();
  if (!batches) return {};
  EXPECT_EQ(batches->size(), 1u);
  auto b = batches->at(0);
  EXPECT_EQ(b.compression(), expected) << name;
  EXPECT_EQ(b.producer_id, -1);
  EXPECT_EQ(b.base_sequence, -1);
  EXPECT_EQ(b.last_offset_delta + 1, static_cast<std::int32_t>(b.records.size()));
  return b;
}

}  // namespace

TEST(KafkaClientFrames, KcatProduceV7WithEveryCodec) {
  // printf 'k1:v1\nk2:\nk3:<abc x100>\n' | kcat -P -K: -H hk=hv -H hnull -z CODEC
  const std::pair<const char*, Compression> files[] = {
      {"kcat-produce-v7-none", Compression::kNone},     {"kcat-produce-v7-gzip", Compression::kGzip},
      {"kcat-produce-v7-snappy", Compression::kSnappy}, {"kcat-produce-v7-lz4", Compression::kLz4},
      {"kcat-produce-v7-zstd", Compression::kZstd}};
  std::string abc;
  for (int i = 0; i < 100; ++i) abc += "abc";
  for (auto [name, codec] : files) {
    auto b = produced_batch(name, codec);
    ASSERT_EQ(b.records.size(), 3u) << name;
    const auto& r0 = b.records[0];
    EXPECT_EQ(r0.key, std::optional<std::string>("k1"));
    EXPECT_EQ(r0.value, std::optional<std::string>("v1"));
    ASSERT_EQ(r0.headers.size(), 2u);
    EXPECT_EQ(r0.headers[0], (RecordHeader{"hk", std::string("hv")}));
    EXPECT_EQ(r0.headers[1], (RecordHeader{"hnull", std::nullopt}));  // a header with a null value
    EXPECT_EQ(b.records[1].key, std::optional<std::string>("k2"));
    EXPECT_EQ(b.records[1].value, std::optional<std::string>(""));  // empty, not null
    EXPECT_EQ(b.records[2].value, std::optional<std::string>(abc));
    for (int i = 0; i < 3; ++i) EXPECT_EQ(b.records[i].offset_delta, i);
    EXPECT_GE(b.max_timestamp, b.base_timestamp);
  }
}

TEST(KafkaClientFrames, KafkaPythonProduceV7NullValueAndEmptyKey) {
  for (auto [name, codec] : {std::pair{"kafka-python-produce-v7-none", Compression::kNone},
                             std::pair{"kafka-python-produce-v7-gzip", Compression::kGzip}}) {
    auto b = produced_batch(name, codec);
    ASSERT_EQ(b.records.size(), 3u) << name;
    EXPECT_EQ(b.records[0].key, std::optional<std::string>("k1"));
    ASSERT_EQ(b.records[0].headers.size(), 1u);
    EXPECT_EQ(b.records[0].headers[0], (RecordHeader{"hk", std::string("hv")}));
    EXPECT_EQ(b.records[1].key, std::optional<std::string>("k"));
    EXPECT_FALSE(b.records[1].value);  // a tombstone
    EXPECT_EQ(b.records[2].key, std::optional<std::string>(""));
    EXPECT_EQ(b.records[2].value, std::optional<std::string>(""));
  }
}

TEST(KafkaClientFrames, EveryPrefixOfAClientFrameIsAnErrorNotACrash) {
  for (const char* name : {"kcat-produce-v7-gzip", "kcat-metadata-v4", "kcat-apiversions-v3"}) {
    auto frame = corpus(name);
    for (std::size_t cut = 4; cut < frame.size(); ++cut) {
      auto r = decode_request(bytes_of(frame).subspan(4, cut - 4));
      EXPECT_FALSE(r) << name << " cut at " << cut;
    }
  }
}

// Every frame of the corpus (tests/fuzz/capture_kafka_frames.py captured them from kcat,
// confluent-kafka and kafka-python doing produce, consume, groups and admin against busd):
// it decodes, re-encodes to the very bytes the client sent, and every prefix of it is an error.
TEST(KafkaClientFrames, EveryCapturedFrameDecodesAndReencodesToTheClientsBytes) {
  int frames = 0;
  for (const auto& entry : std::filesystem::directory_iterator(std::string(SHMBUS_SOURCE_DIR) + "/tests/fuzz/corpus/kafka")) {
    const std::string name = entry.path().filename().string();
    const std::string frame = corpus(name);
    auto r = decode_frame(frame);
    ASSERT_TRUE(r) << name << ": " << r.error().message;
    EXPECT_EQ(encode_request(r->header, r->body), frame) << name;
    const std::string version = "-v" + std::to_string(r->header.api_version);
    EXPECT_NE(name.find(version), std::string::npos) << name << " holds version " << r->header.api_version;
    for (std::size_t cut = 4; cut < frame.size(); cut += 1 + frame.size() / 64)
      EXPECT_FALSE(decode_request(bytes_of(frame).subspan(4, cut - 4))) << name << " cut at " << cut;
    ++frames;
  }
  EXPECT_GE(frames, 50);  // the corpus is there: the test cannot pass over an empty directory
}

// ---- RecordBatch v2 ----

TEST(KafkaRecordBatch, Crc32cKnownAnswer) {
  EXPECT_EQ(kafka_crc32c(bytes_of("123456789")), 0xE3069283u);
}

namespace {

RecordBatch sample_batch(Compression c) {
  RecordBatch b;
  b.base_offset = 1000;
  b.partition_leader_epoch = 0;
  b.attributes = static_cast<std::int16_t>(c);
  b.base_timestamp = 1700000000000;
  b.max_timestamp = 1700000000500;
  b.records = {
      {0, 0, 0, std::string("k"), std::string("v"), {{"h", std::string("x")}, {"n", std::nullopt}}},
      {0, 500, 1, std::nullopt, std::nullopt, {}},             // null key, tombstone
      {0, -3, 2, std::string(), std::string(), {{"", std::string()}}},  // empty key, value, header
      {0, 7, 3, std::string(300, 'k'), std::string(100000, 'v'), {}},  // multi-byte varints
  };
  b.last_offset_delta = 3;
  return b;
}

}  // namespace

TEST(KafkaRecordBatch, RoundTripsWithEveryCodec) {
  for (auto c : {Compression::kNone, Compression::kGzip, Compression::kSnappy, Compression::kLz4, Compression::kZstd}) {
    auto b = sample_batch(c);
    auto bytes = encode_record_batch(b);
    auto back = decode_record_batches(bytes_of(bytes));
    ASSERT_TRUE(back) << compression_name(c) << ": " << back.error();
    ASSERT_EQ(back->size(), 1u);
    EXPECT_EQ(back->at(0), b) << compression_name(c);
    if (c != Compression::kNone) {
      EXPECT_LT(bytes.size(), 20000u) << compression_name(c);
    }
  }
  // Two batches back to back.
  auto two = encode_record_batch(sample_batch(Compression::kNone)) + encode_record_batch(sample_batch(Compression::kLz4));
  auto back = decode_record_batches(bytes_of(two));
  ASSERT_TRUE(back) << back.error();
  EXPECT_EQ(back->size(), 2u);
}

TEST(KafkaRecordBatch, CrcCoversAttributesOnwardButNotBaseOffsetOrEpoch) {
  auto bytes = encode_record_batch(sample_batch(Compression::kNone));
  auto patched = bytes;
  patched[7] = 0x55;   // base_offset: outside the CRC, the broker rewrites it
  patched[15] = 0x09;  // partition_leader_epoch: likewise
  EXPECT_TRUE(decode_record_batches(bytes_of(patched)));
  auto corrupt = bytes;
  corrupt[kBatchCrcStart] ^= 0x01;  // attributes
  auto r = decode_record_batches(bytes_of(corrupt));
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().find("record batch 0 (at byte 0): crc 0x"), std::string::npos) << r.error();
  EXPECT_NE(r.error().find("does not match the batch's CRC-32C"), std::string::npos) << r.error();
}

TEST(KafkaRecordBatch, XerialSnappyFramingDecodes) {
  std::string plain(100000, 'x');
  for (std::size_t i = 0; i < plain.size(); i += 7) plain[i] = static_cast<char>('a' + i % 26);
  auto framed = compress(Compression::kSnappy, bytes_of(plain), /*xerial=*/true);
  ASSERT_TRUE(framed);
  EXPECT_EQ(framed->substr(0, 8), std::string("\x82SNAPPY\0", 8));
  auto back = decompress(Compression::kSnappy, bytes_of(*framed), 1 << 20);
  ASSERT_TRUE(back) << back.error();
  EXPECT_EQ(*back, plain);
  auto cut = framed->substr(0, framed->size() - 10);
  auto bad = decompress(Compression::kSnappy, bytes_of(cut), 1 << 20);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().find("snappy (xerial): block of"), std::string::npos) << bad.error();
}

TEST(KafkaRecordBatch, DecompressionStopsAtTheLimit) {
  std::string zeros(8 << 20, '\0');
  for (auto c : {Compression::kGzip, Compression::kSnappy, Compression::kLz4, Compression::kZstd}) {
    auto small = compress(c, bytes_of(zeros));
    ASSERT_TRUE(small);
    auto r = decompress(c, bytes_of(*small), 1 << 20);
    ASSERT_FALSE(r) << compression_name(c);
    EXPECT_EQ(r.error(), std::string(compression_name(c)) + ": decompressed size exceeds the limit of 1048576 bytes");
  }
  // Through a batch: the limit is the caller's.
  auto b = sample_batch(Compression::kZstd);
  auto bytes = encode_record_batch(b);
  auto r = decode_record_batches(bytes_of(bytes), BatchLimits{.max_decompressed = 1000});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().find("records: zstd: decompressed size exceeds the limit of 1000 bytes"), std::string::npos)
      << r.error();
}

TEST(KafkaRecordBatch, CorruptCompressedDataIsAnErrorNamingTheCodec) {
  std::string junk = "this is not compressed at all, not in any format";
  for (auto c : {Compression::kGzip, Compression::kSnappy, Compression::kLz4, Compression::kZstd}) {
    auto r = decompress(c, bytes_of(junk), 1 << 20);
    ASSERT_FALSE(r) << compression_name(c);
    EXPECT_EQ(r.error().rfind(compression_name(c), 0), 0u) << r.error();
    // Truncated real output.
    auto good = compress(c, bytes_of(std::string(5000, 'q') + junk));
    ASSERT_TRUE(good);
    auto cut = decompress(c, bytes_of(good->substr(0, good->size() / 2)), 1 << 20);
    EXPECT_FALSE(cut) << compression_name(c);
    auto empty = decompress(c, bytes_of(std::string()), 1 << 20);
    EXPECT_FALSE(empty) << compression_name(c);
  }
}

namespace {

// Re-signs a batch whose bytes a test changed, so the CRC check passes and the change itself
// is what the decoder meets.
void resign(std::string& b) {
  auto crc = kafka_crc32c(bytes_of(b).subspan(kBatchCrcStart));
  for (int i = 0; i < 4; ++i) b[kBatchCrcOffset + i] = static_cast<char>(crc >> (8 * (3 - i)));
}

}  // namespace

TEST(KafkaRecordBatch, BadHeadersAndForgedCountsAreErrors) {
  auto good = encode_record_batch(sample_batch(Compression::kNone));
  {
    auto b = good;
    b[16] = 1;  // magic
    auto r = decode_record_batches(bytes_of(b));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), "record batch 0 (at byte 0): magic 1 is not supported (only RecordBatch v2)");
  }
  {
    auto b = good;
    b[57] = 0x7f;  // records_count 0x7f000004
    resign(b);
    auto r = decode_record_batches(bytes_of(b));
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().find("field records_count: count 2130706436 cannot fit"), std::string::npos) << r.error();
  }
  {
    auto b = good;
    b[57] = '\xff';  // negative records_count
    resign(b);
    auto r = decode_record_batches(bytes_of(b));
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().find("field records_count: negative count"), std::string::npos) << r.error();
  }
  {
    auto b = good.substr(0, good.size() - 1);  // batch_length past the end
    auto r = decode_record_batches(bytes_of(b));
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().find("batch_length"), std::string::npos) << r.error();
  }
  {
    auto b = good;
    b[22] = 0x07;  // codec 7 (attributes is big-endian: its low byte)
    resign(b);
    auto r = decode_record_batches(bytes_of(b));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error(), "record batch 0 (at byte 0): attributes: unknown compression codec 7");
  }
  {
    auto b = good;
    b[kBatchHeaderSize] = 0x03;  // the first record's length: zigzag -2
    resign(b);
    auto r = decode_record_batches(bytes_of(b));
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().find("negative length -2 of record 0"), std::string::npos) << r.error();
  }
  // A second batch whose length field is cut off.
  auto r = decode_record_batches(bytes_of(good + std::string(10, '\0')));
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().find("record batch 1 (at byte " + std::to_string(good.size()) + "): field batch_length: truncated"),
            std::string::npos)
      << r.error();
}

TEST(KafkaRecordBatch, EveryPrefixOfABatchIsAnError) {
  auto good = encode_record_batch(sample_batch(Compression::kGzip));
  for (std::size_t cut = 1; cut < good.size(); cut += (cut < 200 ? 1 : 97)) {
    EXPECT_FALSE(decode_record_batches(bytes_of(good.substr(0, cut)))) << cut;
  }
}
