// The fault-injection suite (ctest label `chaos`): a keyed load on a spilled `block` topic
// consumed by a group, while producers, group members and busd are SIGKILLed at random
// (seeded, so a failure can be replayed). At the end: every acknowledged record was consumed
// at least once, the log holds it at its offset, in order per key, with no holes but the
// claims of killed producers; no process wedged; nothing left in /dev/shm.
#include <gtest/gtest.h>

#include <dirent.h>
#include <signal.h>

#include <filesystem>
#include <functional>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "bus/group_client.h"
#include "bus/names.h"
#include "bus/paths.h"
#include "shmbus/consumer.h"
#include "test_util.h"

using namespace shmbus;
using namespace std::chrono_literals;

namespace {

const std::string kWorker = SHMBUS_WORKER_PATH;

struct Rec {
  std::uint32_t id;
  std::uint64_t seq;
  auto operator<=>(const Rec&) const = default;
};

// "P id seq partition offset" / "C id seq partition offset" lines of one kind, from files.
std::map<std::pair<std::uint32_t, std::uint64_t>, Rec> read_lines(const std::vector<std::string>& files, char kind,
                                                                   std::uint64_t* lines = nullptr) {
  std::map<std::pair<std::uint32_t, std::uint64_t>, Rec> out;  // (partition, offset) -> record
  for (const auto& f : files) {
    std::ifstream in(f);
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream ls(line);
      char k = 0;
      Rec r{};
      std::uint32_t partition = 0;
      std::uint64_t offset = 0;
      if (!(ls >> k >> r.id >> r.seq >> partition >> offset) || k != kind) continue;
      if (lines) ++*lines;
      auto [it, fresh] = out.emplace(std::make_pair(partition, offset), r);
      EXPECT_TRUE(fresh || it->second == r) << "two records at " << partition << "@" << offset;
    }
  }
  return out;
}

std::size_t shm_files_of(const std::string& bus) {
  std::size_t n = 0;
  const std::string prefix = bus_segment_prefix(bus);
  DIR* d = ::opendir("/dev/shm");
  while (dirent* e = d ? ::readdir(d) : nullptr)
    if (std::string_view(e->d_name).substr(0, prefix.size()) == prefix) ++n;
  if (d) ::closedir(d);
  return n;
}

pid_t busd_pid(const std::string& bus) {
  std::ifstream f(bus_paths(bus).lock);
  pid_t pid = 0;
  f >> pid;
  return pid > 0 && ::kill(pid, 0) == 0 ? pid : 0;
}

