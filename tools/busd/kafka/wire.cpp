// The out-of-line parts of the Kafka primitives: varints, lengths, arrays, tagged fields and
// the error text that names the field.
#include "tools/busd/kafka/wire.h"

#include <algorithm>
#include <limits>

namespace shmbus::kafka {

void put_uvarint(std::string& out, std::uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

void Reader::fail(const char* field, const std::string& what) {
  if (!ok()) return;
  std::string path;
  for (const auto& [name, index] : path_) {
    path += name;
    path += '[' + std::to_string(index) + "].";
  }
  error_ = "field " + path + field + ": " + what;
  p_ = end_;  // nothing more is read
}

void Reader::short_read(const char* f, std::size_t need) {
  fail(f, "truncated (needs " + std::to_string(need) + " bytes, " + std::to_string(remaining()) + " left)");
}

void Reader::uuid(Uuid& v, const char* f) {
  v = {};
  if (!ok()) return;
  if (remaining() < v.size()) return short_read(f, v.size());
  std::memcpy(v.data(), p_, v.size());
  p_ += v.size();
}

std::uint64_t Reader::uvarint(const char* f, int max_bits) {
  if (!ok()) return 0;
  std::uint64_t v = 0;
  for (int shift = 0; shift < max_bits + 7; shift += 7) {
    if (p_ == end_) {
      fail(f, "truncated varint");
      return 0;
    }
    std::uint8_t b = *p_++;
    if (shift + 7 > max_bits && (b >> (max_bits - shift)) != 0) {
      fail(f, "varint longer than " + std::to_string(max_bits) + " bits");
      return 0;
    }
    v |= static_cast<std::uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
  fail(f, "varint longer than " + std::to_string(max_bits) + " bits");
  return 0;
}

void Reader::varint(std::int32_t& v, const char* f) {
  auto u = static_cast<std::uint32_t>(uvarint(f, 32));
  v = static_cast<std::int32_t>((u >> 1) ^ (~(u & 1) + 1));
}

void Reader::varlong(std::int64_t& v, const char* f) {
  auto u = uvarint(f, 64);
  v = static_cast<std::int64_t>((u >> 1) ^ (~(u & 1) + 1));
}

std::optional<std::size_t> Reader::size_field(const char* f, bool wide, bool nullable, bool& null,
                                              std::size_t unit) {
  // unit 0: a string's or bytes' length; else an array count whose elements take at least
  // `unit` bytes each.
  const bool array = unit != 0;
  null = false;
  if (!ok()) return std::nullopt;
  std::int64_t n;
  if (flexible_) {
    n = static_cast<std::int64_t>(uvarint(f, 32)) - 1;
  } else if (wide) {
    std::int32_t x;
    i32(x, f);
    n = x;
  } else {
    std::int16_t x;
    i16(x, f);
    n = x;
  }
  if (!ok()) return std::nullopt;
  if (n == -1) {
    if (!nullable) fail(f, array ? "null array where one is required" : "null where a value is required");
    null = true;
    return std::nullopt;
  }
  if (n < -1) {
    fail(f, (array ? "negative array count " : "negative length ") + std::to_string(n));
    return std::nullopt;
  }
  if (static_cast<std::uint64_t>(n) > remaining() / std::max<std::size_t>(unit, 1)) {
    fail(f, array ? "array count " + std::to_string(n) + " cannot fit in the " + std::to_string(remaining()) + " bytes left"
                  : "length " + std::to_string(n) + " exceeds the " + std::to_string(remaining()) + " bytes left");
    return std::nullopt;
  }
  return static_cast<std::size_t>(n);
}

bool Reader::take(std::string& out, std::size_t n, const char*) {
  out.assign(reinterpret_cast<const char*>(p_), n);
  p_ += n;
  return true;
}

void Reader::string(std::string& v, const char* f) {
  bool null;
  v.clear();
  if (auto n = size_field(f, false, false, null, 0)) take(v, *n, f);
}

void Reader::nullable_string(std::optional<std::string>& v, const char* f) {
  bool null;
  v.reset();
  if (auto n = size_field(f, false, true, null, 0)) take(v.emplace(), *n, f);
}

void Reader::bytes(std::string& v, const char* f) {
  bool null;
  v.clear();
  if (auto n = size_field(f, true, false, null, 0)) take(v, *n, f);
}

void Reader::nullable_bytes(std::optional<std::string>& v, const char* f) {
  bool null;
  v.reset();
  if (auto n = size_field(f, true, true, null, 0)) take(v.emplace(), *n, f);
}

void Reader::varbytes(std::optional<std::string>& v, const char* f) {
  v.reset();
  std::int32_t n;
  varint(n, f);
  if (!ok() || n == -1) return;
  if (n < -1) return fail(f, "negative length " + std::to_string(n));
  if (static_cast<std::size_t>(n) > remaining()) {
    return fail(f, "length " + std::to_string(n) + " exceeds the " + std::to_string(remaining()) + " bytes left");
  }
  take(v.emplace(), static_cast<std::size_t>(n), f);
}

void Reader::tags(const char* f) {
  if (!flexible_ || !ok()) return;
  auto n = uvarint(f, 32);
  std::int64_t last = -1;
  for (std::uint64_t i = 0; i < n && ok(); ++i) {
    auto tag = static_cast<std::int64_t>(uvarint(f, 32));
    auto size = uvarint(f, 32);
    if (!ok()) return;
    if (tag <= last) return fail(f, "tags out of order (" + std::to_string(tag) + " after " + std::to_string(last) + ")");
    last = tag;
    if (size > remaining()) {
      return fail(f, "tag " + std::to_string(tag) + " size " + std::to_string(size) + " exceeds the " +
                         std::to_string(remaining()) + " bytes left");
    }
    p_ += size;
  }
}

void Writer::blob(const std::string* v, bool wide) {
  if (flexible_) {
    put_uvarint(out_, v ? v->size() + 1 : 0);
  } else if (wide) {
    be(static_cast<std::uint32_t>(v ? static_cast<std::int32_t>(v->size()) : -1));
  } else {
    be(static_cast<std::uint16_t>(v ? static_cast<std::int16_t>(v->size()) : -1));
  }
  if (v) out_.append(*v);
}

}  // namespace shmbus::kafka
