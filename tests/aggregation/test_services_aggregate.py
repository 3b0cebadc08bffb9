"""Aggregating a round (`round_aggregate`): the new model version and its provenance, exactly once,
behind the gate asked again at aggregation time, and the evaluation of each version."""

import json

import pytest
import torch
from django.db import IntegrityError, transaction
from scipy.stats import chi2

from aggregation.choices import RoundKind, RoundStatus, UpdateStatus
from aggregation.models import ModelVersion, Round, Update
from aggregation.services import round_aggregate
from aggregation.storage import absolute, version_tensors
from consortium.audit.models import AuditEvent
from consortium.federated import codec
from consortium.version import code_version
from studies import services as study_services
from studies.models import AgreementVersion
from tests.aggregation.support import (
    GOOD_METRICS,
    agent_for,
    governed_study,
    open_round,
    submit,
    third_site,
    three_site_study,
    update_tensors,
)
from tests.support import actions_after, last_seq

pytestmark = pytest.mark.usefixtures("no_broker")


def weighted_mean(pairs: list[tuple[dict[str, torch.Tensor], int]]) -> dict[str, torch.Tensor]:
    total = sum(n for _, n in pairs)
    return {name: (sum(t[name].double() * n for t, n in pairs) / total).float() for name in pairs[0][0]}


def assert_tensors_close(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].dtype == torch.float32
        torch.testing.assert_close(got[name], expected[name], rtol=1e-6, atol=1e-7)


def test_it_aggregates_a_round_into_the_weighted_fedavg_with_its_provenance(fed):
    round_ = open_round(fed.study)
    tensors_a, tensors_b = update_tensors(round_, seed=11), update_tensors(round_, seed=12)
    update_a, _ = submit(fed.agent_a, round_, body=codec.encode(tensors_a), num_examples=30)
    update_b, _ = submit(fed.agent_b, round_, body=codec.encode(tensors_b), num_examples=90)
    assert Round.objects.get(pk=round_.pk).status == RoundStatus.AGGREGATING
    mark = last_seq()

    version = round_aggregate(round_id=round_.pk)

    assert (version.number, version.round, version.study) == (1, round_, fed.study)
    assert_tensors_close(version_tensors(version), weighted_mean([(tensors_a, 30), (tensors_b, 90)]))
    assert version.spec == round_.base_version.spec and version.size_bytes > 0
    provenance = version.provenance
    agreement = AgreementVersion.objects.get(study=fed.study)
    assert provenance["round"] == 1
    assert provenance["base_version"] == {"number": 0, "sha256": round_.base_version.sha256}
    assert provenance["contributors"] == [
        {"site_id": fed.p.site_a.pk, "site": "Amsterdam UMC", "num_examples": 30, "weight": 0.25,
         "update_sha256": update_a.sha256, "agreement_version": 1},
        {"site_id": fed.p.site_b.pk, "site": "Charité Berlin", "num_examples": 90, "weight": 0.75,
         "update_sha256": update_b.sha256, "agreement_version": 1},
    ]
    assert "num_examples" in provenance["weighting"]
    assert provenance["agreement"] == {"version": 1, "sha256": agreement.sha256}
    assert provenance["dpia"]["status"] == "approved" and provenance["dpia"]["valid_until"]
    assert provenance["gate"]["action"] == "aggregate" and provenance["gate"]["allowed"] is True
    assert provenance["gate"]["eligible_site_ids"] == [fed.p.site_a.pk, fed.p.site_b.pk]
    assert provenance["strategy"]["name"] == "fedavg" and "server_learning_rate" in provenance["strategy"]["settings"]
    assert provenance["protocol_sha256"] == fed.study.protocol_sha256()
    assert provenance["code_version"] == code_version()
    round_.refresh_from_db()
    assert round_.status == RoundStatus.CLOSED and round_.gate_result["allowed"] is True
    assert set(Update.objects.values_list("status", flat=True)) == {UpdateStatus.INCLUDED}
    assert actions_after(mark) == ["aggregation.model_version.created", "studies.privacy.spent",
                                   "aggregation.round.closed", "aggregation.round.opened"]
    created = AuditEvent.objects.filter(action="aggregation.model_version.created").last()
    assert created.details["sites"] == [fed.p.site_a.pk, fed.p.site_b.pk]
    assert created.details["sha256"] == version.sha256
    # The audit log alone reconciles with the provenance: who, with what weight, which update.
    assert created.details["included"] == [
        {"site_id": fed.p.site_a.pk, "site": "Amsterdam UMC", "num_examples": 30, "weight": 0.25,
         "update_sha256": update_a.sha256},
        {"site_id": fed.p.site_b.pk, "site": "Charité Berlin", "num_examples": 90, "weight": 0.75,
         "update_sha256": update_b.sha256},
    ]
    assert created.details["excluded"] == [] and created.details["weighting"] == provenance["weighting"]


