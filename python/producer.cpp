// shmbus.Producer: confluent-kafka's Producer over shmbus::Producer. A send is written to
// the ring before produce() returns; delivery reports (with the offset) wait in a local
// queue until poll() or flush() serves their callbacks, as confluent-kafka's do.
#include <algorithm>
#include <chrono>
#include <deque>
#include <unordered_map>

#include <fmt/format.h>

#include "bus/topic.h"
#include "module.h"
#include "shm/process.h"
#include "shmbus/producer.h"

namespace shmbus::py {

namespace {

struct Report {
  pb::object callback;
  pb::object msg;  // a Message
};

class PyProducer {
 public:
  explicit PyProducer(const pb::dict& conf) {
    Conf c(conf, Client::kProducer);
    const std::string part = c.str("partitioner", "murmur2_random");
    if (part != "murmur2_random" && part != "murmur2")
      raise(kErrInvalidArg, fmt::format("configuration key 'partitioner' = '{}': murmur2_random or murmur2 only", part));
    if (c.str("compression.type", "none") != "none")
      raise(kErrInvalidArg, "configuration key 'compression.type': 'none' only (records are not compressed)");
    ProducerConfig pc;
    pc.max_block_ms = c.integer("shmbus.max.block.ms", pc.max_block_ms);
    pc.record_alignment = static_cast<std::uint32_t>(c.integer("shmbus.record.alignment", pc.record_alignment));
    pc.exclusive = c.boolean("shmbus.exclusive", false);
    pc.acks = acks_of(c);
    pc.ack_timeout_ms = c.integer("shmbus.ack.timeout.ms", pc.ack_timeout_ms);
    acks_ = pc.acks;
    pc.statistics_interval = std::chrono::milliseconds(c.integer("statistics.interval.ms", 0));
    stats_cb_ = c.object("stats_cb");
    if (!stats_cb_.is_none()) {
      if (!PyCallable_Check(stats_cb_.ptr())) throw pb::type_error("stats_cb must be callable");
      pc.statistics_cb = [this](const std::string& json) { call_stats(json); };
    }
    only_errors_ = c.boolean("delivery.report.only.error", false);
    default_cb_ = c.object("on_delivery");
    bus_ = c.attach_bus();
    producer_.emplace(take(Producer::create(bus_, pc)));
  }

  // produce() as bound (the pybind11 binding: every argument shape and its errors).
  void produce(const std::string& topic, pb::handle value, pb::handle key, std::int64_t partition, pb::handle on_delivery,
               std::int64_t timestamp, pb::handle headers, pb::handle callback) {
    send(topic, value, key, partition, on_delivery, timestamp, headers, callback);
  }

  // produce() for the plain CPython method (fast_produce): the common argument shapes, read
  // without pybind11's dispatch; anything else goes to the binding. Returns None (new).
  PyObject* produce_fast(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    // topic, value, key, partition, on_delivery, timestamp, headers, callback
    PyObject* a[8];
    if (!fast_produce_method().parse(args, nargs, kwnames, a) || !a[0] || !PyUnicode_CheckExact(a[0]) ||
        (a[3] && !PyLong_CheckExact(a[3])) || (a[5] && !PyLong_CheckExact(a[5])))
      return fast_produce_method().fallback(self, args, nargs, kwnames);
    Py_ssize_t n = 0;
    const char* t = PyUnicode_AsUTF8AndSize(a[0], &n);  // cached in the str object
    if (!t) {
      PyErr_Clear();  // not UTF-8 (a lone surrogate): the binding's error
      return fast_produce_method().fallback(self, args, nargs, kwnames);
    }
    int overflow = 0;
    const long long partition = a[3] ? PyLong_AsLongLongAndOverflow(a[3], &overflow) : -1;
    const long long timestamp = a[5] ? PyLong_AsLongLongAndOverflow(a[5], &overflow) : 0;
    if (overflow) return fast_produce_method().fallback(self, args, nargs, kwnames);
    auto h = [](PyObject* o) { return pb::handle(o ? o : Py_None); };
    send(std::string_view(t, static_cast<std::size_t>(n)), h(a[1]), h(a[2]), partition, h(a[4]), timestamp, h(a[6]), h(a[7]));
    Py_RETURN_NONE;
  }

  static FastMethod& fast_produce_method() {
    static FastMethod m({"topic", "value", "key", "partition", "on_delivery", "timestamp", "headers", "callback"}, 7);
    return m;
  }

