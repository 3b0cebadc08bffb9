"""Reads behind a study's live dashboard: the whole history as Plotly figures, the current round's
progress, the gate's verdict per site, and the last events, so a page opened mid-study shows everything;
`static/js/dashboard.js` then extends the same figures from the event stream (docs/events.md).

Two rules keep the first render and the stream in step:
- the newest event id is read *before* the data. Events commit with the change they describe, so every
  event up to that id is in the data read after it; an event after it may be too, and the client applies
  events idempotently (points are upserted by x, a heatmap column is added once).
- the figures show what the events carry: the global metric of a model version appears once a round
  trained from it has ended (its `round.metrics` event), never a partial mean of a live round.

Queries are bounded whatever the number of rounds, sites and events: the newest events, the rounds with
their versions, what the sites sent (statistics, evaluations, updates), the round-opened and refused-update
events, the gate's six, and the details of the updates of the sites shown. At 200 sites and 50 rounds that is
10,000 updates: they are read as plain rows, only the columns every site needs, and the figures are built as
plain dicts (see `NONE`).
"""

import json
import math
import statistics as stats
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.db.models.fields.json import KeyTextTransform
from django.utils import timezone

from aggregation.choices import ROUND_LIVE, UpdateStatus
from aggregation.events import RoundEventKind
from aggregation.models import Evaluation, Round, SiteStatistics, Update
from aggregation.site_summary import SiteSummary, summarise
from consortium.federated.metric_keys import GLOBAL_METRICS, VAL_ACCURACY, VAL_AUC, VAL_AUC_NOTE, VAL_LOSS
from studies.choices import GateAction, GateCheck
from studies.disclosure import FULL, Disclosure, disclose_event
from studies.event_registry import event_sentence, event_tone
from studies.governance import GateResult, evaluate
from studies.models import Study, StudyEvent

FEED_SIZE = 30
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
           "#d62728")
# Heatmap cell states, in the order of their colour codes (z values).
CELL_STATES = ("missing", "refused", "excluded", "submitted")
CELL_COLORS = ("#eef1f4", "#f0b429", "#d64545", "#2f9e5b")
CHECK_LABELS = dict(GateCheck.choices)
GLOBAL_METRIC_LABELS = {VAL_AUC: "AUC", VAL_ACCURACY: "Accuracy", VAL_LOSS: "Loss"}
GRID = "#e6e9ed"
MAX_X_TICKS = 20


@dataclass(frozen=True)
class SiteRef:
    """A site as the charts name and colour it (the same colour in every chart)."""

    site_id: int
    name: str
    color: str


class Sent(NamedTuple):
    """One site's part in a round (its statistics, its evaluation of the final model or its update) as every chart
    reads it: who sent it, whether it counted and, but for an update, when it came. Plain rows, not model
    instances: 200 sites and 50 rounds make 10,000 updates."""

    site_id: int
    site: str
    excluded: bool
    reason: str  # why it was excluded, else what came when ("" for an update: see `Sent.details`)


class UpdateDetail(NamedTuple):
    """What only a site's heatmap row and its lines show of its update to a round, read for those sites alone (a
    summary shows a page of rows and the worst sites' lines)."""

    received_at: datetime
    num_examples: int
    weight_norm: float
    downloaded_at: datetime | None

    @property
    def text(self) -> str:
        return f"{self.num_examples} examples, {_clock(self.received_at)}"


@dataclass(frozen=True)
class RoundView:
    """One round as the charts see it: who was eligible, and each site's cell (state, why)."""

    round: Round
    eligible: frozenset[int] | None
    cells: dict[int, tuple[str, str]]

    @property
    def submitted(self) -> int:
        """Eligible sites that sent their part (an excluded update was sent, then left out)."""
        sent = {site for site, (state, _) in self.cells.items() if state in ("submitted", "excluded")}
        return len(sent & self.eligible) if self.eligible is not None else len(sent)


