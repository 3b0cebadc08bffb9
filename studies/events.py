"""A study's live event log: persisted in the caller's transaction, broadcast after it commits.

Services and tasks call `publish` next to their audit `record`. The event is a row (`StudyEvent`)
with the next per-study `seq`, so a change that rolls back leaves no event, and a client that
reconnects asks for everything after its last `seq`. Once the transaction commits the event is
sent to the channel-layer group `study-<id>`: with Redis that reaches every server process; with
the embedded in-memory layer only this process, so the consumers' relay (`studies.consumers`)
also reads the log for events written by other processes (the Celery worker).
"""

import json
import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import models, transaction
from django.db.models import Max
from django.utils import timezone

from consortium.audit.log import bounded_reason, lock_chain, to_json
from studies.choices import EventKind, GateAction
from studies.models import Study, StudyEvent

logger = logging.getLogger(__name__)

def group_name(study_id: int) -> str:
    return f"study-{study_id}"


def _study_id(study: Study | int) -> int:
    return study.pk if isinstance(study, models.Model) else int(study)


def publish(study: Study | int, kind: EventKind | str, payload: dict[str, Any]) -> StudyEvent:
    """Append an event to the study's log inside the caller's transaction; broadcast it after commit."""
    study_id = _study_id(study)
    if isinstance(payload.get("reason"), str):  # every viewer's page replays the log: no reason may bloat it
        payload = {**payload, "reason": bounded_reason(payload["reason"])}
    with transaction.atomic(savepoint=False):
        # The audit chain's lock, held until commit: events of a study commit in seq order, so a reader
        # never sees a gap that fills in later. The same lock (not one per study) because every publishing
        # transaction also appends to the audit log: two locks taken in either order could deadlock.
        lock_chain()
        last = StudyEvent.objects.filter(study_id=study_id).aggregate(last=Max("seq"))["last"] or 0
        event = StudyEvent.objects.create(study_id=study_id, seq=last + 1, kind=str(kind), payload=to_json(payload),
                                          created_at=timezone.now())
    transaction.on_commit(lambda: broadcast(event))
    return event


def publish_gate(study: Study, *, trigger: str, gate: Any = None) -> StudyEvent:
    """Publish the gate's current verdict (every check, per site) so open dashboards redraw the panel."""
    from studies.governance import evaluate  # governance reads models only; imported late to keep this module light

    gate = gate if gate is not None else evaluate(study, GateAction.AGGREGATE)
    return publish(study, EventKind.GATE_EVALUATED, {"trigger": trigger, "gate": gate.as_dict()})


def announce_governance(study: Study, kind: EventKind | str, payload: dict[str, Any]) -> None:
    """A governance change (participation, approval, DPIA, ethics, agreement, study state): the change
    itself, then the gate's new verdict, both in the transaction that made the change."""
    publish(study, kind, payload)
    publish_gate(study, trigger=str(kind))


def broadcast(event: StudyEvent) -> None:
    """Send a committed event to the study's group. Failure loses nothing: the log has it for catch-up."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group_name(event.study_id), group_message(event))
    except Exception:  # noqa: BLE001 - a broker hiccup must not fail the request that committed
        logger.warning("Could not broadcast event %s of study %s", event.seq, event.study_id, exc_info=True)


def group_message(event: StudyEvent) -> dict[str, Any]:
    """What the channel layer carries: the seq, and the websocket text encoded once for every viewer."""
    return {"type": "study.event", "study": event.study_id, "seq": event.seq, "json": json.dumps(event.as_message())}


def events_after(study_id: int, after: int, *, limit: int = 1000) -> list[StudyEvent]:
    """The study's events with seq > `after`, oldest first (reconnect catch-up and gap filling)."""
    return list(StudyEvent.objects.filter(study_id=study_id, seq__gt=after).order_by("seq")[:limit])


def last_seq(study_id: int) -> int:
    return StudyEvent.objects.filter(study_id=study_id).aggregate(last=Max("seq"))["last"] or 0
