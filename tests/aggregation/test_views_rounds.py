"""The rounds page of a study (and the rounds summary on the study page), as anonymous, outsider,
an uninvolved site's admin, and the people who govern the study. Data is built with the real services."""

import numpy as np
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from aggregation.models import ModelVersion, Round
from aggregation.services import round_aggregate, statistics_submit
from consortium.audit.models import AuditEvent
from sites.models import Site
from studies import services as study_services
from tests.aggregation.support import (
    GOOD_METRICS,
    Federation,
    agent_for,
    governed_study,
    open_round,
    submit,
)
from tests.base import Personas, active_study, appoint_site_admin, make_user
from tests.pages import client_for, denied, page

pytestmark = pytest.mark.usefixtures("no_broker")

BLOCKED = "Only 1 eligible updates; the quorum is 2."
EXCLUDED = "Participation is revoked. Consent withdrawn by the hospital board."


def rounds_url(study) -> str:
    return reverse("aggregation:rounds", args=[study.pk])


def uninvolved_site_admin(p: Personas):
    """The admin of a site that takes no part in the study."""
    site = Site.objects.create(name="Karolinska", code="ki", city="Stockholm", country="SE")
    admin = make_user("site_c_admin")
    appoint_site_admin(p.admin, site, admin)
    return admin


def closed_then_blocked(fed: Federation) -> tuple[ModelVersion, Round]:
    """Round 1 closes into v1; in round 2 both sites report v1's validation metrics, then site A is revoked
    before aggregation: its update is excluded and the round is blocked below the quorum."""
    first = open_round(fed.study)
    submit(fed.agent_a, first, num_examples=30, metrics={**GOOD_METRICS, "val_auc": 0.81})
    submit(fed.agent_b, first, num_examples=90, metrics={**GOOD_METRICS, "val_auc": 0.77})
    v1 = round_aggregate(round_id=first.pk)
    second = Round.objects.get(study=fed.study, number=2)
    base = {"val_loss": 0.4, "val_accuracy": 0.9, "val_auc": 0.9, "val_examples": 20}
    submit(fed.agent_a, second, metrics={**GOOD_METRICS, "base": base})
    submit(fed.agent_b, second, metrics={**GOOD_METRICS, "base": {**base, "val_auc": 0.8}})
    study_services.participation_revoke(actor=fed.p.site_a_admin, participation=fed.participation(fed.p.site_a),
                                        reason="Consent withdrawn by the hospital board.")
    assert round_aggregate(round_id=second.pk) is None
    second.refresh_from_db()
    v1.refresh_from_db()
    return v1, second


# --- who may see it ----------------------------------------------------------------------------------


def test_it_sends_anonymous_visitors_to_log_in(fed, client):
    response = client.get(rounds_url(fed.study))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert not AuditEvent.objects.filter(action="studies.study.viewed").exists()


def test_it_answers_404_to_an_outsider_and_an_uninvolved_site_admin_and_audits_it(fed):
    open_round(fed.study)
    for user in (fed.p.outsider, uninvolved_site_admin(fed.p)):
        assert client_for(user).get(rounds_url(fed.study)).status_code == 404
        assert denied("studies.study.view", user)
        assert not AuditEvent.objects.filter(action="studies.study.viewed", actor_user=user).exists()


def test_it_answers_404_for_a_study_that_does_not_exist(fed):
    assert client_for(fed.p.auditor).get(reverse("aggregation:rounds", args=[fed.study.pk + 99])).status_code == 404


# --- what it shows -----------------------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["pi", "dpo", "auditor", "site_a_admin", "site_b_admin"])
def test_it_shows_every_round_with_its_updates_reasons_and_version(fed, persona):
    v1, blocked = closed_then_blocked(fed)
    user = getattr(fed.p, persona)
    response = client_for(user).get(rounds_url(fed.study))
    body = page(response)
    assert response.status_code == 200
    assert body.index('data-round="2"') < body.index('data-round="1"'), "newest first"
    assert 'data-round="2" data-status="blocked"' in body and 'data-round="1" data-status="closed"' in body
    assert f'data-reason="blocked">{BLOCKED}<' in body
    assert 'data-update-site="amc" data-update-status="excluded"' in body and EXCLUDED in body
    assert 'data-update-site="charite" data-update-status="included"' in body
    # A site admin sees its own site's figures only, and no pool of fewer than k = 3 sites (`studies.disclosure`).
    own = {"site_a_admin": "0.810", "site_b_admin": "0.770"}.get(persona)
    shown = [auc for auc in ("0.810", "0.770") if auc in body]
    assert shown == ([own] if own else ["0.810", "0.770"]), "each site's validation AUC"
    version_url = reverse("aggregation:version", args=[fed.study.pk, 1])
    assert f'href="{version_url}" data-version="1"' in body
    assert v1.evaluation["global"]["val_auc"] == pytest.approx(0.85)
    assert ('<span data-testid="version-auc">0.850</span>' in body) is (own is None), "v1's mean validation AUC"
    assert '<strong data-testid="budget">1 of 20</strong>' in body
    assert "never data rows" in body
    event = AuditEvent.objects.get(action="studies.study.viewed", actor_user=user)
    assert event.details == {"via": "page:rounds"} and event.study_id == fed.study.pk


def test_it_says_when_no_round_has_run(p):
    study = governed_study(p)
    body = page(client_for(p.pi).get(rounds_url(study)))
    assert "No round has run yet." in body and "This study's protocol runs no statistics round." in body


