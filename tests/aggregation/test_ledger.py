"""The contribution ledger of a multi-round study with an exclusion, a refusal and a missing site: one row per
round and site, each resting on an audit event, and its totals reconciled with the audit log alone."""

import csv
import io
import json

import pytest

from aggregation import ledger
from aggregation.models import Round
from aggregation.services import round_aggregate
from consortium.audit.models import AuditEvent, AuditOutcome
from consortium.errors import DomainError
from studies import services as study_services
from tests.aggregation.support import agent_for, open_round, submit, third_site, three_site_study
from tests.api_support import assert_error, client
from tests.support import events_after, last_seq

pytestmark = pytest.mark.usefixtures("no_broker")


@pytest.fixture
def history(p):
    """Three rounds of sites A, B and C (quorum 2). Round 1: C is suspended after submitting, so excluded.
    Round 2: C, still suspended, is refused. Round 3: C, resumed, sends nothing and is missing. Round 4 is open."""
    site_c = third_site(p)
    study = three_site_study(p, site_c)
    agent_a, agent_b, agent_c = (agent_for(p, site)[0] for site in (p.site_a, p.site_b, site_c))
    participation_c = study.participations.get(site=site_c)
    first = open_round(study)
    for agent, examples in ((agent_a, 10), (agent_b, 30), (agent_c, 60)):
        submit(agent, first, num_examples=examples)
    study_services.participation_suspend(actor=p.site_b_admin, participation=participation_c, reason="Audit pending.")
    round_aggregate(round_id=first.pk)
    second = Round.objects.get(study=study, number=2)
    with pytest.raises(DomainError):
        submit(agent_c, second)
    submit(agent_a, second, num_examples=20)
    study_services.participation_resume(actor=p.site_b_admin, participation=participation_c)
    submit(agent_b, second, num_examples=20)
    round_aggregate(round_id=second.pk)
    third = Round.objects.get(study=study, number=3)
    submit(agent_a, third, num_examples=5)
    submit(agent_b, third, num_examples=15)
    round_aggregate(round_id=third.pk)
    return study, site_c


def test_it_has_one_row_per_round_and_site_with_what_happened(p, history, django_assert_num_queries):
    study, site_c = history
    # Rounds, updates, the audit events, the refusals, the study's history, signatures, site names: whatever
    # the number of rounds and sites.
    with django_assert_num_queries(7):
        everything = ledger.study_ledger(study)
    rows, opened = everything[:9], everything[9:]
    table = [(row.round, row.site_id, row.status, row.num_examples, row.weight, row.resulting_version) for row in rows]
    a, b, c = p.site_a.pk, p.site_b.pk, site_c.pk
    assert table == [
        (1, a, "submitted", 10, 0.25, 1), (1, b, "submitted", 30, 0.75, 1), (1, c, "excluded", 60, None, 1),
        (2, a, "submitted", 20, 0.5, 2), (2, b, "submitted", 20, 0.5, 2), (2, c, "refused", None, None, 2),
        (3, a, "submitted", 5, 0.25, 3), (3, b, "submitted", 15, 0.75, 3), (3, c, "missing", None, None, 3),
    ]
    excluded, refused = rows[2], rows[5]
    assert excluded.reason == "Participation is suspended. Audit pending."
    assert "suspended" in refused.reason
    assert {row.protocol_sha256 for row in rows} == {study.protocol_sha256()}
    assert {row.dua_version for row in rows} == {1}
    assert [row.base_version for row in rows[::3]] == [0, 1, 2]
    assert all(row.update_sha256 for row in rows if row.num_examples)
    versions = {v.number: v.sha256 for v in study.model_versions.all()}
    assert all(row.resulting_version_sha256 == versions[row.resulting_version] for row in rows)
    assert all(row.base_version_sha256 == versions[row.base_version] for row in rows)
    assert all(row.gate_at_open and row.gate_at_aggregation for row in rows)
    # The open round: every site eligible when it opened, nothing received yet.
    assert [(row.round, row.status, row.resulting_version, row.gate_at_aggregation) for row in opened] == [
        (4, "missing", None, "")] * 3


