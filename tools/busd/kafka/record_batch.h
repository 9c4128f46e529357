// Kafka's RecordBatch v2 (magic 2), the records a Produce carries and a Fetch returns.
//
//   off  field                 type    notes
//     0  base_offset           i64     the broker's first offset (patched, outside the CRC)
//     8  batch_length          i32     bytes after this field: the batch is 12 + batch_length
//    12  partition_leader_epoch i32    broker-set, outside the CRC
//    16  magic                 i8      2
//    17  crc                   u32     CRC-32C of bytes [21, end)
//    21  attributes            i16     bits 0-2 codec, 3 log-append time, 4 transactional, 5 control
//    23  last_offset_delta     i32
//    27  base_timestamp        i64     ms
//    35  max_timestamp         i64
//    43  producer_id           i64     -1 when not idempotent
//    51  producer_epoch        i16
//    53  base_sequence         i32
//    57  records_count         i32
//    61  records               ...     compressed as a whole when the codec is not 0
//
// A record: length varint (the bytes after it), attributes i8, timestamp_delta varlong,
// offset_delta varint, key_length varint (-1 null) + key, value_length varint (-1 null) +
// value, header_count varint, headers {key_length varint + key, value_length varint (-1 null)
// + value}. All varints zigzag. (KAFKA.md §2; Kafka's DefaultRecordBatch/DefaultRecord.)
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <tl/expected.hpp>

#include "tools/busd/kafka/compression.h"

namespace shmbus::kafka {

inline constexpr std::size_t kBatchHeaderSize = 61;
inline constexpr std::size_t kBatchCrcOffset = 17;
inline constexpr std::size_t kBatchCrcStart = 21;  // the CRC covers [21, end)

struct RecordHeader {
  std::string key;
  std::optional<std::string> value;  // null distinct from empty
  bool operator==(const RecordHeader&) const = default;
};

struct Record {
  std::int8_t attributes = 0;
  std::int64_t timestamp_delta = 0;
  std::int32_t offset_delta = 0;
  std::optional<std::string> key;    // null distinct from empty
  std::optional<std::string> value;  // null = a tombstone
  std::vector<RecordHeader> headers;
  bool operator==(const Record&) const = default;
};

struct RecordBatch {
  std::int64_t base_offset = 0;
  std::int32_t partition_leader_epoch = -1;
  std::int16_t attributes = 0;
  std::int32_t last_offset_delta = -1;
  std::int64_t base_timestamp = -1;
  std::int64_t max_timestamp = -1;
  std::int64_t producer_id = -1;
  std::int16_t producer_epoch = -1;
  std::int32_t base_sequence = -1;
  std::vector<Record> records;

  Compression compression() const { return static_cast<Compression>(attributes & 0x7); }
  bool is_control() const { return (attributes & 0x20) != 0; }
  bool operator==(const RecordBatch&) const = default;
};

struct BatchLimits {
  // Largest decompressed record data of one batch.
  std::size_t max_decompressed = 64u << 20;
};

// Decodes the concatenated batches of a Produce partition's `records`: each batch's CRC is
// checked, its records decompressed and parsed. Errors name the batch and field.
tl::expected<std::vector<RecordBatch>, std::string> decode_record_batches(std::span<const std::uint8_t> in,
                                                                          const BatchLimits& limits = {});
// Encodes one batch with its codec's compression (none for a Fetch response is what the
// gateway sends), the batch_length and the CRC filled in. last_offset_delta, records_count
// come from the records.
std::string encode_record_batch(const RecordBatch& b);

// CRC-32C (Castagnoli) as Kafka's batches use it; bus/disk_log's SSE4.2 or table path.
std::uint32_t kafka_crc32c(std::span<const std::uint8_t> data);

}  // namespace shmbus::kafka
