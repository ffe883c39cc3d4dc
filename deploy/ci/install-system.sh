#!/usr/bin/env bash
# Debian packages onecard's tests and demo use. Idempotent; needs root (or sudo) to install.
set -euo pipefail
need=()
# nftables: the chaos suite's partitions (network namespaces + nft drop rules; tests/chaos)
# chromium, chromium-driver, fonts-noto-cjk: the portal's browser tests (tests/web; Playwright
# drives /usr/bin/chromium — its own browser downloads fail here; without CJK fonts Chinese is boxes)
for pkg in mosquitto mosquitto-clients postgresql nftables chromium chromium-driver fonts-noto-cjk; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
