// What busctl's command groups share (tools/busctl/command.h).
#include "tools/busctl/command.h"

#include <ostream>

namespace shmbus::busctl {

volatile std::sig_atomic_t g_stop = 0;

namespace {
extern "C" void on_signal(int) { g_stop = 1; }
}  // namespace

void catch_stop_signals() {
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
}

int fail(std::ostream& err, const Error& e) {
  err << "busctl: " << e.message << "\n";
  return e.code == Errc::kInvalidArgument ? kUsage : kRuntime;
}

Result<std::shared_ptr<Bus>> attach(const Globals& g, bool create, const std::string& unix_group) {
  BusOptions o;
  o.name = g.bus;
  o.create = create;
  if (!unix_group.empty()) o.group = unix_group;
  return Bus::attach(o);
}

CLI::App* sub(CLI::App* parent, const char* name, const char* desc) {
  CLI::App* s = parent->add_subcommand(name, desc);
  s->fallthrough();  // --bus / --json after the command, like kubectl
  return s;
}

}  // namespace shmbus::busctl
