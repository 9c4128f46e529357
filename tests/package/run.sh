#!/usr/bin/env bash
# The Debian package (cmake/package.cmake) as a user gets it: built with `cpack -G DEB`,
# installed with `dpkg -i`, then used only through what it installed: shmbus-busctl, a
# produce/consume round trip, a group consumer that starts the installed busd, and
# tests/consumer built against the installed CMake package and shmbus.pc. Then `dpkg -r`,
# and every file the package listed must be gone. Needs root (CI: a fresh Debian 12).
# The package, the bus and the temporary directory are removed even when a check fails.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
consumer_src=$src/tests/consumer
if [ "$(id -u)" -ne 0 ]; then echo "package/run.sh: needs root (dpkg -i)" >&2; exit 1; fi
if dpkg-query -W -f='${Status}' shmbus 2>/dev/null | grep -q "ok installed"; then
  echo "package/run.sh: a shmbus package is installed already; leaving it alone" >&2
  exit 1
fi
unset SHMBUS_BUSD SHMBUS_BUS SHMBUS_DIR SHMBUS_NO_AUTOSTART CMAKE_PREFIX_PATH PKG_CONFIG_PATH
tmp=$(mktemp -d /tmp/shmbus-package.XXXXXX)
bus=package-$$-$RANDOM
installed=0
cleanup() {
  if [ "$installed" = 1 ]; then
    /usr/bin/shmbus-busctl --bus "$bus" bus delete --purge >/dev/null 2>&1 || true
    dpkg -r shmbus >/dev/null 2>&1 || echo "package/run.sh: dpkg -r shmbus failed: remove it by hand" >&2
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "package/run.sh: $*" >&2; exit 1; }
quiet() { "$@" > "$tmp/log" 2>&1 || { cat "$tmp/log"; fail "failed: $*"; }; }
launcher=()
if command -v ccache >/dev/null; then launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache); fi

echo "== build the package (Release, prefix /usr, library and programs only)"
quiet cmake -S "$src" -B "$tmp/build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX=/usr \
  -DSHMBUS_TESTS=OFF -DSHMBUS_BENCH=OFF "${launcher[@]}" ${SHMBUS_RELEASE_CMAKE_ARGS:-}
quiet cmake --build "$tmp/build" -j2
(cd "$tmp/build" && quiet cpack -G DEB)
deb=$(ls "$tmp"/build/shmbus_*.deb)
echo "$(basename "$deb"): $(dpkg-deb -f "$deb" Depends)"

echo "== what it holds"
dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|; s|/$||' > "$tmp/contents"
for want in /usr/bin/shmbus-busctl /usr/libexec/shmbus/busd /usr/libexec/shmbus/busctl \
    /usr/lib/systemd/system/busd@.service /usr/share/man/man1/shmbus-busctl.1 /usr/share/man/man8/busd.8 \
    /usr/include/shmbus/bus.h; do
  grep -qx "$want" "$tmp/contents" || fail "the package has no $want"
done
grep -q '/libshmbus\.a$' "$tmp/contents" || fail "the package has no libshmbus.a"
grep -q '/cmake/shmbus/shmbusConfig\.cmake$' "$tmp/contents" || fail "the package has no shmbusConfig.cmake"
grep -q '/pkgconfig/shmbus\.pc$' "$tmp/contents" || fail "the package has no shmbus.pc"
! grep -qx /usr/bin/busctl "$tmp/contents" || fail "the package would overwrite systemd's /usr/bin/busctl"
grep -q '^/usr/lib/python3/dist-packages/shmbus\.cpython-.*\.so$' "$tmp/contents" || fail "the package has no Python module"
grep -qx /usr/lib/python3/dist-packages/shmbus.pyi "$tmp/contents" || fail "the package has no shmbus.pyi"
for lib in libfmt9 libxxhash0; do
  dpkg-deb -f "$deb" Depends | grep -q "$lib" || fail "Depends does not name $lib"
done
# What exists before: dpkg -r leaves directories other packages share (/usr/bin, ...).
while read -r p; do [ -e "$p" ] && echo "$p"; done < "$tmp/contents" > "$tmp/before"

echo "== dpkg -i"
installed=1
quiet dpkg -i "$deb"
if shmbus-busctl --help | grep -q -- '--version'; then
  shmbus-busctl --version
