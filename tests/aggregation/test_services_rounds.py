"""Opening rounds and enforcing their deadlines (`round_open_next`, `round_check_deadline`, `rounds_tick`)."""

from datetime import timedelta

import torch
from django.utils import timezone

from aggregation.choices import RoundKind, RoundStatus
from aggregation.models import ModelVersion, Round
from aggregation.services import round_aggregate, round_check_deadline, round_open_next, rounds_tick
from aggregation.storage import version_tensors
from consortium.audit.models import AuditEvent
from consortium.federated import codec, zoo
from studies import services as study_services
from studies.choices import StudyStatus
from tests.aggregation.support import (
    agent_for,
    governed_study,
    open_round,
    record_enqueued,
    send_evaluation,
    submit,
    third_site,
    three_site_study,
)
from tests.support import actions_after, last_seq, study_in


def test_it_opens_the_first_round_from_a_deterministic_initial_model(p):
    study = governed_study(p)
    mark = last_seq()
    round_ = round_open_next(study_id=study.pk)
    assert (round_.number, round_.kind, round_.status) == (1, RoundKind.TRAINING, RoundStatus.OPEN)
    assert round_.deadline == round_.opened_at + timedelta(minutes=study.round_deadline_minutes)
    v0 = round_.base_version
    assert (v0.number, v0.round, v0.provenance["initial"]) == (0, None, True)
    tensors = version_tensors(v0)
    expected = zoo.initial_state(study.model_kind, 4, seed=study.pk)
    assert tensors.keys() == expected.keys()
    assert all(torch.equal(tensors[name], expected[name]) for name in expected)
    assert v0.sha256 == codec.sha256_hex(codec.encode(expected))  # the same bytes every time
    assert v0.spec == {"linear.weight": [[1, 4], "float32"], "linear.bias": [[1], "float32"]}
    assert actions_after(mark) == ["aggregation.model_version.created", "aggregation.round.opened"]
    opened = AuditEvent.objects.get(action="aggregation.round.opened")
    assert opened.details["eligible_site_ids"] == [p.site_a.pk, p.site_b.pk]
    assert opened.details["base_version"] == 0


def test_it_opens_no_second_round_while_one_is_open(fed):
    first = open_round(fed.study)
    assert round_open_next(study_id=fed.study.pk) is None
    assert list(Round.objects.values_list("pk", flat=True)) == [first.pk]
    assert ModelVersion.objects.count() == 1


def test_it_opens_no_round_for_a_study_that_is_not_active(p):
    for status in (StudyStatus.APPROVED, StudyStatus.SUSPENDED):
        study = study_in(p, status, title=f"Study {status}", federated_statistics=False, num_features=4)
        mark = last_seq()
        assert round_open_next(study_id=study.pk) is None
        assert actions_after(mark) == []
    assert not Round.objects.exists() and not ModelVersion.objects.exists()


def test_it_opens_no_round_for_a_suspended_study_that_was_active(fed):
    study_services.study_suspend(actor=fed.p.dpo, study=fed.study, justification="Re-identification risk.")
    mark = last_seq()
    assert round_open_next(study_id=fed.study.pk) is None
    assert actions_after(mark) == [] and not Round.objects.exists()


def test_it_opens_no_round_when_the_gate_refuses(p):
    study = governed_study(p, quorum=3)  # two sites eligible, three needed
    mark = last_seq()
    assert round_open_next(study_id=study.pk) is None
    assert actions_after(mark) == []
    assert not Round.objects.exists() and not ModelVersion.objects.exists()


def test_it_opens_no_round_past_the_round_budget_and_the_final_evaluation(p, monkeypatch):
    record_enqueued(monkeypatch)
    study = governed_study(p, rounds=1)
    (agent_a, _), (agent_b, _) = agent_for(p, p.site_a), agent_for(p, p.site_b)
    round_ = open_round(study)
    submit(agent_a, round_)
    submit(agent_b, round_)
    version = round_aggregate(round_id=round_.pk)
    round_.refresh_from_db()
    assert round_.status == RoundStatus.CLOSED and version.number == 1
    final = Round.objects.get(study=study, number=2)
    assert (final.kind, final.base_version, final.status) == (RoundKind.EVALUATION, version, RoundStatus.OPEN)
    send_evaluation(agent_a, final)
    send_evaluation(agent_b, final)
    final.refresh_from_db()
    assert final.status == RoundStatus.CLOSED
    mark = last_seq()
    assert round_open_next(study_id=study.pk) is None
    rounds_tick()
    assert Round.objects.count() == 2 and actions_after(mark) == []


