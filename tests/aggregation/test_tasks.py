"""The Celery tasks: thin, id-only, idempotent, safe to retry after a worker dies."""

import pytest
from celery import current_app
from django.db import OperationalError

from aggregation import strategies
from aggregation.choices import RoundStatus
from aggregation.dispatch import AGGREGATE_ROUND
from aggregation.models import ModelVersion, Round
from aggregation.tasks import aggregate_round, rounds_tick
from tests.aggregation.support import open_round, record_enqueued, submit
from tests.support import actions_after, last_seq


@pytest.fixture
def aggregating(fed, monkeypatch) -> Round:
    record_enqueued(monkeypatch)
    round_ = open_round(fed.study)
    submit(fed.agent_a, round_)
    submit(fed.agent_b, round_)
    round_.refresh_from_db()
    assert round_.status == RoundStatus.AGGREGATING
    return round_


def test_it_produces_one_model_version_when_the_task_runs_twice(aggregating):
    first = aggregate_round.apply(args=[aggregating.pk])
    assert first.successful(), first.traceback
    mark = last_seq()
    second = aggregate_round.apply(args=[aggregating.pk])
    assert second.successful(), second.traceback
    aggregate_round.run(aggregating.pk)
    assert ModelVersion.objects.filter(round=aggregating).count() == 1
    assert Round.objects.get(pk=aggregating.pk).status == RoundStatus.CLOSED
    assert actions_after(mark) == []


def test_it_acknowledges_the_task_only_after_it_ran():
    # acks_late: a worker that dies mid-aggregation leaves the message on the queue for another worker.
    assert aggregate_round.acks_late is True
    assert OperationalError in aggregate_round.autoretry_for
    assert aggregate_round.name == "aggregation.tasks.aggregate_round"
    assert rounds_tick.name == "aggregation.tasks.rounds_tick"


def test_it_sends_the_aggregation_by_the_name_the_task_is_registered_under():
    # Services send it by name (aggregation.dispatch) rather than import the tasks, which import the services.
    assert current_app.tasks[AGGREGATE_ROUND] is aggregate_round._get_current_object()


def test_it_leaves_the_round_aggregating_for_the_retry_after_a_database_error(aggregating, monkeypatch):
    real, calls = strategies.aggregate, []

    def locked_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("database is locked")
        return real(*args, **kwargs)

    monkeypatch.setattr(strategies, "aggregate", locked_once)
    with pytest.raises(OperationalError):
        aggregate_round.run(aggregating.pk)
    aggregating.refresh_from_db()
    assert aggregating.status == RoundStatus.AGGREGATING, "a transient error must not fail the round for good"
    assert not ModelVersion.objects.filter(round=aggregating).exists()
    aggregate_round.run(aggregating.pk)  # what autoretry does
    assert ModelVersion.objects.filter(round=aggregating).count() == 1
    assert Round.objects.get(pk=aggregating.pk).status == RoundStatus.CLOSED


def test_it_ticks_through_the_task(fed, monkeypatch):
    record_enqueued(monkeypatch)
    rounds_tick.apply()
    assert Round.objects.get(study=fed.study).status == RoundStatus.OPEN
