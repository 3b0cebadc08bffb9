"""The study pages: list, create, detail (gate panel, actions), protocol edit, DUA publish, DPIA and the
study-level buttons, each as anonymous, without permission, permitted, and for another site."""

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from consortium.audit.models import AuditEvent, AuditOutcome
from consortium.roles import Role
from sites.models import Site
from studies import services
from studies.choices import DpiaStatus, StudyStatus
from studies.models import PROTOCOL_FIELDS, AgreementVersion, Dpia, Study
from tests.base import (
    accept_protocol,
    active_study,
    appoint_site_admin,
    approve_dpia,
    draft_study,
    govern_site,
    make_user,
    register_dataset,
)
from tests.pages import client_for, denied, page


def views_of(study: Study, user) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action="studies.study.viewed", study_id=study.pk, actor_user=user))


def submitted_study(p) -> Study:
    study = draft_study(p)
    for site in (p.site_a, p.site_b):
        govern_site(p, study, site)
    approve_dpia(p, study)
    return services.study_submit(actor=p.pi, study=study)


# --- anonymous ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["studies:detail", "studies:approval", "studies:edit", "studies:agreement", "studies:dpia"]
)
def test_it_sends_anonymous_visitors_to_log_in(p, client, name):
    study = draft_study(p)
    url = reverse(name, args=[study.pk])
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))
    assert not AuditEvent.objects.filter(action="studies.study.viewed").exists()


def test_it_refuses_anonymous_actions_without_changing_anything(p, client):
    study = draft_study(p)
    response = client.post(reverse("studies:action", args=[study.pk, "submit"]))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    study.refresh_from_db()
    assert study.status == StudyStatus.DRAFT


# --- list and create ---------------------------------------------------------------------------------


def test_it_lists_only_the_studies_a_user_may_see(p):
    draft_study(p, title="Visible to the PI")
    assert "Visible to the PI" in page(client_for(p.pi).get(reverse("studies:list")))
    assert "Visible to the PI" in page(client_for(p.auditor).get(reverse("studies:list")))
    assert "Visible to the PI" not in page(client_for(p.outsider).get(reverse("studies:list")))
    assert "Visible to the PI" not in page(client_for(p.site_a_admin).get(reverse("studies:list")))


def _create_data(**overrides) -> dict:
    data = {
        "title": "Heart failure readmission",
        "clinical_question": "Who is readmitted within 30 days?",
        "task": "binary_classification",
        "model_kind": "mlp",
        "hidden_units": 8,
        "strategy": "fedprox",
        "rounds": 5,
        "local_epochs": 2,
        "batch_size": 16,
        "learning_rate": 0.01,
        "proximal_mu": 0.1,
        "server_learning_rate": 0.1,
        "trim_fraction": 0.1,
        "byzantine_sites": 0,
        "quorum": 2,
        "round_deadline_minutes": 20,
        "revocation_policy": "exclude",
        "dp_noise_multiplier": 0,
        "dp_clip_norm": 1.0,
        "dp_target_epsilon": "",
        "dp_delta": 1e-5,
        "max_update_norm": 100.0,
        "label_column": "readmitted",
        "num_features": 12,
        "federated_statistics": "on",
        "disclosure_min_sites": 3,
        "agreement_text": "We agree.",
    }
    return {**data, **overrides}


def test_it_creates_a_draft_study_with_its_agreement_for_a_pi(p):
    response = client_for(p.pi).post(reverse("studies:create"), _create_data())
    study = Study.objects.get(title="Heart failure readmission")
    assert response.status_code == 302 and response["Location"] == reverse("studies:detail", args=[study.pk])
    assert (study.status, study.pi, study.model_kind, study.strategy) == (StudyStatus.DRAFT, p.pi, "mlp", "fedprox")
    assert study.max_update_norm == 100.0
    assert AgreementVersion.objects.get(study=study).text == "We agree."
    assert AuditEvent.objects.filter(action="studies.study.created", study_id=study.pk, actor_user=p.pi).exists()


def test_it_rerenders_the_create_form_with_errors_on_bad_input(p):
    response = client_for(p.pi).post(reverse("studies:create"),
                                     _create_data(learning_rate=50, quorum=0, max_update_norm=0))
    assert response.status_code == 200
    assert response.context["form"].errors.keys() == {"learning_rate", "quorum", "max_update_norm"}
    assert "errorlist" in page(response)
    assert not Study.objects.exists()


