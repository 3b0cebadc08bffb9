"""What a site agent does to a round through the services: download the model, submit an update.
Every refusal: its status and code, its message, nothing stored, the denial audited."""

import math
import pickle
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from django.utils import timezone

from aggregation.choices import RoundKind, RoundStatus, UpdateStatus
from aggregation.models import Round, Update
from aggregation.services import model_download, round_aggregate, round_check_deadline, statistics_submit
from consortium.audit.models import AuditEvent, AuditOutcome
from consortium.errors import Conflict, GateRefused, NotFound, PayloadTooLarge, ValidationFailed
from consortium.federated import codec
from studies import services as study_services
from studies.models import EthicsApproval
from tests.aggregation.support import (
    GOOD_METRICS,
    agent_for,
    base_tensors,
    open_round,
    record_enqueued,
    rejected,
    stored_files,
    submit,
    third_site,
    three_site_round,
    three_site_study,
    update_tensors,
)
from tests.base import active_study
from tests.support import actions_after, events_after, last_seq


def test_it_hands_a_site_the_base_model_and_audits_the_download(fed):
    round_ = open_round(fed.study)
    mark = last_seq()
    version, data = model_download(actor=fed.agent_a, round_id=round_.pk)
    assert version == round_.base_version and codec.sha256_hex(data) == version.sha256
    assert codec.decode(data, expected={"linear.weight": ((1, 4), "float32"), "linear.bias": ((1,), "float32")},
                        max_bytes=len(data)).keys() == {"linear.weight", "linear.bias"}
    [event] = events_after(mark)
    assert (event.action, event.outcome, event.site_id, event.study_id) == (
        "aggregation.model.downloaded", AuditOutcome.OK, fed.p.site_a.pk, fed.study.pk)
    assert event.actor_label == fed.agent_a.get_username()
    assert event.details == {"round": 1, "version": 0, "sha256": version.sha256}


def test_it_refuses_a_download_to_a_site_outside_the_study(fed):
    round_ = open_round(fed.study)
    outsider, _ = agent_for(fed.p, third_site(fed.p))
    with rejected(NotFound, "No such round", code="not_found", status=404, action="aggregation.model.download"):
        model_download(actor=outsider, round_id=round_.pk)


def test_it_refuses_a_download_to_a_site_the_gate_refuses(fed):
    round_ = open_round(fed.study)
    study_services.participation_suspend(actor=fed.p.site_a_admin, participation=fed.participation(fed.p.site_a),
                                         reason="Server maintenance.")
    with rejected(GateRefused, "Participation is suspended", code="gate_refused", status=403,
                  action="aggregation.model.download"):
        model_download(actor=fed.agent_a, round_id=round_.pk)


def test_it_stores_a_valid_update_with_its_norms_and_audits_it(fed, settings):
    round_ = open_round(fed.study)
    tensors = update_tensors(round_, seed=7)
    body = codec.encode(tensors)
    mark = last_seq()
    update, created = submit(fed.agent_a, round_, body=body, num_examples=120, key="attempt-1")
    assert created
    update.refresh_from_db()
    assert (update.site, update.round, update.base_version, update.status) == (
        fed.p.site_a, round_, round_.base_version, UpdateStatus.ACCEPTED)
    assert (update.num_examples, update.metrics, update.idempotency_key) == (120, GOOD_METRICS, "attempt-1")
    assert update.sha256 == codec.sha256_hex(body) and update.size_bytes == len(body)
    assert update.submitted_by == fed.agent_a.get_username()
    assert (Path(settings.MODEL_STORE) / update.path).read_bytes() == body
    base = base_tensors(round_)
    expected_delta = math.sqrt(sum(float((tensors[n].double() - base[n].double()).pow(2).sum()) for n in base))
    assert update.delta_norm == pytest.approx(expected_delta)
    assert update.weight_norm == pytest.approx(math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors.values())))
    assert actions_after(mark) == ["aggregation.update.accepted"]
    event = AuditEvent.objects.get(action="aggregation.update.accepted")
    assert (event.site_id, event.study_id) == (fed.p.site_a.pk, fed.study.pk)
    assert event.details["sha256"] == update.sha256 and event.details["num_examples"] == 120
    assert Round.objects.get(pk=round_.pk).status == RoundStatus.OPEN  # one of two sites: the round stays open


