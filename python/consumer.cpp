// shmbus.Consumer: confluent-kafka's Consumer over shmbus::Consumer. The C++ consumer
// fetches a batch; poll() hands its records out one at a time and consume() several. The
// records of a batch not handed out yet are given back (the partitions sought back to
// them) before anything that reads or moves positions, so that positions, commits and
// seeks are those of what Python has seen. Every wait releases the GIL; a wait with no
// end is cut into slices that let signals (Ctrl-C) through.
#include <map>
#include <span>
#include <variant>
#include <thread>

#include <fmt/format.h>

#include "module.h"
#include "shmbus/consumer.h"

namespace shmbus::py {

namespace {

using namespace std::chrono_literals;

// ---- memoryview values (shmbus.value.memoryview) ----
// A value is handed out as a memoryview whose buffer is exported by a ValueBuffer of ours,
// never by raw memory: every memoryview derived from it (a slice, memoryview(v), an array
// over it) holds that export, so the consumer can tell whether its bytes are still read.
// One lease per consumer counts the exports of all its ValueBuffers.
struct ViewLease {
  Py_ssize_t exports = 0;        // buffers exported and not released yet, over every ValueBuffer
  std::uint64_t generation = 0;  // a ValueBuffer of an older generation exports no more
  // A consumer dropped while exports lived: what the views read (its buffer, its gates on
  // the ring), closed and freed with the last of them.
  std::optional<Consumer> consumer;
  std::shared_ptr<Bus> bus;
};

struct PyValueBuffer {
  PyObject_HEAD
  const char* data;
  Py_ssize_t size;
  std::uint64_t generation;
  std::shared_ptr<ViewLease> lease;  // constructed and destroyed by hand (a C object)
};

PyTypeObject* g_value_buffer_type = nullptr;  // a reference kept for the process

int value_buffer_get(PyObject* self, Py_buffer* view, int flags) {
  auto* b = reinterpret_cast<PyValueBuffer*>(self);
  if (b->generation != b->lease->generation) {
    view->obj = nullptr;
    PyErr_SetString(PyExc_BufferError,
                    "this value's consumer has moved on (next poll(), consume(), close() or a call that moves "
                    "positions): its bytes can no longer be viewed");
    return -1;
  }
  if (PyBuffer_FillInfo(view, self, const_cast<char*>(b->data), b->size, /*readonly=*/1, flags) != 0) return -1;
  ++b->lease->exports;
  return 0;
}

void value_buffer_release(PyObject* self, Py_buffer*) {
  ViewLease& l = *reinterpret_cast<PyValueBuffer*>(self)->lease;
  if (--l.exports != 0 || !l.consumer) return;
  // The last view of a dropped consumer: it is closed now (its callbacks are detached).
  std::optional<Consumer> c = std::move(l.consumer);
  l.consumer.reset();
  std::shared_ptr<Bus> bus = std::move(l.bus);
  Py_BEGIN_ALLOW_THREADS  // close() may wait for busd (leaving a group)
  c.reset();
  bus.reset();
  Py_END_ALLOW_THREADS
}

void value_buffer_dealloc(PyObject* self) {
  reinterpret_cast<PyValueBuffer*>(self)->lease.~shared_ptr();
  PyTypeObject* type = Py_TYPE(self);
  PyObject_Free(self);
  Py_DECREF(type);  // a heap type: each instance holds a reference to it
}

PyObject* value_buffer_repr(PyObject* self) {
  auto* b = reinterpret_cast<PyValueBuffer*>(self);
  return PyUnicode_FromFormat("<shmbus.ValueBuffer of %zd bytes%s>", b->size,
                              b->generation == b->lease->generation ? "" : ", the consumer has moved on");
}

PyType_Slot g_value_buffer_slots[] = {
    {Py_tp_dealloc, reinterpret_cast<void*>(value_buffer_dealloc)},
    {Py_tp_repr, reinterpret_cast<void*>(value_buffer_repr)},
    {Py_tp_doc, const_cast<char*>("The bytes of a consumed value, in the consumer's buffer or the ring: what a memoryview\n"
                                  "value (shmbus.value.memoryview) reads. Each memoryview of it, slices included, holds it;\n"
                                  "the consumer does not move on while one lives.")},
    {Py_bf_getbuffer, reinterpret_cast<void*>(value_buffer_get)},
    {Py_bf_releasebuffer, reinterpret_cast<void*>(value_buffer_release)},
    {0, nullptr},
};
PyType_Spec g_value_buffer_spec = {"shmbus.ValueBuffer", sizeof(PyValueBuffer), 0,
                                   Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION, g_value_buffer_slots};

class PyConsumer {
 public:
  explicit PyConsumer(const pb::dict& conf) {
    Conf c(conf, Client::kConsumer);
    ConsumerConfig cc;
    const std::string reset = c.str("auto.offset.reset", "latest");
    if (reset == "earliest" || reset == "smallest" || reset == "beginning") cc.auto_offset_reset = OffsetReset::kEarliest;
    else if (reset == "latest" || reset == "largest" || reset == "end") cc.auto_offset_reset = OffsetReset::kLatest;
    else if (reset == "error") cc.auto_offset_reset = OffsetReset::kError;
    else raise(kErrInvalidArg, fmt::format("configuration key 'auto.offset.reset' = '{}': earliest, latest or error", reset));
    reset_ = cc.auto_offset_reset;
    cc.enable_auto_commit = c.boolean("enable.auto.commit", cc.enable_auto_commit);
    cc.auto_commit_interval = std::chrono::milliseconds(c.integer("auto.commit.interval.ms", cc.auto_commit_interval.count()));
    cc.session_timeout = std::chrono::milliseconds(c.integer("session.timeout.ms", cc.session_timeout.count()));
    cc.max_poll_interval = std::chrono::milliseconds(c.integer("max.poll.interval.ms", cc.max_poll_interval.count()));
    // Kafka's default heartbeat is 3 s against a 45 s session; a shorter session set alone
    // keeps that ratio (librdkafka refuses a heartbeat not below the session timeout).
    const std::int64_t heartbeat = std::min<std::int64_t>(cc.heartbeat_interval.count(), cc.session_timeout.count() / 3);
    cc.heartbeat_interval = std::chrono::milliseconds(c.integer("heartbeat.interval.ms", std::max<std::int64_t>(heartbeat, 1)));
    cc.group_instance_id = c.str("group.instance.id", "");
    std::string assignor = c.str("partition.assignment.strategy", "cooperative-sticky");
    assignor = assignor.substr(0, assignor.find(','));
    if (assignor == "cooperative-sticky" || assignor == "sticky") cc.assignor = "sticky";
    else if (assignor == "range" || assignor == "roundrobin") cc.assignor = assignor;
    else raise(kErrInvalidArg, fmt::format("configuration key 'partition.assignment.strategy' = '{}': range, roundrobin or cooperative-sticky", assignor));
    cc.client_name = c.str("client.id", "");
    if (c.boolean("enable.partition.eof", false))
      raise(kErrNotImplemented, "configuration key 'enable.partition.eof' = true: no partition-EOF events (use get_watermark_offsets)");
    const std::string wait = c.str("shmbus.wait", "adaptive");
    if (wait == "spin") cc.wait = WaitStrategy::kSpin;
    else if (wait == "yield") cc.wait = WaitStrategy::kYield;
    else if (wait == "block") cc.wait = WaitStrategy::kBlock;
    else if (wait == "adaptive") cc.wait = WaitStrategy::kAdaptive;
    else raise(kErrInvalidArg, fmt::format("configuration key 'shmbus.wait' = '{}': spin, yield, block or adaptive", wait));
    cc.hold_producers = c.boolean("shmbus.hold.producers", false);
    const std::int64_t mpr = c.integer("shmbus.max.poll.records", cc.max_poll_records);
    if (mpr < 1 || mpr > 1'000'000) raise(kErrInvalidArg, "configuration key 'shmbus.max.poll.records': 1..1000000");
    cc.max_poll_records = static_cast<std::uint32_t>(mpr);
    if (c.boolean("shmbus.value.memoryview", false)) lease_ = std::make_shared<ViewLease>();
    group_ = c.str("group.id", "");
    // assign() with a group.id: starts at, and commits, the group's offsets (Kafka's simple
    // consumer group) through busd, without joining it; subscribe() joins that same group.
    cc.group_id = group_;
    // The callbacks reach this object through self_, which the destructor clears: a consumer
    // dropped while views of its values live is closed later, without it (~PyConsumer).
    cc.on_assigned = [self = self_](const std::vector<TopicPartition>& tps) {
      if (PyConsumer* me = *self) me->call_back(me->on_assign_, tps);
    };
    cc.on_revoked = [self = self_](const std::vector<TopicPartition>& tps) {
      if (PyConsumer* me = *self) me->call_back(me->on_revoke_, tps);
    };
    // Kafka's default onPartitionsLost is onPartitionsRevoked: without on_lost, on_revoke hears of them.
    cc.on_lost = [self = self_](const std::vector<TopicPartition>& tps) {
      if (PyConsumer* me = *self) me->call_back(me->on_lost_.is_none() ? me->on_revoke_ : me->on_lost_, tps);
    };
    on_commit_ = callable(c.object("on_commit"), "on_commit");
    // As librdkafka's offset_commit_cb: auto-commits (the timer's, a revocation's, close()'s)
    // reach on_commit too.
    if (!on_commit_.is_none())
      cc.on_commit = [self = self_](const std::vector<std::pair<TopicPartition, std::uint64_t>>& sent, const Status& result) {
        if (PyConsumer* me = *self) me->committed_back(sent, result);
      };
    stats_cb_ = callable(c.object("stats_cb"), "stats_cb");
    cc.statistics_interval = std::chrono::milliseconds(c.integer("statistics.interval.ms", 0));
    if (!stats_cb_.is_none())
      cc.statistics_cb = [self = self_](const std::string& json) {
        if (PyConsumer* me = *self) me->run_callback([&] { me->stats_cb_(pb::str(json)); });
      };
    bus_ = c.attach_bus();
    consumer_.emplace(take(Consumer::create(bus_, cc)));
  }

