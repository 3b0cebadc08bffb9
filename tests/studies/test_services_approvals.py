"""Four eyes: the PI's and a DPO's approval, by two different people, each bound to the protocol
and the agreement version it saw; rejections; changes that void approvals."""

import pytest
from django.contrib.auth.models import Group

from consortium.errors import Conflict, Forbidden, InvalidTransition, NotFound, ValidationFailed
from consortium.roles import Role
from sites.services import site_admin_assign
from studies import services
from studies.choices import ApprovalDecision, ApprovalRole, StudyStatus
from studies.governance import evaluate
from studies.models import Approval
from tests.base import draft_study
from tests.support import actions_after, events_after, last_seq, only_event, refused, study_in

S = StudyStatus


def also_dpo(user) -> None:
    user.groups.add(Group.objects.get(name=Role.DPO.value))
    user.__dict__.pop("_consortium_roles", None)  # roles are cached per user object


def live_approvals(study):
    return list(Approval.objects.filter(study=study, decision=ApprovalDecision.APPROVED, voided_at__isnull=True))


def test_it_needs_both_the_pi_and_a_dpo_to_approve(p):
    study = study_in(p, S.SUBMITTED)
    mark = last_seq()
    first = services.study_approve(actor=p.pi, study=study, comment=" Looks right. ")
    study.refresh_from_db()
    assert study.status == S.SUBMITTED
    event = only_event(mark, "studies.study.approval_given")
    assert event.details["role"] == ApprovalRole.PI
    assert event.details["comment"] == "Looks right."

    mark = last_seq()
    second = services.study_approve(actor=p.dpo, study=study)
    study.refresh_from_db()
    assert study.status == S.APPROVED
    assert actions_after(mark) == ["studies.study.approval_given", "studies.study.approved"]
    approved = events_after(mark)[1]
    assert (approved.details["before"], approved.details["after"]) == (S.SUBMITTED, S.APPROVED)
    assert {(a.role, a.decided_by) for a in (first, second)} == {(ApprovalRole.PI, p.pi), (ApprovalRole.DPO, p.dpo)}


def test_it_accepts_the_dpo_before_the_pi(p):
    study = study_in(p, S.SUBMITTED)
    services.study_approve(actor=p.dpo, study=study)
    services.study_approve(actor=p.pi, study=study)
    study.refresh_from_db()
    assert study.status == S.APPROVED


def test_it_binds_each_approval_to_the_protocol_hash_and_agreement_version_it_saw(p):
    study = study_in(p, S.SUBMITTED)
    agreement = study.agreement_versions.get()
    mark = last_seq()
    approval = services.study_approve(actor=p.dpo, study=study)
    assert approval.protocol_sha256 == study.protocol_sha256()
    assert approval.protocol_snapshot == study.protocol()
    assert (approval.agreement, approval.agreement_sha256) == (agreement, agreement.sha256)
    event = only_event(mark, "studies.study.approval_given")
    assert event.details["protocol_sha256"] == study.protocol_sha256()
    assert (event.details["agreement_version"], event.details["agreement_sha256"]) == (1, agreement.sha256)


@pytest.mark.parametrize("who", ["pi", "dpo"])
def test_it_refuses_the_same_person_approving_twice(p, who):
    study = study_in(p, S.SUBMITTED)
    services.study_approve(actor=getattr(p, who), study=study)
    with refused(Forbidden, "You have already approved this study.*four-eyes", action="studies.study.approve"):
        services.study_approve(actor=getattr(p, who), study=study)
    assert len(live_approvals(study)) == 1


def test_it_does_not_let_a_pi_who_is_also_a_dpo_give_both_approvals(p):
    also_dpo(p.pi)
    study = study_in(p, S.SUBMITTED)
    approval = services.study_approve(actor=p.pi, study=study)
    assert approval.role == ApprovalRole.PI
    with refused(Forbidden, "already approved", action="studies.study.approve"):
        services.study_approve(actor=p.pi, study=study)
    study.refresh_from_db()
    assert study.status == S.SUBMITTED
    services.study_approve(actor=p.dpo, study=study)  # a second person completes it
    study.refresh_from_db()
    assert study.status == S.APPROVED


