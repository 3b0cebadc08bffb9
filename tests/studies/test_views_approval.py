"""The approval page: it shows exactly what an approval binds, and its buttons approve or reject."""

from django.urls import reverse

from consortium.audit.models import AuditEvent
from studies import services
from studies.choices import ApprovalRole, StudyStatus
from studies.models import Approval, Study
from tests.base import active_study, approve_dpia, draft_study, govern_site
from tests.pages import client_for, denied, page


def submitted_study(p) -> Study:
    study = draft_study(p)
    for site in (p.site_a, p.site_b):
        govern_site(p, study, site)
    approve_dpia(p, study)
    return services.study_submit(actor=p.pi, study=study)


def test_it_sends_anonymous_visitors_to_log_in(p, client):
    study = submitted_study(p)
    response = client.get(reverse("studies:approval", args=[study.pk]))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


def test_it_shows_what_is_being_approved_and_records_the_view(p):
    study = submitted_study(p)
    agreement = study.agreement_versions.get()
    response = client_for(p.dpo).get(reverse("studies:approval", args=[study.pk]))
    body = page(response)
    assert response.status_code == 200
    assert study.protocol_sha256() in body
    assert f'data-testid="dua-version">v{agreement.version}<' in body
    assert agreement.sha256 in body and agreement.text in body
    assert "Approved" in body.split('data-testid="dpia-status"')[1][:200]
    assert 'data-site-row="amc" data-eligible="true"' in body
    assert 'data-site-row="charite" data-eligible="true"' in body
    assert 'data-action="approve"' in body and 'data-action="reject"' in body
    assert AuditEvent.objects.get(action="studies.study.viewed", actor_user=p.dpo).details == {"via": "page:approval"}


def test_it_says_why_an_invited_site_is_not_eligible_today(p):
    study = draft_study(p)
    services.participation_invite(actor=p.pi, study=study, site=p.site_b)
    services.study_submit(actor=p.pi, study=study)
    body = page(client_for(p.pi).get(reverse("studies:approval", args=[study.pk])))
    assert 'data-site-row="charite" data-eligible="false"' in body
    assert "Has not signed the current DUA v1." in body


def test_it_shows_the_difference_from_the_voided_approval(p):
    study = active_study(p)
    services.study_update_protocol(actor=p.pi, study=study, rounds=50, strategy="fedadam")
    body = page(client_for(p.dpo).get(reverse("studies:approval", args=[study.pk])))
    assert "What changed since the last approval" in body
    assert 'data-changed="rounds"' in body and 'data-changed="strategy"' in body
    assert 'data-changed="quorum"' not in body
    rounds_row = body.split('data-changed="rounds"')[1].split("</tr>")[0]
    assert ">20<" in rounds_row and ">50<" in rounds_row
    assert "FedAdam" in body.split('data-changed="strategy"')[1].split("</tr>")[0]


def test_it_shows_no_difference_section_before_any_approval_was_voided(p):
    study = submitted_study(p)
    body = page(client_for(p.dpo).get(reverse("studies:approval", args=[study.pk])))
    assert "What changed since the last approval" not in body


def test_it_records_the_pi_and_dpo_approvals_bound_to_the_hash(p):
    study = submitted_study(p)
    url = reverse("studies:action", args=[study.pk, "approve"])
    response = client_for(p.pi).post(url, {"comment": "Protocol as registered"}, follow=True)
    assert "The other approval must come from someone else" in page(response)
    study.refresh_from_db()
    assert study.status == StudyStatus.SUBMITTED
    client_for(p.dpo).post(url, {"comment": ""})
    study.refresh_from_db()
    assert study.status == StudyStatus.APPROVED
    approvals = Approval.objects.filter(study=study, voided_at__isnull=True)
    assert {a.role for a in approvals} == {ApprovalRole.PI, ApprovalRole.DPO}
    assert {a.protocol_sha256 for a in approvals} == {study.protocol_sha256()}
    assert approvals.get(role=ApprovalRole.PI).comment == "Protocol as registered"


def test_it_refuses_a_second_approval_by_the_same_person(p):
    study = submitted_study(p)
    url = reverse("studies:action", args=[study.pk, "approve"])
    client = client_for(p.pi)
    client.post(url)
    response = client.post(url, {"next": reverse("studies:approval", args=[study.pk])})
    assert response.status_code == 403
    assert "four-eyes" in page(response)
    assert Approval.objects.filter(study=study).count() == 1
    assert denied("studies.study.approve", p.pi)


def test_it_lets_a_dpo_reject_with_a_reason(p):
    study = submitted_study(p)
    url = reverse("studies:action", args=[study.pk, "reject"])
    response = client_for(p.dpo).post(url, {"reason": ""}, follow=True)
    assert "Reason: This field is required." in page(response)
    study.refresh_from_db()
    assert study.status == StudyStatus.SUBMITTED
    client_for(p.dpo).post(url, {"reason": "The DPIA does not cover genetic data."})
    study.refresh_from_db()
    assert study.status == StudyStatus.DRAFT
    assert Approval.objects.get(study=study).comment == "The DPIA does not cover genetic data."


def test_it_refuses_approval_to_a_site_admin_who_can_see_the_study(p):
    study = submitted_study(p)
    approval_page = client_for(p.site_a_admin).get(reverse("studies:approval", args=[study.pk]))
    assert approval_page.status_code == 200
    assert 'data-action="approve"' not in page(approval_page)
    response = client_for(p.site_a_admin).post(reverse("studies:action", args=[study.pk, "approve"]))
    assert response.status_code == 403
    assert "Only the study's PI or a DPO may approve it." in page(response)
    assert not Approval.objects.filter(study=study).exists()
    assert denied("studies.study.approve", p.site_a_admin)


def test_it_refuses_rejection_by_the_pi(p):
    study = submitted_study(p)
    response = client_for(p.pi).post(reverse("studies:action", args=[study.pk, "reject"]), {"reason": "Mine"})
    assert response.status_code == 403
    study.refresh_from_db()
    assert study.status == StudyStatus.SUBMITTED
    assert denied("studies.study.reject", p.pi)


def test_it_hides_the_approval_page_of_an_invisible_study(p):
    study = draft_study(p)
    services.participation_invite(actor=p.pi, study=study, site=p.site_a)
    services.study_submit(actor=p.pi, study=study)
    for user in (p.outsider, p.site_b_admin):
        assert client_for(user).get(reverse("studies:approval", args=[study.pk])).status_code == 404
        response = client_for(user).post(reverse("studies:action", args=[study.pk, "approve"]))
        assert response.status_code == 404
        assert denied("studies.study.approve", user)
    assert not Approval.objects.filter(study=study).exists()
