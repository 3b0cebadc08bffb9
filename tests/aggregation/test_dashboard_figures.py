"""The live dashboard's first render (`aggregation.dashboard`): the figures a PI or site admin reads, built
from rounds run through the real services. Three sites; round 1 closes into v1 without site C; in round 2
site C's update is refused, site A is revoked before aggregation (its update excluded, the round blocked);
round 3 opens for B and C only."""

from dataclasses import dataclass
from typing import Any

import pytest

from aggregation.dashboard import CELL_STATES, gate_panel, study_dashboard
from aggregation.events import RoundEventKind
from aggregation.models import ModelVersion, Round, Update
from aggregation.services import model_download, round_aggregate
from consortium.errors import Conflict
from sites.agents import AgentPrincipal
from sites.models import Site
from studies import services as study_services
from studies.choices import EventKind
from studies.event_registry import event_sentence
from studies.models import Participation, Study, StudyEvent
from tests.aggregation.support import (
    GOOD_METRICS,
    agent_for,
    open_round,
    submit,
    third_site,
    three_site_study,
)
from tests.base import Personas

pytestmark = pytest.mark.usefixtures("no_broker")

REVOKED = "Consent withdrawn by the hospital board."
# What each site reports about the model it downloaded (its held-out split), per base version.
BASE = {
    0: {"amc": {"val_auc": 0.70, "val_accuracy": 0.60, "val_loss": 0.60, "val_examples": 20},
        "charite": {"val_auc": 0.80, "val_accuracy": 0.70, "val_loss": 0.50, "val_examples": 60}},
    1: {"amc": {"val_auc": 0.75, "val_accuracy": 0.65, "val_loss": 0.55, "val_examples": 20},
        "charite": {"val_auc": 0.90, "val_accuracy": 0.80, "val_loss": 0.40, "val_examples": 60}},
}


@dataclass
class History:
    study: Study
    agents: dict[str, AgentPrincipal]
    site_ids: dict[str, int]
    rounds: list[Round]


def _submit(agents: dict[str, AgentPrincipal], round_: Round, code: str, num_examples: int) -> Update:
    base = BASE[round_.base_version.number][code]
    return submit(agents[code], round_, num_examples=num_examples, metrics={**GOOD_METRICS, "base": base})[0]


def run_history(p: Personas) -> History:
    """Round 1: A (after downloading the model) and B submit, C does not; aggregated into v1. Round 2: C's
    update is refused (stale base model), A and B submit, A is revoked, A's update is excluded and the
    round is blocked below the quorum. Round 3 opens for B and C."""
    site_c = third_site(p)
    study = three_site_study(p, site_c)
    sites = {"amc": p.site_a, "charite": p.site_b, "ki": site_c}
    agents = {code: agent_for(p, site)[0] for code, site in sites.items()}
    first = open_round(study)
    model_download(actor=agents["amc"], round_id=first.pk)
    _submit(agents, first, "amc", 30)
    _submit(agents, first, "charite", 90)
    assert round_aggregate(round_id=first.pk) is not None
    second = Round.objects.get(study=study, number=2)
    with pytest.raises(Conflict):
        submit(agents["ki"], second, base_version=0)
    _submit(agents, second, "amc", 30)
    _submit(agents, second, "charite", 90)
    study_services.participation_revoke(actor=p.site_a_admin, reason=REVOKED,
                                        participation=Participation.objects.get(study=study, site=p.site_a))
    assert round_aggregate(round_id=second.pk) is None
    assert open_round(study).number == 3
    return History(study, agents, {code: site.pk for code, site in sites.items()},
                   list(Round.objects.filter(study=study).order_by("number")))


def trace(figure: dict[str, Any], meta: str) -> dict[str, Any]:
    return next(t for t in figure["data"] if t.get("meta") == meta)


def xy(figure: dict[str, Any], meta: str) -> dict[Any, Any]:
    found = trace(figure, meta)
    return dict(zip(found["x"], found["y"], strict=True))


@pytest.fixture(name="history")
def history_fixture(p) -> History:
    return run_history(p)


def test_the_global_metric_of_each_version_is_the_mean_of_the_sites_weighted_by_validation_rows(history):
    figure = study_dashboard(history.study).figures["global"]
    auc, accuracy, loss = xy(figure, "val_auc"), xy(figure, "val_accuracy"), xy(figure, "val_loss")
    assert sorted(auc) == [0, 1], "v0 (closed round 1) and v1 (blocked round 2); v2 does not exist"
    assert auc[0] == pytest.approx((0.70 * 20 + 0.80 * 60) / 80)
    assert auc[1] == pytest.approx((0.75 * 20 + 0.90 * 60) / 80)
    assert accuracy[1] == pytest.approx((0.65 * 20 + 0.80 * 60) / 80)
    assert loss[0] == pytest.approx((0.60 * 20 + 0.50 * 60) / 80)
    assert trace(figure, "val_loss")["yaxis"] == "y2", "loss has its own scale"
    assert "Model version" in figure["layout"]["xaxis"]["title"]["text"]


