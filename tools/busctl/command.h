// What busctl's command groups share: global options, exit codes, attaching, and the
// interface through which cli.cpp dispatches to the group whose command was given.
#pragma once

#include <csignal>
#include <iosfwd>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <CLI/CLI.hpp>

#include "shmbus/bus.h"
#include "shmbus/error.h"

namespace shmbus::busctl {

inline constexpr int kOk = 0, kRuntime = 1, kUsage = 2;

struct Globals {
  std::string bus;
  bool json = false;
};

struct Context {
  const CLI::App& app;  // the whole tree: help-markdown and completion print it
  const Globals& g;
  std::istream& in;
  std::ostream& out;
  std::ostream& err;
  bool out_is_terminal = false;  // `out` is the process's stdout and a tty: top may redraw the screen
};

// Set by SIGINT/SIGTERM once catch_stop_signals() ran: consume and top end their loops.
extern volatile std::sig_atomic_t g_stop;
void catch_stop_signals();

int fail(std::ostream& err, const Error& e);
// A usage error (exit 2).
Error usage(std::string message);
// An option that takes a count, or nothing when it was not given (empty text).
Result<std::optional<std::uint64_t>> parse_optional_count(std::string_view what, std::string_view text);
// A partition of `topic`, which has `partitions`: past the last one is refused, naming both.
Result<std::uint32_t> parse_partition(std::string_view text, const std::string& topic, std::uint32_t partitions);
Result<std::shared_ptr<Bus>> attach(const Globals& g, bool create, const std::string& unix_group = "");
// A subcommand that accepts --bus / --json after it, like kubectl.
CLI::App* sub(CLI::App* parent, const char* name, const char* desc);

// One command group: registers its subcommands when constructed (CLI11 keeps pointers to
// the members, so it lives on the heap), runs the one that was parsed.
class Command {
 public:
  virtual ~Command() = default;
  virtual bool parsed() const = 0;
  virtual int run(const Context& ctx) = 0;
};

// In the order of `busctl --help` and docs/busctl.md.
std::unique_ptr<Command> topic_commands(CLI::App& app);       // topic.cpp
std::unique_ptr<Command> produce_command(CLI::App& app);      // produce.cpp
std::unique_ptr<Command> consume_command(CLI::App& app);      // consume.cpp
std::unique_ptr<Command> group_commands(CLI::App& app);       // group.cpp: status, group
std::unique_ptr<Command> bench_command(CLI::App& app);        // bench.cpp
std::unique_ptr<Command> doctor_command(CLI::App& app);       // doctor.cpp
std::unique_ptr<Command> bus_commands(CLI::App& app);         // topic.cpp: bus delete
std::unique_ptr<Command> top_command(CLI::App& app);          // top.cpp
std::unique_ptr<Command> completion_commands(CLI::App& app);  // completion.cpp: completion, help-markdown
std::unique_ptr<Command> log_commands(CLI::App& app);         // log.cpp
std::unique_ptr<Command> metrics_commands(CLI::App& app);     // metrics.cpp: metrics start|stop
std::unique_ptr<Command> kafka_commands(CLI::App& app);       // kafka.cpp: kafka start|stop

// `busctl KIND start|stop` for one of busd's TCP listeners (metrics.cpp).
struct ListenerTexts {
  std::string kind, help, start_help, stop_help, default_listen, remote_help, start_example;
  std::string started;      // printed after a start; {} is the address it got
  std::string not_running;  // printed by a stop that found none
};
std::unique_ptr<Command> listener_commands(CLI::App& app, ListenerTexts texts);
std::unique_ptr<Command> mirror_commands(CLI::App& app);      // mirror.cpp: mirror run|check|status

}  // namespace shmbus::busctl
