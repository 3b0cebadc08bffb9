"""The model version page (provenance laid out for people, the sites' evaluation) and the audited download
of its safetensors (`model_version_download`), as anonymous, outsider, an uninvolved site's admin, and the
people who govern the study. Data is built with the real services."""

import hashlib

import pytest
from django.urls import reverse

from aggregation.models import ModelVersion, Round
from aggregation.services import model_version_download, round_aggregate
from aggregation.storage import load_bytes
from consortium.audit.models import AuditEvent, AuditOutcome
from consortium.errors import NotFound
from consortium.version import code_version
from sites.models import Site
from sites.services import site_admin_assign
from studies import services as study_services
from tests.aggregation.support import (
    GOOD_METRICS,
    Federation,
    agent_for,
    governed_study,
    open_round,
    submit,
    third_site,
    three_site_study,
)
from tests.base import Personas, make_user
from tests.pages import client_for, denied, page
from tests.support import actions_after, last_seq

pytestmark = pytest.mark.usefixtures("no_broker")

EXCLUDED = "Participation is revoked. Consent withdrawn by the hospital board."


def version_url(study, number: int) -> str:
    return reverse("aggregation:version", args=[study.pk, number])


def download_url(study, number: int) -> str:
    return reverse("aggregation:version-download", args=[study.pk, number])


def uninvolved_site_admin(p: Personas):
    """The admin of a site that takes no part in the study."""
    site = Site.objects.create(name="Uppsala", code="uu", city="Uppsala", country="SE")
    admin = make_user("site_d_admin")
    site_admin_assign(actor=p.admin, site=site, user=admin)  # it signs nothing: no signing authority
    return admin


def evaluated_v1(fed: Federation) -> ModelVersion:
    """Round 1 aggregated into v1; both sites then report v1's validation metrics with their round-2 update."""
    first = open_round(fed.study)
    submit(fed.agent_a, first, num_examples=30)
    submit(fed.agent_b, first, num_examples=90)
    version = round_aggregate(round_id=first.pk)
    second = Round.objects.get(study=fed.study, number=2)
    submit(fed.agent_a, second, metrics={**GOOD_METRICS, "base": {"val_auc": 0.91, "val_accuracy": 0.8,
                                                                  "val_loss": 0.3, "val_examples": 30}})
    submit(fed.agent_b, second, metrics={**GOOD_METRICS, "base": {"val_auc": 0.71, "val_accuracy": 0.7,
                                                                  "val_loss": 0.5, "val_examples": 10}})
    version.refresh_from_db()
    return version


# --- who may see it ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["aggregation:version", "aggregation:version-download"])
def test_it_sends_anonymous_visitors_to_log_in(fed, client, name):
    open_round(fed.study)
    response = client.get(reverse(name, args=[fed.study.pk, 0]))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert not AuditEvent.objects.filter(action__in=["studies.study.viewed", "aggregation.model.downloaded"]).exists()


def test_it_answers_404_to_an_outsider_and_an_uninvolved_site_admin_and_audits_it(fed):
    open_round(fed.study)
    for user in (fed.p.outsider, uninvolved_site_admin(fed.p)):
        client = client_for(user)
        assert client.get(version_url(fed.study, 0)).status_code == 404
        assert denied("studies.study.view", user)
        assert client.get(download_url(fed.study, 0)).status_code == 404
        assert denied("aggregation.model.download", user)
        assert not AuditEvent.objects.filter(actor_user=user, outcome=AuditOutcome.OK).exists()


def test_it_answers_404_for_a_version_that_does_not_exist(fed):
    open_round(fed.study)
    client = client_for(fed.p.pi)
    assert client.get(version_url(fed.study, 7)).status_code == 404
    assert client.get(download_url(fed.study, 7)).status_code == 404
    assert not AuditEvent.objects.filter(action="aggregation.model.downloaded").exists()


