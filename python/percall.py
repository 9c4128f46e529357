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
Python ones are:
  produce      p.produce(topic, VALUE, partition=0)
  poll         m = c.poll(1.0); m.value()          (one record a call)
  consume(500) for m in c.consume(500, 1.0): m.value()
and two floors, the interpreter's own cost: an empty `for` loop, and the loop calling a
method of the module that does nothing (len(p): a pybind11 call with no arguments).
Consumers read a topic filled beforehand (not counted); producers write another one.
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
    if mode in ("produce", "floor_len", "floor_loop"):
        p = shmbus.Producer({"bus": bus})
        if mode == "produce":
            produce = p.produce
            for _ in range(n):
                produce(topic, VALUE, partition=0)
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
    if mode == "poll":
        poll = c.poll
        while got < n:
            m = poll(1.0)
            if m is not None:
                m.value()
                got += 1
    else:
        consume = c.consume
        while got < n:
            for m in consume(min(500, n - got), 1.0):
                m.value()
                got += 1
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
            rows.append(("produce(topic, value, partition=0)", send, measure(py("produce", "prod"))))
            rows.append(("poll(1.0), value()", poll, measure(py("poll", "fill"))))
            rows.append(("consume(500, 1.0), value() of each", poll, measure(py("consume", "fill"))))
            floor_loop = measure(py("floor_loop", "prod"))
            floor_len = measure(py("floor_len", "prod"))
    finally:
        shmbus.delete_bus(bus, purge_disk=True)
    print(f"instructions per record, 64-byte values, callgrind, N {args.n1}->{args.n2}, "
          f"python={'.'.join(map(str, sys.version_info[:3]))}")
    print("| loop | C++ | Python | Python / C++ |")
    print("|---|---:|---:|---:|")
    for label, c, p in rows:
        print(f"| {label} | {c:.0f} | {p:.0f} | {p / c:.2f}x |")
    print(f"| floor: empty `for` loop | | {floor_loop:.0f} | |")
    print(f"| floor: len(p), a pybind11 call with no arguments | | {floor_len:.0f} | |")


if __name__ == "__main__":
    main()
