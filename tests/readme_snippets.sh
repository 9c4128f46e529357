#!/usr/bin/env bash
# readme_snippets.sh compare SRC: README.md's ```cpp blocks, in order, are the snippets of
#   examples/quickstart.cpp, group.cpp and spill.cpp: each example's lines between
#   `// README:begin` and `// README:end` (several regions are joined), each region without
#   its common indentation. A difference is printed as a diff.
# readme_snippets.sh run SRC BUSCTL BINDIR: runs the three built examples on a bus of their
#   own, with SHMBUS_DIR in a temporary directory; removes the bus and the directory after.
set -euo pipefail
mode=$1
src=$2
examples=(quickstart group spill)

# The snippet of one example file, on stdout.
snippet() {
  awk '
    /\/\/ README:begin$/ { inside = 1; n = 0; indent = 1000; next }
    /\/\/ README:end$/ {
      for (i = 1; i <= n; i++) print (length(line[i]) ? substr(line[i], indent + 1) : "")
      inside = 0; next
    }
    inside {
      line[++n] = $0
      if (length($0)) { match($0, /^ */); if (RLENGTH < indent) indent = RLENGTH }
    }
  ' "$1"
}

# The k-th (from 1) ```cpp block of README.md, on stdout.
readme_block() {
  awk -v want="$2" '
    /^```cpp$/ { k++; inside = (k == want); next }
    /^```$/ { inside = 0; next }
    inside { print }
  ' "$1"
}

case $mode in
compare)
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  blocks=$(grep -c '^```cpp$' "$src/README.md" || true)
  [ "$blocks" -eq ${#examples[@]} ] || {
    echo "README.md has $blocks C++ blocks, examples/ has ${#examples[@]} (${examples[*]}): add the example or the block" >&2
    exit 1
  }
  status=0
  for i in "${!examples[@]}"; do
    ex=${examples[$i]}
    snippet "$src/examples/$ex.cpp" > "$tmp/example"
    readme_block "$src/README.md" $((i + 1)) > "$tmp/readme"
    [ -s "$tmp/example" ] || { echo "examples/$ex.cpp has no README:begin/end region" >&2; status=1; continue; }
    if ! diff -u --label "README.md, C++ block $((i + 1))" --label "examples/$ex.cpp (README regions)" \
        "$tmp/readme" "$tmp/example"; then
      status=1
    fi
  done
  [ $status -eq 0 ] && echo "README.md's ${#examples[@]} C++ blocks are the examples' snippets"
  exit $status
  ;;
run)
  busctl=$3
  bindir=$4
  bus=readme-$$-$RANDOM
  dir=$(mktemp -d /tmp/shmbus-readme.XXXXXX)
  export SHMBUS_BUS=$bus SHMBUS_DIR=$dir
  unset SHMBUS_BUSD SHMBUS_NO_AUTOSTART
  cleanup() {
    "$busctl" --bus "$bus" bus delete --purge >/dev/null 2>&1 || true
    rm -rf "$dir"
  }
  trap cleanup EXIT
  for ex in "${examples[@]}"; do
    echo "-- $ex"
    "$bindir/shmbus_example_$ex" || { echo "examples/$ex.cpp failed (exit $?)" >&2; exit 1; }
  done
  # What they made is there: the topics, and the spilled topic's config in the state dir.
  "$busctl" --bus "$bus" topic list > "$dir/topics"
  grep -q orders "$dir/topics" && grep -q audit "$dir/topics" || { cat "$dir/topics"; exit 1; }
  [ -f "$dir/$bus/topics/audit.json" ] || { echo "no config of the spilled topic under $dir/$bus" >&2; exit 1; }
  echo "the README's examples ran"
  ;;
*)
  echo "usage: readme_snippets.sh compare SRC | run SRC BUSCTL BINDIR" >&2
  exit 2
  ;;
esac
