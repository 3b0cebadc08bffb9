"""Reads for pages, the API and services: always scoped to what the user may see."""

from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Prefetch, QuerySet

from consortium.errors import NotFound
from sites.permissions import sites_for
from studies.choices import ApprovalDecision
from studies.models import AgreementVersion, Approval, Participation, Study
from studies.permissions import studies_for

User = AbstractBaseUser | AnonymousUser


def protocol_diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Fields whose value differs, as {field: {"before": old, "after": new}}."""
    return {
        key: {"before": before.get(key), "after": after.get(key)}
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    }


def study_list(user: User) -> QuerySet[Study]:
    return studies_for(user).select_related("pi", "dpia").order_by("-created_at")


def study_get(user: User, pk: int) -> Study:
    """The study if the user may see it; otherwise NotFound, exactly as if it did not exist."""
    study = studies_for(user).select_related("pi", "dpia").filter(pk=pk).first()
    if study is None:
        raise NotFound("No such study.")
    return study


def study_participations(study: Study) -> list[Participation]:
    """All participations, current and past, with their site and deciders."""
    return list(
        Participation.objects.filter(study=study)
        .select_related("site", "invited_by", "decided_by")
        .order_by("site__name", "-invited_at")
    )


def study_agreements(study: Study) -> list[AgreementVersion]:
    return list(
        AgreementVersion.objects.filter(study=study)
        .select_related("created_by")
        .prefetch_related(Prefetch("signatures", queryset=_signatures()))
        .order_by("-version")
    )


def _signatures() -> QuerySet:
    from studies.models import AgreementSignature

    return AgreementSignature.objects.select_related("site", "signed_by").order_by("site__name")


def study_approvals(study: Study) -> list[Approval]:
    """Every decision, newest first, live and voided."""
    return list(Approval.objects.filter(study=study).select_related("decided_by", "agreement").order_by("-decided_at"))


def last_voided_snapshot(approvals: list[Approval]) -> dict[str, Any] | None:
    """The protocol seen by the most recent voided approval: what the current protocol is compared to."""
    for approval in approvals:
        if approval.decision == ApprovalDecision.APPROVED and approval.voided_at is not None:
            return approval.protocol_snapshot
    return None


def participation_get(user: User, pk: int) -> Participation:
    participation = (
        Participation.objects.filter(pk=pk, study__in=studies_for(user)).select_related("site", "study").first()
    )
    if participation is None:
        raise NotFound("No such participation.")
    return participation


def invitations_for(user: User) -> QuerySet[Participation]:
    """Participations of the sites the user administers, current first."""
    return (
        Participation.objects.filter(site__in=sites_for(user))
        .select_related("site", "study", "study__pi")
        .order_by("status", "-invited_at")
    )
