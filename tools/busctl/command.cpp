// What busctl's command groups share (tools/busctl/command.h).
#include "tools/busctl/command.h"

#include <ostream>

#include <fmt/format.h>

#include "tools/busctl/units.h"

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

Error usage(std::string message) { return Error{Errc::kInvalidArgument, std::move(message)}; }

Result<std::optional<std::uint64_t>> parse_optional_count(std::string_view what, std::string_view text) {
  if (text.empty()) return std::optional<std::uint64_t>();
  auto n = parse_count(what, text);
  if (!n) return tl::unexpected(n.error());
  return std::optional<std::uint64_t>(*n);
}

Result<std::uint32_t> parse_partition(std::string_view text, const std::string& topic, std::uint32_t partitions) {
  auto p = parse_count("--partition", text);
  if (!p) return tl::unexpected(p.error());
  if (*p >= partitions) return tl::unexpected(usage(fmt::format("topic '{}' has {} partitions, no partition {}", topic, partitions, *p)));
  return static_cast<std::uint32_t>(*p);
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
