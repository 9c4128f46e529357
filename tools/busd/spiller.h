// busd's spiller: tails the ring of every partition of spilled topics and appends its
// records to the partition's disk log (bus/disk_log.h). Two threads: a tailer that frames
// the rings' records (CRC32C; block topics from the ring, overwrite topics from a copy checked
// for laps), and a writer that appends, fsyncs as
// the topic asks, enforces retention and then moves the spill position on: the spiller's
// durable gate in `block` topics, and the partition's published disk range. Buffers go
// from tailer to writer and back through moodycamel queues. docs/spill.md.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "shmbus/bus.h"

namespace shmbus {

class Spiller {
 public:
  // on_durable (optional): called from the spiller's threads each time a partition's
  // durable offset moved or its spilling stopped on an error (busd's DurableBell).
  Spiller(std::shared_ptr<Bus> bus, std::string state_dir, unsigned file_mode, std::function<void(const std::string&)> log,
          std::function<void()> on_durable = {});
  ~Spiller();
  Spiller(const Spiller&) = delete;
  Spiller& operator=(const Spiller&) = delete;

  void start();
  // Writes out what the tailer has read, syncs every log, joins the threads.
  void stop();

  // What the spiller did to each partition since start (busd's metrics). Any thread.
  struct PartitionStats {
    std::string topic;
    std::uint32_t partition = 0;
    std::uint64_t bytes_written = 0;  // frames appended to the log
    std::uint64_t fsyncs = 0;
    std::uint64_t errors = 0;         // a log that could not be opened, written or synced
  };
  std::vector<PartitionStats> stats() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace shmbus
