"""The studies REST API: list, create, detail, protocol changes and the study's life-cycle actions,
plus sites, tokens and JSON errors."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from consortium.audit.models import AuditEvent, AuditOutcome
from studies import services
from studies.choices import StudyStatus
from studies.models import AgreementVersion, Approval, Study
from tests.api_support import assert_anonymous_refused, assert_error, call, client, nothing_changes, only_success
from tests.base import PASSWORD, draft_study
from tests.support import last_seq, study_in

NEW_STUDY = {
    "title": "Readmission risk",
    "clinical_question": "Which patients return within 30 days?",
    "model_kind": "mlp",
    "strategy": "fedprox",
    "quorum": 3,
    "agreement_text": "Use pseudonymised data for readmission research only.",
}

STUDY_ENDPOINTS = [
    ("get", "/api/studies/"),
    ("post", "/api/studies/"),
    ("get", "/api/studies/{pk}/"),
    ("patch", "/api/studies/{pk}/"),
    ("post", "/api/studies/{pk}/submit/"),
    ("post", "/api/studies/{pk}/approve/"),
    ("post", "/api/studies/{pk}/reject/"),
    ("post", "/api/studies/{pk}/activate/"),
    ("post", "/api/studies/{pk}/suspend/"),
    ("post", "/api/studies/{pk}/close/"),
    ("get", "/api/sites/"),
]


@pytest.mark.parametrize(("method", "url"), STUDY_ENDPOINTS)
def test_it_refuses_anonymous_callers_with_a_json_401(p, method, url):
    study = draft_study(p)
    with nothing_changes():
        response = call(client(), method, url.format(pk=study.pk), {"reason": "x", "title": "x"})
    assert_anonymous_refused(response)


def test_it_lists_only_the_studies_the_caller_may_see(p):
    mine = draft_study(p, title="Mine")
    other_pi = draft_study(p, title="Invited")
    services.participation_invite(actor=p.pi, study=other_pi, site=p.site_a)
    seen = {
        name: {row["title"] for row in client(user).get("/api/studies/").json()}
        for name, user in [("pi", p.pi), ("dpo", p.dpo), ("a", p.site_a_admin), ("b", p.site_b_admin),
                           ("outsider", p.outsider)]
    }
    assert seen == {"pi": {"Mine", "Invited"}, "dpo": {"Mine", "Invited"}, "a": {"Invited"}, "b": set(),
                    "outsider": set()}
    assert mine.pk in {row["id"] for row in client(p.pi).get("/api/studies/").json()}


def test_it_creates_a_draft_study_led_by_the_pi(p):
    mark = last_seq()
    response = client(p.pi).post("/api/studies/", NEW_STUDY, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    study = Study.objects.get(pk=body["id"])
    assert (study.title, study.pi, study.status, study.model_kind, study.quorum) == (
        "Readmission risk", p.pi, StudyStatus.DRAFT, "mlp", 3)
    assert body["protocol_sha256"] == study.protocol_sha256()
    assert {"edit_protocol", "submit", "invite_site"} <= set(body["allowed_actions"])
    assert AgreementVersion.objects.filter(study=study, version=1).exists()
    only_success(mark, "studies.study.created", "studies.agreement.published")


def test_it_refuses_study_creation_by_someone_who_is_not_a_pi(p):
    with nothing_changes(denied="studies.study.create"):
        response = client(p.dpo).post("/api/studies/", NEW_STUDY, format="json")
    assert_error(response, 403, "forbidden", mentions="principal investigators")


@pytest.mark.parametrize(
    ("change", "field", "mentions"),
    [
        ({"quorum": 0}, "quorum", "greater than or equal to 1"),
        ({"strategy": "magic"}, "strategy", "not a valid choice"),
        ({"colour": "blue"}, "non_field_errors", "Unknown fields: colour"),
    ],
)
def test_it_refuses_invalid_input_with_a_clear_json_message(p, change, field, mentions):
    with nothing_changes():
        response = client(p.pi).post("/api/studies/", {**NEW_STUDY, **change}, format="json")
    body = assert_error(response, 400, "validation_failed", mentions=mentions)
    assert field in body["fields"]


def test_it_shows_a_study_and_records_the_read(p):
    study = draft_study(p)
    mark = last_seq()
    response = client(p.auditor).get(f"/api/studies/{study.pk}/")
    assert response.status_code == 200
    body = response.json()
    assert (body["id"], body["title"], body["status"], body["pi"]) == (study.pk, "Sepsis risk", "draft", "pi")
    assert body["allowed_actions"] == []
    [event] = only_success(mark, "studies.study.viewed")
    assert (event.study_id, event.actor_user_id, event.details) == (study.pk, p.auditor.pk, {"via": "api"})


@pytest.mark.parametrize("who", ["outsider", "site_b_admin"])
def test_it_answers_404_for_a_study_the_caller_cannot_see_and_audits_it(p, who):
    study = draft_study(p)
    with nothing_changes(denied="studies.study.view") as events:
        response = client(getattr(p, who)).get(f"/api/studies/{study.pk}/")
    assert_error(response, 404, "not_found", mentions="No such study")
    assert events[0].study_id == study.pk
    assert_error(client(p.pi).get("/api/studies/999999/"), 404, "not_found")


def test_it_changes_the_protocol_and_sends_an_approved_study_back_for_approval(p):
    study = study_in(p, StudyStatus.APPROVED)
    mark = last_seq()
    response = client(p.pi).patch(f"/api/studies/{study.pk}/", {"rounds": 50, "title": "Sepsis v2"}, format="json")
    assert response.status_code == 200, response.json()
    study.refresh_from_db()
    assert (study.rounds, study.title, study.status) == (50, "Sepsis v2", StudyStatus.SUBMITTED)
    assert response.json()["status"] == "submitted"
    assert not Approval.objects.filter(study=study, voided_at__isnull=True).exists()
    only_success(mark, "studies.study.protocol_changed", "studies.study.approvals_voided")


def test_it_refuses_a_protocol_change_by_someone_who_only_sees_the_study(p):
    study = draft_study(p)
    with nothing_changes(denied="studies.study.update"):
        response = client(p.dpo).patch(f"/api/studies/{study.pk}/", {"rounds": 5}, format="json")
    assert_error(response, 403, "forbidden", mentions="principal investigator")


def test_it_refuses_a_protocol_change_to_a_study_the_caller_cannot_see_with_404(p):
    study = draft_study(p)
    with nothing_changes(denied="studies.study.update"):
        response = client(p.outsider).patch(f"/api/studies/{study.pk}/", {"rounds": 5}, format="json")
    assert_error(response, 404, "not_found")


# --- Life-cycle actions --------------------------------------------------------------------------------

ACTIONS = [
    # (start, actor, verb, body, end status, audit actions)
    (StudyStatus.DRAFT, "pi", "submit", {}, StudyStatus.SUBMITTED, ["studies.study.submitted"]),
    (StudyStatus.SUBMITTED, "dpo", "approve", {"comment": "Fine."}, StudyStatus.SUBMITTED,
     ["studies.study.approval_given"]),
    (StudyStatus.SUBMITTED, "dpo", "reject", {"reason": "DPIA missing."}, StudyStatus.DRAFT,
     ["studies.study.rejected"]),
    (StudyStatus.APPROVED, "pi", "activate", {}, StudyStatus.ACTIVE, ["studies.study.activated"]),
    (StudyStatus.APPROVED, "dpo", "suspend", {"justification": "Breach reported."}, StudyStatus.SUSPENDED,
     ["studies.study.suspended"]),
    (StudyStatus.DRAFT, "pi", "close", {"reason": "Funding ended."}, StudyStatus.CLOSED, ["studies.study.closed"]),
]


@pytest.mark.parametrize(("start", "who", "verb", "body", "end", "events"), ACTIONS)
def test_it_moves_a_study_through_its_life_for_whoever_may(p, start, who, verb, body, end, events):
    study = study_in(p, start)
    mark = last_seq()
    response = client(getattr(p, who)).post(f"/api/studies/{study.pk}/{verb}/", body, format="json")
    assert response.status_code == 200, response.json()
    study.refresh_from_db()
    assert study.status == end
    assert response.json()["status"] == end
    only_success(mark, *events)


def test_it_approves_once_both_the_pi_and_a_dpo_have_approved(p):
    study = study_in(p, StudyStatus.SUBMITTED)
    client(p.pi).post(f"/api/studies/{study.pk}/approve/", {}, format="json")
    mark = last_seq()
    response = client(p.dpo).post(f"/api/studies/{study.pk}/approve/", {"comment": "OK"}, format="json")
    assert response.json()["status"] == "approved"
    assert [a["role"] for a in response.json()["approvals"]] == ["dpo", "pi"]
    only_success(mark, "studies.study.approval_given", "studies.study.approved")


FORBIDDEN = [
    # (start, verb, body, service action): a site admin of an invited site sees the study but may not act
    (StudyStatus.DRAFT, "submit", {}, "studies.study.submit"),
    (StudyStatus.SUBMITTED, "approve", {}, "studies.study.approve"),
    (StudyStatus.SUBMITTED, "reject", {"reason": "No."}, "studies.study.reject"),
    (StudyStatus.APPROVED, "activate", {}, "studies.study.activate"),
    (StudyStatus.APPROVED, "suspend", {"justification": "Because."}, "studies.study.suspend"),
    (StudyStatus.DRAFT, "close", {"reason": "Because."}, "studies.study.close"),
]


@pytest.mark.parametrize(("start", "verb", "body", "action"), FORBIDDEN)
def test_it_refuses_an_action_on_a_visible_study_with_403(p, start, verb, body, action):
    study = study_in(p, start)
    services.participation_invite(actor=p.pi, study=study, site=p.site_a)
    with nothing_changes(denied=action):
        response = client(p.site_a_admin).post(f"/api/studies/{study.pk}/{verb}/", body, format="json")
    assert_error(response, 403, "forbidden")


@pytest.mark.parametrize(("start", "verb", "body", "action"), FORBIDDEN)
def test_it_refuses_an_action_on_an_invisible_study_with_404(p, start, verb, body, action):
    study = study_in(p, start)
    with nothing_changes(denied=action) as events:
        response = client(p.outsider).post(f"/api/studies/{study.pk}/{verb}/", body, format="json")
    assert_error(response, 404, "not_found", mentions="No such study")
    assert events[0].study_id == study.pk


def test_it_refuses_an_illegal_transition_with_409_and_a_clear_message(p):
    study = draft_study(p)
    with nothing_changes(denied="studies.study.activate"):
        response = client(p.pi).post(f"/api/studies/{study.pk}/activate/", format="json")
    assert_error(response, 409, "invalid_transition", mentions="cannot become active")


def test_it_leaves_a_missing_justification_to_the_service_which_refuses_and_audits(p):
    study = study_in(p, StudyStatus.APPROVED)
    with nothing_changes(denied="studies.study.suspend"):
        response = client(p.pi).post(f"/api/studies/{study.pk}/suspend/", {"justification": "  "}, format="json")
    assert_error(response, 400, "validation_failed", mentions="justification")


def test_it_lists_studies_in_a_constant_number_of_queries(p):
    api = client(p.pi)
    draft_study(p, title="First")
    api.get("/api/studies/")  # warm the content-type cache, as any running server has
    with CaptureQueriesContext(connection) as one:
        assert len(api.get("/api/studies/").json()) == 1
    for n in range(4):
        study = draft_study(p, title=f"More {n}")
        services.study_submit(actor=p.pi, study=study)  # status_changed_by set: a second user to serialize
    with CaptureQueriesContext(connection) as five:
        assert len(api.get("/api/studies/").json()) == 5
    assert len(five) == len(one)


# --- Sites ------------------------------------------------------------------------------------------------


def test_it_lists_the_sites_the_caller_may_see(p):
    def names(user):
        return [row["name"] for row in client(user).get("/api/sites/").json()]

    assert names(p.pi) == ["Amsterdam UMC", "Charité Berlin"]
    assert names(p.auditor) == ["Amsterdam UMC", "Charité Berlin"]
    assert names(p.site_a_admin) == ["Amsterdam UMC"]
    assert names(p.outsider) == []
    assert client(p.pi).get("/api/sites/").json()[1]["timezone"] == "Europe/Berlin"


# --- Tokens, CSRF and JSON errors -------------------------------------------------------------------------


def test_it_issues_a_token_that_works_end_to_end(p):
    api = APIClient(enforce_csrf_checks=True)
    response = api.post("/api/auth/token/", {"username": "pi", "password": PASSWORD}, format="json")
    assert response.status_code == 200
    token = response.json()["token"]
    assert AuditEvent.objects.filter(action="consortium.api_token.issued", actor_user=p.pi).exists()

    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    created = api.post("/api/studies/", NEW_STUDY, format="json")  # no CSRF token needed with a token
    assert created.status_code == 201, created.json()
    assert Study.objects.get(pk=created.json()["id"]).pi == p.pi
    assert [row["id"] for row in api.get("/api/studies/").json()] == [created.json()["id"]]
    again = APIClient().post("/api/auth/token/", {"username": "pi", "password": PASSWORD}, format="json")
    assert again.json()["token"] == token


def test_it_refuses_bad_credentials_with_a_json_400_and_audits_the_attempt(p):
    with nothing_changes(denied="consortium.login.failed") as events:
        response = APIClient().post("/api/auth/token/", {"username": "pi", "password": "guess"}, format="json")
    assert_error(response, 400, "validation_failed", mentions="Unable to log in")
    assert events[0].actor_label == "pi"
    assert events[0].outcome == AuditOutcome.DENIED


def test_it_refuses_a_bad_token_with_a_json_401(p):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert_error(api.get("/api/studies/"), 401, "authentication_failed", mentions="Invalid token")


def test_it_requires_csrf_for_session_writes(p):
    api = APIClient(enforce_csrf_checks=True)
    api.force_login(p.pi)
    with nothing_changes():
        response = api.post("/api/studies/", NEW_STUDY, format="json")
    assert_error(response, 403, "permission_denied", mentions="CSRF")


def test_it_answers_json_even_to_a_browser_and_on_unknown_api_paths(p):
    api = client(p.pi)
    browser = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    assert_error(api.get("/api/studies/424242/", HTTP_ACCEPT=browser), 404, "not_found")
    assert_error(api.get("/api/no-such-thing/", HTTP_ACCEPT=browser), 404, "not_found", mentions="No API endpoint")
    assert_error(api.get("/api/studies/", HTTP_ACCEPT="text/html"), 406, "not_acceptable")
    assert_error(api.delete("/api/studies/"), 405, "method_not_allowed")


def test_it_answers_a_protocol_the_model_refuses_with_a_json_400_and_audits_it(p):
    """Differential privacy with a median is refused by the study's own rules: a clear 400, not a 500."""
    with nothing_changes(denied="studies.study.create"):
        response = client(p.pi).post("/api/studies/", {**NEW_STUDY, "strategy": "median", "dp_noise_multiplier": 1.0},
                                     format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "validation_failed" and "averaging strategies" in body["detail"]
    assert "dp_noise_multiplier" in body["fields"]
