"""Secure-aggregation rounds on the coordinator (docs/secure-aggregation.md): the stages keys, shares, masked
inputs and unmasking, over the agent API.

The coordinator only relays and checks: it holds public keys, shares encrypted to other sites, masked vectors
and, at the end, shares that remove the masks of the sum. `consortium.federated.secagg.CoordinatorRound`
does the checking; it is rebuilt at each step from what the closed stages fixed (`SecureRound`) and the
sites' messages (`SecureMessage`), so a restart or a second server loses nothing.

The gate is asked at every message (for the sending site) and at every stage's close (for the study and
every site): a site it no longer allows is left out of the stage, as a dropout; a site revoked after its
masked input was fixed into the sum fails the round closed, since one input can never be taken out of
a masked sum. A stage closes when every site expected in it has answered, or at its deadline with those
that did; too few fails the round closed with the reason. Every message and every close is audited."""

import base64
import math
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from aggregation.audit_actions import AggregationAction
from aggregation.choices import SECURE_STAGES_OPEN, RoundKind, RoundStatus, SecureStage
from aggregation.dispatch import aggregation_send_on_commit
from aggregation.locks import lock_round, lock_round_for_site
from aggregation.models import ModelVersion, Round, SecureMessage, SecureRound
from aggregation.services import _events
from aggregation.services.round_state import move_round
from aggregation.storage import absolute, store, stored_path
from consortium.audit.log import SYSTEM, audited_service, record
from consortium.errors import Conflict, GateRefused, NotFound, ValidationFailed
from consortium.federated import codec
from consortium.federated.secagg import (
    CoordinatorRound,
    Keys,
    MaskedInput,
    RoundConfig,
    SecAggError,
    Shares,
    Unmask,
    UnmaskRequest,
    integers,
)
from consortium.federated.secagg.distributed_dp import ring_clip
from consortium.federated.secagg.roster import MIN_SITES
from sites.models import Site
from studies.choices import GateAction, GateCheck
from studies.governance import GateResult, evaluate
from studies.models import DatasetRegistration

# Each coordinate of a site's change to the model is clipped to +-CLIP before it is quantised (the ring's range).
CLIP = 1.0
# Up to this many sites mask with every other site (SecAgg); more use SecAgg+'s sparse graph of this degree.
FULL_GRAPH_SITES = 20
SPARSE_DEGREE = 16

NEXT = {SecureStage.KEYS: SecureStage.SHARES, SecureStage.SHARES: SecureStage.MASKED_INPUTS,
        SecureStage.MASKED_INPUTS: SecureStage.UNMASKING}


def secure_round_start(round_: Round, gate: GateResult, moment: datetime) -> SecureRound:
    """Set up a new round of a secure study: a context no other round shares (from the OS's entropy), the
    model's length (training) or the statistics' (exact sums), and the SecAgg+ graph for the number of sites the
    gate allows now."""
    sites, study = len(gate.eligible_sites), round_.study
    min_sites = max(MIN_SITES, study.quorum)
    # With DP each site clips and noises its change itself and counts with weight 1 (distributed DP): the range
    # must hold the noise (sites check it, and refuse a round that would clip their noise away).
    dp = {"clip": ring_clip(noise_multiplier=study.dp_noise_multiplier, clip_norm=study.dp_clip_norm,
                            min_sites=min_sites), "max_weight": 1} if study.dp_noise_multiplier > 0 else {"clip": CLIP}
    if round_.kind == RoundKind.STATISTICS:
        # The count, and per feature the sum and the sum of squares, as exact fixed-point limbs; each site counts 1.
        shape = {"vector_length": integers.length(1 + 2 * len(study.feature_names)), "encoding": "integers",
                 "max_weight": 1}
    else:
        shape = {"vector_length": parameter_count(round_.base_version), **dp}
    config = RoundConfig(
        context=f"consortium/study-{round_.study_id}/round-{round_.number}/".encode() + secrets.token_bytes(16),
        degree=None if sites <= FULL_GRAPH_SITES else SPARSE_DEGREE, min_sites=min_sites, **shape)
    secure = SecureRound(round=round_, config=config.to_wire(), stage_deadline=_stage_deadline(round_, SecureStage.KEYS,
                                                                                               moment))
    secure.full_clean()
    secure.save()
    _stage_opened(round_, secure, reason=f"{sites} sites may send their public keys.")
    return secure


