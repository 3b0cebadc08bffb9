"""Signed checkpoints of the audit log: the service that signs the chain's head, and the reads of them.

A checkpoint is the coordinator's signed word that its log had `seq` events, ending with `chain_head`, with
Merkle root `merkle_root` (docs/evidence.md). Sites keep the ones they see and ask for a consistency proof
from each to the next, so a history rewritten later is caught by a checkpoint issued before.

Signing a checkpoint writes no audit event: the checkpoint table is its own append-only, signed record,
and an event per checkpoint would move the head it has just signed (a periodic checkpoint would never
find the log idle). Reads of checkpoints by people are audited by the API, like reads of the log.
"""

import logging
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from consortium.audit import tree as audit_tree
from consortium.audit.keys import SigningKeyMissing, public_key, signing_key
from consortium.audit.log import actor_ref, record
from consortium.audit.models import AuditActorKind, AuditCheckpoint, AuditEvent
from consortium.audit.permissions import can_read_audit
from consortium.errors import DomainError, Forbidden, ValidationFailed
from consortium.evidence import merkle, signing
from consortium.evidence.canonical import GENESIS_HASH
from consortium.evidence.checkpoint import sign_checkpoint

logger = logging.getLogger(__name__)

# Serialises signers on PostgreSQL (SQLite's IMMEDIATE transactions already do). An export takes it before the
# audit chain's lock (it records its event, then signs the head that includes it); no other writer takes it.
_CHECKPOINT_LOCK_KEY = 0x0C0A5D18


def lock_checkpoints() -> None:
    """Take the signers' lock until commit (PostgreSQL). Before the audit chain's lock, never after it."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHECKPOINT_LOCK_KEY])


class HistoryRewritten(Exception):
    """The log no longer extends the latest checkpoint: someone changed events it covers."""


class CheckpointUnavailable(DomainError):
    """No checkpoint can be signed now (no key configured, or the log no longer extends the last one)."""

    status = 503
    code = "checkpoint_unavailable"


def checkpoint_sign(*, reason: str) -> AuditCheckpoint:
    """Sign the audit chain's current head, extending the stored Merkle tree with the events since the last
    checkpoint. Refuses (HistoryRewritten) when the log no longer extends the last checkpoint."""
    key = signing_key()  # fails loudly, before any work, when no key is configured
    with transaction.atomic():
        lock_checkpoints()
        previous = AuditCheckpoint.objects.order_by("-number").first()
        head = AuditEvent.objects.order_by("-seq").values("seq", "hash").first() or {"seq": 0, "hash": GENESIS_HASH}
        builder = _builder_from(previous, head["seq"])
        audit_tree.extend(builder, head["seq"])
        document = sign_checkpoint(key, log_id=settings.AUDIT_LOG_ID, seq=head["seq"], chain_head=head["hash"],
                                   merkle_root=builder.root())
        checkpoint = AuditCheckpoint(
            number=(previous.number + 1) if previous else 1, tree_size=head["seq"], chain_head=head["hash"],
            merkle_root=document["merkle_root"], issued_at=document["issued_at"],
            key_fingerprint=document["key_fingerprint"], signature=document["signature"], reason=reason,
            compact_range=[h.hex() for h in builder.hashes], document=document)
        checkpoint.save(force_insert=True)
    logger.info("Signed audit checkpoint %s: %s events, root %s", checkpoint.number, checkpoint.tree_size,
                checkpoint.merkle_root)
    return checkpoint


def _builder_from(previous: AuditCheckpoint | None, head_seq: int) -> audit_tree.TreeBuilder:
    if previous is None:
        return audit_tree.TreeBuilder()
    size = previous.tree_size
    if size:
        current = AuditEvent.objects.filter(seq=size).values_list("hash", flat=True).first()
        if size > head_seq or current != previous.chain_head:
            raise HistoryRewritten(
                f"The audit log no longer extends checkpoint {previous.number}: event #{size} "
                f"{'is missing' if current is None else 'has another hash than the checkpoint signed'}.")
    return audit_tree.TreeBuilder(size, [bytes.fromhex(h) for h in previous.compact_range])


def export_checkpoint() -> AuditCheckpoint:
    """A fresh checkpoint for an export; a refusal to sign becomes a clear 503 for the API and pages."""
    try:
        return checkpoint_sign(reason="export")
    except (SigningKeyMissing, HistoryRewritten) as exc:
        raise CheckpointUnavailable(f"The export needs a signed checkpoint, and none can be signed: {exc}") from exc


def checkpoint_if_changed() -> AuditCheckpoint | None:
    """The periodic checkpoint: signed only when events were added since the last one (idempotent)."""
    latest = AuditCheckpoint.objects.order_by("-number").values("tree_size").first()
    head = AuditEvent.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
    if latest is not None and latest["tree_size"] == head:
        return None
    return checkpoint_sign(reason="interval")


# --- Reads ----------------------------------------------------------------------------------------------------


def require_checkpoint_reader(user: Any) -> None:
    """Readers of the log (auditors, DPOs, consortium admins) and site agents (witnesses) read checkpoints."""
    if not (can_read_audit(user) or actor_ref(user).kind == AuditActorKind.AGENT):
        raise Forbidden("Only auditors, DPOs, consortium admins and site agents read the audit checkpoints.")


def checkpoints_read(*, actor: Any, action: str, **details: Any) -> None:
    """Record a person's read of checkpoints or proofs; a site agent's witness poll is not recorded (module doc)."""
    if actor_ref(actor).kind != AuditActorKind.AGENT:
        record(actor=actor, action=action, details={"via": "api", **details})


def public_key_document() -> dict[str, Any]:
    """The public key as published: PEM, fingerprint, algorithm and the log it signs."""
    try:
        key = public_key()
    except SigningKeyMissing as exc:
        raise CheckpointUnavailable(str(exc)) from exc
    return {"algorithm": "Ed25519", "log_id": settings.AUDIT_LOG_ID, "fingerprint": signing.fingerprint(key),
            "public_key_pem": signing.public_key_pem(key).decode("ascii")}


def checkpoints_newest_first():
    return AuditCheckpoint.objects.order_by("-number")


def latest_checkpoint() -> AuditCheckpoint | None:
    return AuditCheckpoint.objects.order_by("-number").first()


def consistency_proof(first: int, second: int | None = None) -> dict[str, Any]:
    """The RFC 6962 proof that the log's first `first` events are a prefix of its first `second` (default: the
    latest checkpoint's size), for sizes up to the latest checkpoint's (the tree is stored that far)."""
    latest = AuditCheckpoint.objects.order_by("-number").values_list("tree_size", flat=True).first() or 0
    second = latest if second is None else second
    if not 0 <= first <= second:
        raise ValidationFailed("first must not be larger than second.", code="invalid_range")
    if second > latest:
        raise ValidationFailed(f"second ({second}) is beyond the latest checkpoint's size ({latest}).",
                               code="beyond_checkpoint")
    proof = merkle.consistency_proof(first, second, audit_tree.StoredTree().subtree_hash)
    return {"first": first, "second": second, "proof": [h.hex() for h in proof]}


def inclusion_proof(seq: int, tree_size: int) -> list[str]:
    """The audit path of event `seq` in the tree of `tree_size` events (up to the latest checkpoint's size)."""
    return [h.hex() for h in merkle.inclusion_proof(seq - 1, tree_size, audit_tree.StoredTree().subtree_hash)]
