#!/usr/bin/env bash
# build.sh DIR [cmake args...] [-- targets...]: configure and build with -j2 (the machines
# have 2 cores). Without targets, everything. Warnings are errors here (SHMBUS_WERROR): our
# CI and developer builds, never a user's.
set -euo pipefail
dir=$1; shift
args=(); targets=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then shift; targets=("$@"); break; fi
  args+=("$1"); shift
done
cmake -S "$(dirname "$0")/.." -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHMBUS_WERROR=ON "${args[@]}" >/dev/null
if [ ${#targets[@]} -gt 0 ]; then
  cmake --build "$dir" -j2 --target "${targets[@]}"
else
  cmake --build "$dir" -j2
fi
