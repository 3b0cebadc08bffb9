"""The audit log page and its CSV export: readers only, filtered, paginated, the chain's verdict shown,
and every read (or refused read) itself recorded."""

import csv
import io

import pytest
from django.urls import reverse

from consortium.audit.log import verify_chain
from consortium.audit.models import AuditEvent, AuditOutcome
from tests.base import draft_study
from tests.pages import client_for, denied, page


def test_it_sends_anonymous_visitors_to_log_in(p, client):
    for url in (reverse("audit-log"), reverse("audit-export")):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize("persona", ["pi", "site_a_admin", "outsider"])
def test_it_answers_403_to_non_readers_and_audits_the_attempt(p, persona):
    user = getattr(p, persona)
    client = client_for(user)
    response = client.get(reverse("audit-log"))
    assert response.status_code == 403
    assert "Only auditors, DPOs and consortium admins read the audit log." in page(response)
    assert client.get(reverse("audit-export")).status_code == 403
    assert denied("consortium.audit.viewed", user) and denied("consortium.audit.exported", user)
    assert not AuditEvent.objects.filter(outcome=AuditOutcome.OK, action__startswith="consortium.audit.").exists()


@pytest.mark.parametrize("persona", ["auditor", "dpo", "admin"])
def test_it_shows_the_log_with_the_chains_verdict_and_records_the_read(p, persona):
    draft_study(p)
    user = getattr(p, persona)
    total = AuditEvent.objects.count()
    body = page(client_for(user).get(reverse("audit-log")))
    # The chain is verified after this read was recorded, so it counts the read too.
    assert f"The chain verifies: {total + 1} events checked" in body
    assert 'data-intact="true"' in body
    assert "studies.study.created" in body
    read = AuditEvent.objects.get(action="consortium.audit.viewed", actor_user=user)
    assert read.details["events"] == min(total, 50)


def test_it_filters_by_study_and_action_prefix(p):
    study = draft_study(p, title="First")
    other = draft_study(p, title="Second")
    body = page(client_for(p.auditor).get(reverse("audit-log"), {"study": study.pk, "action": "studies.agreement"}))
    rows = body.split("<tbody>")[1].split("</tbody>")[0]
    assert "studies.agreement.published" in rows
    assert "studies.study.created" not in rows and "Second" not in rows
    read = AuditEvent.objects.get(action="consortium.audit.viewed")
    assert read.study_id == study.pk and read.details["filters"]["action_prefix"] == "studies.agreement"
    assert other.pk != study.pk


def test_it_paginates_fifty_events_a_page(p):
    for n in range(30):
        draft_study(p, title=f"Study {n}")
    total = AuditEvent.objects.count()
    assert total > 50
    client = client_for(p.auditor)
    first = page(client.get(reverse("audit-log")))
    assert first.count("<tr data-seq=") == 50 and f'data-seq="{total}"' in first
    second = page(client.get(reverse("audit-log"), {"page": 2}))
    assert f'data-seq="{total}"' not in second and 'data-seq="1"' in second


def test_it_shows_a_broken_chain(p, monkeypatch):
    draft_study(p)
    events = list(AuditEvent.objects.order_by("seq"))
    events[2].details = {"tampered": True}
    monkeypatch.setattr("consortium.audit.views.verify_chain", lambda: verify_chain(events))
    body = page(client_for(p.auditor).get(reverse("audit-log")))
    assert 'data-intact="false"' in body and "broken at event #3" in body


def test_it_exports_the_filtered_log_as_csv_and_records_the_export(p):
    study = draft_study(p)
    response = client_for(p.dpo).get(reverse("audit-export"), {"study": study.pk})
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    expected = AuditEvent.objects.filter(study_id=study.pk, action__startswith="studies.").order_by("seq")
    assert [int(r["seq"]) for r in rows] == list(expected.values_list("seq", flat=True))
    assert rows[0]["hash"] == expected.first().hash
    export = AuditEvent.objects.get(action="consortium.audit.exported", actor_user=p.dpo)
    assert export.details["events"] == len(rows) and export.study_id == study.pk
