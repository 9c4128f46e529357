#!/usr/bin/env python3
# Captures real Kafka client request frames (kcat, confluent-kafka, kafka-python) for the
# fuzz corpus tests/fuzz/corpus/kafka/: a busd with a Kafka listener, a recording proxy in
# front of it, and each Debian client doing what users do (produce, consume, groups, admin).
#
#   /usr/bin/python3 tests/fuzz/capture_kafka_frames.py --busd build/busd --busctl build/busctl \
#       --out tests/fuzz/corpus/kafka
#
# Writes the first frame of each (client, API, version) not in --out yet, as the client sent
# it: a 4-byte size, then the request. The proxy rewrites busd's port in Metadata and
# FindCoordinator answers to its own, so that the clients' later connections come through it
# too. Run by hand when the clients or the gateway's versions change; not part of the tests.
import argparse
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

API_NAMES = {
    0: "produce", 1: "fetch", 2: "listoffsets", 3: "metadata", 8: "offsetcommit", 9: "offsetfetch",
    10: "findcoordinator", 11: "joingroup", 12: "heartbeat", 13: "leavegroup", 14: "syncgroup",
    15: "describegroups", 16: "listgroups", 18: "apiversions", 19: "createtopics", 20: "deletetopics",
    22: "initproducerid", 32: "describeconfigs",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class Recorder:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.client = "unknown"
        self.lock = threading.Lock()
        self.written = []

    def frame(self, data):
        key, version = struct.unpack(">hh", data[4:8])
        name = f"{self.client}-{API_NAMES.get(key, f'api{key}')}-v{version}"
        path = os.path.join(self.out_dir, name)
        with self.lock:
            if not os.path.exists(path):
                with open(path, "wb") as f:
                    f.write(data)
                self.written.append(name)


def proxy(listen_port, busd_port, recorder):
    old = b"\x00\x09127.0.0.1" + struct.pack(">i", busd_port)
    new = b"\x00\x09127.0.0.1" + struct.pack(">i", listen_port)
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(64)

    # Frames one way: `seen` records a request, `edit` rewrites an answer (same length).
    def pump(src, dst, seen=lambda frame: None, edit=lambda body: body):
        try:
            while True:
                head = read_exact(src, 4)
                body = read_exact(src, struct.unpack(">i", head)[0]) if head else None
                if body is None:
                    break
                seen(head + body)
                dst.sendall(head + edit(body))
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def serve():
        while True:
            client, _ = server.accept()
            upstream = socket.create_connection(("127.0.0.1", busd_port))
            threading.Thread(target=pump, args=(client, upstream, recorder.frame), daemon=True).start()
            threading.Thread(target=pump, args=(upstream, client), kwargs={"edit": lambda b: b.replace(old, new)},
                             daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()


def run(cmd, **kw):
    return subprocess.run(cmd, check=False, timeout=60, capture_output=True, **kw)


def kcat(boot, recorder, topic):
    recorder.client = "kcat"
    run(["kcat", "-b", boot, "-L"])
    run(["kcat", "-b", boot, "-P", "-t", topic, "-K:", "-H", "h=v", "-X", "partitioner=murmur2"], input=b"k1:v1\nk2:v2\n")
    run(["kcat", "-b", boot, "-C", "-t", topic, "-o", "beginning", "-e"])
    run(["kcat", "-b", boot, "-C", "-t", topic, "-o", "s@0", "-e"])  # ListOffsets by time
    run(["kcat", "-b", boot, "-G", "kcat-group", topic, "-o", "beginning", "-e", "-X", "auto.commit.interval.ms=100"])


def confluent(boot, recorder, topic):
    recorder.client = "confluent"
    from confluent_kafka import Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic
    admin = AdminClient({"bootstrap.servers": boot})
    for f in admin.create_topics([NewTopic("capture-admin", 2, 1)]).values():
        f.result(10)
    admin.list_topics(timeout=10)
    admin.list_groups(timeout=10)
    for f in admin.describe_configs([ConfigResource("topic", topic)]).values():
        f.result(10)
    p = Producer({"bootstrap.servers": boot, "enable.idempotence": True, "linger.ms": 0})
    for i in range(10):
        p.produce(topic, key=f"k{i}", value=f"v{i}", headers=[("h", b"v")])
    p.flush(10)
    c = Consumer({"bootstrap.servers": boot, "group.id": "confluent-group", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe([topic])
    got, deadline = 0, time.time() + 20
    while got < 5 and time.time() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            got += 1
    c.commit(asynchronous=False)
    c.committed([TopicPartition(topic, 0)], timeout=10)
    c.offsets_for_times([TopicPartition(topic, 0, 0)], timeout=10)
    time.sleep(3.5)  # a heartbeat (heartbeat.interval.ms 3000)
    c.close()
    for f in admin.delete_topics(["capture-admin"]).values():
        f.result(10)


def kafka_python(boot, recorder, topic):
    recorder.client = "kafka-python"
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.admin import KafkaAdminClient, NewTopic
    p = KafkaProducer(bootstrap_servers=boot)
    for i in range(10):
        p.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode(), headers=[("h", b"v")])
    p.flush(10)
    p.close()
    c = KafkaConsumer(topic, bootstrap_servers=boot, group_id="kafka-python-group", auto_offset_reset="earliest",
                      enable_auto_commit=False, consumer_timeout_ms=5000, heartbeat_interval_ms=500)
    for n, _ in enumerate(c):
        if n >= 5:
            break
    c.commit()
    time.sleep(1.0)
    c.poll(timeout_ms=100)
    c.offsets_for_times({TopicPartition(topic, 0): 0})
    c.close()
    admin = KafkaAdminClient(bootstrap_servers=boot)
    admin.create_topics([NewTopic("capture-kp", 1, 1)])
    admin.list_consumer_groups()
    admin.describe_consumer_groups(["kafka-python-group"])
    admin.delete_topics(["capture-kp"])
    admin.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--busd", required=True)
    ap.add_argument("--busctl", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    recorder = Recorder(args.out)
    bus = f"capture{os.getpid()}"
    state = tempfile.mkdtemp(prefix="shmbus-capture-")
    env = dict(os.environ, SHMBUS_DIR=state)
    busd_port, proxy_port = free_port(), free_port()
    busd = subprocess.Popen([args.busd, "--bus", bus, "--quiet", "--kafka-listen", f"127.0.0.1:{busd_port}"], env=env)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", busd_port)).close()
                break
            except OSError:
                time.sleep(0.05)
        run([args.busctl, "--bus", bus, "topic", "create", "capture", "--partitions", "2"], env=env)
        proxy(proxy_port, busd_port, recorder)
        boot = f"127.0.0.1:{proxy_port}"
        for client in (kcat, confluent, kafka_python):
            try:
                client(boot, recorder, "capture")
            except Exception as e:  # a client step that fails still leaves what it captured
                print(f"{client.__name__}: {e!r}", file=sys.stderr)
    finally:
        busd.terminate()
        busd.wait(10)
        run([args.busctl, "--bus", bus, "bus", "delete", "--purge"], env=env)
        shutil.rmtree(state, ignore_errors=True)
    for name in sorted(recorder.written):
        print(name)


if __name__ == "__main__":
    main()
