"""The privacy accountant of central DP: Google's `dp-accounting` (RDP), never a formula of our own. No Django.
Here, in the shared core, because both the gate (`studies.privacy`) and aggregation ask it.

Each training round releases one DP-FedAvg aggregate: the Gaussian mechanism with noise multiplier z on
the clipped mean (sensitivity C / n, noise std z C / n; see `aggregation.privacy`). Every eligible site
takes part in every round, so the sampling probability is 1 and there is no amplification by sampling:
a round is a plain `GaussianDpEvent(z)`, and rounds compose. The Rényi accountant adds the rounds' RDP
curves and converts to (epsilon, delta) with the improved bound of Canonne, Kamath & Steinke 2020.

A study's rounds may have run with different multipliers (the protocol was edited between rounds), so the
history is a `Ledger`: noise multiplier -> rounds closed with it; a round without noise (z = 0) is
non-private and makes epsilon infinite.
"""

import math
from collections.abc import Mapping
from functools import lru_cache

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant

# The library's orders (dense near 1, up to 1024) and a few larger ones for very small budgets (z >> 1).
ORDERS = (*rdp_privacy_accountant.DEFAULT_RDP_ORDERS, 2048, 4096, 8192, 16384)

# Noise multiplier -> training rounds released with it.
Ledger = Mapping[float, int]


def round_event(noise_multiplier: float) -> dp_accounting.DpEvent:
    """What one training round releases: the Gaussian mechanism, every site sampled (probability 1)."""
    if noise_multiplier <= 0:
        return dp_accounting.NonPrivateDpEvent()
    return dp_accounting.PoissonSampledDpEvent(1.0, dp_accounting.GaussianDpEvent(noise_multiplier))


def epsilon(ledger: Ledger, delta: float) -> float:
    """The (epsilon, delta)-DP of every round in `ledger` composed; 0 with no round, inf with a noiseless one."""
    if not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1).")
    if any(rounds < 0 for rounds in ledger.values()):
        raise ValueError("rounds must be >= 0.")
    return _epsilon(tuple(sorted((float(z), int(n)) for z, n in ledger.items() if n)), float(delta))


@lru_cache(maxsize=4096)
def _epsilon(ledger: tuple[tuple[float, int], ...], delta: float) -> float:
    if not ledger:
        return 0.0
    if any(z <= 0 for z, _ in ledger):
        return math.inf
    accountant = dp_accounting.rdp.RdpAccountant(orders=ORDERS)
    for z, rounds in ledger:
        accountant.compose(round_event(z), rounds)
    return float(accountant.get_epsilon(delta))


def epsilon_after(ledger: Ledger, noise_multiplier: float, delta: float, *, more: int = 1) -> float:
    """Epsilon once `more` further rounds with `noise_multiplier` have run on top of `ledger`."""
    combined = dict(ledger)
    combined[float(noise_multiplier)] = combined.get(float(noise_multiplier), 0) + more
    return epsilon(combined, delta)


def rounds_within(ledger: Ledger, noise_multiplier: float, delta: float, target: float, *, cap: int) -> int:
    """How many more rounds (at most `cap`) with `noise_multiplier` keep epsilon within `target`.
    Epsilon grows with every round, so a binary search over the count finds the largest."""
    if cap <= 0 or epsilon_after(ledger, noise_multiplier, delta) > target:
        return 0
    low, high = 1, cap  # low always fits
    while low < high:
        middle = (low + high + 1) // 2
        if epsilon_after(ledger, noise_multiplier, delta, more=middle) <= target:
            low = middle
        else:
            high = middle - 1
    return low
