// busctl to kcat's level (issue 12): headers, timestamps, null keys and values, binary and
// JSON input, -e, relative offsets, several topics, bytes in JSON; --partition checked before input.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "test_util.h"

using namespace shmbus;
using json = nlohmann::json;
using namespace std::string_literals;

namespace {

using test::CliResult;

class Kcat : public test::CliTest {
 protected:
  void create(const std::string& topic, int partitions = 1) {
    auto r = run({"topic", "create", topic, "--partitions", std::to_string(partitions), "--capacity", "64KiB"});
    ASSERT_EQ(r.code, 0) << r.err;
  }
  // Every record of the topics as JSON, read with -e (bounded by a timeout should -e fail).
  std::vector<json> records(std::vector<std::string> args) {
    args.insert(args.begin(), {"--json", "consume"});
    for (const char* a : {"-e", "--timeout-ms", "5000"}) args.push_back(a);
    auto r = run(args);
    EXPECT_EQ(r.code, 0) << r.err;
    std::vector<json> out;
    std::istringstream s(r.out);
    for (std::string l; std::getline(s, l);) out.push_back(json::parse(l));
    return out;
  }
};

}  // namespace

TEST_F(Kcat, ProduceSendsHeadersTimestampNullKeyAndTombstone) {
  create("t");
  auto r = run({"produce", "t", "-K", ":", "-Z", "-H", "trace=abc", "-H", "empty=", "--timestamp", "1700000000123"},
               "k:v\n:\nk2:\n:v3\n");
  ASSERT_EQ(r.code, 0) << r.err;
  auto rs = records({"t"});
  ASSERT_EQ(rs.size(), 4u);
  EXPECT_EQ(rs[0]["key"], "k");
  EXPECT_EQ(rs[0]["value"], "v");
  EXPECT_EQ(rs[0]["timestamp"], 1700000000123);
  EXPECT_EQ(rs[0]["headers"], json::parse(R"([{"key":"trace","value":"abc"},{"key":"empty","value":""}])"));
  EXPECT_TRUE(rs[1]["key"].is_null() && rs[1]["value"].is_null()) << rs[1];
  EXPECT_TRUE(rs[2]["value"].is_null()) << "a tombstone: " << rs[2];
  EXPECT_TRUE(rs[3]["key"].is_null()) << rs[3];
  // Without -Z an empty value is empty, not null; %S and %K print -1 for null, as kcat.
  ASSERT_EQ(run({"produce", "t", "-K", ":"}, "k:\n").code, 0);
  r = run({"consume", "t", "-e", "--format", "%K/%S "});
  EXPECT_EQ(r.out, "1/1 -1/-1 2/-1 -1/2 1/0 ");
}

TEST_F(Kcat, BinaryInputWithDelimitersIsSentByteForByte) {
  create("bin");
  const std::string in = "k1\x01v\xff\n1\0"s "\xfe\x01\0"s;  // NUL-delimited, key separator \x01
  auto r = run({"produce", "bin", "-D", "\\0", "-K", "\\x01"}, in);
  ASSERT_EQ(r.code, 0) << r.err;
  auto rs = records({"bin"});
  ASSERT_EQ(rs.size(), 2u);
  EXPECT_EQ(rs[0]["key"], "k1");
  EXPECT_FALSE(rs[0].contains("value")) << "not UTF-8: never a string with U+FFFD in it";
  EXPECT_EQ(rs[0]["value_b64"], "dv8KMQ==");  // 76 ff 0a 31
  EXPECT_EQ(rs[1]["key_b64"], "/g==");
  EXPECT_EQ(rs[1]["value"], "");
  r = run({"consume", "bin", "-e", "--encode", "hex", "--format", "%k=%v;"});
  EXPECT_EQ(r.out, "6b31=76ff0a31;fe=;");
  r = run({"consume", "bin", "-e", "--encode", "base64", "--format", "%v;"});
  EXPECT_EQ(r.out, "dv8KMQ==;;");
  EXPECT_EQ(run({"produce", "bin", "-D", "\\q"}, "x").code, 2);
  EXPECT_NE(run({"produce", "bin", "-D", "\\q"}, "x").err.find("unknown escape '\\q'"), std::string::npos);
}