def test_it_produces_exactly_one_model_version_when_run_twice(fed):
    round_ = open_round(fed.study)
    submit(fed.agent_a, round_)
    submit(fed.agent_b, round_)
    first = round_aggregate(round_id=round_.pk)
    mark = last_seq()
    second = round_aggregate(round_id=round_.pk)
    assert second == first
    assert ModelVersion.objects.filter(round=round_).count() == 1
    assert ModelVersion.objects.filter(study=fed.study).count() == 2  # v0 and v1
    assert actions_after(mark) == []


def test_it_refuses_a_second_model_version_for_a_round_in_the_database(fed):
    round_ = open_round(fed.study)
    submit(fed.agent_a, round_)
    submit(fed.agent_b, round_)
    version = round_aggregate(round_id=round_.pk)
    with pytest.raises(IntegrityError), transaction.atomic():
        ModelVersion.objects.create(study=fed.study, number=version.number + 1, round=round_, path=version.path,
                                    sha256=version.sha256, size_bytes=version.size_bytes, spec=version.spec)
    assert ModelVersion.objects.filter(round=round_).count() == 1


class WorkerDied(BaseException):
    """What the service sees of a worker killed mid-task: nothing it could catch and record."""


def test_it_finishes_with_one_version_a_round_left_aggregating_by_a_crash(fed, monkeypatch):
    from aggregation import strategies

    round_ = open_round(fed.study)
    submit(fed.agent_a, round_)
    submit(fed.agent_b, round_)
    real = strategies.aggregate

    def crash(*args, **kwargs):
        raise WorkerDied

    monkeypatch.setattr(strategies, "aggregate", crash)
    with pytest.raises(WorkerDied):
        round_aggregate(round_id=round_.pk)
    round_.refresh_from_db()
    assert round_.status == RoundStatus.AGGREGATING  # everything the crashed run did was rolled back
    assert not ModelVersion.objects.filter(round=round_).exists()
    assert set(Update.objects.values_list("status", flat=True)) == {UpdateStatus.ACCEPTED}

    monkeypatch.setattr(strategies, "aggregate", real)
    version = round_aggregate(round_id=round_.pk)
    assert round_aggregate(round_id=round_.pk) == version
    assert ModelVersion.objects.filter(round=round_).count() == 1 and version.number == 1
    assert Round.objects.get(pk=round_.pk).status == RoundStatus.CLOSED


def test_it_marks_the_round_failed_with_the_error_when_the_strategy_raises(fed, monkeypatch):
    from aggregation import strategies

    round_ = open_round(fed.study)
    submit(fed.agent_a, round_)
    submit(fed.agent_b, round_)

    def broken(*args, **kwargs):
        raise ValueError("Updates disagree on tensor names")

    monkeypatch.setattr(strategies, "aggregate", broken)
    with pytest.raises(ValueError):
        round_aggregate(round_id=round_.pk)
    round_.refresh_from_db()
    assert round_.status == RoundStatus.FAILED
    assert round_.status_reason == "ValueError: Updates disagree on tensor names"
    assert not ModelVersion.objects.filter(round=round_).exists()
    assert AuditEvent.objects.filter(action="aggregation.round.failed").count() == 1
    assert round_aggregate(round_id=round_.pk) is None  # a failed round stays failed


def _three_sites(p, **protocol):
    site_c = third_site(p)
    study = three_site_study(p, site_c, **protocol)
    agents = [agent_for(p, site)[0] for site in (p.site_a, p.site_b, site_c)]
    return study, site_c, agents


