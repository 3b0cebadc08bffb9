"""Data use agreements: the PI publishes versions, each site's admin signs the current one."""

from consortium.errors import Conflict, Forbidden, InvalidTransition, NotFound, ValidationFailed
from studies import services
from studies.choices import StudyStatus
from studies.models import AgreementSignature, sha256_text
from tests.base import DUA_TEXT, draft_study
from tests.support import last_seq, only_event, refused

NEW_TEXT = "Revised: pseudonymised data, and weights are deleted after the study."


def test_it_publishes_a_first_version_on_a_study_without_one(p):
    study = services.study_create(actor=p.pi, title="No DUA yet", clinical_question="Q?")
    mark = last_seq()
    version = services.agreement_publish(actor=p.pi, study=study, text=DUA_TEXT)
    assert (version.version, version.sha256, version.effective_until) == (1, sha256_text(DUA_TEXT), None)
    event = only_event(mark, "studies.agreement.published")
    assert event.details == {"version": 1, "sha256": version.sha256, "supersedes": None}
    assert event.study_id == study.pk


def test_it_publishes_an_edit_as_a_new_version_and_ends_the_old_one(p):
    study = draft_study(p)
    v1 = study.agreement_versions.get()
    mark = last_seq()
    v2 = services.agreement_publish(actor=p.pi, study=study, text=NEW_TEXT)
    v1.refresh_from_db()
    assert v2.version == 2 and v1.text == DUA_TEXT
    assert v1.effective_until == v2.effective_from
    # A draft has no approvals to void: only the publication is recorded and it stays a draft.
    assert only_event(mark, "studies.agreement.published").details["supersedes"] == 1
    study.refresh_from_db()
    assert study.status == StudyStatus.DRAFT


def test_it_refuses_to_publish_identical_or_empty_text(p):
    study = draft_study(p)
    with refused(ValidationFailed, "identical to v1", action="studies.agreement.publish"):
        services.agreement_publish(actor=p.pi, study=study, text=DUA_TEXT)
    with refused(ValidationFailed, "The agreement text is empty", action="studies.agreement.publish"):
        services.agreement_publish(actor=p.pi, study=study, text="  \n")


def test_it_refuses_publication_by_anyone_but_the_pi(p):
    study = draft_study(p)
    with refused(Forbidden, "Only the study's principal investigator may publish", action="studies.agreement.publish"):
        services.agreement_publish(actor=p.dpo, study=study, text=NEW_TEXT)
    with refused(NotFound, "No such study", action="studies.agreement.publish"):
        services.agreement_publish(actor=p.outsider, study=study, text=NEW_TEXT)


def test_it_lets_a_site_admin_sign_the_current_version_for_their_site(p):
    study = draft_study(p)
    participation = services.participation_invite(actor=p.pi, study=study, site=p.site_a)
    agreement = study.agreement_versions.get()
    mark = last_seq()
    signature = services.agreement_sign(actor=p.site_a_admin, agreement=agreement, participation=participation)
    assert (signature.site, signature.signed_by, signature.agreement_sha256) == (
        p.site_a, p.site_a_admin, agreement.sha256)
    event = only_event(mark, "studies.agreement.signed")
    assert (event.study_id, event.site_id) == (study.pk, p.site_a.pk)
    assert event.details == {"version": 1, "sha256": agreement.sha256}


def test_it_refuses_a_signature_by_another_sites_admin(p):
    study = draft_study(p)
    participation = services.participation_invite(actor=p.pi, study=study, site=p.site_a)
    agreement = study.agreement_versions.get()
    # Site B not invited: the study is invisible to its admin, so it does not exist for them.
    with refused(NotFound, "No such study", action="studies.agreement.sign"):
        services.agreement_sign(actor=p.site_b_admin, agreement=agreement, participation=participation)
    # Site B invited: its admin sees the study but still cannot sign for site A.
    services.participation_invite(actor=p.pi, study=study, site=p.site_b)
    with refused(Forbidden, "Only an admin of Amsterdam UMC may sign", action="studies.agreement.sign") as denial:
        services.agreement_sign(actor=p.site_b_admin, agreement=agreement, participation=participation)
    assert (denial.event.study_id, denial.event.site_id) == (study.pk, p.site_a.pk)


def test_it_refuses_to_sign_a_superseded_version(p):
    study = draft_study(p)
    participation = services.participation_invite(actor=p.pi, study=study, site=p.site_a)
    v1 = study.agreement_versions.get()
    services.agreement_publish(actor=p.pi, study=study, text=NEW_TEXT)
    with refused(Conflict, "DUA v1 has been superseded by v2; read and sign v2", action="studies.agreement.sign"):
        services.agreement_sign(actor=p.site_a_admin, agreement=v1, participation=participation)


def test_it_refuses_to_sign_twice(p):
    study = draft_study(p)
    participation = services.participation_invite(actor=p.pi, study=study, site=p.site_a)
    agreement = study.agreement_versions.get()
    services.agreement_sign(actor=p.site_a_admin, agreement=agreement, participation=participation)
    with refused(Conflict, "Amsterdam UMC has already signed DUA v1", action="studies.agreement.sign"):
        services.agreement_sign(actor=p.site_a_admin, agreement=agreement, participation=participation)
    assert AgreementSignature.objects.count() == 1


def test_it_refuses_to_sign_another_studys_agreement(p):
    study = draft_study(p)
    other = draft_study(p, title="Other study")
    participation = services.participation_invite(actor=p.pi, study=study, site=p.site_a)
    with refused(ValidationFailed, "does not belong to this study", action="studies.agreement.sign"):
        services.agreement_sign(actor=p.site_a_admin, agreement=other.agreement_versions.get(),
                                participation=participation)


def test_it_refuses_a_signature_once_participation_is_revoked(p):
    study = draft_study(p)
    participation = services.participation_invite(actor=p.pi, study=study, site=p.site_a)
    services.participation_revoke(actor=p.site_a_admin, participation=participation, reason="Board said no.")
    with refused(InvalidTransition, "no longer taking part", action="studies.agreement.sign"):
        services.agreement_sign(actor=p.site_a_admin, agreement=study.agreement_versions.get(),
                                participation=participation)
