#!/usr/bin/env bash
# run.sh BUSD BUSCTL [TEST...]: librdkafka's own test suite (tests/ of Debian's source package,
# the version of the installed librdkafka-dev) against busd's Kafka listener (docs/kafka.md,
# "librdkafka's test suite"). Fetches the source with apt-get into a cache dir (reused),
# builds its test-runner against the installed static librdkafka, starts busd on a bus and a
# free loopback port of its own, runs each test of allowlist.txt (or the TESTs named) alone
# with a timeout, prints PASS/FAIL a test, removes the bus, and exits 1 if any failed.
# Environment: KAFKA_COMPAT_CACHE (default: kafka-compat beside BUSD, i.e. in the build dir), KAFKA_COMPAT_TIMEOUT
# (seconds a test, default 180), KAFKA_COMPAT_LOGS (keep every test's log there),
# KAFKA_COMPAT_QUICK=1 (the runner's quick mode: less data, and most subtests skipped).
# Takes no lock itself: run it (or ctest -L kafka-compat) under the caller's build lock.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 2 ] || { echo "usage: run.sh BUSD BUSCTL [TEST...]" >&2; exit 2; }
busd=$(realpath "$1") busctl=$(realpath "$2")
shift 2
cache=${KAFKA_COMPAT_CACHE:-$(dirname "$busd")/kafka-compat}
per_test=${KAFKA_COMPAT_TIMEOUT:-180}
fail() { echo "kafka_compat: $*" >&2; exit 1; }

