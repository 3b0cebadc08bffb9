"""Flower rounds: a study's Flower coordinator (`aggregation.flower.GovernedStrategy` in its ServerApp) asks
the gate before each round which nodes may take part, reports the results it received (the gate is asked
again in that transaction; results of sites no longer eligible are dropped before the strategy aggregates),
then uploads the new parameters, recorded as a model version with provenance. The rounds, updates and
versions are the same rows, audit events and live events as Consortium's own rounds.

A gate refusal fails the round closed: the round is blocked and recorded, and the coordinator is told to stop."""

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from aggregation import flower_auth
from aggregation.audit_actions import AggregationAction
from aggregation.choices import ROUND_LIVE, RoundKind, RoundStatus, UpdateStatus
from aggregation.locks import lock_round
from aggregation.models import FlowerCoordinatorToken, FlowerRound, ModelVersion, Round, Update
from aggregation.services import _events
from aggregation.services.aggregate import apply_exclusions, record_version, version_provenance
from aggregation.services.round_state import move_round
from aggregation.services.rounds import round_progress
from aggregation.storage import spec, store
from aggregation.strategies import Weighting
from consortium.audit.log import SYSTEM, audited_service, record
from consortium.errors import Conflict, Forbidden, InvalidTransition, NotFound, ValidationFailed
from consortium.federated import codec
from consortium.federated.norm import l2_norm
from consortium.version import code_version
from sites import tokens
from sites.flower_keys import InvalidNodeKey, read_public_key
from sites.flower_nodes import live_nodes_by_fingerprint
from studies.choices import GateAction, GateCheck, RevocationPolicy
from studies.events import publish_gate
from studies.governance import GateResult, evaluate
from studies.locks import lock_study
from studies.models import Study
from studies.permissions import can_lead, studies_for

MAX_NODES = 1000


@dataclass
class FlowerOutcome:
    """What the coordinator is told: the round, whether it may go on, and which nodes (or results) to use."""

    round_id: int | None
    allowed: bool
    reason: str = ""
    nodes: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    gate: dict[str, Any] = field(default_factory=dict)
    version: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"round_id": self.round_id, "allowed": self.allowed, "reason": self.reason, "nodes": self.nodes,
                "dropped": self.dropped, "gate": self.gate, "version": self.version}


# --- Coordinator tokens (issued by the study's PI) -------------------------------------------------------


@audited_service(AggregationAction.FLOWER_TOKEN_CREATE)
def flower_token_create(*, actor: AbstractBaseUser, study: Study, name: str) -> tuple[FlowerCoordinatorToken, str]:
    """Issue the credential of the study's Flower coordinator; the plaintext exists only in the return value.
    From now on the study's rounds are run by that coordinator, not by Consortium's scheduler."""
    study = lock_study(study.pk)
    if not can_lead(actor, study):
        if studies_for(actor, "view").filter(pk=study.pk).exists():
            raise Forbidden("Only the study's PI issues its Flower coordinator token.", study=study)
        raise NotFound("No such study.")
    if Round.objects.filter(study=study, status__in=ROUND_LIVE, flower__isnull=True).exists():
        raise Conflict("A round Consortium's own agents run is open; wait until it closes.", study=study)
    name = name.strip()
    if not name:
        raise ValidationFailed("Give the token a name that says where the coordinator runs.", study=study)
    prefix, secret = _unused_prefix(), tokens.new_secret()
    token = FlowerCoordinatorToken(study=study, name=name, prefix=prefix, key_hash=tokens.hash_secret(secret),
                                   created_by=actor)
    token.full_clean()
    token.save()
    record(actor=actor, action=AggregationAction.FLOWER_TOKEN_CREATED, target=token, study=study,
           details={"name": token.name, "prefix": token.prefix})
    return token, flower_auth.assemble(prefix, secret)


@audited_service(AggregationAction.FLOWER_TOKEN_REVOKE)
def flower_token_revoke(*, actor: AbstractBaseUser, token: FlowerCoordinatorToken,
                        reason: str) -> FlowerCoordinatorToken:
    """Revoke the coordinator's token for good: its next request is refused."""
    study = lock_study(token.study_id)
    if not can_lead(actor, study):
        raise NotFound("No such Flower coordinator token.")
    found = FlowerCoordinatorToken.objects.get(pk=token.pk)
    if found.is_revoked:
        raise InvalidTransition(f"The token {found} was already revoked.", study=study, target=found)
    if not reason.strip():
        raise ValidationFailed("Give a reason for revoking the token.", study=study, target=found)
    found.revoked_at, found.revoked_by, found.revoke_reason = timezone.now(), actor, reason.strip()
    found.full_clean()
    found.save()
    record(actor=actor, action=AggregationAction.FLOWER_TOKEN_REVOKED, target=found, study=study,
           details={"name": found.name, "prefix": found.prefix, "reason": found.revoke_reason})
    return found


