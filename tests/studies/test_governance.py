"""The gate: every check fails for its own reason and only that one, expiry is exact to the second
across time zones, and it runs a constant number of queries whatever the number of sites."""

from datetime import UTC, datetime, timedelta
from unittest import mock
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from sites.models import Site
from studies import services
from studies.choices import GateAction, ParticipationStatus, StudyStatus
from studies.governance import evaluate
from studies.models import (
    AgreementSignature,
    DatasetRegistration,
    EthicsApproval,
    Participation,
    ProtocolReview,
    Study,
)
from tests.base import (
    Personas,
    accept_protocol,
    activate,
    active_study,
    approve_dpia,
    draft_study,
    govern_site,
    matching_summary,
    register_dataset,
)
from tests.support import study_in

ACTIONS = GateAction.values
# agreement, DPIA, participations+sites, signatures, ethics, approvals, protocol reviews, data set registrations
GATE_QUERIES = 8


def failures(result) -> list[tuple[str, str | None, str]]:
    return [(c.name, c.site_name or None, c.reason) for c in result.failures]


def governed_study(p: Personas, *, quorum: int = 1, dpia_days: int = 365, ethics_days: int = 365,
                   site_b_ethics_days: int | None = None, activate: bool = True) -> Study:
    """Both sites governed through the services; the study approved (and activated)."""
    study = draft_study(p, quorum=quorum)
    govern_site(p, study, p.site_a, days=ethics_days)
    govern_site(p, study, p.site_b, days=site_b_ethics_days or ethics_days)
    approve_dpia(p, study, days=dpia_days)
    services.study_submit(actor=p.pi, study=study)
    services.study_approve(actor=p.pi, study=study)
    services.study_approve(actor=p.dpo, study=study)
    if activate:
        services.study_activate(actor=p.pi, study=study)
    study.refresh_from_db()
    return study


def test_it_passes_every_check_for_a_fully_governed_study(p):
    study = active_study(p)
    result = evaluate(study, "aggregate")
    assert result.allowed and result.failures == []
    assert {c.name for c in result.study_checks} == {"study_active", "approvals", "dpia", "privacy_budget", "quorum"}
    assert {(c.name, c.site_id) for c in result.checks if c.site_id} == {
        (name, site.pk) for name in ("participation", "agreement_signed", "ethics", "protocol_accepted",
                                     "dataset_registered") for site in (p.site_a, p.site_b)
    }
    assert [v.site_id for v in result.eligible_sites] == [p.site_a.pk, p.site_b.pk]


def test_it_fails_only_the_dpia_check_once_the_dpia_expired(p):
    study = governed_study(p, dpia_days=30)
    later = timezone.now() + timedelta(days=31)
    result = evaluate(study, "aggregate", moment=later)
    assert not result.allowed
    [(name, site, reason)] = failures(result)
    assert (name, site) == ("dpia", None) and reason.startswith("The DPIA expired (")


def test_it_fails_only_the_signature_of_a_site_that_signed_v1_but_not_v2(p):
    study = governed_study(p)
    v2 = services.agreement_publish(actor=p.pi, study=study, text="Version two of the agreement.")
    services.study_approve(actor=p.pi, study=study)
    services.study_approve(actor=p.dpo, study=study)
    services.study_activate(actor=p.pi, study=study)
    services.agreement_sign(actor=p.site_a_admin, agreement=v2, participation=study.participations.get(site=p.site_a))
    study.refresh_from_db()
    assert AgreementSignature.objects.filter(site=p.site_b, agreement__version=1).exists()

    expected = [("agreement_signed", p.site_b.name, "Has not signed the current DUA v2.")]
    assert failures(evaluate(study, "aggregate")) == expected
    refused_b = evaluate(study, "submit_update", site=p.site_b)
    assert not refused_b.allowed and failures(refused_b) == expected
    assert evaluate(study, "submit_update", site=p.site_a).allowed


def end_agreement(study: Study, until: datetime) -> None:
    """Give the current DUA version an end (no service sets one yet: the data model allows it, so the gate
    must honour it)."""
    study.agreement_versions.filter(version=1).update(effective_until=until)


