// busctl metrics start|stop: busd's Prometheus endpoint, switched on or off; busd keeps
// the choice in the bus's state dir (the listeners file) and listens again after a restart.
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

class MetricsCommands final : public Command {
 public:
  explicit MetricsCommands(CLI::App& app) {
    metrics = sub(&app, "metrics", "busd's Prometheus endpoint (GET /metrics; busctl status shows where); starts busd if it is not running");
    metrics->require_subcommand(1);
    start = sub(metrics, "start", "serve metrics, now and after busd restarts");
    start->add_option("--listen", listen,
                      "HOST:PORT (default 127.0.0.1:9464), loopback unless --allow-remote; port 0 picks a free one, "
                      "kept for restarts");
    start->add_flag("--allow-remote", allow_remote,
                    "allow an address other than loopback (whoever reaches it reads topic and group names)");
    start->footer("Example:\n  busctl metrics start --listen 127.0.0.1:9464\n  curl -s http://127.0.0.1:9464/metrics");
    stop = sub(metrics, "stop", "stop serving metrics, and after restarts too");
    stop->footer("Example:\n  busctl metrics stop");
  }

  bool parsed() const override { return metrics->parsed(); }

  int run(const Context& ctx) override {
    auto bus = attach(ctx.g, false);
    if (!bus) return fail(ctx.err, bus.error());
    auto conn = BusdConnection::connect((*bus)->name(), std::chrono::seconds(5));
    if (!conn) return fail(ctx.err, conn.error());
    json req = start->parsed() ? json{{"op", "listener_start"}, {"kind", "metrics"}, {"listen", listen}, {"allow_remote", allow_remote}}
                               : json{{"op", "listener_stop"}, {"kind", "metrics"}};
    auto r = (*conn)->request(req, std::chrono::seconds(5));
    if (!r) return fail(ctx.err, r.error());  // a bad address (invalid_argument): exit 2
    json j = *r;
    j.erase("re");
    if (ctx.g.json) {
      ctx.out << j.dump() << "\n";
    } else if (start->parsed()) {
      ctx.out << fmt::format("metrics: http://{}/metrics\n", j.value("address", "?"));
    } else {
      ctx.out << (j.value("was_running", false) ? "metrics: stopped\n" : "metrics: were not running\n");
    }
    return kOk;
  }

 private:
  CLI::App *metrics, *start, *stop;
  std::string listen = "127.0.0.1:9464";
  bool allow_remote = false;
};

}  // namespace

std::unique_ptr<Command> metrics_commands(CLI::App& app) { return std::make_unique<MetricsCommands>(app); }

}  // namespace shmbus::busctl
