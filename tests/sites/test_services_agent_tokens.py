"""Agent token services: a site admin creates and revokes their site's tokens; the plaintext exists only in
the return value; another site's token is a 404; authentication is a read that refuses revoked tokens at
once and notes the last use at most once a minute."""

import hashlib
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from consortium.audit.models import AuditEvent
from consortium.errors import Forbidden, InvalidTransition, NotFound, ValidationFailed
from sites.models import AgentToken
from sites.services import (
    LAST_SEEN_RESOLUTION,
    agent_token_authenticate,
    agent_token_create,
    agent_token_revoke,
    site_admin_remove,
)
from tests.sites.agent_support import issue, secret_of, stored_anywhere, tokens_unchanged
from tests.support import last_seq, only_event, refused


def test_it_creates_a_token_and_returns_its_plaintext_once(p):
    mark = last_seq()
    token, plaintext = agent_token_create(actor=p.site_a_admin, site=p.site_a, name="  GPU box in radiology ")
    assert plaintext.startswith(f"cst_{token.prefix}_") and len(secret_of(plaintext)) >= 43
    assert (token.site, token.name, token.created_by) == (p.site_a, "GPU box in radiology", p.site_a_admin)
    assert token.key_hash == hashlib.sha256(secret_of(plaintext).encode()).hexdigest()
    event = only_event(mark, "sites.agent_token.created")
    assert (event.site_id, event.actor_user, event.object_id) == (p.site_a.pk, p.site_a_admin, str(token.pk))
    assert event.details == {"name": "GPU box in radiology", "prefix": token.prefix}
    assert agent_token_authenticate(plaintext) == token


def test_it_never_stores_the_secret_anywhere_nor_audits_it(p):
    token, plaintext = issue(p)
    agent_token_authenticate(plaintext)
    agent_token_revoke(actor=p.site_a_admin, token=token, reason="Machine decommissioned")
    assert stored_anywhere(secret_of(plaintext)) == []
    assert stored_anywhere(plaintext) == []
    assert not AgentToken.objects.filter(key_hash__contains=secret_of(plaintext)).exists()
    assert all(secret_of(plaintext) not in str(e.details) for e in AuditEvent.objects.all())


def test_it_gives_every_token_its_own_prefix_and_secret(p):
    issued = [issue(p, name=f"box {n}") for n in range(5)]
    assert len({t.prefix for t, _ in issued}) == 5 and len({plain for _, plain in issued}) == 5


def test_it_refuses_another_sites_admin_as_if_the_site_did_not_exist(p):
    with tokens_unchanged(), refused(NotFound, "No such site", action="sites.agent_token.create") as outcome:
        agent_token_create(actor=p.site_b_admin, site=p.site_a, name="Not mine")
    assert outcome.event.site_id == p.site_a.pk and outcome.event.actor_user == p.site_b_admin


def test_it_refuses_an_outsider_as_if_the_site_did_not_exist(p):
    with tokens_unchanged(), refused(NotFound, "No such site", action="sites.agent_token.create"):
        agent_token_create(actor=p.outsider, site=p.site_a, name="Nope")


def test_it_tells_a_pi_who_sees_the_site_that_only_its_admins_create_tokens(p):
    with tokens_unchanged(), refused(Forbidden, "Only an admin of Amsterdam UMC", action="sites.agent_token.create"):
        agent_token_create(actor=p.pi, site=p.site_a, name="Nope")


def test_it_requires_a_name(p):
    with tokens_unchanged(), refused(ValidationFailed, "Give the token a name", action="sites.agent_token.create"):
        agent_token_create(actor=p.site_a_admin, site=p.site_a, name="   ")


def test_it_revokes_with_a_reason_and_authentication_fails_at_once(p):
    token, plaintext = issue(p)
    assert agent_token_authenticate(plaintext) == token
    mark = last_seq()
    revoked = agent_token_revoke(actor=p.site_a_admin, token=token, reason=" Laptop stolen ")
    assert (revoked.revoked_by, revoked.revoke_reason) == (p.site_a_admin, "Laptop stolen")
    assert revoked.revoked_at is not None and revoked.is_revoked
    event = only_event(mark, "sites.agent_token.revoked")
    assert event.details == {"name": token.name, "prefix": token.prefix, "reason": "Laptop stolen"}
    assert event.site_id == p.site_a.pk
    assert agent_token_authenticate(plaintext) is None