def test_it_hands_a_round_past_its_deadline_with_quorum_to_aggregation_after_commit(
        p, monkeypatch, django_capture_on_commit_callbacks):
    enqueued = record_enqueued(monkeypatch)
    site_c = third_site(p)
    study = three_site_study(p, site_c)  # quorum 2 of 3: two submissions are enough once the deadline passes
    round_ = open_round(study)
    submit(agent_for(p, p.site_a)[0], round_)
    submit(agent_for(p, site_c)[0], round_)
    round_.refresh_from_db()
    assert round_.status == RoundStatus.OPEN  # site B has not sent its update yet
    mark = last_seq()
    with django_capture_on_commit_callbacks(execute=True):
        round_check_deadline(round_id=round_.pk, moment=round_.deadline + timedelta(seconds=1))
        assert enqueued == [], "enqueued before the transaction committed"
    assert enqueued == [round_.pk]  # once, after commit
    round_.refresh_from_db()
    assert round_.status == RoundStatus.AGGREGATING and round_.aggregation_started_at is not None
    assert round_.status_reason == "Deadline passed with 2 eligible submissions (quorum 2)."
    assert actions_after(mark) == ["aggregation.round.aggregating"]


def test_it_blocks_a_round_past_its_deadline_without_quorum_and_says_why(
        fed, monkeypatch, django_capture_on_commit_callbacks):
    enqueued = record_enqueued(monkeypatch)
    round_ = open_round(fed.study)
    submit(fed.agent_a, round_)
    mark = last_seq()
    with django_capture_on_commit_callbacks(execute=True):
        round_check_deadline(round_id=round_.pk, moment=round_.deadline + timedelta(minutes=1))
    assert enqueued == []
    round_.refresh_from_db()
    assert round_.status == RoundStatus.BLOCKED and round_.closed_at is not None
    assert round_.status_reason == "Deadline passed with 1 eligible submissions; the quorum is 2."
    assert actions_after(mark) == ["aggregation.round.blocked"]
    event = AuditEvent.objects.get(action="aggregation.round.blocked")
    assert event.details["reason"] == round_.status_reason and event.details["gate"]["action"] == "aggregate"


def test_it_leaves_a_round_alone_before_its_deadline(fed, monkeypatch):
    enqueued = record_enqueued(monkeypatch)
    round_ = open_round(fed.study)
    mark = last_seq()
    round_check_deadline(round_id=round_.pk, moment=round_.deadline - timedelta(seconds=1))
    round_.refresh_from_db()
    assert round_.status == RoundStatus.OPEN and actions_after(mark) == [] and enqueued == []


def test_it_ticks_open_rounds_for_active_studies_and_enforces_deadlines(p, monkeypatch):
    enqueued = record_enqueued(monkeypatch)
    study = governed_study(p)
    now = timezone.now()
    rounds_tick(moment=now)
    first = Round.objects.get(study=study)
    assert (first.number, first.status) == (1, RoundStatus.OPEN)
    rounds_tick(moment=now + timedelta(seconds=5))  # nothing due: nothing changes
    assert Round.objects.filter(study=study).count() == 1
    rounds_tick(moment=first.deadline + timedelta(seconds=1))  # no submissions: blocked
    first.refresh_from_db()
    assert first.status == RoundStatus.BLOCKED
    # The same tick then opens the next round for the study, which has no live round any more.
    second = Round.objects.get(study=study, number=2)
    assert second.status == RoundStatus.OPEN and second.base_version.number == 0
    assert enqueued == []


def test_it_ticks_a_lost_aggregation_back_to_the_queue(fed, monkeypatch, django_capture_on_commit_callbacks):
    enqueued = record_enqueued(monkeypatch)
    round_ = open_round(fed.study)
    Round.objects.filter(pk=round_.pk).update(status=RoundStatus.AGGREGATING,
                                              aggregation_started_at=timezone.now() - timedelta(minutes=5))
    with django_capture_on_commit_callbacks(execute=True):
        rounds_tick()
    assert enqueued == [round_.pk]  # sent once its transaction committed (more in test_services_recovery.py)
    assert Round.objects.filter(study=fed.study).count() == 1  # a live round: no other opens
