"""Celery tasks: thin, id-only, idempotent. The round is re-read and locked by the service."""

from celery import shared_task
from django.db import OperationalError

from aggregation import services


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=5)
def aggregate_round(round_id: int) -> None:
    """Aggregate one round. Running it twice, or again after a worker died mid-way, yields one model version."""
    services.round_aggregate(round_id=round_id)


@shared_task(ignore_result=True)
def rounds_tick() -> None:
    """The scheduler's beat (see CELERY_BEAT_SCHEDULE): open rounds, enforce deadlines."""
    services.rounds_tick()