def _pickled(round_: Round) -> bytes:
    return pickle.dumps({name: tensor for name, tensor in update_tensors(round_).items()})


def _renamed(round_: Round) -> bytes:
    tensors = update_tensors(round_)
    tensors["linear.weights"] = tensors.pop("linear.weight")
    return codec.encode(tensors)


def _reshaped(round_: Round) -> bytes:
    tensors = update_tensors(round_)
    tensors["linear.weight"] = torch.zeros(1, 5)
    return codec.encode(tensors)


def _float64(round_: Round) -> bytes:
    return codec.encode({name: tensor.double() for name, tensor in update_tensors(round_).items()})


def _poisoned(value: float):
    def make(round_: Round) -> bytes:
        tensors = update_tensors(round_)
        tensors["linear.weight"][0, 2] = value
        return codec.encode(tensors)

    return make


@pytest.mark.parametrize(("make", "code", "match"), [
    (_pickled, "not_safetensors", "not a valid safetensors file"),
    (lambda round_: b"", "not_safetensors", "not a valid safetensors file"),
    (_renamed, "tensor_names", r"missing \['linear.weight'\], unexpected \['linear.weights'\]"),
    (_reshaped, "shape", r"'linear.weight' has shape \[1, 5\]; expected \[1, 4\]"),
    (_float64, "dtype", "'linear.(weight|bias)' is float64; updates must be float32"),
    (_poisoned(float("nan")), "not_finite", "'linear.weight' contains NaN or infinite values"),
    (_poisoned(float("inf")), "not_finite", "'linear.weight' contains NaN or infinite values"),
], ids=["pickle", "empty", "names", "shape", "float64", "nan", "inf"])
def test_it_refuses_an_update_whose_body_is_not_the_models_tensors(fed, make, code, match):
    round_ = open_round(fed.study)
    body = make(round_)
    with rejected(ValidationFailed, match, code=code, status=400) as refusal:
        submit(fed.agent_a, round_, body=body)
    assert refusal.event.site_id == fed.p.site_a.pk and refusal.event.study_id == fed.study.pk


def test_it_refuses_an_update_over_the_size_limit_with_413(fed, settings):
    round_ = open_round(fed.study)
    body = codec.encode(update_tensors(round_))
    settings.MAX_UPDATE_BYTES = len(body) - 1
    with rejected(PayloadTooLarge, f"{len(body):,} bytes; the limit is {len(body) - 1:,}", code="too_large",
                  status=413):
        submit(fed.agent_a, round_, body=body)


def test_it_refuses_an_update_for_a_stale_round_number(fed):
    round_ = open_round(fed.study)
    with rejected(Conflict, "This is round 1, not 0", code="stale_round", status=409):
        submit(fed.agent_a, round_, round_number=0)


def test_it_refuses_an_update_trained_from_a_stale_model_version(fed):
    round_ = open_round(fed.study)
    with rejected(Conflict, r"Round 1 trains from model v0, not v3", code="stale_model", status=409):
        submit(fed.agent_a, round_, base_version=3)


def test_it_refuses_an_update_for_a_blocked_round(fed, monkeypatch):
    record_enqueued(monkeypatch)
    round_ = open_round(fed.study)
    round_check_deadline(round_id=round_.pk, moment=round_.deadline + timedelta(seconds=1))
    with rejected(Conflict, "Round 1 is blocked by the gate; it takes no more submissions", code="stale_round",
                  status=409):
        submit(fed.agent_a, round_)


def test_it_refuses_an_update_for_a_closed_round(p, monkeypatch):
    record_enqueued(monkeypatch)
    site_c = third_site(p)
    study = three_site_study(p, site_c)
    round_ = open_round(study)
    submit(agent_for(p, p.site_a)[0], round_)
    submit(agent_for(p, site_c)[0], round_)
    round_check_deadline(round_id=round_.pk, moment=round_.deadline + timedelta(seconds=1))
    round_aggregate(round_id=round_.pk)
    assert Round.objects.get(pk=round_.pk).status == RoundStatus.CLOSED
    late, _ = agent_for(p, p.site_b)
    with rejected(Conflict, "Round 1 is closed; it takes no more submissions", code="stale_round", status=409):
        submit(late, round_)