def parameter_count(version: ModelVersion) -> int:
    return sum(math.prod(shape) for shape, _dtype in version.spec.values())


def _stage_deadline(round_: Round, stage: str, moment: datetime) -> datetime:
    """Each stage has its own window; the masked-input stage (where sites train) lasts at least to the round's
    deadline."""
    deadline = moment + timedelta(seconds=settings.SECAGG_STAGE_SECONDS)
    return max(deadline, round_.deadline) if stage == SecureStage.MASKED_INPUTS else deadline


# --- what a site's agent reads and sends ---------------------------------------------------------------------

def secure_state(*, actor: Any, round_id: int) -> dict[str, Any]:
    """The round's stage and what this site needs for it: the roster (shares), the shares sent to it (masked
    inputs), the survivors and dropouts (unmasking); the reason when it failed. Public or encrypted to the site."""
    round_ = lock_round_for_site(round_id, actor.site_id, lock=False)
    secure = _secure_of(round_)
    state: dict[str, Any] = {"stage": secure.stage, "config": secure.config, "reason": secure.reason,
                             "stage_deadline": secure.stage_deadline.isoformat()}
    if secure.stage == SecureStage.SHARES:
        state["roster"] = secure.roster
    elif secure.stage == SecureStage.MASKED_INPUTS:
        state["mail"] = secure.mail.get(actor.site.code, {})
    elif secure.stage == SecureStage.UNMASKING:
        state["request"] = secure.request
    return state


def _secure_of(round_: Round) -> SecureRound:
    secure = SecureRound.objects.filter(round=round_).first()
    if secure is None:
        raise NotFound(f"Round {round_.number} is not a secure-aggregation round.", code="not_secure")
    return secure


@audited_service(AggregationAction.SECURE_SUBMIT)
def secure_keys_submit(*, actor: Any, round_id: int, payload: Any) -> SecureMessage:
    return _submit(actor, round_id, SecureStage.KEYS, lambda: Keys.from_wire(payload),
                   lambda core, message: core.add_keys(message), payload=payload)


@audited_service(AggregationAction.SECURE_SUBMIT)
def secure_shares_submit(*, actor: Any, round_id: int, payload: Any) -> SecureMessage:
    return _submit(actor, round_id, SecureStage.SHARES, lambda: Shares.from_wire(payload),
                   lambda core, message: core.add_shares(message), payload=payload)


@audited_service(AggregationAction.SECURE_SUBMIT)
def secure_unmask_submit(*, actor: Any, round_id: int, payload: Any) -> SecureMessage:
    return _submit(actor, round_id, SecureStage.UNMASKING, lambda: Unmask.from_wire(payload),
                   lambda core, message: core.add_unmask(message), payload=payload)


@audited_service(AggregationAction.SECURE_SUBMIT)
def secure_masked_input_submit(*, actor: Any, round_id: int, body: bytes, sha256: str,
                               masked_with: Any) -> SecureMessage:
    """A masked input: safetensors holding one uint32 vector, its SHA-256 checked, the neighbours it was masked
    with checked against those that completed the shares stage. Stored content-addressed, never decoded
    further: it looks uniformly random and is worth nothing alone."""
    if not isinstance(masked_with, list) or not all(isinstance(site, str) for site in masked_with):
        raise ValidationFailed("Header X-Masked-With must be a JSON list of site codes.", code="bad_header")

    def parse() -> MaskedInput:
        config = _config_of(round_id)
        vector = MaskedInput.from_safetensors(body, length=config.vector_length + 1, sha256=sha256)
        return MaskedInput(actor.site.code, vector, tuple(masked_with))

    message = _submit(actor, round_id, SecureStage.MASKED_INPUTS, parse,
                      lambda core, masked: core.add_masked_input(masked), payload={"masked_with": masked_with},
                      body=body)
    return message


