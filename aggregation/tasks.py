"""Celery tasks: thin, id-only, idempotent. The round is re-read and locked by the service."""

from typing import Any

from celery import shared_task
from celery.signals import worker_ready
from django.db import OperationalError

from aggregation import services
from aggregation.services import aggregate
from aggregation.services.recovery import sweep_temporary_files


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5)
def aggregate_round(round_id: int) -> None:
    """Aggregate one round. Running it twice, or again after a worker died mid-way, yields one model version."""
    services.round_aggregate(round_id=round_id)


@shared_task(acks_late=True, ignore_result=False, autoretry_for=(OperationalError,), retry_backoff=True,
             max_retries=5)
def aggregate_shard(plan: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """One parameter shard of a large model's aggregation (a chord's header); writes files only."""
    return aggregate.round_aggregate_shard(plan=plan, names=names)


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5)
def aggregate_shards_commit(parts: list[dict[str, Any]], plan: dict[str, Any]) -> None:
    """The chord's callback: join the shards and commit the one model version, as an unsharded run."""
    aggregate.round_commit_shards(plan=plan, parts=parts)


# Acknowledged late like the aggregations: a worker busy with a tick then reserves no other task (prefetch 1),
# so an aggregation goes to an idle worker instead of waiting behind the tick.
@shared_task(ignore_result=True, acks_late=True)
def rounds_tick() -> None:
    """The scheduler's beat (see CELERY_BEAT_SCHEDULE): open rounds, enforce deadlines, recover lost work."""
    services.rounds_tick()


@worker_ready.connect
def recover_on_start(**kwargs: Any) -> None:
    """A worker that starts (often: in place of one that died) removes what a killed writer left in the
    model store and asks for a tick at once, so a lost aggregation is sent again without waiting for beat."""
    sweep_temporary_files()
    rounds_tick.delay()
