# Producer, Consumer and Message: every method, on one process.
import ast
import gc
import inspect
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
import tracemalloc

import pytest
import shmbus
from shmbus import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from conftest import drain, kafka_partition, make_topic


def consumer_at(bus, tps, **conf):
    c = Consumer({"bus": bus, "auto.offset.reset": "earliest", **conf})
    c.assign(tps)
    return c


def test_produce_then_consume_keeps_every_field(bus):
    make_topic(bus, "t", 2)
    reports = []
    p = Producer({"bus": bus})
    p.produce("t", b"v0", key=b"k0", partition=0, headers={"h": b"x", "s": "y"}, timestamp=1700000000123,
              on_delivery=lambda err, msg: reports.append((err, msg)))
    p.produce("t", "str-value", key="str-key", partition=1, headers=[("a", b"1"), ("a", None)])
    p.produce("t", bytearray(b"from-bytearray"), partition=0, callback=lambda e, m: reports.append((e, m)))
    p.produce("t", memoryview(b"xxfrom-memoryview")[2:], partition=1)
    p.produce("t", None, key=b"gone", partition=0)  # a tombstone
    assert len(p) == 2, "two sends asked for delivery reports"
    assert p.poll(0) == 2
    assert len(p) == 0
    assert p.flush(1.0) == 0
    err, msg = reports[0]
    assert err is None and msg.topic() == "t" and msg.partition() == 0 and msg.offset() == 0
    assert msg.key() == b"k0" and msg.value() == b"v0"
    assert reports[1][1].offset() == 1

    c = consumer_at(bus, [TopicPartition("t", 0), TopicPartition("t", 1)])
    got = {(m.partition(), m.offset()): m for m in drain(c, 5)}
    m = got[(0, 0)]
    assert (m.topic(), m.key(), m.value(), m.len(), len(m)) == ("t", b"k0", b"v0", 2, 2)
    assert m.headers() == [("h", b"x"), ("s", b"y")]
    assert m.timestamp() == (shmbus.TIMESTAMP_CREATE_TIME, 1700000000123)
    assert m.error() is None
    assert got[(1, 0)].key() == b"str-key" and got[(1, 0)].value() == b"str-value"
    assert got[(1, 0)].headers() == [("a", b"1"), ("a", None)], "a None header value stays null, as confluent-kafka's"
    assert got[(0, 1)].value() == b"from-bytearray" and got[(0, 1)].key() is None and got[(0, 1)].headers() is None
    assert got[(1, 1)].value() == b"from-memoryview"
    tomb = got[(0, 2)]
    assert tomb.value() is None and tomb.key() == b"gone" and tomb.len() == 0
    now_ms = time.time() * 1000
    assert abs(got[(1, 0)].timestamp()[1] - now_ms) < 60_000, "timestamp 0: stamped by the producer"
    c.close()
    p.close()


def test_null_and_empty_values_are_told_apart_in_both_value_modes(bus):
    make_topic(bus, "t")
    p = Producer({"bus": bus})
    p.produce("t", None, key=b"k")
    p.produce("t", b"", key=b"k")
    p.produce("t", "", key=b"k")
    for view in (False, True):
        c = Consumer({"bus": bus, "auto.offset.reset": "earliest", "shmbus.value.memoryview": view})
        c.assign([TopicPartition("t", 0)])
        got = c.consume(3, 5.0)
        assert [m.value() is None for m in got] == [True, False, False], view
        assert [bytes(m.value()) for m in got[1:]] == [b"", b""]
        assert [m.len() for m in got] == [0, 0, 0]
        c.close()


# Keys whose Kafka partitions (of 5) are all different: a partitioner that is not Kafka's
# (or none: everything on one partition) cannot match them by chance.
KEYED = [b"a", b"order-17", b"\x00\xff", b"customer-123456"]


