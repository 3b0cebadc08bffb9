"""Aggregating a round: lock it, ask the gate again inside the same transaction, exclude updates
from sites no longer eligible (per the study's revocation policy), run the study's strategy, and
store exactly one new model version with its provenance. Safe to run twice or after a crash."""

import logging
import math
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import torch
from django.db import OperationalError, transaction
from django.utils import timezone

from aggregation.audit_actions import AggregationAction
from aggregation.choices import ROUND_LIVE, RoundStatus, UpdateStatus
from aggregation.locks import lock_round
from aggregation.models import ModelVersion, Round, Update
from aggregation.selectors import privacy_budget
from aggregation.services import _events
from aggregation.services.recovery import claim_aggregation
from aggregation.services.round_state import move_round
from aggregation.services.rounds import round_open_next
from aggregation.storage import absolute, store, version_tensors
from consortium.audit.log import SYSTEM, bounded_reason, record
from consortium.federated import codec
from consortium.version import code_version
from studies.choices import GateAction, GateCheck, RevocationPolicy
from studies.events import publish_gate
from studies.governance import GateResult, evaluate
from studies.models import AgreementVersion, Study
from studies.services.privacy import study_round_released

if TYPE_CHECKING:
    from aggregation.strategies import Weighting

logger = logging.getLogger(__name__)

PREDICTABLE_EARLIER = ("An earlier model version of this study was released with predictable DP noise, so the "
                       "sites' data behind it was not protected; the cumulative budget is no guarantee.")


def round_aggregate(*, round_id: int, moment: datetime | None = None) -> ModelVersion | None:
    """Aggregate the round once. A round already finished returns its version (or None): idempotent.
    A round another worker is aggregating right now is left to it (None), without waiting.
    An unexpected error marks the round failed, recorded, and is re-raised for the worker's log."""
    try:
        with transaction.atomic():
            # The claim lives as long as this transaction: if this worker dies, the scheduler sees it free
            # and sends the round again (`recovery`).
            if not claim_aggregation(round_id):
                logger.info("Round %s is being aggregated by another worker", round_id)
                return None
            logger.info("Aggregating round %s", round_id)
            return _aggregate(round_id, moment or timezone.now())
    except OperationalError:
        # Transient (a lock, a dropped connection): the round stays aggregating for the task's retry.
        logger.warning("Aggregation of round %s hit a database error; it will be retried", round_id, exc_info=True)
        raise
    except Exception as exc:
        logger.exception("Aggregation of round %s failed", round_id)
        with transaction.atomic():
            round_ = lock_round(round_id)
            if round_.status in ROUND_LIVE:
                reason = bounded_reason(f"{type(exc).__name__}: {exc}")  # a database error can quote whole rows
                move_round(round_, RoundStatus.FAILED, actor=SYSTEM, reason=reason)
        raise


def _aggregate(round_id: int, moment: datetime) -> ModelVersion | None:
    started = time.perf_counter()
    # The study, then the round (`consortium.locks`): held until commit, so no governance change of the
    # study commits between the gate read below and this aggregation's commit.
    round_ = lock_round(round_id)
    if round_.status not in ROUND_LIVE:
        return ModelVersion.objects.filter(round=round_).first()
    study = round_.study
    if round_.status == RoundStatus.OPEN:
        move_round(round_, RoundStatus.AGGREGATING, actor=SYSTEM, reason="Aggregation started.")
    gate = evaluate(study, GateAction.AGGREGATE, moment=moment)
    round_.gate_result = gate.as_dict()
    round_.save(update_fields=["gate_result"])
    publish_gate(study, trigger="aggregation", gate=gate)
    refusals = [check for check in gate.study_checks if not check.passed and check.name != GateCheck.QUORUM]
    if refusals:
        return _block(round_, " ".join(check.reason for check in refusals), gate)
    updates = list(round_.updates.filter(status=UpdateStatus.ACCEPTED).select_related("site"))
    included = apply_exclusions(updates, gate, round_)
    if len(included) < len(updates) and study.revocation_policy == RevocationPolicy.ABORT:
        return _block(round_, "Aborted: an update came from a site no longer eligible (revocation policy: abort).",
                      gate)
    if len(included) < study.quorum:
        return _block(round_, f"Only {len(included)} eligible updates; the quorum is {study.quorum}.", gate)
    return _produce_version(study, round_, included, gate, started)


def apply_exclusions(updates: list[Update], gate: GateResult, round_: Round) -> list[Update]:
    """Mark updates from sites the gate no longer allows as excluded, each with that site's reasons."""
    eligible = {verdict.site_id for verdict in gate.eligible_sites}
    included = []
    for update in updates:
        if update.site_id in eligible:
            included.append(update)
            continue
        verdict = gate.for_site(update.site_id)
        reasons = " ".join(c.reason for c in verdict.failures) if verdict else "The site no longer takes part."
        update.status, update.exclusion_reason = UpdateStatus.EXCLUDED, reasons
        update.save(update_fields=["status", "exclusion_reason"])
        record(actor=SYSTEM, action=AggregationAction.UPDATE_EXCLUDED, target=update, study=round_.study_id,
               site=update.site_id, details={"round": round_.number, "reason": reasons})
        _events.update_excluded(update, round_, reasons)
    return included


def _block(round_: Round, reason: str, gate: GateResult) -> None:
    move_round(round_, RoundStatus.BLOCKED, actor=SYSTEM, reason=reason, details={"gate": gate.as_dict()})
    return None


