"""A study's live event log: persisted in the transaction that made the change, numbered per study,
broadcast only after commit, and fed by the governance services and the scheduler's expiry watch."""

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from consortium.errors import Forbidden
from studies import events, services
from studies.choices import EventKind
from studies.models import EthicsApproval, Participation, StudyEvent
from studies.services.monitoring import governance_watch
from tests.base import active_study, draft_study
from tests.support import refused


@pytest.fixture
def broadcasts(monkeypatch) -> list[tuple[int, int]]:
    """(study id, seq) of every event handed to the channel layer."""
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(events, "broadcast", lambda event: sent.append((event.study_id, event.seq)))
    return sent


def kinds(study, after: int = 0) -> list[str]:
    return list(StudyEvent.objects.filter(study=study, seq__gt=after).order_by("seq").values_list("kind", flat=True))


def test_it_numbers_each_studys_events_from_one_without_gaps(p):
    first, second = draft_study(p, title="One"), draft_study(p, title="Two")
    for study in (first, second, first, first, second):
        events.publish(study, EventKind.STUDY_CHANGED, {"note": study.title})
    assert list(first.events.values_list("seq", flat=True)) == [1, 2, 3]
    assert list(second.events.values_list("seq", flat=True)) == [1, 2]


def test_it_broadcasts_only_after_the_transaction_commits(p, broadcasts, django_capture_on_commit_callbacks):
    study = draft_study(p)
    with django_capture_on_commit_callbacks(execute=True):
        event = events.publish(study, EventKind.STUDY_CHANGED, {"after": "draft"})
        assert broadcasts == [], "broadcast before commit"
    assert broadcasts == [(study.pk, event.seq)]


def test_it_leaves_no_event_and_sends_nothing_for_a_change_that_rolled_back(p, broadcasts,
                                                                            django_capture_on_commit_callbacks):
    study = draft_study(p)
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError):
        with transaction.atomic():
            events.publish(study, EventKind.STUDY_CHANGED, {"after": "active"})
            raise RuntimeError("the change failed after publishing")
    assert not StudyEvent.objects.filter(study=study).exists() and broadcasts == []


def test_a_refused_governance_action_publishes_nothing(p, broadcasts, django_capture_on_commit_callbacks):
    study = active_study(p)
    participation = Participation.objects.get(study=study, site=p.site_b)
    before = kinds(study)
    with django_capture_on_commit_callbacks(execute=True):
        with refused(Forbidden, "Only an admin of", action="studies.participation.revoke"):
            services.participation_revoke(actor=p.site_a_admin, participation=participation, reason="not my site")
    assert kinds(study) == before and broadcasts == []


def test_a_revocation_publishes_the_change_then_the_gate_with_the_site_failing(p):
    study = active_study(p)
    participation = Participation.objects.get(study=study, site=p.site_a)
    mark = study.events.order_by("-seq").values_list("seq", flat=True).first()
    services.participation_revoke(actor=p.site_a_admin, participation=participation, reason="Board withdrew consent")
    changed, gate = StudyEvent.objects.filter(study=study, seq__gt=mark).order_by("seq")
    assert changed.kind == EventKind.PARTICIPATION_CHANGED
    assert changed.payload == {"site_id": p.site_a.pk, "site": p.site_a.name, "before": "granted", "after": "revoked",
                               "reason": "Board withdrew consent", "by": p.site_a_admin.username}
    assert gate.kind == EventKind.GATE_EVALUATED and gate.payload["trigger"] == EventKind.PARTICIPATION_CHANGED
    site_a = [c for c in gate.payload["gate"]["checks"] if c["site_id"] == p.site_a.pk]
    assert any(not c["passed"] and c["name"] == "participation" for c in site_a)
    assert p.site_a.pk not in gate.payload["gate"]["eligible_site_ids"]


def test_approvals_and_activation_are_published(p):
    study = active_study(p)
    assert EventKind.APPROVAL_CHANGED in kinds(study)
    changes = [e.payload for e in study.events.filter(kind=EventKind.STUDY_CHANGED).order_by("seq")]
    assert changes[-1]["after"] == "active"


def test_the_watch_announces_an_ethics_approval_that_lapsed_once(p):
    study = active_study(p)
    now = timezone.now()
    EthicsApproval.objects.filter(study=study, site=p.site_b).update(valid_until=now + timedelta(days=3))
    assert governance_watch(moment=now) == 0  # activation published this verdict already
    mark = study.events.order_by("-seq").first().seq
    later = now + timedelta(days=3, seconds=1)
    assert governance_watch(moment=later) == 1
    assert kinds(study, mark) == [EventKind.GOVERNANCE_EXPIRED, EventKind.GATE_EVALUATED]
    expired = study.events.get(kind=EventKind.GOVERNANCE_EXPIRED).payload["checks"]
    assert [(c["name"], c["site_id"]) for c in expired] == [("ethics", p.site_b.pk)]
    assert governance_watch(moment=later + timedelta(seconds=5)) == 0
