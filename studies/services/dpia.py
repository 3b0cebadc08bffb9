"""The study's DPIA, kept by DPOs: drafted, put under review, approved or rejected, revised."""

from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from consortium.audit.log import audited_service, record
from consortium.errors import Forbidden, InvalidTransition, ValidationFailed
from consortium.locks import locked
from studies.audit_actions import DPIA_STEPS, StudyAction
from studies.choices import DPIA_TRANSITIONS, DpiaStatus, EventKind, RiskLevel
from studies.events import announce_governance
from studies.models import Dpia, Study
from studies.permissions import is_dpo
from studies.services._common import lock_study


def _lock_dpia(actor: AbstractBaseUser, study: Study) -> tuple[Study, Dpia | None]:
    study = lock_study(actor, study)
    if not is_dpo(actor):
        raise Forbidden("Only data-protection officers keep the DPIA.", study=study)
    return study, locked(Dpia.objects.filter(study=study)).first()


def _snapshot(dpia: Dpia) -> dict:
    return {"status": dpia.status, "risk_level": dpia.risk_level, "summary": dpia.summary,
            "valid_until": dpia.valid_until.isoformat() if dpia.valid_until else None}


def _check_transition(dpia: Dpia, to: DpiaStatus) -> None:
    if to not in DPIA_TRANSITIONS[dpia.status]:
        raise InvalidTransition(f"A DPIA that is {dpia.get_status_display().lower()} cannot become "
                                f"{DpiaStatus(to).label.lower()}.", study=dpia.study, target=dpia)


def _move(actor: AbstractBaseUser, dpia: Dpia, to: DpiaStatus, comment: str, event: str) -> Dpia:
    _check_transition(dpia, to)
    before = _snapshot(dpia)
    dpia.status, dpia.comment = to, comment.strip()
    if to == DpiaStatus.UNDER_REVIEW:  # a submission is not a decision: it names who may not decide
        dpia.submitted_by, dpia.submitted_at = actor, timezone.now()
    else:
        dpia.decided_by, dpia.decided_at = actor, timezone.now()
    dpia.full_clean()
    dpia.save()
    record(actor=actor, action=DPIA_STEPS[event], target=dpia, study=dpia.study,
           details={"before": before, "after": _snapshot(dpia), "comment": dpia.comment})
    announce_governance(dpia.study, EventKind.GOVERNANCE_CHANGED,
                        {"what": "dpia", "change": event, "status": dpia.status,
                         "valid_until": dpia.valid_until.isoformat() if dpia.valid_until else None})
    return dpia


@audited_service(StudyAction.DPIA_SAVE)
def dpia_save(*, actor: AbstractBaseUser, study: Study, summary: str, risk_level: str,
              valid_until: datetime | None) -> Dpia:
    """Create or edit the DPIA while it is a draft."""
    study, dpia = _lock_dpia(actor, study)
    if risk_level not in RiskLevel.values:
        raise ValidationFailed(f"Unknown risk level {risk_level!r}.", study=study)
    if valid_until is not None and timezone.is_naive(valid_until):
        raise ValidationFailed("The expiry needs a time zone.", study=study)
    if dpia is not None and dpia.status != DpiaStatus.DRAFT:
        raise InvalidTransition(f"The DPIA is {dpia.get_status_display().lower()}; revise it to edit it.",
                                study=study, target=dpia)
    before = _snapshot(dpia) if dpia else None
    dpia = dpia or Dpia(study=study, prepared_by=actor)
    dpia.summary, dpia.risk_level, dpia.valid_until = summary.strip(), risk_level, valid_until
    dpia.full_clean()
    dpia.save()
    record(actor=actor, action=StudyAction.DPIA_SAVED, target=dpia, study=study,
           details={"before": before, "after": _snapshot(dpia)})
    return dpia


def _existing(actor: AbstractBaseUser, study: Study) -> Dpia:
    study, dpia = _lock_dpia(actor, study)
    if dpia is None:
        raise InvalidTransition("No DPIA has been drafted for this study yet.", study=study)
    return dpia


def _require_second_dpo(actor: AbstractBaseUser, dpia: Dpia, doing: str) -> None:
    """Four eyes: the DPO who put the DPIA under review may not decide on it. Called after the transition
    check, so a DPIA that is not under review gets the clearer "cannot become" answer first."""
    if dpia.submitted_by_id == actor.pk:
        raise Forbidden(f"You put this DPIA under review, so another data-protection officer must {doing} it "
                        "(four eyes). To change it yourself, revise it back to draft.",
                        study=dpia.study, target=dpia)


@audited_service(StudyAction.DPIA_SUBMIT)
def dpia_submit(*, actor: AbstractBaseUser, study: Study) -> Dpia:
    """Put the draft under review; from then on only a DPO other than `actor` may approve or reject it."""
    dpia = _existing(actor, study)
    if not dpia.summary:
        raise ValidationFailed("Write the DPIA's summary before putting it under review.", study=dpia.study)
    return _move(actor, dpia, DpiaStatus.UNDER_REVIEW, "", "submitted")


@audited_service(StudyAction.DPIA_APPROVE)
def dpia_approve(*, actor: AbstractBaseUser, study: Study, comment: str = "") -> Dpia:
    """Approve the DPIA under review; it then passes the gate until `valid_until`. Only a DPO other
    than the one who submitted it may approve it."""
    dpia = _existing(actor, study)
    _check_transition(dpia, DpiaStatus.APPROVED)
    _require_second_dpo(actor, dpia, "approve")
    if dpia.valid_until is None or dpia.valid_until <= timezone.now():
        raise ValidationFailed("Set a future 'valid until' before approving the DPIA.", study=dpia.study)
    return _move(actor, dpia, DpiaStatus.APPROVED, comment, "approved")


@audited_service(StudyAction.DPIA_REJECT)
def dpia_reject(*, actor: AbstractBaseUser, study: Study, reason: str) -> Dpia:
    """Reject the DPIA under review with a reason. Like an approval, a rejection is the reviewer's verdict,
    so its submitter may not give it; they withdraw their own submission with `dpia_revise`."""
    dpia = _existing(actor, study)
    _check_transition(dpia, DpiaStatus.REJECTED)
    _require_second_dpo(actor, dpia, "reject")
    if not reason.strip():
        raise ValidationFailed("Give the reason for rejecting the DPIA.", study=dpia.study)
    return _move(actor, dpia, DpiaStatus.REJECTED, reason, "rejected")


@audited_service(StudyAction.DPIA_REVISE)
def dpia_revise(*, actor: AbstractBaseUser, study: Study, reason: str) -> Dpia:
    """Return the DPIA to draft (e.g. to renew it); an approved one stops passing the gate at once."""
    dpia = _existing(actor, study)
    if not reason.strip():
        raise ValidationFailed("Say why the DPIA is being revised.", study=dpia.study)
    return _move(actor, dpia, DpiaStatus.DRAFT, reason, "revised")
