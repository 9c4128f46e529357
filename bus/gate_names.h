// Who a durable gate is: busd's group name table (bus/busd_layout.h, GroupNameSlot) written
// by busd and read by producers held back in a block topic and by busctl doctor.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "bus/busd_layout.h"
#include "shm/ring.h"

namespace shmbus {

// The owner key of a group's durable gates (GateSlot::owner_key).
std::uint64_t group_gate_key(const std::string& group);

struct GroupNameEntry {
  std::string name;
  std::uint32_t members = 0;
  std::int64_t empty_since_ns = 0;  // CLOCK_REALTIME; meaningful when members == 0
  std::vector<std::int32_t> pids;   // some of its members
};

// busd's side (it is the only writer). False when every slot is taken.
bool publish_group_name(GroupNameSlot* table, const GroupNameEntry& e);
void clear_group_name(GroupNameSlot* table, const std::string& name);

// Readers: the entry with gate key `key`, if busd published one. `table` must come from a
// segment of at least kBusdSegmentSize bytes (a minor-0 busd segment has no table).
std::optional<GroupNameEntry> find_group_name(const GroupNameSlot* table, std::uint64_t key);

// One gate, said for people: "group 'billing' (no live member for 75 s)", "a consumer (pid
// 1234)", "a consumer (pid 1234) of group 'billing' (1 live member: pid 1234)" (a member's
// own gate carries its group's key), "busd's spiller". `table` may be nullptr (no busd segment).
std::string describe_gate(const GroupNameSlot* table, const shm::GateSlot& g, std::int64_t now_realtime_ns);

// Who holds a block partition's producers back: every gate at the lowest position, said as
// above, reading the bus's busd segment for the groups' names.
std::string gate_holders(const std::string& bus, const shm::Ring& ring);

}  // namespace shmbus
