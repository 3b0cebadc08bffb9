"""The study's life: create, submit, approve, activate, suspend, resume, close; every step allowed
and refused, each audited."""

import pytest
from django.core.exceptions import ValidationError

from consortium.audit.models import AuditOutcome
from consortium.errors import Forbidden, InvalidTransition, NotFound, ValidationFailed
from studies import services
from studies.choices import StudyStatus
from studies.governance import evaluate
from studies.models import Approval
from studies.permissions import can_lead
from tests.base import DUA_TEXT, draft_study
from tests.support import actions_after, events_after, last_seq, only_event, refused, study_in

S = StudyStatus


def test_it_creates_a_draft_led_by_its_pi_with_dua_v1(p):
    mark = last_seq()
    study = draft_study(p, rounds=5)
    assert study.status == S.DRAFT
    assert can_lead(p.pi, study)
    (version,) = study.agreement_versions.all()
    assert (version.version, version.text) == (1, DUA_TEXT)
    created, published = events_after(mark)
    assert (created.action, created.study_id, created.actor_user_id) == ("studies.study.created", study.pk, p.pi.pk)
    assert created.details["protocol"]["rounds"] == 5
    assert created.details["protocol_sha256"] == study.protocol_sha256()
    assert (published.action, published.details["version"]) == ("studies.agreement.published", 1)


@pytest.mark.parametrize("who", ["dpo", "site_a_admin", "auditor", "outsider"])
def test_it_refuses_to_create_a_study_for_anyone_but_a_pi(p, who):
    with refused(Forbidden, "Only principal investigators", action="studies.study.create") as denial:
        services.study_create(actor=getattr(p, who), title="X", clinical_question="Q?")
    assert denial.event.actor_user_id == getattr(p, who).pk


def test_it_refuses_unknown_protocol_fields(p):
    with refused(ValidationFailed, "Unknown protocol fields: colour", action="studies.study.create"):
        services.study_create(actor=p.pi, title="X", clinical_question="Q?", colour="red")


def test_it_refuses_invalid_protocol_values_and_audits_the_attempt(p):
    with refused(ValidationError, "quorum", action="studies.study.create"):
        services.study_create(actor=p.pi, title="X", clinical_question="Q?", quorum=0)
    study = study_in(p, S.APPROVED)
    with refused(ValidationError, "rounds", action="studies.study.update") as denial:
        services.study_update_protocol(actor=p.pi, study=study, rounds=0)
    assert denial.event.study_id == study.pk


def test_it_submits_a_draft_for_approval(p):
    study = draft_study(p)
    mark = last_seq()
    services.study_submit(actor=p.pi, study=study)
    study.refresh_from_db()
    assert (study.status, study.status_changed_by) == (S.SUBMITTED, p.pi)
    event = only_event(mark, "studies.study.submitted")
    assert (event.details["before"], event.details["after"]) == (S.DRAFT, S.SUBMITTED)
    assert event.details["protocol_sha256"] == study.protocol_sha256()


def test_it_refuses_to_submit_twice(p):
    study = study_in(p, S.SUBMITTED)
    with refused(InvalidTransition, "A study that is awaiting approval cannot become awaiting approval",
                 action="studies.study.submit") as denial:
        services.study_submit(actor=p.pi, study=study)
    assert denial.event.study_id == study.pk


def test_it_refuses_to_submit_without_an_agreement(p):
    study = services.study_create(actor=p.pi, title="No DUA", clinical_question="Q?")
    with refused(ValidationFailed, "Attach a data use agreement", action="studies.study.submit"):
        services.study_submit(actor=p.pi, study=study)


def test_it_refuses_submission_by_someone_who_sees_but_does_not_lead_the_study(p):
    study = draft_study(p)
    with refused(Forbidden, "Only the study's principal investigator may submit", action="studies.study.submit"):
        services.study_submit(actor=p.dpo, study=study)


def test_it_answers_not_found_to_someone_who_cannot_see_the_study(p):
    study = draft_study(p)
    with refused(NotFound, "No such study", action="studies.study.submit") as denial:
        services.study_submit(actor=p.outsider, study=study)
    assert denial.event.study_id == study.pk


def test_it_walks_draft_to_active_to_suspended_and_back_to_active_with_both_approvals(p):
    study = study_in(p, S.APPROVED)
    mark = last_seq()
    services.study_activate(actor=p.pi, study=study)
    event = only_event(mark, "studies.study.activated")
    assert (event.details["before"], event.details["after"]) == (S.APPROVED, S.ACTIVE)

    mark = last_seq()
    services.study_suspend(actor=p.dpo, study=study, justification="  Possible re-identification.  ")
    study.refresh_from_db()
    assert (study.status, study.status_reason, study.status_changed_by) == (
        S.SUSPENDED, "Possible re-identification.", p.dpo)
    event = only_event(mark, "studies.study.suspended")
    assert event.details["justification"] == "Possible re-identification."
    assert (event.details["before"], event.details["after"]) == (S.ACTIVE, S.SUSPENDED)
    assert len(event.details["voided_approval_ids"]) == 2
    assert not Approval.objects.filter(study=study, voided_at__isnull=True).exists()

    # Resuming takes both approvals again: one is not enough.
    services.study_approve(actor=p.pi, study=study)
    study.refresh_from_db()
    assert study.status == S.SUSPENDED
    mark = last_seq()
    services.study_approve(actor=p.dpo, study=study)
    study.refresh_from_db()
    assert study.status == S.ACTIVE
    assert actions_after(mark) == ["studies.study.approval_given", "studies.study.resumed"]
    resumed = events_after(mark)[1]
    assert (resumed.details["before"], resumed.details["after"]) == (S.SUSPENDED, S.ACTIVE)


