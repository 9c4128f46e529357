#!/usr/bin/env bash
# instructions.sh [BUILD_DIR]: instructions per sent record and per polled record, from the
# send and poll micro-benchmarks of shmbus_micro (bench/micro.cpp).
#
# How: each benchmark runs twice with a fixed iteration count (SHMBUS_MICRO_ITERATIONS, N1
# then N2); the difference of the two instruction counts over (N2 - N1) iterations is what
# one iteration costs, with the process's setup (bus, topic, first-touch paths) gone.
# - sends: the whole program is counted; the benchmark's loop does only the send (plus
#   Google Benchmark's loop instructions). `perf stat -e instructions:u` when this machine
#   has the counter, else callgrind. Two rows also count only inside the send call.
# - polls: only the instructions inside Consumer::poll (callgrind --toggle-collect, callees
#   included), so the send in the same loop does not count. Always callgrind.
# Under callgrind these are instructions retired in user space by the simulated CPU, which
# are the same instructions; neither tool counts the kernel.
set -euo pipefail
build=${1:-build}
micro=$build/bench/shmbus_micro
[ -x "$micro" ] || { echo "instructions.sh: no $micro (build shmbus_micro first)" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "instructions.sh: needs valgrind (apt-get install valgrind)" >&2; exit 2; }
tmp=$(mktemp -d /tmp/shmbus-instructions.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

use_perf=0
if perf stat -x, -e instructions:u true 2>&1 >/dev/null | grep -q '^[0-9]'; then use_perf=1; fi

# count FILTER N [TOGGLE]: instructions of one run of the benchmarks matching FILTER with
# N iterations; with TOGGLE only those inside functions matching it.
count() {
  local filter=$1 n=$2 toggle=${3:-}
  if [ -z "$toggle" ] && [ $use_perf = 1 ]; then
    SHMBUS_MICRO_ITERATIONS=$n perf stat -x, -e instructions:u -o "$tmp/perf" \
      "$micro" --benchmark_filter="$filter" >/dev/null 2>&1
    awk -F, '/instructions/ {print $1}' "$tmp/perf"
  else
    local args=(--tool=callgrind --callgrind-out-file="$tmp/cg")
    [ -n "$toggle" ] && args+=(--toggle-collect="$toggle")
    SHMBUS_MICRO_ITERATIONS=$n valgrind "${args[@]}" "$micro" --benchmark_filter="$filter" >/dev/null 2>&1
    awk '/^(summary|totals):/ {print $2; exit}' "$tmp/cg"
  fi
}

# row LABEL FILTER N1 N2 RECORDS_PER_ITERATION [TOGGLE]
row() {
  local label=$1 filter=$2 n1=$3 n2=$4 per=$5 toggle=${6:-}
  local a b tool
  a=$(count "$filter" "$n1" "$toggle")
  b=$(count "$filter" "$n2" "$toggle")
  if [ -z "$a" ] || [ -z "$b" ]; then
    echo "instructions.sh: no count for $filter" >&2
    exit 1
  fi
  tool=callgrind
  [ -z "$toggle" ] && [ $use_perf = 1 ] && tool=perf
  awk -v l="$label" -v a="$a" -v b="$b" -v n1="$n1" -v n2="$n2" -v per="$per" -v t="$tool" \
    'BEGIN { printf "%-66s %10.1f   %s, %d-%d iterations\n", l, (b - a) / (n2 - n1) / per, t, n1, n2 }'
}

echo "instructions per record, 64-byte values ($(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null || echo '?'))"
printf '%-66s %10s   %s\n' "operation" "per record" "counted by"
# Enough iterations that the 4 MiB overwrite ring wraps in both runs: the amortised cost of
# making room is in the difference.
row "send, overwrite topic, no consumer (BM_Send/64/8/0)" '^BM_Send/64/8/0/' 100000 200000 1
# The same sends, counting only inside Producer::send (callees included): the difference to
# the row above is the benchmark's loop.
row "  of which inside Producer::send" '^BM_Send/64/8/0/' 100000 200000 1 'shmbus::Producer::send(*'
row "send, overwrite topic, align 64 (BM_Send/64/64/0)" '^BM_Send/64/64/0/' 100000 200000 1
row "send, overwrite topic, align 64, exclusive (BM_Send/64/64/1)" '^BM_Send/64/64/1/' 100000 200000 1
row "PartitionWriter::send, align 64 (BM_PartitionWriterSend/64/0)" '^BM_PartitionWriterSend/64/0/' 100000 200000 1
row "PartitionWriter::send, align 64, exclusive (BM_PartitionWriterSend/64/1)" '^BM_PartitionWriterSend/64/1/' 100000 200000 1
row "  of which inside PartitionWriter::send" '^BM_PartitionWriterSend/64/1/' 100000 200000 1 'shmbus::PartitionWriter::send*'
row "send_batch of 64, per record (BM_SendBatch64/64/8)" '^BM_SendBatch64/64/8/' 2000 4000 64
row "poll of 1 record, copying consumer (BM_SendThenPoll/0)" '^BM_SendThenPoll/0/' 100000 200000 1 'shmbus::Consumer::poll*'
row "poll of 1 record, zero-copy, block topic (BM_SendThenPoll/1)" '^BM_SendThenPoll/1/' 100000 200000 1 'shmbus::Consumer::poll*'
row "poll of 64 records, copying, per record (BM_BatchRoundTrip/0)" '^BM_BatchRoundTrip/0/' 2000 4000 64 'shmbus::Consumer::poll*'
row "poll of 64 records, zero-copy, per record (BM_BatchRoundTrip/1)" '^BM_BatchRoundTrip/1/' 2000 4000 64 'shmbus::Consumer::poll*'
