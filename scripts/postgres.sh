#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server for the tests (several `archc search`
# workers sharing one study) and prints its URL on stdout:
#
#   export ARCHC_TEST_PG_URL="$(bash scripts/postgres.sh)"     # start (or reuse) it
#   bash scripts/postgres.sh stop                              # stop it and delete its files
#
# PostgreSQL comes from Debian's packages (installed here when missing, as
# root). The cluster lives under /tmp (ARCHC_PG_DIR), listens on 127.0.0.1 only
# (port ARCHC_PG_PORT, default 55432), trusts local connections, and runs as a
# non-root user (`postgres` when started by root), as PostgreSQL requires.
# Idempotent: a server already running there is reused.
set -euo pipefail

PORT="${ARCHC_PG_PORT:-55432}"
DIR="${ARCHC_PG_DIR:-/tmp/archc-pg-$PORT}"
DB="${ARCHC_PG_DB:-archc_test}"
URL="postgresql://postgres@127.0.0.1:$PORT/$DB"

say() { echo "postgres.sh: $*" >&2; }

find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }

BIN="$(find_bin)"
if [ -z "$BIN" ] || [ ! -x "$BIN/initdb" ]; then
  if [ "$(id -u)" != 0 ]; then
    say "PostgreSQL is not installed and this is not root: sudo apt-get install -y postgresql"
    exit 1
  fi
  say "installing PostgreSQL from Debian's packages"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null
  BIN="$(find_bin)"
  [ -n "$BIN" ] || { say "installing PostgreSQL failed"; exit 1; }
fi

# Run PostgreSQL's tools as a non-root user.
if [ "$(id -u)" = 0 ]; then
  RUN_USER=postgres
  id -u "$RUN_USER" >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/sh "$RUN_USER"
  as_user() { su "$RUN_USER" -s /bin/sh -c "$*"; }
else
  RUN_USER="$(id -un)"
  as_user() { sh -c "$*"; }
fi

if [ "${1:-}" = "stop" ]; then
  if [ -f "$DIR/PG_VERSION" ]; then
    as_user "'$BIN/pg_ctl' -D '$DIR' -m fast -w stop" >/dev/null 2>&1 || true
    rm -rf "$DIR"
  fi
  exit 0
fi

if ! as_user "'$BIN/pg_ctl' -D '$DIR' status" >/dev/null 2>&1; then
  if [ ! -f "$DIR/PG_VERSION" ]; then
    rm -rf "$DIR"
    mkdir -p "$DIR"
    [ "$(id -u)" = 0 ] && chown "$RUN_USER" "$DIR"
    chmod 700 "$DIR"
    as_user "'$BIN/initdb' -D '$DIR' -U postgres --auth=trust -E UTF8 --no-instructions" >"/tmp/archc-pg-$PORT.initdb.log" 2>&1 \
      || { say "initdb failed:"; cat "/tmp/archc-pg-$PORT.initdb.log" >&2; exit 1; }
  fi
  # Throwaway: no fsync; sockets in the cluster's own folder; TCP on localhost only.
  as_user "'$BIN/pg_ctl' -D '$DIR' -l '$DIR/server.log' -w -t 60 \
    -o \"-p $PORT -k '$DIR' -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200\" start" >/dev/null \
    || { say "the server did not start:"; tail -n 20 "$DIR/server.log" >&2 || true; exit 1; }
fi

if ! as_user "'$BIN/psql' -h 127.0.0.1 -p $PORT -U postgres -d postgres -tAc \"SELECT 1 FROM pg_database WHERE datname='$DB'\"" | grep -q 1; then
  as_user "'$BIN/createdb' -h 127.0.0.1 -p $PORT -U postgres '$DB'" \
    || { say "could not create database $DB"; exit 1; }
fi
echo "$URL"
