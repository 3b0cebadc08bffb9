"""Every GET of the API, walked from its OpenAPI schema: a read of study data writes one audit event (in
the read's transaction), anything else is classified as not a read of study data with a reason, and no
endpoint ignores a query parameter it does not know or cannot parse (a JSON 400, nothing recorded)."""

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from rest_framework.test import APIClient

from consortium.api_base import AuditedRead, ConsortiumApi, UnauditedRead
from consortium.audit.models import AuditOutcome
from studies.models import Participation
from tests.aggregation.support import Federation, open_round
from tests.api_support import assert_error, client
from tests.support import events_after, last_seq

pytestmark = pytest.mark.usefixtures("model_store")


def schema_gets() -> dict[str, dict[str, Any]]:
    """Every GET operation the schema documents, by path template."""
    document = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    return {path: operations["get"] for path, operations in document["paths"].items() if "get" in operations}


class Walk:
    """A concrete URL and a caller allowed to read it, for each GET in the schema."""

    def __init__(self, fed: Federation) -> None:
        self.fed = fed
        self.round = open_round(fed.study)
        self.participation = Participation.objects.get(study=fed.study, site=fed.p.site_a)
        agent = APIClient()
        agent.credentials(HTTP_AUTHORIZATION=f"Bearer {fed.plaintext_a}")
        self.agent = agent

    def url(self, template: str) -> str:
        ids = {"/api/studies/{id}/": self.fed.study.pk, "/api/participations/{id}/": self.participation.pk,
               "/api/sites/{id}/": self.fed.p.site_a.pk, "/api/agent/rounds/{round_id}/": self.round.pk}
        url = template
        for prefix, value in ids.items():
            name = prefix.rsplit("{", 1)[1].rstrip("}/")
            if template.startswith(prefix):
                url = url.replace("{" + name + "}", str(value))
        url = url.replace("/versions/{number}/", "/versions/0/")  # the initial model, made when the round opened
        assert "{" not in url, f"{template}: give the walk an id for this path"
        return url

    def params(self, template: str) -> dict[str, int]:
        """The query parameters a read needs (the agent's ledger: the site's own rows of one study)."""
        return {"study": self.fed.study.pk} if template == "/api/agent/ledger/" else {}

    def caller(self, template: str) -> APIClient:
        if template.startswith("/api/agent/flower/"):
            return self._flower_coordinator()
        if template.startswith("/api/agent/"):
            return self.agent
        if template.startswith("/api/sites/{id}/flower-nodes/"):
            return client(self.fed.p.site_a_admin)
        if template.startswith("/api/studies/{id}/flower-tokens/"):
            return client(self.fed.p.pi)
        if template.startswith("/api/sites/{id}/agent-tokens/"):
            return client(self.fed.p.site_a_admin)
        return client(self.fed.p.dpo)  # a DPO oversees every study and reads the audit log


    def _flower_coordinator(self) -> APIClient:
        from aggregation.flower_auth import assemble
        from aggregation.models import FlowerCoordinatorToken
        from sites import tokens

        if not hasattr(self, "coordinator"):
            secret = tokens.new_secret()
            FlowerCoordinatorToken.objects.create(study=self.fed.study, name="SuperLink", prefix="0123abcd",
                                                  key_hash=tokens.hash_secret(secret), created_by=self.fed.p.pi)
            self.coordinator = APIClient()
            self.coordinator.credentials(HTTP_AUTHORIZATION=f"Bearer {assemble('0123abcd', secret)}")
        return self.coordinator


@pytest.fixture
def walk(fed) -> Walk:
    return Walk(fed)


def test_it_audits_every_read_of_study_data_and_classifies_every_other_get(walk):
    problems = []
    for template in schema_gets():
        url = walk.url(template)
        reads = getattr(resolve(url).func.view_class, "reads", None)
        if isinstance(reads, UnauditedRead):
            assert len(reads.reason) > 20, f"{template}: say why it is no read of study data"
            continue
        if not isinstance(reads, AuditedRead):
            problems.append(f"{template}: neither an audited read of study data nor classified as none")
            continue
        mark = last_seq()
        response = walk.caller(template).get(url, walk.params(template))
        written = [(event.action, event.outcome) for event in events_after(mark)]
        if response.status_code != 200 or written != [(reads.action, AuditOutcome.OK)]:
            problems.append(f"{template}: {response.status_code}, wrote {written}, expected {reads.action}")
            continue
        event = events_after(mark)[0]
        if template.startswith(("/api/studies/{id}/", "/api/participations/", "/api/agent/rounds/{round_id}",
                                "/api/agent/ledger/")):
            assert event.study_id == walk.fed.study.pk, template
        if template.startswith("/api/sites/{id}/ledger"):
            assert (event.site_id, event.details["studies"]) == (walk.fed.p.site_a.pk, [walk.fed.study.pk]), template
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("suffix", "action"), [("dpia/", "studies.dpia.viewed"),
                                                ("agreements/", "studies.agreement.listed"),
                                                ("participations/", "studies.participation.listed"),
                                                ("gate/", "studies.gate.viewed")])
