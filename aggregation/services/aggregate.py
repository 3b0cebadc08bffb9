"""Aggregating a round: lock it, ask the gate again inside the same transaction, exclude updates
from sites no longer eligible (per the study's revocation policy), run the study's strategy, and
store exactly one new model version with its provenance. Safe to run twice or after a crash."""

import logging
import math
import time
from datetime import datetime
from typing import Any

from django.db import OperationalError, transaction
from django.utils import timezone

from aggregation import codec
from aggregation.choices import ROUND_LIVE, RoundKind, RoundStatus, UpdateStatus
from aggregation.models import ModelVersion, Round, Update
from aggregation.selectors import privacy_budget
from aggregation.services import _events
from aggregation.services._common import absolute, lock_round, move_round, store, version_tensors
from aggregation.services.recovery import claim_aggregation
from aggregation.services.rounds import round_open_next
from consortium.audit import SYSTEM, record
from consortium.version import code_version
from studies.choices import GateAction, RevocationPolicy
from studies.events import publish_gate
from studies.governance import GateResult, evaluate
from studies.models import AgreementVersion, Study

logger = logging.getLogger(__name__)


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
                move_round(round_, RoundStatus.FAILED, actor=SYSTEM, reason=f"{type(exc).__name__}: {exc}")
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
    refusals = [check for check in gate.study_checks if not check.passed and check.name != "quorum"]
    if refusals:
        return _block(round_, " ".join(check.reason for check in refusals), gate)
    updates = list(round_.updates.filter(status=UpdateStatus.ACCEPTED).select_related("site"))
    included = _apply_exclusions(updates, gate, round_)
    if len(included) < len(updates) and study.revocation_policy == RevocationPolicy.ABORT:
        return _block(round_, "Aborted: an update came from a site no longer eligible (revocation policy: abort).",
                      gate)
    if len(included) < study.quorum:
        return _block(round_, f"Only {len(included)} eligible updates; the quorum is {study.quorum}.", gate)
    return _produce_version(study, round_, included, gate, started)


def _apply_exclusions(updates: list[Update], gate: GateResult, round_: Round) -> list[Update]:
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
        record(actor=SYSTEM, action="aggregation.update.excluded", target=update, study=round_.study_id,
               site=update.site_id, details={"round": round_.number, "reason": reasons})
        _events.update_excluded(update, round_, reasons)
    return included


def _block(round_: Round, reason: str, gate: GateResult) -> None:
    move_round(round_, RoundStatus.BLOCKED, actor=SYSTEM, reason=reason, details={"gate": gate.as_dict()})
    return None


def _produce_version(study: Study, round_: Round, included: list[Update], gate: GateResult,
                     started: float) -> ModelVersion:
    from aggregation import strategies  # TODO(lead): top-level once strategies.py lands

    base = round_.base_version
    current = version_tensors(base)
    state = codec.read_file(absolute(base.optimizer_state_path)) if base.optimizer_state_path else {}
    pairs = [(codec.LazyTensors(absolute(update.path)), float(update.num_examples)) for update in included]
    weights, state = strategies.aggregate(study.strategy, current, pairs, state, _strategy_settings(study, round_))
    data = codec.encode(weights)
    path, digest = store(data, "versions", study.pk)
    state_path = store(codec.encode(state), "optimizer", study.pk)[0] if state else ""
    seconds = time.perf_counter() - started
    provenance = {**_provenance(study, round_, included, gate), "aggregation_seconds": seconds,
                  # The global model's L2 norm, beside the sites' update norms on the dashboard.
                  "weight_norm": math.sqrt(sum(float(t.double().pow(2).sum()) for t in weights.values()))}
    version = ModelVersion(study=study, number=base.number + 1, round=round_, path=path, sha256=digest,
                           size_bytes=len(data), spec=base.spec, optimizer_state_path=state_path,
                           provenance=provenance)
    version.full_clean()
    version.save()
    Update.objects.filter(pk__in=[u.pk for u in included]).update(status=UpdateStatus.INCLUDED)
    record(actor=SYSTEM, action="aggregation.model_version.created", target=version, study=study,
           details={"version": version.number, "round": round_.number, "sha256": digest,
                    "sites": [u.site_id for u in included], "strategy": study.strategy})
    waited = max((timezone.now() - round_.aggregation_started_at).total_seconds() - seconds, 0.0)
    _events.aggregation_finished(round_, version, included, seconds, waited)
    move_round(round_, RoundStatus.CLOSED, actor=SYSTEM, reason=f"Model v{version.number} aggregated.")
    round_open_next(study_id=study.pk)
    return version


def _strategy_settings(study: Study, round_: Round) -> dict[str, Any]:
    return {
        "server_learning_rate": study.server_learning_rate,
        "trim_fraction": study.trim_fraction,
        "byzantine_sites": study.byzantine_sites,
        "dp_noise_multiplier": study.dp_noise_multiplier,
        "dp_clip_norm": study.dp_clip_norm,
        "dp_seed": round_.pk,  # DP noise: reproducible for an audit, different every round
    }


def _provenance(study: Study, round_: Round, included: list[Update], gate: GateResult) -> dict[str, Any]:
    """Everything needed to trace the model: who contributed under which agreement, the gate, the code."""
    agreement = AgreementVersion.objects.filter(study=study).order_by("-version").first()
    dpia = getattr(study, "dpia", None)
    return {
        "round": round_.number,
        "base_version": {"number": round_.base_version.number, "sha256": round_.base_version.sha256},
        "contributors": [
            {"site_id": u.site_id, "site": u.site.name, "num_examples": u.num_examples, "update_sha256": u.sha256,
             "agreement_version": agreement.version if agreement else None}
            for u in included
        ],
        "agreement": {"version": agreement.version, "sha256": agreement.sha256} if agreement else None,
        "dpia": {"status": dpia.status, "risk_level": dpia.risk_level,
                 "valid_until": dpia.valid_until.isoformat() if dpia and dpia.valid_until else None} if dpia else None,
        "gate": gate.as_dict(),
        "strategy": {"name": study.strategy, "settings": _strategy_settings(study, round_)},
        "protocol_sha256": study.protocol_sha256(),
        "code_version": code_version(),
        # Central DP: the budget spent once this round counts (None when DP is off).
        "privacy": privacy_budget(study, Round.objects.filter(study=study, kind=RoundKind.TRAINING,
                                                              status=RoundStatus.CLOSED).count() + 1),
    }
