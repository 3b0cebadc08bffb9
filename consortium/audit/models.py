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


class AppendOnlyQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError(f"{self.model._meta.verbose_name_plural} are append-only: they cannot be updated.")

    def delete(self):
        raise AppendOnlyError(f"{self.model._meta.verbose_name_plural} are append-only: they cannot be deleted.")


class AppendOnlyModel(models.Model):
    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError(f"{self._meta.verbose_name_plural} are append-only: they cannot be updated.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError(f"{self._meta.verbose_name_plural} are append-only: they cannot be deleted.")


class AuditCheckpoint(AppendOnlyModel):
    """A signed statement of the audit log's head: `tree_size` events, event #tree_size's hash
    (`chain_head`), the RFC 6962 Merkle root over their leaves, when, and by which key
    (`consortium.evidence.checkpoint`). `document` is the signed checkpoint exactly as published;
    the columns beside it are for queries. `compact_range` (the tree's O(log n) edge hashes) lets the
    next checkpoint extend the tree with only the new events. Written only by
    `consortium.audit.checkpoints.checkpoint_sign`; never changed.
    """

    number = models.PositiveBigIntegerField(unique=True, editable=False)
    tree_size = models.PositiveBigIntegerField(editable=False)
    chain_head = models.CharField(max_length=64)
    merkle_root = models.CharField(max_length=64)
    issued_at = models.DateTimeField()
    key_fingerprint = models.CharField(max_length=80)
    signature = models.CharField(max_length=100)
    reason = models.CharField(max_length=32, help_text="What asked for it: interval, export, manual.")
    compact_range = models.JSONField(default=list)
    document = models.JSONField()

    class Meta:
        ordering = ["-number"]
        indexes = [models.Index(fields=["tree_size"])]

    def __str__(self) -> str:
        return f"checkpoint {self.number}: {self.tree_size} events"


class AuditTreeNode(AppendOnlyModel):
    """A stored perfect subtree of the audit log's Merkle tree: the hash of leaves
    [index * 2**level, (index + 1) * 2**level). Only levels from `consortium.audit.tree.STORED_LEVEL` up are
    stored (smaller subtrees are recomputed from their few events), so proofs cost O(log n) lookups."""

    level = models.PositiveSmallIntegerField()
    index = models.PositiveBigIntegerField()
    hash = models.CharField(max_length=64)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["level", "index"], name="audit_tree_node_unique")]

    def __str__(self) -> str:
        return f"node {self.level}/{self.index}"
