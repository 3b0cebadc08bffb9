"""Who may see and do what with a study. One policy, used by services (which enforce it) and by
views (which only hide what the policy refuses). Rights come from roles and guardian object
permissions, never from superuser status."""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Q, QuerySet
from guardian.shortcuts import get_objects_for_user, get_user_perms

from consortium.roles import Role, has_role, is_person, sees_everything
from sites.permissions import sites_for
from studies.choices import (
    DPIA_TRANSITIONS,
    STUDY_EDITABLE,
    STUDY_REVIEWABLE,
    DpiaStatus,
    StudyStatus,
)
from studies.models import Dpia, Study

LEAD_STUDY = "lead_study"

User = AbstractBaseUser | AnonymousUser


def _active(user: User) -> bool:
    return is_person(user)


def can_lead(user: User, study: Study) -> bool:
    """The study's PI (holder of the `lead_study` object permission)."""
    return _active(user) and LEAD_STUDY in get_user_perms(user, study)


def is_dpo(user: User) -> bool:
    return _active(user) and has_role(user, Role.DPO)


def studies_for(user: User, action: str = "view") -> QuerySet[Study]:
    """Studies the user may see ("view") or lead ("lead").

    DPOs, auditors and consortium admins see every study; a PI sees the studies
    they lead; a site admin sees the studies their sites were invited to.
    """
    if not _active(user):
        return Study.objects.none()
    led = get_objects_for_user(user, f"studies.{LEAD_STUDY}", klass=Study, with_superuser=False)
    if action == "lead":
        return led
    if action != "view":
        raise ValueError(f"unknown study action {action!r}")
    if sees_everything(user):
        return Study.objects.all()
    return Study.objects.filter(Q(pk__in=led.values("pk")) | Q(participations__site__in=sites_for(user))).distinct()


def can_view(user: User, study: Study) -> bool:
    return studies_for(user).filter(pk=study.pk).exists()


def allowed_actions(user: User, study: Study) -> set[str]:
    """What the user may do to the study in its current state; templates render these as buttons.

    Services check again on every request: hiding a button is a courtesy, not the control.
    """
    actions: set[str] = set()
    lead, dpo = can_lead(user, study), is_dpo(user)
    status = study.status
    if lead and status in STUDY_EDITABLE:
        actions |= {"edit_protocol", "publish_agreement", "invite_site"}
    if lead and status == StudyStatus.DRAFT:
        actions.add("submit")
    if (lead or dpo) and status in STUDY_REVIEWABLE:
        actions.add("approve")
    if dpo and not lead and status in STUDY_REVIEWABLE:
        actions.add("reject")
    if lead and status == StudyStatus.APPROVED:
        actions.add("activate")
    if (lead or dpo) and status in {StudyStatus.ACTIVE, StudyStatus.APPROVED}:
        actions.add("suspend")
    if lead and status != StudyStatus.CLOSED:
        actions |= {"close", "withdraw_site"}
    if dpo and status != StudyStatus.CLOSED:
        actions.add("manage_dpia")
    return actions


def can_read_dpia(user: User, study: Study) -> bool:
    """Whoever may see the study may read its DPIA: the PI and the sites' admins weigh what the DPOs
    assessed before they approve or take part, DPOs keep it, auditors and consortium admins oversee it.
    The one read policy behind the DPIA page and the DPIA API."""
    return can_view(user, study)


def dpia_actions(user: User, study: Study, dpia: Dpia | None) -> set[str]:
    """What the user may do to the study's DPIA now; the DPIA page renders these as buttons.

    DPOs keep it while the study is not closed: "save" a draft, "submit" it for review, "revise" it back
    to draft. "approve" and "reject" are the reviewer's, so the DPO who submitted it gets neither (four
    eyes). The services check all of it again.
    """
    if "manage_dpia" not in allowed_actions(user, study):
        return set()
    if dpia is None:
        return {"save"}
    moves = {DpiaStatus.UNDER_REVIEW: "submit", DpiaStatus.APPROVED: "approve", DpiaStatus.REJECTED: "reject",
             DpiaStatus.DRAFT: "revise"}
    actions = {moves[to] for to in DPIA_TRANSITIONS[dpia.status]}
    if dpia.status == DpiaStatus.DRAFT:
        actions.add("save")
    if dpia.submitted_by_id == user.pk:
        actions -= {"approve", "reject"}
    return actions
