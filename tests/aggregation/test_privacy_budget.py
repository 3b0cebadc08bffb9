"""The privacy budget the gate enforces: the protocol carries the target (epsilon, delta), every released training
round is counted in the study's ledger, a round runs only while epsilon after it stays within the target, and
a study whose budget is used up stops with that reason, shown on its page and in the gate's API answer."""

import pytest
from django.urls import reverse

from aggregation.models import Round
from aggregation.services import round_aggregate
from consortium.audit.models import AuditEvent
from consortium.federated import accountant
from studies.choices import StudyStatus
from studies.governance import evaluate
from studies.models import Approval, Study
from studies.privacy import privacy_budget
from tests.aggregation.support import (
    agent_for,
    governed_study,
    open_round,
    submit,
)
from tests.api_support import client
from tests.pages import client_for, page

Z, DELTA = 1.5, 1e-5


def target_for(rounds: int) -> float:
    """A target that `rounds` rounds at multiplier Z fit in and one more does not."""
    return (accountant.epsilon({Z: rounds}, DELTA) + accountant.epsilon({Z: rounds + 1}, DELTA)) / 2


def budget_check(study: Study):
    return next(c for c in evaluate(study, "aggregate").study_checks if c.name == "privacy_budget")


def run_round(p, study: Study, number: int):
    round_ = open_round(study) if number == 1 else Round.objects.get(study=study, number=number)
    for site in (p.site_a, p.site_b):
        submit(agent_for(p, site, name=f"Agent {number}")[0], round_)
    return round_aggregate(round_id=round_.pk)


def test_it_passes_without_dp_and_fails_closed_for_dp_without_a_target(p):
    plain = governed_study(p)
    check = budget_check(plain)
    assert check.passed and "off" in check.reason
    # A study from before the protocol carried a target (the services refuse such a protocol now).
    legacy = governed_study(p, title="Legacy DP", dp_noise_multiplier=Z, dp_target_epsilon=50.0)
    Study.objects.filter(pk=legacy.pk).update(dp_target_epsilon=None)
    legacy.refresh_from_db()
    check = budget_check(legacy)
    assert not check.passed and "no privacy target" in check.reason
    assert not evaluate(legacy, "submit_update", site=p.site_a).allowed


def test_it_lets_rounds_run_while_the_target_holds_and_says_how_many_remain(p):
    study = governed_study(p, dp_noise_multiplier=Z, dp_target_epsilon=target_for(3), rounds=10)
    check = budget_check(study)
    assert check.passed
    assert "allows 3 more training rounds" in check.reason
    budget = privacy_budget(study)
    assert (budget.epsilon_spent, budget.rounds_left) == (0.0, 3)
    assert budget.epsilon_next == pytest.approx(accountant.epsilon({Z: 1}, DELTA))


def test_it_stops_the_study_when_the_budget_is_used_up(p):
    study = governed_study(p, dp_noise_multiplier=Z, dp_target_epsilon=target_for(2), rounds=5)
    run_round(p, study, 1)
    study.refresh_from_db()
    assert study.privacy_ledger == {"1.5": 1} and study.status == StudyStatus.ACTIVE
    assert "allows 1 more training round" in budget_check(study).reason
    run_round(p, study, 2)

    study.refresh_from_db()
    spent = accountant.epsilon({Z: 2}, DELTA)
    assert study.privacy_ledger == {"1.5": 2}
    assert study.status == StudyStatus.SUSPENDED and study.status_reason.startswith("Privacy budget used up")
    assert f"{spent:.3g}" in study.status_reason
    assert not Round.objects.filter(study=study, number=3).exists()  # no third round opened
    assert not Approval.objects.filter(study=study, voided_at__isnull=True).exists()
    stopped = AuditEvent.objects.get(action="studies.study.privacy_exhausted", study_id=study.pk)
    assert stopped.details["rounds_released"] == 2 and stopped.details["exhausted"] is True
    assert AuditEvent.objects.filter(action="studies.privacy.spent", study_id=study.pk).count() == 2

    check = budget_check(study)
    assert not check.passed and check.reason.startswith("Privacy budget used up")
    answer = client(p.pi).get(f"/api/studies/{study.pk}/gate/", {"action": "aggregate"}).json()
    api_check = next(c for c in answer["checks"] if c["name"] == "privacy_budget")
    assert api_check["passed"] is False and api_check["reason"] == check.reason

    body = page(client_for(p.pi).get(reverse("studies:detail", args=[study.pk])))
    assert 'data-exhausted="true"' in body and "Privacy budget used up" in body
    assert f'data-testid="privacy-spent">ε = {spent:.3f}' in body
    remaining = target_for(2) - spent
    assert f'data-testid="privacy-remaining">ε = {remaining:.3f}' in body
    assert 'data-testid="privacy-rounds-left">0' in body


def test_it_counts_a_noiseless_round_as_unbounded(p):
    study = governed_study(p, rounds=3)
    run_round(p, study, 1)
    study.refresh_from_db()
    assert study.privacy_ledger == {"0.0": 1}
    assert privacy_budget(study).epsilon_spent == float("inf")
