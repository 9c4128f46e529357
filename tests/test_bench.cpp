// The benchmark as a user runs it: interrupted with Ctrl-C, it leaves no process and no
// segment behind; every row of a short run is there; `kafka` removes its busd and bus.
#include <gtest/gtest.h>

#include <dirent.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bus/paths.h"
#include "test_util.h"

namespace {

// Calls fn(pid, name, state, parent) for every process, from /proc/<pid>/stat.
template <class Fn>
void for_each_process(Fn fn) {
  DIR* d = ::opendir("/proc");
  while (dirent* e = d ? ::readdir(d) : nullptr) {
    const pid_t pid = std::atoi(e->d_name);
    if (pid <= 0) continue;
    std::ifstream f(std::string("/proc/") + e->d_name + "/stat");
    std::string line;
    std::getline(f, line);
    const auto open = line.find('('), close = line.rfind(')');
    if (open == std::string::npos || close == std::string::npos) continue;
    char state = 0;
    pid_t ppid = 0;
    if (std::sscanf(line.c_str() + close + 1, " %c %d", &state, &ppid) == 2)
      fn(pid, line.substr(open + 1, close - open - 1), state, ppid);
  }
  if (d) ::closedir(d);
}

std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> out;
  for_each_process([&](pid_t pid, const std::string&, char, pid_t ppid) {
    if (ppid == parent) out.push_back(pid);
  });
  return out;
}

// "pid (state s, parent ppid)" of the processes with this name, "" when none: for messages.
std::string process_named(const std::string& comm) {
  std::string found;
  for_each_process([&](pid_t pid, const std::string& name, char state, pid_t ppid) {
    if (name == comm) found += fmt::format("{}{} (state {}, parent {})", found.empty() ? "" : ", ", pid, state, ppid);
  });
  return found;
}

// Whether a process has `arg` among its arguments (/proc/<pid>/cmdline).
bool process_with_arg(const std::string& arg) {
  bool found = false;
  for_each_process([&](pid_t pid, const std::string&, char, pid_t) {
    std::ifstream f("/proc/" + std::to_string(pid) + "/cmdline");
    for (std::string a; std::getline(f, a, '\0');) found |= a == arg;
  });
  return found;
}

bool entries_with_prefix(const char* dir, const std::string& prefix) {
  DIR* d = ::opendir(dir);
  bool found = false;
  while (dirent* e = d ? ::readdir(d) : nullptr) found |= std::string(e->d_name).rfind(prefix, 0) == 0;
  if (d) ::closedir(d);
  return found;
}

bool segments_with_prefix(const std::string& prefix) { return entries_with_prefix("/dev/shm", prefix); }

// What iceoryx 2.0's RouDi and apps leave when they are not shut down tidily.
std::vector<std::string> iceoryx_leftovers(pid_t bench) {
  std::vector<std::string> left;
  const std::vector<std::string> files = {"/dev/shm/iceoryx_mgmt", "/tmp/roudi", "/tmp/roudi.lock", "/tmp/iox-unique-roudi.lock",
                                          "/tmp/shmbus_bench_iox_ping_" + std::to_string(bench),
                                          "/tmp/shmbus_bench_iox_pong_" + std::to_string(bench)};
  for (const auto& f : files)
    if (::access(f.c_str(), F_OK) == 0) left.push_back(f);
  return left;
}

// Ctrl-C to the benchmark: it dies of SIGINT, and so do the processes it had started.
void interrupt_and_expect_gone(shmbus::test::Child& bench, const std::vector<pid_t>& procs) {
  ::kill(bench.pid, SIGINT);
  std::string out;
  const int st = shmbus::test::finish(bench, out, std::chrono::seconds(20));
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGINT) << "status " << st;
  for (pid_t k : procs) {
    bool gone = false;
    for (int i = 0; i < 200 && !gone; ++i) {
      gone = ::kill(k, 0) != 0;
      if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_TRUE(gone) << "process " << k << " outlived the interrupted benchmark";
  }
}

// Runs the bench with `args` + --json; its exit status and the rows it printed.
int run_bench(std::vector<std::string> args, nlohmann::json& rows, std::string& out) {
  args.insert(args.begin(), SHMBUS_BENCH_PATH);
  args.push_back("--json");
  auto bench = shmbus::test::spawn(args);
  const int st = shmbus::test::finish(bench, out, std::chrono::seconds(50));
  rows = nlohmann::json::parse(out, nullptr, /*allow_exceptions=*/false);
  return st;
}

