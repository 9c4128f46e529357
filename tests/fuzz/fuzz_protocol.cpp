// Fuzzes busd's control protocol framing and request checks: the input is what a client
// (or anything that can connect to the socket) sends.
#include <cstdint>
#include <string>

#include "bus/protocol.h"

using namespace shmbus;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string in(reinterpret_cast<const char*>(data), size);
  for (int i = 0; i < 16; ++i) {
    auto m = proto::decode(in);
    if (!m || !*m) break;
    if (!(*m)->is_object()) __builtin_trap();  // decode promises objects only
    (void)proto::check_request(**m);
    // A reply to it round-trips.
    std::string out;
    proto::encode(**m, out);
    auto back = proto::decode(out);
    if (!back || !*back || **back != **m) __builtin_trap();
  }
  return 0;
}