  ~PyConsumer() {
    dying_ = true;  // no Python callbacks from the destructor
    *self_ = nullptr;  // nor from a consumer closed later
    release_views();   // the memoryviews handed out
    if (lease_) {
      ++lease_->generation;
      if (lease_->exports != 0 && consumer_) {
        // A slice (or another view) of a value lives on: the consumer stays, holding what it
        // reads, and is closed with the last such view (value_buffer_release).
        lease_->consumer.emplace(std::move(*consumer_));
        consumer_.reset();
        lease_->bus = std::move(bus_);
        return;
      }
    }
    if (consumer_) {
      pb::gil_scoped_release nogil;
      consumer_.reset();
    }
  }

  // ---- subscription and assignment ----
  void subscribe(const std::vector<std::string>& topics, pb::object on_assign, pb::object on_revoke, pb::object on_lost) {
    Consumer& c = open(true);
    if (group_.empty()) raise(kErrInvalidArg, "subscribe() needs 'group.id' in the configuration");
    leave_views("subscribe()");
    for (const auto& t : topics)
      if (t.starts_with("^")) raise(kErrNotImplemented, fmt::format("subscribe('{}'): regex subscriptions are not supported", t));
    for (const auto* f : {&on_assign, &on_revoke, &on_lost})
      if (!f->is_none() && !PyCallable_Check(f->ptr())) throw pb::type_error("on_assign, on_revoke and on_lost must be callable");
    on_assign_ = std::move(on_assign);
    on_revoke_ = std::move(on_revoke);
    on_lost_ = std::move(on_lost);
    Status s;
    {
      Busy b(*this);
      pb::gil_scoped_release nogil;  // waits for busd's first assignment
      s = c.subscribe(topics, group_);
    }
    rethrow_callback_error();
    check(s);
  }

