"""What the round services tell a study's live dashboard, in the transaction that made the change.
Payloads carry sites, times, counts, metrics and norms: never weights, never a site's statistics. Each
payload's shape is declared with its kind in `aggregation.events`."""

from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError

from aggregation import events
from aggregation.events import RoundEventKind
from aggregation.models import Evaluation, ModelVersion, Round, Update
from consortium.audit.log import denial_reason
from consortium.errors import DomainError, NotFound
from consortium.federated.metric_keys import EVALUATION_METRICS, UPDATE_METRICS
from sites.models import Site
from studies.events import publish, publish_gate
from studies.governance import GateResult


@dataclass(frozen=True)
class Progress:
    """Who of the sites the gate allows now has submitted to a round."""

    submitted: frozenset[int]
    eligible: frozenset[int]
    gate: GateResult | None  # None: judged incomplete without asking the gate about every site

    @property
    def complete(self) -> bool:
        return bool(self.eligible) and self.eligible <= self.submitted

    def as_dict(self) -> events.Progress:
        return {"submitted": len(self.submitted & self.eligible), "eligible": len(self.eligible)}


def _round(round_: Round) -> events.RoundRef:
    return {"round_id": round_.pk, "round": round_.number, "kind": round_.kind}


def round_opened(round_: Round, gate: GateResult) -> None:
    eligible = [{"site_id": v.site_id, "site": v.site_name} for v in gate.eligible_sites]
    publish(round_.study_id, RoundEventKind.ROUND_OPENED,
            {**_round(round_), "base_version": round_.base_version.number if round_.base_version else None,
             "opened_at": round_.opened_at.isoformat(), "deadline": round_.deadline.isoformat(),
             "eligible_sites": eligible, "submitted": 0, "eligible": len(eligible)})
    publish_gate(round_.study, trigger=RoundEventKind.ROUND_OPENED, gate=gate)


def update_received(update: Update, round_: Round, progress: Progress) -> None:
    elapsed = (update.received_at - update.downloaded_at).total_seconds() if update.downloaded_at else None
    publish(round_.study_id, RoundEventKind.UPDATE_RECEIVED,
            {**_round(round_), "site_id": update.site_id, "site": update.site.name,
             "received_at": update.received_at.isoformat(), "elapsed_seconds": elapsed,
             "num_examples": update.num_examples, "weight_norm": update.weight_norm, "delta_norm": update.delta_norm,
             "metrics": {key: update.metrics.get(key) for key in UPDATE_METRICS}, **progress.as_dict()})


def statistics_received(round_: Round, site: Site, count: int, progress: Progress) -> None:
    publish(round_.study_id, RoundEventKind.STATISTICS_RECEIVED,
            {**_round(round_), "site_id": site.pk, "site": site.name, "count": count, **progress.as_dict()})


def evaluation_received(evaluation: Evaluation, round_: Round, progress: Progress) -> None:
    """A site's metrics of the final model arrived (never its score histogram)."""
    publish(round_.study_id, RoundEventKind.EVALUATION_RECEIVED,
            {**_round(round_), "site_id": evaluation.site_id, "site": evaluation.site.name,
             "version": round_.base_version.number, "received_at": evaluation.received_at.isoformat(),
             "metrics": {key: evaluation.metrics.get(key) for key in EVALUATION_METRICS}, **progress.as_dict()})


def evaluation_finished(round_: Round) -> None:
    """The evaluation round closed: the final model's figures join the metric charts."""
    _round_metrics(round_, None, None, [])


def update_refused(exc: DomainError | ValidationError, kwargs: dict[str, Any]) -> None:
    """`on_denial` of the submission services: a refusal the study's viewers may see (not a 404: that
    agent may not even know the study)."""
    if isinstance(exc, NotFound) or getattr(exc, "study", None) is None:
        return
    actor = kwargs.get("actor")
    round_ = Round.objects.filter(pk=kwargs.get("round_id")).values("pk", "number").first()
    publish(exc.study, RoundEventKind.UPDATE_REFUSED,
            {"round_id": round_ and round_["pk"], "round": round_ and round_["number"],
             "site_id": getattr(actor, "site_id", None), "site": str(getattr(actor, "site", "")),
             "reason": denial_reason(exc), "code": getattr(exc, "code", "validation_failed")})


