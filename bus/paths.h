// Where a bus keeps its files outside /dev/shm: busd's socket and lock (runtime dir) and
// persisted state such as committed offsets (state dir). docs/busd.md.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>

#include "shmbus/error.h"

namespace shmbus {

struct BusPaths {
  std::string runtime_dir;  // socket, lock
  std::string state_dir;    // offsets.log
  std::string socket;
  std::string lock;
};

// SHMBUS_DIR=<dir>: both are <dir>/<bus>. Else root: /run/shmbus/<bus> and
// /var/lib/shmbus/<bus>; others: $XDG_RUNTIME_DIR/shmbus/<bus> (or /tmp/shmbus-<uid>/<bus>)
// and $XDG_STATE_HOME/shmbus/<bus> (or ~/.local/state/shmbus/<bus>). A socket path that would
// pass the 107-byte limit of sun_path uses a hashed directory name instead of the bus name.
BusPaths bus_paths(const std::string& bus);

// The first of `relative` paths (from the running executable's directory) that is an
// executable file, or "" if none is.
std::string executable_beside_self(std::initializer_list<std::string_view> relative);

// mkdir -p with `mode` for the directories it creates.
Status make_dirs(const std::string& path, unsigned mode);

}  // namespace shmbus
