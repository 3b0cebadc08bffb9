"""The agent token REST API for site admins: list and create a site's tokens, revoke one. Anonymous is a
401, another site's or an invisible object a 404 (audited, nothing changed), a visible site the caller does
not administer a 403; the token itself appears in the create response only."""

import pytest

from consortium.audit.models import AuditOutcome
from sites.models import AgentToken
from sites.services import agent_token_authenticate, agent_token_revoke
from tests.api_support import assert_anonymous_refused, assert_error, call, client, nothing_changes, only_success
from tests.sites.agent_support import issue, secret_of, tokens_unchanged
from tests.support import last_seq


def tokens_url(site) -> str:
    return f"/api/sites/{site.pk}/agent-tokens/"


def revoke_url(token) -> str:
    return f"/api/agent-tokens/{token.pk}/revoke/"


def test_it_refuses_anonymous_callers(p):
    token, _ = issue(p)
    with tokens_unchanged():
        assert_anonymous_refused(call(client(), "get", tokens_url(p.site_a)))
        assert_anonymous_refused(call(client(), "post", tokens_url(p.site_a), {"name": "x"}))
        assert_anonymous_refused(call(client(), "post", revoke_url(token), {"reason": "x"}))


def test_it_creates_a_token_and_returns_it_only_then(p):
    mark = last_seq()
    response = call(client(p.site_a_admin), "post", tokens_url(p.site_a), {"name": "GPU box in radiology"})
    assert response.status_code == 201, response.content
    assert response["Cache-Control"] == "no-store"
    body = response.json()
    token = AgentToken.objects.get()
    assert body["token"].startswith(f"cst_{token.prefix}_")
    assert {k: body[k] for k in ("id", "site", "name", "prefix", "created_by", "is_revoked")} == {
        "id": token.pk, "site": p.site_a.pk, "name": "GPU box in radiology", "prefix": token.prefix,
        "created_by": "site_a_admin", "is_revoked": False}
    assert "key_hash" not in body
    only_success(mark, "sites.agent_token.created")
    assert agent_token_authenticate(body["token"]) == token
    listed = call(client(p.site_a_admin), "get", tokens_url(p.site_a))
    assert listed.status_code == 200
    assert [row["prefix"] for row in listed.json()] == [token.prefix]
    assert "token" not in listed.json()[0] and "key_hash" not in listed.json()[0]
    assert secret_of(body["token"]) not in listed.content.decode()


def test_it_lists_only_the_sites_tokens_newest_first(p):
    first, _ = issue(p, name="first")
    second, _ = issue(p, name="second")
    issue(p, p.site_b, name="Berlin box")
    agent_token_revoke(actor=p.site_a_admin, token=first, reason="Replaced")
    rows = call(client(p.site_a_admin), "get", tokens_url(p.site_a)).json()
    assert [(row["name"], row["is_revoked"]) for row in rows] == [("second", False), ("first", True)]
    assert rows[1]["revoke_reason"] == "Replaced" and rows[1]["revoked_by"] == "site_a_admin"


@pytest.mark.parametrize("persona", ["site_b_admin", "outsider"])
def test_it_answers_404_for_a_site_the_caller_cannot_see_and_audits_it(p, persona):
    issue(p)
    api = client(getattr(p, persona))
    with tokens_unchanged():
        with nothing_changes(denied="sites.agent_token.list"):
            assert_error(call(api, "get", tokens_url(p.site_a)), 404, "not_found")
        with nothing_changes(denied="sites.agent_token.create") as events:
            assert_error(call(api, "post", tokens_url(p.site_a), {"name": "Not mine"}), 404, "not_found")
        assert events[0].site_id == p.site_a.pk


def test_it_answers_403_to_a_pi_who_sees_the_site_but_does_not_administer_it(p):
    issue(p)
    api = client(p.pi)
    with tokens_unchanged():
        with nothing_changes(denied="sites.agent_token.list"):
            assert_error(call(api, "get", tokens_url(p.site_a)), 403, "forbidden", mentions="Only the admins")
        with nothing_changes(denied="sites.agent_token.create"):
            assert_error(call(api, "post", tokens_url(p.site_a), {"name": "x"}), 403, "forbidden")


def test_it_answers_404_for_a_site_that_does_not_exist(p):
    with tokens_unchanged(), nothing_changes(denied="sites.agent_token.create"):
        assert_error(call(client(p.site_a_admin), "post", "/api/sites/999999/agent-tokens/", {"name": "x"}), 404)


def test_it_refuses_a_blank_name_or_unknown_fields(p):
    api = client(p.site_a_admin)
    with tokens_unchanged():
        with nothing_changes():
            assert_error(call(api, "post", tokens_url(p.site_a), {}), 400, "validation_failed", mentions="name")
            assert_error(call(api, "post", tokens_url(p.site_a), {"name": "x", "site": 2}), 400,
                         "validation_failed", mentions="Unknown fields: site")
            assert_error(call(api, "post", tokens_url(p.site_a), {"name": "x" * 101}), 400, "validation_failed")
        for blank in ("", "   "):
            with nothing_changes(denied="sites.agent_token.create"):
                assert_error(call(api, "post", tokens_url(p.site_a), {"name": blank}), 400, "validation_failed",
                             mentions="Give the token a name")


def test_it_revokes_and_the_token_is_refused_at_once(p):
    token, plaintext = issue(p)
    mark = last_seq()
    response = call(client(p.site_a_admin), "post", revoke_url(token), {"reason": "Laptop stolen"})
    assert response.status_code == 200, response.content
    assert (response.json()["is_revoked"], response.json()["revoke_reason"]) == (True, "Laptop stolen")
    only_success(mark, "sites.agent_token.revoked")
    assert agent_token_authenticate(plaintext) is None


@pytest.mark.parametrize("persona", ["site_b_admin", "outsider", "pi", "auditor"])
def test_it_answers_404_for_a_token_the_caller_does_not_administer(p, persona):
    token, plaintext = issue(p)
    with tokens_unchanged(), nothing_changes(denied="sites.agent_token.revoke") as events:
        assert_error(call(client(getattr(p, persona)), "post", revoke_url(token), {"reason": "Not mine"}), 404,
                     "not_found", mentions="No such agent token")
    assert events[0].outcome == AuditOutcome.DENIED
    assert agent_token_authenticate(plaintext) == token


def test_it_requires_a_reason_and_refuses_a_second_revocation(p):
    token, _ = issue(p)
    api = client(p.site_a_admin)
    with tokens_unchanged(), nothing_changes(denied="sites.agent_token.revoke"):
        assert_error(call(api, "post", revoke_url(token), {"reason": " "}), 400, mentions="Give a reason")
    call(api, "post", revoke_url(token), {"reason": "First"})
    with tokens_unchanged(), nothing_changes(denied="sites.agent_token.revoke"):
        assert_error(call(api, "post", revoke_url(token), {"reason": "Second"}), 409, "invalid_transition",
                     mentions="already revoked")


def test_it_lets_an_agent_token_not_manage_tokens(p):
    """Agent tokens only open the agent API: managing tokens needs a person."""
    token, plaintext = issue(p)
    api = client()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    with tokens_unchanged():
        assert call(api, "get", tokens_url(p.site_a)).status_code == 401
        assert call(api, "post", revoke_url(token), {"reason": "self-revoke"}).status_code == 401