def test_its_totals_reconcile_with_the_audit_log(p, history):
    study, _ = history
    rows = ledger.study_ledger(study)
    # Every row rests on an audit event that says the same thing.
    expected_action = {"submitted": "aggregation.model_version.created", "excluded": "aggregation.update.excluded",
                       "refused": "aggregation.update.submit", "missing": "aggregation.round.opened"}
    for row in rows:
        event = AuditEvent.objects.get(seq=row.audit_seq)
        assert event.action == expected_action[row.status], row
        if row.status == "submitted":
            assert {"site_id": row.site_id, "site": row.site, "num_examples": row.num_examples, "weight": row.weight,
                    "update_sha256": row.update_sha256} in event.details["included"]
        elif row.status == "missing":
            assert row.site_id in event.details["eligible_site_ids"]
        else:
            assert (event.site_id, event.details["reason"]) == (row.site_id, row.reason)
            assert event.outcome == (AuditOutcome.DENIED if row.status == "refused" else AuditOutcome.OK)
    # And the totals, from the audit log alone: the sites, examples and weights of every model it created.
    created = AuditEvent.objects.filter(study_id=study.pk, action="aggregation.model_version.created",
                                        details__round__isnull=False)
    included = [site for event in created for site in event.details["included"]]
    excluded = [site for event in created for site in event.details["excluded"]]
    totals = ledger.totals(rows)
    assert totals["included"] == len(included) == 6
    assert totals["included_examples"] == sum(site["num_examples"] for site in included) == 100
    assert totals["weight"] == pytest.approx(sum(site["weight"] for site in included)) == pytest.approx(3.0)
    assert totals["excluded"] == len(excluded) == 1
    assert totals["refused"] == AuditEvent.objects.filter(action="aggregation.update.submit",
                                                          outcome=AuditOutcome.DENIED).count() == 1
    assert (totals["rows"], totals["missing"]) == (12, 4)  # with round 4, open


def test_the_api_serves_it_filtered_and_sorted_as_json_csv_and_jsonl_and_records_each_read(p, history):
    study, site_c = history
    api, url = client(p.auditor), f"/api/studies/{study.pk}/ledger"
    mark = last_seq()
    body = api.get(f"{url}/").json()
    assert len(body["rows"]) == 12 and body["totals"]["included_examples"] == 100
    assert [row["status"] for row in api.get(f"{url}/", {"status": "excluded"}).json()["rows"]] == ["excluded"]
    weights = [row["weight"] for row in api.get(f"{url}/", {"round": 1, "sort": "-weight"}).json()["rows"]]
    assert weights == [0.75, 0.25, None]
    assert [r["round"] for r in api.get(f"{url}/", {"site": site_c.pk}).json()["rows"]] == [1, 2, 3, 4]
    exported = api.get(f"{url}.csv")
    assert exported["Content-Type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(exported.content.decode())))
    assert [(r["round"], r["site_id"], r["status"]) for r in table] == [
        (str(r["round"]), str(r["site_id"]), r["status"]) for r in body["rows"]]
    lines = api.get(f"{url}.jsonl").content.decode().splitlines()
    assert [json.loads(line) for line in lines] == body["rows"]
    actions = [(e.action, e.study_id, e.details["format"]) for e in events_after(mark)]
    assert actions == [("aggregation.ledger.viewed", study.pk, "json")] * 4 + [
        ("aggregation.ledger.exported", study.pk, "csv"), ("aggregation.ledger.exported", study.pk, "jsonl")]


def test_the_site_ledger_shows_one_sites_rows_to_its_admin_and_nobody_else(p, history):
    study, site_c = history
    body = client(p.site_b_admin).get(f"/api/sites/{site_c.pk}/ledger/").json()  # B's admin runs C too
    assert [(r["study_id"], r["round"], r["status"]) for r in body["rows"]] == [
        (study.pk, 1, "excluded"), (study.pk, 2, "refused"), (study.pk, 3, "missing"),
        (study.pk, 4, "missing")]
    mark = last_seq()
    assert_error(client(p.site_a_admin).get(f"/api/sites/{site_c.pk}/ledger/"), 404, "not_found")
    assert [(e.action, e.outcome) for e in events_after(mark)] == [("aggregation.ledger.view", AuditOutcome.DENIED)]


def test_the_ledger_refuses_an_unknown_status_or_sort(p, history):
    study, _ = history
    for params in ({"status": "lost"}, {"sort": "hash"}, {"round": "one"}):
        assert_error(client(p.auditor).get(f"/api/studies/{study.pk}/ledger/", params), 400, "validation_failed")
