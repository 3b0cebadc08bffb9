"""Rounds, the updates sites submit, model versions with provenance, and federated statistics.
Tensors live on disk as safetensors (path + SHA-256 here); workflows live in `aggregation.services`."""

from django.conf import settings
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

from aggregation.choices import ROUND_LIVE, RoundKind, RoundStatus, SecureStage, UpdateStatus
from sites.models import Revocable, Site, revocation_complete
from studies.models import Study


class ModelVersion(models.Model):
    """One global model of a study: v0 is the initial model, each closed training round adds one."""

    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="model_versions")
    number = models.PositiveIntegerField()
    # One version per round, enforced by the database: a task that runs twice cannot add a second.
    round = models.OneToOneField("Round", null=True, blank=True, on_delete=models.PROTECT,
                                 related_name="produced_version")
    path = models.CharField(max_length=500, help_text="Relative to the data folder.")
    sha256 = models.CharField(max_length=64)
    size_bytes = models.PositiveBigIntegerField()
    spec = models.JSONField(help_text="Tensor names, shapes and dtypes every update must match.")
    provenance = models.JSONField(default=dict)
    evaluation = models.JSONField(default=dict, blank=True,
                                  help_text="Sites' validation metrics of this model, and their mean.")
    optimizer_state_path = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study", "number"]
        constraints = [models.UniqueConstraint(fields=["study", "number"], name="model_version_number_unique")]

    def __str__(self) -> str:
        return f"{self.study} v{self.number}"


class ScoreHistogram(models.Model):
    """One site's score histogram of a model version on its validation split (per-bin counts of positives and
    negatives). The version's evaluation keeps their sum, which gives the federated ROC AUC; a site's own
    histogram is kept here only so that a second evaluation of the same version by the same site (a round run
    again from it) can take the first out of the sum. No page, event or export shows it."""

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="score_histograms")
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="+")
    histogram = models.JSONField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["version", "site"], name="score_histogram_per_site")]

    def __str__(self) -> str:
        return f"Score histogram of {self.version} by site {self.site_id}"


class RoundQuerySet(models.QuerySet):
    def with_base_version(self) -> "RoundQuerySet":
        """Rounds with their base version, without the reports that grow with the number of sites (the
        verdict at aggregation; the version's provenance and evaluation: hundreds of KB at 200 sites), which
        an agent's polls, downloads and submissions never read. A deferred field still loads when read."""
        return self.select_related("base_version").defer(
            "gate_result", "base_version__provenance", "base_version__evaluation")


class Round(models.Model):
    """A federated round: a statistics round, a training round from `base_version`, or the evaluation of
    the final `base_version` after the last training round."""

    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="rounds_run")
    number = models.PositiveIntegerField(help_text="Every round of the study counts, from 1.")
    kind = models.CharField(max_length=16, choices=RoundKind.choices)
    status = models.CharField(max_length=16, choices=RoundStatus.choices, default=RoundStatus.OPEN)
    status_reason = models.TextField(blank=True)
    base_version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="rounds_based_on")
    opened_at = models.DateTimeField()
    deadline = models.DateTimeField()
    aggregation_started_at = models.DateTimeField(null=True, blank=True)
    aggregation_dispatched_at = models.DateTimeField(
        null=True, blank=True, help_text="When the aggregation task was last sent; the scheduler sends it again "
                                         "when no worker has claimed the round a little while after.")
    closed_at = models.DateTimeField(null=True, blank=True)
    gate_result = models.JSONField(default=dict, blank=True, help_text="The gate's verdict at aggregation.")
    expected_site_ids = models.JSONField(
        default=list, blank=True, help_text="The sites the gate allowed when the round opened: those it waits for.")

    objects = RoundQuerySet.as_manager()

    class Meta:
        ordering = ["study", "number"]
        constraints = [
            models.UniqueConstraint(fields=["study", "number"], name="round_number_unique"),
            models.UniqueConstraint(fields=["study"], condition=Q(status__in=ROUND_LIVE), name="one_live_round"),
        ]

    def __str__(self) -> str:
        return f"{self.study} round {self.number} ({self.get_status_display()})"


