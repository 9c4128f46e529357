// Google Benchmark micro-benchmarks of the hot functions, single process.
// bench/instructions.sh counts the instructions of the send and poll ones under callgrind.
#include <benchmark/benchmark.h>

#include <unistd.h>

#include <cstdlib>

#include <vector>

#include "bus/disk_log.h"
#include "bus/partitioner.h"
#include "shm/process.h"
#include "shmbus/bus.h"
#include "shmbus/consumer.h"
#include "shmbus/producer.h"

using namespace shmbus;

namespace {

// SHMBUS_MICRO_ITERATIONS=N: the send and poll benchmarks run exactly N iterations, so two
// runs with different N differ only by the loop (bench/instructions.sh subtracts them).
void fixed_iterations(benchmark::internal::Benchmark* b) {
  if (const char* n = std::getenv("SHMBUS_MICRO_ITERATIONS")) b->Iterations(std::strtoll(n, nullptr, 10));
}

struct Fixture {
  std::string name = "micro_" + std::to_string(::getpid());
  std::shared_ptr<Bus> bus;
  Fixture(RetentionMode mode = RetentionMode::kOverwrite) {
    BusOptions o;
    o.name = name;
    bus = *Bus::attach(o);
    TopicConfig c;
    c.capacity = 1 << 22;
    c.retention = mode;
    (void)bus->create_topic("t", c);
  }
  ~Fixture() {
    bus.reset();
    (void)Bus::destroy(name);
  }
};

// Args: value bytes, then ProducerConfig::record_alignment (each send padded to 8 or 64
// bytes: the layout choice between packing and a cache line per send).
Producer producer_aligned(const Fixture& f, std::int64_t alignment, bool exclusive = false) {
  ProducerConfig pc;
  pc.record_alignment = static_cast<std::uint32_t>(alignment);
  pc.exclusive = exclusive;
  return std::move(*Producer::create(f.bus, pc));
}

// Args: value bytes, alignment, then 1 for an exclusive producer.
void BM_Send(benchmark::State& state) {
  Fixture f;
  auto p = producer_aligned(f, state.range(1), state.range(2) != 0);
  std::string value(static_cast<std::size_t>(state.range(0)), 'x');
  Message m{std::nullopt, as_bytes(value)};
  for (auto _ : state) benchmark::DoNotOptimize(p.send("t", m, 0));
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_Send)
    ->Args({64, 8, 0})
    ->Args({64, 64, 0})
    ->Args({64, 64, 1})
    ->Args({4096, 8, 0})
    ->Args({4096, 64, 0})
    ->Apply(fixed_iterations);

// Producer::partition_writer's send. Args: value bytes, then 1 for an exclusive producer.
void BM_PartitionWriterSend(benchmark::State& state) {
  Fixture f;
  auto p = producer_aligned(f, 64, state.range(1) != 0);
  auto w = p.partition_writer("t", 0);
  std::string value(static_cast<std::size_t>(state.range(0)), 'x');
  Message m{std::nullopt, as_bytes(value)};
  for (auto _ : state) benchmark::DoNotOptimize(w->send(m));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PartitionWriterSend)->Args({64, 0})->Args({64, 1})->Apply(fixed_iterations);

void BM_SendBatch64(benchmark::State& state) {
  Fixture f;
  auto p = producer_aligned(f, state.range(1));
  std::string value(static_cast<std::size_t>(state.range(0)), 'x');
  std::vector<Message> batch(64, Message{std::nullopt, as_bytes(value)});
  for (auto _ : state) benchmark::DoNotOptimize(p.send_batch("t", batch, 0));
  state.SetItemsProcessed(state.iterations() * 64);
}
BENCHMARK(BM_SendBatch64)->Args({64, 8})->Args({64, 64})->Apply(fixed_iterations);

void BM_ReserveCommit(benchmark::State& state) {
  Fixture f;
  auto p = Producer::create(f.bus);
  for (auto _ : state) {
    auto r = p->reserve("t", std::nullopt, 64, 0);
    r->value()[0] = std::byte{1};
    if (!r->commit()) state.SkipWithError("commit failed");
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_ReserveCommit);

void BM_SendThenPoll(benchmark::State& state) {
  Fixture f(state.range(0) ? RetentionMode::kBlock : RetentionMode::kOverwrite);
  auto p = Producer::create(f.bus);
  ConsumerConfig cc;
  cc.hold_producers = state.range(0) != 0;
  auto c = Consumer::create(f.bus, cc);
  (void)c->assign({{"t", 0}});
  std::string value(64, 'x');
  Message m{std::nullopt, as_bytes(value)};
  for (auto _ : state) {
    (void)p->send("t", m, 0);
    benchmark::DoNotOptimize(c->poll(std::chrono::nanoseconds(0)));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_SendThenPoll)->Arg(0)->Arg(1)->Apply(fixed_iterations);

// One batch of 64 x 64 B sent, then polled back: the per-record cost of both sides of the
// throughput path, without a second CPU. Arg: 1 = block topic read in place, 0 = copying.
void BM_BatchRoundTrip(benchmark::State& state) {
  Fixture f(state.range(0) ? RetentionMode::kBlock : RetentionMode::kOverwrite);
  auto p = Producer::create(f.bus);
  ConsumerConfig cc;
  cc.hold_producers = state.range(0) != 0;
  cc.max_poll_records = 64;
  auto c = Consumer::create(f.bus, cc);
  (void)c->assign({{"t", 0}});
  std::string value(64, 'x');
  std::vector<Message> batch(64, Message{std::nullopt, as_bytes(value)});
  std::uint64_t bytes = 0;
  for (auto _ : state) {
    (void)p->send_batch("t", batch, 0);
    auto got = c->poll(std::chrono::nanoseconds(0));
    for (const auto& r : *got) bytes += r.value.size();
  }
  benchmark::DoNotOptimize(bytes);
  state.SetItemsProcessed(state.iterations() * 64);
}
BENCHMARK(BM_BatchRoundTrip)->Arg(0)->Arg(1)->Apply(fixed_iterations);

void BM_PollEmpty(benchmark::State& state) {
  Fixture f;
  auto c = Consumer::create(f.bus);
  (void)c->assign({{"t", 0}});
  for (auto _ : state) benchmark::DoNotOptimize(c->poll(std::chrono::nanoseconds(0)));
}
BENCHMARK(BM_PollEmpty);

void BM_Murmur2(benchmark::State& state) {
  std::string key(static_cast<std::size_t>(state.range(0)), 'k');
  for (auto _ : state) benchmark::DoNotOptimize(murmur2(as_bytes(key)));
}
BENCHMARK(BM_Murmur2)->Arg(8)->Arg(64);

// The spill log's frame checksum: the SSE4.2 instruction against Boost.CRC's tables.
void BM_Crc32cHardware(benchmark::State& state) {
  std::vector<unsigned char> buf(static_cast<std::size_t>(state.range(0)), 0x5a);
  for (auto _ : state) benchmark::DoNotOptimize(disklog::crc32c(buf.data(), buf.size()));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_Crc32cHardware)->Arg(64)->Arg(1024)->Arg(65536);

void BM_Crc32cBoost(benchmark::State& state) {
  std::vector<unsigned char> buf(static_cast<std::size_t>(state.range(0)), 0x5a);
  for (auto _ : state) benchmark::DoNotOptimize(disklog::crc32c_boost(buf.data(), buf.size()));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_Crc32cBoost)->Arg(64)->Arg(1024)->Arg(65536);

void BM_ClockRealtime(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(shm::realtime_ns());
}
BENCHMARK(BM_ClockRealtime);

}  // namespace

BENCHMARK_MAIN();