def test_it_does_not_let_a_pi_who_is_also_a_dpo_reject_their_own_study(p):
    also_dpo(p.pi)
    study = study_in(p, S.SUBMITTED)
    with refused(Forbidden, "Only a DPO who is not the study's PI may reject it", action="studies.study.reject"):
        services.study_reject(actor=p.pi, study=study, reason="Conflict of interest.")


def test_it_does_not_let_a_dpo_who_is_also_a_site_admin_approve_twice(p):
    site_admin_assign(actor=p.admin, site=p.site_a, user=p.dpo)
    study = study_in(p, S.SUBMITTED)
    services.participation_invite(actor=p.pi, study=study, site=p.site_a)
    services.study_approve(actor=p.dpo, study=study)
    with refused(Forbidden, "already approved", action="studies.study.approve"):
        services.study_approve(actor=p.dpo, study=study)
    assert len(live_approvals(study)) == 1


def test_it_refuses_a_second_dpo_once_the_dpo_approval_is_given(p):
    study = study_in(p, S.SUBMITTED)
    services.study_approve(actor=p.dpo, study=study)
    with refused(Conflict, "The Data-protection officer approval has already been given",
                 action="studies.study.approve"):
        services.study_approve(actor=p.dpo2, study=study)


def test_it_refuses_approval_by_a_site_admin_who_sees_the_study(p):
    study = study_in(p, S.SUBMITTED)
    services.participation_invite(actor=p.pi, study=study, site=p.site_a)
    with refused(Forbidden, "Only the study's PI or a DPO may approve it", action="studies.study.approve"):
        services.study_approve(actor=p.site_a_admin, study=study)


def test_it_answers_not_found_when_an_outsider_approves(p):
    study = study_in(p, S.SUBMITTED)
    with refused(NotFound, "No such study", action="studies.study.approve"):
        services.study_approve(actor=p.outsider, study=study)


def test_it_lets_a_dpo_reject_with_a_reason_sending_the_study_back_to_draft(p):
    study = study_in(p, S.SUBMITTED)
    pi_approval = services.study_approve(actor=p.pi, study=study)
    mark = last_seq()
    rejection = services.study_reject(actor=p.dpo, study=study, reason=" No DPIA yet. ")
    study.refresh_from_db()
    assert (study.status, study.status_reason) == (S.DRAFT, "Rejected: No DPIA yet.")
    assert (rejection.decision, rejection.role, rejection.comment) == (ApprovalDecision.REJECTED, "dpo", "No DPIA yet.")
    pi_approval.refresh_from_db()
    assert pi_approval.voided_at is not None
    assert pi_approval.void_reason == "Rejected by a DPO: No DPIA yet."
    event = only_event(mark, "studies.study.rejected")
    assert event.details == {"before": "submitted", "after": "draft", "reason": "No DPIA yet.",
                             "voided_approval_ids": [pi_approval.pk]}
    services.study_submit(actor=p.pi, study=study)  # the PI can revise and submit again


def test_it_keeps_a_suspended_study_suspended_when_a_dpo_rejects_resuming_it(p):
    study = study_in(p, S.SUSPENDED)
    services.study_reject(actor=p.dpo, study=study, reason="Leak not explained.")
    study.refresh_from_db()
    assert study.status == S.SUSPENDED


def test_it_requires_a_reason_to_reject(p):
    study = study_in(p, S.SUBMITTED)
    with refused(ValidationFailed, "Give the reason for rejecting", action="studies.study.reject"):
        services.study_reject(actor=p.dpo, study=study, reason="  ")


def test_it_refuses_rejection_by_the_pi(p):
    study = study_in(p, S.SUBMITTED)
    with refused(Forbidden, "Only a DPO", action="studies.study.reject"):
        services.study_reject(actor=p.pi, study=study, reason="Changed my mind.")


def test_it_refuses_to_reject_a_draft(p):
    study = draft_study(p)
    with refused(InvalidTransition, "this one is draft", action="studies.study.reject"):
        services.study_reject(actor=p.dpo, study=study, reason="No.")