 private:
  void send(std::string_view topic, pb::handle value, pb::handle key, std::int64_t partition, pb::handle on_delivery_arg,
            std::int64_t timestamp, pb::handle headers, pb::handle callback) {
    Producer& p = open();
    pb::handle on_delivery = !callback.is_none() ? callback : on_delivery_arg;  // callback: confluent's alias
    if (on_delivery.is_none()) on_delivery = default_cb_;
    if (!on_delivery.is_none() && !PyCallable_Check(on_delivery.ptr())) throw pb::type_error("on_delivery must be callable");
    if (partition < -1 || partition > 0xffffffffll) throw pb::value_error(fmt::format("partition {} is out of range", partition));
    if (timestamp < 0) throw pb::value_error("timestamp must be milliseconds since the epoch, or 0");
    std::optional<BorrowedBytes> v, k;  // borrowed until the send returns
    Message m;
    if (value.is_none()) m.null_value = true;
    else m.value = v.emplace(value, "value").bytes();
    if (!key.is_none()) m.key = k.emplace(key, "key").bytes();
    // timestamp 0: now, taken here (as librdkafka does at produce()), so that the delivery
    // report tells the record's time, as confluent's does: (TIMESTAMP_CREATE_TIME, now).
    m.timestamp_ns = timestamp ? timestamp * 1'000'000 : shm::fast_realtime_ns();
    // Headers: a dict or a list of (str, value) pairs; borrowed like the value.
    std::vector<Header> hs;
    std::vector<std::unique_ptr<BorrowedBytes>> hvals;  // (no allocation without headers)
    std::vector<pb::object> hkeys;  // keep the key objects alive for their UTF-8
    if (!headers.is_none()) {
      pb::object items;
      if (pb::isinstance<pb::dict>(headers)) items = headers.attr("items")();
      else if (pb::isinstance<pb::list>(headers) || pb::isinstance<pb::tuple>(headers)) items = pb::reinterpret_borrow<pb::object>(headers);
      else throw pb::type_error("headers must be a dict or a list of (str, value) tuples");
      for (auto item : items) {
        if (!pb::isinstance<pb::tuple>(item) || pb::len(item) != 2) throw pb::type_error("headers must be (str, value) tuples");
        pb::object hk = item.cast<pb::tuple>()[0], hv = item.cast<pb::tuple>()[1];
        if (!pb::isinstance<pb::str>(hk)) throw pb::type_error("header keys must be str");
        Py_ssize_t n = 0;
        const char* ks = PyUnicode_AsUTF8AndSize(hk.ptr(), &n);
        if (!ks) throw pb::error_already_set();
        hkeys.push_back(hk);
        Bytes hb{};
        if (!hv.is_none()) hb = hvals.emplace_back(std::make_unique<BorrowedBytes>(hv, "header value"))->bytes();
        hs.push_back(Header{std::string_view(ks, static_cast<std::size_t>(n)), hb, hv.is_none()});  // None: a null value
      }
      m.headers = hs;
    }
    std::optional<std::uint32_t> part;
    if (partition >= 0) part = static_cast<std::uint32_t>(partition);
    Result<RecordMetadata> r;
    if (acks_ != Acks::kMemory || may_wait(topic)) {
      InFlight f(*this);
      pb::gil_scoped_release nogil;  // a block topic may wait for room (max_block_ms), durable acks for busd
      r = p.send(topic, m, part);
    } else {
      r = p.send(topic, m, part);
    }
    if (!r) {
      rethrow_stats_error();
      raise(r.error());
    }
    ++produced_;
    if (on_delivery.is_none() || only_errors_) return rethrow_stats_error();
    PyMessage* f = nullptr;
    Report rep{pb::reinterpret_borrow<pb::object>(on_delivery), new_message(f)};
    put(f->topic, pb::str(topic.data(), topic.size()));
    f->partition = static_cast<std::int32_t>(r->partition);
    f->offset = static_cast<std::int64_t>(r->offset);
    f->timestamp_type = 1;  // TIMESTAMP_CREATE_TIME
    f->timestamp_ms = m.timestamp_ns / 1'000'000;
    if (!key.is_none()) put(f->key, pb::bytes(as_string(*m.key).data(), m.key->size()));
    if (!value.is_none()) put(f->value, pb::bytes(as_string(m.value).data(), m.value.size()));
    if (!headers.is_none()) put(f->headers, pb::reinterpret_borrow<pb::object>(headers));
    reports_.push_back(std::move(rep));
    rethrow_stats_error();  // the record is sent and its report queued
  }


 public:
  // Serves queued delivery callbacks (and statistics, when due); returns how many.
  int poll(pb::object timeout) {
    Producer& p = open();
    (void)timeout;  // every report is ready: nothing is waited for
    (void)p.flush(std::chrono::milliseconds(0), Acks::kMemory);  // never waits; reports statistics if due
    rethrow_stats_error();
    return serve();
  }