def _unused_prefix() -> str:
    for _ in range(8):
        prefix = tokens.new_prefix()
        if not FlowerCoordinatorToken.objects.filter(prefix=prefix).exists():
            return prefix
    raise RuntimeError("Could not find an unused Flower token prefix.")


def flower_run_study_ids() -> set[int]:
    """Studies whose rounds a Flower coordinator runs (a live token): Consortium's scheduler opens none."""
    return set(FlowerCoordinatorToken.objects.filter(revoked_at__isnull=True).values_list("study_id", flat=True))


# --- The initial model ------------------------------------------------------------------------------------


@audited_service(AggregationAction.FLOWER_INITIAL_MODEL)
def flower_initial_version(*, actor: flower_auth.FlowerCoordinator, body: bytes) -> ModelVersion:
    """Record the Flower app's initial parameters as the study's v0 (once; the same bytes again return it)."""
    study = lock_study(actor.study_id)
    digest = codec.sha256_hex(body)
    latest = ModelVersion.objects.filter(study=study).order_by("-number").first()
    if latest is not None:
        if latest.sha256 == digest:
            return latest
        raise Conflict(f"The study already has model v{latest.number} (SHA-256 {latest.sha256[:12]}…); a Flower run "
                       "continues from it: start the strategy from those parameters.", study=study,
                       code="unknown_base", latest_sha256=latest.sha256)
    tensors = _decode_any(body, study)
    path, digest = store(body, "versions", study.pk)
    version = ModelVersion(study=study, number=0, path=path, sha256=digest, size_bytes=len(body),
                           spec={name: [list(shape), dtype] for name, (shape, dtype) in codec.spec_of(tensors).items()},
                           provenance={"initial": True, "flower": True, "code_version": code_version()})
    version.full_clean()
    version.save()
    record(actor=actor, action=AggregationAction.MODEL_VERSION_CREATED, target=version, study=study,
           details={"version": 0, "sha256": digest, "initial": True, "flower": True})
    return version


