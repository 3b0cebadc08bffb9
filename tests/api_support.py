"""What the REST API tests share: clients for each persona, JSON-error assertions, and the check that a
refused request changed nothing and left exactly one denied audit event."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from rest_framework.response import Response
from rest_framework.test import APIClient

from consortium.audit.models import AuditEvent, AuditOutcome
from tests.support import events_after, last_seq, snapshot


def client(user: AbstractBaseUser | None = None) -> APIClient:
    """An API client logged in (by session) as `user`, or anonymous."""
    api = APIClient()
    if user is not None:
        api.force_login(user)
    return api


def call(api: APIClient, method: str, url: str, data: dict[str, Any] | None = None) -> Response:
    return getattr(api, method)(url, data if data is not None else {}, format="json")


def assert_error(response: Response, status: int, code: str | None = None, *, mentions: str = "") -> dict:
    """A JSON error with a code and a sentence (never HTML)."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["detail"], str) and body["detail"]
    if code is not None:
        assert body["error"] == code, body
    if mentions:
        assert mentions.lower() in body["detail"].lower(), body
    return body


def assert_anonymous_refused(response: Response) -> None:
    """Anonymous callers get DRF's 401 (token first in the authenticators) as JSON."""
    body = assert_error(response, 401, "not_authenticated")
    assert "credentials" in body["detail"]
    assert response["WWW-Authenticate"] == "Token"


@contextmanager
def nothing_changes(*, denied: str | None = None) -> Iterator[list[AuditEvent]]:
    """No governed row may change inside the block. With `denied`, exactly one audit event must have
    been written: that attempt, denied; without, none at all. Yields the events written, after the block."""
    before, mark, written = snapshot(), last_seq(), []
    yield written
    assert snapshot() == before, "a refused request changed governed data"
    written.extend(events_after(mark))
    expected = [(denied, AuditOutcome.DENIED)] if denied else []
    assert [(event.action, event.outcome) for event in written] == expected


def only_success(mark: int, *actions: str) -> list[AuditEvent]:
    """The events written since `mark` must be exactly these successful actions, in order."""
    events = events_after(mark)
    assert [(event.action, event.outcome) for event in events] == [(a, AuditOutcome.OK) for a in actions], [
        (event.action, event.outcome) for event in events
    ]
    return events
