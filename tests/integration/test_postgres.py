"""Only on PostgreSQL: the trigger that refuses rewriting the audit log, and races between
concurrent writers (SQLite serialises writers, so it cannot show them)."""

import threading
from collections.abc import Callable

import pytest
from django.db import DatabaseError, connection, connections, transaction

from consortium.audit.log import record, verify_chain
from consortium.audit.models import AuditEvent
from studies import services
from studies.choices import ApprovalDecision, EventKind, StudyStatus
from studies.events import publish
from studies.models import Approval, StudyEvent
from tests.base import draft_study, make_personas
from tests.support import study_in

pytestmark = pytest.mark.integration

TABLE = AuditEvent._meta.db_table


@pytest.fixture(autouse=True)
def _postgresql_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL only: `make test` runs the suite again on PostgreSQL")


@pytest.mark.parametrize("sql", [f"UPDATE {TABLE} SET actor_label = 'mallory' WHERE seq = 1",
                                 f"DELETE FROM {TABLE} WHERE seq = 1"])
def test_it_refuses_raw_updates_and_deletes_of_audit_events_in_the_database(db, sql):
    record(actor=None, action="tests.system.tick")
    with pytest.raises(DatabaseError, match="audit events are append-only"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql)
    event = AuditEvent.objects.get(seq=1)
    assert event.actor_label == "system"
    assert verify_chain().intact


def in_threads(count: int, work: Callable[[int], None]) -> list[BaseException]:
    """Run `work(i)` in `count` threads released together; each uses and closes its own connection."""
    barrier, errors = threading.Barrier(count), []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            work(i)
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a writer hung"
    return errors


def test_it_keeps_the_chain_gapless_under_concurrent_writers(transactional_db):
    writers, each = 8, 5

    def write(i: int) -> None:
        for n in range(each):
            with transaction.atomic():
                record(actor=None, action="tests.concurrent.write", details={"writer": i, "n": n})

    assert in_threads(writers, write) == []
    seqs = list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, writers * each + 1))
    report = verify_chain()
    assert report.intact and report.verified == writers * each


def test_it_approves_once_when_the_pi_and_the_dpo_approve_at_the_same_moment(transactional_db):
    p = make_personas()
    study = study_in(p, StudyStatus.SUBMITTED)
    approvers = [p.pi, p.dpo]

    assert in_threads(2, lambda i: services.study_approve(actor=approvers[i], study=study)) == []
    study.refresh_from_db()
    assert study.status == StudyStatus.APPROVED
    live = Approval.objects.filter(study=study, decision=ApprovalDecision.APPROVED, voided_at__isnull=True)
    assert sorted(live.values_list("role", flat=True)) == ["dpo", "pi"]
    assert AuditEvent.objects.filter(action="studies.study.approved", study_id=study.pk).count() == 1
    assert AuditEvent.objects.filter(action="studies.study.approval_given", study_id=study.pk).count() == 2
    assert verify_chain().intact


def test_it_lets_only_one_of_two_racing_dpos_give_the_dpo_approval(transactional_db):
    p = make_personas()
    study = study_in(p, StudyStatus.SUBMITTED)
    dpos = [p.dpo, p.dpo2]
    errors = in_threads(2, lambda i: services.study_approve(actor=dpos[i], study=study))
    assert [type(e).__name__ for e in errors] == ["Conflict"]
    assert Approval.objects.filter(study=study, role="dpo", voided_at__isnull=True).count() == 1
    assert AuditEvent.objects.filter(action="studies.study.approve", outcome="denied").count() == 1
    assert verify_chain().intact


def test_concurrent_publishers_give_a_study_one_gapless_event_sequence_without_deadlock(transactional_db):
    """Half the writers audit then publish, half publish then audit: one lock order, so no deadlock,
    and the study's events are numbered 1..n in commit order."""
    study = draft_study(make_personas())

    def work(i: int) -> None:
        with transaction.atomic():
            if i % 2:
                record(actor=None, action="tests.system.tick", study=study)
                publish(study.pk, EventKind.STUDY_CHANGED, {"writer": i})
            else:
                publish(study.pk, EventKind.STUDY_CHANGED, {"writer": i})
                record(actor=None, action="tests.system.tick", study=study)

    assert in_threads(12, work) == []
    rows = list(StudyEvent.objects.filter(study=study).order_by("seq").values_list("seq", "payload__writer"))
    assert [seq for seq, _ in rows] == list(range(1, 13))
    assert sorted(writer for _, writer in rows) == list(range(12))
