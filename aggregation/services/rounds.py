"""Opening rounds, noticing when a round is complete or past its deadline, and closing statistics and
evaluation rounds. The scheduler (`rounds_tick`) and the submission services call these; every step is
audited."""

import math
import time
from collections.abc import Sequence
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from aggregation.audit_actions import AggregationAction
from aggregation.choices import ROUND_LIVE, RoundKind, RoundStatus, UpdateStatus
from aggregation.dispatch import aggregation_send_on_commit
from aggregation.locks import lock_round
from aggregation.models import Evaluation, ModelVersion, Round, SiteStatistics, Standardization
from aggregation.services import _events
from aggregation.services._events import Progress
from aggregation.services.recovery import aggregations_redispatch, sweep_temporary_files
from aggregation.services.round_state import move_round
from aggregation.services.secure import secure_round_start, secure_rounds_tick
from aggregation.storage import store
from consortium.audit.log import SYSTEM, record
from consortium.federated import codec, zoo
from consortium.federated.metric_keys import VAL_AUC, VAL_EXAMPLES
from consortium.version import code_version
from studies.choices import GateAction, GateCheck, RevocationPolicy, StudyStatus
from studies.governance import Check, GateResult, evaluate
from studies.locks import lock_study
from studies.models import Study
from studies.privacy import privacy_budget
from studies.services.monitoring import governance_watch
from studies.services.privacy import study_stop_for_privacy

# The model store's temporary files are swept at most this often by each scheduler process.
SWEEP_EVERY_SECONDS = 60.0
# Missing sites asked about (with the submitting site, in one load) for proof that a round is still incomplete.
INCOMPLETE_WITNESSES = 3
_next_sweep = 0.0


def round_open_next(*, study_id: int, moment: datetime | None = None) -> Round | None:
    """Open the study's next round if it is active, has none open, has a round left to run (training rounds
    left in its budget, or else the evaluation of its final model), and the gate would let a round run now
    (otherwise nothing is opened; the study page shows why)."""
    moment = moment or timezone.now()
    with transaction.atomic():
        study = lock_study(study_id)
        kind = _due_kind(study)
        if kind is None:
            return None
        gate = evaluate(study, GateAction.AGGREGATE, moment=moment)
        if not gate.allowed:
            _stop_if_budget_used_up(study, gate)
            return None
        base = None if kind == RoundKind.STATISTICS else _latest_version(study)
        last = Round.objects.filter(study=study).order_by("-number").values_list("number", flat=True).first() or 0
        round_ = Round(study=study, number=last + 1, kind=kind, base_version=base, opened_at=moment,
                       deadline=moment + timedelta(minutes=study.round_deadline_minutes),
                       expected_site_ids=[v.site_id for v in gate.eligible_sites])
        round_.full_clean()
        round_.save()
        secure_round = study.secure_aggregation and kind in (RoundKind.TRAINING, RoundKind.STATISTICS)
        record(actor=SYSTEM, action=AggregationAction.ROUND_OPENED, target=round_, study=study,
               details={"round": round_.number, "kind": round_.kind, "base_version": base.number if base else None,
                        "deadline": round_.deadline.isoformat(), "secure_aggregation": secure_round,
                        "eligible_site_ids": round_.expected_site_ids})
        _events.round_opened(round_, gate)
        if secure_round:
            secure_round_start(round_, gate, moment)
        return round_


def _due_kind(study: Study) -> str | None:
    """The kind of round the study would open next, or None: it is not active, has a live round, is run by a
    Flower coordinator (`aggregation.services.flower`), or has no round left to run."""
    if study.status != StudyStatus.ACTIVE or Round.objects.filter(study=study, status__in=ROUND_LIVE).exists():
        return None
    if study.flower_tokens.filter(revoked_at__isnull=True).exists():
        return None
    return _next_kind(study)


def _open_if_due(study_id: int, moment: datetime) -> None:
    """The beat's opening of a round, read first without a lock: on most beats there is nothing to open (the
    study's rounds are done, or the gate refuses it), and taking the study's lock would queue the beat for the
    write lock (SQLite has one) among the sites' submissions. `round_open_next` decides again, locked."""
    study = Study.objects.filter(pk=study_id).first()
    if study is None or _due_kind(study) is None:
        return
    gate = evaluate(study, GateAction.AGGREGATE, moment=moment)
    if gate.allowed or _budget_refused(gate) is not None:
        round_open_next(study_id=study_id, moment=moment)


