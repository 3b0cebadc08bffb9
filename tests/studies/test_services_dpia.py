"""The study's DPIA, kept by DPOs: draft, under review, approved or rejected, revised."""

from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from consortium.errors import Forbidden, InvalidTransition, NotFound, ValidationFailed
from studies import services
from studies.choices import DpiaStatus
from studies.models import Dpia
from tests.base import draft_study
from tests.support import last_seq, only_event, refused

D = DpiaStatus


@pytest.fixture
def study(p):
    return draft_study(p)


def save(p, study, **overrides) -> Dpia:
    values = {"summary": "Vitals, pseudonymised.", "risk_level": "medium",
              "valid_until": timezone.now() + timedelta(days=365), **overrides}
    return services.dpia_save(actor=p.dpo, study=study, **values)


def test_it_drafts_and_edits_a_dpia(p, study):
    mark = last_seq()
    dpia = save(p, study)
    assert (dpia.status, dpia.prepared_by, dpia.risk_level) == (D.DRAFT, p.dpo, "medium")
    event = only_event(mark, "studies.dpia.saved")
    assert event.details["before"] is None and event.details["after"]["status"] == "draft"

    mark = last_seq()
    save(p, study, risk_level="high")
    event = only_event(mark, "studies.dpia.saved")
    assert (event.details["before"]["risk_level"], event.details["after"]["risk_level"]) == ("medium", "high")
    assert Dpia.objects.get(study=study).risk_level == "high"


def test_it_walks_draft_to_review_to_approved(p, study):
    save(p, study)
    mark = last_seq()
    services.dpia_submit(actor=p.dpo, study=study)
    event = only_event(mark, "studies.dpia.submitted")
    assert (event.details["before"]["status"], event.details["after"]["status"]) == ("draft", "under_review")
    assert (Dpia.objects.get(study=study).submitted_by, Dpia.objects.get(study=study).decided_by) == (p.dpo, None)
    mark = last_seq()
    dpia = services.dpia_approve(actor=p.dpo2, study=study, comment="Fine.")
    assert (dpia.status, dpia.submitted_by, dpia.decided_by, dpia.comment) == (D.APPROVED, p.dpo, p.dpo2, "Fine.")
    assert dpia.decided_at is not None and dpia.submitted_at <= dpia.decided_at
    assert only_event(mark, "studies.dpia.approved").details["comment"] == "Fine."


def test_it_rejects_with_a_reason_and_revises_back_to_draft(p, study):
    save(p, study)
    services.dpia_submit(actor=p.dpo, study=study)
    with refused(ValidationFailed, "Give the reason for rejecting the DPIA", action="studies.dpia.reject"):
        services.dpia_reject(actor=p.dpo2, study=study, reason=" ")
    mark = last_seq()
    dpia = services.dpia_reject(actor=p.dpo2, study=study, reason="Re-identification risk unaddressed.")
    assert (dpia.status, dpia.comment) == (D.REJECTED, "Re-identification risk unaddressed.")
    only_event(mark, "studies.dpia.rejected")
    with refused(ValidationFailed, "Say why the DPIA is being revised", action="studies.dpia.revise"):
        services.dpia_revise(actor=p.dpo, study=study, reason="")
    mark = last_seq()
    assert services.dpia_revise(actor=p.dpo, study=study, reason="Addressing comments.").status == D.DRAFT
    only_event(mark, "studies.dpia.revised")


def test_it_revises_an_approved_dpia_back_to_draft(p, study):
    save(p, study)
    services.dpia_submit(actor=p.dpo, study=study)
    services.dpia_approve(actor=p.dpo2, study=study)
    mark = last_seq()
    assert services.dpia_revise(actor=p.dpo, study=study, reason="Annual renewal.").status == D.DRAFT
    event = only_event(mark, "studies.dpia.revised")
    assert (event.details["before"]["status"], event.details["after"]["status"]) == ("approved", "draft")
    assert event.details["comment"] == "Annual renewal."


