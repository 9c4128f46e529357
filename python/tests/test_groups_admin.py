# Consumer groups through busd (subscribe, commits, rebalance callbacks) and AdminClient.
import concurrent.futures
import threading
import time

import pytest
import shmbus
from shmbus import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from conftest import drain, make_topic


def test_admin_topics(bus):
    a = shmbus.AdminClient({"bus": bus})
    fs = a.create_topics([shmbus.NewTopic("a", 3), shmbus.NewTopic("b", config={"shmbus.capacity": 1 << 16,
                                                                                  "shmbus.retention": "block"})])
    assert set(fs) == {"a", "b"} and all(isinstance(f, concurrent.futures.Future) for f in fs.values())
    assert [f.result() for f in fs.values()] == [None, None]
    again = a.create_topics([shmbus.NewTopic("a", 3)])["a"]
    with pytest.raises(KafkaException) as e:
        again.result()
    assert e.value.args[0].code() == KafkaError.ALREADY_EXISTS
    assert a.create_topics([shmbus.NewTopic("v", 2)], validate_only=True)["v"].result() is None
    md = a.list_topics()
    assert md.cluster_id == bus and set(md.topics) == {"a", "b"}
    assert sorted(md.topics["a"].partitions) == [0, 1, 2]
    assert md.topics["b"].config["shmbus.retention"] == "block" and md.topics["b"].config["shmbus.capacity"] == 1 << 16
    assert set(a.list_topics("b").topics) == {"b"}
    with pytest.raises(KafkaException):
        a.list_topics("nope")
    with pytest.raises(KafkaException, match="unknown topic configuration key 'cleanup.policy'"):
        a.create_topics([shmbus.NewTopic("c", config={"cleanup.policy": "compact"})])
    with pytest.raises(KafkaException, match="replication_factor"):
        a.create_topics([shmbus.NewTopic("c", 1, replication_factor=3)])
    with pytest.raises(TypeError):
        a.create_topics(["c"])
    assert a.delete_topics(["a"])["a"].result() is None
    with pytest.raises(KafkaException):
        a.delete_topics(["a"])["a"].result()
    assert set(a.list_topics().topics) == {"b"}
    assert a.list_groups() == [], "no busd runs: no groups"
    with pytest.raises(KafkaException):
        a.describe_groups(["g"])["g"].result()


