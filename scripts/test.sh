#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test: the plain build, then a project
# using the library three ways (tests/consumer/run.sh), the Debian package
# (tests/package/run.sh), then ASan+UBSan,
# then TSan on the ring's threaded tests, then the libFuzzer targets for a few seconds each.
# Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}

echo "== build and test (RelWithDebInfo)"
bash scripts/build.sh build -DSHMBUS_TESTS=ON -DSHMBUS_BENCH=ON
# -LE soak: the 10-minute kill-stress runs only when asked for (ctest -L soak).
ctest --test-dir build --output-on-failure --timeout 300 -LE soak

echo "== the library from another project: find_package, add_subdirectory, pkg-config"
bash tests/consumer/run.sh

echo "== the Debian package: cpack, dpkg -i, use it, dpkg -r"
bash tests/package/run.sh

echo "== ASan + UBSan"
bash scripts/build.sh build-asan -DSHMBUS_SANITIZE=address -DSHMBUS_BENCH=OFF
# The kill-stress test for 10 s a mode here: ASan is slower and it ran 30 s above.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 SHMBUS_STRESS_SECONDS=10 \
  ctest --test-dir build-asan --output-on-failure --timeout 600 -LE soak

echo "== TSan (the ring under threads)"
bash scripts/build.sh build-tsan -DSHMBUS_SANITIZE=thread -DSHMBUS_BENCH=OFF
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
  ctest --test-dir build-tsan --output-on-failure --timeout 600 -L threads -LE soak

echo "== libFuzzer targets (clang, ASan+UBSan), briefly from their seed corpora"
CC=clang CXX=clang++ bash scripts/build.sh build-fuzz -DSHMBUS_FUZZ=ON -DSHMBUS_TESTS=OFF -DSHMBUS_BENCH=OFF
for t in disk_log segment protocol busctl_args; do
  # A copy of the corpus: what the fuzzer adds stays out of the tree; crashes land in build-fuzz/.
  work=$(mktemp -d)
  cp tests/fuzz/corpus/$t/* "$work"/
  if ! "build-fuzz/tests/fuzz/fuzz_$t" -max_total_time="${SHMBUS_FUZZ_SECONDS:-15}" -rss_limit_mb=2048 \
      -artifact_prefix="$PWD/build-fuzz/crash-$t-" "$work" > "$work.log" 2>&1; then
    tail -60 "$work.log"
    echo "fuzz_$t failed: the input is in build-fuzz/crash-$t-*"
    exit 1
  fi
  echo "fuzz_$t: $(grep -E '^Done' "$work.log")"
  rm -rf "$work" "$work.log"
done
