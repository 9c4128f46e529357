// The consumer's statistics report (ConsumerConfig::statistics_cb): its partitions' counts,
// positions, committed offsets and lag, and its group. Counters: bus/statistics.h.
#include "bus/consumer_impl.h"

#include <algorithm>

namespace shmbus {

using stats::kInvalidOffset;

void Consumer::Impl::statistics_tick() {
  stats::ConsumerStats& st = *stats;
  for (auto& a : assigned) {
    stats::PartitionCounters& c = st.part(a.tp);
    const std::uint64_t aborted_now = a.reader.aborted_skipped();
    c.lost += a.lost;
    st.lost += a.lost;
    a.lost = 0;
    if (aborted_now > a.aborted_seen) {  // a reader seeked to another ring position starts over
      c.aborted += aborted_now - a.aborted_seen;
      st.aborted += aborted_now - a.aborted_seen;
    }
    a.aborted_seen = aborted_now;
  }
  if (group && group->generation != st.generation) {
    st.generation = group->generation;
    ++st.rebalances;
  }
  if (!st.reporter.due()) return;

  using json = proto::json;
  json topics = json::object();
  for (const auto& [tp, c] : st.parts) {
    const Assigned* a = nullptr;
    for (const auto& x : assigned)
      if (x.tp == tp) a = &x;
    json p{{"partition", tp.partition}, {"desired", a != nullptr}, {"rxmsgs", c.msgs},  {"rxbytes", c.bytes},
           {"lost", c.lost},            {"aborted", c.aborted}};
    std::int64_t position = kInvalidOffset, committed = kInvalidOffset, lo = kInvalidOffset, hi = kInvalidOffset;
    if (a) {
      position = static_cast<std::int64_t>(a->next_offset());
      const shm::Ring& ring = a->reader.ring();
      const auto& ss = ring.ctl()->stats;
      // A spilled topic's oldest offset is on disk.
      std::uint64_t low = ring.start_offset();
      if (a->topic->config().spill.enabled && ss.spill_end.load(std::memory_order_acquire) > ss.spill_start.load(std::memory_order_acquire))
        low = std::min(low, ss.spill_start.load(std::memory_order_acquire));
      lo = static_cast<std::int64_t>(low);
      hi = static_cast<std::int64_t>(ring.end_offset());
    }
    if (group)
      if (auto it = group->last_committed.find({tp.topic, tp.partition}); it != group->last_committed.end())
        committed = static_cast<std::int64_t>(it->second);
    p["next_offset"] = position;
    p["app_offset"] = position;
    p["stored_offset"] = position;
    p["committed_offset"] = committed;
    p["lo_offset"] = lo;
    p["hi_offset"] = hi;
    p["consumer_lag"] = hi >= 0 && committed >= 0 ? std::max<std::int64_t>(hi - committed, 0) : -1;
    p["consumer_lag_stored"] = hi >= 0 && position >= 0 ? std::max<std::int64_t>(hi - position, 0) : -1;
    json& t = topics[tp.topic];
    if (t.is_null()) t = json{{"topic", tp.topic}, {"partitions", json::object()}};
    t["partitions"][std::to_string(tp.partition)] = std::move(p);
  }
  json body{{"rxmsgs", st.rxmsgs}, {"rxmsg_bytes", st.rxbytes}, {"lost", st.lost},
            {"aborted", st.aborted}, {"waits", st.waits}, {"topics", std::move(topics)}};
  if (group)
    body["cgrp"] = json{{"group", group->name},          {"member_id", group->member_id},  {"state", "up"},
                        {"generation", group->generation}, {"rebalance_cnt", st.rebalances}, {"assignment_size", assigned.size()}};
  st.reporter.emit(std::move(body));
}

}  // namespace shmbus
