"""Reads behind the consortium overview: every study the user may see, its state, its current round, its
last global metric, and the governance warnings that need someone before they stop a round (or already do).

A DPO should see at a glance which approvals lapse soon, so the warnings come from the gate itself
(`evaluate_many`): the same checks, the same expiry instants, never a second opinion. Everything here is
read in a fixed number of queries whatever the number of studies and sites: the studies, the gate's six,
the newest round of each study and the newest evaluated model version of each.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Count, IntegerField, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from aggregation.choices import ROUND_LIVE, RoundKind, RoundStatus
from aggregation.models import ModelVersion, Round, SiteStatistics, Update
from consortium.federated.metric_keys import GLOBAL_METRICS
from studies.choices import GateCheck, StudyStatus
from studies.disclosure import Disclosure, disclosures_for
from studies.governance import Check, GateResult, evaluate_many
from studies.models import Study
from studies.selectors import study_list

User = AbstractBaseUser | AnonymousUser

# The gate checks the overview warns about, with the words people use for them.
WATCHED_CHECKS = {GateCheck.DPIA: "DPIA", GateCheck.APPROVALS: "Approvals", GateCheck.QUORUM: "Quorum",
                  GateCheck.ETHICS: "Ethics approval", GateCheck.AGREEMENT_SIGNED: "Data use agreement",
                  GateCheck.PROTOCOL_ACCEPTED: "Protocol review", GateCheck.DATASET_REGISTERED: "Data set"}
# What a warning does to rounds: a failing study-level check blocks them (the gate refuses the round); a
# failing site-level check only excludes that site (the round runs without it, unless that leaves too few
# sites, which the failing quorum check then says); a passing check that lapses soon will do one of those.
BLOCKS, EXCLUDES, EXPIRES = "blocks", "excludes", "expires"


@dataclass(frozen=True)
class GovernanceWarning:
    """A gate verdict that needs someone: it `blocks` rounds now, `excludes` a site from them now, or
    `expires` (lapses) within the warning horizon.

    `kind` is the gate check's name ("dpia", "quorum", "ethics", "agreement_signed", ...) or "round" for a
    blocked round; the page links each kind to where it is fixed. `days` counts calendar days from today
    to the expiry in the consortium's time zone (negative once it has passed)."""

    kind: str
    label: str
    reason: str
    effect: str
    site_id: int | None = None
    site_name: str = ""
    expires_at: datetime | None = None
    days: int | None = None
    round_number: int | None = None

    @property
    def blocking(self) -> bool:
        return self.effect == BLOCKS

    @property
    def failing(self) -> bool:
        return self.effect != EXPIRES

    @property
    def days_ago(self) -> int | None:
        return -self.days if self.days is not None else None


@dataclass(frozen=True)
class CurrentRound:
    """The study's newest round and how many sites sent their part, against the sites eligible now."""

    round: Round
    submitted: int
    eligible: int

    @property
    def live(self) -> bool:
        return self.round.status in ROUND_LIVE


@dataclass(frozen=True)
class LastMetric:
    """The newest model version the sites have evaluated, and its weighted mean validation metrics."""

    version: int
    val_auc: float | None
    val_accuracy: float | None
    val_loss: float | None


@dataclass(frozen=True)
class OverviewRow:
    study: Study
    gate: GateResult
    current_round: CurrentRound | None
    last_metric: LastMetric | None
    warnings: list[GovernanceWarning]

    @property
    def blocked(self) -> bool:
        return any(warning.blocking for warning in self.warnings)


@dataclass(frozen=True)
class Overview:
    rows: list[OverviewRow]
    moment: datetime
    days: int

    @property
    def study_ids(self) -> list[int]:
        return [row.study.pk for row in self.rows]

    @property
    def warning_count(self) -> int:
        return sum(len(row.warnings) for row in self.rows)


def consortium_overview(user: User, *, moment: datetime | None = None) -> Overview:
    """Every study `user` may see (newest first) with its round, last metric and warnings, in a
    constant number of queries."""
    moment = moment or timezone.now()
    days = settings.EXPIRY_WARNING_DAYS
    studies = list(study_list(user))
    ids = [study.pk for study in studies]
    gates = evaluate_many(studies, moment=moment)
    rounds = _newest_rounds(ids)
    metrics = _last_metrics(ids, disclosures_for(user, studies))
    rows = []
    for study in studies:
        gate, round_ = gates[study.pk], rounds.get(study.pk)
        current = _current(round_, gate.eligible_count) if round_ else None
        rows.append(OverviewRow(study, gate, current, metrics.get(study.pk),
                                study_warnings(study, gate, round_, days=days)))
    return Overview(rows, moment, days)