def test_a_version_shows_no_partial_mean_while_its_round_is_still_open(p):
    site_c = third_site(p)
    study = three_site_study(p, site_c)
    round_ = open_round(study)
    submit(agent_for(p, p.site_a)[0], round_, metrics={**GOOD_METRICS, "base": BASE[0]["amc"]})
    assert ModelVersion.objects.get(study=study, number=0).evaluation["global"]["val_auc"] == pytest.approx(0.70)
    dashboard = study_dashboard(study)
    assert dashboard.points["global"] == 0 and dashboard.points["sites"] == 0
    assert dashboard.figures["global"]["layout"]["annotations"], "the chart says why it is empty"


def test_each_site_has_its_own_line_and_the_band_spans_the_lowest_to_the_highest_site(history):
    figure = study_dashboard(history.study).figures["sites"]
    amc, charite = history.site_ids["amc"], history.site_ids["charite"]
    assert xy(figure, f"site:{amc}") == {0: 0.70, 1: 0.75}
    assert xy(figure, f"site:{charite}") == {0: 0.80, 1: 0.90}
    assert not [t for t in figure["data"] if t.get("meta") == f"site:{history.site_ids['ki']}"], "C evaluated nothing"
    assert xy(figure, "band:max") == {0: 0.80, 1: 0.90} and xy(figure, "band:min") == {0: 0.70, 1: 0.75}
    assert trace(figure, "band:min")["fill"] == "tonexty"
    assert trace(figure, "band:min")["text"][1] == "2 sites, SD 0.075"


def test_participation_counts_the_eligible_sites_that_submitted(history):
    dashboard = study_dashboard(history.study)
    bars = trace(dashboard.figures["participation"], "rate")
    assert bars["x"] == [1, 2, 3]
    assert bars["customdata"] == [[2, 3], [1, 2], [0, 2]], "round 2: A was no longer eligible at aggregation"
    assert bars["y"] == pytest.approx([200 / 3, 50, 0])
    assert dashboard.progress.number == 3 and dashboard.progress.live
    assert (dashboard.progress.submitted, dashboard.progress.eligible) == (0, 2)


def test_elapsed_time_runs_from_the_download_and_skips_updates_without_one(history):
    figure = study_dashboard(history.study).figures["elapsed"]
    update = Update.objects.get(round=history.rounds[0], site_id=history.site_ids["amc"])
    assert update.downloaded_at is not None
    assert xy(figure, f"site:{history.site_ids['amc']}") == {
        1: pytest.approx((update.received_at - update.downloaded_at).total_seconds())}
    assert [t["meta"] for t in figure["data"]] == [f"site:{history.site_ids['amc']}"], "B never downloaded first"


def test_weight_norms_show_each_sites_update_beside_the_global_model_it_produced(history):
    figure = study_dashboard(history.study).figures["norms"]
    for code in ("amc", "charite"):
        norms = dict(Update.objects.filter(site_id=history.site_ids[code], round__study=history.study)
                     .values_list("round__number", "weight_norm"))
        assert xy(figure, f"site:{history.site_ids[code]}") == norms and set(norms) == {1, 2}
    v1 = ModelVersion.objects.get(study=history.study, number=1)
    assert xy(figure, "global") == {1: pytest.approx(v1.provenance["weight_norm"])}, "round 2 produced no model"


def test_the_heatmap_marks_submitted_excluded_refused_and_missing_with_reasons(history):
    dashboard = study_dashboard(history.study)
    heatmap = dashboard.figures["heatmap"]["data"][0]
    assert heatmap["x"] == [1, 2, 3] and list(heatmap["y"]) == ["Amsterdam UMC", "Charité Berlin", "Karolinska"]
    states = [[CELL_STATES[code] for code in row] for row in heatmap["z"]]
    assert states == [["submitted", "excluded", "missing"],
                      ["submitted", "submitted", "missing"],
                      ["missing", "refused", "missing"]]
    assert REVOKED in heatmap["text"][0][1], "the exclusion says why"
    assert "trains from model v1, not v0" in heatmap["text"][2][1], "the refusal says why"
    assert heatmap["text"][0][2] == "missing: not eligible" and heatmap["text"][2][2] == "missing: no update"
    assert dashboard.points["heatmap"] == 3
    assert dashboard.state["eligible_by_round"][3] == sorted([history.site_ids["charite"], history.site_ids["ki"]])


