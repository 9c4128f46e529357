// The Python module shmbus: confluent-kafka-python's API over libshmbus's shared-memory
// path. This file: the module, errors, the configuration table, Message, TopicPartition
// and delete_bus; the clients are in producer.cpp, consumer.cpp and admin.cpp.
#include "module.h"

#include <cctype>
#include <cstdlib>
#include <cstring>
#include <tuple>

#include <fmt/format.h>

namespace shmbus::py {

namespace {

PyObject* g_kafka_exception = nullptr;  // shmbus.KafkaException (owned by the module)

struct PyKafkaError {
  int code = 0;
  std::string message;
  std::string name() const {
    switch (code) {
      case kErrNotImplemented: return "_NOT_IMPLEMENTED";
      case kErrState: return "_STATE";
      case kErrInvalidArg: return "_INVALID_ARG";
      default: break;
    }
    if (code > 0 && code <= static_cast<int>(Errc::kSystem)) {
      std::string n = errc_name(static_cast<Errc>(code));
      for (auto& ch : n) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
      return n;
    }
    return fmt::format("ERR_{}", code);
  }
};

}  // namespace

void raise(int code, std::string message) { throw KafkaFailure{code, std::move(message)}; }

pb::object kafka_error(int code, const std::string& message) { return pb::cast(PyKafkaError{code, message}); }

pb::object kafka_exception(int code, const std::string& message) {
  return pb::reinterpret_borrow<pb::object>(g_kafka_exception)(kafka_error(code, message));
}

void raise_closed(const char* what) { throw std::runtime_error(fmt::format("{} closed", what)); }

// ---- the configuration table ----
// One row a key: which clients take it, whether it is used, and where it goes. A later
// libshmbus feature turns a kPending row into kUsed (and its mapping in the client's file).
const std::vector<ConfigKey>& config_keys() {
  constexpr unsigned P = static_cast<unsigned>(Client::kProducer), C = static_cast<unsigned>(Client::kConsumer),
                     A = static_cast<unsigned>(Client::kAdmin), T = static_cast<unsigned>(Client::kTopic),
                     ALL = P | C | A;
  static const std::vector<ConfigKey> keys = {
      {"bus", ALL, Support::kUsed, "the bus name (BusOptions::name); default $SHMBUS_BUS, else 'default'"},
      {"bootstrap.servers", ALL, Support::kIgnored, "Kafka brokers: shared memory has none"},
      {"client.id", ALL, Support::kUsed, "consumers: ConsumerConfig::client_name (busctl group describe)"},
      {"error_cb", ALL, Support::kIgnored, "errors are raised where they happen"},
      {"logger", ALL, Support::kIgnored, "the library does not log"},
      {"socket.timeout.ms", ALL, Support::kIgnored, "no sockets on the data path"},
      {"statistics.interval.ms", ALL, Support::kUsed,
       "ProducerConfig/ConsumerConfig::statistics_interval: stats_cb every N ms (0: never); AdminClient: no statistics"},
      {"stats_cb", ALL, Support::kUsed,
       "stats_cb(json_str), librdkafka's statistics, from the producer's produce/poll/flush, the consumer's poll"},
      // producer
      {"acks", P, Support::kUsed,
       "ProducerConfig::acks: 0, 1 (default), leader: in the ring (memory); all, -1: on disk (spilled; topics with "
       "shmbus.spill and retention block only)"},
      {"shmbus.acks", P, Support::kUsed, "ProducerConfig::acks in the bus's words: memory, spilled, fsynced (wins over acks)"},
      {"shmbus.ack.timeout.ms", P, Support::kUsed, "ProducerConfig::ack_timeout_ms: how long a send waits for busd (30000)"},
      {"partitioner", P, Support::kUsed, "murmur2_random (default) or murmur2: Kafka's Java partitioner, as libshmbus"},
      {"linger.ms", P, Support::kIgnored, "sends are written at once"},
      {"queue.buffering.max.ms", P, Support::kIgnored, "sends are written at once"},
      {"batch.num.messages", P, Support::kIgnored, "sends are written at once"},
      {"queue.buffering.max.messages", P, Support::kIgnored, "no local queue"},
      {"message.timeout.ms", P, Support::kIgnored, "see shmbus.max.block.ms"},
      {"enable.idempotence", P, Support::kIgnored, "a send is written once"},
      {"compression.type", P, Support::kUsed, "none only"},
      {"on_delivery", P, Support::kUsed, "default delivery callback of produce()"},
      {"delivery.report.only.error", P, Support::kUsed, "serve only failed deliveries"},
      {"shmbus.max.block.ms", P, Support::kUsed, "ProducerConfig::max_block_ms: block topics wait this long for room"},
      {"shmbus.record.alignment", P, Support::kUsed, "ProducerConfig::record_alignment (8, 16, 32, 64)"},
      {"shmbus.exclusive", P, Support::kUsed, "ProducerConfig::exclusive"},
      // consumer
      {"group.id", C, Support::kUsed, "the group subscribe() joins"},
      {"auto.offset.reset", C, Support::kUsed,
       "ConsumerConfig::auto_offset_reset: earliest|smallest|beginning, latest|largest|end, error"},
      {"enable.auto.commit", C, Support::kUsed, "ConsumerConfig::enable_auto_commit"},
      {"auto.commit.interval.ms", C, Support::kUsed, "ConsumerConfig::auto_commit_interval"},
      {"session.timeout.ms", C, Support::kUsed, "ConsumerConfig::session_timeout"},
      {"partition.assignment.strategy", C, Support::kUsed,
       "ConsumerConfig::assignor: range, roundrobin, cooperative-sticky (sticky)"},
      {"max.poll.interval.ms", C, Support::kUsed, "ConsumerConfig::max_poll_interval"},
      {"group.instance.id", C, Support::kUsed, "static membership, ConsumerConfig::group_instance_id"},
      {"on_commit", C, Support::kUsed, "on_commit(err, partitions): Consumer::commit_async's callback, for commit(asynchronous=True)"},
      {"enable.partition.eof", C, Support::kIgnored, "false only: no partition-EOF events"},
      {"heartbeat.interval.ms", C, Support::kUsed, "ConsumerConfig::heartbeat_interval (a background thread)"},
      {"fetch.min.bytes", C, Support::kIgnored, "records are read where they are"},
      {"fetch.wait.max.ms", C, Support::kIgnored, "records are read where they are"},
      {"isolation.level", C, Support::kIgnored, "no transactions"},
      {"shmbus.value.memoryview", C, Support::kUsed,
       "Message.value() a memoryview into the consumer's buffer or the ring, released by the next poll()/consume()/close() "
       "or call that moves positions, which are refused while a view made from it (a slice) lives"},
      {"shmbus.hold.producers", C, Support::kUsed, "ConsumerConfig::hold_producers (block topics: zero-copy views)"},
      {"shmbus.wait", C, Support::kUsed, "ConsumerConfig::wait: spin, yield, block, adaptive (default)"},
      {"shmbus.max.poll.records", C, Support::kUsed, "ConsumerConfig::max_poll_records (records per fetch)"},
      // topics: AdminClient.create_topics(NewTopic(..., config={...}))
      {"shmbus.capacity", T, Support::kUsed, "TopicConfig::capacity: ring bytes per partition (power of two >= 4096)"},
      {"max.message.bytes", T, Support::kUsed, "TopicConfig::max_record"},
      {"shmbus.retention", T, Support::kUsed, "TopicConfig::retention: overwrite (default) or block"},
      {"shmbus.claim.timeout.ms", T, Support::kUsed, "TopicConfig::claim_timeout_ms"},
      {"shmbus.spill", T, Support::kUsed, "SpillConfig::enabled: busd writes the topic to disk"},
      {"retention.bytes", T, Support::kUsed, "SpillConfig::retention_bytes (spilled topics)"},
      {"retention.ms", T, Support::kUsed, "SpillConfig::retention_ms (spilled topics)"},
      {"segment.bytes", T, Support::kUsed, "SpillConfig::segment_bytes (spilled topics)"},
      {"shmbus.fsync", T, Support::kUsed, "SpillConfig::fsync: never, interval (default), always"},
  };
  return keys;
}

namespace {

// The value a pending key may take today (what the library already does): none yet but the
// absent one (a pending key's row names its allowed value here when one exists).
bool pending_value_ok(const std::string& key, const pb::handle& v) {
  (void)key;
  return v.is_none();
}

}  // namespace

Conf::Conf(const pb::dict& conf, Client client) {
  for (auto [k, v] : conf) {
    if (!pb::isinstance<pb::str>(k)) throw pb::type_error("configuration keys must be str");
    const std::string key = k.cast<std::string>();
    const ConfigKey* row = nullptr;
    for (const auto& r : config_keys())
      if (key == r.key && (r.clients & static_cast<unsigned>(client))) row = &r;
    if (!row) raise(kErrInvalidArg, fmt::format("unknown {}configuration key '{}'", client == Client::kTopic ? "topic " : "", key));
    if (row->support == Support::kPending && !pending_value_ok(key, v))
      raise(kErrNotImplemented, fmt::format("configuration key '{}' = {}: not implemented yet: {}", key,
                                            pb::repr(v).cast<std::string>(), row->doc));
    values_[key] = pb::reinterpret_borrow<pb::object>(v);
  }
}

pb::object Conf::object(const std::string& key) const {
  auto it = values_.find(key);
  return it == values_.end() ? pb::object(pb::none()) : it->second;
}

std::string Conf::str(const std::string& key, const std::string& def) const {
  auto it = values_.find(key);
  if (it == values_.end()) return def;
  if (pb::isinstance<pb::bool_>(it->second)) return it->second.cast<bool>() ? "true" : "false";
  return pb::str(it->second).cast<std::string>();
}

std::int64_t Conf::integer(const std::string& key, std::int64_t def) const {
  auto it = values_.find(key);
  if (it == values_.end()) return def;
  const pb::object& v = it->second;
  if (pb::isinstance<pb::int_>(v) && !pb::isinstance<pb::bool_>(v)) return v.cast<std::int64_t>();
  if (pb::isinstance<pb::str>(v)) {
    const std::string s = v.cast<std::string>();
    char* end = nullptr;
    const long long n = std::strtoll(s.c_str(), &end, 10);
    if (!s.empty() && end && *end == 0) return n;
  }
  raise(kErrInvalidArg, fmt::format("configuration key '{}': {} is not an integer", key, pb::repr(v).cast<std::string>()));
}

bool Conf::boolean(const std::string& key, bool def) const {
  auto it = values_.find(key);
  if (it == values_.end()) return def;
  if (pb::isinstance<pb::bool_>(it->second)) return it->second.cast<bool>();
  const std::string s = pb::str(it->second);
  if (s == "true" || s == "1") return true;
  if (s == "false" || s == "0") return false;
  raise(kErrInvalidArg, fmt::format("configuration key '{}': {} is not true or false", key, s));
}

std::shared_ptr<Bus> Conf::attach_bus() const {
  BusOptions o;
  o.name = str("bus", "");
  Result<std::shared_ptr<Bus>> r;
  {
    pb::gil_scoped_release nogil;  // the registry lock may be held by another process
    r = Bus::attach(o);
  }
  return take(std::move(r));
}

BorrowedBytes::BorrowedBytes(pb::handle obj, const char* what) {
  if (PyUnicode_Check(obj.ptr())) {
    Py_ssize_t n = 0;
    const char* s = PyUnicode_AsUTF8AndSize(obj.ptr(), &n);  // cached in the str object
    if (!s) throw pb::error_already_set();
    bytes_ = Bytes(reinterpret_cast<const std::byte*>(s), static_cast<std::size_t>(n));
    return;
  }
  if (PyBytes_Check(obj.ptr())) {
    bytes_ = Bytes(reinterpret_cast<const std::byte*>(PyBytes_AS_STRING(obj.ptr())),
                   static_cast<std::size_t>(PyBytes_GET_SIZE(obj.ptr())));
    return;
  }
  auto type = [&] { return pb::str(pb::type::handle_of(obj).attr("__name__")).cast<std::string>(); };
  if (PyObject_CheckBuffer(obj.ptr())) {
    if (PyObject_GetBuffer(obj.ptr(), &view_, PyBUF_C_CONTIGUOUS) == 0) {
      has_view_ = true;
      bytes_ = Bytes(static_cast<const std::byte*>(view_.buf), static_cast<std::size_t>(view_.len));
      return;
    }
    // A buffer, but not one to be read in place: say why rather than "not a buffer".
    pb::error_already_set why;  // (takes the Python error)
    Py_buffer strided{};
    if (PyObject_GetBuffer(obj.ptr(), &strided, PyBUF_STRIDED_RO) == 0) {
      PyBuffer_Release(&strided);
      throw pb::type_error(fmt::format("{} is a {} buffer that is not C-contiguous (strided): make a contiguous copy "
                                       "first (bytes(x), numpy.ascontiguousarray(x))",
                                       what, type()));
    }
    PyErr_Clear();
    throw pb::type_error(fmt::format("{}: the buffer of the {} cannot be read ({})", what, type(), why.what()));
  }
  throw pb::type_error(fmt::format("{} must be str, bytes, a contiguous buffer or None, not {}", what, type()));
}

BorrowedBytes::~BorrowedBytes() {
  if (has_view_) PyBuffer_Release(&view_);
}

TopicPartition PyTopicPartition::tp() const {
  if (partition < 0) raise(kErrInvalidArg, fmt::format("TopicPartition('{}', {}): no partition", topic, partition));
  return TopicPartition{topic, static_cast<std::uint32_t>(partition)};
}

std::optional<std::chrono::nanoseconds> to_timeout(const pb::object& seconds) {
  if (seconds.is_none()) return std::nullopt;
  if (!pb::isinstance<pb::int_>(seconds) && !pb::isinstance<pb::float_>(seconds))
    throw pb::type_error("timeout must be a number of seconds or None");
  const double s = seconds.cast<double>();
  if (s < 0) return std::nullopt;
  return std::chrono::nanoseconds(static_cast<std::int64_t>(s * 1e9));
}

std::vector<TopicPartition> to_tps(const pb::handle& list, const char* what) {
  if (!pb::isinstance<pb::list>(list) && !pb::isinstance<pb::tuple>(list))
    throw pb::type_error(fmt::format("{} must be a list of TopicPartition", what));
  std::vector<TopicPartition> out;
  for (auto item : list) {
    if (!pb::isinstance<PyTopicPartition>(item)) throw pb::type_error(fmt::format("{} must be a list of TopicPartition", what));
    out.push_back(item.cast<const PyTopicPartition&>().tp());
  }
  return out;
}


// ---- shmbus.Message ----
namespace {

PyTypeObject* g_message_type = nullptr;  // owned by the module

PyMessage* self_message(PyObject* self) { return reinterpret_cast<PyMessage*>(self); }

PyObject* field(PyObject* f) { return Py_NewRef(f ? f : Py_None); }

// Freed Messages kept for the next ones (as CPython keeps freed floats and tuples): a
// consumer makes one per record, and a consume() of a batch frees as many as the next
// makes. Their memory only: every field is dropped when a Message dies. Used under the GIL.
constexpr std::size_t kFreeMessagesMax = 1024;  // two batches of max.poll.records' default (500)
PyMessage* g_free_messages[kFreeMessagesMax];
std::size_t g_free_message_count = 0;

// Value bytes kept for the next ones: those of one size (the last kept), each referenced by
// nothing else when its Message died (so no one can see it change before it is handed out
// again, its hash reset). Not sizes 0 and 1, whose bytes CPython shares.
// Small values only (the allocation is then a large part of a record's cost): at most 1,024
// of up to 512 bytes stay allocated, not 1,024 of whatever size the last values had.
constexpr std::size_t kFreeBytesMax = 1024;
constexpr Py_ssize_t kFreeBytesSizeMax = 512;
PyObject* g_free_bytes[kFreeBytesMax];
std::size_t g_free_bytes_count = 0;
Py_ssize_t g_free_bytes_size = -1;

void keep_or_drop_value(PyObject* v) {
  if (v && Py_REFCNT(v) == 1 && PyBytes_CheckExact(v)) {
    const Py_ssize_t n = PyBytes_GET_SIZE(v);
    if (n >= 2 && n <= kFreeBytesSizeMax && (n == g_free_bytes_size || g_free_bytes_count == 0) &&
        g_free_bytes_count < kFreeBytesMax) {
      g_free_bytes_size = n;
      g_free_bytes[g_free_bytes_count++] = v;  // our reference, kept
      return;
    }
  }
  Py_XDECREF(v);
}

void message_dealloc(PyObject* self) {
  PyMessage* m = self_message(self);
  Py_XDECREF(m->topic);
  Py_XDECREF(m->key);
  keep_or_drop_value(m->value);
  Py_XDECREF(m->headers);
  Py_XDECREF(m->error);
  PyTypeObject* type = Py_TYPE(self);
  if (g_free_message_count < kFreeMessagesMax) g_free_messages[g_free_message_count++] = m;
  else PyObject_Free(self);
  Py_DECREF(type);  // a heap type: each instance holds a reference to it
}

}  // namespace

PyObject* value_bytes(const char* data, Py_ssize_t size) {
  if (size == g_free_bytes_size && g_free_bytes_count > 0) {
    PyObject* b = g_free_bytes[--g_free_bytes_count];
    std::memcpy(PyBytes_AS_STRING(b), data, static_cast<std::size_t>(size));  // its NUL after stays
    // A hash of the old bytes may be cached. The field is deprecated since 3.11 (bytes keep
    // their hash there still): nothing in the API resets it.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    reinterpret_cast<PyBytesObject*>(b)->ob_shash = -1;
#pragma GCC diagnostic pop
    return b;
  }
  PyObject* b = PyBytes_FromStringAndSize(data, size);
  if (!b) throw pb::error_already_set();
  return b;
}

namespace {

PyObject* message_topic(PyObject* self, PyObject*) { return field(self_message(self)->topic); }
PyObject* message_partition(PyObject* self, PyObject*) { return PyLong_FromLong(self_message(self)->partition); }
PyObject* message_offset(PyObject* self, PyObject*) { return PyLong_FromLongLong(self_message(self)->offset); }
PyObject* message_key(PyObject* self, PyObject*) { return field(self_message(self)->key); }
PyObject* message_value(PyObject* self, PyObject*) { return field(self_message(self)->value); }
PyObject* message_headers(PyObject* self, PyObject*) { return field(self_message(self)->headers); }
PyObject* message_error(PyObject* self, PyObject*) { return field(self_message(self)->error); }
PyObject* message_timestamp(PyObject* self, PyObject*) {
  const PyMessage* m = self_message(self);
  return Py_BuildValue("(iL)", m->timestamp_type, static_cast<long long>(m->timestamp_ms));
}
PyObject* message_set(PyObject*& f, PyObject* v) {
  put(f, pb::reinterpret_borrow<pb::object>(v));
  Py_RETURN_NONE;
}
PyObject* message_set_key(PyObject* self, PyObject* v) { return message_set(self_message(self)->key, v); }
PyObject* message_set_value(PyObject* self, PyObject* v) { return message_set(self_message(self)->value, v); }
PyObject* message_set_headers(PyObject* self, PyObject* v) { return message_set(self_message(self)->headers, v); }
Py_ssize_t message_length(PyObject* self) {
  PyObject* v = self_message(self)->value;
  return !v || v == Py_None ? 0 : PyObject_Length(v);
}
PyObject* message_len(PyObject* self, PyObject*) {
  const Py_ssize_t n = message_length(self);
  return n < 0 ? nullptr : PyLong_FromSsize_t(n);
}
PyObject* message_repr(PyObject* self) {
  return guarded([&] {
    const PyMessage* m = self_message(self);
    const std::string s = fmt::format("<shmbus.Message {}[{}]@{}>", pb::str(pb::reinterpret_borrow<pb::object>(m->topic)).cast<std::string>(),
                                      m->partition, m->offset);
    return PyUnicode_FromStringAndSize(s.data(), static_cast<Py_ssize_t>(s.size()));
  });
}

PyMethodDef g_message_methods[] = {
    {"topic", message_topic, METH_NOARGS, "The topic (str), or None."},
    {"partition", message_partition, METH_NOARGS, "The partition, or -1."},
    {"offset", message_offset, METH_NOARGS, "The offset, or OFFSET_INVALID."},
    {"key", message_key, METH_NOARGS, "The key (bytes), or None."},
    {"value", message_value, METH_NOARGS, "The value: bytes (a memoryview with 'shmbus.value.memoryview'), or None."},
    {"headers", message_headers, METH_NOARGS, "A list of (str, bytes) tuples, or None."},
    {"timestamp", message_timestamp, METH_NOARGS,
     "(TIMESTAMP_CREATE_TIME, milliseconds since the epoch), or (TIMESTAMP_NOT_AVAILABLE, 0)."},
    {"error", message_error, METH_NOARGS, "The KafkaError of a consumer error, or None."},
    {"set_key", message_set_key, METH_O, "Replaces the key."},
    {"set_value", message_set_value, METH_O, "Replaces the value."},
    {"set_headers", message_set_headers, METH_O, "Replaces the headers."},
    {"len", message_len, METH_NOARGS, "The value's length (0 for None)."},
    {nullptr, nullptr, 0, nullptr},
};

const char* const kMessageDoc =
    "A consumed record (or a consumer error: error() is then set), or the record of a delivery\n"
    "report. value() is bytes, or a memoryview with 'shmbus.value.memoryview' (valid until the\n"
    "consumer's next poll()/consume()/close() or call that moves positions, which releases it:\n"
    "it raises ValueError then; while a view made from it (a slice, memoryview(v)) lives, those\n"
    "calls raise KafkaException(_STATE) and change nothing).";

PyType_Slot g_message_slots[] = {
    {Py_tp_dealloc, reinterpret_cast<void*>(message_dealloc)},
    {Py_tp_repr, reinterpret_cast<void*>(message_repr)},
    {Py_tp_methods, g_message_methods},
    {Py_tp_doc, const_cast<char*>(kMessageDoc)},
    {Py_mp_length, reinterpret_cast<void*>(message_length)},
    {0, nullptr},
};

PyType_Spec g_message_spec = {"shmbus.Message", sizeof(PyMessage), 0, Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
                              g_message_slots};

}  // namespace

PyMessage* alloc_message() {
  if (g_free_message_count == 0) {
    PyMessage* m = PyObject_New(PyMessage, g_message_type);
    if (!m) throw pb::error_already_set();
    return m;
  }
  PyMessage* m = g_free_messages[--g_free_message_count];
  PyObject_Init(reinterpret_cast<PyObject*>(m), g_message_type);  // a new reference (and one to the type)
  return m;
}

pb::object new_message(PyMessage*& fields) {
  PyMessage* m = alloc_message();
  m->topic = Py_NewRef(Py_None);
  m->key = Py_NewRef(Py_None);
  m->value = Py_NewRef(Py_None);
  m->headers = Py_NewRef(Py_None);
  m->error = Py_NewRef(Py_None);
  m->partition = -1;
  m->offset = kOffsetInvalid;
  m->timestamp_ms = 0;
  m->timestamp_type = 0;
  fields = m;
  return pb::reinterpret_steal<pb::object>(reinterpret_cast<PyObject*>(m));
}

PyMessage* as_message(pb::handle obj) {
  return Py_TYPE(obj.ptr()) == g_message_type ? reinterpret_cast<PyMessage*>(obj.ptr()) : nullptr;
}

// ---- plain CPython methods ----
void translate_current_exception() noexcept {
  try {
    throw;
  } catch (pb::error_already_set& e) {
    e.restore();
    return;
  } catch (...) {
  }
  if (pb::detail::apply_exception_translators(pb::detail::get_local_internals().registered_exception_translators)) return;
  if (pb::detail::apply_exception_translators(pb::detail::get_internals().registered_exception_translators)) return;
  PyErr_SetString(PyExc_SystemError, "Exception escaped from default exception translator!");
}

void FastMethod::install(pb::handle cls, const char* name, Fn fn) {
  for (const char* n : names_) interned_.push_back(PyUnicode_InternFromString(n));
  slow_ = pb::getattr(cls, name).release().ptr();
  doc_ = pb::str(pb::getattr(pb::handle(slow_), "__doc__")).cast<std::string>();
  def_ = PyMethodDef{name, reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(fn)), METH_FASTCALL | METH_KEYWORDS,
                     doc_.c_str()};
  pb::object descr = pb::reinterpret_steal<pb::object>(PyDescr_NewMethod(reinterpret_cast<PyTypeObject*>(cls.ptr()), &def_));
  if (!descr) throw pb::error_already_set();
  pb::setattr(cls, name, descr);
}

