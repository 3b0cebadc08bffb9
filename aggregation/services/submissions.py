"""What a site agent does to a round: download the global model, submit an update, submit its
feature statistics, submit its evaluation of the final model. Every request is checked by the gate at
that moment; a refused one changes nothing and is audited (see `audited_service`)."""

import math
from datetime import datetime
from typing import Any

import torch
from django.conf import settings
from django.utils import timezone

from aggregation.audit_actions import AggregationAction
from aggregation.choices import RoundKind, RoundStatus
from aggregation.locks import lock_round_for_site
from aggregation.models import Evaluation, ModelVersion, Round, ScoreHistogram, SiteStatistics, Update
from aggregation.services import _events
from aggregation.services.rounds import incomplete_witnesses, round_complete_if_ready, submission_progress
from aggregation.storage import spec, store, stored_path, verified_bytes, version_tensors
from consortium.audit.log import audited_service, record
from consortium.audit.models import AuditEvent
from consortium.errors import Conflict, GateRefused, PayloadTooLarge, ValidationFailed
from consortium.federated import codec, norm
from consortium.federated import metrics as federated_metrics
from consortium.federated.metric_keys import (
    BASE,
    EVALUATION_METRICS,
    SCORE_HISTOGRAM,
    UPDATE_METRICS,
    VAL_ACCURACY,
    VAL_AUC,
    VAL_AUC_METHOD,
    VAL_AUC_NOTE,
    VAL_EXAMPLES,
    VAL_LOSS,
)
from consortium.locks import locked
from studies.choices import GateAction
from studies.governance import GateResult, evaluate, evaluate_sites
from studies.models import DatasetRegistration


def _require_gate(round_: Round, site_id: int, action: str) -> None:
    _refuse_unless_allowed(evaluate(round_.study, action, site=site_id), round_, site_id)


def _require_gate_for_submission(round_: Round, site_id: int, action: str) -> list[int]:
    """The gate for the submitting site, asked together with the sites that may show the round still
    incomplete after it (one load for all); returns those the gate still allows (for `submission_progress`)."""
    witnesses = incomplete_witnesses(round_, site_id)
    gates = evaluate_sites(round_.study, action, [site_id, *witnesses])
    _refuse_unless_allowed(gates[site_id], round_, site_id)
    return [witness for witness in witnesses if gates[witness].eligible_sites]


def _refuse_unless_allowed(gate: GateResult, round_: Round, site_id: int) -> None:
    if not gate.allowed:
        failing = gate.failures
        raise GateRefused("The gate refuses this site now: " + " ".join(check.reason for check in failing),
                          study=round_.study_id, site=site_id, checks=[check.as_dict() for check in failing])


def _require_open(round_: Round, *kinds: str) -> None:
    if round_.kind not in kinds:
        raise Conflict(f"Round {round_.number} is a {round_.get_kind_display().lower()} round.",
                       code="wrong_round_kind", study=round_.study_id)
    if round_.status != RoundStatus.OPEN:
        raise Conflict(f"Round {round_.number} is {round_.get_status_display().lower()}; it takes no more "
                       "submissions.", code="stale_round", study=round_.study_id)


@audited_service(AggregationAction.MODEL_DOWNLOAD)
def model_download(*, actor: Any, round_id: int) -> tuple[ModelVersion, bytes]:
    """The round's base model for a site the gate allows to download it now; audited as a model download."""
    round_ = lock_round_for_site(round_id, actor.site_id, lock=False)
    _require_open(round_, RoundKind.TRAINING, RoundKind.EVALUATION)
    _require_gate(round_, actor.site_id, GateAction.DOWNLOAD_MODEL)
    version = round_.base_version
    data = verified_bytes(version)
    record(actor=actor, action=AggregationAction.MODEL_DOWNLOADED, target=version, study=round_.study_id,
           site=actor.site_id, details={"round": round_.number, "version": version.number, "sha256": version.sha256})
    return version, data


