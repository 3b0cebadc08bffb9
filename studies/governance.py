"""The gate: the one place that decides whether a study, or a site in it, may act right now.

`evaluate(study, action, site=None, moment=None)` returns every check with its
verdict and a human reason; `at=T` asks the same as things stood at T (every
governed record read from its history, `studies.history`), judged at T.
It only reads, in a fixed number of queries whatever
the number of sites, and services call it inside the transaction that acts on
its answer. With no site it doubles as the dry run behind the study page: if a
round started now, which sites would take part, and why not the others.
"""

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from django.utils import timezone

from consortium.federated.dataset_schema import schema_mismatches
from sites.models import Site
from studies.choices import (
    ApprovalDecision,
    ApprovalRole,
    DpiaStatus,
    GateAction,
    GateCheck,
    ParticipationStatus,
    ReviewDecision,
    StudyStatus,
)
from studies.history import as_of, instance_as_of
from studies.models import (
    AgreementSignature,
    AgreementVersion,
    Approval,
    DatasetRegistration,
    Dpia,
    EthicsApproval,
    Participation,
    ProtocolReview,
    Study,
)
from studies.privacy import privacy_budget


@dataclass(frozen=True)
class Check:
    """One verdict: its name, whether it passed, why, the site it concerns and when it lapses."""

    name: str
    passed: bool
    reason: str
    site_id: int | None = None
    site_name: str = ""
    expires_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": str(self.name),
            "passed": self.passed,
            "reason": self.reason,
            "site_id": self.site_id,
            "site": self.site_name,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }


@dataclass(frozen=True)
class SiteVerdict:
    site_id: int
    site_name: str
    checks: tuple[Check, ...]

    @property
    def eligible(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]


@dataclass(frozen=True)
class GateResult:
    """The gate's answer. `allowed` is the verdict for the action; the checks say why.

    `sites` lists every site ever invited (a revoked one stays, in red); the quorum counts only the sites
    still taking part or invited: `eligible_count` of `counted_sites`, the figures its reason quotes. Asked
    about one site for an action other than aggregation (no quorum), the gate reads that site alone, and the
    two figures count it alone."""

    study_id: int
    action: str
    moment: datetime
    study_checks: tuple[Check, ...]
    sites: tuple[SiteVerdict, ...]
    site_id: int | None = None
    eligible_count: int = 0
    counted_sites: int = 0
    as_of: bool = False  # read from the records' history as they stood at `moment`, not as they are now

    @property
    def checks(self) -> list[Check]:
        return [*self.study_checks, *(check for verdict in self.sites for check in verdict.checks)]

    @property
    def allowed(self) -> bool:
        if not all(check.passed for check in self.study_checks):
            return False
        if self.site_id is not None:
            verdict = self.for_site(self.site_id)
            return verdict is not None and verdict.eligible
        return True

    @property
    def eligible_sites(self) -> list[SiteVerdict]:
        return [verdict for verdict in self.sites if verdict.eligible]

    @property
    def failures(self) -> list[Check]:
        """What blocks the action: every failing check, or for one site, the study's and that site's."""
        if self.site_id is None:
            return [check for check in self.checks if not check.passed]
        verdict = self.for_site(self.site_id)
        relevant = (*self.study_checks, *(verdict.checks if verdict else ()))
        return [check for check in relevant if not check.passed]

    def for_site(self, site_id: int) -> SiteVerdict | None:
        return next((verdict for verdict in self.sites if verdict.site_id == site_id), None)

    def expiring_within(self, days: int) -> list[Check]:
        """Passing checks that lapse within `days` of the moment evaluated (to warn before they block)."""
        horizon = self.moment + timedelta(days=days)
        return sorted(
            (c for c in self.checks if c.passed and c.expires_at and c.expires_at <= horizon),
            key=lambda c: c.expires_at,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "study_id": self.study_id,
            "action": self.action,
            "moment": self.moment.isoformat(),
            "as_of": self.as_of,
            "allowed": self.allowed,
            "eligible_site_ids": [verdict.site_id for verdict in self.eligible_sites],
            "checks": [check.as_dict() for check in self.checks],
        }