bool FastMethod::parse(PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames, PyObject** slots) const {
  if (nargs < 0 || static_cast<std::size_t>(nargs) > positional_) return false;
  const std::size_t n = interned_.size();
  for (std::size_t i = 0; i < n; ++i) slots[i] = i < static_cast<std::size_t>(nargs) ? args[i] : nullptr;
  if (!kwnames) return true;
  const Py_ssize_t nk = PyTuple_GET_SIZE(kwnames);
  for (Py_ssize_t k = 0; k < nk; ++k) {
    PyObject* name = PyTuple_GET_ITEM(kwnames, k);
    std::size_t i = 0;
    while (i < n && interned_[i] != name) ++i;  // keywords in a call are interned: found by identity
    if (i == n) {
      i = 0;
      while (i < n && PyUnicode_Compare(interned_[i], name) != 0) ++i;
      PyErr_Clear();
    }
    if (i == n || slots[i]) return false;
    slots[i] = args[nargs + k];
  }
  return true;
}

PyObject* FastMethod::fallback(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) const {
  const Py_ssize_t total = nargs + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
  std::vector<PyObject*> all;
  all.reserve(static_cast<std::size_t>(total) + 1);
  all.push_back(self);
  all.insert(all.end(), args, args + total);
  return PyObject_Vectorcall(slow_, all.data(), static_cast<std::size_t>(nargs) + 1, kwnames);
}

}  // namespace shmbus::py