def test_group_subscribe_commit_and_describe(bus):
    make_topic(bus, "t", 2)
    p = Producer({"bus": bus})
    for i in range(6):
        p.produce("t", b"%d" % i, partition=i % 2)
    events = []
    conf = {"bus": bus, "group.id": "g", "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "client.id": "py-member"}
    c = Consumer(conf)
    c.subscribe(["t"], on_assign=lambda cons, tps: events.append(("assign", sorted(tps), cons is c)),
                on_revoke=lambda cons, tps: events.append(("revoke", sorted(tps), cons is c)))
    assert events == [("assign", [TopicPartition("t", 0), TopicPartition("t", 1)], True)]
    assert c.memberid()
    msgs = drain(c, 6)
    assert sorted(m.value() for m in msgs) == [b"%d" % i for i in range(6)]
    last0 = max((m for m in msgs if m.partition() == 0), key=lambda m: m.offset())
    assert c.commit(message=last0, asynchronous=False) == [TopicPartition("t", 0, 3)]
    assert [tp.offset for tp in c.committed([TopicPartition("t", 0), TopicPartition("t", 1)])] == [3, shmbus.OFFSET_INVALID]
    c.commit(offsets=[TopicPartition("t", 1, 2)], asynchronous=False)
    assert c.committed([TopicPartition("t", 1)])[0].offset == 2
    committed = c.commit(asynchronous=False)
    assert sorted((tp.partition, tp.offset) for tp in committed) == [(0, 3), (1, 3)]
    assert c.commit() is None  # asynchronous

    a = shmbus.AdminClient({"bus": bus})
    groups = a.list_groups()
    assert [g.id for g in groups] == ["g"]
    g = a.describe_groups(["g"])["g"].result()
    assert g.state and len(g.members) == 1 and g.members[0].client_id == "py-member"
    assert sorted(g.members[0].assignment) == [TopicPartition("t", 0), TopicPartition("t", 1)]
    assert sorted((tp.partition, tp.offset) for tp in g.partitions) == [(0, 3), (1, 3)]
    with pytest.raises(KafkaException):
        a.describe_groups(["nope"])["nope"].result()
    assert a.list_groups("nope") == []

    c.close()
    assert events[-1][0] == "revoke", "close() revokes before leaving"
    p.produce("t", b"late", partition=0)
    c2 = Consumer(conf)
    c2.subscribe(["t"])
    m = drain(c2, 1)[0]
    assert (m.partition(), m.offset(), m.value()) == (0, 3, b"late"), "starts at the committed offset"
    with pytest.raises(KafkaException):
        c2.assign([TopicPartition("t", 0)])  # subscribed: assign() and subscribe() do not mix
    c2.unsubscribe()
    assert c2.assignment() == []
    c2.close()


def test_a_callback_error_is_raised_by_the_call_that_ran_it(bus):
    make_topic(bus, "t")
    c = Consumer({"bus": bus, "group.id": "g"})

    def boom(cons, tps):
        raise ZeroDivisionError("from on_assign")

    with pytest.raises(ZeroDivisionError):
        c.subscribe(["t"], on_assign=boom)
    c.close()


def test_calls_from_a_rebalance_callback(bus):
    make_topic(bus, "t")
    Producer({"bus": bus}).produce("t", b"a")
    seen = []

    def on_assign(cons, tps):
        seen.append(cons.assignment())
        cons.seek(TopicPartition("t", 0, 0))
        with pytest.raises(KafkaException) as e:
            cons.poll(0)
        seen.append(e.value.args[0].code())

    c = Consumer({"bus": bus, "group.id": "g"})
    c.subscribe(["t"], on_assign=on_assign)
    assert seen == [[TopicPartition("t", 0)], KafkaError._STATE]
    assert c.poll(5.0).value() == b"a"
    c.close()


def test_enable_auto_commit_false_commits_nothing(bus):
    """Neither the timer (auto.commit.interval.ms 50, given time to fire) nor close() commits;
    a new member starts where auto.offset.reset says. (enable.auto.commit true does commit:
    test_on_commit_hears_auto_commits_too.)"""
    make_topic(bus, "t")
    p = Producer({"bus": bus})
    for i in range(3):
        p.produce("t", b"%d" % i)
    conf = {"bus": bus, "group.id": "g", "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "auto.commit.interval.ms": 50}
    c = Consumer(conf)
    c.subscribe(["t"])
    assert [m.offset() for m in drain(c, 3)] == [0, 1, 2]
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        assert c.poll(0.05) is None
    assert c.committed([TopicPartition("t", 0)])[0].offset == shmbus.OFFSET_INVALID, "the timer committed"
    c.close()
    c2 = Consumer(conf)
    c2.subscribe(["t"])
    assert c2.committed([TopicPartition("t", 0)])[0].offset == shmbus.OFFSET_INVALID, "close() committed"
    assert [m.offset() for m in drain(c2, 3)] == [0, 1, 2]
    c2.close()


def test_a_live_rebalance_revokes_what_the_new_member_is_assigned(bus):
    """c1 holds both partitions and polls; c2 joins from another thread: c1's on_revoke gets
    exactly what c2's on_assign gets, and the two keep one partition each."""
    make_topic(bus, "t", 2)
    both = [TopicPartition("t", 0), TopicPartition("t", 1)]
    revoked, assigned1, assigned2 = [], [], []
    conf = {"bus": bus, "group.id": "g", "auto.offset.reset": "earliest"}
    c1 = Consumer(conf)
    c1.subscribe(["t"], on_assign=lambda cons, tps: assigned1.append(sorted(tps)),
                 on_revoke=lambda cons, tps: revoked.append(sorted(tps)))
    assert assigned1 == [both]
    c2 = Consumer(conf)
    c2_holds = []
    failed = []

    def second():
        try:
            c2.subscribe(["t"], on_assign=lambda cons, tps: assigned2.append(sorted(tps)))
            deadline = time.monotonic() + 20
            while not c2.assignment() and time.monotonic() < deadline:
                c2.poll(0.05)
            c2_holds.extend(c2.assignment())
        except BaseException as e:  # noqa: B902 (reported by the test's thread)
            failed.append(e)

    t = threading.Thread(target=second)
    t.start()
    deadline = time.monotonic() + 25
    while t.is_alive() and time.monotonic() < deadline:
        c1.poll(0.05)
    t.join(5)
    assert not t.is_alive() and not failed, failed
    given = [tps for tps in assigned2 if tps]
    taken = [tps for tps in revoked if tps]
    assert len(given) == 1 and len(given[0]) == 1, assigned2
    assert taken == given, (revoked, assigned2)
    assert c2_holds == given[0]
    assert sorted(c1.assignment() + c2_holds) == both
    assert not set(c1.assignment()) & set(c2_holds)
    c2.close()
    c1.close()
