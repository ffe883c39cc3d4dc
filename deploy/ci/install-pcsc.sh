#!/usr/bin/env bash
# Install the real PC/SC stack used by the `pcsc` tests (issue "The card reader, for real").
#
#   bash deploy/ci/install-pcsc.sh /path/to/venv
#
# Idempotent: apt packages already present are not reinstalled and pyscard is only built when the
# venv cannot import it. pyscard ships no Linux wheel for this platform and builds from source
# (~6 s) with swig + gcc + the pcsclite headers. Needs root (or sudo) for apt.
# FIELD-NOTES.md "PC/SC with a virtual card": pcscd 1.9.9, vsmartcard-vpcd 3.3, pyscard 2.3.x.
set -euo pipefail

venv="${1:?usage: install-pcsc.sh VENV_DIR}"
packages=(pcscd libpcsclite-dev swig vsmartcard-vpcd pcsc-tools gcc python3-dev)

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  sudo_cmd=(sudo)
fi

missing=()
for pkg in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-pcsc: installing ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends \
    "${missing[@]}"
else
  echo "install-pcsc: apt packages already installed"
fi

if [ ! -f /etc/reader.conf.d/vpcd ]; then
  echo "install-pcsc: /etc/reader.conf.d/vpcd is missing (vsmartcard-vpcd not installed?)" >&2
  exit 1
fi

if "$venv/bin/python" -c "import smartcard.scard" 2>/dev/null; then
  echo "install-pcsc: pyscard already importable in $venv"
else
  echo "install-pcsc: building pyscard into $venv"
  "$venv/bin/python" -m pip install --quiet "pyscard>=2.2,<3"
fi

"$venv/bin/python" -c "import importlib.metadata as m; print('install-pcsc: pyscard', m.version('pyscard'))"