using namespace shmbus::py;

PYBIND11_MODULE(shmbus, m) {
  m.doc() =
      "shmbus: Kafka's programming model over shared memory, with confluent-kafka-python's API.\n\n"
      "from shmbus import Producer, Consumer, TopicPartition, KafkaException, AdminClient\n"
      "Every client takes a conf dict; 'bus' names the bus (default $SHMBUS_BUS, else 'default').\n"
      "Keys a client does not know raise KafkaException naming the key. See docs/python.md.";
  m.attr("__version__") = SHMBUS_PY_VERSION;
  m.attr("TIMESTAMP_NOT_AVAILABLE") = 0;
  m.attr("TIMESTAMP_CREATE_TIME") = 1;
  m.attr("TIMESTAMP_LOG_APPEND_TIME") = 2;
  m.attr("OFFSET_BEGINNING") = kOffsetBeginning;
  m.attr("OFFSET_END") = kOffsetEnd;
  m.attr("OFFSET_STORED") = kOffsetStored;
  m.attr("OFFSET_INVALID") = kOffsetInvalid;

  auto ke = pb::class_<PyKafkaError>(m, "KafkaError",
                                     "An error: code() is the bus's error code (shmbus.Errc in C++) or one of\n"
                                     "librdkafka's local codes (_NOT_IMPLEMENTED, _STATE, _INVALID_ARG).")
                .def(pb::init([](int code, const std::string& reason) { return PyKafkaError{code, reason}; }),
                     pb::arg("error"), pb::arg("reason") = "")
                .def("code", [](const PyKafkaError& e) { return e.code; },
                     "The error code: a KafkaError class attribute (NOT_FOUND, OFFSET_OUT_OF_RANGE, _INVALID_ARG, ...).")
                .def("name", &PyKafkaError::name, "The code's name, as its class attribute is spelt ('NOT_FOUND', '_STATE').")
                .def("str", [](const PyKafkaError& e) { return e.message; },
                     "The human-readable reason (what failed and why), as confluent-kafka's str().")
                .def("fatal", [](const PyKafkaError&) { return false; }, "Always False: no error makes a client unusable (no idempotent producer).")
                .def("retriable", [](const PyKafkaError& e) { return e.code == static_cast<int>(shmbus::Errc::kTimedOut); },
                     "True for TIMED_OUT: the same call may succeed later.")
                .def("txn_requires_abort", [](const PyKafkaError&) { return false; }, "Always False: there are no transactions.")
                .def("__str__", [](const PyKafkaError& e) { return fmt::format("KafkaError{{code={},val={},str=\"{}\"}}", e.name(), e.code, e.message); })
                .def("__repr__", [](const PyKafkaError& e) { return fmt::format("KafkaError{{code={},val={},str=\"{}\"}}", e.name(), e.code, e.message); })
                .def("__eq__", [](const PyKafkaError& e, const pb::object& o) {
                  if (pb::isinstance<PyKafkaError>(o)) return e.code == o.cast<const PyKafkaError&>().code;
                  if (pb::isinstance<pb::int_>(o)) return e.code == o.cast<int>();
                  return false;
                })
                .def("__hash__", [](const PyKafkaError& e) { return e.code; });
  ke.attr("_NOT_IMPLEMENTED") = kErrNotImplemented;
  ke.attr("_STATE") = kErrState;
  ke.attr("_INVALID_ARG") = kErrInvalidArg;
  for (int c = 1; c <= static_cast<int>(shmbus::Errc::kSystem); ++c) {
    std::string n = shmbus::errc_name(static_cast<shmbus::Errc>(c));
    for (auto& ch : n) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    ke.attr(n.c_str()) = c;
  }

  g_kafka_exception = PyErr_NewExceptionWithDoc("shmbus.KafkaException",
                                                "Raised by shmbus; args[0] is the KafkaError.", PyExc_Exception, nullptr);
  m.attr("KafkaException") = pb::handle(g_kafka_exception);
  pb::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const KafkaFailure& f) {
      pb::object err = kafka_error(f.code, f.message);
      PyErr_SetObject(g_kafka_exception, err.ptr());
    }
  });

  pb::class_<PyTopicPartition>(m, "TopicPartition",
                               "TopicPartition(topic, partition=-1, offset=OFFSET_INVALID): a partition of a topic,\n"
                               "and an offset where one is meant (the next to read, for commits and seeks).")
      .def(pb::init([](std::string topic, std::int32_t partition, std::int64_t offset) {
             return PyTopicPartition{std::move(topic), partition, offset, pb::none()};
           }),
           pb::arg("topic"), pb::arg("partition") = -1, pb::arg("offset") = kOffsetInvalid)
      .def_readwrite("topic", &PyTopicPartition::topic)
      .def_readwrite("partition", &PyTopicPartition::partition)
      .def_readwrite("offset", &PyTopicPartition::offset)
      .def_readwrite("error", &PyTopicPartition::error)
      .def("__repr__", [](const PyTopicPartition& t) {
        return fmt::format("TopicPartition{{topic={},partition={},offset={},error={}}}", t.topic, t.partition, t.offset,
                           pb::str(t.error).cast<std::string>());
      })
      .def("__eq__", [](const PyTopicPartition& a, const pb::object& o) {
        if (!pb::isinstance<PyTopicPartition>(o)) return false;
        const auto& b = o.cast<const PyTopicPartition&>();
        return a.topic == b.topic && a.partition == b.partition;
      })
      .def("__lt__", [](const PyTopicPartition& a, const PyTopicPartition& b) {
        return std::tie(a.topic, a.partition) < std::tie(b.topic, b.partition);
      })
      .def("__hash__", [](const PyTopicPartition& t) { return pb::hash(pb::make_tuple(t.topic, t.partition)); });

  g_message_type = reinterpret_cast<PyTypeObject*>(PyType_FromSpec(&g_message_spec));
  if (!g_message_type) throw pb::error_already_set();
  m.attr("Message") = pb::handle(reinterpret_cast<PyObject*>(g_message_type));

  m.def(
      "delete_bus",
      [](const std::string& name, bool purge_disk) {
        shmbus::Status s;
        {
          pb::gil_scoped_release nogil;
          s = shmbus::Bus::destroy(name, purge_disk);
        }
        check(s);
      },
      pb::arg("name"), pb::arg("purge_disk") = false,
      "Removes every segment of bus `name` (Bus::destroy); attached clients keep their mappings.\n"
      "Disk logs of spilled topics stay unless purge_disk.");
  m.def(
      "config_keys",
      []() {
        pb::list out;
        for (const auto& r : config_keys()) {
          pb::list clients;
          if (r.clients & static_cast<unsigned>(Client::kProducer)) clients.append("producer");
          if (r.clients & static_cast<unsigned>(Client::kConsumer)) clients.append("consumer");
          if (r.clients & static_cast<unsigned>(Client::kAdmin)) clients.append("admin");
          if (r.clients & static_cast<unsigned>(Client::kTopic)) clients.append("topic");
          const char* s = r.support == Support::kUsed ? "used" : r.support == Support::kIgnored ? "ignored" : "pending";
          out.append(pb::make_tuple(r.key, clients, s, r.doc));
        }
        return out;
      },
      "The configuration table: (key, clients, 'used'|'ignored'|'pending', what it maps to).");

  bind_producer(m);
  bind_consumer(m);
  bind_admin(m);
}
