#!/usr/bin/env bash
# Installs what shmbus needs from Debian 12's archive, only what is missing. Run as root.
set -euo pipefail
packages=(
  build-essential cmake g++ clang libclang-rt-14-dev ccache pkg-config
  libboost-dev libconcurrentqueue-dev libexpected-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libcli11-dev libfmt-dev nlohmann-json3-dev libxxhash-dev
  gnuplot-nox libzmq3-dev iceoryx libiceoryx-posh-dev
  zlib1g-dev libsnappy-dev liblz4-dev libzstd-dev
  kcat python3-kafka python3-confluent-kafka librdkafka-dev
  libsasl2-dev rapidjson-dev  # tests/kafka_compat: librdkafka.a needs SASL; its stats tests, RapidJSON
  pybind11-dev python3-dev python3-pytest
  curl
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then echo "setup: run as root to install packages" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
