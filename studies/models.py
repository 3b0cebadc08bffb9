"""Studies, their agreements and approvals, and each site's participation. Data and invariants only:
every workflow lives in `studies.services`."""

import hashlib
from collections import Counter
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q
from guardian.models import GroupObjectPermissionBase, UserObjectPermissionBase
from simple_history.models import HistoricalRecords

from consortium.federated.protocol import protocol_hash
from sites.models import Site
from studies import event_registry
from studies.choices import (
    PARTICIPATION_CURRENT,
    ApprovalDecision,
    ApprovalRole,
    DpiaStatus,
    ModelKind,
    ParticipationStatus,
    ReviewDecision,
    RevocationPolicy,
    RiskLevel,
    Strategy,
    StudyStatus,
    Task,
)

# The fields an approval is bound to (the purpose and the protocol): changing any of them voids earlier approvals.
PROTOCOL_FIELDS = (
    "clinical_question",
    "task",
    "model_kind",
    "hidden_units",
    "strategy",
    "rounds",
    "local_epochs",
    "batch_size",
    "learning_rate",
    "proximal_mu",
    "server_learning_rate",
    "trim_fraction",
    "byzantine_sites",
    "quorum",
    "round_deadline_minutes",
    "revocation_policy",
    "dp_noise_multiplier",
    "dp_clip_norm",
    "dp_target_epsilon",
    "dp_delta",
    "max_update_norm",
    "label_column",
    "num_features",
    "feature_names",
    "federated_statistics",
    "secure_aggregation",
    "disclosure_min_sites",
)


def governance_history() -> HistoricalRecords:
    """Every saved state of a record the gate reads, with the moment it took effect, so that the gate can be
    asked how things stood at any moment (`studies.history`). Who acted and why stays in the audit log."""
    return HistoricalRecords(user_db_constraint=False)


MAX_FEATURE_NAME = 200