def evaluate(
    study: Study,
    action: str = GateAction.AGGREGATE,
    *,
    site: Site | int | None = None,
    moment: datetime | None = None,
    at: datetime | None = None,
) -> GateResult:
    """Evaluate every governance check for `action` on `study` (for `site`, if given) at `moment` (default now)
    on the records as they are; with `at`, on the records as they stood at `at`, judged at `at`."""
    moment = _checked_moment(action, moment, at)
    site_id = site.pk if isinstance(site, Site) else site
    then = instance_as_of(study, at)
    if then is None:
        return _not_yet(study, action, moment, site_id)
    # Only aggregation counts the quorum over every site; asked about one site for anything else, the gate
    # reads that site's records alone (the agents' polls and submissions: cheap whatever the number of sites).
    alone = [site_id] if site_id and action != GateAction.AGGREGATE else None
    facts = _load([then], moment, at, site_ids=alone)[study.pk]
    return _judge(then, facts, action, moment, site_id, historical=at is not None)


def evaluate_sites(study: Study, action: str, site_ids: Sequence[int], *,
                   moment: datetime | None = None) -> dict[int, GateResult]:
    """The gate asked about each of these sites alone, as `evaluate(study, action, site=id)` answers, from one
    load of their records: a submission asks about its own site and about the sites that may show its round
    is still incomplete. Not for aggregation, which judges every site."""
    if action == GateAction.AGGREGATE:
        raise ValueError("Aggregation is judged over every site: use evaluate().")
    moment = _checked_moment(action, moment, None)
    facts = _load([study], moment, site_ids=list(site_ids))[study.pk]
    return {site_id: _judge(study, facts, action, moment, site_id) for site_id in site_ids}


def evaluate_many(studies: Iterable[Study], action: str = GateAction.AGGREGATE, *,
                  moment: datetime | None = None) -> dict[int, GateResult]:
    """The dry run for several studies at once (dashboards), in the same fixed number of queries."""
    moment = _checked_moment(action, moment, None)
    studies = list(studies)
    facts = _load(studies, moment)
    return {study.pk: _judge(study, facts[study.pk], action, moment, None) for study in studies}


def _checked_moment(action: str, moment: datetime | None, at: datetime | None) -> datetime:
    if action not in GateAction.values:
        raise ValueError(f"Unknown gate action {action!r}; expected one of {', '.join(GateAction.values)}.")
    if at is not None and moment is not None and moment != at:
        raise ValueError("Give the moment or `at`, not both: as of a moment, the gate judges at that moment.")
    moment = moment or at or timezone.now()
    if timezone.is_naive(moment):
        raise ValueError("The gate needs an aware moment: expiry is exact to the second across time zones.")
    return moment


@dataclass
class _Facts:
    """What the gate reads about one study; loaded for many studies at once by `_load`."""

    agreement: AgreementVersion | None = None
    dpia: Dpia | None = None
    participations: list[Participation] = field(default_factory=list)
    signed: set[int] = field(default_factory=set)
    ethics: dict[int, EthicsApproval] = field(default_factory=dict)
    approvals: dict[str, Approval] = field(default_factory=dict)
    reviews: dict[int, ProtocolReview] = field(default_factory=dict)  # per site, its newest protocol review
    datasets: dict[int, DatasetRegistration] = field(default_factory=dict)  # per site, its newest registration


def _load(studies: list[Study], moment: datetime, at: datetime | None = None,
          site_ids: list[int] | None = None) -> dict[int, _Facts]:
    """Eight queries, whatever the number of studies and sites; as of a moment nine (the sites come apart),
    plus one for the study as it stood (`evaluate`). With `site_ids`, the per-site facts of those sites only."""
    facts = {study.pk: _Facts() for study in studies}
    ids = list(facts)
    one = {"site_id__in": site_ids} if site_ids else {}
    agreements = as_of(AgreementVersion, at).filter(study__in=ids).order_by("study", "-version")
    for agreement in agreements if at else agreements.defer("text"):  # a historical row has no deferred loading
        facts[agreement.study_id].agreement = facts[agreement.study_id].agreement or agreement
    for dpia in as_of(Dpia, at).filter(study__in=ids):
        facts[dpia.study_id].dpia = dpia
    # Per site its current participation, else its latest one (a revoked site stays visible, in red).
    rows = _with_sites(as_of(Participation, at).filter(study__in=ids, **one).select_related("site")
                       .order_by("site__name", "-invited_at"), at)
    latest: dict[tuple[int, int], Participation] = {}
    for participation in rows:
        kept = latest.get((participation.study_id, participation.site_id))
        if kept is None or (participation.is_current and not kept.is_current):
            latest[(participation.study_id, participation.site_id)] = participation
    for (study_id, _), participation in latest.items():
        facts[study_id].participations.append(participation)
    agreement_study = {f.agreement.pk: study_id for study_id, f in facts.items() if f.agreement}
    for agreement_id, site_id in as_of(AgreementSignature, at).filter(agreement__in=agreement_study, **one).values_list(
        "agreement_id", "site_id"
    ):
        facts[agreement_study[agreement_id]].signed.add(site_id)
    for approval in as_of(EthicsApproval, at).filter(study__in=ids, **one).order_by("valid_until"):
        _keep_best_ethics(facts[approval.study_id].ethics, approval, moment)
    live = as_of(Approval, at).filter(study__in=ids, decision=ApprovalDecision.APPROVED, voided_at__isnull=True)
    for approval in live:
        facts[approval.study_id].approvals[approval.role] = approval
    # Reviews are append-only: as of a moment, the newest one given by then.
    reviews = ProtocolReview.objects.filter(study__in=ids, **one, **({"reviewed_at__lte": at} if at else {}))
    for review in reviews.order_by("reviewed_at", "pk"):
        facts[review.study_id].reviews[review.site_id] = review  # the newest wins
    # Registrations are append-only too: as of a moment, the newest one made by then.
    registrations = DatasetRegistration.objects.filter(study__in=ids, **one,
                                                       **({"registered_at__lte": at} if at else {}))
    for registration in registrations.order_by("registered_at", "pk"):
        facts[registration.study_id].datasets[registration.site_id] = registration  # the newest wins
    return facts


