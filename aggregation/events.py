"""Aggregation's live events: what a round and the sites' submissions tell a study's dashboard. Their kinds,
the shape of each payload (what `aggregation.services._events` publishes and `static/js/dashboard.js` reads;
tests/aggregation/test_event_payloads.py ties the three together) and the sentence the feed shows; registered
with `studies.event_registry` by `AggregationConfig.ready()`.

Payloads carry sites, times, counts, metrics and norms: never weights, never a site's statistics."""

from typing import NotRequired, TypedDict

from django.db import models

from studies import event_registry
from studies.event_registry import Payload, number
from studies.governance_events import GatePayload


class RoundEventKind(models.TextChoices):
    ROUND_OPENED = "round.opened", "Round opened"
    UPDATE_RECEIVED = "update.received", "Update received"
    UPDATE_REFUSED = "update.refused", "Update refused"
    UPDATE_EXCLUDED = "update.excluded", "Update excluded"
    STATISTICS_RECEIVED = "statistics.received", "Statistics received"
    EVALUATION_RECEIVED = "evaluation.received", "Evaluation received"
    AGGREGATION_STARTED = "aggregation.started", "Aggregation started"
    AGGREGATION_FINISHED = "aggregation.finished", "Aggregation finished"
    ROUND_METRICS = "round.metrics", "Round metrics"
    ROUND_CLOSED = "round.closed", "Round closed"
    ROUND_BLOCKED = "round.blocked", "Round blocked"
    ROUND_FAILED = "round.failed", "Round failed"
    SECURE_STAGE = "secure.stage", "Secure aggregation stage"


class RoundRef(TypedDict):
    round_id: int
    round: int
    kind: str


class Progress(TypedDict):
    """Eligible sites that have submitted, of the sites the gate allows now."""

    submitted: int
    eligible: int


class SiteRef(TypedDict):
    site_id: int
    site: str


class RoundOpened(RoundRef, Progress):
    base_version: int | None
    opened_at: str
    deadline: str
    eligible_sites: list[SiteRef]


class UpdateReceived(RoundRef, SiteRef, Progress):
    received_at: str
    elapsed_seconds: float | None
    num_examples: int
    weight_norm: float
    delta_norm: float
    metrics: dict[str, float | None]  # consortium.federated.metric_keys.UPDATE_METRICS


class StatisticsReceived(RoundRef, SiteRef, Progress):
    count: int


class EvaluationReceived(RoundRef, SiteRef, Progress):
    version: int
    received_at: str
    metrics: dict[str, float | None]  # consortium.federated.metric_keys.EVALUATION_METRICS


class UpdateRefused(TypedDict):
    """A refused submission; the round is None when the request named none that exists."""

    round_id: int | None
    round: int | None
    site_id: int | None
    site: str
    reason: str
    code: str


class UpdateExcluded(RoundRef, SiteRef):
    reason: str


class RoundMoved(RoundRef):
    """Aggregation started, or the round closed, was blocked (with the gate's verdict) or failed."""

    status: str
    reason: str
    gate: NotRequired[GatePayload]


class AggregationFinished(RoundRef):
    version: int
    duration_seconds: float
    wait_seconds: float | None
    sites: list[int]
    strategy: str


class SiteRoundFigures(TypedDict):
    """One included site's figures in a round: its update's norms and local metrics (UPDATE_METRICS keys too)."""

    site: str
    num_examples: int
    weight_norm: float
    delta_norm: float
    train_loss: float | None
    val_loss: float | None
    val_accuracy: float | None
    val_auc: float | None
    val_examples: int | None
    training_seconds: float | None


# "global" is a Python keyword: the functional form.
RoundMetrics = TypedDict("RoundMetrics", {
    "round_id": int, "round": int, "kind": str,
    "version": int | None,  # the new model version (None when the round made none)
    "evaluated_version": int,  # the version the sites evaluated: the one the round trained from
    "global": dict[str, float | str | None],  # consortium.federated.metric_keys.GLOBAL_METRICS and VAL_AUC_*
    "evaluated_by_site": dict[str, dict[str, float | str | None]],  # site id -> EVALUATION_METRICS, VAL_AUC_NOTE
    "global_weight_norm": float | None,
    "sites": dict[str, SiteRoundFigures],  # site id -> figures
})

class SecureStageMoved(RoundRef):
    """A secure round's stage opened or closed (`aggregation.services.secure`); `sites`: how many it admitted."""

    stage: str
    opened: bool
    sites: int | None
    reason: str


SECURE_STAGE_NAMES = {"keys": "keys", "shares": "shares", "masked_inputs": "masked inputs", "unmasking": "unmasking"}

