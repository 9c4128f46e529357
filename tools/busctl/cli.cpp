// busctl's dispatcher: builds the command tree from the command groups (one file each),
// parses, and runs the group whose command was given. tools/busctl/main.cpp calls this.
#include "tools/busctl/cli.h"

#include <unistd.h>

#include <algorithm>
#include <exception>
#include <iostream>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>

#include "tools/busctl/command.h"

namespace shmbus {
namespace {

using namespace busctl;

// The command words of argv checked against the tree before CLI11 parses them, so that an
// unknown one is named as such ("topic frob", not "a subcommand is required").
std::optional<std::string> unknown_command(CLI::App& app, int argc, const char* const* argv) {
  CLI::App* cur = &app;
  std::string path;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a == "--bus") ++i;
    if (a.starts_with("-")) continue;
    const auto subs = cur->get_subcommands([](CLI::App*) { return true; });
    if (subs.empty()) return std::nullopt;  // a leaf command: the rest are its arguments
    path += (path.empty() ? "" : " ") + std::string(a);
    auto next = std::find_if(subs.begin(), subs.end(), [&](CLI::App* s) { return s->get_name() == a; });
    if (next == subs.end()) return path;
    cur = *next;
  }
  return std::nullopt;
}

int busctl_run(int argc, const char* const* argv, std::istream& in, std::ostream& out, std::ostream& err) {
  CLI::App app{"busctl: inspect and operate a shmbus bus"};
  app.require_subcommand(1);
  Globals g;
  app.add_option("--bus", g.bus, "bus name (default: $SHMBUS_BUS or 'default')");
  app.add_flag("--json", g.json, "machine-readable output");
  std::vector<std::unique_ptr<Command>> commands;
  app.set_version_flag("--version", SHMBUS_VERSION, "print busctl's version and exit");
  for (auto add : {topic_commands, produce_command, consume_command, group_commands, bench_command, doctor_command,
                   bus_commands, top_command, completion_commands, log_commands, metrics_commands, kafka_commands,
                   mirror_commands})
    commands.push_back(add(app));

  if (auto bad = unknown_command(app, argc, argv)) {
    const std::string parent = bad->find(' ') == std::string::npos ? "" : " " + bad->substr(0, bad->rfind(' '));
    err << "busctl: unknown command '" << *bad << "' (see busctl" << parent << " --help)\n";
    return kUsage;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForVersion&) {
    out << "busctl " << SHMBUS_VERSION << "\n";
    return kOk;
  } catch (const CLI::CallForHelp& e) {
    out << app.help();
    return kOk;
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) {
      out << app.help();
      return kOk;
    }
    err << "busctl: " << e.what() << "\n";
    return kUsage;
  }

  // Only our own stdout can be a terminal (tests and the fuzzer pass string streams).
  const Context ctx{app, g, in, out, err, &out == &std::cout && ::isatty(STDOUT_FILENO) == 1};
  for (const auto& c : commands)
    if (c->parsed()) return c->run(ctx);
  return kUsage;
}

}  // namespace

int busctl_main(int argc, const char* const* argv, std::istream& in, std::ostream& out, std::ostream& err) {
  try {
    return busctl_run(argc, argv, in, out, err);
  } catch (const std::exception& e) {
    // A reply of an unexpected shape (another busd version?) is an error, not an abort.
    err << "busctl: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace shmbus