def _decode_any(body: bytes, study: Study) -> dict:
    """Initial parameters have no spec to match yet: the safetensors format is still checked, never pickle."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not body or len(body) > 64 * 1024 * 1024:
        raise ValidationFailed("Send the initial parameters as safetensors (at most 64 MiB).", study=study)
    try:
        tensors = load(body)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ValidationFailed(f"The initial parameters are not safetensors: {str(exc)[:200]}", study=study) from None
    if not tensors:
        raise ValidationFailed("The initial parameters hold no tensor.", study=study)
    return tensors


# --- Rounds -------------------------------------------------------------------------------------------------


def _refusals(gate: GateResult) -> list[str]:
    return [check.reason for check in gate.study_checks if not check.passed and check.name != GateCheck.QUORUM]


def _block(round_: Round, reason: str, gate: GateResult) -> FlowerOutcome:
    move_round(round_, RoundStatus.BLOCKED, actor=SYSTEM, reason=reason,
               details={"gate": gate.as_dict(), "flower": True})
    return FlowerOutcome(round_.pk, False, reason, gate=gate.as_dict())


@audited_service(AggregationAction.FLOWER_ROUND_OPEN)
def flower_round_open(*, actor: flower_auth.FlowerCoordinator, server_round: int, base_sha256: str,
                      nodes: list[dict[str, Any]]) -> FlowerOutcome:
    """Before Flower round `server_round`: ask the gate, map the connected nodes' public keys to sites, and
    open a round for the eligible ones (one node per site). A study-level refusal or too few eligible sites
    opens the round only to block it: recorded, and the coordinator stops."""
    moment = timezone.now()
    study = lock_study(actor.study_id)
    if len(nodes) > MAX_NODES:
        raise ValidationFailed(f"At most {MAX_NODES} nodes per round.", study=study)
    if study.secure_aggregation:
        # Fail closed: the Flower strategy sees each site's result in the clear, which this protocol forbids.
        raise Conflict("This study's protocol requires secure aggregation, which a Flower coordinator does not run.",
                       study=study, code="secure_aggregation_required")
    base = ModelVersion.objects.filter(study=study).order_by("-number").first()
    if base is None or base.sha256 != base_sha256:
        raise Conflict("These parameters are not the study's latest model version: upload the initial parameters "
                       "first, and continue from the version Consortium recorded last.", study=study,
                       code="unknown_base")
    _close_abandoned(study, server_round)
    gate = evaluate(study, GateAction.AGGREGATE, moment=moment)
    eligible_sites = {verdict.site_id for verdict in gate.eligible_sites}
    chosen, refused = _map_nodes(nodes, gate, eligible_sites)
    last = Round.objects.filter(study=study).order_by("-number").values_list("number", flat=True).first() or 0
    round_ = Round(study=study, number=last + 1, kind=RoundKind.TRAINING, base_version=base, opened_at=moment,
                   deadline=moment + timedelta(minutes=study.round_deadline_minutes))
    round_.full_clean()
    round_.save()
    flower = FlowerRound(round=round_, token=actor.token, server_round=server_round,
                         nodes={str(n["node_id"]): n for n in chosen})
    flower.save()
    record(actor=actor, action=AggregationAction.ROUND_OPENED, target=round_, study=study,
           details={"round": round_.number, "kind": round_.kind, "base_version": base.number, "flower": True,
                    "server_round": server_round, "deadline": round_.deadline.isoformat(),
                    "eligible_site_ids": sorted(eligible_sites), "nodes": chosen, "refused_nodes": refused})
    _events.round_opened(round_, gate)
    refusals = _refusals(gate)
    if refusals:
        return _block(round_, " ".join(refusals), gate)
    if len(chosen) < study.quorum:
        return _block(round_, f"Only {len(chosen)} eligible sites have a registered Flower node connected; the "
                              f"quorum is {study.quorum}.", gate)
    return FlowerOutcome(round_.pk, True, nodes=chosen, dropped=refused, gate=gate.as_dict())


def _close_abandoned(study: Study, server_round: int) -> None:
    """A live round left by a coordinator that stopped (or restarted) fails; one Consortium's agents run
    is a conflict."""
    live = Round.objects.filter(study=study, status__in=ROUND_LIVE).select_related("flower").first()
    if live is None:
        return
    if not hasattr(live, "flower"):
        raise Conflict(f"Round {live.number} of this study is run by Consortium's agents and still open.",
                       study=study)
    round_ = lock_round(live.pk)
    move_round(round_, RoundStatus.FAILED, actor=SYSTEM,
               reason=f"The Flower coordinator started server round {server_round} before finishing this one.")


def _map_nodes(nodes: list[dict[str, Any]], gate: GateResult,
               eligible: set[int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The nodes to configure (the first connected node of each eligible site, by node id) and the others,
    each with why."""
    keyed = []
    refused: list[dict[str, Any]] = []
    for node in nodes:
        try:
            keyed.append((node["node_id"], read_public_key(node["public_key"]).fingerprint))
        except InvalidNodeKey:
            refused.append({"node_id": node["node_id"], "reason": "The node has no readable public key: is "
                                                                  "SuperNode authentication enabled?"})
    registered = {n.fingerprint: n for n in live_nodes_by_fingerprint(fp for _, fp in keyed)}
    chosen: list[dict[str, Any]] = []
    taken: set[int] = set()
    for node_id, fingerprint in sorted(keyed):
        node = registered.get(fingerprint)
        if node is None:
            refused.append({"node_id": node_id, "fingerprint": fingerprint,
                            "reason": "No site registered this node's public key."})
            continue
        entry = {"node_id": node_id, "site_id": node.site_id, "site": node.site.name, "fingerprint": fingerprint}
        if node.site_id not in eligible:
            verdict = gate.for_site(node.site_id)
            reason = " ".join(c.reason for c in verdict.failures) if verdict else "The site does not take part."
            refused.append({**entry, "reason": reason})
        elif node.site_id in taken:
            refused.append({**entry, "reason": "Another node of this site takes part in this round."})
        else:
            taken.add(node.site_id)
            chosen.append(entry)
    return chosen, refused