const nlohmann::json* row_named(const nlohmann::json& rows, const std::string& name) {
  for (const auto& r : rows)
    if (r.value("mechanism", "") == name) return &r;
  return nullptr;
}

const nlohmann::json* row_starting(const nlohmann::json& rows, const std::string& prefix) {
  for (const auto& r : rows)
    if (r.value("mechanism", "").rfind(prefix, 0) == 0) return &r;
  return nullptr;
}

// The latency rows without a peer library, in a short run: each is printed with every
// sample and both reference ratios, so none can silently measure nothing.
void expect_latency_rows(const std::vector<std::string>& extra, const std::string& suffix) {
  std::vector<std::string> args = {"latency", "--samples", "2000", "--warmup", "200", "--rows",
                                   "cacheline,lines,spsc,shmbus,unix,pipe,mq"};
  args.insert(args.end(), extra.begin(), extra.end());
  nlohmann::json rows;
  std::string out;
  const int st = run_bench(args, rows, out);
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << out;
  ASSERT_TRUE(rows.is_array()) << out;
  for (const char* name : {"cache-line ping-pong", "ring of lines ping-pong (2 lines/msg)", "plain SPSC ring ping-pong",
                           "shmbus spin (overwrite)", "shmbus spin (overwrite, exclusive)", "shmbus spin (block, zero-copy)", "unix socket ping-pong",
                           "pipe ping-pong", "Boost message_queue ping-pong"}) {
    const auto* r = row_starting(rows, name + suffix);
    ASSERT_NE(r, nullptr) << name << suffix << " missing in " << out;
    EXPECT_EQ((*r)["samples"].get<std::uint64_t>(), 2000u) << name;
    EXPECT_GT((*r)["p50_ns"].get<double>(), 0.0) << name;
    EXPECT_GT((*r)["p50_ratio_to_cacheline"].get<double>(), 0.0) << name;
    EXPECT_GT((*r)["p50_ratio_to_ring_of_lines"].get<double>(), 0.0) << name;
  }
}

}  // namespace

