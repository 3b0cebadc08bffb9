"""The websocket a study's dashboard listens on: `/ws/studies/<id>/?after=<last id seen>`.

Read-only. `connect` asks the policy (through an audited service); anyone else is accepted only to be
closed with code 4403, so the browser learns why. A viewer joins its process's hub for the study (which
holds the one subscription to the group `study-<id>`) before the catch-up is sent, then receives every
event exactly once and in order: an event that arrives ahead of one not yet seen makes the consumer read
the missing ones from the log first.
"""

import asyncio
import contextlib
import json
import time
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from studies.disclosure import FULL, Disclosure, disclose_message, disclosure_for
from studies.events import events_after, last_seq
from studies.hub import hub_for
from studies.services.monitoring import event_stream_open, may_still_watch

CLOSE_FORBIDDEN = 4403
CLOSE_BAD_REQUEST = 4400
ACCESS_RECHECK_SECONDS = 10.0


class StudyEventsConsumer(AsyncJsonWebsocketConsumer):
    """Streams one study's events to one viewer; the process's hub (`studies.hub`) feeds it."""

    study_id: int
    last: int = 0
    disclosure: Disclosure = FULL

    async def connect(self) -> None:
        self.study_id = int(self.scope["url_route"]["kwargs"]["study_id"])
        self.joined, self.rechecking, self.sending = False, None, asyncio.Lock()
        await self.accept()
        user = self.scope.get("user")
        if not await database_sync_to_async(event_stream_open)(actor=user, study_id=self.study_id):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.disclosure = await database_sync_to_async(_disclosure)(user, self.study_id)
        after = _after(self.scope.get("query_string", b""))
        if after is False:
            await self.close(code=CLOSE_BAD_REQUEST)
            return
        async with self.sending:  # events the hub brings meanwhile wait for the catch-up
            head = await database_sync_to_async(last_seq)(self.study_id)
            # Anything committed after `head` reaches this viewer: through the hub once joined, and
            # through the catch-up below for what committed before the hub had joined.
            await hub_for(self.channel_layer).join(self, self.study_id, head=head)
            self.joined, self.checked_at = True, time.monotonic()
            # No `after`: the page rendered the history itself; start from now. A stale `after` (ahead of
            # the log) is answered from the head, and the client sees it in `hello`.
            self.last = head if after is None or after > head else after
            await self.send_json({"type": "hello", "study": self.study_id, "last_id": head, "after": self.last})
            await self._catch_up()

    async def disconnect(self, code: int) -> None:
        rechecking = getattr(self, "rechecking", None)
        if rechecking is not None and rechecking is not asyncio.current_task():
            rechecking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rechecking
        if getattr(self, "joined", False):
            self.joined = False
            await hub_for(self.channel_layer).leave(self, self.study_id)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Clients only listen; a ping is answered so they can tell a dead socket from a quiet study."""
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong", "last_id": self.last})

    async def deliver(self, seq: int, text: str) -> None:
        """A committed event (`text` is its websocket message, encoded once for every viewer)."""
        if not self.joined:
            return
        self._recheck_access_soon()
        async with self.sending:
            if seq <= self.last:
                return  # already sent (the broadcast and the relay may both bring it)
            if seq == self.last + 1:
                if self.disclosure.full:
                    await self.send(text_data=text)
                else:  # this viewer sees other sites' figures only pooled (`studies.disclosure`)
                    await self.send_json(disclose_message(json.loads(text), self.disclosure))
                self.last = seq
            else:
                await self._catch_up()

    async def _catch_up(self) -> None:
        while True:
            batch = await database_sync_to_async(events_after)(self.study_id, self.last)
            for event in batch:
                await self.send_json(disclose_message(event.as_message(), self.disclosure))
                self.last = event.seq
            if len(batch) < 1000:
                return

    def _recheck_access_soon(self) -> None:
        """Every ACCESS_RECHECK_SECONDS, ask again whether the viewer may watch, off the delivery path."""
        if time.monotonic() - self.checked_at < ACCESS_RECHECK_SECONDS or self.rechecking is not None:
            return
        self.checked_at = time.monotonic()
        self.rechecking = asyncio.get_running_loop().create_task(self._recheck_access())

    async def _recheck_access(self) -> None:
        try:
            if not await may_watch(self.scope.get("user"), self.study_id):
                await self.disconnect(CLOSE_FORBIDDEN)
                await self.close(code=CLOSE_FORBIDDEN)
        finally:
            self.rechecking = None


_access: dict[tuple[int | None, int], tuple[float, bool]] = {}


async def may_watch(user: Any, study_id: int) -> bool:
    """The policy's answer, shared by a user's open dashboards in this process for ACCESS_RECHECK_SECONDS."""
    key, now = (getattr(user, "pk", None), study_id), time.monotonic()
    cached = _access.get(key)
    if cached is not None and now - cached[0] < ACCESS_RECHECK_SECONDS:
        return cached[1]
    allowed = await database_sync_to_async(may_still_watch)(user, study_id)
    _access[key] = (now, allowed)
    return allowed


def _disclosure(user: Any, study_id: int) -> Disclosure:
    from studies.models import Study

    return disclosure_for(user, Study.objects.get(pk=study_id))


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