def _with_sites(participations: Iterable[Participation], at: datetime | None) -> list[Participation]:
    """A historical row comes back without its joined site: attach the sites in one query."""
    rows = list(participations)
    if at is not None:
        sites = Site.objects.in_bulk({row.site_id for row in rows})
        for row in rows:
            row.site = sites[row.site_id]
    return rows


def _not_yet(study: Study, action: str, moment: datetime, site_id: int | None) -> GateResult:
    check = Check(GateCheck.STUDY_ACTIVE, False, "The study did not exist yet at that moment.")
    sites = (_uninvited_verdict(site_id),) if site_id else ()
    return GateResult(study.pk, action, moment, (check,), sites, site_id, as_of=True)


def _keep_best_ethics(best: dict[int, EthicsApproval], approval: EthicsApproval, moment: datetime) -> None:
    """Per site, the approval in force at `moment`, else the most recent one (to explain why it fails).
    Approvals arrive in order of expiry."""
    current = best.get(approval.site_id)
    in_force = approval.valid_from <= moment < approval.valid_until
    if current is None or in_force or not (current.valid_from <= moment < current.valid_until):
        best[approval.site_id] = approval


def _judge(study: Study, facts: _Facts, action: str, moment: datetime, site_id: int | None, *,
           historical: bool = False) -> GateResult:
    current_protocol = study.protocol_sha256()
    verdicts = [
        _site_verdict(p, facts.agreement, facts.signed, facts.ethics.get(p.site_id), moment,
                      _protocol_check(facts.reviews.get(p.site_id), current_protocol, p.site),
                      _dataset_check(facts.datasets.get(p.site_id), study, p.site))
        for p in facts.participations
    ]
    # The quorum counts every eligible site, even when one site is asked about.
    current = [v for v, p in zip(verdicts, facts.participations, strict=True) if p.is_current]
    if site_id:
        verdicts = [v for v in verdicts if v.site_id == site_id] or [_uninvited_verdict(site_id)]
    study_checks = [
        _status_check(study),
        _approvals_check(study, facts.agreement, facts.approvals),
        _dpia_check(facts.dpia, moment),
        _privacy_budget_check(study),
    ]
    eligible = sum(v.eligible for v in current)
    if site_id is None or action == GateAction.AGGREGATE:
        study_checks.append(_quorum_check(study, eligible, len(current)))
    return GateResult(study.pk, action, moment, tuple(study_checks), tuple(verdicts), site_id,
                      eligible_count=eligible, counted_sites=len(current), as_of=historical)


def _status_check(study: Study) -> Check:
    if study.status == StudyStatus.ACTIVE:
        return Check(GateCheck.STUDY_ACTIVE, True, "The study is approved and active.")
    reason = f"The study is {study.get_status_display().lower()}, not active."
    if study.status == StudyStatus.SUSPENDED and study.status_reason:
        reason += f" Suspended: {study.status_reason}"
    return Check(GateCheck.STUDY_ACTIVE, False, reason)


