#include "shm/segment.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <random>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <thread>
#include <unistd.h>

#include <boost/interprocess/shared_memory_object.hpp>
#include <fmt/format.h>

#include "shm/process.h"

namespace bip = boost::interprocess;

namespace shmbus::shm {
namespace {

Error os_error(Errc fallback, const std::string& what, int err) {
  Errc code = fallback;
  if (err == EACCES || err == EPERM) code = Errc::kPermission;
  if (err == ENOENT) code = Errc::kNotFound;
  if (err == ENOSPC) code = Errc::kNoSpace;
  return Error{code, fmt::format("{}: {}", what, std::strerror(err))};
}

// Boost reports errors as exceptions carrying the native errno; we turn them into values.
int native_errno(const bip::interprocess_exception& e) {
  int n = e.get_native_error();
  return n != 0 ? n : EIO;
}

}  // namespace

std::uint64_t random_u64() noexcept {
  static thread_local std::mt19937_64 gen{std::random_device{}() ^ (static_cast<std::uint64_t>(::getpid()) << 32) ^
                                          monotonic_ns()};
  std::uint64_t v = 0;
  while (v == 0) v = gen();
  return v;
}

std::string Segment::path_of(const std::string& name) { return std::string(kShmDir) + "/" + name; }

bool Segment::exists(const std::string& name) {
  struct stat st{};
  return ::stat(path_of(name).c_str(), &st) == 0;
}

Status Segment::remove(const std::string& name) {
  if (::unlink(path_of(name).c_str()) != 0 && errno != ENOENT)
    return tl::unexpected(os_error(Errc::kSystem, fmt::format("cannot remove {}", path_of(name)), errno));
  return {};
}

std::uint64_t Segment::shm_free_bytes() {
  struct statvfs vfs{};
  if (::statvfs(kShmDir, &vfs) != 0) return 0;
  return static_cast<std::uint64_t>(vfs.f_bavail) * vfs.f_frsize;
}

Segment::Segment(Segment&& o) noexcept { *this = std::move(o); }

Segment& Segment::operator=(Segment&& o) noexcept {
  if (this != &o) {
    reset();
    name_ = std::move(o.name_);
    base_ = std::exchange(o.base_, nullptr);
    size_ = std::exchange(o.size_, 0);
    fd_ = std::exchange(o.fd_, -1);
    writable_ = o.writable_;
  }
  return *this;
}

Segment::~Segment() { reset(); }

void Segment::drop_fd() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void Segment::reset() noexcept {
  if (base_) ::munmap(base_, size_);
  if (fd_ >= 0) ::close(fd_);
  base_ = nullptr;
  fd_ = -1;
  size_ = 0;
}

Status validate_header(const std::string& name, const SegmentHeader& h, std::size_t file_size, SegmentKind kind,
                       std::uint16_t major) {
  const std::string path = Segment::path_of(name);
  if (h.magic != kSegmentMagic)
    return make_error(Errc::kBadSegment,
                      fmt::format("{} is not a shmbus segment (magic {:#018x}, expected {:#018x})", path, h.magic,
                                  kSegmentMagic));
  const std::uint32_t v = h.version.load(std::memory_order_acquire);  // pairs with the creator's release store
  if (v == 0) return make_error(Errc::kBadSegment, fmt::format("{} was never finished by its creator (pid {})", path, h.creator_pid));
  if (h.header_size != sizeof(SegmentHeader))
    return make_error(Errc::kBadSegment, fmt::format("{} has a {}-byte header, this build expects {}", path,
                                                     h.header_size, sizeof(SegmentHeader)));
  if ((v >> 16) != major)
    return make_error(Errc::kBadSegment, fmt::format("{} has layout version {}.{}, this build reads version {}.x", path,
                                                     v >> 16, v & 0xffff, major));
  if (h.kind != static_cast<std::uint32_t>(kind))
    return make_error(Errc::kBadSegment, fmt::format("{} is a segment of kind {}, expected kind {}", path, h.kind,
                                                     static_cast<std::uint32_t>(kind)));
  if (h.size != file_size)
    return make_error(Errc::kBadSegment,
                      fmt::format("{} is {} bytes but its header says {} (truncated or corrupt)", path, file_size, h.size));
  return {};
}

Result<Segment> Segment::create(const SegmentSpec& spec, const std::function<void(std::byte*)>& init) {
  if (spec.size < sizeof(SegmentHeader)) return make_error(Errc::kInvalidArgument, "segment smaller than its header");
  const std::string tmp = fmt::format("{}.tmp.{}.{:x}", spec.name, ::getpid(), random_u64() & 0xffffff);
  const std::string tmp_path = path_of(tmp);
  const std::string final_path = path_of(spec.name);
  Segment seg;
  try {
    bip::permissions perm(spec.mode);
    bip::shared_memory_object shm(bip::create_only, tmp.c_str(), bip::read_write, perm);
    // Take the descriptor over: the Segment owns it from here (flock, fstat, fallocate).
    seg.fd_ = ::dup(shm.get_mapping_handle().handle);
  } catch (const bip::interprocess_exception& e) {
    return tl::unexpected(os_error(Errc::kSystem, fmt::format("cannot create {}", tmp_path), native_errno(e)));
  }
  if (seg.fd_ < 0) {
    const int err = errno;
    ::unlink(tmp_path.c_str());
    return tl::unexpected(os_error(Errc::kSystem, fmt::format("cannot create {}", tmp_path), err));
  }
  seg.name_ = spec.name;
  seg.writable_ = true;
  auto fail = [&](Error err) -> Result<Segment> {
    ::unlink(tmp_path.c_str());
    return tl::unexpected(std::move(err));
  };
  // umask must not widen or narrow what the bus asked for.
  if (::fchmod(seg.fd_, spec.mode) != 0) return fail(os_error(Errc::kSystem, "fchmod " + tmp_path, errno));
  if (spec.gid && ::fchown(seg.fd_, static_cast<uid_t>(-1), *spec.gid) != 0)
    return fail(os_error(Errc::kPermission, fmt::format("cannot give {} to group {}", tmp_path, *spec.gid), errno));
  if (int rc = ::posix_fallocate(seg.fd_, 0, static_cast<off_t>(spec.size)); rc != 0) {
    if (rc == ENOSPC)
      return fail(Error{Errc::kNoSpace,
                        fmt::format("not enough room in {} for {} ({} bytes needed, {} free): enlarge /dev/shm "
                                    "(docker --shm-size, mount -o remount,size=...) or use a smaller --capacity",
                                    kShmDir, spec.name, spec.size, shm_free_bytes())});
    return fail(os_error(Errc::kSystem, "posix_fallocate " + tmp_path, rc));
  }
  // Our own mapping of the descriptor we own, so that a Segment has no Boost object lifetimes.
  void* p = ::mmap(nullptr, spec.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, seg.fd_, 0);
  if (p == MAP_FAILED) return fail(os_error(Errc::kSystem, "mmap " + tmp_path, errno));
  seg.base_ = static_cast<std::byte*>(p);
  seg.size_ = spec.size;
  auto* h = reinterpret_cast<SegmentHeader*>(seg.base_);
  h->magic = kSegmentMagic;
  h->kind = static_cast<std::uint32_t>(spec.kind);
  h->size = spec.size;
  h->creator_pid = ::getpid();
  h->header_size = sizeof(SegmentHeader);
  h->epoch = random_u64();
  h->created_ns = realtime_ns();
  init(seg.base_);
  // SYNC POINT: publishes everything above; pairs with the acquire in validate_header().
  h->version.store(make_version(spec.major, spec.minor), std::memory_order_release);

  if (::link(tmp_path.c_str(), final_path.c_str()) != 0) {
    const int err = errno;
    if (err == EEXIST && spec.replace) {
      if (::rename(tmp_path.c_str(), final_path.c_str()) != 0) return fail(os_error(Errc::kSystem, "rename to " + final_path, errno));
      return seg;
    }
    if (err == EEXIST) return fail(Error{Errc::kAlreadyExists, fmt::format("{} already exists", final_path)});
    return fail(os_error(Errc::kSystem, "link " + final_path, err));
  }
  ::unlink(tmp_path.c_str());
  return seg;
}

Result<Segment> Segment::open(const std::string& name, SegmentKind kind, std::uint16_t major, bool writable) {
  const std::string path = path_of(name);
  Segment seg;
  try {
    bip::shared_memory_object shm(bip::open_only, name.c_str(), writable ? bip::read_write : bip::read_only);
    seg.fd_ = ::dup(shm.get_mapping_handle().handle);
    if (seg.fd_ < 0) return tl::unexpected(os_error(Errc::kSystem, fmt::format("cannot open {}", path), errno));
  } catch (const bip::interprocess_exception& e) {
    const int err = native_errno(e);
    if (err == ENOENT) return make_error(Errc::kNotFound, fmt::format("{} does not exist", path));
    return tl::unexpected(os_error(Errc::kSystem, fmt::format("cannot open {}", path), err));
  }
  seg.name_ = name;
  seg.writable_ = writable;
  struct stat st{};
  if (::fstat(seg.fd_, &st) != 0) return tl::unexpected(os_error(Errc::kSystem, "fstat " + path, errno));
  const auto file_size = static_cast<std::size_t>(st.st_size);
  if (file_size < sizeof(SegmentHeader))
    return make_error(Errc::kBadSegment, fmt::format("{} is {} bytes, too small for a shmbus segment header ({} bytes)",
                                                     path, file_size, sizeof(SegmentHeader)));
  // MAP_POPULATE: the page tables are filled now, not by page faults on the first lap of a
  // ring, which showed as 10-20 µs spikes at p99 in the latency benchmark.
  void* p = ::mmap(nullptr, file_size, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED | MAP_POPULATE, seg.fd_, 0);
  if (p == MAP_FAILED) return tl::unexpected(os_error(Errc::kSystem, "mmap " + path, errno));
  seg.base_ = static_cast<std::byte*>(p);
  seg.size_ = file_size;
  auto* h = reinterpret_cast<const SegmentHeader*>(seg.base_);
  // Segments are linked in whole, but a file laid by hand or by an old build may still be
  // racing its own initialisation: give a nonzero magic a short grace for the version.
  if (h->magic == kSegmentMagic) {
    for (int i = 0; i < 100 && h->version.load(std::memory_order_acquire) == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (auto ok = validate_header(name, *h, file_size, kind, major); !ok) return tl::unexpected(ok.error());
  return seg;
}

}  // namespace shmbus::shm
