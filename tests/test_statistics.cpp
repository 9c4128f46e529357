// Statistics callbacks of producers and consumers (librdkafka's stats_cb): the counts they
// report after known sends and polls, and silence when off; and busd's metrics endpoint's
// parts that need no daemon: the exposition format, HTTP requests, listen addresses.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "shmbus/consumer.h"
#include "shmbus/producer.h"
#include "test_util.h"
#include "tools/busd/listeners.h"
#include "tools/busd/metrics.h"

using namespace shmbus;
using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

// Every report, parsed (a report that is not JSON fails the test).
struct Reports {
  std::vector<json> all;
  std::function<void(const std::string&)> cb() {
    return [this](const std::string& s) {
      auto j = json::parse(s, nullptr, false);
      EXPECT_TRUE(j.is_object()) << "not a JSON object: " << s;
      all.push_back(j);
    };
  }
};

// Reporting every millisecond to `r`; consumers from the earliest offset.
ProducerConfig reporting_producer(Reports& r) {
  ProducerConfig pc;
  pc.statistics_interval = 1ms;
  pc.statistics_cb = r.cb();
  return pc;
}
ConsumerConfig reporting_consumer(Reports& r) {
  ConsumerConfig cc;
  cc.auto_offset_reset = OffsetReset::kEarliest;
  cc.statistics_interval = 1ms;
  cc.statistics_cb = r.cb();
  return cc;
}

// Lets the statistics interval pass: a wait on the clock, not on another thread.
void let_interval_pass() { std::this_thread::sleep_for(5ms); }

TopicConfig topic_of(std::uint32_t partitions, std::uint64_t capacity = 1 << 16) {
  TopicConfig cfg;
  cfg.partitions = partitions;
  cfg.capacity = capacity;
  return cfg;
}

}  // namespace

TEST(Statistics, ProducerReportsWhatItSentPerPartition) {
  test::TestBus bus("stats");
  ASSERT_TRUE(bus->create_topic("t", topic_of(2)));
  Reports r;
  auto p = Producer::create(bus.get(), reporting_producer(r));
  ASSERT_TRUE(p) << p.error().message;
  Message m;
  const std::string key = "k", value = "vvvv";  // 5 bytes a record
  m.key = as_bytes(key);
  m.value = as_bytes(value);
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(p->send("t", m, 0u));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(p->send("t", m, 1u));
  let_interval_pass();
  const Message batch[2] = {m, m};
  ASSERT_TRUE(p->send_batch("t", batch, 1u));  // reported with the rest
  ASSERT_FALSE(r.all.empty());
  const json& j = r.all.back();
  EXPECT_EQ(j["type"], "producer");
  EXPECT_EQ(j["name"].get<std::string>().rfind("shmbus#producer-", 0), 0u) << j.dump();
  EXPECT_TRUE(j["ts"].is_number_unsigned());
  EXPECT_TRUE(j["time"].is_number_integer());
  EXPECT_EQ(j["txmsgs"], 10);
  EXPECT_EQ(j["txmsg_bytes"], 50);
  EXPECT_EQ(j["msg_cnt"], 0);
  EXPECT_EQ(j["aborted"], 0);
  const json& parts = j["topics"]["t"]["partitions"];
  EXPECT_EQ(parts["0"]["txmsgs"], 5);
  EXPECT_EQ(parts["0"]["txbytes"], 25);
  EXPECT_EQ(parts["0"]["hi_offset"], 5);
  EXPECT_EQ(parts["1"]["txmsgs"], 5);
  EXPECT_EQ(parts["1"]["hi_offset"], 5);
  EXPECT_EQ(parts["1"]["lo_offset"], 0);
}

