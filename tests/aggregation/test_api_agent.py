"""The agent API (docs/agent-protocol.md) through the whole Django stack, as the site agent calls it:
bearer tokens, JSON errors, safetensors bodies and the update headers."""

import hashlib
import json

import pytest
from rest_framework.test import APIClient

from aggregation.choices import RoundStatus
from aggregation.models import Round, Update
from consortium.audit.models import AuditOutcome
from consortium.federated import codec
from consortium.federated.protocol import protocol_hash
from sites.services import agent_token_revoke
from tests.aggregation.support import (
    GOOD_EVALUATION,
    GOOD_METRICS,
    agent_for,
    aggregation_rows,
    governed_study,
    open_round,
    record_enqueued,
    third_site,
    update_bytes,
)
from tests.api_support import assert_error
from tests.base import active_study
from tests.support import events_after, last_seq


def agent_client(plaintext: str) -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return api


def headers(round_: Round, *, key: str = "attempt-1", num_examples: int = 25, **overrides: str) -> dict[str, str]:
    values = {"HTTP_IDEMPOTENCY_KEY": key, "HTTP_X_ROUND": str(round_.number),
              "HTTP_X_BASE_VERSION": str(round_.base_version.number), "HTTP_X_NUM_EXAMPLES": str(num_examples),
              "HTTP_X_METRICS": json.dumps(GOOD_METRICS)}
    values.update(overrides)
    return {name: value for name, value in values.items() if value is not None}


def upload(api: APIClient, round_: Round, body: bytes, **extra: str):
    return api.post(f"/api/agent/rounds/{round_.pk}/update/", data=body, content_type="application/octet-stream",
                    **extra)


def assert_refused_unchanged(response, status: int, code: str, mentions: str, mark: int, rows: dict,
                             action: str | None = "aggregation.update.submit") -> dict:
    """A JSON error; no round, update or version changed; the attempt audited as denied (if `action`)."""
    body = assert_error(response, status, code, mentions=mentions)
    assert aggregation_rows() == rows
    events = events_after(mark)
    assert [(e.action, e.outcome) for e in events] == ([(action, AuditOutcome.DENIED)] if action else [])
    return body


def test_it_tells_an_agent_which_site_it_acts_for(fed):
    response = agent_client(fed.plaintext_a).get("/api/agent/me/")
    assert response.status_code == 200
    body = response.json()
    assert body["site"] == {"id": fed.p.site_a.pk, "code": "amc", "name": "Amsterdam UMC"}
    assert body["token"]["prefix"] == fed.agent_a.token.prefix and body["token"]["created_at"]


def test_it_lists_the_open_round_with_its_protocol_and_whether_the_site_submitted(fed):
    api = agent_client(fed.plaintext_a)
    assert api.get("/api/agent/rounds/").json() == []
    round_ = open_round(fed.study)
    [listed] = api.get("/api/agent/rounds/").json()
    assert listed == {
        "round_id": round_.pk, "study_id": fed.study.pk, "study_title": "Sepsis risk", "number": 1,
        "kind": "training", "base_version": 0, "deadline": round_.deadline.isoformat(), "submitted": False,
        "protocol": fed.study.protocol(), "protocol_sha256": fed.study.protocol_sha256(),
        "standardization": None, "secure_stage": None,
    }
    # The agent can check the hash itself, from the protocol it is sent, without trusting the coordinator.
    assert protocol_hash(listed["protocol"]) == listed["protocol_sha256"]
    assert {"model_kind": "logistic_regression", "num_features": 4, "label_column": "target"}.items() <= \
        listed["protocol"].items()
    assert upload(api, round_, update_bytes(round_), **headers(round_)).status_code == 201
    assert [r["submitted"] for r in api.get("/api/agent/rounds/").json()] == [True]
    assert [r["submitted"] for r in agent_client(fed.plaintext_b).get("/api/agent/rounds/").json()] == [False]