  void unsubscribe() {
    Consumer& c = open(true);
    give_back("unsubscribe()");
    Status s;
    {
      Busy b(*this);
      pb::gil_scoped_release nogil;
      s = c.close();  // leaves the group; the consumer may subscribe or assign again
    }
    rethrow_callback_error();
    check(s);
  }

  void assign(const pb::object& partitions) {
    Consumer& c = open(true);
    auto tps = to_tps(partitions, "partitions");
    give_back("assign()");
    replace_assignment(c, tps);
    pending_error_.reset();
    for (auto item : partitions) apply_offset(c, item.cast<const PyTopicPartition&>(), true);
  }

  void unassign() {
    Consumer& c = open(true);
    give_back("unassign()");
    pending_error_.reset();
    replace_assignment(c, {});
  }

  pb::list assignment() {
    Consumer& c = open(false);
    return tp_list(c.assignment(), nullptr);
  }

  // ---- reading ----
  // poll() and consume() for their plain CPython methods (see FastMethod): the common
  // argument shapes (a timeout None, int or float; num_messages an int), anything else
  // through the binding.
  static FastMethod& fast_poll_method() {
    static FastMethod m({"timeout"}, 1);
    return m;
  }
  static FastMethod& fast_consume_method() {
    static FastMethod m({"num_messages", "timeout"}, 2);
    return m;
  }
  static bool plain_timeout(PyObject* t) { return !t || t == Py_None || PyFloat_CheckExact(t) || PyLong_CheckExact(t); }
  PyObject* poll_fast(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    PyObject* a[1];
    if (nargs == 1 && !kwnames) a[0] = args[0];  // poll(timeout), the loop's call: nothing to match
    else if (!fast_poll_method().parse(args, nargs, kwnames, a)) return fast_poll_method().fallback(self, args, nargs, kwnames);
    if (!plain_timeout(a[0])) return fast_poll_method().fallback(self, args, nargs, kwnames);
    // A record of the batch already fetched: what poll() does for it, without the steps
    // that have nothing to do here (no views to end; the timeout not read).
    if (consumer_ && !busy_ && !lease_ && next_ < batch_.size()) return message(batch_[next_++]).release().ptr();
    return poll(pb::reinterpret_borrow<pb::object>(a[0] ? a[0] : Py_None)).release().ptr();
  }
  PyObject* consume_fast(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    PyObject* a[2];
    if (!fast_consume_method().parse(args, nargs, kwnames, a) || (a[0] && !PyLong_CheckExact(a[0])) || !plain_timeout(a[1]))
      return fast_consume_method().fallback(self, args, nargs, kwnames);
    int overflow = 0;
    const long long n = a[0] ? PyLong_AsLongLongAndOverflow(a[0], &overflow) : 1;
    if (overflow) return fast_consume_method().fallback(self, args, nargs, kwnames);
    pb::object minus_one = pb::int_(-1);
    return consume(n, a[1] ? pb::reinterpret_borrow<pb::object>(a[1]) : minus_one).release().ptr();
  }

  pb::object poll(const pb::object& timeout) {
    Consumer& c = open(true);
    leave_views("poll()");
    if (pending_error_) return take_pending_error();
    if (next_ >= batch_.size() && !fetch(c, to_timeout(timeout))) return error_message();
    if (next_ >= batch_.size()) return pb::none();
    return message(batch_[next_++]);
  }

  pb::list consume(std::int64_t num_messages, const pb::object& timeout) {
    Consumer& c = open(true);
    if (num_messages < 0 || num_messages > 1'000'000) throw pb::value_error("num_messages must be 0..1000000");
    leave_views("consume()");
    if (num_messages == 0) return pb::list();
    if (pending_error_) {
      pb::list out;
      out.append(take_pending_error());
      return out;
    }
    if (next_ >= batch_.size() && !fetch(c, to_timeout(timeout))) {
      pb::list out;
      out.append(error_message());
      return out;
    }
    // What the first fetch brought, into a list made at its size, then what is there at
    // once (no further waiting), appended.
    const auto want = static_cast<std::size_t>(num_messages);
    const std::size_t first = std::min(want, batch_.size() - next_);
    auto out = pb::reinterpret_steal<pb::list>(PyList_New(static_cast<Py_ssize_t>(first)));
    if (!out) throw pb::error_already_set();
    for (std::size_t i = 0; i < first; ++i) PyList_SET_ITEM(out.ptr(), static_cast<Py_ssize_t>(i), message(batch_[next_++]).release().ptr());
    for (std::size_t n = first; n < want; ++n) {
      if (next_ >= batch_.size()) {
        if (!views_.empty()) break;  // a new fetch would end the views already handed out
        if (!fetch(c, 0ns)) {
          out.append(error_message());
          break;
        }
        if (batch_.empty()) break;
      }
      out.append(message(batch_[next_++]));
    }
    return out;
  }

