"""A site's review of the exact protocol it would train: accepted or rejected, bound to the protocol hash."""

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from consortium.audit.log import audited_service, record
from consortium.errors import Conflict, InvalidTransition, ValidationFailed
from studies.audit_actions import StudyAction
from studies.choices import EventKind, ReviewDecision
from studies.events import announce_governance
from studies.models import Participation, ProtocolReview
from studies.services._common import lock_study, require_site_admin

# What a review records, by its decision.
REVIEW_RECORDED = {ReviewDecision.ACCEPTED: StudyAction.PROTOCOL_ACCEPTED,
                   ReviewDecision.REJECTED: StudyAction.PROTOCOL_REJECTED}


@audited_service(StudyAction.PROTOCOL_REVIEW)
def protocol_review(*, actor: AbstractBaseUser, participation: Participation, decision: str, protocol_sha256: str,
                    reason: str = "") -> ProtocolReview:
    """The site's admin accepts or rejects the protocol they read, named by its hash. If the protocol changed
    since the page was shown (another hash), the review is refused: a site accepts only what it saw."""
    study = lock_study(actor, participation.study_id)
    site = participation.site
    require_site_admin(actor, site, study, "review the protocol for it")
    participation = Participation.objects.get(pk=participation.pk)
    if not participation.is_current:
        raise InvalidTransition(f"{site} is no longer taking part in this study ({participation.status}).",
                                study=study, site=site)
    if decision not in ReviewDecision.values:
        raise ValidationFailed(f"Decide {' or '.join(ReviewDecision.values)}, not {decision!r}.", study=study,
                               site=site)
    reason = reason.strip()
    if decision == ReviewDecision.REJECTED and not reason:
        raise ValidationFailed("Say why the site rejects the protocol: the PI reads it.", study=study, site=site)
    current = study.protocol_sha256()
    if protocol_sha256 != current:
        raise Conflict(f"The protocol changed while it was reviewed (reviewed {protocol_sha256[:12]}..., current "
                       f"{current[:12]}...): read the current one and review again.", study=study, site=site)
    review = ProtocolReview(study=study, site=site, decision=decision, reason=reason, protocol_sha256=current,
                            protocol_snapshot=study.protocol(), reviewed_by=actor, reviewed_at=timezone.now())
    review.full_clean()
    review.save()
    record(actor=actor, action=REVIEW_RECORDED[decision], target=review, study=study, site=site,
           details={"protocol_sha256": current, "reason": reason})
    announce_governance(study, EventKind.GOVERNANCE_CHANGED, {"what": "protocol_review", "change": decision,
                                                              "site_id": site.pk, "site": site.name})
    return review