def test_the_governance_panel_shows_the_revoked_site_red_with_the_reason(history):
    gate = study_dashboard(history.study).gate
    rows = {row.site_id: row for row in gate.sites}
    amc = rows[history.site_ids["amc"]]
    assert not amc.eligible and rows[history.site_ids["charite"]].eligible
    assert any(REVOKED in check.reason and not check.passed for check in amc.checks)
    assert gate.allowed and [check.name for check in gate.study_checks] == ["study_active", "approvals", "dpia",
                                                                            "quorum"]


def test_the_panel_reads_a_gate_evaluated_event_the_same_way(history):
    """The browser redraws the panel from `gate.evaluated` events: the same shape as the first render."""
    event = StudyEvent.objects.filter(study=history.study, kind=EventKind.GATE_EVALUATED).order_by("-seq").first()
    panel = gate_panel(event.payload["gate"])
    assert panel == study_dashboard(history.study, moment=panel.moment).gate


def test_the_dashboard_starts_from_the_newest_event_and_feeds_the_last_ones_newest_first(history):
    dashboard = study_dashboard(history.study)
    newest = StudyEvent.objects.filter(study=history.study).order_by("-seq").first()
    assert dashboard.last_event_id == newest.seq
    assert [item.id for item in dashboard.feed] == sorted((item.id for item in dashboard.feed), reverse=True)
    assert dashboard.feed[0].id == newest.seq and len(dashboard.feed) == 30
    blocked = next(item for item in dashboard.feed if item.kind == RoundEventKind.ROUND_BLOCKED)
    assert blocked.text == "Round 2 blocked: Only 1 eligible updates; the quorum is 2." and blocked.tone == "bad"


@pytest.mark.parametrize(("kind", "data", "sentence"), [
    (RoundEventKind.UPDATE_RECEIVED, {"round": 4, "site": "Amsterdam UMC", "num_examples": 30, "submitted": 1,
                                 "eligible": 3}, "Amsterdam UMC submitted its update to round 4 (30 examples): "
                                                 "1 of 3 eligible sites in."),
    (RoundEventKind.ROUND_METRICS, {"evaluated_version": 2, "global": {"val_auc": 0.81234, "val_accuracy": 0.7}},
     "Model v2 on the sites' held-out data: AUC 0.812, accuracy 0.700."),
    (EventKind.PARTICIPATION_CHANGED, {"site": "Karolinska", "before": "granted", "after": "revoked",
                                       "reason": "No consent.", "by": "site_b_admin"},
     "Karolinska's participation: granted → revoked (No consent.), by site_b_admin."),
    ("something.new", {}, "something.new"),
])
def test_each_event_reads_as_a_sentence(kind, data, sentence):
    assert event_sentence(kind, data) == sentence


HOSTILE = '%{customdata} <b>Bad</b> & <img src=x onerror=alert(1)> 100%'


def test_a_site_name_reaches_every_figure_as_text_never_as_plotly_markup_or_placeholder(history):
    """plotly.js substitutes `%{...}` in a hovertemplate and renders `<b>`/`<a>` in labels, then decodes
    entities: a name must go in as entities, so the chart shows it exactly as the site is called."""
    Site.objects.filter(pk=history.site_ids["amc"]).update(name=HOSTILE)
    Update.objects.filter(site_id=history.site_ids["amc"]).update(exclusion_reason="<i>%{x}</i>")
    figures = study_dashboard(history.study).figures
    escaped = "&#37;{customdata} &lt;b&gt;Bad&lt;/b&gt; &amp; &lt;img src=x onerror=alert(1)&gt; 100&#37;"
    for name in ("sites", "elapsed", "norms"):
        line = trace(figures[name], f"site:{history.site_ids['amc']}")
        assert line["name"] == escaped
        assert line["hovertemplate"].startswith(f"{escaped}: %{{y:.3f}}")
        assert line["hovertemplate"].count("%{") == 2, "only the chart's own placeholders (y and x)"
    heatmap = figures["heatmap"]["data"][0]
    assert escaped in list(heatmap["y"])
    assert heatmap["text"][list(heatmap["y"]).index(escaped)][1] == "excluded: &lt;i&gt;&#37;{x}&lt;/i&gt;"
    assert not any("%{" in cell or "<" in cell for row in heatmap["text"] for cell in row)
