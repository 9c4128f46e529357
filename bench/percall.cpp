// The C++ side of python/percall.py: N sends, or a poll loop over N records, as the Python
// loops it is compared with do them, so that the instructions of two runs (small N, large
// N) differ only by the loop. Not a benchmark of its own: python/percall.py runs it under
// callgrind.
//   shmbus_percall produce BUS TOPIC N   N sends of a 64-byte value to partition 0
//   shmbus_percall consume BUS TOPIC N   reads N records of partition 0 from its start,
//                                        reading each value (poll() fetches up to 500)
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "shmbus/bus.h"
#include "shmbus/consumer.h"
#include "shmbus/producer.h"

using namespace shmbus;

namespace {

int fail(const char* what, const Error& e) {
  std::fprintf(stderr, "shmbus_percall: %s: %s\n", what, e.message.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: shmbus_percall produce|consume BUS TOPIC N\n");
    return 2;
  }
  const std::string_view mode = argv[1];
  const std::string topic = argv[3];
  const long long n = std::strtoll(argv[4], nullptr, 10);
  BusOptions o;
  o.name = argv[2];
  auto bus = Bus::attach(o);
  if (!bus) return fail("attach", bus.error());
  if (mode == "produce") {
    auto p = Producer::create(*bus);
    if (!p) return fail("producer", p.error());
    const std::string value(64, 'v');
    const Message m{std::nullopt, as_bytes(value)};
    for (long long i = 0; i < n; ++i)
      if (auto r = p->send(topic, m, 0); !r) return fail("send", r.error());
    return 0;
  }
  if (mode == "consume") {
    ConsumerConfig cc;
    cc.auto_offset_reset = OffsetReset::kEarliest;
    auto c = Consumer::create(*bus, cc);
    if (!c) return fail("consumer", c.error());
    if (auto s = c->assign({TopicPartition{topic, 0}}); !s) return fail("assign", s.error());
    long long got = 0;
    std::size_t bytes = 0;
    while (got < n) {
      auto r = c->poll(std::chrono::seconds(1));
      if (!r) return fail("poll", r.error());
      for (const ConsumedRecord& rec : *r) {
        bytes += rec.value.size() + static_cast<std::size_t>(rec.value.empty() ? 0 : static_cast<unsigned>(rec.value[0]));
        ++got;
      }
    }
    return bytes == 0;  // used, so that the loop reads each value
  }
  std::fprintf(stderr, "shmbus_percall: mode %s: produce or consume\n", argv[1]);
  return 2;
}
