"""Reads for the agent API and the rounds, model version and study pages (query counts bounded)."""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.models import Count, OuterRef, Prefetch, Subquery
from django.db.models.functions import Coalesce

from aggregation.choices import ROUND_LIVE, RoundKind, RoundStatus
from aggregation.models import (
    Evaluation,
    ModelVersion,
    Round,
    RoundDecline,
    SiteStatistics,
    Standardization,
    Update,
)
from consortium.errors import NotFound
from consortium.federated import accountant
from sites.models import Site
from studies import privacy as study_privacy
from studies.choices import PARTICIPATION_CURRENT, DpiaStatus, GateAction, RiskLevel, Strategy
from studies.governance import evaluate
from studies.models import Study
from studies.privacy import finite

AGENT_PROTOCOL_FIELDS = ("model_kind", "hidden_units", "num_features", "label_column", "local_epochs", "batch_size",
                         "learning_rate", "proximal_mu", "secure_aggregation")


def open_rounds_for_site(site_id: int) -> list[dict[str, Any]]:
    """Open rounds of the studies this site takes part in, where the gate lets it download the model
    now (one gate evaluation per study: a site takes part in few studies)."""
    rounds = (
        Round.objects.filter(status=RoundStatus.OPEN, flower__isnull=True, study__participations__site_id=site_id,
                             study__participations__status__in=PARTICIPATION_CURRENT)
        .with_base_version().select_related("study", "secure").order_by("opened_at").distinct()
    )
    standardizations = {s.study_id: s for s in Standardization.objects.filter(study__in=[r.study_id for r in rounds])}
    answer = []
    for round_ in rounds:
        if not evaluate(round_.study, GateAction.DOWNLOAD_MODEL, site=site_id).allowed:
            continue
        answers = {RoundKind.STATISTICS: round_.statistics, RoundKind.EVALUATION: round_.evaluations}
        secure = getattr(round_, "secure", None)
        # A secure round is never "submitted": the agent steps through its stages until it is done.
        submitted = secure is None and answers.get(round_.kind, round_.updates).filter(site_id=site_id).exists()
        described = _describe(round_, submitted, standardizations.get(round_.study_id))
        described["secure_stage"] = secure.stage if secure is not None else None
        answer.append(described)
    return answer


def _describe(round_: Round, submitted: bool, standardization: Standardization | None) -> dict[str, Any]:
    study: Study = round_.study
    return {
        "round_id": round_.pk,
        "study_id": study.pk,
        "study_title": study.title,
        "number": round_.number,
        "kind": round_.kind,
        "base_version": round_.base_version.number if round_.base_version else None,
        "deadline": round_.deadline.isoformat(),
        "submitted": submitted,
        # The whole protocol with its hash: the agent recomputes the hash before it trains, and its site's
        # policy may accept only protocols it reviewed (sites/agent/policy.py).
        "protocol": study.protocol(),
        "protocol_sha256": study.protocol_sha256(),
        "standardization": {"features": standardization.features, "mean": standardization.mean,
                            "std": standardization.std} if standardization else None,
    }


def study_rounds(study: Study) -> list[Round]:
    """Every round of the study, newest first, with its updates and the version it produced."""
    return list(
        Round.objects.filter(study=study).select_related("base_version", "produced_version")
        .prefetch_related("updates__site").order_by("-number")
    )


def latest_version(study: Study) -> ModelVersion | None:
    return ModelVersion.objects.filter(study=study).order_by("-number").first()


# --- the rounds page and the study page's summary -------------------------------------------------------


@dataclass(frozen=True)
class RoundRow:
    """One round as the rounds page shows it: the updates it received, or for a statistics round only who
    sent figures and when (never the figures), or for an evaluation round who evaluated the final model and
    when, and the model version it produced, if any."""

    round: Round
    updates: list[Update]
    statistics: list[SiteStatistics]
    version: ModelVersion | None
    evaluations: list[Evaluation] = field(default_factory=list)

    @property
    def weighted_updates(self) -> list[tuple[Update, dict[str, Any] | None]]:
        """Each update beside its entry in the produced model's provenance (declared examples and the weight
        applied), or None when no model lists it (excluded, not aggregated yet)."""
        contributors = (self.version.provenance.get("contributors") or []) if self.version else []
        by_site = {c.get("site_id"): c for c in contributors}
        return [(update, by_site.get(update.site_id)) for update in self.updates]


@dataclass(frozen=True)
class RoundsOverview:
    """Every round of a study, newest first, with the training budget and the pooled statistics."""

    rounds: list[RoundRow]
    training_closed: int
    budget: int
    standardization: Standardization | None
    privacy: dict[str, Any] | None = None

    @property
    def budget_left(self) -> int:
        return max(self.budget - self.training_closed, 0)

    @property
    def pooled_features(self) -> list[tuple[str, float, float]]:
        """(feature, global mean, global SD) rows of the pooled standardization, if there is one."""
        s = self.standardization
        return list(zip(s.features, s.mean, s.std, strict=True)) if s else []