def _produce_version(study: Study, round_: Round, included: list[Update], gate: GateResult,
                     started: float) -> ModelVersion | None:
    from aggregation import strategies  # TODO(lead): top-level once strategies.py lands

    base = round_.base_version
    current = version_tensors(base)
    state = codec.read_file(absolute(base.optimizer_state_path)) if base.optimizer_state_path else {}
    pairs = [(codec.LazyTensors(absolute(update.path)), float(update.num_examples)) for update in included]
    weights, state, weighting = strategies.aggregate(study.strategy, current, pairs, state, _strategy_settings(study))
    broken = not_finite(weights, state)
    if broken:
        # Nothing is stored: the next round trains from the latest stored version again.
        move_round(round_, RoundStatus.FAILED, actor=SYSTEM, details={"not_finite": broken},
                   reason=f"The aggregate is not finite (NaN or infinite values in {', '.join(broken)}); "
                          f"no model version was stored, the next round trains from v{base.number}.")
        return None
    data = codec.encode(weights)
    path, digest = store(data, "versions", study.pk)
    state_path = store(codec.encode(state), "optimizer", study.pk)[0] if state else ""
    seconds = time.perf_counter() - started
    provenance = {**version_provenance(study, round_, included, gate, weighting), "aggregation_seconds": seconds,
                  # The global model's L2 norm, beside the sites' update norms on the dashboard.
                  "weight_norm": math.sqrt(sum(float(t.double().pow(2).sum()) for t in weights.values()))}
    version = ModelVersion(study=study, number=base.number + 1, round=round_, path=path, sha256=digest,
                           size_bytes=len(data), spec=base.spec, optimizer_state_path=state_path,
                           provenance=provenance)
    version.full_clean()
    version.save()
    Update.objects.filter(pk__in=[u.pk for u in included]).update(status=UpdateStatus.INCLUDED)
    record_version(version, round_, provenance)
    study_round_released(study=study, round_number=round_.number, noise_multiplier=study.dp_noise_multiplier)
    waited = max((timezone.now() - round_.aggregation_started_at).total_seconds() - seconds, 0.0)
    _events.aggregation_finished(round_, version, included, seconds, waited)
    move_round(round_, RoundStatus.CLOSED, actor=SYSTEM, reason=f"Model v{version.number} aggregated.")
    round_open_next(study_id=study.pk)
    return version


def record_version(version: ModelVersion, round_: Round, provenance: dict[str, Any]) -> None:
    """The audit event alone reconciles with the provenance: every included site with the weight applied
    and its update's SHA-256, every site left out of this round with the reason."""
    excluded = round_.updates.filter(status=UpdateStatus.EXCLUDED).select_related("site").order_by("site__name")
    included = [{key: c[key] for key in ("site_id", "site", "num_examples", "weight", "update_sha256")}
                for c in provenance["contributors"]]
    record(actor=SYSTEM, action=AggregationAction.MODEL_VERSION_CREATED, target=version, study=version.study_id,
           details={"version": version.number, "round": round_.number, "sha256": version.sha256,
                    "sites": [c["site_id"] for c in included], "strategy": provenance["strategy"]["name"],
                    "included": included, "weighting": provenance["weighting"],
                    "excluded": [{"site_id": u.site_id, "site": u.site.name, "reason": u.exclusion_reason}
                                 for u in excluded]})


def not_finite(weights: dict[str, Any], state: dict[str, Any]) -> list[str]:
    """The tensors (at most three named) of the new model or its optimizer state holding NaN or infinity."""
    names = [name for name, tensor in [*weights.items(), *state.items()] if not bool(torch.isfinite(tensor).all())]
    return names[:3] + ([f"{len(names) - 3} more"] if len(names) > 3 else [])


def _strategy_settings(study: Study) -> dict[str, Any]:
    """The protocol's strategy settings. Deliberately no seed for the DP noise: it comes from the OS."""
    return {
        "server_learning_rate": study.server_learning_rate,
        "trim_fraction": study.trim_fraction,
        "byzantine_sites": study.byzantine_sites,
        "dp_noise_multiplier": study.dp_noise_multiplier,
        "dp_clip_norm": study.dp_clip_norm,
    }


def version_provenance(study: Study, round_: Round, included: list[Update], gate: GateResult,
                weighting: "Weighting") -> dict[str, Any]:
    """Everything needed to trace the model: who contributed under which agreement, with the example count
    each declared and the weight the strategy actually applied, the gate, the code."""
    agreement = AgreementVersion.objects.filter(study=study).order_by("-version").first()
    dpia = getattr(study, "dpia", None)
    return {
        "round": round_.number,
        "base_version": {"number": round_.base_version.number, "sha256": round_.base_version.sha256},
        "contributors": [
            {"site_id": u.site_id, "site": u.site.name, "num_examples": u.num_examples, "weight": weight,
             "update_sha256": u.sha256, "agreement_version": agreement.version if agreement else None}
            for u, weight in zip(included, weighting.weights, strict=True)
        ],
        "weighting": weighting.note,
        "agreement": {"version": agreement.version, "sha256": agreement.sha256} if agreement else None,
        "dpia": {"status": dpia.status, "risk_level": dpia.risk_level,
                 "valid_until": dpia.valid_until.isoformat() if dpia and dpia.valid_until else None} if dpia else None,
        "gate": gate.as_dict(),
        "strategy": {"name": study.strategy, "settings": _strategy_settings(study)},
        "protocol_sha256": study.protocol_sha256(),
        "code_version": code_version(),
        "privacy": _privacy(study),
    }


def _privacy(study: Study) -> dict[str, Any] | None:
    """Central DP: the budget spent once this round counts (None when DP is off). Void, not a guarantee,
    when an earlier version of the study was released with predictable noise: those rounds' data is exposed."""
    budget = privacy_budget(study, releasing=True)
    if budget is not None and ModelVersion.objects.filter(study=study, provenance__privacy__void=True).exists():
        budget = {**budget, "void": True, "void_reason": PREDICTABLE_EARLIER}
    return budget
