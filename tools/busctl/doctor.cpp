// busctl doctor: the command; what it checks and mends is in doctor_checks.cpp.
#include "tools/busctl/doctor.h"

#include <optional>
#include <ostream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bus/names.h"
#include "tools/busctl/command.h"

namespace shmbus {

namespace busctl {
namespace {

using json = nlohmann::json;

class DoctorCommand final : public Command {
 public:
  explicit DoctorCommand(CLI::App& app) {
    doctor = sub(&app, "doctor", "find stale or broken segments, dead consumers holding producers, a full /dev/shm");
    doctor->add_flag("--fix", d_fix, "repair or remove what can be, saying what it did");
    doctor->add_flag("--all", d_all, "every bus on the machine, not only --bus");
    doctor->footer("Examples:\n  busctl doctor --all\n  busctl doctor --fix");
  }

  bool parsed() const override { return doctor->parsed(); }

  int run(const Context& ctx) override {
    const Globals& g = ctx.g;
    std::ostream& out = ctx.out;
    std::ostream& err = ctx.err;
    std::optional<std::string> only;
    if (!d_all) {
      only = g.bus.empty() ? default_bus_name() : g.bus;
      if (auto ok = validate_name("bus", *only); !ok) return fail(err, ok.error());
    }
    const auto findings = run_doctor(only, d_fix);
    bool unfixed = false;
    json arr = json::array();
    for (const auto& f : findings) {
      unfixed |= f.severity == "problem" && !f.fixed;
      arr.push_back({{"severity", f.severity}, {"bus", f.bus}, {"file", f.file}, {"problem", f.problem}, {"fix", f.fix}, {"fixed", f.fixed}});
      if (g.json) continue;
      if (f.severity == "ok") out << fmt::format("ok       {}\n", f.problem);
      else
        out << fmt::format("{:<8} {}{}\n         {}: {}\n", f.severity, f.problem, f.file.empty() ? "" : fmt::format(" ({})", f.file),
                           f.fixed ? "fixed" : (d_fix ? "not fixed" : "fix"), f.fix);
    }
    if (g.json) out << arr.dump() << "\n";
    return unfixed ? kRuntime : kOk;
  }

 private:
  CLI::App* doctor;
  bool d_fix = false, d_all = false;
};

}  // namespace

std::unique_ptr<Command> doctor_command(CLI::App& app) { return std::make_unique<DoctorCommand>(app); }

}  // namespace busctl

}  // namespace shmbus
