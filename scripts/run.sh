#!/usr/bin/env bash
# `make run`: set up what is missing, start the embedded database when DATABASE_URL is unset, seed
# the demo portfolio the first time (embedded database only), serve in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -f .env ]; then set -a; . ./.env; set +a; fi
if [ -z "${DATABASE_URL:-}" ]; then
  .venv/bin/python -m app db start
  marker="${DATA_DIR:-.data}/demo-seeded"
  if [ ! -f "$marker" ] && [ "${SEED_DEMO:-true}" = "true" ]; then
    .venv/bin/python -m app seed-demo && touch "$marker"
  fi
fi
exec .venv/bin/python -m app serve
