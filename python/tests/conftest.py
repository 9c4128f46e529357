# pytest fixtures for the Python module: a unique bus per test, removed afterwards (its
# segments, state dir and busd), and the build's busd/busctl/worker (ctest passes them in
# SHMBUS_BUSD, SHMBUS_BUSCTL, SHMBUS_WORKER; run by hand, build/ is assumed).
import itertools
import os
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


@pytest.fixture
def bus():
    name = f"py_{os.getpid()}_{next(_n)}"
    yield name
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
