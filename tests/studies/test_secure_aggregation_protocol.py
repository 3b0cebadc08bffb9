"""The protocol option `secure_aggregation`: in the API, the form and the OpenAPI schema, bound into the protocol
hash only when on, and refused with a clear reason next to what cannot run on masked updates."""

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from studies.models import Study, protocol_hash
from tests.api_support import client, nothing_changes
from tests.base import draft_study
from tests.studies.test_views_study import _create_data, client_for

NEW_STUDY = {"title": "Readmission risk", "clinical_question": "Which patients return within 30 days?",
             "model_kind": "mlp", "strategy": "fedavg", "quorum": 3, "secure_aggregation": True,
             "federated_statistics": False, "agreement_text": "Use pseudonymised data for readmission research only."}


def test_it_creates_a_study_with_secure_aggregation_through_the_api(p):
    response = client(p.pi).post("/api/studies/", NEW_STUDY, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["secure_aggregation"] is True
    assert Study.objects.get(pk=response.json()["id"]).secure_aggregation is True


def test_it_creates_a_study_with_secure_aggregation_through_the_form(p):
    response = client_for(p.pi).post(reverse("studies:create"), _create_data(secure_aggregation="on", quorum=3,
                                                                                federated_statistics=""))
    assert response.status_code == 302
    assert Study.objects.get(title="Heart failure readmission").secure_aggregation is True


@pytest.mark.parametrize(("overrides", "field", "reason"), [
    ({"strategy": "median"}, "strategy", "needs every site's update in the clear"),
    ({"strategy": "krum"}, "strategy", "needs every site's update in the clear"),
    ({"strategy": "trimmed_mean"}, "strategy", "needs every site's update in the clear"),
    ({"quorum": 2}, "quorum", "at least 3 sites"),
    ({"federated_statistics": True}, "feature_names", "every site must add them up in one order"),
])
def test_it_refuses_at_protocol_time_what_needs_individual_updates(p, overrides, field, reason):
    with nothing_changes(denied="studies.study.create"):
        response = client(p.pi).post("/api/studies/", {**NEW_STUDY, **overrides}, format="json")
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "validation_failed" and reason in body["detail"]
    assert field in body["fields"]


def test_it_combines_with_dp_as_distributed_dp_with_a_privacy_target(p):
    response = client(p.pi).post("/api/studies/", {**NEW_STUDY, "dp_noise_multiplier": 1.0, "dp_clip_norm": 0.5,
                                                   "dp_target_epsilon": 8.0}, format="json")
    assert response.status_code == 201, response.json()
    assert (response.json()["secure_aggregation"], response.json()["dp_noise_multiplier"]) == (True, 1.0)


def test_it_is_hashed_only_when_on_so_earlier_approvals_stand(p):
    study = draft_study(p)
    protocol = study.protocol()
    assert protocol["secure_aggregation"] is False
    assert study.protocol_sha256() == protocol_hash({k: v for k, v in protocol.items() if k != "secure_aggregation"})
    secure = draft_study(p, title="Secure", quorum=3, secure_aggregation=True, federated_statistics=False)
    assert secure.protocol()["secure_aggregation"] is True
    assert protocol_hash({**secure.protocol(), "secure_aggregation": False}) != secure.protocol_sha256()


def test_it_is_in_the_openapi_schema(db):
    document = APIClient().get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()
    schemas = document["components"]["schemas"]
    assert "secure_aggregation" in schemas["StudyOutput"]["properties"]
    assert any("secure_aggregation" in schema.get("properties", {}) for name, schema in schemas.items()
               if "Create" in name or "Input" in name)