@dataclass(frozen=True)
class RoundProgress:
    """The newest round: how many eligible sites have submitted, and its deadline."""

    number: int
    kind: str
    status: str
    status_label: str
    reason: str
    submitted: int
    eligible: int
    deadline: datetime
    live: bool

    @property
    def percent(self) -> int:
        return round(100 * self.submitted / self.eligible) if self.eligible else 0


@dataclass(frozen=True)
class CheckRow:
    """One gate check as the governance panel shows it."""

    name: str
    label: str
    passed: bool
    reason: str
    expires_at: datetime | None
    expiring: bool


@dataclass(frozen=True)
class GateSiteRow:
    site_id: int
    site: str
    checks: list[CheckRow]

    @property
    def eligible(self) -> bool:
        return all(check.passed for check in self.checks)


@dataclass(frozen=True)
class GatePanel:
    """The gate's verdict for the study and per site, in the shape `gate.evaluated` events carry."""

    allowed: bool
    moment: datetime
    study_checks: list[CheckRow]
    sites: list[GateSiteRow]


@dataclass(frozen=True)
class FeedItem:
    """One event of the feed, as a sentence."""

    id: int
    kind: str
    at: datetime
    text: str
    tone: str


@dataclass(frozen=True)
class Dashboard:
    """Everything the dashboard page renders; `state` is what the client needs beyond the figures."""

    last_event_id: int
    figures: dict[str, dict[str, Any]]
    points: dict[str, int]
    progress: RoundProgress | None
    gate: GatePanel
    feed: list[FeedItem]
    state: dict[str, Any] = field(default_factory=dict)
    auc_gaps: list[dict[str, Any]] = field(default_factory=list)
    summary: SiteSummary | None = None


def study_dashboard(study: Study, *, moment: datetime | None = None, disclosure: Disclosure = FULL,
                    site_filter: str = "", page: int = 1) -> Dashboard:
    """The dashboard of a study the caller may see, in a fixed number of queries whatever its number of sites,
    showing only the per-site figures `disclosure` allows (`studies.disclosure`): other sites' lines, times,
    counts and cell details are left out, and pooled figures over fewer than k sites are suppressed. Past a
    dozen sites it summarises (`site_summary`): the worst sites' lines, a page of rows, a filter."""
    events = list(StudyEvent.objects.filter(study=study).order_by("-seq")[:FEED_SIZE])  # first: see module doc
    last_id = events[0].seq if events else 0
    rounds = _rounds(study)
    sent = _sent(study)
    opened, refusals = _round_marks(study)
    gate = evaluate(study, GateAction.AGGREGATE, moment=moment)
    now_eligible = frozenset(verdict.site_id for verdict in gate.eligible_sites)
    views = [_disclosed_view(_round_view(r, sent.get(r.pk, ()), opened, refusals, now_eligible), disclosure)
             for r in rounds]
    sites = _sites(gate, sent, opened, refusals)
    summary = summarise(sites, views, now_eligible, site_filter=site_filter, page=page)
    shown = [site for site in summary.lines if disclosure.sees_site(site.site_id)]
    details = _update_details(study, {site.site_id for site in [*summary.rows, *shown]
                                      if disclosure.sees_site(site.site_id)})
    evaluated = _evaluated(rounds)
    every = site_auc_series(evaluated)
    figures = {
        "global": global_metric_figure(evaluated, disclosure),
        "sites": site_metric_figure(every, shown, band=disclosure.full),
        "participation": participation_figure(views),
        "elapsed": elapsed_figure(rounds, details, shown),
        "norms": norms_figure(rounds, details, shown),
        "heatmap": heatmap_figure(views, summary.rows, details),
    }
    points = {name: distinct_x(figure) for name, figure in figures.items()}
    gaps = auc_gaps(evaluated, shown)
    state = {"study": study.pk, "last_event_id": last_id, "palette": PALETTE,
             "sites": [{"id": s.site_id, "name": s.name, "color": s.color} for s in sites],
             "eligible_by_round": {v.round.number: sorted(v.eligible) for v in views if v.eligible is not None},
             "cell_states": CELL_STATES, "check_labels": CHECK_LABELS, "expiry_days": settings.EXPIRY_WARNING_DAYS,
             "auc_gaps": gaps, "summary": summary.as_state()}
    if summary.summarised:
        # Live, the worst sites change as rounds end: the page re-ranks them and draws a line that enters the
        # worst from the AUCs of the sites this viewer may see (`static/js/dashboard.js`).
        state["summary"]["auc"] = {site.site_id: every.get(site.site_id, []) for site in sites
                                   if disclosure.sees_site(site.site_id)}
    panel = gate_panel(gate.as_dict())
    if summary.summarised:
        rows = {site_id: i for i, site_id in enumerate(summary.row_ids)}
        panel = replace(panel, sites=sorted((row for row in panel.sites if row.site_id in rows),
                                            key=lambda row: rows[row.site_id]))
    return Dashboard(last_id, figures, points, _progress(views[-1] if views else None), panel,
                     [feed_item(event, disclosure) for event in events], state, gaps, summary)


