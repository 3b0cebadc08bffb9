"""A Celery worker killed (kill -9) in the middle of aggregating a round: another worker takes the round over,
and it ends with exactly one model version, bit for bit the one an uninterrupted run produces. Runs
`bench/worker_recovery.py` (which also measures how long that takes) with the filesystem transport, and
with Redis (required in CI: REQUIRE_SERVICES=1). On PostgreSQL when the suite runs on it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail
from tests.integration.test_federation import REDIS_URL, _redis_ready

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


# The embedded default as `make run` starts it (one worker with its scheduler: a new worker is started),
# and a production-like deployment on Redis (the scheduler on its own, two workers: the other takes over).
@pytest.mark.parametrize(("broker", "scenario"), [("filesystem", "restart"), ("redis", "survivor")])
def test_a_round_whose_worker_was_killed_mid_aggregation_closes_with_the_same_model(broker, scenario):
    if broker == "redis" and not _redis_ready():
        skip_or_fail(f"Redis not reachable at {REDIS_URL}")
    # Generous: the round closes seconds after the kill. Before recovery existed it waited for a rescue
    # two minutes after the round had been sent, and that is what this timeout leaves out.
    command = [sys.executable, "bench/worker_recovery.py", "--broker", broker, "--redis", REDIS_URL, "--scenario",
               scenario, "--kill-at", "0.25", "--timeout", "75", "--json"]
    result = subprocess.run(command, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=900)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [row] = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["killed_mid_aggregation"], "the worker finished before it was killed: nothing was recovered"
    assert row["versions"] == 1
    assert row["sha256"] == row["reference_sha256"]
