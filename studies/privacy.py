"""A study's privacy budget: what its released training rounds spent, against the target its protocol carries.

Reads the study row only (its protocol and `privacy_ledger`), so the gate asks it for many studies without a
query. The arithmetic is `consortium.federated.accountant` (dp-accounting's RDP accountant; Django-free, no models).
"""

import math
from dataclasses import dataclass

from consortium.federated import accountant
from studies.models import Study


@dataclass(frozen=True)
class PrivacyBudget:
    """Epsilon spent, the target, what one more training round would reach, and how many more it allows."""

    dp_on: bool
    target: float | None
    delta: float
    noise_multiplier: float
    rounds_released: int
    rounds_planned: int
    epsilon_spent: float
    epsilon_next: float | None  # after one more training round; None when none is planned
    rounds_left: int  # more training rounds the target and the round plan allow

    @property
    def enforced(self) -> bool:
        return self.target is not None

    @property
    def remaining(self) -> float | None:
        if self.target is None:
            return None
        return max(self.target - self.epsilon_spent, 0.0) if math.isfinite(self.epsilon_spent) else 0.0

    @property
    def spent_bounded(self) -> bool:
        return math.isfinite(self.epsilon_spent)

    @property
    def training_left(self) -> bool:
        return self.rounds_released < self.rounds_planned

    @property
    def exhausted(self) -> bool:
        """Training rounds remain in the plan, but the next one would take epsilon past the target."""
        return (self.enforced and self.training_left
                and (self.epsilon_next is None or not self.epsilon_next <= self.target))  # NaN-safe: not <=

    def as_dict(self) -> dict[str, float | int | bool | None]:
        return {"target_epsilon": self.target, "delta": self.delta, "noise_multiplier": self.noise_multiplier,
                "rounds_released": self.rounds_released, "epsilon_spent": finite(self.epsilon_spent),
                "epsilon_next": finite(self.epsilon_next), "epsilon_remaining": self.remaining,
                "rounds_left": self.rounds_left, "exhausted": self.exhausted}


def finite(value: float | None) -> float | None:
    """JSON has no infinity: an unbounded epsilon is None, and the reason says why."""
    return value if value is not None and math.isfinite(value) else None


def privacy_budget(study: Study) -> PrivacyBudget:
    """The study's budget now, from its ledger and its current protocol (z, delta, target, rounds)."""
    ledger, z, delta = study.privacy_spent(), study.dp_noise_multiplier, study.dp_delta
    released = sum(ledger.values())
    spent = accountant.epsilon(ledger, delta)
    planned_left = max(study.rounds - released, 0)
    following = accountant.epsilon_after(ledger, z, delta) if planned_left else None
    left = planned_left if study.dp_target_epsilon is None else accountant.rounds_within(
        ledger, z, delta, study.dp_target_epsilon, cap=planned_left)
    return PrivacyBudget(z > 0, study.dp_target_epsilon, delta, z, released, study.rounds, spent, following, left)