def test_it_refuses_study_creation_to_someone_who_is_not_a_pi(p):
    client = client_for(p.site_a_admin)
    assert client.get(reverse("studies:create")).status_code == 403
    response = client.post(reverse("studies:create"), _create_data())
    assert response.status_code == 403
    assert "Only principal investigators create studies." in page(response)
    assert not Study.objects.exists()
    assert denied("studies.study.create", p.site_a_admin)


# --- detail ------------------------------------------------------------------------------------------


def test_it_shows_the_study_and_records_the_page_view(p):
    study = active_study(p)
    response = client_for(p.auditor).get(reverse("studies:detail", args=[study.pk]))
    body = page(response)
    assert response.status_code == 200
    assert study.protocol_sha256() in body
    assert study.agreement_versions.get().sha256 in body
    assert "IRB-amc-1" in body and "IRB-charite-1" in body
    [event] = views_of(study, p.auditor)
    assert event.details == {"via": "page"}


def test_it_answers_404_for_a_study_the_user_may_not_see_and_audits_the_attempt(p):
    study = draft_study(p)
    services.participation_invite(actor=p.pi, study=study, site=p.site_a)
    for user in (p.outsider, p.site_b_admin):
        assert client_for(user).get(reverse("studies:detail", args=[study.pk])).status_code == 404
        assert views_of(study, user) == []
        assert denied("studies.study.view", user)
    assert client_for(p.site_a_admin).get(reverse("studies:detail", args=[study.pk])).status_code == 200


def test_it_renders_each_gate_check_per_site_with_hooks(p):
    study = active_study(p)
    services.participation_suspend(
        actor=p.site_b_admin, participation=study.participations.get(site=p.site_b), reason="Data refresh"
    )
    body = page(client_for(p.pi).get(reverse("studies:detail", args=[study.pk])))
    for check in ("participation", "agreement_signed", "ethics"):
        assert f'data-check="{check}" data-site="amc" data-passed="true"' in body
    assert 'data-check="participation" data-site="charite" data-passed="false"' in body
    assert "Participation is suspended. Data refresh" in body
    assert 'data-check="quorum" data-passed="false"' in body
    assert "1 of 2 sites eligible" in body


def test_it_warns_about_what_expires_soon(p, settings):
    settings.EXPIRY_WARNING_DAYS = 30
    study = draft_study(p)
    govern_site(p, study, p.site_a, days=10)
    govern_site(p, study, p.site_b, days=100)
    body = page(client_for(p.pi).get(reverse("studies:detail", args=[study.pk])))
    assert re.search(r'data-expiring="ethics">Ethics approval of Amsterdam UMC lapses', body)
    assert "Ethics approval of Charité Berlin lapses" not in body


def test_it_offers_only_the_actions_the_policy_allows(p):
    study = draft_study(p)
    url = reverse("studies:detail", args=[study.pk])
    pi_html = page(client_for(p.pi).get(url))
    assert 'data-action="submit"' in pi_html and 'data-action="close"' in pi_html
    dpo_html = page(client_for(p.dpo).get(url))
    assert 'data-action="submit"' not in dpo_html and reverse("studies:dpia", args=[study.pk]) in dpo_html
    auditor_html = page(client_for(p.auditor).get(url))
    assert 'class="action-form' not in auditor_html


def test_it_keeps_the_study_page_query_count_flat_from_3_to_12_sites(p, django_assert_max_num_queries):
    study = active_study(p)
    extra = _add_governed_sites(p, study, 1)
    client = client_for(p.pi)
    url = reverse("studies:detail", args=[study.pk])
    client.get(url)  # warm caches that are not per-request (content types)
    with CaptureQueriesContext(connection) as at_3:
        assert client.get(url).status_code == 200
    _add_governed_sites(p, study, 9, start=len(extra))
    assert study.participations.count() == 12
    with django_assert_max_num_queries(len(at_3.captured_queries)):
        body = page(client.get(url))
    assert body.count('data-check="ethics"') == 12
    # 30 today on SQLite (31 on PostgreSQL, whose audit append takes a lock): session, user, roles, study, audit
    # append, sections (privacy budget too), gate (with protocol reviews and data set registrations), the sites'
    # protocol reviews, their data set summaries, and 2 for the rounds summary (newest round with the closed
    # count, newest model version)
    assert len(at_3.captured_queries) <= {"sqlite": 30, "postgresql": 31}[connection.vendor]


