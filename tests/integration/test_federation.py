"""A real federation, end to end: an ASGI server, a real Celery worker (with its scheduler) and four
site agents in separate processes, talking HTTP, training with torch on scikit-learn's breast cancer
data. Runs `manage.py run_study_demo` in a fresh data folder with the filesystem transport, and again
with Redis as broker and channel layer (required in CI: REQUIRE_SERVICES=1)."""

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from tests.conftest import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
pytestmark = pytest.mark.integration


def _redis_ready() -> bool:
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.flushdb()  # no stale task from an earlier run may reach this run's rounds
        return True
    except redis.RedisError:
        return False


def _run(env: dict[str, str], *args: str, timeout: float = 420) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def database_url(tmp_path):
    """A SQLite file, or, when the suite runs on PostgreSQL, a fresh PostgreSQL database of its own."""
    configured = os.environ.get("DATABASE_URL", "")
    if not configured.startswith("postgres"):
        yield f"sqlite:///{tmp_path / 'federation.sqlite3'}"
        return
    name = f"consortium_fed_{uuid.uuid4().hex[:8]}"
    admin = configured.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield configured.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("broker", ["filesystem", "redis"])
def test_it_runs_real_rounds_over_http_with_a_worker_and_agents(broker, tmp_path, database_url):
    env = {key: value for key, value in os.environ.items() if key not in {"REDIS_URL", "CELERY_BROKER_URL"}}
    env.update(CONSORTIUM_DATA_DIR=str(tmp_path / "data"), DATABASE_URL=database_url)
    if broker == "redis":
        if not _redis_ready():
            skip_or_fail(f"Redis not reachable at {REDIS_URL}")
        env["REDIS_URL"] = REDIS_URL

    result = _run(env, "run_study_demo", "--rounds", "2", "--json", "--timeout", "300")

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["rounds"] == 2 and set(figures["site_aucs"]) == {"amc", "charite", "clinic", "hus"}
    assert figures["federated_auc"] > 0.9  # two rounds of FedAvg on standardized features already separate well
    versions = _provenance(database_url, figures["study_id"])
    assert [number for number, _ in versions] == [0, 1, 2]
    contributors = versions[-1][1]["contributors"]
    assert sorted(c["site"] for c in contributors) == sorted(
        ["Amsterdam UMC", "Charité – Universitätsmedizin Berlin", "Hospital Clínic de Barcelona",
         "Helsinki University Hospital"])
    assert all(c["num_examples"] > 0 and len(c["update_sha256"]) == 64 for c in contributors)
    # The worker and the server both wrote to the study's live event log, in one gapless sequence.
    seqs, kinds = _events(database_url, figures["study_id"])
    assert seqs == list(range(1, len(seqs) + 1))
    assert kinds.count("statistics.received") == 4 and kinds.count("update.received") == 8
    assert kinds.count("aggregation.finished") == kinds.count("round.metrics") == 2
    verify = _run(env, "verify_audit", timeout=120)
    assert verify.returncode == 0 and "Audit chain intact" in verify.stdout, verify.stdout + verify.stderr


def _provenance(database_url: str, study_id: int) -> list[tuple[int, dict]]:
    query = "SELECT number, provenance FROM aggregation_modelversion WHERE study_id = %s ORDER BY number"
    if database_url.startswith("sqlite"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            rows = conn.execute(query.replace("%s", "?"), [study_id]).fetchall()
        return [(number, json.loads(provenance)) for number, provenance in rows]
    with psycopg.connect(database_url) as conn:
        return [(number, provenance) for number, provenance in conn.execute(query, [study_id]).fetchall()]


def _events(database_url: str, study_id: int) -> tuple[list[int], list[str]]:
    query = "SELECT seq, kind FROM studies_studyevent WHERE study_id = %s ORDER BY seq"
    if database_url.startswith("sqlite"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            rows = conn.execute(query.replace("%s", "?"), [study_id]).fetchall()
    else:
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(query, [study_id]).fetchall()
    return [seq for seq, _ in rows], [kind for _, kind in rows]
