"""The gate as things stood at a moment: every governed record is read from its history, so a revocation,
an expiry or a renewal changes the answer from the moment it happened, not before."""

from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from studies import services
from studies.governance import evaluate
from studies.models import Participation, Study
from tests.api_support import assert_error, client
from tests.base import Personas, activate, draft_study, govern_site
from tests.support import events_after, last_seq

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SECOND, HOUR = timedelta(seconds=1), timedelta(hours=1)


def eligible(study: Study, site, at: datetime) -> bool:
    verdict = evaluate(study, site=site, at=at).for_site(site.pk)
    return verdict is not None and verdict.eligible


def reasons(study: Study, site, at: datetime) -> list[str]:
    return [check.reason for check in evaluate(study, site=site, at=at).for_site(site.pk).failures]


@pytest.fixture
def study(p: Personas) -> Study:
    """Governed and active since T0 (the clock runs on from there): site A's ethics for 3 days, B's for a year."""
    with time_machine.travel(T0, tick=True):
        study = draft_study(p, quorum=1)
        govern_site(p, study, p.site_a, days=3)
        govern_site(p, study, p.site_b)
        return activate(p, study)


def test_it_answers_as_things_stood_before_and_after_a_revocation(p, study, django_assert_num_queries):
    participation = Participation.objects.get(study=study, site=p.site_a)
    with time_machine.travel(T0 + timedelta(days=1), tick=True):
        services.participation_revoke(actor=p.site_a_admin, participation=participation, reason="Board decision.")
    t1 = Participation.objects.get(pk=participation.pk).decided_at
    # The live gate's eight (with protocol reviews and data sets), the study as it stood and the sites: whatever
    # their number.
    with django_assert_num_queries(10):
        evaluate(study, at=t1)
    assert eligible(study, p.site_a, t1 - HOUR)
    assert not eligible(study, p.site_a, t1 + SECOND)
    assert reasons(study, p.site_a, t1 + SECOND) == ["Participation is revoked. Board decision."]
    # Judged on today's records, the same moment would already count the revocation: history is what tells them apart.
    assert not evaluate(study, site=p.site_a, moment=t1 - HOUR).for_site(p.site_a.pk).eligible
    assert eligible(study, p.site_b, t1 + SECOND)


def test_it_answers_as_things_stood_around_an_expiry_and_a_renewal(p, study):
    expiry = study.ethics_approvals.get(site=p.site_a).valid_until
    assert eligible(study, p.site_a, expiry - HOUR)
    assert not eligible(study, p.site_a, expiry + SECOND)
    assert "expired" in reasons(study, p.site_a, expiry + SECOND)[0]
    renewed = expiry + timedelta(days=1)
    with time_machine.travel(renewed, tick=True):
        approval = services.ethics_record(
            actor=p.site_a_admin, participation=Participation.objects.get(study=study, site=p.site_a),
            reference="IRB-amc-2", valid_from=expiry, valid_until=expiry + timedelta(days=365))
    t1 = approval.recorded_at
    # The renewal covers the gap, but it did not exist an hour before it was recorded: then, site A was out.
    assert not eligible(study, p.site_a, t1 - HOUR)
    assert evaluate(study, site=p.site_a, moment=t1 - HOUR).for_site(p.site_a.pk).eligible  # today's records
    assert eligible(study, p.site_a, t1 + SECOND)
    assert eligible(study, p.site_a, expiry - HOUR)  # the first approval, as it stood then


def test_it_reports_a_study_that_did_not_exist_yet(p, study):
    result = evaluate(study, at=T0 - HOUR)
    assert (result.allowed, result.as_of, [c.reason for c in result.failures]) == (
        False, True, ["The study did not exist yet at that moment."])


def test_it_follows_the_studys_own_status_as_it_was(p, study):
    with time_machine.travel(T0 + timedelta(days=1), tick=True):
        services.study_suspend(actor=p.pi, study=study, justification="Data breach at a site.")
    suspended_at = Study.objects.get(pk=study.pk).status_changed_at
    assert evaluate(study, at=suspended_at - HOUR).allowed
    assert [c.name for c in evaluate(study, at=suspended_at + SECOND).failures][:1] == ["study_active"]


def test_the_gate_api_takes_a_moment_and_records_it(p, study):
    at = (T0 + 2 * HOUR).isoformat()
    mark = last_seq()
    response = client(p.dpo).get(f"/api/studies/{study.pk}/gate/", {"at": at})
    assert response.status_code == 200
    body = response.json()
    assert (body["as_of"], datetime.fromisoformat(body["moment"]), body["allowed"]) == (True, T0 + 2 * HOUR, True)
    [event] = events_after(mark)
    assert (event.action, datetime.fromisoformat(event.details["at"])) == ("studies.gate.viewed", T0 + 2 * HOUR)


@pytest.mark.parametrize("at", ["yesterday", "2026-03-02T09:00:00", "2026-13-40T00:00:00Z"])
def test_the_gate_api_refuses_a_malformed_or_naive_moment(p, study, at):
    mark = last_seq()
    assert_error(client(p.dpo).get(f"/api/studies/{study.pk}/gate/", {"at": at}), 400, "validation_failed",
                 mentions="at")
    assert events_after(mark) == []