def test_it_records_who_read_a_studys_governance_records(walk, suffix, action):
    mark = last_seq()
    assert walk.caller("").get(f"/api/studies/{walk.fed.study.pk}/{suffix}").status_code == 200
    [event] = events_after(mark)
    assert (event.action, event.outcome, event.actor_user_id, event.study_id, event.details["via"]) == (
        action, AuditOutcome.OK, walk.fed.p.dpo.pk, walk.fed.study.pk, "api")


def test_it_answers_no_study_data_when_the_read_cannot_be_recorded(walk, monkeypatch):
    def audit_log_down(**kwargs):
        raise DatabaseError("the audit log cannot be written")

    monkeypatch.setattr("consortium.api_base.study_data_read", audit_log_down)
    api = client(walk.fed.p.dpo)
    api.raise_request_exception = False
    response = api.get(f"/api/studies/{walk.fed.study.pk}/dpia/")
    assert_error(response, 500, "server_error")
    assert b"Pseudonymised" not in response.content


def test_it_records_nothing_for_a_refused_read_but_the_denial(walk):
    mark = last_seq()
    response = client(walk.fed.p.outsider).get(f"/api/studies/{walk.fed.study.pk}/dpia/")
    assert_error(response, 404, "not_found")
    assert [(e.action, e.outcome) for e in events_after(mark)] == [("studies.dpia.view", AuditOutcome.DENIED)]


def _api_views() -> Iterator[tuple[str, Callable]]:
    def visit(patterns: list, prefix: str) -> Iterator[tuple[str, Callable]]:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                yield from visit(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                yield prefix + str(pattern.pattern), pattern.callback

    return ((route, view) for route, view in visit(get_resolver().url_patterns, "") if route.startswith("api/"))


def test_it_classifies_the_reads_of_every_api_route_even_those_outside_the_schema():
    routes = dict(_api_views())
    assert {"api/schema/", "api/docs/", "api/^(?P<rest>.*)$"} <= set(routes)
    for route, view in routes.items():
        view_class = getattr(view, "view_class", None)
        assert view_class is not None, f"{route}: a function view escapes the API's rules"
        if callable(getattr(view_class, "get", None)):
            assert isinstance(getattr(view_class, "reads", None), AuditedRead | UnauditedRead), route


def test_it_refuses_to_define_a_get_that_does_not_say_what_it_reads():
    with pytest.raises(ImproperlyConfigured, match="declare `reads`"):
        class LeakyApi(ConsortiumApi):
            def get(self, request):
                return None


# --- Query parameters ----------------------------------------------------------------------------------


def test_it_answers_an_unknown_query_parameter_with_a_json_400_on_every_get(walk):
    for template, operation in schema_gets().items():
        assert "400" in operation["responses"], f"{template}: the schema should document the 400"
        mark = last_seq()
        response = walk.caller(template).get(walk.url(template), {"colour": "blue"})
        body = assert_error(response, 400, "unknown_parameter", mentions="Unknown query parameter: colour.")
        assert events_after(mark) == [], template
        declared = [param["name"] for param in operation.get("parameters", []) if param["in"] == "query"]
        for name in declared:
            assert name in body["detail"], (template, body["detail"])


def test_it_refuses_the_log_filtered_by_a_parameter_it_does_not_know(p):
    response = client(p.auditor).get("/api/audit/events/", {"colour": "blue"})
    body = assert_error(response, 400, "unknown_parameter")
    assert body["detail"] == ("Unknown query parameter: colour. It takes action, actor, object_id, object_type, "
                              "outcome, page, page_size, since, site, study, until.")


def _malformed(param: dict[str, Any]) -> str:
    schema = param["schema"]
    if "enum" in schema or "$ref" in schema:
        return "no-such-choice"
    return {"integer": "twelve", "string": "x" * 101}[schema["type"]]


def test_it_answers_a_malformed_or_repeated_query_parameter_with_a_json_400(walk):
    checked = 0
    for template, operation in schema_gets().items():
        url, api = walk.url(template), walk.caller(template)
        for param in (param for param in operation.get("parameters", []) if param["in"] == "query"):
            mark = last_seq()
            assert_error(api.get(url, {param["name"]: _malformed(param)}), 400, "validation_failed",
                         mentions=param["name"])
            assert_error(api.get(f"{url}?{param['name']}=1&{param['name']}=2"), 400, "repeated_parameter")
            assert events_after(mark) == []
            checked += 1
    assert checked >= 6  # the gate's action and site, the log's study, action, page and page_size


def test_it_refuses_query_parameters_on_a_write(p):
    response = client(p.pi).post("/api/studies/?dry_run=1", {"title": "X"}, format="json")
    assert_error(response, 400, "unknown_parameter", mentions="It takes no query parameters.")
