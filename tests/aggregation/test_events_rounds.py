"""What a round tells the study's live dashboard: the events, in order, with the figures the charts
draw (times, counts, metrics, norms) and never a weight."""

import pytest

from aggregation.events import RoundEventKind
from aggregation.models import ModelVersion, Update
from aggregation.services import model_download, round_aggregate
from consortium.errors import Conflict
from studies import services as study_services
from studies.choices import EventKind
from studies.models import StudyEvent
from tests.aggregation.support import (
    GOOD_METRICS,
    agent_for,
    open_round,
    submit,
    third_site,
    three_site_study,
)

pytestmark = pytest.mark.usefixtures("no_broker")

BASE_A = {"val_auc": 0.70, "val_accuracy": 0.60, "val_loss": 0.65, "val_examples": 20}
BASE_B = {"val_auc": 0.90, "val_accuracy": 0.80, "val_loss": 0.45, "val_examples": 10}


def published(study, after: int = 0) -> list[StudyEvent]:
    return list(StudyEvent.objects.filter(study=study, seq__gt=after).order_by("seq"))


def head(study) -> int:
    return StudyEvent.objects.filter(study=study).order_by("-seq").values_list("seq", flat=True).first() or 0


def test_a_round_publishes_each_step_in_order_with_the_figures_the_charts_need(fed):
    mark = head(fed.study)
    round_ = open_round(fed.study)
    model_download(actor=fed.agent_a, round_id=round_.pk)
    submit(fed.agent_a, round_, num_examples=30, metrics={**GOOD_METRICS, "base": BASE_A})
    submit(fed.agent_b, round_, num_examples=10, metrics={**GOOD_METRICS, "base": BASE_B})
    version = round_aggregate(round_id=round_.pk)

    events = published(fed.study, mark)
    assert [e.seq for e in events] == list(range(mark + 1, mark + 1 + len(events)))  # no gaps
    assert [e.kind for e in events] == [
        RoundEventKind.ROUND_OPENED, EventKind.GATE_EVALUATED,
        RoundEventKind.UPDATE_RECEIVED, RoundEventKind.UPDATE_RECEIVED, RoundEventKind.AGGREGATION_STARTED,
        EventKind.GATE_EVALUATED, RoundEventKind.AGGREGATION_FINISHED, RoundEventKind.ROUND_METRICS,
        RoundEventKind.ROUND_CLOSED,
        RoundEventKind.ROUND_OPENED, EventKind.GATE_EVALUATED,
    ]
    opened, _, received_a, received_b = events[:4]
    assert opened.payload["round"] == 1 and opened.payload["eligible"] == 2
    assert {s["site_id"] for s in opened.payload["eligible_sites"]} == {fed.p.site_a.pk, fed.p.site_b.pk}
    update_a = Update.objects.get(round=round_, site=fed.p.site_a)
    assert received_a.payload["elapsed_seconds"] == pytest.approx(
        (update_a.received_at - update_a.downloaded_at).total_seconds())
    assert received_b.payload["elapsed_seconds"] is None  # site B never downloaded through the API
    assert (received_a.payload["submitted"], received_b.payload["submitted"]) == (1, 2)
    assert received_a.payload["num_examples"] == 30 and received_a.payload["metrics"]["val_auc"] == 0.85
    assert received_a.payload["weight_norm"] == pytest.approx(update_a.weight_norm)

    finished, metrics = events[6], events[7]
    assert finished.payload["version"] == version.number == 1 and finished.payload["duration_seconds"] >= 0
    assert metrics.payload["evaluated_version"] == 0
    assert metrics.payload["global"]["val_auc"] == pytest.approx((0.70 * 20 + 0.90 * 10) / 30)
    assert metrics.payload["evaluated_by_site"][str(fed.p.site_b.pk)]["val_auc"] == 0.90
    assert metrics.payload["global_weight_norm"] == pytest.approx(version.provenance["weight_norm"])
    assert metrics.payload["sites"][str(fed.p.site_a.pk)]["num_examples"] == 30
    assert events[-2].payload["round"] == 2 and events[-2].payload["base_version"] == 1


def test_no_event_carries_a_weight(fed):
    round_ = open_round(fed.study)
    submit(fed.agent_a, round_)
    submit(fed.agent_b, round_)
    round_aggregate(round_id=round_.pk)
    text = " ".join(str(e.payload) for e in published(fed.study))
    assert "tensor" not in text.lower() and ".safetensors" not in text
    for name in ModelVersion.objects.get(study=fed.study, number=1).spec:
        assert f"'{name}'" not in text, f"a tensor name ({name}) reached the event log"


def test_a_refused_update_is_published_with_its_reason(fed):
    round_ = open_round(fed.study)
    submit(fed.agent_a, round_)
    mark = head(fed.study)
    with pytest.raises(Conflict):
        submit(fed.agent_a, round_, key="another-key")
    [event] = published(fed.study, mark)
    assert event.kind == RoundEventKind.UPDATE_REFUSED
    assert event.payload["site_id"] == fed.p.site_a.pk and event.payload["round"] == round_.number
    assert event.payload["code"] == "duplicate_update" and "one per site per round" in event.payload["reason"]


def test_an_excluded_update_is_published_with_the_sites_reasons(p):
    site_c = third_site(p)
    study = three_site_study(p, site_c)
    agents = [agent_for(p, site)[0] for site in (p.site_a, p.site_b, site_c)]
    round_ = open_round(study)
    for agent in agents:
        submit(agent, round_)
    study_services.participation_revoke(actor=p.site_b_admin, participation=study.participations.get(site=site_c),
                                        reason="Consent withdrawn.")
    mark = head(study)
    round_aggregate(round_id=round_.pk)
    excluded = [e for e in published(study, mark) if e.kind == RoundEventKind.UPDATE_EXCLUDED]
    assert [(e.payload["site_id"], e.payload["reason"]) for e in excluded] == [
        (site_c.pk, "Participation is revoked. Consent withdrawn.")]


def test_a_blocked_round_is_published_with_its_reason_and_the_gate(fed):
    round_ = open_round(fed.study)
    submit(fed.agent_a, round_, metrics={**GOOD_METRICS, "base": BASE_A})
    submit(fed.agent_b, round_, metrics={**GOOD_METRICS, "base": BASE_B})
    study_services.participation_revoke(actor=fed.p.site_a_admin, participation=fed.participation(fed.p.site_a),
                                        reason="Consent withdrawn.")
    mark = head(fed.study)
    round_aggregate(round_id=round_.pk)
    after = published(fed.study, mark)
    [blocked] = [e for e in after if e.kind == RoundEventKind.ROUND_BLOCKED]
    assert blocked.payload["reason"] == "Only 1 eligible updates; the quorum is 2."
    assert blocked.payload["gate"]["allowed"] is False
    # No new model, yet the sites' evaluation of the one they trained from still reaches the chart.
    [metrics] = [e for e in after if e.kind == RoundEventKind.ROUND_METRICS]
    assert metrics.payload["version"] is None and metrics.payload["evaluated_version"] == 0
    assert metrics.payload["global"]["val_auc"] == pytest.approx((0.70 * 20 + 0.90 * 10) / 30)