TEST(Statistics, ProducerCountsReservationsCommittedAndAborted) {
  test::TestBus bus("stats");
  ASSERT_TRUE(bus->create_topic("t", topic_of(1)));
  Reports r;
  auto p = Producer::create(bus.get(), reporting_producer(r));
  ASSERT_TRUE(p);
  {
    auto res = p->reserve("t", std::nullopt, 16);
    ASSERT_TRUE(res);
    ASSERT_TRUE(res->commit());
  }
  let_interval_pass();
  {
    auto res = p->reserve("t", std::nullopt, 16);
    ASSERT_TRUE(res);
    res->abort();
  }
  ASSERT_FALSE(r.all.empty());
  const json& j = r.all.back();
  EXPECT_EQ(j["txmsgs"], 1);
  EXPECT_EQ(j["txmsg_bytes"], 16);
  EXPECT_EQ(j["aborted"], 1);
  EXPECT_EQ(j["topics"]["t"]["partitions"]["0"]["aborted"], 1);
}

TEST(Statistics, OffByDefaultAndRefusedWithoutACallback) {
  test::TestBus bus("stats");
  ASSERT_TRUE(bus->create_topic("t", topic_of(1)));
  Reports r;
  ProducerConfig pc;
  pc.statistics_cb = r.cb();  // a callback, but interval 0: off
  auto p = Producer::create(bus.get(), pc);
  ASSERT_TRUE(p);
  ConsumerConfig cc;
  cc.auto_offset_reset = OffsetReset::kEarliest;
  cc.statistics_cb = r.cb();
  auto c = Consumer::create(bus.get(), cc);
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->assign({{"t", 0}}));
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(p->send("t", std::nullopt, "x"));
    if (i % 5 == 0) let_interval_pass();
    ASSERT_TRUE(c->poll(0ms));
  }
  EXPECT_TRUE(r.all.empty());

  ProducerConfig no_cb;
  no_cb.statistics_interval = 100ms;
  auto bad = Producer::create(bus.get(), no_cb);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, Errc::kInvalidArgument);
  EXPECT_NE(bad.error().message.find("statistics_cb"), std::string::npos) << bad.error().message;
  ConsumerConfig negative;
  negative.statistics_interval = -1ms;
  negative.statistics_cb = r.cb();
  auto bad_c = Consumer::create(bus.get(), negative);
  ASSERT_FALSE(bad_c);
  EXPECT_NE(bad_c.error().message.find("statistics_interval"), std::string::npos) << bad_c.error().message;
}

TEST(Statistics, ConsumerReportsReceivedPositionsAndLag) {
  test::TestBus bus("stats");
  ASSERT_TRUE(bus->create_topic("t", topic_of(2)));
  auto p = Producer::create(bus.get());
  ASSERT_TRUE(p);
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(p->send("t", Message{as_bytes("k"), as_bytes("vvvv")}, 0u));
  Reports r;
  ConsumerConfig cc = reporting_consumer(r);
  cc.client_name = "stats-test";
  auto c = Consumer::create(bus.get(), cc);
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->assign({{"t", 0}, {"t", 1}}));
  std::size_t got = 0;
  for (int i = 0; i < 100 && got < 10; ++i) {
    auto recs = c->poll(100ms);
    ASSERT_TRUE(recs);
    got += recs->size();
  }
  ASSERT_EQ(got, 10u);
  // Three more that this consumer has not read: its lag.
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(p->send("t", Message{as_bytes("k"), as_bytes("vvvv")}, 0u));
  ASSERT_TRUE(c->poll(1ms));  // the records came at once: no wait
  let_interval_pass();
  r.all.clear();
  ASSERT_TRUE(c->poll(0ms));  // reports at its start
  ASSERT_EQ(r.all.size(), 1u);
  const json& j = r.all.back();
  EXPECT_EQ(j["type"], "consumer");
  EXPECT_EQ(j["client_id"], "stats-test");
  EXPECT_EQ(j["rxmsgs"], 13);
  EXPECT_EQ(j["rxmsg_bytes"], 65);
  EXPECT_EQ(j["lost"], 0);
  EXPECT_FALSE(j.contains("cgrp"));
  const json& p0 = j["topics"]["t"]["partitions"]["0"];
  EXPECT_EQ(p0["desired"], true);
  EXPECT_EQ(p0["rxmsgs"], 13);
  EXPECT_EQ(p0["rxbytes"], 65);
  EXPECT_EQ(p0["next_offset"], 13);
  EXPECT_EQ(p0["hi_offset"], 13);
  EXPECT_EQ(p0["lo_offset"], 0);
  EXPECT_EQ(p0["consumer_lag_stored"], 0);
  EXPECT_EQ(p0["committed_offset"], -1001);
  EXPECT_EQ(p0["consumer_lag"], -1);
  const json& p1 = j["topics"]["t"]["partitions"]["1"];
  EXPECT_EQ(p1["rxmsgs"], 0);
  EXPECT_EQ(p1["next_offset"], 0);
}

