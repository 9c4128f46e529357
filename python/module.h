// The Python module shmbus (pybind11): what its rooms share. Errors as confluent-kafka's
// (KafkaError inside a KafkaException), the one table of configuration keys, Message and
// TopicPartition. module.cpp defines these; producer.cpp, consumer.cpp and admin.cpp the
// clients. Nothing Python is ever put in shared memory.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "shmbus/bus.h"
#include "shmbus/error.h"
#include "shmbus/record.h"

namespace shmbus::py {

namespace pb = pybind11;

// KafkaError codes that are not the bus's Errc (those keep their Errc number): librdkafka's
// negative "local" codes where one means the same.
inline constexpr int kErrNotImplemented = -170;  // librdkafka _NOT_IMPLEMENTED
inline constexpr int kErrState = -172;           // _STATE: the object is closed or busy
inline constexpr int kErrInvalidArg = -186;      // _INVALID_ARG: bad configuration

// A C++ exception carrying a KafkaError; translated into shmbus.KafkaException.
struct KafkaFailure {
  int code;
  std::string message;
};
[[noreturn]] void raise(int code, std::string message);
[[noreturn]] inline void raise(const Error& e) { raise(static_cast<int>(e.code), e.message); }
template <class T>
T take(Result<T> r) {
  if (!r) raise(r.error());
  return std::move(*r);
}
inline void check(const Status& s) {
  if (!s) raise(s.error());
}
// The KafkaError object for an error (for Message.error() and futures).
pb::object kafka_error(int code, const std::string& message);
pb::object kafka_exception(int code, const std::string& message);

// RuntimeError("<what> closed"), as confluent-kafka raises on closed clients.
[[noreturn]] void raise_closed(const char* what);

// ---- configuration: one table for every client (module.cpp, kConfigKeys) ----
enum class Client : unsigned { kProducer = 1, kConsumer = 2, kAdmin = 4, kTopic = 8 };  // kTopic: NewTopic(config=)
// kUsed: mapped onto the C++ config. kIgnored: accepted for confluent-kafka compatibility,
// meaningless on shared memory. kPending: the C++ library has no such feature yet; a value
// other than what the library does today raises _NOT_IMPLEMENTED naming the missing piece.
enum class Support { kUsed, kIgnored, kPending };
struct ConfigKey {
  const char* key;
  unsigned clients;  // Client bits
  Support support;
  const char* doc;   // what it maps to, or (kPending) what the library still lacks
};
const std::vector<ConfigKey>& config_keys();

// A conf dict checked against the table for one client: every key known, pending ones at
// today's behaviour. Values are kept as given (Python objects), read with the getters.
class Conf {
 public:
  Conf(const pb::dict& conf, Client client);
  bool has(const std::string& key) const { return values_.count(key) != 0; }
  std::string str(const std::string& key, const std::string& def) const;
  std::int64_t integer(const std::string& key, std::int64_t def) const;
  bool boolean(const std::string& key, bool def) const;
  pb::object object(const std::string& key) const;  // None when absent
  // The bus the client attaches to ("bus", else $SHMBUS_BUS, else "default").
  std::shared_ptr<Bus> attach_bus() const;

 private:
  std::map<std::string, pb::object> values_;
};

// Python bytes-like: str (UTF-8), bytes, or any buffer-protocol object, borrowed without
// copying for as long as this lives (the caller keeps the GIL or the object alive).
class BorrowedBytes {
 public:
  BorrowedBytes() = default;
  BorrowedBytes(pb::handle obj, const char* what);  // raises TypeError
  ~BorrowedBytes();
  BorrowedBytes(const BorrowedBytes&) = delete;
  BorrowedBytes& operator=(const BorrowedBytes&) = delete;
  Bytes bytes() const { return bytes_; }

