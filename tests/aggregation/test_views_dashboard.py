"""The live dashboard page (/studies/<pk>/dashboard/) as anonymous, outsider, an uninvolved site's admin and
the people who govern the study: access, the audited view, plotly.js from our own static files, the hooks
the browser script and tests read, and a query count that does not grow with rounds or sites."""

import json
import re

import pytest
from django.contrib.staticfiles import finders
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from aggregation.models import Round
from aggregation.services import round_aggregate
from consortium.audit.models import AuditEvent
from sites.models import Site
from studies.models import Study, StudyEvent
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
from tests.base import Personas, appoint_site_admin, make_user
from tests.pages import client_for, denied, page

pytestmark = pytest.mark.usefixtures("no_broker")

PLOTLY = "/static/vendor/plotly/plotly.min.js"
BASE_METRICS = {"val_auc": 0.7, "val_accuracy": 0.6, "val_loss": 0.6, "val_examples": 20}
# Queries of one dashboard view: session, user, roles, the study (as the user sees it), the audit event of the
# view (chain head, insert), the newest events, the rounds with their versions, their updates, their
# statistics, their evaluations, the round-opened and refused events, the gate's six, and the details of the
# updates of the sites shown. PostgreSQL adds the audit chain's lock.
DASHBOARD_QUERIES = {"sqlite": 22, "postgresql": 23}  # the viewer's disclosure; the gate's reviews and data sets


def dashboard_url(study: Study) -> str:
    return reverse("aggregation:dashboard", args=[study.pk])


def uninvolved_site_admin(p: Personas):
    site = Site.objects.create(name="Rigshospitalet", code="rh", city="Copenhagen", country="DK")
    admin = make_user("site_c_admin")
    appoint_site_admin(p.admin, site, admin)
    return admin


def closed_round(fed: Federation) -> None:
    """Round 1 closes into v1 (both sites evaluated v0 first); round 2 opens."""
    first = open_round(fed.study)
    submit(fed.agent_a, first, metrics={**GOOD_METRICS, "base": BASE_METRICS})
    submit(fed.agent_b, first, metrics={**GOOD_METRICS, "base": {**BASE_METRICS, "val_auc": 0.8}})
    round_aggregate(round_id=first.pk)


def embedded(body: str, element_id: str):
    found = re.search(rf'<script id="{element_id}" type="application/json">(.*?)</script>', body, re.S)
    assert found, f"no {element_id} on the page"
    return json.loads(found.group(1))


# --- who may see it ----------------------------------------------------------------------------------


def test_it_sends_anonymous_visitors_to_log_in(fed, client):
    response = client.get(dashboard_url(fed.study))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert not AuditEvent.objects.filter(action="studies.study.viewed").exists()


def test_it_answers_404_to_an_outsider_and_an_uninvolved_site_admin_and_audits_it(fed):
    open_round(fed.study)
    for user in (fed.p.outsider, uninvolved_site_admin(fed.p)):
        response = client_for(user).get(dashboard_url(fed.study))
        assert response.status_code == 404 and fed.study.title not in page(response)
        assert denied("studies.study.view", user)
        assert not AuditEvent.objects.filter(action="studies.study.viewed", actor_user=user).exists()


def test_it_answers_404_for_a_study_that_does_not_exist(fed):
    assert client_for(fed.p.pi).get(reverse("aggregation:dashboard", args=[fed.study.pk + 99])).status_code == 404


@pytest.mark.parametrize("persona", ["pi", "dpo", "auditor", "site_a_admin", "site_b_admin"])
def test_it_shows_the_dashboard_to_the_people_who_govern_the_study_and_audits_the_view(fed, persona):
    closed_round(fed)
    user = getattr(fed.p, persona)
    response = client_for(user).get(dashboard_url(fed.study))
    body = page(response)
    assert response.status_code == 200
    for testid in ("metric-chart", "site-metric-chart", "participation-chart", "elapsed-chart", "norm-chart",
                   "heatmap", "progress", "governance-panel", "event-feed", "connection"):
        assert f'data-testid="{testid}"' in body, testid
    # v0's global metric: pooled over the two sites, below the k = 3 a site admin sees pools of (`studies.disclosure`).
    points = 0 if persona.startswith("site_") else 1
    assert f'data-testid="metric-chart" data-points="{points}"' in body, "v0's global metric"
    assert 'data-testid="heatmap" data-points="2" data-columns="2" data-rows="2"' in body
    assert 'data-testid="connection" data-state="connecting"' in body
    event = AuditEvent.objects.get(action="studies.study.viewed", actor_user=user)
    assert event.details == {"via": "page:dashboard"} and event.study_id == fed.study.pk


# --- what the page carries ---------------------------------------------------------------------------