def test_it_excludes_the_update_of_a_site_revoked_after_submitting_and_renormalises(p):
    study, site_c, (agent_a, agent_b, agent_c) = _three_sites(p)
    round_ = open_round(study)
    tensors = {agent.site_id: update_tensors(round_, seed=agent.site_id) for agent in (agent_a, agent_b, agent_c)}
    for agent, examples in ((agent_a, 10), (agent_b, 30), (agent_c, 60)):
        submit(agent, round_, body=codec.encode(tensors[agent.site_id]), num_examples=examples)
    assert Round.objects.get(pk=round_.pk).status == RoundStatus.AGGREGATING
    study_services.participation_revoke(actor=p.site_b_admin, participation=study.participations.get(site=site_c),
                                        reason="Consent withdrawn by the hospital board.")
    mark = last_seq()

    version = round_aggregate(round_id=round_.pk)

    assert_tensors_close(version_tensors(version),
                         weighted_mean([(tensors[agent_a.site_id], 10), (tensors[agent_b.site_id], 30)]))
    assert [c["site_id"] for c in version.provenance["contributors"]] == [p.site_a.pk, p.site_b.pk]
    excluded = Update.objects.get(site=site_c)
    assert excluded.status == UpdateStatus.EXCLUDED
    assert excluded.exclusion_reason == "Participation is revoked. Consent withdrawn by the hospital board."
    assert actions_after(mark)[0] == "aggregation.update.excluded"
    event = AuditEvent.objects.get(action="aggregation.update.excluded")
    assert (event.site_id, event.study_id) == (site_c.pk, study.pk)
    assert event.details == {"round": 1, "reason": excluded.exclusion_reason}
    assert set(Update.objects.exclude(site=site_c).values_list("status", flat=True)) == {UpdateStatus.INCLUDED}
    assert [c["weight"] for c in version.provenance["contributors"]] == [0.25, 0.75]  # renormalised over A and B
    created = AuditEvent.objects.get(action="aggregation.model_version.created", details__version=1)
    assert [(s["site_id"], s["weight"]) for s in created.details["included"]] == [(p.site_a.pk, 0.25),
                                                                                 (p.site_b.pk, 0.75)]
    assert created.details["excluded"] == [{"site_id": site_c.pk, "site": "Karolinska",
                                            "reason": excluded.exclusion_reason}]


def test_it_blocks_the_round_when_the_revocation_policy_is_abort(p):
    study, site_c, agents = _three_sites(p, revocation_policy="abort")
    round_ = open_round(study)
    for agent in agents:
        submit(agent, round_)
    study_services.participation_revoke(actor=p.site_b_admin, participation=study.participations.get(site=site_c),
                                        reason="Consent withdrawn.")
    assert round_aggregate(round_id=round_.pk) is None
    round_.refresh_from_db()
    assert round_.status == RoundStatus.BLOCKED
    assert round_.status_reason == ("Aborted: an update came from a site no longer eligible "
                                    "(revocation policy: abort).")
    assert not ModelVersion.objects.filter(round=round_).exists()
    assert Update.objects.get(site=site_c).status == UpdateStatus.EXCLUDED  # the reason stays on record
    assert AuditEvent.objects.get(action="aggregation.round.blocked").details["reason"] == round_.status_reason


def test_it_blocks_the_round_when_exclusions_leave_fewer_updates_than_the_quorum(fed):
    round_ = open_round(fed.study)
    submit(fed.agent_a, round_)
    submit(fed.agent_b, round_)
    study_services.participation_revoke(actor=fed.p.site_a_admin, participation=fed.participation(fed.p.site_a),
                                        reason="Consent withdrawn.")
    assert round_aggregate(round_id=round_.pk) is None
    round_.refresh_from_db()
    assert round_.status == RoundStatus.BLOCKED
    assert round_.status_reason == "Only 1 eligible updates; the quorum is 2."
    assert round_.gate_result["allowed"] is False
    assert not ModelVersion.objects.filter(round=round_).exists()
    assert not Round.objects.filter(study=fed.study, number=2).exists()


def test_it_blocks_the_round_of_a_study_suspended_before_aggregation(fed):
    round_ = open_round(fed.study)
    submit(fed.agent_a, round_)
    submit(fed.agent_b, round_)
    study_services.study_suspend(actor=fed.p.dpo, study=fed.study, justification="Possible data leak.")
    assert round_aggregate(round_id=round_.pk) is None
    round_.refresh_from_db()
    assert round_.status == RoundStatus.BLOCKED
    assert "The study is suspended, not active. Suspended: Possible data leak." in round_.status_reason
    assert not ModelVersion.objects.filter(round=round_).exists()
    assert set(Update.objects.values_list("status", flat=True)) == {UpdateStatus.ACCEPTED}