@pytest.mark.parametrize("partitioner", [None, "murmur2_random", "murmur2"])
def test_keys_go_to_the_kafka_partition(bus, partitioner):
    """Without a `partitioner` key too: Kafka's murmur2 (the Java client's) is the default."""
    assert sorted(kafka_partition(key, 5) for key in KEYED) == [1, 2, 3, 4]
    make_topic(bus, "k", 5)
    conf = {"bus": bus, "linger.ms": 5, "acks": 1}
    if partitioner is not None:
        conf["partitioner"] = partitioner
    p = Producer(conf)
    seen = {}
    for key in KEYED:
        p.produce("k", b"v", key=key, on_delivery=lambda e, m, key=key: seen.__setitem__(key, m.partition()))
    p.flush()
    assert set(seen) == set(KEYED)
    for key, part in seen.items():
        assert part == kafka_partition(key, 5), key
    assert "'partitioner'" in Producer.__doc__, "help(Producer) names the key"


@pytest.mark.parametrize("value", ["consistent_random", "fnv1a_random", "random", ""])
def test_an_unsupported_partitioner_is_refused_by_name(bus, value):
    with pytest.raises(KafkaException, match=f"'partitioner' = '{value}'") as e:
        Producer({"bus": bus, "partitioner": value})
    assert e.value.args[0].code() == KafkaError._INVALID_ARG


def test_consumer_positions_seek_pause_and_watermarks(bus):
    make_topic(bus, "t", 2)
    p = Producer({"bus": bus})
    for i in range(10):
        p.produce("t", str(i), partition=0)
        p.produce("t", "b" + str(i), partition=1)
    c = Consumer({"bus": bus, "auto.offset.reset": "latest"})
    c.assign([TopicPartition("t", 0, 3), TopicPartition("t", 1, shmbus.OFFSET_BEGINNING)])
    assert sorted(c.assignment()) == [TopicPartition("t", 0), TopicPartition("t", 1)]
    assert [tp.offset for tp in c.position([TopicPartition("t", 0), TopicPartition("t", 1)])] == [3, 0]
    assert c.get_watermark_offsets(TopicPartition("t", 0)) == (0, 10)

    m = c.poll(5.0)
    # One record handed out: the rest of the fetched batch is given back, positions are Python's.
    assert c.position([TopicPartition("t", m.partition())])[0].offset == m.offset() + 1

    c.seek(TopicPartition("t", 0, 8))
    c.pause([TopicPartition("t", 1)])
    vals = [m.value() for m in drain(c, 2)]
    assert vals == [b"8", b"9"]
    assert c.poll(0.05) is None, "partition 1 is paused"
    c.resume([TopicPartition("t", 1)])
    rest = drain(c, 9)
    assert [m.partition() for m in rest] == [1] * 9
    c.seek(TopicPartition("t", 1, shmbus.OFFSET_END))
    assert c.position([TopicPartition("t", 1)])[0].offset == 10
    assert c.poll(0.05) is None

    c.seek(TopicPartition("t", 0, 0))
    batch = c.consume(num_messages=4, timeout=5.0)
    assert [m.value() for m in batch] == [b"0", b"1", b"2", b"3"]
    assert c.consume(0, 0) == []
    c.seek(TopicPartition("t", 0, shmbus.OFFSET_BEGINNING))
    assert c.poll(5.0).offset() == 0
    c.unassign()
    assert c.assignment() == []
    assert c.poll(0.01) is None
    md = c.list_topics()
    assert set(md.topics) == {"t"} and md.topics["t"].partitions[1].high == 10
    assert c.memberid() is None
    c.close()


@pytest.mark.parametrize("reset", ["latest", None, "earliest"])
def test_auto_offset_reset_latest_starts_after_what_is_there(bus, reset):
    """latest (also the default, as librdkafka's): an assign() without an offset starts at the
    end; earliest, the control, at the first record."""
    make_topic(bus, "t")
    p = Producer({"bus": bus})
    for i in range(3):
        p.produce("t", b"old-%d" % i)
    conf = {"bus": bus}
    if reset is not None:
        conf["auto.offset.reset"] = reset
    c = Consumer(conf)
    c.assign([TopicPartition("t", 0)])
    if reset == "earliest":
        assert [m.offset() for m in drain(c, 3)] == [0, 1, 2]
    else:
        assert c.poll(0.3) is None, "nothing new since the assignment"
    p.produce("t", b"new")
    m = c.poll(5.0)
    assert m is not None and m.error() is None
    assert (m.offset(), m.value()) == (3, b"new")
    c.close()


def small_ring(bus):
    """Topic "t": one partition, a 4 KiB overwrite ring; its producer."""
    make_topic(bus, "t", 1, **{"shmbus.capacity": 4096, "shmbus.retention": "overwrite"})
    return Producer({"bus": bus})