def validate_feature_names(value: Any) -> None:
    """The protocol's declared features: a list of distinct, non-empty names (empty list: not declared)."""
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise ValidationError("Give the feature names as a list of strings, in the order the model takes them.")
    if len(value) > 100_000:
        raise ValidationError("At most 100,000 feature names.")
    bad = [name for name in value if not name.strip() or name != name.strip() or len(name) > MAX_FEATURE_NAME]
    if bad:
        raise ValidationError(f"Feature names must be non-empty, without leading or trailing spaces and at most "
                              f"{MAX_FEATURE_NAME} characters: {bad[0][:40]!r}.")
    repeated = sorted(name for name, count in Counter(value).items() if count > 1)
    if repeated:
        raise ValidationError(f"Feature names repeat: {', '.join(repeated[:5])}.")


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Study(models.Model):
    """A federated-learning study: its clinical question, its protocol and where it stands."""

    title = models.CharField(max_length=200)
    clinical_question = models.TextField()
    pi = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="led_studies")
    status = models.CharField(max_length=16, choices=StudyStatus.choices, default=StudyStatus.DRAFT)
    status_reason = models.TextField(blank=True, help_text="Why the study last changed status (e.g. a suspension).")
    status_changed_at = models.DateTimeField(null=True, blank=True)
    status_changed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    # Protocol
    task = models.CharField(max_length=32, choices=Task.choices, default=Task.BINARY_CLASSIFICATION)
    model_kind = models.CharField(max_length=32, choices=ModelKind.choices, default=ModelKind.LOGISTIC_REGRESSION)
    hidden_units = models.PositiveIntegerField(default=16, validators=[MinValueValidator(1), MaxValueValidator(4096)])
    strategy = models.CharField(max_length=32, choices=Strategy.choices, default=Strategy.FEDAVG)
    rounds = models.PositiveIntegerField(default=20, validators=[MinValueValidator(1), MaxValueValidator(10_000)])
    local_epochs = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1), MaxValueValidator(1000)])
    batch_size = models.PositiveIntegerField(default=32, validators=[MinValueValidator(1), MaxValueValidator(65_536)])
    learning_rate = models.FloatField(default=0.05, validators=[MinValueValidator(1e-8), MaxValueValidator(10.0)])
    proximal_mu = models.FloatField(
        default=0.0, validators=[MinValueValidator(0.0)], help_text="FedProx proximal term; 0 disables it."
    )
    server_learning_rate = models.FloatField(
        default=0.1, validators=[MinValueValidator(1e-8)], help_text="For FedAdam, FedYogi and FedAdagrad."
    )
    trim_fraction = models.FloatField(
        default=0.1, validators=[MinValueValidator(0.0), MaxValueValidator(0.49)], help_text="For trimmed mean."
    )
    byzantine_sites = models.PositiveIntegerField(default=0, help_text="For Krum: how many sites may be faulty.")
    quorum = models.PositiveIntegerField(
        default=2, validators=[MinValueValidator(1)], help_text="Minimum number of eligible sites per round."
    )
    round_deadline_minutes = models.PositiveIntegerField(default=30, validators=[MinValueValidator(1)])
    revocation_policy = models.CharField(
        max_length=16, choices=RevocationPolicy.choices, default=RevocationPolicy.EXCLUDE
    )
    dp_noise_multiplier = models.FloatField(
        default=0.0, validators=[MinValueValidator(0.0)], help_text="Gaussian noise multiplier; 0 disables DP."
    )
    dp_clip_norm = models.FloatField(default=1.0, validators=[MinValueValidator(1e-8)])
    # The privacy target the DPO approves with the protocol: the gate lets a training round run only while
    # epsilon after it stays within the target (`consortium.federated.accountant`, `studies.governance`).
    dp_target_epsilon = models.FloatField(
        "privacy target (ε)", null=True, blank=True, validators=[MinValueValidator(1e-3), MaxValueValidator(1e3)],
        help_text="The most epsilon the study may spend over all its training rounds; required with DP noise.",
    )
    dp_delta = models.FloatField(
        "privacy δ", default=1e-5, validators=[MinValueValidator(1e-12), MaxValueValidator(1e-2)],
        help_text="The delta of the (ε, δ) guarantee; well below 1 / (examples at the largest site).",
    )
    # Disclosure control (`studies.disclosure`): a site admin sees other sites' figures only pooled over this many.
    disclosure_min_sites = models.PositiveIntegerField(
        "smallest disclosed group", default=3, validators=[MinValueValidator(2), MaxValueValidator(1000)],
        help_text="A site admin sees figures of other sites only as aggregates over at least this many sites.",
    )
    # Always on: without a bound one site's finite but huge values (3.4e38) make the average overflow. 1e4 is above
    # what honest local training moves a zoo model on the breast cancer data (0.6 for an epoch on standardized
    # features, ~2,000 for an MLP after 20 epochs at lr 0.1 on raw ones) and far below float32's range; a PI whose
    # protocol takes larger steps raises it.
    max_update_norm = models.FloatField(
        "largest update norm", default=1e4, validators=[MinValueValidator(1e-8), MaxValueValidator(1e30)],
        help_text="An update whose change to the model (L2 norm of update minus base) is larger is refused.",
    )
    label_column = models.CharField(max_length=100, default="target")
    num_features = models.PositiveIntegerField(
        default=30, validators=[MinValueValidator(1), MaxValueValidator(100_000)],
        help_text="Feature columns in each site's data (every column but the label).",
    )
    feature_names = models.JSONField(
        default=list, blank=True, validators=[validate_feature_names],
        help_text='The expected feature columns, in the order the model takes them (a JSON list, e.g. ["age", '
                  '"lactate"]); each site\'s registered data set is checked against it, name by name. Empty: only '
                  "the count and the label column are checked.",
    )
    federated_statistics = models.BooleanField(
        default=True, help_text="Run a statistics round first so every site standardizes with the global mean and SD.",
    )

    secure_aggregation = models.BooleanField(
        default=False, help_text="Sites mask their updates (SecAgg+): the coordinator learns only their weighted sum.",
    )

    # Not protocol: what the study has spent. Training rounds whose model was released, by the DP noise multiplier
    # they ran with ("0.0": no noise, or noise anyone could remove). Written by `studies.services.privacy` only.
    privacy_ledger = models.JSONField(default=dict, blank=True, editable=False)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = governance_history()

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "studies"
        permissions = [("lead_study", "Lead this study as its principal investigator")]

    def __str__(self) -> str:
        return self.title

    def clean(self) -> None:
        if self.dp_noise_multiplier > 0 and self.strategy in ROBUST_STRATEGIES:
            # DP-FedAvg's noise is calibrated to a clipped mean; a median or Krum has another sensitivity.
            raise ValidationError({"dp_noise_multiplier": "Differential privacy works with averaging strategies "
                                                          "(FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad) only."})
        names = self.feature_names
        if isinstance(names, list) and names and len(names) != self.num_features:
            raise ValidationError({"feature_names": f"{len(names)} feature names are declared, but the model takes "
                                                    f"{self.num_features} features (num_features)."})
        if isinstance(names, list) and self.label_column in names:
            raise ValidationError({"feature_names": f"The label column {self.label_column!r} is not a feature."})
        if self.secure_aggregation:
            secure_aggregation_problems(self)
        if self.dp_target_epsilon is not None and self.dp_noise_multiplier <= 0:
            raise ValidationError({"dp_target_epsilon": "A privacy target needs DP noise (a noise multiplier "
                                                        "above 0)."})

    def privacy_target_error(self) -> str:
        """Why the protocol may not be saved as it stands for lack of a privacy target (empty: it may). Checked
        when the protocol is written, not in `clean`: an older DP study without one must still be stoppable."""
        if self.dp_noise_multiplier > 0 and self.dp_target_epsilon is None:
            return "Differential privacy needs a privacy target (ε) for the DPO to approve."
        return ""

    @property
    def training_rounds_released(self) -> int:
        """Training rounds whose model was released (every one counts against the privacy budget)."""
        return sum(self.privacy_ledger.values())

    def privacy_spent(self) -> dict[float, int]:
        """The privacy ledger keyed by noise multiplier, as `consortium.federated.accountant` composes it."""
        return {float(z): int(rounds) for z, rounds in self.privacy_ledger.items()}

    def protocol(self) -> dict[str, Any]:
        return {field: getattr(self, field) for field in PROTOCOL_FIELDS}

    def protocol_sha256(self) -> str:
        return protocol_hash(self.protocol())