def test_it_fails_every_sites_signature_once_the_current_dua_version_ended_exact_to_the_second(p):
    study = governed_study(p, quorum=1)
    until = (timezone.now() + timedelta(days=100)).replace(microsecond=0)
    end_agreement(study, until)
    shown = {site.pk: f"{timezone.localtime(until, site.tzinfo):%Y-%m-%d %H:%M %Z}" for site in (p.site_a, p.site_b)}
    before = evaluate(study, "aggregate", moment=until - timedelta(seconds=1))
    assert before.allowed
    assert [(c.site_id, c.passed, c.expires_at, c.reason) for c in before.checks if c.name == "agreement_signed"] == [
        (site, True, until, f"Signed the current DUA v1, in force until {shown[site]}.") for site in shown]

    ended = evaluate(study, "aggregate", moment=until)
    assert not ended.allowed
    assert failures(ended) == [
        ("quorum", None, "0 of 2 sites eligible, which is below the quorum of 1."),
        *(("agreement_signed", site.name,
           f"The current DUA v1 ended {shown[site.pk]}; a new version must be published and signed.")
          for site in (p.site_a, p.site_b)),
    ]
    assert not evaluate(study, "submit_update", site=p.site_a, moment=until).allowed


def test_it_warns_about_a_dua_version_ending_within_30_days(p):
    study = governed_study(p)
    until = timezone.now() + timedelta(days=12)
    end_agreement(study, until)
    soon = evaluate(study, "aggregate").expiring_within(30)
    assert [(c.name, c.site_id, c.expires_at) for c in soon] == [
        ("agreement_signed", p.site_a.pk, until), ("agreement_signed", p.site_b.pk, until)]


def test_it_fails_a_dua_version_not_yet_in_force(p):
    study = governed_study(p)
    starts = timezone.now() + timedelta(days=2)
    study.agreement_versions.filter(version=1).update(effective_from=starts)
    [(name, site, reason)] = failures(evaluate(study, "submit_update", site=p.site_a))
    assert (name, site) == ("agreement_signed", p.site_a.name)
    assert reason == f"The current DUA v1 takes effect {timezone.localtime(starts, p.site_a.tzinfo):%Y-%m-%d %H:%M %Z}."
    assert evaluate(study, "submit_update", site=p.site_a, moment=starts).allowed


def test_it_fails_only_the_ethics_check_of_a_site_whose_approval_expired(p):
    study = governed_study(p, site_b_ethics_days=10)
    later = timezone.now() + timedelta(days=11)
    result = evaluate(study, "download_model", site=p.site_b, moment=later)
    assert not result.allowed
    [(name, site, reason)] = failures(result)
    assert (name, site) == ("ethics", p.site_b.name)
    assert reason.startswith("Ethics approval IRB-charite-1 expired ")
    assert evaluate(study, "download_model", site=p.site_a, moment=later).allowed


def test_it_fails_an_ethics_approval_that_has_not_started_yet(p):
    study = governed_study(p)
    participation = study.participations.get(site=p.site_a)
    EthicsApproval.objects.filter(site=p.site_a).delete()  # test setup: replace it with a future one
    now = timezone.now()
    services.ethics_record(actor=p.site_a_admin, participation=participation, reference="IRB-next",
                           valid_from=now + timedelta(days=2), valid_until=now + timedelta(days=400))
    [(name, _, reason)] = failures(evaluate(study, "submit_update", site=p.site_a))
    assert name == "ethics" and reason.startswith("Ethics approval IRB-next starts ")


@pytest.mark.parametrize("how", ["revoke", "suspend"])
def test_it_fails_only_the_participation_of_a_revoked_or_suspended_site(p, how):
    study = governed_study(p)
    participation = study.participations.get(site=p.site_b)
    getattr(services, f"participation_{how}")(actor=p.site_b_admin, participation=participation, reason="Board.")
    status = {"revoke": "revoked", "suspend": "suspended"}[how]
    expected = [("participation", p.site_b.name, f"Participation is {status}. Board.")]
    assert failures(evaluate(study, "submit_update", site=p.site_b)) == expected
    # The dry run still lists the site, in red, and the quorum of one is met by site A.
    dry_run = evaluate(study, "aggregate")
    assert dry_run.allowed and failures(dry_run) == expected
    assert [v.site_id for v in dry_run.eligible_sites] == [p.site_a.pk]


@pytest.mark.parametrize("action", ACTIONS)
def test_it_refuses_a_revoked_site_at_once_for_every_action(p, action):
    study = active_study(p, quorum=1)
    assert evaluate(study, action, site=p.site_a).allowed
    participation = study.participations.get(site=p.site_a)
    services.participation_revoke(actor=p.site_a_admin, participation=participation, reason="Consent withdrawn.")
    result = evaluate(study, action, site=p.site_a)
    assert not result.allowed
    assert failures(result) == [("participation", p.site_a.name, "Participation is revoked. Consent withdrawn.")]