def test_it_refuses_the_dpia_to_anyone_but_a_dpo(p, study):
    with refused(Forbidden, "Only data-protection officers keep the DPIA", action="studies.dpia.save"):
        services.dpia_save(actor=p.pi, study=study, summary="x", risk_level="low", valid_until=None)
    with refused(NotFound, "No such study", action="studies.dpia.save"):
        services.dpia_save(actor=p.outsider, study=study, summary="x", risk_level="low", valid_until=None)


def test_it_refuses_an_unknown_risk_level_and_a_naive_expiry(p, study):
    with refused(ValidationFailed, "Unknown risk level 'extreme'", action="studies.dpia.save"):
        save(p, study, risk_level="extreme")
    with refused(ValidationFailed, "The expiry needs a time zone", action="studies.dpia.save"):
        save(p, study, valid_until=datetime(2030, 1, 1, 12, 0))


def test_it_refuses_steps_without_a_dpia_or_a_summary(p, study):
    with refused(InvalidTransition, "No DPIA has been drafted", action="studies.dpia.submit"):
        services.dpia_submit(actor=p.dpo, study=study)
    save(p, study, summary="")
    with refused(ValidationFailed, "Write the DPIA's summary", action="studies.dpia.submit"):
        services.dpia_submit(actor=p.dpo, study=study)


def test_it_refuses_illegal_dpia_transitions(p, study):
    save(p, study)
    with refused(InvalidTransition, "A DPIA that is draft cannot become approved", action="studies.dpia.approve"):
        services.dpia_approve(actor=p.dpo, study=study)
    with refused(InvalidTransition, "A DPIA that is draft cannot become rejected", action="studies.dpia.reject"):
        services.dpia_reject(actor=p.dpo, study=study, reason="No.")
    services.dpia_submit(actor=p.dpo, study=study)
    with refused(InvalidTransition, "revise it to edit it", action="studies.dpia.save"):
        save(p, study, risk_level="low")
    services.dpia_approve(actor=p.dpo2, study=study)
    with refused(InvalidTransition, "A DPIA that is approved cannot become approved", action="studies.dpia.approve"):
        services.dpia_approve(actor=p.dpo2, study=study)


@pytest.mark.parametrize("valid_until", [None, "past"])
def test_it_refuses_to_approve_a_dpia_without_a_future_expiry(p, study, valid_until):
    save(p, study, valid_until=timezone.now() - timedelta(seconds=1) if valid_until else None)
    services.dpia_submit(actor=p.dpo, study=study)
    with refused(ValidationFailed, "Set a future 'valid until'", action="studies.dpia.approve"):
        services.dpia_approve(actor=p.dpo2, study=study)


# --- four eyes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("service", "kwargs", "doing"), [
    ("dpia_approve", {"comment": "Looks fine to me."}, "approve"),
    ("dpia_reject", {"reason": "Not good enough."}, "reject"),
])
def test_it_refuses_the_dpo_who_submitted_the_dpia_its_decision(p, study, service, kwargs, doing):
    save(p, study)
    services.dpia_submit(actor=p.dpo, study=study)
    message = f"You put this DPIA under review, so another data-protection officer must {doing} it"
    with refused(Forbidden, message, action=f"studies.dpia.{doing}") as refusal:
        getattr(services, service)(actor=p.dpo, study=study, **kwargs)
    assert refusal.event.actor_user == p.dpo and refusal.event.study_id == study.pk
    assert Dpia.objects.get(study=study).status == D.UNDER_REVIEW


def test_it_lets_the_submitter_withdraw_and_then_another_dpo_submits_for_them_to_approve(p, study):
    save(p, study)
    services.dpia_submit(actor=p.dpo, study=study)
    services.dpia_revise(actor=p.dpo, study=study, reason="Forgot the retention period.")
    services.dpia_submit(actor=p.dpo2, study=study)
    with refused(Forbidden, "another data-protection officer must approve it", action="studies.dpia.approve"):
        services.dpia_approve(actor=p.dpo2, study=study)
    dpia = services.dpia_approve(actor=p.dpo, study=study)
    assert (dpia.status, dpia.submitted_by, dpia.decided_by) == (D.APPROVED, p.dpo2, p.dpo)
