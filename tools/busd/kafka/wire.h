// Kafka protocol primitives: a bounds-checked Reader and a Writer with the same method names,
// so one serde() function per message describes its fields once for both directions
// (messages.cpp). Every read checks what is left; the first failure stops the Reader and
// records the field's path ("topics[0].partitions[2].records: ..."), later reads do nothing.
// Big-endian integers; zigzag varints (records) and unsigned varints (flexible versions).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shmbus::kafka {

using Uuid = std::array<std::uint8_t, 16>;

// Zigzag varints as Kafka's records use them (ByteUtils.writeVarint / writeVarlong).
void put_uvarint(std::string& out, std::uint64_t v);
inline void put_varint(std::string& out, std::int64_t v) {
  put_uvarint(out, (static_cast<std::uint64_t>(v) << 1) ^ static_cast<std::uint64_t>(v >> 63));
}

class Reader {
 public:
  static constexpr bool kReading = true;
  explicit Reader(std::span<const std::uint8_t> in, bool flexible = false) : p_(in.data()), end_(in.data() + in.size()), flexible_(flexible) {}
  Reader(const std::string& in, bool flexible = false)
      : Reader(std::span(reinterpret_cast<const std::uint8_t*>(in.data()), in.size()), flexible) {}
  Reader(std::string&&, bool = false) = delete;  // would read a destroyed temporary

  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }
  std::size_t remaining() const { return static_cast<std::size_t>(end_ - p_); }
  const std::uint8_t* position() const { return p_; }
  bool flexible() const { return flexible_; }
  void set_flexible(bool f) { flexible_ = f; }
  // Records `what` as the error of `field` (at the current path) unless one is recorded.
  void fail(const char* field, const std::string& what);

  void i8(std::int8_t& v, const char* f) { v = static_cast<std::int8_t>(be<std::uint8_t>(f)); }
  void i16(std::int16_t& v, const char* f) { v = static_cast<std::int16_t>(be<std::uint16_t>(f)); }
  void i32(std::int32_t& v, const char* f) { v = static_cast<std::int32_t>(be<std::uint32_t>(f)); }
  void i64(std::int64_t& v, const char* f) { v = static_cast<std::int64_t>(be<std::uint64_t>(f)); }
  void u32(std::uint32_t& v, const char* f) { v = be<std::uint32_t>(f); }
  void boolean(bool& v, const char* f) { v = be<std::uint8_t>(f) != 0; }
  void uuid(Uuid& v, const char* f);
  // Unsigned LEB128 (at most 5 bytes for 32 bits, 10 for 64) and its zigzag forms.
  std::uint64_t uvarint(const char* f, int max_bits = 32);
  void varint(std::int32_t& v, const char* f);
  void varlong(std::int64_t& v, const char* f);

  // Classic (int16/int32 length) or compact (uvarint length+1) by flexible().
  void string(std::string& v, const char* f);
  void nullable_string(std::optional<std::string>& v, const char* f);
  void bytes(std::string& v, const char* f);
  void nullable_bytes(std::optional<std::string>& v, const char* f);
  // The next `n` bytes as they are (empty on error).
  std::span<const std::uint8_t> raw(std::size_t n, const char* f) {
    if (!ok()) return {};
    if (remaining() < n) {
      short_read(f, n);
      return {};
    }
    auto s = std::span(p_, n);
    p_ += n;
    return s;
  }
  // A zigzag-varint length (-1 null) and the bytes, as records and their headers carry them.
  void varbytes(std::optional<std::string>& v, const char* f);
  // Tagged fields: all are skipped (none of the versions we support defines one we use).
  void tags(const char* f = "tagged_fields");

  // `min_size`: the fewest bytes one element takes, so a forged count cannot make us
  // reserve more than the frame could hold.
  template <class T, class Each>
  void array(std::vector<T>& v, const char* f, std::size_t min_size, Each&& each) {
    std::optional<std::vector<T>> o;
    nullable_array_impl(o, f, min_size, each, false);
    if (o) v = std::move(*o);
  }
  template <class T, class Each>
  void nullable_array(std::optional<std::vector<T>>& v, const char* f, std::size_t min_size, Each&& each) {
    nullable_array_impl(v, f, min_size, each, true);
  }
  void int32_array(std::vector<std::int32_t>& v, const char* f) {
    array(v, f, 4, [&](std::int32_t& x) { i32(x, f); });
  }
  void string_array(std::vector<std::string>& v, const char* f) {
    array(v, f, flexible_ ? 1 : 2, [&](std::string& x) { string(x, f); });
  }

 private:
  template <class U>
  U be(const char* f) {
    if (!ok()) return 0;
    if (remaining() < sizeof(U)) {
      short_read(f, sizeof(U));
      return 0;
    }
    U v = 0;
    for (std::size_t i = 0; i < sizeof(U); ++i) v = static_cast<U>((v << 8) | p_[i]);
    p_ += sizeof(U);
    return v;
  }
  void short_read(const char* f, std::size_t need);
  // Reads a length (unit 0) or an array count (unit: the fewest bytes of an element): -1 (or
  // compact 0) is null -> nullopt, as is an error; anything else must fit in what is left.
  std::optional<std::size_t> size_field(const char* f, bool wide, bool nullable, bool& null, std::size_t unit);
  bool take(std::string& out, std::size_t n, const char* f);

  template <class T, class Each>
  void nullable_array_impl(std::optional<std::vector<T>>& v, const char* f, std::size_t min_size, Each& each,
                           bool nullable) {
    bool null = false;
    auto n = size_field(f, true, nullable, null, std::max<std::size_t>(min_size, 1));
    if (!n) {
      v.reset();
      return;
    }
    v.emplace();
    v->reserve(*n);
    for (std::size_t i = 0; i < *n && ok(); ++i) {
      path_.push_back({f, static_cast<std::int64_t>(i)});
      v->emplace_back();
      each(v->back());
      path_.pop_back();
    }
  }

  const std::uint8_t* p_;
  const std::uint8_t* end_;
  bool flexible_;
  std::string error_;
  std::vector<std::pair<const char*, std::int64_t>> path_;
};

