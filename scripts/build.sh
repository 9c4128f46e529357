#!/usr/bin/env bash
# build.sh DIR [cmake args...]: configure and build with -j2 (the machines have 2 cores).
set -euo pipefail
dir=$1; shift
cmake -S "$(dirname "$0")/.." -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
cmake --build "$dir" -j2
