"""Ethics (IRB) approvals, recorded per site by the site's admin."""

from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from consortium.audit.log import audited_service, record
from consortium.errors import InvalidTransition, ValidationFailed
from studies.audit_actions import StudyAction
from studies.choices import EventKind
from studies.events import announce_governance
from studies.models import EthicsApproval, Participation
from studies.services._common import lock_study, require_site_admin


@audited_service(StudyAction.ETHICS_RECORD)
def ethics_record(
    *, actor: AbstractBaseUser, participation: Participation, reference: str, valid_from: datetime,
    valid_until: datetime,
) -> EthicsApproval:
    """Record the site's ethics approval for the study; the gate uses the one in force at each moment."""
    study = lock_study(actor, participation.study_id)
    site = participation.site
    require_site_admin(actor, site, study, "record its ethics approval")
    if not Participation.objects.get(pk=participation.pk).is_current:
        raise InvalidTransition(f"{site} is no longer taking part in this study.", study=study, site=site)
    if timezone.is_naive(valid_from) or timezone.is_naive(valid_until):
        raise ValidationFailed("Dates need a time zone.", study=study, site=site)
    if not reference.strip():
        raise ValidationFailed("Give the ethics approval's reference.", study=study, site=site)
    if valid_until <= valid_from:
        raise ValidationFailed("The approval must end after it starts.", study=study, site=site)
    now = timezone.now()
    if valid_until <= now:
        raise ValidationFailed("That approval has already expired.", study=study, site=site)
    approval = EthicsApproval(study=study, site=site, reference=reference.strip(), valid_from=valid_from,
                              valid_until=valid_until, recorded_by=actor, recorded_at=now)
    approval.full_clean()
    approval.save()
    record(actor=actor, action=StudyAction.ETHICS_RECORDED, target=approval, study=study, site=site,
           details={"reference": approval.reference, "valid_from": valid_from.isoformat(),
                    "valid_until": valid_until.isoformat()})
    announce_governance(study, EventKind.GOVERNANCE_CHANGED,
                        {"what": "ethics", "change": "recorded", "site_id": site.pk, "site": site.name,
                         "valid_until": valid_until.isoformat()})
    return approval