 private:
  Py_buffer view_{};
  bool has_view_ = false;
  Bytes bytes_{};
};

// confluent-kafka's special offsets.
inline constexpr std::int64_t kOffsetBeginning = -2, kOffsetEnd = -1, kOffsetStored = -1000, kOffsetInvalid = -1001;

struct PyTopicPartition {
  std::string topic;
  std::int32_t partition = -1;
  std::int64_t offset = kOffsetInvalid;
  pb::object error = pb::none();
  TopicPartition tp() const;
};

// shmbus.Message: one consumed record (or a consumer error), or the record of a delivery
// report, as confluent-kafka's Message. A plain CPython type (not a pybind11 class): it is
// made once per record, and its getters are the calls a consumer loop makes most, so both
// are kept to a few instructions. The object fields are owned references, never null.
struct PyMessage {
  PyObject_HEAD
  PyObject* topic;
  PyObject* key;
  PyObject* value;
  PyObject* headers;
  PyObject* error;
  std::int32_t partition;
  std::int64_t offset;
  std::int64_t timestamp_ms;
  int timestamp_type;  // TIMESTAMP_NOT_AVAILABLE (0) or TIMESTAMP_CREATE_TIME (1)
};
// A new bytes holding `size` bytes from `data`, reusing the memory of a value bytes a dying
// Message held alone when one of that size is kept (as CPython keeps freed floats): a consumer
// makes one per record, mostly of one size. Throws pb::error_already_set when Python cannot
// allocate it. Under the GIL.
PyObject* value_bytes(const char* data, Py_ssize_t size);
// A new Message (reusing a freed one's memory when one is kept) whose fields are not set:
// the caller sets every field, the object ones to owned references, before anything else
// can see it. Throws pb::error_already_set when Python cannot allocate it.
PyMessage* alloc_message();
// A new Message: every object field None, partition -1, offset OFFSET_INVALID, no timestamp.
// Throws pb::error_already_set when Python cannot allocate it.
pb::object new_message(PyMessage*& fields);
// The Message `obj` is, or nullptr when it is something else.
PyMessage* as_message(pb::handle obj);
// Stores `value` in a Message's object field, dropping what was there.
inline void put(PyObject*& field, pb::object value) {
  PyObject* old = field;
  field = value.release().ptr();
  Py_XDECREF(old);
}

// ---- the hottest calls as plain CPython methods (METH_FASTCALL | METH_KEYWORDS) ----
// pybind11's dispatch costs about 2,000 instructions a call, twice a whole C++ send: the
// calls a loop makes per record (Producer.produce, Consumer.poll, Consumer.consume) parse
// their arguments here for the common shapes, and hand every other shape to the pybind11
// binding they replace, which keeps its conversions and its errors.
class FastMethod {
 public:
  using Fn = PyObject* (*)(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames);
  // `params`: the parameter names in order; the first `positional` may be given by position.
  FastMethod(std::vector<const char*> params, std::size_t positional) : names_(std::move(params)), positional_(positional) {}
  // Replaces cls.`name` (a pybind11 method) with `fn`, keeping the pybind11 one for fallback().
  void install(pb::handle cls, const char* name, Fn fn);
  // Fills slots[i] (borrowed; nullptr: not given) for each parameter; false when the call's
  // shape is not one this parser takes (too many positionals, an unknown or repeated keyword).
  bool parse(PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames, PyObject** slots) const;
  // The same call through the pybind11 binding.
  PyObject* fallback(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) const;

 private:
  std::vector<const char*> names_;
  std::vector<PyObject*> interned_;
  std::size_t positional_;
  PyObject* slow_ = nullptr;  // the pybind11 function (a reference kept for the process)
  PyMethodDef def_{};
  std::string doc_;
};

// The C++ object of a pybind11 instance (of a class bound with a plain holder), or nullptr
// when it has none (not initialised, or a layout this does not read: use the fallback).
template <class T>
T* cpp_self(PyObject* self) {
  auto* inst = reinterpret_cast<pb::detail::instance*>(self);
  if (!inst->simple_layout || !inst->simple_holder_constructed) return nullptr;
  return static_cast<T*>(inst->simple_value_holder[0]);
}

// Sets the Python error for the C++ exception being handled, as pybind11's dispatcher does
// (error_already_set, then the registered translators, then pybind11's own).
void translate_current_exception() noexcept;

// Runs f (returning a new reference) for a plain CPython method: its result, or nullptr with
// the Python error set.
template <class F>
PyObject* guarded(F&& f) noexcept {
  try {
    return f();
  } catch (pb::error_already_set& e) {
    e.restore();
  } catch (...) {
    translate_current_exception();
  }
  return nullptr;
}

// admin.cpp: ClusterMetadata of the bus (all topics, or one), for AdminClient and Consumer.
pb::object cluster_metadata(Bus& bus, const pb::object& topic);

// A timeout in seconds as confluent-kafka takes it: None or negative waits forever.
std::optional<std::chrono::nanoseconds> to_timeout(const pb::object& seconds);

std::vector<TopicPartition> to_tps(const pb::handle& list, const char* what);

void bind_producer(pb::module_& m);
void bind_consumer(pb::module_& m);
void bind_admin(pb::module_& m);

}  // namespace shmbus::py
