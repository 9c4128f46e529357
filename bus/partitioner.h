// Kafka's default partitioner, so that a key lands in the same partition here as in Kafka's
// Java client and kafka-python: (murmur2(key) & 0x7fffffff) % partitions.
#pragma once

#include <cstdint>
#include <span>

namespace shmbus {

// Kafka's murmur2 (seed 0x9747b28c), byte for byte.
std::uint32_t murmur2(std::span<const std::byte> key) noexcept;

inline std::uint32_t partition_for_key(std::span<const std::byte> key, std::uint32_t partitions) noexcept {
  return (murmur2(key) & 0x7fffffffu) % partitions;
}

}  // namespace shmbus