def test_it_hides_a_token_from_another_sites_admin(p):
    token, plaintext = issue(p)
    with tokens_unchanged(), refused(NotFound, "No such agent token", action="sites.agent_token.revoke") as outcome:
        agent_token_revoke(actor=p.site_b_admin, token=token, reason="Not mine")
    assert outcome.event.actor_user == p.site_b_admin
    assert agent_token_authenticate(plaintext) == token


@pytest.mark.parametrize("persona", ["pi", "outsider", "auditor", "admin"])
def test_it_hides_a_token_from_everyone_but_its_sites_admins(p, persona):
    token, _ = issue(p)
    with tokens_unchanged(), refused(NotFound, "No such agent token", action="sites.agent_token.revoke"):
        agent_token_revoke(actor=getattr(p, persona), token=token, reason="Trying")


def test_it_refuses_an_admin_whose_rights_were_removed(p):
    token, _ = issue(p)
    site_admin_remove(actor=p.admin, site=p.site_a, user=p.site_a_admin)
    with tokens_unchanged(), refused(NotFound, "No such agent token", action="sites.agent_token.revoke"):
        agent_token_revoke(actor=p.site_a_admin, token=token, reason="Still mine?")


def test_it_requires_a_reason_to_revoke(p):
    token, _ = issue(p)
    with tokens_unchanged(), refused(ValidationFailed, "Give a reason", action="sites.agent_token.revoke"):
        agent_token_revoke(actor=p.site_a_admin, token=token, reason="  ")


def test_it_refuses_to_revoke_a_token_twice(p):
    token, _ = issue(p)
    agent_token_revoke(actor=p.site_a_admin, token=token, reason="First")
    with tokens_unchanged(), refused(InvalidTransition, "already revoked", action="sites.agent_token.revoke"):
        agent_token_revoke(actor=p.site_a_admin, token=token, reason="Second")


@pytest.mark.parametrize("presented", [
    "", "cst_", "Token abc", "cst_zzzzzzzz_" + "a" * 43, "cst_0123abcd_short", "not a token at all",
])
def test_it_refuses_malformed_tokens(p, presented):
    issue(p)
    assert agent_token_authenticate(presented) is None


def test_it_refuses_a_wrong_secret_with_a_real_prefix_and_an_unknown_prefix(p):
    token, plaintext = issue(p)
    secret = secret_of(plaintext)
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert agent_token_authenticate(f"cst_{token.prefix}_{wrong}") is None
    other_prefix = "0" * 8 if token.prefix != "0" * 8 else "1" * 8
    assert agent_token_authenticate(f"cst_{other_prefix}_{secret}") is None


def test_it_authenticates_without_writing_to_the_audit_log(p):
    _, plaintext = issue(p)
    mark = last_seq()
    for _ in range(3):
        assert agent_token_authenticate(plaintext) is not None
    assert last_seq() == mark


def test_it_notes_the_last_use_at_most_once_a_minute(p):
    token, plaintext = issue(p)
    assert token.last_seen_at is None
    first = agent_token_authenticate(plaintext).last_seen_at
    token.refresh_from_db()
    assert token.last_seen_at == first and first is not None
    with CaptureQueriesContext(connection) as queries:
        for _ in range(5):
            assert agent_token_authenticate(plaintext).last_seen_at == first
    assert not [q for q in queries.captured_queries if q["sql"].lstrip().upper().startswith("UPDATE")]
    assert len(queries) == 5  # one read per request, nothing else
    earlier = timezone.now() - LAST_SEEN_RESOLUTION - timedelta(seconds=1)
    AgentToken.objects.filter(pk=token.pk).update(last_seen_at=earlier)
    later = agent_token_authenticate(plaintext).last_seen_at
    token.refresh_from_db()
    assert later > earlier and token.last_seen_at == later


def test_it_does_not_note_the_use_of_a_revoked_token(p):
    token, plaintext = issue(p)
    agent_token_revoke(actor=p.site_a_admin, token=token, reason="Gone")
    assert agent_token_authenticate(plaintext) is None
    token.refresh_from_db()
    assert token.last_seen_at is None
