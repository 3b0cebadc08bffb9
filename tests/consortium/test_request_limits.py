"""Bounded ids and request targets: an id too large for the database is a 404 (JSON under /api/, the
attempt audited), never a 500; a malformed parameter or request is a JSON 400 under /api/ and a page
elsewhere; a request target over the limit is a 414 (`RequestTargetLimit`, ASGI)."""

import asyncio
import json

import pytest
from django.test import Client, RequestFactory
from rest_framework.test import APIClient

from consortium.audit.models import AuditOutcome
from consortium.pages.errors import server_error
from consortium.request_limits import MAX_TARGET_BYTES, RequestTargetLimit
from tests.aggregation.support import agent_for
from tests.api_support import assert_error, client
from tests.base import draft_study
from tests.pages import client_for
from tests.support import events_after, last_seq

HUGE = "9223372036854775808"  # 2**63: one past what a BIGINT (and SQLite's INTEGER) holds


@pytest.mark.parametrize(("who", "url"), [
    ("pi", f"/api/studies/{HUGE}/"),
    ("pi", "/api/studies/99999999999999999999999/"),
    ("pi", f"/api/studies/{HUGE}/dpia/"),
    ("pi", f"/api/participations/{HUGE}/"),
    ("site_a_admin", f"/api/sites/{HUGE}/agent-tokens/"),
])
def test_it_answers_an_id_too_large_to_exist_with_a_json_404_and_audits_the_attempt(p, who, url):
    user = getattr(p, who)
    mark = last_seq()
    assert_error(client(user).get(url), 404, "not_found", mentions="No API endpoint")
    [event] = events_after(mark)
    assert (event.action, event.outcome, event.actor_user_id) == ("consortium.api.not_found", AuditOutcome.DENIED,
                                                                  user.pk)
    assert event.details["path"] == url and event.details["method"] == "GET"


def test_it_names_the_site_agent_that_asked_for_a_round_too_large_to_exist(p):
    agent, plaintext = agent_for(p, p.site_a)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    mark = last_seq()
    assert_error(api.get(f"/api/agent/rounds/{HUGE}/model/"), 404, "not_found")
    [event] = events_after(mark)
    assert (event.action, event.actor_label, event.site_id) == ("consortium.api.not_found", agent.get_username(),
                                                                p.site_a.pk)


def test_it_answers_an_anonymous_caller_with_a_404_and_records_nothing(p):
    mark = last_seq()
    assert_error(client().get(f"/api/studies/{HUGE}/"), 404, "not_found")
    assert events_after(mark) == []


@pytest.mark.parametrize(("url", "params", "mentions"), [
    ("/api/audit/events/", {"study": HUGE}, f"study: Select a valid choice. {HUGE} is not one of"),
    ("/api/audit/events.csv", {"study": HUGE}, f"study: Select a valid choice. {HUGE} is not one of"),
    ("/api/audit/events/", {"page_size": "501"}, "page_size: Ensure this value is less than or equal to 500"),
])
def test_it_answers_a_filter_too_large_to_exist_with_a_json_400(p, url, params, mentions):
    mark = last_seq()
    assert_error(client(p.auditor).get(url, params), 400, "validation_failed", mentions=mentions)
    assert events_after(mark) == []


def test_it_answers_a_gate_site_too_large_to_exist_with_a_json_400(p):
    study = draft_study(p)
    response = client(p.pi).get(f"/api/studies/{study.pk}/gate/", {"site": HUGE})
    assert_error(response, 400, "validation_failed", mentions="site: Ensure this value is less than or equal to")


def test_it_refuses_to_invite_a_site_whose_id_is_too_large(p):
    study = draft_study(p)
    response = client(p.pi).post(f"/api/studies/{study.pk}/participations/", {"site": int(HUGE)}, format="json")
    assert_error(response, 400, "validation_failed", mentions="site: Ensure this value is less than or equal to")


@pytest.mark.parametrize("path", [f"/studies/{HUGE}/", f"/studies/{HUGE}/dashboard/", f"/studies/{HUGE}/dpia/",
                                  f"/studies/{{study}}/versions/{HUGE}/", f"/sites/{HUGE}/"])
def test_it_answers_a_page_for_an_id_too_large_to_exist_with_the_html_404(p, path):
    response = client_for(p.pi).get(path.format(study=draft_study(p).pk))
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html") and b"Not found" in response.content


def test_it_shows_the_audit_page_with_the_filter_refused_when_the_study_is_too_large(p):
    response = client_for(p.auditor).get("/audit/", {"study": HUGE})
    assert response.status_code == 400  # a filter that cannot be applied is refused, never silently dropped
    assert b"Select a valid choice" in response.content


def test_it_answers_too_many_query_parameters_in_json_under_the_api_and_with_a_page_elsewhere(p):
    query = "&".join(f"p{number}=1" for number in range(1100))
    api = client(p.auditor).get(f"/api/audit/events/?{query}")
    assert_error(api, 400, "bad_request", mentions="malformed")
    page = Client(raise_request_exception=False)
    page.force_login(p.auditor)
    response = page.get(f"/audit/?{query}")
    assert response.status_code == 400 and response["Content-Type"].startswith("text/html")


def test_it_answers_a_server_error_under_the_api_in_json():
    response = server_error(RequestFactory().get("/api/studies/"))
    assert response.status_code == 500
    assert json.loads(response.content)["error"] == "server_error"


# --- RequestTargetLimit (ASGI) ----------------------------------------------------------------------------


def through_limit(path: str, query: bytes) -> tuple[list[dict], list[dict]]:
    """Call the middleware; returns what the app was called with and what the client was sent."""
    called, sent = [], []

    async def app(scope, receive, send):
        called.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "query_string": query,
             "headers": []}
    asyncio.run(RequestTargetLimit(app)(scope, receive, send))
    return called, sent


def test_it_passes_a_request_target_within_the_limit_on():
    path = "/api/audit/events/"
    called, sent = through_limit(path, b"a" * (MAX_TARGET_BYTES - len(path)))
    assert len(called) == 1 and sent[0]["status"] == 200


@pytest.mark.parametrize(("path", "content_type"), [("/api/audit/events/", b"application/json"),
                                                    ("/audit/", b"text/html; charset=utf-8")])
def test_it_answers_414_to_a_request_target_over_the_limit_without_calling_the_app(path, content_type):
    called, (start, body) = through_limit(path, b"a" * (MAX_TARGET_BYTES - len(path) + 1))
    assert called == []
    assert start["status"] == 414 and (b"content-type", content_type) in start["headers"]
    if content_type == b"application/json":
        assert json.loads(body["body"])["error"] == "uri_too_long"
    else:
        assert b"<h1>URL too long</h1>" in body["body"]
