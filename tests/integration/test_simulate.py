"""`manage.py simulate`: many simulated sites in one asyncio process, through the real HTTP API, the real gate and
a real Celery worker (the embedded server and worker the command starts itself), governed through the services."""

import json
import os
import subprocess
import sys

import pytest

from tests.integration.test_federation import _events, _provenance, _study, database_url  # noqa: F401 (fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.integration


def test_it_runs_five_simulated_sites_for_two_rounds_and_reports_its_figures(tmp_path, database_url):  # noqa: F811
    env = {key: value for key, value in os.environ.items() if key not in {"REDIS_URL", "CELERY_BROKER_URL"}}
    env.update(CONSORTIUM_DATA_DIR=str(tmp_path / "data"), DATABASE_URL=database_url)

    result = subprocess.run([sys.executable, "manage.py", "simulate", "--sites", "5", "--rounds", "2",
                             "--strategy", "fedavg", "--timeout", "400"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert (figures["sites"], figures["rounds"], figures["updates"], figures["refused"]) == (5, 2, 10, 0)
    assert figures["rounds_measured"] == 2 and figures["last_submission_to_next_open_p50_s"] >= 0
    assert figures["updates_per_s"] > 0 and figures["wall_seconds"] > 0
    assert _study(database_url, figures["study_id"])["strategy"] == "fedavg"
    versions = _provenance(database_url, figures["study_id"])
    assert [number for number, _ in versions] == [0, 1, 2]
    for _, provenance in versions[1:]:  # every simulated site's update made it into each model
        assert sorted(c["site"] for c in provenance["contributors"]) == [f"Site sim00{i}" for i in range(1, 6)]
    seqs, kinds = _events(database_url, figures["study_id"])
    assert kinds.count("update.received") == 10 and kinds.count("aggregation.finished") == 2
