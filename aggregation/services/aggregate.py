"""Aggregating a round: ask the gate, exclude updates from sites no longer eligible (per the study's
revocation policy), run the study's strategy outside any transaction, then store exactly one new model
version with its provenance in a short transaction that asks the gate again and refuses a stale result.
Safe to run twice or after a crash."""

import logging
import math
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import torch
from django.db import OperationalError, transaction
from django.utils import timezone

from aggregation.audit_actions import AggregationAction
from aggregation.choices import ROUND_LIVE, RoundStatus, UpdateStatus
from aggregation.dispatch import aggregation_send_on_commit, aggregation_shards_send
from aggregation.locks import lock_round
from aggregation.models import ModelVersion, Round, SecureRound, Update
from aggregation.selectors import privacy_budget
from aggregation.services import _events, secure, sharding
from aggregation.services.recovery import aggregation_claim
from aggregation.services.round_state import move_round
from aggregation.services.rounds import pooled_standardization, round_open_next
from aggregation.storage import absolute, store, version_tensors
from consortium.audit.log import SYSTEM, bounded_reason, record
from consortium.federated import codec
from consortium.federated.secagg import SecAggError, masks
from consortium.version import code_version
from studies.choices import GateAction, GateCheck, RevocationPolicy
from studies.events import publish_gate
from studies.governance import GateResult, evaluate
from studies.models import AgreementVersion, Study
from studies.services.privacy import study_round_released

if TYPE_CHECKING:
    from aggregation.strategies import Weighting

logger = logging.getLogger(__name__)
STALE = object()  # `_commit`: what the result was computed from has changed; compute it again

PREDICTABLE_EARLIER = ("An earlier model version of this study was released with predictable DP noise, so the "
                       "sites' data behind it was not protected; the cumulative budget is no guarantee.")


# Governance that changes while a round computes (a site revoked, an update excluded) makes the result stale:
# it is computed again from the inputs as they are now, at most this many times, then the round fails.
MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class Plan:
    """What a computation was started from: the round, its base version and the updates it includes, in order."""

    round_id: int
    study_id: int
    base_version_id: int
    update_ids: tuple[int, ...]


@dataclass(frozen=True)
class Computed:
    """A strategy's outcome, already written to the model store (files named by SHA-256, harmless if unused)."""

    path: str
    sha256: str
    size_bytes: int
    state_path: str
    weighting: "Weighting"
    weight_norm: float
    seconds: float
    broken: list[str]


def round_aggregate(*, round_id: int, moment: datetime | None = None) -> ModelVersion | None:
    """Aggregate the round once. A round already finished returns its version (or None): idempotent.
    A round another worker is aggregating right now is left to it (None), without waiting.

    Three steps, so no lock is held while the strategy computes: a short transaction reads the gate and
    the inputs (`_prepare`), the strategy runs outside any transaction (`_compute`), and a short
    transaction asks the gate again and stores the version only if nothing it was computed from has
    changed meanwhile (`_commit`); otherwise it is computed again, or the round blocks. The claim on the
    round lasts the three steps (and dies with the worker's connection).
    An unexpected error marks the round failed, recorded, and is re-raised for the worker's log."""
    try:
        with aggregation_claim(round_id) as claimed:
            if not claimed:
                logger.info("Round %s is being aggregated by another worker", round_id)
                return None
            logger.info("Aggregating round %s", round_id)
            return _aggregate(round_id, moment)
    except OperationalError:
        # Transient (a lock, a dropped connection): the round stays aggregating for the task's retry.
        logger.warning("Aggregation of round %s hit a database error; it will be retried", round_id, exc_info=True)
        raise
    except Exception as exc:
        logger.exception("Aggregation of round %s failed", round_id)
        _fail(round_id, bounded_reason(f"{type(exc).__name__}: {exc}"))  # a database error can quote whole rows
        raise


