// The spiller's bell to busd's loop (durable_bell.h).
#include "tools/busd/durable_bell.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace shmbus::daemon {

Result<std::unique_ptr<DurableBell>> DurableBell::open() {
  const int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) return make_error(Errc::kSystem, fmt::format("eventfd: {}", std::strerror(errno)));
  return std::unique_ptr<DurableBell>(new DurableBell(fd));
}

DurableBell::~DurableBell() { ::close(fd_); }

void DurableBell::write_one() noexcept {
  const std::uint64_t one = 1;
  (void)!::write(fd_, &one, sizeof one);
}

void DurableBell::want(bool on) noexcept {
  // SYNC POINT: seq_cst store, then the loop looks again (write_one: its next turn); pairs
  // with ring()'s seq_cst RMW: a publish either sees wanted_ or is seen by that look.
  wanted_.store(on ? 1 : 0, std::memory_order_seq_cst);
  if (on) write_one();
}

void DurableBell::ring() noexcept {
  // SYNC POINT: the publish's store (spill_end, synced_end, spill_state) before this seq_cst
  // RMW, a full barrier (a locked instruction on x86; not a thread fence, which GCC's TSan
  // refuses); pairs with want()'s seq_cst store.
  if (wanted_.fetch_add(0, std::memory_order_seq_cst) == 0) return;
  rings_.fetch_add(1, std::memory_order_relaxed);
  write_one();
}

void DurableBell::heard() noexcept {
  std::uint64_t n;
  (void)!::read(fd_, &n, sizeof n);
}

}  // namespace shmbus::daemon
