"""The production topology (`make prod`: scripts/run_production.sh) on this machine: PostgreSQL, Redis, two
ASGI servers, two Celery workers and beat. A simulated federation runs on it through the first server; then
a worker is killed (kill -9) in the middle of aggregating a large model: the other worker takes the round
over and it closes with exactly one model version, bit for bit the uninterrupted computation's.

Runs in the PostgreSQL pass of scripts/test.sh only (skipped on the SQLite pass); there, a missing Redis
skips it, or fails it under REQUIRE_SERVICES=1."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from aggregation.demo import free_port
from tests.conftest import skip_or_fail
from tests.integration.test_federation import REDIS_URL, _redis_ready

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture
def topology_env(tmp_path):
    configured = os.environ.get("DATABASE_URL", "")
    if not configured.startswith("postgres"):
        pytest.skip("the production topology runs in the PostgreSQL pass of the suite")
    if not _redis_ready():
        skip_or_fail(f"Redis not reachable at {REDIS_URL}")
    name = f"consortium_prod_{uuid.uuid4().hex[:8]}"
    admin = configured.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    ports = [free_port(), free_port()]
    env = {key: value for key, value in os.environ.items() if key not in {"CELERY_BROKER_URL"}}
    env.update(DATABASE_URL=configured.rsplit("/", 1)[0] + f"/{name}", REDIS_URL=REDIS_URL,
               SECRET_KEY="topology-test-" + uuid.uuid4().hex, CONSORTIUM_DATA_DIR=str(tmp_path / "data"),
               WEB_PORTS=" ".join(map(str, ports)), ROUNDS_TICK_SECONDS="1",
               MAX_UPDATE_BYTES=str(256 * 2**20),  # the drill's ~33M-parameter updates
               AGGREGATION_SHARD_BYTES=str(2**40))  # one piece: the kill lands in one worker's computation
    yield env, ports
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_federation_runs_on_it_and_a_killed_worker_costs_no_second_model(topology_env, tmp_path):
    env, ports = topology_env
    topology = subprocess.Popen(["scripts/run_production.sh"], cwd=ROOT, env=env, start_new_session=True,
                                stdout=(tmp_path / "topology.log").open("wb"), stderr=subprocess.STDOUT)
    run = Path(env["CONSORTIUM_DATA_DIR"]) / "production"
    try:
        for port in ports:
            _wait(lambda port=port: _answers(port), 240, f"the server on port {port}", topology, tmp_path)

        federation = subprocess.run([sys.executable, "manage.py", "simulate", "--server", f"http://127.0.0.1:{ports[0]}",
                                     "--sites", "5", "--rounds", "2", "--timeout", "240"],
                                    cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        assert federation.returncode == 0, federation.stdout[-3000:] + federation.stderr[-3000:]
        figures = json.loads(federation.stdout.strip().splitlines()[-1])
        assert (figures["updates"], figures["rounds_measured"], figures["refused"]) == (10, 2, 0)
        assert _answers(ports[1])  # the second server serves the same consortium

        # Watch the workers' logs while the round is being prepared: its aggregation starts the moment it is
        # dispatched, which may be before the preparing process has even exited.
        seen = {name: len(_read(run / f"{name}.log")) for name in ("worker-1", "worker-2")}
        prepare = subprocess.Popen([sys.executable, "tests/integration/production_drill.py", "prepare", "8000"],
                                   cwd=ROOT, env={**env, "DJANGO_SETTINGS_MODULE": "consortium.settings"},
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        victim, started = _wait(lambda: next(((name, m.group(1)) for name in ("worker-1", "worker-2")
                                              if (m := AGGREGATING.search(_read(run / f"{name}.log")[seen[name]:]))),
                                             None), 300, "a worker to aggregate", topology, tmp_path)
        os.killpg(int((run / f"{victim}.pid").read_text()), signal.SIGKILL)
        killed = _round_now(env["DATABASE_URL"], int(started))  # at once: the other worker takes over in seconds
        output, _ = prepare.communicate(timeout=300)
        assert prepare.returncode == 0, output[-2000:]
        round_id = int(output.strip().splitlines()[-1])
        assert int(started) == round_id
        state = _wait(lambda: (s := json.loads(_drill(env, "state", round_id)))["status"] == "closed" and s, 120,
                      "the round to close", topology, tmp_path)

        assert killed["status"] == "aggregating" and killed["versions"] == 0, "the worker finished before the kill"
        assert state["versions"] == 1
        assert state["sha256"] == _drill(env, "reference", round_id).strip()
    finally:
        os.killpg(topology.pid, signal.SIGTERM)
        try:
            topology.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(topology.pid, signal.SIGKILL)


def _drill(env: dict[str, str], command: str, argument: int) -> str:
    result = subprocess.run([sys.executable, "tests/integration/production_drill.py", command, str(argument)],
                            cwd=ROOT, env={**env, "DJANGO_SETTINGS_MODULE": "consortium.settings"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


AGGREGATING = re.compile(r"Aggregating round (\d+)\n")


def _round_now(database_url: str, round_id: int) -> dict:
    with psycopg.connect(database_url) as conn:
        status = conn.execute("SELECT status FROM aggregation_round WHERE id = %s", [round_id]).fetchone()[0]
        versions = conn.execute("SELECT count(*) FROM aggregation_modelversion WHERE round_id = %s",
                                [round_id]).fetchone()[0]
    return {"status": status, "versions": versions}


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/agent/me/", timeout=5).status_code == 401
    except httpx.TransportError:
        return False


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _wait(condition, timeout: float, what: str, topology: subprocess.Popen, logs: Path):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if topology.poll() is not None:
            pytest.fail(f"the topology stopped while waiting for {what}: {_read(logs / 'topology.log')[-2000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value