def _approvals_check(study: Study, agreement: AgreementVersion | None, live: dict[str, Approval]) -> Check:
    if agreement is None:
        return Check(GateCheck.APPROVALS, False, "The study has no data use agreement yet.")
    current_hash = study.protocol_sha256()
    missing = [
        role.label for role in ApprovalRole
        if role not in live or live[role].protocol_sha256 != current_hash or live[role].agreement_id != agreement.pk
    ]
    if missing:
        return Check(GateCheck.APPROVALS, False, f"Missing a current approval from: {', '.join(missing)}.")
    return Check(GateCheck.APPROVALS, True,
                 f"Approved by the PI and a DPO for this protocol and DUA v{agreement.version}.")


def _dpia_check(dpia: Dpia | None, moment: datetime) -> Check:
    if dpia is None:
        return Check(GateCheck.DPIA, False, "No DPIA has been recorded.")
    if dpia.status != DpiaStatus.APPROVED:
        return Check(GateCheck.DPIA, False, f"The DPIA is {dpia.get_status_display().lower()}, not approved.")
    if dpia.valid_until is None or dpia.valid_until <= moment:
        when = timezone.localtime(dpia.valid_until).strftime("%Y-%m-%d %H:%M %Z") if dpia.valid_until else "never set"
        return Check(GateCheck.DPIA, False, f"The DPIA expired ({when}).", expires_at=dpia.valid_until)
    return Check(
        GateCheck.DPIA,
        True,
        f"DPIA approved ({dpia.get_risk_level_display().lower()} risk) until "
        f"{timezone.localtime(dpia.valid_until).strftime('%Y-%m-%d %H:%M %Z')}.",
        expires_at=dpia.valid_until,
    )


def _privacy_budget_check(study: Study) -> Check:
    """A training round runs only if epsilon after it stays within the protocol's target (the study's row only)."""
    budget = privacy_budget(study)
    verdict = partial(Check, GateCheck.PRIVACY_BUDGET)
    if not budget.dp_on and not budget.enforced:
        return verdict(True, "Central differential privacy is off; the protocol sets no budget.")
    if not budget.enforced:
        return verdict(False, "Differential privacy is on but the protocol sets no privacy target (ε); the PI sets "
                              "one and a DPO approves it.")
    spent = f"ε = {budget.epsilon_spent:.3g} of the target {budget.target:g} (δ = {budget.delta:g})"
    if not math.isfinite(budget.epsilon_spent):
        return verdict(False, "Privacy budget used up: training rounds were released without DP noise (or with "
                              "noise anyone could remove), so ε is unbounded.")
    if not budget.training_left:
        return verdict(True, f"All {budget.rounds_planned} training rounds ran: {spent}.")
    if budget.exhausted:
        return verdict(False, f"Privacy budget used up: {spent} after {budget.rounds_released} training rounds; "
                              f"one more would reach ε = {budget.epsilon_next:.3g}.")
    return verdict(True, f"{spent} spent; after the next round ε = {budget.epsilon_next:.3g}; the budget allows "
                         f"{budget.rounds_left} more training rounds.")


def _site_verdict(
    participation: Participation,
    agreement: AgreementVersion | None,
    signed: set[int],
    ethics: EthicsApproval | None,
    moment: datetime,
    protocol: Check,
    dataset: Check,
) -> SiteVerdict:
    site = participation.site
    here = {"site_id": site.pk, "site_name": site.name}
    granted = participation.status == ParticipationStatus.GRANTED
    reason = "Participation granted." if granted else f"Participation is {participation.get_status_display().lower()}."
    if not granted and participation.reason:
        reason += f" {participation.reason}"
    checks = [
        Check(GateCheck.PARTICIPATION, granted, reason, **here),
        _agreement_check(agreement, site.pk in signed, moment, site, here),
        _ethics_check(ethics, moment, site, here),
        protocol,
        dataset,
    ]
    return SiteVerdict(site.pk, site.name, tuple(checks))


def _protocol_check(review: ProtocolReview | None, current: str, site: Site) -> Check:
    """The site accepted the current protocol, by its hash: any amendment voids the acceptance."""
    here = {"site_id": site.pk, "site_name": site.name}
    short = f"{current[:12]}..."
    if review is None:
        return Check(GateCheck.PROTOCOL_ACCEPTED, False, f"Has not reviewed the protocol ({short}).", **here)
    if review.protocol_sha256 != current:
        what = "accepted" if review.decision == ReviewDecision.ACCEPTED else "rejected"
        return Check(GateCheck.PROTOCOL_ACCEPTED, False, f"Has not reviewed the amended protocol ({short}); it "
                     f"{what} an earlier version ({review.protocol_sha256[:12]}...).", **here)
    if review.decision == ReviewDecision.REJECTED:
        return Check(GateCheck.PROTOCOL_ACCEPTED, False, f"Rejected the current protocol ({short}): {review.reason}",
                     **here)
    return Check(GateCheck.PROTOCOL_ACCEPTED, True, f"Accepted the current protocol ({short}).", **here)


