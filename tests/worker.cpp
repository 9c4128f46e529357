// A separate process for multi-process tests: produces or consumes and reports as JSON.
//
//   worker produce BUS TOPIC ID COUNT MODE [SIZE [RATE]]  MODE: p<N> (partition N) | keyed | batch<K>
//   worker chaos-produce BUS TOPIC ID COUNT RATE FILE [ACKS]  keyed; logs each acknowledged record
//       (ACKS: memory, the default, spilled or fsynced: acknowledged once busd has it on disk)
//   worker group-consume BUS TOPIC GROUP FILE [ASSIGNOR [SESSION_MS]]  member of GROUP; logs to FILE:
//       A|R TIME topic:p,...  assigned / revoked;  C id seq partition offset TIME  consumed;
//       K TIME partition offset  an auto-commit busd confirmed (ConsumerConfig::on_commit)
//   worker die-in-reserve BUS TOPIC PARTITION N       send N, reserve one, SIGKILL itself
//   worker die-after-claim BUS TOPIC PARTITION N      send N, die right after the claim CAS
//   worker consume BUS TOPIC PARTS EXPECT TIMEOUT_MS [hold]   PARTS: 0,1,2 ; prints a summary
//                                         EXPECT 0: until SIGUSR1, then to the end offsets
//   worker stall BUS TOPIC [GROUP]       takes partition 0 (assign with hold_producers, or
//       subscribe as a member of GROUP), prints "ready" and never polls: holds a block
//       topic's producers back until killed
#include <fcntl.h>

#include <csignal>
#include <cstring>
#include <thread>
#include <iostream>
#include <map>
#include <string>
#include <unistd.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <xxhash.h>

#include "shm/ring.h"
#include "shmbus/bus.h"
#include "shmbus/consumer.h"
#include "shmbus/producer.h"

using namespace shmbus;
using json = nlohmann::json;

