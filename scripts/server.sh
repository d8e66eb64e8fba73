#!/usr/bin/env bash
# A team tracking server: MLflow's `mlflow server` on a PostgreSQL database, both living in
# SERVER_DIR (default .server/). Clients upload artifacts through the server (proxied artifacts),
# so they never need its disk.
#   scripts/server.sh start    # also: make server [HOST=127.0.0.1] [PORT=5000] [AUTH=1]
#   scripts/server.sh stop     # also: make server-stop; every run stays for the next start
# AUTH=1 turns on MLflow's basic auth; the admin is MLFLOW_TRACKING_USERNAME with
# MLFLOW_TRACKING_PASSWORD, the same variables MLflow's clients read (taken at the first start
# with AUTH=1; later starts keep that admin). ALLOWED_HOSTS=mlflow.example.org,...: the names
# clients reach it by, besides localhost (without it: localhost and private addresses).
set -euo pipefail

SERVER_DIR=$(mkdir -p "${SERVER_DIR:-.server}" && cd "${SERVER_DIR:-.server}" && pwd)
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-5000}
MLFLOW=${MLFLOW:-mlflow}
DATA=$SERVER_DIR/postgres      # the database cluster; its Unix socket lives there too, no TCP
case "$DATA" in
  *[!A-Za-z0-9/._-]*) echo "error: SERVER_DIR=$SERVER_DIR: use letters, digits, / . _ - only" >&2; exit 2 ;;
esac
[ ${#SERVER_DIR} -le 80 ] || { echo "error: SERVER_DIR=$SERVER_DIR: at most 80 characters (PostgreSQL's socket lives there)" >&2; exit 2; }
PIDFILE=$SERVER_DIR/mlflow.pid
LOG=$SERVER_DIR/mlflow.log

fail() { echo "error: $*" >&2; exit 1; }

postgres_bin() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  if [ -z "$bin" ]; then
    [ "$(id -u)" = 0 ] || fail "PostgreSQL is not installed; run: sudo apt-get install postgresql"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
  fi
  echo "$bin"
}

# PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` user.
as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

answers() { curl -sf -o /dev/null "http://$HOST:$PORT/health"; }

start() {
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null &&
    fail "a server from $SERVER_DIR is already running (pid $(cat "$PIDFILE")); make server-stop first"
  answers && fail "$HOST:$PORT is taken by another program; pick another with PORT=..."
  if [ "${AUTH:-0}" = 1 ] && { [ -z "${MLFLOW_TRACKING_USERNAME:-}" ] || [ -z "${MLFLOW_TRACKING_PASSWORD:-}" ]; }; then
    fail "AUTH=1 needs MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (the admin's) set"
  fi
  local bin
  bin=$(postgres_bin)
  if [ ! -f "$DATA/PG_VERSION" ]; then
    mkdir -p "$DATA"
    [ "$(id -u)" = 0 ] && chown postgres: "$DATA"
    as_owner test -w "$DATA" ||
      fail "the postgres user cannot reach $SERVER_DIR; pick a SERVER_DIR every user can enter"
    as_owner "$bin/initdb" -D "$DATA" -U mlflow --auth=trust >"$SERVER_DIR/initdb.log"
  fi
  as_owner "$bin/pg_ctl" -D "$DATA" status >/dev/null ||
    as_owner "$bin/pg_ctl" -D "$DATA" -l "$DATA/postgres.log" -w \
      -o "-c listen_addresses='' -k $DATA" start >/dev/null
  for database in mlflow optuna; do   # optuna: for studies shared by sweeps on this machine
    as_owner "$bin/psql" -h "$DATA" -U mlflow -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = '$database'" | grep -q 1 ||
      as_owner "$bin/createdb" -h "$DATA" -U mlflow "$database"
  done

  local auth=()
  if [ "${AUTH:-0}" = 1 ]; then
    printf '[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///%s\n' \
      "$SERVER_DIR/basic_auth.db" >"$SERVER_DIR/basic_auth.ini"
    export MLFLOW_AUTH_CONFIG_PATH=$SERVER_DIR/basic_auth.ini
    export MLFLOW_AUTH_ADMIN_USERNAME=$MLFLOW_TRACKING_USERNAME
    export MLFLOW_AUTH_ADMIN_PASSWORD=$MLFLOW_TRACKING_PASSWORD
    # The key that signs the UI's forms; kept, so that a restart does not void open pages.
    [ -s "$SERVER_DIR/flask_secret" ] ||
      (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$SERVER_DIR/flask_secret")
    MLFLOW_FLASK_SERVER_SECRET_KEY=$(cat "$SERVER_DIR/flask_secret")
    export MLFLOW_FLASK_SERVER_SECRET_KEY
    auth=(--app-name basic-auth)
  fi
  local hosts=() list name   # MLflow answers only these Host headers (default: local, private)
  if [ -n "${ALLOWED_HOSTS:-}" ]; then
    list="localhost,localhost:*,127.0.0.1,127.0.0.1:*"
    for name in ${ALLOWED_HOSTS//,/ }; do list="$list,$name,$name:*"; done
    hosts=(--allowed-hosts "$list")
  fi
  setsid "$MLFLOW" server "${auth[@]}" "${hosts[@]}" \
    --backend-store-uri "postgresql+psycopg://mlflow@/mlflow?host=$DATA" \
    --artifacts-destination "$SERVER_DIR/artifacts" \
    --host "$HOST" --port "$PORT" >"$LOG" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  for _ in $(seq 240); do
    if answers; then
      local use="tracking=server"
      [ "$HOST:$PORT" = 127.0.0.1:5000 ] || use="tracking=server tracking.uri=http://$HOST:$PORT"
      echo "Tracking server: http://$HOST:$PORT  (runs: python -m src.train $use)"
      echo "Optuna studies on this machine: postgresql+psycopg://mlflow@/optuna?host=$DATA"
      return
    fi
    kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break
    sleep 0.5
  done
  stop >/dev/null 2>&1 || true
  fail "the tracking server did not start; its log: $LOG"
}

stop() {
  if [ -f "$PIDFILE" ]; then
    local pid
    pid=$(cat "$PIDFILE")
    kill -- "-$pid" 2>/dev/null || true   # setsid made it a process group: its workers go too
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 -- "-$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
  fi
  if [ -f "$DATA/postmaster.pid" ]; then
    as_owner "$(postgres_bin)/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null
  fi
  echo "Tracking server stopped; its runs stay in $SERVER_DIR"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) fail "usage: $0 start|stop" ;;
esac