# --- the page ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["pi", "dpo", "auditor", "site_a_admin", "site_b_admin"])
def test_it_lays_out_the_provenance_and_evaluation_of_a_version(fed, persona):
    version = evaluated_v1(fed)
    user = getattr(fed.p, persona)
    response = client_for(user).get(version_url(fed.study, 1))
    body = page(response)
    assert response.status_code == 200
    assert version.sha256 in body and version.provenance["base_version"]["sha256"] in body
    assert f'href="{download_url(fed.study, 1)}"' in body
    for contributor in version.provenance["contributors"]:
        assert f'data-contributor="{contributor["site_id"]}"' in body
        assert contributor["update_sha256"] in body
    # The examples each site declared beside the weight the strategy actually gave its update.
    # A site admin sees its own site's figures only, and no pool of fewer than k = 3 sites (`studies.disclosure`).
    sees_a, sees_b = persona != "site_b_admin", persona != "site_a_admin"
    assert ('>Amsterdam UMC</td><td>30</td><td data-weight="0.25">25.0%</td><td>v1</td>' in body) is sees_a
    assert ('>Charité Berlin</td><td>90</td><td data-weight="0.75">75.0%</td><td>v1</td>' in body) is sees_b
    assert "Examples declared" in body and "Weight applied" in body
    agreement = fed.study.agreement_versions.get()
    assert f'<span class="hash" data-testid="dua-sha256">{agreement.sha256}</span>' in body
    assert "Approved" in body and "medium risk" in body
    assert fed.study.protocol_sha256() in body and code_version() in body
    for check in ("study_active", "approvals", "dpia", "quorum"):
        assert f'data-check="{check}" data-passed="true"' in body
    for site in (fed.p.site_a, fed.p.site_b):
        for check in ("participation", "agreement_signed", "ethics"):
            assert f'data-check="{check}" data-site="{site.pk}" data-passed="true"' in body
    assert "FedAvg" in body and "Server learning rate" in body
    assert (f'data-evaluation-site="{fed.p.site_a.pk}"><td>Amsterdam UMC</td><td>0.910</td>' in body) is sees_a
    assert (f'data-evaluation-site="{fed.p.site_b.pk}"><td>Charité Berlin</td><td>0.710</td>' in body) is sees_b
    assert ('<tr data-evaluation="mean"><th>All sites</th><th>0.860</th>' in body) is (sees_a and sees_b)
    assert "never a data row" in body
    event = AuditEvent.objects.get(action="studies.study.viewed", actor_user=user)
    assert event.details == {"via": "page:version"}


def test_it_shows_the_red_gate_check_of_a_site_excluded_at_aggregation(p):
    site_c = third_site(p)
    study = three_site_study(p, site_c)
    agents = [agent_for(p, site)[0] for site in (p.site_a, p.site_b, site_c)]
    round_ = open_round(study)
    for agent in agents:
        submit(agent, round_)
    study_services.participation_revoke(actor=p.site_b_admin, participation=study.participations.get(site=site_c),
                                        reason="Consent withdrawn by the hospital board.")
    round_aggregate(round_id=round_.pk)
    body = page(client_for(p.pi).get(version_url(study, 1)))
    assert f'data-gate-site="{site_c.pk}" data-eligible="false"' in body
    assert f'data-check="participation" data-site="{site_c.pk}" data-passed="false"' in body and EXCLUDED in body
    assert f'data-contributor="{site_c.pk}"' not in body
    assert f'data-gate-site="{p.site_a.pk}" data-eligible="true"' in body
    rounds = page(client_for(p.pi).get(reverse("aggregation:rounds", args=[study.pk])))
    assert 'data-update-site="ki" data-update-status="excluded"' in rounds and EXCLUDED in rounds


def dp_version(p: Personas) -> ModelVersion:
    study = governed_study(p, dp_noise_multiplier=1.2, dp_clip_norm=0.5, dp_target_epsilon=50.0)
    round_ = open_round(study)
    submit(agent_for(p, p.site_a)[0], round_, num_examples=10)
    submit(agent_for(p, p.site_b)[0], round_, num_examples=1000)
    return round_aggregate(round_id=round_.pk)


def test_it_shows_the_budget_of_a_dp_version_and_no_noise_seed(p):
    from consortium.federated.accountant import epsilon

    version = dp_version(p)
    body = page(client_for(p.dpo).get(version_url(version.study, 1)))
    assert f'data-testid="version-epsilon">ε = {epsilon({1.2: 1}, 1e-5):.3f} at δ = 0.00001' in body
    assert "drawn from the operating system's entropy" in body and "void" not in body
    assert "seed" not in body.lower()
    assert '<td data-weight="0.5">50.0%</td>' in body and "1/n" in body  # DP: uniform, whatever was declared


