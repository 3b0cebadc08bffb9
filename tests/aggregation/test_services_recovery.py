"""Recovering from a worker that died: the scheduler sends an aggregation again when no worker has taken
it within seconds, a starting worker asks for that at once, and temporary files that killed writers left
in the model store are swept (`aggregation.services.recovery`). Races with a live claim are tested on
PostgreSQL (tests/integration/test_postgres_rounds.py); a real kill -9 in tests/integration/test_worker_recovery.py."""

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest

from aggregation import tasks
from aggregation.choices import RoundStatus
from aggregation.models import Round
from aggregation.services import rounds, rounds_tick
from aggregation.services.recovery import AGGREGATION_REDISPATCH_AFTER, sweep_temporary_files
from tests.aggregation.support import open_round, submit

pytestmark = pytest.mark.usefixtures("no_broker")

LATER = AGGREGATION_REDISPATCH_AFTER + timedelta(seconds=1)


@pytest.fixture
def aggregating(fed, no_broker, django_capture_on_commit_callbacks) -> Round:
    """A round whose last submission sent the aggregation task (recorded by `no_broker`, not run)."""
    round_ = open_round(fed.study)
    submit(fed.agent_a, round_)
    with django_capture_on_commit_callbacks(execute=True):
        submit(fed.agent_b, round_)
    round_.refresh_from_db()
    assert round_.status == RoundStatus.AGGREGATING and no_broker == [round_.pk]
    return round_


def tick(moment, capture) -> None:
    with capture(execute=True):
        rounds_tick(moment=moment)


def test_it_sends_an_aggregation_no_worker_took_again_within_seconds(aggregating, no_broker,
                                                                     django_capture_on_commit_callbacks):
    tick(aggregating.aggregation_dispatched_at + LATER, django_capture_on_commit_callbacks)
    assert no_broker == [aggregating.pk, aggregating.pk]
    aggregating.refresh_from_db()
    assert aggregating.status == RoundStatus.AGGREGATING  # sent again, nothing else changed


def test_it_leaves_a_just_sent_aggregation_to_the_worker_it_was_sent_to(aggregating, no_broker,
                                                                       django_capture_on_commit_callbacks):
    tick(aggregating.aggregation_dispatched_at + timedelta(seconds=2), django_capture_on_commit_callbacks)
    assert no_broker == [aggregating.pk]


def test_it_sends_a_lost_aggregation_once_per_wait(aggregating, no_broker, django_capture_on_commit_callbacks):
    first = aggregating.aggregation_dispatched_at + LATER
    tick(first, django_capture_on_commit_callbacks)
    tick(first + timedelta(seconds=1), django_capture_on_commit_callbacks)  # a second scheduler, or the next beat
    assert no_broker == [aggregating.pk] * 2
    tick(first + LATER, django_capture_on_commit_callbacks)  # still not taken: sent again
    assert no_broker == [aggregating.pk] * 3


def _temporary(store: Path, name: str, *, age: timedelta) -> Path:
    path = store / "versions" / "1" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"half a model")
    stamp = time.time() - age.total_seconds()
    os.utime(path, (stamp, stamp))
    return path


def test_it_sweeps_only_temporary_files_nobody_has_written_to_for_minutes(model_store):
    dead = _temporary(model_store, f".{'a' * 64}.x1y2.tmp", age=timedelta(minutes=6))
    writing = _temporary(model_store, f".{'b' * 64}.z3w4.tmp", age=timedelta(seconds=5))
    stored = _temporary(model_store, f"{'c' * 64}.safetensors", age=timedelta(days=3))
    assert sweep_temporary_files() == 1
    assert not dead.exists() and writing.exists() and stored.exists()


def test_the_scheduler_sweeps_the_model_store(p, model_store, monkeypatch):
    dead = _temporary(model_store, f".{'a' * 64}.x1y2.tmp", age=timedelta(hours=1))
    monkeypatch.setattr(rounds, "_next_sweep", 0.0)
    rounds_tick()
    assert not dead.exists()


def test_a_starting_worker_sweeps_and_asks_for_a_tick_at_once(db, model_store, monkeypatch):
    dead = _temporary(model_store, f".{'a' * 64}.x1y2.tmp", age=timedelta(hours=1))
    asked: list[tuple] = []
    monkeypatch.setattr(tasks.rounds_tick, "delay", lambda *args: asked.append(args))
    tasks.recover_on_start(sender=None)
    assert asked == [()] and not dead.exists()
