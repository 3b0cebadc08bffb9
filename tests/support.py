"""Assertions the service tests share: what a success wrote to the audit log, and that a refusal
changed nothing but the denial event. Plus `study_in`, which walks a study to any status."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.db.models import Max

from consortium.audit.models import AuditEvent, AuditOutcome
from consortium.errors import DomainError
from sites.models import Site, SiteUserObjectPermission
from studies import services
from studies.choices import StudyStatus
from studies.models import (
    AgreementSignature,
    AgreementVersion,
    Approval,
    DatasetRegistration,
    Dpia,
    EthicsApproval,
    Participation,
    Study,
    StudyEvent,
    StudyUserObjectPermission,
)
from tests.base import Personas, active_study, draft_study

# Every table a service may write besides the audit log.
GOVERNED = (
    Site,
    SiteUserObjectPermission,
    Study,
    StudyUserObjectPermission,
    AgreementVersion,
    AgreementSignature,
    Dpia,
    EthicsApproval,
    Participation,
    Approval,
    DatasetRegistration,
)


def last_seq() -> int:
    return AuditEvent.objects.aggregate(top=Max("seq"))["top"] or 0


def events_after(seq: int) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(seq__gt=seq).order_by("seq"))


def actions_after(seq: int) -> list[str]:
    return [event.action for event in events_after(seq)]


def snapshot() -> dict[str, list[dict[str, Any]]]:
    """Every governed row, as stored: equal snapshots mean nothing was written."""
    return {model._meta.label: list(model.objects.order_by("pk").values()) for model in GOVERNED}


@dataclass
class Refusal:
    error: BaseException | None = None
    event: AuditEvent | None = None
    events: list[AuditEvent] = field(default_factory=list)


@contextmanager
def refused(error: type[Exception], match: str, *, action: str, published: tuple[str, ...] = (),
            context: frozenset[str] = frozenset()) -> Iterator[Refusal]:
    """The block must raise `error` (message matching `match`), change no governed row, and leave
    exactly one audit event: the denial named `action`, carrying the refusal's message (and the `context`
    keys the service adds to it, which the caller checks). Live dashboards hear only of the refusal itself
    (`published`: the kinds of study events expected, none by default)."""
    before, mark, outcome = snapshot(), last_seq(), Refusal()
    events_mark = StudyEvent.objects.aggregate(top=Max("pk"))["top"] or 0
    with pytest.raises(error, match=match) as info:
        yield outcome
    outcome.error = info.value
    assert snapshot() == before, "a refused request changed governed data"
    published_now = list(StudyEvent.objects.filter(pk__gt=events_mark).order_by("pk").values_list("kind", flat=True))
    assert published_now == list(published), published_now
    outcome.events = events_after(mark)
    assert [(e.action, e.outcome) for e in outcome.events] == [(action, AuditOutcome.DENIED)]
    outcome.event = outcome.events[0]
    assert context <= outcome.event.details.keys(), outcome.event.details
    details = {key: value for key, value in outcome.event.details.items() if key not in context}
    if isinstance(info.value, DomainError):
        assert details == {"reason": info.value.message, "code": info.value.code}
    else:  # a model's own validation
        assert details["code"] == "validation_failed" and details["reason"]


def only_event(mark: int, action: str) -> AuditEvent:
    """The one event written since `mark`, which must be a success named `action`."""
    events = events_after(mark)
    assert [(e.action, e.outcome) for e in events] == [(action, AuditOutcome.OK)], [e.action for e in events]
    return events[0]


def study_in(p: Personas, status: StudyStatus, **protocol: Any) -> Study:
    """A study brought to `status` through the real services (no sites or DPIA unless active)."""
    if status == StudyStatus.ACTIVE:
        return active_study(p, **protocol)
    study = draft_study(p, **protocol)
    if status == StudyStatus.CLOSED:
        services.study_close(actor=p.pi, study=study, reason="Abandoned.")
    if status in {StudyStatus.SUBMITTED, StudyStatus.APPROVED, StudyStatus.SUSPENDED}:
        services.study_submit(actor=p.pi, study=study)
    if status in {StudyStatus.APPROVED, StudyStatus.SUSPENDED}:
        services.study_approve(actor=p.pi, study=study)
        services.study_approve(actor=p.dpo, study=study)
    if status == StudyStatus.SUSPENDED:
        services.study_activate(actor=p.pi, study=study)
        services.study_suspend(actor=p.dpo, study=study, justification="Data leak suspected.")
    study.refresh_from_db()
    assert study.status == status
    return study
