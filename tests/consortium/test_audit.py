"""The audit log: append-only, hash-chained, verifiable; `verify_audit` catches edited, deleted,
inserted and cut-off events."""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from consortium.audit.log import GENESIS_HASH, audited_service, compute_hash, record, verify_chain
from consortium.audit.models import AppendOnlyError, AuditActorKind, AuditEvent, AuditOutcome
from consortium.errors import Conflict, InvalidTransition
from studies import services
from studies.models import Study
from tests.base import active_study, draft_study
from tests.support import events_after, last_seq

TABLE = AuditEvent._meta.db_table


def test_it_chains_each_event_to_the_one_before_with_gapless_sequence_numbers(p):
    draft_study(p)
    record(actor=None, action="tests.system.tick", details={"n": 1, "when": timezone.now()})
    events = list(AuditEvent.objects.order_by("seq"))
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].prev_hash == GENESIS_HASH
    for before, after in zip(events, events[1:], strict=False):
        assert after.prev_hash == before.hash
    for event in events:
        event.refresh_from_db()  # what is stored is exactly what was hashed
        assert compute_hash(event) == event.hash
    system = events[-1]
    assert (system.actor_kind, system.actor_label, system.actor_user_id) == (AuditActorKind.SYSTEM, "system", None)


def test_it_records_the_actor_object_study_and_site(p):
    study = draft_study(p)
    mark = last_seq()
    participation = services.participation_invite(actor=p.pi, study=study, site=p.site_a)
    (event,) = events_after(mark)
    assert (event.actor_kind, event.actor_user_id, event.actor_label) == (AuditActorKind.USER, p.pi.pk, "pi")
    assert (event.object_type, event.object_id) == ("studies.participation", str(participation.pk))
    assert (event.study_id, event.site_id, event.outcome) == (study.pk, p.site_a.pk, AuditOutcome.OK)


def test_it_refuses_to_update_or_delete_an_event_through_the_model_or_a_queryset(p):
    event = record(actor=p.pi, action="tests.thing.done")
    event.actor_label = "someone else"
    with pytest.raises(AppendOnlyError, match="cannot be updated"):
        event.save()
    with pytest.raises(AppendOnlyError, match="cannot be deleted"):
        event.delete()
    with pytest.raises(AppendOnlyError, match="cannot be updated"):
        AuditEvent.objects.filter(pk=event.pk).update(actor_label="x")
    with pytest.raises(AppendOnlyError, match="cannot be deleted"):
        AuditEvent.objects.filter(pk=event.pk).delete()
    event.refresh_from_db()
    assert event.actor_label == "pi"


@audited_service("tests.partial.attempt")
def half_done_then_refused(*, actor, study: Study) -> None:
    """Writes a change and an event, then refuses: both must roll back, leaving only the denial."""
    Study.objects.filter(pk=study.pk).update(title="Changed")
    record(actor=actor, action="tests.partial.written", study=study)
    raise Conflict("Changed my mind.", study=study)


def test_it_rolls_back_a_refused_service_leaving_only_the_denial(p):
    study = draft_study(p)
    mark = last_seq()
    with pytest.raises(Conflict):
        half_done_then_refused(actor=p.pi, study=study)
    study.refresh_from_db()
    assert study.title == "Sepsis risk"
    (denial,) = events_after(mark)
    assert denial.seq == mark + 1  # the rolled-back event's number is reused: no gap
    assert (denial.action, denial.outcome, denial.study_id) == ("tests.partial.attempt", AuditOutcome.DENIED, study.pk)
    assert denial.details == {"reason": "Changed my mind.", "code": "conflict"}
    assert verify_chain().intact


def test_it_verifies_the_chain_after_a_full_workflow(p):
    study = active_study(p)
    services.study_suspend(actor=p.dpo, study=study, justification="Check.")
    with pytest.raises(InvalidTransition):  # the denial joins the chain too
        services.study_activate(actor=p.pi, study=study)
    report = verify_chain()
    assert report.intact
    assert report.verified == AuditEvent.objects.count() > 20
    assert report.head_hash == AuditEvent.objects.order_by("-seq").first().hash


# --- verify_audit ---------------------------------------------------------------------------------


def run_verify(*args: str) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    try:
        call_command("verify_audit", *args, stdout=out, stderr=err)
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, out.getvalue(), err.getvalue()


