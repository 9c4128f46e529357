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