ROBUST_STRATEGIES = frozenset({Strategy.MEDIAN, Strategy.TRIMMED_MEAN, Strategy.KRUM, Strategy.MULTI_KRUM})


def secure_aggregation_problems(study: Study) -> None:
    """Refuse what cannot run on masked updates: the coordinator holds only their sum, never one of them."""
    if study.strategy in ROBUST_STRATEGIES:
        raise ValidationError({"strategy": f"{study.get_strategy_display()} needs every site's update in the clear; "
                                           "with secure aggregation the coordinator holds only their sum. Choose "
                                           "FedAvg, FedProx, FedAdam, FedYogi or FedAdagrad."})
    if study.federated_statistics and not study.feature_names:
        raise ValidationError({"feature_names": "With secure aggregation the statistics round masks each site's "
                                                "sums, so every site must add them up in one order: name the "
                                                "features (feature_names), or turn federated statistics off."})
    if study.quorum < 3:
        raise ValidationError({"quorum": "Secure aggregation needs a quorum of at least 3 sites: the sum of two "
                                         "updates tells each site the other's."})


class StudyUserObjectPermission(UserObjectPermissionBase):
    content_object = models.ForeignKey(Study, on_delete=models.CASCADE)


class StudyGroupObjectPermission(GroupObjectPermissionBase):
    content_object = models.ForeignKey(Study, on_delete=models.CASCADE)


