# Across processes: Python -> C++ and C++ -> Python with identical bytes, and a Python
# consumer SIGKILLed while it waits in poll() wedging nothing.
import base64
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time

import pytest

import shmbus
from shmbus import Consumer, Producer, TopicPartition

from conftest import BUSCTL, drain, make_topic, stop_process, wait_for

# Values with every byte, an empty one, a tombstone; keys null and binary; headers.
RECORDS = [
    (b"\x00\x01\xff", bytes(range(256)), [("h1", b"\x00\xfe"), ("h2", b""), ("h3", None)]),
    (None, b"", []),
    (b"k", None, [("only", b"x")]),
    (b"\xc3\x28", b"not utf-8: \xc3\x28" * 50, []),
]


def python(code, **kw):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env, **kw)


def b64(b):
    return None if b is None else base64.b64encode(b).decode()


def unb(obj, name):
    if obj.get(name + "_b64") is not None:
        return base64.b64decode(obj[name + "_b64"])
    v = obj.get(name)
    return None if v is None else v.encode()


def test_python_producer_process_to_cxx_consumer_process(bus):
    make_topic(bus, "t", 1)
    proc = python(f"""
        import shmbus
        p = shmbus.Producer({{"bus": {bus!r}}})
        for key, value, headers in {RECORDS!r}:
            p.produce("t", value, key=key, partition=0, headers=headers or None)
        p.flush()
    """)
    assert proc.wait(30) == 0
    out = subprocess.run([BUSCTL, "--bus", bus, "--json", "consume", "t", "--from", "earliest", "--count",
                          str(len(RECORDS)), "--timeout-ms", "10000"], capture_output=True, check=True, timeout=30)
    got = []
    for line in out.stdout.decode().splitlines():
        j = json.loads(line)
        got.append((unb(j, "key"), unb(j, "value"), [(h["key"], unb(h, "value")) for h in j["headers"]]))
    assert got == RECORDS


def test_cxx_producer_process_to_python_consumer_process(bus):
    make_topic(bus, "t", 1)
    lines = []
    for key, value, headers in RECORDS:
        rec = {"key_b64": b64(key), "value_b64": b64(value), "partition": 0,
               "headers": [{"key": k, "value_b64": b64(v)} if v is not None else {"key": k, "value": None}
                           for k, v in headers]}
        rec = {k: v for k, v in rec.items() if v is not None}
        if value is None:
            rec["value"] = None  # a tombstone
        lines.append(json.dumps(rec))
    subprocess.run([BUSCTL, "--bus", bus, "produce", "t", "--input", "json"], input="\n".join(lines).encode() + b"\n",
                   check=True, timeout=30, capture_output=True)
    proc = python(f"""
        import shmbus, sys
        c = shmbus.Consumer({{"bus": {bus!r}, "auto.offset.reset": "earliest"}})
        c.assign([shmbus.TopicPartition("t", 0)])
        out = []
        while len(out) < {len(RECORDS)}:
            m = c.poll(10.0)
            assert m is not None and m.error() is None
            out.append((m.key(), m.value(), m.headers() or []))
        print(repr(out))
    """, stdout=subprocess.PIPE)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert eval(stdout.decode()) == RECORDS  # noqa: S307 - our own child's repr