  // ---- positions and commits ----
  pb::object commit(const pb::object& message, const pb::object& offsets, bool asynchronous) {
    Consumer& c = open(true);
    if (!message.is_none() && !offsets.is_none()) throw pb::value_error("commit(): message and offsets are exclusive");
    std::vector<std::pair<TopicPartition, std::uint64_t>> offs;
    if (!message.is_none()) {
      const PyMessage* m = as_message(message);
      if (!m) throw pb::type_error("commit(message=...) takes a Message");
      if (m->offset < 0 || m->topic == Py_None) raise(kErrInvalidArg, "commit(): the message has no offset");
      offs.push_back({TopicPartition{pb::handle(m->topic).cast<std::string>(), static_cast<std::uint32_t>(m->partition)},
                      static_cast<std::uint64_t>(m->offset) + 1});
    } else if (!offsets.is_none()) {
      auto tps = to_tps(offsets, "offsets");
      std::size_t i = 0;
      for (auto item : offsets) {
        const auto& tp = item.cast<const PyTopicPartition&>();
        if (tp.offset < 0) raise(kErrInvalidArg, fmt::format("commit(): {}-{} has no offset", tp.topic, tp.partition));
        offs.push_back({tps[i++], static_cast<std::uint64_t>(tp.offset)});
      }
    } else {
      give_back("commit()");
      for (const auto& tp : c.assignment()) offs.push_back({tp, take(c.position(tp))});
    }
    const bool positions = message.is_none() && offsets.is_none();
    Status s;
    {
      Busy b(*this);
      pb::gil_scoped_release nogil;
      // Asynchronous: on_commit(err, partitions) hears busd's answer from a later poll() or close().
      Consumer::CommitCallback done;
      if (asynchronous && !on_commit_.is_none())
        done = [self = self_](const std::vector<std::pair<TopicPartition, std::uint64_t>>& sent, const Status& result) {
          if (PyConsumer* me = *self) me->committed_back(sent, result);
        };
      if (!asynchronous) s = c.commit(offs);
      else if (positions) s = done ? c.commit_async(std::move(done)) : c.commit_async();
      else s = c.commit_async(offs, std::move(done));
    }
    rethrow_callback_error();
    check(s);
    if (asynchronous) return pb::none();
    pb::list out;
    for (const auto& [tp, off] : offs) out.append(PyTopicPartition{tp.topic, static_cast<std::int32_t>(tp.partition), static_cast<std::int64_t>(off), pb::none()});
    return out;
  }

  pb::list committed(const pb::object& partitions, const pb::object& timeout) {
    Consumer& c = open(true);
    (void)timeout;
    auto tps = to_tps(partitions, "partitions");
    Result<std::vector<std::optional<std::uint64_t>>> r;
    {
      Busy b(*this);
      pb::gil_scoped_release nogil;  // asks busd
      r = c.committed(tps);
    }
    auto offs = take(std::move(r));
    pb::list out;
    for (std::size_t i = 0; i < tps.size(); ++i) {
      const std::int64_t off = i < offs.size() && offs[i] ? static_cast<std::int64_t>(*offs[i]) : kOffsetInvalid;
      out.append(PyTopicPartition{tps[i].topic, static_cast<std::int32_t>(tps[i].partition), off, pb::none()});
    }
    return out;
  }

  pb::list position(const pb::object& partitions) {
    Consumer& c = open(false);
    auto tps = to_tps(partitions, "partitions");
    give_back("position()");
    pb::list out;
    for (const auto& tp : tps) {
      auto p = c.position(tp);
      out.append(PyTopicPartition{tp.topic, static_cast<std::int32_t>(tp.partition),
                                  p ? static_cast<std::int64_t>(*p) : kOffsetInvalid,
                                  p ? pb::object(pb::none()) : kafka_error(static_cast<int>(p.error().code), p.error().message)});
    }
    return out;
  }

  void seek(const pb::object& partition) {
    Consumer& c = open(false);
    if (!pb::isinstance<PyTopicPartition>(partition)) throw pb::type_error("seek() takes a TopicPartition");
    const auto& tp = partition.cast<const PyTopicPartition&>();
    give_back("seek()");
    if (tp.offset < 0 && tp.offset != kOffsetBeginning && tp.offset != kOffsetEnd)
      raise(kErrInvalidArg, fmt::format("seek(): offset {} of {}-{}: an offset, OFFSET_BEGINNING or OFFSET_END", tp.offset, tp.topic, tp.partition));
    apply_offset(c, tp);
  }

  void pause(const pb::object& partitions) {
    Consumer& c = open(false);
    auto tps = to_tps(partitions, "partitions");
    give_back("pause()");
    check(c.pause(tps));
  }

  void resume(const pb::object& partitions) {
    Consumer& c = open(false);
    check(c.resume(to_tps(partitions, "partitions")));
  }

  pb::tuple watermarks(const pb::object& partition, const pb::object& timeout, bool cached) {
    open(false);
    (void)timeout, (void)cached;  // read from shared memory: always current, never waits
    if (!pb::isinstance<PyTopicPartition>(partition)) throw pb::type_error("get_watermark_offsets() takes a TopicPartition");
    const TopicPartition tp = partition.cast<const PyTopicPartition&>().tp();
    TopicInfo info = take(bus_->describe_topic(tp.topic));
    if (tp.partition >= info.partitions.size())
      raise(static_cast<int>(Errc::kInvalidArgument), fmt::format("topic '{}' has {} partitions, no partition {}", tp.topic, info.partitions.size(), tp.partition));
    const PartitionInfo& p = info.partitions[tp.partition];
    std::uint64_t low = p.start_offset;
    if (info.config.spill.enabled && p.disk_bytes > 0) low = std::min(low, p.disk_start_offset);
    return pb::make_tuple(low, p.end_offset);
  }