def update_excluded(update: Update, round_: Round, reason: str) -> None:
    publish(round_.study_id, RoundEventKind.UPDATE_EXCLUDED,
            {**_round(round_), "site_id": update.site_id, "site": update.site.name, "reason": reason})


def update_excluded_site(round_: Round, site: Site, reason: str) -> None:
    """A site left out of a round without an update row (a secure round's masked input, discarded)."""
    publish(round_.study_id, RoundEventKind.UPDATE_EXCLUDED,
            {**_round(round_), "site_id": site.pk, "site": site.name, "reason": reason})


def secure_stage(round_: Round, stage: str, *, opened: bool, sites: int | None, reason: str) -> None:
    publish(round_.study_id, RoundEventKind.SECURE_STAGE,
            {**_round(round_), "stage": stage, "opened": opened, "sites": sites, "reason": reason})


def statistics_excluded(round_: Round, site: Site, reason: str) -> None:
    """A site's statistics left out of the pooled figures at close: the same live event as an excluded update."""
    publish(round_.study_id, RoundEventKind.UPDATE_EXCLUDED,
            {**_round(round_), "site_id": site.pk, "site": site.name, "reason": reason})


def round_moved(round_: Round, reason: str, details: dict[str, Any]) -> None:
    """Aggregation started, or the round closed, was blocked or failed."""
    kind = {"aggregating": RoundEventKind.AGGREGATION_STARTED, "closed": RoundEventKind.ROUND_CLOSED,
            "blocked": RoundEventKind.ROUND_BLOCKED, "failed": RoundEventKind.ROUND_FAILED}.get(round_.status)
    if kind is None:
        return
    payload = {**_round(round_), "status": round_.status, "reason": reason}
    if kind == RoundEventKind.ROUND_BLOCKED and "gate" in details:
        payload["gate"] = details["gate"]
    publish(round_.study_id, kind, payload)
    if kind in (RoundEventKind.ROUND_BLOCKED, RoundEventKind.ROUND_FAILED) and round_.base_version is not None:
        # No new model, but the sites did evaluate the one they trained from: the chart gains its point.
        _round_metrics(round_, None, None, [])


def aggregation_finished(round_: Round, version: ModelVersion, included: list[Update], seconds: float,
                         wait_seconds: float | None, *, site_ids: list[int] | None = None) -> None:
    """The new version, how long aggregating took, and the round's metrics: the sites' evaluation of
    the model they trained from (the global metric), their local metrics and the weight norms. A secure
    round has no update in the clear: `site_ids` names its contributors, and no site's figures are sent."""
    publish(round_.study_id, RoundEventKind.AGGREGATION_FINISHED,
            {**_round(round_), "version": version.number, "duration_seconds": seconds, "wait_seconds": wait_seconds,
             "sites": site_ids if site_ids is not None else [u.site_id for u in included],
             "strategy": round_.study.strategy})
    _round_metrics(round_, version.number, version.provenance.get("weight_norm"), included)


def _round_metrics(round_: Round, version: int | None, global_norm: float | None, included: list[Update]) -> None:
    base = round_.base_version
    publish(round_.study_id, RoundEventKind.ROUND_METRICS,
            {**_round(round_), "version": version, "evaluated_version": base.number,
             "global": base.evaluation.get("global") or {}, "evaluated_by_site": base.evaluation.get("sites") or {},
             "global_weight_norm": global_norm,
             "sites": {str(u.site_id): {"site": u.site.name, "num_examples": u.num_examples,
                                        "weight_norm": u.weight_norm, "delta_norm": u.delta_norm,
                                        **{key: u.metrics.get(key) for key in UPDATE_METRICS}}
                       for u in included}})