PAYLOADS = {
    RoundEventKind.ROUND_OPENED: RoundOpened,
    RoundEventKind.UPDATE_RECEIVED: UpdateReceived,
    RoundEventKind.UPDATE_REFUSED: UpdateRefused,
    RoundEventKind.UPDATE_EXCLUDED: UpdateExcluded,
    RoundEventKind.STATISTICS_RECEIVED: StatisticsReceived,
    RoundEventKind.EVALUATION_RECEIVED: EvaluationReceived,
    RoundEventKind.AGGREGATION_STARTED: RoundMoved,
    RoundEventKind.AGGREGATION_FINISHED: AggregationFinished,
    RoundEventKind.ROUND_METRICS: RoundMetrics,
    RoundEventKind.ROUND_CLOSED: RoundMoved,
    RoundEventKind.ROUND_BLOCKED: RoundMoved,
    RoundEventKind.ROUND_FAILED: RoundMoved,
    RoundEventKind.SECURE_STAGE: SecureStageMoved,
}


def _opened_what(d: Payload) -> str:
    if d.get("kind") == "evaluation":
        return f" to evaluate the final model v{d.get('base_version')} (no training)"
    return f" from model v{d['base_version']}" if d.get("base_version") is not None else " (federated statistics)"


def _in(d: Payload) -> str:
    return f"{d.get('submitted')} of {d.get('eligible')} eligible sites in."


def _secure_stage(d: Payload) -> str:
    stage = SECURE_STAGE_NAMES.get(str(d.get("stage")), str(d.get("stage")))
    if d.get("opened"):
        return f"Round {d.get('round')}, secure aggregation: the {stage} stage opened. {d.get('reason')}"
    return (f"Round {d.get('round')}, secure aggregation: the {stage} stage closed with {d.get('sites')} sites "
            f"({d.get('reason')}).")


def _round_metrics(d: Payload) -> str:
    figures = d.get("global") or {}
    if d.get("global_suppressed"):  # pooled over too few sites for this viewer (`studies.disclosure`)
        return f"Model v{d.get('evaluated_version')} on the sites' held-out data: {d['global_suppressed']}"
    return (f"Model v{d.get('evaluated_version')} on the sites' held-out data: AUC {number(figures.get('val_auc'))}, "
            f"accuracy {number(figures.get('val_accuracy'))}.")


SENTENCES = {
    RoundEventKind.ROUND_OPENED: lambda d: (f"Round {d.get('round')} opened{_opened_what(d)}: "
                                            f"{d.get('eligible', 0)} sites eligible."),
    RoundEventKind.UPDATE_RECEIVED: lambda d: (f"{d.get('site')} submitted its update to round {d.get('round')}"
                                               # another site's count is withheld from a site admin: None
                                               + (f" ({d['num_examples']} examples)" if d.get("num_examples") else "")
                                               + f": {_in(d)}"),
    RoundEventKind.STATISTICS_RECEIVED: lambda d: f"{d.get('site')} sent its statistics for round {d.get('round')}: "
                                                  f"{_in(d)}",
    RoundEventKind.EVALUATION_RECEIVED: lambda d: (f"{d.get('site')} evaluated the final model v{d.get('version')} "
                                                   f"for round {d.get('round')}: {_in(d)}"),
    RoundEventKind.UPDATE_REFUSED: lambda d: (f"An update from {d.get('site') or 'a site'} was refused: "
                                              f"{d.get('reason')}"),
    RoundEventKind.UPDATE_EXCLUDED: lambda d: (f"{d.get('site')}'s update to round {d.get('round')} was excluded: "
                                               f"{d.get('reason')}"),
    RoundEventKind.AGGREGATION_STARTED: lambda d: f"Aggregating round {d.get('round')}: {d.get('reason')}",
    RoundEventKind.AGGREGATION_FINISHED: lambda d: (f"Round {d.get('round')} aggregated into model v{d.get('version')} "
                                                    f"from {len(d.get('sites') or [])} sites in "
                                                    f"{number(d.get('duration_seconds'), 2)} s."),
    RoundEventKind.ROUND_METRICS: _round_metrics,
    RoundEventKind.ROUND_CLOSED: lambda d: f"Round {d.get('round')} closed: {d.get('reason')}",
    RoundEventKind.ROUND_BLOCKED: lambda d: f"Round {d.get('round')} blocked: {d.get('reason')}",
    RoundEventKind.ROUND_FAILED: lambda d: f"Round {d.get('round')} failed: {d.get('reason')}",
    RoundEventKind.SECURE_STAGE: _secure_stage,
}

TONES = {
    RoundEventKind.ROUND_OPENED: "info",
    RoundEventKind.UPDATE_RECEIVED: "good",
    RoundEventKind.UPDATE_REFUSED: "bad",
    RoundEventKind.UPDATE_EXCLUDED: "bad",
    RoundEventKind.STATISTICS_RECEIVED: "good",
    RoundEventKind.EVALUATION_RECEIVED: "good",
    RoundEventKind.AGGREGATION_STARTED: "info",
    RoundEventKind.AGGREGATION_FINISHED: "good",
    RoundEventKind.ROUND_METRICS: "good",
    RoundEventKind.ROUND_CLOSED: "good",
    RoundEventKind.ROUND_BLOCKED: "bad",
    RoundEventKind.ROUND_FAILED: "bad",
    RoundEventKind.SECURE_STAGE: "info",
}


def register() -> None:
    event_registry.register(RoundEventKind, payloads=PAYLOADS, sentences=SENTENCES, tones=TONES)