def test_it_shows_the_pooled_statistics_but_never_a_sites_own_figures(p):
    study = active_study(p, federated_statistics=True, num_features=2, quorum=2)
    round_ = open_round(study)
    sent = {}
    for site, seed, count in ((p.site_a, 1, 40), (p.site_b, 2, 75)):
        data = np.random.default_rng(seed).normal(loc=[60.0, 2.0], scale=[15.0, 0.8], size=(count, 2))
        sent[site.code] = [float(v) for v in data.sum(axis=0)]
        statistics_submit(actor=agent_for(p, site)[0], round_id=round_.pk, features=["age", "lactate"], count=count,
                          sums=sent[site.code], sums_of_squares=[float(v) for v in np.square(data).sum(axis=0)])
    body = page(client_for(p.site_a_admin).get(rounds_url(study)))
    assert '<strong data-testid="pooled-sites">2 sites</strong>' in body
    assert '<strong data-testid="pooled-rows">115 rows</strong>' in body
    assert 'data-statistics-site="amc"' in body and 'data-statistics-site="charite"' in body
    for sums in sent.values():
        for value in sums:
            assert f"{value:.4f}" not in body and f"{value:.3f}" not in body and str(value) not in body
    assert 'data-round="2" data-status="open"' in body, "training opened after the statistics round"


def test_it_shows_the_declared_examples_beside_the_weight_applied(fed):
    closed_then_blocked(fed)
    body = page(client_for(fed.p.pi).get(rounds_url(fed.study)))
    first = body[body.index('data-round="1"'):]
    assert '<td>30</td>\n              <td data-testid="weight-applied">25.0%</td>' in first
    assert '<td>90</td>\n              <td data-testid="weight-applied">75.0%</td>' in first
    # Round 2 was blocked: no model, so no update counted for anything.
    second = body[body.index('data-round="2"'):body.index('data-round="1"')]
    assert second.count('<td data-testid="weight-applied">—</td>') == 2


def test_it_shows_statistics_left_out_at_close_with_the_reason(p):
    study = active_study(p, federated_statistics=True, num_features=2, quorum=1)
    round_ = open_round(study)
    statistics_submit(actor=agent_for(p, p.site_a)[0], round_id=round_.pk, features=["age", "lactate"], count=10,
                      sums=[600.0, 20.0], sums_of_squares=[36500.0, 45.0])
    study_services.participation_revoke(actor=p.site_a_admin, participation=study.participations.get(site=p.site_a),
                                        reason="Consent withdrawn by the hospital board.")
    statistics_submit(actor=agent_for(p, p.site_b)[0], round_id=round_.pk, features=["age", "lactate"], count=12,
                      sums=[700.0, 22.0], sums_of_squares=[41000.0, 50.0])
    body = page(client_for(p.pi).get(rounds_url(study)))
    assert 'data-statistics-site="amc" data-excluded="true"' in body and f"left out: {EXCLUDED}" in body
    assert '<strong data-testid="pooled-sites">1 sites</strong>' in body


def test_it_keeps_the_query_count_flat_from_2_to_6_rounds(p, django_assert_max_num_queries):
    study = governed_study(p, rounds=10)
    (agent_a, _), (agent_b, _) = agent_for(p, p.site_a), agent_for(p, p.site_b)

    def run_rounds(count: int) -> None:
        for _ in range(count):
            round_ = Round.objects.get(study=study, status="open")
            submit(agent_a, round_)
            submit(agent_b, round_)
            round_aggregate(round_id=round_.pk)

    open_round(study)
    run_rounds(1)  # round 1 closed, round 2 open
    client = client_for(p.pi)
    client.get(rounds_url(study))  # warm caches that are not per request (content types)
    with CaptureQueriesContext(connection) as at_2:
        assert client.get(rounds_url(study)).status_code == 200
    run_rounds(4)
    assert Round.objects.filter(study=study).count() == 6
    with django_assert_max_num_queries(len(at_2.captured_queries)):
        body = page(client.get(rounds_url(study)))
    assert body.count('data-update-status="included"') == 10
    assert len(at_2.captured_queries) <= 16


# --- the summary on the study page -------------------------------------------------------------------


def test_it_summarises_the_rounds_on_the_study_page_with_a_link(fed):
    v1, _ = closed_then_blocked(fed)
    body = page(client_for(fed.p.dpo).get(reverse("studies:detail", args=[fed.study.pk])))
    assert 'data-section="rounds-summary"' in body
    assert 'data-round-status="blocked"' in body and BLOCKED in body
    assert 'data-latest-version="1"' in body and '<strong data-testid="latest-auc">0.850</strong>' in body
    assert f'href="{rounds_url(fed.study)}"' in body
    assert "1 of 20 training rounds closed." in body


def test_it_summarises_a_study_without_rounds(p):
    study = governed_study(p)
    body = page(client_for(p.pi).get(reverse("studies:detail", args=[study.pk])))
    assert "No round has run yet." in body and "No model version yet." in body


def test_it_shows_the_differential_privacy_budget_when_dp_is_on(p):
    from consortium.federated.accountant import epsilon

    study = active_study(p, federated_statistics=False, num_features=4, dp_noise_multiplier=1.5, dp_clip_norm=2.0,
                         dp_target_epsilon=50.0)
    body = page(client_for(p.dpo).get(rounds_url(study)))
    assert '<strong data-testid="epsilon-spent">ε = 0.000</strong>' in body  # no round closed yet
    assert f"after the whole round plan: ε = {epsilon({1.5: study.rounds}, 1e-5):.3f}" in body
    plain = active_study(p, title="No DP", federated_statistics=False, num_features=4)
    assert "Differential privacy budget" not in page(client_for(p.dpo).get(rounds_url(plain)))
