#!/usr/bin/env bash
# Installs the TimescaleDB extension (Apache-licensed edition) for the machine's PostgreSQL
# when it is missing. Idempotent: exits at once when the extension is already installed.
#
# Debian 13 (trixie) carries postgresql-17-timescaledb; Debian 12 (bookworm) does not, so there we
# build trixie's source package against the installed PostgreSQL. A private apt sources list
# (-o Dir::Etc::sourcelist=...) keeps the machine's own sources untouched.
set -euo pipefail

log() { printf '[timescaledb] %s\n' "$*" >&2; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

find_pg_config() {
  local c
  for c in ${PG_CONFIG:-} $(ls -d /usr/lib/postgresql/*/bin/pg_config 2>/dev/null | sort -V -r); do
    [ -x "$c" ] && { echo "$c"; return 0; }
  done
  command -v pg_config 2>/dev/null || return 1
}

PGC=$(find_pg_config || true)
if [ -z "$PGC" ]; then
  log "no PostgreSQL server found; installing postgresql from the distribution"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  PGC=$(find_pg_config)
fi
PGVER=$("$PGC" --version | sed -E 's/[^0-9]*([0-9]+).*/\1/')
SHAREDIR=$("$PGC" --sharedir)
if ls "$SHAREDIR"/extension/timescaledb.control >/dev/null 2>&1; then
  log "already installed for PostgreSQL $PGVER"
  exit 0
fi

. /etc/os-release
log "installing for PostgreSQL $PGVER on ${PRETTY_NAME:-unknown}"
# 1) a distribution package, where one exists for this PostgreSQL
$SUDO apt-get update -qq || true
if apt-cache show "postgresql-$PGVER-timescaledb" >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "postgresql-$PGVER-timescaledb" >/dev/null
  log "installed postgresql-$PGVER-timescaledb"
  exit 0
fi

# 2) build trixie's source package against this PostgreSQL
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "postgresql-server-dev-$PGVER" cmake libssl-dev \
  build-essential dpkg-dev >/dev/null
WORK=$(mktemp -d /tmp/tsdb-build.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/apt/lists/partial" "$WORK/apt/archives/partial"
cat > "$WORK/sources.list" <<SRC
deb-src http://deb.debian.org/debian trixie main
SRC
APT_OPTS=(-o "Dir::Etc::sourcelist=$WORK/sources.list" -o "Dir::Etc::sourceparts=-"
          -o "Dir::State::Lists=$WORK/apt/lists" -o "Dir::Cache::Archives=$WORK/apt/archives"
          -o "APT::Get::List-Cleanup=0")
apt-get "${APT_OPTS[@]}" update -qq
( cd "$WORK" && apt-get "${APT_OPTS[@]}" source --download-only -qq timescaledb >/dev/null \
  && dpkg-source -x --no-check timescaledb_*.dsc src >/dev/null )
cd "$WORK/src"
log "building $(basename "$(ls -d "$WORK"/timescaledb_*.dsc)" .dsc)"
./bootstrap -DAPACHE_ONLY=ON -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF -DPG_CONFIG="$PGC" >"$WORK/bootstrap.log" 2>&1 \
  || { tail -30 "$WORK/bootstrap.log" >&2; exit 1; }
make -C build -j"$(nproc)" >"$WORK/make.log" 2>&1 || { tail -30 "$WORK/make.log" >&2; exit 1; }
$SUDO make -C build install >"$WORK/install.log" 2>&1 || { tail -30 "$WORK/install.log" >&2; exit 1; }
log "installed from source for PostgreSQL $PGVER"
