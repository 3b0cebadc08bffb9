"""Round and update statuses; transitions are data."""

from django.db import models


class RoundKind(models.TextChoices):
    STATISTICS = "statistics", "Federated statistics"
    TRAINING = "training", "Training"
    # After the last training round: the sites score the final model and send metrics only.
    EVALUATION = "evaluation", "Final evaluation"


class RoundStatus(models.TextChoices):
    OPEN = "open", "Open"
    AGGREGATING = "aggregating", "Aggregating"
    CLOSED = "closed", "Closed"
    BLOCKED = "blocked", "Blocked by the gate"
    FAILED = "failed", "Failed"


ROUND_TRANSITIONS: dict[str, set[str]] = {
    RoundStatus.OPEN: {RoundStatus.AGGREGATING, RoundStatus.CLOSED, RoundStatus.BLOCKED, RoundStatus.FAILED},
    RoundStatus.AGGREGATING: {RoundStatus.CLOSED, RoundStatus.BLOCKED, RoundStatus.FAILED},
    RoundStatus.CLOSED: set(),
    RoundStatus.BLOCKED: set(),
    RoundStatus.FAILED: set(),
}
ROUND_LIVE = [RoundStatus.OPEN, RoundStatus.AGGREGATING]


class UpdateStatus(models.TextChoices):
    ACCEPTED = "accepted", "Accepted"
    INCLUDED = "included", "Included in the new model"
    EXCLUDED = "excluded", "Excluded"


class SecureStage(models.TextChoices):
    """The stages of a secure-aggregation round (docs/secure-aggregation.md), in order, then its outcome."""

    KEYS = "keys", "Keys"
    SHARES = "shares", "Shares"
    MASKED_INPUTS = "masked_inputs", "Masked inputs"
    UNMASKING = "unmasking", "Unmasking"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


SECURE_STAGES_OPEN = [SecureStage.KEYS, SecureStage.SHARES, SecureStage.MASKED_INPUTS, SecureStage.UNMASKING]
