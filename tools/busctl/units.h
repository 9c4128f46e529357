// Sizes as operators type them: plain bytes or with a unit (64KiB, 1MiB, 2GB).
#pragma once

#include <cstdint>
#include <string_view>

#include "shmbus/error.h"

namespace shmbus {

// Accepts B, KB/KiB/K, MB/MiB/M, GB/GiB/G (K, M, G and the *iB units are powers of 1024;
// KB, MB, GB are powers of 1000). Refuses negatives, fractions, overflow and unknown units.
Result<std::uint64_t> parse_size(std::string_view text);
Result<std::uint64_t> parse_count(std::string_view what, std::string_view text);

}  // namespace shmbus