def _aggregate(round_id: int, moment: datetime | None) -> ModelVersion | None:
    if SecureRound.objects.filter(round_id=round_id).exists():
        return _aggregate_secure(round_id, moment)
    for _ in range(MAX_ATTEMPTS):
        plan = _prepare(round_id, moment or timezone.now())
        if not isinstance(plan, Plan):
            return plan
        groups = _shard_groups(plan)
        if len(groups) > 1:
            _dispatch_shards(plan, groups)
            return None  # the chord's callback commits (`round_commit_shards`)
        result = _commit(plan, _compute(plan), moment or timezone.now())
        if result is not STALE:
            return result
        logger.info("Round %s: governance changed during the aggregation; computing it again", round_id)
    _fail(round_id, f"Governance changed during each of {MAX_ATTEMPTS} attempts to aggregate; nothing was stored.")
    return None


def _fail(round_id: int, reason: str) -> None:
    with transaction.atomic():
        round_ = lock_round(round_id)
        if round_.status in ROUND_LIVE:
            move_round(round_, RoundStatus.FAILED, actor=SYSTEM, reason=reason)


def _prepare(round_id: int, moment: datetime) -> Plan | ModelVersion | None:
    """Short transaction: start the aggregation, ask the gate, exclude what it no longer allows, and name the
    inputs. Returns the plan, or the round's outcome when there is nothing to compute (finished, blocked)."""
    with transaction.atomic():
        round_ = lock_round(round_id)
        if round_.status not in ROUND_LIVE:
            return ModelVersion.objects.filter(round=round_).first()
        if round_.status == RoundStatus.OPEN:
            move_round(round_, RoundStatus.AGGREGATING, actor=SYSTEM, reason="Aggregation started.")
        gate = _gate(round_, moment)
        publish_gate(round_.study, trigger="aggregation", gate=gate)
        included = _eligible(round_, gate)
        if included is None:
            return None
        return Plan(round_.pk, round_.study_id, round_.base_version_id, tuple(u.pk for u in included))


def _gate(round_: Round, moment: datetime) -> GateResult:
    gate = evaluate(round_.study, GateAction.AGGREGATE, moment=moment)
    round_.gate_result = gate.as_dict()
    round_.save(update_fields=["gate_result"])
    return gate


def _eligible(round_: Round, gate: GateResult) -> list[Update] | None:
    """The updates the gate lets into the round now (others excluded, recorded); None when the round blocks."""
    study = round_.study
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
    return included


def _inputs(plan: Plan) -> tuple[Study, dict, dict, list, dict]:
    """Committed rows and stored files the computation reads: no transaction, no lock."""
    study = Study.objects.get(pk=plan.study_id)
    base = ModelVersion.objects.get(pk=plan.base_version_id)
    updates = Update.objects.in_bulk(plan.update_ids)
    current = version_tensors(base)
    state = codec.read_file(absolute(base.optimizer_state_path)) if base.optimizer_state_path else {}
    pairs = [(codec.LazyTensors(absolute(updates[pk].path)), float(updates[pk].num_examples))
             for pk in plan.update_ids]
    return study, current, state, pairs, _strategy_settings(study)


def _compute(plan: Plan) -> Computed:
    """The strategy, outside any transaction: reads committed rows and stored files, writes files only."""
    from aggregation import strategies

    started = time.perf_counter()
    study, current, state, pairs, strategy_settings = _inputs(plan)
    weights, state, weighting = strategies.aggregate(study.strategy, current, pairs, state, strategy_settings)
    return _stored(study.pk, weights, state, weighting, time.perf_counter() - started)


def _stored(study_id: int, weights: dict, state: dict, weighting: "Weighting", seconds: float) -> Computed:
    broken = not_finite(weights, state)
    if broken:
        return Computed("", "", 0, "", weighting, math.nan, seconds, broken)
    data = codec.encode(weights)
    path, digest = store(data, "versions", study_id)
    state_path = store(codec.encode(state), "optimizer", study_id)[0] if state else ""
    # The global model's L2 norm, beside the sites' update norms on the dashboard.
    norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in weights.values()))
    return Computed(path, digest, len(data), state_path, weighting, norm, seconds, broken)


def _shard_groups(plan: Plan) -> list[list[str]]:
    study = Study.objects.get(pk=plan.study_id)
    if not sharding.shardable(study.strategy, _strategy_settings(study)):
        return [[]]
    return sharding.shards(ModelVersion.objects.get(pk=plan.base_version_id).spec)


