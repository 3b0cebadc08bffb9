"""A site's agent declining a round under the site's own policy: recorded and shown, nothing else changes."""

from typing import Any

from django.utils import timezone

from aggregation.audit_actions import AggregationAction
from aggregation.choices import RoundStatus
from aggregation.locks import lock_round_for_site
from aggregation.models import RoundDecline
from consortium.audit.log import audited_service, record
from consortium.errors import Conflict, ValidationFailed

MAX_REASON_CHARS = 1000


@audited_service(AggregationAction.ROUND_DECLINE)
def round_decline(*, actor: Any, round_id: int, reason: str) -> RoundDecline:
    """Record that `actor`'s site declines an open round, and why (in the agent's words, for the PI to read).
    Declining twice is refused; declining does not need the gate: saying no is always allowed."""
    reason = " ".join(str(reason).split())
    if not reason:
        raise ValidationFailed("Say why the site declines the round.", code="reason_required")
    if len(reason) > MAX_REASON_CHARS:
        raise ValidationFailed(f"The reason is {len(reason):,} characters; at most {MAX_REASON_CHARS:,}.",
                               code="reason_too_long")
    round_ = lock_round_for_site(round_id, actor.site_id)
    if round_.status != RoundStatus.OPEN:
        raise Conflict(f"Round {round_.number} is {round_.get_status_display().lower()}; there is nothing to decline.",
                       code="stale_round", study=round_.study_id)
    if RoundDecline.objects.filter(round=round_, site_id=actor.site_id).exists():
        raise Conflict(f"{actor.site} already declined round {round_.number}.", code="already_declined",
                       study=round_.study_id, site=actor.site_id)
    decline = RoundDecline.objects.create(round=round_, site_id=actor.site_id, reason=reason,
                                          declined_by=actor.get_username(), declined_at=timezone.now())
    record(actor=actor, action=AggregationAction.ROUND_DECLINED, target=round_, study=round_.study_id,
           site=actor.site_id, details={"round": round_.number, "reason": reason})
    return decline