def rounds_overview(study: Study) -> RoundsOverview:
    """The rounds page's data in five queries, however many rounds and sites there are."""
    updates = Update.objects.select_related("site").order_by("site__name")
    # Only who sent statistics and when: the sites' own sums never leave this function.
    statistics = SiteStatistics.objects.select_related("site").only(
        "round", "site", "received_at", "exclusion_reason", "site__name", "site__code").order_by("site__name")
    evaluations = Evaluation.objects.select_related("site").only(
        "round", "site", "received_at", "site__name", "site__code").order_by("site__name")
    rounds = list(
        Round.objects.filter(study=study).select_related("base_version", "produced_version")
        .prefetch_related(Prefetch("updates", queryset=updates), Prefetch("statistics", queryset=statistics),
                          Prefetch("evaluations", queryset=evaluations))
        .order_by("-number")
    )
    rows = [RoundRow(r, list(r.updates.all()), list(r.statistics.all()), getattr(r, "produced_version", None),
                     list(r.evaluations.all())) for r in rounds]
    closed = sum(1 for r in rounds if r.kind == RoundKind.TRAINING and r.status == RoundStatus.CLOSED)
    budget = privacy_budget(study)
    voided = [row.version.provenance["privacy"] for row in rows
              if row.version and (row.version.provenance.get("privacy") or {}).get("void")]
    if budget is not None and voided:
        # Composition over rounds whose noise anyone could remove guarantees nothing.
        budget = {**budget, "void": True, "void_reason": voided[-1].get("void_reason", "")}
    return RoundsOverview(rows, closed, study.rounds, Standardization.objects.filter(study=study).first(), budget)


def privacy_budget(study: Study, *, releasing: bool = False) -> dict[str, Any] | None:
    """With central DP on: the (epsilon, delta) spent by the released training rounds (and, `releasing`, the
    round being released now), against the protocol's target, and at the end of the round plan."""
    if study.dp_noise_multiplier <= 0:
        return None
    budget = study_privacy.privacy_budget(study)
    ledger, z, delta = study.privacy_spent(), study.dp_noise_multiplier, study.dp_delta
    spent = accountant.epsilon_after(ledger, z, delta) if releasing else budget.epsilon_spent
    planned = max(study.rounds - budget.rounds_released, 0)
    at_budget = accountant.epsilon_after(ledger, z, delta, more=planned)
    return {**budget.as_dict(), "clip_norm": study.dp_clip_norm, "epsilon_spent": finite(spent),
            "epsilon_at_budget": finite(at_budget)}


# The study page lists this many of the newest rounds that sites declined under their own policy.
RECENT_DECLINES = 10


@dataclass(frozen=True)
class RoundsSummary:
    """What the study page says about rounds: the newest round, the newest model version, the budget."""

    current: Round | None
    latest_version: ModelVersion | None
    training_closed: int
    budget: int
    declines: list[RoundDecline]

    @property
    def live(self) -> bool:
        return self.current is not None and self.current.status in ROUND_LIVE

    @property
    def final(self) -> dict[str, Any] | None:
        """The final model's figures once its evaluation round closed (the study's last round): the global
        metrics of the newest version, which the sites scored after the last training round."""
        version, current = self.latest_version, self.current
        if (version is None or current is None or current.kind != RoundKind.EVALUATION
                or current.status != RoundStatus.CLOSED or current.base_version_id != version.pk):
            return None
        return {"version": version.number, "round": current.number, "sites": len(version.evaluation.get("sites", {})),
                **(version.evaluation.get("global") or {})}


def rounds_summary(study: Study) -> RoundsSummary:
    """The study page's rounds summary in two queries: the newest round (carrying the count of closed
    training rounds; no round means none closed) and the newest model version."""
    closed = (Round.objects.filter(study=OuterRef("study"), kind=RoundKind.TRAINING, status=RoundStatus.CLOSED)
              .order_by().values("study").annotate(n=Count("pk")).values("n"))
    current = (Round.objects.filter(study=study).annotate(training_closed=Coalesce(Subquery(closed), 0))
               .select_related("secure").order_by("-number").first())
    declines = list(RoundDecline.objects.filter(round__study=study).select_related("round", "site")[:RECENT_DECLINES])
    return RoundsSummary(current, latest_version(study), current.training_closed if current else 0, study.rounds,
                         declines)


# --- the model version page -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GateSite:
    """One site's checks in the gate result recorded at aggregation."""

    site_id: int
    site: str
    checks: list[dict[str, Any]]

    @property
    def eligible(self) -> bool:
        return all(check["passed"] for check in self.checks)