TEST_F(Kcat, JsonNeverTurnsBytesIntoReplacementCharacters) {
  create("j");
  const std::string bad_utf8[] = {"\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "ok\xe2\x82"};  // overlong, surrogate, > U+10FFFF, cut
  for (const auto& v : bad_utf8) ASSERT_EQ(run({"produce", "j", "-D", "\\0"}, v).code, 0);
  ASSERT_EQ(run({"produce", "j", "-H", "h=caf\xc3\xa9"}, "\xe2\x82\xac\n").code, 0);
  auto rs = records({"j"});
  ASSERT_EQ(rs.size(), 5u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_FALSE(rs[i].contains("value")) << rs[i];
    EXPECT_EQ(rs[i]["value_b64"].get<std::string>().empty(), false);
  }
  EXPECT_EQ(rs[4]["value"], "\xe2\x82\xac") << "valid UTF-8 stays a string";
  EXPECT_EQ(rs[4]["headers"][0]["value"], "caf\xc3\xa9");
}

TEST_F(Kcat, JsonInputRoundTripsWhatConsumePrints) {
  create("src", 2);
  create("dst", 2);
  const std::string in =
      R"({"key": "a", "value": "1", "headers": {"h": "x", "n": null}, "partition": 1, "timestamp": 1600000000000})" "\n"
      R"({"key": null, "value_b64": "AP8=", "headers": [{"key": "bin", "value_b64": "/w=="}, {"key": "nul", "value": null}], "partition": 0})" "\n"
      "\n"
      R"({"key_b64": "/g==", "value": null, "partition": 1, "timestamp_ns": 1600000000000000123})" "\n";
  auto r = run({"--json", "produce", "src", "--input", "json"}, in);
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["records"], 3);
  auto by_partition = [](std::vector<json> rs) {
    std::sort(rs.begin(), rs.end(), [](const json& a, const json& b) {
      return std::make_pair(a["partition"].get<int>(), a["offset"].get<int>()) < std::make_pair(b["partition"].get<int>(), b["offset"].get<int>());
    });
    return rs;
  };
  auto src = by_partition(records({"src"}));
  ASSERT_EQ(src.size(), 3u);
  std::string lines;
  for (const auto& j : src) lines += j.dump() + "\n";
  ASSERT_EQ(run({"produce", "dst", "--input", "json"}, lines).code, 0);
  auto dst = by_partition(records({"dst"}));
  ASSERT_EQ(dst.size(), 3u);
  for (std::size_t i = 0; i < 3; ++i) {
    src[i].erase("topic");
    dst[i].erase("topic");
    EXPECT_EQ(src[i], dst[i]);
  }
  EXPECT_EQ(src[0]["value_b64"], "AP8=");
  EXPECT_EQ(src[0]["headers"][0]["value_b64"], "/w==");
  EXPECT_EQ(src[0]["headers"][1].dump(), R"({"key":"nul","value":null})") << "a null header value, not an empty one";
  EXPECT_EQ(src[1]["headers"][1].dump(), R"({"key":"n","value":null})");
  EXPECT_EQ(src[1]["timestamp"], 1600000000000);
  EXPECT_EQ(src[2]["timestamp_ns"], 1600000000000000123);
  EXPECT_TRUE(src[2]["value"].is_null());
  EXPECT_EQ(src[2]["key_b64"], "/g==");
}