  // confluent's offsets_for_times: each TopicPartition's offset is a time (ms since the
  // epoch); the answer's is the earliest offset whose record's timestamp is at or after it,
  // or OFFSET_END (-1) where every record is older.
  pb::list offsets_for_times(const pb::object& partitions, const pb::object& timeout) {
    Consumer& c = open(true);
    (void)timeout;  // shared memory and the disk log: nobody is waited for
    auto tps = to_tps(partitions, "partitions");
    std::vector<std::pair<TopicPartition, std::int64_t>> times;
    std::size_t i = 0;
    for (auto item : partitions) {
      const auto& tp = item.cast<const PyTopicPartition&>();
      if (tp.offset < 0)
        raise(kErrInvalidArg, fmt::format("offsets_for_times(): {}-{}: offset {} is not a time (ms since the epoch)", tp.topic,
                                          tp.partition, tp.offset));
      constexpr std::int64_t kMaxMs = INT64_MAX / 1'000'000;
      times.push_back({tps[i++], std::min(tp.offset, kMaxMs) * 1'000'000});
    }
    Result<std::vector<std::optional<Consumer::OffsetAndTimestamp>>> r;
    {
      Busy b(*this);
      pb::gil_scoped_release nogil;  // a spilled topic's lookup reads its disk log
      r = c.offsets_for_times(times);
    }
    auto found = take(std::move(r));
    pb::list out;
    for (std::size_t k = 0; k < tps.size(); ++k)
      out.append(PyTopicPartition{tps[k].topic, static_cast<std::int32_t>(tps[k].partition),
                                  found[k] ? static_cast<std::int64_t>(found[k]->offset) : kOffsetEnd, pb::none()});
    return out;
  }

  pb::object list_topics(const pb::object& topic, const pb::object& timeout) {
    open(false);
    (void)timeout;
    return cluster_metadata(*bus_, topic);
  }

  pb::object memberid() {
    Consumer& c = open(false);
    const std::string id = c.member_id();
    return id.empty() ? pb::object(pb::none()) : pb::object(pb::str(id));
  }

  void close() {
    if (!consumer_) return;
    refuse_if_in_use();
    if (in_callback_) raise(kErrState, "close() from a rebalance callback");
    give_back("close()");
    Status s;
    {
      Busy b(*this);
      pb::gil_scoped_release nogil;
      s = consumer_->close();
    }
    {
      pb::gil_scoped_release nogil;
      consumer_.reset();
    }
    bus_.reset();
    rethrow_callback_error();
    check(s);
  }

 private:
  // Marks the consumer busy around a section that releases the GIL: another thread's call
  // meanwhile raises (a Consumer belongs to one thread at a time) instead of racing.
  struct Busy {
    explicit Busy(PyConsumer& c) : c(c) { c.busy_ = true; }
    ~Busy() { c.busy_ = false; }
    PyConsumer& c;
  };

  // Another thread's call, or the call a signal handler interrupted, is using the consumer
  // (without the GIL, or at its signal check); a rebalance callback it runs may use it.
  void refuse_if_in_use() const {
    if (busy_ && !in_callback_)
      raise(kErrState,
            "Consumer is in use by another thread (a Consumer belongs to one thread at a time), or by the call a signal "
            "handler interrupted");
  }

  // `full`: a call that may wait or change the assignment, refused from rebalance callbacks.
  Consumer& open(bool full) {
    if (!consumer_) raise_closed("Consumer");
    refuse_if_in_use();
    if (busy_ && full) raise(kErrState, "this call cannot be made from a rebalance callback (seek, pause, resume, position and assignment can)");
    return *consumer_;
  }

  // Consumer::assign, without the GIL: with a group.id it asks busd for the group's offsets
  // (starting busd if none runs) and commits what it gives up with auto-commit.
  void replace_assignment(Consumer& c, const std::vector<TopicPartition>& tps) {
    Status s;
    {
      Busy b(*this);
      pb::gil_scoped_release nogil;
      s = c.assign(tps);
    }
    rethrow_callback_error();
    check(s);
  }

  // `assigned`: the offset given to assign(). As Kafka's, one out of range (overwritten, or
  // not written yet) is where auto.offset.reset says; with error the partition is left at its
  // end and the next poll()/consume() returns the error as a Message. seek() raises instead.
  void apply_offset(Consumer& c, const PyTopicPartition& tp, bool assigned = false) {
    if (tp.offset == kOffsetBeginning) check(c.seek_to_beginning(tp.tp()));
    else if (tp.offset == kOffsetEnd) check(c.seek_to_end(tp.tp()));
    else if (tp.offset >= 0) {
      Status s = c.seek(tp.tp(), static_cast<std::uint64_t>(tp.offset));
      if (!s && assigned && s.error().code == Errc::kOffsetOutOfRange) {
        if (reset_ == OffsetReset::kEarliest) s = c.seek_to_beginning(tp.tp());
        else if (reset_ == OffsetReset::kLatest) s = c.seek_to_end(tp.tp());
        else {
          if (!pending_error_) pending_error_ = Error(s.error().code, s.error().message + " (auto.offset.reset=error)");
          s = c.seek_to_end(tp.tp());
        }
      }
      check(s);
    }
  }

  pb::object take_pending_error() {
    error_ = std::move(*pending_error_);
    pending_error_.reset();
    return error_message();
  }

  // Fetches a new batch, waiting up to `timeout` (nullopt: forever) for its first record.
  // False when the fetch failed (error_ holds it).
  bool fetch(Consumer& c, std::optional<std::chrono::nanoseconds> timeout) {
    batch_ = {};
    next_ = 0;
    last_topic_data_ = nullptr;  // views into the batch are gone
    const auto deadline = timeout ? std::chrono::steady_clock::now() + *timeout : std::chrono::steady_clock::time_point::max();
    // Busy for the whole fetch, signal checks included: a signal handler that calls close()
    // or poll() on this consumer meanwhile is refused (it would destroy the Consumer under
    // this loop, or replace the batch not handed out yet).
    Busy busy(*this);
    for (;;) {
      std::chrono::nanoseconds slice = 100ms;  // then signals are looked at
      if (timeout) slice = std::min<std::chrono::nanoseconds>(slice, std::max<std::chrono::nanoseconds>(0ns, deadline - std::chrono::steady_clock::now()));
      Result<std::span<const ConsumedRecord>> r;
      {
        pb::gil_scoped_release nogil;
        r = c.poll(slice);
      }
      rethrow_callback_error();
      if (!r) {
        error_ = r.error();
        return false;
      }
      batch_ = *r;
      if (!batch_.empty() || (timeout && std::chrono::steady_clock::now() >= deadline)) return true;
      if (PyErr_CheckSignals() != 0) throw pb::error_already_set();
    }
  }