def _flower_round(actor: flower_auth.FlowerCoordinator, round_id: int) -> tuple[Round, FlowerRound]:
    """The coordinator's own Flower round, study then round locked; anything else is a NotFound."""
    flower = FlowerRound.objects.filter(round_id=round_id, round__study_id=actor.study_id).first()
    if flower is None:
        raise NotFound("No such Flower round.")
    return lock_round(round_id), flower


@audited_service(AggregationAction.FLOWER_RESULTS)
def flower_round_results(*, actor: flower_auth.FlowerCoordinator, round_id: int, results: list[dict[str, Any]],
                         acted_on: dict[str, Any]) -> FlowerOutcome:
    """The results the coordinator received: recorded as the round's updates (hash, count, metrics, norms),
    then the gate is asked again in this transaction and the results of sites it no longer allows are
    excluded (or, by the abort policy, the round blocked). Tells the coordinator which results to aggregate."""
    round_, flower = _flower_round(actor, round_id)
    if round_.status != RoundStatus.OPEN:
        raise InvalidTransition(f"Round {round_.number} is {round_.get_status_display().lower()}.",
                                study=round_.study_id, target=round_)
    flower.reported = {"configured_with": acted_on}
    flower.save(update_fields=["reported"])
    updates, dropped = _record_results(actor, round_, flower, results)
    gate = evaluate(round_.study, GateAction.AGGREGATE)
    round_.gate_result = gate.as_dict()
    round_.save(update_fields=["gate_result"])
    publish_gate(round_.study, trigger="aggregation", gate=gate)
    refusals = _refusals(gate)
    if refusals:
        return _block(round_, " ".join(refusals), gate)
    included = apply_exclusions(updates, gate, round_)
    excluded = [u for u in updates if u not in included]
    dropped += [{"node_id": _node_of(flower, u.site_id), "site_id": u.site_id, "site": u.site.name,
                 "reason": u.exclusion_reason} for u in excluded]
    study = round_.study
    if excluded and study.revocation_policy == RevocationPolicy.ABORT:
        return _block(round_, "Aborted: a result came from a site no longer eligible (revocation policy: abort).",
                      gate)
    if len(included) < study.quorum:
        return _block(round_, f"Only {len(included)} eligible results; the quorum is {study.quorum}.", gate)
    move_round(round_, RoundStatus.AGGREGATING, actor=actor, reason="The Flower coordinator aggregates the results "
                                                                     "of the eligible sites.")
    kept = [{"node_id": _node_of(flower, u.site_id), "site_id": u.site_id, "site": u.site.name} for u in included]
    return FlowerOutcome(round_.pk, True, nodes=kept, dropped=dropped, gate=gate.as_dict())


def _node_of(flower: FlowerRound, site_id: int) -> int | None:
    return next((int(node_id) for node_id, n in flower.nodes.items() if n["site_id"] == site_id), None)


def _record_results(actor: flower_auth.FlowerCoordinator, round_: Round, flower: FlowerRound,
                    results: list[dict[str, Any]]) -> tuple[list[Update], list[dict[str, Any]]]:
    """One accepted update per configured node's result; a result from a node this round did not configure
    is dropped (named, with why)."""
    updates, dropped, now = [], [], timezone.now()
    for result in results:
        node = flower.nodes.get(str(result["node_id"]))
        if node is None:
            dropped.append({"node_id": result["node_id"], "reason": "This round did not configure that node."})
            continue
        update = Update(round=round_, site_id=node["site_id"], base_version=round_.base_version, path="",
                        sha256=result["sha256"], size_bytes=result["size_bytes"], num_examples=result["num_examples"],
                        metrics=result.get("metrics") or {}, weight_norm=result["weight_norm"],
                        delta_norm=result["delta_norm"], idempotency_key=f"flower:{round_.pk}:{result['node_id']}",
                        submitted_by=actor.get_username(), received_at=now)
        update.full_clean()
        update.save()
        record(actor=actor, action=AggregationAction.UPDATE_ACCEPTED, target=update, study=round_.study_id,
               site=update.site_id, details={"round": round_.number, "sha256": update.sha256, "flower": True,
                                             "node_id": result["node_id"], "num_examples": update.num_examples,
                                             "metrics": update.metrics, "weight_norm": update.weight_norm,
                                             "delta_norm": update.delta_norm})
        _events.update_received(update, round_, round_progress(round_))
        updates.append(update)
    return updates, dropped


