// busd's side of the spill log: appends frames, rolls and indexes segments (.index and
// .timeindex), syncs, enforces retention, and recovers a torn tail on open. Consumers and
// busctl only read (bus/disk_log.h).
#include "tools/busd/log_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>

#include <fmt/format.h>

#include "bus/paths.h"

namespace shmbus::disklog {

namespace {

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

FileHeader make_file_header(std::uint64_t base) {
  FileHeader h{};
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  h.major = kLogMajor;
  h.minor = kLogMinor;
  h.header_size = sizeof(FileHeader);
  h.base_offset = base;
  h.crc = crc32c(&h, offsetof(FileHeader, crc));
  return h;
}

Status write_all(int fd, const void* data, std::size_t n, const std::string& path) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0)
      return make_error(errno == ENOSPC ? Errc::kNoSpace : Errc::kSystem, fmt::format("write {}: {}", path, std::strerror(errno)));
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return {};
}

// open(2) that may create `path`: the file gets `mode` exactly, whatever the umask (a
// shared bus's files are the group's, 0660, so that the busd of any member of the group can
// append to them). A file of another owner keeps its mode (fchmod is refused: its owner set it).
int open_file(const std::string& path, int flags, unsigned mode) {
  const int fd = ::open(path.c_str(), flags, mode);
  if (fd >= 0) (void)::fchmod(fd, mode);
  return fd;
}

}  // namespace

namespace {

struct Watermark {
  std::uint64_t base;   // segment
  std::uint64_t bytes;  // synced length of that segment
};

std::string watermark_path(const std::string& dir) { return dir + "/synced"; }

}  // namespace

void write_watermark(const std::string& dir, std::pair<std::uint64_t, std::uint64_t> wm, unsigned mode) {
  unsigned char buf[20];
  std::memcpy(buf, &wm.first, 8);
  std::memcpy(buf + 8, &wm.second, 8);
  const std::uint32_t crc = crc32c(buf, 16);
  std::memcpy(buf + 16, &crc, 4);
  Fd f{open_file(watermark_path(dir), O_WRONLY | O_CREAT | O_CLOEXEC, mode)};
  if (f.fd >= 0) (void)!::pwrite(f.fd, buf, sizeof buf, 0);
}

namespace {

std::optional<Watermark> read_watermark(const std::string& dir) {
  unsigned char buf[20];
  Fd f{::open(watermark_path(dir).c_str(), O_RDONLY | O_CLOEXEC)};
  if (f.fd < 0 || ::pread(f.fd, buf, sizeof buf, 0) != static_cast<ssize_t>(sizeof buf)) return std::nullopt;
  std::uint32_t crc;
  std::memcpy(&crc, buf + 16, 4);
  if (crc != crc32c(buf, 16)) return std::nullopt;
  Watermark w;
  std::memcpy(&w.base, buf, 8);
  std::memcpy(&w.bytes, buf + 8, 8);
  return w;
}

}  // namespace

LogWriter::LogWriter(LogWriter&& o) noexcept
    : dir_(std::move(o.dir_)), config_(o.config_), mode_(o.mode_), segments_(std::move(o.segments_)),
      log_fd_(std::exchange(o.log_fd_, -1)), index_fd_(std::exchange(o.index_fd_, -1)),
      time_index_fd_(std::exchange(o.time_index_fd_, -1)), since_index_(o.since_index_),
      pending_index_(std::move(o.pending_index_)), pending_time_index_(std::move(o.pending_time_index_)),
      max_timestamp_(o.max_timestamp_), next_(o.next_), writeback_from_(o.writeback_from_),
      unsynced_(std::move(o.unsynced_)) {}

LogWriter& LogWriter::operator=(LogWriter&& o) noexcept {
  if (this != &o) {
    close_files();
    dir_ = std::move(o.dir_);
    config_ = o.config_;
    mode_ = o.mode_;
    segments_ = std::move(o.segments_);
    log_fd_ = std::exchange(o.log_fd_, -1);
    index_fd_ = std::exchange(o.index_fd_, -1);
    time_index_fd_ = std::exchange(o.time_index_fd_, -1);
    since_index_ = o.since_index_;
    pending_index_ = std::move(o.pending_index_);
    pending_time_index_ = std::move(o.pending_time_index_);
    max_timestamp_ = o.max_timestamp_;
    next_ = o.next_;
    writeback_from_ = o.writeback_from_;
    unsynced_ = std::move(o.unsynced_);
  }
  return *this;
}

