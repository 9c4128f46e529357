// busctl metrics start|stop (busd's Prometheus endpoint), and the listener commands of any
// kind (busctl kafka start|stop, kafka.cpp): switched on or off; busd keeps the choice in the
// bus's state dir (the listeners file) and listens again after a restart.
#include <chrono>
#include <ostream>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bus/group_client.h"
#include "tools/busctl/command.h"

namespace shmbus::busctl {
namespace {

using json = nlohmann::json;

class ListenerCommands final : public Command {
 public:
  ListenerCommands(CLI::App& app, ListenerTexts t) : t_(std::move(t)) {
    group = sub(&app, t_.kind.c_str(), t_.help.c_str());
    group->require_subcommand(1);
    start = sub(group, "start", t_.start_help.c_str());
    start->add_option("--listen", listen,
                      fmt::format("HOST:PORT (default {}), loopback unless --allow-remote; port 0 picks a free one, "
                                  "kept for restarts", t_.default_listen));
    start->add_flag("--allow-remote", allow_remote, t_.remote_help);
    start->footer(t_.start_example);
    stop = sub(group, "stop", t_.stop_help.c_str());
    stop->footer(fmt::format("Example:\n  busctl {} stop", t_.kind));
    listen = t_.default_listen;
  }

  bool parsed() const override { return group->parsed(); }

  int run(const Context& ctx) override {
    auto bus = attach(ctx.g, false);
    if (!bus) return fail(ctx.err, bus.error());
    auto conn = BusdConnection::connect((*bus)->name(), std::chrono::seconds(5));
    if (!conn) return fail(ctx.err, conn.error());
    json req = start->parsed() ? json{{"op", "listener_start"}, {"kind", t_.kind}, {"listen", listen}, {"allow_remote", allow_remote}}
                               : json{{"op", "listener_stop"}, {"kind", t_.kind}};
    auto r = (*conn)->request(req, std::chrono::seconds(5));
    if (!r) return fail(ctx.err, r.error());  // a bad address (invalid_argument): exit 2
    json j = *r;
    j.erase("re");
    if (ctx.g.json) {
      ctx.out << j.dump() << "\n";
    } else if (start->parsed()) {
      ctx.out << fmt::format(fmt::runtime(t_.started), j.value("address", "?")) << "\n";
    } else {
      ctx.out << (j.value("was_running", false) ? t_.kind + ": stopped" : t_.not_running) << "\n";
    }
    return kOk;
  }

 private:
  ListenerTexts t_;
  CLI::App *group, *start, *stop;
  std::string listen;
  bool allow_remote = false;
};

}  // namespace

std::unique_ptr<Command> listener_commands(CLI::App& app, ListenerTexts texts) {
  return std::make_unique<ListenerCommands>(app, std::move(texts));
}

std::unique_ptr<Command> metrics_commands(CLI::App& app) {
  return listener_commands(
      app, ListenerTexts{"metrics",
                         "busd's Prometheus endpoint (GET /metrics; busctl status shows where); starts busd if it is not running",
                         "serve metrics, now and after busd restarts", "stop serving metrics, and after restarts too",
                         "127.0.0.1:9464", "allow an address other than loopback (whoever reaches it reads topic and group names)",
                         "Example:\n  busctl metrics start --listen 127.0.0.1:9464\n  curl -s http://127.0.0.1:9464/metrics",
                         "metrics: http://{}/metrics", "metrics: were not running"});
}

}  // namespace shmbus::busctl
