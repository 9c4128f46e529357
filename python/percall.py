#!/usr/bin/env python3
"""Instructions per record at the Python boundary, against the C++ loop doing the same
(docs/performance.md, "Python"; issue 16: at most 2x the C++ per-record cost).

    flock /tmp/shmbus-build.lock env PYTHONPATH=build/python python3 python/percall.py \
        [--build build] [--n1 10000] [--n2 60000]

Each row runs its loop twice under callgrind (valgrind --tool=callgrind), with N1 then N2
records, counting every instruction of the process (user space); the difference over
N2 - N1 records is what one record costs, with start-up (interpreter, import, attach)
gone. Instruction counts do not depend on how busy the machine is. The C++ loops are
build/bench/shmbus_percall (bench/percall.cpp): Producer::send(topic, message, 0) of a
64-byte value, and Consumer::poll() (up to 500 records a fetch) reading each value. The
Python ones are (each record: a Message, and its value() called):
  produce        p.produce(topic, VALUE, partition=0)
  poll           while got < n: m = c.poll(1.0); if m is not None: m.value(); got += 1
  poll_loop      while True: m = c.poll(1.0); if m is None: continue; m.value(); got += 1;
                 if got == n: break          (confluent-kafka's documented loop shape)
  consume        while got < n: for m in c.consume(500, 1.0): m.value(); got += 1
  consume_batch  while got < n: ms = c.consume(500, 1.0); for m in ms: m.value();
                 got += len(ms)              (counted per batch)
CPython 3.11 specialises ("quickens") a function's bytecode after a few calls or backward
jumps, but the back edge of `while got < n` (a conditional jump) does not count: in a
function called once that loop runs unspecialised, ~420 instructions a record dearer than
the same work in a `while True` loop. Both are loops users write; both are measured.
Floors, the interpreter's own cost: an empty `for` loop; the loop calling a method of the
module that does nothing (len(p): a pybind11 call with no arguments); and each measured
loop with the module's call replaced by a builtin of the same shape that does nothing
(dict.get: `produce(topic, VALUE)` returning at once; `poll(1.0)` returning one Message
already made; `consume(500, 1.0)` returning a list of Messages already made), so that only
the interpreter's loop (and value()) is left. A row minus its floor is what the module,
with the library under it, adds to what the interpreter costs anyway: the "adds no more
than 2x the C++ per-record cost" of issue 16.
Consumers read a topic filled beforehand (not counted); producers write another one. Every
consumer loop checks at its end that it read offsets 0..n-1 of the topic.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import shmbus

VALUE = b"v" * 64
CAPACITY = 1 << 26  # 64 MiB: no wrap in any run (every run appends without making room)


def child(mode, bus, topic, n):
    """One measured loop (run under callgrind by the driver)."""
    if mode in ("produce", "floor_produce", "floor_len", "floor_loop"):
        p = shmbus.Producer({"bus": bus})
        if mode == "produce":
            produce = p.produce
            for _ in range(n):
                produce(topic, VALUE, partition=0)
        elif mode == "floor_produce":
            produce = {}.get  # two arguments, returns the second: the call without the module
            for _ in range(n):
                produce(topic, VALUE)
        elif mode == "floor_len":
            for _ in range(n):
                len(p)
        else:
            for _ in range(n):
                pass
        p.close()
        return
    c = shmbus.Consumer({"bus": bus, "auto.offset.reset": "earliest"})
    c.assign([shmbus.TopicPartition(topic, 0, shmbus.OFFSET_BEGINNING)])
    got = 0
    m = None
    if mode in ("poll", "floor_poll"):
        poll = c.poll
        if mode == "floor_poll":
            poll = {1.0: poll(1.0)}.get  # one Message, returned again and again
        while got < n:
            m = poll(1.0)
            if m is not None:
                m.value()
                got += 1
    elif mode in ("poll_loop", "floor_poll_loop"):
        poll = c.poll
        if mode == "floor_poll_loop":
            poll = {1.0: poll(1.0)}.get  # one Message, returned again and again
        while True:
            m = poll(1.0)
            if m is None:
                continue
            m.value()
            got += 1
            if got == n:
                break
        if mode == "floor_poll_loop":
            m = None
    elif mode in ("consume", "floor_consume"):
        consume = c.consume
        if mode == "floor_consume":  # one list of 500 Messages made beforehand, again and again
            consume = {500: consume(500, 1.0)}.get
        while got < n:
            for m in consume(min(500, n - got), 1.0):
                m.value()
                got += 1
    else:  # consume_batch, floor_consume_batch
        consume = c.consume
        if mode == "floor_consume_batch":
            consume = {500: consume(500, 1.0)}.get
        while got < n:
            ms = consume(min(500, n - got), 1.0)
            for m in ms:
                m.value()
            got += len(ms)
    if mode.startswith("floor_"):
        m = None  # the floors hand out Messages made beforehand
    if m is not None and (m.offset() != n - 1 or m.value() != VALUE):
        sys.exit(f"percall.py: {mode} read up to offset {m.offset()}, not {n - 1}")
    c.close()


def instructions(cmd, tmp):
    out = os.path.join(tmp, "cg.out")
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + cmd,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals from callgrind for {cmd}")


def per_record(cmd_of, n1, n2, tmp):
    a = instructions(cmd_of(n1), tmp)
    b = instructions(cmd_of(n2), tmp)
    return (b - a) / (n2 - n1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build", help="the build directory (bench/shmbus_percall)")
    ap.add_argument("--n1", type=int, default=10_000)
    ap.add_argument("--n2", type=int, default=60_000)
    ap.add_argument("--child", nargs=4, metavar=("MODE", "BUS", "TOPIC", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, bus, topic, n = args.child
        return child(mode, bus, topic, int(n))
    cxx = os.path.join(args.build, "bench", "shmbus_percall")
    if not os.access(cxx, os.X_OK):
        sys.exit(f"percall.py: no {cxx} (build the target shmbus_percall)")
    bus = f"percall_{os.getpid()}"
    admin = shmbus.AdminClient({"bus": bus})
    rows = []
    try:
        for name in ("prod", "fill"):
            admin.create_topics([shmbus.NewTopic(name, 1, config={"shmbus.capacity": CAPACITY})])[name].result()
        p = shmbus.Producer({"bus": bus})
        for _ in range(args.n2):
            p.produce("fill", VALUE, partition=0)
        p.close()
        admin.close()
        me = os.path.abspath(__file__)

        def py(mode, topic):
            return lambda n: [sys.executable, me, "--child", mode, bus, topic, str(n)]

        def cc(mode, topic):
            return lambda n: [cxx, mode, bus, topic, str(n)]

        with tempfile.TemporaryDirectory(prefix="shmbus-percall.") as tmp:
            def measure(cmd_of):
                return per_record(cmd_of, args.n1, args.n2, tmp)

            send = measure(cc("produce", "prod"))
            poll = measure(cc("consume", "fill"))
            for label, cxx_cost, mode, topic in (
                    ("produce(topic, value, partition=0)", send, "produce", "prod"),
                    ("poll(1.0), value(): `while got < n`", poll, "poll", "fill"),
                    ("poll(1.0), value(): `while True`", poll, "poll_loop", "fill"),
                    ("consume(500, 1.0), value() of each, counted each", poll, "consume", "fill"),
                    ("consume(500, 1.0), value() of each, counted per batch", poll, "consume_batch", "fill")):
                rows.append((label, cxx_cost, measure(py(mode, topic)), measure(py(f"floor_{mode}", topic))))
            floor_loop = measure(py("floor_loop", "prod"))
            floor_len = measure(py("floor_len", "prod"))
    finally:
        shmbus.delete_bus(bus, purge_disk=True)
    print(f"instructions per record, 64-byte values, callgrind, N {args.n1}->{args.n2}, "
          f"python={'.'.join(map(str, sys.version_info[:3]))}")
    print("| loop | C++ | Python | Python / C++ | floor (the loop, no module call) | Python - floor | "
          "(Python - floor) / C++ | goal: adds <= 2x C++ |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for label, c, p, f in rows:
        print(f"| {label} | {c:.0f} | {p:.0f} | {p / c:.2f}x | {f:.0f} | {p - f:.0f} | {(p - f) / c:.2f}x | "
              f"{'met' if p - f <= 2 * c else 'not met'} |")
    print(f"| floor: empty `for` loop | | {floor_loop:.0f} | | | | | |")
    print(f"| floor: len(p), a pybind11 call with no arguments | | {floor_len:.0f} | | | | | |")

if __name__ == "__main__":
    main()
