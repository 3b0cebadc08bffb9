"""A site's agent declining a round under its own policy (POST /api/agent/rounds/<id>/decline/), shown to the
PI on the study page; and the site's own side of the ledger (GET /api/agent/ledger/?study=), audited."""

from aggregation.models import RoundDecline
from consortium.audit.models import AuditOutcome
from tests.aggregation.support import agent_for, open_round, submit, third_site
from tests.aggregation.test_api_agent import agent_client
from tests.api_support import assert_error
from tests.support import events_after, last_seq


def decline(plaintext: str, round_id: int, reason: object = "the policy requires secure aggregation"):
    return agent_client(plaintext).post(f"/api/agent/rounds/{round_id}/decline/", {"reason": reason}, format="json")


def test_a_declined_round_is_recorded_audited_and_shown_on_the_study_page(fed, client):
    round_ = open_round(fed.study)
    mark = last_seq()
    response = decline(fed.plaintext_a, round_.pk)
    assert response.status_code == 201 and response.json() == {"round_id": round_.pk, "status": "declined"}
    (row,) = RoundDecline.objects.all()
    assert (row.site, row.round, row.reason) == (fed.p.site_a, round_, "the policy requires secure aggregation")
    [event] = [e for e in events_after(mark) if e.action == "aggregation.round.declined"]
    assert (event.site_id, event.study_id, event.details["reason"]) == (fed.p.site_a.pk, fed.study.pk, row.reason)
    client.force_login(fed.p.pi)
    page = client.get(f"/studies/{fed.study.pk}/").content.decode()
    assert 'data-declined-site="amc"' in page and "the policy requires secure aggregation" in page
    # Once is enough: a second decline is a clear 409, audited.
    mark = last_seq()
    assert_error(decline(fed.plaintext_a, round_.pk), 409, "already_declined")
    assert [(e.action, e.outcome) for e in events_after(mark)] == [("aggregation.round.decline", AuditOutcome.DENIED)]


def test_a_decline_needs_a_reason_and_a_round_of_the_sites_study(fed):
    round_ = open_round(fed.study)
    assert_error(decline(fed.plaintext_a, round_.pk, reason="   "), 400, "validation_failed", mentions="reason")
    _, outsider = agent_for(fed.p, third_site(fed.p))
    assert_error(decline(outsider, round_.pk), 404)
    assert not RoundDecline.objects.exists()


def test_the_agent_reads_its_own_sites_contributions_only_and_the_read_is_audited(fed):
    round_ = open_round(fed.study)
    update, _ = submit(fed.agent_a, round_, num_examples=12)
    submit(fed.agent_b, round_, num_examples=30)
    mark = last_seq()
    response = agent_client(fed.plaintext_a).get(f"/api/agent/ledger/?study={fed.study.pk}")
    assert response.status_code == 200
    [row] = response.json()
    assert (row["round"], row["update_sha256"], row["num_examples"]) == (1, update.sha256, 12)
    assert row["base_version"] == 0 and row["base_sha256"] == round_.base_version.sha256
    assert [e.action for e in events_after(mark)] == ["aggregation.contributions.read"]
    _, outsider = agent_for(fed.p, third_site(fed.p))
    assert_error(agent_client(outsider).get(f"/api/agent/ledger/?study={fed.study.pk}"), 404)
    assert_error(agent_client(fed.plaintext_a).get("/api/agent/ledger/"), 400)
