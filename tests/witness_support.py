"""A dishonest operator with the database: rewrite the audit log's history so that `verify_audit` passes
again (edit one event, recompute every later hash), and forget the checkpoints and tree that would betray it."""

import json

from django.db import connection

from consortium.audit.log import compute_hash, verify_chain
from consortium.audit.models import AuditCheckpoint, AuditEvent, AuditTreeNode
from tests.consortium.test_audit import TABLE, tamper


def rewrite_history(*, edit_seq: int) -> None:
    """Edit event `edit_seq`'s details and recompute its hash and every later one: the chain verifies again."""
    previous = AuditEvent.objects.get(seq=edit_seq - 1).hash if edit_seq > 1 else "0" * 64
    for event in AuditEvent.objects.filter(seq__gte=edit_seq).order_by("seq"):
        if event.seq == edit_seq:
            event.details = {"forged": True}
        event.prev_hash = previous
        event.hash = previous = compute_hash(event)
        tamper(f"UPDATE {TABLE} SET details = %s, prev_hash = %s, hash = %s WHERE seq = %s",
               [json.dumps(event.details), event.prev_hash, event.hash, event.seq])
    assert verify_chain().intact


def forget_checkpoints() -> None:
    """Delete every checkpoint and stored tree node, so the server signs the rewritten log from scratch."""
    with connection.cursor() as cursor:
        for model in (AuditCheckpoint, AuditTreeNode):
            table = model._meta.db_table
            if connection.vendor == "postgresql":
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
                cursor.execute(f"ALTER TABLE {table} DISABLE TRIGGER {table}_append_only")
                cursor.execute("SET CONSTRAINTS ALL DEFERRED")
            cursor.execute(f"DELETE FROM {table}")