def _config_of(round_id: int) -> RoundConfig:
    wire = SecureRound.objects.filter(round_id=round_id).values_list("config", flat=True).first()
    if wire is None:
        raise NotFound("This round is not a secure-aggregation round.", code="not_secure")
    return RoundConfig.from_wire(wire)


def _submit(actor: Any, round_id: int, stage: str, parse, add, *, payload: Any, body: bytes | None = None
            ) -> SecureMessage:
    round_ = lock_round_for_site(round_id, actor.site_id)
    secure = _secure_of(round_)
    if round_.status != RoundStatus.OPEN or secure.stage != stage:
        raise Conflict(f"Round {round_.number} is in the {SecureStage(secure.stage).label.lower()} stage"
                       f"{'' if round_.status == RoundStatus.OPEN else ' and ' + round_.get_status_display().lower()};"
                       f" it takes no {SecureStage(stage).label.lower()} now.", code="wrong_stage",
                       study=round_.study_id, site=actor.site_id)
    if SecureMessage.objects.filter(round=round_, site_id=actor.site_id, stage=stage).exists():
        raise Conflict(f"{actor.site} already sent its {SecureStage(stage).label.lower()} for round {round_.number}.",
                       code="duplicate_message", study=round_.study_id, site=actor.site_id)
    gate = evaluate(round_.study, GateAction.SUBMIT_UPDATE, site=actor.site_id)
    if not gate.allowed:
        raise GateRefused("The gate refuses this site now: " + " ".join(c.reason for c in gate.failures),
                          study=round_.study_id, site=actor.site_id, checks=[c.as_dict() for c in gate.failures])
    try:
        message = parse()
        if getattr(message, "site", actor.site.code) != actor.site.code:
            raise SecAggError(f"The message speaks for site {message.site!r}; this agent speaks for "
                              f"{actor.site.code!r}.")
        add(rebuild(secure, with_current=stage != SecureStage.MASKED_INPUTS), message)
    except SecAggError as error:
        raise ValidationFailed(error.reason, code="secagg_refused", study=round_.study_id,
                               site=actor.site_id) from error
    path, digest = "", ""
    if body is not None:
        digest = codec.sha256_hex(body)
        path = stored_path("secure", round_.study_id, digest)
    row = SecureMessage(round=round_, site_id=actor.site_id, stage=stage, payload=_wire(message, payload), path=path,
                        sha256=digest, size_bytes=len(body) if body is not None else 0,
                        submitted_by=actor.get_username(), received_at=timezone.now())
    row.full_clean()
    row.save()
    record(actor=actor, action=AggregationAction.SECURE_ACCEPTED, target=round_, study=round_.study_id,
           site=actor.site_id, details={"round": round_.number, "stage": stage,
                                        **({"sha256": digest, "size_bytes": len(body)} if body is not None else {})})
    if body is not None:
        store(body, "secure", round_.study_id)  # once every check passed: a refusal leaves no file behind
    _advance(round_, secure, timezone.now(), deadline_passed=False)
    return row


def _wire(message: Any, payload: Any) -> dict[str, Any]:
    return message.to_wire() if hasattr(message, "to_wire") else payload


# --- rebuilding the coordinator's side -----------------------------------------------------------------------

def _messages(secure: SecureRound, stage: str) -> dict[str, SecureMessage]:
    rows = SecureMessage.objects.filter(round_id=secure.round_id, stage=stage).select_related("site")
    return {row.site.code: row for row in rows}