def test_it_shows_the_budget_of_a_version_with_predictable_noise_as_void(p):
    version = dp_version(p)
    # What the data migration leaves of a version once aggregated with the round's id as its noise seed.
    privacy = {**version.provenance["privacy"], "void": True, "void_reason": "The noise was seeded predictably."}
    strategy = version.provenance["strategy"]
    ModelVersion.objects.filter(pk=version.pk).update(provenance={
        **version.provenance, "privacy": privacy,
        "strategy": {**strategy, "settings": {**strategy["settings"], "dp_seed": version.round_id}}})
    body = page(client_for(p.auditor).get(version_url(version.study, 1)))
    assert '<span class="fail" data-privacy="void">ε: void (noise was predictable)</span>' in body
    assert "The noise was seeded predictably." in body and 'data-testid="version-epsilon">ε =' not in body
    assert "seed" not in body.replace("The noise was seeded predictably.", "").lower()
    rounds = page(client_for(p.auditor).get(reverse("aggregation:rounds", args=[version.study_id])))
    assert 'data-testid="epsilon-spent" data-privacy="void">ε: void (noise was predictable)</strong>' in rounds
    assert "after the whole budget" not in rounds


def test_it_shows_the_initial_model_without_contributors(fed):
    open_round(fed.study)
    body = page(client_for(fed.p.auditor).get(version_url(fed.study, 0)))
    assert 'data-testid="initial"' in body and "No site contributed to it." in body
    assert "No site has evaluated this model yet." in body


def test_it_shows_a_version_in_a_fixed_number_of_queries(fed, django_assert_max_num_queries):
    evaluated_v1(fed)
    client = client_for(fed.p.pi)
    client.get(version_url(fed.study, 1))
    with django_assert_max_num_queries(10):
        assert client.get(version_url(fed.study, 1)).status_code == 200


# --- the download ------------------------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["pi", "auditor", "site_a_admin"])
def test_it_downloads_the_exact_bytes_and_audits_the_download(fed, persona):
    version = evaluated_v1(fed)
    user = getattr(fed.p, persona)
    mark = last_seq()
    response = client_for(user).get(download_url(fed.study, 1))
    assert response.status_code == 200 and response["Content-Type"] == "application/octet-stream"
    assert hashlib.sha256(response.content).hexdigest() == version.sha256 == response["X-Model-SHA256"]
    assert response.content == load_bytes(version.path)
    assert f'filename="study{fed.study.pk}-v1.safetensors"' in response["Content-Disposition"]
    assert actions_after(mark) == ["aggregation.model.downloaded"]
    event = AuditEvent.objects.get(action="aggregation.model.downloaded", actor_user=user)
    assert (event.study_id, event.object_type, event.object_id) == (fed.study.pk, "aggregation.modelversion",
                                                                    str(version.pk))
    assert event.details == {"via": "page", "version": 1, "sha256": version.sha256, "round": 1}


def test_it_refuses_a_post_to_the_download(fed):
    open_round(fed.study)
    assert client_for(fed.p.pi).post(download_url(fed.study, 0)).status_code == 405


def test_it_refuses_in_the_service_an_invisible_study_and_records_only_the_denial(fed):
    open_round(fed.study)
    mark = last_seq()
    with pytest.raises(NotFound, match="No such study."):
        model_version_download(actor=fed.p.outsider, study=fed.study, number=0)
    assert actions_after(mark) == ["aggregation.model.download"]
    denial = AuditEvent.objects.get(action="aggregation.model.download")
    assert (denial.outcome, denial.study_id, denial.actor_user) == (AuditOutcome.DENIED, fed.study.pk, fed.p.outsider)


def test_it_refuses_in_the_service_a_missing_version_and_records_only_the_denial(fed):
    open_round(fed.study)
    mark = last_seq()
    with pytest.raises(NotFound, match="No such model version."):
        model_version_download(actor=fed.p.dpo, study=fed.study.pk, number=3)
    assert actions_after(mark) == ["aggregation.model.download"]
    assert AuditEvent.objects.get(action="aggregation.model.download").outcome == AuditOutcome.DENIED


def test_it_refuses_in_the_service_a_file_that_no_longer_matches_its_hash(fed, model_store):
    open_round(fed.study)
    version = ModelVersion.objects.get(study=fed.study, number=0)
    (model_store / version.path).write_bytes(b"tampered")
    with pytest.raises(RuntimeError, match="does not match its SHA-256"):
        model_version_download(actor=fed.p.pi, study=fed.study, number=0)
    assert not AuditEvent.objects.filter(action="aggregation.model.downloaded").exists()