def _dispatch_shards(plan: Plan, groups: list[list[str]]) -> None:
    sharding.heartbeat(plan.round_id)
    aggregation_shards_send(asdict(plan), groups)


def round_aggregate_shard(*, plan: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """One shard of a sharded aggregation: the strategy on these tensors, written to the model store."""
    plan_ = _plan(plan)
    sharding.heartbeat(plan_.round_id)
    started = time.perf_counter()
    study, current, state, pairs, strategy_settings = _inputs(plan_)
    weights, state, weighting = sharding.aggregate_shard(study.strategy, current, pairs, state, strategy_settings,
                                                         names)
    path = store(codec.encode(weights), "shards", study.pk)[0]
    state_path = store(codec.encode(state), "shards", study.pk)[0] if state else ""
    sharding.heartbeat(plan_.round_id)
    return {"path": path, "state_path": state_path, "weights": list(weighting.weights), "note": weighting.note,
            "seconds": time.perf_counter() - started}


def round_commit_shards(*, plan: dict[str, Any], parts: list[dict[str, Any]],
                        moment: datetime | None = None) -> ModelVersion | None:
    """The chord's callback: join the shards (in the model's tensor order) and commit as an unsharded run
    would. A stale result sends the aggregation again from the start."""
    from aggregation.strategies import Weighting

    plan_ = _plan(plan)
    with aggregation_claim(plan_.round_id) as claimed:
        if not claimed:
            return None
        order = list(ModelVersion.objects.get(pk=plan_.base_version_id).spec)
        weights = sharding.join([sharding.read_part(part["path"]) for part in parts], order)
        state = sharding.join([sharding.read_part(part["state_path"]) for part in parts],
                              sorted({k for part in parts for k in sharding.read_part(part["state_path"])}))
        weighting = Weighting(tuple(parts[0]["weights"]), parts[0]["note"])
        computed = _stored(plan_.study_id, weights, state, weighting, max(part["seconds"] for part in parts))
        result = _commit(plan_, computed, moment or timezone.now())
    if result is STALE:
        aggregation_send_on_commit(plan_.round_id)  # outside any transaction: sent at once
        return None
    return result


def _plan(data: dict[str, Any]) -> Plan:
    return Plan(data["round_id"], data["study_id"], data["base_version_id"], tuple(data["update_ids"]))


def _commit(plan: Plan, computed: Computed, moment: datetime) -> ModelVersion | None | object:
    """Short transaction: the round locked again, the gate asked again. The result is stored only if the round
    still waits for it and exactly the planned updates are still the eligible ones; else STALE (compute again)
    or the round's outcome (finished by another worker, blocked, failed)."""
    with transaction.atomic():
        round_ = lock_round(plan.round_id)
        if round_.status != RoundStatus.AGGREGATING:
            return ModelVersion.objects.filter(round=round_).first()
        if round_.base_version_id != plan.base_version_id:
            return STALE
        gate = _gate(round_, moment)
        included = _eligible(round_, gate)
        if included is None:
            publish_gate(round_.study, trigger="aggregation", gate=gate)
            return None
        if tuple(u.pk for u in included) != plan.update_ids:
            return STALE
        if computed.broken:
            # Nothing is stored: the next round trains from the latest stored version again.
            move_round(round_, RoundStatus.FAILED, actor=SYSTEM, details={"not_finite": computed.broken},
                       reason=f"The aggregate is not finite (NaN or infinite values in {', '.join(computed.broken)}); "
                              f"no model version was stored, the next round trains from v{round_.base_version.number}.")
            return None
        return _produce_version(round_.study, round_, included, gate, computed)


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
                     computed: Computed) -> ModelVersion:
    base = round_.base_version
    provenance = {**version_provenance(study, round_, included, gate, computed.weighting),
                  "aggregation_seconds": computed.seconds, "weight_norm": computed.weight_norm}
    version = ModelVersion(study=study, number=base.number + 1, round=round_, path=computed.path,
                           sha256=computed.sha256, size_bytes=computed.size_bytes, spec=base.spec,
                           optimizer_state_path=computed.state_path, provenance=provenance)
    version.full_clean()
    version.save()
    Update.objects.filter(pk__in=[u.pk for u in included]).update(status=UpdateStatus.INCLUDED)
    record_version(version, round_, provenance)
    waited = max((timezone.now() - round_.aggregation_started_at).total_seconds() - computed.seconds, 0.0)
    study_round_released(study=study, round_number=round_.number, noise_multiplier=study.dp_noise_multiplier)
    _events.aggregation_finished(round_, version, included, computed.seconds, waited)
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


