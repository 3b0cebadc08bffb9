"""The site page's round activity (/sites/<pk>/): rounds contributed per study, excluded updates with their
reasons, refused submissions, and the agent tokens' last use, for the site's admin (and overseers); another
site's admin gets a 404; every view is audited. Data is built with the real services."""

import pytest
from django.urls import reverse
from django.utils import timezone

from aggregation.models import Round
from aggregation.services import round_aggregate
from consortium.audit.models import AuditEvent, AuditOutcome
from consortium.errors import Conflict
from sites.services import agent_token_authenticate
from studies import services as study_services
from tests.aggregation.support import Federation, open_round, submit
from tests.pages import client_for, denied, page
from tests.support import events_after, last_seq

pytestmark = pytest.mark.usefixtures("no_broker")

EXCLUDED = "Participation is revoked. Consent withdrawn by the hospital board."


def site_url(site) -> str:
    return reverse("site-detail", args=[site.pk])


def history(fed: Federation) -> None:
    """Round 1 closes with both sites' updates (site A's agent also tries a second, refused, update); in round 2
    both submit, then site A is revoked before aggregation: its update is excluded and the round blocked."""
    first = open_round(fed.study)
    submit(fed.agent_a, first)
    with pytest.raises(Conflict):
        submit(fed.agent_a, first, key="a-second-try")
    submit(fed.agent_b, first)
    round_aggregate(round_id=first.pk)
    second = Round.objects.get(study=fed.study, number=2)
    submit(fed.agent_a, second)
    submit(fed.agent_b, second)
    study_services.participation_revoke(actor=fed.p.site_a_admin, participation=fed.participation(fed.p.site_a),
                                        reason="Consent withdrawn by the hospital board.")
    assert round_aggregate(round_id=second.pk) is None


def test_it_sends_anonymous_visitors_to_log_in(fed, client):
    response = client.get(site_url(fed.p.site_a))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert not AuditEvent.objects.filter(action="sites.site.viewed").exists()


def test_it_answers_404_to_another_sites_admin_and_an_outsider_and_audits_it(fed):
    history(fed)
    for user in (fed.p.site_b_admin, fed.p.outsider):
        assert client_for(user).get(site_url(fed.p.site_a)).status_code == 404
        assert denied("sites.site.view", user)
        assert not AuditEvent.objects.filter(action="sites.site.viewed", actor_user=user).exists()


def test_it_shows_the_site_admin_rounds_contributed_and_excluded_updates_with_reasons(fed):
    history(fed)
    body = page(client_for(fed.p.site_a_admin).get(site_url(fed.p.site_a)))
    contribution = body.split(f'<tr data-contribution="{fed.study.pk}">', 1)[1].split("</tr>", 1)[0]
    assert '<td data-testid="rounds-contributed">1</td>' in contribution
    assert 'data-last-round="1">Round 1</a>' in contribution
    excluded = body.split('<tr data-excluded-update="2"', 1)[1].split("</tr>", 1)[0]
    assert f'data-study="{fed.study.pk}"' in excluded and "Sepsis risk" in excluded and EXCLUDED in excluded
    assert f'href="/studies/{fed.study.pk}/rounds/#round-2"' in excluded
    assert 'data-excluded-update="1"' not in body


def test_it_shows_the_sites_refused_submissions_from_the_audit_log(fed):
    history(fed)
    body = page(client_for(fed.p.site_a_admin).get(site_url(fed.p.site_a)))
    refused = body.split('<tr data-refused-submission="duplicate_update">', 1)[1].split("</tr>", 1)[0]
    assert "Amsterdam UMC already submitted an update for round 1; one per site per round." in refused
    assert body.count("data-refused-submission=") == 1
    other = page(client_for(fed.p.site_b_admin).get(site_url(fed.p.site_b)))
    assert "data-refused-submission=" not in other and "No submission from this site has been refused." in other
    assert '<td data-testid="rounds-contributed">1</td>' in other, "site B's update went into round 1 too"
    assert "No update from this site has been excluded." in other


def test_it_shows_when_each_agent_token_was_last_seen_or_never(fed):
    assert agent_token_authenticate(fed.plaintext_a) is not None  # the agent's request notes its last use
    token = fed.agent_a.token
    token.refresh_from_db()
    body = page(client_for(fed.p.site_a_admin).get(site_url(fed.p.site_a)))
    row = body.split(f'data-agent-token="{token.prefix}" data-status="active"', 1)[1].split("</tr>", 1)[0]
    assert timezone.localtime(token.last_seen_at).strftime("%Y-%m-%d %H:%M") in row
    other = page(client_for(fed.p.site_b_admin).get(site_url(fed.p.site_b)))
    row = other.split(f'data-agent-token="{fed.agent_b.token.prefix}" data-status="active"', 1)[1].split("</tr>")[0]
    assert "<td>never</td>" in row


@pytest.mark.parametrize("persona", ["auditor", "admin"])
def test_it_shows_overseers_the_activity_but_not_the_tokens(fed, persona):
    history(fed)
    body = page(client_for(getattr(fed.p, persona)).get(site_url(fed.p.site_a)))
    assert 'data-section="site-activity"' in body and EXCLUDED in body
    assert "Agent tokens" not in body and fed.agent_a.token.prefix not in body


@pytest.mark.parametrize("persona", ["pi", "dpo"])
def test_it_hides_the_activity_from_people_who_only_see_the_site(fed, persona):
    history(fed)
    response = client_for(getattr(fed.p, persona)).get(site_url(fed.p.site_a))
    assert response.status_code == 200
    body = page(response)
    assert fed.study.title in body, "the participations are shown as before"
    assert 'data-section="site-activity"' not in body and EXCLUDED not in body


def test_it_writes_one_audit_event_per_view_naming_the_site_and_studies(fed):
    history(fed)
    mark = last_seq()
    assert client_for(fed.p.site_a_admin).get(site_url(fed.p.site_a)).status_code == 200
    [event] = events_after(mark)
    assert (event.action, event.outcome, event.actor_user) == ("sites.site.viewed", AuditOutcome.OK, fed.p.site_a_admin)
    assert event.site_id == fed.p.site_a.pk
    assert event.details == {"via": "page:site", "studies": [fed.study.pk]}
