"""Creating a study, changing its protocol and moving it through its life: submit, activate,
suspend (emergency stop), close. Approval and rejection live in `approvals`."""

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone
from guardian.shortcuts import assign_perm

from consortium.audit.log import audited_service, record
from consortium.errors import Forbidden, InvalidTransition, ValidationFailed
from consortium.roles import Role, has_role
from studies.audit_actions import StudyAction
from studies.choices import STUDY_EDITABLE, EventKind, StudyStatus
from studies.events import announce_governance
from studies.models import PROTOCOL_FIELDS, AgreementVersion, Study, sha256_text
from studies.permissions import LEAD_STUDY, can_lead, is_dpo
from studies.selectors import protocol_diff
from studies.services._common import lock_study, move, require_lead, send_back_for_approval, void_approvals

EDITABLE_FIELDS = ("title", *PROTOCOL_FIELDS)


@audited_service(StudyAction.STUDY_CREATE)
def study_create(*, actor: AbstractBaseUser, title: str, agreement_text: str = "", **protocol: Any) -> Study:
    """A PI drafts a study; they become its lead. With `agreement_text`, DUA v1 is attached at once."""
    if not has_role(actor, Role.PI):
        raise Forbidden("Only principal investigators create studies.")
    unknown = set(protocol) - set(PROTOCOL_FIELDS)
    if unknown:
        raise ValidationFailed(f"Unknown protocol fields: {', '.join(sorted(unknown))}.")
    study = Study(title=title, pi=actor, **protocol)
    study.full_clean()
    study.save()
    assign_perm(f"studies.{LEAD_STUDY}", actor, study)
    record(actor=actor, action=StudyAction.STUDY_CREATED, target=study, study=study,
           details={"protocol": study.protocol(), "protocol_sha256": study.protocol_sha256()})
    if agreement_text.strip():
        version = AgreementVersion(study=study, version=1, text=agreement_text, sha256=sha256_text(agreement_text),
                                   effective_from=timezone.now(), created_by=actor)
        version.full_clean()
        version.save()
        record(actor=actor, action=StudyAction.AGREEMENT_PUBLISHED, target=version, study=study,
               details={"version": 1, "sha256": version.sha256})
    return study


@audited_service(StudyAction.STUDY_UPDATE)
def study_update_protocol(*, actor: AbstractBaseUser, study: Study, **changes: Any) -> Study:
    """The PI changes the title or protocol. A protocol change after submission voids every approval
    and sends the study back for approval; the audit event keeps the difference."""
    study = lock_study(actor, study)
    require_lead(actor, study, "change the protocol")
    if study.status not in STUDY_EDITABLE:
        raise ValidationFailed(f"A {study.get_status_display().lower()} study cannot be changed.", study=study)
    unknown = set(changes) - set(EDITABLE_FIELDS)
    if unknown:
        raise ValidationFailed(f"Unknown study fields: {', '.join(sorted(unknown))}.", study=study)
    before = {"title": study.title, **study.protocol()}
    for field, value in changes.items():
        setattr(study, field, value)
    study.full_clean()
    after = {"title": study.title, **study.protocol()}
    diff = protocol_diff(before, after)
    if not diff:
        return study
    study.save()
    record(actor=actor, action=StudyAction.STUDY_PROTOCOL_CHANGED, target=study, study=study,
           details={"changes": diff, "protocol_sha256": study.protocol_sha256()})
    if set(diff) - {"title"}:
        send_back_for_approval(actor, study, reason="The protocol changed.")
    return study


@audited_service(StudyAction.STUDY_SUBMIT)
def study_submit(*, actor: AbstractBaseUser, study: Study) -> Study:
    """The PI submits a draft for approval by the PI and a DPO (four eyes)."""
    study = lock_study(actor, study)
    require_lead(actor, study, "submit it for approval")
    if not study.agreement_versions.exists():
        raise ValidationFailed("Attach a data use agreement before submitting the study.", study=study)
    before = move(study, StudyStatus.SUBMITTED, actor=actor)
    record(actor=actor, action=StudyAction.STUDY_SUBMITTED, target=study, study=study,
           details={"before": before, "after": study.status, "protocol_sha256": study.protocol_sha256()})
    announce_governance(study, EventKind.STUDY_CHANGED, {"before": before, "after": study.status})
    return study


@audited_service(StudyAction.STUDY_ACTIVATE)
def study_activate(*, actor: AbstractBaseUser, study: Study) -> Study:
    """The PI starts an approved study; from now on the gate may let rounds run."""
    study = lock_study(actor, study)
    require_lead(actor, study, "activate it")
    if study.status == StudyStatus.SUSPENDED:
        # The state machine allows suspended -> active, but only through both approvals (study_approve).
        raise InvalidTransition("A study that is suspended cannot become active by the PI alone: resuming it "
                                "needs the PI's and a DPO's approval again.", study=study)
    before = move(study, StudyStatus.ACTIVE, actor=actor)
    record(actor=actor, action=StudyAction.STUDY_ACTIVATED, target=study, study=study,
           details={"before": before, "after": study.status})
    announce_governance(study, EventKind.STUDY_CHANGED, {"before": before, "after": study.status})
    return study


@audited_service(StudyAction.STUDY_SUSPEND)
def study_suspend(*, actor: AbstractBaseUser, study: Study, justification: str) -> Study:
    """Emergency stop by the PI or a DPO, effective at once. Resuming needs both approvals again."""
    study = lock_study(actor, study)
    if not (can_lead(actor, study) or is_dpo(actor)):
        raise Forbidden("Only the study's PI or a DPO may suspend it.", study=study)
    if not justification.strip():
        raise ValidationFailed("Give a justification for suspending the study.", study=study)
    before = move(study, StudyStatus.SUSPENDED, actor=actor, reason=justification.strip())
    voided = void_approvals(study, reason="The study was suspended.", moment=timezone.now())
    record(actor=actor, action=StudyAction.STUDY_SUSPENDED, target=study, study=study,
           details={"before": before, "after": study.status, "justification": justification.strip(),
                    "voided_approval_ids": voided})
    announce_governance(study, EventKind.STUDY_CHANGED,
                        {"before": before, "after": study.status, "reason": justification.strip()})
    return study


@audited_service(StudyAction.STUDY_CLOSE)
def study_close(*, actor: AbstractBaseUser, study: Study, reason: str) -> Study:
    """The PI ends the study for good."""
    study = lock_study(actor, study)
    require_lead(actor, study, "close it")
    if not reason.strip():
        raise ValidationFailed("Say why the study is being closed.", study=study)
    before = move(study, StudyStatus.CLOSED, actor=actor, reason=reason.strip())
    record(actor=actor, action=StudyAction.STUDY_CLOSED, target=study, study=study,
           details={"before": before, "after": study.status, "reason": reason.strip()})
    announce_governance(study, EventKind.STUDY_CHANGED,
                        {"before": before, "after": study.status, "reason": reason.strip()})
    return study


def study_viewed(*, actor: AbstractBaseUser, study: Study, via: str) -> None:
    """Record that someone read the study's data (page, API, export): auditors answer "who saw what"."""
    record(actor=actor, action=StudyAction.STUDY_VIEWED, target=study, study=study, details={"via": via})
