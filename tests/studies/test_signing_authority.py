"""DUA signing authority: the site records who may sign its agreements; a signature by anyone else is refused
with that reason, and audited."""

from consortium.errors import Conflict, Forbidden, NotFound, ValidationFailed
from sites.permissions import signatories
from sites.services import signing_authority_grant, signing_authority_revoke, site_admin_assign
from studies import services
from studies.models import AgreementSignature
from tests.base import draft_study, make_user
from tests.support import last_seq, only_event, refused


def invited_and_granted(p, study, site):
    participation = services.participation_invite(actor=p.pi, study=study, site=site)
    services.participation_grant(actor=p.site_admin_of(site), participation=participation)
    return participation


def test_an_admin_without_signing_authority_cannot_sign_and_is_told_why(p):
    study = draft_study(p)
    participation = invited_and_granted(p, study, p.site_a)
    second_admin = make_user("second_admin_a")
    site_admin_assign(actor=p.admin, site=p.site_a, user=second_admin)
    agreement = study.agreement_versions.get()
    with refused(Forbidden, "does not hold the signing authority of Amsterdam UMC", action="studies.agreement.sign"):
        services.agreement_sign(actor=second_admin, agreement=agreement, participation=participation)
    mark = last_seq()
    signing_authority_grant(actor=p.site_a_admin, site=p.site_a, user=second_admin)
    assert only_event(mark, "sites.signing_authority.granted").details["user"] == "second_admin_a"
    assert [u.get_username() for u in signatories(p.site_a)] == ["second_admin_a", "site_a_admin"]
    services.agreement_sign(actor=second_admin, agreement=agreement, participation=participation)
    assert AgreementSignature.objects.get(site=p.site_a).signed_by == second_admin


def test_a_revoked_authority_refuses_the_next_signature(p):
    study = draft_study(p)
    participation = invited_and_granted(p, study, p.site_b)
    signing_authority_revoke(actor=p.site_b_admin, site=p.site_b, user=p.site_b_admin)
    with refused(Forbidden, "does not hold the signing authority", action="studies.agreement.sign"):
        services.agreement_sign(actor=p.site_b_admin, agreement=study.agreement_versions.get(),
                                participation=participation)


def test_only_the_sites_admins_record_and_hold_its_signing_authority(p):
    with refused(NotFound, "No such site", action="sites.signing_authority.grant"):  # another site's admin
        signing_authority_grant(actor=p.site_b_admin, site=p.site_a, user=p.site_b_admin)
    with refused(ValidationFailed, "is not an admin of", action="sites.signing_authority.grant"):
        signing_authority_grant(actor=p.site_a_admin, site=p.site_a, user=p.pi)
    with refused(Conflict, "already holds", action="sites.signing_authority.grant"):
        signing_authority_grant(actor=p.site_a_admin, site=p.site_a, user=p.site_a_admin)
