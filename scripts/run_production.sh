#!/usr/bin/env bash
# The production topology on one machine, configured from the environment only: PostgreSQL (DATABASE_URL),
# Redis as Celery broker and channel layer (REDIS_URL), two ASGI servers (daphne) on WEB_PORTS, two Celery
# workers and one celery beat (the round scheduler). Migrates first. Ctrl-C or SIGTERM stops them all.
#
#   DATABASE_URL=postgres://... REDIS_URL=redis://127.0.0.1:6379/0 SECRET_KEY=... make prod
#
# WEB_HOST (127.0.0.1), WEB_PORTS ("8001 8002"), WORKERS (2), WORKER_CONCURRENCY (1) and CONSORTIUM_DATA_DIR
# (where logs/production/ and each process's pid file go) tune it; every other setting is read by
# consortium/settings.py as usual. Put a TLS reverse proxy in front of the ports (README, "Running in production").
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin

: "${DATABASE_URL:?set DATABASE_URL to a postgres:// URL}"
: "${REDIS_URL:?set REDIS_URL, e.g. redis://127.0.0.1:6379/0}"
: "${SECRET_KEY:?set SECRET_KEY}"
case "$DATABASE_URL" in postgres://*|postgresql://*) ;; *) echo "DATABASE_URL must be PostgreSQL" >&2; exit 2;; esac
export DEBUG=${DEBUG:-0}
WEB_HOST=${WEB_HOST:-127.0.0.1}
WEB_PORTS=${WEB_PORTS:-"8001 8002"}
WORKERS=${WORKERS:-2}
WORKER_CONCURRENCY=${WORKER_CONCURRENCY:-1}
DATA=${CONSORTIUM_DATA_DIR:-$PWD/data}
RUN="$DATA/production"
mkdir -p "$RUN"

"$BIN/python" manage.py migrate --noinput

children=()
start() {  # start NAME COMMAND...: its own process group (so a drill can kill one whole), a log and a pid file
  local name=$1; shift
  setsid "$@" >>"$RUN/$name.log" 2>&1 &
  echo $! >"$RUN/$name.pid"
  children+=($!)
  echo "started $name (pid $!), log $RUN/$name.log"
}
stop() {
  trap - INT TERM EXIT
  for pid in "${children[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  wait || true
}
trap stop INT TERM EXIT

index=0
for port in $WEB_PORTS; do
  index=$((index + 1))
  start "web-$index" "$BIN/daphne" -b "$WEB_HOST" -p "$port" consortium.asgi:application
done
for index in $(seq 1 "$WORKERS"); do
  start "worker-$index" "$BIN/celery" -A consortium worker -n "worker-$index@%h" \
    --concurrency "$WORKER_CONCURRENCY" --loglevel INFO
done
start beat "$BIN/celery" -A consortium beat --schedule "$RUN/celerybeat-schedule" --loglevel INFO

echo "Consortium (production topology) at $(for p in $WEB_PORTS; do printf 'http://%s:%s/ ' "$WEB_HOST" "$p"; done)"
# Runs until stopped. A process that dies is not restarted here (a process supervisor's job in production);
# the other worker takes over its aggregation (aggregation.services.recovery).
while true; do sleep 1; done