#ifdef SHMBUS_BENCH_HAS_ICEORYX
TEST(Bench, IceoryxRowIsMeasuredAgainstTheCacheLineRowAndItsRoudiIsGoneAfter) {
  if (!process_named("iox-roudi").empty()) GTEST_SKIP() << "an iox-roudi of someone else runs here; the bench leaves it alone";
  auto bench = shmbus::test::spawn({SHMBUS_BENCH_PATH, "latency", "--samples", "3000", "--warmup", "300", "--rows",
                                    "cacheline,iceoryx", "--json"});
  std::string out;
  const int st = shmbus::test::finish(bench, out, std::chrono::seconds(60));
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << out;
  const auto rows = nlohmann::json::parse(out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(rows.is_array()) << out;
  const nlohmann::json* iox = nullptr;
  for (const auto& r : rows)
    if (r.value("mechanism", "") == "Eclipse iceoryx ping-pong") iox = &r;
  ASSERT_NE(iox, nullptr) << out;
  EXPECT_EQ((*iox)["samples"].get<std::uint64_t>(), 3000u);
  EXPECT_GT((*iox)["p50_ns"].get<double>(), 0.0);
  EXPECT_GT((*iox)["p50_ratio_to_cacheline"].get<double>(), 0.0) << "measured in the same run as the reference row";
  EXPECT_EQ(process_named("iox-roudi"), "") << "RouDi outlived the benchmark " << bench.pid;
  EXPECT_FALSE(entries_with_prefix("/tmp", "shmbus_bench_iox_")) << "RouDi's config directory left behind";
  EXPECT_EQ(iceoryx_leftovers(bench.pid), std::vector<std::string>{});
}

TEST(Bench, IceoryxThroughputRowDeliversEveryRecordAndLeavesNothing) {
  if (!process_named("iox-roudi").empty()) GTEST_SKIP() << "an iox-roudi of someone else runs here; the bench leaves it alone";
  auto bench = shmbus::test::spawn({SHMBUS_BENCH_PATH, "throughput", "--records", "20000", "--rows", "iceoryx", "--json"});
  std::string out;
  const int st = shmbus::test::finish(bench, out, std::chrono::seconds(60));
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << out;
  const auto rows = nlohmann::json::parse(out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(rows.is_array() && rows.size() == 1) << out;
  EXPECT_EQ(rows[0]["mechanism"], "Eclipse iceoryx 1->1, publish per record");
  EXPECT_EQ(rows[0]["records"].get<std::uint64_t>(), 20000u) << "lossless: every record taken";
  EXPECT_GT(rows[0]["records_per_s"].get<double>(), 0.0);
  EXPECT_EQ(process_named("iox-roudi"), "") << "RouDi outlived the benchmark " << bench.pid;
  EXPECT_EQ(iceoryx_leftovers(bench.pid), std::vector<std::string>{});
}

TEST(Bench, InterruptedIceoryxRowLeavesNoRoudiAndNoFilesBehind) {
  if (!process_named("iox-roudi").empty()) GTEST_SKIP() << "an iox-roudi of someone else runs here; the bench leaves it alone";
  auto bench = shmbus::test::spawn({SHMBUS_BENCH_PATH, "latency", "--samples", "50000000", "--rows", "iceoryx"});
  // Interrupted once both ends are registered with RouDi and ping-ponging.
  bool running = false;
  for (int i = 0; i < 1000 && !running; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    running = ::access(("/tmp/shmbus_bench_iox_pong_" + std::to_string(bench.pid)).c_str(), F_OK) == 0 &&
              ::access(("/tmp/shmbus_bench_iox_ping_" + std::to_string(bench.pid)).c_str(), F_OK) == 0;
  }
  if (!running) {
    ::kill(bench.pid, SIGINT);
    std::string out;
    (void)shmbus::test::finish(bench, out, std::chrono::seconds(20));
    FAIL() << "the iceoryx ping-pong did not start";
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // RouDi and the measuring process, and the measuring process's echo process.
  std::vector<pid_t> procs = children_of(bench.pid);
  for (pid_t k : std::vector<pid_t>(procs))
    for (pid_t g : children_of(k)) procs.push_back(g);
  EXPECT_GE(procs.size(), 3u);
  interrupt_and_expect_gone(bench, procs);
  EXPECT_EQ(process_named("iox-roudi"), "") << "RouDi outlived the benchmark " << bench.pid;
  EXPECT_EQ(iceoryx_leftovers(bench.pid), std::vector<std::string>{});
  EXPECT_FALSE(entries_with_prefix("/tmp", "shmbus_bench_iox_")) << "RouDi's config directory left behind";
}
#endif

TEST(Bench, EveryLatencyRowDeliversEveryMessageIntactInAShortRun) { expect_latency_rows({}, ""); }

TEST(Bench, EveryLatencyRowRunsAtAFixedRate) { expect_latency_rows({"--rate", "20000"}, " at 20000/s"); }

TEST(Bench, EveryThroughputRowReadsEveryRecordInAShortRun) {
  nlohmann::json rows;
  std::string out;
  const int st = run_bench({"throughput", "--records", "100000", "--rows", "spsc,lines,single,batch,fan"}, rows, out);
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << out;
  ASSERT_TRUE(rows.is_array()) << out;
  for (const char* name : {"plain SPSC ring (reference)", "ring of lines (2 lines/msg) (reference)", "shmbus 1->1 single, align 8",
                           "shmbus 1->1 batch 64, align 8", "shmbus 1->1 single, align 64", "shmbus 1->1 batch 64, align 64",
                           "shmbus 1->1 single, align 64, exclusive", "shmbus 1->1 batch 64, align 64, exclusive",
                           "shmbus 2->1 batch 64", "shmbus 1->2 batch 64"}) {
    const auto* r = row_starting(rows, name);
    ASSERT_NE(r, nullptr) << name << " missing in " << out;
    EXPECT_EQ((*r)["records"].get<std::uint64_t>(), 100000u) << name;
    EXPECT_TRUE(r->contains("checksum")) << name << ": the consumer's checksum was not checked";
    EXPECT_GT((*r)["records_per_s"].get<double>(), 0.0) << name;
    EXPECT_GT((*r)["ratio_to_ring_of_lines"].get<double>(), 0.0) << name;
  }
}

// A row whose consumer read other bytes than were sent is not a result: the run fails and
// the row is not among those printed. (The hidden option makes every expected sum wrong.)
TEST(Bench, ARowThatReadTheWrongBytesFailsTheRun) {
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"latency", "--samples", "500", "--warmup", "50", "--rows", "lines,shmbus", "--test-expect-skew", "1"},
        std::vector<std::string>{"throughput", "--records", "20000", "--rows", "lines,single", "--test-expect-skew", "1"}}) {
    nlohmann::json rows;
    std::string out;
    const int st = run_bench(args, rows, out);
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 1) << args[0] << ": status " << st << "\n" << out;
    EXPECT_TRUE(rows.is_array() && rows.empty()) << args[0] << ": " << out;
  }
}

