"""Statuses of governed objects and the transitions allowed between them (transitions are data)."""

from django.db import models


class StudyStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    SUBMITTED = "submitted", "Awaiting approval"
    APPROVED = "approved", "Approved"
    ACTIVE = "active", "Active"
    SUSPENDED = "suspended", "Suspended"
    CLOSED = "closed", "Closed"


STUDY_TRANSITIONS: dict[str, set[str]] = {
    StudyStatus.DRAFT: {StudyStatus.SUBMITTED, StudyStatus.CLOSED},
    # Back to draft when rejected; approved once both approvals are in.
    StudyStatus.SUBMITTED: {StudyStatus.APPROVED, StudyStatus.DRAFT, StudyStatus.CLOSED},
    # Back to submitted when a protocol or agreement change voids the approvals.
    StudyStatus.APPROVED: {StudyStatus.ACTIVE, StudyStatus.SUBMITTED, StudyStatus.SUSPENDED, StudyStatus.CLOSED},
    StudyStatus.ACTIVE: {StudyStatus.SUSPENDED, StudyStatus.SUBMITTED, StudyStatus.CLOSED},
    # Resumed (active again) only once both approvals are given anew.
    StudyStatus.SUSPENDED: {StudyStatus.ACTIVE, StudyStatus.SUBMITTED, StudyStatus.CLOSED},
    StudyStatus.CLOSED: set(),
}

# Statuses in which the PI and a DPO may approve (or a DPO reject).
STUDY_REVIEWABLE = {StudyStatus.SUBMITTED, StudyStatus.SUSPENDED}
# Statuses in which the protocol and the agreement may still change.
STUDY_EDITABLE = {
    StudyStatus.DRAFT,
    StudyStatus.SUBMITTED,
    StudyStatus.APPROVED,
    StudyStatus.ACTIVE,
    StudyStatus.SUSPENDED,
}


class ParticipationStatus(models.TextChoices):
    INVITED = "invited", "Invited"
    GRANTED = "granted", "Granted"
    SUSPENDED = "suspended", "Suspended"
    REVOKED = "revoked", "Revoked"
    WITHDRAWN = "withdrawn", "Withdrawn"


PARTICIPATION_TRANSITIONS: dict[str, set[str]] = {
    ParticipationStatus.INVITED: {
        ParticipationStatus.GRANTED,
        ParticipationStatus.REVOKED,
        ParticipationStatus.WITHDRAWN,
    },
    ParticipationStatus.GRANTED: {
        ParticipationStatus.SUSPENDED,
        ParticipationStatus.REVOKED,
        ParticipationStatus.WITHDRAWN,
    },
    ParticipationStatus.SUSPENDED: {
        ParticipationStatus.GRANTED,
        ParticipationStatus.REVOKED,
        ParticipationStatus.WITHDRAWN,
    },
    # Terminal: taking part again needs a new invitation (a new participation row).
    ParticipationStatus.REVOKED: set(),
    ParticipationStatus.WITHDRAWN: set(),
}
PARTICIPATION_CURRENT = [ParticipationStatus.INVITED, ParticipationStatus.GRANTED, ParticipationStatus.SUSPENDED]


class DpiaStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    UNDER_REVIEW = "under_review", "Under review"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"


DPIA_TRANSITIONS: dict[str, set[str]] = {
    DpiaStatus.DRAFT: {DpiaStatus.UNDER_REVIEW},
    DpiaStatus.UNDER_REVIEW: {DpiaStatus.APPROVED, DpiaStatus.REJECTED, DpiaStatus.DRAFT},
    # A rejected or expiring DPIA is revised as a new draft.
    DpiaStatus.REJECTED: {DpiaStatus.DRAFT},
    DpiaStatus.APPROVED: {DpiaStatus.DRAFT},
}


class RiskLevel(models.TextChoices):
    LOW = "low", "Low"
    MEDIUM = "medium", "Medium"
    HIGH = "high", "High"


class ApprovalRole(models.TextChoices):
    PI = "pi", "Principal investigator"
    DPO = "dpo", "Data-protection officer"


class ApprovalDecision(models.TextChoices):
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"


class ReviewDecision(models.TextChoices):
    """A site's verdict on the exact protocol it reviewed (bound to its hash)."""

    ACCEPTED = "accepted", "Accepted"
    REJECTED = "rejected", "Rejected"


class ModelKind(models.TextChoices):
    LOGISTIC_REGRESSION = "logistic_regression", "Logistic regression"
    MLP = "mlp", "Multi-layer perceptron (one hidden layer)"


class Task(models.TextChoices):
    BINARY_CLASSIFICATION = "binary_classification", "Binary classification (tabular)"


class Strategy(models.TextChoices):
    FEDAVG = "fedavg", "FedAvg"
    FEDPROX = "fedprox", "FedProx"
    FEDADAM = "fedadam", "FedAdam"
    FEDYOGI = "fedyogi", "FedYogi"
    FEDADAGRAD = "fedadagrad", "FedAdagrad"
    MEDIAN = "median", "Coordinate-wise median"
    TRIMMED_MEAN = "trimmed_mean", "Trimmed mean"
    KRUM = "krum", "Krum"
    MULTI_KRUM = "multi_krum", "Multi-Krum"


class RevocationPolicy(models.TextChoices):
    EXCLUDE = "exclude", "Exclude the revoked site's update and renormalise"
    ABORT = "abort", "Abort the round"


class GateAction(models.TextChoices):
    DOWNLOAD_MODEL = "download_model", "Download the global model"
    SUBMIT_UPDATE = "submit_update", "Submit a model update"
    AGGREGATE = "aggregate", "Aggregate a round"


class GateCheck(models.TextChoices):
    """The gate's checks (`studies.governance`), each with the name the governance panels show. The first
    four judge the study and quorum judges the count; the last five judge each site."""

    STUDY_ACTIVE = "study_active", "Study active"
    APPROVALS = "approvals", "Approvals (PI and DPO)"
    DPIA = "dpia", "DPIA"
    PRIVACY_BUDGET = "privacy_budget", "Privacy budget (ε)"
    QUORUM = "quorum", "Quorum"
    PARTICIPATION = "participation", "Participation"
    AGREEMENT_SIGNED = "agreement_signed", "Current DUA signed"
    ETHICS = "ethics", "Ethics approval"
    PROTOCOL_ACCEPTED = "protocol_accepted", "Protocol accepted by the site"
    DATASET_REGISTERED = "dataset_registered", "Data set registered and matching the protocol"


class EventKind(models.TextChoices):
    """Studies' own kinds of live event (`studies.governance_events`). A study's log also carries the kinds
    other apps register (`studies.event_registry`): aggregation's rounds and updates (`aggregation.events`)."""

    GATE_EVALUATED = "gate.evaluated", "Gate evaluated"
    PARTICIPATION_CHANGED = "participation.changed", "Participation changed"
    STUDY_CHANGED = "study.changed", "Study changed"
    APPROVAL_CHANGED = "approval.changed", "Approval changed"
    GOVERNANCE_CHANGED = "governance.changed", "Governance record changed"
    GOVERNANCE_EXPIRED = "governance.expired", "Approval expired"