TEST(Statistics, ConsumerReportsLagBeforeReadingAndWaits) {
  test::TestBus bus("stats");
  ASSERT_TRUE(bus->create_topic("t", topic_of(1)));
  auto p = Producer::create(bus.get());
  ASSERT_TRUE(p);
  Reports r;
  auto c = Consumer::create(bus.get(), reporting_consumer(r));
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->assign({{"t", 0}}));
  for (int i = 0; i < 3; ++i) {
    auto recs = c->poll(1ms);  // nothing there: each one waits
    ASSERT_TRUE(recs);
    ASSERT_TRUE(recs->empty());
  }
  for (int i = 0; i < 7; ++i) ASSERT_TRUE(p->send("t", std::nullopt, "x"));
  let_interval_pass();
  r.all.clear();
  ASSERT_TRUE(c->poll(0ms));  // reports before it reads
  ASSERT_EQ(r.all.size(), 1u);
  const json& j = r.all.back();
  EXPECT_EQ(j["waits"], 3);
  EXPECT_EQ(j["rxmsgs"], 0);
  EXPECT_EQ(j["topics"]["t"]["partitions"]["0"]["consumer_lag_stored"], 7);
  EXPECT_EQ(j["topics"]["t"]["partitions"]["0"]["hi_offset"], 7);
}

TEST(Statistics, ConsumerReportsLostRecordsPerPartition) {
  test::TestBus bus("stats");
  ASSERT_TRUE(bus->create_topic("t", topic_of(1, 4096)));
  auto p = Producer::create(bus.get());
  ASSERT_TRUE(p);
  Reports r;
  auto c = Consumer::create(bus.get(), reporting_consumer(r));
  ASSERT_TRUE(c);
  ASSERT_TRUE(c->assign({{"t", 0}}));
  const std::string value(100, 'v');
  for (int i = 0; i < 200; ++i) ASSERT_TRUE(p->send("t", std::nullopt, value));  // laps the 4 KiB ring many times
  std::uint64_t got = 0;
  // A lapped reader finds out on a later look; read until every offset is accounted for.
  for (int i = 0; i < 500 && got + c->lost() < 200; ++i) {
    auto recs = c->poll(10ms);
    ASSERT_TRUE(recs);
    got += recs->size();
  }
  ASSERT_GT(c->lost(), 0u) << "read " << got;
  ASSERT_EQ(got + c->lost(), 200u);
  let_interval_pass();
  r.all.clear();
  ASSERT_TRUE(c->poll(0ms));
  ASSERT_EQ(r.all.size(), 1u);
  EXPECT_EQ(r.all[0]["lost"], c->lost());
  EXPECT_EQ(r.all[0]["topics"]["t"]["partitions"]["0"]["lost"], c->lost());
  EXPECT_EQ(r.all[0]["rxmsgs"], got);
}

// ---- busd's metrics endpoint, without busd ----