def test_it_opens_each_next_round_from_the_new_version_until_the_budget_is_used(p):
    study = governed_study(p, rounds=2)
    (agent_a, _), (agent_b, _) = agent_for(p, p.site_a), agent_for(p, p.site_b)
    first = open_round(study)
    submit(agent_a, first)
    submit(agent_b, first)
    v1 = round_aggregate(round_id=first.pk)
    second = Round.objects.get(study=study, number=2)
    assert (second.status, second.base_version) == (RoundStatus.OPEN, v1)
    submit(agent_a, second)
    submit(agent_b, second)
    v2 = round_aggregate(round_id=second.pk)
    assert (v2.number, v2.provenance["base_version"]["number"]) == (2, 1)
    # The budget is used: what opens next is no training round but the sites' evaluation of the final model.
    third = Round.objects.get(study=study, number=3)
    assert (third.kind, third.base_version) == (RoundKind.EVALUATION, v2)
    assert list(ModelVersion.objects.filter(study=study).values_list("number", flat=True)) == [0, 1, 2]


def test_it_evaluates_a_version_by_the_validation_weighted_mean_of_sites_that_send_no_histogram(fed):
    first = open_round(fed.study)
    submit(fed.agent_a, first)
    submit(fed.agent_b, first)
    v1 = round_aggregate(round_id=first.pk)
    second = Round.objects.get(study=fed.study, number=2)
    base_a = {"val_loss": 0.4, "val_accuracy": 0.9, "val_auc": 0.95, "val_examples": 30}
    base_b = {"val_loss": 0.6, "val_accuracy": 0.7, "val_auc": 0.75, "val_examples": 10}
    submit(fed.agent_a, second, metrics={**GOOD_METRICS, "base": base_a})
    v1.refresh_from_db()
    assert {key: v1.evaluation["global"][key] for key in base_a} == pytest.approx(base_a)
    submit(fed.agent_b, second, metrics={**GOOD_METRICS, "base": base_b})
    v1.refresh_from_db()
    assert v1.evaluation["sites"] == {str(fed.p.site_a.pk): base_a, str(fed.p.site_b.pk): base_b}
    expected = {"val_loss": 0.45, "val_accuracy": 0.85, "val_auc": 0.9, "val_examples": 40}
    assert {key: v1.evaluation["global"][key] for key in expected} == pytest.approx(expected)
    assert v1.evaluation["global"]["val_auc_method"] == "site_mean"  # agents from before score histograms
    assert ModelVersion.objects.get(study=fed.study, number=0).evaluation == {}


def test_it_records_the_privacy_budget_spent_in_a_dp_models_provenance(p):
    from consortium.federated.accountant import epsilon

    study = governed_study(p, dp_noise_multiplier=1.2, dp_clip_norm=0.5, dp_target_epsilon=50.0)
    agent_a, agent_b = agent_for(p, p.site_a)[0], agent_for(p, p.site_b)[0]
    round_ = open_round(study)
    submit(agent_a, round_, body=codec.encode(update_tensors(round_, seed=1)), num_examples=10)
    submit(agent_b, round_, body=codec.encode(update_tensors(round_, seed=2)), num_examples=10)

    version = round_aggregate(round_id=round_.pk)

    privacy = version.provenance["privacy"]
    assert (privacy["noise_multiplier"], privacy["clip_norm"], privacy["delta"]) == (1.2, 0.5, 1e-5)
    assert privacy["epsilon_spent"] == pytest.approx(epsilon({1.2: 1}, 1e-5))
    study.refresh_from_db()
    assert study.privacy_ledger == {"1.2": 1}


def _dp_round(p, **protocol):
    study = governed_study(p, dp_noise_multiplier=1.0, dp_clip_norm=0.5, dp_target_epsilon=50.0, **protocol)
    agent_a, agent_b = agent_for(p, p.site_a)[0], agent_for(p, p.site_b)[0]
    round_ = open_round(study)
    submit(agent_a, round_, body=codec.encode(update_tensors(round_, seed=1)), num_examples=10)
    submit(agent_b, round_, body=codec.encode(update_tensors(round_, seed=2)), num_examples=990)
    return study, round_


class Rollback(Exception):
    """Undo an aggregation, so that the very same round can be aggregated again from the same updates."""


