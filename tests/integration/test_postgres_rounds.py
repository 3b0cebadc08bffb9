"""Only on PostgreSQL, where `select_for_update` really locks: concurrent aggregations of one round
and concurrent submissions of one site (SQLite serialises writers, so it cannot show these races)."""

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone

from aggregation.choices import RoundStatus
from aggregation.models import ModelVersion, Round, Update
from aggregation.services import round_aggregate, rounds_tick
from aggregation.services.recovery import claim_aggregation
from consortium.errors import Conflict
from tests.aggregation.support import (
    agent_for,
    governed_study,
    open_round,
    record_enqueued,
    submit,
)
from tests.base import make_personas
from tests.integration.test_postgres import in_threads

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("model_store")]


@pytest.fixture(autouse=True)
def _postgresql_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only: `make test` runs the suite again on PostgreSQL")


@pytest.fixture
def federation(transactional_db, monkeypatch):
    record_enqueued(monkeypatch)
    p = make_personas()
    study = governed_study(p)
    return study, agent_for(p, p.site_a)[0], agent_for(p, p.site_b)[0]


def test_it_produces_one_model_version_when_two_workers_aggregate_a_round_at_once(federation):
    study, agent_a, agent_b = federation
    round_ = open_round(study)
    submit(agent_a, round_)
    submit(agent_b, round_)
    results: list = []
    errors = in_threads(2, lambda i: results.append(round_aggregate(round_id=round_.pk)))
    assert errors == []
    assert ModelVersion.objects.filter(round=round_).count() == 1
    version = ModelVersion.objects.get(round=round_)
    # The second finds the round claimed (and leaves it, None) or already closed (its version).
    assert version in results and set(results) <= {version, None}
    assert Round.objects.get(pk=round_.pk).status == RoundStatus.CLOSED
    assert Round.objects.filter(study=study, number=2, status=RoundStatus.OPEN).count() == 1


def test_it_accepts_one_of_two_concurrent_updates_from_the_same_site(federation):
    study, agent_a, _ = federation
    round_ = open_round(study)
    outcomes: list = []

    def send(i: int) -> None:
        try:
            outcomes.append(submit(agent_a, round_, seed=10 + i, key=f"attempt-{i}")[1])
        except Conflict as exc:
            outcomes.append((exc.status, exc.code))

    assert in_threads(2, send) == []
    assert sorted(outcomes, key=str) == sorted([True, (409, "duplicate_update")], key=str)
    assert Update.objects.filter(round=round_, site=agent_a.site).count() == 1


def test_it_sends_a_round_again_only_once_the_worker_that_claimed_it_is_gone(federation, monkeypatch):
    """A worker aggregating a round holds its claim; a second worker leaves the round at once and the scheduler
    does not send it again. When the first worker's connection dies (kill -9), the claim goes with it."""
    study, agent_a, agent_b = federation
    enqueued = record_enqueued(monkeypatch)
    round_ = open_round(study)
    submit(agent_a, round_)
    submit(agent_b, round_)  # completes the round: the task is sent (recorded) once
    claimed, backend = threading.Event(), []

    def worker() -> None:
        try:
            with transaction.atomic():
                assert claim_aggregation(round_.pk)
                backend.append(connection.cursor().connection.info.backend_pid)
                claimed.set()
                time.sleep(30)  # "aggregating", until its connection is killed below
                connection.cursor().execute("SELECT 1")
        except Exception:  # noqa: BLE001 - the connection was terminated, as a killed worker's would be
            pass
        finally:
            connections.close_all()

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    assert claimed.wait(10)
    later = timezone.now() + timedelta(minutes=1)
    assert round_aggregate(round_id=round_.pk) is None  # a second worker leaves it at once
    rounds_tick(moment=later)
    assert enqueued == [round_.pk]  # its worker is alive: not sent again
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(%s)", backend)
    rounds_tick(moment=later)
    assert enqueued == [round_.pk, round_.pk]
    assert Round.objects.get(pk=round_.pk).status == RoundStatus.AGGREGATING
    assert not ModelVersion.objects.filter(round=round_).exists()