# --- reading -------------------------------------------------------------------------------------------


def _rounds(study: Study) -> list[Round]:
    """Every round, oldest first, with its base and produced versions."""
    # Only the parts of the large JSON columns that the charts show, extracted by the database: a round's gate
    # (every check of every site), a version's provenance and its sites' score histograms grow with the sites,
    # and decoding them all took a third of the page at 100 sites and 50 rounds.
    return list(Round.objects.filter(study=study).select_related("base_version", "produced_version")
                .defer("gate_result", *(f"{version}__{name}" for version in ("base_version", "produced_version")
                                        for name in ("evaluation", "provenance", "spec")))
                .annotate(eligible_json=KeyTextTransform("eligible_site_ids", "gate_result"),
                          evaluated_sites_json=KeyTextTransform("sites", "base_version__evaluation"),
                          evaluated_global_json=KeyTextTransform("global", "base_version__evaluation"),
                          produced_norm=KeyTextTransform("weight_norm", "produced_version__provenance"))
                .order_by("number"))


def _sent(study: Study) -> dict[int, list[Sent]]:
    """Per round id, what the sites sent: statistics, evaluations, then updates (the order they fill a cell).
    Statistics and evaluations come once per site in a study (a statistics round, a final evaluation), so
    their times are read here; an update's are read only for the sites shown (`_update_details`)."""
    statistics = SiteStatistics.objects.filter(round__study=study).order_by().values_list(
        "round_id", "site_id", "site__name", "exclusion_reason", "received_at")
    evaluations = Evaluation.objects.filter(round__study=study).order_by().values_list(
        "round_id", "site_id", "site__name", "received_at")
    updates = Update.objects.filter(round__study=study).order_by().values_list(
        "round_id", "site_id", "site__name", "status", "exclusion_reason")
    rows = [
        *((r, Sent(site, name, bool(why), why or f"statistics received {_clock(at)}"))
          for r, site, name, why, at in statistics),
        *((r, Sent(site, name, False, f"final model evaluated {_clock(at)}")) for r, site, name, at in evaluations),
        *((r, Sent(site, name, status == UpdateStatus.EXCLUDED, why)) for r, site, name, status, why in updates)]
    by_round: dict[int, list[Sent]] = {}
    for round_id, row in rows:
        by_round.setdefault(round_id, []).append(row)
    return by_round


def _update_details(study: Study, site_ids: set[int]) -> dict[tuple[int, int], UpdateDetail]:
    """Per (round id, site id), the details of the updates of `site_ids`."""
    if not site_ids:
        return {}
    updates = Update.objects.filter(round__study=study, site_id__in=site_ids).order_by().values_list(
        "round_id", "site_id", "received_at", "num_examples", "weight_norm", "downloaded_at")
    return {(round_id, site_id): UpdateDetail(*rest) for round_id, site_id, *rest in updates}