def test_it_lists_no_round_to_a_site_the_gate_refuses_or_outside_the_study(fed):
    from studies import services as study_services

    open_round(fed.study)
    _, outsider = agent_for(fed.p, third_site(fed.p))
    assert agent_client(outsider).get("/api/agent/rounds/").json() == []
    study_services.participation_suspend(actor=fed.p.site_a_admin, participation=fed.participation(fed.p.site_a),
                                         reason="Maintenance.")
    assert agent_client(fed.plaintext_a).get("/api/agent/rounds/").json() == []
    assert len(agent_client(fed.plaintext_b).get("/api/agent/rounds/").json()) == 1


def test_it_runs_the_statistics_round_and_then_lists_the_standardization(p):
    study = active_study(p, federated_statistics=True, num_features=2)
    round_ = open_round(study)
    apis = [agent_client(agent_for(p, site)[1]) for site in (p.site_a, p.site_b)]
    [listed] = apis[0].get("/api/agent/rounds/").json()
    assert (listed["kind"], listed["base_version"], listed["standardization"]) == ("statistics", None, None)
    for api, rows in zip(apis, ([[1.0, 10.0], [3.0, 30.0]], [[5.0, 50.0], [7.0, 70.0]]), strict=True):
        payload = {"features": ["a", "b"], "count": 2, "sum": [sum(r[i] for r in rows) for i in range(2)],
                   "sum_sq": [sum(r[i] ** 2 for r in rows) for i in range(2)]}
        response = api.post(f"/api/agent/rounds/{round_.pk}/statistics/", payload, format="json")
        assert response.status_code == 201 and response.json() == {"round_id": round_.pk, "status": "accepted"}
    [training] = apis[1].get("/api/agent/rounds/").json()
    assert (training["kind"], training["number"], training["base_version"]) == ("training", 2, 0)
    assert training["standardization"]["features"] == ["a", "b"]
    assert training["standardization"]["mean"] == pytest.approx([4.0, 40.0])
    assert training["standardization"]["std"] == pytest.approx([5 ** 0.5, 500 ** 0.5])


def test_it_sends_the_model_with_its_sha256_and_audits_the_download(fed):
    round_ = open_round(fed.study)
    mark = last_seq()
    response = agent_client(fed.plaintext_a).get(f"/api/agent/rounds/{round_.pk}/model/")
    assert response.status_code == 200 and response["Content-Type"] == "application/octet-stream"
    assert hashlib.sha256(response.content).hexdigest() == response["X-Model-SHA256"] == round_.base_version.sha256
    assert response["X-Model-Version"] == "0"
    assert [(e.action, e.site_id) for e in events_after(mark)] == [("aggregation.model.downloaded", fed.p.site_a.pk)]


def test_it_accepts_an_update_and_answers_a_replay_with_the_same_body(fed):
    round_ = open_round(fed.study)
    api, body = agent_client(fed.plaintext_a), update_bytes(round_)
    first = upload(api, round_, body, **headers(round_))
    assert first.status_code == 201, first.content
    update = Update.objects.get()
    assert first.json() == {"update_id": update.pk, "round_id": round_.pk, "sha256": codec.sha256_hex(body),
                            "status": "accepted"}
    assert (update.num_examples, update.metrics, update.idempotency_key) == (25, GOOD_METRICS, "attempt-1")
    replay = upload(api, round_, body, **headers(round_))
    assert replay.status_code == 200 and replay.json() == first.json()
    assert Update.objects.count() == 1
    second = upload(api, round_, update_bytes(round_, seed=99), **headers(round_, key="attempt-2"))
    assert_error(second, 409, "duplicate_update", mentions="one per site per round")


def test_it_answers_a_body_that_is_not_safetensors_with_a_json_400(fed):
    round_ = open_round(fed.study)
    mark, rows = last_seq(), aggregation_rows()
    response = upload(agent_client(fed.plaintext_a), round_, b"\x80\x04not a model", **headers(round_))
    body = assert_refused_unchanged(response, 400, "not_safetensors", "not a valid safetensors file", mark, rows)
    assert set(body) == {"error", "detail"}


