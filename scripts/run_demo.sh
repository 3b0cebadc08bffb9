#!/usr/bin/env bash
# Starts the demo's processes: a real Celery worker and the ASGI server on 127.0.0.1:8000.
# Ctrl-C stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
export DEBUG=${DEBUG:-1}
mkdir -p data/logs

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$BIN/celery" -A consortium worker --loglevel=INFO --concurrency=2 >data/logs/worker.log 2>&1 &
pids+=($!)
echo "Celery worker started (log: data/logs/worker.log)"

echo "Consortium is at http://$HOST:$PORT/ (Ctrl-C to stop)"
"$BIN/daphne" -b "$HOST" -p "$PORT" consortium.asgi:application &
pids+=($!)
wait -n "${pids[@]}"