def wrap(p):
    for i in range(200):  # 200 records of 64 bytes: the ring wraps several times
        p.produce("t", b"%064d" % i)


def test_auto_offset_reset_error_reports_a_position_overwritten_before_it_was_read(bus):
    p = small_ring(bus)
    p.produce("t", b"first")
    cs = {reset: Consumer({"bus": bus, "auto.offset.reset": reset}) for reset in ("error", "earliest")}
    for c in cs.values():
        c.assign([TopicPartition("t", 0, 0)])
    wrap(p)
    low, high = cs["error"].get_watermark_offsets(TopicPartition("t", 0))
    assert low > 1 and high == 201
    m = cs["error"].poll(5.0)
    assert m is not None and m.error() is not None, "error: the lost position is reported"
    assert m.error().code() == KafkaError.OFFSET_OUT_OF_RANGE, m.error()
    m = cs["earliest"].poll(5.0)  # the control: earliest goes on from the oldest record
    assert m is not None and m.error() is None and m.offset() >= low
    for c in cs.values():
        c.close()


@pytest.mark.parametrize("reset", ["error", "earliest", "latest"])
def test_assign_at_an_overwritten_offset_follows_auto_offset_reset(bus, reset):
    """As Kafka's: an assigned offset no longer there is out of range, and auto.offset.reset
    says where to start; with error, the next poll() returns the error as a Message."""
    p = small_ring(bus)
    wrap(p)
    c = Consumer({"bus": bus, "auto.offset.reset": reset})
    low, high = c.get_watermark_offsets(TopicPartition("t", 0))
    assert low > 0
    c.assign([TopicPartition("t", 0, 0)])
    if reset == "error":
        m = c.poll(5.0)
        assert m is not None and m.error() is not None
        assert m.error().code() == KafkaError.OFFSET_OUT_OF_RANGE and "offset 0" in m.error().str(), m.error()
    elif reset == "earliest":
        m = c.poll(5.0)
        assert m is not None and m.error() is None and m.offset() == low
    else:
        assert c.poll(0.2) is None
        p.produce("t", b"new")
        m = c.poll(5.0)
        assert m is not None and (m.offset(), m.value()) == (high, b"new")
    c.close()


def view_topic(bus, n):
    """The block topic t with n records value-0, value-1..."""
    make_topic(bus, "t", 1, **{"shmbus.retention": "block"})
    p = Producer({"bus": bus})
    for i in range(n):
        p.produce("t", b"value-%d" % i, partition=0)


def test_memoryview_values_live_until_the_next_poll(bus):
    view_topic(bus, 3)
    c = consumer_at(bus, [TopicPartition("t", 0)], **{"shmbus.value.memoryview": True, "shmbus.hold.producers": True})
    m = c.poll(5.0)
    v = m.value()
    assert isinstance(v, memoryview) and v.readonly and bytes(v) == b"value-0"
    assert bytes(c.poll(5.0).value()) == b"value-1"
    with pytest.raises(ValueError):
        bytes(v)  # released by the poll after it: raises, never reads freed memory
    batch = c.consume(5, 1.0)
    assert [bytes(m.value()) for m in batch] == [b"value-2"]
    c.close()
    with pytest.raises(ValueError):
        bytes(batch[0].value())
    # A consumer dropped without close() releases its views too.
    c = consumer_at(bus, [TopicPartition("t", 0)], **{"shmbus.value.memoryview": True})
    v = c.poll(5.0).value()
    del c
    with pytest.raises(ValueError):
        bytes(v)


def view_consumer(bus, **conf):
    return consumer_at(bus, [TopicPartition("t", 0)], **{"shmbus.value.memoryview": True, **conf})


def refused(call):
    """call() refused because a view of a previous value is still alive: KafkaException(_STATE)."""
    with pytest.raises(KafkaException) as e:
        call()
    assert e.value.args[0].code() == KafkaError._STATE and "memoryview" in str(e.value), e.value


