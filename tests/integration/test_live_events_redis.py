"""With REDIS_URL, channels-redis carries an event from the process that committed it (a Celery
worker, another server process) to the websocket consumers of this one: no relay involved."""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync, sync_to_async

from aggregation.events import RoundEventKind
from consortium.layers import redis_channel_layer
from studies import events
from studies.choices import EventKind
from tests.base import draft_study
from tests.conftest import skip_or_fail
from tests.studies.test_consumers import TIMEOUT, open_socket

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# Another process: broadcast an event (already committed by the test) through its own Redis layer.
BROADCAST = """
import json, sys
import django
django.setup()
from django.utils.dateparse import parse_datetime
from studies.events import broadcast
from studies.models import StudyEvent
from aggregation.events import RoundEventKind
row = json.loads(sys.argv[1])
broadcast(StudyEvent(study_id=row["study_id"], seq=row["seq"], kind=row["kind"], payload=row["payload"],
                     created_at=parse_datetime(row["created_at"])))
"""


@pytest.fixture
def redis_layer(settings):
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).flushdb()
    except redis.RedisError:
        skip_or_fail(f"Redis not reachable at {REDIS_URL}")
    settings.CHANNEL_LAYERS = {"default": redis_channel_layer(REDIS_URL)}  # as settings.py builds it
    settings.EVENTS_RELAY_SECONDS = 0  # only Redis may deliver here
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


def broadcast_from_another_process(event) -> None:
    env = {**os.environ, "REDIS_URL": REDIS_URL, "DJANGO_SETTINGS_MODULE": "consortium.settings"}
    row = {"study_id": event.study_id, "seq": event.seq, "kind": event.kind, "payload": event.payload,
           "created_at": event.created_at.isoformat()}
    done = subprocess.run([sys.executable, "-c", BROADCAST, json.dumps(row)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


def test_an_event_broadcast_by_another_process_reaches_this_processs_viewers(p, redis_layer):
    study = draft_study(p)

    async def scenario():
        first, second = await open_socket(p.pi, study.pk), await open_socket(p.dpo, study.pk)
        for communicator in (first, second):
            await communicator.receive_json_from(timeout=TIMEOUT)  # hello
        original = events.broadcast
        events.broadcast = lambda event: None  # this process only commits; the other one broadcasts
        try:
            event = await sync_to_async(events.publish)(study, RoundEventKind.ROUND_METRICS,
                                                        {"global": {"val_auc": 0.9}})
        finally:
            events.broadcast = original
        await sync_to_async(broadcast_from_another_process)(event)
        for communicator in (first, second):
            message = await communicator.receive_json_from(timeout=TIMEOUT)
            assert (message["id"], message["kind"]) == (1, "round.metrics")
            assert message["data"] == {"global": {"val_auc": 0.9}}
            await communicator.disconnect()

    async_to_sync(scenario)()


def test_a_quiet_studys_websocket_outlives_redis_reads_that_find_nothing(p, redis_layer):
    """redis-py 8 gives up a read after 5 s by default; channels-redis waits 5 s for a message. Without
    `socket_timeout: None` (consortium/layers.py) a dashboard left quiet for a while was closed with 1011."""
    study = draft_study(p)

    async def scenario():
        communicator = await open_socket(p.pi, study.pk)
        await communicator.receive_json_from(timeout=TIMEOUT)
        await asyncio.sleep(7)  # nothing happens in the study for longer than redis-py's default timeout
        event = await sync_to_async(events.publish)(study, EventKind.STUDY_CHANGED, {"before": "x", "after": "y"})
        message = await communicator.receive_json_from(timeout=TIMEOUT)
        assert message["id"] == event.seq
        await communicator.disconnect()

    async_to_sync(scenario)()
