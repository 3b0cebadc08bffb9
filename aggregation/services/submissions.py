"""What a site agent does to a round: download the global model, submit an update, submit its
feature statistics. Every request is checked by the gate at that moment; a refused one changes
nothing and is audited (see `audited_service`)."""

import math
from datetime import datetime
from typing import Any

import torch
from django.conf import settings
from django.utils import timezone

from aggregation import codec
from aggregation.choices import RoundKind, RoundStatus
from aggregation.models import ModelVersion, Round, SiteStatistics, Update
from aggregation.services import _events
from aggregation.services._common import lock_round_for_site, spec, store, verified_bytes, version_tensors
from aggregation.services.rounds import round_complete_if_ready, round_progress
from consortium.audit import audited_service, record
from consortium.errors import Conflict, GateRefused, PayloadTooLarge, ValidationFailed
from consortium.locks import locked
from consortium.models import AuditEvent
from studies.choices import GateAction
from studies.governance import evaluate

METRIC_KEYS = ("train_loss", "val_loss", "val_accuracy", "val_auc", "val_examples", "training_seconds")


def _require_gate(round_: Round, site_id: int, action: str) -> None:
    gate = evaluate(round_.study, action, site=site_id)
    if not gate.allowed:
        failing = gate.failures
        raise GateRefused("The gate refuses this site now: " + " ".join(check.reason for check in failing),
                          study=round_.study_id, site=site_id, checks=[check.as_dict() for check in failing])


def _require_open(round_: Round, kind: str) -> None:
    if round_.kind != kind:
        raise Conflict(f"Round {round_.number} is a {round_.get_kind_display().lower()} round.",
                       code="wrong_round_kind", study=round_.study_id)
    if round_.status != RoundStatus.OPEN:
        raise Conflict(f"Round {round_.number} is {round_.get_status_display().lower()}; it takes no more "
                       "submissions.", code="stale_round", study=round_.study_id)


@audited_service("aggregation.model.download")
def model_download(*, actor: Any, round_id: int) -> tuple[ModelVersion, bytes]:
    """The round's base model for a site the gate allows to download it now; audited as a model download."""
    round_ = lock_round_for_site(round_id, actor.site_id, lock=False)
    _require_open(round_, RoundKind.TRAINING)
    _require_gate(round_, actor.site_id, GateAction.DOWNLOAD_MODEL)
    version = round_.base_version
    data = verified_bytes(version)
    record(actor=actor, action="aggregation.model.downloaded", target=version, study=round_.study_id,
           site=actor.site_id, details={"round": round_.number, "version": version.number, "sha256": version.sha256})
    return version, data


@audited_service("aggregation.update.submit", on_denial=_events.update_refused)
def update_submit(
    *, actor: Any, round_id: int, body: bytes, round_number: int, base_version: int, num_examples: int,
    metrics: dict[str, Any], idempotency_key: str,
) -> tuple[Update, bool]:
    """Validate and store a site's update. Returns (update, created); a retry with the same
    idempotency key returns the stored update unchanged."""
    round_ = lock_round_for_site(round_id, actor.site_id)
    existing = Update.objects.filter(round=round_, site_id=actor.site_id).first()
    if existing is not None:
        if existing.idempotency_key == idempotency_key:
            return existing, False
        raise Conflict(f"{actor.site} already submitted an update for round {round_.number}; one per site per round.",
                       code="duplicate_update", study=round_.study_id, site=actor.site_id)
    _require_open(round_, RoundKind.TRAINING)
    if round_number != round_.number:
        raise Conflict(f"This is round {round_.number}, not {round_number}.", code="stale_round", study=round_.study_id)
    if base_version != round_.base_version.number:
        raise Conflict(f"Round {round_.number} trains from model v{round_.base_version.number}, not v{base_version}.",
                       code="stale_model", study=round_.study_id)
    _check_numbers(num_examples, metrics, round_)
    _require_gate(round_, actor.site_id, GateAction.SUBMIT_UPDATE)
    tensors = _decode(body, round_)
    weight_norm, delta_norm = _norms(tensors, version_tensors(round_.base_version))
    path, digest = store(body, "updates", round_.study_id)
    update = Update(round=round_, site_id=actor.site_id, base_version=round_.base_version, path=path, sha256=digest,
                    size_bytes=len(body), num_examples=num_examples, metrics=metrics, weight_norm=weight_norm,
                    delta_norm=delta_norm, idempotency_key=idempotency_key, submitted_by=actor.get_username(),
                    downloaded_at=_downloaded_at(round_, actor.site_id), received_at=timezone.now())
    update.full_clean()
    update.save()
    # Before `record`: a row lock comes before the audit chain's lock (`consortium.locks`).
    _record_base_evaluation(round_.base_version, actor.site_id, metrics.get("base"))
    record(actor=actor, action="aggregation.update.accepted", target=update, study=round_.study_id,
           site=actor.site_id, details={"round": round_.number, "sha256": digest, "num_examples": num_examples,
                                        "metrics": metrics, "weight_norm": weight_norm, "delta_norm": delta_norm})
    progress = round_progress(round_)
    _events.update_received(update, round_, progress)
    round_complete_if_ready(round_, progress=progress)
    return update, True


