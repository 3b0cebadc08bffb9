"""Moving a round from one state to the next: checked against the transitions (data, in `aggregation.choices`),
audited, and published to the study's live event log."""

from typing import Any

from django.utils import timezone

from aggregation.audit_actions import ROUND_MOVES
from aggregation.choices import ROUND_TRANSITIONS, RoundStatus
from aggregation.models import Round
from aggregation.services import _events
from consortium.audit.log import record
from consortium.errors import InvalidTransition


def move_round(round_: Round, to: RoundStatus, *, actor: Any, reason: str = "", details: dict | None = None) -> None:
    """One round state step, audited; an illegal one is refused."""
    if to not in ROUND_TRANSITIONS[round_.status]:
        raise InvalidTransition(f"Round {round_.number} is {round_.get_status_display().lower()} and cannot become "
                                f"{RoundStatus(to).label.lower()}.", study=round_.study_id)
    before = round_.status
    round_.status, round_.status_reason = to, reason
    if to in (RoundStatus.CLOSED, RoundStatus.BLOCKED, RoundStatus.FAILED):
        round_.closed_at = timezone.now()
    if to == RoundStatus.AGGREGATING:
        # Dispatched now too: the task is sent when this commits (or runs in this very transaction).
        round_.aggregation_started_at = round_.aggregation_dispatched_at = timezone.now()
    round_.full_clean()
    round_.save()
    record(actor=actor, action=ROUND_MOVES[to], target=round_, study=round_.study_id,
           details={"round": round_.number, "kind": round_.kind, "before": before, "after": to, "reason": reason,
                    **(details or {})})
    _events.round_moved(round_, reason, details or {})
