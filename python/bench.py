#!/usr/bin/env python3
"""Python's cost on the shared-memory path (docs/performance.md, "Python").

    PYTHONPATH=build/python SHMBUS_BUSD=build/busd python3 python/bench.py [--records N] [--pings N]

Measures, in one run: records/s produced by one Python process (64-byte values) and
consumed by another read (poll() per record, and consume(500)); produce->consume latency
between two Python processes with a spinning consumer (shmbus.wait=spin, poll(0) in a loop);
the same measures for confluent-kafka through busd's Kafka listener on the same bus
(busctl kafka start, busctl found as $SHMBUS_BUSCTL, beside $SHMBUS_BUSD, or on PATH; the row
says why when it cannot run), with --kafka-records and --kafka-pings; and for
multiprocessing.Pipe (send_bytes/recv_bytes, the reader spinning on poll(0)) and
multiprocessing.Queue (put/get, the reader spinning on get_nowait()). Prints a
Markdown table. Run it under the project's build lock (flock /tmp/shmbus-build.lock ...):
the machine is shared and the numbers are otherwise noise.
"""
import argparse
import importlib.util
import multiprocessing as mp
import os
import pickle
import queue
import re
import shutil
import subprocess
import sys
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


WARM = b"warm"  # sent until the reader has one: it is then reading, and pings may start


def pong(poll, n, ready):
    """The reader's half of a latency run: poll() in a loop; the first record sets `ready`,
    each ping's stamp (8 bytes of time.monotonic_ns()) gives one sample; n samples."""
    lat = []
    now = time.monotonic_ns
    while len(lat) < n:
        m = poll()
        if m is None or m.error() is not None:
            continue
        v = m.value()
        if v[:4] == WARM:
            ready.set()
        else:
            lat.append(now() - int.from_bytes(v[:8], "little"))
    return lat


def shm_pong(bus, n, ready):
    c = shmbus.Consumer({"bus": bus, "auto.offset.reset": "latest", "shmbus.wait": "spin"})
    c.assign([shmbus.TopicPartition("ping", 0)])
    lat = pong(lambda: c.poll(0), n, ready)
    c.close()
    return lat


def pace(t, gap_us):
    """Waits until gap_us after t, spinning, but letting the process's other threads run
    (time.sleep(0) gives up the GIL): multiprocessing.Queue's feeder thread, which writes
    what put() queued, would otherwise wait for the GIL's 5 ms switch interval a record."""
    while time.monotonic_ns() - t < gap_us * 1000:
        time.sleep(0)


def ping(pong_fn, pong_args, send, n, gap_us):
    """Runs pong_fn(*pong_args, n, ready) in another process; sends WARM until it is ready,
    then n pings `gap_us` apart, each stamped when sent; the reader's samples (ns)."""
    ctx = mp.get_context("spawn")
    with ctx.Manager() as mgr:
        ready = mgr.Event()
        with ctx.Pool(1) as pool:
            res = pool.apply_async(pong_fn, (*pong_args, n, ready))
            deadline = time.monotonic() + 60
            while not ready.wait(0.01):
                if res.ready():
                    return res.get()  # the reader failed: its exception
                if time.monotonic() > deadline:
                    raise RuntimeError("the reader got nothing in 60 s")
                send(WARM)
            pad = b"\0" * 56
            for _ in range(n):
                t = time.monotonic_ns()
                send(t.to_bytes(8, "little") + pad)
                pace(t, gap_us)
            return res.get(120)


def shm_latency(bus, n, gap_us):
    p = shmbus.Producer({"bus": bus})
    lat = ping(shm_pong, (bus,), lambda v: p.produce("ping", v, partition=0), n, gap_us)
    p.close()
    return lat


# ---- confluent-kafka through busd's Kafka listener on the same bus ----

def find_busctl():
    if os.environ.get("SHMBUS_BUSCTL"):
        return os.environ["SHMBUS_BUSCTL"]
    beside = os.path.join(os.path.dirname(os.environ.get("SHMBUS_BUSD", "")), "busctl")
    if os.environ.get("SHMBUS_BUSD") and os.access(beside, os.X_OK):
        return beside
    return shutil.which("busctl")


