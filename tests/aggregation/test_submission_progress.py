"""A round's progress after each submission (`rounds.submission_progress`): the round waits for the sites the
gate allowed at its opening, a submission proves it incomplete by asking the gate about a few of the sites
still missing (never about every site), and it completes only on every site's verdict at that moment."""

from django.db import connection
from django.test.utils import CaptureQueriesContext

from aggregation.choices import RoundStatus
from aggregation.models import Round
from studies import services as study_services
from studies.models import StudyEvent
from tests.aggregation.support import (
    agent_for,
    open_round,
    record_enqueued,
    submit,
    third_site,
    three_site_round,
    three_site_study,
)


def _status(round_: Round) -> str:
    return Round.objects.get(pk=round_.pk).status


def _received(round_: Round) -> list[tuple[int, int]]:
    return [(e.payload["submitted"], e.payload["eligible"])
            for e in StudyEvent.objects.filter(study=round_.study, kind="update.received").order_by("seq")]


def test_the_round_expects_the_sites_the_gate_allowed_at_its_opening(fed):
    study, round_, site_c = three_site_round(fed.p)
    assert sorted(round_.expected_site_ids) == sorted([fed.p.site_a.pk, fed.p.site_b.pk, site_c.pk])


def test_the_last_eligible_submission_completes_a_round_whose_missing_site_was_suspended_meanwhile(
        fed, monkeypatch, django_capture_on_commit_callbacks):
    enqueued = record_enqueued(monkeypatch)
    study, round_, site_c = three_site_round(fed.p)
    c_agent, _ = agent_for(fed.p, site_c)
    submit(fed.agent_a, round_)
    assert _status(round_) == RoundStatus.OPEN  # B and C are still allowed and missing
    study_services.participation_suspend(actor=fed.p.site_b_admin, participation=study.participations.get(
        site=fed.p.site_b), reason="Paused.")
    with django_capture_on_commit_callbacks(execute=True):
        submit(c_agent, round_)
    assert _status(round_) == RoundStatus.AGGREGATING and enqueued == [round_.pk]
    # Progress as the dashboard is told: of the three sites expected, then of the two the gate allows at the end.
    assert _received(round_) == [(1, 3), (2, 2)]


def test_a_site_allowed_after_the_round_opened_is_waited_for(fed, monkeypatch, django_capture_on_commit_callbacks):
    enqueued = record_enqueued(monkeypatch)
    site_c = third_site(fed.p)
    study = three_site_study(fed.p, site_c, title="Three sites")
    participation_c = study.participations.get(site=site_c)
    study_services.participation_suspend(actor=fed.p.site_b_admin, participation=participation_c, reason="Paused.")
    round_ = open_round(study)
    assert site_c.pk not in round_.expected_site_ids
    study_services.participation_resume(actor=fed.p.site_b_admin, participation=participation_c)
    submit(fed.agent_a, round_)
    submit(fed.agent_b, round_)
    assert _status(round_) == RoundStatus.OPEN, "every site expected at opening submitted, but C is allowed now"
    with django_capture_on_commit_callbacks(execute=True):
        submit(agent_for(fed.p, site_c)[0], round_)
    assert _status(round_) == RoundStatus.AGGREGATING and enqueued == [round_.pk]


def _participation_reads(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if 'FROM "studies_participation"' in q["sql"]]


def _of_some_sites(sql: str) -> bool:
    where = sql.partition(" WHERE ")[2]
    return any(f'"studies_participation"."site_id" {op}' in where for op in ("IN (", "= "))


def test_a_submission_that_leaves_sites_missing_reads_no_other_sites_governance(fed):
    study, round_, site_c = three_site_round(fed.p)
    with CaptureQueriesContext(connection) as first:
        submit(fed.agent_a, round_)
    reads = _participation_reads(first)
    assert reads and all(_of_some_sites(sql) for sql in reads), reads
    with CaptureQueriesContext(connection) as second:
        submit(fed.agent_b, round_)
    assert _status(round_) == RoundStatus.OPEN
    with CaptureQueriesContext(connection) as last:
        submit(agent_for(fed.p, site_c)[0], round_)
    # The last one completes the round: only then is every site judged.
    assert not all(_of_some_sites(sql) for sql in _participation_reads(last))
    assert len(second.captured_queries) == len(first.captured_queries)
