#!/usr/bin/env bash
# Runs the suite on SQLite, then again on PostgreSQL when it is reachable.
# REQUIRE_SERVICES=1 (CI) turns a missing PostgreSQL or chromium into a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
PG_URL=${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/consortium}
REQUIRED=${REQUIRE_SERVICES:-0}

chromium_path() {
  for candidate in "${CHROMIUM_PATH:-}" /usr/bin/chromium "$(command -v chromium || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then echo "$candidate"; return 0; fi
  done
  return 1
}

marker=()
if CHROMIUM_PATH=$(chromium_path); then
  export CHROMIUM_PATH
  echo "== browser tests: using $CHROMIUM_PATH"
elif [ "$REQUIRED" = "1" ]; then
  echo "!! chromium not found and REQUIRE_SERVICES=1: browser tests cannot run" >&2
  exit 1
else
  echo "!! NOTICE: chromium not found: browser tests are SKIPPED (apt-get install chromium to run them)"
  marker=(-m "not browser")
fi

# Unit tests on both cores (pytest-xdist, a test database per worker); the integration and browser tests start
# servers, workers and browsers of their own and share Redis databases, so they run one at a time.
UNIT=(-n "${TEST_WORKERS:-2}" -m "not integration and not browser")
# A step that selects no test (arguments naming only unit tests, say) is no failure; a run where none ran is.
ran=0
run() {
  local rc=0
  "$@" || rc=$?
  if [ "$rc" -eq 5 ]; then return 0; fi
  if [ "$rc" -eq 0 ]; then ran=1; fi
  return "$rc"
}

echo "== suite on SQLite: unit tests"
run env -u DATABASE_URL "$BIN/pytest" "${UNIT[@]}" "$@"
echo "== suite on SQLite: integration and browser tests"
if [ ${#marker[@]} -eq 0 ]; then
  run env -u DATABASE_URL "$BIN/pytest" -m "integration or browser" "$@"
else
  run env -u DATABASE_URL "$BIN/pytest" -m "integration and not browser" "$@"
fi

if "$BIN/python" - "$PG_URL" <<'PY'
import sys

import psycopg

try:
    psycopg.connect(sys.argv[1].rsplit("/", 1)[0] + "/postgres", connect_timeout=3).close()
except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
    print(f"PostgreSQL not reachable: {exc}", file=sys.stderr)
    sys.exit(1)
PY
then
  echo "== suite on PostgreSQL ($PG_URL): unit tests"
  run env DATABASE_URL="$PG_URL" "$BIN/pytest" "${UNIT[@]}" "$@"
  echo "== suite on PostgreSQL ($PG_URL): integration tests"
  # Browser tests drive the same pages, the Flower federation runs on its own SQLite file, and the filesystem
  # broker variants test the broker, not the database (the SQLite pass ran them): once is enough.
  run env DATABASE_URL="$PG_URL" "$BIN/pytest" -m "integration and not flower" -k "not filesystem" "$@"
elif [ "$REQUIRED" = "1" ]; then
  echo "!! PostgreSQL not reachable and REQUIRE_SERVICES=1" >&2
  exit 1
else
  echo "!! NOTICE: PostgreSQL not reachable: the PostgreSQL run is SKIPPED"
fi

if [ "$ran" -ne 1 ]; then
  echo "!! no test ran" >&2
  exit 5
fi
