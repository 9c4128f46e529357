// Fuzzes busd's Kafka request handlers behind the decoder: frames as a client sends them are
// decoded and handled against a real bus (produce, fetch, metadata, list offsets, configs,
// producer ids), so a request that decodes but names wrong things (partitions, offsets,
// sizes, sequences, record batches) must be answered, never crash busd or write bad records.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <span>
#include <string>

#include "shmbus/bus.h"
#include "tests/fuzz/kafka_frames.h"
#include "tools/busd/kafka/group_coordinator.h"
#include "tools/busd/kafka/handlers.h"
#include "tools/busd/kafka/messages.h"

using namespace shmbus;
using namespace shmbus::kafka;

namespace {

// The groups are busd's (tested with the clients): here every group request gets an empty
// answer, so that the handlers' own paths are what the fuzzer explores.
class NoGroups final : public GroupCoordinator {
 public:
  std::optional<JoinGroupResponse> join_group(const JoinGroupRequest&, std::int16_t, const GroupClient&, bool,
                                              std::string&) override {
    return JoinGroupResponse{};
  }
  SyncGroupResponse sync_group(const SyncGroupRequest&) override { return {}; }
  HeartbeatResponse heartbeat(const HeartbeatRequest&) override { return {}; }
  LeaveGroupResponse leave_group(const LeaveGroupRequest&) override { return {}; }
  OffsetCommitResponse offset_commit(const OffsetCommitRequest&) override { return {}; }
  OffsetFetchResponse offset_fetch(const OffsetFetchRequest&) override { return {}; }
  DescribeGroupsResponse describe_groups(const DescribeGroupsRequest&) override { return {}; }
  ListGroupsResponse list_groups() override { return {}; }
  std::uint64_t join_progress() const override { return 0; }
};

struct World {
  std::string bus_name = "fuzzkh" + std::to_string(::getpid());
  std::string state_dir;
  std::shared_ptr<Bus> bus;
  NoGroups groups;
  std::unique_ptr<Handlers> handlers;

  World() {
    state_dir = (std::filesystem::temp_directory_path() / bus_name).string();
    std::filesystem::create_directories(state_dir);
    ::setenv("SHMBUS_DIR", state_dir.c_str(), 1);
    BusOptions o;
    o.name = bus_name;
    bus = *Bus::attach(o);
    // The names the captured frames use (tests/fuzz/capture_kafka_frames.py, tests).
    for (const char* t : {"capture", "t", "test", "kr"}) {
      TopicConfig c;
      c.partitions = 2;
      c.capacity = 64 << 10;
      (void)bus->create_topic(t, c);
    }
    handlers = std::make_unique<Handlers>(bus, state_dir, groups, [](const std::string&) {});
  }
  ~World() {
    handlers.reset();
    bus.reset();
    (void)Bus::destroy(bus_name, true);
    std::filesystem::remove_all(state_dir);
  }
};

World& world() {
  static World w;
  return w;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  World& w = world();
  for_each_frame(std::span<const std::uint8_t>(data, size), [&](std::span<const std::uint8_t> frame, int i) {
    auto req = decode_request(frame);
    if (!req) return;
    // Topics the network creates or deletes would pile up over millions of runs (each a set
    // of rings in /dev/shm): their decoding is fuzz_kafka's, their handling the tests'.
    if (std::holds_alternative<CreateTopicsRequest>(req->body) || std::holds_alternative<DeleteTopicsRequest>(req->body))
      return;
    if (auto* m = std::get_if<MetadataRequest>(&req->body)) {  // nor auto-creation (before v4: always)
      m->allow_auto_topic_creation = false;
      if (req->header.api_version < 4) req->header.api_version = 4;
    }
    Answer a = w.handlers->handle(*req, ClientEnd{"127.0.0.1", 9092}, 1'000'000'000ull * (i + 1), true);
    if (a.kind == Answer::Kind::kRespond && a.frame.size() < 4) __builtin_trap();  // every answer is a whole frame
    if (a.kind == Answer::Kind::kClose && a.why.empty()) __builtin_trap();           // every close says why
  });
  return 0;
}