def test_sigkill_mid_poll_wedges_nothing(bus):
    # A block topic: the killed consumer held producers back (a gate); its group's
    # partition must go to another member, and producers must pass its gate.
    make_topic(bus, "t", 1, **{"shmbus.retention": "block", "shmbus.capacity": 4096})
    p = Producer({"bus": bus, "shmbus.max.block.ms": 10000})
    p.produce("t", b"first")
    proc = python(f"""
        import shmbus, sys
        c = shmbus.Consumer({{"bus": {bus!r}, "group.id": "g", "auto.offset.reset": "earliest",
                             "session.timeout.ms": 1000, "enable.auto.commit": False,
                             "shmbus.hold.producers": True}})
        c.subscribe(["t"])
        assert c.poll(10.0).value() == b"first"
        print("polling", flush=True)
        c.poll(None)  # waits here until killed
    """, stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"polling"
    time.sleep(0.3)  # killed inside poll(None), its only call left, not on the way to it
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    # Producers pass the dead member's gate: more than the ring holds goes in.
    for i in range(200):
        p.produce("t", b"%032d" % i)
    # Another member gets the partition (the dead one is evicted after its session timeout).
    c = Consumer({"bus": bus, "group.id": "g", "auto.offset.reset": "earliest", "session.timeout.ms": 1000})
    c.subscribe(["t"])
    wait_for(lambda: c.assignment() == [TopicPartition("t", 0)] or c.poll(0.05) is not None, 20, "the partition")
    m = c.poll(10.0)
    assert m is not None and m.error() is None
    c.close()


def test_a_group_of_two_python_processes_and_a_native_member(bus, tmp_path):
    from conftest import WORKER
    make_topic(bus, "t", 6)
    stop = tmp_path / "stop"
    native_log = tmp_path / "native.log"
    native = subprocess.Popen([WORKER, "group-consume", bus, "t", "g", str(native_log), "sticky"],
                              stdout=subprocess.PIPE)
    members = []
    try:
        assert native.stdout.readline().strip() == b"ready"
        for n in range(2):
            members.append(python(f"""
                import os, shmbus
                c = shmbus.Consumer({{"bus": {bus!r}, "group.id": "g", "auto.offset.reset": "earliest",
                                     "auto.commit.interval.ms": 100, "client.id": "py-{n}"}})
                c.subscribe(["t"])
                print("ready", flush=True)
                with open({str(tmp_path / f"py{n}.log")!r}, "a") as f:
                    while not os.path.exists({str(stop)!r}):
                        m = c.poll(0.05)
                        if m is not None and m.error() is None:
                            f.write("%d %d\\n" % (m.partition(), m.offset()))
                            f.flush()
                c.close()
            """, stdout=subprocess.PIPE))
        for m in members:
            assert m.stdout.readline().strip() == b"ready"
        admin = shmbus.AdminClient({"bus": bus})

        def balanced():
            g = admin.describe_groups(["g"])["g"].result()
            owned = [len(m.assignment) for m in g.members]
            return len(owned) == 3 and sorted(owned) == [2, 2, 2]

        wait_for(balanced, 30, "three members with two partitions each")
        p = Producer({"bus": bus})
        for i in range(600):  # the worker's record layout: id u32, pad u32, seq u64, checksum u64
            p.produce("t", struct.pack("<IIQQ", 1, 0, i, 0), key=b"key-%d" % i)
        p.flush()

        def consumed():
            seen = {}
            for name in ("py0.log", "py1.log"):
                path = tmp_path / name
                if path.exists():
                    for line in path.read_text().splitlines():
                        part, off = map(int, line.split())
                        seen.setdefault(name, set()).add((part, off))
            if native_log.exists():
                for line in native_log.read_text().splitlines():
                    f = line.split()
                    if f[0] == "C":
                        seen.setdefault("native", set()).add((int(f[3]), int(f[4])))
            return seen

        ends = {pm.id: pm.high for pm in admin.list_topics("t").topics["t"].partitions.values()}
        want = {(part, off) for part, end in ends.items() for off in range(end)}
        assert len(want) == 600
        wait_for(lambda: set().union(*consumed().values()) >= want, 30, "every record consumed")
        assert set(consumed()) == {"py0.log", "py1.log", "native"}, "each member consumed its share"
    finally:
        stop.touch()
        native.send_signal(signal.SIGUSR1)
        for proc in members + [native]:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert all(proc.returncode == 0 for proc in members)


@pytest.mark.parametrize("with_on_lost", [True, False])
def test_a_stopped_member_loses_its_partition_after_session_timeout_ms(bus, with_on_lost):
    """A member SIGSTOPped (alive, its connection open, no heartbeats) with session.timeout.ms
    1000 is evicted: another member has its partition within 10 s (not the 45 s default), and
    once continued the stopped one hears of the loss: on_lost, or without it on_revoke."""
    make_topic(bus, "t", 1)
    proc = python(f"""
        import json, time, shmbus
        events = []
        c = shmbus.Consumer({{"bus": {bus!r}, "group.id": "g", "session.timeout.ms": 1000,
                             "max.poll.interval.ms": 600000}})
        record = lambda what: lambda cons, tps: tps and events.append([what, [[tp.topic, tp.partition] for tp in tps]])
        kw = {{"on_revoke": record("revoke")}}
        if {with_on_lost!r}:
            kw["on_lost"] = record("lost")
        c.subscribe(["t"], **kw)
        assert c.assignment() == [shmbus.TopicPartition("t", 0)]
        print("assigned", flush=True)
        deadline = time.monotonic() + 60
        while not events and time.monotonic() < deadline:
            c.poll(0.05)
        print(json.dumps(events), flush=True)
        c.close()
    """, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"assigned"
        stop_process(proc.pid)
        stopped = time.monotonic()
        c = Consumer({"bus": bus, "group.id": "g", "auto.offset.reset": "earliest"})
        c.subscribe(["t"])
        while c.assignment() != [TopicPartition("t", 0)] and time.monotonic() - stopped < 10:
            c.poll(0.05)
        took = time.monotonic() - stopped
        assert c.assignment() == [TopicPartition("t", 0)], f"not reassigned {took:.1f} s after the stop"
        os.kill(proc.pid, signal.SIGCONT)
        events = json.loads(proc.stdout.readline())
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait(10)
    want = "lost" if with_on_lost else "revoke"
    assert events == [[want, [["t", 0]]]], events
    c.close()