LogWriter::~LogWriter() {
  (void)flush_index();
  close_files();
}

void LogWriter::close_files() noexcept {
  for (int fd : unsynced_) ::close(fd);  // the owner synced them before, or did not want to
  unsynced_.clear();
  if (log_fd_ >= 0) ::close(log_fd_);
  if (index_fd_ >= 0) ::close(index_fd_);
  if (time_index_fd_ >= 0) ::close(time_index_fd_);
  log_fd_ = index_fd_ = time_index_fd_ = -1;
}

std::optional<std::uint64_t> LogWriter::start_offset() const noexcept {
  if (segments_.empty() || !next_) return std::nullopt;
  return segments_.front().base;
}

std::uint64_t LogWriter::bytes() const noexcept {
  std::uint64_t n = 0;
  for (const auto& s : segments_) n += s.bytes;
  return n;
}

namespace {

void fsync_dir(const std::string& dir) {
  Fd d{::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  if (d.fd >= 0) (void)::fsync(d.fd);
}

void remove_segment(const std::string& dir, std::uint64_t base) {
  ::unlink(segment_path(dir, base, "timeindex").c_str());
  ::unlink(segment_path(dir, base, "index").c_str());
  ::unlink(segment_path(dir, base, "log").c_str());
}

}  // namespace

Result<LogWriter> LogWriter::open(const std::string& dir, const SpillConfig& config, unsigned file_mode,
                                  const std::function<void(const std::string&)>& report) {
  if (auto ok = make_dirs(dir, (file_mode & 0060) ? 0770 : 0700); !ok) return tl::unexpected(ok.error());
  LogWriter w;
  w.dir_ = dir;
  w.config_ = config;
  w.mode_ = file_mode;
  auto segs = list_segments(dir);
  if (!segs) return tl::unexpected(segs.error());
  std::vector<std::uint64_t> bases = *segs;
  // Recover the last segment; an empty one (header only, or less) is dropped.
  std::optional<ScanResult> last;
  while (!bases.empty()) {
    const std::string path = segment_path(dir, bases.back(), "log");
    auto r = scan_segment(path);
    if (!r) return tl::unexpected(r.error());
    if (r->end == ScanEnd::kCorrupt && r->bad_position >= sizeof(FileHeader)) {
      // Damage past the last fsync is what a power loss leaves with fsync=interval (unsynced
      // pages reach the disk in any order): a torn tail, not corruption. (fsync=never writes
      // no watermark: there, damage stays an operator's call.)
      const auto wm = read_watermark(dir);
      const bool unsynced = wm && (wm->base < bases.back() || (wm->base == bases.back() && r->bad_position >= wm->bytes));
      if (unsynced) {
        r->end = ScanEnd::kTornTail;
        r->problem += fmt::format(" — past the last fsync{}: lost in a crash of the machine",
                                  wm ? fmt::format(" (byte {} of segment {})", wm->bytes, wm->base) : std::string());
      }
    }
    if (r->end == ScanEnd::kCorrupt)
      return make_error(Errc::kBadSegment, fmt::format("{}; busd will not append to this log until it is repaired "
                                                       "(busctl log dump shows it)", r->problem));
    if (r->end == ScanEnd::kTornTail) {
      if (report) report(fmt::format("{}; truncated to {} bytes, the last whole record", r->problem, r->valid_bytes));
      if (r->valid_bytes >= sizeof(FileHeader) && ::truncate(path.c_str(), static_cast<off_t>(r->valid_bytes)) != 0)
        return make_error(Errc::kSystem, fmt::format("cannot truncate {}: {}", path, std::strerror(errno)));
      r->file_size = r->valid_bytes;
    }
    if (r->records == 0) {
      remove_segment(dir, bases.back());
      bases.pop_back();
      continue;
    }
    last = std::move(*r);
    break;
  }
  for (std::size_t i = 0; i < bases.size(); ++i) {
    struct stat st{};
    const std::uint64_t size = ::stat(segment_path(dir, bases[i], "log").c_str(), &st) == 0 ? static_cast<std::uint64_t>(st.st_size) : 0;
    w.segments_.push_back({bases[i], size});
  }
  if (last) {
    w.next_ = *last->last_offset + 1;
    const std::string path = segment_path(dir, last->base_offset, "log");
    w.log_fd_ = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    if (w.log_fd_ < 0) return make_error(Errc::kSystem, fmt::format("cannot open {}: {}", path, std::strerror(errno)));
    // The indexes of the open segment are rebuilt from the scan: they may lag or run past a
    // truncated tail.
    const std::pair<int*, const char*> files[] = {{&w.index_fd_, "index"}, {&w.time_index_fd_, "timeindex"}};
    for (const auto& [fd, ext] : files) {
      const std::string ipath = segment_path(dir, last->base_offset, ext);
      *fd = open_file(ipath, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, file_mode);
      if (*fd < 0) return make_error(Errc::kSystem, fmt::format("cannot open {}: {}", ipath, std::strerror(errno)));
    }
    if (auto ok = write_all(w.index_fd_, last->index.data(), last->index.size() * sizeof(IndexEntry), segment_path(dir, last->base_offset, "index")); !ok)
      return tl::unexpected(ok.error());
    if (auto ok = write_all(w.time_index_fd_, last->time_index.data(), last->time_index.size() * sizeof(TimeIndexEntry),
                            segment_path(dir, last->base_offset, "timeindex"));
        !ok)
      return tl::unexpected(ok.error());
    w.max_timestamp_ = last->max_timestamp;
    w.since_index_ = last->valid_bytes - (last->index.empty() ? 0 : last->index.back().position);
    w.writeback_from_ = last->valid_bytes;
  }
  return w;
}

Status LogWriter::flush_index() {
  if (pending_index_.empty() || index_fd_ < 0) return {};
  const std::uint64_t base = segments_.back().base;
  auto ok = write_all(index_fd_, pending_index_.data(), pending_index_.size() * sizeof(IndexEntry), segment_path(dir_, base, "index"));
  if (ok && time_index_fd_ >= 0)
    ok = write_all(time_index_fd_, pending_time_index_.data(), pending_time_index_.size() * sizeof(TimeIndexEntry),
                   segment_path(dir_, base, "timeindex"));
  pending_index_.clear();
  pending_time_index_.clear();
  return ok;
}

Status LogWriter::roll(std::uint64_t base) {
  if (auto ok = flush_index(); !ok) return ok;
  if (log_fd_ >= 0 && config_.fsync != FsyncPolicy::kNever) {
    // The sealed segment is synced with the next sync(), not now: a roll must not stall
    // the appends behind it.
    for (int* fd : {&log_fd_, &index_fd_, &time_index_fd_})
      if (*fd >= 0) unsynced_.push_back(std::exchange(*fd, -1));
  }
  for (int* fd : {&log_fd_, &index_fd_, &time_index_fd_})
    if (*fd >= 0) ::close(std::exchange(*fd, -1));
  const std::string path = segment_path(dir_, base, "log"), ipath = segment_path(dir_, base, "index"),
                    tpath = segment_path(dir_, base, "timeindex");
  // O_EXCL: a file of that name would be a log we did not list; never write over it.
  log_fd_ = open_file(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, mode_);
  if (log_fd_ < 0) return make_error(Errc::kSystem, fmt::format("cannot create {}: {}", path, std::strerror(errno)));
  index_fd_ = open_file(ipath, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, mode_);
  if (index_fd_ < 0) return make_error(Errc::kSystem, fmt::format("cannot create {}: {}", ipath, std::strerror(errno)));
  time_index_fd_ = open_file(tpath, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, mode_);
  if (time_index_fd_ < 0) return make_error(Errc::kSystem, fmt::format("cannot create {}: {}", tpath, std::strerror(errno)));
  const FileHeader h = make_file_header(base);
  if (auto ok = write_all(log_fd_, &h, sizeof h, path); !ok) return ok;
  if (config_.fsync != FsyncPolicy::kNever) fsync_dir(dir_);
  segments_.push_back({base, sizeof h});
  since_index_ = kIndexInterval;
  max_timestamp_ = kNoTimestamp;
  writeback_from_ = 0;
  return {};
}

Status LogWriter::append(std::span<const std::byte> frames) {
  std::size_t i = 0;
  while (i < frames.size()) {
    // One run of frames that fits the open segment, written with one write(2).
    std::size_t j = i;
    while (j + kFrameHeaderSize <= frames.size()) {
      FrameHeader h;
      std::memcpy(&h, frames.data() + j, sizeof h);
      if (h.size < kFrameHeaderSize || j + h.size > frames.size() || (next_ && h.offset < *next_))
        return make_error(Errc::kInvalidArgument, fmt::format("{}: append of a malformed or out-of-order frame", dir_));
      const bool fresh = log_fd_ < 0 || segments_.empty();
      const bool full = !fresh && segments_.back().bytes + (j - i) + h.size > config_.segment_bytes &&
                        segments_.back().bytes + (j - i) > sizeof(FileHeader);
      if (fresh || full) {
        if (j > i) break;  // write what we have first
        if (auto ok = roll(h.offset); !ok) return ok;
      }
      if (since_index_ >= kIndexInterval) {
        const auto rel = static_cast<std::uint32_t>(h.offset - segments_.back().base);
        pending_index_.push_back({rel, static_cast<std::uint32_t>(segments_.back().bytes + (j - i))});
        pending_time_index_.push_back(time_index_entry(max_timestamp_, rel));
        since_index_ = 0;
      }
      if (!is_gap(h)) max_timestamp_ = std::max(max_timestamp_, h.timestamp_ns);
      since_index_ += h.size;
      next_ = frame_last(h) + 1;
      j += h.size;
    }
    if (j == i) return make_error(Errc::kInvalidArgument, fmt::format("{}: append of a partial frame", dir_));
    if (auto ok = write_all(log_fd_, frames.data() + i, j - i, segment_path(dir_, segments_.back().base, "log")); !ok) return ok;
    segments_.back().bytes += j - i;
    // fsync=always: start the writeback of every few MiB now, without waiting for it, so
    // that the fdatasync to come finds little left to do (measured: docs/performance.md).
    if (config_.fsync == FsyncPolicy::kAlways && segments_.back().bytes - writeback_from_ >= (4u << 20)) {
      (void)::sync_file_range(log_fd_, static_cast<off_t>(writeback_from_), static_cast<off_t>(segments_.back().bytes - writeback_from_),
                              SYNC_FILE_RANGE_WRITE);
      writeback_from_ = segments_.back().bytes;
    }
    if (auto ok = flush_index(); !ok) return ok;
    i = j;
  }
  return {};
}

Status LogWriter::sync() {
  bool failed = false;
  for (int fd : unsynced_) {
    failed |= ::fdatasync(fd) != 0;
    ::close(fd);
  }
  unsynced_.clear();
  if (failed || (log_fd_ >= 0 && ::fdatasync(log_fd_) != 0))
    return make_error(Errc::kSystem, fmt::format("fdatasync {}: {}", dir_, std::strerror(errno)));
  if (index_fd_ >= 0) (void)::fdatasync(index_fd_);
  if (time_index_fd_ >= 0) (void)::fdatasync(time_index_fd_);
  // The watermark: everything before it is on the disk. Written after the sync returned,
  // so it is never ahead of the data; recovery treats damage past it as a torn tail.
  if (!segments_.empty()) write_watermark(dir_, {segments_.back().base, segments_.back().bytes}, mode_);
  return {};
}

std::size_t LogWriter::enforce_retention(std::int64_t now_ns) {
  std::size_t removed = 0;
  while (segments_.size() > 1) {
    const Segment& oldest = segments_.front();
    bool drop = config_.retention_bytes && bytes() - oldest.bytes >= config_.retention_bytes;
    if (!drop && config_.retention_ms > 0) {
      // A sealed segment's last write is its newest record: older than retention, it goes.
      struct stat st{};
      if (::stat(segment_path(dir_, oldest.base, "log").c_str(), &st) == 0) {
        const std::int64_t mtime = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
        drop = now_ns - mtime > config_.retention_ms * 1'000'000;
      }
    }
    if (!drop) break;
    remove_segment(dir_, oldest.base);
    segments_.erase(segments_.begin());
    ++removed;
  }
  return removed;
}

}  // namespace shmbus::disklog
