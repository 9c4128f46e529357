// The fixture of the busd tests: each test gets its own SHMBUS_DIR (socket, lock, offsets)
// and bus, and busd is killed after it. Used by test_busd.cpp, test_group_protocol.cpp,
// test_group_topics.cpp and test_acks.cpp.
#pragma once

#include <gtest/gtest.h>

#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bus/group_client.h"
#include "bus/paths.h"
#include "test_util.h"

namespace shmbus::test {

// Each test gets its own SHMBUS_DIR (socket, lock, offsets) and bus; busd is killed after.
class BusdFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = "/tmp/" + test::unique_bus("busd");
    std::filesystem::create_directories(dir_);
    ::setenv("SHMBUS_DIR", dir_.c_str(), 1);
    ::setenv("SHMBUS_BUSD", SHMBUS_BUSD_PATH, 1);
    bus_ = std::make_unique<test::TestBus>("grp");
  }
  void TearDown() override {
    kill_busd(SIGKILL);
    bus_.reset();
    std::filesystem::remove_all(dir_);
    ::unsetenv("SHMBUS_DIR");
  }
  pid_t busd_pid() {
    std::ifstream f(bus_paths(bus_->name()).lock);
    pid_t pid = 0;
    f >> pid;
    return pid;
  }
  // Signals the bus's busd and waits (up to 5 s) until it is gone, its lock released, so
  // that the next one can start. True if one ran.
  bool kill_busd(int sig) {
    const pid_t pid = busd_pid();
    if (pid <= 0 || ::kill(pid, sig) != 0) return false;
    for (int i = 0; i < 2500 && ::kill(pid, 0) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return true;
  }
  nlohmann::json describe(const std::string& group) {
    auto c = BusdConnection::connect(bus_->name(), std::chrono::seconds(5));
    if (!c) return nlohmann::json();
    auto r = (*c)->request({{"op", "group_describe"}, {"group", group}}, std::chrono::seconds(5));
    return r ? *r : nlohmann::json();
  }
  // busd's status, once it answers (started on demand with `autostart`).
  nlohmann::json status(bool autostart = false) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
      if (auto c = BusdConnection::connect(bus_->name(), std::chrono::seconds(2), autostart))
        if (auto r = (*c)->request({{"op", "status"}}, std::chrono::seconds(5))) return *r;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ADD_FAILURE() << "busd did not answer";
    return nlohmann::json();
  }
  std::string file(const std::string& name) { return dir_ + "/" + name; }
  // Member i's log. fmt, not `"m" + std::to_string(i)`: that trips GCC 12's -Wrestrict false
  // positive at -O3.
  std::string member_log(int i) { return file(fmt::format("m{}", i)); }

  std::string dir_;
  std::unique_ptr<test::TestBus> bus_;
};

}  // namespace shmbus::test
