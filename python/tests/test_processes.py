# Across processes: Python -> C++ and C++ -> Python with identical bytes, and a Python
# consumer SIGKILLed while it waits in poll() wedging nothing.
import base64
import json
import os
import signal
import subprocess
import sys
import textwrap

import shmbus
from shmbus import Consumer, Producer, TopicPartition

from conftest import BUSCTL, drain, make_topic, wait_for

# Values with every byte, an empty one, a tombstone; keys null and binary; headers.
RECORDS = [
    (b"\x00\x01\xff", bytes(range(256)), [("h1", b"\x00\xfe"), ("h2", b"")]),
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
               "headers": [{"key": k, "value_b64": b64(v)} for k, v in headers]}
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