  // Serves the delivery callbacks, then waits (without the GIL, in slices that let signals
  // through) until every record sent is acknowledged as the producer's acks say: at once
  // with acks memory (0, 1), for busd's spiller with acks all/spilled/fsynced.
  int flush(pb::object timeout) {
    Producer& p = open();
    serve();
    const auto wait = to_timeout(timeout);
    const auto deadline = wait ? std::chrono::steady_clock::now() + *wait : std::chrono::steady_clock::time_point::max();
    InFlight f(*this);  // signal checks included: a handler's close() is refused meanwhile
    for (;;) {
      const auto left = deadline - std::chrono::steady_clock::now();
      const auto slice = std::chrono::duration_cast<std::chrono::milliseconds>(
          std::clamp<std::chrono::nanoseconds>(left, std::chrono::nanoseconds(0), std::chrono::milliseconds(100)));
      Status s;
      {
        pb::gil_scoped_release nogil;
        s = p.flush(slice);
      }
      rethrow_stats_error();
      if (s) break;
      if (s.error().code != Errc::kTimedOut || std::chrono::steady_clock::now() >= deadline) raise(s.error());
      if (PyErr_CheckSignals() != 0) throw pb::error_already_set();
    }
    return static_cast<int>(reports_.size());
  }

  std::size_t len() const { return reports_.size(); }

  void close() {
    if (!producer_) return;
    // Another thread's produce() or flush() waiting without the GIL (or the one a signal
    // handler interrupted) still uses the Producer: closing it would free it under that call.
    if (in_flight_ > 0)
      raise(kErrState,
            "close(): a produce() or flush() of this Producer is still waiting (in another thread, or the call a signal "
            "handler interrupted); close it once that returns");
    serve();  // delivery callbacks run Python: another thread may have started a wait meanwhile
    if (in_flight_ > 0)
      raise(kErrState, "close(): another thread's produce() or flush() began while delivery callbacks ran; close it once that returns");
    producer_.reset();
    bus_.reset();
  }

  Producer& open() {
    if (!producer_) raise_closed("Producer");
    return *producer_;
  }

 private:
  int serve() {
    int n = 0;
    while (!reports_.empty()) {
      Report r = std::move(reports_.front());
      reports_.pop_front();
      ++n;
      r.callback(pb::none(), r.msg);  // an exception propagates; the rest stay queued
    }
    return n;
  }

  // Whether a send to `topic` may wait (a block topic): only then is the GIL released.
  bool may_wait(std::string_view topic) {
    if (!last_topic_.empty() && topic == last_topic_) return last_block_;  // a loop's sends go to one topic
    auto it = block_.find(topic);
    if (it != block_.end()) {
      last_topic_ = it->first;
      last_block_ = it->second;
      return it->second;
    }
    auto t = bus_->topic(std::string(topic));
    if (!t) return false;  // the send reports it
    const bool b = (*t)->config().retention == RetentionMode::kBlock;
    block_.emplace(std::string(topic), b);
    return b;
  }

  // acks and shmbus.acks: confluent's 0 and 1 (and leader) are memory, all and -1 spilled;
  // shmbus.acks (memory, spilled, fsynced) says it in the bus's words and wins.
  static Acks acks_of(const Conf& c) {
    if (c.has("shmbus.acks")) {
      const std::string a = c.str("shmbus.acks", "memory");
      if (a == "memory") return Acks::kMemory;
      if (a == "spilled") return Acks::kSpilled;
      if (a == "fsynced") return Acks::kFsynced;
      raise(kErrInvalidArg, fmt::format("configuration key 'shmbus.acks' = '{}': memory, spilled or fsynced", a));
    }
    const std::string a = c.str("acks", "1");
    if (a == "0" || a == "1" || a == "leader") return Acks::kMemory;
    if (a == "all" || a == "-1") return Acks::kSpilled;
    raise(kErrInvalidArg, fmt::format("configuration key 'acks' = '{}': 0, 1, all or -1", a));
  }

  // stats_cb(json_str), called by the library from this producer's sends and flushes, with
  // or without the GIL: an exception it raises is kept and raised by the call that ran it.
  void call_stats(const std::string& json) noexcept {
    pb::gil_scoped_acquire gil;
    if (stats_error_) return;
    try {
      stats_cb_(pb::str(json));
    } catch (pb::error_already_set& e) {
      stats_error_ = std::move(e);
    } catch (...) {  // a C++ exception from a call into this module: dropped, as the library does
    }
  }
  void rethrow_stats_error() {
    if (!stats_error_) return;
    auto e = std::move(*stats_error_);
    stats_error_.reset();
    throw std::move(e);
  }