TEST_F(Kcat, BadJsonInputNamesTheLineAndWhatWasSent) {
  create("t");
  const std::pair<std::string, std::string> cases[] = {
      {"{\"value\": \"x\", \"vaule\": 1}", "unknown field \"vaule\""},
      {"{\"key\": \"k\"}", "no \"value\""},
      {"{\"value_b64\": \"****\"}", "not base64"},
      {"{\"value\": \"x\", \"value_b64\": \"eA==\"}", "both"},
      {"[1, 2]", "not a JSON object"},
      {"{\"value\": \"x\", \"partition\": 5}", "topic 't' has 1 partitions, no partition 5"},
      {"{\"value\": \"x\", \"timestamp\": -1}", "\"timestamp\" must be a number"},
  };
  for (const auto& [line, message] : cases) {
    auto r = run({"produce", "t", "--input", "json"}, "{\"value\": \"ok\"}\n" + line + "\n");
    EXPECT_EQ(r.code, 1) << line;
    EXPECT_NE(r.err.find("busctl: line 2: "), std::string::npos) << line << "\n" << r.err;
    EXPECT_NE(r.err.find(message), std::string::npos) << line << "\n" << r.err;
    EXPECT_NE(r.err.find("1 records were sent before it"), std::string::npos) << r.err;
  }
  EXPECT_EQ(run({"produce", "t", "--input", "json", "-K", ":"}).code, 2);
  EXPECT_EQ(run({"produce", "t", "--input", "yaml"}).code, 2);
  EXPECT_EQ(run({"produce", "t", "-H", "novalue"}).code, 2);
}

TEST_F(Kcat, ExitAtEndStopsAtTheEndThereWasAtTheStart) {
  create("t", 2);
  ASSERT_EQ(run({"produce", "t", "-p", "0"}, "a\nb\nc\n").code, 0);
  ASSERT_EQ(run({"produce", "t", "-p", "1"}, "d\n").code, 0);
  const auto t0 = std::chrono::steady_clock::now();
  auto r = run({"consume", "t", "-e", "--format", "%p%v "});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3)) << "-e did not stop";
  EXPECT_EQ(r.out.size(), 12u) << r.out;
  for (const char* s : {"0a ", "0b ", "0c ", "1d "}) EXPECT_NE(r.out.find(s), std::string::npos) << r.out;
  r = run({"consume", "t", "-e", "--from", "latest"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out, "");
  create("empty");
  EXPECT_EQ(run({"consume", "empty", "-e"}).out, "");
  EXPECT_EQ(run({"consume", "t", "-e", "--group", "g"}).code, 2);
}

TEST_F(Kcat, FromMinusNStartsNRecordsBeforeEachPartitionsEnd) {
  create("t", 2);
  ASSERT_EQ(run({"produce", "t", "-p", "0"}, "0\n1\n2\n3\n4\n5\n6\n7\n8\n9\n").code, 0);
  ASSERT_EQ(run({"produce", "t", "-p", "1"}, "x\ny\nz\n").code, 0);
  auto r = run({"consume", "t", "--from", "-5", "-e", "--format", "%p@%o "});
  ASSERT_EQ(r.code, 0) << r.err;
  std::multiset<std::string> got;
  std::istringstream s(r.out);
  for (std::string w; s >> w;) got.insert(w);
  EXPECT_EQ(got, (std::multiset<std::string>{"0@5", "0@6", "0@7", "0@8", "0@9", "1@0", "1@1", "1@2"}));
  r = run({"consume", "t", "--from", "-2", "-p", "0", "-e", "--format", "%v"});
  EXPECT_EQ(r.out, "89");
  EXPECT_EQ(run({"consume", "t", "--from", "-x"}).code, 2);
}