TEST(Bench, InterruptedRunLeavesNoProcessOrSegmentBehind) {
  auto bench = shmbus::test::spawn({SHMBUS_BENCH_PATH, "latency", "--samples", "50000000", "--rows", "shmbus"});
  const std::string prefix = "shmbus.bench_" + std::to_string(bench.pid) + "~";
  std::vector<pid_t> kids;
  for (int i = 0; i < 200 && (kids.empty() || !segments_with_prefix(prefix)); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    kids = children_of(bench.pid);
  }
  ASSERT_FALSE(kids.empty()) << "the benchmark's second process did not start";
  ASSERT_TRUE(segments_with_prefix(prefix));
  interrupt_and_expect_gone(bench, kids);
  EXPECT_FALSE(segments_with_prefix(prefix)) << "segments left behind";
}

// shmbus_bench kafka in a short run: every row there with a positive figure (no speed is
// asserted), and its busd, its bus's segments, state dir and runtime dir gone afterwards.
TEST(Bench, KafkaRowsAreEachMeasuredAndTheirBusdAndBusAreGoneAfter) {
  auto bench = shmbus::test::spawn({SHMBUS_BENCH_PATH, "kafka", "--records", "3000", "--pings", "200", "--rate", "2000", "--json"});
  ASSERT_GT(bench.pid, 0);
  const std::string bus = "bench_" + std::to_string(bench.pid);
  std::string out;
  const int st = shmbus::test::finish(bench, out, std::chrono::seconds(55));
  ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "status " << st << "\n" << out;
  const auto rows = nlohmann::json::parse(out, nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(rows.is_array()) << out;
  for (const char* name : {"librdkafka producer -> gateway, linger.ms=5", "librdkafka producer -> gateway, linger.ms=0",
                           "librdkafka consumer <- gateway", "shmbus Producer -> ring (reference)",
                           "shmbus Consumer <- ring (reference)", "mirror out: bus topic -> gateway (same busd)",
                           "mirror in: gateway -> bus topic (same busd)"}) {
    const auto* r = row_named(rows, name);
    ASSERT_NE(r, nullptr) << name << " missing in " << out;
    EXPECT_EQ((*r)["records"].get<std::uint64_t>(), 3000u) << name;
    EXPECT_GT((*r)["records_per_s"].get<double>(), 0.0) << name;
    EXPECT_FALSE((*r)["measures"].get<std::string>().empty()) << name;
  }
  for (const char* name : {"librdkafka producer -> gateway -> librdkafka consumer", "shmbus Producer -> ring -> Consumer (reference)",
                           "unix socket (reference)", "the same, both clients socket.nagle.disable=true"}) {
    const auto* r = row_named(rows, name);
    ASSERT_NE(r, nullptr) << name << " missing in " << out;
    EXPECT_EQ((*r)["samples"].get<std::uint64_t>(), 200u) << name;
    EXPECT_GT((*r)["p50_us"].get<double>(), 0.0) << name;
    EXPECT_GE((*r)["max_us"].get<double>(), (*r)["p99_9_us"].get<double>()) << name;
    EXPECT_FALSE((*r)["measures"].get<std::string>().empty()) << name;
  }
  EXPECT_EQ(rows.size(), 11u) << out;
  EXPECT_FALSE(process_with_arg(bus)) << "the bench's busd outlived it";
  EXPECT_FALSE(segments_with_prefix("shmbus." + bus + "~")) << "segments left behind";
  const shmbus::BusPaths paths = shmbus::bus_paths(bus);
  EXPECT_FALSE(std::filesystem::exists(paths.state_dir)) << paths.state_dir;
  EXPECT_FALSE(std::filesystem::exists(paths.runtime_dir)) << paths.runtime_dir;
}