def _round_marks(study: Study) -> tuple[dict[int, dict[int, str]], dict[int, dict[int, str]]]:
    """Per round id: the sites eligible when it opened ({site id: name}) and the refused submissions
    ({site id: the last reason}), from the event log (a refusal stores no row)."""
    opened: dict[int, dict[int, str]] = {}
    refusals: dict[int, dict[int, str]] = {}
    kinds = (RoundEventKind.ROUND_OPENED, RoundEventKind.UPDATE_REFUSED)
    for kind, data in StudyEvent.objects.filter(study=study, kind__in=kinds).order_by("seq").values_list(
            "kind", "payload"):
        if kind == RoundEventKind.ROUND_OPENED:
            opened[data.get("round_id")] = {s["site_id"]: s["site"] for s in data.get("eligible_sites") or []}
        elif data.get("round_id") is not None and data.get("site_id") is not None:
            refusals.setdefault(data["round_id"], {})[data["site_id"]] = data.get("reason") or "refused"
    return opened, refusals


def _round_view(round_: Round, sent: Iterable[Sent], opened: dict[int, dict[int, str]],
                refusals: dict[int, dict[int, str]], now_eligible: frozenset[int]) -> RoundView:
    """The round's eligible sites: the gate's at aggregation, else the live gate's for a live round, else
    those eligible when it opened; and each site's cell."""
    gated = _json(round_.eligible_json) if hasattr(round_, "eligible_json") else round_.gate_result.get(
        "eligible_site_ids")
    if gated is not None:
        eligible = frozenset(gated)
    elif round_.status in ROUND_LIVE:
        eligible = now_eligible
    else:
        eligible = frozenset(opened[round_.pk]) if round_.pk in opened else None
    cells = {site: ("refused", reason) for site, reason in refusals.get(round_.pk, {}).items()}
    for row in sent:
        cells[row.site_id] = ("excluded" if row.excluded else "submitted", row.reason)
    return RoundView(round_, eligible, cells)


def _disclosed_view(view: RoundView, disclosure: Disclosure) -> RoundView:
    """Other sites' cells keep their state (everyone sees who submitted) but not its details (why, counts, times;
    their updates' are not even read: `_update_details`)."""
    if disclosure.full:
        return view
    cells = {site: cell if disclosure.sees_site(site) else (cell[0], "") for site, cell in view.cells.items()}
    return RoundView(view.round, view.eligible, cells)


def _sites(gate: GateResult, sent: dict[int, list[Sent]], opened: dict[int, dict[int, str]],
           refusals: dict[int, dict[int, str]]) -> list[SiteRef]:
    """Every site the study has invited or heard from, by name, each with its colour."""
    names = {verdict.site_id: verdict.site_name for verdict in gate.sites}
    for rows in sent.values():
        names.update((row.site_id, row.site) for row in rows)
    for eligible in opened.values():
        names.update({site: name for site, name in eligible.items() if site not in names})
    for refused in refusals.values():
        names.update({site: f"Site {site}" for site in refused if site not in names})
    ordered = sorted(names.items(), key=lambda item: (item[1].casefold(), item[0]))
    return [SiteRef(site, name, PALETTE[i % len(PALETTE)]) for i, (site, name) in enumerate(ordered)]


def _progress(view: RoundView | None) -> RoundProgress | None:
    if view is None:
        return None
    r = view.round
    return RoundProgress(r.number, r.kind, r.status, r.get_status_display(), r.status_reason, view.submitted,
                         len(view.eligible or ()), r.deadline, r.status in ROUND_LIVE)


def _clock(moment: datetime) -> str:
    return timezone.localtime(moment).strftime("%Y-%m-%d %H:%M")


# --- figures -------------------------------------------------------------------------------------------


# The figures are the plain dicts plotly.js takes, in the shape plotly.py's `go.Figure(...).to_plotly_json()` gave
# them (tests/aggregation/test_dashboard_plotly.py validates them with it): building them through plotly.py's
# validators took a fifth of the page at 100 sites. NONE is what plotly.py writes for `template="none"`.
NONE = {"data": {"scatter": [{"type": "scatter"}]}}


