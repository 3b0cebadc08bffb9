#!/usr/bin/env bash
# The demo's processes: ASGI server on 127.0.0.1:8000, a real Celery worker (with the round
# scheduler) and four simulated hospital agents. Ctrl-C stops them all.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBUG=${DEBUG:-1}
exec .venv/bin/python manage.py serve_demo --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}"
