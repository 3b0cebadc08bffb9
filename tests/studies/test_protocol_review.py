"""Plan review bound to the protocol hash: each site's admin accepts or rejects the exact protocol; an amendment
voids the acceptance (the gate's `protocol_accepted` fails) until the site accepts again; the PI sees who
accepted, who rejected and why."""

from consortium.errors import Conflict, Forbidden, ValidationFailed
from studies import services
from studies.governance import evaluate
from studies.models import Participation
from tests.base import accept_protocol, active_study
from tests.support import last_seq, only_event, refused


def participation_of(study, site) -> Participation:
    return Participation.objects.get(study=study, site=site)


def protocol_check(study, site):
    verdict = evaluate(study, "submit_update", site=site)
    return next(c for c in verdict.checks if c.name == "protocol_accepted" and c.site_id == site.pk), verdict


def reapprove(p, study):
    services.study_approve(actor=p.pi, study=study)
    services.study_approve(actor=p.dpo, study=study)
    services.study_activate(actor=p.pi, study=study)


def test_an_amendment_voids_the_sites_acceptance_until_it_accepts_again(p):
    study = active_study(p)
    check, verdict = protocol_check(study, p.site_a)
    assert check.passed and verdict.allowed
    services.study_update_protocol(actor=p.pi, study=study, local_epochs=3)
    reapprove(p, study)
    study.refresh_from_db()
    check, verdict = protocol_check(study, p.site_a)
    assert not check.passed and not verdict.allowed
    assert "Has not reviewed the amended protocol" in check.reason and "it accepted an earlier version" in check.reason
    mark = last_seq()
    accept_protocol(p.site_a_admin, participation_of(study, p.site_a))
    event = only_event(mark, "studies.protocol.accepted")
    assert event.details["protocol_sha256"] == study.protocol_sha256() and event.site_id == p.site_a.pk
    check, verdict = protocol_check(study, p.site_a)
    assert check.passed and verdict.allowed
    assert not protocol_check(study, p.site_b)[0].passed  # each site reviews for itself


def test_a_rejection_needs_a_reason_and_the_gate_quotes_it(p):
    study = active_study(p)
    participation = participation_of(study, p.site_b)
    with refused(ValidationFailed, "Say why", action="studies.protocol.review"):
        services.protocol_review(actor=p.site_b_admin, participation=participation, decision="rejected",
                                 protocol_sha256=study.protocol_sha256())
    services.protocol_review(actor=p.site_b_admin, participation=participation, decision="rejected",
                             protocol_sha256=study.protocol_sha256(), reason="Learning rate too high for our data.")
    check, verdict = protocol_check(study, p.site_b)
    assert not verdict.allowed
    assert check.reason.endswith("Learning rate too high for our data.")
    assert "Rejected the current protocol" in check.reason


def test_a_review_of_a_protocol_that_changed_meanwhile_is_refused(p):
    study = active_study(p)
    seen = study.protocol_sha256()
    services.study_update_protocol(actor=p.pi, study=study, rounds=5)
    with refused(Conflict, "The protocol changed while it was reviewed", action="studies.protocol.review"):
        services.protocol_review(actor=p.site_a_admin, participation=participation_of(study, p.site_a),
                                 decision="accepted", protocol_sha256=seen)


def test_only_the_sites_own_admin_reviews_for_it(p):
    study = active_study(p)
    with refused(Forbidden, "Only an admin of", action="studies.protocol.review"):
        services.protocol_review(actor=p.site_b_admin, participation=participation_of(study, p.site_a),
                                 decision="accepted", protocol_sha256=study.protocol_sha256())


def test_the_review_page_shows_what_changed_and_the_pi_sees_who_rejected_and_why(p, client):
    study = active_study(p)
    services.study_update_protocol(actor=p.pi, study=study, local_epochs=3)
    study.refresh_from_db()
    client.force_login(p.site_a_admin)
    url = f"/studies/{study.pk}/sites/{p.site_a.pk}/protocol-review/"
    page = client.get(url).content.decode()
    assert 'data-changed="local_epochs"' in page and study.protocol_sha256() in page
    response = client.post(url, {"decision": "rejected", "reason": "Three epochs overfit our small cohort.",
                                 "protocol_sha256": study.protocol_sha256()})
    assert response.status_code == 302
    client.force_login(p.pi)
    detail = client.get(f"/studies/{study.pk}/").content.decode()
    assert 'data-protocol-review="rejected"' in detail and "Three epochs overfit our small cohort." in detail
    assert 'data-protocol-review="outdated"' in detail  # site B accepted the protocol before the amendment
