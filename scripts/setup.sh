#!/usr/bin/env bash
# Install what is missing on a Debian/Ubuntu machine: system packages, the venv with the
# project, and the project-local SoftHSM2 token. Safe to run again: it only adds what is absent.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  pcscd libpcsclite-dev swig vsmartcard-vpcd pcsc-tools opensc   # PC/SC + virtual reader
  softhsm2                                                       # default HSM
  libssl-dev libp11-kit-dev                                      # SM test PKCS#11 module (hsm/smtoken)
  cups-daemon cups-client cups-filters libcups2-dev              # printing
  postgresql                                                     # production database (tests)
  patroni etcd-server haproxy keepalived                         # multi-host tests (devstack/hosts.py)
  fonts-noto-cjk                                                 # CJK card faces
  fonts-hanazono                                                 # names in CJK Ext. A/B (生僻字) Noto lacks
  iproute2 util-linux procps                                     # namespaces for isolated pcscd
  gcc make python3 python3-dev python3-venv                      # building pyscard / pycups
  wrk                                                            # HTTP load benchmark
  chromium                                                       # the console tests' browser
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: Python 3.11 or newer is needed ($PY is $("$PY" -V 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[dev]'
  rm -f .venv/.installed-*; touch "$stamp"
fi

# The SM test PKCS#11 module (SM2/SM3/SM4 over OpenSSL 3, tests and demo only: hsm/smtoken).
.venv/bin/python -c 'from pathlib import Path; from hsm import smtoken; smtoken.build(Path("var/lib"))'

# The default HSM token (SoftHSM2 under var/hsm) and the database schema.
.venv/bin/ykt hsm init --if-missing
.venv/bin/ykt db upgrade
echo "setup: ready"
