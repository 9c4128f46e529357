// busctl kafka start|stop: busd's Kafka protocol gateway (docs/kafka.md), switched on or off;
// busd keeps the choice in the bus's state dir and listens again after a restart.
#include "tools/busctl/command.h"

namespace shmbus::busctl {

std::unique_ptr<Command> kafka_commands(CLI::App& app) {
  return listener_commands(
      app, ListenerTexts{"kafka",
                         "busd speaks the Kafka protocol (kcat, librdkafka, kafka-python: bootstrap.servers=HOST:PORT; "
                         "busctl status shows where); starts busd if it is not running",
                         "listen for Kafka clients, now and after busd restarts",
                         "stop listening for Kafka clients, and after restarts too", "127.0.0.1:9092",
                         "allow an address other than loopback (there is no authentication: whoever reaches it reads "
                         "and writes every topic)",
                         "Example:\n  busctl kafka start --listen 127.0.0.1:9092\n  kcat -b 127.0.0.1:9092 -L",
                         "kafka: listening on {0} (bootstrap.servers={0})", "kafka: was not running"});
}

}  // namespace shmbus::busctl
