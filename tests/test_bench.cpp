// The benchmark as a user runs it: interrupted with Ctrl-C, it leaves no process and no
// segment behind.
#include <gtest/gtest.h>

#include <dirent.h>
#include <signal.h>

#include <fstream>

#include "test_util.h"

namespace {

std::vector<pid_t> children_of(pid_t parent) {
  std::vector<pid_t> out;
  DIR* d = ::opendir("/proc");
  while (dirent* e = d ? ::readdir(d) : nullptr) {
    const pid_t pid = std::atoi(e->d_name);
    if (pid <= 0) continue;
    std::ifstream f(std::string("/proc/") + e->d_name + "/stat");
    std::string line;
    std::getline(f, line);
    const auto close = line.rfind(')');
    if (close == std::string::npos) continue;
    char state;
    pid_t ppid = 0;
    if (std::sscanf(line.c_str() + close + 1, " %c %d", &state, &ppid) == 2 && ppid == parent) out.push_back(pid);
  }
  if (d) ::closedir(d);
  return out;
}

bool segments_with_prefix(const std::string& prefix) {
  DIR* d = ::opendir("/dev/shm");
  bool found = false;
  while (dirent* e = d ? ::readdir(d) : nullptr) found |= std::string(e->d_name).rfind(prefix, 0) == 0;
  if (d) ::closedir(d);
  return found;
}

}  // namespace

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
  ::kill(bench.pid, SIGINT);
  std::string out;
  const int st = shmbus::test::finish(bench, out, std::chrono::seconds(20));
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGINT) << "status " << st;
  for (pid_t k : kids) {
    bool gone = false;
    for (int i = 0; i < 200 && !gone; ++i) {
      gone = ::kill(k, 0) != 0;
      if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_TRUE(gone) << "process " << k << " outlived the interrupted benchmark";
  }
  EXPECT_FALSE(segments_with_prefix(prefix)) << "segments left behind";
}
