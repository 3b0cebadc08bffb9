"""Reads of the audit log, scoped to who may read it."""

from collections.abc import Iterable

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from consortium.audit.exports import EXPORT_COLUMNS, to_cells, write_csv
from consortium.audit.log import export_record
from consortium.audit.models import AuditEvent
from consortium.audit.permissions import can_read_audit
from consortium.errors import Forbidden


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
    """The events as CSV, one row each, with every field the chain is computed over (`EXPORT_COLUMNS`),
    written as the hash saw it; a verifier recomputes the chain from the file alone (docs/audit-export.md)."""
    return write_csv(EXPORT_COLUMNS, (to_cells(export_record(event)) for event in events))
