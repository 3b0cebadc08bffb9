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

echo "== suite on SQLite"
env -u DATABASE_URL "$BIN/pytest" "${marker[@]}" "$@"

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
  echo "== suite on PostgreSQL ($PG_URL)"
  # Browser tests drive the same pages, and the Flower federation runs on its own SQLite file: once is enough.
  DATABASE_URL="$PG_URL" "$BIN/pytest" -m "not browser and not flower" "$@"
elif [ "$REQUIRED" = "1" ]; then
  echo "!! PostgreSQL not reachable and REQUIRE_SERVICES=1" >&2
  exit 1
else
  echo "!! NOTICE: PostgreSQL not reachable: the PostgreSQL run is SKIPPED"
fi