def _budget_refused(gate: GateResult) -> Check | None:
    """The gate's privacy-budget check, if it refuses."""
    return next((c for c in gate.study_checks if c.name == GateCheck.PRIVACY_BUDGET and not c.passed), None)


def _stop_if_budget_used_up(study: Study, gate: GateResult) -> None:
    """No training round fits the privacy target any more: the study stops, with the gate's reason."""
    check = _budget_refused(gate)
    if check is not None and privacy_budget(study).exhausted:
        study_stop_for_privacy(study=study, reason=check.reason)


def _next_kind(study: Study) -> str | None:
    """The kind of the study's next round: statistics first (if its protocol has them), then training rounds
    up to the budget, then one evaluation of the final model by the sites (none closed for it yet); else None."""
    done = Round.objects.filter(study=study, kind=RoundKind.TRAINING, status=RoundStatus.CLOSED).count()
    if done >= study.rounds:
        final = ModelVersion.objects.filter(study=study).order_by("-number").first()
        evaluated = Round.objects.filter(study=study, kind=RoundKind.EVALUATION, status=RoundStatus.CLOSED,
                                         base_version=final).exists()
        return None if final is None or evaluated else RoundKind.EVALUATION
    if study.federated_statistics and not Standardization.objects.filter(study=study).exists():
        return RoundKind.STATISTICS
    return RoundKind.TRAINING


def _latest_version(study: Study) -> ModelVersion:
    """The newest model version, creating the deterministic initial model (v0) the first time."""
    latest = ModelVersion.objects.filter(study=study).order_by("-number").first()
    if latest is not None:
        return latest
    tensors = zoo.initial_state(study.model_kind, study.num_features, study.hidden_units, seed=study.pk)
    data = codec.encode(tensors)
    path, digest = store(data, "versions", study.pk)
    version = ModelVersion(study=study, number=0, path=path, sha256=digest, size_bytes=len(data),
                           spec={name: [list(shape), dtype] for name, (shape, dtype) in codec.spec_of(tensors).items()},
                           provenance={"initial": True, "seed": study.pk, "model_kind": study.model_kind,
                                       "num_features": study.num_features, "code_version": code_version()})
    version.full_clean()
    version.save()
    record(actor=SYSTEM, action=AggregationAction.MODEL_VERSION_CREATED, target=version, study=study,
           details={"version": 0, "sha256": digest, "initial": True})
    return version


def round_progress(round_: Round, *, moment: datetime | None = None) -> Progress:
    """Which sites have submitted to the round, and which the gate allows now."""
    gate = evaluate(round_.study, GateAction.AGGREGATE, moment=moment)
    return Progress(_submitted(round_), frozenset(verdict.site_id for verdict in gate.eligible_sites), gate)


def incomplete_witnesses(round_: Round, site_id: int) -> list[int]:
    """The sites that may show the round still incomplete once `site_id` has submitted: a few of the sites it
    waits for (allowed at its opening) that have not submitted yet. The submission asks the gate about them
    together with its own site (`governance.evaluate_sites`) and passes those still allowed on."""
    waiting = set(round_.expected_site_ids) - _submitted(round_) - {site_id}
    return sorted(waiting)[:INCOMPLETE_WITNESSES]


def submission_progress(round_: Round, *, still_allowed: Sequence[int] = (),
                        moment: datetime | None = None) -> Progress:
    """The progress after one site's submission, without asking the gate about every site each time (at 200
    sites that was most of a submission's cost). A site the round waits for that has not submitted and that
    the gate still allows (`still_allowed`, of `incomplete_witnesses`; the round's lock keeps it from
    submitting meanwhile) proves the round incomplete. Only without one is the whole gate asked, so a round
    is only ever completed on every site's verdict now."""
    if still_allowed:
        return Progress(_submitted(round_), frozenset(round_.expected_site_ids), None)
    return round_progress(round_, moment=moment)


def _submitted(round_: Round) -> frozenset[int]:
    if round_.kind == RoundKind.STATISTICS:
        submitted = SiteStatistics.objects.filter(round=round_).values_list("site_id", flat=True)
    elif round_.kind == RoundKind.EVALUATION:
        submitted = Evaluation.objects.filter(round=round_).values_list("site_id", flat=True)
    else:
        submitted = round_.updates.filter(status=UpdateStatus.ACCEPTED).values_list("site_id", flat=True)
    return frozenset(submitted)