@dataclass(frozen=True)
class SiteMetrics:
    """One site's validation metrics of a model (reported with its next update)."""

    site_id: int
    site: str
    metrics: dict[str, Any]


@dataclass(frozen=True)
class VersionDetail:
    """A model version with its provenance laid out for people: who contributed under which agreement,
    the DPIA, the gate's verdict at aggregation, the strategy, and the sites' evaluation of the model."""

    version: ModelVersion
    initial: bool
    contributors: list[dict[str, Any]]
    agreement: dict[str, Any] | None
    dpia: dict[str, Any] | None
    gate_allowed: bool | None
    gate_moment: datetime | None
    gate_study_checks: list[dict[str, Any]]
    gate_sites: list[GateSite]
    strategy: str
    strategy_settings: list[tuple[str, Any]]
    evaluation: list[SiteMetrics]
    evaluation_mean: dict[str, Any]
    base: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    weighting: str = ""
    privacy: dict[str, Any] | None = None


def model_version_get(study: Study, number: int) -> ModelVersion:
    """Version `number` of a study the caller already may see; NotFound if there is none."""
    version = (ModelVersion.objects.filter(study=study, number=number)
               .select_related("round", "round__base_version").first())
    if version is None:
        raise NotFound("No such model version.", study=study.pk)
    return version


def version_detail(study: Study, number: int) -> VersionDetail:
    """Version `number` with its provenance and evaluation shaped for the page (two queries)."""
    version = model_version_get(study, number)
    provenance = version.provenance or {}
    gate = provenance.get("gate") or {}
    checks = gate.get("checks") or []
    strategy = provenance.get("strategy") or {}
    return VersionDetail(
        version=version,
        initial=bool(provenance.get("initial")),
        base=provenance.get("base_version"),
        contributors=provenance.get("contributors") or [],
        agreement=provenance.get("agreement"),
        dpia=_dpia(provenance.get("dpia")),
        gate_allowed=gate.get("allowed"),
        gate_moment=_moment(gate.get("moment")),
        gate_study_checks=[check for check in checks if check.get("site_id") is None],
        gate_sites=_gate_sites(checks),
        strategy=dict(Strategy.choices).get(strategy.get("name"), strategy.get("name") or ""),
        # Never a noise seed, even one left in an old provenance: it would let a reader remove the DP noise.
        strategy_settings=sorted((k, v) for k, v in (strategy.get("settings") or {}).items() if "seed" not in k),
        evaluation=_evaluation(version.evaluation.get("sites") or {}),
        evaluation_mean=version.evaluation.get("global") or {},
        provenance=provenance,
        weighting=provenance.get("weighting") or "",
        privacy=provenance.get("privacy"),
    )


def _moment(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _dpia(dpia: dict[str, Any] | None) -> dict[str, Any] | None:
    if not dpia:
        return None
    return {**dpia, "status_label": dict(DpiaStatus.choices).get(dpia.get("status"), dpia.get("status")),
            "risk_label": dict(RiskLevel.choices).get(dpia.get("risk_level"), dpia.get("risk_level")),
            "valid_until": _moment(dpia.get("valid_until"))}


def _gate_sites(checks: list[dict[str, Any]]) -> list[GateSite]:
    """The per-site checks of a stored gate result, grouped by site in the order the gate gave them."""
    grouped: dict[int, GateSite] = {}
    for check in checks:
        site_id = check.get("site_id")
        if site_id is not None:
            grouped.setdefault(site_id, GateSite(site_id, check.get("site") or f"Site {site_id}", [])).checks.append(
                check)
    return list(grouped.values())


def _evaluation(sites: dict[str, dict[str, Any]]) -> list[SiteMetrics]:
    """Per-site metrics keyed by site id in storage, named for people (one query)."""
    names = dict(Site.objects.filter(pk__in=[int(key) for key in sites]).values_list("pk", "name"))
    rows = [SiteMetrics(int(key), names.get(int(key), f"Site {key}"), metrics) for key, metrics in sites.items()]
    return sorted(rows, key=lambda row: row.site)


def site_contributions(study_id: int, site_id: int) -> list[dict[str, Any]]:
    """What the coordinator holds from one site in one study, round by round: the site's side of the ledger,
    which its agent reconciles with its own record (`python -m sites.agent reconcile`)."""
    updates = (Update.objects.filter(round__study_id=study_id, site_id=site_id)
               .select_related("round", "base_version").order_by("round__number"))
    return [{"round": u.round.number, "round_id": u.round_id, "status": u.status, "reason": u.exclusion_reason,
             "update_sha256": u.sha256, "num_examples": u.num_examples, "base_version": u.base_version.number,
             "base_sha256": u.base_version.sha256, "received_at": u.received_at.isoformat()} for u in updates]