  pb::object stats_cb_ = pb::none();
  std::optional<pb::error_already_set> stats_error_;
  Acks acks_ = Acks::kMemory;
  std::shared_ptr<Bus> bus_;
  std::optional<Producer> producer_;
  std::deque<Report> reports_;
  struct Hash : std::hash<std::string_view> {
    using is_transparent = void;
  };
  std::unordered_map<std::string, bool, Hash, std::equal_to<>> block_;  // (never erased: last_topic_ views a key)
  std::string_view last_topic_;
  bool last_block_ = false;
  pb::object default_cb_ = pb::none();
  bool only_errors_ = false;
  std::uint64_t produced_ = 0;
  // Calls using the Producer without the GIL (a produce() that may wait, a flush()): close()
  // is refused while there are any. Changed under the GIL only.
  int in_flight_ = 0;
  struct InFlight {
    explicit InFlight(PyProducer& p) : p(p) { ++p.in_flight_; }
    ~InFlight() { --p.in_flight_; }
    PyProducer& p;
  };
};

}  // namespace

void bind_producer(pb::module_& m) {
  auto cls = pb::class_<PyProducer>(m, "Producer",
                         "Producer(conf): sends records to topics; keys choose partitions as in Kafka (murmur2).\n\n"
                         "A send is in the ring (readable by consumers) when produce() returns; its delivery report\n"
                         "(with the offset) is served by the next poll() or flush(). Belongs to one thread at a time.\n"
                         "conf: 'bus', 'acks' (1: in the ring; all: on disk), 'shmbus.acks' (memory, spilled, fsynced),\n"
                         "'shmbus.ack.timeout.ms', 'shmbus.max.block.ms', 'shmbus.record.alignment', 'shmbus.exclusive',\n"
                         "'on_delivery', 'delivery.report.only.error', 'stats_cb' with 'statistics.interval.ms',\n"
                         "'partitioner' (murmur2_random, the default, or murmur2: a keyed record goes to Kafka's\n"
                         "murmur2 partition of its key; others raise KafkaException(_INVALID_ARG) naming the value);\n"
                         "confluent keys with no meaning here are\n"
                         "accepted (shmbus.config_keys() lists them all).")
      .def(pb::init<const pb::dict&>(), pb::arg("conf") = pb::dict())
      .def("produce", &PyProducer::produce, pb::arg("topic"), pb::arg("value") = pb::none(), pb::arg("key") = pb::none(),
           pb::arg("partition") = -1, pb::arg("on_delivery") = pb::none(), pb::arg("timestamp") = 0,
           pb::arg("headers") = pb::none(), pb::kw_only(), pb::arg("callback") = pb::none(),
           "produce(topic, value=None, key=None, partition=-1, on_delivery=None, timestamp=0, headers=None)\n\n"
           "Appends one record. value/key: str (UTF-8), bytes or any contiguous buffer, read in place (no\n"
           "copy); value None is a tombstone (a null value). partition -1: the key's (murmur2), else the\n"
           "sticky one. timestamp: ms since the epoch, 0: now. headers: dict or list of (str, value).\n"
           "on_delivery(err, msg) is called from poll()/flush(). Raises KafkaException when the send fails\n"
           "(unknown topic, record too large, block topic full for shmbus.max.block.ms, acks all and busd did not\n"
           "spill it within shmbus.ack.timeout.ms, ...). With acks all it returns once busd has spilled the record.")
      .def("poll", &PyProducer::poll, pb::arg("timeout") = pb::none(),
           "Serves queued delivery callbacks (and stats_cb when due); returns how many. Never waits: every\n"
           "report is ready.")
      .def("flush", &PyProducer::flush, pb::arg("timeout") = pb::none(),
           "Serves every queued delivery callback, then waits up to `timeout` seconds (None: forever),\n"
           "without the GIL, until every record sent is acknowledged as acks says (Producer::flush): at once\n"
           "for acks 0/1; for busd's spiller with all/spilled/fsynced. Returns how many reports are left (0);\n"
           "raises KafkaException(TIMED_OUT) naming the partition still waiting when the time runs out.")
      .def("__len__", &PyProducer::len, "Delivery reports not yet served.")
      .def("close", &PyProducer::close, "Serves what is queued and releases the producer; later calls raise RuntimeError.")
      .def("__enter__", [](pb::object self) { return self; })
      .def("__exit__", [](PyProducer& p, pb::args) { p.close(); return false; });
  PyProducer::fast_produce_method().install(cls, "produce", [](PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    return guarded([&] {
      PyProducer* p = cpp_self<PyProducer>(self);
      return p ? p->produce_fast(self, args, nargs, kwnames) : PyProducer::fast_produce_method().fallback(self, args, nargs, kwnames);
    });
  });
}

}  // namespace shmbus::py