def test_it_lets_the_pi_suspend_too(p):
    study = study_in(p, S.ACTIVE)
    services.study_suspend(actor=p.pi, study=study, justification="Emergency stop.")
    study.refresh_from_db()
    assert study.status == S.SUSPENDED
    assert not evaluate(study, "aggregate").allowed


def test_it_refuses_suspension_by_a_site_admin_who_sees_the_study(p):
    study = study_in(p, S.ACTIVE)
    with refused(Forbidden, "Only the study's PI or a DPO may suspend", action="studies.study.suspend"):
        services.study_suspend(actor=p.site_a_admin, study=study, justification="Because.")


def test_it_refuses_suspension_without_a_justification(p):
    study = study_in(p, S.ACTIVE)
    with refused(ValidationFailed, "Give a justification", action="studies.study.suspend"):
        services.study_suspend(actor=p.dpo, study=study, justification="   ")


@pytest.mark.parametrize("status", [S.DRAFT, S.SUBMITTED, S.SUSPENDED])
def test_it_refuses_to_suspend_a_study_that_is_not_running(p, status):
    study = study_in(p, status)
    label = status.label.lower()
    with refused(InvalidTransition, f"A study that is {label} cannot become suspended", action="studies.study.suspend"):
        services.study_suspend(actor=p.dpo, study=study, justification="Stop.")


@pytest.mark.parametrize("status", [S.DRAFT, S.SUBMITTED, S.ACTIVE, S.SUSPENDED])
def test_it_refuses_to_activate_a_study_that_is_not_approved(p, status):
    study = study_in(p, status)
    with refused(InvalidTransition, f"A study that is {status.label.lower()} cannot become active",
                 action="studies.study.activate"):
        services.study_activate(actor=p.pi, study=study)


def test_it_refuses_activation_by_the_dpo(p):
    study = study_in(p, S.APPROVED)
    with refused(Forbidden, "Only the study's principal investigator may activate", action="studies.study.activate"):
        services.study_activate(actor=p.dpo, study=study)


def test_it_refuses_to_approve_a_draft(p):
    study = draft_study(p)
    with refused(InvalidTransition, "Only a study awaiting approval.*this one is draft",
                 action="studies.study.approve"):
        services.study_approve(actor=p.pi, study=study)


@pytest.mark.parametrize("status", [S.DRAFT, S.SUBMITTED, S.APPROVED, S.ACTIVE, S.SUSPENDED])
def test_it_closes_a_study_from_every_open_state(p, status):
    study = study_in(p, status)
    mark = last_seq()
    services.study_close(actor=p.pi, study=study, reason=" Funding ended. ")
    study.refresh_from_db()
    assert (study.status, study.status_reason) == (S.CLOSED, "Funding ended.")
    event = only_event(mark, "studies.study.closed")
    assert event.details == {"before": status.value, "after": "closed", "reason": "Funding ended."}
    assert event.outcome == AuditOutcome.OK


def test_it_refuses_to_close_without_a_reason(p):
    study = draft_study(p)
    with refused(ValidationFailed, "Say why the study is being closed", action="studies.study.close"):
        services.study_close(actor=p.pi, study=study, reason="")


def test_it_refuses_closing_by_the_dpo(p):
    study = draft_study(p)
    with refused(Forbidden, "Only the study's principal investigator may close", action="studies.study.close"):
        services.study_close(actor=p.dpo, study=study, reason="No.")


CLOSED_ATTEMPTS = {
    "studies.study.submit": (InvalidTransition, "A study that is closed cannot become awaiting approval",
                             lambda p, s: services.study_submit(actor=p.pi, study=s)),
    "studies.study.activate": (InvalidTransition, "A study that is closed cannot become active",
                               lambda p, s: services.study_activate(actor=p.pi, study=s)),
    "studies.study.suspend": (InvalidTransition, "A study that is closed cannot become suspended",
                              lambda p, s: services.study_suspend(actor=p.dpo, study=s, justification="x")),
    "studies.study.close": (InvalidTransition, "A study that is closed cannot become closed",
                            lambda p, s: services.study_close(actor=p.pi, study=s, reason="again")),
    "studies.study.approve": (InvalidTransition, "this one is closed",
                              lambda p, s: services.study_approve(actor=p.dpo, study=s)),
    "studies.study.reject": (InvalidTransition, "this one is closed",
                             lambda p, s: services.study_reject(actor=p.dpo, study=s, reason="x")),
    "studies.study.update": (ValidationFailed, "A closed study cannot be changed",
                             lambda p, s: services.study_update_protocol(actor=p.pi, study=s, rounds=3)),
    "studies.agreement.publish": (InvalidTransition, "A closed study's agreement cannot change",
                                  lambda p, s: services.agreement_publish(actor=p.pi, study=s, text="New terms.")),
    "studies.participation.invite": (InvalidTransition, "A closed study cannot invite sites",
                                     lambda p, s: services.participation_invite(actor=p.pi, study=s, site=p.site_a)),
}


@pytest.mark.parametrize("action", CLOSED_ATTEMPTS)
def test_it_refuses_anything_on_a_closed_study(p, action):
    study = study_in(p, S.CLOSED)
    error, message, attempt = CLOSED_ATTEMPTS[action]
    with refused(error, message, action=action):
        attempt(p, study)


def test_it_records_who_viewed_a_study(p):
    study = draft_study(p)
    mark = last_seq()
    services.study_viewed(actor=p.auditor, study=study, via="page")
    event = only_event(mark, "studies.study.viewed")
    assert (event.actor_user_id, event.study_id, event.details) == (p.auditor.pk, study.pk, {"via": "page"})