  pb::object error_message() {
    PyMessage* m = nullptr;
    pb::object out = new_message(m);
    put(m->error, kafka_error(static_cast<int>(error_.code), error_.message));
    return out;
  }

  // The records of the batch not handed out: their partitions go back to them. This moves
  // the gates of a consumer that holds producers back past what was handed out: the views
  // handed out end first (leave_views), `call` naming the call for its error.
  void give_back(const char* call) {
    leave_views(call);
    if (next_ >= batch_.size()) {
      batch_ = {};
      next_ = 0;
      return;
    }
    std::map<TopicPartition, std::uint64_t> first;
    for (std::size_t i = next_; i < batch_.size(); ++i)
      first.try_emplace(TopicPartition{std::string(batch_[i].topic), batch_[i].partition}, batch_[i].offset);
    batch_ = {};
    next_ = 0;
    for (const auto& [tp, off] : first) check(consumer_->seek(tp, off));
  }

  // Releases the memoryviews handed out (using one then raises ValueError).
  void release_views() {
    std::vector<pb::object> kept;
    for (auto& v : views_) {
      PyObject* r = PyObject_CallMethod(v.ptr(), "release", nullptr);
      if (r) {
        Py_DECREF(r);
      } else {
        // Exported itself (an array or a PickleBuffer made over it): its export still
        // counts. Kept, to be released by the next call once that export is gone.
        PyErr_Clear();
        kept.push_back(std::move(v));
      }
    }
    views_ = std::move(kept);
  }

  // Before the consumer moves on from the values handed out (the next fetch reuses its
  // buffer; moving a gate lets producers overwrite the ring): the memoryviews handed out are
  // released and no new view of those values can be made. If a view derived from one still
  // lives (a slice, memoryview(v), an array over it), it could read what moved on: `call`
  // is refused, having changed nothing, until that view is released.
  void leave_views(const char* call) {
    if (!lease_) return;
    release_views();
    ++lease_->generation;
    if (lease_->exports != 0)
      raise(kErrState, fmt::format("{}: a memoryview of a previous value (or a slice of it, a memoryview() of it, an array "
                                   "over it) is still in use: release it (del, .release() or a with block) first; "
                                   "the consumer has not moved on",
                                   call));
  }

  pb::object bytes_of(Bytes b) {
    if (lease_) {
      auto* o = PyObject_New(PyValueBuffer, g_value_buffer_type);
      if (!o) throw pb::error_already_set();
      o->data = reinterpret_cast<const char*>(b.data());
      o->size = static_cast<Py_ssize_t>(b.size());
      o->generation = lease_->generation;
      new (&o->lease) std::shared_ptr<ViewLease>(lease_);
      auto owner = pb::reinterpret_steal<pb::object>(reinterpret_cast<PyObject*>(o));
      // The memoryview holds an export of the owner (and so the owner) until it is released.
      pb::object v = pb::reinterpret_steal<pb::object>(PyMemoryView_FromObject(owner.ptr()));
      if (!v) throw pb::error_already_set();
      views_.push_back(v);
      return v;
    }
    return pb::reinterpret_steal<pb::object>(value_bytes(reinterpret_cast<const char*>(b.data()), static_cast<Py_ssize_t>(b.size())));
  }

  // The str of a record's topic, one object per topic name. A batch's records name their
  // topic with a view of the consumer's partition entry, the same one for every record of
  // a partition: the same view as the last record of this batch is the same topic.
  PyObject* topic_of(std::string_view t) {
    if (t.data() == last_topic_data_ && t.size() == last_topic_name_.size()) return last_topic_.ptr();
    if (t != last_topic_name_) {
      auto it = topics_.find(t);
      if (it == topics_.end()) it = topics_.emplace(std::string(t), pb::str(std::string(t))).first;
      last_topic_name_ = it->first;
      last_topic_ = it->second;
    }
    last_topic_data_ = t.data();
    return last_topic_.ptr();
  }

  pb::object message(const ConsumedRecord& r) {
    pb::object value = r.null_value ? pb::object(pb::none()) : bytes_of(r.value);
    pb::object key = r.key ? pb::object(pb::bytes(reinterpret_cast<const char*>(r.key->data()), r.key->size()))
                           : pb::object(pb::none());
    PyObject* topic = topic_of(r.topic);  // (may throw: before the Message, whose fields are not set yet)
    PyMessage* m = alloc_message();
    pb::object out = pb::reinterpret_steal<pb::object>(reinterpret_cast<PyObject*>(m));
    m->topic = Py_NewRef(topic);
    m->key = key.release().ptr();
    m->value = value.release().ptr();
    m->headers = Py_NewRef(Py_None);
    m->error = Py_NewRef(Py_None);
    m->partition = static_cast<std::int32_t>(r.partition);
    m->offset = static_cast<std::int64_t>(r.offset);
    m->timestamp_type = 1;
    m->timestamp_ms = r.timestamp_ns / 1'000'000;
    if (!r.raw_headers.empty()) {
      pb::list hs;
      auto h = r.headers();
      while (auto one = h.next())
        hs.append(pb::make_tuple(pb::str(std::string(one->key)),
                                 one->null_value ? pb::object(pb::none())
                                                 : pb::object(pb::bytes(reinterpret_cast<const char*>(one->value.data()), one->value.size()))));
      put(m->headers, hs);
    }
    return out;
  }