def _layout(x_title: str, y_title: str, *, empty: str, height: int = 360, **extra: Any) -> dict[str, Any]:
    """The charts' shared look: light grid, legend above the plot, a note in it while there is no data."""
    axis = {"gridcolor": GRID, "zeroline": False, "automargin": True}
    layout = {
        "template": NONE, "height": height, "margin": {"l": 60, "r": 60, "t": 10, "b": 40}, "hovermode": "closest",
        "font": {"family": "system-ui, sans-serif", "size": 12}, "paper_bgcolor": "#fff", "plot_bgcolor": "#fff",
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0, "entrywidth": 0.5,
                   "entrywidthmode": "fraction"}, "xaxis": {**axis, "title": {"text": x_title}},
        "yaxis": {**axis, "title": {"text": y_title}}, **extra}
    if empty:
        layout["annotations"] = [{"text": empty, "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5,
                                  "y": 0.5, "font": {"color": "#59636e"}}]
    return layout


def _figure(traces: list[dict[str, Any]], layout: dict[str, Any]) -> dict[str, Any]:
    """The figure as plotly.js takes it; one x tick per round or version, or per few once there are many."""
    figure = {"data": traces, "layout": layout}
    layout["xaxis"]["dtick"] = max(1, math.ceil(distinct_x(figure) / MAX_X_TICKS))
    return figure


def plotly_text(value: str) -> str:
    """Text (a site's name, a reason) as plotly.js shows it literally, wherever it goes in a figure.

    plotly.js reads `<b>`, `<a href>` and `&...;` in any label as markup and `%{...}` in a hovertemplate
    as a placeholder, and decodes entities last: so `&`, `<`, `>` and `%` go in as entities (a name
    `%{customdata}` would otherwise show the point's data). `static/js/dashboard.js` has the same helper."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("%", "&#37;")


def _line(name: str, meta: str, xs: list[Any], ys: list[Any], color: str, unit: str, *,
          line: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    label = plotly_text(name)
    return {"type": "scatter", "x": xs, "y": ys, "name": label, "meta": meta, "mode": "lines+markers",
            "line": {"color": color, **(line or {})},
            "hovertemplate": f"{label}: %{{y:.3f}}{unit}<extra>%{{x}}</extra>", **extra}


def _evaluated(rounds: list[Round]) -> list[tuple[int, dict[str, Any]]]:
    """(version number, its evaluation) of each version a round trained from and that round has ended.
    While the round is live the sites' evaluations are still arriving: a partial mean is not shown, and the
    point appears when the round's `round.metrics` event does (a blocked or failed round sends one too)."""
    versions = {r.base_version.number: r for r in rounds if r.base_version is not None and r.status not in ROUND_LIVE}
    return [(number, _base_evaluation(versions[number])) for number in sorted(versions)]


def _base_evaluation(round_: Round) -> dict[str, Any]:
    """The base version's evaluation as the charts read it (its sites and global figures)."""
    if not hasattr(round_, "evaluated_sites_json"):  # a round not read by `_rounds`
        return round_.base_version.evaluation or {}
    parts = {"sites": _json(round_.evaluated_sites_json), "global": _json(round_.evaluated_global_json)}
    return {key: value for key, value in parts.items() if value is not None}


def _json(value: Any) -> Any:
    """A JSON key the database extracted as text (PostgreSQL, and SQLite for objects and arrays) or as a value."""
    return json.loads(value) if isinstance(value, str) else value


def global_metric_figure(evaluated: list[tuple[int, dict[str, Any]]], disclosure: Disclosure = FULL
                         ) -> dict[str, Any]:
    """Each evaluated version's AUC, accuracy and loss on the sites' held-out splits, weighted by rows; a version
    evaluated by fewer sites than the viewer may see pooled is left out."""
    points = [(number, ev.get("global") or {}) for number, ev in evaluated
              if disclosure.sees_pool((ev.get("sites") or {}).keys())]
    points = [(number, g) for number, g in points if any(g.get(key) is not None for key in GLOBAL_METRICS)]
    xs = [number for number, _ in points]
    traces = [_line(GLOBAL_METRIC_LABELS[key], key, xs, [g.get(key) for _, g in points], color, "",
                    **({"yaxis": "y2", "line": {"dash": "dot"}} if key == VAL_LOSS else {}))
              for key, color in zip(GLOBAL_METRICS, ("#0b5cad", "#2f9e5b", "#9a6700"), strict=True)]
    layout = _layout("Model version evaluated (v0 is the initial model)", "AUC and accuracy",
                     empty="" if xs else "No model version has been evaluated yet.",
                     yaxis2={"title": {"text": "Loss"}, "overlaying": "y", "side": "right", "showgrid": False,
                             "zeroline": False})
    layout["yaxis"]["range"] = [0, 1.02]
    return _figure(traces, layout)


