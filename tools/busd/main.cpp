// busd: the bus daemon (groups, committed offsets). Logic in tools/busd/busd.cpp.
#include <iostream>

#include <CLI/CLI.hpp>

#include "tools/busd/busd.h"

int main(int argc, char** argv) {
  CLI::App app{"busd: consumer groups and committed offsets for a shmbus bus"};
  shmbus::BusdOptions o;
  std::string group;
  bool foreground = false;
  app.add_option("--bus", o.bus, "bus name (default: $SHMBUS_BUS or 'default')");
  app.add_option("--group", group, "share the bus with this Unix group (mode 0660)");
  app.add_option("--rebalance-timeout-ms", o.rebalance_timeout_ms, "evict a member that keeps revoked partitions longer");
  app.add_flag("--foreground", foreground, "accepted for systemd units; busd never daemonizes itself");
  app.add_flag("--quiet", o.quiet, "log nothing");
  CLI11_PARSE(app, argc, argv);
  if (!group.empty()) o.group = group;
  if (auto ok = shmbus::run_busd(o); !ok) {
    std::cerr << "busd: " << ok.error().message << "\n";
    return ok.error().code == shmbus::Errc::kInvalidArgument ? 2 : 1;
  }
  return 0;
}
