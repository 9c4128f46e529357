# pytest fixtures for the Python module: a unique bus per test, removed afterwards (its
# segments, state dir and busd), and the build's busd/busctl/worker (ctest passes them in
# SHMBUS_BUSD, SHMBUS_BUSCTL, SHMBUS_WORKER; run by hand, build/ is assumed).
import itertools
import os
import re
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("SHMBUS_BUILD", os.path.join(ROOT, "build"))
os.environ.setdefault("SHMBUS_BUSD", os.path.join(BUILD, "busd"))
BUSCTL = os.environ.get("SHMBUS_BUSCTL", os.path.join(BUILD, "busctl"))
WORKER = os.environ.get("SHMBUS_WORKER", os.path.join(BUILD, "tests", "shmbus_test_worker"))
if os.path.join(BUILD, "python") not in sys.path and "PYTHONPATH" not in os.environ:
    sys.path.insert(0, os.path.join(BUILD, "python"))

import shmbus  # noqa: E402

_n = itertools.count()


def busd_pid(name):
    try:
        with open(f"/run/shmbus/{name}/busd.lock") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def stop_process(pid, timeout=5.0):
    """SIGSTOPs pid and returns once every thread of it is stopped: kill() returns before a
    thread running on the other CPU has taken the signal, and a test that means "busd is
    stopped" must not race the last microseconds of its spiller."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = []
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/stat") as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            except OSError:
                pass
        if states and all(s in ("T", "t") for s in states):
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} did not stop within {timeout} s")


def new_bus_name():
    return f"py_{os.getpid()}_{next(_n)}"


def remove_bus(name):
    """Removes the bus (segments, state dir) and waits, with a deadline, for its busd to leave."""
    pid = busd_pid(name)
    shmbus.delete_bus(name, purge_disk=True)
    subprocess.run([BUSCTL, "--bus", name, "bus", "delete", "--purge"], capture_output=True)
    if pid:  # busd leaves once its bus is gone; wait for it, with a deadline
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                break
            time.sleep(0.05)


@pytest.fixture
def bus():
    name = new_bus_name()
    yield name
    remove_bus(name)


def start_kafka_listener(bus):
    """busctl kafka start on a free loopback port (busd started on demand): (address, None),
    or (None, why) when busd could not listen."""
    shmbus.AdminClient({"bus": bus}).close()  # the bus must exist: attaching creates it
    r = subprocess.run([BUSCTL, "--bus", bus, "kafka", "start", "--listen", "127.0.0.1:0"],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"listening on (127\.0\.0\.1:[0-9]+)", r.stdout)
    if r.returncode != 0 or not m:
        return None, f"busctl kafka start exited {r.returncode}: {(r.stderr or r.stdout).strip()}"
    return m.group(1), None


def make_topic(bus, name, partitions=1, **config):
    admin = shmbus.AdminClient({"bus": bus})
    fs = admin.create_topics([shmbus.NewTopic(name, partitions, config=config)])
    fs[name].result()
    return name


def wait_for(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def drain(consumer, n, timeout=10.0):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        m = consumer.poll(0.1)
        if m is not None:
            assert m.error() is None, m.error()
            out.append(m)
    return out


def murmur2(data: bytes) -> int:  # Kafka's (the Java client's), for the expected partitions
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest = length % 4
    tail = data[length - rest:]
    if rest == 3:
        h ^= tail[2] << 16
    if rest >= 2:
        h ^= tail[1] << 8
    if rest >= 1:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's Java partitioner (librdkafka's murmur2) gives a key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
