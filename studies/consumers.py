"""The websocket a study's dashboard listens on: `/ws/studies/<id>/?after=<last id seen>`.

Read-only. `connect` asks the policy (through an audited service); anyone else is accepted only to be
closed with code 4403, so the browser learns why. A viewer joins the group `study-<id>` before the
catch-up is sent, then receives every event exactly once and in order: an event that arrives ahead
of one not yet seen makes the consumer read the missing ones from the log first.
"""

import asyncio
import time
import weakref
from collections import Counter
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import BaseChannelLayer
from django.conf import settings

from studies.events import events_after, group_name, last_seq
from studies.services.monitoring import event_stream_open, may_still_watch

CLOSE_FORBIDDEN = 4403
CLOSE_BAD_REQUEST = 4400
ACCESS_RECHECK_SECONDS = 10.0


class StudyEventsConsumer(AsyncJsonWebsocketConsumer):
    """Streams one study's events to one viewer."""

    study_id: int
    last: int = 0

    async def connect(self) -> None:
        self.study_id = int(self.scope["url_route"]["kwargs"]["study_id"])
        self.joined = False
        await self.accept()
        user = self.scope.get("user")
        if not await database_sync_to_async(event_stream_open)(actor=user, study_id=self.study_id):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        after = _after(self.scope.get("query_string", b""))
        if after is False:
            await self.close(code=CLOSE_BAD_REQUEST)
            return
        await self.channel_layer.group_add(group_name(self.study_id), self.channel_name)
        self.joined, self.checked_at = True, time.monotonic()
        head = await database_sync_to_async(last_seq)(self.study_id)
        relay_for(self.channel_layer).watch(self.study_id, head)
        # No `after`: the page rendered the history itself; start from now. A stale `after` (ahead of
        # the log) is answered from the head, and the client sees it in `hello`.
        self.last = head if after is None or after > head else after
        await self.send_json({"type": "hello", "study": self.study_id, "last_id": head, "after": self.last})
        await self._catch_up()

    async def disconnect(self, code: int) -> None:
        if getattr(self, "joined", False):
            await self.channel_layer.group_discard(group_name(self.study_id), self.channel_name)
            relay_for(self.channel_layer).unwatch(self.study_id)
            self.joined = False

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Clients only listen; a ping is answered so they can tell a dead socket from a quiet study."""
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong", "last_id": self.last})

    async def study_event(self, message: dict[str, Any]) -> None:
        """A committed event from the group (a service's broadcast, or the relay reading the log)."""
        if not self.joined or not await self._still_allowed():
            return
        event = message.get("event") or {}
        seq = int(event.get("id", 0))
        if seq <= self.last:
            return  # already sent (the broadcast and the relay may both bring it)
        if seq == self.last + 1:
            await self.send_json(event)
            self.last = seq
        else:
            await self._catch_up()

    async def _catch_up(self) -> None:
        while True:
            batch = await database_sync_to_async(events_after)(self.study_id, self.last)
            for event in batch:
                await self.send_json(event.as_message())
                self.last = event.seq
            if len(batch) < 1000:
                return

    async def _still_allowed(self) -> bool:
        if time.monotonic() - self.checked_at < ACCESS_RECHECK_SECONDS:
            return True
        self.checked_at = time.monotonic()
        if await database_sync_to_async(may_still_watch)(self.scope.get("user"), self.study_id):
            return True
        await self.disconnect(CLOSE_FORBIDDEN)
        await self.close(code=CLOSE_FORBIDDEN)
        return False


def _after(query_string: bytes) -> int | None | bool:
    """`after` from the query string: None when absent, False when malformed."""
    values = parse_qs(query_string.decode("latin-1")).get("after")
    if not values:
        return None
    try:
        after = int(values[0])
    except ValueError:
        return False
    return after if after >= 0 else False


class EventRelay:
    """Reads the event logs of the studies watched in this process and hands new events to the group.

    Needed with the in-memory channel layer, which cannot carry an event published by another process
    (the Celery worker). One relay per process and event loop, one query per watched study per tick,
    however many viewers. With Redis (`EVENTS_RELAY_SECONDS` = 0) every process broadcasts itself."""

    def __init__(self, layer: BaseChannelLayer, interval: float) -> None:
        self.layer, self.interval = layer, interval
        self.watchers: Counter[int] = Counter()
        self.seen: dict[int, int] = {}
        self.task: asyncio.Task | None = None

    def watch(self, study_id: int, head: int) -> None:
        if self.interval <= 0:
            return
        self.watchers[study_id] += 1
        self.seen[study_id] = max(self.seen.get(study_id, 0), head)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())

    def unwatch(self, study_id: int) -> None:
        if self.interval <= 0:
            return
        self.watchers[study_id] -= 1
        if self.watchers[study_id] <= 0:
            del self.watchers[study_id]
            self.seen.pop(study_id, None)

    async def _run(self) -> None:
        while self.watchers:
            await asyncio.sleep(self.interval)
            for study_id in list(self.watchers):
                await self._relay(study_id)

    async def _relay(self, study_id: int) -> None:
        events = await database_sync_to_async(events_after)(study_id, self.seen.get(study_id, 0))
        for event in events:
            await self.layer.group_send(group_name(study_id), {"type": "study.event", "event": event.as_message()})
            self.seen[study_id] = event.seq


_relays: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, EventRelay]" = weakref.WeakKeyDictionary()


def relay_for(layer: BaseChannelLayer) -> EventRelay:
    loop = asyncio.get_running_loop()
    relay = _relays.get(loop)
    if relay is None or relay.layer is not layer:
        relay = _relays[loop] = EventRelay(layer, settings.EVENTS_RELAY_SECONDS)
    return relay
