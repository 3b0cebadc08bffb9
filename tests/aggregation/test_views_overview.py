"""The consortium overview (/overview/): who sees which studies, each study's round and last global metric,
the governance warnings (lapsing soon, lapsed, blocking), one audit event per view, and a query count that
does not grow with the studies. Data is built with the real services; time passing is simulated with
explicit dates relative to now."""

from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from aggregation.models import Round
from aggregation.services import round_aggregate
from consortium.audit.models import AuditEvent, AuditOutcome
from consortium.roles import Role
from studies import services as study_services
from studies.governance import evaluate
from studies.models import Dpia, EthicsApproval, Study
from tests.aggregation.support import (
    GOOD_METRICS,
    Federation,
    agent_for,
    governed_study,
    open_round,
    submit,
)
from tests.base import DUA_TEXT, Personas, activate, draft_study, govern_site, make_user
from tests.pages import client_for, page
from tests.support import events_after, last_seq

pytestmark = pytest.mark.usefixtures("no_broker")

OVERVIEW = "/overview/"
BLOCKED = "Only 1 eligible updates; the quorum is 2."

# Queries of one overview page view for a DPO: session, user, roles, the studies, the gate's six, the newest
# rounds, the newest evaluated versions, and the audit event (chain head, insert). PostgreSQL adds the audit
# chain's advisory lock.
OVERVIEW_QUERIES = {"sqlite": 16, "postgresql": 17}  # the gate reads protocol reviews and data sets too


def row_of(body: str, study: Study) -> str:
    """The overview's table row of `study` (its warnings included)."""
    marker = f'<tr data-study="{study.pk}"'
    assert marker in body, f"study {study.pk} is not on the page"
    return body.split(marker, 1)[1].split("</tr>", 1)[0]


def shown_studies(body: str) -> set[int]:
    return {int(part.split('"', 1)[0]) for part in body.split('<tr data-study="')[1:]}


def local_date(value) -> str:
    return timezone.localtime(value).strftime("%Y-%m-%d")


def other_pis_study(p: Personas) -> Study:
    """A draft study led by another PI, inviting only site B."""
    other_pi = make_user("other_pi", Role.PI)
    study = study_services.study_create(actor=other_pi, title="Stroke outcomes", agreement_text=DUA_TEXT,
                                        clinical_question="Can we predict 90-day mRS?", quorum=2)
    study_services.participation_invite(actor=other_pi, study=study, site=p.site_b)
    return study


def blocked_round(fed: Federation) -> Round:
    """Round 1 closes into v1 (its metrics reported with round 2's updates); site A is revoked before round 2
    aggregates, so round 2 is blocked below the quorum."""
    first = open_round(fed.study)
    submit(fed.agent_a, first)
    submit(fed.agent_b, first)
    round_aggregate(round_id=first.pk)
    second = Round.objects.get(study=fed.study, number=2)
    base = {"val_loss": 0.4, "val_accuracy": 0.9, "val_auc": 0.9, "val_examples": 20}
    submit(fed.agent_a, second, metrics={**GOOD_METRICS, "base": base})
    submit(fed.agent_b, second, metrics={**GOOD_METRICS, "base": {**base, "val_auc": 0.8}})
    study_services.participation_revoke(actor=fed.p.site_a_admin, participation=fed.participation(fed.p.site_a),
                                        reason="Consent withdrawn by the hospital board.")
    assert round_aggregate(round_id=second.pk) is None
    second.refresh_from_db()
    return second


# --- who may see it ----------------------------------------------------------------------------------


def test_it_sends_anonymous_visitors_to_log_in(p, client):
    assert reverse("overview") == OVERVIEW
    response = client.get(OVERVIEW)
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert not AuditEvent.objects.filter(action="consortium.overview.viewed").exists()


def test_it_shows_an_outsider_no_study(p):
    governed_study(p)
    body = page(client_for(p.outsider).get(OVERVIEW))
    assert shown_studies(body) == set() and "No studies are shared with you yet." in body
    event = AuditEvent.objects.get(action="consortium.overview.viewed")
    assert (event.actor_user, event.details["studies"]) == (p.outsider, [])


@pytest.mark.parametrize(("persona", "sees_other"), [
    ("pi", False), ("dpo", True), ("auditor", True), ("admin", True), ("site_a_admin", False), ("site_b_admin", True),
])
def test_it_lists_exactly_the_studies_the_user_may_see(p, persona, sees_other):
    own, other = governed_study(p), other_pis_study(p)
    body = page(client_for(getattr(p, persona)).get(OVERVIEW))
    assert shown_studies(body) == ({own.pk, other.pk} if sees_other else {own.pk})
    assert f'href="/studies/{own.pk}/"' in body


