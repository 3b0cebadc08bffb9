"""Reads of the audit log, scoped to who may read it."""

import csv
import io
import json
from collections.abc import Iterable

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from consortium.errors import Forbidden
from consortium.models import AuditEvent
from consortium.permissions import can_read_audit

CSV_COLUMNS = (
    "seq", "created_at", "actor_kind", "actor_label", "action", "outcome", "object_type", "object_id",
    "object_repr", "study_id", "site_id", "details", "prev_hash", "hash",
)


def audit_events_for(
    user: AbstractBaseUser | AnonymousUser, *, study_id: int | None = None, action_prefix: str = ""
) -> QuerySet[AuditEvent]:
    """The audit log, newest first, optionally for one study or one family of actions."""
    if not can_read_audit(user):
        raise Forbidden("Only auditors, DPOs and consortium admins read the audit log.")
    events = AuditEvent.objects.order_by("-seq")
    if study_id is not None:
        events = events.filter(study_id=study_id)
    if action_prefix:
        events = events.filter(action__startswith=action_prefix)
    return events


def audit_csv(events: Iterable[AuditEvent]) -> str:
    """The events as CSV, one row each, with every field the chain is computed over."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for event in events:
        row = [getattr(event, column) for column in CSV_COLUMNS]
        row[1] = event.created_at.isoformat()
        row[CSV_COLUMNS.index("details")] = json.dumps(event.details, sort_keys=True)
        writer.writerow(row)
    return buffer.getvalue()
