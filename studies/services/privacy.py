"""The privacy budget's writes: count a released training round in the study's ledger, and stop the study
once the budget allows no further round. Both run inside the aggregation's or scheduler's transaction, which
already holds the study's row lock (level 1 of `consortium.locks`)."""

from django.utils import timezone

from consortium.audit.log import SYSTEM, record
from studies.audit_actions import StudyAction
from studies.choices import EventKind, StudyStatus
from studies.events import announce_governance
from studies.models import Study
from studies.privacy import privacy_budget
from studies.services._common import move, void_approvals


def study_round_released(*, study: Study, round_number: int, noise_multiplier: float) -> None:
    """A training round's model was released with `noise_multiplier` (0: without noise): it counts against the
    budget from now on, whatever happens to the round afterwards."""
    key = repr(float(noise_multiplier))
    study.privacy_ledger = {**study.privacy_ledger, key: int(study.privacy_ledger.get(key, 0)) + 1}
    study.save(update_fields=["privacy_ledger", "updated_at"])
    budget = privacy_budget(study)
    record(actor=SYSTEM, action=StudyAction.PRIVACY_SPENT, target=study, study=study,
           details={"round": round_number, "noise_multiplier": float(noise_multiplier), **budget.as_dict()})


def study_stop_for_privacy(*, study: Study, reason: str) -> bool:
    """Suspend an active study whose privacy budget is used up, with the gate's reason (shown on the study page).
    Its approvals are voided as for any suspension: running again needs a new target, approved by a DPO.
    Returns whether it stopped the study."""
    if study.status != StudyStatus.ACTIVE:
        return False
    before = move(study, StudyStatus.SUSPENDED, actor=None, reason=reason)
    voided = void_approvals(study, reason="The privacy budget is used up.", moment=timezone.now())
    record(actor=SYSTEM, action=StudyAction.STUDY_PRIVACY_EXHAUSTED, target=study, study=study,
           details={"before": before, "after": study.status, "reason": reason, "voided_approval_ids": voided,
                    **privacy_budget(study).as_dict()})
    announce_governance(study, EventKind.STUDY_CHANGED, {"before": before, "after": study.status, "reason": reason})
    return True