def _count_of(model: type[Update] | type[SiteStatistics]) -> Coalesce:
    """How many rows of `model` the outer round received (a subquery, so rounds and counts are one query)."""
    per_round = (model.objects.filter(round=OuterRef("pk")).order_by().values("round")
                 .annotate(n=Count("pk")).values("n"))
    return Coalesce(Subquery(per_round, output_field=IntegerField()), 0)


def _newest_rounds(study_ids: list[int]) -> dict[int, Round]:
    """Each study's newest round, with `updates_in` and `statistics_in` counted, in one query."""
    newest = Round.objects.filter(study=OuterRef("study")).order_by("-number").values("pk")[:1]
    rounds = (Round.objects.filter(study__in=study_ids, pk=Subquery(newest))
              .annotate(updates_in=_count_of(Update), statistics_in=_count_of(SiteStatistics)))
    return {round_.study_id: round_ for round_ in rounds}


def _current(round_: Round, eligible: int) -> CurrentRound:
    submitted = round_.statistics_in if round_.kind == RoundKind.STATISTICS else round_.updates_in
    return CurrentRound(round_, submitted, eligible)


def _last_metrics(study_ids: list[int], disclosures: dict[int, Disclosure]) -> dict[int, LastMetric]:
    """Each study's newest model version with a global evaluation, in one query. Sites evaluate a version
    when they download it for the next round, so the newest version often has none yet. A mean over fewer
    sites than the viewer may see pooled (`studies.disclosure`) is left out."""
    evaluated = (ModelVersion.objects.filter(study=OuterRef("study"), evaluation__has_key="global")
                 .order_by("-number").values("pk")[:1])
    versions = (ModelVersion.objects.filter(study__in=study_ids, pk=Subquery(evaluated))
                .only("pk", "study_id", "number", "evaluation"))
    found = {}
    for version in versions:
        metrics: dict[str, Any] = version.evaluation.get("global") or {}
        if metrics and disclosures[version.study_id].sees_pool((version.evaluation.get("sites") or {}).keys()):
            found[version.study_id] = LastMetric(version.number, *(metrics.get(key) for key in GLOBAL_METRICS))
    return found


# --- warnings ---------------------------------------------------------------------------------------------


def study_warnings(study: Study, gate: GateResult, round_: Round | None, *, days: int) -> list[GovernanceWarning]:
    """The gate's own failing checks (what blocks the study's rounds, then which sites they exclude), a
    blocked round, then what lapses within `days`, soonest first; every reason in the gate's words.

    A closed study warns about nothing. Only sites whose participation is granted count: a revoked or
    invited site takes no part in rounds, so its paperwork stops nothing. Failures that do not lapse
    (no DPIA yet, an unsigned agreement, too few sites) matter only in an active study; a lapsed approval
    is shown in any study still running its course, since it must be renewed before the next round."""
    if study.status == StudyStatus.CLOSED:
        return []
    taking_part = {verdict.site_id for verdict in gate.sites
                   if any(check.name == GateCheck.PARTICIPATION and check.passed for check in verdict.checks)}

    def watched(check: Check) -> bool:
        return check.name in WATCHED_CHECKS and (check.site_id is None or check.site_id in taking_part)

    active = study.status == StudyStatus.ACTIVE
    failing = [_from_check(check, EXCLUDES if check.site_id else BLOCKS, gate.moment) for check in gate.failures
               if watched(check) and (active or check.expires_at is not None)]
    if round_ is not None and round_.status == RoundStatus.BLOCKED:
        failing.append(_blocked_round(round_))
    expiring = [_from_check(check, EXPIRES, gate.moment) for check in gate.expiring_within(days) if watched(check)]
    # What blocks first, then excluded sites; within each, lapsed ones oldest first, then those with no date.
    return sorted(failing, key=lambda w: (not w.blocking, w.expires_at is None, w.expires_at or gate.moment)) + expiring


def _calendar_days(moment: datetime, until: datetime) -> int:
    """Whole calendar days from `moment` to `until` in the consortium's time zone, as people count them."""
    return (timezone.localdate(until) - timezone.localdate(moment)).days


def _from_check(check: Check, effect: str, moment: datetime) -> GovernanceWarning:
    return GovernanceWarning(
        kind=check.name, label=WATCHED_CHECKS[check.name], reason=check.reason, effect=effect,
        site_id=check.site_id, site_name=check.site_name, expires_at=check.expires_at,
        days=_calendar_days(moment, check.expires_at) if check.expires_at else None,
    )


def _blocked_round(round_: Round) -> GovernanceWarning:
    return GovernanceWarning(
        kind="round", label=f"Round {round_.number}", reason=round_.status_reason or "Blocked by the gate.",
        effect=BLOCKS, round_number=round_.number,
    )
