// Fuzzes the Kafka gateway's request decoder: the input is a byte stream as a client sends it
// (size-prefixed frames). Every frame that decodes re-encodes to the same bytes and decodes to
// the same request; Produce record batches are decoded too (CRC, decompression, records).
#include <cstdint>
#include <span>
#include <string>

#include "tests/fuzz/kafka_frames.h"
#include "tools/busd/kafka/messages.h"
#include "tools/busd/kafka/record_batch.h"

using namespace shmbus::kafka;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  for_each_frame(std::span<const std::uint8_t>(data, size), [](std::span<const std::uint8_t> frame, int) {
    auto req = decode_request(frame);
    if (!req) {
      if (req.error().message.empty()) __builtin_trap();  // every error says what was wrong
      return;
    }
    auto again = encode_request(req->header, req->body);
    auto back = decode_request(std::span(reinterpret_cast<const std::uint8_t*>(again.data()) + 4, again.size() - 4));
    if (!back || encode_request(back->header, back->body) != again) __builtin_trap();
    if (auto* p = std::get_if<ProduceRequest>(&req->body)) {
      for (const auto& t : p->topics)
        for (const auto& part : t.partitions)
          if (part.records) {
            BatchLimits limits{.max_decompressed = 4u << 20};
            (void)decode_record_batches(
                std::span(reinterpret_cast<const std::uint8_t*>(part.records->data()), part.records->size()), limits);
          }
    }
  });
  return 0;
}