def site_auc_series(evaluated: list[tuple[int, dict[str, Any]]]) -> dict[int, list[tuple[int, float]]]:
    """Per site, its AUC of each evaluated version: (version, AUC), oldest first."""
    series: dict[int, list[tuple[int, float]]] = {}
    for number, evaluation in evaluated:
        for key, metrics in (evaluation.get("sites") or {}).items():
            if metrics.get(VAL_AUC) is not None:
                series.setdefault(int(key), []).append((number, metrics[VAL_AUC]))
    return series


def site_metric_figure(every: dict[int, list[tuple[int, float]]], sites: list[SiteRef], *, band: bool = True
                       ) -> dict[str, Any]:
    """Each of `sites`' AUC of each evaluated version (`every`: `site_auc_series`), and (`band`) the band from the
    lowest to the highest of every site, also those drawn without a line (a summary draws only the worst sites')."""
    series = {site.site_id: every[site.site_id] for site in sites if site.site_id in every}
    traces = [*(spread_band(every) if band else []), *_site_traces(sites, series, "")]
    layout = _layout("Model version evaluated", "Site's AUC",
                     empty="" if series else "No site has evaluated a model version yet.")
    return _figure(traces, layout)


def auc_gaps(evaluated: list[tuple[int, dict[str, Any]]], sites: list[SiteRef]) -> list[dict[str, Any]]:
    """What the sites' chart cannot show, and why: per site and reason, the evaluated versions for which the
    site reported no AUC of its own (e.g. only one class in its validation split). The global AUC still counts
    those rows (it comes from the sites' score histograms). `static/js/dashboard.js` words them the same way."""
    gaps: dict[tuple[int, str], list[int]] = {}
    for number, evaluation in evaluated:
        for key, metrics in (evaluation.get("sites") or {}).items():
            if metrics.get(VAL_AUC) is None and metrics.get(VAL_AUC_NOTE):
                gaps.setdefault((int(key), metrics[VAL_AUC_NOTE]), []).append(number)
    names = {site.site_id: site.name for site in sites}
    rows = [{"site_id": site_id, "site": names[site_id], "reason": reason,
             "versions": versions} for (site_id, reason), versions in gaps.items() if site_id in names]
    for row in rows:
        row["text"] = gap_text(row["site"], row["versions"], row["reason"])
    return sorted(rows, key=lambda row: (row["site"].casefold(), row["reason"]))


def gap_text(site: str, versions: list[int], reason: str) -> str:
    """"Helsinki: no AUC of its own for v0–v3, v5 (only one class in the validation split)."."""
    spans: list[list[int]] = []
    for number in sorted(set(versions)):
        if spans and number == spans[-1][1] + 1:
            spans[-1][1] = number
        else:
            spans.append([number, number])
    listed = ", ".join(f"v{a}" if a == b else f"v{a}–v{b}" for a, b in spans)
    return f"{site}: no AUC of its own for {listed} ({reason})."


