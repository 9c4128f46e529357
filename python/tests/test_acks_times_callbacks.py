# What the module once left pending, wired to libshmbus: acks and flush() waiting for busd,
# offsets_for_times, on_commit, on_lost, stats_cb with statistics.interval.ms, and commits of
# assign()ed consumers with a group.id.
import json
import os
import signal
import subprocess
import time

import pytest

import shmbus
from shmbus import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from conftest import BUSCTL, busd_pid, drain, make_topic, stop_process, wait_for


def disk_end(bus, topic, partition=0):
    out = subprocess.run([BUSCTL, "--bus", bus, "--json", "topic", "describe", topic], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["partition_info"][partition]["disk"]["end_offset"]


def spilled_topic(bus, name):
    return make_topic(bus, name, 1, **{"shmbus.spill": True, "shmbus.retention": "block", "shmbus.capacity": 65536})


def test_offsets_for_times_find_the_first_record_at_or_after_each_time(bus):
    make_topic(bus, "t", 2)
    p = Producer({"bus": bus})
    for ts in (1700000000100, 1700000000100, 1700000000200, 1700000000300):
        p.produce("t", b"v", partition=0, timestamp=ts)
    p.produce("t", b"w", partition=1, timestamp=1700000000050)
    c = Consumer({"bus": bus})  # nothing assigned: a lookup needs no assignment
    got = c.offsets_for_times([TopicPartition("t", 0, 1700000000150), TopicPartition("t", 0, 1700000000200),
                               TopicPartition("t", 0, 0), TopicPartition("t", 0, 1700000000301),
                               TopicPartition("t", 1, 1700000000050)], timeout=1.0)
    assert [(tp.topic, tp.partition, tp.offset) for tp in got] == [
        ("t", 0, 2), ("t", 0, 2), ("t", 0, 0), ("t", 0, shmbus.OFFSET_END), ("t", 1, 0)]
    # Seeking there reads from that record on.
    c.assign([TopicPartition("t", 0, got[0].offset)])
    assert [m.timestamp()[1] for m in drain(c, 2)] == [1700000000200, 1700000000300]
    with pytest.raises(KafkaException) as e:
        c.offsets_for_times([TopicPartition("t", 0)])  # no time given (OFFSET_INVALID)
    assert e.value.args[0].code() == KafkaError._INVALID_ARG
    with pytest.raises(KafkaException) as e:
        c.offsets_for_times([TopicPartition("t", 7, 0)])
    assert e.value.args[0].code() == KafkaError.INVALID_ARGUMENT
    with pytest.raises(TypeError):
        c.offsets_for_times([("t", 0, 0)])
    c.close()


def test_acks_all_returns_once_busd_spilled_and_flush_waits_for_it(bus):
    spilled_topic(bus, "d")
    make_topic(bus, "mem")
    p = Producer({"bus": bus, "acks": "all", "shmbus.ack.timeout.ms": 300})
    p.produce("d", b"0")
    assert disk_end(bus, "d") >= 1, "acks=all: on disk when produce() returns"
    assert p.flush(5.0) == 0
    with pytest.raises(KafkaException, match="does not spill") as e:
        p.produce("mem", b"x")
    assert e.value.args[0].code() == KafkaError.INVALID_ARGUMENT
    # busd stopped: the send's wait times out (the record is in the ring), and so does flush();
    # once busd runs again, flush() sees it on disk.
    pid = busd_pid(bus)
    assert pid
    stop_process(pid)
    try:
        with pytest.raises(KafkaException) as e:
            p.produce("d", b"1")
        assert e.value.args[0].code() == KafkaError.TIMED_OUT
        t0 = time.monotonic()
        with pytest.raises(KafkaException) as e:
            p.flush(0.2)
        assert e.value.args[0].code() == KafkaError.TIMED_OUT and time.monotonic() - t0 >= 0.15
    finally:
        os.kill(pid, signal.SIGCONT)
    assert p.flush(10.0) == 0
    assert disk_end(bus, "d") >= 2
    # fsynced, in the bus's words; memory producers' flush never waits.
    f = Producer({"bus": bus, "shmbus.acks": "fsynced"})
    f.produce("d", b"2")
    assert f.flush(5.0) == 0 and disk_end(bus, "d") >= 3
    m = Producer({"bus": bus, "acks": 1})
    m.produce("mem", b"x")
    assert m.flush(0) == 0
    for bad in ({"acks": "sometimes"}, {"shmbus.acks": "disk"}):
        with pytest.raises(KafkaException) as e:
            Producer({"bus": bus, **bad})
        assert e.value.args[0].code() == KafkaError._INVALID_ARG, bad


def topic_of_values(bus, n):
    """Topic "t" (one partition) holding the values b"0" .. b"n-1"."""
    make_topic(bus, "t")
    p = Producer({"bus": bus})
    for i in range(n):
        p.produce("t", b"%d" % i)


def group_conf(bus, group, heard):
    """A consumer of `group` from the earliest offset, committing only when asked; on_commit's
    answers go to `heard` as (err, [(topic, partition, offset)])."""
    return {"bus": bus, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "on_commit": lambda err, tps: heard.append((err, [(tp.topic, tp.partition, tp.offset) for tp in tps]))}


def test_on_commit_hears_busds_answer_to_asynchronous_commits(bus):
    topic_of_values(bus, 3)
    heard = []
    c = Consumer(group_conf(bus, "g", heard))
    c.subscribe(["t"])
    assert len(drain(c, 3)) == 3
    assert c.commit() is None  # the positions, asynchronously
    wait_for(lambda: c.poll(0.05) is None and len(heard) == 1, what="the commit's answer")
    assert heard == [(None, [("t", 0, 3)])]
    assert c.commit(offsets=[TopicPartition("t", 0, 1)]) is None  # given offsets, asynchronously too
    wait_for(lambda: c.poll(0.05) is None and len(heard) == 2, what="the second answer")
    assert heard[1] == (None, [("t", 0, 1)])
    assert c.committed([TopicPartition("t", 0)])[0].offset == 1
    c.commit(asynchronous=False)  # synchronous: returned, not called back
    assert c.poll(0.1) is None and len(heard) == 2

    def boom(err, tps):
        raise ZeroDivisionError("from on_commit")

    c2 = Consumer({"bus": bus, "group.id": "g2", "on_commit": boom})
    c2.subscribe(["t"])
    c2.commit()
    with pytest.raises(ZeroDivisionError):
        wait_for(lambda: c2.poll(0.05) is None and False, timeout=5.0, what="on_commit's exception")
    c2.close()
    c.close()


def test_on_commit_hears_auto_commits_too(bus):
    """As librdkafka's offset_commit_cb: the auto-commit timer's commits, and close()'s."""
    topic_of_values(bus, 3)
    heard = []
    conf = group_conf(bus, "g", heard)
    conf.update({"enable.auto.commit": True, "auto.commit.interval.ms": 50})
    c = Consumer(conf)
    c.subscribe(["t"])
    assert len(drain(c, 3)) == 3
    wait_for(lambda: c.poll(0.05) is None and len(heard) >= 1, what="the timer's commit")
    assert heard[0] == (None, [("t", 0, 3)])
    Producer({"bus": bus}).produce("t", b"3")
    assert len(drain(c, 1)) == 1
    c.close()
    assert heard[-1] == (None, [("t", 0, 4)]), heard


@pytest.mark.parametrize("with_on_lost", [True, False])
def test_on_lost_hears_of_partitions_taken_after_max_poll_interval(bus, with_on_lost):
    """Without on_lost, on_revoke hears of them: Kafka's default onPartitionsLost."""
    make_topic(bus, "t")
    events = []
    c = Consumer({"bus": bus, "group.id": "g", "max.poll.interval.ms": 300, "session.timeout.ms": 6000,
                  "heartbeat.interval.ms": 100})
    lost = {"on_lost": lambda cons, tps: events.append(("lost", tps))} if with_on_lost else {}
    c.subscribe(["t"], on_revoke=lambda cons, tps: events.append(("revoke", tps)), **lost)
    assert events == []
    time.sleep(0.6)  # no poll() for twice max.poll.interval.ms: the member leaves the group
    want = "lost" if with_on_lost else "revoke"
    wait_for(lambda: c.poll(0.05) is None and events, what=want)
    assert events[0] == (want, [TopicPartition("t", 0)])
    if with_on_lost:
        assert not any(e[0] == "revoke" for e in events), "lost partitions are not revoked too"
    wait_for(lambda: c.poll(0.05) is None and c.assignment() == [TopicPartition("t", 0)], what="joining again")
    c.close()


def test_stats_cb_gets_librdkafkas_statistics_json(bus):
    make_topic(bus, "t")
    ps, cs = [], []
    p = Producer({"bus": bus, "stats_cb": ps.append, "statistics.interval.ms": 10})
    p.produce("t", b"abc", key=b"k")
    time.sleep(0.02)
    wait_for(lambda: p.poll(0) == 0 and ps, what="the producer's statistics")
    st = json.loads(ps[-1])
    assert st["type"] == "producer" and st["txmsgs"] == 1 and "t" in st["topics"]
    c = Consumer({"bus": bus, "auto.offset.reset": "earliest", "stats_cb": cs.append, "statistics.interval.ms": 10})
    c.assign([TopicPartition("t", 0)])
    assert len(drain(c, 1)) == 1
    wait_for(lambda: c.poll(0.02) is None and cs and json.loads(cs[-1])["rxmsgs"] == 1, what="the consumer's statistics")
    assert json.loads(cs[-1])["type"] == "consumer"
    c.close()
    with pytest.raises(KafkaException, match="statistics_cb is not set"):
        Producer({"bus": bus, "statistics.interval.ms": 1000})

    def boom(s):
        raise ZeroDivisionError("from stats_cb")

    q = Producer({"bus": bus, "stats_cb": boom, "statistics.interval.ms": 1})
    time.sleep(0.01)
    with pytest.raises(ZeroDivisionError):
        q.poll(0)
    shmbus.AdminClient({"bus": bus, "stats_cb": boom, "statistics.interval.ms": 1})  # accepted: no statistics


def test_assigned_consumers_with_a_group_id_start_at_and_commit_the_groups_offsets(bus):
    topic_of_values(bus, 5)
    heard = []
    conf = group_conf(bus, "solo", heard)
    c = Consumer(conf)
    c.assign([TopicPartition("t", 0)])
    assert [m.offset() for m in drain(c, 3)] == [0, 1, 2]
    assert c.commit(asynchronous=False) == [TopicPartition("t", 0, 3)]
    assert c.committed([TopicPartition("t", 0)])[0].offset == 3
    c.commit(offsets=[TopicPartition("t", 0, 4)])  # asynchronously, answered to on_commit
    wait_for(lambda: c.poll(0.05) is None and heard, what="the commit's answer")
    assert heard == [(None, [("t", 0, 4)])]
    c.close()
    c2 = Consumer(conf)
    c2.assign([TopicPartition("t", 0)])
    assert [m.value() for m in drain(c2, 1)] == [b"4"], "starts at the group's committed offset"
    c2.close()
    c3 = Consumer(conf)  # an offset given to assign() wins over the committed one
    c3.assign([TopicPartition("t", 0, 1)])
    assert drain(c3, 1)[0].offset() == 1
    c3.close()