TEST(MetricsFormat, LabelValuesAreEscaped) {
  EXPECT_EQ(daemon::Exposition::escape_label(R"(a"b\c)" "\nd"), R"(a\"b\\c\nd)");
  EXPECT_EQ(daemon::Exposition::escape_label("plain-topic.1"), "plain-topic.1");
  EXPECT_EQ(daemon::Exposition::escape_help("line\\one\ntwo \"q\""), "line\\\\one\\ntwo \"q\"");
  daemon::Exposition e;
  e.family("shmbus_x_total", "counter", "what x counts");
  e.family("shmbus_y", "gauge", "y");
  e.sample("shmbus_x_total", {{"topic", "a\"b"}, {"partition", "0"}}, std::uint64_t{7});
  e.sample("shmbus_y", {}, std::int64_t{-3});
  e.sample("shmbus_x_total", {{"topic", "c"}, {"partition", "1"}}, std::uint64_t{18446744073709551615ull});
  EXPECT_EQ(e.text(),
            "# HELP shmbus_x_total what x counts\n# TYPE shmbus_x_total counter\n"
            "shmbus_x_total{topic=\"a\\\"b\",partition=\"0\"} 7\n"
            "shmbus_x_total{topic=\"c\",partition=\"1\"} 18446744073709551615\n"
            "# HELP shmbus_y y\n# TYPE shmbus_y gauge\nshmbus_y -3\n");
}

TEST(MetricsFormat, HttpRequestsAreJudged) {
  using daemon::HttpAsk;
  using daemon::parse_http_request;
  EXPECT_EQ(parse_http_request("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"), HttpAsk::kMetrics);
  EXPECT_EQ(parse_http_request("GET /metrics?x=1 HTTP/1.0\n\n"), HttpAsk::kMetrics);
  bool head = false;
  EXPECT_EQ(parse_http_request("HEAD /metrics HTTP/1.1\r\n\r\n", &head), HttpAsk::kMetrics);
  EXPECT_TRUE(head);
  EXPECT_EQ(parse_http_request("GET /metrics HTTP/1.1\r\nHost: x\r\n"), HttpAsk::kIncomplete);
  EXPECT_EQ(parse_http_request("GET /met"), HttpAsk::kIncomplete);
  EXPECT_EQ(parse_http_request("GET / HTTP/1.1\r\n\r\n"), HttpAsk::kNotFound);
  EXPECT_EQ(parse_http_request("POST /metrics HTTP/1.1\r\n\r\n"), HttpAsk::kBadMethod);
  EXPECT_EQ(parse_http_request(std::string("\x16\x03\x01\x02\x00garbage\r\n", 14)), HttpAsk::kBad);  // a TLS hello, say
  EXPECT_EQ(parse_http_request(std::string("\x16\x03\x01\x02\x00", 5)), HttpAsk::kBad);  // judged before a newline
  EXPECT_EQ(parse_http_request("get /metrics"), HttpAsk::kBad);
  EXPECT_EQ(parse_http_request("GE"), HttpAsk::kIncomplete);
  EXPECT_EQ(parse_http_request("GET /metrics SPDY/3\r\n\r\n"), HttpAsk::kBad);
  EXPECT_EQ(parse_http_request("GET metrics HTTP/1.1\r\n\r\n"), HttpAsk::kBad);
  EXPECT_EQ(parse_http_request("GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n"), HttpAsk::kBad);
  EXPECT_EQ(parse_http_request("GET /" + std::string(9000, 'a')), HttpAsk::kTooLarge);
  EXPECT_EQ(parse_http_request("GET /metrics HTTP/1.1\r\nX: " + std::string(9000, 'a')), HttpAsk::kTooLarge);
}

TEST(MetricsFormat, ListenAddressesAreLoopbackUnlessAllowed) {
  using daemon::ListenerSpec;
  using daemon::parse_listen;
  EXPECT_TRUE(parse_listen(ListenerSpec{"127.0.0.1:0"}));
  EXPECT_TRUE(parse_listen(ListenerSpec{"localhost:9464"}));
  EXPECT_TRUE(parse_listen(ListenerSpec{"[::1]:9464"}));
  auto remote = parse_listen(ListenerSpec{"0.0.0.0:9464"});
  ASSERT_FALSE(remote);
  EXPECT_NE(remote.error().message.find("loopback"), std::string::npos) << remote.error().message;
  EXPECT_TRUE(parse_listen(ListenerSpec{"0.0.0.0:9464", true}));
  for (const char* bad : {"9464", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:x", "host.example:80", ":80", "[::1:80"}) {
    auto r = parse_listen(ListenerSpec{bad, true});
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().code, Errc::kInvalidArgument);
    EXPECT_NE(r.error().message.find(bad), std::string::npos) << r.error().message;
  }
}