  pb::list tp_list(const std::vector<TopicPartition>& tps, const std::vector<std::int64_t>* offsets) {
    pb::list out;
    for (std::size_t i = 0; i < tps.size(); ++i)
      out.append(PyTopicPartition{tps[i].topic, static_cast<std::int32_t>(tps[i].partition),
                                  offsets ? (*offsets)[i] : kOffsetInvalid, pb::none()});
    return out;
  }

  // Runs a Python callback for the C++ consumer's poll/subscribe/commit/close, which call
  // without the GIL; an exception it raises is kept for rethrow_callback_error().
  template <class F>
  void run_callback(F&& f) {
    if (dying_) return;
    pb::gil_scoped_acquire gil;
    if (callback_error_) return;
    in_callback_ = true;
    try {
      f();
    } catch (pb::error_already_set& e) {
      callback_error_ = std::move(e);
    } catch (const KafkaFailure& failure) {
      callback_error_ = failure;
    }
    in_callback_ = false;
  }

  void call_back(const pb::object& fn, const std::vector<TopicPartition>& tps) {
    run_callback([&] {
      if (!fn.is_none()) fn(pb::cast(this, pb::return_value_policy::reference), tp_list(tps, nullptr));
    });
  }

  // on_commit(err, partitions) with busd's answer to an asynchronous commit.
  void committed_back(const std::vector<std::pair<TopicPartition, std::uint64_t>>& sent, const Status& result) {
    run_callback([&] {
      pb::list tps;
      for (const auto& [tp, off] : sent)
        tps.append(PyTopicPartition{tp.topic, static_cast<std::int32_t>(tp.partition), static_cast<std::int64_t>(off), pb::none()});
      on_commit_(result ? pb::object(pb::none()) : kafka_error(static_cast<int>(result.error().code), result.error().message), tps);
    });
  }

  static pb::object callable(pb::object fn, const char* what) {
    if (!fn.is_none() && !PyCallable_Check(fn.ptr())) throw pb::type_error(fmt::format("{} must be callable", what));
    return fn;
  }

  void rethrow_callback_error() {
    if (!callback_error_) return;
    auto e = std::move(*callback_error_);
    callback_error_.reset();
    if (auto* p = std::get_if<pb::error_already_set>(&e)) throw std::move(*p);
    throw std::get<KafkaFailure>(e);
  }