class Update(models.Model):
    """A site's trained weights for a round (on disk, content-addressed) with its weight and metrics."""

    round = models.ForeignKey(Round, on_delete=models.PROTECT, related_name="updates")
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="updates")
    base_version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=16, choices=UpdateStatus.choices, default=UpdateStatus.ACCEPTED)
    exclusion_reason = models.TextField(blank=True)
    # Empty for a Flower round: the coordinator's Flower server holds the result; its SHA-256 is recorded.
    path = models.CharField(max_length=500, blank=True)
    sha256 = models.CharField(max_length=64)
    size_bytes = models.PositiveBigIntegerField()
    num_examples = models.PositiveIntegerField(validators=[MinValueValidator(1)])
    metrics = models.JSONField(default=dict, blank=True)
    weight_norm = models.FloatField(help_text="L2 norm of the submitted weights.")
    delta_norm = models.FloatField(help_text="L2 norm of (submitted - base) weights.")
    idempotency_key = models.CharField(max_length=100)
    submitted_by = models.CharField(max_length=200, help_text="The agent credential that sent it.")
    downloaded_at = models.DateTimeField(null=True, blank=True)
    received_at = models.DateTimeField()

    class Meta:
        ordering = ["round", "site__name"]
        constraints = [models.UniqueConstraint(fields=["round", "site"], name="one_update_per_site_per_round")]

    def __str__(self) -> str:
        return f"Update of {self.site} for {self.round}"


class Evaluation(models.Model):
    """A site's validation metrics of a round's model in an evaluation round: metrics only, never rows or
    weights (its score histogram is kept with the model version's evaluation, not here)."""

    round = models.ForeignKey(Round, on_delete=models.PROTECT, related_name="evaluations")
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="+")
    metrics = models.JSONField(default=dict, blank=True)
    submitted_by = models.CharField(max_length=200, help_text="The agent credential that sent it.")
    received_at = models.DateTimeField()

    class Meta:
        ordering = ["round", "site__name"]
        constraints = [models.UniqueConstraint(fields=["round", "site"], name="one_evaluation_per_site_per_round")]

    def __str__(self) -> str:
        return f"Evaluation by {self.site_id} for round {self.round_id}"


class RoundDecline(models.Model):
    """A site's agent declined a round under the site's own policy (sites/agent/policy.py): it did no work on it.
    The coordinator records it and shows it to the PI; it changes nothing else (the round goes on without it)."""

    round = models.ForeignKey(Round, on_delete=models.PROTECT, related_name="declines")
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="+")
    reason = models.TextField()
    declined_by = models.CharField(max_length=200, help_text="The agent credential that said so.")
    declined_at = models.DateTimeField()

    class Meta:
        ordering = ["-declined_at"]
        constraints = [models.UniqueConstraint(fields=["round", "site"], name="one_decline_per_site_per_round")]

    def __str__(self) -> str:
        return f"{self.site_id} declined round {self.round_id}"


class SiteStatistics(models.Model):
    """One site's counts, sums and sums of squares per feature for a statistics round (never rows). Its count
    is also the most training rows the site may later declare for an update (`num_examples`)."""

    round = models.ForeignKey(Round, on_delete=models.PROTECT, related_name="statistics")
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="+")
    features = models.JSONField()
    count = models.PositiveIntegerField()
    sums = models.JSONField()
    sums_of_squares = models.JSONField()
    received_at = models.DateTimeField()
    exclusion_reason = models.TextField(blank=True, help_text="Why the gate left these figures out of the pooled "
                                                              "ones at close (empty: pooled).")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["round", "site"], name="one_statistics_per_site_per_round")]

    def __str__(self) -> str:
        return f"Statistics of {self.site_id} for round {self.round_id}"


class Standardization(models.Model):
    """The pooled mean and standard deviation every site standardizes its features with."""

    study = models.OneToOneField(Study, on_delete=models.PROTECT, related_name="standardization")
    round = models.OneToOneField(Round, on_delete=models.PROTECT, related_name="+")
    features = models.JSONField()
    mean = models.JSONField()
    std = models.JSONField()
    sites = models.PositiveIntegerField()
    examples = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Standardization of {self.study_id} ({self.sites} sites, {self.examples} rows)"


