"""Watching a study live: opening its event stream (audited either way) and the scheduler's watch
for approvals that lapse with time (an expiry changes the gate without anyone acting)."""

from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone

from consortium.audit.log import record, record_denial
from studies.audit_actions import StudyAction
from studies.choices import EventKind, GateAction, StudyStatus
from studies.events import publish, publish_gate
from studies.governance import GateResult, evaluate_many
from studies.models import Study, StudyEvent
from studies.permissions import studies_for

WATCHED_STATUSES = (StudyStatus.ACTIVE, StudyStatus.SUSPENDED)


def event_stream_open(*, actor: Any, study_id: int) -> bool:
    """Whether `actor` may watch the study's live events. Granted, it is a read of study data;
    refused (anonymous, or not among the study's viewers), it is a denied attempt. Both are audited."""
    study = studies_for(actor).filter(pk=study_id).first()
    if study is None:
        known = Study.objects.filter(pk=study_id).exists()
        record_denial(actor=actor, action=StudyAction.EVENTS_SUBSCRIBE, study=study_id if known else None,
                      reason="Only the study's PI, its sites' admins, DPOs, auditors and consortium admins may "
                             "watch it.", details={"study_id": study_id})
        return False
    with transaction.atomic():
        record(actor=actor, action=StudyAction.STUDY_VIEWED, target=study, study=study, details={"via": "websocket"})
    return True


def may_still_watch(actor: Any, study_id: int) -> bool:
    """Re-asked while a stream is open: a site admin removed from the study's sites stops receiving."""
    return studies_for(actor).filter(pk=study_id).exists()


def _signature(gate: dict[str, Any]) -> list[tuple[str, int | None, bool]]:
    return sorted((check["name"], check["site_id"] or 0, check["passed"]) for check in gate["checks"])


def governance_watch(*, moment: datetime | None = None) -> int:
    """For active and suspended studies, publish the gate's verdict when it differs from the last one
    published, and name the approvals that lapsed since (DPIA, ethics, agreement). Returns how many
    studies changed. Called by the scheduler's beat."""
    moment = moment or timezone.now()
    studies = list(Study.objects.filter(status__in=WATCHED_STATUSES))
    verdicts = evaluate_many(studies, GateAction.AGGREGATE, moment=moment)
    published = _last_gate_payloads([study.pk for study in studies])
    changed = 0
    for study in studies:
        last = published.get(study.pk)
        if last is not None and _signature(last["gate"]) == _signature(verdicts[study.pk].as_dict()):
            continue  # unchanged, as on most beats: no transaction, which on SQLite waits for the write lock
        with transaction.atomic():
            if _announce_if_changed(study, verdicts[study.pk], last, moment):
                changed += 1
    return changed


def _last_gate_payloads(study_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Each study's last published gate verdict, in one query."""
    newest = (StudyEvent.objects.filter(study=OuterRef("study"), kind=EventKind.GATE_EVALUATED)
              .order_by("-seq").values("pk")[:1])
    rows = StudyEvent.objects.filter(study__in=study_ids, pk=Subquery(newest)).values_list("study_id", "payload")
    return dict(rows)


def _announce_if_changed(study: Study, gate: GateResult, last: dict[str, Any] | None, moment: datetime) -> bool:
    now = gate.as_dict()
    if last is not None and _signature(last["gate"]) == _signature(now):
        return False
    before = {(c["name"], c["site_id"]): c["passed"] for c in last["gate"]["checks"]} if last else {}
    lapsed = [check.as_dict() for check in gate.checks
              if not check.passed and before.get((check.name, check.site_id)) and check.expires_at
              and check.expires_at <= moment]
    if lapsed:
        publish(study, EventKind.GOVERNANCE_EXPIRED, {"checks": lapsed})
        record(actor=None, action=StudyAction.GOVERNANCE_EXPIRED, target=study, study=study,
               details={"checks": [f"{c['name']}:{c['site'] or 'study'}" for c in lapsed]})
    publish_gate(study, trigger="scheduled check", gate=gate)
    return True
