// Commits from consumers that are no group's members (assign()ed consumers with a group id:
// Kafka's "simple consumer group"). As Kafka takes a commit of generation -1 and no member
// id only while the group is empty, busd takes these only while the group has no live
// member: a live group's partitions are its members' to commit.
#include "bus/names.h"
#include "bus/topic.h"
#include "tools/busd/daemon.h"

namespace shmbus::daemon {

void Daemon::op_commit_unowned(Conn& c, const json& req) {
  const std::string group = req.value("group", "");
  if (auto ok = validate_name("group", group); !ok) return reply_error(c, req, ok.error().code, ok.error().message);
  const json& gen = req.contains("generation") ? req["generation"] : json();
  if (!gen.is_number_integer() || gen.get<std::int64_t>() != -1)
    return reply_error(c, req, Errc::kInvalidArgument,
                       fmt::format("commit refused: a commit with no member id has generation -1, not {}", gen.dump()));
  auto g = groups_.find(group);
  if (g != groups_.end() && !g->second.members.empty())
    return reply_error(c, req, Errc::kInvalidArgument,
                       fmt::format("commit refused: group '{}' has {} live members, and only they commit its offsets "
                                   "(a consumer of assign() commits into a group with no live member)",
                                   group, g->second.members.size()));
  auto todo = parse_offsets(req);
  if (!todo) return reply_error(c, req, todo.error().code, todo.error().message);
  for (const auto& e : *todo) {
    const TopicPartition& tp = e.tp;
    auto t = bus_->topic(tp.topic);
    if (!t) return reply_error(c, req, t.error().code, fmt::format("commit refused: {}", t.error().message));
    if (tp.partition >= (*t)->partitions())
      return reply_error(c, req, Errc::kInvalidArgument,
                         fmt::format("commit refused: topic '{}' has {} partitions, no partition {}", tp.topic,
                                     (*t)->partitions(), tp.partition));
  }
  store_offsets(c, req, group, *todo);
}

}  // namespace shmbus::daemon
