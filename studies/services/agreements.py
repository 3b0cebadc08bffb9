"""Data use agreements: the PI publishes versions, each site signs the current one."""

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone

from consortium.audit.log import audited_service, record
from consortium.errors import Conflict, InvalidTransition, ValidationFailed
from studies.audit_actions import StudyAction
from studies.choices import STUDY_EDITABLE, EventKind
from studies.events import announce_governance
from studies.models import AgreementSignature, AgreementVersion, Participation, Study, sha256_text
from studies.services._common import (
    current_agreement,
    lock_study,
    require_lead,
    require_site_admin,
    send_back_for_approval,
)


@audited_service(StudyAction.AGREEMENT_PUBLISH)
def agreement_publish(*, actor: AbstractBaseUser, study: Study, text: str) -> AgreementVersion:
    """Publish the agreement text as a new version. Earlier signatures do not cover it, and
    approvals given for the earlier version are voided."""
    study = lock_study(actor, study)
    require_lead(actor, study, "publish the data use agreement")
    if study.status not in STUDY_EDITABLE:
        raise InvalidTransition(f"A {study.get_status_display().lower()} study's agreement cannot change.", study=study)
    if not text.strip():
        raise ValidationFailed("The agreement text is empty.", study=study)
    previous = current_agreement(study)
    digest = sha256_text(text)
    if previous and previous.sha256 == digest:
        raise ValidationFailed(f"The text is identical to v{previous.version}; nothing to publish.", study=study)
    now = timezone.now()
    if previous:
        AgreementVersion.objects.filter(pk=previous.pk).update(effective_until=now)
    version = AgreementVersion(study=study, version=(previous.version + 1) if previous else 1, text=text,
                               sha256=digest, effective_from=now, created_by=actor)
    version.full_clean()
    version.save()
    record(actor=actor, action=StudyAction.AGREEMENT_PUBLISHED, target=version, study=study,
           details={"version": version.version, "sha256": digest,
                    "supersedes": previous.version if previous else None})
    announce_governance(study, EventKind.GOVERNANCE_CHANGED,
                        {"what": "agreement", "change": "published", "version": version.version})
    if previous:
        send_back_for_approval(actor, study, reason=f"A new data use agreement version (v{version.version}).")
    return version


@audited_service(StudyAction.AGREEMENT_SIGN)
def agreement_sign(*, actor: AbstractBaseUser, agreement: AgreementVersion, participation: Participation
                   ) -> AgreementSignature:
    """A site admin signs the study's current agreement version on behalf of their site."""
    study = lock_study(actor, participation.study_id)
    site = participation.site
    require_site_admin(actor, site, study, "sign for it")
    participation = Participation.objects.get(pk=participation.pk)
    if not participation.is_current:
        raise InvalidTransition(f"{site} is no longer taking part in this study ({participation.status}).",
                                study=study, site=site)
    current = current_agreement(study)
    if agreement.study_id != study.pk or current is None:
        raise ValidationFailed("That agreement does not belong to this study.", study=study, site=site)
    if agreement.pk != current.pk:
        raise Conflict(f"DUA v{agreement.version} has been superseded by v{current.version}; read and sign "
                       f"v{current.version}.", study=study, site=site)
    if AgreementSignature.objects.filter(agreement=current, site=site).exists():
        raise Conflict(f"{site} has already signed DUA v{current.version}.", study=study, site=site)
    signature = AgreementSignature(agreement=current, site=site, signed_by=actor, signed_at=timezone.now(),
                                   agreement_sha256=current.sha256)
    signature.full_clean()
    signature.save()
    record(actor=actor, action=StudyAction.AGREEMENT_SIGNED, target=signature, study=study, site=site,
           details={"version": current.version, "sha256": current.sha256})
    announce_governance(study, EventKind.GOVERNANCE_CHANGED, {"what": "agreement", "change": "signed",
                                                              "version": current.version, "site_id": site.pk,
                                                              "site": site.name})
    return signature