@audited_service(AggregationAction.FLOWER_VERSION)
def flower_round_version(*, actor: flower_auth.FlowerCoordinator, round_id: int, body: bytes, strategy: str,
                         acted_on: dict[str, Any]) -> FlowerOutcome:
    """The parameters the coordinator's strategy aggregated from the kept results: the gate is asked once
    more; if a kept site lost its eligibility meanwhile its update is excluded and the coordinator told to
    aggregate again without it (`allowed` False, `nodes` the results still kept, round still aggregating).
    Otherwise the parameters are validated against the study's model and stored as the next version."""
    started = timezone.now()
    round_, flower = _flower_round(actor, round_id)
    if round_.status != RoundStatus.AGGREGATING:
        raise InvalidTransition(f"Round {round_.number} is {round_.get_status_display().lower()}.",
                                study=round_.study_id, target=round_)
    study, base = round_.study, round_.base_version
    try:
        tensors = codec.decode(body, expected=spec(base), max_bytes=base.size_bytes * 2 + 65536)
    except codec.UpdateRejected as exc:
        raise ValidationFailed(f"The aggregated parameters were refused: {exc.message}", study=study,
                               code=exc.code) from None
    gate = evaluate(study, GateAction.AGGREGATE)
    refusals = _refusals(gate)
    if refusals:
        return _block(round_, " ".join(refusals), gate)
    updates = list(round_.updates.filter(status=UpdateStatus.ACCEPTED).select_related("site"))
    included = apply_exclusions(updates, gate, round_)
    if len(included) < len(updates):
        lost = [u for u in updates if u not in included]
        if study.revocation_policy == RevocationPolicy.ABORT or len(included) < study.quorum:
            return _block(round_, "A site lost its eligibility while the Flower coordinator aggregated.", gate)
        kept = [{"node_id": _node_of(flower, u.site_id), "site_id": u.site_id, "site": u.site.name} for u in included]
        dropped = [{"node_id": _node_of(flower, u.site_id), "site_id": u.site_id, "site": u.site.name,
                    "reason": u.exclusion_reason} for u in lost]
        return FlowerOutcome(round_.pk, False, "Aggregate again without the sites no longer eligible.", nodes=kept,
                             dropped=dropped, gate=gate.as_dict())
    return _store_version(actor, round_, flower, included, gate, body, tensors, strategy, acted_on, started)


def _store_version(actor: flower_auth.FlowerCoordinator, round_: Round, flower: FlowerRound, included: list[Update],
                   gate: GateResult, body: bytes, tensors: dict, strategy: str, acted_on: dict[str, Any],
                   started: Any) -> FlowerOutcome:
    study, base = round_.study, round_.base_version
    total = sum(u.num_examples for u in included)
    # Flower's strategies weight by num-examples unless told otherwise; the provenance says whose rule it was.
    weighting = Weighting(tuple(u.num_examples / total for u in included),
                          f"Aggregated by the Flower strategy {strategy}; weights shown by num_examples.")
    path, digest = store(body, "versions", study.pk)
    flower.reported = {**flower.reported, "aggregated_with": acted_on}
    flower.save(update_fields=["reported"])
    provenance = {**version_provenance(study, round_, included, gate, weighting),
                  "strategy": {"name": f"flower:{strategy}", "settings": {}},
                  "flower": {"server_round": flower.server_round, "coordinator": actor.get_username(),
                             "nodes": flower.nodes, "reported": flower.reported},
                  "aggregation_seconds": (timezone.now() - started).total_seconds(),
                  "weight_norm": l2_norm(tensors)}
    version = ModelVersion(study=study, number=base.number + 1, round=round_, path=path, sha256=digest,
                           size_bytes=len(body), spec=base.spec, provenance=provenance)
    version.full_clean()
    version.save()
    Update.objects.filter(pk__in=[u.pk for u in included]).update(status=UpdateStatus.INCLUDED)
    record_version(version, round_, provenance)
    _events.aggregation_finished(round_, version, included, provenance["aggregation_seconds"], None)
    move_round(round_, RoundStatus.CLOSED, actor=actor, reason=f"Model v{version.number} aggregated by Flower.")
    kept = [{"node_id": _node_of(flower, u.site_id), "site_id": u.site_id, "site": u.site.name} for u in included]
    return FlowerOutcome(round_.pk, True, nodes=kept, gate=gate.as_dict(), version=version.number)
