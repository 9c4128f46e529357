#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test: the plain build, then the Python
# module's pytest tests (python/tests), then a project
# using the library three ways (tests/consumer/run.sh), the Debian package
# (tests/package/run.sh), then ASan+UBSan, then TSan on the ring's threaded tests, then the
# libFuzzer targets for a few seconds each, then clang Release (the build type and compiler
# the other builds do not cover). Exits non-zero on the first failure; prints each stage's
# time at the end (and so far, when it fails).
set -euo pipefail
cd "$(dirname "$0")/.."
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
# Paths under the checkout's parent are hashed relative to the build directory, so that a
# git worktree beside this checkout shares its objects (and a developer's `build/` made with
# the same settings is this run's). The -g1 line tables of a hit may then name the other
# checkout's directory; nothing here reads them.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$(cd .. && pwd)} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}

# stage NAME: starts timing NAME (ending the stage before); the table prints on exit.
stage_names=() stage_secs=() stage_start=$SECONDS
stage() {
  stage_end
  stage_names+=("$1")
  stage_start=$SECONDS
  echo "== $1"
}
stage_end() {
  [ ${#stage_names[@]} -gt ${#stage_secs[@]} ] && stage_secs+=($((SECONDS - stage_start)))
  return 0
}
stage_table() {
  stage_end
  echo "== stage times (s)"
  for i in "${!stage_secs[@]}"; do printf '%6d  %s\n' "${stage_secs[$i]}" "${stage_names[$i]}"; done
  printf '%6d  total\n' "$SECONDS"
}
trap stage_table EXIT

stage "setup"
bash scripts/setup.sh

stage "build (RelWithDebInfo, GCC)"
# Line tables only (-g1): a quarter less compile time than -g; backtraces and perf still
# name file and line.
bash scripts/build.sh build -DSHMBUS_TESTS=ON -DSHMBUS_BENCH=ON -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG" \
  -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG"
stage "test (RelWithDebInfo)"
# -LE soak: the 10-minute kill-stress runs only when asked for (ctest -L soak); so does
# librdkafka's test suite against busd (ctest -L kafka-compat: minutes, and Debian's archive).
# The kill-stress test 30 s a mode (5 modes), as issue 11 asks; each runs on (up to as long
# again) until the paths it is named for were reached.
SHMBUS_STRESS_SECONDS=30 ctest --test-dir build --output-on-failure --timeout 300 -LE 'soak|python|kafka-compat'

stage "test (the Python module: pytest, python/tests)"
# Registered as the ctest test `python` (label python) with the build's busd and busctl.
grep -q '^SHMBUS_PYTHON:BOOL=ON' build/CMakeCache.txt || { echo "the Python module was not built (pybind11-dev, python3-dev?)"; exit 1; }
# --no-tests=error: a build that registered no such test (no pytest at configure time) fails here.
ctest --test-dir build --output-on-failure --timeout 600 --no-tests=error -L python

# Both build shmbus in Release as unity builds with warnings as errors: that is also this
# run's GCC Release compile check (and the second reuses the first's objects through ccache).
export SHMBUS_RELEASE_CMAKE_ARGS="-DCMAKE_UNITY_BUILD=ON -DSHMBUS_WERROR=ON"
stage "the library from another project: find_package, add_subdirectory, pkg-config (GCC Release, unity)"
bash tests/consumer/run.sh

stage "the Debian package: cpack, dpkg -i, use it, dpkg -r"
bash tests/package/run.sh
unset SHMBUS_RELEASE_CMAKE_ARGS

# The sanitizer and fuzz builds compile at -O1 with line tables only (-g1): half the time of
# -O2 -g under ASan, and the reports still name file and line.
sanitizer_flags=(-DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG")

stage "build (ASan + UBSan)"
# The library and programs as a unity build (tests never are: tests/CMakeLists.txt).
bash scripts/build.sh build-asan -DSHMBUS_SANITIZE=address -DSHMBUS_BENCH=OFF -DCMAKE_UNITY_BUILD=ON "${sanitizer_flags[@]}"
stage "test (ASan + UBSan)"
# The kill-stress test for 30 s a mode here too (up to 60 until its paths were reached): under
# ASan a process takes ~90 ms to start and a kill lands inside a claim about once in 5-10 s;
# 6-12 s met none in some modes.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
SHMBUS_STRESS_SECONDS=30 ctest --test-dir build-asan --output-on-failure --timeout 600 -LE 'soak|kafka-compat'
unset ASAN_OPTIONS UBSAN_OPTIONS

stage "build (TSan)"
# Only what runs under TSan (-L threads): the rest took 140 s more, cold, and never ran.
bash scripts/build.sh build-tsan -DSHMBUS_SANITIZE=thread -DSHMBUS_BENCH=OFF "${sanitizer_flags[@]}" -- shmbus_thread_tests
stage "test (TSan: the ring under threads)"
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
  ctest --test-dir build-tsan --output-on-failure --timeout 600 -L threads -LE soak

stage "build (libFuzzer targets: clang RelWithDebInfo, ASan+UBSan)"
CC=clang CXX=clang++ bash scripts/build.sh build-fuzz -DSHMBUS_FUZZ=ON -DSHMBUS_TESTS=OFF -DSHMBUS_BENCH=OFF "${sanitizer_flags[@]}"
stage "fuzz (briefly, from the seed corpora)"
for t in disk_log segment protocol busctl_args kafka kafka_handlers; do
  # A copy of the corpus: what the fuzzer adds stays out of the tree; crashes land in build-fuzz/.
  # The handlers start from the decoder's corpus (real client frames).
  work=$(mktemp -d)
  cp tests/fuzz/corpus/${t%_handlers}/* "$work"/
  if ! "build-fuzz/tests/fuzz/fuzz_$t" -max_total_time="${SHMBUS_FUZZ_SECONDS:-15}" -rss_limit_mb=2048 \
      -artifact_prefix="$PWD/build-fuzz/crash-$t-" "$work" > "$work.log" 2>&1; then
    tail -60 "$work.log"
    echo "fuzz_$t failed: the input is in build-fuzz/crash-$t-*"
    exit 1
  fi
  echo "fuzz_$t: $(grep -E '^Done' "$work.log")"
  rm -rf "$work" "$work.log"
done

# The library and the programs (not the tests) compile with GCC 12 and clang 14 in Release
# and RelWithDebInfo, warnings as errors: GCC RelWithDebInfo is the plain build above, GCC
# Release the consumer and package stages' build, clang RelWithDebInfo (at -O1) the fuzz
# build; this is the fourth, as a unity build.
stage "compile only: clang Release (libshmbus, busd, busctl; unity build)"
CXX=clang++ bash scripts/build.sh build-clang-Release -DCMAKE_BUILD_TYPE=Release \
  -DSHMBUS_TESTS=OFF -DSHMBUS_BENCH=OFF -DSHMBUS_INSTALL=OFF -DCMAKE_UNITY_BUILD=ON -- shmbus_lib busd busctl