def _masked(row: SecureMessage, config: RoundConfig) -> MaskedInput:
    data = absolute(row.path).read_bytes()
    vector = MaskedInput.from_safetensors(data, length=config.vector_length + 1, sha256=row.sha256)
    return MaskedInput(row.site.code, vector, tuple(row.payload["masked_with"]))


def rebuild(secure: SecureRound, *, with_current: bool = True, admitted: Iterable[str] | None = None
            ) -> CoordinatorRound:
    """The coordinator's state for the round's current stage: every closed stage replayed with exactly the sites
    it admitted, then (`with_current`) the messages of the open stage so far (only those of `admitted`)."""
    config = RoundConfig.from_wire(secure.config)
    core = CoordinatorRound(config)
    keep = None if admitted is None else set(admitted)

    def current(stage: str, add) -> CoordinatorRound:
        if with_current:
            for code, row in sorted(_messages(secure, stage).items()):
                if keep is None or code in keep:
                    add(row)
        return core

    if secure.stage == SecureStage.KEYS:
        return current(SecureStage.KEYS, lambda row: core.add_keys(Keys.from_wire(row.payload)))
    for entry in secure.roster:
        core.add_keys(Keys.from_wire(entry))
    core.close_keys()
    if secure.stage == SecureStage.SHARES:
        return current(SecureStage.SHARES, lambda row: core.add_shares(Shares.from_wire(row.payload)))
    shares = _messages(secure, SecureStage.SHARES)
    for code in sorted(secure.mail):
        core.add_shares(Shares.from_wire(shares[code].payload))
    core.close_shares()
    if secure.stage == SecureStage.MASKED_INPUTS:
        return current(SecureStage.MASKED_INPUTS, lambda row: core.add_masked_input(_masked(row, config)))
    masked = _messages(secure, SecureStage.MASKED_INPUTS)
    request = UnmaskRequest.from_wire(secure.request)
    for code in request.survivors:
        core.add_masked_input(_masked(masked[code], config))
    core.close_masked_inputs()
    if with_current:
        for _code, row in sorted(_messages(secure, SecureStage.UNMASKING).items()):
            core.add_unmask(Unmask.from_wire(row.payload))
    return core


# --- closing stages ------------------------------------------------------------------------------------------

def _expected(secure: SecureRound, eligible: set[str]) -> set[str]:
    """The sites the open stage waits for: those the gate allows now, among those the last stage admitted."""
    if secure.stage == SecureStage.KEYS:
        return eligible
    if secure.stage == SecureStage.SHARES:
        return eligible & {entry["site"] for entry in secure.roster}
    if secure.stage == SecureStage.MASKED_INPUTS:
        return eligible & set(secure.mail)
    # A survivor the gate no longer allows ends the stage at once: the round can only fail closed.
    return eligible & set(secure.request.get("survivors", []))


def _eligible_codes(gate: GateResult) -> set[str]:
    ids = [verdict.site_id for verdict in gate.eligible_sites]
    return set(Site.objects.filter(pk__in=ids).values_list("code", flat=True))


def _advance(round_: Round, secure: SecureRound, moment: datetime, *, deadline_passed: bool) -> None:
    """Close the open stage if every expected site has answered (or its deadline passed), in the caller's
    transaction with the round locked."""
    if round_.status != RoundStatus.OPEN or secure.stage not in SECURE_STAGES_OPEN:
        return
    gate = evaluate(round_.study, GateAction.AGGREGATE, moment=moment)
    eligible = _eligible_codes(gate)
    answered = set(_messages(secure, secure.stage))
    expected = _expected(secure, eligible)
    if not deadline_passed and not (expected and expected <= answered):
        return
    refusals = [check for check in gate.study_checks if not check.passed and check.name != GateCheck.QUORUM]
    if refusals:
        _fail(round_, secure, " ".join(check.reason for check in refusals), gate=gate)
        return
    why = "every expected site answered" if expected <= answered else "its deadline passed"
    try:
        _close(round_, secure, gate, eligible, answered, moment, why)
    except SecAggError as error:
        _fail(round_, secure, error.reason)