def round_complete_if_ready(round_: Round, *, moment: datetime | None = None, progress: Progress | None = None) -> None:
    """After a submission: once every eligible site has submitted, close a statistics round at once
    or an evaluation round at once, or hand a training round to the aggregation task (after this transaction
    commits)."""
    if (progress or round_progress(round_, moment=moment)).complete:
        _finish(round_, reason="Every eligible site has submitted.", moment=moment)


def _finish(round_: Round, *, reason: str, moment: datetime | None = None) -> None:
    if round_.kind == RoundKind.STATISTICS:
        statistics_close(round_, moment=moment)
        return
    if round_.kind == RoundKind.EVALUATION:
        evaluation_close(round_, reason=reason)
        return
    move_round(round_, RoundStatus.AGGREGATING, actor=SYSTEM, reason=reason)
    aggregation_send_on_commit(round_.pk)


def round_check_deadline(*, round_id: int, moment: datetime | None = None) -> None:
    """Past its deadline, a round with enough eligible submissions (the quorum; one for an evaluation round,
    whose figures do not depend on how many sites answered) is finished; else it is blocked."""
    moment = moment or timezone.now()
    with transaction.atomic():
        round_ = lock_round(round_id)
        if round_.status != RoundStatus.OPEN or round_.deadline > moment:
            return
        progress = round_progress(round_, moment=moment)
        got, gate = progress.submitted & progress.eligible, progress.gate
        quorum = 1 if round_.kind == RoundKind.EVALUATION else round_.study.quorum
        if len(got) >= quorum:
            _finish(round_, reason=f"Deadline passed with {len(got)} eligible submissions (quorum {quorum}).",
                    moment=moment)
        else:
            move_round(round_, RoundStatus.BLOCKED, actor=SYSTEM, details={"gate": gate.as_dict()},
                       reason=f"Deadline passed with {len(got)} eligible submissions; the quorum is {quorum}.")


def statistics_close(round_: Round, *, moment: datetime | None = None) -> Standardization | None:
    """Ask the gate again (in the caller's transaction, the round locked), leave out the statistics of sites it
    no longer allows, and pool the rest into the global mean and standard deviation; close the round and
    open the first training round. Sites see only the pooled figures. A study-level refusal, the abort
    revocation policy, or fewer pooled sites than the quorum blocks the round instead (returns None)."""
    study = round_.study
    gate = evaluate(study, GateAction.AGGREGATE, moment=moment)
    round_.gate_result = gate.as_dict()
    round_.save(update_fields=["gate_result"])
    refusals = [check for check in gate.study_checks if not check.passed and check.name != GateCheck.QUORUM]
    if refusals:
        return _block(round_, " ".join(check.reason for check in refusals), gate)
    rows = list(SiteStatistics.objects.filter(round=round_).select_related("site").order_by("site__name"))
    pooled = _exclude_statistics(rows, gate, round_)
    if len(pooled) < len(rows) and study.revocation_policy == RevocationPolicy.ABORT:
        return _block(round_, "Aborted: statistics came from a site no longer eligible (revocation policy: abort).",
                      gate)
    if not pooled or len(pooled) < study.quorum:
        return _block(round_, f"Only {len(pooled)} eligible sites sent statistics; the quorum is {study.quorum}.", gate)
    standardization = _pool(round_, pooled)
    move_round(round_, RoundStatus.CLOSED, actor=SYSTEM, reason="Global mean and standard deviation computed.",
               details={"sites": len(pooled), "examples": standardization.examples,
                        "site_ids": [row.site_id for row in pooled],
                        "excluded_site_ids": [row.site_id for row in rows if row.exclusion_reason]})
    round_open_next(study_id=round_.study_id)
    return standardization


def _exclude_statistics(rows: list[SiteStatistics], gate: GateResult, round_: Round) -> list[SiteStatistics]:
    """Mark the rows of sites the gate no longer allows as left out, each with that site's reasons, as
    aggregation does with updates; returns the rows to pool."""
    eligible = {verdict.site_id for verdict in gate.eligible_sites}
    pooled = []
    for row in rows:
        if row.site_id in eligible:
            pooled.append(row)
            continue
        verdict = gate.for_site(row.site_id)
        reasons = " ".join(c.reason for c in verdict.failures) if verdict else "The site no longer takes part."
        row.exclusion_reason = reasons
        row.save(update_fields=["exclusion_reason"])
        record(actor=SYSTEM, action=AggregationAction.STATISTICS_EXCLUDED, target=round_, study=round_.study_id,
               site=row.site_id, details={"round": round_.number, "reason": reasons})
        _events.statistics_excluded(round_, row.site, reasons)
    return pooled