# --- secure aggregation: the sum of masked inputs, unmasked ----------------------------------------------------

def _aggregate_secure(round_id: int, moment: datetime | None) -> ModelVersion | None:
    """A secure round's aggregation: the survivors' unmasking answers remove the masks of the sum only, whose
    weighted mean of the sites' changes is added to the base model; the strategy then acts on that aggregate
    (FedAvg keeps it, a server optimiser takes its step). The gate is asked before and at the commit: a study
    it refuses blocks the round, a survivor it no longer allows fails it closed (one input can never be taken
    out of a masked sum). A tampered share or input fails the round closed with the reason."""
    with transaction.atomic():
        round_ = lock_round(round_id)
        if round_.status != RoundStatus.AGGREGATING:
            return ModelVersion.objects.filter(round=round_).first()
        if _secure_refused(round_, _gate(round_, moment or timezone.now())):
            return None
        secure_round = SecureRound.objects.get(round=round_)
    started = time.perf_counter()
    try:
        result = secure.rebuild(secure_round).finish()
    except SecAggError as error:
        with transaction.atomic():
            round_ = lock_round(round_id)
            if round_.status == RoundStatus.AGGREGATING:
                secure.secure_fail(round_, error.reason)
        return None
    if result.sums is not None:
        with transaction.atomic():
            round_ = lock_round(round_id)
            if round_.status != RoundStatus.AGGREGATING:
                return None
            gate = _gate(round_, moment or timezone.now())
            if not _secure_refused(round_, gate):
                _close_secure_statistics(round_, result)
        return None
    computed = _secure_compute(round_, result, started)
    with transaction.atomic():
        round_ = lock_round(round_id)
        if round_.status != RoundStatus.AGGREGATING:
            return ModelVersion.objects.filter(round=round_).first()
        gate = _gate(round_, moment or timezone.now())
        if _secure_refused(round_, gate):
            return None
        if computed.broken:
            secure.secure_fail(round_, f"The aggregate is not finite ({', '.join(computed.broken)}); nothing stored.")
            return None
        return _produce_secure_version(round_, gate, computed, result)


def _secure_refused(round_: Round, gate: GateResult) -> bool:
    """Whether the gate now stops the round: a study-level refusal blocks it, a survivor it no longer allows
    fails it closed."""
    refusals = [check for check in gate.study_checks if not check.passed and check.name != GateCheck.QUORUM]
    survivors = secure.survivor_ids(round_)
    lost = sorted(survivors - {verdict.site_id for verdict in gate.eligible_sites})
    if not refusals and not lost:
        return False
    publish_gate(round_.study, trigger="aggregation", gate=gate)
    if refusals:
        secure.secure_fail(round_, " ".join(check.reason for check in refusals), gate=gate)
    else:
        secure.secure_fail(round_, f"{len(lost)} of the sites whose masked input is in the sum lost the gate's "
                                   "approval; one input can never be taken out of a masked sum, so nothing is stored.",
                           gate=gate)
    return True


def _secure_compute(round_: Round, result: Any, started: float) -> Computed:
    """The new model from the unmasked mean change, through the study's strategy (outside any transaction)."""
    from aggregation import strategies

    study = Study.objects.get(pk=round_.study_id)
    current = version_tensors(round_.base_version)
    shapes = {name: tuple(tensor.shape) for name, tensor in current.items()}
    change = masks.unflatten(result.mean.astype("float32"), shapes)
    averaged = {name: current[name] + torch.from_numpy(change[name].copy()).to(current[name].dtype)
                for name in current}
    base = round_.base_version
    state = codec.read_file(absolute(base.optimizer_state_path)) if base.optimizer_state_path else {}
    # Any DP noise is in the sum already (each site added its share): the coordinator adds none of its own.
    settings = {**_strategy_settings(study), "dp_noise_multiplier": 0.0}
    weights, state, _ = strategies.aggregate(study.strategy, current, [(averaged, 1.0)], state, settings)
    weighting = strategies.Weighting((), _SECURE_WEIGHTING.format(
        sites=len(result.survivors), total=result.total_weight, error=result.max_error))
    return _stored(study.pk, weights, state, weighting, time.perf_counter() - started)


