// A topic as mapped by one process: its partition segments and rings.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "shmbus/bus.h"
#include "shm/ring.h"
#include "shm/segment.h"

namespace shmbus {

class Topic {
 public:
  Topic(std::string name, TopicConfig config, std::uint64_t epoch) : name_(std::move(name)), config_(config), epoch_(epoch) {}

  const std::string& name() const noexcept { return name_; }
  const TopicConfig& config() const noexcept { return config_; }
  std::uint64_t epoch() const noexcept { return epoch_; }
  std::uint32_t partitions() const noexcept { return static_cast<std::uint32_t>(rings_.size()); }
  const shm::Ring& ring(std::uint32_t p) const noexcept { return rings_[p]; }
  const shm::Segment& segment(std::uint32_t p) const noexcept { return segments_[p]; }
  bool deleted() const noexcept { return !rings_.empty() && rings_[0].closed(); }

  void add(shm::Segment seg) {
    rings_.emplace_back(seg.data());
    segments_.push_back(std::move(seg));
  }

 private:
  std::string name_;
  TopicConfig config_;
  std::uint64_t epoch_;
  std::vector<shm::Segment> segments_;
  std::vector<shm::Ring> rings_;
};

}  // namespace shmbus
