"""The site admin's pages and buttons: their sites, invitations, grant/suspend/resume/revoke, signing the
current DUA and recording ethics approval in the site's time zone. Another site's participation is refused."""

from datetime import UTC, datetime

from django.urls import reverse

from consortium.roles import Role
from studies import services
from studies.choices import ParticipationStatus
from studies.models import AgreementSignature, EthicsApproval, Participation
from tests.base import active_study, draft_study, make_user
from tests.pages import client_for, denied, page


def invited(p, *sites):
    study = draft_study(p)
    return study, [services.participation_invite(actor=p.pi, study=study, site=site) for site in sites]


def act(user, participation: Participation, action: str, data: dict | None = None, **kwargs):
    url = reverse("studies:participation-action", args=[participation.study_id, participation.pk, action])
    return client_for(user).post(url, data or {}, **kwargs)


def test_it_sends_anonymous_visitors_to_log_in(p, client):
    _, [participation] = invited(p, p.site_a)
    for url in (reverse("site-list"), reverse("site-detail", args=[p.site_a.pk])):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    response = client.post(
        reverse("studies:participation-action", args=[participation.study_id, participation.pk, "grant"])
    )
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    participation.refresh_from_db()
    assert participation.status == ParticipationStatus.INVITED


def test_it_lists_only_the_sites_a_user_administers(p):
    body = page(client_for(p.site_a_admin).get(reverse("site-list")))
    assert "Amsterdam UMC" in body and "Charité Berlin" not in body
    assert "Amsterdam UMC" not in page(client_for(p.outsider).get(reverse("site-list")))


def test_it_shows_a_sites_invitations_with_links_and_buttons(p):
    study, _ = invited(p, p.site_a)
    body = page(client_for(p.site_a_admin).get(reverse("site-detail", args=[p.site_a.pk])))
    assert reverse("studies:detail", args=[study.pk]) in body
    assert 'data-action="grant" data-site="amc"' in body and 'data-action="revoke" data-site="amc"' in body


def test_it_hides_another_sites_page(p):
    invited(p, p.site_a)
    assert client_for(p.site_b_admin).get(reverse("site-detail", args=[p.site_a.pk])).status_code == 404
    assert client_for(p.outsider).get(reverse("site-detail", args=[p.site_a.pk])).status_code == 404


def test_it_shows_a_pi_only_the_participations_of_studies_they_lead(p):
    study, _ = invited(p, p.site_a)
    other_pi = make_user("other_pi", Role.PI)
    body = page(client_for(other_pi).get(reverse("site-detail", args=[p.site_a.pk])))
    assert study.title not in body


def test_it_grants_suspends_resumes_and_revokes(p):
    _, [participation] = invited(p, p.site_a)
    act(p.site_a_admin, participation, "grant")
    act(p.site_a_admin, participation, "suspend", {"reason": "Server maintenance"})
    participation.refresh_from_db()
    assert (participation.status, participation.reason) == (ParticipationStatus.SUSPENDED, "Server maintenance")
    act(p.site_a_admin, participation, "resume")
    response = act(p.site_a_admin, participation, "revoke", {"reason": "Consent withdrawn"}, follow=True)
    participation.refresh_from_db()
    assert (participation.status, participation.decided_by) == (ParticipationStatus.REVOKED, p.site_a_admin)
    assert "from now on the gate refuses this site" in page(response)


def test_it_requires_a_reason_to_revoke(p):
    _, [participation] = invited(p, p.site_a)
    response = act(p.site_a_admin, participation, "revoke", {"reason": "  "}, follow=True)
    assert "Reason: This field is required." in page(response)
    participation.refresh_from_db()
    assert participation.status == ParticipationStatus.INVITED


def test_it_answers_404_for_another_sites_participation_and_audits_it(p):
    """Another site's participation is not the site admin's object: 404, as in the API."""
    _, [a, b] = invited(p, p.site_a, p.site_b)
    response = act(p.site_a_admin, b, "revoke", {"reason": "Not mine to revoke"})
    assert response.status_code == 404
    b.refresh_from_db()
    assert b.status == ParticipationStatus.INVITED
    assert denied("studies.participation.revoke", p.site_a_admin)