def tamper(sql: str, params: list | None = None) -> None:
    """Change the table behind the application's back, as a DBA could (bypassing the trigger)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Deferred foreign-key checks pending in the test's transaction would block ALTER TABLE.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute(f"ALTER TABLE {TABLE} DISABLE TRIGGER consortium_audit_append_only")
            cursor.execute("SET CONSTRAINTS ALL DEFERRED")
        cursor.execute(sql, params or [])


@pytest.fixture
def chain(p) -> int:
    """A few real events; returns how many."""
    study = draft_study(p)
    services.participation_invite(actor=p.pi, study=study, site=p.site_a)
    services.study_submit(actor=p.pi, study=study)
    count = AuditEvent.objects.count()
    assert count >= 6
    return count


def test_it_exits_0_and_prints_the_count_when_the_chain_is_intact(chain):
    code, out, err = run_verify()
    assert (code, err) == (0, "")
    assert f"Audit chain intact: {chain} events verified." in out


def test_it_names_the_first_broken_seq_when_a_row_was_edited(chain):
    tamper(f"UPDATE {TABLE} SET actor_label = %s WHERE seq = %s", ["mallory", 3])
    code, out, err = run_verify()
    assert code == 1 and out == ""
    assert "BROKEN at event #3: its content does not match its hash. 2 events before it verified." in err


def test_it_names_the_first_broken_seq_when_details_were_edited(chain):
    event = AuditEvent.objects.get(seq=4)
    tamper(f"UPDATE {TABLE} SET details = %s WHERE seq = 4", ['{"forged": true}'])
    code, _, err = run_verify()
    assert code == 1 and "BROKEN at event #4" in err
    assert event.details != {"forged": True}


def test_it_names_the_first_broken_seq_when_a_middle_row_was_deleted(chain):
    tamper(f"DELETE FROM {TABLE} WHERE seq = %s", [3])
    code, _, err = run_verify()
    assert code == 1
    assert "BROKEN at event #3: event #3 is missing." in err


def test_it_names_the_first_broken_seq_when_a_row_was_inserted(chain):
    # A careful forger renumbers the later rows and chains the forged #3 correctly to #2:
    # the original #3 (now #4) no longer chains to what precedes it.
    tamper(f"UPDATE {TABLE} SET seq = seq + 1000 WHERE seq >= 3")
    tamper(f"UPDATE {TABLE} SET seq = seq - 999 WHERE seq >= 1000")
    two = AuditEvent.objects.get(seq=2)
    forged = AuditEvent(seq=3, created_at=two.created_at, actor_kind=AuditActorKind.USER, actor_label="pi",
                        action="studies.study.approved", outcome=AuditOutcome.OK, object_type="", object_id="",
                        object_repr="", details={}, prev_hash=two.hash)
    forged.hash = compute_hash(forged)
    tamper(
        f"INSERT INTO {TABLE} (seq, created_at, actor_kind, actor_label, action, outcome, object_type, object_id, "
        "object_repr, details, prev_hash, hash) VALUES (%s, %s, %s, %s, %s, %s, '', '', '', %s, %s, %s)",
        [3, forged.created_at, forged.actor_kind, forged.actor_label, forged.action, forged.outcome, "{}",
         forged.prev_hash, forged.hash],
    )
    assert AuditEvent.objects.count() == chain + 1
    code, _, err = run_verify()
    assert code == 1
    assert "BROKEN at event #4: does not chain to the event before it. 3 events before it verified." in err


def test_it_names_the_first_broken_seq_when_a_row_with_a_made_up_hash_was_appended(chain):
    last = AuditEvent.objects.order_by("-seq").first()
    tamper(
        f"INSERT INTO {TABLE} (seq, created_at, actor_kind, actor_label, action, outcome, object_type, object_id, "
        "object_repr, details, prev_hash, hash) VALUES (%s, %s, 'user', 'pi', 'x', 'ok', '', '', '', '{}', %s, %s)",
        [chain + 1, timezone.now(), last.hash, "f" * 64],
    )
    code, _, err = run_verify()
    assert code == 1 and f"BROKEN at event #{chain + 1}: its content does not match its hash" in err


def test_it_catches_events_cut_from_the_end_with_expect_head(chain):
    code, out, _ = run_verify()
    head = out.strip().rsplit("Head: ", 1)[1]
    assert head.startswith(f"{chain}:")
    assert run_verify("--expect-head", head)[0] == 0

    tamper(f"DELETE FROM {TABLE} WHERE seq > %s", [chain - 2])
    code, out, _ = run_verify()
    assert code == 0 and f"{chain - 2} events verified" in out  # the shorter chain is consistent in itself...
    code, _, err = run_verify("--expect-head", head)
    assert code == 1  # ...but the head recorded earlier is gone
    assert f"BROKEN at event #{chain}: it is missing or differs from the recorded head." in err


def test_it_refuses_a_malformed_expected_head(chain):
    with pytest.raises(CommandError, match="SEQ:HASH"):
        call_command("verify_audit", "--expect-head", "latest", stdout=StringIO())