if [ $# -gt 0 ]; then
  tests=("$@")
else
  mapfile -t tests < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$here/allowlist.txt" | awk '{print $1}')
fi
for t in "${tests[@]}"; do [[ $t =~ ^[0-9]{4}$ ]] || fail "not a test number (4 digits): $t"; done

# --- the source: Debian's, the same version as the installed library it is linked with.
version=$(dpkg-query -W -f='${source:Version}' librdkafka-dev 2>/dev/null) ||
  fail "librdkafka-dev is not installed (scripts/setup.sh)"
upstream=${version%-*}
upstream=${upstream#*:}
src=$cache/librdkafka-$upstream
start=$SECONDS
if [ ! -f "$src/tests/test.c" ]; then
  echo "== fetching librdkafka $version's source into $cache"
  apt=$cache/apt
  mkdir -p "$apt/lists/partial" "$cache/dl"
  # A private deb-src list: the system's apt configuration stays as it is.
  uris=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  printf 'Types: deb-src\nURIs: %s\nSuites: bookworm\nComponents: main\nSigned-By: %s\n' \
    "${uris:-http://deb.debian.org/debian}" /usr/share/keyrings/debian-archive-keyring.gpg > "$apt/deb-src.sources"
  aptopts=(-q -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt" -o "Dir::State::Lists=$apt/lists")
  apt-get "${aptopts[@]}" update > "$cache/fetch.log" 2>&1 || { cat "$cache/fetch.log"; fail "apt-get update (deb-src) failed"; }
  (cd "$cache/dl" && apt-get "${aptopts[@]}" source --download-only "librdkafka=$version") >> "$cache/fetch.log" 2>&1 ||
    { cat "$cache/fetch.log"; fail "apt-get source librdkafka=$version failed"; }
  rm -rf "$src.tmp" && mkdir -p "$src.tmp"
  tar -xzf "$cache/dl/librdkafka_${upstream}.orig.tar.gz" -C "$src.tmp" --strip-components=1
  mv "$src.tmp" "$src"
fi
fetched=$SECONDS

# --- the test-runner: the tests' own Makefile, linked with the installed librdkafka.a (which
# has the internal symbols the tests call) instead of building the library from source.
# configure again only when what it looks for changed (RapidJSON: the statistics tests).
configured="librdkafka $version, rapidjson $(dpkg-query -W -f='${Version}' rapidjson-dev 2>/dev/null || echo none)"
if [ ! -f "$src/config.h" ] || [ "$(cat "$src/.shmbus-configured" 2>/dev/null)" != "$configured" ]; then
  (cd "$src" && ./configure) > "$cache/configure.log" 2>&1 || { cat "$cache/configure.log"; fail "configure failed"; }
  echo "$configured" > "$src/.shmbus-configured"
fi
libdir=$(pkg-config --variable=libdir rdkafka)
ln -sf "$libdir/librdkafka.a" "$src/src/librdkafka.a"
ln -sf "$libdir/librdkafka++.a" "$src/src-cpp/librdkafka++.a"
cc=gcc cxx=g++
if command -v ccache > /dev/null; then cc="ccache gcc" cxx="ccache g++"; fi
# -o interceptor_test: the plugin of test 0066 (not run) would link the library again.
make -C "$src/tests" -j2 -o interceptor_test CC="$cc" CXX="$cxx" \
  LIBS="$(pkg-config --static --libs rdkafka++ rdkafka)" test-runner > "$cache/build.log" 2>&1 ||
  { tail -40 "$cache/build.log"; fail "building test-runner failed (log: $cache/build.log)"; }
built=$SECONDS

# --- busd on a bus of its own; runtime and state dirs under a temporary SHMBUS_DIR.
work=$(mktemp -d /tmp/shmbus-kafka-compat.XXXXXX)
export SHMBUS_DIR=$work/shmbus
mkdir -m 0700 "$SHMBUS_DIR"
unset SHMBUS_BUS SHMBUS_BUSD
bus=kcompat-$$-$RANDOM
busd_pid= runner=
cleanup() {
  if [ -n "$runner" ]; then kill "$runner" 2> /dev/null || true; wait "$runner" 2> /dev/null || true; fi
  if [ -n "$busd_pid" ]; then kill "$busd_pid" 2> /dev/null || true; wait "$busd_pid" 2> /dev/null || true; fi
  "$busctl" --bus "$bus" bus delete --purge > /dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 143' TERM INT  # ctest's timeout: the EXIT trap still cleans up
# 4 partitions for the topics the tests leave to auto-creation: their broker's num.partitions
# (tests/scenarios/default.json), which many tests produce to partitions 0-3 of.
"$busd" --bus "$bus" --kafka-listen 127.0.0.1:0 --kafka-partitions 4 > "$work/busd.log" 2>&1 &
busd_pid=$!
address=
for _ in $(seq 100); do
  address=$("$busctl" --bus "$bus" --json status 2> /dev/null | python3 -c \
    'import json,sys; print(json.load(sys.stdin).get("listeners",{}).get("kafka",{}).get("address",""))' 2> /dev/null) || true
  [ -n "$address" ] && break
  kill -0 "$busd_pid" 2> /dev/null || { cat "$work/busd.log"; fail "busd exited"; }
  sleep 0.1
done
[ -n "$address" ] || { cat "$work/busd.log"; fail "busd's Kafka listener did not come up in 10 s"; }
echo "== busd on bus $bus, Kafka listener $address; ${#tests[@]} tests, ${per_test} s each at most"
printf 'bootstrap.servers=%s\n' "$address" > "$work/test.conf"

# --- each test alone: -L no mock-cluster tests (they never reach busd). Full mode: the quick
# one (-Q, KAFKA_COMPAT_QUICK=1) skips every SUB_TEST() not marked quick, which leaves some
# tests (0018, 0019, 0102...) passing without doing anything. From the tests dir: some read
# files there (../src/statistics_schema.json).
quick=()
[ "${KAFKA_COMPAT_QUICK:-0}" = 1 ] && quick=(-Q)
failed=()
for t in "${tests[@]}"; do
  log=$work/$t.log
  t0=$SECONDS
  rc=0
  (cd "$src/tests" && RDKAFKA_TEST_CONF=$work/test.conf TESTS=$t TEST_KAFKA_VERSION=2.4.0.0 \
    exec timeout -k 10 "$per_test" ./test-runner -p1 "${quick[@]}" -L) > "$log" 2>&1 &
  runner=$!
  wait "$runner" 2> /dev/null || rc=$?
  runner=
  # Passed: a row of the runner's summary says so (a test it skipped, for its flags or the
  # broker version, ran nothing: not a pass).
  if [ $rc -eq 0 ] && sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -qE "^\| +${t}_[a-z0-9_]+ +\| +PASSED"; then
    printf 'PASS %s %4ds\n' "$t" $((SECONDS - t0))
  else
    [ $rc -eq 124 ] && why="timed out" || why="exit $rc"
    printf 'FAIL %s %4ds (%s)\n' "$t" $((SECONDS - t0)) "$why"
    # Why: the line after the runner's "### Test ... failed at ..." or its SKIPPED rows.
    sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -a -E -A1 '^### Test|SKIPPED +\|' | grep -v -E '^### |^--' | head -3 |
      sed 's/^/     /'
    failed+=("$t")
  fi
  [ -n "${KAFKA_COMPAT_LOGS:-}" ] && mkdir -p "$KAFKA_COMPAT_LOGS" && cp "$log" "$KAFKA_COMPAT_LOGS/"
  kill -0 "$busd_pid" 2> /dev/null || { cat "$work/busd.log"; fail "busd died during test $t"; }
done
echo "== fetch $((fetched - start)) s, build $((built - fetched)) s, tests $((SECONDS - built)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "== FAILED: ${failed[*]}"
  exit 1
fi
echo "== all ${#tests[@]} passed"
