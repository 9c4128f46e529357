#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test: the plain build, then ASan+UBSan,
# then TSan on the ring's threaded tests. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}

echo "== build and test (RelWithDebInfo)"
bash scripts/build.sh build -DSHMBUS_TESTS=ON -DSHMBUS_BENCH=ON
ctest --test-dir build --output-on-failure --timeout 300

echo "== ASan + UBSan"
bash scripts/build.sh build-asan -DSHMBUS_SANITIZE=address -DSHMBUS_BENCH=OFF
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure --timeout 600

echo "== TSan (the ring under threads)"
bash scripts/build.sh build-tsan -DSHMBUS_SANITIZE=thread -DSHMBUS_BENCH=OFF
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
  ctest --test-dir build-tsan --output-on-failure --timeout 600 -L threads