@pytest.mark.parametrize("status", [S.APPROVED, S.ACTIVE])
def test_it_voids_approvals_when_the_protocol_changes_and_sends_the_study_back(p, status):
    study = study_in(p, status)
    old_hash = study.protocol_sha256()
    mark = last_seq()
    services.study_update_protocol(actor=p.pi, study=study, rounds=50, strategy="fedprox")
    study.refresh_from_db()
    assert study.status == S.SUBMITTED
    assert live_approvals(study) == []
    voided = Approval.objects.filter(study=study)
    assert voided.count() == 2 and all(a.voided_at and a.void_reason == "The protocol changed." for a in voided)

    changed, sent_back = events_after(mark)
    assert changed.action == "studies.study.protocol_changed"
    assert changed.details["changes"] == {"rounds": {"before": 20, "after": 50},
                                          "strategy": {"before": "fedavg", "after": "fedprox"}}
    assert changed.details["protocol_sha256"] == study.protocol_sha256() != old_hash
    assert sent_back.action == "studies.study.approvals_voided"
    assert sent_back.details["before"] == status.value and sent_back.details["after"] == S.SUBMITTED
    assert sorted(sent_back.details["voided_approval_ids"]) == sorted(a.pk for a in voided)
    assert not evaluate(study, "aggregate").allowed

    approval = services.study_approve(actor=p.pi, study=study)  # a new approval binds the new protocol
    assert approval.protocol_sha256 == study.protocol_sha256()
    assert approval.protocol_snapshot["rounds"] == 50


def test_it_voids_a_partial_approval_when_the_protocol_changes_while_submitted(p):
    study = study_in(p, S.SUBMITTED)
    services.study_approve(actor=p.dpo, study=study)
    services.study_update_protocol(actor=p.pi, study=study, quorum=3)
    study.refresh_from_db()
    assert study.status == S.SUBMITTED
    assert live_approvals(study) == []


def test_it_keeps_approvals_when_only_the_title_changes(p):
    study = study_in(p, S.APPROVED)
    mark = last_seq()
    services.study_update_protocol(actor=p.pi, study=study, title="Sepsis risk (v2 title)")
    study.refresh_from_db()
    assert study.status == S.APPROVED
    assert len(live_approvals(study)) == 2
    event = only_event(mark, "studies.study.protocol_changed")
    assert event.details["changes"] == {"title": {"before": "Sepsis risk", "after": "Sepsis risk (v2 title)"}}


def test_it_writes_nothing_when_the_protocol_does_not_change(p):
    study = study_in(p, S.APPROVED)
    mark = last_seq()
    services.study_update_protocol(actor=p.pi, study=study, rounds=study.rounds)
    assert events_after(mark) == []


def test_it_refuses_a_protocol_change_by_someone_else_or_an_invalid_value(p):
    study = study_in(p, S.APPROVED)
    with refused(Forbidden, "Only the study's principal investigator may change the protocol",
                 action="studies.study.update"):
        services.study_update_protocol(actor=p.dpo, study=study, rounds=3)
    with refused(ValidationFailed, "Unknown study fields: pi", action="studies.study.update"):
        services.study_update_protocol(actor=p.pi, study=study, pi=p.dpo)


def test_it_voids_approvals_when_a_new_agreement_version_is_published(p):
    study = study_in(p, S.ACTIVE)
    mark = last_seq()
    v2 = services.agreement_publish(actor=p.pi, study=study, text="Revised terms: no export of any weights.")
    study.refresh_from_db()
    assert study.status == S.SUBMITTED
    assert live_approvals(study) == []
    assert actions_after(mark) == ["studies.agreement.published", "studies.study.approvals_voided"]
    assert events_after(mark)[1].details["reason"] == "A new data use agreement version (v2)."

    services.study_approve(actor=p.pi, study=study)
    approval = services.study_approve(actor=p.dpo, study=study)
    assert (approval.agreement, approval.agreement_sha256) == (v2, v2.sha256)
    study.refresh_from_db()
    assert study.status == S.APPROVED
