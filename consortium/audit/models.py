"""What spans the consortium: the append-only, hash-chained audit log."""

from django.conf import settings
from django.db import models


class AuditActorKind(models.TextChoices):
    USER = "user", "User"
    AGENT = "agent", "Site agent"
    SYSTEM = "system", "System"


class AuditOutcome(models.TextChoices):
    OK = "ok", "Done"
    DENIED = "denied", "Denied"


class AppendOnlyError(Exception):
    """Raised when code tries to change or remove an audit event."""


class AuditEventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("Audit events are append-only: they cannot be updated.")

    def delete(self):
        raise AppendOnlyError("Audit events are append-only: they cannot be deleted.")


class AuditEvent(models.Model):
    """One recorded fact: who did (or tried, or read) what, to which object, in which study and site.

    `hash` is SHA-256 over the canonical encoding of the event and `prev_hash`, so
    editing, deleting or inserting a row breaks the chain (`manage.py verify_audit`).
    Written only through `consortium.audit.log.record`; on PostgreSQL a trigger also
    refuses UPDATE and DELETE.
    """

    seq = models.PositiveBigIntegerField(unique=True, editable=False)
    created_at = models.DateTimeField(editable=False)
    actor_kind = models.CharField(max_length=16, choices=AuditActorKind.choices)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    actor_label = models.CharField(max_length=200)
    action = models.CharField(max_length=100, db_index=True)
    outcome = models.CharField(max_length=16, choices=AuditOutcome.choices, default=AuditOutcome.OK)
    object_type = models.CharField(max_length=100, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=300, blank=True)
    # Plain ids, not foreign keys: the audit log sits below every app and outlives what it describes.
    study_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    site_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    details = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["seq"]
        indexes = [models.Index(fields=["study_id", "seq"])]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} by {self.actor_label}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError("Audit events are append-only: they cannot be updated.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("Audit events are append-only: they cannot be deleted.")
