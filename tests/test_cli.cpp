// busctl as a user runs it: arguments, output, exit codes (0 ok, 1 runtime, 2 usage).
#include <gtest/gtest.h>

#include <signal.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "test_util.h"

using namespace shmbus;
using json = nlohmann::json;

namespace {

using test::busctl;
using test::CliResult;

using Cli = test::CliTest;

}  // namespace

TEST_F(Cli, CreateProduceConsumeWithKeysAndFormat) {
  auto r = run({"topic", "create", "orders", "--partitions", "3", "--capacity", "64KiB"});
  ASSERT_EQ(r.code, 0) << r.err;
  r = run({"produce", "orders", "--key-separator", ":"}, "a:1\nb:2\nc:3\n");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run({"consume", "orders", "--count", "3", "--timeout-ms", "2000", "--format", "%k=%v@%t\\n"});
  ASSERT_EQ(r.code, 0) << r.err;
  std::multiset<std::string> lines;
  std::istringstream s(r.out);
  for (std::string l; std::getline(s, l);) lines.insert(l);
  EXPECT_EQ(lines, (std::multiset<std::string>{"a=1@orders", "b=2@orders", "c=3@orders"}));
}

TEST_F(Cli, GlobalOptionsGoBeforeOrAfterTheCommand) {
  ASSERT_EQ(busctl({"--bus", bus_, "--json", "topic", "create", "t"}).code, 0);
  auto r = busctl({"topic", "list", "--json", "--bus", bus_});
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = json::parse(r.out);
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["name"], "t");
}

