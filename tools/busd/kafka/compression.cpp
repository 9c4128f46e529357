// Kafka's batch compression codecs over Debian's libraries, each decoder streaming into a
// growing buffer that stops at the caller's limit.
#include "tools/busd/kafka/compression.h"

#include <cstring>
#include <memory>

#include <lz4frame.h>
#include <snappy-c.h>
#include <zlib.h>
#include <zstd.h>

namespace shmbus::kafka {

namespace {

using Out = tl::expected<std::string, std::string>;

constexpr std::size_t kChunk = 64 * 1024;
// kafka-python's xerial snappy framing (java snappy's SnappyOutputStream): a 16-byte header,
// then blocks of a big-endian int32 length and a raw snappy block.
constexpr unsigned char kXerialMagic[8] = {0x82, 'S', 'N', 'A', 'P', 'P', 'Y', 0};

std::string too_big(Compression c, std::size_t max_out) {
  return std::string(compression_name(c)) + ": decompressed size exceeds the limit of " + std::to_string(max_out) +
         " bytes";
}

Out gunzip(std::span<const std::uint8_t> in, std::size_t max_out) {
  z_stream z{};
  if (inflateInit2(&z, 15 + 32) != Z_OK) return tl::unexpected(std::string("gzip: inflateInit2 failed"));
  std::unique_ptr<z_stream, int (*)(z_stream*)> guard(&z, inflateEnd);
  z.next_in = const_cast<Bytef*>(in.data());
  z.avail_in = static_cast<uInt>(in.size());
  std::string out;
  for (;;) {
    std::size_t have = out.size();
    if (have >= max_out + 1) return tl::unexpected(too_big(Compression::kGzip, max_out));
    out.resize(have + kChunk);
    z.next_out = reinterpret_cast<Bytef*>(out.data() + have);
    z.avail_out = kChunk;
    int rc = inflate(&z, Z_NO_FLUSH);
    out.resize(have + kChunk - z.avail_out);
    if (out.size() > max_out) return tl::unexpected(too_big(Compression::kGzip, max_out));
    if (rc == Z_STREAM_END) {
      if (z.avail_in == 0) return out;
      if (inflateReset(&z) != Z_OK) return tl::unexpected(std::string("gzip: inflateReset failed"));
      continue;  // a further gzip member
    }
    if (rc != Z_OK) return tl::unexpected("gzip: corrupt input (" + std::string(z.msg ? z.msg : "inflate error") + ")");
    if (z.avail_in == 0 && z.avail_out != 0) return tl::unexpected(std::string("gzip: truncated input"));
  }
}

tl::expected<void, std::string> snappy_block(const char* p, std::size_t n, std::string& out, std::size_t max_out) {
  std::size_t len = 0;
  if (snappy_uncompressed_length(p, n, &len) != SNAPPY_OK) return tl::unexpected(std::string("snappy: corrupt input"));
  if (len > max_out - out.size()) return tl::unexpected(too_big(Compression::kSnappy, max_out));
  std::size_t have = out.size();
  out.resize(have + len);
  if (snappy_uncompress(p, n, out.data() + have, &len) != SNAPPY_OK) {
    return tl::unexpected(std::string("snappy: corrupt input"));
  }
  out.resize(have + len);
  return {};
}

Out unsnappy(std::span<const std::uint8_t> in, std::size_t max_out) {
  std::string out;
  const char* p = reinterpret_cast<const char*>(in.data());
  if (in.size() >= 16 && std::memcmp(in.data(), kXerialMagic, sizeof kXerialMagic) == 0) {
    std::size_t pos = 16;
    while (pos < in.size()) {
      if (in.size() - pos < 4) return tl::unexpected(std::string("snappy (xerial): truncated block length"));
      std::uint32_t n = (std::uint32_t{in[pos]} << 24) | (std::uint32_t{in[pos + 1]} << 16) |
                        (std::uint32_t{in[pos + 2]} << 8) | in[pos + 3];
      pos += 4;
      if (n > in.size() - pos) {
        return tl::unexpected("snappy (xerial): block of " + std::to_string(n) + " bytes exceeds the " +
                              std::to_string(in.size() - pos) + " left");
      }
      if (auto ok = snappy_block(p + pos, n, out, max_out); !ok) return tl::unexpected(ok.error());
      pos += n;
    }
    return out;
  }
  if (auto ok = snappy_block(p, in.size(), out, max_out); !ok) return tl::unexpected(ok.error());
  return out;
}

Out unlz4(std::span<const std::uint8_t> in, std::size_t max_out) {
  LZ4F_dctx* ctx = nullptr;
  if (LZ4F_isError(LZ4F_createDecompressionContext(&ctx, LZ4F_VERSION))) {
    return tl::unexpected(std::string("lz4: cannot create a context"));
  }
  std::unique_ptr<LZ4F_dctx, decltype(&LZ4F_freeDecompressionContext)> guard(ctx, LZ4F_freeDecompressionContext);
  std::string out;
  std::size_t pos = 0;
  std::size_t hint = 1;
  while (pos < in.size()) {
    std::size_t have = out.size();
    if (have > max_out) return tl::unexpected(too_big(Compression::kLz4, max_out));
    out.resize(have + kChunk);
    std::size_t dst = kChunk, src = in.size() - pos;
    hint = LZ4F_decompress(ctx, out.data() + have, &dst, in.data() + pos, &src, nullptr);
    if (LZ4F_isError(hint)) return tl::unexpected("lz4: corrupt input (" + std::string(LZ4F_getErrorName(hint)) + ")");
    out.resize(have + dst);
    pos += src;
    if (out.size() > max_out) return tl::unexpected(too_big(Compression::kLz4, max_out));
    if (hint == 0 && pos < in.size()) LZ4F_resetDecompressionContext(ctx);  // a further frame
  }
  if (hint != 0) return tl::unexpected(std::string("lz4: truncated frame"));
  return out;
}

Out unzstd(std::span<const std::uint8_t> in, std::size_t max_out) {
  std::unique_ptr<ZSTD_DStream, decltype(&ZSTD_freeDStream)> ds(ZSTD_createDStream(), ZSTD_freeDStream);
  if (!ds) return tl::unexpected(std::string("zstd: cannot create a stream"));
  ZSTD_inBuffer src{in.data(), in.size(), 0};
  std::string out;
  std::size_t last = 1;
  while (src.pos < src.size || last != 0) {
    std::size_t have = out.size();
    if (have > max_out) return tl::unexpected(too_big(Compression::kZstd, max_out));
    out.resize(have + kChunk);
    ZSTD_outBuffer dst{out.data() + have, kChunk, 0};
    std::size_t before = src.pos;
    last = ZSTD_decompressStream(ds.get(), &dst, &src);
    if (ZSTD_isError(last)) return tl::unexpected("zstd: corrupt input (" + std::string(ZSTD_getErrorName(last)) + ")");
    out.resize(have + dst.pos);
    if (out.size() > max_out) return tl::unexpected(too_big(Compression::kZstd, max_out));
    if (last != 0 && src.pos == src.size && before == src.pos && dst.pos == 0) {
      return tl::unexpected(std::string("zstd: truncated frame"));
    }
  }
  return out;
}

}  // namespace

const char* compression_name(Compression c) {
  switch (c) {
    case Compression::kNone: return "none";
    case Compression::kGzip: return "gzip";
    case Compression::kSnappy: return "snappy";
    case Compression::kLz4: return "lz4";
    case Compression::kZstd: return "zstd";
  }
  return "unknown";
}

tl::expected<std::string, std::string> decompress(Compression c, std::span<const std::uint8_t> in,
                                                  std::size_t max_out) {
  switch (c) {
    case Compression::kNone:
      if (in.size() > max_out) return tl::unexpected(too_big(c, max_out));
      return std::string(reinterpret_cast<const char*>(in.data()), in.size());
    case Compression::kGzip: return gunzip(in, max_out);
    case Compression::kSnappy: return unsnappy(in, max_out);
    case Compression::kLz4: return unlz4(in, max_out);
    case Compression::kZstd: return unzstd(in, max_out);
  }
  return tl::unexpected("unknown compression codec " + std::to_string(static_cast<int>(c)));
}

tl::expected<std::string, std::string> compress(Compression c, std::span<const std::uint8_t> in, bool xerial) {
  const char* src = reinterpret_cast<const char*>(in.data());
  std::string out;
  switch (c) {
    case Compression::kNone: return std::string(src, in.size());
    case Compression::kGzip: {
      z_stream z{};
      if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        return tl::unexpected(std::string("gzip: deflateInit2 failed"));
      }
      out.resize(deflateBound(&z, in.size()) + 32);
      z.next_in = const_cast<Bytef*>(in.data());
      z.avail_in = static_cast<uInt>(in.size());
      z.next_out = reinterpret_cast<Bytef*>(out.data());
      z.avail_out = static_cast<uInt>(out.size());
      int rc = deflate(&z, Z_FINISH);
      out.resize(z.total_out);
      deflateEnd(&z);
      if (rc != Z_STREAM_END) return tl::unexpected(std::string("gzip: deflate failed"));
      return out;
    }
    case Compression::kSnappy: {
      auto block = [&](const char* p, std::size_t n) {
        std::string b(snappy_max_compressed_length(n), '\0');
        std::size_t len = b.size();
        snappy_compress(p, n, b.data(), &len);
        b.resize(len);
        return b;
      };
      if (!xerial) return block(src, in.size());
      out.assign(reinterpret_cast<const char*>(kXerialMagic), sizeof kXerialMagic);
      out.append("\0\0\0\1\0\0\0\1", 8);  // version 1, compatible version 1
      for (std::size_t pos = 0; pos < in.size(); pos += 32 * 1024) {
        auto b = block(src + pos, std::min<std::size_t>(32 * 1024, in.size() - pos));
        auto n = static_cast<std::uint32_t>(b.size());
        for (int i = 3; i >= 0; --i) out.push_back(static_cast<char>(n >> (8 * i)));
        out += b;
      }
      return out;
    }
    case Compression::kLz4: {
      out.resize(LZ4F_compressFrameBound(in.size(), nullptr));
      auto n = LZ4F_compressFrame(out.data(), out.size(), src, in.size(), nullptr);
      if (LZ4F_isError(n)) return tl::unexpected(std::string("lz4: ") + LZ4F_getErrorName(n));
      out.resize(n);
      return out;
    }
    case Compression::kZstd: {
      out.resize(ZSTD_compressBound(in.size()));
      auto n = ZSTD_compress(out.data(), out.size(), src, in.size(), 3);
      if (ZSTD_isError(n)) return tl::unexpected(std::string("zstd: ") + ZSTD_getErrorName(n));
      out.resize(n);
      return out;
    }
  }
  return tl::unexpected("unknown compression codec " + std::to_string(static_cast<int>(c)));
}

}  // namespace shmbus::kafka