namespace {

volatile std::sig_atomic_t g_producers_done = 0;
extern "C" void on_usr1(int) { g_producers_done = 1; }

// value: producer id (u32), sequence (u64), checksum of the rest (u64), filler.
struct Payload {
  std::uint32_t id;
  std::uint32_t pad;
  std::uint64_t seq;
  std::uint64_t sum;
};

std::vector<std::byte> make_value(std::uint32_t id, std::uint64_t seq, std::size_t size) {
  std::vector<std::byte> v(std::max(size, sizeof(Payload)));
  for (std::size_t i = sizeof(Payload); i < v.size(); ++i) v[i] = static_cast<std::byte>((seq * 31 + i) & 0xff);
  Payload p{id, 0, seq, 0};
  std::memcpy(v.data(), &p, sizeof p);
  p.sum = XXH64(v.data() + sizeof(Payload), v.size() - sizeof(Payload), seq ^ id);
  std::memcpy(v.data(), &p, sizeof p);
  return v;
}

std::shared_ptr<Bus> attach(const std::string& bus) {
  BusOptions o;
  o.name = bus;
  o.create = false;
  auto b = Bus::attach(o);
  if (!b) {
    std::cerr << "worker: " << b.error().message << "\n";
    std::exit(3);
  }
  return *b;
}

int produce(const std::string& bus, const std::string& topic, std::uint32_t id, std::uint64_t count,
            const std::string& mode, std::size_t size, double rate) {
  const auto t0 = std::chrono::steady_clock::now();
  auto p = Producer::create(attach(bus));
  if (!p) return 3;
  std::uint32_t batch = mode.rfind("batch", 0) == 0 ? static_cast<std::uint32_t>(std::stoul(mode.substr(5))) : 1;
  std::optional<std::uint32_t> partition;
  if (mode[0] == 'p') partition = static_cast<std::uint32_t>(std::stoul(mode.substr(1)));
  if (batch > 1) partition = 0;
  std::vector<std::vector<std::byte>> values;
  std::vector<std::string> keys;
  std::vector<Message> msgs;
  for (std::uint64_t seq = 0; seq < count;) {
    values.clear();
    keys.clear();
    msgs.clear();
    if (rate > 0)  // paced: a continuous load rather than a burst
      std::this_thread::sleep_until(t0 + std::chrono::nanoseconds(static_cast<std::int64_t>(static_cast<double>(seq) * 1e9 / rate)));
    for (std::uint32_t k = 0; k < batch && seq < count; ++k, ++seq) {
      values.push_back(make_value(id, seq, size));
      keys.push_back(std::to_string(id) + ":" + std::to_string(seq));
    }
    for (std::size_t k = 0; k < values.size(); ++k) {
      Message m;
      if (mode == "keyed") m.key = as_bytes(keys[k]);
      m.value = Bytes(values[k]);
      msgs.push_back(m);
    }
    auto r = p->send_batch(topic, msgs, partition);
    if (!r) {
      std::cerr << "worker: send: " << r.error().message << "\n";
      return 1;
    }
  }
  return 0;
}

int die(const std::string& bus, const std::string& topic, std::uint32_t partition, std::uint64_t n, bool after_claim) {
  auto p = Producer::create(attach(bus));
  if (!p) return 3;
  for (std::uint64_t seq = 0; seq < n; ++seq) {
    auto v = make_value(99, seq, 64);
    Message m;
    m.value = Bytes(v);
    if (!p->send(topic, m, partition)) return 1;
  }
  if (after_claim) {
    shm::test_hooks::after_claim = [] { ::raise(SIGKILL); };
    auto v = make_value(99, n, 64);
    Message m;
    m.value = Bytes(v);
    (void)p->send(topic, m, partition);
    return 4;  // not reached
  }
  auto r = p->reserve(topic, std::nullopt, 64, partition);
  if (!r) return 1;
  std::memset(r->value().data(), 0xab, 32);  // half-written
  ::raise(SIGKILL);
  return 4;
}

int consume(const std::string& bus, const std::string& topic, const std::string& parts, std::uint64_t expect,
            std::int64_t timeout_ms, bool hold) {
  ConsumerConfig cfg;
  cfg.auto_offset_reset = OffsetReset::kEarliest;
  cfg.hold_producers = hold;
  ::signal(SIGUSR1, on_usr1);
  auto the_bus = attach(bus);
  auto c = Consumer::create(the_bus, cfg);
  if (!c) return 3;
  std::vector<TopicPartition> tps;
  for (std::size_t at = 0; at < parts.size();) {
    std::size_t comma = parts.find(',', at);
    if (comma == std::string::npos) comma = parts.size();
    tps.push_back({topic, static_cast<std::uint32_t>(std::stoul(parts.substr(at, comma - at)))});
    at = comma + 1;
  }
  if (auto ok = c->assign(tps); !ok) {
    std::cerr << "worker: assign: " << ok.error().message << "\n";
    return 3;
  }
  std::cout << "ready" << std::endl;
  std::map<std::uint32_t, std::uint64_t> next_offset;                     // partition -> expected offset
  std::map<std::pair<std::uint32_t, std::uint32_t>, std::int64_t> last_seq;  // (producer, partition) -> seq
  std::map<std::uint32_t, std::uint64_t> per_producer;
  std::uint64_t records = 0, torn = 0, order = 0, gaps = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  // expect == 0: read until told (SIGUSR1) that the producers are done, then to the end.
  auto caught_up = [&] {
    if (!g_producers_done) return false;
    auto info = the_bus->describe_topic(topic);
    if (!info) return true;
    for (const auto& tp : tps)
      if (*c->position(tp) < info->partitions[tp.partition].end_offset) return false;
    return true;
  };
  while ((expect == 0 ? !caught_up() : records < expect) && std::chrono::steady_clock::now() < deadline) {
    auto batch = c->poll(std::chrono::milliseconds(50));
    if (!batch) {
      std::cerr << "worker: poll: " << batch.error().message << "\n";
      return 1;
    }
    for (const auto& r : *batch) {
      ++records;
      auto it = next_offset.find(r.partition);
      if (it != next_offset.end() && r.offset != it->second) ++gaps;
      next_offset[r.partition] = r.offset + 1;
      if (r.value.size() < sizeof(Payload)) {
        ++torn;
        continue;
      }
      Payload p;
      std::memcpy(&p, r.value.data(), sizeof p);
      if (XXH64(r.value.data() + sizeof(Payload), r.value.size() - sizeof(Payload), p.seq ^ p.id) != p.sum) {
        ++torn;
        continue;
      }
      auto& last = last_seq.try_emplace({p.id, r.partition}, -1).first->second;
      if (static_cast<std::int64_t>(p.seq) <= last) ++order;
      last = static_cast<std::int64_t>(p.seq);
      ++per_producer[p.id];
    }
  }
  json j = {{"records", records}, {"torn", torn},   {"order_violations", order}, {"offset_gaps", gaps},
            {"lost", c->lost()},  {"aborted", c->aborted()}};
  json pp = json::object();
  for (auto [id, n] : per_producer) pp[std::to_string(id)] = n;
  j["per_producer"] = pp;
  std::cout << j.dump() << std::endl;
  return 0;
}

// Logs to FILE, one line each, written before the next poll (so before any commit that
// covers it): "A <ns> t:p,t:p" assigned, "R <ns> ..." revoked, "C <producer> <seq> <p> <o>"
// consumed. Exits after SIGUSR1 once no record came for 500 ms.
// `session_ms` > 0: that session timeout, and a heartbeat every fifth of it.
int group_consume(const std::string& bus, const std::string& topic, const std::string& group, const std::string& file,
                  const std::string& assignor, std::int64_t session_ms) {
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) return 3;
  auto log_tps = [fd](char kind, const std::vector<TopicPartition>& tps) {
    std::string line = fmt::format("{} {}", kind, std::chrono::steady_clock::now().time_since_epoch().count());
    for (std::size_t i = 0; i < tps.size(); ++i) line += fmt::format("{}{}:{}", i ? "," : " ", tps[i].topic, tps[i].partition);
    line += "\n";
    (void)!::write(fd, line.data(), line.size());
  };
  ConsumerConfig cfg;
  cfg.auto_offset_reset = OffsetReset::kEarliest;
  cfg.assignor = assignor;
  cfg.auto_commit_interval = std::chrono::milliseconds(100);
  cfg.client_name = "worker";
  if (session_ms > 0) {
    cfg.session_timeout = std::chrono::milliseconds(session_ms);
    cfg.heartbeat_interval = std::chrono::milliseconds(std::max<std::int64_t>(1, session_ms / 5));
  }
  cfg.on_assigned = [&](const std::vector<TopicPartition>& tps) { log_tps('A', tps); };
  cfg.on_revoked = [&](const std::vector<TopicPartition>& tps) { log_tps('R', tps); };
  cfg.on_commit = [fd](const std::vector<std::pair<TopicPartition, std::uint64_t>>& offs, const Status& st) {
    if (!st) return;
    std::string lines;
    const auto t = std::chrono::steady_clock::now().time_since_epoch().count();
    for (const auto& [tp, o] : offs) lines += fmt::format("K {} {} {}\n", t, tp.partition, o);
    (void)!::write(fd, lines.data(), lines.size());
  };
  ::signal(SIGUSR1, on_usr1);
  auto c = Consumer::create(attach(bus), cfg);
  if (!c) return 3;
  if (auto ok = c->subscribe({topic}, group); !ok) {
    std::cerr << "worker: subscribe: " << ok.error().message << "\n";
    return 3;
  }
  std::cout << "ready" << std::endl;
  std::uint64_t idle_since = 0, records = 0, failing_since = 0;
  std::string buf;
  for (;;) {
    auto batch = c->poll(std::chrono::milliseconds(20));
    if (!batch) {
      // As an application would: say it and poll on (a busd that went away in the middle of
      // a rebalance is a transient error); give up only if it lasts.
      std::cerr << "worker: poll: " << batch.error().message << "\n";
      const auto now = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
      if (!failing_since) failing_since = now;
      if (now - failing_since > 20'000'000'000ull) return 1;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    failing_since = 0;
    buf.clear();
    // When the batch was in our hands (steady_clock, CLOCK_MONOTONIC: comparable between
    // processes), so that a test can place each record inside an ownership interval.
    const auto got = std::chrono::steady_clock::now().time_since_epoch().count();
    for (const auto& r : *batch) {
      Payload p;
      if (r.value.size() < sizeof p) continue;
      std::memcpy(&p, r.value.data(), sizeof p);
      buf += fmt::format("C {} {} {} {} {}\n", p.id, p.seq, r.partition, r.offset, got);
      ++records;
    }
    if (!buf.empty()) (void)!::write(fd, buf.data(), buf.size());
    const auto now = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    if (!batch->empty()) idle_since = 0;
    else if (!idle_since) idle_since = now;
    if (g_producers_done && idle_since && now - idle_since > 500'000'000) break;
  }
  (void)c->commit();
  (void)c->close();
  ::close(fd);
  std::cout << json{{"records", records}}.dump() << std::endl;
  return 0;
}

// Keyed sends at a steady rate; after each acknowledged send, one line "P id seq partition
// offset" is written to `file` with write(2): what a SIGKILL cannot take back.
int chaos_produce(const std::string& bus, const std::string& topic, std::uint32_t id, std::uint64_t count, double rate,
                  const std::string& file, const std::string& acks) {
  const int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (fd < 0) return 3;
  ProducerConfig pc;
  if (acks == "spilled") pc.acks = Acks::kSpilled;
  else if (acks == "fsynced") pc.acks = Acks::kFsynced;
  else if (acks != "memory") return 2;
  pc.ack_timeout_ms = 60'000;  // busd SIGKILLed meanwhile: the send starts another
  auto p = Producer::create(attach(bus), pc);
  if (!p) return 3;
  const auto t0 = std::chrono::steady_clock::now();
  for (std::uint64_t seq = 0; seq < count; ++seq) {
    std::this_thread::sleep_until(t0 + std::chrono::nanoseconds(static_cast<std::int64_t>(static_cast<double>(seq) * 1e9 / rate)));
    const std::string key = fmt::format("{}:{}", id, seq % 4);
    const auto value = make_value(id, seq, 48);
    auto md = p->send(topic, Message{as_bytes(key), Bytes(value)});
    if (!md) {
      std::cerr << "worker: send: " << md.error().message << "\n";
      return 1;
    }
    const std::string line = fmt::format("P {} {} {} {}\n", id, seq, md->partition, md->offset);
    (void)!::write(fd, line.data(), line.size());
  }
  ::close(fd);
  return 0;
}

// A consumer that holds partition 0 and never polls (a member's heartbeat runs on).
int stall(const std::string& bus, const std::string& topic, const std::string& group) {
  ConsumerConfig cfg;
  cfg.auto_offset_reset = OffsetReset::kEarliest;
  cfg.hold_producers = true;
  auto c = Consumer::create(attach(bus), cfg);
  if (!c) return 3;
  auto ok = group.empty() ? c->assign({{topic, 0}}) : c->subscribe({topic}, group);
  if (!ok) {
    std::cerr << "worker: " << ok.error().message << "\n";
    return 3;
  }
  std::cout << "ready" << std::endl;
  for (;;) ::pause();
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> a(argv + 1, argv + argc);
  if (a.size() >= 5 && a[0] == "produce")
    return produce(a[1], a[2], static_cast<std::uint32_t>(std::stoul(a[3])), std::stoull(a[4]), a.size() > 5 ? a[5] : "p0",
                   a.size() > 6 ? std::stoul(a[6]) : 64, a.size() > 7 ? std::stod(a[7]) : 0);
  if ((a.size() == 7 || a.size() == 8) && a[0] == "chaos-produce")
    return chaos_produce(a[1], a[2], static_cast<std::uint32_t>(std::stoul(a[3])), std::stoull(a[4]), std::stod(a[5]), a[6],
                         a.size() == 8 ? a[7] : "memory");
  if (a.size() >= 5 && a[0] == "group-consume") return group_consume(a[1], a[2], a[3], a[4], a.size() > 5 ? a[5] : "sticky", a.size() > 6 ? std::stoll(a[6]) : 0);
  if (a.size() == 5 && (a[0] == "die-in-reserve" || a[0] == "die-after-claim"))
    return die(a[1], a[2], static_cast<std::uint32_t>(std::stoul(a[3])), std::stoull(a[4]), a[0] == "die-after-claim");
  if (a.size() >= 6 && a[0] == "consume")
    return consume(a[1], a[2], a[3], std::stoull(a[4]), std::stoll(a[5]), a.size() > 6 && a[6] == "hold");
  if ((a.size() == 3 || a.size() == 4) && a[0] == "stall") return stall(a[1], a[2], a.size() == 4 ? a[3] : "");
  std::cerr << "worker: bad arguments\n";
  return 2;
}
