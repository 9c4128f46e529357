// busctl top: what a bus is doing, from two looks some time apart. Topics and partitions
// come from shared memory (no daemon needed); groups and busd's health from busd, if it runs
// (top never starts it).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "shmbus/bus.h"

namespace shmbus {

const char* retention_name(RetentionMode r);
const char* fsync_name(FsyncPolicy f);
const char* spill_state_name(std::uint32_t s);
// A topic as busctl prints it with --json (docs/busctl.md, "JSON output").
nlohmann::json topic_json(const TopicInfo& t);

struct TopSample {
  std::uint64_t mono_ns = 0;
  nlohmann::json topics = nlohmann::json::array();  // topic_json() of each topic
  nlohmann::json busd;                              // status reply, or {"running": false}
  nlohmann::json groups = nlohmann::json::array();  // group_describe replies
};

TopSample top_sample(Bus& bus);

// One frame: the later sample with rates (records/s) computed against the earlier one.
// Fields: docs/busctl.md.
nlohmann::json top_frame(const TopSample& before, const TopSample& after);

// The frame as a terminal table.
std::string top_render(const nlohmann::json& frame);

}  // namespace shmbus