def kafka_listener(bus):
    """busctl kafka start on a free loopback port (busd started on demand): (address, None),
    or (None, why)."""
    busctl = find_busctl()
    if not busctl:
        return None, "no busctl ($SHMBUS_BUSCTL, beside $SHMBUS_BUSD, or on PATH)"
    try:
        r = subprocess.run([busctl, "--bus", bus, "kafka", "start", "--listen", "127.0.0.1:0"],
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{busctl}: {e}"
    m = re.search(r"listening on (127\.0\.0\.1:[0-9]+)", r.stdout)
    if r.returncode != 0 or not m:
        return None, f"busctl kafka start exited {r.returncode}: {(r.stderr or r.stdout).strip()}"
    return m.group(1), None


def kafka_consumer(address):
    import confluent_kafka as ck
    return ck.Consumer({"bootstrap.servers": address, "group.id": "pybench", "enable.auto.commit": False,
                        "auto.offset.reset": "earliest", "fetch.wait.max.ms": 10})


def kafka_rates(address, n):
    """(produced/s, consumed/s with poll(), with consume(500)) of 64-byte records to and from
    krate-0, the produce rate counting flush() (every record acknowledged)."""
    import confluent_kafka as ck
    p = ck.Producer({"bootstrap.servers": address, "linger.ms": 5, "queue.buffering.max.messages": 1_000_000})
    produce = p.produce
    t0 = time.perf_counter()
    for _ in range(n):
        while True:
            try:
                produce("krate", VALUE, partition=0)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                p.poll(0.01)
    left = p.flush(60)
    prod = n / (time.perf_counter() - t0)
    if left:
        raise RuntimeError(f"confluent-kafka: {left} records not delivered in 60 s")
    rates = [prod]
    for batch in (0, 500):
        c = kafka_consumer(address)
        c.assign([ck.TopicPartition("krate", 0, ck.OFFSET_BEGINNING)])
        got = 0
        t0 = time.perf_counter()
        while got < n:
            if time.perf_counter() - t0 > 300:
                raise RuntimeError(f"confluent-kafka: {got} of {n} records read in 300 s")
            ms = c.consume(batch, 1.0) if batch else [c.poll(1.0)]
            got += sum(1 for m in ms if m is not None and m.error() is None)
        rates.append(n / (time.perf_counter() - t0))
        c.close()
    return rates


def kafka_pong(address, n, ready):
    import confluent_kafka as ck
    c = kafka_consumer(address)
    c.assign([ck.TopicPartition("kping", 0, ck.OFFSET_END)])
    lat = pong(lambda: c.poll(1.0), n, ready)
    c.close()
    return lat


def kafka_latency(address, n, gap_us):
    import confluent_kafka as ck
    p = ck.Producer({"bootstrap.servers": address, "linger.ms": 0})

    def send(v):
        p.produce("kping", v, partition=0)
        p.poll(0)
    lat = ping(kafka_pong, (address,), send, n, gap_us)
    p.flush(10)
    return lat


def kafka_bench(bus, n_rate, n_ping, gap_us):
    """(produced/s, consumed/s, consumed/s with consume(500), samples), or a str: why not."""
    if importlib.util.find_spec("confluent_kafka") is None:
        return f"no confluent_kafka in {sys.executable}'s path"
    address, why = kafka_listener(bus)
    if address is None:
        return why
    prod, cons, cons_b = kafka_rates(address, n_rate)
    return prod, cons, cons_b, kafka_latency(address, n_ping, gap_us)


class PipeEnd:
    """multiprocessing.Pipe's ends as the bench uses them: send, and a reader's non-blocking
    try (None when nothing is there)."""

    def __init__(self, conn):
        self.conn = conn

    def send(self, b):
        self.conn.send_bytes(b)

    def get(self):
        return self.conn.recv_bytes()

    def try_get(self):
        return self.conn.recv_bytes() if self.conn.poll(0) else None


class QueueEnd:
    """multiprocessing.Queue the same way (put/get; get_nowait spinning, as the pipe's
    reader spins on poll(0)). A put hands the value to the queue's feeder thread, which
    pickles and writes it to the queue's pipe: what a Queue user's record goes through."""

    def __init__(self, q):
        self.q = q

    def send(self, b):
        self.q.put(b)

    def get(self):
        return self.q.get()

    def try_get(self):
        try:
            return self.q.get_nowait()
        except queue.Empty:
            return None


def mp_reader(inbox, outbox, n, mode):
    if mode == "rate":
        for _ in range(n):
            inbox.get()
        outbox.send(b"done")
        return
    lat = []
    now = time.monotonic_ns
    while len(lat) < n:
        b = inbox.try_get()
        if b is not None:
            lat.append(now() - int.from_bytes(b[:8], "little"))
    outbox.send(pickle.dumps(lat))


def mp_bench(kind, n_rate, n_ping, gap_us):
    """Records/s and ping latency through a multiprocessing Pipe or Queue (kind), with the
    same values, gap and spinning reader as the shmbus row."""
    ctx = mp.get_context("spawn")

    def ends():
        if kind == "pipe":
            a, b = ctx.Pipe()
            c, d = ctx.Pipe()
            return PipeEnd(a), PipeEnd(b), PipeEnd(c), PipeEnd(d)
        q, r = ctx.Queue(), ctx.Queue()
        return QueueEnd(q), QueueEnd(q), QueueEnd(r), QueueEnd(r)

    tx, rx, back_tx, back_rx = ends()
    proc = ctx.Process(target=mp_reader, args=(rx, back_tx, n_rate, "rate"))
    proc.start()
    t0 = time.perf_counter()
    for _ in range(n_rate):
        tx.send(VALUE)
    back_rx.get()
    rate = n_rate / (time.perf_counter() - t0)
    proc.join()
    tx, rx, back_tx, back_rx = ends()
    proc = ctx.Process(target=mp_reader, args=(rx, back_tx, n_ping, "ping"))
    proc.start()
    time.sleep(0.3)
    pad = b"\0" * 56
    for _ in range(n_ping):
        t = time.monotonic_ns()
        tx.send(t.to_bytes(8, "little") + pad)
        pace(t, gap_us)
    lat = pickle.loads(back_rx.get())
    proc.join()
    return rate, lat


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=400_000)
    ap.add_argument("--pings", type=int, default=20_000)
    ap.add_argument("--gap-us", type=int, default=50, help="between pings")
    ap.add_argument("--kafka-records", type=int, default=100_000, help="confluent-kafka's rate runs")
    ap.add_argument("--kafka-pings", type=int, default=5_000, help="confluent-kafka's latency run")
    args = ap.parse_args()
    bus = f"pybench_{os.getpid()}"
    admin = shmbus.AdminClient({"bus": bus})
    try:
        for name, cap in (("rate", 1 << 26), ("ping", 1 << 20), ("krate", 1 << 26), ("kping", 1 << 20)):
            admin.create_topics([shmbus.NewTopic(name, 1, config={"shmbus.capacity": cap})])[name].result()
        prod = produce_rate(bus, args.records)
        cons = consume_rate(bus, args.records, 0)
        cons_b = consume_rate(bus, args.records, 500)
        lat = shm_latency(bus, args.pings, args.gap_us)
        kafka = kafka_bench(bus, args.kafka_records, args.kafka_pings, args.gap_us)
        pipe_rate, pipe_lat = mp_bench("pipe", args.records, args.pings, args.gap_us)
        queue_rate, queue_lat = mp_bench("queue", args.records, args.pings, args.gap_us)
    finally:
        shmbus.delete_bus(bus, purge_disk=True)

    def us(x):
        return f"{x / 1000:.1f}"

    print(f"records={args.records} pings={args.pings} kafka-records={args.kafka_records} "
          f"kafka-pings={args.kafka_pings} gap={args.gap_us}us value=64B python={'.'.join(map(str, sys.version_info[:3]))}")
    print("| path | produced/s | consumed/s | p50 µs | p90 µs | p99 µs | p99.9 µs |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| shmbus (poll per record; consume(500)) | {prod / 1e6:.2f} M | {cons / 1e6:.2f} M; {cons_b / 1e6:.2f} M | "
          f"{us(pct(lat, .5))} | {us(pct(lat, .9))} | {us(pct(lat, .99))} | {us(pct(lat, .999))} |")
    if isinstance(kafka, str):
        print(f"confluent-kafka row skipped: {kafka}", file=sys.stderr)
        print(f"| confluent-kafka through busd's Kafka listener | skipped: {kafka} | | | | | |")
    else:
        kprod, kcons, kcons_b, klat = kafka
        print(f"| confluent-kafka through busd's Kafka listener (poll per record; consume(500)) | {kprod / 1e6:.2f} M | "
              f"{kcons / 1e6:.2f} M; {kcons_b / 1e6:.2f} M | {us(pct(klat, .5))} | {us(pct(klat, .9))} | "
              f"{us(pct(klat, .99))} | {us(pct(klat, .999))} |")
    for label, rate, lat in (("multiprocessing.Pipe", pipe_rate, pipe_lat), ("multiprocessing.Queue", queue_rate, queue_lat)):
        print(f"| {label} | {rate / 1e6:.2f} M | (same) | {us(pct(lat, .5))} | {us(pct(lat, .9))} | "
              f"{us(pct(lat, .99))} | {us(pct(lat, .999))} |")


if __name__ == "__main__":
    main()
