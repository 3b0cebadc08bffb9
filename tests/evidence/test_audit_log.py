"""The real audit log, written through `consortium.audit.log.record`, verified by the Django-free code:
its hashes, an export of it, and a rewrite of its history that `verify_audit` cannot see."""

import json

import pytest
from django.utils import timezone

from consortium.audit.log import compute_hash, record, verify_chain
from consortium.audit.models import AuditEvent
from consortium.evidence import signing
from consortium.evidence.bundle import write_bundle
from consortium.evidence.canonical import (
    EXPORT_FIELDS,
    GENESIS_HASH,
    LEAF_FIELDS,
    event_hash,
    event_leaf_hash,
    format_timestamp,
)
from consortium.evidence.checkpoint import sign_checkpoint
from consortium.evidence.errors import EvidenceError
from consortium.evidence.merkle import MerkleTree
from consortium.evidence.verifier import verify_bundle
from studies import services
from tests.base import draft_study
from tests.consortium.test_audit import TABLE, tamper

KEY = signing.generate_private_key()


class AuditLogSource:
    """The audit table as an export reads it (the Django export will keep the tree's nodes stored)."""

    def __init__(self) -> None:
        self.tree = MerkleTree(event_leaf_hash(row) for row in self._rows(AuditEvent.objects.all()))

    @staticmethod
    def _rows(queryset, fields=EXPORT_FIELDS):
        for row in queryset.order_by("seq").values(*fields).iterator():
            yield {**row, "created_at": format_timestamp(row["created_at"])}

    def events(self, first_seq, last_seq):
        return self._rows(AuditEvent.objects.filter(seq__gte=first_seq, seq__lte=last_seq))

    def leaf(self, seq):
        return next(self._rows(AuditEvent.objects.filter(seq=seq), LEAF_FIELDS))

    def subtree_hash(self, start, end):
        return self.tree.subtree_hash(start, end)

    def checkpoint(self, seq=None):
        seq = self.tree.size if seq is None else seq
        head = AuditEvent.objects.get(seq=seq).hash if seq else GENESIS_HASH
        return sign_checkpoint(KEY, log_id="consortium-audit", seq=seq, chain_head=head,
                               merkle_root=self.tree.root(seq))


@pytest.fixture
def chain(p) -> int:
    study = draft_study(p)
    services.participation_invite(actor=p.pi, study=study, site=p.site_a)
    services.participation_invite(actor=p.pi, study=study, site=p.site_b)
    record(actor=p.dpo, action="tests.export.read", study=study, site=p.site_b,
           details={"when": timezone.now(), "text": "=1+1 «Zürich»", "n": [1, 2.5, None]})
    record(actor=None, action="tests.system.tick")
    return AuditEvent.objects.count()


def test_it_verifies_a_chain_written_by_record_with_the_django_free_hash(chain):
    previous = GENESIS_HASH
    rows = list(AuditLogSource._rows(AuditEvent.objects.all()))
    assert len(rows) == chain >= 8
    for row in rows:
        assert event_hash(row) == row["hash"]
        assert row["prev_hash"] == previous
        previous = row["hash"]


@pytest.mark.parametrize("events_format", ["jsonl", "csv"])
def test_it_exports_the_real_log_and_verifies_it_offline(chain, tmp_path, events_format):
    source = AuditLogSource()
    study_id = AuditEvent.objects.exclude(study_id=None).values_list("study_id", flat=True).first()
    for name, options in {"all": {}, "study": {"filters": {"study_id": study_id}, "first_seq": 2},
                          "middle": {"first_seq": 3, "last_seq": chain - 2}}.items():
        destination = tmp_path / f"{name}.zip"
        write_bundle(destination, source, key=KEY, checkpoint=source.checkpoint(), events_format=events_format,
                     earlier_checkpoints=[source.checkpoint(2)], **options)
        lines: list[str] = []
        summary = verify_bundle(destination, KEY.public_key(), report=lines.append,
                                held_checkpoints=[source.checkpoint(2)])
        assert summary.checkpoint.seq == chain
        assert lines[-1].startswith("consistency: held checkpoint #2")


def test_a_rewritten_history_that_verify_audit_accepts_is_caught_by_an_earlier_checkpoint(chain, tmp_path):
    source = AuditLogSource()
    kept = source.checkpoint()  # signed before the rewrite: the sites fetched it at their last poll
    # A DBA edits event #3 and recomputes every later hash: the chain verifies again.
    previous = AuditEvent.objects.get(seq=2).hash
    for event in AuditEvent.objects.filter(seq__gte=3).order_by("seq"):
        if event.seq == 3:
            event.details = {"forged": True}
        event.prev_hash = previous
        event.hash = previous = compute_hash(event)
        tamper(f"UPDATE {TABLE} SET details = %s, prev_hash = %s, hash = %s WHERE seq = %s",
               [json.dumps(event.details), event.prev_hash, event.hash, event.seq])
    assert verify_chain().intact
    rewritten = AuditLogSource()
    old_export = tmp_path / "old"
    write_bundle(old_export, rewritten, key=KEY, checkpoint=kept)
    with pytest.raises(EvidenceError, match=f"chain: event #{chain}'s hash differs from the checkpoint's chain head"):
        verify_bundle(old_export, KEY.public_key())
    fresh = tmp_path / "fresh"
    write_bundle(fresh, rewritten, key=KEY, checkpoint=rewritten.checkpoint(), earlier_checkpoints=[kept])
    with pytest.raises(EvidenceError, match="the history it vouched for was rewritten since"):
        verify_bundle(fresh, KEY.public_key())