TEST_F(Kcat, FromAtTimeStartsAtTheFirstRecordAtOrAfterIt) {
  create("t", 2);
  for (auto [ts, in] : {std::pair{"1700000000100", "a\nb\n"}, {"1700000000200", "c\n"}, {"1700000000300", "d\n"}})
    ASSERT_EQ(run({"produce", "t", "-p", "0", "--timestamp", ts}, in).code, 0);
  ASSERT_EQ(run({"produce", "t", "-p", "1", "--timestamp", "1700000000050"}, "x\n").code, 0);
  // Partition 1 has nothing that late: it starts at its end.
  for (const char* at : {"@1700000000150", "@1700000000200", "@2023-11-14T22:13:20.150Z"}) {
    auto r = run({"consume", "t", "--from", at, "-e", "--format", "%p@%o=%v "});
    EXPECT_EQ(r.code, 0) << at << ": " << r.err;
    EXPECT_EQ(r.out, "0@2=c 0@3=d ") << at;
  }
  auto r = run({"consume", "t", "--from", "@1", "-p", "1", "-e", "--format", "%v"});
  EXPECT_EQ(r.out, "x");
  r = run({"consume", "t", "--from", "@1700000000301", "-e", "--format", "%v"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "");
  r = run({"consume", "t", "--from", "@yesterday", "-e"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--from '@yesterday'"), std::string::npos) << r.err;
  r = run({"consume", "t", "--from", "@99999999999999999999", "-e"});
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_EQ(run({"consume", "t", "--group", "g", "--from", "@1"}).code, 2);
}

TEST_F(Kcat, SeveralTopicsByNameOrPattern) {
  for (const char* t : {"orders-eu", "orders-us", "payments"}) {
    create(t);
    ASSERT_EQ(run({"produce", t}, std::string(t) + "\n").code, 0);
  }
  auto names = [](const std::vector<json>& rs) {
    std::multiset<std::string> out;
    for (const auto& r : rs) out.insert(r["topic"].get<std::string>());
    return out;
  };
  EXPECT_EQ(names(records({"orders-eu", "payments"})), (std::multiset<std::string>{"orders-eu", "payments"}));
  EXPECT_EQ(names(records({"--pattern", "^orders-"})), (std::multiset<std::string>{"orders-eu", "orders-us"}));
  auto r = run({"consume", "--pattern", "^nothing", "-e"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("no topic matches --pattern '^nothing'"), std::string::npos) << r.err;
  r = run({"consume", "--pattern", "(", "-e"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("is not a regex"), std::string::npos) << r.err;
  EXPECT_EQ(run({"consume", "orders-eu", "--pattern", "x"}).code, 2);
  EXPECT_EQ(run({"consume", "-e"}).code, 2);
  EXPECT_EQ(run({"consume", "orders-eu", "payments", "-p", "0"}).code, 2);
}

TEST_F(Kcat, FormatRefusesUnknownEscapesNamingThem) {
  create("t");
  for (const auto& [fmt, what] : std::vector<std::pair<std::string, std::string>>{{"%v %x", "'%x'"}, {"%v%", "lone '%'"}, {"%Z", "'%Z'"}}) {
    auto r = run({"consume", "t", "-e", "--format", fmt});
    EXPECT_EQ(r.code, 2) << fmt;
    EXPECT_NE(r.err.find(what), std::string::npos) << fmt << ": " << r.err;
  }
  EXPECT_EQ(run({"consume", "t", "-e", "--encode", "rot13"}).code, 2);
  ASSERT_EQ(run({"produce", "t"}, "v\n").code, 0);
  EXPECT_EQ(run({"consume", "t", "-e", "--format", "100%% %v\\n"}).out, "100% v\n");
}

TEST_F(Kcat, ProduceRefusesABadPartitionBeforeReadingInput) {
  create("t", 2);
  const std::string bus = bus_;
  const char* argv[] = {"busctl", "produce", "t", "--partition", "99", "--bus", bus.c_str()};
  std::istringstream in("x\ny\n");
  std::ostringstream out, err;
  EXPECT_EQ(busctl_main(7, argv, in, out, err), 2);
  EXPECT_NE(err.str().find("topic 't' has 2 partitions, no partition 99"), std::string::npos) << err.str();
  EXPECT_EQ(in.tellg(), 0) << "no input was read";
}