def _downloaded_at(round_: Round, site_id: int) -> datetime | None:
    """When the site first downloaded the round's model (its audited download): the start of its elapsed time."""
    return (AuditEvent.objects.filter(action="aggregation.model.downloaded", study_id=round_.study_id,
                                      site_id=site_id, details__round=round_.number)
            .order_by("seq").values_list("created_at", flat=True).first())


def _check_numbers(num_examples: int, metrics: dict[str, Any], round_: Round) -> None:
    if num_examples < 1:
        raise ValidationFailed("X-Num-Examples must be a positive integer.", code="num_examples", study=round_.study_id)
    values = [metrics.get(key) for key in METRIC_KEYS] + [v for v in (metrics.get("base") or {}).values()]
    for value in values:
        if value is not None and (not isinstance(value, int | float) or not math.isfinite(value)):
            raise ValidationFailed("Metrics must be finite numbers.", code="metrics", study=round_.study_id)


def _decode(body: bytes, round_: Round) -> dict[str, torch.Tensor]:
    try:
        return codec.decode(body, expected=spec(round_.base_version), max_bytes=settings.MAX_UPDATE_BYTES)
    except codec.UpdateRejected as exc:
        error = PayloadTooLarge if exc.status == 413 else ValidationFailed
        raise error(exc.message, code=exc.code, study=round_.study_id) from exc


def _norms(tensors: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> tuple[float, float]:
    weight = math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors.values()))
    delta = math.sqrt(sum(float((tensors[n].double() - base[n].double()).pow(2).sum()) for n in tensors))
    return weight, delta


def _record_base_evaluation(version: ModelVersion, site_id: int, base: dict[str, Any] | None) -> None:
    """Sites evaluate the global model they download on their own validation split; the mean of those,
    weighted by validation rows, is the model's global metric."""
    if not base or not base.get("val_examples"):
        return
    version = locked(ModelVersion.objects.filter(pk=version.pk)).get()
    sites = {**version.evaluation.get("sites", {}), str(site_id): base}
    total = sum(entry["val_examples"] for entry in sites.values())
    keys = ("val_loss", "val_accuracy", "val_auc")
    mean = {key: sum(e[key] * e["val_examples"] for e in sites.values() if e.get(key) is not None) / total
            for key in keys if all(e.get(key) is not None for e in sites.values())}
    version.evaluation = {"sites": sites, "global": {**mean, "val_examples": total}}
    version.save(update_fields=["evaluation"])


@audited_service("aggregation.statistics.submit", on_denial=_events.update_refused)
def statistics_submit(
    *, actor: Any, round_id: int, features: list[str], count: int, sums: list[float], sums_of_squares: list[float]
) -> SiteStatistics:
    """A site's per-feature count, sums and sums of squares (never rows) for the statistics round."""
    round_ = lock_round_for_site(round_id, actor.site_id)
    if SiteStatistics.objects.filter(round=round_, site_id=actor.site_id).exists():
        raise Conflict(f"{actor.site} already sent its statistics for round {round_.number}.",
                       code="duplicate_statistics", study=round_.study_id, site=actor.site_id)
    _require_open(round_, RoundKind.STATISTICS)
    _check_statistics(round_, features, count, sums, sums_of_squares)
    _require_gate(round_, actor.site_id, GateAction.SUBMIT_UPDATE)
    row = SiteStatistics(round=round_, site_id=actor.site_id, features=features, count=count, sums=sums,
                         sums_of_squares=sums_of_squares, received_at=timezone.now())
    row.full_clean()
    row.save()
    # The figures themselves stay out of the audit details: no site's statistics are shown to others.
    record(actor=actor, action="aggregation.statistics.accepted", target=round_, study=round_.study_id,
           site=actor.site_id, details={"round": round_.number, "count": count, "features": len(features)})
    progress = round_progress(round_)
    _events.statistics_received(round_, actor.site, count, progress)
    round_complete_if_ready(round_, progress=progress)
    return row


def _check_statistics(round_: Round, features: list[str], count: int, sums: list[float], squares: list[float]) -> None:
    width = round_.study.num_features
    if count < 2:
        raise ValidationFailed("Statistics need at least two rows.", code="statistics", study=round_.study_id)
    if not (len(features) == len(sums) == len(squares) == width):
        raise ValidationFailed(f"The study has {width} features; send a name, sum and sum of squares for each.",
                               code="statistics", study=round_.study_id)
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in [*sums, *squares]):
        raise ValidationFailed("Sums must be finite numbers.", code="statistics", study=round_.study_id)
    first = SiteStatistics.objects.filter(round=round_).values_list("features", flat=True).first()
    if first is not None and list(first) != list(features):
        raise ValidationFailed("Your feature columns differ from the other sites' (names or order).",
                               code="feature_mismatch", study=round_.study_id)
