#!/usr/bin/env python3
"""Python's cost on the shared-memory path (docs/performance.md, "Python").

    PYTHONPATH=build/python SHMBUS_BUSD=build/busd python3 python/bench.py [--records N] [--pings N]

Measures, in one run: records/s produced by one Python process (64-byte values) and
consumed by another read (poll() per record, and consume(500)); produce->consume latency
between two Python processes with a spinning consumer (shmbus.wait=spin, poll(0) in a loop);
and the same two measures for multiprocessing.Pipe (send_bytes/recv_bytes, the reader
spinning on poll(0)). Prints a Markdown table. Run it under the project's build lock
(flock /tmp/shmbus-build.lock ...): the machine is shared and the numbers are otherwise noise.
"""
import argparse
import multiprocessing as mp
import os
import time

import shmbus

VALUE = b"v" * 64


def pct(samples, q):
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def produce_rate(bus, n):
    p = shmbus.Producer({"bus": bus})
    produce = p.produce
    t0 = time.perf_counter()
    for _ in range(n):
        produce("rate", VALUE, partition=0)
    dt = time.perf_counter() - t0
    p.close()
    return n / dt


def consume_rate(bus, n, batch):
    c = shmbus.Consumer({"bus": bus, "auto.offset.reset": "earliest", "shmbus.wait": "spin"})
    c.assign([shmbus.TopicPartition("rate", 0, shmbus.OFFSET_BEGINNING)])
    got = 0
    t0 = time.perf_counter()
    if batch:
        while got < n:
            got += len(c.consume(batch, 1.0))
    else:
        poll = c.poll
        while got < n:
            if poll(1.0) is not None:
                got += 1
    dt = time.perf_counter() - t0
    c.close()
    return n / dt


def shm_pong(bus, n, ready):
    c = shmbus.Consumer({"bus": bus, "auto.offset.reset": "latest", "shmbus.wait": "spin"})
    c.assign([shmbus.TopicPartition("ping", 0)])
    ready.set()
    lat = []
    poll = c.poll
    now = time.monotonic_ns
    while len(lat) < n:
        m = poll(0)
        if m is not None:
            lat.append(now() - int.from_bytes(m.value()[:8], "little"))
    c.close()
    return lat


def shm_latency(bus, n, gap_us):
    ctx = mp.get_context("spawn")
    with ctx.Manager() as mgr:
        ready = mgr.Event()
        with ctx.Pool(1) as pool:
            res = pool.apply_async(shm_pong, (bus, n, ready))
            ready.wait()
            time.sleep(0.2)
            p = shmbus.Producer({"bus": bus})
            pad = b"\0" * 56
            for _ in range(n):
                t = time.monotonic_ns()
                p.produce("ping", t.to_bytes(8, "little") + pad, partition=0)
                while time.monotonic_ns() - t < gap_us * 1000:
                    pass
            return res.get(120)


def pipe_reader(conn, n, mode):
    lat = []
    if mode == "rate":
        for _ in range(n):
            conn.recv_bytes()
        conn.send_bytes(b"done")
        return
    now = time.monotonic_ns
    while len(lat) < n:
        if conn.poll(0):
            b = conn.recv_bytes()
            lat.append(now() - int.from_bytes(b[:8], "little"))
    conn.send(lat)


def pipe_bench(n_rate, n_ping, gap_us):
    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe()
    proc = ctx.Process(target=pipe_reader, args=(b, n_rate, "rate"))
    proc.start()
    t0 = time.perf_counter()
    for _ in range(n_rate):
        a.send_bytes(VALUE)
    a.recv_bytes()
    rate = n_rate / (time.perf_counter() - t0)
    proc.join()
    a, b = ctx.Pipe()
    proc = ctx.Process(target=pipe_reader, args=(b, n_ping, "ping"))
    proc.start()
    time.sleep(0.3)
    pad = b"\0" * 56
    for _ in range(n_ping):
        t = time.monotonic_ns()
        a.send_bytes(t.to_bytes(8, "little") + pad)
        while time.monotonic_ns() - t < gap_us * 1000:
            pass
    lat = a.recv()
    proc.join()
    return rate, lat


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=400_000)
    ap.add_argument("--pings", type=int, default=20_000)
    ap.add_argument("--gap-us", type=int, default=50, help="between pings")
    args = ap.parse_args()
    bus = f"pybench_{os.getpid()}"
    admin = shmbus.AdminClient({"bus": bus})
    try:
        for name, cap in (("rate", 1 << 26), ("ping", 1 << 20)):
            admin.create_topics([shmbus.NewTopic(name, 1, config={"shmbus.capacity": cap})])[name].result()
        prod = produce_rate(bus, args.records)
        cons = consume_rate(bus, args.records, 0)
        cons_b = consume_rate(bus, args.records, 500)
        lat = shm_latency(bus, args.pings, args.gap_us)
        pipe_rate, pipe_lat = pipe_bench(args.records, args.pings, args.gap_us)
    finally:
        shmbus.delete_bus(bus, purge_disk=True)

    def us(x):
        return f"{x / 1000:.1f}"

    print(f"records={args.records} pings={args.pings} gap={args.gap_us}us value=64B python={'.'.join(map(str, os.sys.version_info[:3]))}")
    print("| path | produced/s | consumed/s | p50 µs | p90 µs | p99 µs | p99.9 µs |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| shmbus (poll per record; consume(500)) | {prod / 1e6:.2f} M | {cons / 1e6:.2f} M; {cons_b / 1e6:.2f} M | "
          f"{us(pct(lat, .5))} | {us(pct(lat, .9))} | {us(pct(lat, .99))} | {us(pct(lat, .999))} |")
    print(f"| multiprocessing.Pipe | {pipe_rate / 1e6:.2f} M | (same) | {us(pct(pipe_lat, .5))} | {us(pct(pipe_lat, .9))} | "
          f"{us(pct(pipe_lat, .99))} | {us(pct(pipe_lat, .999))} |")


if __name__ == "__main__":
    main()
