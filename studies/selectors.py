"""Reads for pages, the API and services: always scoped to what the user may see."""

from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Prefetch, Q, QuerySet

from consortium.errors import Forbidden, NotFound
from consortium.federated.dataset_schema import schema_mismatches
from consortium.roles import sees_everything
from sites.models import Site
from sites.permissions import sites_for
from studies.choices import PARTICIPATION_CURRENT, STUDY_REVIEWABLE, ApprovalDecision, DpiaStatus, StudyStatus
from studies.models import (
    AgreementVersion,
    Approval,
    DatasetRegistration,
    Dpia,
    EthicsApproval,
    Participation,
    ProtocolReview,
    Study,
)
from studies.permissions import can_read_dpia, studies_for

User = AbstractBaseUser | AnonymousUser


def protocol_diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Fields whose value differs, as {field: {"before": old, "after": new}}."""
    return {
        key: {"before": before.get(key), "after": after.get(key)}
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    }


def study_list(user: User) -> QuerySet[Study]:
    return studies_for(user).select_related("pi", "dpia", "status_changed_by").order_by("-created_at")


def study_get(user: User, pk: int) -> Study:
    """The study if the user may see it; otherwise NotFound, exactly as if it did not exist."""
    study = studies_for(user).select_related("pi", "dpia", "status_changed_by").filter(pk=pk).first()
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


def invitations_for(user: User) -> QuerySet[Participation]:
    """Participations of the sites the user administers, current first."""
    return (
        Participation.objects.filter(site__in=sites_for(user))
        .select_related("site", "study", "study__pi")
        .order_by("status", "-invited_at")
    )


def study_ethics(study: Study) -> list[EthicsApproval]:
    """Every ethics approval of the study, per site, latest expiry first."""
    return list(
        EthicsApproval.objects.filter(study=study)
        .select_related("site", "recorded_by")
        .order_by("site__name", "-valid_until")
    )


def studies_awaiting_review(user: User) -> QuerySet[Study]:
    """Visible studies awaiting approval, or suspended and awaiting approval to resume (a DPO's queue)."""
    return study_list(user).filter(status__in=STUDY_REVIEWABLE)


def studies_in_preparation(user: User) -> QuerySet[Study]:
    """Studies the user leads that are still drafts or awaiting approval (a PI's queue)."""
    led = studies_for(user, "lead")
    return study_list(user).filter(pk__in=led.values("pk"), status__in=[StudyStatus.DRAFT, StudyStatus.SUBMITTED])


def dpias_under_review(user: User) -> QuerySet[Dpia]:
    """DPIAs under review in studies the user may see."""
    return (
        Dpia.objects.filter(study__in=studies_for(user), status=DpiaStatus.UNDER_REVIEW)
        .select_related("study", "prepared_by", "submitted_by")
        .order_by("updated_at")
    )


def site_participations(user: User, site: Site) -> list[Participation]:
    """The site's participations across the studies the user may see, current first, with study and people."""
    return list(
        Participation.objects.filter(site=site, study__in=studies_for(user))
        .select_related("site", "study", "study__pi", "invited_by", "decided_by")
        .order_by("status", "-invited_at")
    )


def participations_for(user: User) -> QuerySet[Participation]:
    """Participations the user may see one by one: of studies they lead, of sites they administer, or
    all for those who oversee every study. A site admin does not see another site's participation."""
    if sees_everything(user):
        return Participation.objects.filter(study__in=studies_for(user))
    return Participation.objects.filter(
        Q(study__in=studies_for(user, "lead")) | Q(site__in=sites_for(user), study__in=studies_for(user))
    )


def participation_get(user: User, pk: int) -> Participation:
    """The participation if `participations_for` lets the user see it; otherwise NotFound (404), also
    for another site's participation in a study the user can see."""
    participation = participations_for(user).filter(pk=pk).select_related("site", "study").first()
    if participation is None:
        raise NotFound("No such participation.")
    return participation


def study_participations_for(user: User, study: Study) -> list[Participation]:
    """The study's participations, current and past, that the user may see."""
    return list(
        participations_for(user)
        .filter(study=study)
        .select_related("site", "invited_by", "decided_by")
        .order_by("site__name", "-invited_at")
    )


def study_dpia(user: User, study: Study, *, drafted: bool = True) -> Dpia | None:
    """The study's DPIA as `user` may read it (`can_read_dpia`, the one policy for the page and the API):
    Forbidden when the policy refuses; while none has been drafted, NotFound, or None if not `drafted`."""
    if not can_read_dpia(user, study):
        raise Forbidden("You may not read this study's DPIA.", study=study)
    dpia = Dpia.objects.filter(study=study).select_related("prepared_by", "submitted_by", "decided_by").first()
    if dpia is None and drafted:
        raise NotFound("No DPIA has been drafted for this study yet.", study=study)
    return dpia


def agreement_version_get(study: Study, version: int) -> AgreementVersion:
    """One version of the study's data use agreement; NotFound if it has no such version."""
    agreement = AgreementVersion.objects.filter(study=study, version=version).first()
    if agreement is None:
        raise NotFound(f"This study has no data use agreement v{version}.", study=study)
    return agreement


def site_protocol_reviews(study: Study, site: Site) -> list[ProtocolReview]:
    """The site's reviews of the study's protocol, newest first, with who reviewed."""
    return list(ProtocolReview.objects.filter(study=study, site=site).select_related("reviewed_by"))


def protocol_reviews_by_site(study: Study) -> dict[int, ProtocolReview]:
    """Per site, its newest protocol review (for the PI's view of who accepted, who rejected and why)."""
    newest: dict[int, ProtocolReview] = {}
    reviews = ProtocolReview.objects.filter(study=study).select_related("reviewed_by").order_by("reviewed_at", "pk")
    for review in reviews:
        newest[review.site_id] = review
    return newest


def study_site_participation(study: Study, site_id: int) -> Participation:
    """The site's current (else latest) participation in the study; a site never invited is a NotFound."""
    found = (Participation.objects.filter(study=study, site_id=site_id).select_related("site")
             .order_by("-invited_at").first())
    if found is None:
        raise NotFound("That site was never invited to this study.", study=study)
    return found


@dataclass(frozen=True)
class DatasetSummary:
    """A site's newest data set registration as the study page shows it, with its schema report now."""

    site: Site
    registration: DatasetRegistration | None
    mismatches: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """matches / mismatch / unregistered."""
        if self.registration is None:
            return "unregistered"
        return "mismatch" if self.mismatches else "matches"

    @property
    def missing_values(self) -> int:
        return sum(int(f.get("missing") or 0) for f in self.registration.features) if self.registration else 0


def dataset_summaries(user: User, study: Study, participations: list[Participation]) -> list[DatasetSummary]:
    """Per site taking part, its newest data set summary (row count, label balance, schema status), within the
    disclosure rules: the PI, DPOs, auditors and consortium admins see every site's; a site admin sees only the
    sites they administer. Counts only, never rows. One query."""
    everyone = user.pk == study.pi_id or sees_everything(user)  # the study's PI: no permission query per page
    own = set(sites_for(user).values_list("pk", flat=True)) if not everyone else set()
    shown = [p for p in participations if p.is_current and (everyone or p.site_id in own)]
    newest: dict[int, DatasetRegistration] = {}
    rows = DatasetRegistration.objects.filter(study=study, site__in=[p.site_id for p in shown])
    for registration in rows.order_by("registered_at", "pk"):
        newest[registration.site_id] = registration
    summaries = []
    for participation in shown:
        registration = newest.get(participation.site_id)
        mismatches = schema_mismatches(registration.summary, feature_names=study.feature_names,
                                       num_features=study.num_features,
                                       label_column=study.label_column) if registration else []
        summaries.append(DatasetSummary(participation.site, registration, mismatches))
    return summaries


def agent_studies(site_id: int) -> list[dict[str, Any]]:
    """The studies a site currently takes part in, for its agent: the protocol and its hash, and the summary
    hash of the site's newest registration (the agent registers again when its own differs)."""
    participations = (Participation.objects.filter(site_id=site_id, status__in=PARTICIPATION_CURRENT)
                      .select_related("study").order_by("study_id"))
    studies = [p.study for p in participations if p.study.status != StudyStatus.CLOSED]
    registered: dict[int, str] = {}
    for study_id, digest in (DatasetRegistration.objects.filter(site_id=site_id, study__in=studies)
                             .order_by("registered_at", "pk").values_list("study_id", "summary_sha256")):
        registered[study_id] = digest
    return [{"study_id": study.pk, "study_title": study.title, "status": study.status,
             "protocol": study.protocol(), "protocol_sha256": study.protocol_sha256(),
             "dataset_summary_sha256": registered.get(study.pk)} for study in studies]