def _close(round_: Round, secure: SecureRound, gate: GateResult, eligible: set[str], answered: set[str],
           moment: datetime, why: str) -> None:
    stage = secure.stage
    left_out = sorted(answered - eligible)
    core = rebuild(secure, admitted=eligible)
    if stage == SecureStage.KEYS:
        secure.roster = [keys.to_wire() for keys in core.close_keys().keys]
        admitted = [entry["site"] for entry in secure.roster]
    elif stage == SecureStage.SHARES:
        secure.mail = {recipient: {sender: base64.b64encode(text).decode() for sender, text in sorted(box.items())}
                       for recipient, box in sorted(core.close_shares().items())}
        admitted = sorted(secure.mail)
    elif stage == SecureStage.MASKED_INPUTS:
        # A site revoked since it masked is a dropout: its input is discarded and it stays hidden for ever.
        request = core.close_masked_inputs()
        if len(request.survivors) < round_.study.quorum:
            raise SecAggError(f"Only {len(request.survivors)} sites' masked inputs count; the study's quorum is "
                              f"{round_.study.quorum}: the round fails closed.")
        secure.request = request.to_wire()
        admitted = list(request.survivors)
        for code in left_out:
            _excluded(round_, code, gate)
    else:
        _close_unmasking(round_, secure, gate, eligible, core, moment, why)
        return
    secure.stage = NEXT[stage]
    secure.stage_deadline = _stage_deadline(round_, secure.stage, moment)
    secure.save(update_fields=["roster", "mail", "request", "stage", "stage_deadline"])
    _stage_closed(round_, stage, admitted, left_out, why)
    _stage_opened(round_, secure, reason=f"{len(admitted)} sites go on.")


def _close_unmasking(round_: Round, secure: SecureRound, gate: GateResult, eligible: set[str],
                     core: CoordinatorRound, moment: datetime, why: str) -> None:
    survivors = set(secure.request["survivors"])
    revoked = sorted(survivors - eligible)
    if revoked:
        _fail(round_, secure, f"{', '.join(revoked)} lost the gate's approval after its masked input was fixed into "
                              "the sum; one input can never be taken out of a masked sum, so nothing is stored.",
              gate=gate)
        return
    answers = set(_messages(secure, SecureStage.UNMASKING))
    threshold = core.roster.threshold
    if len(answers) < threshold:
        raise SecAggError(f"Only {len(answers)} survivors answered the unmasking request; the threshold is "
                          f"{threshold}: the round fails closed.")
    _stage_closed(round_, SecureStage.UNMASKING, sorted(answers), [], why)
    move_round(round_, RoundStatus.AGGREGATING, actor=SYSTEM,
               reason=f"Unmasking closed ({why}): the sum of {len(survivors)} masked inputs is aggregated.")
    aggregation_send_on_commit(round_.pk)


def _excluded(round_: Round, code: str, gate: GateResult) -> None:
    site = Site.objects.get(code=code)
    verdict = gate.for_site(site.pk)
    reason = " ".join(c.reason for c in verdict.failures) if verdict else "The site no longer takes part."
    record(actor=SYSTEM, action=AggregationAction.SECURE_EXCLUDED, target=round_, study=round_.study_id, site=site.pk,
           details={"round": round_.number, "reason": reason, "treated_as": "dropout"})
    _events.update_excluded_site(round_, site, f"{reason} Its masked input is discarded as a dropout's.")


def _fail(round_: Round, secure: SecureRound, reason: str, *, gate: GateResult | None = None) -> None:
    """Fail closed: the round ends with the reason, nothing is unmasked or stored."""
    secure.stage, secure.reason = SecureStage.FAILED, reason
    secure.save(update_fields=["stage", "reason"])
    if round_.status in (RoundStatus.OPEN, RoundStatus.AGGREGATING):
        status = RoundStatus.BLOCKED if gate is not None else RoundStatus.FAILED
        move_round(round_, status, actor=SYSTEM, reason=f"Secure aggregation stopped: {reason}",
                   details={"gate": gate.as_dict()} if gate is not None else {})