def test_it_counts_every_eligible_site_toward_the_quorum_when_asked_about_one(p):
    study = active_study(p, quorum=2)
    result = evaluate(study, "aggregate", site=p.site_a)
    assert result.allowed
    quorum = next(c for c in result.study_checks if c.name == "quorum")
    assert quorum.reason == "2 of 2 sites eligible, which meets the quorum of 2."


def test_it_fails_only_the_quorum_when_too_few_sites_are_eligible(p):
    study = active_study(p, quorum=3)
    assert failures(evaluate(study, "aggregate")) == [
        ("quorum", None, "2 of 2 sites eligible, which is below the quorum of 3.")]
    assert evaluate(study, "submit_update", site=p.site_a).allowed  # quorum gates aggregation only


def test_it_fails_only_the_status_check_for_an_approved_study_not_yet_active(p):
    study = governed_study(p, activate=False)
    assert study.status == StudyStatus.APPROVED
    assert failures(evaluate(study, "aggregate")) == [("study_active", None, "The study is approved, not active.")]


def test_it_explains_a_suspended_study_and_its_voided_approvals(p):
    study = active_study(p)
    services.study_suspend(actor=p.dpo, study=study, justification="Leak suspected.")
    study.refresh_from_db()
    names = {name: reason for name, _, reason in failures(evaluate(study, "aggregate"))}
    assert names == {
        "study_active": "The study is suspended, not active. Suspended: Leak suspected.",
        "approvals": "Missing a current approval from: Principal investigator, Data-protection officer.",
    }


def test_it_refuses_a_site_that_was_never_invited(p):
    study = active_study(p)
    site_c = Site.objects.create(name="Karolinska", code="ki", timezone="Europe/Stockholm")
    result = evaluate(study, "download_model", site=site_c)
    assert not result.allowed
    assert failures(result) == [("participation", "Karolinska", "The site is not taking part in this study.")]


def test_it_ends_an_ethics_approval_at_2359_amsterdam_time_exact_to_the_second(p):
    today = datetime(2027, 1, 10, 9, 0, tzinfo=UTC)
    until = datetime(2027, 7, 15, 23, 59, tzinfo=ZoneInfo("Europe/Amsterdam"))  # CEST: 21:59 UTC
    with mock.patch("django.utils.timezone.now", return_value=today):
        study = draft_study(p, quorum=1)
        govern_site(p, study, p.site_b)
        participation = services.participation_invite(actor=p.pi, study=study, site=p.site_a)
        services.participation_grant(actor=p.site_a_admin, participation=participation)
        services.agreement_sign(actor=p.site_a_admin, agreement=study.agreement_versions.get(),
                                participation=participation)
        services.ethics_record(actor=p.site_a_admin, participation=participation, reference="METC-AMS",
                               valid_from=today - timedelta(days=30), valid_until=until)
        accept_protocol(p.site_a_admin, participation)
        register_dataset(p, study, p.site_a)
        activate(p, study)
    study.refresh_from_db()

    last_second = evaluate(study, "submit_update", site=p.site_a, moment=datetime(2027, 7, 15, 21, 58, 59, tzinfo=UTC))
    assert last_second.allowed
    ethics = next(c for c in last_second.checks if c.name == "ethics" and c.site_id == p.site_a.pk)
    assert ethics.reason == "Ethics approval METC-AMS valid until 2027-07-15 23:59 CEST."
    assert ethics.expires_at == datetime(2027, 7, 15, 21, 59, tzinfo=UTC)

    expired = evaluate(study, "submit_update", site=p.site_a, moment=datetime(2027, 7, 15, 21, 59, 0, tzinfo=UTC))
    assert not expired.allowed
    assert failures(expired) == [("ethics", p.site_a.name, "Ethics approval METC-AMS expired 2027-07-15 23:59 CEST.")]
    # The same instant written in another zone is the same verdict.
    same_instant = datetime(2027, 7, 15, 23, 59, tzinfo=ZoneInfo("Europe/Amsterdam"))
    assert not evaluate(study, "submit_update", site=p.site_a, moment=same_instant).allowed


