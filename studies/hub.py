"""One subscription per study per server process, fanned out to that process's open dashboards.

Each dashboard joining the channel-layer group itself would make channels-redis store and deliver one
copy of every event per viewer (hundreds of Redis round trips per event per process). Instead the hub
joins `study-<id>` once, with one channel of its own, and hands each event's pre-encoded text to the
local viewers. With the embedded in-memory layer, which cannot carry events committed by another
process (the Celery worker), the hub also reads the logs of the studies it watches every
`EVENTS_RELAY_SECONDS`. Viewers drop what they already sent, so both paths may bring an event.
"""

import asyncio
import logging
import weakref
from typing import Any, Protocol

from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer
from django.conf import settings

from studies.events import events_after, group_message, group_name

logger = logging.getLogger(__name__)


class Viewer(Protocol):
    async def deliver(self, seq: int, text: str) -> None: ...


class StudyHub:
    """The viewers of each study in this process and event loop, and the tasks that feed them."""

    def __init__(self, layer: BaseChannelLayer, interval: float) -> None:
        self.layer, self.interval = layer, interval
        self.viewers: dict[int, set[Viewer]] = {}
        self.seen: dict[int, int] = {}  # the relay's position in each watched study's log
        self.channel = ""
        self.reader: asyncio.Task | None = None
        self.poller: asyncio.Task | None = None

    async def join(self, viewer: Viewer, study_id: int, head: int) -> None:
        if not self.channel:
            # The default prefix: channels-redis reads all of a process's channels from one list per
            # prefix, and its shared reader serves only the prefix the consumers' own channels use.
            self.channel = await self.layer.new_channel()
        if study_id not in self.viewers:
            self.viewers[study_id] = set()
            await self.layer.group_add(group_name(study_id), self.channel)
        self.viewers[study_id].add(viewer)
        self.seen[study_id] = max(self.seen.get(study_id, 0), head)
        loop = asyncio.get_running_loop()
        if self.reader is None or self.reader.done():
            self.reader = loop.create_task(self._read())
        if self.interval > 0 and (self.poller is None or self.poller.done()):
            self.poller = loop.create_task(self._poll())

    async def leave(self, viewer: Viewer, study_id: int) -> None:
        viewers = self.viewers.get(study_id)
        if viewers is None:
            return
        viewers.discard(viewer)
        if not viewers:
            del self.viewers[study_id]
            self.seen.pop(study_id, None)
            await self.layer.group_discard(group_name(study_id), self.channel)
        if not self.viewers:  # nobody left to feed: stop reading until someone joins again
            for task in (self.reader, self.poller):
                if task is not None and task is not asyncio.current_task():
                    task.cancel()
            self.reader = self.poller = None

    async def _fan_out(self, study_id: int, seq: int, text: str) -> None:
        for viewer in list(self.viewers.get(study_id, ())):
            try:
                await viewer.deliver(seq, text)
            except Exception:  # noqa: BLE001 - one broken socket must not starve the other viewers
                logger.warning("Could not deliver event %s of study %s", seq, study_id, exc_info=True)

    async def _read(self) -> None:
        while self.viewers:
            message = await self.layer.receive(self.channel)
            if message.get("type") == "study.event":
                await self._fan_out(int(message["study"]), int(message["seq"]), message["json"])

    async def _poll(self) -> None:
        while self.viewers:
            await asyncio.sleep(self.interval)
            for study_id in list(self.viewers):
                events = await database_sync_to_async(events_after)(study_id, self.seen.get(study_id, 0))
                for event in events:
                    self.seen[study_id] = event.seq
                    message: dict[str, Any] = group_message(event)
                    await self._fan_out(study_id, event.seq, message["json"])


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, StudyHub]" = weakref.WeakKeyDictionary()


def hub_for(layer: BaseChannelLayer) -> StudyHub:
    """This event loop's hub (tests run each websocket scenario in a loop of its own)."""
    loop = asyncio.get_running_loop()
    hub = _hubs.get(loop)
    if hub is None or hub.layer is not layer:
        hub = _hubs[loop] = StudyHub(layer, settings.EVENTS_RELAY_SECONDS)
    return hub