def secure_fail(round_: Round, reason: str, *, gate: GateResult | None = None) -> None:
    """For the aggregation task: fail the round's secure stages closed (the round locked by the caller)."""
    _fail(round_, _secure_of(round_), reason, gate=gate)


def survivor_ids(round_: Round) -> set[int]:
    """The sites whose masked input is in the sum (fixed when masked inputs closed)."""
    codes = _secure_of(round_).request.get("survivors", [])
    return set(Site.objects.filter(code__in=codes).values_list("pk", flat=True))


def masked_digests(round_: Round) -> dict[str, str]:
    """Each site's masked input's SHA-256: what the coordinator holds for it, never its update."""
    return {code: row.sha256 for code, row in _messages(_secure_of(round_), SecureStage.MASKED_INPUTS).items()}


def registered_rows(round_: Round, codes: Iterable[str]) -> int:
    """The rows the sites registered for the study's data set (each site's newest registration)."""
    newest: dict[int, int] = {}  # one query; the first row per site, newest first, is the one that counts
    rows = (DatasetRegistration.objects.filter(study_id=round_.study_id, site__code__in=list(codes))
            .order_by("-registered_at", "-pk").values_list("site_id", "rows"))
    for site_id, count in rows:
        newest.setdefault(site_id, count)
    return sum(newest.values())


def sites_by_code(codes: Iterable[str]) -> list[Site]:
    return list(Site.objects.filter(code__in=list(codes)))


def secure_done(round_: Round, result: dict[str, Any]) -> None:
    secure = _secure_of(round_)
    secure.stage, secure.result = SecureStage.DONE, result
    secure.save(update_fields=["stage", "result"])


def _stage_opened(round_: Round, secure: SecureRound, *, reason: str) -> None:
    record(actor=SYSTEM, action=AggregationAction.SECURE_STAGE_OPENED, target=round_, study=round_.study_id,
           details={"round": round_.number, "stage": secure.stage, "deadline": secure.stage_deadline.isoformat(),
                    "reason": reason})
    _events.secure_stage(round_, secure.stage, opened=True, sites=None, reason=reason)


def _stage_closed(round_: Round, stage: str, admitted: list[str], left_out: list[str], why: str) -> None:
    record(actor=SYSTEM, action=AggregationAction.SECURE_STAGE_CLOSED, target=round_, study=round_.study_id,
           details={"round": round_.number, "stage": stage, "sites": admitted, "left_out": left_out, "why": why})
    _events.secure_stage(round_, stage, opened=False, sites=len(admitted), reason=why)


# --- the scheduler ---------------------------------------------------------------------------------------------

def secure_rounds_tick(*, moment: datetime) -> None:
    """Close the stages whose deadline passed (with the sites that answered), and the stages a site's lost
    eligibility has completed."""
    live = SecureRound.objects.filter(stage__in=SECURE_STAGES_OPEN, round__status=RoundStatus.OPEN)
    for secure in live.select_related("round__study"):
        # Read first, without a lock: on most beats the stage still waits for sites, and locking the round would
        # queue the beat behind their messages for SQLite's one write lock. Decided again, locked.
        if secure.stage_deadline > moment and not _looks_complete(secure, moment):
            continue
        with transaction.atomic():
            round_ = lock_round(secure.round_id)
            secure = _secure_of(round_)
            _advance(round_, secure, moment, deadline_passed=secure.stage_deadline <= moment)


def _looks_complete(secure: SecureRound, moment: datetime) -> bool:
    gate = evaluate(secure.round.study, GateAction.AGGREGATE, moment=moment)
    expected = _expected(secure, _eligible_codes(gate))
    return bool(expected) and expected <= set(_messages(secure, secure.stage))