TEST_F(Cli, JsonEverywhere) {
  auto r = run({"--json", "topic", "create", "t", "--partitions", "2", "--capacity", "1MiB", "--retention", "block"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto created = json::parse(r.out);
  EXPECT_EQ(created["retention"], "block");
  EXPECT_EQ(created["capacity"], 1048576);
  r = run({"--json", "produce", "t", "--partition", "1"}, "x\ny\n");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["records"], 2);
  r = run({"--json", "topic", "describe", "t"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto d = json::parse(r.out);
  EXPECT_EQ(d["partition_info"][1]["end_offset"], 2);
  EXPECT_EQ(d["partition_info"][0]["end_offset"], 0);
  r = run({"--json", "consume", "t", "--partition", "1", "--from", "1", "--count", "1", "--timeout-ms", "2000"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto rec = json::parse(r.out);
  EXPECT_EQ(rec["value"], "y");
  EXPECT_EQ(rec["offset"], 1);
  EXPECT_EQ(rec["partition"], 1);
  EXPECT_TRUE(rec["key"].is_null());
  EXPECT_TRUE(rec.contains("timestamp"));
  r = run({"--json", "topic", "delete", "t"});
  ASSERT_EQ(r.code, 0) << r.err;
}

TEST_F(Cli, ConsumeFromLatestSeesOnlyNewRecordsAndTimesOut) {
  ASSERT_EQ(run({"topic", "create", "t"}).code, 0);
  ASSERT_EQ(run({"produce", "t"}, "old\n").code, 0);
  auto r = run({"consume", "t", "--from", "latest", "--timeout-ms", "200"});
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out, "");
}

struct BadInput {
  std::vector<std::string> args;
  std::string stdin_text;
  int code;
  std::string message;
};

TEST_F(Cli, BadInputGetsAClearMessageAndTheRightExitCode) {
  ASSERT_EQ(run({"topic", "create", "t", "--max-record", "100"}).code, 0);
  const std::vector<BadInput> cases = {
      {{"topic", "create", "bad/name"}, "", 2, "'/'"},
      {{"topic", "create", std::string(201, 'x')}, "", 2, "201 characters"},
      {{"topic", "create", "u", "--capacity", "12XB"}, "", 2, "unknown unit"},
      {{"topic", "create", "u", "--capacity", "1000"}, "", 2, "power of two"},
      {{"topic", "create", "u", "--partitions", "-2"}, "", 2, "--partitions"},
      {{"topic", "create", "u", "--retention", "forever"}, "", 2, "overwrite or block"},
      {{"topic", "create", "t"}, "", 1, "already exists"},
      {{"topic", "describe", "nope"}, "", 1, "'nope' does not exist"},
      {{"topic", "delete", "nope"}, "", 1, "'nope' does not exist"},
      {{"produce", "nope"}, "x\n", 1, "does not exist"},
      {{"produce", "t"}, std::string(101, 'v') + "\n", 1, "max record"},
      {{"produce", "t", "--key-separator", ":"}, "k:v\nno separator here\n", 1, "line 2 has no key separator"},
      {{"produce", "t", "--partition", "9"}, "x\n", 2, "no partition 9"},
      {{"consume", "t", "--count", "-1"}, "", 2, "--count"},
      {{"consume", "t", "--from", "yesterday"}, "", 2, "--from 'yesterday'"},
      {{"consume", "t", "--from", "99"}, "", 1, "offset 99 is not in the ring"},
      {{"consume", "t", "--partition", "3"}, "", 2, "no partition 3"},
      {{"frobnicate"}, "", 2, "unknown command 'frobnicate'"},
      {{"topic", "create"}, "", 2, "name"},
  };
  for (const auto& c : cases) {
    auto r = run(c.args, c.stdin_text);
    std::string line;
    for (const auto& a : c.args) line += a + " ";
    EXPECT_EQ(r.code, c.code) << line << "\n" << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << line << "\nstderr: " << r.err;
  }
  // Nothing changed: still one topic, with the one record of line 1 of the separator case.
  auto r = run({"--json", "topic", "list"});
  EXPECT_EQ(json::parse(r.out).size(), 1u);
}

TEST(CliBinary, ExitCodesFromTheRealBinary) {
  std::string out;
  auto c = test::spawn({BUSCTL_PATH, "--help"});
  EXPECT_EQ(test::finish(c, out), 0);
  EXPECT_NE(out.find("topic"), std::string::npos);
  out.clear();
  c = test::spawn({BUSCTL_PATH, "topic", "describe", "x", "--bus", "bad/bus"});
  int st = test::finish(c, out);
  EXPECT_TRUE(WIFEXITED(st));
  EXPECT_EQ(WEXITSTATUS(st), 2);
  out.clear();
  c = test::spawn({BUSCTL_PATH, "topic", "list", "--bus", test::unique_bus("nobus")});
  st = test::finish(c, out);
  EXPECT_EQ(WEXITSTATUS(st), 1) << "a bus that does not exist is a runtime error";
}

TEST_F(Cli, TopOnceShowsTopicsRatesAndBusdHealth) {
  ASSERT_EQ(run({"topic", "create", "live", "--partitions", "2", "--capacity", "64KiB"}).code, 0);
  ASSERT_EQ(run({"produce", "live"}, "a\nb\nc\n").code, 0);
  ::setenv("SHMBUS_NO_AUTOSTART", "1", 1);  // top never starts busd; here none runs
  auto r = run({"top", "--once", "--interval-ms", "50"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("busd not running"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("live"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("PRODUCE/s"), std::string::npos) << r.out;
  auto j = run({"top", "--once", "--interval-ms", "50", "--json"});
  ASSERT_EQ(j.code, 0) << j.err;
  auto f = json::parse(j.out);
  EXPECT_EQ(f["busd"]["running"], false);
  ASSERT_EQ(f["topics"].size(), 1u);
  EXPECT_EQ(f["topics"][0]["name"], "live");
  std::uint64_t end = 0;
  for (const auto& p : f["topics"][0]["partition_info"]) end += p["end_offset"].get<std::uint64_t>();
  EXPECT_EQ(end, 3u);
  EXPECT_TRUE(f["topics"][0].contains("produce_rate"));
  EXPECT_EQ(run({"top", "--once", "--interval-ms", "0"}).code, 2);
  ::unsetenv("SHMBUS_NO_AUTOSTART");
}

TEST(CliDocs, ReferenceAndCompletionAreGeneratedFromTheCommandTree) {
  auto md = busctl({"help-markdown"});
  ASSERT_EQ(md.code, 0);
  std::ifstream f(std::string(SHMBUS_SOURCE_DIR) + "/docs/busctl.md");
  std::stringstream file;
  file << f.rdbuf();
  EXPECT_EQ(file.str(), md.out) << "docs/busctl.md is stale: regenerate it with `build/busctl help-markdown > docs/busctl.md`";
  // Every command answers --help, and the reference has an example for each leaf command.
  for (const char* cmd : {"topic create", "topic alter", "topic list", "topic describe", "topic delete", "produce", "consume", "status",
                          "group list", "group describe", "group reset-offsets", "group delete", "doctor", "bus delete",
                          "log dump", "top", "completion"}) {
    std::vector<std::string> args;
    std::istringstream words(cmd);
    for (std::string w; words >> w;) args.push_back(w);
    args.push_back("--help");
    auto h = busctl(args);
    EXPECT_EQ(h.code, 0) << cmd;
    EXPECT_NE(h.out.find("Example"), std::string::npos) << cmd << " --help has no example:\n" << h.out;
    EXPECT_NE(md.out.find(std::string("## `busctl ") + cmd + "`"), std::string::npos) << cmd;
  }
  auto c = busctl({"completion", "bash"});
  ASSERT_EQ(c.code, 0);
  EXPECT_NE(c.out.find("complete -o default -F _busctl busctl"), std::string::npos);
  EXPECT_NE(c.out.find("\"topic\") words=\"create alter list describe delete"), std::string::npos) << c.out;
  EXPECT_EQ(busctl({"completion", "zsh"}).code, 2);
}

TEST_F(Cli, TopicCreateWithGroupMakesTheBusGroupShared) {
  auto r = run({"topic", "create", "shared", "--group", "root"});
  ASSERT_EQ(r.code, 0) << r.err;
  struct stat st{};
  ASSERT_EQ(::stat(("/dev/shm/shmbus." + bus_ + "~registry").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  ASSERT_EQ(::stat(("/dev/shm/shmbus." + bus_ + "~shared~0").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  auto bad = run({"topic", "create", "other", "--group", "no-such-group-xyz"});
  EXPECT_EQ(bad.code, 2);
  EXPECT_NE(bad.err.find("no such Unix group 'no-such-group-xyz'"), std::string::npos) << bad.err;
}

TEST(CliRules, VersionIsTheProjectsAndUnknownCommandsAreNamed) {
  auto v = test::busctl({"--version"});
  EXPECT_EQ(v.code, 0);
  EXPECT_EQ(v.out, "busctl " SHMBUS_PROJECT_VERSION "\n");
  auto r = test::busctl({"frobnicate"});
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err, "busctl: unknown command 'frobnicate' (see busctl --help)\n");
  r = test::busctl({"--bus", "x", "topic", "frob"});
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err, "busctl: unknown command 'topic frob' (see busctl topic --help)\n");
}

TEST(CliRules, BenchRefusesCpusThatDoNotExist) {
  ::setenv("SHMBUS_BENCH_BIN", "/nonexistent/shmbus_bench", 1);  // never runs a benchmark here
  auto r = test::busctl({"bench", "latency", "--cpus", "0,4096"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("CPU 4096 does not exist or is not available"), std::string::npos) << r.err;
  r = test::busctl({"bench", "latency", "--cpus=0,x"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("'x' is not a CPU number"), std::string::npos) << r.err;
  r = test::busctl({"bench", "latency", "--cpus", "0,0"});
  EXPECT_EQ(r.code, 1) << "valid CPUs pass the check (then the missing binary fails)";
  ::unsetenv("SHMBUS_BENCH_BIN");
}

TEST_F(Cli, TopWritesNoEscapeCodesWhenStdoutIsNotATerminal) {
  ASSERT_EQ(run({"topic", "create", "live"}).code, 0);
  ::setenv("SHMBUS_NO_AUTOSTART", "1", 1);
  auto c = test::spawn({BUSCTL_PATH, "top", "--interval-ms", "20", "--bus", bus_});
  ::unsetenv("SHMBUS_NO_AUTOSTART");
  std::string out;
  auto frames = [&] {
    std::size_t n = 0;
    for (auto at = out.find("PRODUCE/s"); at != std::string::npos; at = out.find("PRODUCE/s", at + 1)) ++n;
    return n;
  };
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (frames() < 2 && std::chrono::steady_clock::now() < deadline && test::read_some(c, out)) {
  }
  ::kill(c.pid, SIGTERM);
  const int status = test::finish(c, out, std::chrono::seconds(10));
  EXPECT_GE(frames(), 2u) << out;
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_EQ(out.find('\x1b'), std::string::npos) << out;
}
