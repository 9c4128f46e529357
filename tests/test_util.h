// Helpers for tests: unique buses that clean up after themselves, child processes.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "shmbus/bus.h"

extern char** environ;

namespace shmbus::test {

// A topic of 64 KiB rings that busd spills to disk.
inline TopicConfig spilled_topic(std::uint32_t partitions, std::uint64_t segment_bytes,
                                 RetentionMode retention = RetentionMode::kBlock) {
  TopicConfig cfg;
  cfg.partitions = partitions;
  cfg.capacity = 64 << 10;
  cfg.retention = retention;
  cfg.spill.enabled = true;
  cfg.spill.segment_bytes = segment_bytes;
  return cfg;
}

inline std::string unique_bus(const char* tag) {
  static std::atomic<int> n{0};
  return std::string("test_") + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(n++);
}

// A bus for one test; its segments are removed when the test ends, whatever happened.
class TestBus {
 public:
  explicit TestBus(const char* tag) : name_(unique_bus(tag)) {
    BusOptions o;
    o.name = name_;
    auto b = Bus::attach(o);
    if (!b) ADD_FAILURE() << b.error().message;
    else bus_ = *b;
  }
  ~TestBus() {
    bus_.reset();
    (void)Bus::destroy(name_);
  }
  const std::string& name() const { return name_; }
  std::shared_ptr<Bus> get() const { return bus_; }
  Bus* operator->() const { return bus_.get(); }

 private:
  std::string name_;
  std::shared_ptr<Bus> bus_;
};

struct Child {
  pid_t pid = -1;
  int out_fd = -1;  // the child's stdout
};

inline Child spawn(const std::vector<std::string>& args) {
  int pipefd[2];
  // O_CLOEXEC: only the child's fd 1 may hold the pipe, or a grandchild (busd, started on
  // demand) would keep it open and we would never see EOF.
  if (::pipe2(pipefd, O_CLOEXEC) != 0) return {};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  Child c;
  if (posix_spawn(&c.pid, argv[0], &fa, nullptr, argv.data(), environ) != 0) c.pid = -1;
  posix_spawn_file_actions_destroy(&fa);
  ::close(pipefd[1]);
  c.out_fd = pipefd[0];
  return c;
}

// Reads what the child printed within 100 ms into `out`. False at EOF.
inline bool read_some(Child& c, std::string& out) {
  struct timeval tv{0, 100'000};
  fd_set fds;
  FD_ZERO(&fds);
  FD_SET(c.out_fd, &fds);
  if (::select(c.out_fd + 1, &fds, nullptr, nullptr, &tv) <= 0) return true;
  char buf[4096];
  const ssize_t n = ::read(c.out_fd, buf, sizeof buf);
  if (n <= 0) return false;
  out.append(buf, static_cast<std::size_t>(n));
  return true;
}

// Reads the child's stdout until EOF (or the deadline), then reaps it. Returns the exit
// status as from waitpid; kills the child if it overstays.
inline int finish(Child& c, std::string& out, std::chrono::seconds limit = std::chrono::seconds(120)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (read_some(c, out)) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(c.pid, SIGKILL);
      ADD_FAILURE() << "child " << c.pid << " overstayed its time limit";
      break;
    }
  }
  ::close(c.out_fd);
  int status = 0;
  ::waitpid(c.pid, &status, 0);
  return status;
}

// Waits until the child printed a line containing `what`.
inline bool wait_line(Child& c, std::string& out, const std::string& what, std::chrono::seconds limit = std::chrono::seconds(30)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (out.find(what) == std::string::npos) {
    if (std::chrono::steady_clock::now() > deadline || !read_some(c, out)) return false;
  }
  return true;
}

}  // namespace shmbus::test
