// The Kafka fuzz targets' input: a byte stream of size-prefixed request frames, as a client
// sends them, cut into at most 8 frames.
#pragma once

#include <cstdint>
#include <span>

#include "tools/busd/kafka/messages.h"

namespace shmbus::kafka {

template <typename F>
void for_each_frame(std::span<const std::uint8_t> in, F&& f) {
  for (int i = 0; i < 8; ++i) {
    auto n = frame_size(in, 1 << 20);
    if (!n || !*n) return;
    f(in.subspan(4, **n), i);
    in = in.subspan(4 + **n);
  }
}

}  // namespace shmbus::kafka
