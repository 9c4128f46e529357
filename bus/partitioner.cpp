#include "bus/partitioner.h"

#include <cstring>

namespace shmbus {

std::uint32_t murmur2(std::span<const std::byte> key) noexcept {
  // Kafka's Utils.murmur2: the length is an int, the tail is mixed byte by byte.
  constexpr std::uint32_t m = 0x5bd1e995u;
  constexpr int r = 24;
  const auto* data = reinterpret_cast<const unsigned char*>(key.data());
  const auto length = static_cast<std::uint32_t>(key.size());
  std::uint32_t h = 0x9747b28cu ^ length;
  const std::uint32_t blocks = length / 4;
  for (std::uint32_t i = 0; i < blocks; ++i) {
    std::uint32_t k;
    std::memcpy(&k, data + i * 4, 4);  // little-endian, as Kafka assembles it
    k *= m;
    k ^= k >> r;
    k *= m;
    h *= m;
    h ^= k;
  }
  const unsigned char* tail = data + blocks * 4;
  switch (length % 4) {
    case 3:
      h ^= static_cast<std::uint32_t>(tail[2]) << 16;
      [[fallthrough]];
    case 2:
      h ^= static_cast<std::uint32_t>(tail[1]) << 8;
      [[fallthrough]];
    case 1:
      h ^= tail[0];
      h *= m;
  }
  h ^= h >> 13;
  h *= m;
  h ^= h >> 15;
  return h;
}

}  // namespace shmbus