def test_it_is_linked_from_the_nav_and_the_home_page(p):
    body = page(client_for(p.pi).get(reverse("home")))
    assert body.count(f'href="{OVERVIEW}"') == 2 and 'data-link="overview"' in body


def test_it_refuses_a_post(p):
    assert client_for(p.pi).post(OVERVIEW).status_code == 405


# --- what it shows -----------------------------------------------------------------------------------


def test_it_warns_about_an_ethics_approval_lapsing_within_30_days_but_not_40(p, settings):
    settings.EXPIRY_WARNING_DAYS = 30
    study = draft_study(p)
    govern_site(p, study, p.site_a, days=10)
    govern_site(p, study, p.site_b, days=40)
    activate(p, study)
    soon = EthicsApproval.objects.get(study=study, site=p.site_a).valid_until
    row = row_of(page(client_for(p.dpo).get(OVERVIEW)), study)
    assert f'data-warning="ethics" data-blocking="false" data-site="{p.site_a.pk}"' in row
    assert "Ethics approval</strong> of Amsterdam UMC" in row
    assert f"expires on {local_date(soon)}" in row and "(in 10 days)" in row
    assert f'data-site="{p.site_b.pk}"' not in row and "Charité Berlin" not in row, "40 days is beyond the horizon"
    assert 'data-warning="dpia"' not in row, "the DPIA runs for a year"
    assert f'href="/studies/{study.pk}/#gate"' in row, "it links to where the site records a renewed approval"
    assert row.startswith(' data-blocked="false">'), "nothing blocks the study yet"


def test_it_shows_an_expired_dpia_as_blocking_with_its_date_and_a_link(p):
    study = governed_study(p)
    lapsed = timezone.now() - timedelta(days=3)
    Dpia.objects.filter(study=study).update(valid_until=lapsed)  # three days pass after it was approved
    body = page(client_for(p.site_a_admin).get(OVERVIEW))
    row = row_of(body, study)
    assert f'<tr data-study="{study.pk}" data-blocked="true">' in body
    assert 'data-warning="dpia" data-blocking="true"' in row
    assert f"expired on {local_date(lapsed)}" in row and "(3 days ago) and blocks rounds" in row
    assert f'href="/studies/{study.pk}/dpia/"' in row


def lapse_ethics(study: Study, site) -> datetime:
    """Time passes: the site's ethics approval ended two days ago. Returns when it ended."""
    ended = timezone.now() - timedelta(days=2)
    EthicsApproval.objects.filter(study=study, site=site).update(valid_from=ended - timedelta(days=300),
                                                                 valid_until=ended)
    return ended


def test_it_says_a_sites_lapsed_ethics_excludes_it_while_rounds_run_without_it(p):
    study = governed_study(p, quorum=1)
    ended = lapse_ethics(study, p.site_a)
    assert evaluate(study).allowed, "the gate lets rounds run with site B alone"
    body = page(client_for(p.pi).get(OVERVIEW))
    row = row_of(body, study)
    assert f'data-warning="ethics" data-blocking="false" data-site="{p.site_a.pk}" data-effect="excludes"' in row
    assert f"expired on {local_date(ended)}" in row and "(2 days ago) and excludes Amsterdam UMC from rounds." in row
    assert "blocks rounds" not in row and 'data-warning="quorum"' not in row
    assert row.startswith(' data-blocked="false">') and "a round could not run now" not in row
    assert "1 of 2 sites eligible now" in row


def test_it_says_the_quorum_blocks_rounds_once_an_excluded_site_leaves_too_few(p):
    study = governed_study(p, quorum=2)
    lapse_ethics(study, p.site_a)
    gate = evaluate(study)
    [quorum] = [check for check in gate.failures if check.name == "quorum"]
    row = row_of(page(client_for(p.dpo).get(OVERVIEW)), study)
    assert f'data-warning="ethics" data-blocking="false" data-site="{p.site_a.pk}" data-effect="excludes"' in row
    assert 'data-warning="quorum" data-blocking="true" data-effect="blocks">' in row
    assert f'<span class="fail">blocks rounds:</span> {quorum.reason}' in row
    assert quorum.reason == "1 of 2 sites eligible, which is below the quorum of 2."
    assert row.startswith(' data-blocked="true">') and "a round could not run now" in row
    assert row.index('data-warning="quorum"') < row.index('data-warning="ethics"'), "what blocks comes first"


