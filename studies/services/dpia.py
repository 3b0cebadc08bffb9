"""The study's DPIA, kept by DPOs: drafted, put under review, approved or rejected, revised."""

from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from consortium.audit import audited_service, record
from consortium.errors import Forbidden, InvalidTransition, ValidationFailed
from consortium.locks import locked
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


def _move(actor: AbstractBaseUser, dpia: Dpia, to: DpiaStatus, comment: str, event: str) -> Dpia:
    if to not in DPIA_TRANSITIONS[dpia.status]:
        raise InvalidTransition(f"A DPIA that is {dpia.get_status_display().lower()} cannot become "
                                f"{DpiaStatus(to).label.lower()}.", study=dpia.study, target=dpia)
    before = _snapshot(dpia)
    dpia.status, dpia.comment = to, comment.strip()
    dpia.decided_by, dpia.decided_at = actor, timezone.now()
    dpia.full_clean()
    dpia.save()
    record(actor=actor, action=f"studies.dpia.{event}", target=dpia, study=dpia.study,
           details={"before": before, "after": _snapshot(dpia), "comment": dpia.comment})
    announce_governance(dpia.study, EventKind.GOVERNANCE_CHANGED,
                        {"what": "dpia", "change": event, "status": dpia.status,
                         "valid_until": dpia.valid_until.isoformat() if dpia.valid_until else None})
    return dpia


@audited_service("studies.dpia.save")
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
    record(actor=actor, action="studies.dpia.saved", target=dpia, study=study,
           details={"before": before, "after": _snapshot(dpia)})
    return dpia


def _existing(actor: AbstractBaseUser, study: Study) -> Dpia:
    study, dpia = _lock_dpia(actor, study)
    if dpia is None:
        raise InvalidTransition("No DPIA has been drafted for this study yet.", study=study)
    return dpia


@audited_service("studies.dpia.submit")
def dpia_submit(*, actor: AbstractBaseUser, study: Study) -> Dpia:
    dpia = _existing(actor, study)
    if not dpia.summary:
        raise ValidationFailed("Write the DPIA's summary before putting it under review.", study=dpia.study)
    return _move(actor, dpia, DpiaStatus.UNDER_REVIEW, "", "submitted")


@audited_service("studies.dpia.approve")
def dpia_approve(*, actor: AbstractBaseUser, study: Study, comment: str = "") -> Dpia:
    """Approve the DPIA; it then passes the gate until `valid_until`."""
    dpia = _existing(actor, study)
    if dpia.valid_until is None or dpia.valid_until <= timezone.now():
        raise ValidationFailed("Set a future 'valid until' before approving the DPIA.", study=dpia.study)
    return _move(actor, dpia, DpiaStatus.APPROVED, comment, "approved")


@audited_service("studies.dpia.reject")
def dpia_reject(*, actor: AbstractBaseUser, study: Study, reason: str) -> Dpia:
    dpia = _existing(actor, study)
    if not reason.strip():
        raise ValidationFailed("Give the reason for rejecting the DPIA.", study=dpia.study)
    return _move(actor, dpia, DpiaStatus.REJECTED, reason, "rejected")


@audited_service("studies.dpia.revise")
def dpia_revise(*, actor: AbstractBaseUser, study: Study, reason: str) -> Dpia:
    """Return the DPIA to draft (e.g. to renew it); an approved one stops passing the gate at once."""
    dpia = _existing(actor, study)
    if not reason.strip():
        raise ValidationFailed("Say why the DPIA is being revised.", study=dpia.study)
    return _move(actor, dpia, DpiaStatus.DRAFT, reason, "revised")
