// busd's store of committed offsets: an append-only log in the state dir, compacted as it grows.
#include "tools/busd/offset_store.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sstream>
#include <unistd.h>

#include <boost/crc.hpp>
#include <fmt/format.h>

#include "bus/paths.h"

namespace shmbus {
namespace {

std::uint32_t crc32c(std::string_view s) {
  boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true> crc;  // Castagnoli
  crc.process_bytes(s.data(), s.size());
  return crc.checksum();
}

std::string hex_of(const std::string& s) {
  std::string out;
  for (unsigned char ch : s) out += fmt::format("{:02x}", ch);
  return out;
}

std::optional<std::string> from_hex(const std::string& h) {
  if (h.size() % 2) return std::nullopt;
  std::string out;
  for (std::size_t i = 0; i < h.size(); i += 2) {
    unsigned v = 0;
    for (char ch : {h[i], h[i + 1]}) {
      const int d = ch >= '0' && ch <= '9' ? ch - '0' : (ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1);
      if (d < 0) return std::nullopt;
      v = v * 16 + static_cast<unsigned>(d);
    }
    out += static_cast<char>(v);
  }
  return out;
}

std::string line_for(const OffsetKey& k, const CommittedOffset& c) {
  std::string body = fmt::format("{} {} {} {} {:x}", k.group, k.topic, k.partition, c.offset, c.topic_epoch);
  if (!c.metadata.empty()) {
    body += ' ';  // not `" " + hex_of(...)`: GCC 12 at -O3 warns of a bogus overlap (-Wrestrict)
    body += hex_of(c.metadata);
  }
  return fmt::format("{:08x} {}\n", crc32c(body), body);
}

}  // namespace

OffsetStore::OffsetStore(OffsetStore&& o) noexcept { *this = std::move(o); }
OffsetStore& OffsetStore::operator=(OffsetStore&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(o.path_);
    fd_ = std::exchange(o.fd_, -1);
    offsets_ = std::move(o.offsets_);
    pending_ = std::move(o.pending_);
    lines_ = o.lines_;
    skipped_ = o.skipped_;
  }
  return *this;
}
OffsetStore::~OffsetStore() {
  (void)flush();
  if (fd_ >= 0) ::close(fd_);
}

Result<OffsetStore> OffsetStore::open(const std::string& dir, std::optional<unsigned> gid) {
  if (auto ok = make_dirs(dir, gid ? 0770 : 0700, gid); !ok) return tl::unexpected(ok.error());
  OffsetStore s;
  s.gid_ = gid;
  s.path_ = dir + "/offsets.log";
  s.fd_ = ::open(s.path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, gid ? 0660 : 0600);
  if (s.fd_ < 0) return make_error(Errc::kSystem, fmt::format("cannot open {}: {}", s.path_, std::strerror(errno)));
  if (gid) share_with_group(s.fd_, *gid);
  std::string data;
  char buf[65536];
  for (;;) {
    const ssize_t n = ::read(s.fd_, buf, sizeof buf);
    if (n < 0) return make_error(Errc::kSystem, fmt::format("cannot read {}: {}", s.path_, std::strerror(errno)));
    if (n == 0) break;
    data.append(buf, static_cast<std::size_t>(n));
  }
  std::size_t at = 0;
  while (at < data.size()) {
    const std::size_t nl = data.find('\n', at);
    if (nl == std::string::npos) {  // torn tail: a crash in the middle of an append
      ++s.skipped_;
      break;
    }
    const std::string line = data.substr(at, nl - at);
    at = nl + 1;
    std::istringstream in(line);
    std::string crc, group, topic;
    std::uint32_t partition = 0;
    std::uint64_t offset = 0, epoch = 0;
    if (!(in >> crc >> group >> topic >> partition >> offset) || line.size() < 10 ||
        fmt::format("{:08x}", crc32c(std::string_view(line).substr(9))) != crc) {
      ++s.skipped_;
      continue;
    }
    if (!(in >> std::hex >> epoch)) epoch = 0;  // a line of the format without the topic epoch
    std::string meta_hex;
    std::optional<std::string> meta = std::string();
    if (in >> meta_hex) meta = from_hex(meta_hex);
    if (!meta) {  // the CRC held, so a writer of another format: the offset counts, the metadata not
      ++s.skipped_;
      meta = std::string();
    }
    s.offsets_[OffsetKey{group, topic, partition}] = CommittedOffset{offset, epoch, *meta};
    ++s.lines_;
  }
  // Rewrite whole: drops a torn tail and old lines.
  if (auto ok = s.compact(); !ok) return tl::unexpected(ok.error());
  return s;
}