def _revoke(fed):
    study_services.participation_revoke(actor=fed.p.site_a_admin, participation=fed.participation(fed.p.site_a),
                                        reason="Consent withdrawn.")
    return ["participation"], "Participation is revoked. Consent withdrawn."


def _suspend(fed):
    study_services.participation_suspend(actor=fed.p.site_a_admin, participation=fed.participation(fed.p.site_a),
                                         reason="Data quality audit.")
    return ["participation"], "Participation is suspended. Data quality audit."


def _expire_ethics(fed):
    now = timezone.now()
    # Time passes: the approval recorded a year ahead has lapsed (set directly: no service moves time).
    EthicsApproval.objects.filter(study=fed.study, site=fed.p.site_a).update(
        valid_from=now - timedelta(days=400), valid_until=now - timedelta(minutes=1))
    return ["ethics"], "Ethics approval IRB-amc-1 expired"


@pytest.mark.parametrize("lapse", [_revoke, _suspend, _expire_ethics], ids=["revoked", "suspended", "ethics"])
def test_it_refuses_an_update_when_the_gate_refuses_the_site_and_lists_the_failing_checks(fed, lapse):
    round_ = open_round(fed.study)
    checks, reason = lapse(fed)
    with rejected(GateRefused, "The gate refuses this site now: " + reason, code="gate_refused",
                  status=403) as refusal:
        submit(fed.agent_a, round_)
    failing = refusal.error.details["checks"]
    assert [check["name"] for check in failing] == checks
    assert all(not check["passed"] and check["site_id"] == fed.p.site_a.pk for check in failing)
    assert reason in failing[0]["reason"]


def test_it_answers_not_found_to_a_site_outside_the_study(fed):
    round_ = open_round(fed.study)
    outsider, _ = agent_for(fed.p, third_site(fed.p))
    with rejected(NotFound, "No such round", code="not_found", status=404):
        submit(outsider, round_)
    with rejected(NotFound, "No such round", code="not_found", status=404):
        submit(fed.agent_a, Round(pk=round_.pk + 99, number=1, base_version=round_.base_version))


def test_it_returns_the_same_update_for_a_retry_with_the_same_idempotency_key(fed):
    round_ = open_round(fed.study)
    first, created = submit(fed.agent_a, round_, key="once", seed=3)
    files, mark = stored_files(), last_seq()
    again, created_again = submit(fed.agent_a, round_, key="once", seed=3)
    assert created and not created_again
    assert again.pk == first.pk and again.sha256 == first.sha256
    assert Update.objects.count() == 1 and stored_files() == files and actions_after(mark) == []


def test_it_refuses_a_different_second_update_from_the_same_site(fed):
    round_ = open_round(fed.study)
    first, _ = submit(fed.agent_a, round_, key="first", seed=3)
    with rejected(Conflict, "Amsterdam UMC already submitted an update for round 1; one per site per round",
                  code="duplicate_update", status=409):
        submit(fed.agent_a, round_, key="second", seed=4)
    assert Update.objects.get().sha256 == first.sha256


@pytest.mark.parametrize("metrics", [
    {**GOOD_METRICS, "val_loss": float("nan")},
    {**GOOD_METRICS, "train_loss": float("inf")},
    {**GOOD_METRICS, "val_auc": "0.9"},
    {**GOOD_METRICS, "base": {"val_loss": float("nan"), "val_examples": 20}},
], ids=["nan", "inf", "text", "base-nan"])
def test_it_refuses_metrics_that_are_not_finite_numbers(fed, metrics):
    round_ = open_round(fed.study)
    with rejected(ValidationFailed, "Metrics must be finite numbers", code="metrics", status=400):
        submit(fed.agent_a, round_, metrics=metrics)


def test_it_refuses_a_non_positive_number_of_examples(fed):
    round_ = open_round(fed.study)
    with rejected(ValidationFailed, "X-Num-Examples must be a positive integer", code="num_examples", status=400):
        submit(fed.agent_a, round_, num_examples=0)