def _add_governed_sites(p, study: Study, count: int, start: int = 0) -> list[Site]:
    sites = []
    for n in range(start, start + count):
        site = Site.objects.create(name=f"Hospital {n:02d}", code=f"h{n:02d}")
        admin = make_user(f"admin_h{n:02d}")
        appoint_site_admin(p.admin, site, admin)
        participation = services.participation_invite(actor=p.pi, study=study, site=site)
        services.participation_grant(actor=admin, participation=participation)
        services.agreement_sign(actor=admin, agreement=study.agreement_versions.get(), participation=participation)
        now = timezone.now()
        services.ethics_record(
            actor=admin,
            participation=participation,
            reference=f"IRB-{n}",
            valid_from=now - timedelta(days=1),
            valid_until=now + timedelta(days=90),
        )
        accept_protocol(admin, participation)
        register_dataset(p, study, site, admin=admin)
        sites.append(site)
    return sites


# --- study-level actions -----------------------------------------------------------------------------


def test_it_submits_a_draft_for_its_pi(p):
    study = draft_study(p)
    response = client_for(p.pi).post(reverse("studies:action", args=[study.pk, "submit"]), follow=True)
    study.refresh_from_db()
    assert study.status == StudyStatus.SUBMITTED
    assert "awaits the PI's and a DPO's approval" in page(response)


def test_it_answers_403_to_a_visible_study_the_user_may_not_act_on(p):
    study = draft_study(p)
    response = client_for(p.dpo).post(reverse("studies:action", args=[study.pk, "submit"]))
    assert response.status_code == 403
    assert "Only the study's principal investigator may submit it for approval." in page(response)
    study.refresh_from_db()
    assert study.status == StudyStatus.DRAFT
    assert denied("studies.study.submit", p.dpo)


def test_it_answers_404_to_an_action_on_an_invisible_study_and_audits_it(p):
    study = draft_study(p)
    response = client_for(p.outsider).post(reverse("studies:action", args=[study.pk, "submit"]))
    assert response.status_code == 404
    study.refresh_from_db()
    assert study.status == StudyStatus.DRAFT
    assert AuditEvent.objects.get(action="studies.study.submit", outcome=AuditOutcome.DENIED).study_id == study.pk


def test_it_shows_the_services_sentence_when_a_transition_is_refused(p):
    study = draft_study(p)
    response = client_for(p.pi).post(
        reverse("studies:action", args=[study.pk, "activate"]),
        {"next": reverse("studies:detail", args=[study.pk])},
        follow=True,
    )
    assert response.redirect_chain[-1][0] == reverse("studies:detail", args=[study.pk])
    refusal = AuditEvent.objects.get(action="studies.study.activate", outcome=AuditOutcome.DENIED, actor_user=p.pi)
    assert "cannot become active" in refusal.details["reason"]
    assert f'<li class="message error" role="status">{refusal.details["reason"]}</li>' in page(response)
    study.refresh_from_db()
    assert study.status == StudyStatus.DRAFT


def test_it_requires_a_justification_for_an_emergency_stop(p):
    study = active_study(p)
    url = reverse("studies:action", args=[study.pk, "suspend"])
    response = client_for(p.dpo).post(url, {"justification": ""}, follow=True)
    assert "Justification: This field is required." in page(response)
    study.refresh_from_db()
    assert study.status == StudyStatus.ACTIVE
    client_for(p.dpo).post(url, {"justification": "Data breach reported at a site"})
    study.refresh_from_db()
    assert (study.status, study.status_reason) == (StudyStatus.SUSPENDED, "Data breach reported at a site")


def test_it_invites_a_site_and_closes_with_a_reason(p):
    study = draft_study(p)
    client = client_for(p.pi)
    client.post(reverse("studies:action", args=[study.pk, "invite"]), {"site": p.site_b.pk})
    assert study.participations.get().site == p.site_b
    client.post(reverse("studies:action", args=[study.pk, "close"]), {"reason": "Funding ended"})
    study.refresh_from_db()
    assert (study.status, study.status_reason) == (StudyStatus.CLOSED, "Funding ended")