def test_it_counts_the_eligible_sites_exactly_as_the_gates_quorum_does(p):
    study = governed_study(p, quorum=1)
    study_services.participation_withdraw(actor=p.pi, participation=study.participations.get(site=p.site_b),
                                          reason="The site left the consortium.")
    gate = evaluate(study)
    [quorum] = [check for check in gate.study_checks if check.name == "quorum"]
    assert len(gate.sites) == 2 and quorum.reason.startswith("1 of 1 sites eligible")
    row = row_of(page(client_for(p.pi).get(OVERVIEW)), study)
    assert '<span data-testid="eligible-count">1 of 1 sites eligible now</span>' in row


def test_it_shows_a_blocked_round_with_its_reason_and_the_last_global_metric(fed):
    blocked = blocked_round(fed)
    row = row_of(page(client_for(fed.p.pi).get(OVERVIEW)), fed.study)
    assert 'data-warning="round" data-blocking="true"' in row
    assert f'is blocked: <span class="fail-reason">{BLOCKED}</span>' in row
    assert f'href="/studies/{fed.study.pk}/rounds/#round-{blocked.number}"' in row
    assert f'data-current-round="{blocked.number}"' in row and 'data-round-status="blocked"' in row
    assert 'data-metric-version="1"' in row and '<strong data-testid="metric-auc">0.850</strong>' in row
    assert "accuracy 0.900" in row and "loss 0.400" in row
    assert 'data-warning="ethics"' not in row, "a revoked site's paperwork stops nothing"


def test_it_shows_the_progress_of_a_live_round(fed):
    round_ = open_round(fed.study)
    submit(fed.agent_a, round_)
    row = row_of(page(client_for(fed.p.auditor).get(OVERVIEW)), fed.study)
    assert '<span data-testid="round-progress">1 of 2 eligible sites submitted</span>' in row
    assert "No model evaluated by the sites yet." in row
    assert "Nothing lapses within 30 days." in row


def test_it_warns_about_nothing_in_a_draft_but_a_lapsed_approval(p):
    study = draft_study(p)
    govern_site(p, study, p.site_a, days=5)
    row = row_of(page(client_for(p.pi).get(OVERVIEW)), study)
    assert 'data-warning="dpia"' not in row, "a draft with no DPIA yet runs no round"
    assert 'data-warning="ethics" data-blocking="false"' in row and "(in 5 days)" in row


def test_it_writes_one_audit_event_per_view_listing_the_studies_shown(p):
    own, other = governed_study(p), other_pis_study(p)
    mark = last_seq()
    assert client_for(p.dpo).get(OVERVIEW).status_code == 200
    [event] = events_after(mark)
    assert (event.action, event.outcome, event.actor_user) == ("consortium.overview.viewed", AuditOutcome.OK, p.dpo)
    assert event.details == {"via": "page:overview", "studies": sorted([own.pk, other.pk])}


def test_it_keeps_the_query_count_the_same_for_1_and_3_studies(p, django_assert_num_queries):
    (agent_a, _), (agent_b, _) = agent_for(p, p.site_a), agent_for(p, p.site_b)

    def busy_study(title: str) -> Study:
        """An active study with an ethics approval lapsing soon, a closed round, a blocked-free open one."""
        study = draft_study(p, title=title, federated_statistics=False, num_features=4)
        govern_site(p, study, p.site_a, days=10)
        govern_site(p, study, p.site_b)
        activate(p, study)
        first = open_round(study)
        submit(agent_a, first)
        submit(agent_b, first)
        round_aggregate(round_id=first.pk)
        submit(agent_a, Round.objects.get(study=study, number=2), key=f"{title}-2")
        return study

    busy_study("First")
    client = client_for(p.dpo)
    client.get(OVERVIEW)  # warm caches that are not per request (content types)
    with CaptureQueriesContext(connection) as with_one:
        assert client.get(OVERVIEW).status_code == 200
    busy_study("Second")
    busy_study("Third")
    with django_assert_num_queries(len(with_one.captured_queries)):
        body = page(client.get(OVERVIEW))
    assert len(shown_studies(body)) == 3 and body.count('data-warning="ethics"') == 3
    assert body.count("1 of 2 eligible sites submitted") == 3
    assert len(with_one.captured_queries) == OVERVIEW_QUERIES[connection.vendor]