@pytest.mark.parametrize("hold", [False, True])
def test_a_slice_or_memoryview_of_a_value_keeps_the_consumer_where_it_is(bus, hold):
    # A slice v[1:] or memoryview(v) is a memoryview of its own: releasing v does not end it.
    # The consumer must not move on (and free or hand the bytes to producers) while one lives.
    view_topic(bus, 4)
    c = view_consumer(bus, **{"shmbus.hold.producers": hold, "shmbus.max.poll.records": 1})
    v = c.poll(5.0).value()
    s = v[1:]
    refused(lambda: c.poll(0.1))
    with pytest.raises(ValueError):
        bytes(v)  # the value itself was released by that poll
    assert bytes(s) == b"alue-0" and s[0] == ord("a"), "the bytes of a live slice never move on"
    with pytest.raises(BufferError):
        memoryview(s.obj)  # no new view of a value the consumer has left
    refused(lambda: c.consume(5, 0.1))
    refused(lambda: c.position([TopicPartition("t", 0)]))
    refused(lambda: c.seek(TopicPartition("t", 0, 0)))
    s.release()
    w = c.poll(5.0).value()
    assert bytes(w) == b"value-1", "the refused calls did not move on"
    m = memoryview(w)
    refused(lambda: c.poll(0.1))
    assert bytes(m) == b"value-1"
    del m
    assert bytes(c.poll(5.0).value()) == b"value-2"
    c.close()


def test_views_released_by_with_blocks_let_the_next_poll_go_on(bus):
    view_topic(bus, 3)
    c = view_consumer(bus, **{"shmbus.hold.producers": True})
    with c.poll(5.0).value() as v:
        with v[6:] as s, memoryview(v) as w:
            assert bytes(s) == b"0" and bytes(w) == b"value-0"
    assert bytes(c.poll(5.0).value()[6:]) == b"1"  # a temporary slice, gone at once
    assert [bytes(m.value()) for m in c.consume(5, 1.0)] == [b"value-2"]
    c.close()


def test_close_with_a_live_slice_is_refused_until_it_goes(bus):
    view_topic(bus, 1)
    c = view_consumer(bus, **{"shmbus.hold.producers": True})
    s = c.poll(5.0).value()[2:]
    refused(c.close)
    assert bytes(s) == b"lue-0"
    assert c.assignment() == [TopicPartition("t", 0)], "still open"
    s.release()
    c.close()
    with pytest.raises(RuntimeError, match="Consumer closed"):
        c.poll(0)


def fill(p, value):
    """Produces `value` until the block topic t is full: (records that went in, the KafkaError that stopped them)."""
    for n in range(1000):
        try:
            p.produce("t", value, partition=0)
        except KafkaException as e:
            return n, e.args[0]
    raise AssertionError("the block topic never filled up")


def test_a_live_view_holds_producers_back_and_its_bytes_never_change(bus):
    make_topic(bus, "t", 1, **{"shmbus.retention": "block", "shmbus.capacity": 4096})
    p = Producer({"bus": bus, "shmbus.max.block.ms": 50})
    p.produce("t", b"A" * 512, partition=0)
    c = view_consumer(bus, **{"shmbus.hold.producers": True, "shmbus.max.poll.records": 1})
    s = c.poll(5.0).value()[1:]
    n, err = fill(p, b"B" * 512)
    assert n >= 2 and err.code() == KafkaError.TIMED_OUT
    refused(lambda: c.poll(0.1))
    n, err = fill(p, b"C" * 512)
    assert n == 0 and err.code() == KafkaError.TIMED_OUT, "the refused poll let producers pass"
    assert bytes(s) == b"A" * 511
    s.release()
    assert bytes(c.poll(5.0).value()) == b"B" * 512
    n, err = fill(p, b"D" * 512)
    assert n >= 1, "the room of the first record is given back"
    # A consumer dropped (not closed) while a slice lives: it stays, holding producers, until
    # the slice goes; then it is closed and producers pass.
    s = c.poll(5.0).value()[1:]
    del c
    gc.collect()
    n, err = fill(p, b"E" * 512)
    assert err.code() == KafkaError.TIMED_OUT and n <= 2
    assert bytes(s) == b"B" * 511
    s.release()
    for _ in range(20):
        p.produce("t", b"F" * 512, partition=0)