def test_it_answers_404_for_an_unknown_action(p):
    study = draft_study(p)
    assert client_for(p.pi).post(reverse("studies:action", args=[study.pk, "explode"])).status_code == 404


# --- protocol edit and DUA publish -------------------------------------------------------------------


def _protocol_data(study: Study, **changes) -> dict:
    data = {field: getattr(study, field) for field in ("title", *PROTOCOL_FIELDS)}
    return {**{name: "" if value is None else value for name, value in data.items()}, **changes}  # None: left blank


def test_it_lets_the_pi_edit_the_protocol_and_voids_approvals(p):
    study = active_study(p)
    response = client_for(p.pi).post(reverse("studies:edit", args=[study.pk]), _protocol_data(study, rounds=40))
    assert response.status_code == 302
    study.refresh_from_db()
    assert (study.rounds, study.status) == (40, StudyStatus.SUBMITTED)
    assert not study.approvals.filter(voided_at__isnull=True).exists()


def test_it_refuses_protocol_edits_to_others(p):
    study = draft_study(p)
    url = reverse("studies:edit", args=[study.pk])
    assert client_for(p.dpo).get(url).status_code == 403
    assert client_for(p.outsider).get(url).status_code == 404
    response = client_for(p.dpo).post(url, _protocol_data(study, rounds=99))
    assert response.status_code == 403
    study.refresh_from_db()
    assert study.rounds == 20
    assert denied("studies.study.update", p.dpo)


def test_it_rerenders_the_protocol_form_with_errors(p):
    study = draft_study(p)
    response = client_for(p.pi).post(reverse("studies:edit", args=[study.pk]), _protocol_data(study, rounds=0))
    assert response.status_code == 200 and "rounds" in response.context["form"].errors
    study.refresh_from_db()
    assert study.rounds == 20


def test_it_publishes_a_new_agreement_version(p):
    study = draft_study(p)
    client = client_for(p.pi)
    url = reverse("studies:agreement", args=[study.pk])
    assert client.get(url).status_code == 200
    client.post(url, {"text": "Version two of the agreement."})
    assert study.agreement_versions.order_by("-version").first().version == 2
    response = client.post(url, {"text": "Version two of the agreement."})
    assert response.status_code == 200
    assert "identical to v2" in page(response)
    assert study.agreement_versions.count() == 2


def test_it_refuses_publishing_to_a_site_admin(p):
    study = draft_study(p)
    services.participation_invite(actor=p.pi, study=study, site=p.site_a)
    url = reverse("studies:agreement", args=[study.pk])
    assert client_for(p.site_a_admin).get(url).status_code == 403
    assert client_for(p.site_a_admin).post(url, {"text": "Mine now"}).status_code == 403
    assert study.agreement_versions.count() == 1
    assert denied("studies.agreement.publish", p.site_a_admin)


# --- DPIA --------------------------------------------------------------------------------------------


def test_it_walks_the_dpia_through_draft_review_and_approval(p):
    study = draft_study(p)
    client = client_for(p.dpo)
    dpia_url = reverse("studies:dpia", args=[study.pk])
    response = client.post(
        dpia_url, {"summary": "Vitals only.", "risk_level": "low", "valid_until": "2099-01-01T12:00"}
    )
    assert response.status_code == 302
    client.post(reverse("studies:action", args=[study.pk, "dpia-submit"]), {"next": dpia_url})
    client_for(p.dpo2).post(reverse("studies:action", args=[study.pk, "dpia-approve"]),
                            {"comment": "Fine", "next": dpia_url})
    study.dpia.refresh_from_db()
    assert (study.dpia.status, study.dpia.risk_level) == (DpiaStatus.APPROVED, "low")
    assert timezone.localtime(study.dpia.valid_until).hour == 12
    response = client.post(reverse("studies:action", args=[study.pk, "dpia-revise"]), {"reason": ""}, follow=True)
    assert "Reason: This field is required." in page(response)
    assert views_of(study, p.dpo)


def under_review(p) -> Study:
    """A draft study inviting site A, its DPIA drafted and put under review by `dpo`."""
    study = draft_study(p)
    services.participation_invite(actor=p.pi, study=study, site=p.site_a)
    services.dpia_save(actor=p.dpo, study=study, summary="Vitals, pseudonymised at the site.", risk_level="low",
                       valid_until=timezone.now() + timedelta(days=90))
    services.dpia_submit(actor=p.dpo, study=study)
    return study


