"""What the study pages show, assembled from selectors, the gate and the policy. Read-only: nothing here writes."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.text import capfirst

from sites.models import Site
from sites.selectors import administered_site_ids, site_directory
from studies import selectors
from studies.choices import PARTICIPATION_TRANSITIONS, ParticipationStatus
from studies.disclosure import disclosure_for
from studies.governance import GateResult, SiteVerdict, evaluate
from studies.models import PROTOCOL_FIELDS, AgreementVersion, Participation, ProtocolReview, Study
from studies.permissions import allowed_actions, can_read_dpia
from studies.privacy import privacy_budget

# What a site admin may do to a participation, by the status it would move to (transitions are data).
SITE_ADMIN_MOVES = {
    ParticipationStatus.SUSPENDED: "suspend",
    ParticipationStatus.REVOKED: "revoke",
}


def _display(name: str, value: Any) -> Any:
    """A protocol value as people read it: the label of a choice, else the value itself."""
    field = Study._meta.get_field(name)
    if field.choices:
        return dict(field.flatchoices).get(value, value)
    return value


def _label(name: str) -> str:
    return capfirst(Study._meta.get_field(name).verbose_name) if name != "title" else "Title"


def protocol_rows(protocol: dict[str, Any]) -> list[dict[str, Any]]:
    """The protocol as (field, label, value) rows, in the order of PROTOCOL_FIELDS."""
    return [
        {"name": name, "label": _label(name), "value": _display(name, protocol.get(name))} for name in PROTOCOL_FIELDS
    ]


def diff_rows(diff: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """`protocol_diff` output as rows with labels and readable before/after values."""
    return [
        {
            "name": name,
            "label": _label(name),
            "before": _display(name, change["before"]),
            "after": _display(name, change["after"]),
        }
        for name, change in diff.items()
    ]


@dataclass(frozen=True)
class GateRow:
    """One site's line in the gate panel: its verdict and the code the browser test hooks on."""

    verdict: SiteVerdict
    code: str


def parse_moment(text: str) -> datetime:
    """A moment typed on a page: ISO 8601 with its offset, or a date and time (the browser's date-time field)
    read in the consortium's time zone, which the page names. ValueError when it is neither."""
    try:
        parsed = parse_datetime(text.strip())
    except ValueError:
        parsed = None
    if parsed is None:
        raise ValueError("Give a date and time, e.g. 2026-03-02T14:00 (or ISO 8601 with its offset).")
    return timezone.make_aware(parsed) if timezone.is_naive(parsed) else parsed


def gate_context(study: Study, participations: list[Participation], *, at: datetime | None = None) -> dict[str, Any]:
    """The gate evaluated now for "aggregate" (the dry run of the next round) and what lapses soon; with `at`,
    the gate as things stood at that moment (from the governed records' history)."""
    gate: GateResult = evaluate(study, "aggregate", at=at)
    codes = {p.site_id: p.site.code for p in participations}
    return {
        "gate": gate,
        "gate_rows": [GateRow(verdict, codes.get(verdict.site_id, "")) for verdict in gate.sites],
        "expiring": gate.expiring_within(settings.EXPIRY_WARNING_DAYS),
        "expiry_days": settings.EXPIRY_WARNING_DAYS,
        "gate_at": at,
        "time_zone": timezone.get_current_timezone_name(),
    }


def participation_actions(
    participation: Participation, *, administers: bool, may_withdraw: bool, signed_current: bool
) -> list[str]:
    """The buttons a participation row offers this user. Services check again on every request."""
    moves = PARTICIPATION_TRANSITIONS[participation.status]
    found: list[str] = []
    if administers:
        if ParticipationStatus.GRANTED in moves:
            found.append("resume" if participation.status == ParticipationStatus.SUSPENDED else "grant")
        found += [action for status, action in SITE_ADMIN_MOVES.items() if status in moves]
        if participation.is_current:
            found += ["ethics"] + ([] if signed_current else ["sign"])
    if may_withdraw and ParticipationStatus.WITHDRAWN in moves:
        found.append("withdraw")
    return found


@dataclass(frozen=True)
class ParticipationRow:
    participation: Participation
    actions: list[str]
    review: ProtocolReview | None = None  # the site's newest protocol review
    current_protocol: str = ""

    @property
    def review_state(self) -> str:
        """accepted / rejected (of the current protocol), outdated (of an earlier one) or none."""
        if self.review is None:
            return "none"
        if self.review.protocol_sha256 != self.current_protocol:
            return "outdated"
        return self.review.decision

    @property
    def may_review(self) -> bool:
        return "review_protocol" in self.actions


def participation_rows(
    user: AbstractBaseUser, participations: list[Participation], *, actions: set[str], current: AgreementVersion | None,
    study: Study | None = None,
) -> list[ParticipationRow]:
    administered = administered_site_ids(user)
    signed = {s.site_id for s in current.signatures.all()} if current else set()
    reviews = selectors.protocol_reviews_by_site(study) if study is not None else {}
    current_protocol = study.protocol_sha256() if study is not None else ""
    return [
        ParticipationRow(
            p,
            participation_actions(
                p,
                administers=p.site_id in administered,
                may_withdraw="withdraw_site" in actions,
                signed_current=p.site_id in signed,
            ) + (["review_protocol"] if p.site_id in administered and p.is_current and study is not None else []),
            reviews.get(p.site_id),
            current_protocol,
        )
        for p in participations
    ]


def study_context(user: AbstractBaseUser, study: Study, *, at: datetime | None = None) -> dict[str, Any]:
    """Everything the study page shows, in a number of queries that does not grow with the sites."""
    actions = allowed_actions(user, study)
    participations = selectors.study_participations(study)
    agreements = selectors.study_agreements(study)
    current = agreements[0] if agreements else None
    return {
        "study": study,
        "actions": actions,
        "protocol": protocol_rows(study.protocol()),
        "protocol_sha256": study.protocol_sha256(),
        "privacy": privacy_budget(study),
        "disclosure": disclosure_for(user, study),
        "agreement": current,
        "older_agreements": agreements[1:],
        "dpia": getattr(study, "dpia", None),
        "may_read_dpia": can_read_dpia(user, study),
        "ethics": selectors.study_ethics(study),
        "participation_rows": participation_rows(user, participations, actions=actions, current=current,
                                                 study=study),
        "approvals": selectors.study_approvals(study),
        "dataset_summaries": selectors.dataset_summaries(user, study, participations),
        "invitable_sites": _invitable_sites(participations) if "invite_site" in actions else [],
        **gate_context(study, participations, at=at),
    }


def _invitable_sites(participations: list[Participation]) -> list[Site]:
    taking_part = [p.site_id for p in participations if p.is_current]
    return list(site_directory(exclude_ids=taking_part))
