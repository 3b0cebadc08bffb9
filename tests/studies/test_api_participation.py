"""The participation REST API: the PI invites and withdraws sites; each site's admin grants, suspends,
resumes and revokes its own participation, and another site's participation is a 404."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from sites.models import Site
from studies import services
from studies.choices import ParticipationStatus, StudyStatus
from studies.models import Participation
from tests.api_support import assert_anonymous_refused, assert_error, call, client, nothing_changes, only_success
from tests.base import draft_study
from tests.support import last_seq, study_in


def invited(p, site=None, study=None):
    study = study or draft_study(p)
    return services.participation_invite(actor=p.pi, study=study, site=site or p.site_a)


def granted(p, site=None, study=None):
    participation = invited(p, site, study)
    return services.participation_grant(actor=p.site_admin_of(participation.site), participation=participation)


ENDPOINTS = [
    ("get", "/api/studies/{study}/participations/"),
    ("post", "/api/studies/{study}/participations/"),
    ("get", "/api/participations/{pk}/"),
    ("post", "/api/participations/{pk}/grant/"),
    ("post", "/api/participations/{pk}/suspend/"),
    ("post", "/api/participations/{pk}/resume/"),
    ("post", "/api/participations/{pk}/revoke/"),
    ("post", "/api/participations/{pk}/withdraw/"),
]


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_it_refuses_anonymous_callers_with_a_json_401(p, method, url):
    participation = invited(p)
    with nothing_changes():
        response = call(client(), method, url.format(study=participation.study_id, pk=participation.pk),
                        {"reason": "x", "site": p.site_b.pk})
    assert_anonymous_refused(response)


def test_it_lists_participations_each_caller_may_see(p):
    study = draft_study(p)
    invited(p, p.site_a, study)
    invited(p, p.site_b, study)
    url = f"/api/studies/{study.pk}/participations/"

    def sites(user):
        return [(row["site_name"], row["status"]) for row in client(user).get(url).json()]

    assert sites(p.pi) == [("Amsterdam UMC", "invited"), ("Charité Berlin", "invited")]
    assert sites(p.auditor) == sites(p.pi)
    assert sites(p.site_a_admin) == [("Amsterdam UMC", "invited")]
    with nothing_changes(denied="studies.participation.list"):
        assert_error(client(p.outsider).get(url), 404, "not_found")


def test_it_shows_one_participation_to_its_site_admin_but_not_to_another_sites(p):
    participation = invited(p, p.site_a)
    invited(p, p.site_b, participation.study)
    body = client(p.site_a_admin).get(f"/api/participations/{participation.pk}/").json()
    assert (body["site"], body["study"], body["status"], body["invited_by"]) == (
        p.site_a.pk, participation.study_id, "invited", "pi")
    with nothing_changes(denied="studies.participation.view"):
        response = client(p.site_b_admin).get(f"/api/participations/{participation.pk}/")
    assert_error(response, 404, "not_found", mentions="No such participation")


def test_it_lets_the_pi_invite_a_site(p):
    study = draft_study(p)
    mark = last_seq()
    response = client(p.pi).post(f"/api/studies/{study.pk}/participations/", {"site": p.site_b.pk}, format="json")
    assert response.status_code == 201, response.json()
    participation = Participation.objects.get(pk=response.json()["id"])
    assert (participation.study, participation.site, participation.status) == (
        study, p.site_b, ParticipationStatus.INVITED)
    [event] = only_success(mark, "studies.participation.invited")
    assert (event.study_id, event.site_id) == (study.pk, p.site_b.pk)


def test_it_refuses_an_invitation_by_a_site_admin_who_sees_the_study_with_403(p):
    participation = invited(p, p.site_a)
    url = f"/api/studies/{participation.study_id}/participations/"
    with nothing_changes(denied="studies.participation.invite"):
        response = client(p.site_a_admin).post(url, {"site": p.site_a.pk}, format="json")
    assert_error(response, 403, "forbidden", mentions="principal investigator")
    with nothing_changes(denied="studies.participation.invite"):  # a site it may not see is a 404
        response = client(p.site_a_admin).post(url, {"site": p.site_b.pk}, format="json")
    assert_error(response, 404, "not_found", mentions="No such site")


def test_it_refuses_an_invitation_to_an_invisible_study_with_404(p):
    study = draft_study(p)
    with nothing_changes(denied="studies.participation.invite"):
        response = client(p.outsider).post(f"/api/studies/{study.pk}/participations/", {"site": p.site_a.pk},
                                           format="json")
    assert_error(response, 404, "not_found", mentions="No such study")


def test_it_refuses_an_unknown_site_or_a_second_invitation(p):
    participation = invited(p, p.site_a)
    url = f"/api/studies/{participation.study_id}/participations/"
    with nothing_changes(denied="studies.participation.invite"):
        assert_error(client(p.pi).post(url, {"site": 987654}, format="json"), 404, "not_found", mentions="site")
    with nothing_changes(denied="studies.participation.invite"):
        response = client(p.pi).post(url, {"site": p.site_a.pk}, format="json")
    assert_error(response, 409, "conflict", mentions="already invited")


STEPS = [
    # (set-up, verb, body, status after, audit action)
    (invited, "grant", {}, ParticipationStatus.GRANTED, "granted"),
    (granted, "suspend", {"reason": "Audit at the site."}, ParticipationStatus.SUSPENDED, "suspended"),
    (granted, "revoke", {"reason": "Consent withdrawn."}, ParticipationStatus.REVOKED, "revoked"),
]


@pytest.mark.parametrize(("setup", "verb", "body", "end", "event"), STEPS)
def test_it_lets_the_site_admin_move_their_own_participation(p, setup, verb, body, end, event):
    participation = setup(p)
    mark = last_seq()
    response = client(p.site_a_admin).post(f"/api/participations/{participation.pk}/{verb}/", body, format="json")
    assert response.status_code == 200, response.json()
    participation.refresh_from_db()
    assert (participation.status, participation.decided_by) == (end, p.site_a_admin)
    assert response.json()["status"] == end
    [audit] = only_success(mark, f"studies.participation.{event}")
    assert audit.site_id == p.site_a.pk


def test_it_resumes_a_suspended_participation(p):
    participation = granted(p)
    services.participation_suspend(actor=p.site_a_admin, participation=participation, reason="Pause.")
    mark = last_seq()
    response = client(p.site_a_admin).post(f"/api/participations/{participation.pk}/resume/", {}, format="json")
    assert response.json()["status"] == "granted"
    only_success(mark, "studies.participation.resumed")


@pytest.mark.parametrize("verb", ["grant", "suspend", "resume", "revoke"])
def test_it_answers_404_for_another_sites_participation_in_a_shared_study(p, verb):
    participation = invited(p, p.site_a)
    invited(p, p.site_b, participation.study)  # site B's admin sees the study, not site A's participation
    with nothing_changes(denied=f"studies.participation.{verb}"):
        response = client(p.site_b_admin).post(f"/api/participations/{participation.pk}/{verb}/",
                                               {"reason": "Not mine."}, format="json")
    assert_error(response, 404, "not_found", mentions="No such participation")


@pytest.mark.parametrize("verb", ["grant", "suspend", "resume", "revoke"])
def test_it_refuses_a_site_step_by_the_pi_who_sees_the_participation_with_403(p, verb):
    participation = invited(p)
    with nothing_changes(denied=f"studies.participation.{verb}") as events:
        response = client(p.pi).post(f"/api/participations/{participation.pk}/{verb}/", {"reason": "r"},
                                     format="json")
    assert_error(response, 403, "forbidden", mentions="Only an admin of Amsterdam UMC")
    assert (events[0].study_id, events[0].site_id) == (participation.study_id, p.site_a.pk)


def test_it_needs_a_reason_to_revoke(p):
    participation = granted(p)
    with nothing_changes(denied="studies.participation.revoke"):
        response = client(p.site_a_admin).post(f"/api/participations/{participation.pk}/revoke/",
                                               {"reason": ""}, format="json")
    assert_error(response, 400, "validation_failed", mentions="Give a reason")
    with nothing_changes():
        response = client(p.site_a_admin).post(f"/api/participations/{participation.pk}/revoke/", {},
                                               format="json")
    body = assert_error(response, 400, "validation_failed", mentions="reason: This field is required")
    assert "reason" in body["fields"]


def test_it_refuses_to_grant_a_revoked_participation_again(p):
    participation = granted(p)
    services.participation_revoke(actor=p.site_a_admin, participation=participation, reason="Gone.")
    with nothing_changes(denied="studies.participation.grant"):
        response = client(p.site_a_admin).post(f"/api/participations/{participation.pk}/grant/", {},
                                               format="json")
    assert_error(response, 409, "invalid_transition", mentions="new invitation")


def test_it_lets_the_pi_withdraw_a_site_but_not_its_admin(p):
    participation = granted(p)
    url = f"/api/participations/{participation.pk}/withdraw/"
    with nothing_changes(denied="studies.participation.withdraw"):
        response = client(p.site_a_admin).post(url, {"reason": "Leaving."}, format="json")
    assert_error(response, 403, "forbidden", mentions="principal investigator")

    mark = last_seq()
    response = client(p.pi).post(url, {"reason": "Data quality."}, format="json")
    assert response.json()["status"] == "withdrawn"
    participation.refresh_from_db()
    assert (participation.status, participation.reason) == (ParticipationStatus.WITHDRAWN, "Data quality.")
    only_success(mark, "studies.participation.withdrawn")


def test_it_makes_a_revocation_through_the_api_turn_the_gate_red_at_once(p):
    study = study_in(p, StudyStatus.ACTIVE)
    participation = Participation.objects.get(study=study, site=p.site_a)
    client(p.site_a_admin).post(f"/api/participations/{participation.pk}/revoke/", {"reason": "Stop."},
                                format="json")
    gate = client(p.pi).get(f"/api/studies/{study.pk}/gate/", {"action": "submit_update", "site": p.site_a.pk})
    assert gate.json()["allowed"] is False
    [check] = [c for c in gate.json()["checks"] if c["name"] == "participation"]
    assert (check["passed"], check["site_id"]) == (False, p.site_a.pk)


def test_it_lists_participations_in_a_constant_number_of_queries(p):
    study = draft_study(p)
    granted(p, p.site_a, study)
    url, api = f"/api/studies/{study.pk}/participations/", client(p.pi)
    api.get(url)  # warm the content-type cache, as any running server has
    with CaptureQueriesContext(connection) as one:
        assert len(api.get(url).json()) == 1
    for n in range(4):
        site = Site.objects.create(name=f"Hospital {n}", code=f"h{n}")
        services.participation_invite(actor=p.pi, study=study, site=site)
    with CaptureQueriesContext(connection) as five:
        assert len(api.get(url).json()) == 5
    assert len(five) == len(one)
