// Fuzzes the validation of shared-memory segments another process may have written: the
// input becomes a partition segment (opened, header and ring config validated) or a bus
// registry (attached read-only, topics listed), as the first byte says.
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "bus/names.h"
#include "shm/ring.h"
#include "shm/segment.h"
#include "shmbus/bus.h"

using namespace shmbus;

namespace {

void write_shm(const std::string& name, const std::uint8_t* data, std::size_t size) {
  const std::string path = shm::Segment::path_of(name);
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return;
  (void)!::write(fd, data, size);
  ::close(fd);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1 || size > (1u << 20)) return 0;
  const std::string bus = "fuzzseg" + std::to_string(::getpid());
  if (data[0] & 1) {
    const std::string name = partition_segment_name(bus, "t", 0);
    write_shm(name, data + 1, size - 1);
    auto seg = shm::Segment::open(name, shm::SegmentKind::kPartition, shm::kPartitionLayoutMajor, false);
    if (seg && shm::ring_validate(*seg)) {
      shm::RingReader r{shm::Ring(seg->data())};
      r.seek_earliest();
      const shm::RecordHeader* h = nullptr;
      // Read on as a consumer of a read-only mapping does: records, and when none comes the
      // claim table (aborted claims, committed ones without their first word). Any write
      // here would fault: the mapping is read-only.
      for (int i = 0; i < 64; ++i) {
        std::uint32_t len = 0;
        const shm::ReadStatus st = r.next(h, len);
        if (st == shm::ReadStatus::kRecord) {
          r.advance(len);
          continue;
        }
        if (st != shm::ReadStatus::kNone || r.unstick(nullptr, 0) != shm::ReadStatus::kRecord) break;
      }
      const shm::Ring ring(seg->data());
      shm::RingReader s(ring);
      (void)s.seek(ring.start_offset() + (data[0] >> 1));
      // What a producer waiting for a durable ack reads: never past the ring's end.
      for (bool synced : {false, true})
        if (auto d = ring.durable_end(synced); d && *d > ring.end_offset()) __builtin_trap();
    }
    (void)shm::Segment::remove(name);
  } else {
    const std::string name = registry_segment_name(bus);
    write_shm(name, data + 1, size - 1);
    BusOptions o;
    o.name = bus;
    o.read_only = true;
    o.create = false;
    if (auto b = Bus::attach(o)) (void)(*b)->list_topics();
    (void)shm::Segment::remove(name);
  }
  return 0;
}
