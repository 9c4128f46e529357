// The one 16-byte compare-and-swap of shmbus. A 16-byte std::atomic is not lock-free on
// GCC 12 / clang 14 (it calls libatomic, which may take a process-local lock and so breaks
// silently across processes). __sync_* on unsigned __int128 with -mcx16 emits
// `lock cmpxchg16b`, which is atomic between processes sharing the mapping.
#pragma once

#include <cstdint>

#if !defined(__SANITIZE_THREAD__)
#include <immintrin.h>
#endif

namespace shmbus::shm {

__extension__ typedef unsigned __int128 u128;

#if !defined(__GCC_HAVE_SYNC_COMPARE_AND_SWAP_16)
#error "shmbus needs cmpxchg16b: build with -mcx16"
#endif

// Two 64-bit words that move together: {offset, position} for the tail and the
// reclaim frontier. Low word first, as cmpxchg16b sees it.
struct alignas(16) Pair64 {
  std::uint64_t first;   // an offset
  std::uint64_t second;  // a byte position
};
static_assert(sizeof(Pair64) == 16 && alignof(Pair64) == 16, "cmpxchg16b needs 16-byte alignment");

inline u128 pack(Pair64 p) noexcept { return (static_cast<u128>(p.second) << 64) | p.first; }
inline Pair64 unpack(u128 v) noexcept {
  return Pair64{static_cast<std::uint64_t>(v), static_cast<std::uint64_t>(v >> 64)};
}

// Full-barrier CAS. On failure `expected` is refreshed with the current value.
[[nodiscard]] inline bool cas128(Pair64* target, Pair64& expected, Pair64 desired) noexcept {
  u128* p = reinterpret_cast<u128*>(target);
  const u128 want = pack(expected);
  const u128 seen = __sync_val_compare_and_swap(p, want, pack(desired));
  if (seen == want) return true;
  expected = unpack(seen);
  return false;
}

// Atomic 16-byte read. cmpxchg16b always writes, so this needs a writable mapping and costs
// a line ownership: only for slow paths. Read-only inspectors read the halves separately.
inline Pair64 load128(Pair64* target) noexcept {
  u128* p = reinterpret_cast<u128*>(target);
  return unpack(__sync_val_compare_and_swap(p, 0, 0));
}

// Whether an aligned 16-byte SSE store is atomic on this CPU. Intel's SDM (vol. 3A, 9.1.1)
// and AMD's APM (vol. 2, 7.3.2) guarantee it for MOVDQA on processors that enumerate AVX.
bool plain_store128_is_atomic() noexcept;
// Its answer, read when the library is loaded (false until then: store128 takes the CAS loop).
// A global, not a function-local static: that one's guard was tested on every store.
extern const bool g_plain_store128;

// Atomic 16-byte store without a locked instruction (no store-buffer drain) where the CPU
// guarantees it, else a CAS loop. For a location only this thread writes, except for CASes
// that write the same value (Ring::help_tail) or that happen only once its writer is dead.
// Ordered after earlier stores and before later ones (x86 TSO; the compiler is told).
[[gnu::always_inline]] inline void store128(Pair64* target, Pair64 v) noexcept {
#if !defined(__SANITIZE_THREAD__)
  if (g_plain_store128) [[likely]] {
    // One MOVDQA, spelled out: a compiler may split an intrinsic store into two halves. The
    // value is put together in registers (MOVQ, MOVQ, PUNPCKLQDQ): _mm_set_epi64x may go through
    // the stack, and a 16-byte load of two 8-byte stores waits for the store buffer to drain.
    const __m128i x = _mm_unpacklo_epi64(_mm_cvtsi64_si128(static_cast<long long>(v.first)),
                                         _mm_cvtsi64_si128(static_cast<long long>(v.second)));
    __asm__ __volatile__("movdqa %1, %0" : "=m"(*reinterpret_cast<__m128i*>(target)) : "x"(x) : "memory");
    return;
  }
#endif
  Pair64 seen{__atomic_load_n(&target->first, __ATOMIC_RELAXED), __atomic_load_n(&target->second, __ATOMIC_RELAXED)};
  u128* p = reinterpret_cast<u128*>(target);
  for (;;) {
    const u128 want = pack(seen);
    const u128 got = __sync_val_compare_and_swap(p, want, pack(v));
    if (got == want) return;
    seen = unpack(got);
  }
}

// A consistent {first, second} without writing: for readers, whose mapping may be
// read-only (cmpxchg16b faults there) and who should not take the line from producers.
// Sound for the tail and the reclaim frontier because every CAS on them changes `first`
// (the tail's next offset grows; the reclaim offset grows or its gate generation is bumped),
// except a reclaim that only steps over a PADDING word, and both positions of that step are
// valid for the same offset.
inline Pair64 snapshot128(const Pair64* target) noexcept {
  for (;;) {
    const std::uint64_t f1 = __atomic_load_n(&target->first, __ATOMIC_ACQUIRE);
    const std::uint64_t s = __atomic_load_n(&target->second, __ATOMIC_ACQUIRE);
    if (__atomic_load_n(&target->first, __ATOMIC_ACQUIRE) == f1) return Pair64{f1, s};
  }
}

}  // namespace shmbus::shm
