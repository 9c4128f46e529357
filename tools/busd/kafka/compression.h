// The compression codecs of Kafka record batches (attributes bits 0-2), through Debian's
// zlib, libsnappy, liblz4 and libzstd: gzip, snappy (raw as librdkafka sends it, or in the
// xerial framing kafka-python uses), lz4 (the frame format) and zstd.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include <tl/expected.hpp>

namespace shmbus::kafka {

enum class Compression : std::uint8_t { kNone = 0, kGzip = 1, kSnappy = 2, kLz4 = 3, kZstd = 4 };
const char* compression_name(Compression c);

// Decompresses `in`; an output of more than `max_out` bytes is an error (a small input must
// not expand into gigabytes), as is anything the library rejects.
tl::expected<std::string, std::string> decompress(Compression c, std::span<const std::uint8_t> in,
                                                  std::size_t max_out);
// Compresses `in` (snappy: raw; `xerial` selects kafka-python's framing instead).
tl::expected<std::string, std::string> compress(Compression c, std::span<const std::uint8_t> in,
                                                bool xerial = false);

}  // namespace shmbus::kafka