class AgreementVersion(models.Model):
    """One version of a study's data use agreement. Text never changes: an edit is a new version."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="agreement_versions")
    version = models.PositiveIntegerField()
    text = models.TextField()
    sha256 = models.CharField(max_length=64)
    effective_from = models.DateTimeField()
    effective_until = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    history = governance_history()

    class Meta:
        ordering = ["study", "-version"]
        constraints = [models.UniqueConstraint(fields=["study", "version"], name="agreement_version_unique")]

    def __str__(self) -> str:
        return f"DUA v{self.version} of {self.study}"


class AgreementSignature(models.Model):
    """A site's signature of one agreement version, by one of its admins."""

    agreement = models.ForeignKey(AgreementVersion, on_delete=models.PROTECT, related_name="signatures")
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="agreement_signatures")
    signed_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    signed_at = models.DateTimeField()
    agreement_sha256 = models.CharField(max_length=64, help_text="Hash of the text the signer saw.")

    history = governance_history()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["agreement", "site"], name="one_signature_per_site_version")]

    def __str__(self) -> str:
        return f"{self.site} signed v{self.agreement.version}"


class Dpia(models.Model):
    """The study's data-protection impact assessment, kept by the DPOs."""

    study = models.OneToOneField(Study, on_delete=models.CASCADE, related_name="dpia")
    status = models.CharField(max_length=16, choices=DpiaStatus.choices, default=DpiaStatus.DRAFT)
    risk_level = models.CharField(max_length=8, choices=RiskLevel.choices, default=RiskLevel.MEDIUM)
    summary = models.TextField(blank=True)
    valid_until = models.DateTimeField(null=True, blank=True)
    prepared_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    # Who last put it under review: a different DPO must approve or reject it (four eyes).
    submitted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    submitted_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    comment = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = governance_history()

    class Meta:
        verbose_name = "DPIA"

    def __str__(self) -> str:
        return f"DPIA of {self.study} ({self.get_status_display()})"


class EthicsApproval(models.Model):
    """A site's ethics (IRB) approval for a study, valid for a period."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="ethics_approvals")
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="ethics_approvals")
    reference = models.CharField(max_length=200)
    valid_from = models.DateTimeField()
    valid_until = models.DateTimeField()
    recorded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    recorded_at = models.DateTimeField()

    history = governance_history()

    class Meta:
        ordering = ["-valid_until"]
        constraints = [
            models.CheckConstraint(condition=Q(valid_until__gt=models.F("valid_from")), name="ethics_period_positive")
        ]

    def __str__(self) -> str:
        return f"Ethics {self.reference} ({self.site})"


class Participation(models.Model):
    """A site's place in a study, from invitation to grant, suspension, revocation or withdrawal."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="participations")
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="participations")
    status = models.CharField(max_length=16, choices=ParticipationStatus.choices, default=ParticipationStatus.INVITED)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    invited_at = models.DateTimeField()
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(blank=True, help_text="Why it last changed status.")

    history = governance_history()

    class Meta:
        ordering = ["site__name", "-invited_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["study", "site"],
                condition=Q(status__in=PARTICIPATION_CURRENT),
                name="one_current_participation_per_site",
            )
        ]

    def __str__(self) -> str:
        return f"{self.site} in {self.study} ({self.get_status_display()})"

    @property
    def is_current(self) -> bool:
        return self.status in PARTICIPATION_CURRENT


