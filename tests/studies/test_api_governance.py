"""The governance REST API: the gate, data use agreements, the DPIA and ethics approvals."""

from datetime import timedelta

import pytest
from django.utils import timezone

from studies import services
from studies.choices import DpiaStatus, StudyStatus
from studies.models import AgreementSignature, Dpia, EthicsApproval
from tests.api_support import assert_anonymous_refused, assert_error, call, client, nothing_changes, only_success
from tests.base import approve_dpia, draft_study
from tests.support import last_seq, study_in

ENDPOINTS = [
    ("get", "/api/studies/{study}/gate/"),
    ("get", "/api/studies/{study}/agreements/"),
    ("post", "/api/studies/{study}/agreements/"),
    ("get", "/api/studies/{study}/dpia/"),
    ("put", "/api/studies/{study}/dpia/"),
    ("post", "/api/studies/{study}/dpia/submit/"),
    ("post", "/api/studies/{study}/dpia/approve/"),
    ("post", "/api/studies/{study}/dpia/reject/"),
    ("post", "/api/studies/{study}/dpia/revise/"),
    ("post", "/api/participations/{pk}/sign/"),
    ("post", "/api/participations/{pk}/ethics/"),
]


def invited(p, study=None, site=None):
    return services.participation_invite(actor=p.pi, study=study or draft_study(p), site=site or p.site_a)


def iso(moment) -> str:
    return moment.isoformat()


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_it_refuses_anonymous_callers_with_a_json_401(p, method, url):
    participation = invited(p)
    with nothing_changes():
        response = call(client(), method, url.format(study=participation.study_id, pk=participation.pk),
                        {"reason": "x", "text": "x", "version": 1})
    assert_anonymous_refused(response)


# --- The gate ----------------------------------------------------------------------------------------------


def test_it_answers_the_gate_with_every_check(p):
    study = study_in(p, StudyStatus.ACTIVE)
    body = client(p.pi).get(f"/api/studies/{study.pk}/gate/", {"action": "aggregate"}).json()
    assert (body["study_id"], body["action"], body["allowed"]) == (study.pk, "aggregate", True)
    assert sorted(body["eligible_site_ids"]) == sorted([p.site_a.pk, p.site_b.pk])
    names = {(check["name"], check["site_id"]) for check in body["checks"]}
    assert {("study_active", None), ("dpia", None), ("quorum", None), ("ethics", p.site_a.pk),
            ("agreement_signed", p.site_b.pk)} <= names
    assert all(check["passed"] and check["reason"] for check in body["checks"])


def test_it_answers_the_gate_for_one_site_and_says_why_not(p):
    study = draft_study(p)
    body = client(p.dpo).get(f"/api/studies/{study.pk}/gate/", {"action": "download_model",
                                                                 "site": p.site_a.pk}).json()
    assert body["allowed"] is False
    reasons = {check["name"]: check["reason"] for check in body["checks"]}
    assert reasons["participation"] == "The site is not taking part in this study."
    assert "draft" in reasons["study_active"]


def test_it_refuses_an_unknown_gate_action_with_a_clear_400(p):
    study = draft_study(p)
    body = assert_error(client(p.pi).get(f"/api/studies/{study.pk}/gate/", {"action": "train"}), 400,
                        "validation_failed", mentions='action: "train" is not a valid choice')
    assert "action" in body["fields"]


def test_it_answers_404_for_the_gate_of_an_invisible_study(p):
    study = draft_study(p)
    with nothing_changes(denied="studies.gate.view"):
        assert_error(client(p.site_b_admin).get(f"/api/studies/{study.pk}/gate/"), 404, "not_found")


# --- Agreements --------------------------------------------------------------------------------------------


def test_it_lists_agreement_versions_with_their_signatures(p):
    participation = invited(p)
    agreement = participation.study.agreement_versions.get()
    services.agreement_sign(actor=p.site_a_admin, agreement=agreement, participation=participation)
    [row] = client(p.site_a_admin).get(f"/api/studies/{participation.study_id}/agreements/").json()
    assert (row["version"], row["sha256"], row["created_by"]) == (1, agreement.sha256, "pi")
    assert [(s["site"], s["signed_by"], s["version"]) for s in row["signatures"]] == [
        (p.site_a.pk, "site_a_admin", 1)]