def test_a_call_that_moves_positions_releases_the_views_first(bus):
    # position() gives back the fetched records not handed out: the gate of a consumer that
    # holds producers back moves past the value handed out, whose room producers then take.
    make_topic(bus, "t", 1, **{"shmbus.retention": "block", "shmbus.capacity": 4096})
    p = Producer({"bus": bus, "shmbus.max.block.ms": 50})
    c = view_consumer(bus, **{"shmbus.hold.producers": True})
    assert fill(p, b"A" * 512)[0] >= 2
    v = c.poll(5.0).value()
    assert fill(p, b"B" * 512)[0] == 0, "held back"
    assert c.position([TopicPartition("t", 0)])[0].offset == 1
    assert fill(p, b"B" * 512)[0] >= 1, "the first record's room went to producers"
    with pytest.raises(ValueError):
        bytes(v)  # released by position(): never reads the bytes that replaced it
    c.close()


def test_produce_reads_a_buffer_in_place(bus):
    import tracemalloc
    make_topic(bus, "t", 1, **{"shmbus.capacity": 32 << 20})
    p = Producer({"bus": bus})
    big = bytearray(b"x" * (4 << 20))
    p.produce("t", big, partition=0)  # warm: first-use allocations are not the value's
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        p.produce("t", big, partition=0)
        p.produce("t", memoryview(big)[1:], partition=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak - before < 256 << 10, f"produce() copied the value: peak +{peak - before} bytes"
    with pytest.raises(TypeError, match="not C-contiguous"):
        p.produce("t", memoryview(b"abcd")[::2], partition=0)


def test_context_managers_and_closed_clients_raise(bus):
    make_topic(bus, "t")
    with Producer({"bus": bus}) as p:
        p.produce("t", b"x")
    with pytest.raises(RuntimeError, match="Producer closed"):
        p.produce("t", b"x")
    with pytest.raises(RuntimeError):
        p.flush()
    with Consumer({"bus": bus}) as c:
        c.assign([TopicPartition("t", 0)])
    for call in (lambda: c.poll(0), lambda: c.consume(1, 0), lambda: c.assignment(), lambda: c.assign([]),
                 lambda: c.commit(), lambda: c.position([TopicPartition("t", 0)]), lambda: c.subscribe(["t"])):
        with pytest.raises(RuntimeError, match="Consumer closed"):
            call()
    c.close()  # twice: allowed
    a = shmbus.AdminClient({"bus": bus})
    a.close()
    with pytest.raises(RuntimeError):
        a.list_topics()


def test_the_gil_is_released_while_poll_waits(bus):
    make_topic(bus, "t")
    c = consumer_at(bus, [TopicPartition("t", 0)])
    ticks = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            ticks[0] += 1

    t = threading.Thread(target=spin)
    t.start()
    before = ticks[0]
    assert c.poll(0.3) is None
    during = ticks[0] - before
    stop.set()
    t.join()
    assert during > 1000, "another thread ran while poll() waited"


def test_a_consumer_waiting_in_one_thread_refuses_another(bus):
    make_topic(bus, "t")
    c = consumer_at(bus, [TopicPartition("t", 0)])
    t = threading.Thread(target=lambda: c.poll(1.0))
    t.start()
    time.sleep(0.1)
    with pytest.raises(KafkaException) as e:
        c.poll(0)
    assert e.value.args[0].code() == KafkaError._STATE
    t.join()
    c.close()


def test_errors_of_the_library_are_kafka_exceptions(bus):
    make_topic(bus, "t", 2)
    p = Producer({"bus": bus})
    with pytest.raises(KafkaException) as e:
        p.produce("nope", b"x")
    err = e.value.args[0]
    assert isinstance(err, KafkaError) and err.code() == KafkaError.NOT_FOUND and err.name() == "NOT_FOUND"
    assert "nope" in err.str() and not err.fatal() and err == KafkaError.NOT_FOUND
    with pytest.raises(KafkaException) as e:
        p.produce("t", b"x", partition=7)
    assert e.value.args[0].code() == KafkaError.INVALID_ARGUMENT
    c = Consumer({"bus": bus})
    with pytest.raises(KafkaException):
        c.assign([TopicPartition("t", 9)])
    c.assign([TopicPartition("t", 0)])
    with pytest.raises(KafkaException) as e:
        c.seek(TopicPartition("t", 0, 100))
    assert e.value.args[0].code() == KafkaError.OFFSET_OUT_OF_RANGE
    with pytest.raises(KafkaException) as e:
        c.pause([TopicPartition("t", 1)])
    assert "not assigned" in e.value.args[0].str()
    with pytest.raises(KafkaException) as e:
        c.commit(asynchronous=False)


def test_bad_arguments_raise_the_documented_exceptions(bus):
    make_topic(bus, "t")
    with pytest.raises(KafkaException, match="unknown configuration key 'no.such.key'") as e:
        Producer({"bus": bus, "no.such.key": 1})
    assert e.value.args[0].code() == KafkaError._INVALID_ARG
    with pytest.raises(KafkaException, match="'group.id'"):
        Producer({"bus": bus, "group.id": "g"})  # a consumer's key
    with pytest.raises(KafkaException, match="'acks' = 'most'") as e:
        Producer({"bus": bus, "acks": "most"})
    assert e.value.args[0].code() == KafkaError._INVALID_ARG
    with pytest.raises(KafkaException) as e:
        Consumer({"bus": bus, "enable.partition.eof": True})
    assert e.value.args[0].code() == KafkaError._NOT_IMPLEMENTED
    with pytest.raises(TypeError, match="on_commit must be callable"):
        Consumer({"bus": bus, "on_commit": 5})
    with pytest.raises(TypeError, match="stats_cb must be callable"):
        Producer({"bus": bus, "stats_cb": 5})
    with pytest.raises(KafkaException, match="auto.offset.reset"):
        Consumer({"bus": bus, "auto.offset.reset": "sometimes"})
    with pytest.raises(KafkaException, match="not an integer"):
        Consumer({"bus": bus, "session.timeout.ms": "soon"})
    with pytest.raises(KafkaException, match="heartbeat_interval"):
        Consumer({"bus": bus, "session.timeout.ms": 1000, "heartbeat.interval.ms": 1000})
    with pytest.raises(TypeError):
        Producer({1: 2})
    with pytest.raises(TypeError):
        Producer("bus=x")
    p = Producer({"bus": bus})
    with pytest.raises(TypeError, match="value must be str, bytes"):
        p.produce("t", 123)
    with pytest.raises(TypeError, match="key must be"):
        p.produce("t", b"x", key=1.5)
    with pytest.raises(TypeError):
        p.produce("t", b"x", headers=5)
    with pytest.raises(TypeError):
        p.produce("t", b"x", headers=[("k",)])
    with pytest.raises(TypeError):
        p.produce("t", b"x", on_delivery=3)
    with pytest.raises(ValueError):
        p.produce("t", b"x", partition=-5)
    with pytest.raises(ValueError):
        p.produce("t", b"x", timestamp=-1)
    with pytest.raises(TypeError):
        p.produce(5, b"x")
    c = Consumer({"bus": bus})
    with pytest.raises(TypeError):
        c.assign("t")
    with pytest.raises(TypeError):
        c.assign([("t", 0)])
    with pytest.raises(TypeError):
        c.poll("soon")
    with pytest.raises(ValueError):
        c.consume(-1)
    with pytest.raises(KafkaException, match="group.id"):
        c.subscribe(["t"])
    c2 = Consumer({"bus": bus, "group.id": "g"})
    with pytest.raises(TypeError):
        c2.subscribe(["t"], on_lost=5)
    with pytest.raises(TypeError):
        c2.subscribe(["t"], on_assign=5)
    with pytest.raises(KafkaException):
        c.commit(offsets=[TopicPartition("t", 0)])  # no offset
    with pytest.raises(TypeError):
        c.commit(message="m")
    with pytest.raises(KafkaException):
        c.seek(TopicPartition("t", 0, -7))


@pytest.mark.parametrize("cls", [Consumer, shmbus.AdminClient])
@pytest.mark.parametrize("key", ["no.such.key", "acks", "bootstrap.server"])
def test_unknown_config_keys_are_named_by_every_client(bus, cls, key):
    """A key unknown to the client (a typo, or another client's key) raises naming it."""
    with pytest.raises(KafkaException, match=f"unknown configuration key '{key}'") as e:
        cls({"bus": bus, key: "1"})
    assert e.value.args[0].code() == KafkaError._INVALID_ARG


def test_config_table_lists_every_key_once():
    rows = shmbus.config_keys()
    keys = [(k, tuple(c)) for k, c, _, _ in rows]
    assert len(keys) == len(set(keys))
    assert {s for _, _, s, _ in rows} <= {"used", "ignored", "pending"}
    support = {k: s for k, _, s, _ in rows}
    for key in ("acks", "on_commit", "stats_cb", "statistics.interval.ms"):
        assert support[key] == "used", key


def test_help_reads_like_the_header():
    assert "produce(topic, value=None, key=None, partition=-1" in shmbus.Producer.produce.__doc__
    assert "GIL" in shmbus.Consumer.subscribe.__doc__
    assert "memoryview" in shmbus.Message.__doc__


STUBS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "shmbus.pyi")
# What every class has from Python itself (object, Exception), not from the module.
INHERITED = set(dir(object)) | set(dir(Exception))


