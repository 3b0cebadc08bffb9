"""Reads behind the site page's activity sections: what one site contributed to the studies' rounds, which
of its updates were left out and why, and which of its agent's submissions the coordinator refused.

A site admin watches what their site contributes; an auditor or consortium admin may check the same. The
policy is here, beside the reads, because only this page shows them: nobody else gets a `SiteActivity`.
Three to four queries whatever the number of studies and rounds.
"""

from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Count, Max, QuerySet

from aggregation.audit_actions import AggregationAction
from aggregation.choices import RoundStatus, UpdateStatus
from aggregation.models import Update
from consortium.audit.models import AuditEvent, AuditOutcome
from consortium.roles import Role, has_role
from sites.models import Site
from sites.permissions import can_administer
from studies.models import Study
from studies.permissions import studies_for

User = AbstractBaseUser | AnonymousUser

REFUSED_SUBMISSIONS_SHOWN = 20
SUBMIT_ACTION = AggregationAction.UPDATE_SUBMIT


@dataclass(frozen=True)
class Contribution:
    """One study's rounds the site's updates went into: how many, and the newest."""

    study_id: int
    study_title: str
    rounds: int
    last_round: int


@dataclass(frozen=True)
class RefusedSubmission:
    """An update the site's agent sent that the coordinator refused (from the audit log)."""

    at: datetime
    study_id: int
    study_title: str
    reason: str
    code: str


@dataclass(frozen=True)
class SiteActivity:
    contributions: list[Contribution]
    excluded: list[Update]
    refused: list[RefusedSubmission]

    @property
    def study_ids(self) -> set[int]:
        return ({c.study_id for c in self.contributions} | {u.round.study_id for u in self.excluded}
                | {r.study_id for r in self.refused})


def may_see_site_activity(user: User, site: Site) -> bool:
    """The site's own admins, and the auditors and consortium admins who oversee every site."""
    return can_administer(user, site) or has_role(user, Role.AUDITOR) or has_role(user, Role.CONSORTIUM_ADMIN)


def site_activity(user: User, site: Site) -> SiteActivity | None:
    """The site's round activity in the studies `user` may see; None for whoever may not see it at all."""
    if not may_see_site_activity(user, site):
        return None
    visible = studies_for(user)
    return SiteActivity(_contributions(site, visible), _excluded(site, visible), _refused(site, visible))


def _contributions(site: Site, visible: QuerySet[Study]) -> list[Contribution]:
    """Per study, the closed rounds the site's updates were included in (one query)."""
    rows = (Update.objects.filter(site=site, status=UpdateStatus.INCLUDED, round__status=RoundStatus.CLOSED,
                                  round__study__in=visible)
            .values("round__study", "round__study__title")
            .annotate(rounds=Count("round", distinct=True), last_round=Max("round__number"))
            .order_by("round__study__title"))
    return [Contribution(row["round__study"], row["round__study__title"], row["rounds"], row["last_round"])
            for row in rows]


def _excluded(site: Site, visible: QuerySet[Study]) -> list[Update]:
    """The site's updates left out of an aggregation, newest first, with their round and study (one query)."""
    return list(Update.objects.filter(site=site, status=UpdateStatus.EXCLUDED, round__study__in=visible)
                .select_related("round", "round__study").defer("metrics").order_by("-received_at"))


def _refused(site: Site, visible: QuerySet[Study]) -> list[RefusedSubmission]:
    """The newest refused submissions of the site's agents, in the visible studies (two queries).
    Every refusal names the site its agent acts for (`audited_service` records it)."""
    events = list(AuditEvent.objects.filter(site_id=site.pk, action=SUBMIT_ACTION, outcome=AuditOutcome.DENIED,
                                            study_id__in=visible.values("pk"))
                  .order_by("-seq")[:REFUSED_SUBMISSIONS_SHOWN])
    titles = dict(Study.objects.filter(pk__in={e.study_id for e in events}).values_list("pk", "title"))
    return [RefusedSubmission(e.created_at, e.study_id, titles.get(e.study_id, f"Study {e.study_id}"),
                              e.details.get("reason", ""), e.details.get("code", ""))
            for e in events]
