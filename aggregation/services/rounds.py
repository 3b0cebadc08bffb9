"""Opening rounds, noticing when a round is complete or past its deadline, and closing statistics
rounds. The scheduler (`rounds_tick`) and the submission services call these; every step is audited."""

import math
import time
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from aggregation import codec, zoo
from aggregation.choices import ROUND_LIVE, RoundKind, RoundStatus, UpdateStatus
from aggregation.models import ModelVersion, Round, SiteStatistics, Standardization
from aggregation.services import _events
from aggregation.services._common import lock_round, move_round, store
from aggregation.services._events import Progress
from aggregation.services.recovery import aggregations_redispatch, sweep_temporary_files
from consortium.audit import SYSTEM, record
from consortium.version import code_version
from studies.choices import GateAction, StudyStatus
from studies.governance import evaluate
from studies.locks import lock_study
from studies.models import Study
from studies.services.monitoring import governance_watch

# The model store's temporary files are swept at most this often by each scheduler process.
SWEEP_EVERY_SECONDS = 60.0
_next_sweep = 0.0


def round_open_next(*, study_id: int, moment: datetime | None = None) -> Round | None:
    """Open the study's next round if it is active, has rounds left, has none open, and the gate would
    let a round run now (otherwise nothing is opened; the study page shows why)."""
    moment = moment or timezone.now()
    with transaction.atomic():
        study = lock_study(study_id)
        if study.status != StudyStatus.ACTIVE or Round.objects.filter(study=study, status__in=ROUND_LIVE).exists():
            return None
        done = Round.objects.filter(study=study, kind=RoundKind.TRAINING, status=RoundStatus.CLOSED).count()
        if done >= study.rounds:
            return None
        gate = evaluate(study, GateAction.AGGREGATE, moment=moment)
        if not gate.allowed:
            return None
        statistics = study.federated_statistics and not Standardization.objects.filter(study=study).exists()
        base = None if statistics else _latest_version(study)
        last = Round.objects.filter(study=study).order_by("-number").values_list("number", flat=True).first() or 0
        round_ = Round(study=study, number=last + 1, kind=RoundKind.STATISTICS if statistics else RoundKind.TRAINING,
                       base_version=base, opened_at=moment,
                       deadline=moment + timedelta(minutes=study.round_deadline_minutes))
        round_.full_clean()
        round_.save()
        record(actor=SYSTEM, action="aggregation.round.opened", target=round_, study=study,
               details={"round": round_.number, "kind": round_.kind, "base_version": base.number if base else None,
                        "deadline": round_.deadline.isoformat(),
                        "eligible_site_ids": [v.site_id for v in gate.eligible_sites]})
        _events.round_opened(round_, gate)
        return round_


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
    record(actor=SYSTEM, action="aggregation.model_version.created", target=version, study=study,
           details={"version": 0, "sha256": digest, "initial": True})
    return version


def round_progress(round_: Round, *, moment: datetime | None = None) -> Progress:
    """Which sites have submitted to the round, and which the gate allows now."""
    gate = evaluate(round_.study, GateAction.AGGREGATE, moment=moment)
    if round_.kind == RoundKind.STATISTICS:
        submitted = SiteStatistics.objects.filter(round=round_).values_list("site_id", flat=True)
    else:
        submitted = round_.updates.filter(status=UpdateStatus.ACCEPTED).values_list("site_id", flat=True)
    return Progress(frozenset(submitted), frozenset(verdict.site_id for verdict in gate.eligible_sites), gate)


def round_complete_if_ready(round_: Round, *, moment: datetime | None = None, progress: Progress | None = None) -> None:
    """After a submission: once every eligible site has submitted, close a statistics round at once
    or hand a training round to the aggregation task (after this transaction commits)."""
    if (progress or round_progress(round_, moment=moment)).complete:
        _finish(round_, reason="Every eligible site has submitted.")


