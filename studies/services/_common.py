"""Steps every study service shares: lock and scope the study, move it along its state machine,
void approvals. Private to `studies.services`."""

from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from consortium.audit.log import record
from consortium.errors import Forbidden, InvalidTransition, NotFound
from consortium.locks import locked
from sites.models import Site
from sites.permissions import can_administer
from studies.audit_actions import StudyAction
from studies.choices import STUDY_TRANSITIONS, ApprovalDecision, EventKind, StudyStatus
from studies.events import announce_governance
from studies.models import AgreementVersion, Approval, Participation, Study
from studies.permissions import can_lead, studies_for


def lock_study(actor: AbstractBaseUser, study: Study | int) -> Study:
    """Re-read the study under its row lock (level 1 of `consortium.locks`), as the actor sees it:
    invisible is the same as missing (404)."""
    pk = study.pk if isinstance(study, Study) else study
    found = locked(Study.objects.filter(pk=pk)).first()
    if found is None or not studies_for(actor).filter(pk=pk).exists():
        raise NotFound("No such study.")
    return found


def require_lead(actor: AbstractBaseUser, study: Study, doing: str) -> None:
    if not can_lead(actor, study):
        raise Forbidden(f"Only the study's principal investigator may {doing}.", study=study)


def require_site_admin(actor: AbstractBaseUser, site: Site, study: Study, doing: str) -> None:
    if not can_administer(actor, site):
        raise Forbidden(f"Only an admin of {site} may {doing}.", study=study, site=site)


def move(study: Study, to: StudyStatus, *, actor: AbstractBaseUser, reason: str = "") -> str:
    """Apply one state-machine step; refuse an illegal one with a clear message. Returns the old status."""
    if to not in STUDY_TRANSITIONS[study.status]:
        raise InvalidTransition(
            f"A study that is {study.get_status_display().lower()} cannot become {StudyStatus(to).label.lower()}.",
            study=study,
        )
    before = study.status
    study.status = to
    study.status_reason = reason
    study.status_changed_at = timezone.now()
    study.status_changed_by = actor
    study.full_clean()
    study.save()
    return before


def void_approvals(study: Study, *, reason: str, moment: datetime) -> list[int]:
    """Void every live approval of the study; returns the ids voided (for the audit record)."""
    live = Approval.objects.filter(study=study, decision=ApprovalDecision.APPROVED, voided_at__isnull=True)
    ids = list(live.values_list("pk", flat=True))
    live.update(voided_at=moment, void_reason=reason)
    return ids


def current_agreement(study: Study) -> AgreementVersion | None:
    return AgreementVersion.objects.filter(study=study).order_by("-version").first()


def lock_participation(actor: AbstractBaseUser, participation: Participation | int) -> Participation:
    """Lock the participation's study, then the participation (the order of `consortium.locks`); 404 when
    the actor may not see the study."""
    pk = participation.pk if isinstance(participation, Participation) else participation
    study_id = Participation.objects.filter(pk=pk).values_list("study_id", flat=True).first()  # never changes
    study = locked(Study.objects.filter(pk=study_id)).first() if study_id is not None else None
    if study is None or not studies_for(actor).filter(pk=study.pk).exists():
        raise NotFound("No such participation.")
    found = locked(Participation.objects.select_related("site").filter(pk=pk), of=("self",)).get()
    found.study = study  # the locked row, so the caller reads the study as it is now
    return found


def send_back_for_approval(actor: AbstractBaseUser, study: Study, *, reason: str) -> None:
    """Void approvals; a study past draft goes back to awaiting approval. Shared by protocol and DUA changes."""
    if study.status == StudyStatus.DRAFT:
        return
    voided = void_approvals(study, reason=reason, moment=timezone.now())
    before = study.status
    if study.status != StudyStatus.SUBMITTED:
        move(study, StudyStatus.SUBMITTED, actor=actor, reason=reason)
    record(actor=actor, action=StudyAction.STUDY_APPROVALS_VOIDED, target=study, study=study,
           details={"reason": reason, "voided_approval_ids": voided, "before": before, "after": study.status})
    announce_governance(study, EventKind.STUDY_CHANGED, {"before": before, "after": study.status, "reason": reason})
