#!/bin/sh
# The part of the official postgres image's entrypoint that our Compose files rely on: on the first start
# (an empty data directory) initdb with POSTGRES_USER and POSTGRES_PASSWORD, create POSTGRES_DB, and
# accept password logins over TCP; then run the server as the postgres user.
set -eu
if [ "$(id -u)" = 0 ]; then
  # A fresh volume may be owned by root; the server refuses to run as root.
  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA"
  chmod 0700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "postgres stand-in: POSTGRES_PASSWORD must be set (as for the official image)" >&2
    exit 1
  fi
  user=${POSTGRES_USER:-postgres}
  db=${POSTGRES_DB:-$user}
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --pgdata="$PGDATA" --username="$user" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pwfile"
  # initdb allows TCP from localhost only; the official image accepts every address (with a password).
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  # The database is created on a server that listens on a socket only, so a TCP health check cannot pass
  # before it exists (the reason our Compose files probe 127.0.0.1).
  pg_ctl --pgdata="$PGDATA" --wait --silent \
    -o "-c listen_addresses='' -c unix_socket_directories=/tmp" start
  if [ "$db" != postgres ]; then
    createdb --host=/tmp --username="$user" "$db"
  fi
  pg_ctl --pgdata="$PGDATA" --wait --silent --mode=fast stop
  echo "postgres stand-in: initialised $PGDATA for user $user, database $db"
fi
exec "$@" -c unix_socket_directories=/tmp