def stub_tree():
    with open(STUBS) as f:
        return ast.parse(f.read(), STUBS)


def module_classes():
    return {n: o for n, o in vars(shmbus).items() if inspect.isclass(o) and not n.startswith("_")}


def own_members(cls):
    """The names a class of the module defines (its own or from a class of the module)."""
    return {n for n in dir(cls) if n not in INHERITED or n in vars(cls) and n not in ("__doc__", "__module__")}


def test_the_stubs_name_what_the_module_has():
    tree = stub_tree()
    stub_classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    stub_funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    stub_consts = {n.target.id for n in tree.body if isinstance(n, ast.AnnAssign)}
    classes = module_classes()
    assert set(stub_classes) == set(classes)
    public = {n for n in vars(shmbus) if not n.startswith("_") and n not in classes}
    funcs = {n for n in public if callable(getattr(shmbus, n))}
    assert stub_funcs == funcs
    assert stub_consts - {"__version__"} == public - funcs
    assert "__version__" in stub_consts and isinstance(shmbus.__version__, str)
    for name, node in stub_classes.items():
        cls = classes[name]
        methods = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
        attrs = {n.target.id for n in node.body if isinstance(n, ast.AnnAssign)}
        for m in methods:  # every method of the stubs, dunders too, is the class's
            assert callable(getattr(cls, m, None)), f"{name}.{m} is in the stubs, not in the module"
        mine = own_members(cls)
        public_methods = {m for m in mine if not m.startswith("_") and callable(getattr(cls, m))}
        assert public_methods - methods - attrs == set(), f"{name}: methods missing from the stubs"
        class_values = {m for m in mine if not m.startswith("__") and not callable(getattr(cls, m))
                        and not isinstance(inspect.getattr_static(cls, m), property)}
        assert class_values - attrs == set(), f"{name}: class attributes missing from the stubs"
        if name == "KafkaError":  # its codes: class attributes, each in the stubs
            assert attrs == {m for m in dir(cls) if m.isupper() or m.startswith("_") and m[1:].isupper()}


