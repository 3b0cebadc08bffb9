"""The audit log REST API: auditors, DPOs and consortium admins read it (paginated, filtered) and
export it as CSV; both reads are themselves audited, and anyone else is refused with the attempt audited."""

import csv
import io

import pytest

from consortium.audit.models import AuditEvent, AuditOutcome
from tests.api_support import assert_anonymous_refused, assert_error, client, nothing_changes
from tests.base import draft_study

LIST, EXPORT = "/api/audit/events/", "/api/audit/events.csv"


@pytest.mark.parametrize("url", [LIST, EXPORT])
def test_it_refuses_anonymous_callers_with_a_json_401(p, url):
    with nothing_changes():
        assert_anonymous_refused(client().get(url))


@pytest.mark.parametrize(("url", "attempt"), [(LIST, "consortium.audit.api_view"),
                                              (EXPORT, "consortium.audit.api_export")])
@pytest.mark.parametrize("who", ["pi", "site_a_admin", "outsider"])
def test_it_refuses_the_log_to_anyone_but_its_readers_and_audits_the_attempt(p, url, attempt, who):
    with nothing_changes(denied=attempt) as events:
        response = client(getattr(p, who)).get(url)
    assert_error(response, 403, "forbidden", mentions="Only auditors")
    assert events[0].actor_user_id == getattr(p, who).pk


@pytest.mark.parametrize("who", ["auditor", "dpo", "admin"])
def test_it_lists_the_log_newest_first_for_its_readers_and_records_the_read(p, who):
    draft_study(p)
    total = AuditEvent.objects.count()
    body = client(getattr(p, who)).get(LIST, {"page_size": 2}).json()
    assert body["count"] == total
    assert [row["seq"] for row in body["results"]] == [total, total - 1]
    assert body["next"].endswith("page=2&page_size=2")
    read = AuditEvent.objects.order_by("-seq").first()
    assert (read.action, read.outcome, read.actor_user_id) == ("consortium.audit.api_viewed", AuditOutcome.OK,
                                                              getattr(p, who).pk)
    assert read.details == {"via": "api", "filters": {"study_id": None, "action_prefix": ""}, "events": 2}


def test_it_filters_the_log_by_study_and_action_prefix(p):
    study, other = draft_study(p), draft_study(p, title="Other")
    body = client(p.auditor).get(LIST, {"study": study.pk, "action": "studies.agreement."}).json()
    assert [(row["action"], row["study_id"]) for row in body["results"]] == [("studies.agreement.published", study.pk)]
    assert other.pk != study.pk
    read = AuditEvent.objects.order_by("-seq").first()
    assert (read.action, read.study_id) == ("consortium.audit.api_viewed", study.pk)


def test_it_refuses_a_malformed_filter_with_a_clear_400(p):
    with nothing_changes():
        response = client(p.auditor).get(LIST, {"study": "sepsis"})
    assert_error(response, 400, "validation_failed", mentions="study: A valid integer is required")


def test_it_exports_the_log_as_csv_and_records_the_export(p):
    study = draft_study(p)
    before = AuditEvent.objects.count()
    response = client(p.auditor).get(EXPORT, {"study": study.pk})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [row["action"] for row in rows] == ["studies.study.created", "studies.agreement.published"]
    assert rows[0]["hash"] == AuditEvent.objects.get(seq=int(rows[0]["seq"])).hash
    export = AuditEvent.objects.get(seq=before + 1)
    assert (export.action, export.actor_user_id, export.details["events"]) == (
        "consortium.audit.api_exported", p.auditor.pk, 2)
