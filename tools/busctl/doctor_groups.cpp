// busctl doctor's look at consumer groups: durable gates (committed offsets) of groups with no
// live member that hold a block topic's producers back, named from busd's name table.
#include <fmt/format.h>

#include "bus/gate_names.h"
#include "shm/process.h"
#include "tools/busctl/doctor.h"

namespace shmbus {

// Consumer groups with no live member whose committed offset holds a block topic back: once
// the ring is full, every producer of the partition waits for them (not mended: deleting or
// moving a group's offsets is the operator's choice).
std::vector<Finding> group_gate_findings(const std::string& bus, const std::string& topic, std::uint32_t p,
                                         const std::string& file, const shm::Ring& ring, const GroupNameSlot* names) {
  std::vector<Finding> out;
  if (ring.retention() != shm::Retention::kBlock) return out;
  const std::uint64_t tail = ring.tail_position();
  for (std::uint32_t i = 0; i < shm::kGateSlots; ++i) {
    const shm::GateSlot& g = *ring.gate(i);
    const std::uint64_t key = g.owner_key.load(std::memory_order_relaxed);
    if (g.kind.load(std::memory_order_acquire) != static_cast<std::uint32_t>(shm::GateKind::kDurable) || key == shm::kSpillGateKey)
      continue;
    const std::uint64_t pos = g.position.load(std::memory_order_acquire);
    if (pos >= tail) continue;  // everything consumed
    const auto e = find_group_name(names, key);
    if (e && e->members > 0) continue;  // its consumers are alive: they move it
    const std::uint64_t held = tail - pos;
    const bool full = held + ring.max_record() > ring.capacity();
    const std::string who = describe_gate(names, g, shm::realtime_ns());
    const std::string name = e ? e->name : "GROUP";
    out.push_back({full ? "problem" : "warning", bus, file,
                   fmt::format("{} holds topic '{}' partition {} back: {} bytes ({}% of the ring) not consumed{}", who, topic, p,
                               held, held * 100 / ring.capacity(), full ? "; the ring is full: its producers are blocked" : ""),
                   fmt::format("start its consumers, or skip what it has not read (busctl group reset-offsets {} --topic {} "
                               "--to-latest --execute), or delete it (busctl group delete {})",
                               name, topic, name),
                   false});
  }
  return out;
}

}  // namespace shmbus