  std::shared_ptr<Bus> bus_;
  std::optional<Consumer> consumer_;
  std::string group_;
  std::shared_ptr<ViewLease> lease_;  // with shmbus.value.memoryview
  std::shared_ptr<PyConsumer*> self_ = std::make_shared<PyConsumer*>(this);  // for the C++ consumer's callbacks
  std::span<const ConsumedRecord> batch_;
  std::size_t next_ = 0;
  Error error_;
  std::optional<Error> pending_error_;  // an assign()ed offset out of range, with auto.offset.reset=error
  OffsetReset reset_ = OffsetReset::kLatest;
  std::vector<pb::object> views_;
  std::map<std::string, pb::str, std::less<>> topics_;  // (never erased: last_topic_name_ views a key)
  std::string_view last_topic_name_;
  const char* last_topic_data_ = nullptr;  // the view of the last record's topic, in batch_ (topic_of)
  pb::object last_topic_ = pb::none();
  pb::object on_assign_ = pb::none(), on_revoke_ = pb::none(), on_lost_ = pb::none(), on_commit_ = pb::none(),
             stats_cb_ = pb::none();
  std::optional<std::variant<pb::error_already_set, KafkaFailure>> callback_error_;
  bool busy_ = false, in_callback_ = false, dying_ = false;
};

}  // namespace

void bind_consumer(pb::module_& m) {
  g_value_buffer_type = reinterpret_cast<PyTypeObject*>(PyType_FromSpec(&g_value_buffer_spec));
  if (!g_value_buffer_type) throw pb::error_already_set();
  m.attr("ValueBuffer") = pb::handle(reinterpret_cast<PyObject*>(g_value_buffer_type));
  auto cls = pb::class_<PyConsumer>(m, "Consumer",
                         "Consumer(conf): reads partitions at its own offsets; assign() needs no daemon (unless\n"
                         "conf['group.id'] is set: then it starts at, and commits, the group's offsets), subscribe()\n"
                         "joins conf['group.id'] through busd (started on demand), which assigns partitions and keeps\n"
                         "committed offsets. Belongs to one thread at a time; a call from another thread while one\n"
                         "waits raises KafkaException(_STATE). Closed, every method raises RuntimeError.\n"
                         "conf: 'bus', 'group.id', 'auto.offset.reset' (latest), 'enable.auto.commit' (true),\n"
                         "'auto.commit.interval.ms' (1000), 'session.timeout.ms' (45000), 'max.poll.interval.ms' (300000),\n'heartbeat.interval.ms' (3000, at most a third of the session timeout), 'group.instance.id',\n"
                         "'partition.assignment.strategy', 'client.id', 'on_commit', 'stats_cb' with\n"
                         "'statistics.interval.ms', 'shmbus.value.memoryview',\n"
                         "'shmbus.hold.producers', 'shmbus.wait', 'shmbus.max.poll.records'.\n"
                         "With 'shmbus.value.memoryview', Message.value() is a read-only memoryview of the consumer's\n"
                         "buffer or (holding producers back) the ring. The next poll(), consume(), close(), or call that\n"
                         "moves positions (seek, position, pause, commit() of the positions, assign, unassign, subscribe,\n"
                         "unsubscribe) releases it; while a view made from it lives (a slice, memoryview(v), an array),\n"
                         "that call raises KafkaException(_STATE) and changes nothing: release the view and call again.\n"
                         "A consumer dropped while such a view lives is closed when the view goes.")
      .def(pb::init<const pb::dict&>(), pb::arg("conf") = pb::dict())
      .def("subscribe", &PyConsumer::subscribe, pb::arg("topics"), pb::arg("on_assign") = pb::none(),
           pb::arg("on_revoke") = pb::none(), pb::arg("on_lost") = pb::none(),
           "Joins conf['group.id'] for these topics and waits (without the GIL) for the first assignment.\n"
           "on_assign(consumer, partitions) / on_revoke(consumer, partitions) are called from poll() as\n"
           "members come and go, with the partitions added or taken (incremental, as cooperative-sticky).\n"
           "on_lost(consumer, partitions): they are someone else's already (this member was evicted:\n"
           "session timeout, max.poll.interval.ms); without it on_revoke is called, as Kafka does.\n"
           "Each partition starts at the group's committed offset, else where auto.offset.reset says.")
      .def("unsubscribe", &PyConsumer::unsubscribe, "Leaves the group (committing first with auto-commit).")
      .def("assign", &PyConsumer::assign, pb::arg("partitions"),
           "Replaces the assignment (no group membership). A TopicPartition's offset, if set (an offset,\n"
           "OFFSET_BEGINNING, OFFSET_END), is where it starts; else, with conf['group.id'], the group's committed\n"
           "offset (asked of busd, without the GIL), else auto.offset.reset says. An offset out of range (overwritten\n"
           "or not written yet) starts where auto.offset.reset says; with error, at the end, and the next poll()\n"
           "returns a Message whose error() is OFFSET_OUT_OF_RANGE. With a group.id, commit() and\n"
           "committed() work for these partitions (busd takes the commits while the group has no live member).")
      .def("unassign", &PyConsumer::unassign, "Drops the manual assignment.")
      .def("assignment", &PyConsumer::assignment, "The assigned partitions.")
      .def("poll", &PyConsumer::poll, pb::arg("timeout") = pb::none(),
           "The next record as a Message, waiting up to `timeout` seconds (None: forever) without the GIL;\n"
           "None when none came. A failure (offset out of range, topic deleted) is a Message whose error() is set.\n"
           "Memoryview values handed out before are released first; KafkaException(_STATE) if a slice or other\n"
           "view made from one still lives (nothing changed: release it and poll again).")
      .def("consume", &PyConsumer::consume, pb::arg("num_messages") = 1, pb::arg("timeout") = -1,
           "Up to num_messages records: waits up to `timeout` seconds (-1: forever) for the first, then takes\n"
           "what is there without waiting more.")
      .def("commit", &PyConsumer::commit, pb::arg("message") = pb::none(), pb::arg("offsets") = pb::none(),
           pb::arg("asynchronous") = true,
           "Commits (group consumers): the message's offset + 1, the given TopicPartition offsets, or the\n"
           "current positions. asynchronous=True returns None at once, and conf['on_commit'](err, partitions)\n"
           "hears busd's answer from a later poll() or close(); False waits and returns the committed\n"
           "TopicPartitions (on_commit is not called for it).")
      .def("committed", &PyConsumer::committed, pb::arg("partitions"), pb::arg("timeout") = pb::none(),
           "The group's committed offsets (OFFSET_INVALID where none), asked of busd.")
      .def("position", &PyConsumer::position, pb::arg("partitions"),
           "The next offset to be returned for each partition (that of what poll() has handed out).")
      .def("seek", &PyConsumer::seek, pb::arg("partition"),
           "Moves an assigned partition to partition.offset (or OFFSET_BEGINNING / OFFSET_END).")
      .def("pause", &PyConsumer::pause, pb::arg("partitions"), "poll() skips these (still assigned) until resumed.")
      .def("resume", &PyConsumer::resume, pb::arg("partitions"), "Undoes pause().")
      .def("get_watermark_offsets", &PyConsumer::watermarks, pb::arg("partition"), pb::arg("timeout") = pb::none(),
           pb::arg("cached") = false,
           "(low, high): the oldest offset still readable (ring, or disk log of a spilled topic) and the next\n"
           "offset to be written. Read from shared memory: never waits.")
      .def("offsets_for_times", &PyConsumer::offsets_for_times, pb::arg("partitions"), pb::arg("timeout") = pb::none(),
           "For each TopicPartition, whose offset holds a time in ms since the epoch: the earliest offset whose\n"
           "record's timestamp is at or after that time, or OFFSET_END (-1) where every record is older. Looked up\n"
           "in the ring and a spilled topic's disk log (without the GIL); the partitions need not be assigned.")
      .def("list_topics", &PyConsumer::list_topics, pb::arg("topic") = pb::none(), pb::arg("timeout") = -1,
           "ClusterMetadata of the bus (as AdminClient.list_topics).")
      .def("memberid", &PyConsumer::memberid, "The group member id, or None.")
      .def("close", &PyConsumer::close,
           "Gives back what poll() has not handed out, commits (auto-commit), leaves the group and releases\n"
           "the consumer; later calls raise RuntimeError. Closing twice is allowed. Refused with\n"
           "KafkaException(_STATE), the consumer left open, while a view made from a memoryview value lives.")
      .def("__enter__", [](pb::object self) { return self; })
      .def("__exit__", [](PyConsumer& c, pb::args) { c.close(); return false; });
  PyConsumer::fast_poll_method().install(cls, "poll", [](PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    return guarded([&] {
      PyConsumer* c = cpp_self<PyConsumer>(self);
      return c ? c->poll_fast(self, args, nargs, kwnames) : PyConsumer::fast_poll_method().fallback(self, args, nargs, kwnames);
    });
  });
  PyConsumer::fast_consume_method().install(cls, "consume", [](PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
    return guarded([&] {
      PyConsumer* c = cpp_self<PyConsumer>(self);
      return c ? c->consume_fast(self, args, nargs, kwnames) : PyConsumer::fast_consume_method().fallback(self, args, nargs, kwnames);
    });
  });
}

}  // namespace shmbus::py
