"""The study policy per persona: who sees which studies, and which actions each may take."""

import pytest
from django.contrib.auth.models import AnonymousUser

from consortium.roles import Role
from studies import services
from studies.choices import StudyStatus
from studies.permissions import allowed_actions, can_lead, can_view, studies_for
from tests.base import draft_study, make_user
from tests.support import study_in

S = StudyStatus


@pytest.fixture
def two_studies(p):
    """Study A invites site A only; study B invites site B only."""
    study_a = draft_study(p, title="A")
    study_b = draft_study(p, title="B")
    services.participation_invite(actor=p.pi, study=study_a, site=p.site_a)
    services.participation_invite(actor=p.pi, study=study_b, site=p.site_b)
    return study_a, study_b


def titles(user) -> set[str]:
    return set(studies_for(user).values_list("title", flat=True))


def test_it_shows_an_outsider_and_an_anonymous_user_nothing(p, two_studies):
    for user in (p.outsider, AnonymousUser()):
        assert titles(user) == set()
        assert not any(can_view(user, study) for study in two_studies)
        assert all(allowed_actions(user, study) == set() for study in two_studies)


def test_it_shows_a_site_admin_only_studies_their_site_was_invited_to(p, two_studies):
    study_a, study_b = two_studies
    assert titles(p.site_a_admin) == {"A"}
    assert titles(p.site_b_admin) == {"B"}
    assert can_view(p.site_a_admin, study_a) and not can_view(p.site_a_admin, study_b)
    assert allowed_actions(p.site_a_admin, study_a) == set()


def test_it_keeps_a_revoked_sites_admin_able_to_see_the_history(p, two_studies):
    study_a, _ = two_studies
    participation = study_a.participations.get()
    services.participation_revoke(actor=p.site_a_admin, participation=participation, reason="No.")
    assert can_view(p.site_a_admin, study_a)


def test_it_shows_auditors_and_dpos_every_study(p, two_studies):
    for user in (p.auditor, p.dpo, p.admin):
        assert titles(user) == {"A", "B"}
    assert studies_for(p.dpo, "lead").count() == 0


def test_it_shows_a_pi_only_the_studies_they_lead(p, two_studies):
    other_pi = make_user("other_pi", Role.PI)
    mine = services.study_create(actor=other_pi, title="Mine", clinical_question="Q?")
    assert titles(p.pi) == {"A", "B"}
    assert titles(other_pi) == {"Mine"}
    assert set(studies_for(other_pi, "lead")) == {mine}
    assert not can_view(other_pi, two_studies[0])


def test_it_gives_a_superuser_without_roles_no_object_rights(p, two_studies):
    root = make_user("root", is_superuser=True, is_staff=True)
    assert titles(root) == set()
    assert not can_lead(root, two_studies[0])
    assert allowed_actions(root, two_studies[0]) == set()


def test_it_rejects_an_unknown_action(p):
    with pytest.raises(ValueError, match="unknown study action"):
        studies_for(p.pi, "delete")


EXPECTED = {
    # status: (PI's actions, DPO's actions)
    S.DRAFT: ({"edit_protocol", "publish_agreement", "invite_site", "submit", "close", "withdraw_site"},
              {"manage_dpia"}),
    S.SUBMITTED: ({"edit_protocol", "publish_agreement", "invite_site", "approve", "close", "withdraw_site"},
                  {"approve", "reject", "manage_dpia"}),
    S.APPROVED: ({"edit_protocol", "publish_agreement", "invite_site", "activate", "suspend", "close",
                  "withdraw_site"}, {"suspend", "manage_dpia"}),
    S.ACTIVE: ({"edit_protocol", "publish_agreement", "invite_site", "suspend", "close", "withdraw_site"},
               {"suspend", "manage_dpia"}),
    S.SUSPENDED: ({"edit_protocol", "publish_agreement", "invite_site", "approve", "close", "withdraw_site"},
                  {"approve", "reject", "manage_dpia"}),
    S.CLOSED: (set(), set()),
}


@pytest.mark.parametrize("status", list(S))
def test_it_offers_each_persona_the_actions_of_the_studys_state(p, status):
    study = study_in(p, status)
    pi_actions, dpo_actions = EXPECTED[status]
    assert allowed_actions(p.pi, study) == pi_actions
    assert allowed_actions(p.dpo, study) == dpo_actions
    for user in (p.auditor, p.site_a_admin, p.outsider):
        assert allowed_actions(user, study) == set()
