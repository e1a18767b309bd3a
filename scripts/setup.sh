#!/usr/bin/env bash
# Installs whatever is missing, idempotently: system packages (PostgreSQL, TimescaleDB, Redis, Python
# venv support), then the project's virtualenv. A second run takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[setup] %s\n' "$*" >&2; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
APT_UPDATED=0
apt_install() {
  if [ "$APT_UPDATED" -eq 0 ]; then $SUDO apt-get update -qq; APT_UPDATED=1; fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

PYTHON=${PYTHON:-python3}
if ! command -v "$PYTHON" >/dev/null || ! "$PYTHON" -c 'import sys, venv, ensurepip; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  apt_install python3 python3-venv python3-dev
  PYTHON=python3
fi
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'

ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql postgresql-contrib
command -v redis-server >/dev/null || apt_install redis-server
command -v runuser >/dev/null || apt_install util-linux
# nginx: only its binary, for the gateway config test (`nginx -t`, deploy/nginx.conf); Debian's
# policy-rc.d keeps the package from starting a server on port 80.
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  POLICY=/usr/sbin/policy-rc.d; ADDED=0
  if [ ! -e "$POLICY" ]; then printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null; $SUDO chmod +x "$POLICY"; ADDED=1; fi
  apt_install nginx-light || apt_install nginx
  [ "$ADDED" -eq 0 ] || $SUDO rm -f "$POLICY"
fi
bash scripts/install-timescaledb.sh

STAMP=.venv/.installed
WANT=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PYTHON" -m venv .venv
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  log "installing the project into .venv (first time: a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  echo "$WANT" > "$STAMP"
fi
