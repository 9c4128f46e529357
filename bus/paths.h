// Where a bus keeps its files outside /dev/shm: busd's socket and lock (runtime dir) and
// persisted state such as committed offsets (state dir). docs/busd.md.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "shmbus/error.h"

namespace shmbus {

struct BusPaths {
  std::string runtime_dir;  // socket, lock
  std::string state_dir;    // offsets.log
  std::string socket;
  std::string lock;
  // The per-uid directories in a directory everybody may write (/tmp, /var/tmp) that the
  // two above lie in: secure_bases() makes sure each is ours before anything goes in it.
  std::vector<std::string> private_bases;
};

// SHMBUS_DIR=<dir>: both are <dir>/<bus>. Else root: /run/shmbus/<bus> and
// /var/lib/shmbus/<bus>; others: $XDG_RUNTIME_DIR/shmbus/<bus> (or /tmp/shmbus-<uid>/<bus>)
// and $XDG_STATE_HOME/shmbus/<bus> (or ~/.local/state/shmbus/<bus> if $HOME is a directory
// of ours, else /var/tmp/shmbus-<uid>/<bus>): nothing needs a home directory. A socket path
// that would pass the 107-byte limit of sun_path uses a hashed directory name instead of
// the bus name. docs/naming.md.
BusPaths bus_paths(const std::string& bus);

// Where a spilled topic's config is kept (how it comes back after a reboot): its directory
// in the state dir, and the file of one topic.
std::string topics_dir(const std::string& bus);
std::string topic_config_path(const std::string& bus, const std::string& topic);

// Creates `dir` (0700) if it is missing (and `create`) and refuses it, naming it and what is wrong, unless
// it is a directory, not a symbolic link, owned by our effective uid, with no group or
// other permission bits: a directory in /tmp may have been made by someone else first.
Status private_dir(const std::string& dir, bool create = true);

// private_dir() for each of `p.private_bases`; before busd, or a topic's config, puts
// anything under them.
Status secure_bases(const BusPaths& p);

// The first of `relative` paths (from the running executable's directory) that is an
// executable file, or "" if none is.
std::string executable_beside_self(std::initializer_list<std::string_view> relative);

// mkdir -p with `mode` for the directories it creates.
Status make_dirs(const std::string& path, unsigned mode);

}  // namespace shmbus
