// Where a bus keeps its files outside /dev/shm: busd's socket and lock (runtime dir) and
// persisted state such as committed offsets (state dir). docs/busd.md.
#pragma once

#include <initializer_list>
#include <optional>
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
  // A bus shared with a Unix group: the group, and the directories of that group the two
  // dirs lie in (/tmp/shmbus-g<gid>, /var/tmp/shmbus-g<gid>), which secure_bases() makes
  // sure are the group's before anything goes in them.
  std::optional<unsigned> gid;
  std::vector<std::string> shared_bases;
};

// The Unix group a bus is shared with: its registry's group, if the registry in /dev/shm
// gives its group access (Bus::attach with BusOptions::group); else none.
std::optional<unsigned> bus_group(const std::string& bus);

// SHMBUS_DIR=<dir>: both are <dir>/<bus>. Else root: /run/shmbus/<bus> and
// /var/lib/shmbus/<bus>; others: $XDG_RUNTIME_DIR/shmbus/<bus> (or /tmp/shmbus-<uid>/<bus>)
// and $XDG_STATE_HOME/shmbus/<bus> (or ~/.local/state/shmbus/<bus> if $HOME is a directory
// of ours, else /var/tmp/shmbus-<uid>/<bus>): nothing needs a home directory. A socket path
// that would pass the 107-byte limit of sun_path uses a hashed directory name instead of
// the bus name. A bus shared with a Unix group (bus_group) has one busd whoever starts it:
// unless SHMBUS_DIR is set, every user, root too, uses /tmp/shmbus-g<gid>/<bus> and
// /var/tmp/shmbus-g<gid>/<bus>. docs/naming.md.
BusPaths bus_paths(const std::string& bus);

// Creates `dir` (0700) if it is missing (and `create`) and refuses it, naming it and what is wrong, unless
// it is a directory, not a symbolic link, owned by our effective uid, with no group or
// other permission bits: a directory in /tmp may have been made by someone else first.
Status private_dir(const std::string& dir, bool create = true);

// The directory of a group-shared bus's files in a directory everybody may write: creates
// `dir` (02770, group `gid`) if it is missing (and `create`) and refuses it, naming it and
// what is wrong, unless it is a directory, not a symbolic link, of group `gid` with all
// group and no other permission bits, owned by root, by us or by a member of the group.
Status shared_dir(const std::string& dir, unsigned gid, bool create = true);

// Gives a file of a shared bus to its group: group `gid` and mode 0660, whatever the umask.
// A file another member made (not ours to change) is left as it is.
void share_with_group(int fd, unsigned gid);

// Whether `uid` belongs to group `gid` (as its primary group, or listed in the group).
bool uid_in_group(unsigned uid, unsigned gid);

// private_dir() for each of `p.private_bases`, shared_dir() for each of `p.shared_bases`;
// before busd, or a topic's config, puts anything under them.
Status secure_bases(const BusPaths& p);

// The first of `relative` paths (from the running executable's directory) that is an
// executable file, or "" if none is.
std::string executable_beside_self(std::initializer_list<std::string_view> relative);

// mkdir -p with `mode` for the directories it creates (whatever the umask, if the mode has
// group bits). With `gid`: those are of group `gid`, and setgid, so that what is made in
// them is the group's too.
Status make_dirs(const std::string& path, unsigned mode, std::optional<unsigned> gid = std::nullopt);

}  // namespace shmbus