def test_it_publishes_a_new_version_and_voids_earlier_approvals(p):
    study = study_in(p, StudyStatus.APPROVED)
    mark = last_seq()
    response = client(p.pi).post(f"/api/studies/{study.pk}/agreements/", {"text": "Revised terms."}, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["version"] == 2
    study.refresh_from_db()
    assert study.status == StudyStatus.SUBMITTED
    only_success(mark, "studies.agreement.published", "studies.study.approvals_voided")


def test_it_refuses_publishing_by_a_dpo_with_403_and_by_an_outsider_with_404(p):
    study = draft_study(p)
    url = f"/api/studies/{study.pk}/agreements/"
    with nothing_changes(denied="studies.agreement.publish"):
        assert_error(client(p.dpo).post(url, {"text": "Mine."}, format="json"), 403, "forbidden")
    with nothing_changes(denied="studies.agreement.publish"):
        assert_error(client(p.outsider).post(url, {"text": "Mine."}, format="json"), 404, "not_found")


def test_it_lets_a_site_admin_sign_the_current_version(p):
    participation = invited(p)
    mark = last_seq()
    response = client(p.site_a_admin).post(f"/api/participations/{participation.pk}/sign/", {"version": 1},
                                           format="json")
    assert response.status_code == 201, response.json()
    signature = AgreementSignature.objects.get(pk=response.json()["id"])
    assert (signature.site, signature.signed_by, signature.agreement.version) == (p.site_a, p.site_a_admin, 1)
    only_success(mark, "studies.agreement.signed")


def test_it_refuses_a_superseded_version_or_one_that_does_not_exist(p):
    participation = invited(p)
    services.agreement_publish(actor=p.pi, study=participation.study, text="Version two.")
    url = f"/api/participations/{participation.pk}/sign/"
    with nothing_changes(denied="studies.agreement.sign"):
        response = client(p.site_a_admin).post(url, {"version": 1}, format="json")
    assert_error(response, 409, "conflict", mentions="superseded by v2")
    with nothing_changes(denied="studies.agreement.sign"):
        response = client(p.site_a_admin).post(url, {"version": 7}, format="json")
    assert_error(response, 404, "not_found", mentions="no data use agreement v7")


def test_it_refuses_signing_for_another_site_with_404_and_for_the_pi_with_403(p):
    participation = invited(p, site=p.site_a)
    invited(p, participation.study, p.site_b)
    url = f"/api/participations/{participation.pk}/sign/"
    with nothing_changes(denied="studies.agreement.sign"):
        assert_error(client(p.site_b_admin).post(url, {"version": 1}, format="json"), 404, "not_found")
    with nothing_changes(denied="studies.agreement.sign"):
        assert_error(client(p.pi).post(url, {"version": 1}, format="json"), 403, "forbidden")


# --- DPIA --------------------------------------------------------------------------------------------------


def test_it_walks_the_dpia_from_draft_to_approved(p):
    study = draft_study(p)
    base, api = f"/api/studies/{study.pk}/dpia/", client(p.dpo)
    until = timezone.now() + timedelta(days=200)
    mark = last_seq()
    saved = api.put(base, {"summary": "Vitals only.", "risk_level": "low", "valid_until": iso(until)}, format="json")
    assert saved.status_code == 200, saved.json()
    assert api.post(f"{base}submit/", format="json").json()["submitted_by"] == "dpo"
    approved = client(p.dpo2).post(f"{base}approve/", {"comment": "Proportionate."}, format="json").json()
    assert (approved["status"], approved["comment"], approved["decided_by"]) == ("approved", "Proportionate.", "dpo2")
    dpia = Dpia.objects.get(study=study)
    assert (dpia.status, dpia.risk_level, dpia.valid_until) == (DpiaStatus.APPROVED, "low", until)
    assert client(p.pi).get(base).json()["status"] == "approved"
    only_success(mark, "studies.dpia.saved", "studies.dpia.submitted", "studies.dpia.approved", "studies.dpia.viewed")


def test_it_rejects_and_revises_a_dpia_with_reasons(p):
    study = draft_study(p)
    services.dpia_save(actor=p.dpo, study=study, summary="S", risk_level="high", valid_until=None)
    services.dpia_submit(actor=p.dpo, study=study)
    base = f"/api/studies/{study.pk}/dpia/"
    mark = last_seq()
    assert client(p.dpo2).post(f"{base}reject/", {"reason": "Too risky."}, format="json").json()["status"] == "rejected"
    assert client(p.dpo).post(f"{base}revise/", {"reason": "Mitigated."}, format="json").json()["status"] == "draft"
    only_success(mark, "studies.dpia.rejected", "studies.dpia.revised")


def test_it_refuses_the_submitter_the_dpias_approval_with_a_403(p):
    study = draft_study(p)
    services.dpia_save(actor=p.dpo, study=study, summary="S", risk_level="low",
                       valid_until=timezone.now() + timedelta(days=9))
    services.dpia_submit(actor=p.dpo, study=study)
    with nothing_changes(denied="studies.dpia.approve"):
        response = client(p.dpo).post(f"/api/studies/{study.pk}/dpia/approve/", format="json")
    assert_error(response, 403, "forbidden", mentions="another data-protection officer must approve it")


def test_it_answers_404_for_a_dpia_not_yet_drafted(p):
    study = draft_study(p)
    with nothing_changes(denied="studies.dpia.view"):
        assert_error(client(p.pi).get(f"/api/studies/{study.pk}/dpia/"), 404, "not_found", mentions="No DPIA")


@pytest.mark.parametrize(
    ("verb", "method", "body", "action"),
    [
        ("", "put", {"summary": "S", "risk_level": "low", "valid_until": None}, "studies.dpia.save"),
        ("submit/", "post", {}, "studies.dpia.submit"),
        ("approve/", "post", {}, "studies.dpia.approve"),
        ("reject/", "post", {"reason": "No."}, "studies.dpia.reject"),
        ("revise/", "post", {"reason": "Again."}, "studies.dpia.revise"),
    ],
)
def test_it_keeps_the_dpia_for_dpos_only(p, verb, method, body, action):
    study = draft_study(p)
    approve_dpia(p, study)
    url = f"/api/studies/{study.pk}/dpia/{verb}"
    with nothing_changes(denied=action):
        assert_error(call(client(p.pi), method, url, body), 403, "forbidden", mentions="data-protection officers")
    with nothing_changes(denied=action):
        assert_error(call(client(p.outsider), method, url, body), 404, "not_found")


def test_it_refuses_a_naive_dpia_expiry_with_a_clear_400(p):
    study = draft_study(p)
    with nothing_changes():
        response = client(p.dpo).put(f"/api/studies/{study.pk}/dpia/",
                                     {"summary": "S", "risk_level": "low", "valid_until": "2030-01-01T12:00:00"},
                                     format="json")
    assert_error(response, 400, "validation_failed", mentions="valid_until: Give the UTC offset")


def test_it_refuses_approving_a_draft_dpia_with_409(p):
    study = draft_study(p)
    services.dpia_save(actor=p.dpo, study=study, summary="S", risk_level="low",
                       valid_until=timezone.now() + timedelta(days=9))
    with nothing_changes(denied="studies.dpia.approve"):
        response = client(p.dpo).post(f"/api/studies/{study.pk}/dpia/approve/", format="json")
    assert_error(response, 409, "invalid_transition", mentions="cannot become approved")


# --- Ethics approvals --------------------------------------------------------------------------------------


def test_it_records_an_ethics_approval_with_offsets_exact_to_the_second(p):
    participation = invited(p)
    mark = last_seq()
    response = client(p.site_a_admin).post(
        f"/api/participations/{participation.pk}/ethics/",
        {"reference": "IRB-2026-17", "valid_from": "2026-01-01T00:00:00+01:00",
         "valid_until": "2099-06-30T23:59:59+02:00"},
        format="json",
    )
    assert response.status_code == 201, response.json()
    approval = EthicsApproval.objects.get(pk=response.json()["id"])
    assert (approval.site, approval.reference) == (p.site_a, "IRB-2026-17")
    assert approval.valid_until.isoformat() == "2099-06-30T21:59:59+00:00"
    only_success(mark, "studies.ethics.recorded")


def test_it_refuses_naive_ethics_dates_with_a_clear_400(p):
    participation = invited(p)
    with nothing_changes():
        response = client(p.site_a_admin).post(
            f"/api/participations/{participation.pk}/ethics/",
            {"reference": "IRB-1", "valid_from": "2026-01-01T00:00:00", "valid_until": "2099-01-01T00:00:00+00:00"},
            format="json",
        )
    body = assert_error(response, 400, "validation_failed", mentions="valid_from: Give the UTC offset")
    assert set(body["fields"]) == {"valid_from"}


def test_it_refuses_an_expired_ethics_approval_in_the_service_and_audits_it(p):
    participation = invited(p)
    past = timezone.now() - timedelta(days=1)
    with nothing_changes(denied="studies.ethics.record"):
        response = client(p.site_a_admin).post(
            f"/api/participations/{participation.pk}/ethics/",
            {"reference": "IRB-1", "valid_from": iso(past - timedelta(days=9)), "valid_until": iso(past)},
            format="json",
        )
    assert_error(response, 400, "validation_failed", mentions="already expired")


def test_it_refuses_ethics_for_another_site_with_404_and_for_the_pi_with_403(p):
    participation = invited(p, site=p.site_a)
    invited(p, participation.study, p.site_b)
    url = f"/api/participations/{participation.pk}/ethics/"
    now = timezone.now()
    body = {"reference": "IRB-9", "valid_from": iso(now), "valid_until": iso(now + timedelta(days=30))}
    with nothing_changes(denied="studies.ethics.record"):
        assert_error(client(p.site_b_admin).post(url, body, format="json"), 404, "not_found")
    with nothing_changes(denied="studies.ethics.record"):
        assert_error(client(p.pi).post(url, body, format="json"), 403, "forbidden", mentions="Only an admin")
