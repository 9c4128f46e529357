# Producer.produce, Consumer.poll and Consumer.consume are plain CPython methods that read
# the common argument shapes themselves and hand every other one to their pybind11 binding;
# Message is a plain CPython type. These pin that every shape still means what it did.
import gc

import pytest
import shmbus
from shmbus import Consumer, Producer, TopicPartition

from conftest import drain, make_topic


def reader(bus, topic="t"):
    c = Consumer({"bus": bus, "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, 0)])
    return c


def test_every_produce_argument_shape_sends_the_same_record(bus):
    make_topic(bus, "t")
    reports = []
    cb = lambda err, msg: reports.append(msg)  # noqa: E731
    p = Producer({"bus": bus})
    p.produce("t", b"a", None, 0)  # positional
    p.produce("t", b"b", b"k", 0, cb, 1700000000000, [("h", b"1")])  # all seven positional
    p.produce(topic="t", value=b"c", partition=0)  # keywords only
    p.produce("t", value=b"d", partition=0, callback=cb)  # the keyword-only alias
    p.produce("t", b"e", partition=0, timestamp=1700000000001, key="k2", headers={"x": b"y"})
    p.produce(type("Topic", (str,), {})("t"), b"f", partition=0)  # a str subclass: the binding's path
    assert p.flush(1) == 0
    assert [m.value() for m in reports] == [b"b", b"d"]
    c = reader(bus)
    got = drain(c, 6)
    assert [m.value() for m in got] == [b"a", b"b", b"c", b"d", b"e", b"f"]
    assert got[1].key() == b"k" and got[1].timestamp() == (shmbus.TIMESTAMP_CREATE_TIME, 1700000000000)
    assert got[1].headers() == [("h", b"1")] and got[4].headers() == [("x", b"y")] and got[4].key() == b"k2"
    c.close()
    p.close()


def test_produce_shapes_it_does_not_read_raise_as_the_binding_did(bus):
    make_topic(bus, "t")
    p = Producer({"bus": bus})
    with pytest.raises(TypeError, match="incompatible function arguments"):
        p.produce("t", b"x", nope=1)  # an unknown keyword
    with pytest.raises(TypeError, match="incompatible function arguments"):
        p.produce("t", b"x", None, 0, None, 0, None, None)  # callback is keyword-only
    with pytest.raises(TypeError, match="incompatible function arguments"):
        p.produce("t", b"x", value=b"y")  # value twice
    with pytest.raises(TypeError, match="incompatible function arguments"):
        p.produce("t", b"x", partition=0.0)
    with pytest.raises(TypeError, match="incompatible function arguments"):
        p.produce("t", b"x", partition=1 << 70)
    with pytest.raises(TypeError, match="incompatible function arguments"):
        p.produce()
    with pytest.raises(TypeError, match="incompatible function arguments"):
        p.produce("t\udc80", b"x")  # not UTF-8
    with pytest.raises(ValueError, match="partition 4294967296 is out of range"):
        p.produce("t", b"x", partition=1 << 32)
    with pytest.raises(shmbus.KafkaException):
        p.produce("no-such-topic", b"x", partition=0)
    with pytest.raises(TypeError):
        Producer.produce(Consumer({"bus": bus}), "t", b"x")  # not a Producer
    p.close()
    with pytest.raises(RuntimeError, match="Producer closed"):
        p.produce("t", b"x", partition=0)


def test_poll_and_consume_argument_shapes(bus):
    make_topic(bus, "t")
    p = Producer({"bus": bus})
    for i in range(6):
        p.produce("t", b"%d" % i, partition=0)
    c = reader(bus)
    assert c.poll(timeout=1.0).value() == b"0"
    assert c.poll(1).value() == b"1"
    assert [m.value() for m in c.consume(num_messages=2, timeout=1)] == [b"2", b"3"]
    assert [m.value() for m in c.consume(1, timeout=1.0)] == [b"4"]
    assert [m.value() for m in c.consume(5, 0)] == [b"5"]
    assert c.consume(0) == []
    assert c.poll(0) is None and c.consume(3, 0.0) == []
    with pytest.raises(TypeError, match="timeout must be a number"):
        c.poll("soon")
    with pytest.raises(TypeError):
        c.poll(1, 2)
    with pytest.raises(TypeError):
        c.poll(timeout=1, other=2)
    with pytest.raises(TypeError):
        c.consume(1.5)
    with pytest.raises(TypeError):
        c.consume(num_messages=1, num=1)
    with pytest.raises(ValueError, match="num_messages must be"):
        c.consume(-1, 0)
    with pytest.raises(ValueError, match="num_messages must be"):
        c.consume(1 << 40, 0)
    c.close()
    with pytest.raises(RuntimeError, match="Consumer closed"):
        c.poll(0)
    with pytest.raises(RuntimeError, match="Consumer closed"):
        c.consume(1, 0)


def test_subclasses_work_and_uninitialised_ones_raise(bus):
    make_topic(bus, "t")

    class MyProducer(Producer):
        pass

    class MyConsumer(Consumer):
        pass

    p = MyProducer({"bus": bus})
    p.produce("t", b"sub", partition=0)
    c = MyConsumer({"bus": bus, "auto.offset.reset": "earliest"})
    c.assign([TopicPartition("t", 0)])
    assert c.poll(1.0).value() == b"sub"

    class Uninit(Producer):
        def __init__(self):
            pass  # never calls Producer.__init__: no C++ producer behind it

    class UninitConsumer(Consumer):
        def __init__(self):
            pass

    with pytest.raises(TypeError):
        Uninit().produce("t", b"x")
    with pytest.raises(TypeError):
        UninitConsumer().poll(0)
    with pytest.raises(TypeError):
        UninitConsumer().consume(1, 0)


def test_messages_are_plain_values_that_outlive_their_consumer(bus):
    make_topic(bus, "t")
    p = Producer({"bus": bus})
    for i in range(3):
        p.produce("t", b"v%d" % i, key=b"k", partition=0)
    c = reader(bus)
    msgs = c.consume(3, 1.0)
    c.close()
    del c
    gc.collect()
    assert [(m.topic(), m.partition(), m.offset(), m.key(), m.value()) for m in msgs] == \
        [("t", 0, i, b"k", b"v%d" % i) for i in range(3)]
    m = msgs[0]
    assert isinstance(m, shmbus.Message) and type(m) is shmbus.Message
    assert repr(m) == "<shmbus.Message t[0]@0>"
    m.set_value(b"longer")
    m.set_key(None)
    m.set_headers([("a", b"b")])
    assert (m.value(), len(m), m.len(), m.key(), m.headers()) == (b"longer", 6, 6, None, [("a", b"b")])
    m.set_value(None)
    assert len(m) == 0
    with pytest.raises(TypeError):
        shmbus.Message()
    with pytest.raises(TypeError):
        type("MyMessage", (shmbus.Message,), {})  # no longer subclassable (docs/python.md)
    with pytest.raises(TypeError):
        m.value(1)
    with pytest.raises(TypeError):
        m.set_value()


# Records whose fields take every shape a Message tells apart: a null key and an empty one,
# a null value (tombstone) and an empty one, headers present and absent; two topics with
# names of one length (one Message per record, their topic str shared per topic).
MIXED = [  # (key, value, headers)
    (None, b"v0", None),
    (b"", b"", [("h", b"1")]),
    (b"k", None, None),
    ("", b"x" * 100, [("a", b""), ("b", b"2")]),
    (None, None, None),
    (b"k5", b"y" * 7, [("h", b"5")]),
]


def expected_mixed(topic, base_ts):
    out = []
    for i, (key, value, headers) in enumerate(MIXED):
        key = key.encode() if isinstance(key, str) else key
        out.append((topic, 0, i, key, value, headers, (shmbus.TIMESTAMP_CREATE_TIME, base_ts + i), len(value or b"")))
    return out


def produce_mixed(bus, topics, base_ts):
    p = Producer({"bus": bus})
    for i, (key, value, headers) in enumerate(MIXED):
        for t in topics:
            p.produce(t, value, key, 0, timestamp=base_ts + i, headers=headers)
    p.close()


def fields(m):
    assert m.error() is None, m.error()
    return (m.topic(), m.partition(), m.offset(), m.key(), m.value(), m.headers(), m.timestamp(), len(m))


def mixed_reader(bus, topics):
    c = Consumer({"bus": bus, "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(t, 0) for t in topics])
    return c


def consume_all(c, n):
    got = []
    for _ in range(100):  # bounded: each call waits at most 1 s
        got += c.consume(1000, 1.0)
        if len(got) >= n:
            break
    return got


def by_topic(msgs):
    return sorted((fields(m) for m in msgs), key=lambda f: (f[0], f[2]))


def test_consume_and_poll_hand_out_every_field_of_mixed_records(bus):
    topics = ["ta", "tb"]
    for t in topics:
        make_topic(bus, t)
    produce_mixed(bus, topics, 1700000000000)
    want = expected_mixed("ta", 1700000000000) + expected_mixed("tb", 1700000000000)
    n = len(want)
    # consume(): records of both partitions in one batch, into one list
    c = mixed_reader(bus, topics)
    got = consume_all(c, n)
    assert len(got) == n
    assert by_topic(got) == want
    for t in topics:  # per partition, in offset order
        assert [m.offset() for m in got if m.topic() == t] == list(range(len(MIXED)))
    c.close()
    # poll(): the same records, one a call
    c = mixed_reader(bus, topics)
    polled = drain(c, n)
    assert by_topic(polled) == want
    # with a timeout given by keyword and as an int: the same path's answers
    c.seek(TopicPartition("ta", 0, 0))
    c.seek(TopicPartition("tb", 0, 0))
    again = [c.poll(timeout=1) for _ in range(n)]
    assert by_topic(again) == want
    c.close()


def test_messages_outlive_their_consumer_and_later_messages(bus):
    topics = ["ta", "tb"]
    for t in topics:
        make_topic(bus, t)
    produce_mixed(bus, topics, 1700000000000)
    want = sorted(expected_mixed("ta", 1700000000000) + expected_mixed("tb", 1700000000000), key=lambda f: (f[0], f[2]))
    c = mixed_reader(bus, topics)
    kept = consume_all(c, len(want))
    first = c.poll(0)  # nothing left: None
    assert first is None
    c.close()
    del c
    gc.collect()
    assert by_topic(kept) == want  # after the consumer is gone
    # Messages die and are made again many times over (the memory of freed ones is reused):
    # the kept ones still hold their own records.
    produce_mixed(bus, topics, 1800000000000)
    for _ in range(3):
        c = mixed_reader(bus, topics)
        later = consume_all(c, 2 * len(want))
        assert len(later) == 2 * len(want)
        assert sorted(m.timestamp()[1] for m in later if m.topic() == "tb") == sorted(
            [1700000000000 + i for i in range(len(MIXED))] + [1800000000000 + i for i in range(len(MIXED))])
        c.close()
        del c, later
        gc.collect()
    assert by_topic(kept) == want
    kept[0].set_value(b"changed")  # one Message's fields are its own
    assert kept[0].value() == b"changed"
    assert by_topic(kept[1:]) == [f for f in want if (f[0], f[2]) != (kept[0].topic(), kept[0].offset())]


# A dying Message's value bytes, referenced by nothing else, are reused for the next value
# of its size (python/module.cpp, value_bytes): a value still held elsewhere never changes,
# and a reused one hashes and compares as what it now holds (its cached hash is reset).
def test_reused_value_bytes_never_change_a_held_value_and_hash_anew(bus):
    make_topic(bus, "reuse", 1)
    p = Producer({"bus": bus})
    n = 3000
    expected = [(b"%08d" % i) * 8 for i in range(n)]  # 64 bytes each, all different
    for v in expected:
        p.produce("reuse", v, partition=0)
    p.flush(10)
    p.close()
    c = Consumer({"bus": bus, "auto.offset.reset": "earliest"})
    c.assign([TopicPartition("reuse", 0, shmbus.OFFSET_BEGINNING)])
    held = {}
    seen = 0
    while seen < n:
        batch = c.consume(100, 5.0) if seen % 2 == 0 else [c.poll(5.0)]
        for m in batch:
            assert m is not None and m.error() is None
            i = m.offset()
            v = m.value()
            assert v == expected[i]
            assert hash(v) == hash(bytes(bytearray(expected[i]))), f"offset {i}: a stale hash"
            assert {v: i}[expected[i]] == i
            if i % 7 == 0:
                held[i] = v  # kept: its bytes must never be reused
            seen += 1
        del batch, m, v
    c.close()
    for i, v in held.items():
        assert v == expected[i], f"the value of offset {i}, held, changed"