std::optional<std::uint64_t> OffsetStore::get(const OffsetKey& k, std::uint64_t topic_epoch) const {
  const CommittedOffset* c = find(k, topic_epoch);
  if (!c) return std::nullopt;
  return c->offset;
}

const CommittedOffset* OffsetStore::find(const OffsetKey& k, std::uint64_t topic_epoch) const {
  auto it = offsets_.find(k);
  if (it == offsets_.end() || (it->second.topic_epoch != 0 && it->second.topic_epoch != topic_epoch)) return nullptr;
  return &it->second;
}

bool OffsetStore::has_group(const std::string& group) const {
  auto it = offsets_.lower_bound(OffsetKey{group, "", 0});  // keys order by group first
  return it != offsets_.end() && it->first.group == group;
}

void OffsetStore::put(const OffsetKey& k, std::uint64_t offset, std::uint64_t topic_epoch, const std::string& metadata) {
  const CommittedOffset c{offset, topic_epoch, metadata};
  auto it = offsets_.find(k);
  if (it != offsets_.end() && it->second == c) return;
  offsets_[k] = c;
  pending_ += line_for(k, c);
  ++lines_;
}

std::size_t OffsetStore::drop_topic(const std::string& topic, std::uint64_t keep_epoch) {
  std::size_t n = 0;
  for (auto it = offsets_.begin(); it != offsets_.end();) {
    const auto& c = it->second;
    if (it->first.topic == topic && (keep_epoch == 0 || (c.topic_epoch != 0 && c.topic_epoch != keep_epoch))) {
      it = offsets_.erase(it);
      ++n;
    } else {
      ++it;
    }
  }
  if (n) (void)compact();  // the log forgets them too: a reopen must not bring them back
  return n;
}

void OffsetStore::erase_group_topic(const std::string& group, const std::string& topic) {
  std::erase_if(offsets_, [&](const auto& kv) { return kv.first.group == group && kv.first.topic == topic; });
  (void)compact();
}

void OffsetStore::erase_group(const std::string& group) {
  std::erase_if(offsets_, [&](const auto& kv) { return kv.first.group == group; });
  (void)compact();
}

Status OffsetStore::flush() {
  if (fd_ < 0) return {};
  if (lines_ > 4 * offsets_.size() + 1024) return compact();
  if (pending_.empty()) return {};
  std::size_t done = 0;
  while (done < pending_.size()) {
    const ssize_t n = ::write(fd_, pending_.data() + done, pending_.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      // What was written stays written (a torn line, to be completed): the retry writes only
      // the rest, so that the piece on disk and the rest join into whole lines again.
      const int err = errno;
      pending_.erase(0, done);
      return make_error(Errc::kSystem, fmt::format("cannot write {}: {}", path_, std::strerror(err)));
    }
    done += static_cast<std::size_t>(n);
  }
  pending_.clear();
  if (::fdatasync(fd_) != 0) return make_error(Errc::kSystem, fmt::format("cannot sync {}: {}", path_, std::strerror(errno)));
  return {};
}

Status OffsetStore::compact() {
  // Write the live set to a new file, sync it, and rename it over the log: a crash leaves
  // either the old log or the new one, never a mix.
  const std::string tmp = path_ + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return make_error(Errc::kSystem, fmt::format("cannot write {}: {}", tmp, std::strerror(errno)));
  if (gid_) share_with_group(fd, *gid_);  // the log it replaces was the group's: the busd of any member opens it
  std::string all;
  for (const auto& [k, o] : offsets_) all += line_for(k, o);
  if (::write(fd, all.data(), all.size()) != static_cast<ssize_t>(all.size()) || ::fsync(fd) != 0) {
    ::close(fd);
    return make_error(Errc::kSystem, fmt::format("cannot write {}: {}", tmp, std::strerror(errno)));
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path_.c_str()) != 0)
    return make_error(Errc::kSystem, fmt::format("cannot replace {}: {}", path_, std::strerror(errno)));
  // The rename is durable only once the directory is synced.
  const std::string dir = path_.substr(0, path_.rfind('/'));
  if (const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  const int nfd = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (nfd < 0) return make_error(Errc::kSystem, fmt::format("cannot reopen {}: {}", path_, std::strerror(errno)));
  if (fd_ >= 0) ::close(fd_);
  fd_ = nfd;
  pending_.clear();
  lines_ = offsets_.size();
  return {};
}

}  // namespace shmbus
