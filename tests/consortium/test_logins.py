"""Logins are throttled per account and per address (django-axes; LOGIN_FAILURE_LIMIT failures within
LOGIN_LOCKOUT_MINUTES), on the login page, the admin's and the API token endpoint alike; every refusal is
in the audit log, and a locked-out user is told when to try again (page, or 429 with Retry-After)."""

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from axes.models import AccessAttempt
from django.test import AsyncClient, Client
from django.utils import timezone
from rest_framework.test import APIClient

from consortium.audit.models import AuditEvent, AuditOutcome
from tests.base import PASSWORD, make_personas

ROOT = Path(__file__).resolve().parents[2]
LIMIT, MINUTES = 5, 15  # the production defaults (settings.py)


def web_login(client: Client, username: str, password: str):
    return client.post("/accounts/login/", {"username": username, "password": password})


def api_login(username: str, password: str, address: str = "127.0.0.1"):
    return APIClient(REMOTE_ADDR=address).post("/api/auth/token/", {"username": username, "password": password},
                                               format="json")


def refusals(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action, outcome=AuditOutcome.DENIED).order_by("seq"))


def age_attempts(minutes: int) -> None:
    """Time passes for the stored failures (axes keeps them as rows with the time of the last failure)."""
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=minutes))


def test_the_defaults_are_five_failures_per_fifteen_minutes_per_account_and_per_address(settings):
    assert (settings.AXES_FAILURE_LIMIT, settings.AXES_COOLOFF_TIME) == (LIMIT, timedelta(minutes=MINUTES))
    assert settings.AXES_ENABLED and settings.AXES_LOCKOUT_PARAMETERS == ["username", "ip_address"]


