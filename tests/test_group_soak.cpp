// The group soak (ctest label `chaos`; `soak` runs it for 5 minutes): three members of one
// group on a 6-partition spilled topic, SIGKILLed and restarted at random while keyed
// producers run. Checked from the members' own logs (tests/worker.cpp group-consume): every
// acknowledged record was consumed at least once; a record was consumed twice only when the
// member that first consumed it was killed before its next commit (within an auto-commit
// interval's worth of the kill); never two owners of one partition at once, and no member
// consumed a partition outside the time it owned it. Its second mode has acks=fsynced
// producers on a `block` topic and SIGKILLs busd too (producers and members start it
// again): afterwards every acknowledged record is in the disk log, as it was sent.
#include <gtest/gtest.h>

#include <signal.h>

#include <algorithm>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "bus/disk_log.h"
#include "bus/group_client.h"
#include "bus/paths.h"
#include "disk_log_util.h"
#include "shmbus/bus.h"
#include "test_util.h"

using namespace shmbus;
using namespace std::chrono_literals;

namespace {

const std::string kWorker = SHMBUS_WORKER_PATH;
constexpr std::uint32_t kPartitions = 6;
constexpr std::uint64_t kAutoCommitNs = 100'000'000;  // the worker's auto_commit_interval
// How late after its last commit a killed member may have consumed what is redelivered: the
// interval, plus time for a member starved of CPU on a loaded 2-core machine.
constexpr std::uint64_t kDupWindowNs = kAutoCommitNs + 1'500'000'000;
// How long after a SIGKILL of busd commits may not land: until a producer or member has
// started the next one, it has read the offsets and the members are back (1 s of grace).
constexpr std::uint64_t kBusdRestartNs = 3'000'000'000;

std::uint64_t now_ns() {
  return static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
}

// What one member process wrote, and when it was killed (0: it was not).
struct MemberLog {
  std::string file;
  std::uint64_t killed_at = 0;
};

struct Interval {
  std::uint64_t from, to;
  std::size_t member;
};

struct Consumption {
  std::size_t member;
  std::uint64_t at;
};

using Key = std::pair<std::uint32_t, std::uint64_t>;  // (partition, offset)

std::vector<std::uint32_t> partitions_of(const std::string& list) {
  std::vector<std::uint32_t> out;
  std::istringstream in(list);
  std::string tp;
  while (std::getline(in, tp, ','))
    if (auto colon = tp.rfind(':'); colon != std::string::npos) out.push_back(static_cast<std::uint32_t>(std::stoul(tp.substr(colon + 1))));
  return out;
}

// busd's pid from its lock file, if it runs.
pid_t busd_pid(const std::string& bus) {
  std::ifstream f(bus_paths(bus).lock);
  pid_t pid = 0;
  f >> pid;
  return pid > 0 && ::kill(pid, 0) == 0 ? pid : 0;
}

// `busd_kills`: producers with acks=fsynced on a block topic, and busd SIGKILLed as often as
// a member.
void group_soak(bool busd_kills) {
  const char* env = std::getenv("SHMBUS_GROUP_SOAK_SECONDS");
  const int seconds = env ? std::atoi(env) : 15;
  const std::string dir = "/tmp/" + test::unique_bus("gsoak");
  std::filesystem::create_directories(dir);
  ::setenv("SHMBUS_DIR", dir.c_str(), 1);
  ::setenv("SHMBUS_BUSD", SHMBUS_BUSD_PATH, 1);
  {
    test::TestBus bus("gsoak");
    // acks spilled or fsynced need retention block (nothing overwritten before it is spilled).
    ASSERT_TRUE(bus->create_topic("soak", test::spilled_topic(kPartitions, 256 << 10,
                                                               busd_kills ? RetentionMode::kBlock : RetentionMode::kOverwrite)));
    ASSERT_TRUE(BusdConnection::connect(bus.name(), 5s));

    const std::uint64_t seed = 20261130;
    std::mt19937_64 rng(seed);
    // Producers run the whole time (4 x 16 keys' worth of partitions) and are not killed here.
    // acks=fsynced: each send waits for busd's fsync, so a lower rate.
    const int rate = busd_kills ? 200 : 800;
    std::vector<std::string> pfiles;
    std::vector<test::Child> producers;
    for (std::uint32_t id = 0; id < 4; ++id) {
      pfiles.push_back(fmt::format("{}/p{}", dir, id));
      producers.push_back(test::spawn({kWorker, "chaos-produce", bus.name(), "soak", std::to_string(id),
                                       std::to_string(rate * seconds), std::to_string(rate), pfiles.back(),
                                       busd_kills ? "fsynced" : "memory"}));
    }
    std::vector<MemberLog> logs;
    std::vector<std::pair<test::Child, std::size_t>> members;  // the live ones, with their log
    auto spawn_member = [&] {
      logs.push_back({fmt::format("{}/m{}", dir, logs.size())});
      members.push_back({test::spawn({kWorker, "group-consume", bus.name(), "soak", "g", logs.back().file}), logs.size() - 1});
    };
    for (int i = 0; i < 3; ++i) spawn_member();

    int kills = 0, busd_killed = 0;
    std::vector<std::uint64_t> busd_killed_at;
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    while (std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(300 + rng() % 700));
      if (busd_kills && rng() % 2 == 0) {
        // Nobody restarts it here: the producers waiting on their acks and the members
        // reconnecting start the next one.
        if (const pid_t pid = busd_pid(bus.name()); pid > 0 && ::kill(pid, SIGKILL) == 0) {
          ++busd_killed;
          busd_killed_at.push_back(now_ns());
          for (int i = 0; i < 2500 && ::kill(pid, 0) == 0; ++i) std::this_thread::sleep_for(2ms);
        }
        continue;
      }
      auto& [child, log] = members[rng() % members.size()];
      // The time before the signal: busd may hand its partitions over (and their new owner
      // log it) before this thread runs again after kill().
      logs[log].killed_at = now_ns();
      ::kill(child.pid, SIGKILL);
      ::waitpid(child.pid, nullptr, 0);
      ::close(child.out_fd);
      ++kills;
      logs.push_back({fmt::format("{}/m{}", dir, logs.size())});
      child = test::spawn({kWorker, "group-consume", bus.name(), "soak", "g", logs.back().file});
      log = logs.size() - 1;
    }
    for (auto& p : producers) {
      std::string out;
      EXPECT_EQ(test::finish(p, out, 120s), 0) << "a producer failed or wedged: " << out;
    }
    // Acknowledged records: (partition, offset) -> (producer, seq).
    std::map<Key, Key> acked;
    for (const auto& f : pfiles) {
      std::ifstream in(f);
      std::string k;
      std::uint64_t id, seq, p, off;
      while (in >> k >> id >> seq >> p >> off) acked[{static_cast<std::uint32_t>(p), off}] = {static_cast<std::uint32_t>(id), seq};
    }
    // Let the group drain, then stop the members cleanly (they commit and leave).
    auto all_consumed = [&] {
      std::set<Key> seen;
      for (const auto& l : logs) {
        std::ifstream in(l.file);
        std::string line;
        while (std::getline(in, line))
          if (line[0] == 'C') {
            std::istringstream ls(line);
            char c;
            std::uint64_t id, seq, p, off;
            if (ls >> c >> id >> seq >> p >> off) seen.insert({static_cast<std::uint32_t>(p), off});
          }
      }
      return std::all_of(acked.begin(), acked.end(), [&](const auto& a) { return seen.count(a.first) > 0; });
    };
    for (int i = 0; i < 300 && !all_consumed(); ++i) std::this_thread::sleep_for(100ms);
    for (auto& [child, log] : members) ::kill(child.pid, SIGUSR1);
    for (auto& [child, log] : members) {
      std::string out;
      EXPECT_EQ(test::finish(child, out, 60s), 0) << "a member wedged or failed: " << out;
    }

    // Read every member's log: ownership intervals per partition, and each consumption.
    std::map<std::uint32_t, std::vector<Interval>> owned;
    std::map<Key, std::vector<Consumption>> consumed;
    std::map<Key, Key> what;  // (partition, offset) -> (producer, seq) as consumed
    int kills_while_owning = 0;
    // Per member, per partition: the highest offset busd confirmed a commit of (K lines).
    std::vector<std::map<std::uint32_t, std::uint64_t>> confirmed(logs.size());
    for (std::size_t m = 0; m < logs.size(); ++m) {
      std::ifstream in(logs[m].file);
      std::string line;
      std::map<std::uint32_t, std::uint64_t> open;  // partition -> since
      std::uint64_t last = 0;
      while (std::getline(in, line)) {
        std::istringstream ls(line);
        char kind = 0;
        ls >> kind;
        if (kind == 'A' || kind == 'R') {
          std::uint64_t t = 0;
          std::string list;
          ls >> t >> list;
          last = std::max(last, t);
          for (auto p : partitions_of(list)) {
            if (kind == 'A') {
              EXPECT_FALSE(open.count(p)) << logs[m].file << ": partition " << p << " assigned twice";
              open[p] = t;
            } else if (auto it = open.find(p); it != open.end()) {
              owned[p].push_back({it->second, t, m});
              open.erase(it);
            } else {
              ADD_FAILURE() << logs[m].file << ": partition " << p << " revoked but never assigned";
            }
          }
        } else if (kind == 'K') {
          std::uint64_t t, p, off;
          if (!(ls >> t >> p >> off)) continue;
          auto& c = confirmed[m][static_cast<std::uint32_t>(p)];
          c = std::max(c, off);
        } else if (kind == 'C') {
          std::uint64_t id, seq, p, off, t;
          if (!(ls >> id >> seq >> p >> off >> t)) continue;
          const Key at{static_cast<std::uint32_t>(p), off};
          consumed[at].push_back({m, t});
          auto [it, fresh] = what.emplace(at, Key{static_cast<std::uint32_t>(id), seq});
          EXPECT_TRUE(fresh || it->second == Key(static_cast<std::uint32_t>(id), seq)) << "two records at " << p << "@" << off;
          EXPECT_TRUE(open.count(static_cast<std::uint32_t>(p)))
              << logs[m].file << " consumed " << p << "@" << off << " while it did not own partition " << p;
          last = std::max(last, t);
        }
      }
      // What is still open ends with the process: at its kill, else at its last line.
      if (logs[m].killed_at && !open.empty()) ++kills_while_owning;
      for (const auto& [p, since] : open) owned[p].push_back({since, logs[m].killed_at ? logs[m].killed_at : last, m});
    }

    // 1. Never two owners of one partition at once.
    for (auto& [p, iv] : owned) {
      std::sort(iv.begin(), iv.end(), [](const Interval& a, const Interval& b) { return a.from < b.from; });
      for (std::size_t i = 1; i < iv.size(); ++i)
        EXPECT_GE(iv[i].from, iv[i - 1].to) << "partition " << p << " owned by " << logs[iv[i - 1].member].file << " and "
                                            << logs[iv[i].member].file << " at once";
    }
    // 2. Every acknowledged record consumed, as what it was.
    std::uint64_t missing = 0;
    for (const auto& [at, rec] : acked) {
      auto it = what.find(at);
      if (it == what.end()) ++missing;
      else EXPECT_EQ(it->second, rec) << "partition " << at.first << " offset " << at.second;
    }
    EXPECT_EQ(missing, 0u) << "acknowledged records never consumed";
    // 4. With acks=fsynced, every acknowledged record is in the disk log, as it was sent
    // (read once the last busd is killed too: the log as busd left it).
    std::uint64_t on_disk = 0;
    if (busd_kills) {
      if (const pid_t pid = busd_pid(bus.name()); pid > 0) {
        ::kill(pid, SIGKILL);
        for (int i = 0; i < 2500 && ::kill(pid, 0) == 0; ++i) std::this_thread::sleep_for(2ms);
      }
      std::map<std::uint32_t, std::map<std::uint64_t, std::string>> disk;
      for (std::uint32_t p = 0; p < kPartitions; ++p)
        disk[p] = test::disk_values(disklog::partition_dir(bus_paths(bus.name()).state_dir, "soak", p));
      std::uint64_t absent = 0;
      for (const auto& [at, rec] : acked) {
        auto it = disk[at.first].find(at.second);
        std::uint32_t id = 0;
        std::uint64_t seq = 0;
        if (it != disk[at.first].end() && it->second.size() >= 16) {
          std::memcpy(&id, it->second.data(), sizeof id);
          std::memcpy(&seq, it->second.data() + 8, sizeof seq);
        }
        if (it == disk[at.first].end()) ++absent;
        else if (Key(id, seq) != rec) ADD_FAILURE() << "partition " << at.first << " offset " << at.second << " on disk is another record";
        else ++on_disk;
      }
      EXPECT_EQ(absent, 0u) << "acknowledged (fsynced) records missing from the disk log";
      EXPECT_GT(busd_killed, 0) << "busd was never killed";
    }
    // 3. Duplicates only after the killed member's last commit: busd never confirmed a commit
    // of that member past the record. And only from a member killed soon after consuming
    // them (an auto-commit interval's worth, with time for a CPU-starved member), or (busd
    // killed) consumed while busd was down or restarting, when commits cannot land.
    std::uint64_t duplicates = 0;
    std::map<std::size_t, std::uint64_t> per_member;
    for (auto& [at, cs] : consumed) {
      if (cs.size() < 2) continue;
      std::sort(cs.begin(), cs.end(), [](const Consumption& a, const Consumption& b) { return a.at < b.at; });
      for (std::size_t i = 0; i + 1 < cs.size(); ++i) {
        ++duplicates;
        ++per_member[cs[i].member];
        const MemberLog& first = logs[cs[i].member];
        if (auto c = confirmed[cs[i].member].find(at.first); c != confirmed[cs[i].member].end()) {
          EXPECT_LE(c->second, at.second) << at.first << "@" << at.second << " consumed again, though busd confirmed "
                                          << first.file << "'s commit of offset " << c->second << " there";
        }
        const bool busd_down = std::any_of(busd_killed_at.begin(), busd_killed_at.end(), [&](std::uint64_t k) {
          return cs[i].at + kDupWindowNs >= k && cs[i].at <= k + kBusdRestartNs;
        });
        EXPECT_TRUE((first.killed_at && cs[i].at + kDupWindowNs >= first.killed_at) || busd_down)
            << at.first << "@" << at.second << " consumed again after " << first.file
            << (first.killed_at ? fmt::format(" consumed it {} ms before it was killed",
                                              (static_cast<std::int64_t>(first.killed_at) - static_cast<std::int64_t>(cs[i].at)) / 1'000'000)
                                : std::string(" gave the partition up cleanly"));
      }
    }
    // The soak reached what it is named after.
    EXPECT_GE(kills, seconds / 2);
    EXPECT_GT(kills_while_owning, 0) << "no member was killed while it owned partitions";
    EXPECT_GT(acked.size(), 0u);
    std::uint64_t worst = 0, commits_seen = 0;
    for (const auto& [m, n] : per_member) worst = std::max(worst, n);
    for (const auto& c : confirmed) commits_seen += c.size();
    EXPECT_GT(commits_seen, 0u) << "no member logged a confirmed commit: the duplicate check proved nothing";
    std::cout << fmt::format("group soak (seed {}, {} s{}): {} members killed ({} while owning partitions), {} member "
                             "processes; {} records acknowledged, all consumed; {} redelivered after kills, at most {} "
                             "from one member, none below a commit busd confirmed to it\n",
                             seed, seconds, busd_kills ? ", acks=fsynced" : "", kills, kills_while_owning, logs.size(),
                             acked.size(), duplicates, worst);
    if (busd_kills)
      std::cout << fmt::format("busd SIGKILLed {} times; {}/{} acknowledged records in the disk log\n", busd_killed, on_disk,
                               acked.size());
  }
  std::filesystem::remove_all(dir);
  ::unsetenv("SHMBUS_DIR");
}

TEST(GroupSoak, MembersKilledAtRandomNeverShareAPartitionAndLoseNothing) { group_soak(false); }

TEST(GroupSoak, FsyncedProducersAndBusdKilledToo) { group_soak(true); }

}  // namespace
