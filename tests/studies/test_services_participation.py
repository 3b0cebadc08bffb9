"""A site's participation: the PI invites or withdraws it; the site's admin grants, suspends,
resumes or revokes it, with who, when and why recorded."""

import pytest

from consortium.errors import Conflict, Forbidden, InvalidTransition, NotFound, ValidationFailed
from studies import services
from studies.choices import ParticipationStatus
from studies.models import Participation
from tests.base import draft_study
from tests.support import last_seq, only_event, refused

P = ParticipationStatus


@pytest.fixture
def invited(p) -> Participation:
    study = draft_study(p)
    return services.participation_invite(actor=p.pi, study=study, site=p.site_a)


def test_it_invites_a_site(p):
    study = draft_study(p)
    mark = last_seq()
    participation = services.participation_invite(actor=p.pi, study=study, site=p.site_a)
    assert (participation.status, participation.invited_by) == (P.INVITED, p.pi)
    event = only_event(mark, "studies.participation.invited")
    assert (event.study_id, event.site_id, event.details) == (study.pk, p.site_a.pk, {"after": "invited"})


def test_it_refuses_invitations_by_anyone_but_the_pi(p):
    study = draft_study(p)
    with refused(Forbidden, "may invite", action="studies.participation.invite"):
        services.participation_invite(actor=p.dpo, study=study, site=p.site_a)
    with refused(NotFound, "No such study", action="studies.participation.invite"):
        services.participation_invite(actor=p.site_a_admin, study=study, site=p.site_a)


def test_it_refuses_to_invite_a_site_twice(p, invited):
    with refused(Conflict, "Amsterdam UMC is already invited", action="studies.participation.invite"):
        services.participation_invite(actor=p.pi, study=invited.study, site=p.site_a)


def test_it_lets_the_sites_admin_grant_participation(p, invited):
    mark = last_seq()
    services.participation_grant(actor=p.site_a_admin, participation=invited)
    invited.refresh_from_db()
    assert (invited.status, invited.decided_by) == (P.GRANTED, p.site_a_admin)
    assert invited.decided_at is not None
    event = only_event(mark, "studies.participation.granted")
    assert event.details == {"before": "invited", "after": "granted", "reason": ""}
    assert event.site_id == p.site_a.pk


def test_it_refuses_a_grant_by_another_sites_admin_or_the_pi(p, invited):
    with refused(NotFound, "No such participation", action="studies.participation.grant"):
        services.participation_grant(actor=p.site_b_admin, participation=invited)
    services.participation_invite(actor=p.pi, study=invited.study, site=p.site_b)
    with refused(Forbidden, "Only an admin of Amsterdam UMC may grant", action="studies.participation.grant"):
        services.participation_grant(actor=p.site_b_admin, participation=invited)
    with refused(Forbidden, "Only an admin of Amsterdam UMC", action="studies.participation.grant"):
        services.participation_grant(actor=p.pi, participation=invited)


def test_it_refuses_to_grant_twice(p, invited):
    services.participation_grant(actor=p.site_a_admin, participation=invited)
    with refused(InvalidTransition, "A participation that is granted cannot become granted",
                 action="studies.participation.grant"):
        services.participation_grant(actor=p.site_a_admin, participation=invited)


def test_it_suspends_with_a_reason_and_resumes(p, invited):
    services.participation_grant(actor=p.site_a_admin, participation=invited)
    mark = last_seq()
    services.participation_suspend(actor=p.site_a_admin, participation=invited, reason="Data refresh.")
    invited.refresh_from_db()
    assert (invited.status, invited.reason) == (P.SUSPENDED, "Data refresh.")
    assert only_event(mark, "studies.participation.suspended").details["reason"] == "Data refresh."
    mark = last_seq()
    services.participation_resume(actor=p.site_a_admin, participation=invited)
    invited.refresh_from_db()
    assert invited.status == P.GRANTED
    assert only_event(mark, "studies.participation.resumed").details["before"] == "suspended"


def test_it_requires_a_reason_to_suspend_revoke_or_withdraw(p, invited):
    services.participation_grant(actor=p.site_a_admin, participation=invited)
    for action, call in [
        ("suspend", lambda: services.participation_suspend(actor=p.site_a_admin, participation=invited, reason=" ")),
        ("revoke", lambda: services.participation_revoke(actor=p.site_a_admin, participation=invited, reason="")),
        ("withdraw", lambda: services.participation_withdraw(actor=p.pi, participation=invited, reason="")),
    ]:
        with refused(ValidationFailed, "Give a reason", action=f"studies.participation.{action}"):
            call()


def test_it_refuses_to_resume_a_participation_that_is_not_suspended(p, invited):
    services.participation_grant(actor=p.site_a_admin, participation=invited)
    with refused(InvalidTransition, "Only a suspended participation can be resumed",
                 action="studies.participation.resume"):
        services.participation_resume(actor=p.site_a_admin, participation=invited)


def test_it_revokes_for_good_and_needs_a_new_invitation_to_return(p, invited):
    services.participation_grant(actor=p.site_a_admin, participation=invited)
    mark = last_seq()
    services.participation_revoke(actor=p.site_a_admin, participation=invited, reason="Consent withdrawn.")
    invited.refresh_from_db()
    assert (invited.status, invited.reason, invited.decided_by) == (P.REVOKED, "Consent withdrawn.", p.site_a_admin)
    event = only_event(mark, "studies.participation.revoked")
    assert event.details == {"before": "granted", "after": "revoked", "reason": "Consent withdrawn."}

    for action, call in [
        ("grant", lambda: services.participation_grant(actor=p.site_a_admin, participation=invited)),
        ("resume", lambda: services.participation_resume(actor=p.site_a_admin, participation=invited)),
    ]:
        message = "new invitation" if action == "grant" else "Only a suspended participation"
        with refused(InvalidTransition, message, action=f"studies.participation.{action}"):
            call()

    again = services.participation_invite(actor=p.pi, study=invited.study, site=p.site_a)
    assert again.pk != invited.pk and again.status == P.INVITED
    services.participation_grant(actor=p.site_a_admin, participation=again)
    again.refresh_from_db()
    invited.refresh_from_db()
    assert (again.status, invited.status) == (P.GRANTED, P.REVOKED)


def test_it_lets_the_pi_withdraw_a_site_but_not_the_sites_admin(p, invited):
    with refused(Forbidden, "Only the study's principal investigator may withdraw",
                 action="studies.participation.withdraw"):
        services.participation_withdraw(actor=p.site_a_admin, participation=invited, reason="Leaving.")
    mark = last_seq()
    services.participation_withdraw(actor=p.pi, participation=invited, reason="Site lacks the data.")
    invited.refresh_from_db()
    assert invited.status == P.WITHDRAWN
    assert only_event(mark, "studies.participation.withdrawn").details["after"] == "withdrawn"