TEST(Chaos, RandomKillsOfProducersMembersAndBusdLoseNoAcknowledgedRecord) {
  const std::string dir = "/tmp/" + test::unique_bus("chaos");
  std::filesystem::create_directories(dir);
  ::setenv("SHMBUS_DIR", dir.c_str(), 1);
  ::setenv("SHMBUS_BUSD", SHMBUS_BUSD_PATH, 1);
  std::string bus_name;
  {
    test::TestBus bus("chaos");
    bus_name = bus.name();
    const TopicConfig cfg = test::spilled_topic(4, 256 << 10);
    ASSERT_TRUE(bus->create_topic("chaos", cfg));
    ASSERT_TRUE(BusdConnection::connect(bus.name(), 5s));

    const std::uint64_t seed = 20261125;
    std::mt19937_64 rng(seed);
    std::vector<std::string> pfiles, cfiles;
    std::vector<test::Child> producers(2), members(2);
    std::uint32_t next_id = 0, next_member = 0;
    auto spawn_producer = [&](test::Child& c) {
      const std::uint32_t id = next_id++;
      pfiles.push_back(fmt::format("{}/p{}", dir, id));
      c = test::spawn({kWorker, "chaos-produce", bus.name(), "chaos", std::to_string(id), "3000", "3000", pfiles.back()});
    };
    auto spawn_member = [&](test::Child& c) {
      cfiles.push_back(fmt::format("{}/m{}", dir, next_member++));
      c = test::spawn({kWorker, "group-consume", bus.name(), "chaos", "g", cfiles.back()});
    };
    for (auto& m : members) spawn_member(m);
    for (auto& p : producers) spawn_producer(p);

    std::map<std::string, int> kills;
    int producer_kills = 0;
    const auto until = std::chrono::steady_clock::now() + 12s;
    while (std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(150 + rng() % 250));
      // Producers that finished their 3,000 records are replaced: the load goes on.
      for (auto& p : producers) {
        int st = 0;
        if (::waitpid(p.pid, &st, WNOHANG) == p.pid) {
          EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "a producer failed: status " << st;
          ::close(p.out_fd);
          spawn_producer(p);
        }
      }
      auto kill_and_respawn = [&](std::vector<test::Child>& group, const std::function<void(test::Child&)>& respawn) {
        test::Child& c = group[rng() % group.size()];
        ::kill(c.pid, SIGKILL);
        ::waitpid(c.pid, nullptr, 0);
        ::close(c.out_fd);
        respawn(c);
      };
      switch (rng() % 3) {
        case 0:
          kill_and_respawn(producers, spawn_producer);
          ++kills["producer"];
          ++producer_kills;
          break;
        case 1:
          kill_and_respawn(members, spawn_member);
          ++kills["member"];
          break;
        default:
          // Nobody restarts busd by hand: producers held back by the spiller and members
          // reconnecting start a new one.
          if (const pid_t b = busd_pid(bus.name())) {
            ::kill(b, SIGKILL);
            for (int i = 0; i < 500 && ::kill(b, 0) == 0; ++i) std::this_thread::sleep_for(2ms);
            ++kills["busd"];
          }
      }
    }
    // The last producers finish on their own (no process wedged), then the members drain.
    for (auto& p : producers) {
      std::string out;
      EXPECT_EQ(test::finish(p, out, 120s), 0) << "a producer wedged or failed: " << out;
    }
    std::uint64_t acked_lines = 0;
    const auto acked = read_lines(pfiles, 'P', &acked_lines);
    // Wait until the group has consumed every acknowledged record (at least once).
    std::map<std::pair<std::uint32_t, std::uint64_t>, Rec> consumed;
    for (int i = 0; i < 600; ++i) {
      consumed = read_lines(cfiles, 'C');
      bool all = true;
      for (const auto& [at, r] : acked)
        if (!consumed.count(at)) {
          all = false;
          break;
        }
      if (all) break;
      std::this_thread::sleep_for(100ms);
    }
    for (auto& m : members) ::kill(m.pid, SIGUSR1);
    for (auto& m : members) {
      std::string out;
      EXPECT_EQ(test::finish(m, out, 60s), 0) << "a member wedged or failed: " << out;
    }
    std::uint64_t consumed_lines = 0;
    consumed = read_lines(cfiles, 'C', &consumed_lines);

    // 1. Every acknowledged record was consumed by the group, as what it was.
    std::uint64_t missing = 0;
    for (const auto& [at, r] : acked) {
      auto it = consumed.find(at);
      if (it == consumed.end()) {
        ++missing;
      } else {
        EXPECT_EQ(it->second, r) << "partition " << at.first << " offset " << at.second;
      }
    }
    EXPECT_EQ(missing, 0u) << "acknowledged records never consumed";

    // 2. The log (disk, then ring) holds each at its offset, in order per key, with no
    //    holes but the claims of killed producers.
    ConsumerConfig cc;
    cc.auto_offset_reset = OffsetReset::kEarliest;
    auto reader = Consumer::create(bus.get(), cc);
    ASSERT_TRUE(reader);
    ASSERT_TRUE(reader->assign({{"chaos", 0}, {"chaos", 1}, {"chaos", 2}, {"chaos", 3}}));
    auto info = bus->describe_topic("chaos");
    ASSERT_TRUE(info);
    std::uint64_t end_total = 0;
    for (const auto& p : info->partitions) end_total += p.end_offset;
    std::map<std::uint32_t, std::vector<std::pair<std::uint64_t, Rec>>> log;
    std::uint64_t read = 0;
    for (int i = 0; i < 2000 && read < end_total; ++i) {
      auto b = reader->poll(50ms);
      ASSERT_TRUE(b) << b.error().message;
      if (b->empty() && i > 20) break;
      for (const auto& r : *b) {
        Rec rec{};
        std::memcpy(&rec.id, r.value.data(), 4);
        std::memcpy(&rec.seq, r.value.data() + 8, 8);
        log[r.partition].push_back({r.offset, rec});
        ++read;
      }
    }
    std::uint64_t holes = 0;
    std::map<std::string, std::uint64_t> last_seq;  // key -> last seq seen
    for (const auto& p : info->partitions) {
      const auto& recs = log[p.partition];
      std::uint64_t expect = 0;
      for (const auto& [off, rec] : recs) {
        ASSERT_GE(off, expect) << "partition " << p.partition << ": offsets go back";
        holes += off - expect;
        expect = off + 1;
        const std::string key = fmt::format("{}:{}", rec.id, rec.seq % 4);
        auto it = last_seq.find(key);
        EXPECT_TRUE(it == last_seq.end() || rec.seq > it->second) << "key " << key << " out of order at offset " << off;
        last_seq[key] = rec.seq;
        if (auto a = acked.find({p.partition, off}); a != acked.end()) {
          EXPECT_EQ(a->second, rec);
        }
      }
      holes += p.end_offset - expect;
    }
    for (const auto& [at, r] : acked) {
      EXPECT_TRUE(std::any_of(log[at.first].begin(), log[at.first].end(), [&](const auto& e) { return e.first == at.second; }))
          << "acknowledged " << at.first << "@" << at.second << " is not in the log";
    }
    // A killed producer can leave at most the one claim it was filling (single sends).
    EXPECT_LE(holes, static_cast<std::uint64_t>(producer_kills)) << "offsets are dense but for killed producers' claims";
    EXPECT_GT(kills["busd"], 0);
    EXPECT_GT(kills["member"], 0);
    EXPECT_GT(producer_kills, 0);
    std::cout << fmt::format("chaos (seed {}): survived {} kills ({} producers, {} members, {} busd); {} records acknowledged, "
                             "{} consumed by the group ({} redelivered), {} read back from disk and ring and checked; "
                             "{} offsets left by killed producers' claims\n",
                             seed, producer_kills + kills["member"] + kills["busd"], producer_kills, kills["member"],
                             kills["busd"], acked.size(), consumed_lines, consumed_lines - consumed.size(), read, holes);
    EXPECT_EQ(acked.size(), acked_lines) << "no offset acknowledged twice";
  }
  // 3. Nothing left behind: the bus gone (TestBus), its busd exits, no segment stays.
  for (int i = 0; i < 300 && busd_pid(bus_name); ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(busd_pid(bus_name), 0) << "busd outlived its bus";
  EXPECT_EQ(shm_files_of(bus_name), 0u) << "segments leaked in /dev/shm";
  std::filesystem::remove_all(dir);
  ::unsetenv("SHMBUS_DIR");
}

}  // namespace