@pytest.mark.parametrize("persona", ["pi", "site_a_admin", "auditor", "admin", "dpo", "dpo2", "site_b_admin",
                                     "outsider"])
def test_it_lets_whoever_reads_the_dpia_through_the_api_read_it_on_its_page(p, persona):
    study = under_review(p)
    user = getattr(p, persona)
    response = client_for(user).get(reverse("studies:dpia", args=[study.pk]))
    api = APIClient()
    api.force_login(user)
    assert response.status_code == api.get(f"/api/studies/{study.pk}/dpia/").status_code
    if persona in {"site_b_admin", "outsider"}:  # site B was not invited: the study is invisible to them
        assert response.status_code == 404 and denied("studies.dpia.view", user)
        return
    body = page(response)
    assert response.status_code == 200
    assert "Vitals, pseudonymised at the site." in body and '<span data-testid="dpia-submitted-by">dpo</span>' in body
    assert views_of(study, user)[-1].details["via"] == "page:dpia"
    if persona not in {"dpo", "dpo2"}:  # read-only: no draft form, no decision buttons
        assert 'name="summary"' not in body and 'data-action="dpia-' not in body


def test_it_links_the_dpia_from_the_study_page_for_its_readers(p):
    study = under_review(p)
    for user in (p.pi, p.site_a_admin, p.auditor, p.dpo):
        body = page(client_for(user).get(reverse("studies:detail", args=[study.pk])))
        assert f'href="{reverse("studies:dpia", args=[study.pk])}" data-testid="dpia-link"' in body


def test_it_offers_the_dpia_decision_only_to_a_dpo_other_than_its_submitter(p):
    study = under_review(p)
    url = reverse("studies:dpia", args=[study.pk])
    submitter = page(client_for(p.dpo).get(url))
    assert 'data-action="dpia-approve"' not in submitter and 'data-action="dpia-reject"' not in submitter
    assert 'data-testid="dpia-second-dpo"' in submitter and 'data-action="dpia-revise"' in submitter
    reviewer = page(client_for(p.dpo2).get(url))
    assert 'data-action="dpia-approve"' in reviewer and 'data-action="dpia-reject"' in reviewer
    response = client_for(p.dpo).post(reverse("studies:action", args=[study.pk, "dpia-approve"]), {"next": url})
    assert response.status_code == 403 and "another data-protection officer must approve it" in page(response)
    assert Dpia.objects.get(study=study).status == DpiaStatus.UNDER_REVIEW
    assert denied("studies.dpia.approve", p.dpo)


def test_it_refuses_the_dpia_draft_to_non_dpos(p):
    study = draft_study(p)
    url = reverse("studies:dpia", args=[study.pk])
    body = page(client_for(p.pi).get(url))
    assert "No DPIA yet. A data-protection officer drafts it." in body and 'name="summary"' not in body
    response = client_for(p.pi).post(url, {"summary": "x", "risk_level": "low"})
    assert response.status_code == 403
    assert not Dpia.objects.filter(study=study).exists()
    assert denied("studies.dpia.save", p.pi)


def test_it_refuses_an_invalid_dpia_transition_with_the_services_sentence(p):
    study = draft_study(p)
    response = client_for(p.dpo).post(reverse("studies:action", args=[study.pk, "dpia-approve"]), follow=True)
    assert "No DPIA has been drafted for this study yet." in page(response)
    assert denied("studies.dpia.approve", p.dpo)


def test_it_shows_the_home_page_queues_per_role(p):
    study = submitted_study(p)
    other = draft_study(p, title="Still a draft")
    services.participation_invite(actor=p.pi, study=other, site=p.site_a)
    dpo_html = page(client_for(p.dpo).get("/"))
    assert reverse("studies:approval", args=[study.pk]) in dpo_html
    pi_html = page(client_for(p.pi).get("/"))
    assert "Still a draft" in pi_html and "2 of 2 sites" in pi_html
    site_html = page(client_for(p.site_a_admin).get("/"))
    assert 'data-section="invitations"' in site_html and "Still a draft" in site_html
    auditor_html = page(client_for(p.auditor).get("/"))
    assert reverse("audit-log") in auditor_html and 'data-section="awaiting-review"' not in auditor_html
    outsider = make_user("nobody_special", Role.PI)
    assert "Sepsis risk" not in page(client_for(outsider).get("/"))
