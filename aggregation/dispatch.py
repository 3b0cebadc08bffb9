"""Sending work to the Celery worker by task name, once the transaction commits.

Services name the task rather than import `aggregation.tasks`, which imports the services: the arrow runs one
way, tasks -> services. `AggregationConfig.ready` imports the tasks, so the name is registered in every
Django process (the server, the worker, the scheduler, management commands and tests)."""

from typing import Any

from celery import chord, current_app

AGGREGATE_ROUND = "aggregation.tasks.aggregate_round"


AGGREGATE_SHARD = "aggregation.tasks.aggregate_shard"
AGGREGATE_SHARDS_COMMIT = "aggregation.tasks.aggregate_shards_commit"


def aggregation_shards_send(plan: dict[str, Any], groups: list[list[str]]) -> None:
    """Send a chord: `aggregate_shard(plan, names)` for each group of tensor names at once, then
    `aggregate_shards_commit(parts, plan)` with their results (`aggregation.services.sharding`)."""
    tasks = current_app.tasks
    chord(tasks[AGGREGATE_SHARD].s(plan, names) for names in groups)(tasks[AGGREGATE_SHARDS_COMMIT].s(plan))


def aggregation_send_on_commit(round_id: int) -> None:
    """Send `aggregate_round(round_id)` when the current transaction commits (at once outside one)."""
    current_app.tasks[AGGREGATE_ROUND].delay_on_commit(round_id)