def doc_text(name, obj):
    """obj's docstring without pybind11's signature lines."""
    lines = (obj.__doc__ or "").strip().splitlines()
    return "\n".join(line for line in lines if not re.match(rf"\s*(\d+\. )?{re.escape(name)}\(.*\)( -> .*)?$", line)).strip()


def test_help_gives_every_public_callable_a_docstring_beyond_its_signature():
    missing = []
    for name, cls in module_classes().items():
        if len(doc_text(name, cls)) < 10:
            missing.append(name)
        for m in own_members(cls):
            if m.startswith("_"):  # (construction: the class's docstring)
                continue
            obj = getattr(cls, m)
            if not callable(obj) or inspect.isclass(obj) or isinstance(obj, int):
                continue
            if len(doc_text(m, obj)) < 10:
                missing.append(f"{name}.{m}")
    for n, f in vars(shmbus).items():
        if not n.startswith("_") and callable(f) and not inspect.isclass(f) and len(doc_text(n, f)) < 10:
            missing.append(n)
    assert missing == []


# Found by attacking the module: a signal handler runs Python in the middle of a poll() or
# flush() (at its signal checks). One that closes the consumer destroyed the C++ Consumer
# under the poll's loop (a crash); one that polls replaced the batch not handed out yet
# (records lost). Both are refused now: the interrupted call owns the object.
SIGNAL_CLOSE = r"""
import signal, sys
import shmbus
c = shmbus.Consumer({"bus": sys.argv[1], "auto.offset.reset": "earliest"})
c.assign([shmbus.TopicPartition("sig", 0)])
said = []
def handler(*_):
    try:
        c.close()
        said.append("closed")
    except shmbus.KafkaException as e:
        said.append(e.args[0].name())
signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.25)
assert c.poll(1.0) is None
c.close()
print(said)
"""


