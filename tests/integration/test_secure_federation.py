"""A secure-aggregation study end to end: a real server, a real Celery worker and four site agents (separate
processes over HTTP) run `run_study_demo --secure-aggregation`. The agents mask their statistics and then their
model changes; the coordinator unmasks only sums, and the model learns as plain FedAvg does."""

import json
import os
import sqlite3

import psycopg
import pytest

from tests.integration.test_federation import _events, _provenance, _run, database_url  # noqa: F401 (fixture)

pytestmark = pytest.mark.integration


def _count(database_url: str, query: str, study_id: int) -> int:  # noqa: F811
    if database_url.startswith("sqlite"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///")) as conn:
            return conn.execute(query.replace("%s", "?"), [study_id]).fetchone()[0]
    with psycopg.connect(database_url) as conn:
        return conn.execute(query, [study_id]).fetchone()[0]


def test_four_agents_run_secure_rounds_over_http_and_the_coordinator_holds_no_update(tmp_path, database_url):  # noqa: F811
    env = {key: value for key, value in os.environ.items() if key not in {"REDIS_URL", "CELERY_BROKER_URL"}}
    env.update(CONSORTIUM_DATA_DIR=str(tmp_path / "data"), DATABASE_URL=database_url)

    result = _run(env, "run_study_demo", "--rounds", "2", "--secure-aggregation", "--json", "--timeout", "300")

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["federated_auc"] > 0.9  # masked FedAvg learns as FedAvg does
    study = figures["study_id"]
    versions = _provenance(database_url, study)
    assert [number for number, _ in versions] == [0, 1, 2]
    for _, provenance in versions[1:]:
        assert provenance["secure_aggregation"]["survivors"] == ["amc", "charite", "clinic", "hus"]
        assert all(c["num_examples"] is None and len(c["update_sha256"]) == 64 for c in provenance["contributors"])
    # No update or statistics in the clear were ever stored; each site's masked input for each round was (the
    # statistics round and two training rounds), and the pooled standardization came from the masked sums.
    for table in ("aggregation_update", "aggregation_sitestatistics"):
        assert _count(database_url, f"SELECT COUNT(*) FROM {table} t JOIN aggregation_round r "
                                    "ON t.round_id = r.id WHERE r.study_id = %s", study) == 0
    assert _count(database_url, "SELECT COUNT(*) FROM aggregation_securemessage m JOIN aggregation_round r "
                                "ON m.round_id = r.id WHERE r.study_id = %s AND m.stage = 'masked_inputs'", study) == 12
    assert _count(database_url, "SELECT examples FROM aggregation_standardization WHERE study_id = %s", study) > 300
    _, kinds = _events(database_url, study)
    assert kinds.count("secure.stage") == 24 and kinds.count("aggregation.finished") == 2
    verify = _run(env, "verify_audit", timeout=120)
    assert verify.returncode == 0 and "Audit chain intact" in verify.stdout, verify.stdout + verify.stderr