def spread_band(series: dict[int, list[tuple[int, float]]]) -> list[dict[str, Any]]:
    """The min–max band across sites per version (the upper edge, then the lower edge filled up to it);
    its hover gives the standard deviation between sites."""
    by_x: dict[int, list[float]] = {}
    for points in series.values():
        for x, y in points:
            by_x.setdefault(x, []).append(y)
    xs = sorted(by_x)
    spread = [f"{len(by_x[x])} sites, SD {stats.pstdev(by_x[x]):.3f}" for x in xs]
    upper = {"type": "scatter", "x": xs, "y": [max(by_x[x]) for x in xs], "meta": "band:max", "mode": "lines",
             "line": {"width": 0}, "showlegend": False, "hoverinfo": "skip"}
    lower = {"type": "scatter", "x": xs, "y": [min(by_x[x]) for x in xs], "meta": "band:min", "mode": "lines",
             "line": {"width": 0}, "fill": "tonexty", "fillcolor": "rgba(11,92,173,0.12)",
             "name": "Spread between sites (min–max)", "text": spread,
             "hovertemplate": "Spread: %{text}<extra>v%{x}</extra>"}
    return [upper, lower]


def _site_traces(sites: list[SiteRef], series: dict[int, list[tuple[int, float]]], unit: str
                 ) -> list[dict[str, Any]]:
    return [_line(site.name, f"site:{site.site_id}", [x for x, _ in series[site.site_id]],
                  [y for _, y in series[site.site_id]], site.color, unit)
            for site in sites if series.get(site.site_id)]


def participation_figure(views: list[RoundView]) -> dict[str, Any]:
    """Per round, the share of eligible sites that sent their part (rounds of unknown eligibility skipped)."""
    known = [(v.round.number, v.submitted, len(v.eligible)) for v in views if v.eligible]
    bars = {"type": "bar", "x": [number for number, _, _ in known], "y": [100 * n / of for _, n, of in known],
            "meta": "rate", "marker": {"color": "#0b5cad"}, "name": "Participation",
            "text": [f"{n}/{of}" for _, n, of in known], "textposition": "auto",
            "customdata": [[n, of] for _, n, of in known],
            "hovertemplate": "Round %{x}: %{text} eligible sites submitted<extra></extra>"}
    layout = _layout("Round", "Submitted (%)", empty="" if known else "No round has opened yet.")
    layout["yaxis"]["range"] = [0, 105]
    return _figure([bars], layout)


def _updates(rounds: list[Round], details: dict[tuple[int, int], UpdateDetail], sites: list[SiteRef]
             ) -> Iterable[tuple[int, int, UpdateDetail]]:
    """(round number, site id, update) of `sites`, oldest round first."""
    return ((r.number, site.site_id, detail) for r in rounds for site in sites
            if (detail := details.get((r.pk, site.site_id))) is not None)


def elapsed_figure(rounds: list[Round], details: dict[tuple[int, int], UpdateDetail], sites: list[SiteRef]
                   ) -> dict[str, Any]:
    """Per site and round, the seconds from downloading the model to submitting the update (rows from before
    downloads were timed have no start and are skipped)."""
    series: dict[int, list[tuple[int, float]]] = {}
    for number, site_id, u in _updates(rounds, details, sites):
        if u.downloaded_at is not None:
            series.setdefault(site_id, []).append((number, (u.received_at - u.downloaded_at).total_seconds()))
    layout = _layout("Round", "Seconds", empty="" if series else "No timed update yet.")
    return _figure(_site_traces(sites, series, " s"), layout)


def norms_figure(rounds: list[Round], details: dict[tuple[int, int], UpdateDetail], sites: list[SiteRef]
                 ) -> dict[str, Any]:
    """Per round, the L2 norm of each site's update beside the norm of the global model it produced."""
    series: dict[int, list[tuple[int, float]]] = {}
    for number, site_id, u in _updates(rounds, details, sites):
        series.setdefault(site_id, []).append((number, u.weight_norm))
    produced: list[tuple[int, float]] = []
    for round_ in rounds:
        version = getattr(round_, "produced_version", None)
        norm = (_json(round_.produced_norm) if hasattr(round_, "produced_norm")
                else version.provenance.get("weight_norm") if version is not None else None)
        if version is not None and norm is not None:
            produced.append((round_.number, float(norm)))
    traces = _site_traces(sites, series, "")
    traces.append(_line("Global model", "global", [x for x, _ in produced], [y for _, y in produced], "#1f2328", "",
                        line={"width": 3}))
    layout = _layout("Round", "L2 norm", empty="" if series or produced else "No update yet.")
    return _figure(traces, layout)