def test_a_signal_handler_closing_a_polling_consumer_is_refused_not_a_crash(bus, tmp_path):
    make_topic(bus, "sig", 1)
    script = tmp_path / "close_in_handler.py"
    script.write_text(SIGNAL_CLOSE)
    r = subprocess.run([sys.executable, str(script), bus], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-2000:]}"
    assert r.stdout.strip() == "['_STATE']", r.stdout


def test_a_signal_handler_polling_inside_a_poll_loses_no_record(bus):
    make_topic(bus, "sig", 1)
    p = Producer({"bus": bus})
    for i in range(10):
        p.produce("sig", b"r%d" % i, partition=0)
    p.close()
    tp = TopicPartition("sig", 0)
    c = consumer_at(bus, [TopicPartition("sig", 0, 0)])
    c.pause([tp])
    got, said = [], []

    def handler(*_):
        try:
            c.resume([tp])
            m = c.poll(0)
            got.append(m.offset())
        except KafkaException as e:
            said.append(e.args[0].name())

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.25)
        m = c.poll(1.0)
        if m is not None:
            got.append(m.offset())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    c.resume([tp])
    while True:
        m = c.poll(1.0)
        if m is None:
            break
        got.append(m.offset())
    c.close()
    assert got == list(range(10)), f"records lost or repeated: {got}"
    assert said == ["_STATE"]


def test_closing_a_producer_while_another_thread_waits_in_it_is_refused(bus):
    make_topic(bus, "full", 1, **{"shmbus.retention": "block", "shmbus.capacity": 4096})
    c = consumer_at(bus, [TopicPartition("full", 0)], **{"shmbus.hold.producers": True})  # producers wait for it
    p = Producer({"bus": bus, "shmbus.max.block.ms": 1500})
    n = 0
    with pytest.raises(KafkaException):
        while n < 100:
            p.produce("full", b"x" * 512, partition=0)
            n += 1
    errors = []
    t = threading.Thread(target=lambda: errors.append(pytest.raises(KafkaException, p.produce, "full", b"y" * 512, partition=0)))
    t.start()
    time.sleep(0.3)  # the thread waits for room, without the GIL
    with pytest.raises(KafkaException) as e:
        p.close()
    assert e.value.args[0].code() == KafkaError._STATE and "still waiting" in str(e.value)
    t.join(10)
    assert not t.is_alive() and len(errors) == 1
    p.close()  # once that returned
    c.close()


KEPT_BYTES = r"""
import gc, sys, tracemalloc
import shmbus
p = shmbus.Producer({"bus": sys.argv[1]})
tracemalloc.start()
base = tracemalloc.get_traced_memory()[0]
for _ in range(1100):
    p.produce("big", b"x" * 8192, partition=0, on_delivery=lambda err, msg: None)
    p.poll(0)
p.close()
gc.collect()
print(tracemalloc.get_traced_memory()[0] - base)
"""


def test_kept_value_bytes_are_small_ones_only(bus, tmp_path):
    # In a process of its own: the module's free list starts empty there.
    make_topic(bus, "big", 1)
    script = tmp_path / "kept_bytes.py"
    script.write_text(KEPT_BYTES)
    r = subprocess.run([sys.executable, str(script), bus], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    kept = int(r.stdout.strip())
    assert kept < 4 << 20, f"{kept} bytes still allocated after 1,100 delivery reports of 8 KiB values"


def test_a_view_that_could_not_be_released_is_released_by_a_later_call(bus):
    view_topic(bus, 3)
    c = view_consumer(bus)
    m = c.poll(5.0)
    pb = pickle.PickleBuffer(m.value())  # an export of the memoryview itself
    refused(lambda: c.poll(0.1))
    del pb
    assert bytes(c.poll(5.0).value()) == b"value-1", "the view was released once its export was gone"
    c.close()