def test_it_answers_a_stale_round_and_a_gate_refusal_in_json(fed):
    from studies import services as study_services

    round_ = open_round(fed.study)
    api = agent_client(fed.plaintext_a)
    mark, rows = last_seq(), aggregation_rows()
    stale = upload(api, round_, update_bytes(round_), **headers(round_, HTTP_X_BASE_VERSION="7"))
    assert_refused_unchanged(stale, 409, "stale_model", "trains from model v0, not v7", mark, rows)
    study_services.participation_revoke(actor=fed.p.site_a_admin, participation=fed.participation(fed.p.site_a),
                                        reason="Consent withdrawn.")
    mark, rows = last_seq(), aggregation_rows()
    refused = upload(api, round_, update_bytes(round_), **headers(round_))
    body = assert_refused_unchanged(refused, 403, "gate_refused", "Participation is revoked", mark, rows)
    assert [check["name"] for check in body["checks"]] == ["participation"]


def test_it_answers_an_update_over_the_limit_with_413(fed, settings):
    round_ = open_round(fed.study)
    body = update_bytes(round_)
    settings.MAX_UPDATE_BYTES = len(body) - 1
    mark, rows = last_seq(), aggregation_rows()
    response = upload(agent_client(fed.plaintext_a), round_, body, **headers(round_))
    assert_refused_unchanged(response, 413, "too_large", "limit", mark, rows)


@pytest.mark.parametrize(("missing", "mentions"), [
    ("HTTP_IDEMPOTENCY_KEY", "Idempotency-Key"),
    ("HTTP_X_ROUND", "X-Round"),
    ("HTTP_X_BASE_VERSION", "X-Base-Version"),
    ("HTTP_X_NUM_EXAMPLES", "X-Num-Examples"),
])
def test_it_answers_400_when_a_required_header_is_missing(fed, missing, mentions):
    round_ = open_round(fed.study)
    mark, rows = last_seq(), aggregation_rows()
    response = upload(agent_client(fed.plaintext_a), round_, update_bytes(round_), **headers(round_, **{missing: None}))
    assert_refused_unchanged(response, 400, "bad_header", mentions, mark, rows)


def test_it_answers_400_to_metrics_that_are_not_a_json_object(fed):
    round_ = open_round(fed.study)
    mark, rows = last_seq(), aggregation_rows()
    response = upload(agent_client(fed.plaintext_a), round_, update_bytes(round_),
                      **headers(round_, HTTP_X_METRICS="[1, 2]"))
    assert_refused_unchanged(response, 400, "bad_header", "X-Metrics must be a JSON object", mark, rows)


def test_it_refuses_a_revoked_token_on_the_very_next_request(fed):
    round_ = open_round(fed.study)
    api = agent_client(fed.plaintext_a)
    assert api.get("/api/agent/rounds/").status_code == 200
    agent_token_revoke(actor=fed.p.site_a_admin, token=fed.agent_a.token, reason="Laptop stolen")
    for response in (api.get("/api/agent/rounds/"), api.get(f"/api/agent/rounds/{round_.pk}/model/"),
                     upload(api, round_, update_bytes(round_), **headers(round_))):
        assert_error(response, 401, "authentication_failed", mentions="revoked")
        assert "Laptop stolen" in response.json()["detail"]
    assert not Update.objects.exists()


@pytest.mark.parametrize("persona", ["pi", "site_a_admin", "admin"])
def test_it_refuses_a_person_logged_in_by_session(fed, persona):
    round_ = open_round(fed.study)
    api = APIClient()
    api.force_login(getattr(fed.p, persona))
    for response in (api.get("/api/agent/me/"), api.get("/api/agent/rounds/"),
                     api.get(f"/api/agent/rounds/{round_.pk}/model/"),
                     upload(api, round_, update_bytes(round_), **headers(round_))):
        assert_error(response, 401, "not_authenticated")
    assert not Update.objects.exists()


def test_it_refuses_anonymous_callers(fed):
    assert_error(APIClient().get("/api/agent/me/"), 401, "not_authenticated")


def test_it_answers_404_for_a_round_of_a_study_the_site_is_not_in(fed):
    round_ = open_round(fed.study)
    _, outsider = agent_for(fed.p, third_site(fed.p))
    api = agent_client(outsider)
    mark, rows = last_seq(), aggregation_rows()
    assert_refused_unchanged(api.get(f"/api/agent/rounds/{round_.pk}/model/"), 404, "not_found", "No such round",
                             mark, rows, action="aggregation.model.download")
    mark = last_seq()
    response = upload(api, round_, update_bytes(round_), **headers(round_))
    assert_refused_unchanged(response, 404, "not_found", "No such round", mark, rows)
    assert Round.objects.get(pk=round_.pk).status == RoundStatus.OPEN