class Writer {
 public:
  static constexpr bool kReading = false;
  explicit Writer(std::string& out, bool flexible = false) : out_(out), flexible_(flexible) {}
  bool ok() const { return true; }
  bool flexible() const { return flexible_; }
  void set_flexible(bool f) { flexible_ = f; }
  std::string& out() { return out_; }

  void i8(std::int8_t v, const char*) { be(static_cast<std::uint8_t>(v)); }
  void i16(std::int16_t v, const char*) { be(static_cast<std::uint16_t>(v)); }
  void i32(std::int32_t v, const char*) { be(static_cast<std::uint32_t>(v)); }
  void i64(std::int64_t v, const char*) { be(static_cast<std::uint64_t>(v)); }
  void u32(std::uint32_t v, const char*) { be(v); }
  void boolean(bool v, const char*) { be(static_cast<std::uint8_t>(v ? 1 : 0)); }
  void uuid(const Uuid& v, const char*) { out_.append(reinterpret_cast<const char*>(v.data()), v.size()); }
  void uvarint(std::uint64_t v, const char*) { put_uvarint(out_, v); }
  void varint(std::int32_t v, const char*) { put_varint(out_, v); }
  void varlong(std::int64_t v, const char*) { put_varint(out_, v); }

  void string(const std::string& v, const char*) { blob(&v, false); }
  void nullable_string(const std::optional<std::string>& v, const char*) { blob(v ? &*v : nullptr, false); }
  void bytes(const std::string& v, const char*) { blob(&v, true); }
  void nullable_bytes(const std::optional<std::string>& v, const char*) { blob(v ? &*v : nullptr, true); }
  void varbytes(const std::optional<std::string>& v, const char*) {
    put_varint(out_, v ? static_cast<std::int64_t>(v->size()) : -1);
    if (v) out_.append(*v);
  }
  void tags(const char* = nullptr) {
    if (flexible_) put_uvarint(out_, 0);
  }

  template <class T, class Each>
  void array(const std::vector<T>& v, const char*, std::size_t, Each&& each) {
    put_count(static_cast<std::int64_t>(v.size()));
    for (const auto& e : v) each(e);
  }
  template <class T, class Each>
  void nullable_array(const std::optional<std::vector<T>>& v, const char* f, std::size_t m, Each&& each) {
    if (!v) {
      put_count(-1);
      return;
    }
    array(*v, f, m, each);
  }
  void int32_array(const std::vector<std::int32_t>& v, const char* f) {
    array(v, f, 4, [&](std::int32_t x) { i32(x, f); });
  }
  void string_array(const std::vector<std::string>& v, const char* f) {
    array(v, f, 2, [&](const std::string& x) { string(x, f); });
  }

 private:
  template <class U>
  void be(U v) {
    char b[sizeof(U)];
    for (std::size_t i = 0; i < sizeof(U); ++i) b[i] = static_cast<char>(v >> (8 * (sizeof(U) - 1 - i)));
    out_.append(b, sizeof(U));
  }
  // Classic: int32 count, -1 null. Compact: uvarint count+1, 0 null.
  void put_count(std::int64_t n) {
    if (flexible_) put_uvarint(out_, static_cast<std::uint64_t>(n + 1));
    else be(static_cast<std::uint32_t>(static_cast<std::int32_t>(n)));
  }
  void blob(const std::string* v, bool wide);

  std::string& out_;
  bool flexible_;
};

}  // namespace shmbus::kafka