def _refuse_clear_update_of_secure_study(round_: Round) -> None:
    """A study whose protocol promises secure aggregation never takes an update in the clear: refused before
    it is decoded, and nothing is stored (the masked stages are the only way in; see docs/secure-aggregation.md)."""
    if round_.study.secure_aggregation:
        raise Conflict(f"Round {round_.number} belongs to a study with secure aggregation: it takes masked inputs "
                       "only, never an update in the clear. Nothing was stored.",
                       code="secure_aggregation_required", study=round_.study_id)


def _round_named(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A refused submission's audit event names its round: the id it was sent to and, if it exists, its number."""
    return {"round_id": kwargs.get("round_id"),
            "round": Round.objects.filter(pk=kwargs.get("round_id")).values_list("number", flat=True).first()}


@audited_service(AggregationAction.UPDATE_SUBMIT, on_denial=_events.update_refused, denial_details=_round_named)
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
    _refuse_clear_update_of_secure_study(round_)
    if round_number != round_.number:
        raise Conflict(f"This is round {round_.number}, not {round_number}.", code="stale_round", study=round_.study_id)
    if base_version != round_.base_version.number:
        raise Conflict(f"Round {round_.number} trains from model v{round_.base_version.number}, not v{base_version}.",
                       code="stale_model", study=round_.study_id)
    metrics, histogram = _split_base_evaluation(metrics, round_)
    _check_numbers(num_examples, metrics, round_)
    _check_known_examples(num_examples, round_, actor)
    _check_registered_examples(num_examples, round_, actor)
    still_allowed = _require_gate_for_submission(round_, actor.site_id, GateAction.SUBMIT_UPDATE)
    tensors = _decode(body, round_)
    weight_norm, delta_norm = _norms(tensors, version_tensors(round_.base_version))
    _check_norm(delta_norm, round_)
    digest = codec.sha256_hex(body)
    path = stored_path("updates", round_.study_id, digest)
    update = Update(round=round_, site_id=actor.site_id, base_version=round_.base_version, path=path, sha256=digest,
                    size_bytes=len(body), num_examples=num_examples, metrics=metrics, weight_norm=weight_norm,
                    delta_norm=delta_norm, idempotency_key=idempotency_key, submitted_by=actor.get_username(),
                    downloaded_at=_downloaded_at(round_, actor.site_id), received_at=timezone.now())
    # Its round, site and base version were just read under the round's lock, and one update per site was
    # checked above: only the fields are validated (no query per foreign key).
    update.full_clean(exclude=["round", "site", "base_version"], validate_unique=False, validate_constraints=False)
    update.save()
    # Before `record`: a row lock comes before the audit chain's lock (`consortium.locks`).
    _record_base_evaluation(round_.base_version, actor.site_id, metrics.get(BASE), histogram)
    record(actor=actor, action=AggregationAction.UPDATE_ACCEPTED, target=update, study=round_.study_id,
           site=actor.site_id, details={"round": round_.number, "sha256": digest, "num_examples": num_examples,
                                        "metrics": metrics, "weight_norm": weight_norm, "delta_norm": delta_norm})
    progress = submission_progress(round_, still_allowed=still_allowed)
    _events.update_received(update, round_, progress)
    round_complete_if_ready(round_, progress=progress)
    # Written last, once every check has passed and every row is in place: a refusal leaves no file behind.
    store(body, "updates", round_.study_id)
    return update, True


def _downloaded_at(round_: Round, site_id: int) -> datetime | None:
    """When the site first downloaded the round's model (its audited download): the start of its elapsed time."""
    return (AuditEvent.objects.filter(action=AggregationAction.MODEL_DOWNLOADED, study_id=round_.study_id,
                                      site_id=site_id, details__round=round_.number)
            .order_by("seq").values_list("created_at", flat=True).first())


def _check_numbers(num_examples: int, metrics: dict[str, Any], round_: Round) -> None:
    if num_examples < 1:
        raise ValidationFailed("X-Num-Examples must be a positive integer.", code="num_examples", study=round_.study_id)
    values = [metrics.get(key) for key in UPDATE_METRICS] + [v for v in (metrics.get(BASE) or {}).values()]
    for value in values:
        if value is not None and (not isinstance(value, int | float) or not math.isfinite(value)):
            raise ValidationFailed("Metrics must be finite numbers.", code="metrics", study=round_.study_id)


def _check_known_examples(num_examples: int, round_: Round, actor: Any) -> None:
    """A site may not declare more training rows than it counted in the study's statistics round, when the
    study ran one: num_examples is the site's FedAvg weight, so an inflated count would buy it the weight of
    rows it does not have. (The agent counts the same training split for both.)"""
    known = (SiteStatistics.objects.filter(round__study_id=round_.study_id, round__kind=RoundKind.STATISTICS,
                                           round__status=RoundStatus.CLOSED, site_id=actor.site_id)
             .values_list("count", "round__number").first())
    if known is not None and num_examples > known[0]:
        raise ValidationFailed(f"X-Num-Examples is {num_examples}, but {actor.site} counted {known[0]} training rows "
                               f"in the statistics round (round {known[1]}); a site may not declare more examples "
                               "than it has.", code="num_examples_above_known", study=round_.study_id,
                               site=actor.site_id)


def _check_registered_examples(num_examples: int, round_: Round, actor: Any) -> None:
    """Nor more than the rows of the data set the site registered for the study (its newest registration):
    the agent trains on a split of those rows, so a larger count is an inflated FedAvg weight. (Without a
    registration the gate refuses the site anyway.)"""
    registered = (DatasetRegistration.objects.filter(study_id=round_.study_id, site_id=actor.site_id)
                  .order_by("-registered_at", "-pk").values_list("rows", flat=True).first())
    if registered is not None and num_examples > registered:
        raise ValidationFailed(f"X-Num-Examples is {num_examples}, but {actor.site} registered a data set of "
                               f"{registered} rows for this study; a site may not declare more examples than it "
                               "registered.", code="num_examples_above_registered", study=round_.study_id,
                               site=actor.site_id)


def _decode(body: bytes, round_: Round) -> dict[str, torch.Tensor]:
    try:
        return codec.decode(body, expected=spec(round_.base_version), max_bytes=settings.MAX_UPDATE_BYTES)
    except codec.UpdateRejected as exc:
        error = PayloadTooLarge if exc.status == 413 else ValidationFailed
        raise error(exc.message, code=exc.code, study=round_.study_id) from exc


def _check_norm(delta_norm: float, round_: Round) -> None:
    """The protocol's bound on how far one update may move the model: one site cannot swamp the average
    (or make it overflow float32) however finite its values."""
    bound = round_.study.max_update_norm
    if not math.isfinite(delta_norm) or delta_norm > bound:
        raise ValidationFailed(f"The update moves the model by {delta_norm:.4g} (L2 norm of update minus base); "
                               f"the study's protocol allows at most {bound:g}.", code="update_norm",
                               study=round_.study_id)


def _norms(tensors: dict[str, torch.Tensor], base: dict[str, torch.Tensor]) -> tuple[float, float]:
    return norm.l2_norm(tensors), norm.delta_norm(base, tensors)


def _split_base_evaluation(metrics: dict[str, Any], round_: Round) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The update's `base` evaluation checked, and its score histogram taken out: the histogram is kept only
    with the model version (`ScoreHistogram`, and in its evaluation's sum), never in the update's row, the audit
    log or a live event."""
    if metrics.get(BASE) is None:
        return metrics, None
    base, histogram = _checked_evaluation(metrics[BASE], round_, required=False)
    return {**metrics, BASE: base}, histogram


def _checked_evaluation(evaluation: Any, round_: Round, *, required: bool) -> tuple[dict[str, Any], Any]:
    """A site's evaluation of a model (untrusted): (its metrics, its score histogram or None). Loss, accuracy and
    AUC are finite numbers in range or null; the validation rows a whole number (positive when `required`);
    the histogram counts exactly those rows."""
    def refuse(message: str, code: str = "metrics") -> ValidationFailed:
        return ValidationFailed(message, code=code, study=round_.study_id)

    if not isinstance(evaluation, dict):
        raise refuse("The model's evaluation must be a JSON object.")
    unknown = sorted(set(evaluation) - {*EVALUATION_METRICS, SCORE_HISTOGRAM})
    if unknown:
        raise refuse(f"Unknown evaluation metrics: {', '.join(unknown)}.")
    metrics = {key: evaluation.get(key) for key in EVALUATION_METRICS}
    for value in metrics.values():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not math.isfinite(value)):
            raise refuse("Metrics must be finite numbers.")
    examples = metrics[VAL_EXAMPLES]
    if (examples is None and required) or (examples is not None and (examples < (1 if required else 0)
                                                                      or examples != int(examples))):
        raise refuse("val_examples must be the number of validation rows" + (" (at least 1)." if required else "."))
    if not all(metrics[key] is None or 0 <= metrics[key] <= 1 for key in (VAL_ACCURACY, VAL_AUC)) or (
            metrics[VAL_LOSS] is not None and metrics[VAL_LOSS] < 0):
        raise refuse("Accuracy and AUC must lie between 0 and 1, and the loss must not be negative.")
    histogram = evaluation.get(SCORE_HISTOGRAM)
    if histogram is not None:
        problem = federated_metrics.histogram_problem(histogram, examples)
        if problem:
            raise refuse(problem, code="score_histogram")
    return metrics, histogram


# The version's evaluation keeps the sum of its sites' score histograms and which sites sent one.
HISTOGRAM_SUM = "score_histogram_sum"
HISTOGRAM_SITES = "score_histogram_sites"


def _record_base_evaluation(version: ModelVersion, site_id: int, base: dict[str, Any] | None,
                            histogram: dict[str, list[int]] | None = None) -> None:
    """Keep a site's evaluation of a model on its own validation split, and recompute the model's global figures.

    Each site's loss, accuracy and AUC stay as it reported them; an AUC the site could not compute is null, with
    the reason. The global loss and accuracy are the sites' means weighted by validation rows; the global AUC is
    computed from the sum of the sites' score histograms (a federated ROC curve): the AUC over every site's
    validation rows, without pooling any, and defined even when some sites hold one class only. The version keeps
    the running sum (`ScoreHistogram` keeps each site's, never shown), so that recording one site costs the
    same at 200 sites as at 2."""
    if not base or not base.get(VAL_EXAMPLES):
        return
    version = locked(ModelVersion.objects.filter(pk=version.pk).only("pk", "evaluation")).get()
    key = str(site_id)
    entry = {name: base.get(name) for name in EVALUATION_METRICS}
    if entry[VAL_AUC] is None:
        entry[VAL_AUC_NOTE] = federated_metrics.auc_missing_reason(histogram)
    sites = {**version.evaluation.get("sites", {}), key: entry}
    total = version.evaluation.get(HISTOGRAM_SUM) or federated_metrics.summed([])
    with_histogram = set(version.evaluation.get(HISTOGRAM_SITES, [])) - {key}
    previous = ScoreHistogram.objects.filter(version=version, site_id=site_id).first()
    if previous is not None:
        total = federated_metrics.subtracted(total, previous.histogram)
        previous.delete()
    if histogram is not None:
        ScoreHistogram.objects.create(version=version, site_id=site_id, histogram=histogram)
        total, with_histogram = federated_metrics.summed([total, histogram]), with_histogram | {key}
    version.evaluation = {"sites": sites, "global": _global_evaluation(sites, with_histogram, total),
                          HISTOGRAM_SUM: total, HISTOGRAM_SITES: sorted(with_histogram)}
    version.save(update_fields=["evaluation"])


def _global_evaluation(sites: dict[str, dict[str, Any]], with_histogram: set[str],
                       histogram_sum: dict[str, list[int]]) -> dict[str, Any]:
    total = sum(entry[VAL_EXAMPLES] for entry in sites.values())
    figures: dict[str, Any] = {
        key: sum(e[key] * e[VAL_EXAMPLES] for e in sites.values()) / total
        for key in (VAL_LOSS, VAL_ACCURACY) if all(e.get(key) is not None for e in sites.values())}
    if with_histogram == set(sites):
        auc = federated_metrics.auc_from_histogram(histogram_sum)
        method, note = "federated_roc", "only one class in every site's validation split"
    elif all(e.get(VAL_AUC) is not None for e in sites.values()):
        # Agents that send no score histogram: the mean of the sites' AUCs, weighted by validation rows.
        auc = sum(e[VAL_AUC] * e[VAL_EXAMPLES] for e in sites.values()) / total
        method, note = "site_mean", ""
    else:
        auc, method, note = None, "", "a site without a score histogram could not compute its AUC"
    figures[VAL_EXAMPLES] = total
    figures.update({VAL_AUC: auc, VAL_AUC_METHOD: method} if auc is not None else {VAL_AUC_NOTE: note})
    return figures


@audited_service(AggregationAction.STATISTICS_SUBMIT, on_denial=_events.update_refused, denial_details=_round_named)
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
    still_allowed = _require_gate_for_submission(round_, actor.site_id, GateAction.SUBMIT_UPDATE)
    row = SiteStatistics(round=round_, site_id=actor.site_id, features=features, count=count, sums=sums,
                         sums_of_squares=sums_of_squares, received_at=timezone.now())
    row.full_clean()
    row.save()
    # The figures themselves stay out of the audit details: no site's statistics are shown to others.
    record(actor=actor, action=AggregationAction.STATISTICS_ACCEPTED, target=round_, study=round_.study_id,
           site=actor.site_id, details={"round": round_.number, "count": count, "features": len(features)})
    progress = submission_progress(round_, still_allowed=still_allowed)
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


@audited_service(AggregationAction.EVALUATION_SUBMIT, on_denial=_events.update_refused, denial_details=_round_named)
def evaluation_submit(*, actor: Any, round_id: int, round_number: int, base_version: int,
                      metrics: dict[str, Any]) -> Evaluation:
    """A site's evaluation of the study's final model in an evaluation round: loss, accuracy, AUC, validation rows
    and a score histogram; never rows, never weights. It fills the model version's evaluation, and the round
    closes once every eligible site has answered (or at its deadline)."""
    round_ = lock_round_for_site(round_id, actor.site_id)
    if Evaluation.objects.filter(round=round_, site_id=actor.site_id).exists():
        raise Conflict(f"{actor.site} already sent its evaluation for round {round_.number}.",
                       code="duplicate_evaluation", study=round_.study_id, site=actor.site_id)
    _require_open(round_, RoundKind.EVALUATION)
    if round_number != round_.number:
        raise Conflict(f"This is round {round_.number}, not {round_number}.", code="stale_round", study=round_.study_id)
    if base_version != round_.base_version.number:
        raise Conflict(f"Round {round_.number} evaluates model v{round_.base_version.number}, not v{base_version}.",
                       code="stale_model", study=round_.study_id)
    entry, histogram = _checked_evaluation(metrics, round_, required=True)
    still_allowed = _require_gate_for_submission(round_, actor.site_id, GateAction.SUBMIT_UPDATE)
    row = Evaluation(round=round_, site_id=actor.site_id, metrics=entry, submitted_by=actor.get_username(),
                     received_at=timezone.now())
    row.full_clean()
    row.save()
    # Before `record`: a row lock comes before the audit chain's lock (`consortium.locks`).
    _record_base_evaluation(round_.base_version, actor.site_id, entry, histogram)
    # The histogram stays out of the audit details, as out of every page: only the version's evaluation holds it.
    record(actor=actor, action=AggregationAction.EVALUATION_ACCEPTED, target=round_, study=round_.study_id,
           site=actor.site_id, details={"round": round_.number, "version": round_.base_version.number,
                                        "metrics": entry, SCORE_HISTOGRAM: histogram is not None})
    progress = submission_progress(round_, still_allowed=still_allowed)
    _events.evaluation_received(row, round_, progress)
    round_complete_if_ready(round_, progress=progress)
    return row
