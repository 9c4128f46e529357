// busd's group name table: publishing (busd), lookups by gate key (producers, busctl doctor).
#include "bus/gate_names.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>

#include <fmt/format.h>

#include "bus/group_client.h"
#include "shm/process.h"
#include "shm/segment.h"

namespace shmbus {

std::uint64_t group_gate_key(const std::string& group) { return std::hash<std::string>{}(group); }

namespace {

GroupNameSlot* slot_for(GroupNameSlot* table, std::uint64_t key, bool take_free) {
  GroupNameSlot* free_slot = nullptr;
  for (std::uint32_t i = 0; i < kGroupNameSlots; ++i) {
    const std::uint64_t k = table[i].key.load(std::memory_order_relaxed);
    if (k == key) return &table[i];
    if (k == 0 && !free_slot) free_slot = &table[i];
  }
  return take_free ? free_slot : nullptr;
}

// Copies a slot under its seqlock; nullopt when it changed meanwhile (or is free).
std::optional<GroupNameEntry> read_slot(const GroupNameSlot& s, std::uint64_t key) {
  for (int attempt = 0; attempt < 16; ++attempt) {
    const std::uint32_t before = s.seq.load(std::memory_order_acquire);
    if (before & 1) continue;
    GroupNameEntry e;
    const std::uint64_t k = s.key.load(std::memory_order_relaxed);
    e.members = s.members.load(std::memory_order_relaxed);
    e.empty_since_ns = s.empty_since_ns.load(std::memory_order_relaxed);
    for (const auto& p : s.pids)
      if (const std::int32_t pid = p.load(std::memory_order_relaxed); pid > 0) e.pids.push_back(pid);
    const std::uint32_t len = std::min<std::uint32_t>(s.name_len.load(std::memory_order_relaxed), sizeof s.name);
    char buf[sizeof s.name];
    shm::racy_copy(buf, s.name, len);
    shm::seqlock_read_fence();
    if (s.seq.load(std::memory_order_relaxed) != before) continue;
    if (k != key) return std::nullopt;
    e.name.assign(buf, len);
    return e;
  }
  return std::nullopt;
}

}  // namespace

bool publish_group_name(GroupNameSlot* table, const GroupNameEntry& e) {
  const std::uint64_t key = group_gate_key(e.name);
  GroupNameSlot* s = slot_for(table, key, true);
  if (!s) return false;
  const std::uint32_t seq = s->seq.load(std::memory_order_relaxed);
  s->seq.store(seq + 1, std::memory_order_relaxed);
  shm::seqlock_write_fence();  // SYNC POINT: the odd seq before the bytes
  s->key.store(key, std::memory_order_relaxed);
  s->members.store(e.members, std::memory_order_relaxed);
  s->empty_since_ns.store(e.empty_since_ns, std::memory_order_relaxed);
  for (std::uint32_t i = 0; i < kGroupNamePids; ++i) s->pids[i].store(i < e.pids.size() ? e.pids[i] : 0, std::memory_order_relaxed);
  const std::size_t len = std::min(e.name.size(), sizeof s->name);
  std::memcpy(s->name, e.name.data(), len);
  s->name_len.store(static_cast<std::uint32_t>(len), std::memory_order_relaxed);
  s->seq.store(seq + 2, std::memory_order_release);  // SYNC POINT: pairs with the reader's acquire
  return true;
}

void clear_group_name(GroupNameSlot* table, const std::string& name) {
  GroupNameSlot* s = slot_for(table, group_gate_key(name), false);
  if (!s) return;
  const std::uint32_t seq = s->seq.load(std::memory_order_relaxed);
  s->seq.store(seq + 1, std::memory_order_relaxed);
  shm::seqlock_write_fence();
  s->key.store(0, std::memory_order_relaxed);
  s->name_len.store(0, std::memory_order_relaxed);
  s->seq.store(seq + 2, std::memory_order_release);
}

std::optional<GroupNameEntry> find_group_name(const GroupNameSlot* table, std::uint64_t key) {
  if (!table || key == 0) return std::nullopt;
  for (std::uint32_t i = 0; i < kGroupNameSlots; ++i)
    if (table[i].key.load(std::memory_order_relaxed) == key) return read_slot(table[i], key);
  return std::nullopt;
}

namespace {

// "group 'billing' (no live member for 75 s: ...)", "group 'billing' (2 live members: pid 7, 9; ...)".
std::string describe_group(const GroupNameEntry& e, std::int64_t now_ns) {
  if (e.members == 0)
    return fmt::format("group '{}' (no live member for {} s: busctl group describe {})", e.name,
                       now_ns > e.empty_since_ns ? (now_ns - e.empty_since_ns) / 1'000'000'000 : 0, e.name);
  std::string pids;
  for (auto p : e.pids) pids += fmt::format("{}{}", pids.empty() ? "" : ", ", p);
  return fmt::format("group '{}' ({} live member{}: pid {}{}; busctl group describe {})", e.name, e.members,
                     e.members == 1 ? "" : "s", pids, e.members > e.pids.size() ? ", ..." : "", e.name);
}

}  // namespace

std::string describe_gate(const GroupNameSlot* table, const shm::GateSlot& g, std::int64_t now_ns) {
  const auto kind = static_cast<shm::GateKind>(g.kind.load(std::memory_order_acquire));
  const std::uint64_t key = g.owner_key.load(std::memory_order_relaxed);
  if (kind == shm::GateKind::kProcess) {
    // A group member's gate carries its group's key: named when busd published it.
    const std::string consumer = fmt::format("a consumer (pid {})", g.owner_pid.load(std::memory_order_relaxed));
    const auto e = key ? find_group_name(table, key) : std::nullopt;
    return e ? fmt::format("{} of {}", consumer, describe_group(*e, now_ns)) : consumer;
  }
  if (key == shm::kSpillGateKey) return "busd's spiller (is busd running? busctl status)";
  auto e = find_group_name(table, key);
  if (!e) return fmt::format("a consumer group whose name busd has not published (gate key {:#x}; is busd running?)", key);
  return describe_group(*e, now_ns);
}

std::string gate_holders(const std::string& bus, const shm::Ring& ring) {
  auto seg = shm::Segment::open(busd_segment_name(bus), shm::SegmentKind::kBusd, kBusdLayoutMajor, false);
  const GroupNameSlot* table =
      seg && seg->size() >= kBusdSegmentSize ? seg->at<const GroupNameSlot>(kGroupNamesOffset) : nullptr;
  std::uint64_t lowest = ~0ull;
  for (std::uint32_t i = 0; i < shm::kGateSlots; ++i)
    if (ring.gate(i)->kind.load(std::memory_order_acquire) != static_cast<std::uint32_t>(shm::GateKind::kFree))
      lowest = std::min(lowest, ring.gate(i)->position.load(std::memory_order_acquire));
  std::string out;
  for (std::uint32_t i = 0; i < shm::kGateSlots; ++i) {
    const shm::GateSlot& g = *ring.gate(i);
    if (g.kind.load(std::memory_order_acquire) == static_cast<std::uint32_t>(shm::GateKind::kFree) ||
        g.position.load(std::memory_order_acquire) != lowest)
      continue;
    out += (out.empty() ? "" : "; ") + describe_gate(table, g, shm::realtime_ns());
  }
  return out;
}

}  // namespace shmbus
