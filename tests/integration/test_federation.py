"""A real federation, end to end: an ASGI server, a real Celery worker (with its scheduler) and four
site agents in separate processes, talking HTTP, training with torch on scikit-learn's breast cancer
data. Runs `manage.py run_study_demo` in a fresh data folder with the filesystem transport, and again
with Redis as broker and channel layer (required in CI: REQUIRE_SERVICES=1); and once on a folder of
site CSVs, as someone trying their own data would, with another strategy."""

import json
import os
import socket
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import psycopg
import pytest

from sites.agent.data import Dataset
from sites.agent.demo_data import demo_dataset, hold_out, write_csv
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
    assert kinds.count("aggregation.finished") == 2
    # After the last training round the sites evaluate the final model: its figures are the third metrics.
    assert kinds.count("evaluation.received") == 4 and kinds.count("round.metrics") == 3
    assert figures["final_version"] == 2 and figures["final_validation_auc"] > 0.9
    assert figures["final_validation_examples"] > 0
    verify = _run(env, "verify_audit", timeout=120)
    assert verify.returncode == 0 and "Audit chain intact" in verify.stdout, verify.stdout + verify.stderr


def _breast_cancer_sites(folder: Path) -> dict[str, Dataset]:
    """Three site CSVs written from scikit-learn's breast cancer data, labelled `malignant` (1 - target), the
    file names naming the sites as someone would (site_north.csv, South.csv, site_east-2.csv)."""
    data = demo_dataset()
    data = Dataset(features=data.features, x=data.x, y=1 - data.y)
    rows = np.random.default_rng(0).permutation(len(data))
    sites = {}
    for code, name, chunk in zip(("north", "south", "east-2"), ("site_north.csv", "South.csv", "site_east-2.csv"),
                                 np.array_split(rows, 3), strict=True):
        sites[code] = data.subset(np.sort(chunk))
        write_csv(sites[code], folder / name, "malignant")
    return sites


def test_it_runs_a_federation_on_a_folder_of_site_csvs_with_another_strategy(tmp_path, database_url):
    env = {key: value for key, value in os.environ.items() if key not in {"REDIS_URL", "CELERY_BROKER_URL"}}
    env.update(CONSORTIUM_DATA_DIR=str(tmp_path / "data"), DATABASE_URL=database_url)
    folder = tmp_path / "my_sites"
    folder.mkdir()
    sites = _breast_cancer_sites(folder)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    result = _run(env, "run_study_demo", "--rounds", "3", "--json", "--timeout", "300", "--data-dir", str(folder),
                  "--label", "malignant", "--strategy", "fedadam", "--server-learning-rate", "0.05",
                  "--holdout-fraction", "0.25", "--seed", "7", "--port", str(port))

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"server on port {port}, worker, 3 agents" in result.stdout
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert (figures["strategy"], figures["rounds"], figures["seed"]) == ("fedadam", 3, 7)
    assert set(figures["site_aucs"]) == {"north", "south", "east-2"}
    kept, held_out = hold_out(sites, 0.25, 7)  # the same rows, held out before training
    assert figures["test_examples"] == len(held_out)
    assert figures["federated_auc"] > 0.9 and figures["central_auc"] > 0.9
    assert figures["final_version"] == 3 and figures["final_validation_auc"] is not None
    study = _study(database_url, figures["study_id"])
    assert (study["strategy"], study["server_learning_rate"], study["label_column"]) == ("fedadam", 0.05, "malignant")
    contributors = _provenance(database_url, figures["study_id"])[-1][1]["contributors"]
    assert sorted(c["site"] for c in contributors) == ["Site east-2", "Site north", "Site south"]
    [written] = (tmp_path / "data" / "demo" / "runs").glob("*/site_north.csv")  # what north's agent trained on
    assert len(written.read_text().splitlines()) - 1 == len(kept["north"]) < len(sites["north"])


def _study(database_url: str, study_id: int) -> dict:
    query = "SELECT strategy, server_learning_rate, label_column FROM studies_study WHERE id = %s"
    if database_url.startswith("sqlite"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            row = conn.execute(query.replace("%s", "?"), [study_id]).fetchone()
    else:
        with psycopg.connect(database_url) as conn:
            row = conn.execute(query, [study_id]).fetchone()
    return dict(zip(("strategy", "server_learning_rate", "label_column"), row, strict=True))


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
