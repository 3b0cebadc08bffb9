"""The ledger pages (per study, per site), the model card (page and JSON) and the study page's gate as of a
moment: each read recorded, an unknown filter a 400 (recorded), another site's ledger a 404."""

import pytest
from django.urls import reverse

from aggregation.services import round_aggregate
from consortium.audit.models import AuditOutcome
from tests.aggregation.support import open_round, submit
from tests.api_support import client
from tests.pages import client_for, denied, page
from tests.support import events_after, last_seq

pytestmark = pytest.mark.usefixtures("no_broker")


@pytest.fixture
def aggregated(fed):
    """Round 1 aggregated into v1 from A (30 examples) and B (90); round 2 open."""
    round_ = open_round(fed.study)
    submit(fed.agent_a, round_, num_examples=30)
    submit(fed.agent_b, round_, num_examples=90)
    round_aggregate(round_id=round_.pk)
    return fed


def test_the_study_ledger_page_lists_sorts_and_filters_rows_and_records_the_read(aggregated):
    fed = aggregated
    url = reverse("aggregation:ledger", args=[fed.study.pk])
    mark = last_seq()
    text = page(client_for(fed.p.pi).get(url, {"round": 1, "sort": "-weight"}))
    row_a, row_b = f'data-ledger-row="1-{fed.p.site_a.pk}"', f'data-ledger-row="1-{fed.p.site_b.pk}"'
    assert text.index(row_b) < text.index(row_a)
    assert 'data-ledger-row="2-' not in text
    assert "?at=" in text and 'data-gate="aggregation"' in text
    [event] = events_after(mark)
    assert (event.action, event.study_id, event.details["via"], event.details["filters"]) == (
        "aggregation.ledger.viewed", fed.study.pk, "page:ledger", {"round": 1, "sort": "-weight"})
    missing = page(client_for(fed.p.pi).get(url, {"status": "missing"}))
    assert 'data-status="missing"' in missing and 'data-status="submitted"' not in missing


def test_the_ledger_page_refuses_an_unknown_filter_and_records_it(aggregated):
    fed = aggregated
    response = client_for(fed.p.pi).get(reverse("aggregation:ledger", args=[fed.study.pk]), {"since": "monday"})
    assert response.status_code == 400 and "Unknown filter: since" in page(response)
    assert denied("aggregation.ledger.view", fed.p.pi)


def test_the_ledger_page_is_a_404_to_an_outsider(aggregated):
    fed = aggregated
    assert client_for(fed.p.outsider).get(reverse("aggregation:ledger", args=[fed.study.pk])).status_code == 404


def test_the_site_ledger_page_shows_the_sites_rows_to_its_admin_only(aggregated):
    fed = aggregated
    url = reverse("site-ledger", args=[fed.p.site_a.pk])
    mark = last_seq()
    text = page(client_for(fed.p.site_a_admin).get(url))
    assert f'data-ledger-row="1-{fed.p.site_a.pk}"' in text and f'-{fed.p.site_b.pk}"' not in text
    [event] = events_after(mark)
    assert (event.action, event.site_id, event.details["studies"]) == (
        "aggregation.ledger.viewed", fed.p.site_a.pk, [fed.study.pk])
    assert client_for(fed.p.site_b_admin).get(url).status_code == 404


def test_the_model_card_is_linked_from_the_version_page_printable_and_recorded(aggregated):
    fed = aggregated
    version_page = page(client_for(fed.p.pi).get(reverse("aggregation:version", args=[fed.study.pk, 1])))
    card_url = reverse("aggregation:model-card", args=[fed.study.pk, 1])
    assert card_url in version_page
    mark = last_seq()
    text = page(client_for(fed.p.pi).get(card_url))
    assert fed.study.clinical_question in text and fed.study.protocol_sha256() in text
    assert f'data-card-row="{fed.p.site_a.pk}" data-status="submitted"' in text
    [event] = events_after(mark)
    assert (event.action, event.details["version"]) == ("aggregation.model_card.viewed", 1)


def test_the_model_card_json_holds_the_question_protocol_ledger_governance_privacy_and_metrics(aggregated):
    fed = aggregated
    mark = last_seq()
    card = client(fed.p.dpo).get(f"/api/studies/{fed.study.pk}/versions/1/card/").json()
    assert card["study"]["clinical_question"] == fed.study.clinical_question
    assert card["protocol"]["sha256"] == fed.study.protocol_sha256() and card["protocol"]["as_of"]
    assert [(r["site_id"], r["weight"]) for r in card["ledger"]["rows"]] == [(fed.p.site_a.pk, 0.25),
                                                                            (fed.p.site_b.pk, 0.75)]
    assert card["ledger"]["totals"]["included_examples"] == 120
    assert card["governance_at_aggregation"]["allowed"] is True
    assert card["governance_at_aggregation"]["agreement"]["version"] == 1
    assert card["privacy"]["dp_noise_multiplier"] == 0 and card["privacy"]["budget"] is None
    assert set(card["validation"]) == {"sites", "mean"}
    assert [(e.action, e.outcome) for e in events_after(mark)] == [("aggregation.model_card.viewed", AuditOutcome.OK)]
    mark = last_seq()
    assert client(fed.p.dpo).get(f"/api/studies/{fed.study.pk}/versions/9/card/").status_code == 404
    assert [(e.action, e.outcome) for e in events_after(mark)] == [("aggregation.model_card.view",
                                                                    AuditOutcome.DENIED)]


def test_the_study_page_shows_the_gate_as_it_stood_at_a_moment(aggregated):
    fed = aggregated
    url = reverse("studies:detail", args=[fed.study.pk])
    opened = fed.study.rounds_run.get(number=1).opened_at
    text = page(client_for(fed.p.pi).get(url, {"at": opened.isoformat()}))
    assert 'data-testid="gate-as-of"' in text and 'data-allowed="true"' in text
    before = page(client_for(fed.p.pi).get(url, {"at": "2001-01-01T00:00"}))
    assert "The study did not exist yet at that moment." in before
    response = client_for(fed.p.pi).get(url, {"at": "last tuesday"})
    assert response.status_code == 400 and 'data-testid="gate-at-error"' in page(response)
