"""Exporting the audit log as a bundle an auditor verifies offline (`python -m consortium.verify`).

The export is audited first (its event is part of what it exports), then a fresh checkpoint is signed,
and the bundle covers the whole log up to that checkpoint: the events the filter selects in full, every
other event as its leaf only, so the verifier proves the export complete for its filter against the
signed Merkle root (docs/evidence.md). Earlier checkpoints travel with consistency proofs. Events stream
from the database (`iterator()`): memory stays flat whatever the size of the log.
"""

from pathlib import Path
from typing import Any

from django.db import transaction

from consortium.audit.checkpoints import HistoryRewritten, checkpoint_sign, lock_checkpoints
from consortium.audit.filters import AuditFilter
from consortium.audit.keys import signing_key
from consortium.audit.log import ActorRef, record, record_denial
from consortium.audit.models import AuditActorKind, AuditCheckpoint
from consortium.audit.tree import DatabaseLog
from consortium.audit_actions import ConsortiumAction
from consortium.evidence.bundle import write_bundle

ACTION = ConsortiumAction.AUDIT_BUNDLE_EXPORTED
COMMAND_ACTOR = ActorRef(kind=AuditActorKind.SYSTEM, label="manage.py audit_export")


def audit_bundle_export(*, actor: Any, out: Path, audit_filter: AuditFilter, events_format: str = "jsonl"
                        ) -> dict[str, Any]:
    """Write the bundle to `out` (a directory, or a .zip); returns its signed manifest."""
    key = signing_key()  # fails loudly before anything is recorded when no key is configured
    context = {"study": audit_filter.study_id, "site": audit_filter.site_id}
    details = {"filters": audit_filter.details(), "format": events_format, "destination": Path(out).name}
    try:
        with transaction.atomic():  # the export's event and the checkpoint covering it commit together
            lock_checkpoints()  # before the audit chain's lock, as every signer takes them
            record(actor=actor, action=ACTION, details=details, **context)
            checkpoint = checkpoint_sign(reason="export")
    except HistoryRewritten as exc:
        record_denial(actor=actor, action=ACTION, reason=str(exc), details=details, **context)
        raise
    return write_bundle(Path(out), DatabaseLog(), key=key, checkpoint=checkpoint.document,
                        filters=audit_filter.spec(), earlier_checkpoints=earlier_checkpoints(checkpoint),
                        events_format=events_format)


def earlier_checkpoints(checkpoint: AuditCheckpoint) -> list[dict[str, Any]]:
    """The first checkpoint and the one before this: proofs from them show the export extends the history the
    sites saw from the start and up to the last time they looked."""
    earlier = (AuditCheckpoint.objects.filter(number__lt=checkpoint.number, tree_size__gt=0)
               .order_by("number"))
    chosen = {c.number: c for c in (earlier.first(), earlier.last()) if c is not None}
    return [c.document for _, c in sorted(chosen.items())]
