// busctl doctor: what is wrong with the buses on this machine, and (with fix) mending it.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "bus/busd_layout.h"
#include "shm/ring.h"

namespace shmbus {

struct Finding {
  std::string severity;  // "ok", "warning", "problem"
  std::string bus;
  std::string file;
  std::string problem;
  std::string fix;       // what --fix does (or did)
  bool fixed = false;
};

// Looks at /dev/shm (every bus, or only `bus`): stale temporary segments of dead creators,
// partition segments no topic owns, half-created or half-deleted topics, foreign or corrupt
// segments, dead producers' writer slots and dead consumers' gates, busd leftovers, and the
// room left in /dev/shm. With `fix`, removes or repairs what can be, saying what it did.
std::vector<Finding> run_doctor(const std::optional<std::string>& bus, bool fix);

// One partition's groups with no live member (by busd's name table `names`, may be nullptr)
// whose committed offsets hold its producers back (doctor_groups.cpp). `file`: for the finding.
std::vector<Finding> group_gate_findings(const std::string& bus, const std::string& topic, std::uint32_t p,
                                         const std::string& file, const shm::Ring& ring, const GroupNameSlot* names);

}  // namespace shmbus
