// busd: the bus daemon (groups, committed offsets). Logic in tools/busd/busd.cpp.
#include <charconv>
#include <iostream>

#include <CLI/CLI.hpp>

#include "tools/busd/busd.h"
#include "tools/manpage.h"
#include "tools/time_text.h"

namespace {

// busd.8, which the build generates with `busd --help-man` and installs.
std::string manual(const CLI::App& app) {
  shmbus::man::Page p;
  p.name = "busd";
  p.section = 8;
  p.summary = "the shmbus bus daemon: consumer groups and committed offsets";
  p.synopsis = ".B busd\n.RB [ \\-\\-bus\n.IR NAME ]\n.RI [ OPTIONS ]";
  p.description =
      "One busd runs per bus, off the data path: producers and manually assigned consumers never talk to it. It runs "
      "consumer groups (membership, assignment, rebalancing), keeps committed offsets and spills topics to disk.\n\n"
      "Nobody has to start it by hand: the first group consumer that finds none starts one (installed as "
      "libexec/shmbus/busd). For systemd, the unit template busd@.service runs one per bus as root: "
      "systemctl enable --now busd@NAME.\n\n"
      "A second busd for the same bus exits at once with status 1.";
  p.tail =
      ".SH FILES\n"
      ".TP\n.I /run/shmbus/BUS, /var/lib/shmbus/BUS\nroot's socket, lock and log; committed offsets, spilled logs and the listeners file\n"
      ".TP\n.I $XDG_RUNTIME_DIR/shmbus/BUS or /tmp/shmbus\\-UID/BUS\nanother user's socket, lock and log\n"
      ".TP\n.I /tmp/shmbus\\-gGID/BUS, /var/tmp/shmbus\\-gGID/BUS\nfor a bus shared with a Unix group, everyone's (root's "
      "too): socket, lock and log; committed offsets and spilled logs\n"
      ".TP\n.I $XDG_STATE_HOME/shmbus/BUS, ~/.local/state/shmbus/BUS or /var/tmp/shmbus\\-UID/BUS\n"
      "another user's committed offsets, spilled logs and the listeners file\n"
      ".SH ENVIRONMENT\n"
      ".TP\n.B SHMBUS_DIR\nboth directories are SHMBUS_DIR/BUS (for buses shared with a Unix group)\n"
      ".TP\n.B SHMBUS_BUS\nthe bus when --bus is not given\n"
      ".SH EXIT STATUS\n0: stopped on request. 1: it could not start (another busd runs for the bus, a directory "
      "was refused). 2: a usage error.\n"
      ".SH SEE ALSO\nshmbus\\-busctl(1)\n";
  return shmbus::man::page(app, p);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"busd: consumer groups and committed offsets for a shmbus bus"};
  shmbus::BusdOptions o;
  std::string group;
  bool foreground = false;
  app.add_option("--bus", o.bus, "bus name (default: $SHMBUS_BUS or 'default')");
  app.add_option("--group", group, "share a bus busd creates with this Unix group (mode 0660); an existing bus must be that group's");
  app.add_option("--rebalance-timeout-ms", o.rebalance_timeout_ms, "evict a member that keeps revoked partitions longer (members that send their max poll interval get that instead, as Kafka's rebalance timeout)");
  std::string retention;
  app.add_option("--offsets-retention", retention,
                 "committed offsets of a group with no live member expire this long after it became empty "
                 "(default 7d; e.g. 12h, 30m, P7D)");
  app.add_flag("--foreground", foreground, "accepted for systemd units; busd never daemonizes itself");
  app.add_flag("--quiet", o.quiet, "log nothing");
  app.add_flag("--existing", o.existing_only, "exit (status 1) if the bus does not exist instead of making it; "
                                              "group consumers start busd so");
  std::string metrics_listen;
  app.add_option("--metrics-listen", metrics_listen,
                 "serve Prometheus metrics (GET /metrics) on HOST:PORT, loopback unless --allow-remote; port 0 picks one "
                 "(busctl status shows it)");
  std::string kafka_listen;
  app.add_option("--kafka-listen", kafka_listen,
                 "speak the Kafka protocol on HOST:PORT (kcat, librdkafka, kafka-python clients), loopback unless "
                 "--allow-remote; port 0 picks one (busctl status shows it)");
  std::string kafka_partitions;
  app.add_option("--kafka-partitions", kafka_partitions,
                 "partitions of a topic the Kafka gateway creates without a count (auto-created by Metadata, "
                 "CreateTopics with -1), as Kafka's num.partitions; 1 to 4096 (default 1)");
  app.add_flag("--allow-remote", o.allow_remote, "let listeners bind addresses other than loopback");
  bool help_man = false;
  app.add_flag("--help-man", help_man, "print this manual page (busd.8) in roff and exit")->group("");
  CLI11_PARSE(app, argc, argv);
  if (help_man) {
    std::cout << manual(app);
    return 0;
  }
  if (!group.empty()) o.group = group;
  if (!metrics_listen.empty()) o.metrics_listen = metrics_listen;
  if (!kafka_listen.empty()) o.kafka_listen = kafka_listen;
  if (!kafka_partitions.empty()) {
    unsigned n = 0;
    const char* end = kafka_partitions.data() + kafka_partitions.size();
    auto [ptr, ec] = std::from_chars(kafka_partitions.data(), end, n);
    if (ec != std::errc{} || ptr != end || n < 1 || n > 4096) {
      std::cerr << "busd: --kafka-partitions: '" << kafka_partitions << "' is not a number from 1 to 4096\n";
      return 2;
    }
    o.kafka_partitions = n;
  }
  if (!retention.empty()) {
    auto ns = shmbus::timetext::parse_duration_ns(retention);
    if (!ns || *ns < 1'000'000) {
      std::cerr << "busd: --offsets-retention: " << (ns ? "at least 1ms" : ns.error().message) << "\n";
      return 2;
    }
    o.offsets_retention_ms = *ns / 1'000'000;
  }
  if (auto ok = shmbus::run_busd(o); !ok) {
    std::cerr << "busd: " << ok.error().message << "\n";
    return ok.error().code == shmbus::Errc::kInvalidArgument ? 2 : 1;
  }
  return 0;
}
