"""Sending work to the Celery worker by task name, once the transaction commits.

Services name the task rather than import `aggregation.tasks`, which imports the services: the arrow runs one
way, tasks -> services. `AggregationConfig.ready` imports the tasks, so the name is registered in every
Django process (the server, the worker, the scheduler, management commands and tests)."""

from celery import current_app

AGGREGATE_ROUND = "aggregation.tasks.aggregate_round"


def aggregation_send_on_commit(round_id: int) -> None:
    """Send `aggregate_round(round_id)` when the current transaction commits (at once outside one)."""
    current_app.tasks[AGGREGATE_ROUND].delay_on_commit(round_id)
