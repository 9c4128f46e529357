// Fuzzes the spill log's readers: scan_segment (busctl log dump, recovery), LogReader
// (consumers), the header blocks of its records (HeaderIterator) and LogWriter::open's
// recovery, on a segment file made of the input. With the first byte odd, a valid file
// header is put in front so that the frames get explored.
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "bus/disk_log.h"
#include "shmbus/record.h"
#include "tools/busd/log_writer.h"

using namespace shmbus;
using namespace shmbus::disklog;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::string dir = "/tmp/shmbus_fuzz_disk_log_" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string path = segment_path(dir, 0, "log");
  {
    std::ofstream f(path, std::ios::binary);
    if (size > 0 && (data[0] & 1)) {
      FileHeader h{};
      std::memcpy(h.magic, kMagic, sizeof kMagic);
      h.major = kLogMajor;
      h.header_size = sizeof h;
      h.crc = crc32c(&h, offsetof(FileHeader, crc));
      f.write(reinterpret_cast<const char*>(&h), sizeof h);
      ++data;
      --size;
    }
    f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  std::uint64_t frames = 0;
  auto r = scan_segment(path, [&](const FrameView& v) {
    // Every frame handed out lies inside the file and adds up.
    if (v.payload.size() + kFrameHeaderSize != v.header.size) __builtin_trap();
    // A record's header block, as consumers iterate it: every header inside the block, a
    // null value (shm::kNullHeaderValue) with no bytes, never read as a length.
    if (!is_gap(v.header)) {
      const std::uint64_t klen = v.header.key_len == kNullKeyLen ? 0 : v.header.key_len;
      const Bytes block = v.payload.subspan(klen, v.header.headers_len);
      const auto* end = reinterpret_cast<const char*>(block.data() + block.size());
      for (HeaderIterator it(block); auto h = it.next();)
        if (h->key.data() + h->key.size() > end || reinterpret_cast<const char*>(h->value.data() + h->value.size()) > end ||
            (h->null_value && !h->value.empty()))
          __builtin_trap();
    }
    ++frames;
  });
  if (r && r->valid_bytes > r->file_size) __builtin_trap();
  LogReader reader(dir);
  std::uint64_t from = 0;
  for (int i = 0; i < 64; ++i) {
    auto next = reader.read(from, ~0ull, 1 << 16, [](const FrameView&) { return true; });
    if (!next || *next <= from) break;
    from = *next;
  }
  SpillConfig c;
  c.enabled = true;
  c.fsync = FsyncPolicy::kNever;
  auto w = LogWriter::open(dir, c, 0600, {});
  if (w && r && r->end == ScanEnd::kClean && r->last_offset && w->next_offset() != *r->last_offset + 1) __builtin_trap();
  return 0;
}