_SECURE_WEIGHTING = ("Secure aggregation: the mean of {sites} sites' masked changes weighted by their examples "
                     "({total} in all; with distributed DP every site counts 1), unmasked as a sum only; no site's "
                     "update or weight is known to the coordinator. Largest quantisation error per coordinate: "
                     "{error:.2e}.")


def _produce_secure_version(round_: Round, gate: GateResult, computed: Computed, result: Any) -> ModelVersion:
    study, base = round_.study, round_.base_version
    digests = secure.masked_digests(round_)
    sites = {site.code: site for site in secure.sites_by_code(result.survivors + result.dropped)}
    agreement = AgreementVersion.objects.filter(study=study).order_by("-version").first()
    provenance = {**version_provenance(study, round_, [], gate, computed.weighting),
                  "aggregation_seconds": computed.seconds, "weight_norm": computed.weight_norm}
    provenance["contributors"] = [
        {"site_id": sites[code].pk, "site": sites[code].name, "num_examples": None, "weight": None,
         "update_sha256": digests[code], "agreement_version": agreement.version if agreement else None}
        for code in result.survivors]
    summary = {"survivors": list(result.survivors), "dropped": list(result.dropped),
               "total_weight": result.total_weight, "max_error": result.max_error}
    provenance["secure_aggregation"] = summary
    version = ModelVersion(study=study, number=base.number + 1, round=round_, path=computed.path,
                           sha256=computed.sha256, size_bytes=computed.size_bytes, spec=base.spec,
                           optimizer_state_path=computed.state_path, provenance=provenance)
    version.full_clean()
    version.save()
    record_version(version, round_, provenance)
    secure.secure_done(round_, summary)
    waited = max((timezone.now() - round_.aggregation_started_at).total_seconds() - computed.seconds, 0.0)
    study_round_released(study=study, round_number=round_.number, noise_multiplier=study.dp_noise_multiplier)
    _events.aggregation_finished(round_, version, [], computed.seconds, waited,
                                 site_ids=[sites[code].pk for code in result.survivors])
    move_round(round_, RoundStatus.CLOSED, actor=SYSTEM, reason=f"Model v{version.number} aggregated from the "
                                                               f"masked inputs of {len(result.survivors)} sites.")
    round_open_next(study_id=study.pk)
    return version


def _close_secure_statistics(round_: Round, result: Any) -> None:
    """A secure statistics round: the exact sums of the survivors' counts, sums and sums of squares become the
    pooled mean and SD, unless their count exceeds the rows the survivors registered (a site declared more than
    it holds: the round fails closed)."""
    features = list(round_.study.feature_names)
    width = len(features)
    count, sums, squares = result.sums[0], list(result.sums[1:1 + width]), list(result.sums[1 + width:])
    registered = secure.registered_rows(round_, result.survivors)
    if not 0 < round(count) <= registered:
        secure.secure_fail(round_, f"The masked counts add up to {count:.0f} rows; the surviving sites registered "
                                   f"{registered}: an input was wrong, so no statistics are released.")
        return
    standardization = pooled_standardization(round_, features, int(round(count)), sums, squares,
                                              len(result.survivors))
    summary = {"survivors": list(result.survivors), "dropped": list(result.dropped), "sites": len(result.survivors)}
    secure.secure_done(round_, summary)
    move_round(round_, RoundStatus.CLOSED, actor=SYSTEM,
               reason=f"Global mean and standard deviation computed from the masked sums of {len(result.survivors)} "
                      "sites.", details={"sites": len(result.survivors), "examples": standardization.examples,
                                         "secure_aggregation": summary})
    round_open_next(study_id=round_.study_id)