def test_it_draws_fresh_dp_noise_when_the_same_round_is_aggregated_again(p):
    study, round_ = _dp_round(p)
    models = []
    for _ in range(2):
        with pytest.raises(Rollback), transaction.atomic():
            models.append(version_tensors(round_aggregate(round_id=round_.pk)))
            raise Rollback
    # Same round, same updates, same settings: only noise nobody can predict makes the two models differ.
    assert all(not torch.equal(models[0][name], models[1][name]) for name in models[0])
    difference = torch.cat([(models[0][name] - models[1][name]).reshape(-1) for name in models[0]]).double()
    # Each value of the difference is N(0, sigma^2) with sigma = sqrt(2) z C / n, so the mean of their squares over
    # sigma^2 is chi-squared with k degrees of freedom over k: outside these bounds one time in 500,000 (a wrong
    # noise scale, e.g. no 1/n or z C missing, falls far outside them).
    sigma = 2 ** 0.5 * 1.0 * 0.5 / 2
    k = difference.numel()
    ratio = float(difference.pow(2).mean()) / sigma**2
    low, high = chi2.ppf(1e-6, k) / k, chi2.ppf(1 - 1e-6, k) / k
    assert low < ratio < high, (ratio, low, high)


def test_it_keeps_no_noise_seed_in_provenance_audit_log_or_live_events(p):
    from studies.models import StudyEvent

    study, round_ = _dp_round(p)
    version = round_aggregate(round_id=round_.pk)
    assert "seed" not in json.dumps(version.provenance)
    assert version.provenance["strategy"]["settings"]["dp_noise_multiplier"] == 1.0
    for details in AuditEvent.objects.filter(study_id=study.pk).values_list("details", flat=True):
        assert "seed" not in json.dumps(details)
    for payload in StudyEvent.objects.filter(study=study).values_list("payload", flat=True):
        assert "seed" not in json.dumps(payload)


def test_it_weights_every_site_equally_under_dp_and_says_so(p):
    study, round_ = _dp_round(p)
    version = round_aggregate(round_id=round_.pk)
    assert [(c["num_examples"], c["weight"]) for c in version.provenance["contributors"]] == [(10, 0.5), (990, 0.5)]
    assert "1/n" in version.provenance["weighting"]
    assert version.provenance["privacy"].get("void") is None


def test_it_voids_the_budget_of_a_dp_study_that_released_predictable_noise_before(p):
    study = governed_study(p, dp_noise_multiplier=1.0, dp_clip_norm=0.5, dp_target_epsilon=50.0, rounds=2)
    agent_a, agent_b = agent_for(p, p.site_a)[0], agent_for(p, p.site_b)[0]
    first = open_round(study)
    submit(agent_a, first)
    submit(agent_b, first)
    v1 = round_aggregate(round_id=first.pk)
    # As the data migration marks a version aggregated with the round's id as its noise seed.
    ModelVersion.objects.filter(pk=v1.pk).update(
        provenance={**v1.provenance, "privacy": {**v1.provenance["privacy"], "void": True, "void_reason": "seeded"}})
    second = Round.objects.get(study=study, number=2)
    submit(agent_a, second)
    submit(agent_b, second)
    v2 = round_aggregate(round_id=second.pk)
    assert v2.provenance["privacy"]["void"] is True
    assert "earlier model version" in v2.provenance["privacy"]["void_reason"]


@pytest.mark.parametrize(("strategy", "weights"), [("median", [None, None]), ("krum", None)])
def test_it_records_the_weight_a_robust_strategy_really_applied(p, strategy, weights):
    study = governed_study(p, strategy=strategy)
    agent_a, agent_b = agent_for(p, p.site_a)[0], agent_for(p, p.site_b)[0]
    round_ = open_round(study)
    submit(agent_a, round_, num_examples=10)
    submit(agent_b, round_, num_examples=1000)
    version = round_aggregate(round_id=round_.pk)
    applied = [c["weight"] for c in version.provenance["contributors"]]
    if weights is not None:
        assert applied == weights and "not used" in version.provenance["weighting"]
    else:  # Krum copies one update: that site counts 1, the other 0, whatever they declared
        assert sorted(applied) == [0.0, 1.0]
        chosen = Update.objects.get(sha256=version.provenance["contributors"][applied.index(1.0)]["update_sha256"])
        copied = codec.read_file(absolute(chosen.path))
        assert all(torch.equal(tensor, copied[name]) for name, tensor in version_tensors(version).items())