def _pool(round_: Round, rows: list[SiteStatistics]) -> Standardization:
    width = len(rows[0].sums)
    return pooled_standardization(round_, rows[0].features, sum(row.count for row in rows),
                                  [sum(row.sums[i] for row in rows) for i in range(width)],
                                  [sum(row.sums_of_squares[i] for row in rows) for i in range(width)], len(rows))


def pooled_standardization(round_: Round, features: list[str], total: int, sums: list[float],
                           squares: list[float], sites: int) -> Standardization:
    """The pooled mean and population SD (numpy's default, as the central reference model standardizes with),
    from the sums over every pooled site (in the clear, or unmasked as a sum only by secure aggregation)."""
    mean = [s / total for s in sums]
    std = []
    for i, m in enumerate(mean):
        variance = max(squares[i] / total - m ** 2, 0.0)
        std.append(math.sqrt(variance) if variance > 1e-24 else 1.0)  # a constant feature is left unscaled
    standardization = Standardization(study=round_.study, round=round_, features=features, mean=mean,
                                      std=std, sites=sites, examples=total)
    standardization.full_clean()
    standardization.save()
    return standardization


def _block(round_: Round, reason: str, gate: GateResult) -> None:
    move_round(round_, RoundStatus.BLOCKED, actor=SYSTEM, reason=reason, details={"gate": gate.as_dict()})


def evaluation_close(round_: Round, *, reason: str) -> None:
    """Close the evaluation round: the final model's evaluation holds every site's answer, and the metric
    charts gain its point. The study has no more rounds to run."""
    round_.base_version.refresh_from_db(fields=["evaluation"])  # the last answer was recorded on another instance
    evaluation = round_.base_version.evaluation.get("global") or {}
    sites = Evaluation.objects.filter(round=round_).count()
    move_round(round_, RoundStatus.CLOSED, actor=SYSTEM, reason=f"{reason} Model v{round_.base_version.number} "
                                                               f"evaluated by {sites} sites.",
               details={"version": round_.base_version.number, "sites": sites,
                        VAL_AUC: evaluation.get(VAL_AUC), VAL_EXAMPLES: evaluation.get(VAL_EXAMPLES)})
    _events.evaluation_finished(round_)


def rounds_tick(*, moment: datetime | None = None) -> None:
    """The scheduler's beat: open rounds for active studies, enforce deadlines, send lost aggregations
    again, remove what killed writers left in the model store, and tell live dashboards when an approval
    lapsed with time."""
    moment = moment or timezone.now()
    # A Flower round is the Flower coordinator's to finish, a secure round closes stage by stage (its own
    # deadlines): neither completes by counting updates.
    ours = Round.objects.filter(status=RoundStatus.OPEN, flower__isnull=True, secure__isnull=True)
    for round_id in ours.filter(deadline__lte=moment).values_list("pk", flat=True):
        round_check_deadline(round_id=round_id, moment=moment)
    # A site that became ineligible may leave every remaining eligible site already submitted.
    for round_id in ours.filter(deadline__gt=moment).values_list("pk", flat=True):
        _complete_if_ready(round_id, moment)
    secure_rounds_tick(moment=moment)
    aggregations_redispatch(moment=moment)  # a worker died while aggregating, or took the task with it
    _sweep_now_and_then()
    idle = Study.objects.filter(status=StudyStatus.ACTIVE).exclude(rounds_run__status__in=ROUND_LIVE)
    for study_id in idle.values_list("pk", flat=True):
        _open_if_due(study_id, moment)
    governance_watch(moment=moment)


def _complete_if_ready(round_id: int, moment: datetime) -> None:
    """Finish the open round if every eligible site has submitted. Read first, without a lock: on most beats
    the round still waits for sites, and locking it would queue the beat for the write lock (SQLite has one)
    behind the sites' submissions, and any aggregation behind the beat. The decision is taken again locked."""
    round_ = Round.objects.select_related("study").filter(pk=round_id, status=RoundStatus.OPEN).first()
    if round_ is None or not round_progress(round_, moment=moment).complete:
        return
    with transaction.atomic():
        round_ = lock_round(round_id)
        if round_.status == RoundStatus.OPEN:
            round_complete_if_ready(round_, moment=moment)


def _sweep_now_and_then() -> None:
    global _next_sweep
    if time.monotonic() >= _next_sweep:
        _next_sweep = time.monotonic() + SWEEP_EVERY_SECONDS
        sweep_temporary_files()