def _after_statistics(p, counts: tuple[int, int]) -> Round:
    """A study whose statistics round pooled site A's and B's counts; returns its open training round."""
    study = active_study(p, federated_statistics=True, num_features=4, quorum=2)
    statistics = open_round(study)
    for site, count in zip((p.site_a, p.site_b), counts, strict=True):
        statistics_submit(actor=agent_for(p, site)[0], round_id=statistics.pk, features=["a", "b", "c", "d"],
                          count=count, sums=[1.0] * 4, sums_of_squares=[float(count)] * 4)
    return Round.objects.get(study=study, kind=RoundKind.TRAINING, status=RoundStatus.OPEN)


def test_it_refuses_more_examples_than_the_site_counted_in_the_statistics_round(p):
    round_ = _after_statistics(p, (40, 75))
    agent_a = agent_for(p, p.site_a, name="Trainer")[0]
    with rejected(ValidationFailed, "X-Num-Examples is 4000, but Amsterdam UMC counted 40 training rows in the "
                  "statistics round \\(round 1\\)", code="num_examples_above_known", status=400) as outcome:
        submit(agent_a, round_, num_examples=4000)
    assert outcome.event.site_id == p.site_a.pk and outcome.event.details["round"] == 2
    update, created = submit(agent_a, round_, num_examples=40)  # what it counted is accepted
    assert created and update.num_examples == 40


def test_it_names_the_round_in_the_audit_event_of_a_refused_update(fed):
    round_ = open_round(fed.study)
    mark = last_seq()
    with pytest.raises(Conflict):
        submit(fed.agent_a, round_, round_number=7)
    [denial] = events_after(mark)
    assert (denial.action, denial.outcome) == ("aggregation.update.submit", AuditOutcome.DENIED)
    assert (denial.details["round"], denial.details["round_id"]) == (1, round_.pk)


def test_it_accepts_an_update_without_metrics(fed):
    round_ = open_round(fed.study)
    update, created = submit(fed.agent_a, round_, metrics={})
    assert created and update.metrics == {}


def test_it_hands_the_round_to_aggregation_after_commit_once_every_eligible_site_submitted(
        fed, monkeypatch, django_capture_on_commit_callbacks):
    enqueued = record_enqueued(monkeypatch)
    round_ = open_round(fed.study)
    with django_capture_on_commit_callbacks(execute=True):
        submit(fed.agent_a, round_)
    assert enqueued == [] and Round.objects.get(pk=round_.pk).status == RoundStatus.OPEN
    mark = last_seq()
    with django_capture_on_commit_callbacks(execute=True):
        submit(fed.agent_b, round_)
        assert enqueued == [], "the task was enqueued before the submission committed"
    assert enqueued == [round_.pk]  # once, after commit
    round_.refresh_from_db()
    assert round_.status == RoundStatus.AGGREGATING
    assert round_.status_reason == "Every eligible site has submitted."
    assert actions_after(mark) == ["aggregation.update.accepted", "aggregation.round.aggregating"]


def test_it_aggregates_at_the_deadline_without_a_site_suspended_meanwhile(
        fed, monkeypatch, django_capture_on_commit_callbacks):
    enqueued = record_enqueued(monkeypatch)
    study, round_, site_c = three_site_round(fed.p)
    c_agent, _ = agent_for(fed.p, site_c)
    submit(fed.agent_a, round_)
    submit(c_agent, round_)
    participation_b = study.participations.get(site=fed.p.site_b)
    with django_capture_on_commit_callbacks(execute=True):
        study_services.participation_suspend(actor=fed.p.site_b_admin, participation=participation_b,
                                             reason="Paused.")
    assert Round.objects.get(pk=round_.pk).status == RoundStatus.OPEN  # noticed at the deadline, not before
    with django_capture_on_commit_callbacks(execute=True):
        round_check_deadline(round_id=round_.pk, moment=round_.deadline)
    assert Round.objects.get(pk=round_.pk).status == RoundStatus.AGGREGATING and enqueued == [round_.pk]