def test_it_answers_404_for_a_participation_in_an_invisible_study(p):
    _, [a] = invited(p, p.site_a)
    for user in (p.site_b_admin, p.outsider):
        assert act(user, a, "grant").status_code == 404
        assert denied("studies.participation.grant", user)
    a.refresh_from_db()
    assert a.status == ParticipationStatus.INVITED


def test_it_answers_404_when_the_participation_is_not_in_the_study_in_the_url(p):
    study_one, [a] = invited(p, p.site_a)
    study_two, _ = invited(p, p.site_a)
    url = reverse("studies:participation-action", args=[study_two.pk, a.pk, "grant"])
    assert client_for(p.site_a_admin).post(url).status_code == 404
    a.refresh_from_db()
    assert a.status == ParticipationStatus.INVITED


def test_it_signs_the_current_agreement_shown_on_the_study_page(p):
    study, [a] = invited(p, p.site_a)
    agreement = study.agreement_versions.get()
    body = page(client_for(p.site_a_admin).get(reverse("studies:detail", args=[study.pk])))
    sign_form = body.split('data-action="sign" data-site="amc"')[1].split("</form>")[0]
    assert agreement.text in sign_form and agreement.sha256 in sign_form
    act(p.site_a_admin, a, "sign", {"agreement": agreement.pk})
    signature = AgreementSignature.objects.get(site=p.site_a)
    assert (signature.agreement, signature.signed_by, signature.agreement_sha256) == (
        agreement,
        p.site_a_admin,
        agreement.sha256,
    )


def test_it_refuses_a_signature_of_a_superseded_version(p):
    study, [a] = invited(p, p.site_a)
    old = study.agreement_versions.get()
    services.agreement_publish(actor=p.pi, study=study, text="Version two.")
    response = act(p.site_a_admin, a, "sign", {"agreement": old.pk}, follow=True)
    assert "superseded by v2" in page(response)
    assert not AgreementSignature.objects.exists()
    assert denied("studies.agreement.sign", p.site_a_admin)


def test_it_refuses_signing_for_another_site(p):
    study, [a, b] = invited(p, p.site_a, p.site_b)
    response = act(p.site_a_admin, b, "sign", {"agreement": study.agreement_versions.get().pk})
    assert response.status_code == 404
    assert not AgreementSignature.objects.exists()
    assert denied("studies.agreement.sign", p.site_a_admin)


def test_it_records_ethics_dates_in_the_sites_time_zone(p):
    _, [_, b] = invited(p, p.site_a, p.site_b)
    act(
        p.site_b_admin,
        b,
        "ethics",
        {"reference": "EA1/123/26", "valid_from": "2026-01-01T00:00", "valid_until": "2099-07-31T23:59"},
    )
    approval = EthicsApproval.objects.get(site=p.site_b)
    # Berlin is UTC+2 in summer and UTC+1 in winter: 23:59 local is 21:59 UTC, midnight is 23:00 UTC.
    assert approval.valid_until == datetime(2099, 7, 31, 21, 59, tzinfo=UTC)
    assert approval.valid_from == datetime(2025, 12, 31, 23, 0, tzinfo=UTC)
    assert approval.reference == "EA1/123/26"


def test_it_reports_bad_ethics_input_without_recording_anything(p):
    _, [a] = invited(p, p.site_a)
    response = act(
        p.site_a_admin,
        a,
        "ethics",
        {"reference": "X", "valid_from": "2099-02-01T00:00", "valid_until": "2099-01-01T00:00"},
        follow=True,
    )
    assert "The approval must end after it starts." in page(response)
    response = act(
        p.site_a_admin, a, "ethics", {"reference": "X", "valid_from": "soon", "valid_until": ""}, follow=True
    )
    assert "Valid from: Enter a valid date/time." in page(response)
    assert not EthicsApproval.objects.exists()


def test_it_lets_the_pi_withdraw_a_site_but_not_a_site_admin(p):
    study = active_study(p)
    b = study.participations.get(site=p.site_b)
    assert act(p.site_b_admin, b, "withdraw", {"reason": "Leaving"}).status_code == 403
    b.refresh_from_db()
    assert b.status == ParticipationStatus.GRANTED
    assert denied("studies.participation.withdraw", p.site_b_admin)
    act(p.pi, b, "withdraw", {"reason": "Data quality issues"})
    b.refresh_from_db()
    assert (b.status, b.reason) == (ParticipationStatus.WITHDRAWN, "Data quality issues")
