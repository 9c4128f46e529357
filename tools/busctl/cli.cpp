// busctl's dispatcher: builds the command tree from the command groups (one file each),
// parses, and runs the group whose command was given. tools/busctl/main.cpp calls this.
#include "tools/busctl/cli.h"

#include <exception>
#include <memory>
#include <ostream>
#include <vector>

#include <CLI/CLI.hpp>

#include "tools/busctl/command.h"

namespace shmbus {
namespace {

using namespace busctl;

int busctl_run(int argc, const char* const* argv, std::istream& in, std::ostream& out, std::ostream& err) {
  CLI::App app{"busctl: inspect and operate a shmbus bus"};
  app.require_subcommand(1);
  Globals g;
  app.add_option("--bus", g.bus, "bus name (default: $SHMBUS_BUS or 'default')");
  app.add_flag("--json", g.json, "machine-readable output");
  std::vector<std::unique_ptr<Command>> commands;
  for (auto add : {topic_commands, produce_command, consume_command, group_commands, bench_command, doctor_command,
                   bus_commands, top_command, completion_commands, log_commands})
    commands.push_back(add(app));

  try {
    app.parse(argc, argv);
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

  const Context ctx{app, g, in, out, err};
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
