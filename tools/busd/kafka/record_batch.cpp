// RecordBatch v2: decoding (CRC, decompression, records) and encoding, layout in the header.
#include "tools/busd/kafka/record_batch.h"

#include <cstdio>

#include "bus/disk_log.h"
#include "tools/busd/kafka/wire.h"

namespace shmbus::kafka {

namespace {

// The fewest bytes a record takes: length, attributes, timestamp and offset deltas, key and
// value lengths, header count, one byte each.
constexpr std::size_t kMinRecordSize = 7;

std::string hex32(std::uint32_t v) {
  char b[11];
  std::snprintf(b, sizeof b, "0x%08x", v);
  return b;
}

// The batch fields the CRC covers up to records_count, for the Reader and the Writer alike.
template <class Io, class B>
void batch_fields(Io& io, B& b) {
  io.i16(b.attributes, "attributes");
  io.i32(b.last_offset_delta, "last_offset_delta");
  io.i64(b.base_timestamp, "base_timestamp");
  io.i64(b.max_timestamp, "max_timestamp");
  io.i64(b.producer_id, "producer_id");
  io.i16(b.producer_epoch, "producer_epoch");
  io.i32(b.base_sequence, "base_sequence");
}

// A record's fields after its length prefix up to its headers.
template <class Io, class R>
void record_fields(Io& io, R& rec) {
  io.i8(rec.attributes, "attributes");
  io.varlong(rec.timestamp_delta, "timestamp_delta");
  io.varint(rec.offset_delta, "offset_delta");
  io.varbytes(rec.key, "key");
  io.varbytes(rec.value, "value");
}

void parse_records(Reader& r, std::int32_t count, std::vector<Record>& out) {
  if (count < 0) return r.fail("records_count", "negative count " + std::to_string(count));
  if (static_cast<std::size_t>(count) > r.remaining() / kMinRecordSize) {
    return r.fail("records_count", "count " + std::to_string(count) + " cannot fit in the " +
                                       std::to_string(r.remaining()) + " bytes of records");
  }
  out.reserve(static_cast<std::size_t>(count));
  for (std::int32_t i = 0; i < count && r.ok(); ++i) {
    std::int32_t len;
    r.varint(len, "record length");
    if (!r.ok()) return;
    if (len < 0) return r.fail("record length", "negative length " + std::to_string(len) + " of record " + std::to_string(i));
    auto body = r.raw(static_cast<std::size_t>(len), "record body");
    if (!r.ok()) return;
    Reader rr(body);
    auto& rec = out.emplace_back();
    record_fields(rr, rec);
    std::int32_t nh;
    rr.varint(nh, "header_count");
    if (rr.ok() && (nh < 0 || static_cast<std::size_t>(nh) > rr.remaining() / 2)) {
      rr.fail("header_count", "count " + std::to_string(nh) + " does not fit in the " + std::to_string(rr.remaining()) +
                                  " bytes left");
    }
    for (std::int32_t h = 0; h < nh && rr.ok(); ++h) {
      std::optional<std::string> key;
      auto& hdr = rec.headers.emplace_back();
      rr.varbytes(key, "header key");
      if (rr.ok() && !key) rr.fail("header key", "null");
      if (key) hdr.key = std::move(*key);
      rr.varbytes(hdr.value, "header value");
    }
    if (rr.ok() && rr.remaining() != 0) {
      rr.fail("record length", std::to_string(rr.remaining()) + " bytes after the last header");
    }
    if (!rr.ok()) return r.fail(("record " + std::to_string(i)).c_str(), rr.error());
  }
}

}  // namespace

std::uint32_t kafka_crc32c(std::span<const std::uint8_t> data) { return disklog::crc32c(data.data(), data.size()); }

tl::expected<std::vector<RecordBatch>, std::string> decode_record_batches(std::span<const std::uint8_t> in,
                                                                          const BatchLimits& limits) {
  std::vector<RecordBatch> batches;
  std::size_t pos = 0;
  while (pos < in.size()) {
    auto fail = [&](const std::string& what) {
      return tl::unexpected("record batch " + std::to_string(batches.size()) + " (at byte " + std::to_string(pos) +
                            "): " + what);
    };
    Reader r(in.subspan(pos));
    RecordBatch b;
    std::int32_t batch_length;
    r.i64(b.base_offset, "base_offset");
    r.i32(batch_length, "batch_length");
    if (!r.ok()) return fail(r.error());
    if (batch_length < static_cast<std::int32_t>(kBatchHeaderSize - 12)) {
      return fail("batch_length " + std::to_string(batch_length) + " is shorter than a batch header");
    }
    if (static_cast<std::size_t>(batch_length) > r.remaining()) {
      return fail("batch_length " + std::to_string(batch_length) + " exceeds the " + std::to_string(r.remaining()) +
                  " bytes left");
    }
    auto whole = in.subspan(pos, 12 + static_cast<std::size_t>(batch_length));
    std::int8_t magic;
    std::uint32_t crc;
    std::int32_t count;
    r.i32(b.partition_leader_epoch, "partition_leader_epoch");
    r.i8(magic, "magic");
    if (magic != 2) return fail("magic " + std::to_string(magic) + " is not supported (only RecordBatch v2)");
    r.u32(crc, "crc");
    auto actual = kafka_crc32c(whole.subspan(kBatchCrcStart));
    if (crc != actual) return fail("crc " + hex32(crc) + " does not match the batch's CRC-32C " + hex32(actual));
    batch_fields(r, b);
    r.i32(count, "records_count");
    if (!r.ok()) return fail(r.error());
    auto payload = whole.subspan(kBatchHeaderSize);
    auto codec = b.compression();
    if (static_cast<int>(codec) > 4) return fail("attributes: unknown compression codec " + std::to_string(static_cast<int>(codec)));
    std::string plain;
    if (codec != Compression::kNone) {
      auto d = decompress(codec, payload, limits.max_decompressed);
      if (!d) return fail("records: " + d.error());
      plain = std::move(*d);
      payload = std::span(reinterpret_cast<const std::uint8_t*>(plain.data()), plain.size());
    } else if (payload.size() > limits.max_decompressed) {
      return fail("records: " + std::to_string(payload.size()) + " bytes exceed the limit of " +
                  std::to_string(limits.max_decompressed));
    }
    Reader rr(payload);
    parse_records(rr, count, b.records);
    if (rr.ok() && rr.remaining() != 0) rr.fail("records", std::to_string(rr.remaining()) + " bytes after the last record");
    if (!rr.ok()) return fail(rr.error());
    batches.push_back(std::move(b));
    pos += whole.size();
  }
  return batches;
}

std::string encode_record_batch(const RecordBatch& b) {
  std::string records;
  Writer rw(records);
  for (const auto& rec : b.records) {
    std::string body;
    Writer w(body);
    record_fields(w, rec);
    w.varint(static_cast<std::int32_t>(rec.headers.size()), "header_count");
    for (const auto& h : rec.headers) {
      w.varbytes(h.key, "header key");
      w.varbytes(h.value, "header value");
    }
    rw.varint(static_cast<std::int32_t>(body.size()), "length");
    records += body;
  }
  if (b.compression() != Compression::kNone) {
    auto c = compress(b.compression(), std::span(reinterpret_cast<const std::uint8_t*>(records.data()), records.size()));
    if (c) records = std::move(*c);
  }
  std::string out;
  Writer w(out);
  w.i64(b.base_offset, "base_offset");
  w.i32(static_cast<std::int32_t>(kBatchHeaderSize - 12 + records.size()), "batch_length");
  w.i32(b.partition_leader_epoch, "partition_leader_epoch");
  w.i8(2, "magic");
  w.u32(0, "crc");
  batch_fields(w, b);
  w.i32(static_cast<std::int32_t>(b.records.size()), "records_count");
  out += records;
  auto crc = kafka_crc32c(std::span(reinterpret_cast<const std::uint8_t*>(out.data()) + kBatchCrcStart,
                                    out.size() - kBatchCrcStart));
  for (int i = 0; i < 4; ++i) out[kBatchCrcOffset + i] = static_cast<char>(crc >> (8 * (3 - i)));
  return out;
}

}  // namespace shmbus::kafka
