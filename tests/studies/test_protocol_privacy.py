"""The protocol carries the privacy target (dp_target_epsilon, dp_delta) and the disclosure threshold
(disclosure_min_sites): in the API, its schema, the forms and the protocol hash the approvals are bound to.
Fields added later enter the hash only away from their default, so earlier approvals stay valid."""

import yaml
from django.core.management import call_command
from django.urls import reverse

from studies import services
from studies.models import Approval, protocol_hash
from tests.api_support import client, nothing_changes
from tests.base import active_study, draft_study
from tests.pages import client_for, page

NEW_STUDY = {"title": "Readmission risk", "clinical_question": "Which patients return within 30 days?",
             "agreement_text": "Use pseudonymised data for readmission research only."}
NEW_FIELDS = ("dp_target_epsilon", "dp_delta", "disclosure_min_sites")


def test_it_keeps_the_hash_of_a_protocol_from_before_the_new_fields(p):
    study = draft_study(p)
    before = {name: value for name, value in study.protocol().items() if name not in NEW_FIELDS}
    assert study.protocol_sha256() == protocol_hash(before)
    study.dp_delta = 1e-7
    assert study.protocol_sha256() != protocol_hash(before)


def test_it_voids_the_approvals_when_the_privacy_target_changes(p):
    study = active_study(p, dp_noise_multiplier=1.2, dp_target_epsilon=8.0)
    services.study_update_protocol(actor=p.pi, study=study, dp_target_epsilon=12.0)
    assert not Approval.objects.filter(study=study, voided_at__isnull=True).exists()
    services.study_update_protocol(actor=p.pi, study=study, disclosure_min_sites=5)
    study.refresh_from_db()
    assert study.disclosure_min_sites == 5 and study.protocol()["disclosure_min_sites"] == 5


def test_it_takes_and_returns_the_privacy_target_through_the_api(p):
    response = client(p.pi).post("/api/studies/", {**NEW_STUDY, "dp_noise_multiplier": 1.1, "dp_target_epsilon": 6.5,
                                                   "dp_delta": 1e-6, "disclosure_min_sites": 4}, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["dp_target_epsilon"], body["dp_delta"], body["disclosure_min_sites"]) == (6.5, 1e-6, 4)
    plain = client(p.pi).post("/api/studies/", NEW_STUDY, format="json").json()
    assert (plain["dp_target_epsilon"], plain["dp_delta"], plain["disclosure_min_sites"]) == (None, 1e-5, 3)


def test_it_refuses_dp_without_a_target_and_a_target_without_dp(p):
    with nothing_changes(denied="studies.study.create"):
        response = client(p.pi).post("/api/studies/", {**NEW_STUDY, "dp_noise_multiplier": 1.0}, format="json")
    assert response.status_code == 400 and "dp_target_epsilon" in response.json()["fields"]
    with nothing_changes(denied="studies.study.create"):
        response = client(p.pi).post("/api/studies/", {**NEW_STUDY, "dp_target_epsilon": 3.0}, format="json")
    assert response.status_code == 400 and "dp_target_epsilon" in response.json()["fields"]
    response = client(p.pi).post("/api/studies/", {**NEW_STUDY, "disclosure_min_sites": 1}, format="json")
    assert response.status_code == 400 and "disclosure_min_sites" in response.json()["fields"]


def test_it_documents_the_fields_in_the_openapi_schema(tmp_path):
    target = tmp_path / "schema.yml"
    call_command("spectacular", "--file", str(target))
    schemas = yaml.safe_load(target.read_text())["components"]["schemas"]
    for name in ("StudyCreateInputRequest", "PatchedStudyProtocolUpdateInputRequest", "StudyOutput"):
        assert set(NEW_FIELDS) <= set(schemas[name]["properties"]), name


def test_it_shows_the_fields_on_the_forms_and_the_protocol_summary(p):
    create = page(client_for(p.pi).get(reverse("studies:create")))
    assert all(f'name="{name}"' in create for name in NEW_FIELDS)
    study = draft_study(p, dp_noise_multiplier=1.2, dp_target_epsilon=8.0)
    edit = page(client_for(p.pi).get(reverse("studies:edit", args=[study.pk])))
    assert all(f'name="{name}"' in edit for name in NEW_FIELDS)
    detail = page(client_for(p.pi).get(reverse("studies:detail", args=[study.pk])))
    assert "Privacy target (ε)" in detail and "Smallest disclosed group" in detail
