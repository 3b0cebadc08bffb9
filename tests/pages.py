"""Helpers for the HTML page tests: a logged-in client per persona, readable page text, audit lookups."""

import html

from django.http import HttpRequest
from django.test import Client

from consortium.audit.models import AuditEvent, AuditOutcome
from tests.base import PASSWORD


def client_for(user) -> Client:
    client = Client()
    # django-axes checks every authentication against its lockouts, which needs a request.
    assert client.login(request=HttpRequest(), username=user.get_username(), password=PASSWORD)
    return client


def page(response) -> str:
    """The response's HTML with entities decoded, so assertions read like the sentences users see."""
    return html.unescape(response.content.decode("utf-8"))


def denied(action: str, user) -> bool:
    """Whether a refused attempt named `action` by `user` is in the audit log."""
    return AuditEvent.objects.filter(action=action, outcome=AuditOutcome.DENIED, actor_user=user).exists()