def heatmap_figure(views: list[RoundView], sites: list[SiteRef], details: dict[tuple[int, int], UpdateDetail]
                   ) -> dict[str, Any]:
    """Site x round: submitted (what, when: an update's from `details`, read for the rows the viewer may see),
    excluded (why), refused (why) or missing (not eligible, or nothing came)."""
    z, text = [], []
    for site in sites:
        cells = [heatmap_cell(view, site.site_id, details) for view in views]
        z.append([CELL_STATES.index(state) for state, _ in cells])
        text.append([plotly_text(f"{state}: {why}" if why else state) for state, why in cells])
    n = len(CELL_STATES)
    scale = [[edge, color] for i, color in enumerate(CELL_COLORS) for edge in (i / n, (i + 1) / n)]
    heatmap = {"type": "heatmap", "x": [v.round.number for v in views], "y": [plotly_text(s.name) for s in sites],
               "z": z, "text": text, "meta": "cells", "zmin": -0.5, "zmax": n - 0.5, "colorscale": scale, "xgap": 2,
               "ygap": 2, "hovertemplate": "%{y}, round %{x}: %{text}<extra></extra>",
               "colorbar": {"tickvals": list(range(n)), "ticktext": list(CELL_STATES), "thickness": 12}}
    layout = _layout("Round", "", empty="" if views else "No round has opened yet.",
                     height=max(200, 80 + 34 * len(sites)))
    layout["yaxis"].update(autorange="reversed", type="category")
    return _figure([heatmap], layout)


def heatmap_cell(view: RoundView, site_id: int, details: dict[tuple[int, int], UpdateDetail]) -> tuple[str, str]:
    if site_id in view.cells:
        state, why = view.cells[site_id]
        update = details.get((view.round.pk, site_id)) if state == "submitted" and not why else None
        return state, update.text if update is not None else why
    if view.eligible is not None and site_id not in view.eligible:
        return "missing", "not eligible"
    return "missing", "no update"


def distinct_x(figure: dict[str, Any]) -> int:
    """How many x positions a chart shows (the band's edges and an empty trace add none): what the page
    exposes as `data-points` so a browser test can see a point arrive."""
    return len({x for trace in figure["data"] if not str(trace.get("meta", "")).startswith("band:")
                for x in trace.get("x") or ()})


# --- the governance panel ------------------------------------------------------------------------------


def gate_panel(gate: dict[str, Any], *, now: datetime | None = None) -> GatePanel:
    """The panel from a gate verdict as events carry it (`GateResult.as_dict()`): study checks, then each
    site's checks in the gate's order; a passing check that lapses within the warning window is marked."""
    now = now or timezone.now()
    study_checks: list[CheckRow] = []
    sites: dict[int, GateSiteRow] = {}
    for check in gate.get("checks") or []:
        row = _check_row(check, now)
        if check.get("site_id") is None:
            study_checks.append(row)
        else:
            sites.setdefault(check["site_id"], GateSiteRow(check["site_id"], check.get("site") or "", [])
                             ).checks.append(row)
    return GatePanel(bool(gate.get("allowed")), datetime.fromisoformat(gate["moment"]), study_checks,
                     list(sites.values()))


def _check_row(check: dict[str, Any], now: datetime) -> CheckRow:
    expires = datetime.fromisoformat(check["expires_at"]) if check.get("expires_at") else None
    soon = bool(check["passed"] and expires and expires <= now + timedelta(days=settings.EXPIRY_WARNING_DAYS))
    return CheckRow(check["name"], CHECK_LABELS.get(check["name"], check["name"]), bool(check["passed"]),
                    check.get("reason") or "", expires, soon)


# --- the event feed ------------------------------------------------------------------------------------

def feed_item(event: StudyEvent, disclosure: Disclosure = FULL) -> FeedItem:
    payload = disclose_event(event.kind, event.payload, disclosure)
    return FeedItem(event.seq, event.kind, event.created_at, event_sentence(event.kind, payload),
                    event_tone(event.kind, payload))
