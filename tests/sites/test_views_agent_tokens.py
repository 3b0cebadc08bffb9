"""The agent token section of the site page: its admins list, create (the token shown once, with how to run
the agent) and revoke tokens; nobody else sees or touches them, and refusals are audited."""

import pytest
from django.urls import reverse

from consortium.audit.models import AuditEvent
from sites.models import AgentToken
from sites.services import agent_token_authenticate, agent_token_revoke
from tests.pages import client_for, denied, page
from tests.sites.agent_support import issue, secret_of, tokens_unchanged


def site_page(user, site):
    return client_for(user).get(reverse("site-detail", args=[site.pk]))


def create(user, site, name: str = "GPU box in radiology", **kwargs):
    return client_for(user).post(reverse("site-agent-token-create", args=[site.pk]), {"name": name}, **kwargs)


def revoke(user, site, token: AgentToken, reason: str = "Machine decommissioned", **kwargs):
    url = reverse("site-agent-token-revoke", args=[site.pk, token.pk])
    return client_for(user).post(url, {"reason": reason}, **kwargs)


def test_it_sends_anonymous_visitors_to_log_in(p, client):
    token, _ = issue(p)
    with tokens_unchanged():
        for url in (reverse("site-agent-token-create", args=[p.site_a.pk]),
                    reverse("site-agent-token-revoke", args=[p.site_a.pk, token.pk])):
            response = client.post(url, {"name": "x", "reason": "y"})
            assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_it_lists_the_sites_tokens_for_its_admin(p):
    token, plaintext = issue(p)
    issue(p, p.site_b, name="Charité workstation")
    body = page(site_page(p.site_a_admin, p.site_a))
    assert "Agent tokens" in body and "GPU box in radiology" in body and token.prefix in body
    assert f'data-agent-token="{token.prefix}" data-status="active"' in body
    assert "site_a_admin" in body and "never" in body
    assert "Charité workstation" not in body
    assert secret_of(plaintext) not in body


def test_it_hides_the_section_from_people_who_see_the_site_but_do_not_administer_it(p):
    token, _ = issue(p)
    for user in (p.pi, p.auditor, p.dpo):
        response = site_page(user, p.site_a)
        assert response.status_code == 200
        body = page(response)
        assert "Agent tokens" not in body and token.prefix not in body and "GPU box" not in body


def test_it_shows_the_token_once_with_how_to_run_the_agent(p):
    response = create(p.site_a_admin, p.site_a)
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    token = AgentToken.objects.get()
    plaintext = response.context["plaintext"]
    body = page(response)
    assert plaintext.startswith(f"cst_{token.prefix}_") and plaintext in body
    assert "will not be shown again" in body
    assert (f"python -m sites.agent --server http://testserver --token {plaintext} "
            "--data /path/to/site.csv") in body
    assert agent_token_authenticate(plaintext) == token
    assert secret_of(plaintext) not in page(site_page(p.site_a_admin, p.site_a))
    assert AuditEvent.objects.filter(action="sites.agent_token.created", actor_user=p.site_a_admin).exists()


def test_it_asks_for_a_name(p):
    with tokens_unchanged():
        response = create(p.site_a_admin, p.site_a, name="  ", follow=True)
    assert "Name: This field is required." in page(response)


def test_it_answers_404_to_another_sites_admin_and_an_outsider_and_audits_it(p):
    with tokens_unchanged():
        for user in (p.site_b_admin, p.outsider):
            assert create(user, p.site_a).status_code == 404
            assert denied("sites.agent_token.create", user)


def test_it_answers_403_to_a_pi_who_sees_the_site(p):
    with tokens_unchanged():
        response = create(p.pi, p.site_a)
    assert response.status_code == 403 and "Only an admin of Amsterdam UMC" in page(response)
    assert denied("sites.agent_token.create", p.pi)


def test_it_revokes_a_token_and_shows_it_revoked_with_its_reason(p):
    token, plaintext = issue(p)
    response = revoke(p.site_a_admin, p.site_a, token, "Laptop stolen", follow=True)
    body = page(response)
    assert "revoked: its agent is refused from now on" in body
    assert f'data-agent-token="{token.prefix}" data-status="revoked"' in body and "Laptop stolen" in body
    token.refresh_from_db()
    assert (token.revoked_by, token.revoke_reason) == (p.site_a_admin, "Laptop stolen")
    assert agent_token_authenticate(plaintext) is None


def test_it_requires_a_reason_to_revoke_and_audits_the_refusal(p):
    token, _ = issue(p)
    with tokens_unchanged():
        response = revoke(p.site_a_admin, p.site_a, token, "  ", follow=True)
    assert "Give a reason" in page(response)
    assert denied("sites.agent_token.revoke", p.site_a_admin)


def test_it_offers_no_revoke_button_for_a_revoked_token(p):
    token, _ = issue(p)
    agent_token_revoke(actor=p.site_a_admin, token=token, reason="Gone")
    body = page(site_page(p.site_a_admin, p.site_a))
    assert 'data-action="revoke-token"' not in body
    with tokens_unchanged():
        response = revoke(p.site_a_admin, p.site_a, token, "Again", follow=True)
    assert "already revoked" in page(response)


@pytest.mark.parametrize("persona", ["site_b_admin", "outsider", "pi", "auditor"])
def test_it_answers_404_for_a_token_the_user_does_not_administer_and_audits_it(p, persona):
    token, plaintext = issue(p)
    user = getattr(p, persona)
    with tokens_unchanged():
        assert revoke(user, p.site_a, token).status_code == 404
    assert denied("sites.agent_token.revoke", user)
    assert agent_token_authenticate(plaintext) == token


def test_it_answers_404_when_the_token_is_not_of_the_site_in_the_url(p):
    token, _ = issue(p)
    other_site_token, _ = issue(p, p.site_b, name="Berlin box")
    with tokens_unchanged():
        url = reverse("site-agent-token-revoke", args=[p.site_b.pk, token.pk])
        assert client_for(p.site_a_admin).post(url, {"reason": "Wrong URL"}).status_code == 404
        assert revoke(p.site_a_admin, p.site_a, other_site_token).status_code == 404


def test_it_refuses_get_on_the_post_only_urls(p):
    token, _ = issue(p)
    client = client_for(p.site_a_admin)
    assert client.get(reverse("site-agent-token-create", args=[p.site_a.pk])).status_code == 405
    assert client.get(reverse("site-agent-token-revoke", args=[p.site_a.pk, token.pk])).status_code == 405
