"""Every state change in studies. Each service locks what it changes, checks permission and state,
writes, and records the audit event, in one transaction; a refusal is rolled back and audited."""

from studies.services.agreements import agreement_publish, agreement_sign
from studies.services.approvals import study_approve, study_reject
from studies.services.datasets import dataset_register
from studies.services.dpia import dpia_approve, dpia_reject, dpia_revise, dpia_save, dpia_submit
from studies.services.ethics import ethics_record
from studies.services.participation import (
    participation_grant,
    participation_invite,
    participation_resume,
    participation_revoke,
    participation_suspend,
    participation_withdraw,
)
from studies.services.protocol_review import protocol_review
from studies.services.study import (
    study_activate,
    study_close,
    study_create,
    study_submit,
    study_suspend,
    study_update_protocol,
    study_viewed,
)

__all__ = [
    "agreement_publish",
    "agreement_sign",
    "dataset_register",
    "dpia_approve",
    "dpia_reject",
    "dpia_revise",
    "dpia_save",
    "dpia_submit",
    "ethics_record",
    "participation_grant",
    "participation_invite",
    "participation_resume",
    "participation_revoke",
    "participation_suspend",
    "participation_withdraw",
    "protocol_review",
    "study_activate",
    "study_approve",
    "study_close",
    "study_create",
    "study_reject",
    "study_submit",
    "study_suspend",
    "study_update_protocol",
    "study_viewed",
]