class ProtocolReview(models.Model):
    """A site admin's review of the exact protocol their site would train (OpenFL's plan review): accepted or
    rejected with a reason, bound to the protocol hash. The newest review of a site counts; any amendment
    changes the hash, so the site must review again before it may take part (the gate's `protocol_accepted`)."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="protocol_reviews")
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="protocol_reviews")
    decision = models.CharField(max_length=16, choices=ReviewDecision.choices)
    reason = models.TextField(blank=True)
    protocol_sha256 = models.CharField(max_length=64)
    protocol_snapshot = models.JSONField(help_text="The protocol as reviewed: the next review shows what changed.")
    reviewed_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    reviewed_at = models.DateTimeField()

    class Meta:
        ordering = ["-reviewed_at", "-pk"]
        constraints = [
            models.CheckConstraint(condition=~Q(decision=ReviewDecision.REJECTED) | ~Q(reason=""),
                                   name="protocol_rejection_has_reason",
                                   violation_error_message="A rejection says why."),
        ]

    def __str__(self) -> str:
        return f"{self.site_id} {self.decision} protocol {self.protocol_sha256[:12]} of study {self.study_id}"


class DatasetRegistration(models.Model):
    """What a site's agent registered about the data set it trains a study on (Fed-BioMed's site data
    management): row count, label balance and per feature its name, type and missing values, computed at the
    site. Never rows. Append-only: the newest registration of a site counts, and the gate checks it against
    the protocol's schema (`dataset_registered`); an update may not declare more rows than it counts."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="dataset_registrations")
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="dataset_registrations")
    rows = models.PositiveIntegerField()
    label_column = models.CharField(max_length=100)
    positives = models.PositiveIntegerField()
    negatives = models.PositiveIntegerField()
    summary = models.JSONField(help_text="The summary as the agent sent it (consortium.federated.dataset_schema).")
    summary_sha256 = models.CharField(max_length=64)
    registered_by = models.CharField(max_length=200, help_text="The agent (site and token prefix) that sent it.")
    registered_at = models.DateTimeField()

    class Meta:
        ordering = ["-registered_at", "-pk"]
        constraints = [
            models.CheckConstraint(condition=Q(positives__lte=models.F("rows")) & Q(negatives__lte=models.F("rows")),
                                   name="dataset_label_counts_within_rows"),
        ]

    def __str__(self) -> str:
        return f"{self.site_id} registered {self.rows} rows for study {self.study_id}"

    @property
    def features(self) -> list[dict[str, Any]]:
        return list(self.summary.get("features") or [])


class Approval(models.Model):
    """A PI's or DPO's decision on a study, bound to the protocol and agreement version it saw.

    A later protocol edit or agreement version voids it (`voided_at`)."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="approvals")
    role = models.CharField(max_length=8, choices=ApprovalRole.choices)
    decision = models.CharField(max_length=16, choices=ApprovalDecision.choices)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    decided_at = models.DateTimeField()
    comment = models.TextField(blank=True)
    protocol_sha256 = models.CharField(max_length=64)
    protocol_snapshot = models.JSONField()
    agreement = models.ForeignKey(AgreementVersion, on_delete=models.PROTECT, related_name="+")
    agreement_sha256 = models.CharField(max_length=64)
    voided_at = models.DateTimeField(null=True, blank=True)
    void_reason = models.TextField(blank=True)

    history = governance_history()

    class Meta:
        ordering = ["-decided_at"]
        constraints = [
            # Four eyes: one live approval per role, and one live approval per person.
            models.UniqueConstraint(
                fields=["study", "role"],
                condition=Q(decision=ApprovalDecision.APPROVED, voided_at__isnull=True),
                name="one_live_approval_per_role",
            ),
            models.UniqueConstraint(
                fields=["study", "decided_by"],
                condition=Q(decision=ApprovalDecision.APPROVED, voided_at__isnull=True),
                name="one_live_approval_per_person",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_role_display()} {self.get_decision_display().lower()} {self.study}"

    @property
    def is_live(self) -> bool:
        return self.decision == ApprovalDecision.APPROVED and self.voided_at is None


class StudyEvent(models.Model):
    """One entry of a study's live event log: what the dashboard streams, persisted first so that a
    client that reconnects asks for everything after its last `seq` and loses nothing.

    `seq` increases by one per study, allocated under a per-study lock held until commit, so events
    become visible in `seq` order. Never weights or rows: only what the study's viewers may see."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveBigIntegerField()
    kind = models.CharField(max_length=32, choices=event_registry.choices)  # the kinds the apps register
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["study", "seq"]
        constraints = [models.UniqueConstraint(fields=["study", "seq"], name="study_event_seq_unique")]

    def __str__(self) -> str:
        return f"{self.study_id}#{self.seq} {self.kind}"

    def as_message(self) -> dict[str, Any]:
        """The JSON the websocket sends (and the page embeds) for this event."""
        return {"type": "event", "id": self.seq, "kind": self.kind, "at": self.created_at.isoformat(),
                "text": event_registry.event_sentence(self.kind, self.payload),
                "tone": event_registry.event_tone(self.kind, self.payload),
                "data": self.payload}
