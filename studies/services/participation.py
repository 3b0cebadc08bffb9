"""A site's participation in a study: the PI invites (and may withdraw) a site; the site's admin
grants, suspends, resumes or revokes it. Revocation takes effect at once: the gate reads the status."""

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from consortium.audit.log import audited_service, record
from consortium.errors import Conflict, InvalidTransition, NotFound, ValidationFailed
from sites.models import Site
from studies.audit_actions import PARTICIPATION_STEPS, StudyAction
from studies.choices import (
    PARTICIPATION_CURRENT,
    PARTICIPATION_TRANSITIONS,
    EventKind,
    ParticipationStatus,
    StudyStatus,
)
from studies.events import announce_governance
from studies.models import Participation, Study
from studies.services._common import lock_participation, lock_study, require_lead, require_site_admin


@audited_service(StudyAction.PARTICIPATION_INVITE)
def participation_invite(*, actor: AbstractBaseUser, study: Study, site: Site) -> Participation:
    """The PI invites a site. A site that revoked or was withdrawn can be invited again (a new row)."""
    study = lock_study(actor, study)
    require_lead(actor, study, "invite sites")
    if study.status == StudyStatus.CLOSED:
        raise InvalidTransition("A closed study cannot invite sites.", study=study, site=site)
    if not Site.objects.filter(pk=site.pk).exists():
        raise NotFound("No such site.", study=study)
    current = Participation.objects.filter(study=study, site=site, status__in=PARTICIPATION_CURRENT).first()
    if current:
        raise Conflict(f"{site} is already {current.get_status_display().lower()} in this study.",
                       study=study, site=site)
    participation = Participation(study=study, site=site, invited_by=actor, invited_at=timezone.now())
    participation.full_clean()
    participation.save()
    record(actor=actor, action=StudyAction.PARTICIPATION_INVITED, target=participation, study=study, site=site,
           details={"after": participation.status})
    announce_governance(study, EventKind.PARTICIPATION_CHANGED,
                        {"site_id": site.pk, "site": site.name, "before": None, "after": participation.status,
                         "reason": "", "by": actor.get_username()})
    return participation


def _move(actor: AbstractBaseUser, participation: Participation, to: ParticipationStatus, reason: str,
          *, needs_reason: bool, event: str) -> Participation:
    """One participation step: guard the transition, record who, when and why, and audit it."""
    if to not in PARTICIPATION_TRANSITIONS[participation.status]:
        raise InvalidTransition(
            f"A participation that is {participation.get_status_display().lower()} cannot become "
            f"{ParticipationStatus(to).label.lower()}."
            + (" Taking part again needs a new invitation." if not participation.is_current else ""),
            study=participation.study, site=participation.site, target=participation,
        )
    if needs_reason and not reason.strip():
        raise ValidationFailed("Give a reason; it is shown to the study's PI and auditors.",
                               study=participation.study, site=participation.site, target=participation)
    before = participation.status
    participation.status = to
    participation.decided_by = actor
    participation.decided_at = timezone.now()
    participation.reason = reason.strip()
    participation.full_clean()
    participation.save()
    record(actor=actor, action=PARTICIPATION_STEPS[event], target=participation,
           study=participation.study, site=participation.site,
           details={"before": before, "after": to, "reason": participation.reason})
    announce_governance(participation.study, EventKind.PARTICIPATION_CHANGED,
                        {"site_id": participation.site_id, "site": participation.site.name, "before": before,
                         "after": to, "reason": participation.reason, "by": actor.get_username()})
    return participation


def _as_site_admin(actor: AbstractBaseUser, participation: Participation, doing: str) -> Participation:
    found = lock_participation(actor, participation)
    require_site_admin(actor, found.site, found.study, doing)
    return found


@audited_service(StudyAction.PARTICIPATION_GRANT)
def participation_grant(*, actor: AbstractBaseUser, participation: Participation, reason: str = "") -> Participation:
    """The site's admin accepts the invitation: the site may contribute once the gate's other checks pass."""
    found = _as_site_admin(actor, participation, "grant its participation")
    return _move(actor, found, ParticipationStatus.GRANTED, reason, needs_reason=False, event="granted")


@audited_service(StudyAction.PARTICIPATION_SUSPEND)
def participation_suspend(*, actor: AbstractBaseUser, participation: Participation, reason: str) -> Participation:
    """Pause the site's participation; it can be resumed."""
    found = _as_site_admin(actor, participation, "suspend its participation")
    return _move(actor, found, ParticipationStatus.SUSPENDED, reason, needs_reason=True, event="suspended")


@audited_service(StudyAction.PARTICIPATION_RESUME)
def participation_resume(*, actor: AbstractBaseUser, participation: Participation, reason: str = "") -> Participation:
    found = _as_site_admin(actor, participation, "resume its participation")
    if found.status != ParticipationStatus.SUSPENDED:
        raise InvalidTransition("Only a suspended participation can be resumed.", study=found.study, site=found.site,
                                target=found)
    return _move(actor, found, ParticipationStatus.GRANTED, reason, needs_reason=False, event="resumed")


@audited_service(StudyAction.PARTICIPATION_REVOKE)
def participation_revoke(*, actor: AbstractBaseUser, participation: Participation, reason: str) -> Participation:
    """The site withdraws its consent, at once and for good (a new invitation is needed to return)."""
    found = _as_site_admin(actor, participation, "revoke its participation")
    return _move(actor, found, ParticipationStatus.REVOKED, reason, needs_reason=True, event="revoked")


@audited_service(StudyAction.PARTICIPATION_WITHDRAW)
def participation_withdraw(*, actor: AbstractBaseUser, participation: Participation, reason: str) -> Participation:
    """The PI removes a site from the study."""
    found = lock_participation(actor, participation)
    require_lead(actor, found.study, "withdraw a site")
    return _move(actor, found, ParticipationStatus.WITHDRAWN, reason, needs_reason=True, event="withdrawn")