def test_it_reports_what_expires_within_30_days(p):
    study = governed_study(p, dpia_days=25, site_b_ethics_days=20)
    result = evaluate(study, "aggregate")
    soon = result.expiring_within(30)
    assert [(c.name, c.site_id) for c in soon] == [("ethics", p.site_b.pk), ("dpia", None)]
    assert result.expiring_within(10) == []
    assert all(c.passed for c in soon)


def add_governed_sites(p: Personas, study: Study, count: int) -> None:
    """Bulk rows for `count` more fully governed sites (setup for the query-count test, not a workflow)."""
    now = timezone.now()
    sites = Site.objects.bulk_create([Site(name=f"Hospital {i:03}", code=f"h{i:03}") for i in range(count)])
    agreement = study.agreement_versions.get()
    Participation.objects.bulk_create([
        Participation(study=study, site=site, status=ParticipationStatus.GRANTED, invited_by=p.pi, invited_at=now)
        for site in sites
    ])
    AgreementSignature.objects.bulk_create([
        AgreementSignature(agreement=agreement, site=site, signed_by=p.pi, signed_at=now,
                           agreement_sha256=agreement.sha256)
        for site in sites
    ])
    EthicsApproval.objects.bulk_create([
        EthicsApproval(study=study, site=site, reference=f"IRB-{i}", valid_from=now - timedelta(days=1),
                       valid_until=now + timedelta(days=90), recorded_by=p.pi, recorded_at=now)
        for i, site in enumerate(sites)
    ])
    ProtocolReview.objects.bulk_create([
        ProtocolReview(study=study, site=site, decision="accepted", protocol_sha256=study.protocol_sha256(),
                       protocol_snapshot=study.protocol(), reviewed_by=p.pi, reviewed_at=now) for site in sites
    ])
    summary = matching_summary(study)
    DatasetRegistration.objects.bulk_create([
        DatasetRegistration(study=study, site=site, rows=summary["rows"], label_column=summary["label_column"],
                            positives=summary["label"]["positives"], negatives=summary["label"]["negatives"],
                            summary=summary, summary_sha256="0" * 64, registered_by="agent", registered_at=now)
        for site in sites
    ])


@pytest.mark.parametrize("sites", [3, 30])
def test_it_runs_a_constant_number_of_queries_whatever_the_number_of_sites(p, django_assert_num_queries, sites):
    study = active_study(p)
    add_governed_sites(p, study, sites - 2)
    with django_assert_num_queries(GATE_QUERIES):
        result = evaluate(study, "aggregate")
    assert len(result.eligible_sites) == sites
    with django_assert_num_queries(GATE_QUERIES):
        assert evaluate(study, "submit_update", site=p.site_b).allowed


def test_it_rejects_an_unknown_action_and_a_naive_moment(p):
    study = study_in(p, StudyStatus.DRAFT)
    with pytest.raises(ValueError, match="Unknown gate action 'train'"):
        evaluate(study, "train")
    with pytest.raises(ValueError, match="aware moment"):
        evaluate(study, "aggregate", moment=datetime(2027, 1, 1, 12, 0))



@pytest.mark.parametrize("action", ACTIONS)
def test_it_answers_about_one_site_as_its_evaluation_of_every_site_does(p, action):
    """Asked about one site for anything but aggregation, the gate reads that site's records alone: the same
    checks and verdict as in the evaluation of every site at the same moment (without the quorum)."""
    study = active_study(p, quorum=2)
    site_c = Site.objects.create(name="Karolinska", code="ki", timezone="Europe/Stockholm")
    participation = study.participations.get(site=p.site_b)
    services.participation_suspend(actor=p.site_b_admin, participation=participation, reason="Audit.")
    moment = timezone.now()
    every_site = evaluate(study, "aggregate", moment=moment)
    quorum = [c for c in every_site.study_checks if c.name == "quorum"]
    assert quorum and not quorum[0].passed  # one of two sites eligible, quorum 2
    for site, eligible in ((p.site_a, True), (p.site_b, False), (site_c, False)):  # eligible, suspended, uninvited
        one = evaluate(study, action, site=site, moment=moment)
        expected_checks = every_site.study_checks if action == "aggregate" else every_site.study_checks[:-1]
        assert one.study_checks == expected_checks
        assert one.sites == ((every_site.for_site(site.pk),) if site != site_c else one.sites)
        assert one.allowed is (eligible and action != "aggregate")
    assert failures(evaluate(study, "submit_update", site=site_c)) == [
        ("participation", "Karolinska", "The site is not taking part in this study.")]
