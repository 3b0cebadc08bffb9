"""Celery tasks of the consortium app: the periodic signed checkpoint of the audit log."""

from celery import shared_task

from consortium.audit.checkpoints import checkpoint_if_changed


@shared_task(name="consortium.audit.tasks.audit_checkpoint")
def audit_checkpoint() -> int | None:
    """Sign the audit chain's head if events were added since the last checkpoint (idempotent: run twice, one
    checkpoint). Returns the new checkpoint's number, or None when nothing changed."""
    checkpoint = checkpoint_if_changed()
    return checkpoint.number if checkpoint is not None else None