def test_the_limits_come_from_the_environment():
    env = {**os.environ, "LOGIN_FAILURE_LIMIT": "3", "LOGIN_LOCKOUT_MINUTES": "2", "AGENT_TOKEN_FAILURE_LIMIT": "7",
           "DJANGO_SETTINGS_MODULE": "consortium.settings"}
    code = ("from django.conf import settings as s; "
            "print(s.AXES_FAILURE_LIMIT, s.AXES_COOLOFF_TIME.total_seconds(), s.AGENT_TOKEN_FAILURE_LIMIT)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["3", "120.0", "7"], done.stderr[-2000:]
    bad = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "LOGIN_FAILURE_LIMIT": "0"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "LOGIN_FAILURE_LIMIT" in bad.stderr


def test_it_locks_the_login_page_after_five_failures_and_refuses_even_the_right_password(p):
    client = Client()
    for _ in range(LIMIT - 1):
        response = web_login(client, "pi", "guess")
        assert response.status_code == 200 and "did not match" in response.content.decode()
    locking = web_login(client, "pi", "guess")
    assert locking.status_code == 429
    wait = int(locking["Retry-After"])
    assert MINUTES * 60 - 5 <= wait <= MINUTES * 60
    page = locking.content.decode()
    assert 'data-testid="lockout"' in page and f"in {MINUTES} minutes" in page
    refused = web_login(client, "pi", PASSWORD)
    assert refused.status_code == 429 and "_auth_user_id" not in client.session
    failed = refusals("consortium.login.failed")
    assert len(failed) == LIMIT and all(e.actor_label == "pi" for e in failed)
    assert failed[0].details["via"] == "web" and failed[0].details["address"] == "127.0.0.1"
    assert [e.details["locked_out"] for e in failed] == [False] * (LIMIT - 1) + [True]
    [locked] = refusals("consortium.login.locked_out")
    assert locked.actor_label == "pi" and locked.details["locked_until"] is not None


def test_twenty_four_wrong_passwords_do_not_let_the_right_one_in(p):
    client = Client()
    for _ in range(24):
        web_login(client, "pi", "guess")
    assert web_login(client, "pi", PASSWORD).status_code == 429
    assert len(refusals("consortium.login.failed")) == LIMIT, "once locked, the password is no longer checked"
    assert len(refusals("consortium.login.locked_out")) == 24 - LIMIT + 1


def test_the_lockout_lifts_after_the_cool_off(p):
    client = Client()
    for _ in range(LIMIT):
        web_login(client, "pi", "guess")
    age_attempts(MINUTES - 1)
    assert web_login(client, "pi", PASSWORD).status_code == 429
    age_attempts(MINUTES + 1)
    assert web_login(client, "pi", PASSWORD).status_code == 302
    assert client.session["_auth_user_id"] == str(p.pi.pk)


def test_one_address_is_locked_out_across_usernames_and_others_are_not(p):
    attacker = Client(REMOTE_ADDR="203.0.113.9")
    for name in ("alice", "bob", "carol", "dave", "erin"):
        web_login(attacker, name, "guess")
    assert web_login(attacker, "dpo", PASSWORD).status_code == 429, "the address is locked out"
    assert web_login(Client(REMOTE_ADDR="198.51.100.7"), "dpo", PASSWORD).status_code == 302


def test_one_account_is_locked_out_across_addresses(p):
    for i in range(LIMIT):
        web_login(Client(REMOTE_ADDR=f"203.0.113.{i + 1}"), "pi", "guess")
    assert web_login(Client(REMOTE_ADDR="198.51.100.7"), "pi", PASSWORD).status_code == 429
    assert web_login(Client(REMOTE_ADDR="198.51.100.7"), "dpo", PASSWORD).status_code == 302


def test_the_admin_login_is_throttled_and_audited_the_same_way(p):
    client = Client()
    for _ in range(LIMIT):
        client.post("/admin/login/", {"username": "admin", "password": "guess", "next": "/admin/"})
    assert client.post("/admin/login/", {"username": "admin", "password": PASSWORD}).status_code == 429
    failed = refusals("consortium.login.failed")
    assert len(failed) == LIMIT and {e.details["via"] for e in failed} == {"admin"}


def test_the_token_endpoint_answers_429_with_retry_after_and_a_json_detail(p):
    for _ in range(LIMIT - 1):
        assert api_login("pi", "guess").status_code == 400
    locking = api_login("pi", "guess")
    assert locking.status_code == 429
    body = locking.json()
    assert body["error"] == "locked_out" and "Try again after" in body["detail"]
    assert int(locking["Retry-After"]) == body["retry_after"] > (MINUTES - 1) * 60
    refused = api_login("pi", PASSWORD)
    assert refused.status_code == 429 and "token" not in refused.json()
    assert {e.details["via"] for e in refusals("consortium.login.failed")} == {"api:token"}
    assert len(refusals("consortium.login.locked_out")) == 1
    assert api_login("dpo", PASSWORD, address="198.51.100.7").status_code == 200, "another account, another address"


@pytest.mark.django_db(transaction=True)
def test_the_lockout_answer_is_the_same_under_asgi():
    """The server runs under ASGI (daphne), where axes' middleware takes its async path."""
    make_personas()

    async def scenario() -> tuple:
        client = AsyncClient()
        for _ in range(LIMIT):
            await client.post("/api/auth/token/", {"username": "pi", "password": "guess"},
                              content_type="application/json")
        api = await client.post("/api/auth/token/", {"username": "pi", "password": PASSWORD},
                                content_type="application/json")
        page = await client.post("/accounts/login/", {"username": "pi", "password": PASSWORD})
        return api, page

    api, page = async_to_sync(scenario)()
    assert api.status_code == 429 and int(api["Retry-After"]) > (MINUTES - 1) * 60
    assert api.json()["error"] == "locked_out"
    assert page.status_code == 429 and 'data-testid="lockout"' in page.content.decode()


def test_a_limit_overridden_in_a_test_applies(p, settings):
    settings.AXES_FAILURE_LIMIT = 2
    client = Client()
    web_login(client, "pi", "guess")
    assert web_login(client, "pi", "guess").status_code == 429


def test_an_address_is_told_the_moment_its_oldest_counted_failure_ages_out(p):
    """Five failures from one address, two minutes apart, for five usernames: the address may try again
    when the first of them stops counting (15 minutes after it), not 15 minutes after the last."""
    attacker = Client(REMOTE_ADDR="203.0.113.9")
    for name in ("alice", "bob", "carol", "dave"):
        web_login(attacker, name, "guess")
    now = timezone.now()
    for minutes, name in zip((10, 8, 6, 4), ("alice", "bob", "carol", "dave"), strict=True):
        AccessAttempt.objects.filter(username=name).update(attempt_time=now - timedelta(minutes=minutes))
    locking = web_login(attacker, "erin", "guess")
    assert locking.status_code == 429
    assert (MINUTES - 10) * 60 - 5 <= int(locking["Retry-After"]) <= (MINUTES - 10) * 60
    [event] = [e for e in refusals("consortium.login.failed") if e.details["locked_out"]]
    assert event.actor_label == "erin" and event.details["address"] == "203.0.113.9"
