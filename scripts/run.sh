#!/usr/bin/env bash
# `make run`: set up what is missing, start the embedded database when DATABASE_URL is unset, serve.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -f .env ]; then set -a; . ./.env; set +a; fi
if [ -z "${DATABASE_URL:-}" ]; then
  .venv/bin/python -m app db start
fi
exec .venv/bin/python -m app serve