def _dataset_check(registration: DatasetRegistration | None, study: Study, site: Site) -> Check:
    """The site's agent registered its data set and it matches the protocol's schema, feature by feature. The
    match is judged now, against the current protocol: an amendment of the schema is checked at once. A protocol
    that declares no feature names requires no registration, but one that was made is still judged."""
    verdict = partial(Check, GateCheck.DATASET_REGISTERED, site_id=site.pk, site_name=site.name)
    if registration is None and not study.feature_names:
        # No declared schema (e.g. a Flower federation, whose clients are not our agent): nothing to match yet.
        return verdict(True, "The protocol declares no data schema; no registration is required.")
    if registration is None:
        return verdict(False, "Has not registered its data set (its agent registers it when it connects).")
    problems = schema_mismatches(registration.summary, feature_names=study.feature_names,
                                 num_features=study.num_features, label_column=study.label_column)
    if problems:
        return verdict(False, f"Its data set does not match the protocol: {'; '.join(problems)}.")
    return verdict(True, f"Registered {registration.rows} rows ({registration.positives} positive, "
                         f"{registration.negatives} negative), matching the protocol.")


def _local(value: datetime, site: Site) -> str:
    """An instant as the site's people read it: in the site's own time zone."""
    return timezone.localtime(value, site.tzinfo).strftime("%Y-%m-%d %H:%M %Z")


def _agreement_check(agreement: AgreementVersion | None, signed: bool, moment: datetime, site: Site,
                     here: dict[str, Any]) -> Check:
    """The site signed the current DUA version, and that version is in force at `moment`.

    The DUA is the contract each site signs, so its period is judged here, per site, like the site's
    ethics approval: once the version ends no site is covered, every site fails with the reason, and
    the quorum fails with them. (The approvals check stays about what the PI and a DPO approved.)"""
    verdict = partial(Check, GateCheck.AGREEMENT_SIGNED, **here)
    if agreement is None:
        return verdict(False, "There is no data use agreement to sign.")
    name, since, until = f"DUA v{agreement.version}", agreement.effective_from, agreement.effective_until
    if moment < since:
        return verdict(False, f"The current {name} takes effect {_local(since, site)}.")
    if until is not None and until <= moment:
        return verdict(False, f"The current {name} ended {_local(until, site)}; a new version must be published and "
                       "signed.", expires_at=until)
    if not signed:
        return verdict(False, f"Has not signed the current {name}.")
    ends = f", in force until {_local(until, site)}" if until else ""
    return verdict(True, f"Signed the current {name}{ends}.", expires_at=until)


def _ethics_check(ethics: EthicsApproval | None, moment: datetime, site: Site, here: dict[str, Any]) -> Check:
    verdict = partial(Check, GateCheck.ETHICS, **here)
    if ethics is None:
        return verdict(False, "No ethics approval recorded.")

    def local(value: datetime) -> str:
        return _local(value, site)

    if moment < ethics.valid_from:
        return verdict(False, f"Ethics approval {ethics.reference} starts {local(ethics.valid_from)}.")
    if ethics.valid_until <= moment:
        return verdict(False, f"Ethics approval {ethics.reference} expired {local(ethics.valid_until)}.",
                       expires_at=ethics.valid_until)
    return verdict(True, f"Ethics approval {ethics.reference} valid until {local(ethics.valid_until)}.",
                   expires_at=ethics.valid_until)


def _uninvited_verdict(site_id: int) -> SiteVerdict:
    name = Site.objects.filter(pk=site_id).values_list("name", flat=True).first() or f"site {site_id}"
    check = Check(GateCheck.PARTICIPATION, False, "The site is not taking part in this study.", site_id, name)
    return SiteVerdict(site_id, name, (check,))


def _quorum_check(study: Study, eligible: int, invited: int) -> Check:
    passed = eligible >= study.quorum
    verdict = "meets" if passed else "is below"
    return Check(
        GateCheck.QUORUM,
        passed,
        f"{eligible} of {invited} sites eligible, which {verdict} the quorum of {study.quorum}.",
    )