class FlowerCoordinatorToken(Revocable):
    """The credential of a study's Flower coordinator (its ServerApp's `GovernedStrategy`), issued by the
    study's PI: `Authorization: Bearer csf_<prefix>_<secret>`, stored as the SHA-256 of the secret like an
    agent token. While a live one exists the study's rounds are run by Flower, not by Consortium's scheduler."""

    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="flower_tokens")
    name = models.CharField(max_length=100, help_text="Where the coordinator runs, e.g. 'SuperLink at the AMC'.")
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False, help_text="SHA-256 (hex) of the secret.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            revocation_complete("flower_token_revocation_complete", "token"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix})"


class FlowerRound(models.Model):
    """What makes a round a Flower round: the Flower server round it is, the nodes the coordinator was told
    to configure (node id -> site) and the gate verdicts the coordinator reported acting on."""

    round = models.OneToOneField(Round, primary_key=True, on_delete=models.PROTECT, related_name="flower")
    token = models.ForeignKey(FlowerCoordinatorToken, on_delete=models.PROTECT, related_name="rounds")
    server_round = models.PositiveIntegerField()
    nodes = models.JSONField(default=dict, help_text="Flower node id -> {site_id, site, fingerprint}, as configured.")
    reported = models.JSONField(default=dict, blank=True, help_text="What the coordinator reported acting on.")

    def __str__(self) -> str:
        return f"Flower round {self.server_round} ({self.round})"


class SecureRound(models.Model):
    """What makes a training round a secure-aggregation round (docs/secure-aggregation.md): its public setup,
    its stage and what each closed stage fixed. The coordinator holds public keys, ciphertexts it cannot read
    and masked vectors; the `CoordinatorRound` is rebuilt from these rows and the sites' messages at each step."""

    round = models.OneToOneField(Round, primary_key=True, on_delete=models.PROTECT, related_name="secure")
    stage = models.CharField(max_length=16, choices=SecureStage.choices, default=SecureStage.KEYS)
    config = models.JSONField(help_text="The round's RoundConfig (context, vector length, clip, threshold, ...).")
    roster = models.JSONField(default=list, blank=True, help_text="The public keys of the sites admitted at keys.")
    mail = models.JSONField(default=dict, blank=True,
                            help_text="Recipient site -> {sender site: encrypted shares}, fixed when shares closed.")
    request = models.JSONField(default=dict, blank=True, help_text="Survivors and dropouts, fixed when masked "
                                                                   "inputs closed.")
    stage_deadline = models.DateTimeField(help_text="When the stage closes with the sites that answered by then.")
    reason = models.TextField(blank=True, help_text="Why the round failed closed (empty otherwise).")
    result = models.JSONField(default=dict, blank=True, help_text="What unmasking revealed: the total weight, "
                                                                  "survivors, dropouts and the error bound.")

    def __str__(self) -> str:
        return f"Secure aggregation of {self.round} ({self.get_stage_display()})"


class SecureMessage(models.Model):
    """One site's message for one stage of a secure round, as it sent it: public keys, encrypted shares, a
    masked input (on disk, content-addressed) or its unmasking answer. One per site per stage."""

    round = models.ForeignKey(Round, on_delete=models.PROTECT, related_name="secure_messages")
    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="+")
    stage = models.CharField(max_length=16, choices=SecureStage.choices)
    payload = models.JSONField(default=dict, blank=True)
    path = models.CharField(max_length=500, blank=True, help_text="The masked input's file (masked inputs only).")
    sha256 = models.CharField(max_length=64, blank=True)
    size_bytes = models.PositiveBigIntegerField(default=0)
    submitted_by = models.CharField(max_length=200, help_text="The agent credential that sent it.")
    received_at = models.DateTimeField()

    class Meta:
        ordering = ["round", "stage", "site_id"]
        constraints = [models.UniqueConstraint(fields=["round", "site", "stage"], name="one_secure_message_per_stage")]

    def __str__(self) -> str:
        return f"{self.get_stage_display()} of {self.site_id} for round {self.round_id}"