else
  quiet shmbus-busctl --help  # no --version in this busctl yet
fi
if command -v groff >/dev/null; then
  for page in /usr/share/man/man1/shmbus-busctl.1 /usr/share/man/man8/busd.8; do
    groff -man -ww -z "$page" 2> "$tmp/groff" || fail "groff cannot read $page"
    [ ! -s "$tmp/groff" ] || { cat "$tmp/groff"; fail "groff warns about $page"; }
  done
fi
grep -q '^ExecStart=/usr/libexec/shmbus/busd --bus %i' /usr/lib/systemd/system/busd@.service ||
  fail "busd@.service does not run the installed busd"

echo "== produce and consume with the installed shmbus-busctl"
quiet shmbus-busctl --bus "$bus" topic create t --partitions 2
printf 'a\nb\nc\n' | quiet shmbus-busctl --bus "$bus" produce t
shmbus-busctl --bus "$bus" consume t --from earliest --count 3 --timeout-ms 5000 > "$tmp/out"
[ "$(sort "$tmp/out" | tr '\n' ' ')" = "a b c " ] || fail "consume printed: $(cat "$tmp/out")"

echo "== the Python module: the system python3 imports it, produces and consumes"
(cd "$tmp" && PYTHONPATH= /usr/bin/python3 - "$bus" > "$tmp/out") <<'EOF2' || fail "the Python module failed: $(cat "$tmp/out")"
import sys, shmbus
assert shmbus.__file__.startswith("/usr/lib/python3/dist-packages/"), shmbus.__file__
bus = {"bus": sys.argv[1]}
shmbus.AdminClient(bus).create_topics([shmbus.NewTopic("py", 1)])["py"].result()
shmbus.Producer(bus).produce("py", b"from-python")
c = shmbus.Consumer(bus)
c.assign([shmbus.TopicPartition("py", 0, shmbus.OFFSET_BEGINNING)])
m = c.poll(5.0)
assert m is not None and m.value() == b"from-python", m
print("ok")
EOF2
grep -qx ok "$tmp/out" || fail "the Python module printed: $(cat "$tmp/out")"

echo "== a group consumer starts the installed busd"
shmbus-busctl --bus "$bus" consume t --group g --count 3 --timeout-ms 10000 > "$tmp/out"
[ "$(sort "$tmp/out" | tr '\n' ' ')" = "a b c " ] || fail "the group consumer printed: $(cat "$tmp/out")"
busd_pid=$(cat "/run/shmbus/$bus/busd.lock")
[ "$(readlink "/proc/$busd_pid/exe")" = /usr/libexec/shmbus/busd ] ||
  fail "the busd that runs is $(readlink "/proc/$busd_pid/exe"), not /usr/libexec/shmbus/busd"

echo "== tests/consumer against the installed package: find_package and pkg-config"
quiet cmake -S "$consumer_src" -B "$tmp/a" -DSHMBUS_FROM=package -DCMAKE_BUILD_TYPE=Release "${launcher[@]}"
quiet cmake --build "$tmp/a"
quiet "$tmp/a/consumer"
mkdir -p "$tmp/c"
# shellcheck disable=SC2046
quiet ${CXX:-c++} -std=c++20 -O2 -Wall -Wextra -o "$tmp/c/consumer" "$consumer_src/main.cpp" $(pkg-config --cflags --libs shmbus)
quiet "$tmp/c/consumer"

echo "== dpkg -r removes every file it installed"
quiet shmbus-busctl --bus "$bus" bus delete --purge
for _ in $(seq 50); do kill -0 "$busd_pid" 2>/dev/null || break; sleep 0.1; done
! kill -0 "$busd_pid" 2>/dev/null || fail "busd (pid $busd_pid) is still running after bus delete"
dpkg -L shmbus > "$tmp/listed"
quiet dpkg -r shmbus
installed=0
left=()
while read -r p; do
  [ -e "$p" ] || [ -L "$p" ] || continue
  grep -qx "$p" "$tmp/before" || left+=("$p")
done < "$tmp/listed"
[ ${#left[@]} -eq 0 ] || fail "dpkg -r left: ${left[*]}"
echo "package check: passed ($(wc -l < "$tmp/listed") paths installed and removed)"
