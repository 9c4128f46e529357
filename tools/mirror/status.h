// How a running mirror tells `busctl mirror status` what it does: one small JSON file per
// mirror in the bus's state dir (<state dir>/mirrors/<name>.json), written atomically
// (temporary file, then rename) and owner-only by the mirror process every status interval.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "shmbus/error.h"

namespace shmbus::mirror {

struct MirrorStatus {
  std::string name;
  std::string direction;   // out | in
  std::string bus_topic, kafka_topic;
  // starting | running | retrying (a session failed; starting again after a pause) |
  // stopped (on a record error with on_record_error=stop, or shut down) ; readers add
  // "stale" when the file was not refreshed in time (the process is gone or hung).
  std::string state = "starting";
  std::int64_t pid = 0;
  std::int64_t updated_ms = 0;       // wall clock
  std::int64_t interval_ms = 1000;   // how often the file is written
  std::uint64_t records = 0;         // mirrored (delivered to Kafka / in the bus) since start
  double records_per_s = 0;          // over the last interval
  std::int64_t lag_records = -1;     // -1: not known yet
  double lag_seconds = 0;
  std::uint64_t skipped = 0;         // records refused by the far side and skipped (on_record_error=skip)
  std::uint64_t lost = 0;            // out, overwrite topics: overwritten before the mirror read them
  std::string last_error;
  std::int64_t last_error_ms = 0;
};

nlohmann::json to_json(const MirrorStatus& s);
MirrorStatus status_from_json(const nlohmann::json& j);

std::string status_dir(const std::string& bus);
// Writes <status_dir>/<name>.json (0600, atomically).
Status write_status(const std::string& bus, const MirrorStatus& s);
// Every mirror's status file of the bus, by name; a file that is not refreshed within
// three intervals (at least 5 s) is reported with state "stale" unless it said stopped.
Result<std::vector<MirrorStatus>> read_statuses(const std::string& bus);

}  // namespace shmbus::mirror
