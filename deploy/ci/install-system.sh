#!/usr/bin/env bash
# Debian packages onecard's tests and demo use. Idempotent; needs root (or sudo) to install.
set -euo pipefail
need=()
# nftables: the chaos suite's partitions (network namespaces + nft drop rules; tests/chaos)
for pkg in mosquitto mosquitto-clients postgresql nftables; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
