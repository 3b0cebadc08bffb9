"""The OpenAPI schema: valid, free of warnings, listing every endpoint, and browsable in Swagger UI."""

import yaml
from django.core.management import call_command
from rest_framework.test import APIClient

EXPECTED_PATHS = {
    "/api/auth/token/": {"post"},
    "/api/sites/": {"get"},
    "/api/sites/{id}/agent-tokens/": {"get", "post"},
    "/api/agent-tokens/{id}/revoke/": {"post"},
    "/api/agent-tokens/{id}/rotate/": {"post"},
    "/api/agent/me/": {"get"},
    "/api/agent/studies/": {"get"},
    "/api/agent/studies/{study_id}/dataset/": {"post"},
    "/api/agent/rounds/{round_id}/decline/": {"post"},
    "/api/agent/ledger/": {"get"},
    "/api/agent/rounds/": {"get"},
    "/api/agent/rounds/{round_id}/model/": {"get"},
    "/api/agent/rounds/{round_id}/update/": {"post"},
    "/api/agent/rounds/{round_id}/statistics/": {"post"},
    "/api/agent/rounds/{round_id}/evaluation/": {"post"},
    "/api/studies/": {"get", "post"},
    "/api/studies/{id}/": {"get", "patch"},
    "/api/studies/{id}/submit/": {"post"},
    "/api/studies/{id}/approve/": {"post"},
    "/api/studies/{id}/reject/": {"post"},
    "/api/studies/{id}/activate/": {"post"},
    "/api/studies/{id}/suspend/": {"post"},
    "/api/studies/{id}/close/": {"post"},
    "/api/studies/{id}/gate/": {"get"},
    "/api/studies/{id}/agreements/": {"get", "post"},
    "/api/studies/{id}/dpia/": {"get", "put"},
    "/api/studies/{id}/dpia/submit/": {"post"},
    "/api/studies/{id}/dpia/approve/": {"post"},
    "/api/studies/{id}/dpia/reject/": {"post"},
    "/api/studies/{id}/dpia/revise/": {"post"},
    "/api/studies/{id}/participations/": {"get", "post"},
    "/api/participations/{id}/": {"get"},
    "/api/participations/{id}/grant/": {"post"},
    "/api/participations/{id}/suspend/": {"post"},
    "/api/participations/{id}/resume/": {"post"},
    "/api/participations/{id}/revoke/": {"post"},
    "/api/participations/{id}/withdraw/": {"post"},
    "/api/participations/{id}/sign/": {"post"},
    "/api/participations/{id}/ethics/": {"post"},
    "/api/studies/{id}/rounds/": {"get"},
    "/api/studies/{id}/versions/": {"get"},
    "/api/studies/{id}/versions/{number}/": {"get"},
    "/api/studies/{id}/versions/{number}/card/": {"get"},
    "/api/studies/{id}/ledger/": {"get"},
    "/api/studies/{id}/ledger.csv": {"get"},
    "/api/studies/{id}/ledger.jsonl": {"get"},
    "/api/sites/{id}/ledger/": {"get"},
    "/api/sites/{id}/ledger.csv": {"get"},
    "/api/sites/{id}/ledger.jsonl": {"get"},
    "/api/sites/{id}/flower-nodes/": {"get", "post"},
    "/api/flower-nodes/{id}/revoke/": {"post"},
    "/api/studies/{id}/flower-tokens/": {"get", "post"},
    "/api/flower-tokens/{id}/revoke/": {"post"},
    "/api/agent/flower/me/": {"get"},
    "/api/agent/rounds/{round_id}/secagg/": {"get"},
    "/api/agent/rounds/{round_id}/secagg/keys/": {"post"},
    "/api/agent/rounds/{round_id}/secagg/shares/": {"post"},
    "/api/agent/rounds/{round_id}/secagg/masked-input/": {"post"},
    "/api/agent/rounds/{round_id}/secagg/unmask/": {"post"},
    "/api/agent/flower/initial-model/": {"post"},
    "/api/agent/flower/rounds/": {"post"},
    "/api/agent/flower/rounds/{round_id}/results/": {"post"},
    "/api/agent/flower/rounds/{round_id}/version/": {"post"},
    "/api/audit/events/": {"get"},
    "/api/audit/events.csv": {"get"},
    "/api/audit/events.jsonl": {"get"},
    "/api/audit/checkpoints/": {"get"},
    "/api/audit/consistency/": {"get"},
    "/api/audit/public-key/": {"get"},
}


def test_it_generates_a_valid_schema_without_warnings(tmp_path):
    target = tmp_path / "schema.yml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))
    document = yaml.safe_load(target.read_text())
    assert document["openapi"].startswith("3.")
    assert {path: set(ops) - {"parameters"} for path, ops in document["paths"].items()} == EXPECTED_PATHS


def test_it_serves_the_schema_and_documents_errors_and_auth(db):
    response = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    document = response.json()
    assert set(EXPECTED_PATHS) <= set(document["paths"])
    assert {"tokenAuth", "cookieAuth"} <= set(document["components"]["securitySchemes"])
    approve = document["paths"]["/api/studies/{id}/approve/"]["post"]
    assert {"200", "400", "401", "403", "404", "409"} <= set(approve["responses"])
    assert approve["responses"]["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"}
    token = document["paths"]["/api/auth/token/"]["post"]
    assert token.get("security", [{}]) == [{}]  # obtaining a token needs no authentication
    assert {"400", "429"} == set(token["responses"]) - {"200"}
    assert "retry_after" in document["components"]["schemas"]["LockedOut"]["properties"]


def test_it_serves_the_swagger_ui_with_its_start_up_script_as_a_file(db):
    response = APIClient().get("/api/docs/")
    assert response.status_code == 200
    assert b"swagger-ui" in response.content
    assert b"<script>" not in response.content, "the Content-Security-Policy allows no inline script"
    script = APIClient().get("/api/docs/?script=")
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")
    assert b"/api/schema/" in script.content