def test_it_hands_the_round_to_aggregation_when_both_sites_uploaded(fed, monkeypatch,
                                                                    django_capture_on_commit_callbacks):
    enqueued = record_enqueued(monkeypatch)
    round_ = open_round(fed.study)
    for plaintext in (fed.plaintext_a, fed.plaintext_b):
        with django_capture_on_commit_callbacks(execute=True):
            assert upload(agent_client(plaintext), round_, update_bytes(round_), **headers(round_)).status_code == 201
    assert enqueued == [round_.pk]
    assert Round.objects.get(pk=round_.pk).status == RoundStatus.AGGREGATING


def final_round_over_http(fed, monkeypatch) -> Round:
    """A one-round study (now `fed.study`) whose training round closed: its evaluation round is open."""
    from aggregation.services import round_aggregate

    record_enqueued(monkeypatch)
    fed.study = governed_study(fed.p, rounds=1)
    first = open_round(fed.study)
    for plaintext in (fed.plaintext_a, fed.plaintext_b):
        assert upload(agent_client(plaintext), first, update_bytes(first), **headers(first)).status_code == 201
    round_aggregate(round_id=first.pk)
    return Round.objects.get(study=fed.study, number=2)


def test_it_runs_the_evaluation_round_of_the_final_model_over_http(fed, monkeypatch):
    final = final_round_over_http(fed, monkeypatch)
    api = agent_client(fed.plaintext_a)
    [listed] = api.get("/api/agent/rounds/").json()
    assert (listed["kind"], listed["number"], listed["base_version"], listed["submitted"]) == (
        "evaluation", 2, 1, False)
    model = api.get(f"/api/agent/rounds/{final.pk}/model/")
    assert model.status_code == 200 and model["X-Model-Version"] == "1"
    payload = {"round": 2, "base_version": 1, "metrics": GOOD_EVALUATION}
    response = api.post(f"/api/agent/rounds/{final.pk}/evaluation/", payload, format="json")
    assert response.status_code == 201 and response.json() == {"round_id": final.pk, "status": "accepted"}
    assert [r["submitted"] for r in api.get("/api/agent/rounds/").json()] == [True]
    again = api.post(f"/api/agent/rounds/{final.pk}/evaluation/", payload, format="json")
    assert_error(again, 409, "duplicate_evaluation", mentions="already sent its evaluation")
    response = agent_client(fed.plaintext_b).post(f"/api/agent/rounds/{final.pk}/evaluation/", payload, format="json")
    assert response.status_code == 201
    final.refresh_from_db()
    assert final.status == RoundStatus.CLOSED


@pytest.mark.parametrize(("payload", "status", "code", "mentions"), [
    ({"round": 2, "base_version": 1, "metrics": {**GOOD_EVALUATION, "val_examples": 3}}, 400, "score_histogram",
     "val_examples says 3"),
    ({"round": 2, "base_version": 1, "metrics": "fine"}, 400, "validation_failed", "metrics"),
    ({"round": 2, "base_version": 1, "metrics": GOOD_EVALUATION, "weights": "AAAA"}, 400, "validation_failed",
     "Unknown fields: weights"),
    ({"round": 2, "base_version": 0, "metrics": GOOD_EVALUATION}, 409, "stale_model", "evaluates model v1"),
], ids=["histogram-mismatch", "metrics-not-an-object", "unknown-field", "stale-model"])
def test_it_answers_a_bad_evaluation_with_a_json_error_and_stores_nothing(fed, monkeypatch, payload, status, code,
                                                                         mentions):
    final = final_round_over_http(fed, monkeypatch)
    rows, mark = aggregation_rows(), last_seq()
    response = agent_client(fed.plaintext_a).post(f"/api/agent/rounds/{final.pk}/evaluation/", payload, format="json")
    assert_refused_unchanged(response, status, code, mentions, mark, rows, action="aggregation.evaluation.submit")
