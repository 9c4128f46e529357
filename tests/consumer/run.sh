#!/usr/bin/env bash
# The three ways a project uses shmbus, each building tests/consumer/ (a producer and a group
# consumer, so the installed or built busd has to be found) and running it:
#   (a) find_package(shmbus CONFIG) after `cmake --install` into a temporary prefix
#   (b) add_subdirectory() of this source tree
#   (c) pkg-config shmbus against the same prefix
# Nothing from the caller's environment is relied on: the prefix reaches the builds only
# through CMAKE_PREFIX_PATH / PKG_CONFIG_PATH set here. Temporary directories are removed.
# Builds are Release (no -g, so ccache hits across build directories). SHMBUS_RELEASE_CMAKE_ARGS:
# more arguments for the builds of shmbus (scripts/test.sh: a unity build, warnings as errors).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
unset SHMBUS_BUSD SHMBUS_BUS SHMBUS_NO_AUTOSTART CMAKE_PREFIX_PATH PKG_CONFIG_PATH
tmp=$(mktemp -d /tmp/shmbus-consumer.XXXXXX)
# The busd a check started exits on its own once its bus is deleted (within a second or
# so): wait for it before removing the directory it runs from.
cleanup() {
  for _ in $(seq 50); do pgrep -f "^$tmp/" >/dev/null || break; sleep 0.1; done
  rm -rf "$tmp"
}
trap cleanup EXIT
prefix=$tmp/prefix
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi
quiet() { "$@" > "$tmp/log" 2>&1 || { cat "$tmp/log"; echo "run.sh: failed: $*" >&2; exit 1; }; }

echo "== shmbus: build and install into a temporary prefix"
# Only what is installed: tests and benchmarks built here would never run (a minute on CI).
quiet cmake -S "$src" -B "$tmp/shmbus" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$prefix" \
  -DSHMBUS_TESTS=OFF -DSHMBUS_BENCH=OFF "${launcher[@]}" ${SHMBUS_RELEASE_CMAKE_ARGS:-}
quiet cmake --build "$tmp/shmbus" -j2
quiet cmake --install "$tmp/shmbus"

# The Python module (when configured: pybind11 found) and its stubs in the prefix's
# dist-packages, importable from there by PYTHONPATH alone.
if grep -q '^SHMBUS_PYTHON:BOOL=ON' "$tmp/shmbus/CMakeCache.txt"; then
  echo "== the Python module in the prefix"
  pydir=$(sed -n 's/^SHMBUS_PYTHON_INSTALL_DIR:[A-Z]*=//p' "$tmp/shmbus/CMakeCache.txt")
  case $pydir in /*) ;; *) pydir=$prefix/$pydir ;; esac
  python=$(sed -n 's/^_Python3_EXECUTABLE:[A-Z]*=//p' "$tmp/shmbus/CMakeCache.txt")
  for f in "$pydir"/shmbus.cpython-*.so "$pydir"/shmbus.pyi; do
    [ -f "$f" ] || { echo "run.sh: not installed: $f" >&2; ls -R "$prefix" >&2; exit 1; }
  done
  (cd "$tmp" && PYTHONPATH=$pydir timeout 60 "${python:-python3}" -c '
import os, sys, shmbus
assert os.path.dirname(os.path.realpath(shmbus.__file__)) == os.path.realpath(sys.argv[1]), shmbus.__file__
print("imported shmbus", shmbus.__version__, "from", shmbus.__file__)' "$pydir")
else
  echo "== the Python module was not configured (no pybind11): not checked"
fi

echo "== (a) find_package(shmbus CONFIG)"
quiet cmake -S "$here" -B "$tmp/a" -DSHMBUS_FROM=package -DCMAKE_PREFIX_PATH="$prefix" "${launcher[@]}"
quiet cmake --build "$tmp/a"
"$tmp/a/consumer"

echo "== (b) add_subdirectory(shmbus)"
quiet cmake -S "$here" -B "$tmp/b" -DSHMBUS_FROM=subdirectory -DSHMBUS_SOURCE="$src" -DCMAKE_BUILD_TYPE=Release \
  "${launcher[@]}" ${SHMBUS_RELEASE_CMAKE_ARGS:-}
quiet cmake --build "$tmp/b" -j2 --target consumer   # busd comes with the library
"$tmp/b/consumer"

echo "== (c) pkg-config shmbus"
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
[ -d "$prefix/lib64/pkgconfig" ] && PKG_CONFIG_PATH=$prefix/lib64/pkgconfig
mkdir -p "$tmp/c"
# shellcheck disable=SC2046
quiet ${CXX:-c++} -std=c++20 -O2 -Wall -Wextra -o "$tmp/c/consumer" "$here/main.cpp" \
  $(pkg-config --cflags --libs shmbus)
"$tmp/c/consumer"
echo "consumer check: all three ways passed"