def _finish(round_: Round, *, reason: str) -> None:
    if round_.kind == RoundKind.STATISTICS:
        statistics_close(round_)
        return
    from aggregation.tasks import aggregate_round  # tasks import services: import here, not at module load

    move_round(round_, RoundStatus.AGGREGATING, actor=SYSTEM, reason=reason)
    aggregate_round.delay_on_commit(round_.pk)


def round_check_deadline(*, round_id: int, moment: datetime | None = None) -> None:
    """Past its deadline, a round with enough eligible submissions is finished; else it is blocked."""
    moment = moment or timezone.now()
    with transaction.atomic():
        round_ = lock_round(round_id)
        if round_.status != RoundStatus.OPEN or round_.deadline > moment:
            return
        progress = round_progress(round_, moment=moment)
        got, gate = progress.submitted & progress.eligible, progress.gate
        if len(got) >= round_.study.quorum:
            quorum = round_.study.quorum
            _finish(round_, reason=f"Deadline passed with {len(got)} eligible submissions (quorum {quorum}).")
        else:
            move_round(round_, RoundStatus.BLOCKED, actor=SYSTEM, details={"gate": gate.as_dict()},
                       reason=f"Deadline passed with {len(got)} eligible submissions; the quorum is "
                              f"{round_.study.quorum}.")


def statistics_close(round_: Round) -> Standardization:
    """Pool the sites' counts and sums into the global mean and standard deviation, close the round,
    and open the first training round. Sites see only the pooled figures."""
    rows = list(SiteStatistics.objects.filter(round=round_))
    total = sum(row.count for row in rows)
    width = len(rows[0].sums)
    mean = [sum(row.sums[i] for row in rows) / total for i in range(width)]
    std = []
    for i in range(width):
        squares = sum(row.sums_of_squares[i] for row in rows)
        # The population SD (numpy's default), as the central reference model standardizes with.
        variance = max(squares / total - mean[i] ** 2, 0.0)
        std.append(math.sqrt(variance) if variance > 1e-24 else 1.0)  # a constant feature is left unscaled
    standardization = Standardization(study=round_.study, round=round_, features=rows[0].features, mean=mean,
                                      std=std, sites=len(rows), examples=total)
    standardization.full_clean()
    standardization.save()
    move_round(round_, RoundStatus.CLOSED, actor=SYSTEM, reason="Global mean and standard deviation computed.",
               details={"sites": len(rows), "examples": total})
    round_open_next(study_id=round_.study_id)
    return standardization


def rounds_tick(*, moment: datetime | None = None) -> None:
    """The scheduler's beat: open rounds for active studies, enforce deadlines, send lost aggregations
    again, remove what killed writers left in the model store, and tell live dashboards when an approval
    lapsed with time."""
    moment = moment or timezone.now()
    for round_id in Round.objects.filter(status=RoundStatus.OPEN, deadline__lte=moment).values_list("pk", flat=True):
        round_check_deadline(round_id=round_id, moment=moment)
    # A site that became ineligible may leave every remaining eligible site already submitted.
    for round_id in Round.objects.filter(status=RoundStatus.OPEN, deadline__gt=moment).values_list("pk", flat=True):
        with transaction.atomic():
            round_ = lock_round(round_id)
            if round_.status == RoundStatus.OPEN:
                round_complete_if_ready(round_, moment=moment)
    aggregations_redispatch(moment=moment)  # a worker died while aggregating, or took the task with it
    _sweep_now_and_then()
    idle = Study.objects.filter(status=StudyStatus.ACTIVE).exclude(rounds_run__status__in=ROUND_LIVE)
    for study_id in idle.values_list("pk", flat=True):
        round_open_next(study_id=study_id, moment=moment)
    governance_watch(moment=moment)


def _sweep_now_and_then() -> None:
    global _next_sweep
    if time.monotonic() >= _next_sweep:
        _next_sweep = time.monotonic() + SWEEP_EVERY_SECONDS
        sweep_temporary_files()