def test_it_embeds_the_newest_event_id_and_the_figures_the_script_extends(fed):
    closed_round(fed)
    body = page(client_for(fed.p.pi).get(dashboard_url(fed.study)))
    newest = StudyEvent.objects.filter(study=fed.study).order_by("-seq").values_list("seq", flat=True).first()
    assert f'data-last-event-id="{newest}"' in body
    assert f'data-ws-path="/ws/studies/{fed.study.pk}/"' in body
    state = embedded(body, "dashboard-state")
    assert state["last_event_id"] == newest and state["study"] == fed.study.pk
    figures = embedded(body, "dashboard-figures")
    assert set(figures) == {"global", "sites", "participation", "elapsed", "norms", "heatmap"}
    auc = next(t for t in figures["global"]["data"] if t["meta"] == "val_auc")
    assert auc["x"] == [0] and auc["y"] == [pytest.approx(0.75)], "both sites' AUC of v0, weighted by 20 rows each"
    feed = re.findall(r'data-event-id="(\d+)"', body)
    assert int(feed[0]) == newest and len(feed) == min(30, newest), "the newest events first"


def test_it_loads_plotly_from_our_static_files_and_never_from_a_cdn(fed, client):
    body = page(client_for(fed.p.pi).get(dashboard_url(fed.study)))
    scripts = re.findall(r'<script src="([^"]+)"', body)
    assert scripts == [PLOTLY, "/static/js/dashboard.js"]
    assert "cdn" not in body.lower() and "https://" not in " ".join(scripts)
    assert finders.find("vendor/plotly/plotly.min.js"), "the package's own plotly.js is a static file"
    served = client.get(PLOTLY)
    assert served.status_code == 200 and b"plotly.js" in b"".join(served.streaming_content)[:2000]
    assert client.get("/static/js/dashboard.js").status_code == 200


def test_it_shows_the_governance_panel_per_site_and_the_round_progress(fed):
    from studies import services as study_services

    first = open_round(fed.study)
    submit(fed.agent_b, first)
    study_services.participation_revoke(actor=fed.p.site_a_admin, participation=fed.participation(fed.p.site_a),
                                        reason="Consent withdrawn by the hospital board.")
    body = page(client_for(fed.p.site_b_admin).get(dashboard_url(fed.study)))
    assert 'data-testid="governance-panel" data-allowed="false"' in body, "one site left, below the quorum of 2"
    assert f'data-site-id="{fed.p.site_a.pk}" data-eligible="false"' in body
    assert f'data-site-id="{fed.p.site_b.pk}" data-eligible="true"' in body
    assert "Participation is revoked. Consent withdrawn by the hospital board." in body
    assert 'data-round="1" data-kind="training" data-status="open" data-submitted="1" data-eligible="1"' in body
    assert "1 of 1</strong> eligible sites submitted" in body


def test_it_says_what_each_chart_shows_and_links_from_the_study_and_rounds_pages(fed):
    body = page(client_for(fed.p.pi).get(dashboard_url(fed.study)))
    assert "heterogeneity" in body and "Fed-BioMed" in body and "No round has opened yet." in body
    link = f'href="{dashboard_url(fed.study)}"'
    assert link in page(client_for(fed.p.pi).get(reverse("studies:detail", args=[fed.study.pk])))
    assert link in page(client_for(fed.p.pi).get(reverse("aggregation:rounds", args=[fed.study.pk])))


def test_it_keeps_the_query_count_the_same_for_a_small_and_a_large_study(p, django_assert_num_queries):
    small = governed_study(p)
    (agent_a, _), (agent_b, _) = agent_for(p, p.site_a), agent_for(p, p.site_b)
    first = open_round(small)
    submit(agent_a, first, metrics={**GOOD_METRICS, "base": BASE_METRICS})
    client = client_for(p.pi)
    client.get(dashboard_url(small))  # warm caches that are not per request (content types)
    with CaptureQueriesContext(connection) as at_small:
        assert client.get(dashboard_url(small)).status_code == 200

    site_c = third_site(p)
    large = three_site_study(p, site_c, title="Sepsis risk, three sites")
    agents = [agent_a, agent_b, agent_for(p, site_c)[0]]
    open_round(large)
    for _ in range(3):
        round_ = Round.objects.get(study=large, status="open")
        for n, agent in enumerate(agents):
            submit(agent, round_, metrics={**GOOD_METRICS, "base": {**BASE_METRICS, "val_auc": 0.6 + n / 10}})
        round_aggregate(round_id=round_.pk)
    assert Round.objects.filter(study=large).count() == 4
    with django_assert_num_queries(len(at_small.captured_queries)):
        body = page(client.get(dashboard_url(large)))
    assert 'data-testid="metric-chart" data-points="3"' in body and 'data-columns="4" data-rows="3"' in body
    assert len(at_small.captured_queries) == DASHBOARD_QUERIES[connection.vendor]
