"""The four-eyes approval of a study: the PI's approval and a DPO's, by two different people,
each bound to the protocol and agreement version they saw."""

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from consortium.audit.log import audited_service, record
from consortium.errors import Conflict, Forbidden, InvalidTransition, ValidationFailed
from studies.audit_actions import StudyAction
from studies.choices import STUDY_REVIEWABLE, ApprovalDecision, ApprovalRole, EventKind, StudyStatus
from studies.events import announce_governance
from studies.models import Approval, Study
from studies.permissions import can_lead, is_dpo
from studies.services._common import current_agreement, lock_study, move, void_approvals


def _role_of(actor: AbstractBaseUser, study: Study) -> ApprovalRole:
    """The one approval an actor can give. A PI who is also a DPO approves as PI only."""
    if can_lead(actor, study):
        return ApprovalRole.PI
    if is_dpo(actor):
        return ApprovalRole.DPO
    raise Forbidden("Only the study's PI or a DPO may approve it.", study=study)


def _require_reviewable(study: Study, doing: str) -> None:
    if study.status not in STUDY_REVIEWABLE:
        raise InvalidTransition(
            f"Only a study awaiting approval, or a suspended one being resumed, can be {doing}; "
            f"this one is {study.get_status_display().lower()}.",
            study=study,
        )


@audited_service(StudyAction.STUDY_APPROVE)
def study_approve(*, actor: AbstractBaseUser, study: Study, comment: str = "") -> Approval:
    """Give the PI's or a DPO's approval. With both in, the study is approved (or resumed, if suspended)."""
    study = lock_study(actor, study)
    role = _role_of(actor, study)
    _require_reviewable(study, "approved")
    agreement = current_agreement(study)
    if agreement is None:
        raise ValidationFailed("The study has no data use agreement to approve.", study=study)
    live = list(Approval.objects.filter(study=study, decision=ApprovalDecision.APPROVED, voided_at__isnull=True))
    if any(a.decided_by_id == actor.pk for a in live):
        raise Forbidden("You have already approved this study; the other approval must come from someone else "
                        "(four-eyes rule).", study=study)
    if any(a.role == role for a in live):
        raise Conflict(f"The {role.label} approval has already been given.", study=study)
    approval = Approval(
        study=study, role=role, decision=ApprovalDecision.APPROVED, decided_by=actor, decided_at=timezone.now(),
        comment=comment.strip(), protocol_sha256=study.protocol_sha256(), protocol_snapshot=study.protocol(),
        agreement=agreement, agreement_sha256=agreement.sha256,
    )
    approval.full_clean()
    approval.save()
    record(actor=actor, action=StudyAction.STUDY_APPROVAL_GIVEN, target=study, study=study,
           details={"role": role, "protocol_sha256": approval.protocol_sha256, "agreement_version": agreement.version,
                    "agreement_sha256": agreement.sha256, "comment": approval.comment})
    announce_governance(study, EventKind.APPROVAL_CHANGED, {"role": role, "decision": "approved",
                                                            "by": actor.get_username(), "status": study.status})
    if len(live) + 1 == len(ApprovalRole):
        _complete(actor, study)
    return approval


def _complete(actor: AbstractBaseUser, study: Study) -> None:
    resuming = study.status == StudyStatus.SUSPENDED
    target = StudyStatus.ACTIVE if resuming else StudyStatus.APPROVED
    reason = "Resumed: approved again by the PI and a DPO." if resuming else "Approved by the PI and a DPO."
    before = move(study, target, actor=actor, reason=reason)
    record(actor=actor, action=StudyAction.STUDY_RESUMED if resuming else StudyAction.STUDY_APPROVED, target=study,
           study=study, details={"before": before, "after": study.status})
    announce_governance(study, EventKind.STUDY_CHANGED, {"before": before, "after": study.status, "reason": reason})


@audited_service(StudyAction.STUDY_REJECT)
def study_reject(*, actor: AbstractBaseUser, study: Study, reason: str) -> Approval:
    """A DPO (not the study's PI) rejects it with a reason: a submitted study returns to draft,
    a suspended one stays suspended. Approvals given so far are voided."""
    study = lock_study(actor, study)
    if not is_dpo(actor) or can_lead(actor, study):
        raise Forbidden("Only a DPO who is not the study's PI may reject it.", study=study)
    _require_reviewable(study, "rejected")
    if not reason.strip():
        raise ValidationFailed("Give the reason for rejecting the study.", study=study)
    agreement = current_agreement(study)
    if agreement is None:
        raise ValidationFailed("The study has no data use agreement to decide on.", study=study)
    now = timezone.now()
    voided = void_approvals(study, reason=f"Rejected by a DPO: {reason.strip()}", moment=now)
    rejection = Approval(
        study=study, role=ApprovalRole.DPO, decision=ApprovalDecision.REJECTED, decided_by=actor, decided_at=now,
        comment=reason.strip(), protocol_sha256=study.protocol_sha256(), protocol_snapshot=study.protocol(),
        agreement=agreement, agreement_sha256=agreement.sha256,
    )
    rejection.full_clean()
    rejection.save()
    before = study.status
    if study.status == StudyStatus.SUBMITTED:
        move(study, StudyStatus.DRAFT, actor=actor, reason=f"Rejected: {reason.strip()}")
    record(actor=actor, action=StudyAction.STUDY_REJECTED, target=study, study=study,
           details={"before": before, "after": study.status, "reason": reason.strip(), "voided_approval_ids": voided})
    announce_governance(study, EventKind.APPROVAL_CHANGED, {"role": ApprovalRole.DPO, "decision": "rejected",
                                                            "by": actor.get_username(), "status": study.status,
                                                            "reason": reason.strip()})
    return rejection
